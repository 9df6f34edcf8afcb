"""Whole-server cost of one kind of write, on one server started here on
loopback: instructions and simulated cache misses per write under
callgrind (`--cache-sim=yes`), or, with --cpu, the server's own CPU time per
write (INFO cpu) at full speed.

    python3 bench/floors/profile_write.py KIND [--module SO] [--server BIN] [--cpu]

KIND: set (plain SET, 100-byte value), tagset-fresh / tagset-all (TAG.SET
with two fresh random tags / a fresh tag and `all`), lua-fresh / lua-all
(the seed tag_set.lua), pipe-fresh / pipe-all (SET EX + 2 x (SADD +
EXPIRE), pipelined), floorset-fresh (FLOOR.SET of floor_set.so). Keys and
tags are drawn from 1,000,000; 200,000 writes warm the server up, then
20,000 (callgrind) or 200,000 (--cpu) are measured, 16 to a round trip.
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# The benchmark's servers and RESP connection.
sys.path.insert(0, os.path.join(HERE, ".."))
import resp  # noqa: E402
import runner  # noqa: E402

SPACE = 1_000_000
VALUE = b"v" * 100


class Callgrind(runner.Server):
    """The benchmark's server, run under callgrind with instrumentation off
    until asked (valgrind runs it in the same process)."""

    def __init__(self, binary, module, workdir, out):
        super().__init__(binary, module, workdir, False, "callgrind")
        self.out = out

    def argv(self):
        return ["valgrind", "--tool=callgrind", "--cache-sim=yes", "--instr-atstart=no",
                "--callgrind-out-file=%s" % self.out] + super().argv()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind")
    ap.add_argument("--module")
    ap.add_argument("--server", default=shutil.which("redis-server"))
    ap.add_argument("--cpu", action="store_true")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="profile-write-")
    # The server loads modules after it moves to its directory.
    module = os.path.abspath(a.module) if a.module else None
    out = os.path.join(work, "cg.out")
    srv = (runner.Server(a.server, module, work, False, "cpu") if a.cpu
           else Callgrind(a.server, module, work, out))
    try:
        srv.start()
        c = resp.Conn(srv.port, timeout=600)
        sha = None
        if a.kind.startswith("lua"):
            with open(os.path.join(HERE, "..", "baseline", "tag_set.lua"), "rb") as f:
                sha = c.command("SCRIPT", "LOAD", f.read())
        rnd = random.Random(7)

        def one():
            k = b"key:%012d" % rnd.randrange(SPACE)
            t = b"t:%d" % rnd.randrange(SPACE)
            u = b"u:%d" % rnd.randrange(SPACE) if a.kind.endswith("fresh") else b"all"
            if a.kind == "set":
                return [(b"SET", k, VALUE)]
            if a.kind.startswith("tagset"):
                return [(b"TAG.SET", k, VALUE, b"EX", b"600", b"TAGS", b"2", t, u)]
            if a.kind.startswith("floorset"):
                return [(b"FLOOR.SET", k, VALUE, t, u)]
            if a.kind.startswith("lua"):
                return [(b"EVALSHA", sha, b"3", k, b"tag:" + t, b"tag:" + u, VALUE, b"600")]
            return [(b"SET", k, VALUE, b"EX", b"600"),
                    (b"SADD", b"tag:" + t, k), (b"EXPIRE", b"tag:" + t, b"900"),
                    (b"SADD", b"tag:" + u, k), (b"EXPIRE", b"tag:" + u, b"900")]

        def run(n):
            def batches():
                for _ in range(n // 16):
                    cmds = [cmd for _ in range(16) for cmd in one()]
                    yield resp.encode_many(cmds), len(cmds)
            _, error = c.pipeline(batches())
            if error is not None:
                raise SystemExit("%s: %s" % (a.kind, error))

        def cpu():
            info = c.command("INFO", "cpu").decode()
            d = dict(line.split(":", 1) for line in info.split("\r\n") if ":" in line)
            return float(d["used_cpu_user"]), float(d["used_cpu_sys"])

        run(200_000)
        if a.cpu:
            n = 200_000
            u0, s0 = cpu()
            t0 = time.perf_counter()
            run(n)
            t1 = time.perf_counter()
            u1, s1 = cpu()
            print("%s: %.0f writes/s (client-bound); server CPU per write: user %.2f us, sys %.2f us"
                  % (a.kind, n / (t1 - t0), (u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6))
            return
        n = 20_000
        pid = str(srv.proc.pid)
        subprocess.run(["callgrind_control", "-i", "on", pid], stdout=subprocess.DEVNULL, timeout=120)
        run(n)
        subprocess.run(["callgrind_control", "-d", pid], stdout=subprocess.DEVNULL, timeout=120)
        lines = subprocess.run(["callgrind_annotate", out + ".1"], capture_output=True,
                               text=True, timeout=600).stdout.splitlines()
        events = next(line for line in lines if line.startswith("Events shown")).split()[2:]
        totals = next(line for line in lines if "PROGRAM TOTALS" in line).split()
        m = dict(zip(events, (int(x.replace(",", "")) for x in totals if x.replace(",", "").isdigit())))
        print("%s: per write: %d instructions; L1 instruction misses %.0f; L1 data misses %.0f; "
              "last-level misses: read %.1f, write %.1f"
              % (a.kind, m["Ir"] / n, m["I1mr"] / n, (m["D1mr"] + m["D1mw"]) / n,
                 m["DLmr"] / n, m["DLmw"] / n))
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
