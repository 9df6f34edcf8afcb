"""Memory per tagged key: TAG.SET against the client layout (SET + SADD)."""

import time

import redis

import resp
from report import BenchError, Result, log
from runner import VALUE

from . import scenario

N = 100000
_BATCHES = {}


def _fill_batches(how):
    if how not in _BATCHES:
        cmds = []
        for i in range(N):
            k = b"mem:%07d" % i
            t1, t2 = b"p:%d" % (i % 1000), b"c:%d" % (i % 10)
            if how == "module":
                cmds.append(resp.encode(b"TAG.SET", k, VALUE, b"TAGS", b"2", t1, t2))
            else:
                cmds.append(resp.encode(b"SET", k, VALUE))
                if how == "client":
                    cmds.append(resp.encode(b"SADD", b"tag:" + t1, k))
                    cmds.append(resp.encode(b"SADD", b"tag:" + t2, k))
        _BATCHES[how] = list(resp.batched(cmds, 1000))
    return _BATCHES[how]


@scenario("memory", "memory per key: TAG.SET vs SET + SADD into two tag sets")
def sc_memory(ctx):
    res = Result("memory",
                 "INFO used_memory growth per key, %s keys, 100-byte values, 2 tags each "
                 "(p:<i mod 1000>, c:<i mod 10>), fresh server per measurement" % "{:,}".format(N),
                 [("bytes/key", "value", "bytes"), ("RSS bytes/key", "rss", "bytes"),
                  ("keys in db", "dbsize", "int")])
    variants = [
        ("mod", "TAG.SET (module)", "module", True),
        ("client", "SET + SADD x2 (client layout)", "client", False),
        ("client_mod", "SET + SADD x2, module loaded", "client", True),
        ("plain", "SET only, no tags (floor)", "plain", False),
    ]
    for key, label, _, _ in variants:
        res.row(key, label, "pipelined fill")
    unavailable = ctx.probe(res, ["TAG.SET", "mem:probe", "x", "TAGS", "2", "a", "b"])
    ctx.r.flushall()
    if unavailable:
        res.unavailable("mod", unavailable)
    if not ctx.has_module():
        res.unavailable("client_mod", "module not loaded")
    for rnd in range(ctx.rounds):
        for key, label, how, needs_module in variants:
            if not res.is_ok(key):
                continue
            try:
                srv = ctx.new_server(ctx.server_bin, ctx.module_path if needs_module else None, "mem-" + key)
            except BenchError as e:
                res.unavailable(key, str(e)[:200])
                continue
            try:
                cl = srv.client()
                time.sleep(0.1)
                m0 = cl.info("memory")
                c = resp.Conn(srv.port, timeout=300)
                try:
                    _, err = c.pipeline(_fill_batches(how), deadline=time.monotonic() + 300)
                finally:
                    c.close()
                if err is not None:
                    res.unavailable(key, "fill failed: %s" % err)
                    continue
                time.sleep(0.2)
                m1 = cl.info("memory")
                dbsize = cl.dbsize()
            except (redis.exceptions.ConnectionError, ConnectionError, OSError) as e:
                res.note("%s: server lost during the fill (%s); log: %s" % (label, e, srv.log_tail(5)))
                res.unavailable(key, "server crashed")
                continue
            finally:
                srv.stop()
            per = (m1["used_memory"] - m0["used_memory"]) / N
            rss = (m1["used_memory_rss"] - m0["used_memory_rss"]) / N
            res.add(key, value=per, rss=rss, dbsize=dbsize)
            log("memory round %d/%d %-32s %6.0f bytes/key (rss %6.0f)" % (rnd + 1, ctx.rounds, label, per, rss))
    res.finalize()
    res.ratio("TAG.SET bytes/key ÷ client layout bytes/key", "mod", "client", "<=", 1.3)
    res.ratio("client layout with module loaded ÷ without", "client_mod", "client", "<=", 1.0, info=True)
    return res
