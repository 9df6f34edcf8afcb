"""Resharding: moving 300 slots that hold N tagged keys from one master to
another, with the module loaded (keys written by TAG.SET) and without it
(the same keys with SET and the same per-slot sets with SADD), by
`redis-cli --cluster reshard` (MIGRATE) and, where the server has it, by
atomic slot migration (CLUSTER MIGRATESLOTS)."""

import shutil
import subprocess
import time

import redis

from report import Result, Unavailable, log
from runner import VALUE

from . import scenario
from .cluster import _make_cluster, _stop, _wait

SLOTS = 300
TAGS = ("t1", "t2")


def _crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


_NAMES = {}


def _name_in(slot):
    """The smallest decimal number that hashes to `slot` (as the module
    names its per-slot sets)."""
    if not _NAMES:
        n = 0
        while len(_NAMES) < 16384 and n < 1_000_000:
            s = str(n).encode()
            _NAMES.setdefault(_crc16(s) & 16383, s)
            n += 1
    return _NAMES[slot]


def _keys(slots, n):
    """n key names spread over `slots` (a hash tag puts each in its slot)."""
    return [b"{%s}k%d" % (_name_in(slots[i % len(slots)]), i) for i in range(n)]


def _fill(client, keys, module):
    pipe = client.pipeline(transaction=False)
    for i, k in enumerate(keys):
        if module:
            pipe.execute_command("TAG.SET", k, VALUE, "TAGS", len(TAGS), *TAGS)
        else:
            pipe.set(k, VALUE)
            tag = k[:k.index(b"}") + 1]
            for t in TAGS:
                pipe.sadd(b"tagcache:idx:" + tag + t.encode(), k)
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()


def _id(node):
    return node.client().execute_command("CLUSTER", "MYID").decode()


def _owned(node, slot):
    for line in node.client().execute_command("CLUSTER", "NODES").decode().splitlines():
        f = line.split(" ")
        if "myself" in f[2].split(","):
            for r in f[8:]:
                if r.startswith("["):
                    continue
                a, _, b = r.partition("-")
                if int(a) <= slot <= int(b or a):
                    return True
    return False


def _move(nodes, src, dst, slots, how):
    if how == "migrate":
        out = subprocess.run(
            [shutil.which("redis-cli"), "--cluster", "reshard", "127.0.0.1:%d" % src.port,
             "--cluster-from", _id(src), "--cluster-to", _id(dst),
             "--cluster-slots", str(len(slots)), "--cluster-yes"],
            capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise Unavailable("redis-cli --cluster reshard failed: %s" % (out.stdout[-300:] + out.stderr))
    else:
        src.client().execute_command("CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", slots[0], slots[-1],
                                     "NODE", _id(dst))
        _wait(lambda: all(_owned(n, slots[-1]) == (n is dst) for n in nodes), 900,
              "the slots to be owned by the target on every node")


@scenario("reshard", "resharding 300 slots holding N tagged keys, module loaded vs not")
def sc_reshard(ctx):
    n = 10000 if ctx.quick else 100000
    res = Result("reshard", "time to move %d slots holding %s keys (2 tags each, 100-byte values) "
                 "from one master to another of 2" % (SLOTS, "{:,}".format(n)),
                 [("ms", "value", "ms")])
    if not ctx.has_module() or not shutil.which("redis-cli"):
        res.note("needs the module and redis-cli")
        return res
    hows = ["migrate"]
    rows = {}
    for how in ("migrate", "atomic"):
        for mod in (True, False):
            key = "%s_%s" % (how, "mod" if mod else "plain")
            rows[key] = (how, mod)
            res.row(key, "%s, %s" % ("redis-cli --cluster reshard (MIGRATE)" if how == "migrate"
                                      else "CLUSTER MIGRATESLOTS (atomic)",
                                      "module loaded, TAG.SET" if mod else "no module, SET + SADD"),
                    "one resharding")
    probe = None
    try:
        for rnd in range(ctx.rounds):
            for key, (how, mod) in rows.items():
                if not res.is_ok(key):
                    continue
                module = ctx.module_path if mod else None
                saved, ctx.module_path = ctx.module_path, module
                try:
                    nodes = _make_cluster(ctx, 2)
                finally:
                    ctx.module_path = saved
                try:
                    src, dst = nodes
                    if how == "atomic" and probe is None:
                        try:
                            src.client().execute_command("CLUSTER", "GETSLOTMIGRATIONS")
                            probe = True
                        except redis.ResponseError:
                            probe = False
                    if how == "atomic" and not probe:
                        res.unavailable(key, "the server has no atomic slot migration")
                        continue
                    # The first slots of src: those redis-cli moves first.
                    slots = list(range(SLOTS))
                    keys = _keys(slots, n)
                    _fill(redis.RedisCluster(host="127.0.0.1", port=src.port, socket_timeout=600),
                          keys, mod)
                    t0 = time.perf_counter()
                    _move(nodes, src, dst, slots, how)
                    ms = (time.perf_counter() - t0) * 1000
                    moved = dst.client().dbsize()
                    if moved < n:
                        res.note("%s: %d keys on the target after the move, expected at least %d"
                                 % (key, moved, n))
                    res.add(key, value=ms)
                    log("reshard round %d/%d %-14s %9.0f ms" % (rnd + 1, ctx.rounds, key, ms))
                except (redis.RedisError, Unavailable) as e:
                    res.unavailable(key, str(e))
                finally:
                    _stop(nodes)
    finally:
        ctx.on("main")
    res.finalize()
    for how in hows + (["atomic"] if probe else []):
        res.ratio("%s: module loaded ÷ without (time)" % how, "%s_mod" % how, "%s_plain" % how,
                  "<=", 1.2)
    return res
