"""TAG.SET on the key shapes real caches have: keys re-tagged as they are
rewritten (two tags, each a fresh random number per write), and one big tag
shared by every key (`all`) beside a fresh one; on 100,000 and 1,000,000
keys. Against the Lua script and the client pipeline it replaces, and plain
SET with and without the module on the same keyspace (the module's tax)."""

from baseline import patterns
from report import Result, Unavailable, log
from runner import NM, RAW, RB, VALUE

from . import scenario

SECONDS = 3.0
SHAPES = {
    "fresh": ("two fresh random tags", ["t:__rand_int__", "u:__rand_int__"]),
    "all": ("a fresh random tag and `all`", ["t:__rand_int__", "all"]),
}


@scenario("tagshapes", "TAG.SET on re-tagging and shared-tag shapes, 100k and 1M keys: "
                       "vs Lua, pipeline, plain SET")
def sc_tagshapes(ctx):
    res = Result("tagshapes",
                 "tagged write, 100-byte value, EX 600, 2 tags drawn per write; 50 clients, "
                 "16 in flight per client",
                 [("writes/s", "value", "rate"), ("server µs/write", "srv_us", "us")])
    shas = {}
    ctx.each_server(lambda c: (c.flushall(), shas.update(patterns.load_scripts(c))))
    val = VALUE.decode()
    spaces = [100000] if ctx.quick else [100000, 1000000]
    rows = []
    for shape, (label, tags) in SHAPES.items():
        for space in spaces:
            sp = "{:,}".format(space)
            lua = ["EVALSHA", shas["tag_set"], "3", "key:__rand_int__"] + ["tag:" + t for t in tags] + [val, "600"]
            mod = ["TAG.SET", "key:__rand_int__", val, "EX", "600", "TAGS", "2"] + tags
            rows += [
                ("%s_%d_mod" % (shape, space), "TAG.SET, %s, %s keys" % (label, sp), RB, mod, "main"),
                ("%s_%d_lua" % (shape, space), "EVALSHA tag_set.lua, %s, %s keys%s" % (label, sp, NM), RB,
                 lua, "plain"),
                ("%s_%d_modraw" % (shape, space), "TAG.SET, %s, %s keys" % (label, sp), RAW,
                 "tagset_" + shape, "main"),
                ("%s_%d_pipe" % (shape, space), "pipeline SET+2x(SADD+EXPIRE), %s, %s keys%s"
                 % (label, sp, NM), RAW, "tag_pipeline_" + shape, "plain"),
            ]
    for space in spaces:
        sp = "{:,}".format(space)
        rows += [("set_%d_mod" % space, "SET, %s keys, module loaded" % sp, RB,
                  ["SET", "key:__rand_int__", val], "main"),
                 ("set_%d_plain" % space, "SET, %s keys%s" % (sp, NM), RB,
                  ["SET", "key:__rand_int__", val], "plain")]
    for key, label, tool, _, _ in rows:
        res.row(key, label, tool)
    seconds = 0.4 if ctx.quick else SECONDS
    for rnd in range(ctx.rounds):
        for key, label, tool, what, srv in rows:
            if not res.is_ok(key):
                continue
            space = int(key.split("_")[1])
            ctx.on(srv)
            ctx.r.flushall()
            try:
                if tool == RB:
                    m = ctx.rb_calibrated(what, 50, 16, seconds, "tagshapes:" + key, keyspace=space)
                else:
                    m = ctx.raw(what, pipeline=16, keyspace=space)
            except Unavailable as e:
                res.unavailable(key, str(e))
                ctx.ensure_server(res, label)
                continue
            m.pop("misses", None)
            res.add(key, **m)
            log("tagshapes round %d/%d %-62s %-16s %10.0f/s" % (rnd + 1, ctx.rounds, label, tool, m["value"]))
    ctx.on("main")
    res.finalize()
    for shape in SHAPES:
        for space in spaces:
            p = "%s_%d" % (shape, space)
            what = "%s, %s keys" % (SHAPES[shape][0], "{:,}".format(space))
            res.ratio("%s: TAG.SET ÷ EVALSHA tag_set.lua without the module" % what,
                      p + "_mod", p + "_lua", ">=", 1.4)
            res.ratio("%s: TAG.SET ÷ client pipeline without the module" % what,
                      p + "_modraw", p + "_pipe", ">=", 1.0)
    for space in spaces:
        res.ratio("%s keys: SET with the module ÷ without" % "{:,}".format(space),
                  "set_%d_mod" % space, "set_%d_plain" % space, ">=", 0.9)
    ctx.each_server(lambda c: c.flushall())
    return res
