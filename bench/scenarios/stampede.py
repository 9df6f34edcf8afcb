"""Stampede on one hot key that expires every second: TAG.GETL leases
against lock-and-poll."""

import threading
import time

import redis

from baseline import stampede
from report import Result, log, percentile
from runner import NM, VALUE

from . import scenario

CLIENTS = 200
DB_SECONDS = 0.05   # the simulated database call
TTL_MS = 1000


def _getl_get(r, key, load, deadline, max_tries=100000):
    """The module client: TAG.GETL with a lease; the lease holder fills the key.
    Returns (value, waits, rejected_sets); value None if `deadline` passed."""
    waits = 0
    for _ in range(max_tries):
        v, tok = r.execute_command("TAG.GETL", key, "TTL", 2000, "WAIT", 1000)
        if v is not None:
            return v, waits, 0
        if tok is not None:
            v = load()
            ok = r.execute_command("TAG.SET", key, v, "PX", TTL_MS, "LEASE", tok, "TAGS", 1, key)
            return v, waits, 0 if ok else 1
        if time.monotonic() >= deadline:
            break
        waits += 1
    return None, waits, 0


def _lock_get(r, key, load, deadline):
    v, polls = stampede.lock_and_poll_get(r, key, load, TTL_MS, deadline)
    return v, polls, 0


def stampede_round(port, fetch, duration, clients=CLIENTS, grace=5.0):
    """`clients` threads, one connection each, read `hot` for `duration` s.
    A request started before the deadline may finish up to `grace` s later."""
    lock = threading.Lock()
    db = [0]
    lat = []
    tallies = {"waits": 0, "rejected": 0, "unfinished": 0}
    errors = []

    def load():
        with lock:
            db[0] += 1
        time.sleep(DB_SECONDS)
        return VALUE

    start = threading.Barrier(clients + 1)
    t = {}

    def worker():
        r = redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=10,
                        single_connection_client=True)
        mine = []
        waits = rejected = unfinished = 0
        try:
            r.ping()
            start.wait(timeout=30)
            stop_at, hard_stop = t["stop"], t["hard"]
            for _ in range(10_000_000):
                if time.monotonic() >= stop_at:
                    break
                t0 = time.perf_counter()
                v, w, rej = fetch(r, "hot", load, hard_stop)
                if v is None:
                    unfinished += 1
                    break
                mine.append(time.perf_counter() - t0)
                waits += w
                rejected += rej
        except threading.BrokenBarrierError:
            errors.append("start barrier broken")
        except Exception as e:  # noqa: BLE001 - reported in the result
            errors.append("%s: %s" % (type(e).__name__, e))
            try:
                start.abort()
            except Exception:  # noqa: BLE001
                pass
        finally:
            r.close()
            with lock:
                lat.extend(mine)
                tallies["waits"] += waits
                tallies["rejected"] += rejected
                tallies["unfinished"] += unfinished

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for th in threads:
        th.start()
    c = redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=10)
    try:
        exp0 = int(c.info("stats")["expired_keys"])
        now = time.monotonic()
        t["stop"], t["hard"] = now + duration, now + duration + grace
        try:
            start.wait(timeout=30)
        except threading.BrokenBarrierError:
            errors.append("start barrier broken")
        t_begin = time.monotonic()
        for th in threads:
            th.join(timeout=max(0.1, t["hard"] + 5 - time.monotonic()))
        alive = sum(th.is_alive() for th in threads)
        if alive:
            errors.append("%d client threads still running after the deadline" % alive)
        elapsed = time.monotonic() - t_begin
        # EXISTS first: a key past its expiry that nobody touched since is
        # deleted (and counted in expired_keys) by this very EXISTS. That
        # last expiry came after the last request; nobody was there to fill it.
        unfilled = 0 if c.exists("hot") else 1
        expiries = int(c.info("stats")["expired_keys"]) - exp0 - unfilled
    finally:
        c.close()
    lat.sort()
    return {
        "db_per_exp": db[0] / expiries if expiries > 0 else None,
        "db": db[0], "expiries": expiries, "served": len(lat),
        "served_s": len(lat) / elapsed if elapsed > 0 else None,
        "p50_ms": percentile(lat, 50) * 1e3 if lat else None,
        "p99_ms": percentile(lat, 99) * 1e3 if lat else None,
        "max_ms": lat[-1] * 1e3 if lat else None,
        "waits": tallies["waits"], "rejected": tallies["rejected"],
        "unfinished": tallies["unfinished"], "errors": errors,
    }


