#!/usr/bin/env python3
"""tagcache benchmark: the module's commands against the client patterns they
replace, and against plain Redis commands as the upper limit.

    python3 bench/bench.py                     # full run, writes bench/results.json
    python3 bench/bench.py --quick             # short smoke run
    python3 bench/bench.py --only purge,vget   # some scenarios only

The scenarios run against two redis-servers started here (loopback, no
persistence): one with the module loaded and one without it, for the
baselines as users run them today (the memory scenario starts a fresh server
per measurement). Servers are pinned to CPU 0 and the load generators to CPU 1
when the machine has two CPUs and `taskset`. All comparisons inside a scenario
come from the same run; each figure is the median over --rounds rounds (at
least 5), with the variants interleaved inside every round.

A module command that the loaded module does not have (unknown command) makes
its rows "unavailable"; the other rows still run. See BENCHMARKS.md.

To add a scenario, write `def sc_name(ctx) -> Result` and decorate it with
@scenario("name", "description"); see the scenario registry below.
"""

import argparse
import array
import datetime
import gc
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import redis  # noqa: E402

import loadgen  # noqa: E402
import resp  # noqa: E402
from baseline import patterns  # noqa: E402
from baseline import stampede  # noqa: E402

VALUE = b"v" * 100
SERVER_CPU = 0
LOAD_CPU = 1
KEYSPACE = 100000
INITIAL_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
RB = "redis-benchmark"
RAW = "Python raw RESP"   # loadgen's epoll client: pre-encoded commands, 1 process
PYR = "Python redis-py"   # loadgen's redis-py client: 5 processes x 10 threads

# ---------------------------------------------------------------------------
# Scenario registry. A scenario is a function taking the run context and
# returning a Result. Register new ones (e.g. a lease "stampede" scenario) with
# @scenario("name", "one-line description"); they run in registration order.
# ---------------------------------------------------------------------------
SCENARIOS = {}


def scenario(name, description):
    def deco(fn):
        SCENARIOS[name] = (fn, description)
        return fn
    return deco


class Unavailable(Exception):
    """The module command needed by a variant is not there (or failed)."""


class BenchError(Exception):
    pass


def log(msg):
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------
def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Result:
    """Rows of measurements (one per variant) and goal lines for one scenario."""

    def __init__(self, name, title, columns):
        self.name = name
        self.title = title
        # columns: list of (header, field, kind) where kind picks the format.
        self.columns = columns
        self.rows = []
        self._by_key = {}
        self.goals = []
        self.notes = []
        self.error = None

    def row(self, key, label, tool):
        if key not in self._by_key:
            r = {"key": key, "label": label, "tool": tool, "samples": [],
                 "status": "ok", "median": {}, "min": {}, "max": {}}
            self.rows.append(r)
            self._by_key[key] = r
        return self._by_key[key]

    def add(self, key, **fields):
        self._by_key[key]["samples"].append(fields)

    def unavailable(self, key, reason):
        r = self._by_key[key]
        if r["status"] == "ok":
            r["status"] = "unavailable: %s" % reason

    def is_ok(self, key):
        return self._by_key[key]["status"] == "ok"

    def note(self, text):
        if text not in self.notes:
            self.notes.append(text)
            log("note: " + text)

    def finalize(self):
        for r in self.rows:
            fields = sorted({f for s in r["samples"] for f in s})
            for f in fields:
                vals = [s.get(f) for s in r["samples"]
                        if isinstance(s.get(f), (int, float)) and not isinstance(s.get(f), bool)]
                if vals:
                    r["median"][f] = _median(vals)
                    r["min"][f] = min(vals)
                    r["max"][f] = max(vals)
            if r["status"] == "ok" and not r["samples"]:
                r["status"] = "no data"

    def med(self, key, field="value"):
        r = self._by_key.get(key)
        if r is None or r["status"] != "ok":
            return None
        return r["median"].get(field)

    def goal(self, label, value, op, target, unit="x", info=False, why_missing=None, row=None, short=None):
        if value is None:
            verdict = "n/a"
        elif info:
            verdict = "info"
        elif op == ">=":
            verdict = "PASS" if value >= target else "FAIL"
        elif op == "<=":
            verdict = "PASS" if value <= target else "FAIL"
        elif op == "<":
            verdict = "PASS" if value < target else "FAIL"
        elif op == "==":
            verdict = "PASS" if value == target else "FAIL"
        else:
            raise ValueError(op)
        self.goals.append({"label": label, "value": value, "op": op, "target": target,
                           "unit": unit, "verdict": verdict, "info": info,
                           "missing": why_missing if value is None else None,
                           "row": row, "short": short or label})

    def ratio(self, label, num, den, op, target, field="value", info=False, attach="num"):
        """Goal on median(num) / median(den). In the Markdown table the goal is
        shown on the `num` row, or on the `den` row with attach="den" (for
        goals written as baseline ÷ module)."""
        a, b = self.med(num, field), self.med(den, field)
        value = a / b if (a is not None and b not in (None, 0)) else None
        missing = None
        if value is None:
            missing = "; ".join(
                "%s %s" % (self._by_key[k]["label"], self._by_key[k]["status"])
                for k in (num, den) if k in self._by_key and self._by_key[k]["status"] != "ok")
        if attach == "den":
            n = self._by_key.get(num)
            short = "%s (%s) ÷ this" % (n["label"], n["tool"]) if n else label
        else:
            d = self._by_key.get(den)
            short = "vs %s (%s)" % (d["label"], d["tool"]) if d else label
        if field != "value":
            short = "%s, %s" % (field, short)
        self.goal(label, value, op, target, "x", info=info, why_missing=missing or "no data",
                  row=num if attach == "num" else den, short=short)

    def to_json(self):
        return {"name": self.name, "title": self.title, "rows": self.rows,
                "goals": self.goals, "notes": self.notes, "error": self.error,
                "columns": [{"header": h, "field": f, "kind": k} for h, f, k in self.columns]}


def fmt(v, kind):
    if v is None:
        return "-"
    if kind == "rate":
        return "{:,.0f}".format(v)
    if kind == "us":
        return "%.2f" % v
    if kind == "ms":
        if v >= 100:
            return "%.0f" % v
        if v >= 10:
            return "%.1f" % v
        return "%.2f" % v if v >= 1 else "%.3f" % v
    if kind == "bytes":
        return "%.0f" % v
    if kind == "int":
        return "%d" % v
    return str(v)


def fmt_goal(g):
    if g["unit"] == "x":
        val = "-" if g["value"] is None else "%.2fx" % g["value"]
        tgt = "%s %gx" % (g["op"].replace(">=", "≥").replace("<=", "≤"), g["target"])
    else:
        val = "-" if g["value"] is None else "%s %s" % (fmt(g["value"], "ms"), g["unit"])
        tgt = "%s %g %s" % (g["op"].replace(">=", "≥").replace("<=", "≤"), g["target"], g["unit"])
    if g["info"]:
        tgt = "(for reading)"
    return val, tgt


