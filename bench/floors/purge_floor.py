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
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# The benchmark's RESP encoding, and the test harness's free loopback port.
sys.path.insert(0, os.path.join(HERE, ".."))
import resp  # noqa: E402

enc = resp.encode
free_port = resp.harness.free_port


class Server:
    def __init__(self, binary, module):
        self.work = tempfile.mkdtemp(prefix="purge-floor-")
        self.port = free_port()
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", self.work, "--loadmodule", os.path.abspath(module)]
        if shutil.which("taskset"):
            cmd = ["taskset", "-c", "0"] + cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=600)
                break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.1)

    def call(self, *args):
        self.sock.sendall(enc(*args))
        return self.read_one()

    def read_one(self):
        buf = b""
        while not buf.endswith(b"\r\n") or (buf[:1] == b"$" and buf.count(b"\r\n") < 2):
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise SystemExit("the server closed the connection")
            buf += chunk
        if buf[:1] == b"-":
            raise SystemExit(buf.decode(errors="replace"))
        return buf

    def pipeline(self, commands, replies):
        self.sock.sendall(b"".join(commands))
        got, buf = 0, b""
        while got < replies:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise SystemExit("the server closed the connection")
            buf += chunk
            got = buf.count(b"\r\n")
        if b"-" in buf[:1]:
            raise SystemExit(buf[:200].decode(errors="replace"))

    def stop(self):
        try:
            self.sock.sendall(enc("SHUTDOWN", "NOSAVE"))
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        shutil.rmtree(self.work, ignore_errors=True)


def fill(srv, n, tagged):
    value = b"v" * 100
    for start in range(0, n, 2000):
        cmds = []
        for i in range(start, min(n, start + 2000)):
            k = b"key:%d" % i
            if tagged:
                cmds.append(enc(b"TAG.SET", k, value, b"TAGS", b"1", b"t"))
            else:
                cmds += [enc(b"SET", k, value), enc(b"SADD", b"tag:t", k)]
        srv.pipeline(cmds, len(cmds))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", default="target/release/libredis_tagcache.so")
    ap.add_argument("--server", default=shutil.which("redis-server"))
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    floor = Server(a.server, os.path.join(HERE, "floor_purge.so"))
    tc = Server(a.server, a.module)
    try:
        with open(os.path.join(HERE, "..", "baseline", "purge.lua"), "rb") as f:
            sha = floor.call("SCRIPT", "LOAD", f.read()).split(b"\r\n")[1]
        for n in (int(x) for x in a.sizes.split(",")):
            tc.call("CONFIG", "SET", "tagcache.purge-atomic-max", str(n + 1))
            times = {"lua": [], "floor": [], "tag.purge": [], "del": []}
            del_cmd = enc(b"DEL", b"tag:t", *(b"key:%d" % i for i in range(n)))
            for _ in range(a.rounds):
                for kind in times:
                    srv = tc if kind == "tag.purge" else floor  # DEL: no module involved
                    srv.call("FLUSHALL")
                    fill(srv, n, kind == "tag.purge")
                    cmd = {"lua": ("EVALSHA", sha, "1", "tag:t"), "floor": ("FLOOR.PURGE", "tag:t"),
                           "tag.purge": ("TAG.PURGE", "t")}.get(kind)
                    t0 = time.perf_counter()
                    if cmd is None:
                        srv.sock.sendall(del_cmd)
                        reply = srv.read_one()
                    else:
                        reply = srv.call(*cmd)
                    times[kind].append((time.perf_counter() - t0) * 1000)
                    expected = n + 1 if cmd is None else n
                    if reply.strip() != b":%d" % expected:
                        raise SystemExit("%s deleted %r, expected %d" % (kind, reply, n))
            med = {k: statistics.median(v) for k, v in times.items()}
            print("N=%d: Lua %.2f ms, FLOOR.PURGE %.2f ms, TAG.PURGE (one step) %.2f ms, "
                  "variadic DEL %.2f ms; Lua / floor %.2fx, Lua / TAG.PURGE %.2fx, "
                  "floor / DEL %.2fx, TAG.PURGE / DEL %.2fx"
                  % (n, med["lua"], med["floor"], med["tag.purge"], med["del"],
                     med["lua"] / med["floor"], med["lua"] / med["tag.purge"],
                     med["floor"] / med["del"], med["tag.purge"] / med["del"]))
    finally:
        floor.stop()
        tc.stop()


if __name__ == "__main__":
    main()
