"""Redis Cluster: TAG.SET on one cluster node against a standalone server,
and a purge of keys spread over 3 masters against the same keys on one
standalone server."""

import time

import redis
from redis.cluster import RedisCluster

import harness
from report import Result, Unavailable, log
from runner import RB, VALUE, Server

from . import scenario

SECONDS = 3.0
CLUSTER_ARGS = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]


def _wait(pred, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return
        # Short: a resharding's end is timed by this wait.
        time.sleep(0.005)
    raise Unavailable("timed out waiting for " + what)


def _node(ctx, name, taken):
    srv = Server(ctx.server_bin, ctx.module_path, ctx.workdir, ctx.pin,
                 "%s-%d" % (name, len(ctx.extra_servers)), CLUSTER_ARGS)
    try:
        srv.port = harness.cluster_port(taken)
    except RuntimeError as e:
        raise Unavailable(str(e))
    ctx.extra_servers.append(srv)
    try:
        srv.start()
    except harness.ServerStartError:
        raise Unavailable("a cluster node did not start: %s" % srv.why_not_started())
    return srv


def _make_cluster(ctx, n):
    """n masters, no replicas, the 16384 slots split evenly; the module
    loaded in each."""
    taken = set()
    nodes = [_node(ctx, "cluster%d" % i, taken) for i in range(n)]
    per = 16384 // n
    for i, s in enumerate(nodes):
        last = 16383 if i == n - 1 else (i + 1) * per - 1
        s.client().execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
    for s in nodes[1:]:
        s.client().execute_command("CLUSTER", "MEET", "127.0.0.1", nodes[0].port)

    def ok():
        for s in nodes:
            info = s.client().execute_command("CLUSTER", "INFO").decode()
            if "cluster_state:ok" not in info or "cluster_known_nodes:%d" % n not in info:
                return False
        return True
    _wait(ok, 60, "cluster_state:ok on every node")
    return nodes


def _stop(nodes):
    for s in nodes:
        s.stop()


def _fill(client, n, pipeline_of):
    """TAG.SET ck:<i> <value> TAGS 1 p for i < n, through `pipeline_of`."""
    pipe = pipeline_of(client)
    for i in range(n):
        pipe.execute_command("TAG.SET", "ck:%07d" % i, VALUE, "TAGS", 1, "p")
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


@scenario("cluster", "cluster: TAG.SET on a one-node cluster vs standalone; "
                     "purge of N keys over 3 masters vs one standalone server")
def sc_cluster(ctx):
    n = 20000 if ctx.quick else 100000
    res = Result("cluster", "TAG.SET on one cluster node (redis-benchmark -c 50 -P 16, 100-byte "
                 "values, 2 tags) and the time of one TAG.PURGE of %s keys" % "{:,}".format(n),
                 [("writes/s or ms", "value", "num")])
    if not ctx.has_module():
        res.note("the module is not loaded: no cluster measurements")
        return res
    val = VALUE.decode()
    tagset = ["TAG.SET", "key:__rand_int__", val, "EX", "3600", "TAGS", "2", "t1", "t2"]
    plain = ["SET", "key:__rand_int__", val]
    res.row("one", "TAG.SET, one-node cluster (all slots)", RB)
    res.row("alone", "TAG.SET, standalone", RB)
    res.row("set_one", "SET, one-node cluster (all slots)", RB)
    res.row("set_alone", "SET, standalone", RB)
    res.row("p3", "TAG.PURGE, keys over 3 masters (asked of one)", "one call, ms")
    res.row("p1", "TAG.PURGE, the same keys on one standalone server", "one call, ms")
    try:
        one = _make_cluster(ctx, 1)
        three = _make_cluster(ctx, 3)
    except Unavailable as e:
        for k in ("one", "alone", "set_one", "set_alone", "p3", "p1"):
            res.unavailable(k, str(e))
        return res
    rc = RedisCluster(host="127.0.0.1", port=three[0].port, socket_timeout=600)
    seconds = 0.4 if ctx.quick else SECONDS
    try:
        for rnd in range(ctx.rounds):
            for key, srv, argv in (("one", one[0], tagset), ("alone", "main", tagset),
                                   ("set_one", one[0], plain), ("set_alone", "main", plain)):
                ctx.on(srv)
                ctx.r.flushall()
                m = ctx.rb_calibrated(argv, 50, 16, seconds, "cluster:" + key)
                m.pop("misses", None)
                res.add(key, **m)
                log("cluster round %d/%d %-45s %10.0f/s" % (rnd + 1, ctx.rounds, key, m["value"]))
            for s in three:
                s.client().flushall()
            _fill(rc, n, lambda c: c.pipeline(transaction=False))
            t0 = time.perf_counter()
            got = rc.execute_command("TAG.PURGE", "p", target_nodes=rc.get_primaries()[0])
            over3 = (time.perf_counter() - t0) * 1000
            res.add("p3", value=over3)
            if got != n:
                res.note("TAG.PURGE over 3 masters replied %r, expected %d" % (got, n))
            ctx.on("main")
            ctx.r.flushall()
            _fill(ctx.r, n, lambda c: c.pipeline(transaction=False))
            t0 = time.perf_counter()
            ctx.r.execute_command("TAG.PURGE", "p")
            alone = (time.perf_counter() - t0) * 1000
            res.add("p1", value=alone)
            log("cluster round %d/%d purge over 3 masters %.0f ms, one server %.0f ms" % (
                rnd + 1, ctx.rounds, over3, alone))
    except (redis.exceptions.RedisError, Unavailable) as e:
        res.note("cluster measurement stopped: %s" % e)
    finally:
        rc.close()
        ctx.on("main")
        _stop(one + three)
    res.finalize()
    res.ratio("TAG.SET on one cluster node ÷ on a standalone server", "one", "alone", ">=", 0.9)
    res.ratio("SET on one cluster node ÷ on a standalone server (what cluster mode costs "
              "any command)", "set_one", "set_alone", ">=", 0.9, info=True)
    res.ratio("TAG.PURGE of keys over 3 masters ÷ on one server (time)", "p3", "p1", "<=", 1.0,
              info=True)
    return res