def render_text(res):
    out = []
    out.append("")
    out.append("== %s: %s" % (res.name, res.title))
    if res.error:
        out.append("   ERROR: %s" % res.error)
    headers = ["variant", "generator"] + [h for h, _, _ in res.columns] + ["spread of 1st col (min..max)"]
    table = []
    for r in res.rows:
        cells = [r["label"], r["tool"]]
        if r["status"] != "ok":
            cells += [r["status"]] + [""] * (len(res.columns))
        else:
            for _, f, k in res.columns:
                cells.append(fmt(r["median"].get(f), k))
            f0, k0 = res.columns[0][1], res.columns[0][2]
            cells.append("%s..%s" % (fmt(r["min"].get(f0), k0), fmt(r["max"].get(f0), k0)))
        table.append(cells)
    widths = [max(len(str(row[i])) for row in [headers] + table if i < len(row))
              for i in range(len(headers))]
    for row in [headers] + table:
        if len(row) == len(headers) and not str(row[2]).startswith("unavailable") \
                and not str(row[2]).startswith("no data"):
            out.append("   " + "  ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)))
        else:
            out.append("   " + "  ".join(str(c).ljust(widths[i]) for i, c in enumerate(row[:3])))
    if res.goals:
        out.append("   goals:")
        lw = max(len(g["label"]) for g in res.goals)
        for g in res.goals:
            val, tgt = fmt_goal(g)
            line = "     %s  %10s  %-14s %s" % (g["label"].ljust(lw), val, tgt, g["verdict"])
            if g["missing"]:
                line += "  (%s)" % g["missing"]
            out.append(line)
    for n in res.notes:
        out.append("   note: %s" % n)
    return "\n".join(out)


def render_markdown(res):
    out = ["### %s — %s" % (res.name, res.title), ""]
    if res.error:
        out += ["**Error:** %s" % res.error, ""]
    hdr = ["variant", "generator"] + [h for h, _, _ in res.columns] + ["min..max (1st col)", "goal"]
    out.append("| " + " | ".join(hdr) + " |")
    out.append("|" + "---|" * len(hdr))
    for r in res.rows:
        goals = []
        for g in res.goals:
            if g.get("row") == r["key"] and not g["info"]:
                val, tgt = fmt_goal(g)
                goals.append("%s %s: %s %s" % (tgt, g["short"], val, g["verdict"]))
        if r["status"] != "ok":
            cells = [r["label"], r["tool"], r["status"]] + [""] * len(res.columns)
        else:
            cells = [r["label"], r["tool"]] + [fmt(r["median"].get(f), k) for _, f, k in res.columns]
            f0, k0 = res.columns[0][1], res.columns[0][2]
            cells.append("%s..%s" % (fmt(r["min"].get(f0), k0), fmt(r["max"].get(f0), k0)))
        cells.append("; ".join(goals))
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if res.goals:
        out += ["", "| goal | measured | target | verdict |", "|---|---|---|---|"]
        for g in res.goals:
            val, tgt = fmt_goal(g)
            verdict = g["verdict"] + (" (%s)" % g["missing"] if g["missing"] else "")
            out.append("| %s | %s | %s | %s |" % (g["label"], val, tgt, verdict))
    for n in res.notes:
        out += ["", "- %s" % n]
    out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------
def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    def __init__(self, binary, module, workdir, pin, name):
        self.binary = binary
        self.module = module
        self.workdir = workdir
        self.pin = pin
        self.name = name
        self.proc = None
        self.port = None
        self.logfile = None
        self.starts = 0

    def start(self):
        last = ""
        for _ in range(5):
            self.starts += 1
            self.port = free_port()
            self.logfile = os.path.join(self.workdir, "%s-%d.log" % (self.name, self.starts))
            cmd = (["taskset", "-c", str(SERVER_CPU)] if self.pin else []) + [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--dir", self.workdir, "--logfile", self.logfile,
                "--dbfilename", "dump-%s-%d.rdb" % (self.name, self.starts)]
            if self.module:
                cmd += ["--loadmodule", self.module]
            errf = open(self.logfile + ".stderr", "ab")
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf)
            errf.close()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    c = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
                    c.ping()
                    c.close()
                    return self
                except redis.exceptions.ConnectionError:
                    time.sleep(0.05)
                except redis.exceptions.BusyLoadingError:
                    time.sleep(0.05)
            last = self.log_tail()
            self.stop()
            if "Address already in use" not in last:
                break
        raise BenchError("redis-server did not start: %s" % _start_failure(last))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout=300):
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout)

    def log_tail(self, n=25):
        text = ""
        for path in (self.logfile, (self.logfile or "") + ".stderr"):
            if path and os.path.exists(path):
                with open(path, "rb") as f:
                    lines = f.read().decode(errors="replace").splitlines()
                text += "\n".join(lines[-n:]) + "\n"
        return text

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                c = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
                c.execute_command("SHUTDOWN", "NOSAVE")
            except Exception:  # noqa: BLE001 - the connection drops on shutdown
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        self.proc = None


def _start_failure(log_text):
    """The log lines that say why a server did not start, on one line."""
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    why = [ln for ln in lines if any(w in ln.lower() for w in
                                     ("module", "error", "fatal", "can't", "cannot", "failed"))]
    text = " | ".join((why or lines)[-3:])
    return text[-400:] or "no log output"


class CpuWatch:
    """How much CPU processes outside this benchmark used over an interval.

    The machine may be shared (builds, test suites). Busy time from /proc/stat
    minus this process, its waited children and the running server leaves what
    others used; reported as a percentage of one CPU.
    """

    def __init__(self, ctx):
        self.ctx = ctx
        self.tck = os.sysconf("SC_CLK_TCK")
        self.start = self._snap()

    def _snap(self):
        total = steal = 0
        try:
            with open("/proc/stat") as f:
                parts = f.readline().split()[1:]
            v = [int(x) for x in parts]
            # user nice system idle iowait irq softirq steal ...
            total = v[0] + v[1] + v[2] + v[5] + v[6]
            steal = v[7] if len(v) > 7 else 0
        except (OSError, ValueError, IndexError):
            pass
        t = os.times()
        own = (t.user + t.system + t.children_user + t.children_system) * self.tck
        srv = 0
        pids = []
        for s in (self.ctx.servers() if self.ctx.main_server else []):
            if s.proc is None:
                continue
            pids.append(s.proc.pid)
            try:
                with open("/proc/%d/stat" % s.proc.pid) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                srv += int(fields[11]) + int(fields[12])
            except (OSError, ValueError, IndexError):
                pass
        return time.monotonic(), total, steal, own, srv, tuple(pids)

    def foreign(self):
        t0, tot0, st0, own0, srv0, pid0 = self.start
        t1, tot1, st1, own1, srv1, pid1 = self._snap()
        if pid0 != pid1:
            srv0 = 0  # the server was restarted; its old time is lost
        wall = (t1 - t0) * self.tck
        if wall <= 0:
            return None, None
        other = (tot1 - tot0) - (own1 - own0) - (srv1 - srv0)
        return max(0.0, other / wall * 100.0), (st1 - st0) / wall * 100.0


def server_cpu(client):
    i = client.info("cpu")
    if "used_cpu_user_main_thread" in i:
        return float(i["used_cpu_user_main_thread"]) + float(i["used_cpu_sys_main_thread"])
    return float(i["used_cpu_user"]) + float(i["used_cpu_sys"])


def cmdstat(client, name):
    st = client.info("commandstats")
    return st.get("cmdstat_" + name.lower(), {})


