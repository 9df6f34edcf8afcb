"""Stampede on one hot key.

Two parts, two tables:

* `stampede`: the key expires every second (PX 1000); 200 redis-py threads
  read it in a closed loop: TAG.GETL leases against lock-and-poll.
* `stampede-invalidation`: the key is invalidated once a second while 200
  open-loop readers (one event loop, bench/openloop.py) read it at a fixed
  rate each: hard (TAG.PURGE; TAG.GETL WAIT readers, the lease holder
  refills), soft (TAG.INVALIDATE SOFT; readers keep being served, the one
  handed the refresh token recomputes in the background and stores with
  LEASE), and without the module (DEL; lock-and-poll readers); plus the same
  readers with no invalidation at all (plain hits), for the floor.
"""

import threading
import time

import redis

import openloop
from baseline import stampede
from report import Result, log, percentile
from runner import LOAD_CPU, NM, VALUE

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


@scenario("stampede", "200 clients read one hot key: it expires every second (TAG.GETL lease vs "
                      "lock-and-poll), or it is invalidated every second (hard, soft, DEL + lock-and-poll)")
def sc_stampede(ctx):
    return [_expiry_part(ctx), _invalidation_part(ctx)]


def _expiry_part(ctx):
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


# ---------------------------------------------------------------------------
# The key invalidated once a second, open-loop readers
# ---------------------------------------------------------------------------
RATE = 20.0             # requests per second per client (4,000/s for 200 clients)
KEY_TTL_MS = 60000      # the key's own TTL: it never expires during a run
GRACE_MS = 5000         # TAG.INVALIDATE SOFT grace-ms
LEASE_TTL_MS = 2000     # TAG.GETL TTL
WAIT_MS = 1000          # TAG.GETL WAIT
WINDOW = 0.25           # "during the refresh": requests due in the 250 ms after each invalidation
HOT, TAG = "hot", "hot"


def _getl_steps(deadline):
    """The module's reader (as examples/swr.py): TAG.GETL with WAIT.
    [value, nil]: served. [value, token]: stale and this reader holds the
    refresh lease: served at once, the recompute (50 ms) and the store with
    LEASE run in the background, on another connection. [nil, token]: a miss,
    this reader fills it and waits for its own fill. [nil, nil]: the WAIT ran
    out while another reader filled: ask again."""
    getl = openloop.pre("TAG.GETL", HOT, "TTL", LEASE_TTL_MS, "WAIT", WAIT_MS)

    def store(v, tok):
        ok = yield openloop.cmd("TAG.SET", HOT, v, "PX", KEY_TTL_MS, "LEASE", tok, "TAGS", 1, TAG)
        if ok is None:
            yield openloop.count("refused")

    def refresh(tok):
        v = yield openloop.LOAD
        yield from store(v, tok)

    def request():
        for _ in range(100):
            v, tok = yield getl
            if tok is None:
                if v is not None:
                    return v
                yield openloop.count("waited_out")
                if time.monotonic() >= deadline[0]:
                    return None
                continue
            if v is not None:
                yield openloop.count("refresh_leases")
                yield openloop.spawn(refresh(tok))
                return v
            yield openloop.count("fill_leases")
            v = yield openloop.LOAD
            yield from store(v, tok)
            return v
        return None
    return request


def _lock_steps(deadline):
    """The client without the module: bench/baseline/stampede.py's
    lock-and-poll, step by step."""
    def request():
        return (yield from stampede.lock_and_poll_steps(HOT, KEY_TTL_MS, deadline[0]))
    return request


def _factory(make, duration):
    """make(deadline) -> request factory; the deadline (the run's end plus
    a margin, on the clock of the process that runs the loop) is set at the
    first request."""
    deadline = [None]
    inner = []

    def make_request():
        if deadline[0] is None:
            deadline[0] = time.monotonic() + duration + 3.0
            inner.append(make(deadline))
        return inner[0]()
    return make_request


def _inv_round(ctx, make, event_cmd, duration):
    offsets = [0.5 + k for k in range(int(duration))]
    out = openloop.run(ctx.port, _factory(make, duration), CLIENTS, RATE, duration, offsets, event_cmd,
                       db_seconds=DB_SECONDS, value=VALUE, cpu=LOAD_CPU if ctx.pin else None)
    lat = sorted(out["lat"])
    sent = [e[1] for e in out["events"] if e[1] is not None]
    win = sorted(x for s, x in zip(out["sched"], out["lat"])
                 if any(t <= s < t + WINDOW for t in sent))
    c = out["counters"]
    invs = len(sent) if event_cmd else 0
    found = sum(1 for e in out["events"] if e[2] == 1)
    m = {
        "db_per_inv": c["db"] / invs if invs else None,
        "db": c["db"], "invs": invs, "found": found if event_cmd else None,
        "p50": percentile(lat, 50) * 1e3 if lat else None,
        "p99": percentile(lat, 99) * 1e3 if lat else None,
        "p999": percentile(lat, 99.9) * 1e3 if lat else None,
        "max": lat[-1] * 1e3 if lat else None,
        "p99_win": percentile(win, 99) * 1e3 if win else None,
        "win_n": len(win), "served": len(lat),
        "unfinished": c["unfinished"], "failed": c["failed"], "errors": c["errors"],
        "first_error": out["first_error"],
    }
    for k in ("refresh_leases", "fill_leases", "waited_out", "refused", "polls", "backlog_max"):
        m[k] = c.get(k, 0)
    return m