@scenario("stampede", "200 clients read one key that expires every second: TAG.GETL lease vs lock-and-poll")
def sc_stampede(ctx):
    duration = 2.0 if ctx.quick else 5.0
    res = Result("stampede",
                 "%d clients (threads, redis-py) read `hot` (PX 1000) for %g s; a miss costs a "
                 "50 ms database call" % (CLIENTS, duration),
                 [("db calls/expiry", "db_per_exp", "us"), ("db calls", "db", "int"),
                  ("expiries", "expiries", "int"), ("p50 ms", "p50_ms", "ms"),
                  ("p99 ms", "p99_ms", "ms"), ("max ms", "max_ms", "ms"),
                  ("requests served", "served", "int"), ("requests/s", "served_s", "rate")])

    def check(reply):
        if not (isinstance(reply, list) and len(reply) == 2 and reply[0] is None and reply[1]):
            return "TAG.GETL of a missing key replied %r, expected [nil, token]" % (reply,)
        return None

    unavailable = ctx.probe(res, ["TAG.GETL", "probe:stampede", "TTL", "1000"], check)
    variants = [
        ("mod", "TAG.GETL WAIT + TAG.SET LEASE", _getl_get, "main"),
        ("lock_p", "lock-and-poll (SET NX, sleep 100 ms)" + NM, _lock_get, "plain"),
        ("lock", "lock-and-poll (SET NX, sleep 100 ms), module loaded", _lock_get, "main"),
    ]
    for key, label, _, _ in variants:
        res.row(key, label, "Python redis-py, %d threads" % CLIENTS)
    if unavailable:
        res.unavailable("mod", unavailable)
    for rnd in range(ctx.rounds):
        for key, label, fetch, srv in variants:
            if not res.is_ok(key):
                continue
            ctx.on(srv)
            r = ctx.r
            r.flushall()
            try:
                if key == "mod":
                    r.execute_command("TAG.SET", "hot", VALUE, "PX", TTL_MS, "TAGS", 1, "hot")
                else:
                    r.set("hot", VALUE, px=TTL_MS)
                m = stampede_round(ctx.port, fetch, duration)
            except redis.exceptions.ResponseError as e:
                res.unavailable(key, str(e)[:200])
                ctx.ensure_server(res, label)
                continue
            if ctx.ensure_server(res, label):
                res.unavailable(key, "server crashed")
                continue
            errors = m.pop("errors")
            if errors:
                res.note("%s: %d client errors, first: %s" % (label, len(errors), errors[0][:150]))
                if len(errors) > CLIENTS // 10:
                    res.unavailable(key, errors[0][:150])
                    continue
            if m["rejected"]:
                res.note("%s: %d lease-guarded TAG.SET calls stored nothing" % (label, m["rejected"]))
            res.add(key, **m)
            log("stampede round %d/%d %-50s db %3d / %3d expiries, p99 %7.1f ms, %7d served" % (
                rnd + 1, ctx.rounds, label, m["db"], m["expiries"], m["p99_ms"] or -1, m["served"]))
    ctx.on("main")
    ctx.each_server(lambda c: c.flushall())
    res.finalize()
    res.goal("TAG.GETL: database calls per expiry (exactly one per expiry)",
             res.med("mod", "db_per_exp"), "==", 1, row="mod", why_missing="no data",
             short="db calls/expiry")
    res.ratio("TAG.GETL p99 ÷ lock-and-poll p99 without the module", "mod", "lock_p", "<=", 0.5,
              field="p99_ms")
    res.ratio("TAG.GETL p99 ÷ lock-and-poll p99, same server", "mod", "lock", "<=", 0.5,
              field="p99_ms", info=True)
    res.goal("lock-and-poll without the module: database calls per expiry", res.med("lock_p", "db_per_exp"),
             "==", 1, info=True, why_missing="no data")
    return res