# ---------------------------------------------------------------------------
# Context handed to scenarios
# ---------------------------------------------------------------------------
class Ctx:
    def __init__(self, args, workdir, pin, server_bin, module_path):
        self.args = args
        self.quick = args.quick
        self.rounds = args.rounds
        self.workdir = workdir
        self.pin = pin
        self.server_bin = server_bin
        self.module_path = module_path
        self.module_load_error = None
        self.server = None
        self.main_server = None
        self.plain_server = None
        self.crashes = []
        self.commands_checked = {}

    # -- the shared server -------------------------------------------------
    def start_main(self):
        self.server = Server(self.server_bin, self.module_path, self.workdir, self.pin, "main")
        try:
            self.server.start()
        except BenchError as e:
            if not self.module_path:
                raise
            self.module_load_error = str(e)
            log("the server did not start with the module loaded; running without it")
            self.server = Server(self.server_bin, None, self.workdir, self.pin, "main-nomodule")
            self.server.start()
        self.main_server = self.server
        # The baselines as users run them today: a server without the module
        # (the module's keyspace hooks may tax plain commands on its server).
        if self.server.module:
            self.plain_server = Server(self.server_bin, None, self.workdir, self.pin, "plain")
            self.plain_server.start()
        else:
            self.plain_server = self.server
        self.r = self.server.client()

    def servers(self):
        out = [self.main_server]
        if self.plain_server is not self.main_server:
            out.append(self.plain_server)
        return out

    def on(self, which):
        """Make `which` ('main': module loaded, 'plain': no module) the
        server that the helpers below talk to."""
        srv = self.main_server if which == "main" else self.plain_server
        if srv is not self.server:
            self.server = srv
            self.r = srv.client()
        return self

    def each_server(self, fn):
        """Run fn(client) on every distinct server (data set-up, scripts)."""
        cur = "main" if self.server is self.main_server else "plain"
        for which in ("main", "plain"):
            self.on(which)
            fn(self.r)
            if self.plain_server is self.main_server:
                break
        self.on(cur)

    def ensure_server(self, res=None, during=""):
        """Restart the shared server if it died; record the crash."""
        if self.server.alive():
            return False
        tail = self.server.log_tail(40)
        msg = "redis-server died%s; log tail:\n%s" % (" during " + during if during else "", tail)
        self.crashes.append(msg)
        if res is not None:
            res.note("redis-server crashed%s (see results.json crashes)" %
                     (" during " + during if during else ""))
        log(msg)
        self.server.stop()
        self.server.start()
        self.r = self.server.client()
        return True

    @property
    def port(self):
        return self.server.port

    def conn(self):
        return resp.Conn("127.0.0.1", self.port, timeout=600)

    def has_module(self):
        return bool(self.main_server.module)

    # -- module command probing -------------------------------------------
    def probe(self, res, args, check=None):
        """Run one module command once. Returns None if usable, else the reason.

        An unknown command (or no module) is 'unavailable'; any other error
        reply is recorded as such. `check(reply)` may return a string naming
        behaviour that does not match SPEC.md: that is noted, not fatal.
        """
        name = args[0].upper()
        self.on("main")
        if not self.has_module():
            return "module not loaded" + (" (%s)" % self.module_load_error[:200]
                                          if self.module_load_error else "")
        try:
            reply = self.r.execute_command(*args)
        except redis.exceptions.ResponseError as e:
            s = str(e)
            if "unknown command" in s.lower():
                return "%s: unknown command" % name
            res.note("%s %s replied with an error: %s" %
                     (name, " ".join(str(a)[:20] for a in args[1:]), s))
            return "%s error: %s" % (name, s[:120])
        except redis.exceptions.ConnectionError as e:
            self.ensure_server(res, "probe of %s" % name)
            return "%s crashed the server (%s)" % (name, e)
        if check:
            try:
                problem = check(reply)
            except redis.exceptions.RedisError as e:
                problem = "check failed: %s" % e
            if problem:
                res.note("%s: %s" % (name, problem))
        return None

    # -- load generators ---------------------------------------------------
    def rb(self, argv, clients=50, pipeline=1, n=100000, keyspace=KEYSPACE):
        cmd = (["taskset", "-c", str(LOAD_CPU)] if self.pin else []) + [
            "redis-benchmark", "-h", "127.0.0.1", "-p", str(self.port), "-c", str(clients),
            "-n", str(int(n)), "-r", str(keyspace), "-q", "--csv"]
        if pipeline > 1:
            cmd += ["-P", str(pipeline)]
        cmd += [a.decode() if isinstance(a, bytes) else str(a) for a in argv]
        name = str(argv[0]).lower()
        before_stat = cmdstat(self.r, name)
        cpu0 = server_cpu(self.r)
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise BenchError("redis-benchmark timed out")
        cpu1 = server_cpu(self.r) if self.server.alive() else cpu0
        after_stat = cmdstat(self.r, name) if self.server.alive() else {}
        out = p.stdout.decode(errors="replace")
        err = p.stderr.decode(errors="replace")
        if "Error from server" in out + err or p.returncode != 0:
            line = [ln for ln in (out + err).splitlines() if "Error" in ln or "rror" in ln]
            raise Unavailable((line[0] if line else "redis-benchmark exit %d" % p.returncode)[:200])
        rows = [ln for ln in out.splitlines() if ln.startswith('"') and not ln.startswith('"test"')]
        if not rows:
            raise BenchError("no CSV row from redis-benchmark: %r" % out[-300:])
        fields = [f.strip('"') for f in rows[-1].split('","')]
        rps = float(fields[1])
        calls = after_stat.get("calls", 0) - before_stat.get("calls", 0)
        failed = after_stat.get("failed_calls", 0) - before_stat.get("failed_calls", 0)
        if failed:
            raise Unavailable("%d of %d %s calls failed" % (failed, calls, name.upper()))
        return {"value": rps, "srv_us": (cpu1 - cpu0) / max(calls, 1) * 1e6 if calls else None,
                "p50_ms": float(fields[4]), "p99_ms": float(fields[6]), "calls": calls}

    def rb_calibrated(self, argv, clients, pipeline, seconds, cache, key):
        """Pick -n so that one run lasts about `seconds`."""
        if key not in cache:
            n0 = 20000 if self.quick else 50000
            rate = self.rb(argv, clients, pipeline, n0)["value"]
            cache[key] = int(min(5_000_000, max(n0, rate * seconds)))
        return self.rb(argv, clients, pipeline, cache[key])

    def py(self, kind, conns=50, pipeline=1, params=None):
        duration = 0.6 if self.quick else 3.0
        warmup = 0.3 if self.quick else 0.7
        marks = {}

        def on_window(which):
            marks[which] = server_cpu(self.r)

        out = loadgen.run(self.port, kind, conns=conns, procs=5, pipeline=pipeline,
                          keyspace=KEYSPACE, duration=duration, warmup=warmup,
                          cpu=LOAD_CPU if self.pin else None, params=params,
                          on_window=on_window)
        if out["errors"]:
            raise Unavailable("; ".join(out["errors"])[:200])
        srv = None
        if out["ops"] and "start" in marks and "end" in marks:
            srv = (marks["end"] - marks["start"]) / out["ops"] * 1e6
        return {"value": out["ops_per_sec"], "srv_us": srv, "misses": out["misses"]}


# ---------------------------------------------------------------------------
# Fill helpers (pre-encoded RESP, cached across rounds)
# ---------------------------------------------------------------------------
_ENC_CACHE = {}


def _enc_client_fill(prefix, tag, n, width):
    """MSET batches for the values, then SADD batches into tag:<tag>."""
    ck = ("client", prefix, tag, n)
    if ck in _ENC_CACHE:
        return _ENC_CACHE[ck]
    names = [("%s%0*d" % (prefix, width, i)).encode() for i in range(n)]
    cmds = []
    for i in range(0, n, 500):
        args = [b"MSET"]
        for k in names[i:i + 500]:
            args += [k, VALUE]
        cmds.append(resp.encode(*args))
    for i in range(0, n, 1000):
        cmds.append(resp.encode(b"SADD", (patterns.TAG_PREFIX + tag).encode(), *names[i:i + 1000]))
    batches = list(resp.batched(cmds, 20))
    _ENC_CACHE[ck] = (batches, names)
    return batches, names


def _enc_module_fill(prefix, tag, n, width):
    ck = ("module", prefix, tag, n)
    if ck in _ENC_CACHE:
        return _ENC_CACHE[ck]
    tagb = tag.encode()
    head = b"*6\r\n$7\r\nTAG.SET\r\n"
    tail = b"$100\r\n" + VALUE + b"\r\n$4\r\nTAGS\r\n$1\r\n1\r\n$%d\r\n%s\r\n" % (len(tagb), tagb)
    names = [("%s%0*d" % (prefix, width, i)).encode() for i in range(n)]
    cmds = (head + b"$%d\r\n%s\r\n" % (len(k), k) + tail for k in names)
    batches = list(resp.batched(cmds, 1000))
    _ENC_CACHE[ck] = (batches, names)
    return batches, names


def fill(ctx, how, prefix, tag, n, width=7):
    """Write n keys (100-byte values) carrying `tag`. how: 'module' | 'client'."""
    if how == "module":
        batches, names = _enc_module_fill(prefix, tag, n, width)
    else:
        batches, names = _enc_client_fill(prefix, tag, n, width)
    c = ctx.conn()
    try:
        _, err = c.pipeline(batches, deadline=time.monotonic() + 600)
    finally:
        c.close()
    if err is not None:
        raise Unavailable("fill with %s failed: %s" % (how, err))
    return names