def _check_soft(r):
    """TAG.INVALIDATE SOFT and TAG.GETL as README.md says, once; a list of what
    is off."""
    bad = []
    k, t = "probe:swr", "probe:swr:t"
    r.delete(k)
    r.execute_command("TAG.SET", k, "v1", "PX", KEY_TTL_MS, "TAGS", 1, t)
    n = r.execute_command("TAG.INVALIDATE", "SOFT", GRACE_MS, "TAGS", 1, t)
    if n != 1:
        bad.append("TAG.INVALIDATE SOFT replied %r, expected 1" % (n,))
    pttl = r.pttl(k)
    if not 0 < pttl <= GRACE_MS:
        bad.append("PTTL after a soft invalidation is %r, expected 1..%d" % (pttl, GRACE_MS))
    first = r.execute_command("TAG.GETL", k, "TTL", LEASE_TTL_MS, "WAIT", WAIT_MS)
    t0 = time.monotonic()
    second = r.execute_command("TAG.GETL", k, "TTL", LEASE_TTL_MS, "WAIT", WAIT_MS)
    waited = time.monotonic() - t0
    if not (isinstance(first, list) and first[0] == b"v1" and first[1]):
        bad.append("first TAG.GETL of a stale key replied %r, expected [v1, token]" % (first,))
    if second != [b"v1", None]:
        bad.append("second TAG.GETL of a stale key replied %r, expected [v1, nil]" % (second,))
    if waited > 0.5:
        bad.append("second TAG.GETL WAIT %d of a stale key took %.0f ms" % (WAIT_MS, waited * 1e3))
    if isinstance(first, list) and first[1]:
        ok = r.execute_command("TAG.SET", k, "v2", "PX", KEY_TTL_MS, "LEASE", first[1], "TAGS", 1, t)
        after = r.execute_command("TAG.GETL", k)
        if ok != b"OK" or after != [b"v2", None] or r.pttl(k) <= GRACE_MS:
            bad.append("the store with LEASE replied %r, then TAG.GETL %r, PTTL %r" % (ok, after, r.pttl(k)))
    r.delete(k)
    r.execute_command("TAG.PURGE", t)
    return bad


