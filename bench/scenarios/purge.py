"""Purge time: TAG.PURGE against the Lua purge and a variadic DEL."""

import resp
from baseline import patterns
from report import Result, Unavailable, log
from runner import NM, cmdstat, fill

from . import scenario

DEFAULT_ATOMIC_MAX = 10000   # the module's default purge-atomic-max


@scenario("purge", "purge one tag of N keys: TAG.PURGE vs Lua SMEMBERS+DEL vs variadic DEL")
def sc_purge(ctx):
    sizes = [1000, 10000] if ctx.quick else [1000, 10000, 100000, 1000000]
    res = Result("purge", "time to purge one tag of N keys (100-byte values), one call, client wall time",
                 [("ms", "value", "ms"), ("server ms", "srv_ms", "ms"), ("deleted", "reply", "int")])
    r = ctx.r
    r.flushall()

    def check(reply):
        if reply != 3:
            return "TAG.PURGE of a 3-key tag replied %r, expected 3" % (reply,)
        left = [k for k in ("pp:1", "pp:2", "pp:3") if r.exists(k)]
        if left:
            return "keys %s still exist after TAG.PURGE" % left
        if r.exists("tag:pp"):
            return "tag:pp still exists after TAG.PURGE"
        return None

    unavailable = ctx.probe(res, ["TAG.SET", "pp:0", "x", "TAGS", "1", "pq"])
    if unavailable is None:
        for k in ("pp:1", "pp:2", "pp:3"):
            r.execute_command("TAG.SET", k, "x", "TAGS", "1", "pp")
        unavailable = ctx.probe(res, ["TAG.PURGE", "pp"], check)
    if unavailable is None:
        # Client-written membership must be honoured too (SPEC: data layout).
        r.set("cw:1", "x")
        r.sadd("tag:cw", "cw:1", "cw:gone")
        n = r.execute_command("TAG.PURGE", "cw")
        if n != 1 or r.exists("cw:1"):
            res.note("TAG.PURGE on a client-written set (1 live member, 1 missing) replied %r; "
                     "cw:1 exists=%d" % (n, r.exists("cw:1")))
    shas = {}
    ctx.each_server(lambda c: (c.flushall(), shas.update(patterns.load_scripts(c))))
    sha = shas["purge"]
    # key, label, how the tag is filled, server ('main' has the module)
    methods = [
        ("mod", "TAG.PURGE", "module", "main"),
        ("mod_atomic", "TAG.PURGE in one step (purge-atomic-max above N)", "module", "main"),
        ("modcw", "TAG.PURGE, set written by SADD", "client", "main"),
        ("lua_p", "EVALSHA purge.lua" + NM, "client", "plain"),
        ("del_p", "DEL tag k1..kN (limit)" + NM, "client", "plain"),
        ("lua", "EVALSHA purge.lua, module loaded", "client", "main"),
        ("del", "DEL tag k1..kN, module loaded", "client", "main"),
        ("soft", "TAG.INVALIDATE SOFT 600000 TAGS 1 (sliced)", "module", "main"),
        ("soft_atomic", "TAG.INVALIDATE SOFT in one step", "module", "main"),
        ("rule", "purge fired by a rule (TAG.LINK; SET of its source; until the keys are gone)",
         "module", "main"),
        ("rule_atomic", "purge fired by a rule, in one step", "module", "main"),
    ]
    del_cache = {}
    for n in sizes:
        prefix = "pk%d:" % n
        for key, label, _, srv in methods:
            if not _measured(key, n):
                continue
            res.row("%s_%d" % (key, n), "%s, N=%s" % (label, "{:,}".format(n)), "one call")
            if key.startswith("mod") and unavailable:
                res.unavailable("%s_%d" % (key, n), unavailable)
        for rnd in range(ctx.rounds):
            for key, label, how, srv in methods:
                rk = "%s_%d" % (key, n)
                if _measured(key, n) and res.is_ok(rk):
                    _one(ctx, res, rk, key, label, how, srv, n, prefix, sha, del_cache, rnd)
    ctx.on("main")
    res.finalize()
    for n in sizes:
        nn = "{:,}".format(n)
        res.ratio("N=%s: TAG.PURGE ÷ variadic DEL without the module (time)" % nn,
                  "mod_%d" % n, "del_p_%d" % n, "<=", 2 if n <= 10000 else 1.5, info=n > 10000)
        res.ratio("N=%s: EVALSHA purge.lua without the module ÷ TAG.PURGE (time)" % nn,
                  "lua_p_%d" % n, "mod_%d" % n, ">=", 1.5, attach="den")
        if n > 10000:
            res.ratio("N=%s: TAG.PURGE in slices ÷ in one step (time per key)" % nn,
                      "mod_%d" % n, "mod_atomic_%d" % n, "<=", 1.25)
            res.ratio("N=%s: soft invalidation in slices ÷ in one step (time per key)" % nn,
                      "soft_%d" % n, "soft_atomic_%d" % n, "<=", 1.25)
            res.ratio("N=%s: a rule's purge in slices ÷ in one step (time per key)" % nn,
                      "rule_%d" % n, "rule_atomic_%d" % n, "<=", 1.25)
            res.ratio("N=%s: EVALSHA purge.lua without the module ÷ a rule's purge (time)" % nn,
                      "lua_p_%d" % n, "rule_%d" % n, ">=", 1.5, attach="den")
        if n >= 1000000:
            continue
        res.ratio("N=%s: TAG.PURGE ÷ variadic DEL, same server" % nn,
                  "mod_%d" % n, "del_%d" % n, "<=", 1.5, info=True)
        res.ratio("N=%s: EVALSHA purge.lua ÷ TAG.PURGE, same server" % nn,
                  "lua_%d" % n, "mod_%d" % n, ">=", 2, info=True)
        res.ratio("N=%s: DEL with the module loaded ÷ without (time)" % nn,
                  "del_%d" % n, "del_p_%d" % n, "<=", 1, info=True)
    ctx.each_server(lambda c: c.flushall())
    return res