# ---------------------------------------------------------------------------
# Scenario 1: tagged writes
# ---------------------------------------------------------------------------
@scenario("tagset", "tagged write: TAG.SET vs EVALSHA script vs client pipeline vs plain SET")
def sc_tagset(ctx):
    res = Result("tagset",
                 "tagged write, 100-byte value, EX 3600, 2 tags; 50 clients, 16 in flight per client",
                 [("writes/s", "value", "rate"), ("server µs/write", "srv_us", "us")])
    r = ctx.r
    r.flushall()
    val = VALUE.decode()

    def check(reply):
        problems = []
        if reply not in (b"OK", "OK", True):
            problems.append("reply %r, expected OK" % (reply,))
        if r.get("probe:k") != VALUE:
            problems.append("GET probe:k does not return the value")
        ttl = r.ttl("probe:k")
        if not (3590 <= ttl <= 3600):
            problems.append("TTL after EX 3600 is %s" % ttl)
        for t in ("t1", "t2"):
            if not r.sismember("tag:" + t, "probe:k"):
                problems.append("key not in tag:%s" % t)
        return "; ".join(problems)

    unavailable = ctx.probe(res, ["TAG.SET", "probe:k", VALUE, "EX", "3600", "TAGS", "2", "t1", "t2"], check)
    ctx.each_server(lambda c: c.flushall())
    shas = {}
    ctx.each_server(lambda c: shas.update(patterns.load_scripts(c)))
    sha = shas["tag_set"]
    seconds = 0.4 if ctx.quick else 3.0
    rb_args = {
        "mod": ["TAG.SET", "key:__rand_int__", val, "EX", "3600", "TAGS", "2", "t1", "t2"],
        "lua": ["EVALSHA", sha, "3", "key:__rand_int__", "tag:t1", "tag:t2", val, "3600"],
        "set": ["SET", "key:__rand_int__", val],
    }
    py_kind = {(RAW, "mod"): "raw_tagset_module", (RAW, "pipe"): "raw_tag_pipeline", (RAW, "set"): "raw_set",
               (PYR, "mod"): "tagset_module", (PYR, "pipe"): "tag_pipeline", (PYR, "set"): "set"}
    NM = ", no module loaded"
    # key, label, generator, what, server ('main' has the module, 'plain' not)
    variants = [
        ("mod_rb", "TAG.SET", RB, "mod", "main"),
        ("lua_rb", "EVALSHA tag_set.lua", RB, "lua", "main"),
        ("set_rb", "SET (limit)", RB, "set", "main"),
        ("lua_rb_p", "EVALSHA tag_set.lua" + NM, RB, "lua", "plain"),
        ("set_rb_p", "SET (limit)" + NM, RB, "set", "plain"),
        ("mod_raw", "TAG.SET", RAW, "mod", "main"),
        ("pipe_raw", "pipeline SET+2x(SADD+EXPIRE)", RAW, "pipe", "main"),
        ("set_raw", "SET (limit)", RAW, "set", "main"),
        ("pipe_raw_p", "pipeline SET+2x(SADD+EXPIRE)" + NM, RAW, "pipe", "plain"),
        ("set_raw_p", "SET (limit)" + NM, RAW, "set", "plain"),
        ("mod_py", "TAG.SET", PYR, "mod", "main"),
        ("pipe_py", "pipeline SET+2x(SADD+EXPIRE)", PYR, "pipe", "main"),
        ("set_py", "SET (limit)", PYR, "set", "main"),
    ]
    for key, label, tool, what, srv in variants:
        res.row(key, label, tool)
        if what == "mod" and unavailable:
            res.unavailable(key, unavailable)
    ncache = {}
    for rnd in range(ctx.rounds):
        for key, label, tool, what, srv in variants:
            if not res.is_ok(key):
                continue
            ctx.on(srv)
            ctx.r.flushall()
            try:
                if tool == RB:
                    m = ctx.rb_calibrated(rb_args[what], 50, 16, seconds, ncache, key)
                else:
                    m = ctx.py(py_kind[(tool, what)], pipeline=16)
            except Unavailable as e:
                res.unavailable(key, str(e))
                ctx.ensure_server(res, label)
                continue
            if ctx.ensure_server(res, label):
                res.unavailable(key, "server crashed")
                continue
            res.add(key, **m)
            log("tagset round %d/%d %-45s %-16s %10.0f/s" % (rnd + 1, ctx.rounds, label, tool, m["value"]))
            if what == "mod" and rnd == 0:
                _check_tag_index(ctx, res, "after TAG.SET load (%s)" % tool)
    ctx.on("main")
    res.finalize()
    res.ratio("TAG.SET ÷ EVALSHA tag_set.lua without the module (redis-benchmark)",
              "mod_rb", "lua_rb_p", ">=", 2)
    res.ratio("TAG.SET ÷ client pipeline without the module (raw RESP)", "mod_raw", "pipe_raw_p", ">=", 2)
    res.ratio("TAG.SET ÷ client pipeline, same server (redis-py)", "mod_py", "pipe_py", ">=", 2)
    res.ratio("TAG.SET ÷ SET without the module (redis-benchmark)", "mod_rb", "set_rb_p", ">=", 0.6)
    res.ratio("TAG.SET ÷ EVALSHA tag_set.lua, same server (redis-benchmark)", "mod_rb", "lua_rb", ">=", 2,
              info=True)
    res.ratio("TAG.SET ÷ client pipeline, same server (raw RESP)", "mod_raw", "pipe_raw", ">=", 2, info=True)
    a, b = res.med("pipe_raw_p", "srv_us"), res.med("mod_raw", "srv_us")
    res.goal("server CPU per write: pipeline without the module ÷ TAG.SET (raw RESP)",
             a / b if a and b else None, ">=", 2, info=True, why_missing="no data")
    res.ratio("TAG.SET ÷ SET, same server (redis-benchmark)", "mod_rb", "set_rb", ">=", 0.6, info=True)
    res.ratio("TAG.SET ÷ SET, same server (raw RESP)", "mod_raw", "set_raw", ">=", 0.6, info=True)
    res.ratio("TAG.SET ÷ SET, same server (redis-py)", "mod_py", "set_py", ">=", 0.6, info=True)
    res.ratio("SET with the module loaded ÷ without (redis-benchmark)", "set_rb", "set_rb_p", ">=", 1,
              info=True)
    ctx.each_server(lambda c: c.flushall())
    return res


def _check_tag_index(ctx, res, when):
    """After a load of TAG.SET key:* ... TAGS 2 t1 t2: every live key:* is in
    both tag sets and every member is a live key."""
    r = ctx.r
    live = set()
    cursor = 0
    for _ in range(10000):
        cursor, keys = r.scan(cursor, match="key:*", count=5000)
        live.update(keys)
        if cursor == 0:
            break
    for t in ("t1", "t2"):
        members = r.smembers("tag:" + t) if r.type("tag:" + t) == b"set" else set()
        if members != live:
            res.note("%s: tag:%s has %d members, %d key:* keys live (%d missing, %d stale)" % (
                when, t, len(members), len(live), len(live - members), len(members - live)))


# ---------------------------------------------------------------------------
# Scenario 2: purge time
# ---------------------------------------------------------------------------
@scenario("purge", "purge one tag of N keys: TAG.PURGE vs Lua SMEMBERS+DEL vs variadic DEL")
def sc_purge(ctx):
    sizes = [1000, 10000] if ctx.quick else [1000, 10000, 100000]
    res = Result("purge", "time to purge one tag of N keys (100-byte values), one call, client wall time",
                 [("ms", "value", "ms"), ("server ms", "srv_ms", "ms"), ("deleted", "reply", "int")])
    r = ctx.r
    r.flushall()

    def check(reply):
        if reply != 3:
            return "TAG.PURGE of a 3-key tag replied %r, expected 3" % (reply,)
        left = [k for k in ("pp:1", "pp:2", "pp:3") if r.exists(k)]
        if left:
            return "keys %s still exist after TAG.PURGE" % left
        if r.exists("tag:pp"):
            return "tag:pp still exists after TAG.PURGE"
        return None

    mod_ok = ctx.probe(res, ["TAG.SET", "pp:0", "x", "TAGS", "1", "pq"])
    if mod_ok is None:
        for k in ("pp:1", "pp:2", "pp:3"):
            r.execute_command("TAG.SET", k, "x", "TAGS", "1", "pp")
        unavailable = ctx.probe(res, ["TAG.PURGE", "pp"], check)
        # Client-written membership must be honoured too (SPEC: data layout).
        if unavailable is None:
            r.set("cw:1", "x")
            r.sadd("tag:cw", "cw:1", "cw:gone")
            n = r.execute_command("TAG.PURGE", "cw")
            if n != 1 or r.exists("cw:1"):
                res.note("TAG.PURGE on a client-written set (1 live member, 1 missing) replied %r; "
                         "cw:1 exists=%d" % (n, r.exists("cw:1")))
    else:
        unavailable = mod_ok
    shas = {}
    ctx.each_server(lambda c: (c.flushall(), shas.update(patterns.load_scripts(c))))
    sha = shas["purge"]
    NM = ", no module loaded"
    # key, label, how the tag is filled, server ('main' has the module)
    methods = [
        ("mod", "TAG.PURGE", "module", "main"),
        ("modcw", "TAG.PURGE, set written by SADD", "client", "main"),
        ("lua", "EVALSHA purge.lua", "client", "main"),
        ("del", "DEL tag k1..kN", "client", "main"),
        ("lua_p", "EVALSHA purge.lua" + NM, "client", "plain"),
        ("del_p", "DEL tag k1..kN (limit)" + NM, "client", "plain"),
    ]
    del_cache = {}
    for n in sizes:
        prefix = "pk%d:" % n
        for key, label, _, srv in methods:
            res.row("%s_%d" % (key, n), "%s, N=%s" % (label, "{:,}".format(n)), "one call")
            if key.startswith("mod") and unavailable:
                res.unavailable("%s_%d" % (key, n), unavailable)
        for rnd in range(ctx.rounds):
            for key, label, how, srv in methods:
                rk = "%s_%d" % (key, n)
                if not res.is_ok(rk):
                    continue
                ctx.on(srv)
                r = ctx.r
                r.flushall()
                try:
                    names = fill(ctx, how, prefix, "ptag", n)
                except Unavailable as e:
                    res.unavailable(rk, str(e))
                    continue
                if key in ("mod", "modcw"):
                    payload, cmdname, expect = resp.encode("TAG.PURGE", "ptag"), "tag.purge", n
                elif key.startswith("lua"):
                    payload, cmdname, expect = resp.encode("EVALSHA", sha, 1, "tag:ptag"), "evalsha", n
                else:
                    if n not in del_cache:
                        del_cache[n] = resp.encode(b"DEL", b"tag:ptag", *names)
                    payload, cmdname, expect = del_cache[n], "del", n + 1
                before = cmdstat(r, cmdname)
                c = ctx.conn()
                try:
                    reply, secs = c.timed(payload)
                except (ConnectionError, OSError) as e:
                    c.close()
                    ctx.ensure_server(res, label)
                    res.unavailable(rk, "connection lost: %s" % e)
                    continue
                c.close()
                after = cmdstat(r, cmdname)
                if isinstance(reply, resp.RespError):
                    res.unavailable(rk, "error reply: %s" % reply)
                    continue
                if reply != expect:
                    res.note("%s replied %r, expected %d" % (label + ", N=%d" % n, reply, expect))
                left = r.dbsize()
                if left:
                    res.note("%s, N=%d: %d keys left in the database after it returned" % (label, n, left))
                srv = (after.get("usec", 0) - before.get("usec", 0)) / 1000.0
                res.add(rk, value=secs * 1000.0, srv_ms=srv, reply=reply if isinstance(reply, int) else None)
                log("purge N=%d round %d/%d %-45s %8.2f ms" % (n, rnd + 1, ctx.rounds, label, secs * 1000))
    ctx.on("main")
    res.finalize()
    for n in sizes:
        nn = "{:,}".format(n)
        res.ratio("N=%s: EVALSHA purge.lua without the module ÷ TAG.PURGE (time)" % nn,
                  "lua_p_%d" % n, "mod_%d" % n, ">=", 1.2, attach="den")
        res.ratio("N=%s: TAG.PURGE ÷ variadic DEL without the module (time)" % nn,
                  "mod_%d" % n, "del_p_%d" % n, "<=", 1.15)
        res.ratio("N=%s: EVALSHA purge.lua ÷ TAG.PURGE, same server" % nn,
                  "lua_%d" % n, "mod_%d" % n, ">=", 1.2, info=True)
        res.ratio("N=%s: TAG.PURGE ÷ variadic DEL, same server" % nn,
                  "mod_%d" % n, "del_%d" % n, "<=", 1.15, info=True)
        res.ratio("N=%s: DEL with the module loaded ÷ without (time)" % nn,
                  "del_%d" % n, "del_p_%d" % n, "<=", 1, info=True)
    ctx.each_server(lambda c: c.flushall())
    return res


