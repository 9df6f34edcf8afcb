"""Versioned read: VER.GET against the two-round-trip read and plain GET."""

import loadgen
import resp
from report import Result, Unavailable, log
from runner import KEYSPACE, NM, RAW, RB, VALUE

from . import scenario


@scenario("vget", "versioned read: VER.GET vs GET ver:<scope> + GET v<N>:<key> vs plain GET")
def sc_vget(ctx):
    res = Result("vget", "versioned read of a 100-byte value, random keys from 100,000, "
                 "50 clients, no pipelining",
                 [("reads/s", "value", "rate"), ("server µs/read", "srv_us", "us")])
    cmds = [resp.encode(b"SET", b"ver:s", b"5")]
    for i in range(0, KEYSPACE, 500):
        args = [b"MSET"]
        for j in range(i, min(KEYSPACE, i + 500)):
            args += [b"v5:" + loadgen.key_name(j).encode(), VALUE]
        cmds.append(resp.encode(*args))
    batches = list(resp.batched(cmds, 20))

    def prepare(client):
        client.flushall()
        c = ctx.conn()
        try:
            c.pipeline(batches)
        finally:
            c.close()

    ctx.each_server(prepare)
    r = ctx.r

    def check(reply):
        if reply != VALUE:
            return "VER.GET s key:000000000001 replied %r, expected the v5: value" % (
                reply[:20] if isinstance(reply, bytes) else reply,)
        if r.execute_command("VER.GET", "s", "nosuchkey") is not None:
            return "VER.GET of a missing key is not nil"
        return None

    unavailable = ctx.probe(res, ["VER.GET", "s", "key:000000000001"], check)
    # key, label, generator, what (redis-benchmark argv or loadgen kind), server
    variants = [
        ("mod_rb", "VER.GET", RB, ["VER.GET", "s", "key:__rand_int__"], "main"),
        ("get_rb_p", "GET (limit)" + NM, RB, ["GET", "v5:key:__rand_int__"], "plain"),
        ("get_rb", "GET (limit), module loaded", RB, ["GET", "v5:key:__rand_int__"], "main"),
        ("mod_raw", "VER.GET", RAW, "vget_module", "main"),
        ("rt2_raw_p", "GET ver:s, then GET v5:key" + NM, RAW, "vget_2rt", "plain"),
        ("get_raw_p", "GET (limit)" + NM, RAW, "get", "plain"),
    ]
    for key, label, tool, spec, srv in variants:
        res.row(key, label, tool)
        if key.startswith("mod") and unavailable:
            res.unavailable(key, unavailable)
    seconds = 0.4 if ctx.quick else 3.0
    for rnd in range(ctx.rounds):
        for key, label, tool, spec, srv in variants:
            if not res.is_ok(key):
                continue
            ctx.on(srv)
            try:
                if tool == RB:
                    m = ctx.rb_calibrated(spec, 50, 1, seconds, "vget:" + key)
                else:
                    m = ctx.raw(spec, pipeline=1)
            except Unavailable as e:
                res.unavailable(key, str(e))
                ctx.ensure_server(res, label)
                continue
            if ctx.ensure_server(res, label):
                res.unavailable(key, "server crashed")
                continue
            if m.get("misses"):
                res.note("%s (%s): %d reads returned nil on data that exists" % (label, tool, m["misses"]))
            m.pop("misses", None)
            res.add(key, **m)
            log("vget round %d/%d %-45s %-16s %10.0f/s" % (rnd + 1, ctx.rounds, label, tool, m["value"]))
    ctx.on("main")
    res.finalize()
    res.ratio("VER.GET ÷ GET without the module (redis-benchmark)", "mod_rb", "get_rb_p", ">=", 0.95)
    res.ratio("VER.GET ÷ two-round-trip read without the module (raw RESP)", "mod_raw", "rt2_raw_p",
              ">=", 1.8)
    res.ratio("VER.GET ÷ GET, same server (redis-benchmark)", "mod_rb", "get_rb", ">=", 0.95, info=True)
    res.ratio("VER.GET ÷ GET without the module (raw RESP)", "mod_raw", "get_raw_p", ">=", 0.95, info=True)
    # Server CPU per read is less sensitive to a busy machine than reads/s.
    a, b = res.med("get_rb_p", "srv_us"), res.med("mod_rb", "srv_us")
    res.goal("server CPU per read: GET without the module ÷ VER.GET (redis-benchmark)",
             a / b if a and b else None, ">=", 0.95, info=True, why_missing="no data")
    a, b = res.med("rt2_raw_p", "srv_us"), res.med("mod_raw", "srv_us")
    res.goal("server CPU per read: two-round-trip without the module ÷ VER.GET (raw RESP)",
             a / b if a and b else None, ">=", 1.8, info=True, why_missing="no data")
    ctx.each_server(lambda c: c.flushall())
    return res
