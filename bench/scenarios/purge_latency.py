"""GET latency seen by another client while a huge tag is purged."""

import array
import os
import multiprocessing as mp
import time

import redis

import resp
from loadgen import quiet_child
from baseline import patterns
from plot import latency_svg
from report import Result, Unavailable, fmt, log, percentile
from runner import LOAD_CPU, NM, VALUE, fill

from . import scenario

RATE = 2000.0   # GETs per second, open loop
# The first round's GET latencies over time, by method, for the plot.
SERIES = {}
PLOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "purge-latency.svg")


def _latency_probe(port, cpu, rate, stop_at, max_seconds, ready_q, out_q):
    """Open-loop GETs at `rate`/s on one connection; each latency is measured
    from the request's scheduled time, so a stalled server counts in full for
    every request that should have been sent while it stalled."""
    # The parent's objects (large pre-encoded fills) are inherited by fork; a
    # collection walking them would stall this process, not the server.
    quiet_child(cpu, no_gc=True)
    c = resp.Conn(port, timeout=120)
    payloads = [resp.encode("GET", "lat:probe:%d" % i) for i in range(1000)]
    sched_a = array.array("d")
    lat_a = array.array("d")
    errors = 0
    first_error = None
    ready_q.put(True)
    interval = 1.0 / rate
    start = time.monotonic()
    for i in range(int(rate * max_seconds)):
        sched = start + i * interval
        # Stop at the first request scheduled after the stop time: the ones
        # scheduled before it are all sent, however late (after a stall they
        # go out back to back), so none of the stalled requests is dropped.
        if sched >= stop_at.value:
            break
        now = time.monotonic()
        if now - start > max_seconds:
            break
        if sched > now:
            time.sleep(sched - now)
        c.send_raw(payloads[i % 1000])
        rep = c.read()
        done = time.monotonic()
        if isinstance(rep, resp.RespError) or rep is None:
            errors += 1
            if first_error is None:
                first_error = "nil" if rep is None else str(rep)[:80]
        sched_a.append(sched)
        lat_a.append(done - sched)
    c.close()
    out_q.put((sched_a.tobytes(), lat_a.tobytes(), errors, first_error))


@scenario("purge-latency", "GET latency (p50/p99/p99.9/max) while a 1,000,000-key tag is purged")
def sc_purge_latency(ctx):
    n = 100000 if ctx.quick else 1000000
    min_window = 1.0 if ctx.quick else 2.0
    res = Result("purge-latency",
                 "GETs from a second client (open loop, %d/s) while one client purges a tag of %s keys"
                 % (RATE, "{:,}".format(n)),
                 [("p99.9 ms", "p999", "ms"), ("p50 ms", "p50", "ms"), ("p99 ms", "p99", "ms"),
                  ("max ms", "max", "ms"), ("purge call ms", "call_ms", "ms"),
                  ("until keys gone ms", "gone_ms", "ms"), ("GETs in window", "samples", "int")])
    ctx.r.flushall()
    unavailable = ctx.probe(res, ["TAG.SET", "lp:0", "x", "TAGS", "1", "lq"])
    if unavailable is None:
        unavailable = ctx.probe(res, ["TAG.PURGE", "lq"])
    shas = {}
    ctx.each_server(lambda c: (c.flushall(), shas.update(patterns.load_scripts(c))))
    # key, label, how the tag is filled, server ('main' has the module)
    methods = [
        ("idle", "no purge (floor)", "client", "main"),
        ("mod", "TAG.PURGE", "module", "main"),
        ("lua_p", "EVALSHA purge.lua" + NM, "client", "plain"),
        ("del_p", "DEL tag k1..kN" + NM, "client", "plain"),
        ("lua", "EVALSHA purge.lua, module loaded", "client", "main"),
        ("del", "DEL tag k1..kN, module loaded", "client", "main"),
    ]
    for key, label, _, srv in methods:
        res.row(key, label, "open-loop GET")
        if key == "mod" and unavailable:
            res.unavailable(key, unavailable)
    payloads = {"mod": resp.encode("TAG.PURGE", "big"),
                "lua": resp.encode("EVALSHA", shas["purge"], 1, "tag:big")}
    errors = {}   # label -> [(round, GETs with an error or nil, first error)]
    for rnd in range(ctx.rounds):
        for key, label, how, srv in methods:
            if res.is_ok(key):
                _one(ctx, res, key, label, how, srv, n, payloads, min_window, rnd, errors)
    if SERIES:
        with open(PLOT, "w") as f:
            f.write(latency_svg(sorted(SERIES.items()),
                                "GET latency during a purge of %s keys (first round)" % "{:,}".format(n)))
        res.note("plot of GET latency over time: bench/purge-latency.svg")
    for label, errs in errors.items():
        res.note("%s: GETs answered with an error or nil in %d of %d rounds (%s GETs; first: %s)" % (
            label, len(errs), ctx.rounds, ", ".join(str(e[1]) for e in errs), errs[0][2]))
    res.finalize()
    for key, label, _, _ in methods:
        if key == "idle":
            continue
        res.goal("%s: GET p99.9 during the purge" % label, res.med(key, "p999"), "<", 10, unit="ms",
                 info=(key != "mod"), why_missing=res._by_key[key]["status"], row=key, short="GET p99.9")
    ctx.on("main")
    ctx.each_server(lambda c: c.flushall())
    return res