# ---------------------------------------------------------------------------
# Scenario 3: GET latency while a huge tag is purged
# ---------------------------------------------------------------------------
def _latency_probe(port, cpu, rate, stop_at, max_seconds, ready_q, out_q):
    """Open-loop GETs at `rate`/s on one connection; each latency is measured
    from the request's scheduled time, so a stalled server counts in full for
    every request that should have been sent while it stalled."""
    # The parent's objects (large pre-encoded fills) are inherited by fork; a
    # collection walking them would stall this process, not the server.
    gc.disable()
    gc.freeze()
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
    c = resp.Conn("127.0.0.1", port, timeout=120)
    payloads = [resp.encode("GET", "lat:probe:%d" % i) for i in range(1000)]
    sched_a = array.array("d")
    lat_a = array.array("d")
    errors = 0
    first_error = None
    ready_q.put(True)
    interval = 1.0 / rate
    start = time.monotonic()
    limit = int(rate * max_seconds)
    i = 0
    while i < limit:
        sched = start + i * interval
        # Stop at the first request scheduled after the stop time: the ones
        # scheduled before it are all sent, however late (after a stall they
        # go out back to back), so none of the stalled requests is dropped.
        if sched >= stop_at.value:
            break
        now = time.monotonic()
        if now - start > max_seconds:
            break
        if sched > now:
            time.sleep(sched - now)
        c.send(payloads[i % 1000])
        rep = c.read_reply()
        done = time.monotonic()
        if isinstance(rep, resp.RespError) or rep is None:
            errors += 1
            if first_error is None:
                first_error = "nil" if rep is None else str(rep)[:80]
        sched_a.append(sched)
        lat_a.append(done - sched)
        i += 1
    c.close()
    out_q.put((sched_a.tobytes(), lat_a.tobytes(), errors, first_error))


def _pct(sorted_xs, p):
    """Nearest-rank percentile: p in percent (50, 99, 99.9) of an ascending
    list; None for an empty list."""
    if not sorted_xs:
        return None
    n = len(sorted_xs)
    # The rank is ceil(p/100 * n); the small slack keeps float error (99.9/100
    # * 1000 = 999.0000000000001) from moving it up one.
    rank = int(math.ceil(p * n / 100.0 - 1e-9))
    return sorted_xs[min(n, max(1, rank)) - 1]


@scenario("purge-latency", "GET latency (p50/p99/p99.9/max) while a 1,000,000-key tag is purged")
def sc_purge_latency(ctx):
    n = 100000 if ctx.quick else 1000000
    rate = 2000.0
    min_window = 1.0 if ctx.quick else 2.0
    res = Result("purge-latency",
                 "GETs from a second client (open loop, %d/s) while one client purges a tag of %s keys"
                 % (rate, "{:,}".format(n)),
                 [("p99.9 ms", "p999", "ms"), ("p50 ms", "p50", "ms"), ("p99 ms", "p99", "ms"),
                  ("max ms", "max", "ms"), ("purge call ms", "call_ms", "ms"),
                  ("until keys gone ms", "gone_ms", "ms"), ("GETs", "samples", "int")])
    r = ctx.r
    r.flushall()
    unavailable = ctx.probe(res, ["TAG.SET", "lp:0", "x", "TAGS", "1", "lq"])
    if unavailable is None:
        unavailable = ctx.probe(res, ["TAG.PURGE", "lq"])
    shas = {}
    ctx.each_server(lambda c: (c.flushall(), shas.update(patterns.load_scripts(c))))
    sha = shas["purge"]
    NM = ", no module loaded"
    # key, label, how the tag is filled, server ('main' has the module)
    methods = [
        ("idle", "no purge (floor)", "client", "main"),
        ("mod", "TAG.PURGE", "module", "main"),
        ("lua", "EVALSHA purge.lua", "client", "main"),
        ("del", "DEL tag k1..kN", "client", "main"),
        ("lua_p", "EVALSHA purge.lua" + NM, "client", "plain"),
        ("del_p", "DEL tag k1..kN" + NM, "client", "plain"),
    ]
    for key, label, _, srv in methods:
        res.row(key, label, "open-loop GET")
        if key == "mod" and unavailable:
            res.unavailable(key, unavailable)
    del_payload = None
    probe_fill = [(resp.encode(b"MSET", *[x for i in range(1000) for x in
                                           (b"lat:probe:%d" % i, VALUE)]), 1)]
    mpc = mp.get_context("fork")
    for rnd in range(ctx.rounds):
        for key, label, how, srv in methods:
            if not res.is_ok(key):
                continue
            ctx.on(srv)
            r = ctx.r
            r.flushall()
            try:
                names = fill(ctx, how, "lk:", "big", n) if key != "idle" else []
            except Unavailable as e:
                res.unavailable(key, str(e))
                continue
            c = ctx.conn()
            c.pipeline(probe_fill)
            if key == "mod":
                payload = resp.encode("TAG.PURGE", "big")
            elif key.startswith("lua"):
                payload = resp.encode("EVALSHA", sha, 1, "tag:big")
            elif key.startswith("del"):
                if del_payload is None:
                    del_payload = resp.encode(b"DEL", b"tag:big", *names)
                payload = del_payload
            else:
                payload = None
            stop_at = mpc.Value("d", float("inf"))
            ready_q, out_q = mpc.Queue(), mpc.Queue()
            proc = mpc.Process(target=_latency_probe,
                               args=(ctx.port, LOAD_CPU if ctx.pin else None, rate, stop_at,
                                     120.0, ready_q, out_q), daemon=True)
            proc.start()
            ready_q.get(timeout=30)
            time.sleep(0.3)
            t0 = time.monotonic()
            reply = None
            call_ms = None
            if payload is not None:
                try:
                    reply, secs = c.timed(payload)
                    call_ms = secs * 1000.0
                except (ConnectionError, OSError) as e:
                    reply = resp.RespError("connection lost: %s" % e)
            t_call = time.monotonic()
            # Until the purged keys are really gone (a purge may finish in the
            # background after replying). Bounded to 60 s.
            gone = t_call
            if payload is not None and ctx.server.alive():
                deadline = t_call + 60
                while time.monotonic() < deadline:
                    try:
                        if r.dbsize() <= 1000:
                            break
                    except redis.exceptions.ConnectionError:
                        break
                    time.sleep(0.01)
                gone = time.monotonic()
            window_end = max(gone, t0 + min_window)
            time.sleep(max(0.0, window_end + 0.05 - time.monotonic()))
            stop_at.value = time.monotonic()
            try:
                sched_b, lat_b, errors, first_error = out_q.get(timeout=130)
            except Exception:  # noqa: BLE001
                sched_b, lat_b, errors, first_error = b"", b"", -1, "the probe sent no result"
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
            c.close()
            if ctx.ensure_server(res, label):
                res.unavailable(key, "server crashed")
                continue
            if isinstance(reply, resp.RespError):
                res.unavailable(key, "error reply: %s" % reply)
                continue
            expect = n + 1 if key.startswith("del") else n
            if payload is not None and reply != expect:
                res.note("%s replied %r, expected %d" % (label, reply, expect))
            if payload is not None and r.dbsize() > 1000:
                res.note("%s: %d keys still present 60 s after the call" % (label, r.dbsize() - 1000))
            sched = array.array("d")
            sched.frombytes(sched_b)
            lat = array.array("d")
            lat.frombytes(lat_b)
            window = sorted(l * 1000.0 for s, l in zip(sched, lat) if t0 <= s <= window_end)
            if errors:
                res.note("%s, round %d: %d GETs got an error or nil reply (first: %s)" % (
                    label, rnd + 1, errors, first_error))
            m = {"p50": _pct(window, 50), "p99": _pct(window, 99), "p999": _pct(window, 99.9),
                 "max": window[-1] if window else None, "samples": len(window),
                 "call_ms": call_ms, "gone_ms": (gone - t0) * 1000.0 if payload is not None else None,
                 "value": _pct(window, 99.9)}
            res.add(key, **m)
            log("purge-latency round %d/%d %-20s p99.9 %s ms max %s ms call %s ms (%d GETs)" % (
                rnd + 1, ctx.rounds, label, fmt(m["p999"], "ms"), fmt(m["max"], "ms"),
                fmt(call_ms, "ms"), len(window)))
    res.finalize()
    for key, label, _, _ in methods:
        if key == "idle":
            continue
        v = res.med(key, "p999")
        res.goal("%s: GET p99.9 during the purge" % label, v, "<", 10, unit="ms",
                 info=(key != "mod"), why_missing=res._by_key[key]["status"], row=key,
                 short="GET p99.9")
    ctx.on("main")
    ctx.each_server(lambda c: c.flushall())
    return res


