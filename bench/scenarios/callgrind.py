"""Instructions per command, counted by callgrind (valgrind): unlike ops/s,
they do not depend on what else the machine is doing.

Three servers run under callgrind, one after the other:
  1. module loaded, counting only inside module commands
     (--toggle-collect=RedisModuleCommandDispatcher): instructions per
     TAG.SET spent in the module's command, and where they go
     (callgrind_annotate --inclusive=yes);
  2. module loaded, counting the whole server: per TAG.SET, and per plain
     SET (what loading the module costs a plain command);
  3. no module, whole server: per SET, per EVALSHA tag_set.lua, per
     pipelined group SET + 2 x (SADD + EXPIRE).
Whole-server counts are taken between two `callgrind_control --dump`s around
the load, less an idle baseline (instructions per second of an idle window
measured on the same server, times the length of the load's window).
The load: redis-benchmark -c 4 -P 16 -n 20000 -r 10000 (BENCHMARKS.md).
"""

import os
import re
import shutil
import subprocess
import time

import loadgen
import resp
from baseline import patterns
from report import BenchError, Result, Unavailable, log
from runner import VALUE, Server, fill_untagged, run_rb
from shared import ROOT, harness

from . import scenario

N = 20000
KEYSPACE = 10000
CLIENTS = 4
PIPELINE = 16
IDLE_SECONDS = 2.0
BUDGET_SECONDS = 900          # the whole scenario; phases left when it runs out are skipped
DISPATCHER = "RedisModuleCommandDispatcher"
TOP = 25                      # functions shown in the breakdown
# The last figure recorded in BENCHMARKS.md (the run of 9930648, 2026-11-28,
# Redis 7.0.15, 2 tags): a count more than 3% above it is a regression to
# find (callgrind_annotate of bench/callgrind-tag-set.out).
RECORDED_TAG_SET = 23980


