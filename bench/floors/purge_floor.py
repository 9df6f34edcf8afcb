"""A tag's purge at the least a module can do (FLOOR.PURGE of
floor_purge.so) against the seed Lua purge and TAG.PURGE, by the client's
wall time, on servers started here on loopback.

    python3 bench/floors/purge_floor.py [--module SO] [--server BIN] [--sizes 10000,100000] [--rounds 5]

Each round fills N keys (100-byte values) tagged `t` — with SET + SADD for
the Lua script, the floor and a variadic `DEL tag:t k1..kN` (the limit),
with TAG.SET for TAG.PURGE (its own server, `purge-atomic-max` above N: one
step) — and times one purge. The variants take turns within each round.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
# The benchmark's servers and RESP connection.
sys.path.insert(0, os.path.join(HERE, ".."))
import resp  # noqa: E402
import runner  # noqa: E402


def fill(conn, n, tagged):
    value = b"v" * 100

    def batches():
        for start in range(0, n, 2000):
            cmds = []
            for i in range(start, min(n, start + 2000)):
                k = b"key:%d" % i
                if tagged:
                    cmds.append((b"TAG.SET", k, value, b"TAGS", b"1", b"t"))
                else:
                    cmds += [(b"SET", k, value), (b"SADD", b"tag:t", k)]
            yield resp.encode_many(cmds), len(cmds)
    _, error = conn.pipeline(batches())
    if error is not None:
        raise SystemExit("fill: %s" % error)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", default="target/release/libredis_tagcache.so")
    ap.add_argument("--server", default=shutil.which("redis-server"))
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="purge-floor-")
    pin = bool(shutil.which("taskset"))
    servers = {
        "floor": runner.Server(a.server, os.path.join(HERE, "floor_purge.so"), work, pin, "floor"),
        # The server loads modules after it moves to its directory.
        "module": runner.Server(a.server, os.path.abspath(a.module), work, pin, "module"),
    }
    try:
        conns = {name: resp.Conn(s.start().port, timeout=600) for name, s in servers.items()}
        with open(os.path.join(HERE, "..", "baseline", "purge.lua"), "rb") as f:
            sha = conns["floor"].command("SCRIPT", "LOAD", f.read())
        for n in (int(x) for x in a.sizes.split(",")):
            conns["module"].command("CONFIG", "SET", "tagcache.purge-atomic-max", str(n + 1))
            purges = {
                "lua": ("floor", resp.encode("EVALSHA", sha, "1", "tag:t"), n),
                "floor": ("floor", resp.encode("FLOOR.PURGE", "tag:t"), n),
                "tag.purge": ("module", resp.encode("TAG.PURGE", "t"), n),
                # No module involved: the set and the keys, named.
                "del": ("floor", resp.encode(b"DEL", b"tag:t", *(b"key:%d" % i for i in range(n))),
                        n + 1),
            }
            times = {kind: [] for kind in purges}
            for _ in range(a.rounds):
                for kind, (where, payload, expected) in purges.items():
                    conn = conns[where]
                    conn.command("FLUSHALL")
                    fill(conn, n, where == "module")
                    reply, seconds = conn.timed(payload)
                    times[kind].append(seconds * 1000)
                    if reply != expected:
                        raise SystemExit("%s replied %r, expected %d" % (kind, reply, expected))
            med = {k: statistics.median(v) for k, v in times.items()}
            print("N=%d: Lua %.2f ms, FLOOR.PURGE %.2f ms, TAG.PURGE (one step) %.2f ms, "
                  "variadic DEL %.2f ms; Lua / floor %.2fx, Lua / TAG.PURGE %.2fx, "
                  "floor / DEL %.2fx, TAG.PURGE / DEL %.2fx"
                  % (n, med["lua"], med["floor"], med["tag.purge"], med["del"],
                     med["lua"] / med["floor"], med["lua"] / med["tag.purge"],
                     med["floor"] / med["del"], med["tag.purge"] / med["del"]))
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