# ---------------------------------------------------------------------------
# Scenario 4: memory per key
# ---------------------------------------------------------------------------
def _mem_fill_batches(how, n):
    ck = ("mem", how, n)
    if ck in _ENC_CACHE:
        return _ENC_CACHE[ck]
    cmds = []
    for i in range(n):
        k = b"mem:%07d" % i
        t1 = b"p:%d" % (i % 1000)
        t2 = b"c:%d" % (i % 10)
        if how == "module":
            cmds.append(resp.encode(b"TAG.SET", k, VALUE, b"TAGS", b"2", t1, t2))
        else:
            cmds.append(resp.encode(b"SET", k, VALUE))
            if how == "client":
                cmds.append(resp.encode(b"SADD", b"tag:" + t1, k))
                cmds.append(resp.encode(b"SADD", b"tag:" + t2, k))
    batches = list(resp.batched(cmds, 1000))
    _ENC_CACHE[ck] = batches
    return batches


@scenario("memory", "memory per key: TAG.SET vs SET + SADD into two tag sets")
def sc_memory(ctx):
    n = 100000
    res = Result("memory",
                 "INFO used_memory growth per key, %s keys, 100-byte values, 2 tags each "
                 "(p:<i mod 1000>, c:<i mod 10>), fresh server per measurement" % "{:,}".format(n),
                 [("bytes/key", "value", "bytes"), ("RSS bytes/key", "rss", "bytes"),
                  ("keys in db", "dbsize", "int")])
    variants = [
        ("mod", "TAG.SET (module)", "module", True),
        ("client", "SET + SADD x2 (client layout)", "client", False),
        ("client_mod", "SET + SADD x2, module loaded", "client", True),
        ("plain", "SET only, no tags (floor)", "plain", False),
    ]
    for key, label, _, needs in variants:
        res.row(key, label, "pipelined fill")
    unavailable = ctx.probe(res, ["TAG.SET", "mem:probe", "x", "TAGS", "2", "a", "b"])
    ctx.r.flushall()
    if unavailable:
        res.unavailable("mod", unavailable)
    if not ctx.has_module():
        res.unavailable("client_mod", "module not loaded")
    for rnd in range(ctx.rounds):
        for key, label, how, needs in variants:
            if not res.is_ok(key):
                continue
            srv = Server(ctx.server_bin, ctx.module_path if needs else None, ctx.workdir,
                         ctx.pin, "mem-" + key)
            try:
                srv.start()
            except BenchError as e:
                res.unavailable(key, str(e)[:200])
                continue
            try:
                cl = srv.client()
                cl.ping()
                time.sleep(0.1)
                m0 = cl.info("memory")
                c = resp.Conn("127.0.0.1", srv.port, timeout=300)
                try:
                    _, err = c.pipeline(_mem_fill_batches(how, n), deadline=time.monotonic() + 300)
                finally:
                    c.close()
                if err is not None:
                    res.unavailable(key, "fill failed: %s" % err)
                    continue
                time.sleep(0.2)
                m1 = cl.info("memory")
                dbsize = cl.dbsize()
                cl.close()
            except (redis.exceptions.ConnectionError, ConnectionError, OSError) as e:
                res.note("%s: server lost during the fill (%s); log: %s" % (label, e, srv.log_tail(5)))
                res.unavailable(key, "server crashed")
                continue
            finally:
                srv.stop()
            per = (m1["used_memory"] - m0["used_memory"]) / n
            rss = (m1["used_memory_rss"] - m0["used_memory_rss"]) / n
            res.add(key, value=per, rss=rss, dbsize=dbsize)
            log("memory round %d/%d %-32s %6.0f bytes/key (rss %6.0f)" % (rnd + 1, ctx.rounds, label, per, rss))
    res.finalize()
    res.ratio("TAG.SET bytes/key ÷ client layout bytes/key", "mod", "client", "<=", 1.3)
    res.ratio("client layout with module loaded ÷ without", "client_mod", "client", "<=", 1.0, info=True)
    return res