class CallgrindServer(Server):
    """A Server started under `valgrind --tool=callgrind`."""

    def __init__(self, binary, module, workdir, pin, name, toggle=None):
        super().__init__(binary, module, workdir, pin, name)
        self.out = str(self.dir / "callgrind.out")
        self.toggle = toggle
        self.parts = 0

    def argv(self):
        argv = super().argv()
        k = 3 if self.pin else 0      # after `taskset -c N`
        vg = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + self.out]
        if self.toggle:
            vg.append("--toggle-collect=" + self.toggle)
        return argv[:k] + vg + argv[k:]

    def _wait_ping(self):
        # valgrind starts the server far more slowly than the harness expects.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise harness.ServerStartError("valgrind exited with %s:\n%s" % (
                    self.proc.returncode, self.log_tail()))
            if harness.ping_once(self.port):
                return
            time.sleep(0.1)
        raise harness.ServerStartError("no PING answer under valgrind in 120 s")

    def _parts(self):
        """{part number: file} of the dumps written so far."""
        out = {}
        for f in os.listdir(self.dir):
            m = re.fullmatch(re.escape(os.path.basename(self.out)) + r"\.(\d+)", f)
            if m:
                out[int(m.group(1))] = os.path.join(self.dir, f)
        return out

    def dump(self):
        """Dump what was counted since the last dump. Returns (Ir, file).

        A `callgrind_control -d` run by someone else on this machine (it
        dumps every callgrind process) splits a window into several parts:
        the window is the sum of every part written since the last call."""
        p = subprocess.run(["callgrind_control", "-d", str(self.proc.pid)], capture_output=True, timeout=120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            new = {k: v for k, v in self._parts().items() if k > self.parts}
            totals = {k: _totals(v) for k, v in new.items()}
            if new and None not in totals.values():
                self.parts = max(new)
                if len(new) > 1:
                    log("callgrind: %d dump parts in one window (a dump by another process?)" % len(new))
                return sum(totals.values()), new[self.parts]
            time.sleep(0.1)
        raise BenchError("callgrind_control -d wrote no new part: %s" % (
            (p.stdout + p.stderr).decode(errors="replace")[-200:]))


def _totals(path):
    """The Ir total of a complete callgrind output file, else None."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    m = re.search(r"^totals:\s+(\d+)", text, re.M)
    return int(m.group(1)) if m else None


def _annotate(path, calls, module_path):
    """Top inclusive functions of a dump, per command."""
    p = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                       capture_output=True, timeout=300)
    rows = []
    seen = set()
    line_re = re.compile(r"^\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(\S+?):(.+?)(?: \[(.+)\])?\s*$")
    for line in p.stdout.decode(errors="replace").splitlines():
        m = line_re.match(line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        ir, pct, src, fn, obj = m.groups()
        fn = fn.strip()
        # Skip the call chain down to the dispatcher itself, and a function
        # listed again under another file (inlined code): the first, larger,
        # figure stands.
        if float(pct) >= 99.95 or fn in seen:
            continue
        seen.add(fn)
        rows.append(["{:,.0f}".format(int(ir.replace(",", "")) / calls), "%.1f%%" % float(pct),
                     fn, _where(src, obj, module_path)])
        if len(rows) >= TOP:
            break
    return rows


def _where(src, obj, module_path):
    obj = obj or ""
    ours = src.startswith(ROOT + "/") or "/registry/src/" in src or "/rustc/" in src
    if module_path and os.path.basename(obj) == os.path.basename(module_path) or (not obj and ours):
        where = "module"
    elif os.path.basename(obj) in ("redis-server", "redis-check-rdb", "redis-check-aof"):
        where = "redis-server"
    else:
        where = os.path.basename(obj) or "?"
    if src != "???":
        if src.startswith(ROOT + "/"):
            src = src[len(ROOT) + 1:]
        elif "/registry/src/" in src:
            src = src.split("/registry/src/", 1)[1].split("/", 1)[-1]
        where += " (%s)" % src
    return where


@scenario("callgrind", "instructions per command (callgrind): TAG.SET inside the module and whole server")
def sc_callgrind(ctx):
    n = 5000 if ctx.quick else N
    res = Result("callgrind",
                 "instructions per command counted by callgrind; redis-benchmark -c %d -P %d -n %s -r %s, "
                 "100-byte values, 2 tags" % (CLIENTS, PIPELINE, "{:,}".format(n), "{:,}".format(KEYSPACE)),
                 [("instructions/op", "value", "instr"), ("ops", "calls", "int"),
                  ("idle Ir subtracted", "idle_ir", "instr"), ("seconds under valgrind", "secs", "ms"),
                  ("DELs that found a key", "hit_pct", "pct")])
    rows = [
        ("tagset_mod", "TAG.SET, inside module commands (--toggle-collect)"),
        ("tagset_whole", "TAG.SET, whole server"),
        ("set_whole", "SET, whole server, module loaded"),
        ("set_whole_p", "SET, whole server, no module loaded"),
        ("get_whole", "GET, whole server, module loaded"),
        ("get_whole_p", "GET, whole server, no module loaded"),
        ("del_whole", "DEL, whole server, module loaded"),
        ("del_whole_p", "DEL, whole server, no module loaded"),
        ("lua_whole_p", "EVALSHA tag_set.lua, whole server, no module loaded"),
        ("pipe_whole_p", "pipeline SET+2x(SADD+EXPIRE), per group, whole server, no module loaded"),
    ]
    for key, label in rows:
        res.row(key, label, "callgrind")
    missing = [t for t in ("valgrind", "callgrind_control", "callgrind_annotate") if not shutil.which(t)]
    why = ("not installed: %s" % ", ".join(missing)) if missing else None
    why = why or ctx.probe(res, ["TAG.SET", "cg:probe", "x", "TAGS", "1", "t"])
    if why:
        for key, _ in rows:
            res.unavailable(key, why)
        res.finalize()
        _goals(res)
        return res
    deadline = time.monotonic() + BUDGET_SECONDS
    val = VALUE.decode()
    tag_set = ["TAG.SET", "key:__rand_int__", val, "EX", "3600", "TAGS", "2", "t1", "t2"]
    plain_set = ["SET", "key:__rand_int__", val]

    def bench(argv, keyspace=KEYSPACE):
        return lambda srv, cl: run_rb(srv.port, cl, argv, CLIENTS, PIPELINE, n, keyspace, ctx.pin,
                                      timeout=max(10, deadline - time.monotonic()))["calls"]

    def flush(srv, cl):
        cl.flushall()

    def keep(srv, cl):
        pass             # GET reads what the SET phase before it wrote

    def fill_for_del(srv, cl):
        # As in the tax scenario: 2n keys, n random DELs (most find a key).
        cl.flushall()
        fill_untagged(cl, 2 * n)

    get = bench(["GET", "key:__rand_int__"])

    def delete(srv, cl):
        before = cl.dbsize()
        calls = bench(["DEL", "key:__rand_int__"], keyspace=2 * n)(srv, cl)
        return {"calls": calls, "hit_pct": (before - cl.dbsize()) / calls * 100.0}

    def lua(srv, cl):
        sha = patterns.load_scripts(cl)["tag_set"]
        cl.flushall()
        return sha

    groups = [loadgen.tag_write_group(loadgen.key_name(i * 7919 % KEYSPACE).encode()) for i in range(n)]
    pipe_batches = [(b"".join(groups[i:i + PIPELINE]), 5 * len(groups[i:i + PIPELINE]))
                    for i in range(0, n, PIPELINE)]

    def pipeline(srv, cl):
        """n groups, PIPELINE groups per write, on one connection."""
        c = resp.Conn(srv.port, timeout=max(10, deadline - time.monotonic()))
        try:
            _, err = c.pipeline(pipe_batches, deadline=deadline)
        finally:
            c.close()
        if err is not None:
            raise Unavailable("pipeline: %s" % err)
        return n

    # 1. inside the module's commands only
    profile = _run_server(ctx, res, "cg-toggle", ctx.module_path, DISPATCHER, deadline,
                          [("tagset_mod", bench(tag_set), flush)], idle=False)
    if profile.get("tagset_mod"):
        path, calls = profile["tagset_mod"]
        kept = os.path.join(os.path.dirname(os.path.abspath(ctx.args.output_path)), "callgrind-tag-set.out")
        shutil.copyfile(path, kept)
        res.table("Where TAG.SET's instructions go inside the module's command (callgrind_annotate "
                  "--inclusive=yes; top %d; the file is %s)" % (TOP, os.path.relpath(kept)),
                  ["Ir per TAG.SET", "inclusive", "function", "where"],
                  _annotate(path, calls, ctx.module_path))
    # 2. whole server, module loaded
    _run_server(ctx, res, "cg-whole", ctx.module_path, None, deadline,
                [("tagset_whole", bench(tag_set), flush), ("set_whole", bench(plain_set), flush),
                 ("get_whole", get, keep), ("del_whole", delete, fill_for_del)])
    # 3. whole server, no module
    sha = {}

    def lua_bench(srv, cl):
        return bench(["EVALSHA", sha["v"], "3", "key:__rand_int__", "tag:t1", "tag:t2", val, "3600"])(srv, cl)

    _run_server(ctx, res, "cg-plain", None, None, deadline,
                [("set_whole_p", bench(plain_set), flush), ("get_whole_p", get, keep),
                 ("del_whole_p", delete, fill_for_del), ("lua_whole_p", lua_bench, flush),
                 ("pipe_whole_p", pipeline, flush)],
                setup=lambda srv, cl: sha.update(v=lua(srv, cl)))
    res.finalize()
    _goals(res)
    return res


def _run_server(ctx, res, name, module, toggle, deadline, phases, idle=True, setup=None):
    """Start one server under callgrind and measure each phase on it:
    phases are (key, run, prepare); prepare(srv, client) runs outside the
    counted window, run(srv, client) inside it and returns the operations
    done (or a dict of fields with "calls"). Returns {key: (dump file, calls)}."""
    files = {}
    srv = CallgrindServer(ctx.server_bin, module, ctx.workdir, ctx.pin, name, toggle)
    ctx.extra_servers.append(srv)
    try:
        srv.start()
    except harness.ServerStartError as e:
        for key, _, _ in phases:
            res.unavailable(key, "valgrind server did not start: %s" % str(e)[:150])
        return files
    try:
        cl = srv.client(timeout=300)
        if setup:
            setup(srv, cl)
        srv.dump()                                   # start-up, set-up: not counted
        idle_rate = 0.0
        if idle:
            t0 = time.monotonic()
            time.sleep(IDLE_SECONDS)
            ir, _ = srv.dump()
            idle_rate = ir / (time.monotonic() - t0)
        for key, run, prepare in phases:
            if time.monotonic() > deadline:
                res.unavailable(key, "the scenario's %d s budget ran out" % BUDGET_SECONDS)
                continue
            prepare(srv, cl)
            srv.dump()                               # the preparation: not counted
            t0 = time.monotonic()
            try:
                out = run(srv, cl)
            except (Unavailable, BenchError) as e:
                res.unavailable(key, str(e)[:200])
                continue
            ir, path = srv.dump()
            secs = time.monotonic() - t0
            extra = out if isinstance(out, dict) else {"calls": out}
            calls = extra["calls"]
            idle_ir = idle_rate * secs
            res.add(key, value=(ir - idle_ir) / calls, idle_ir=idle_ir, secs=secs, **extra)
            files[key] = (path, calls)
            log("callgrind %-12s %-14s %10.0f instructions/op (%d ops, %.1f s)" % (
                name, key, (ir - idle_ir) / calls, calls, secs))
    except (OSError, subprocess.SubprocessError, BenchError) as e:
        res.note("%s: %s" % (name, e))
        for key, _, _ in phases:
            if key not in files:
                res.unavailable(key, str(e)[:200])
    finally:
        srv.stop()
    return files


def _goals(res):
    res.goal("TAG.SET instructions per command inside the module (callgrind --toggle-collect)",
             res.med("tagset_mod"), "<=", 25000, unit="instr", row="tagset_mod",
             why_missing=res._by_key["tagset_mod"]["status"])
    v = res.med("tagset_mod")
    res.goal("TAG.SET instructions inside the module ÷ the last recorded figure (%s, 9930648)"
             % "{:,}".format(RECORDED_TAG_SET), v / RECORDED_TAG_SET if v else None, "<=", 1.03,
             row="tagset_mod", why_missing=res._by_key["tagset_mod"]["status"])
    res.goal("whole server instructions per TAG.SET (minus idle)", res.med("tagset_whole"), "<=", 0,
             unit="instr", info=True, summary=True, row="tagset_whole", why_missing="no data")
    res.goal("whole server instructions per SET, no module loaded (minus idle)", res.med("set_whole_p"), "<=", 0,
             unit="instr", info=True, summary=True, row="set_whole_p", why_missing="no data")
    for label, num, den in (
            ("TAG.SET ÷ SET without the module", "tagset_whole", "set_whole_p"),
            ("EVALSHA tag_set.lua without the module ÷ TAG.SET", "lua_whole_p", "tagset_whole"),
            ("pipeline group without the module ÷ TAG.SET", "pipe_whole_p", "tagset_whole")):
        res.ratio("instructions, whole server: " + label, num, den, ">=", 1, info=True)
    # The tax on plain commands, free of the machine's noise: for reading
    # next to the tax scenario's throughput ratios.
    for cmd in ("SET", "GET", "DEL"):
        res.ratio("instructions, whole server: %s with the module loaded ÷ without" % cmd,
                  "%s_whole" % cmd.lower(), "%s_whole_p" % cmd.lower(), "<=", 1, info=True, summary=True)
