"""Tagged write: TAG.SET against the Lua script, the client pipeline and plain SET."""

from baseline import patterns
from report import Result, Unavailable, log
from runner import NM, RAW, RB, VALUE

from . import scenario

SECONDS = 3.0   # one redis-benchmark run; raw-RESP windows are 3 s as well


@scenario("tagset", "tagged write: TAG.SET vs EVALSHA script vs client pipeline vs plain SET")
def sc_tagset(ctx):
    res = Result("tagset",
                 "tagged write, 100-byte value, EX 3600, 2 tags, random keys from 100,000; "
                 "50 clients, 16 in flight per client",
                 [("writes/s", "value", "rate"), ("server µs/write", "srv_us", "us")])
    r = ctx.r
    r.flushall()

    def check(reply):
        problems = []
        if reply not in (b"OK", "OK", True):
            problems.append("reply %r, expected OK" % (reply,))
        if r.get("probe:k") != VALUE:
            problems.append("GET probe:k does not return the value")
        ttl = r.ttl("probe:k")
        if not (3590 <= ttl <= 3600):
            problems.append("TTL after EX 3600 is %s" % ttl)
        for t in ("t1", "t2"):
            if not r.sismember("tag:" + t, "probe:k"):
                problems.append("key not in tag:%s" % t)
        return "; ".join(problems)

    unavailable = ctx.probe(res, ["TAG.SET", "probe:k", VALUE, "EX", "3600", "TAGS", "2", "t1", "t2"], check)
    shas = {}
    ctx.each_server(lambda c: (c.flushall(), shas.update(patterns.load_scripts(c))))
    val = VALUE.decode()
    rb_args = {
        "mod": ["TAG.SET", "key:__rand_int__", val, "EX", "3600", "TAGS", "2", "t1", "t2"],
        "lua": ["EVALSHA", shas["tag_set"], "3", "key:__rand_int__", "tag:t1", "tag:t2", val, "3600"],
        "set": ["SET", "key:__rand_int__", val],
    }
    raw_kind = {"mod": "tagset_module", "pipe": "tag_pipeline"}
    # key, label, generator, what, server ('main' has the module, 'plain' not)
    variants = [
        ("mod_rb", "TAG.SET", RB, "mod", "main"),
        ("lua_rb_p", "EVALSHA tag_set.lua" + NM, RB, "lua", "plain"),
        ("set_rb_p", "SET (limit)" + NM, RB, "set", "plain"),
        ("lua_rb", "EVALSHA tag_set.lua, module loaded", RB, "lua", "main"),
        ("mod_raw", "TAG.SET", RAW, "mod", "main"),
        ("pipe_raw_p", "pipeline SET+2x(SADD+EXPIRE)" + NM, RAW, "pipe", "plain"),
        ("pipe_raw", "pipeline SET+2x(SADD+EXPIRE), module loaded", RAW, "pipe", "main"),
    ]
    for key, label, tool, what, srv in variants:
        res.row(key, label, tool)
        if what == "mod" and unavailable:
            res.unavailable(key, unavailable)
    seconds = 0.4 if ctx.quick else SECONDS
    for rnd in range(ctx.rounds):
        for key, label, tool, what, srv in variants:
            if not res.is_ok(key):
                continue
            ctx.on(srv)
            ctx.r.flushall()
            try:
                if tool == RB:
                    m = ctx.rb_calibrated(rb_args[what], 50, 16, seconds, "tagset:" + key)
                else:
                    m = ctx.raw(raw_kind[what], pipeline=16)
            except Unavailable as e:
                res.unavailable(key, str(e))
                ctx.ensure_server(res, label)
                continue
            if ctx.ensure_server(res, label):
                res.unavailable(key, "server crashed")
                continue
            m.pop("misses", None)
            res.add(key, **m)
            log("tagset round %d/%d %-45s %-16s %10.0f/s" % (rnd + 1, ctx.rounds, label, tool, m["value"]))
            if what == "mod" and rnd == 0:
                _check_tag_index(ctx, res, "after TAG.SET load (%s)" % tool)
    ctx.on("main")
    res.finalize()
    res.ratio("TAG.SET ÷ EVALSHA tag_set.lua without the module (redis-benchmark)",
              "mod_rb", "lua_rb_p", ">=", 1.6)
    res.ratio("TAG.SET ÷ client pipeline (5 commands) without the module (raw RESP)",
              "mod_raw", "pipe_raw_p", ">=", 2)
    res.ratio("TAG.SET ÷ SET without the module (redis-benchmark)", "mod_rb", "set_rb_p", ">=", 0.18)
    res.ratio("TAG.SET ÷ EVALSHA tag_set.lua, same server (redis-benchmark)", "mod_rb", "lua_rb", ">=", 1.6,
              info=True)
    res.ratio("TAG.SET ÷ client pipeline, same server (raw RESP)", "mod_raw", "pipe_raw", ">=", 2, info=True)
    a, b = res.med("lua_rb_p", "srv_us"), res.med("mod_rb", "srv_us")
    res.goal("server CPU per write: EVALSHA without the module ÷ TAG.SET (redis-benchmark)",
             a / b if a and b else None, ">=", 1.6, info=True, why_missing="no data")
    a, b = res.med("pipe_raw_p", "srv_us"), res.med("mod_raw", "srv_us")
    res.goal("server CPU per write: pipeline without the module ÷ TAG.SET (raw RESP)",
             a / b if a and b else None, ">=", 2, info=True, why_missing="no data")
    ctx.each_server(lambda c: c.flushall())
    return res


def _check_tag_index(ctx, res, when):
    """After a load of TAG.SET key:* ... TAGS 2 t1 t2: every live key:* is in
    both tag sets and every member is a live key."""
    r = ctx.r
    live = set()
    cursor = 0
    for _ in range(10000):
        cursor, keys = r.scan(cursor, match="key:*", count=5000)
        live.update(keys)
        if cursor == 0:
            break
    for t in ("t1", "t2"):
        members = r.smembers("tag:" + t) if r.type("tag:" + t) == b"set" else set()
        if members != live:
            res.note("%s: tag:%s has %d members, %d key:* keys live (%d missing, %d stale)" % (
                when, t, len(members), len(live), len(live - members), len(members - live)))