def _invalidation_part(ctx):
    duration = 2.0 if ctx.quick else 5.0
    res = Result("stampede-invalidation",
                 "%d clients (one event loop, raw RESP) each read `hot` open loop at %g/s for %g s; "
                 "once a second the key is invalidated; a recompute is a 50 ms database call"
                 % (CLIENTS, RATE, duration),
                 [("db calls/invalidation", "db_per_inv", "us"), ("db calls", "db", "int"),
                  ("invalidations", "invs", "int"), ("p50 ms", "p50", "ms"), ("p99 ms", "p99", "ms"),
                  ("p99.9 ms", "p999", "ms"), ("max ms", "max", "ms"),
                  ("p99 ms, 250 ms after each invalidation", "p99_win", "ms"),
                  ("p99 ÷ plain hits' p99", "p99_x", "x"), ("requests", "served", "int")])
    soft_cmd = ("TAG.INVALIDATE", "SOFT", GRACE_MS, "TAGS", 1, TAG)
    variants = [
        ("plain", "no invalidation (plain hits): TAG.GETL readers", _getl_steps, None, "main"),
        ("hard", "TAG.PURGE: TAG.GETL WAIT readers, the lease holder refills", _getl_steps,
         ("TAG.PURGE", TAG), "main"),
        ("soft", "TAG.INVALIDATE SOFT %d: TAG.GETL readers; the token holder refreshes in the "
                 "background (TAG.SET LEASE)" % GRACE_MS, _getl_steps, soft_cmd, "main"),
        ("plain_p", "no invalidation (plain hits): GET readers" + NM, _lock_steps, None, "plain"),
        ("lock_p", "DEL: lock-and-poll readers (SET NX, sleep 100 ms)" + NM, _lock_steps,
         ("DEL", HOT), "plain"),
    ]
    for key, label, _, _, _ in variants:
        res.row(key, label, "open loop, %d conns" % CLIENTS)
    why = ctx.probe(res, ["TAG.GETL", "probe:swr0", "TTL", "1000"])
    if why:
        for key in ("plain", "hard", "soft"):
            res.unavailable(key, why)
    else:
        why = ctx.probe(res, ["TAG.INVALIDATE", "SOFT", "1000", "TAGS", "1", "probe:swr0:t"])
        if why:
            res.unavailable("soft", why)
        else:
            for problem in _check_soft(ctx.r):
                res.note("soft invalidation: " + problem)
        ctx.r.delete("probe:swr0")
    totals = {}
    for rnd in range(ctx.rounds):
        for key, label, make, event_cmd, srv in variants:
            if not res.is_ok(key):
                continue
            ctx.on(srv)
            r = ctx.r
            r.flushall()
            try:
                if srv == "main":
                    r.execute_command("TAG.SET", HOT, VALUE, "PX", KEY_TTL_MS, "TAGS", 1, TAG)
                else:
                    r.set(HOT, VALUE, px=KEY_TTL_MS)
                m = _inv_round(ctx, make, event_cmd, duration)
            except (redis.exceptions.ResponseError, RuntimeError, OSError) as e:
                res.unavailable(key, str(e)[:200])
                ctx.ensure_server(res, label)
                continue
            if ctx.ensure_server(res, label):
                res.unavailable(key, "server crashed")
                continue
            if m["errors"]:
                res.note("%s: %d error replies, first: %s" % (label, m["errors"], m["first_error"]))
            if m["unfinished"] or m["failed"]:
                res.note("%s: round %d: %d requests unfinished at the deadline, %d failed" % (
                    label, rnd + 1, m["unfinished"], m["failed"]))
            if m["refused"]:
                res.note("%s: %d lease-guarded TAG.SET calls stored nothing" % (label, m["refused"]))
            if event_cmd and m["found"] != m["invs"]:
                res.note("%s: round %d: %d of %d invalidations found the key" % (
                    label, rnd + 1, m["found"], m["invs"]))
            if m["backlog_max"]:
                res.note("%s: background refreshes queued for a connection (up to %d)" % (
                    label, m["backlog_max"]))
            m.pop("first_error")
            res.add(key, **m)
            t = totals.setdefault(key, {"db": 0, "invs": 0})
            t["db"] += m["db"]
            t["invs"] += m["invs"]
            log("stampede-inv round %d/%d %-12s db %2d / %2d inv, p50 %6.2f p99 %7.2f p99.9 %7.2f "
                "max %7.1f win-p99 %7.2f ms, %6d served, leases %d+%d, waits %d, polls %d" % (
                    rnd + 1, ctx.rounds, key, m["db"], m["invs"], m["p50"] or -1, m["p99"] or -1,
                    m["p999"] or -1, m["max"] or -1, m["p99_win"] or -1, m["served"],
                    m["refresh_leases"], m["fill_leases"], m["waited_out"], m["polls"]))
    ctx.on("main")
    ctx.each_server(lambda c: c.flushall())
    res.finalize()
    # Each row's p99 against plain hits of the same readers (module rows:
    # TAG.GETL; without the module: GET), medians over the rounds.
    for key, floor in (("plain", "plain"), ("hard", "plain"), ("soft", "plain"),
                       ("plain_p", "plain_p"), ("lock_p", "plain_p")):
        a, b = res.med(key, "p99"), res.med(floor, "p99")
        if a is not None and b:
            res._by_key[key]["median"]["p99_x"] = a / b

    def per_inv(key):
        t = totals.get(key)
        return t["db"] / t["invs"] if t and t["invs"] and res.is_ok(key) else None

    def over_plain(key, field):
        a, b = res.med(key, field), res.med("plain", "p99")
        return a / b if a is not None and b else None

    res.goal("SOFT: reader p99 in the 250 ms after each invalidation ÷ plain hits' p99",
             over_plain("soft", "p99_win"), "<=", 1.5, row="soft", why_missing="no data",
             short="p99 during the refresh ÷ plain")
    res.goal("SOFT: database calls per invalidation, all rounds (exactly one)", per_inv("soft"),
             "==", 1, row="soft", why_missing="no data", short="db calls/invalidation")
    res.goal("SOFT: reader p99 over the run ÷ plain hits' p99", over_plain("soft", "p99"), "<=", 1.5,
             info=True, summary=True, row="soft", why_missing="no data")
    res.goal("HARD (TAG.PURGE): database calls per invalidation, all rounds", per_inv("hard"), "==", 1,
             info=True, summary=True, row="hard", why_missing="no data")
    res.goal("HARD (TAG.PURGE): reader p99 ÷ plain hits' p99", over_plain("hard", "p99"), "<=", 1.5,
             info=True, row="hard", why_missing="no data")
    res.goal("DEL + lock-and-poll without the module: database calls per invalidation, all rounds",
             per_inv("lock_p"), "==", 1, info=True, summary=True, row="lock_p", why_missing="no data")
    a, b = res.med("lock_p", "p99"), res.med("plain_p", "p99")
    res.goal("DEL + lock-and-poll without the module: reader p99 ÷ plain GET hits' p99",
             a / b if a is not None and b else None, "<=", 1.5, info=True, row="lock_p",
             why_missing="no data")
    res.ratio("SOFT p99 ÷ DEL + lock-and-poll p99 without the module", "soft", "lock_p", "<=", 1,
              field="p99", info=True)
    return res