def _one(ctx, res, key, label, how, srv, n, payloads, min_window, rnd, error_log):
    """Fill, start the probe, purge, wait until the keys are gone, collect."""
    ctx.on(srv)
    r = ctx.r
    r.flushall()
    if key == "mod":
        # The default, whatever an earlier scenario set on this server.
        r.config_set("tagcache.purge-atomic-max", 10000)
    try:
        names = fill(ctx, how, "lk:", "big", n) if key != "idle" else []
    except Unavailable as e:
        res.unavailable(key, str(e))
        return
    c = ctx.conn()
    c.pipeline([(resp.encode(b"MSET", *[x for i in range(1000) for x in (b"lat:probe:%d" % i, VALUE)]), 1)])
    if key.startswith("del"):
        if "del" not in payloads:
            payloads["del"] = resp.encode(b"DEL", b"tag:big", *names)
        payload = payloads["del"]
    else:
        payload = payloads.get(key.split("_")[0])   # None for the floor
    mpc = mp.get_context("fork")
    stop_at = mpc.Value("d", float("inf"))
    ready_q, out_q = mpc.Queue(), mpc.Queue()
    proc = mpc.Process(target=_latency_probe,
                       args=(ctx.port, LOAD_CPU if ctx.pin else None, RATE, stop_at, 120.0, ready_q, out_q),
                       daemon=True)
    proc.start()
    ready_q.get(timeout=30)
    time.sleep(0.3)
    t0 = time.monotonic()
    reply = call_ms = None
    if payload is not None:
        try:
            reply, secs = c.timed(payload)
            call_ms = secs * 1000.0
        except (ConnectionError, OSError) as e:
            reply = resp.RespError("connection lost: %s" % e)
    t_call = time.monotonic()
    # Until the purged keys are really gone (a purge may finish in the
    # background after replying). Bounded to 60 s.
    gone = t_call
    if payload is not None and ctx.server.alive():
        deadline = t_call + 60
        while time.monotonic() < deadline:
            try:
                if r.dbsize() <= 1000:
                    break
            except redis.exceptions.ConnectionError:
                break
            time.sleep(0.01)
        gone = time.monotonic()
    window_end = max(gone, t0 + min_window)
    time.sleep(max(0.0, window_end + 0.05 - time.monotonic()))
    stop_at.value = time.monotonic()
    try:
        sched_b, lat_b, errors, first_error = out_q.get(timeout=130)
    except Exception:  # noqa: BLE001 - reported below
        sched_b, lat_b, errors, first_error = b"", b"", -1, "the probe sent no result"
    proc.join(timeout=10)
    if proc.is_alive():
        proc.terminate()
    c.close()
    if ctx.ensure_server(res, label):
        res.unavailable(key, "server crashed")
        return
    if isinstance(reply, resp.RespError):
        res.unavailable(key, "error reply: %s" % reply)
        return
    expect = n + 1 if key.startswith("del") else n
    if payload is not None and reply != expect:
        res.note("%s replied %r, expected %d" % (label, reply, expect))
    if payload is not None and r.dbsize() > 1000:
        res.note("%s: %d keys still present 60 s after the call" % (label, r.dbsize() - 1000))
    sched = array.array("d")
    sched.frombytes(sched_b)
    lat = array.array("d")
    lat.frombytes(lat_b)
    window = sorted(x * 1000.0 for s, x in zip(sched, lat) if t0 <= s <= window_end)
    if errors:
        error_log.setdefault(label, []).append((rnd + 1, errors, first_error))
    m = {"p50": percentile(window, 50), "p99": percentile(window, 99), "p999": percentile(window, 99.9),
         "max": window[-1] if window else None, "samples": len(window), "call_ms": call_ms,
         "gone_ms": (gone - t0) * 1000.0 if payload is not None else None}
    m["value"] = m["p999"]
    res.add(key, **m)
    if rnd == 0 and key in ("mod", "lua_p", "del_p"):
        SERIES[label] = [(s - t0, x * 1000.0) for s, x in zip(sched, lat) if t0 <= s <= window_end]
    log("purge-latency round %d/%d %-34s p50 %s p99 %s p99.9 %s max %s ms, call %s ms (%d GETs)" % (
        rnd + 1, ctx.rounds, label, fmt(m["p50"], "ms"), fmt(m["p99"], "ms"), fmt(m["p999"], "ms"),
        fmt(m["max"], "ms"), fmt(call_ms, "ms"), len(window)))
