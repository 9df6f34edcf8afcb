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
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SPACE = 1_000_000
VALUE = b"v" * 100

# The benchmark's RESP encoding, and the test harness's free loopback port.
sys.path.insert(0, os.path.join(HERE, ".."))
import resp  # noqa: E402

enc = resp.encode
free_port = resp.harness.free_port


class Conn:
    def __init__(self, port, deadline):
        self.sock = None
        while time.time() < deadline:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
                break
            except OSError:
                time.sleep(0.2)
        if self.sock is None:
            raise SystemExit("the server did not start")

    def send(self, payload, lines):
        """Sends, then reads until `lines` reply lines (simple replies) are in."""
        self.sock.sendall(payload)
        buf = b""
        while buf.count(b"\r\n") < lines:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise SystemExit("the server closed the connection")
            buf += chunk
        return buf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind")
    ap.add_argument("--module")
    ap.add_argument("--server", default=shutil.which("redis-server"))
    ap.add_argument("--cpu", action="store_true")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="profile-write-")
    port = free_port()
    cmd = [a.server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", work]
    if a.module:
        # The server loads modules after it moves to its directory.
        cmd += ["--loadmodule", os.path.abspath(a.module)]
    if not a.cpu:
        cmd = ["valgrind", "--tool=callgrind", "--cache-sim=yes", "--instr-atstart=no",
               "--callgrind-out-file=%s/cg.out" % work] + cmd
    srv = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        c = Conn(port, time.time() + 60)
        sha = None
        if a.kind.startswith("lua"):
            with open(os.path.join(HERE, "..", "baseline", "tag_set.lua"), "rb") as f:
                sha = c.send(enc("SCRIPT", "LOAD", f.read()), 2).split(b"\r\n")[1]
        rnd = random.Random(7)

        def one():
            k = b"key:%012d" % rnd.randrange(SPACE)
            t = b"t:%d" % rnd.randrange(SPACE)
            u = b"u:%d" % rnd.randrange(SPACE) if a.kind.endswith("fresh") else b"all"
            if a.kind == "set":
                return enc(b"SET", k, VALUE), 1
            if a.kind.startswith("tagset"):
                return enc(b"TAG.SET", k, VALUE, b"EX", b"600", b"TAGS", b"2", t, u), 1
            if a.kind.startswith("floorset"):
                return enc(b"FLOOR.SET", k, VALUE, t, u), 1
            if a.kind.startswith("lua"):
                return enc(b"EVALSHA", sha, b"3", k, b"tag:" + t, b"tag:" + u, VALUE, b"600"), 1
            return b"".join([enc(b"SET", k, VALUE, b"EX", b"600"),
                             enc(b"SADD", b"tag:" + t, k), enc(b"EXPIRE", b"tag:" + t, b"900"),
                             enc(b"SADD", b"tag:" + u, k), enc(b"EXPIRE", b"tag:" + u, b"900")]), 5

        def run(n):
            for _ in range(n // 16):
                parts = [one() for _ in range(16)]
                c.send(b"".join(p for p, _ in parts), sum(x for _, x in parts))

        def cpu():
            # One bulk reply: its length, then that many bytes.
            text = c.send(enc("INFO", "cpu"), 1)
            size = int(text[1:text.index(b"\r\n")])
            while len(text) < text.index(b"\r\n") + 2 + size:
                chunk = c.sock.recv(1 << 16)
                if not chunk:
                    raise SystemExit("the server closed the connection")
                text += chunk
            d = dict(line.split(":", 1) for line in text.decode().split("\r\n") if ":" in line)
            return float(d["used_cpu_user"]), float(d["used_cpu_sys"])

        run(200_000)
        if a.cpu:
            n = 200_000
            u0, s0 = cpu()
            t0 = time.time()
            run(n)
            t1 = time.time()
            u1, s1 = cpu()
            print("%s: %.0f writes/s (client-bound); server CPU per write: user %.2f us, sys %.2f us"
                  % (a.kind, n / (t1 - t0), (u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6))
        else:
            n = 20_000
            subprocess.run(["callgrind_control", "-i", "on", str(srv.pid)], stdout=subprocess.DEVNULL)
            run(n)
            subprocess.run(["callgrind_control", "-d", str(srv.pid)], stdout=subprocess.DEVNULL)
            subprocess.run(["callgrind_control", "-i", "off", str(srv.pid)], stdout=subprocess.DEVNULL)
        c.sock.sendall(enc("SHUTDOWN", "NOSAVE"))
        srv.wait(timeout=120)
        if not a.cpu:
            out = subprocess.run(["callgrind_annotate", work + "/cg.out.1"],
                                 capture_output=True, text=True).stdout.splitlines()
            events = next(line for line in out if line.startswith("Events shown")).split()[2:]
            totals = next(line for line in out if "PROGRAM TOTALS" in line).split()
            m = dict(zip(events, (int(x.replace(",", "")) for x in totals if x.replace(",", "").isdigit())))
            print("%s: per write: %d instructions; L1 instruction misses %.0f; L1 data misses %.0f; "
                  "last-level misses: read %.1f, write %.1f"
                  % (a.kind, m["Ir"] / n, m["I1mr"] / n, (m["D1mr"] + m["D1mw"]) / n,
                     m["DLmr"] / n, m["DLmw"] / n))
    finally:
        if srv.poll() is None:
            srv.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