def _measured(key, n):
    """Which methods run at which sizes: one step only where the default
    slices the purge; at a million keys, the four the goals compare."""
    if key in ("mod_atomic", "soft", "soft_atomic", "rule", "rule_atomic"):
        return n > 10000
    return n < 1000000 or key in ("mod", "lua_p", "del_p")


def _one(ctx, res, rk, key, label, how, srv, n, prefix, sha, del_cache, rnd):
    """Fill the tag, then time one purge call."""
    ctx.on(srv)
    r = ctx.r
    r.flushall()
    try:
        names = fill(ctx, how, prefix, "ptag", n)
    except Unavailable as e:
        res.unavailable(rk, str(e))
        return
    # The default, or one step whatever the size (restored after).
    one_step = key.endswith("_atomic")
    if key.startswith(("mod", "soft", "rule")):
        r.config_set("tagcache.purge-atomic-max", 100000000 if one_step else DEFAULT_ATOMIC_MAX)
    if key.startswith("soft"):
        payload, cmdname, expect = (resp.encode("TAG.INVALIDATE", "SOFT", 600000, "TAGS", 1, "ptag"),
                                    "tag.invalidate", n)
    elif key.startswith("rule"):
        # A write of `rsrc:ag` fires the rule `rsrc:` -> `pt`: tag `ptag`.
        r.execute_command("TAG.LINK", "rsrc:", "pt")
        payload, cmdname, expect = resp.encode("SET", "rsrc:ag", "x"), "set", None
    elif key.startswith("mod"):
        payload, cmdname, expect = resp.encode("TAG.PURGE", "ptag"), "tag.purge", n
    elif key.startswith("lua"):
        payload, cmdname, expect = resp.encode("EVALSHA", sha, 1, "tag:ptag"), "evalsha", n
    else:
        if n not in del_cache:
            del_cache[n] = resp.encode(b"DEL", b"tag:ptag", *names)
        payload, cmdname, expect = del_cache[n], "del", n + 1
    before = cmdstat(r, cmdname)
    c = ctx.conn()
    events = None
    if key.startswith("rule"):
        # The purge publishes one event when it ends: wait for that, not
        # polling (a poll would take turns from the slices).
        events = ctx.conn()
        events.command("SUBSCRIBE", "tagcache:events")
    try:
        reply, secs = c.timed(payload)
        if events is not None:
            secs += _until_event(events)
    except (ConnectionError, OSError) as e:
        ctx.ensure_server(res, label)
        res.unavailable(rk, "connection lost: %s" % e)
        return
    finally:
        c.close()
        if events is not None:
            events.close()
    after = cmdstat(r, cmdname)
    if one_step:
        r.config_set("tagcache.purge-atomic-max", DEFAULT_ATOMIC_MAX)
    if key.startswith("rule"):
        r.execute_command("TAG.UNLINK", "rsrc:")
    if isinstance(reply, resp.RespError):
        res.unavailable(rk, "error reply: %s" % reply)
        return
    if expect is not None and reply != expect:
        res.note("%s, N=%d replied %r, expected %d" % (label, n, reply, expect))
    left = r.dbsize()
    if key.startswith("soft"):
        # The keys stay, stale until the grace ends; what is checked is
        # that every one is marked.
        if r.execute_command("TAG.CARD", "ptag") != n:
            res.note("%s, N=%d: the tag lost keys" % (label, n))
        left = 0
    elif key.startswith("rule"):
        left = r.execute_command("TAG.CARD", "ptag")
    if left:
        res.note("%s, N=%d: %d keys left in the database after it returned" % (label, n, left))
    srv_ms = (after.get("usec", 0) - before.get("usec", 0)) / 1000.0
    res.add(rk, value=secs * 1000.0, srv_ms=srv_ms, reply=reply if isinstance(reply, int) else None)
    log("purge N=%d round %d/%d %-45s %8.2f ms" % (n, rnd + 1, ctx.rounds, label, secs * 1000))



def _until_event(events):
    """Seconds from now until the rule's purge event arrives (at most 120 s)."""
    import time
    t0 = time.perf_counter()
    events.sock.settimeout(120)
    msg = events.read()
    if not (isinstance(msg, list) and b'"op":"link"' in bytes(msg[-1])):
        raise ConnectionError("unexpected message while waiting for the purge event: %r" % (msg,))
    return time.perf_counter() - t0