# ---------------------------------------------------------------------------
# Scenario 5: versioned read
# ---------------------------------------------------------------------------
@scenario("vget", "versioned read: VER.GET vs GET ver:<scope> + GET v<N>:<key> vs plain GET")
def sc_vget(ctx):
    res = Result("vget", "versioned read of a 100-byte value, 50 clients, no pipelining",
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
        c.pipeline(batches)
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
    NM = ", no module loaded"
    # key, label, generator, what (redis-benchmark argv or loadgen kind), server
    variants = [
        ("mod_rb", "VER.GET", RB, ["VER.GET", "s", "key:__rand_int__"], "main"),
        ("get_rb", "GET (limit)", RB, ["GET", "v5:key:__rand_int__"], "main"),
        ("get_rb_p", "GET (limit)" + NM, RB, ["GET", "v5:key:__rand_int__"], "plain"),
        ("mod_raw", "VER.GET", RAW, "raw_vget_module", "main"),
        ("rt2_raw", "GET ver:s, then GET v5:key", RAW, "raw_vget_2rt", "main"),
        ("get_raw", "GET (limit)", RAW, "raw_get", "main"),
        ("rt2_raw_p", "GET ver:s, then GET v5:key" + NM, RAW, "raw_vget_2rt", "plain"),
        ("get_raw_p", "GET (limit)" + NM, RAW, "raw_get", "plain"),
        ("mod_py", "VER.GET", PYR, "vget_module", "main"),
        ("rt2_py", "GET ver:s, then GET v5:key", PYR, "vget_2rt", "main"),
        ("get_py", "GET (limit)", PYR, "get", "main"),
    ]
    for key, label, tool, spec, srv in variants:
        res.row(key, label, tool)
        if key.startswith("mod") and unavailable:
            res.unavailable(key, unavailable)
    seconds = 0.4 if ctx.quick else 3.0
    ncache = {}
    for rnd in range(ctx.rounds):
        for key, label, tool, spec, srv in variants:
            if not res.is_ok(key):
                continue
            ctx.on(srv)
            try:
                if tool == RB:
                    m = ctx.rb_calibrated(spec, 50, 1, seconds, ncache, key)
                else:
                    m = ctx.py(spec, pipeline=1)
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
    res.ratio("VER.GET ÷ two-round-trip read without the module (raw RESP)", "mod_raw", "rt2_raw_p",
              ">=", 1.8)
    res.ratio("VER.GET ÷ two-round-trip read, same server (redis-py)", "mod_py", "rt2_py", ">=", 1.8)
    res.ratio("VER.GET ÷ GET without the module (redis-benchmark)", "mod_rb", "get_rb_p", ">=", 0.8)
    res.ratio("VER.GET ÷ two-round-trip read, same server (raw RESP)", "mod_raw", "rt2_raw", ">=", 1.8,
              info=True)
    res.ratio("VER.GET ÷ GET, same server (redis-benchmark)", "mod_rb", "get_rb", ">=", 0.8, info=True)
    res.ratio("VER.GET ÷ GET, same server (raw RESP)", "mod_raw", "get_raw", ">=", 0.8, info=True)
    res.ratio("VER.GET ÷ GET, same server (redis-py)", "mod_py", "get_py", ">=", 0.8, info=True)
    res.ratio("GET with the module loaded ÷ without (redis-benchmark)", "get_rb", "get_rb_p", ">=", 1,
              info=True)
    # Server CPU per read is less sensitive to a busy machine than reads/s.
    a, b = res.med("rt2_raw_p", "srv_us"), res.med("mod_raw", "srv_us")
    res.goal("server CPU per read: two-round-trip without the module ÷ VER.GET (raw RESP)",
             a / b if a and b else None, ">=", 1.8, info=True, why_missing="no data")
    a, b = res.med("get_rb_p", "srv_us"), res.med("mod_rb", "srv_us")
    res.goal("server CPU per read: GET without the module ÷ VER.GET (redis-benchmark)",
             a / b if a and b else None, ">=", 0.8, info=True, why_missing="no data")
    ctx.each_server(lambda c: c.flushall())
    return res


# ---------------------------------------------------------------------------
# Scenario: stampede on one hot key that expires every second
# ---------------------------------------------------------------------------
STAMPEDE_CLIENTS = 200
STAMPEDE_DB_SECONDS = 0.05   # the simulated database call
STAMPEDE_TTL_MS = 1000


def _getl_get(r, key, load, deadline, max_tries=100000):
    """The module client: TAG.GETL with a lease; the lease holder fills the key.
    Returns (value, waits, rejected_sets); value None if `deadline` passed."""
    waits = 0
    for _ in range(max_tries):
        v, tok = r.execute_command("TAG.GETL", key, "TTL", 2000, "WAIT", 1000)
        if v is not None:
            return v, waits, 0
        if tok is not None:
            v = load()
            ok = r.execute_command("TAG.SET", key, v, "PX", STAMPEDE_TTL_MS, "LEASE", tok,
                                   "TAGS", 1, key)
            return v, waits, 0 if ok else 1
        if time.monotonic() >= deadline:
            break
        waits += 1
    return None, waits, 0


def _lock_get(r, key, load, deadline):
    v, polls = stampede.lock_and_poll_get(r, key, load, STAMPEDE_TTL_MS, deadline)
    return v, polls, 0


def stampede_round(port, fetch, duration, clients=STAMPEDE_CLIENTS, grace=5.0):
    """`clients` threads, one connection each, read `hot` for `duration` s.
    A request started before the deadline may finish up to `grace` s later."""
    lock = threading.Lock()
    db = [0]
    lat = []
    tallies = {"waits": 0, "rejected": 0, "unfinished": 0}
    errors = []

    def load():
        with lock:
            db[0] += 1
        time.sleep(STAMPEDE_DB_SECONDS)
        return VALUE

    start = threading.Barrier(clients + 1)
    t = {}

    def worker():
        r = redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=10,
                        single_connection_client=True)
        mine = []
        waits = rejected = unfinished = 0
        try:
            r.ping()
            start.wait(timeout=30)
            stop_at, hard_stop = t["stop"], t["hard"]
            for _ in range(10_000_000):
                if time.monotonic() >= stop_at:
                    break
                t0 = time.perf_counter()
                v, w, rej = fetch(r, "hot", load, hard_stop)
                if v is None:
                    unfinished += 1
                    break
                mine.append(time.perf_counter() - t0)
                waits += w
                rejected += rej
        except threading.BrokenBarrierError:
            errors.append("start barrier broken")
        except Exception as e:  # noqa: BLE001 - reported in the result
            errors.append("%s: %s" % (type(e).__name__, e))
            try:
                start.abort()
            except Exception:  # noqa: BLE001
                pass
        finally:
            r.close()
            with lock:
                lat.extend(mine)
                tallies["waits"] += waits
                tallies["rejected"] += rejected
                tallies["unfinished"] += unfinished

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for th in threads:
        th.start()
    c = redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=10)
    try:
        exp0 = int(c.info("stats")["expired_keys"])
        now = time.monotonic()
        t["stop"], t["hard"] = now + duration, now + duration + grace
        try:
            start.wait(timeout=30)
        except threading.BrokenBarrierError:
            errors.append("start barrier broken")
        t_begin = time.monotonic()
        for th in threads:
            th.join(timeout=max(0.1, t["hard"] + 5 - time.monotonic()))
        alive = sum(th.is_alive() for th in threads)
        if alive:
            errors.append("%d client threads still running after the deadline" % alive)
        elapsed = time.monotonic() - t_begin
        expiries = int(c.info("stats")["expired_keys"]) - exp0
        if not c.exists("hot"):
            expiries -= 1   # expired after the last request; nobody was there to fill it
    finally:
        c.close()
    lat.sort()
    return {
        "db_per_exp": db[0] / expiries if expiries > 0 else None,
        "db": db[0], "expiries": expiries, "served": len(lat),
        "served_s": len(lat) / elapsed if elapsed > 0 else None,
        "p50_ms": _pct(lat, 50) * 1e3 if lat else None,
        "p99_ms": _pct(lat, 99) * 1e3 if lat else None,
        "max_ms": lat[-1] * 1e3 if lat else None,
        "waits": tallies["waits"], "rejected": tallies["rejected"],
        "unfinished": tallies["unfinished"], "errors": errors,
    }


@scenario("stampede", "200 clients read one key that expires every second: TAG.GETL lease vs lock-and-poll")
def sc_stampede(ctx):
    duration = 2.0 if ctx.quick else 5.0
    res = Result("stampede",
                 "%d clients (threads, redis-py) read `hot` (PX 1000) for %g s; a miss costs a "
                 "50 ms database call" % (STAMPEDE_CLIENTS, duration),
                 [("db calls/expiry", "db_per_exp", "us"), ("db calls", "db", "int"),
                  ("expiries", "expiries", "int"), ("p50 ms", "p50_ms", "ms"),
                  ("p99 ms", "p99_ms", "ms"), ("max ms", "max_ms", "ms"),
                  ("requests served", "served", "int"), ("requests/s", "served_s", "rate")])

    def check(reply):
        if not (isinstance(reply, list) and len(reply) == 2 and reply[0] is None and reply[1]):
            return "TAG.GETL of a missing key replied %r, expected [nil, token]" % (reply,)
        return None

    unavailable = ctx.probe(res, ["TAG.GETL", "probe:stampede", "TTL", "1000"], check)
    NM = ", no module loaded"
    variants = [
        ("mod", "TAG.GETL WAIT + TAG.SET LEASE", _getl_get, "main"),
        ("lock", "lock-and-poll (SET NX, sleep 100 ms)", _lock_get, "main"),
        ("lock_p", "lock-and-poll (SET NX, sleep 100 ms)" + NM, _lock_get, "plain"),
    ]
    if ctx.plain_server is ctx.main_server:
        variants.pop()
    for key, label, _, _ in variants:
        res.row(key, label, "Python redis-py, %d threads" % STAMPEDE_CLIENTS)
    if unavailable:
        res.unavailable("mod", unavailable)
    for rnd in range(ctx.rounds):
        for key, label, fetch, srv in variants:
            if not res.is_ok(key):
                continue
            ctx.on(srv)
            r = ctx.r
            r.flushall()
            try:
                if key == "mod":
                    r.execute_command("TAG.SET", "hot", VALUE, "PX", STAMPEDE_TTL_MS, "TAGS", 1, "hot")
                else:
                    r.set("hot", VALUE, px=STAMPEDE_TTL_MS)
                m = stampede_round(ctx.port, fetch, duration)
            except redis.exceptions.ResponseError as e:
                res.unavailable(key, str(e)[:200])
                ctx.ensure_server(res, label)
                continue
            if ctx.ensure_server(res, label):
                res.unavailable(key, "server crashed")
                continue
            errors = m.pop("errors")
            if errors:
                res.note("%s: %d client errors, first: %s" % (label, len(errors), errors[0][:150]))
                if len(errors) > STAMPEDE_CLIENTS // 10:
                    res.unavailable(key, errors[0][:150])
                    continue
            if m["rejected"]:
                res.note("%s: %d lease-guarded TAG.SET calls stored nothing" % (label, m["rejected"]))
            res.add(key, **m)
            log("stampede round %d/%d %-50s db %3d / %3d expiries, p99 %7.1f ms, %7d served" % (
                rnd + 1, ctx.rounds, label, m["db"], m["expiries"], m["p99_ms"] or -1, m["served"]))
    ctx.on("main")
    ctx.each_server(lambda c: c.flushall())
    res.finalize()
    res.goal("TAG.GETL: database calls per expiry (exactly one per expiry)",
             res.med("mod", "db_per_exp"), "==", 1, row="mod", why_missing="no data",
             short="db calls/expiry")
    den = "lock_p" if any(v[0] == "lock_p" for v in variants) else "lock"
    res.ratio("TAG.GETL p99 ÷ lock-and-poll p99%s" % (" without the module" if den == "lock_p" else ""),
              "mod", den, "<=", 0.5, field="p99_ms")
    res.ratio("TAG.GETL p99 ÷ lock-and-poll p99, same server", "mod", "lock", "<=", 0.5,
              field="p99_ms", info=True)
    res.goal("lock-and-poll: database calls per expiry", res.med(den, "db_per_exp"), "==", 1,
             info=True, why_missing="no data")
    return res


# ---------------------------------------------------------------------------
# Machine facts
# ---------------------------------------------------------------------------
def machine_info(ctx):
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
    except OSError:
        pass
    srv = ctx.r.info("server")
    rbv = subprocess.run(["redis-benchmark", "--version"], capture_output=True).stdout.decode().strip()
    modules = []
    try:
        for m in ctx.r.execute_command("MODULE", "LIST"):
            if isinstance(m, dict):
                modules.append({k.decode() if isinstance(k, bytes) else k:
                                (v.decode() if isinstance(v, bytes) else v) for k, v in m.items()})
            else:
                it = iter(m)
                modules.append({(k.decode() if isinstance(k, bytes) else k):
                                (v.decode() if isinstance(v, bytes) else v) for k, v in zip(it, it)})
    except redis.exceptions.RedisError:
        pass
    so = {}
    src = ctx.args.module
    if src and os.path.exists(src):
        with open(src, "rb") as f:
            so["sha256"] = hashlib.sha256(f.read()).hexdigest()
        so["mtime"] = datetime.datetime.fromtimestamp(os.path.getmtime(src), datetime.timezone.utc).isoformat()
        so["path"] = src
    git = subprocess.run(["git", "-C", os.path.dirname(HERE), "rev-parse", "HEAD"],
                         capture_output=True).stdout.decode().strip() or None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpus_usable": len(INITIAL_CPUS) if INITIAL_CPUS else None,
        "cpu_model": cpu_model,
        "mem_total_gib": round(mem_kb / 1048576.0, 1) if mem_kb else None,
        "kernel": platform.release(),
        "os": _os_release(),
        "python": platform.python_version(),
        "redis_py": redis.__version__,
        "redis_py_parser": "hiredis" if _has_hiredis() else "python",
        "server_binary": ctx.server_bin,
        "server_version": srv.get("redis_version"),
        "redis_benchmark": rbv,
        "pinning": ("redis-server on CPU %d, load generators on CPU %d (taskset)" % (SERVER_CPU, LOAD_CPU))
        if ctx.pin else "none",
        "module_loaded": modules,
        "module_file": so,
        "module_load_error": ctx.module_load_error,
        "git_head": git,
    }


def _os_release():
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _has_hiredis():
    try:
        import hiredis  # noqa: F401
        return True
    except ImportError:
        return False


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="scenarios: " + ", ".join(SCENARIOS))
    p.add_argument("--server", default="redis-server", help="redis-server binary (default: on PATH)")
    p.add_argument("--module", default="target/release/libredis_tagcache.so",
                   help="module to load (default: target/release/libredis_tagcache.so)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per figure, at least 5 (default 5)")
    p.add_argument("--quick", action="store_true", help="short smoke run: short windows, smaller sizes")
    p.add_argument("--only", default=None,
                   help="comma-separated scenarios to run (%s)" % ", ".join(SCENARIOS))
    p.add_argument("--output", default=None,
                   help="results file (default bench/results.json; bench/results-quick.json with --quick)")
    p.add_argument("--markdown", default=None, help="also write the tables as Markdown to this file")
    p.add_argument("--report", default=None, metavar="RESULTS_JSON",
                   help="run nothing: print the tables of an earlier results file (with --markdown, "
                        "write them too)")
    a = p.parse_args(argv)
    if a.rounds < 5:
        p.error("--rounds must be at least 5")
    if a.only:
        names = [s.strip() for s in a.only.split(",") if s.strip()]
        bad = [s for s in names if s not in SCENARIOS]
        if bad:
            p.error("unknown scenario(s): %s; known: %s" % (", ".join(bad), ", ".join(SCENARIOS)))
        a.only = names
    return a


def _on_signal(signum, frame):
    raise SystemExit("stopped by signal %d" % signum)


def result_from_json(d):
    res = Result(d["name"], d["title"], [(c["header"], c["field"], c["kind"]) for c in d["columns"]])
    res.rows = d["rows"]
    res._by_key = {r["key"]: r for r in res.rows}
    res.goals = d["goals"]
    res.notes = d["notes"]
    res.error = d.get("error")
    return res


def print_report(path, markdown=None):
    with open(path) as f:
        data = json.load(f)
    m = data.get("machine", {})
    print("tagcache benchmark — %s, %s CPUs (%s), Redis %s, %s rounds%s" % (
        m.get("date"), m.get("nproc"), m.get("cpu_model"), m.get("server_version"),
        data.get("rounds"), ", quick" if data.get("quick") else ""))
    results = [result_from_json(s) for s in data.get("scenarios", [])]
    for res in results:
        print(render_text(res))
    if markdown:
        with open(markdown, "w") as f:
            for res in results:
                f.write(render_markdown(res) + "\n")
    return 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.report:
        return print_report(args.report, args.markdown)
    # Stop cleanly (servers shut down, temp dir removed) on SIGTERM, and on
    # SIGINT even when started in the background (where it is ignored).
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server_bin = shutil.which(args.server) or args.server
    if not os.path.exists(server_bin):
        sys.exit("redis-server not found: %s" % args.server)
    if not shutil.which("redis-benchmark"):
        sys.exit("redis-benchmark not found on PATH")
    pin = bool(shutil.which("taskset")) and INITIAL_CPUS is not None \
        and {SERVER_CPU, LOAD_CPU} <= set(INITIAL_CPUS)
    if pin:
        os.sched_setaffinity(0, {LOAD_CPU})
    output = args.output or os.path.join(HERE, "results-quick.json" if args.quick else "results.json")
    workdir = tempfile.mkdtemp(prefix="tagcache-bench-")
    module_copy = None
    module_note = None
    if args.module and os.path.exists(args.module):
        module_copy = os.path.join(workdir, "libredis_tagcache.so")
        shutil.copy2(args.module, module_copy)
    else:
        module_note = "module file not found: %s (module scenarios unavailable)" % args.module
        log(module_note)
    ctx = Ctx(args, workdir, pin, server_bin, module_copy)
    results = []
    report = {"command": " ".join(["python3", os.path.relpath(os.path.abspath(__file__))] +
                                  (sys.argv[1:] if argv is None else argv)),
              "quick": args.quick, "rounds": args.rounds}
    try:
        ctx.start_main()
        report["machine"] = machine_info(ctx)
        if module_note:
            report["machine"]["module_load_error"] = module_note
        log("server %s on port %d%s; module: %s" % (
            report["machine"]["server_version"], ctx.port, " (pinned)" if pin else "",
            "loaded" if ctx.has_module() else (ctx.module_load_error or module_note or "none")))
        selected = args.only or list(SCENARIOS)
        for name in selected:
            fn, _ = SCENARIOS[name]
            t0 = time.monotonic()
            log("scenario %s" % name)
            watch = CpuWatch(ctx)
            try:
                ctx.on("main")
                res = fn(ctx)
            except Exception as e:  # noqa: BLE001 - one scenario failing must not stop the rest
                res = Result(name, SCENARIOS[name][1], [("value", "value", "")])
                res.error = "%s: %s" % (type(e).__name__, e)
                res.notes.append(traceback.format_exc().strip().splitlines()[-1])
                log(traceback.format_exc())
                try:
                    ctx.ensure_server(res, name)
                except BenchError as e2:
                    res.notes.append("server restart failed: %s" % e2)
            res.seconds = time.monotonic() - t0
            other, steal = watch.foreign()
            res.foreign_cpu = other
            res.steal = steal
            if other is not None and other > 10:
                res.note("other processes on this machine used %.0f%% of a CPU during this scenario: "
                         "figures are noisier than on a quiet machine" % other)
            if steal is not None and steal > 5:
                res.note("the hypervisor stole %.0f%% of a CPU during this scenario" % steal)
            results.append(res)
            print(render_text(res), flush=True)
            report["scenarios"] = [dict(x.to_json(), seconds=round(x.seconds, 1),
                                        other_processes_cpu_pct=x.foreign_cpu,
                                        steal_cpu_pct=x.steal) for x in results]
            report["crashes"] = ctx.crashes
            _write_json(output, report)
    finally:
        for srv in (ctx.main_server, ctx.plain_server, ctx.server):
            if srv:
                srv.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n" + "=" * 78)
    m = report.get("machine", {})
    print("tagcache benchmark — %s, %s CPUs (%s), Redis %s, %s rounds%s" % (
        m.get("date"), m.get("nproc"), m.get("cpu_model"), m.get("server_version"), args.rounds,
        ", quick" if args.quick else ""))
    for res in results:
        print(render_text(res))
    if args.markdown:
        with open(args.markdown, "w") as f:
            for res in results:
                f.write(render_markdown(res) + "\n")
    print("\nresults: %s" % os.path.relpath(output))
    return 0


def _write_json(path, report):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, default=str)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
