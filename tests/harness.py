"""Server harness for the integration tests.

Each test starts its own server process on a free loopback port with its own
working directory, loads the built module from a private copy, talks to it with
redis-py, and kills it by PID when done. Every wait is bounded.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
SERVER = os.environ.get("TAGCACHE_SERVER") or shutil.which("redis-server") or "redis-server"
MODULE = Path(
    os.environ.get("TAGCACHE_MODULE") or ROOT / "target" / "release" / "libredis_tagcache.so"
).resolve()

START_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0
SYNC_TIMEOUT = 15.0

_used_ports: set[int] = set()
_version_cache: dict[str, tuple[str, tuple[int, ...]]] = {}


class ServerStartError(Exception):
    """The server exited or never answered PING."""


def server_version(binary: str = SERVER) -> tuple[str, tuple[int, ...]]:
    """('redis' | 'valkey', (major, minor, patch)) from `<binary> --version`."""
    if binary not in _version_cache:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        m = re.search(r"(\w+) server v=(\d+)\.(\d+)\.(\d+)", out)
        if not m:
            _version_cache[binary] = ("unknown", (0, 0, 0))
        else:
            _version_cache[binary] = (
                m.group(1).lower(),
                tuple(int(x) for x in m.groups()[1:]),
            )
    return _version_cache[binary]


def supports_debug_option(binary: str = SERVER) -> bool:
    """`enable-debug-command` exists from Redis 7.0 (and in every Valkey)."""
    name, ver = server_version(binary)
    return name == "valkey" or ver >= (7, 0, 0)


def free_port() -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _used_ports:
            _used_ports.add(port)
            return port
    raise RuntimeError("no free loopback port")


def cluster_port(taken: set[int]) -> int:
    """A free port below 55536 whose cluster bus port (port + 10000) is free
    too; both are added to `taken`."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(20000, 45000)
        if port in taken or port + 10000 in taken or port in _used_ports:
            continue
        try:
            for p in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", p))
        except OSError:
            continue
        taken.update((port, port + 10000))
        _used_ports.add(port)
        return port
    raise RuntimeError("no free port pair for a cluster node")


def ping_once(port: int, timeout: float = 1.0) -> bool:
    """True if the server answers PING with PONG (not -LOADING) right now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} not readable)"
    return "\n".join(text.splitlines()[-lines:])


class Server:
    """One server process. `dir` survives restarts so RDB/AOF files are reused."""

    def __init__(self, workdir: Path, module: Path, module_args=(), extra_args=()):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.module = Path(module)
        self.module_args = [str(a) for a in module_args]
        self.extra_args = [str(a) for a in extra_args]
        self.log = self.dir / "server.log"
        self.stderr = self.dir / "stderr.log"
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._clients: list[redis.Redis] = []

    def argv(self) -> list[str]:
        argv = [
            SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--logfile", str(self.log),
            "--daemonize", "no",
            "--save", "",
            "--repl-diskless-sync-delay", "0",
        ]
        if supports_debug_option():
            argv += ["--enable-debug-command", "yes"]
        argv += ["--loadmodule", str(self.module), *self.module_args]
        argv += self.extra_args
        return argv

    def _spawn(self) -> None:
        if self.port is None:
            self.port = free_port()
        err = open(self.stderr, "ab")
        try:
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=self.dir
            )
        finally:
            err.close()

    def start(self) -> "Server":
        """Starts and waits until PING answers; retries on a port taken meanwhile."""
        for attempt in range(3):
            self._spawn()
            try:
                self._wait_ping()
                return self
            except ServerStartError:
                self.kill()
                if attempt < 2 and "Address already in use" in tail(self.log, 20):
                    self.port = None
                    continue
                raise
        raise ServerStartError("unreachable")

    def start_expect_failure(self, timeout: float = START_TIMEOUT) -> tuple[bool, str]:
        """Starts a server that should refuse to come up.

        Returns (came_up, log text). `came_up` is True if it answered PING
        before exiting; the process is killed either way.
        """
        self._spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        came_up = False
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if ping_once(self.port):
                came_up = True
                break
            time.sleep(0.05)
        self.kill()
        text = ""
        for p in (self.log, self.stderr):
            try:
                text += p.read_text(errors="replace")
            except OSError:
                pass
        return came_up, text

    def _wait_ping(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"server exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if ping_once(self.port):
                return
            time.sleep(0.05)
        raise ServerStartError(f"no PING answer in {START_TIMEOUT}s:\n{self.log_tail()}")

    def client(self, **kw) -> redis.Redis:
        opts = dict(host="127.0.0.1", port=self.port, decode_responses=False,
                    socket_timeout=10, socket_connect_timeout=5)
        opts.update(kw)
        c = redis.Redis(**opts)
        self._clients.append(c)
        return c

    def stop(self, graceful: bool = False) -> None:
        """Graceful stop (SIGTERM: AOF flushed, no RDB with `save ""`) or SIGKILL."""
        for c in self._clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing must never fail teardown
                pass
        self._clients.clear()
        if self.proc is None:
            return
        if graceful and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        self.proc = None

    def restart(self, graceful: bool = True) -> redis.Redis:
        """Stops and starts again on the same dir and port; returns a new client."""
        self.stop(graceful=graceful)
        self.start()
        return self.client()

    def log_tail(self, lines: int = 40) -> str:
        out = f"--- {self.log} (port {self.port}) ---\n{tail(self.log, lines)}"
        if self.stderr.exists() and self.stderr.stat().st_size:
            out += f"\n--- {self.stderr} ---\n{tail(self.stderr, lines)}"
        return out


_SESSION_MODULE: Path | None = None


def session_module() -> Path:
    """A private copy of the module for this test session: a rebuild never
    overwrites a file a server has mapped. One per session, not per test
    (a build with debug information is tens of MB)."""
    global _SESSION_MODULE
    if _SESSION_MODULE is None:
        import atexit
        import tempfile
        moddir = Path(tempfile.mkdtemp(prefix="tagcache-module-"))
        atexit.register(shutil.rmtree, moddir, True)
        copy = (moddir / MODULE.name).resolve()
        shutil.copy2(MODULE, copy)
        _SESSION_MODULE = copy
    return _SESSION_MODULE


class ServerFactory:
    """Starts servers for one test and stops them all at teardown."""

    def __init__(self, tmp: Path):
        self.tmp = Path(tmp)
        self.servers: list[Server] = []
        self.module = session_module()

    def new(self, module_args=(), extra_args=(), name: str | None = None) -> Server:
        name = name or f"server{len(self.servers)}"
        s = Server(self.tmp / name, self.module, module_args, extra_args)
        self.servers.append(s)
        return s

    def start(self, module_args=(), extra_args=(), name: str | None = None) -> Server:
        return self.new(module_args, extra_args, name).start()

    def start_replica(self, master: Server, module_args=(), extra_args=()) -> Server:
        replica = self.start(
            module_args,
            ["--replicaof", "127.0.0.1", str(master.port), *extra_args],
            name=f"replica{len(self.servers)}",
        )
        wait_link_up(replica.client())
        wait_sync(master.client(), replica.client())
        return replica

    def stop_all(self) -> None:
        for s in self.servers:
            s.stop()

    def log_tails(self) -> str:
        return "\n".join(s.log_tail() for s in self.servers)


# ---------------------------------------------------------------- helpers


def info_field(client: redis.Redis, section: str, field: str):
    return client.info(section).get(field)


def wait_until(predicate, timeout: float = SYNC_TIMEOUT, interval: float = 0.02, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def wait_link_up(replica: redis.Redis, timeout: float = SYNC_TIMEOUT) -> None:
    wait_until(
        lambda: info_field(replica, "replication", "master_link_status") == "up",
        timeout,
        what="master_link_status:up",
    )


def wait_sync(master: redis.Redis, replica: redis.Redis, timeout: float = SYNC_TIMEOUT) -> None:
    """Waits until the replica has processed everything the master has sent."""

    def synced():
        m = info_field(master, "replication", "master_repl_offset")
        r = info_field(replica, "replication", "master_repl_offset")
        return m is not None and m == r

    wait_until(synced, timeout, what="replica offset == master offset")


def wait_aof_rewrite(client: redis.Redis, timeout: float = SYNC_TIMEOUT) -> None:
    def done():
        p = client.info("persistence")
        return p.get("aof_rewrite_in_progress") == 0 and p.get("aof_rewrite_scheduled") == 0

    wait_until(done, timeout, what="AOF rewrite")


def acl_client(server: Server, admin: redis.Redis, user: str, password: str, *rules) -> redis.Redis:
    """Creates an ACL user (`ACL SETUSER user on >password rules...`) and a client for it."""
    admin.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", *rules)
    c = server.client(username=user, password=password)
    c.ping()
    return c


def error_text(exc: Exception) -> str:
    """The error as the server sent it. redis-py strips the code (`ERR`,
    `NOPERM`, ...) of the errors it maps to its own classes; put it back."""
    msg = str(exc)
    code = getattr(exc, "status_code", None)
    if code:
        # redis-py 8.2 sets the code on every error, also where the message
        # still begins with it.
        return msg if msg.startswith(f"{code} ") else f"{code} {msg}"
    if re.match(r"^[A-Z][A-Z_]+ ", msg):
        return msg
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return f"NOPERM {msg}"
    return f"ERR {msg}"


def digest(client: redis.Redis) -> bytes:
    d = client.execute_command("DEBUG", "DIGEST")
    return d if isinstance(d, bytes) else str(d).encode()


def dataset(client: redis.Redis) -> dict:
    """Every key with its type, value and whether it has a TTL: compared before
    and after a call that must change nothing."""
    out = {}
    for key in client.keys(b"*"):
        t = client.type(key)
        if t == b"string":
            v = client.get(key)
        elif t == b"set":
            v = frozenset(client.smembers(key))
        elif t == b"hash":
            v = tuple(sorted(client.hgetall(key).items()))
        elif t == b"list":
            v = tuple(client.lrange(key, 0, -1))
        elif t == b"zset":
            v = tuple(client.zrange(key, 0, -1, withscores=True))
        else:
            v = client.dump(key)
        out[key] = (t, v, client.pttl(key) > 0)
    return out


def tag_sets(client: redis.Redis, prefix: bytes = b"tag:") -> dict:
    """SMEMBERS of every index set under `prefix`."""
    return {
        k: frozenset(client.smembers(k))
        for k in client.keys(prefix + b"*")
        if client.type(k) == b"set"
    }


def tags_of(client: redis.Redis, key) -> set:
    return set(client.execute_command("TAG.TAGS", key))


def members(client: redis.Redis, tag) -> set:
    return set(client.execute_command("TAG.MEMBERS", tag))


def tag_set(client: redis.Redis, key, value, *tags, opts=()):
    """TAG.SET key value [opts...] TAGS n tags..."""
    return client.execute_command("TAG.SET", key, value, *opts, "TAGS", len(tags), *tags)


# ---------------------------------------------------------------- raw RESP


class RespError(Exception):
    pass


class Push(list):
    """An out-of-band RESP3 push message."""


class RawConn:
    """A minimal RESP2/RESP3 connection: exact reply types, push messages seen."""

    def __init__(self, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def close(self):
        self.sock.close()

    def send(self, *args) -> None:
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, int):
                a = str(a).encode()
            elif isinstance(a, str):
                a = a.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(parts))

    def command(self, *args):
        """Sends a command and returns its reply, skipping push messages."""
        self.send(*args)
        while True:
            reply = self.read()
            if not isinstance(reply, Push):
                if isinstance(reply, RespError):
                    raise reply
                return reply

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def read(self, timeout: float | None = None):
        if timeout is not None:
            self.sock.settimeout(timeout)
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind in (b"-", b"!"):
            msg = self._exact(int(rest)) if kind == b"!" else rest
            return RespError(msg.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"(":
            return int(rest)
        if kind == b",":
            return float(rest)
        if kind == b"#":
            return rest == b"t"
        if kind == b"_":
            return None
        if kind in (b"$", b"="):
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind in (b"*", b"~", b">"):
            n = int(rest)
            if n < 0:
                return None
            items = [self.read() for _ in range(n)]
            return Push(items) if kind == b">" else items
        if kind == b"%":
            n = int(rest)
            out = {}
            for _ in range(n):
                k = self.read()
                out[k] = self.read()
            return out
        if kind == b"|":
            for _ in range(int(rest) * 2):
                self.read()
            return self.read()
        raise ValueError(f"unknown RESP type {line!r}")


# ---------------------------------------------------------------- shared test helpers

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


def newer_than_7_0(binary: str = SERVER) -> bool:
    """Redis from 7.2 and every Valkey (forked from 7.2.4) word some of the
    server's own errors differently from Redis 7.0."""
    name, ver = server_version(binary)
    return name == "valkey" or ver >= (7, 2, 0)


def server_noperm_key() -> str:
    """The server's own reply to a command naming a key the user may not
    access (its ACL check by key specs, before any command runs)."""
    if newer_than_7_0():
        return "NOPERM No permissions to access a key"
    return "NOPERM this user has no permissions to access one of the keys used as arguments"


def esc(raw: bytes) -> str:
    """A client's bytes as an error reply must show them: printable ASCII as
    is, anything else (and ' and \\) as \\xHH with lowercase hex digits."""
    return "".join(
        chr(b) if 0x20 <= b <= 0x7E and b not in (0x27, 0x5C) else f"\\x{b:02x}"
        for b in raw
    )


def noperm_key(key: bytes) -> str:
    """The module's own reply naming a key the caller may not access."""
    return f"NOPERM this user has no permissions to access the '{esc(key)}' key"


def refused(client: redis.Redis, *args) -> str:
    """The exact error text a call is refused with; a call that is not
    refused fails the test."""
    try:
        reply = client.execute_command(*args)
    except redis.ResponseError as e:
        return error_text(e)
    raise AssertionError(f"{args!r} was not refused: it replied {reply!r}")


def set_of(client: redis.Redis, key) -> set:
    return set(client.smembers(key))


def info_pairs(reply) -> dict:
    """A name/value reply (TAG.INFO) as a dict with str names: a map under
    RESP3, a flat array under RESP2."""
    items = reply.items() if isinstance(reply, dict) else zip(reply[0::2], reply[1::2])
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in items}


def tag_info(client: redis.Redis) -> dict:
    """TAG.INFO as a dict with str names."""
    return info_pairs(client.execute_command("TAG.INFO"))


def wait_tag_info(client: redis.Redis, field: str, value, timeout: float = 5.0) -> None:
    """Waits until TAG.INFO `field` equals `value` (a counter of work the
    module does after the command that caused it has replied)."""
    last = {}

    def reached():
        last["v"] = tag_info(client)[field]
        return last["v"] == value

    try:
        wait_until(reached, timeout, what=f"TAG.INFO {field} == {value!r}")
    except AssertionError as e:
        raise AssertionError(f"{e} (last {last.get('v')!r})") from None


def blocked_clients(client: redis.Redis) -> int:
    return client.info("clients")["blocked_clients"]


def wait_blocked(client: redis.Redis, n: int, timeout: float = 3.0) -> None:
    wait_until(lambda: blocked_clients(client) == n, timeout, what=f"{n} blocked client(s)")


def server_time_ms(client: redis.Redis) -> int:
    """The server's clock (TIME) in milliseconds."""
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def wait_server_time_past(client: redis.Redis, ms: int, timeout: float = 5.0) -> None:
    """Waits until the server's clock is past `ms` (a unix time in
    milliseconds): a key whose expiry time is `ms` or earlier is expired for
    every later command, and nothing was looked up (or lazily expired) to
    find out."""
    wait_until(lambda: server_time_ms(client) > ms, timeout,
               interval=0.005, what=f"the server's clock past {ms}")


def reply_within(conn: "RawConn", seconds: float):
    """The next reply on a raw connection, or a failure if none arrives in time."""
    try:
        return conn.read(timeout=seconds)
    except (socket.timeout, TimeoutError):
        raise AssertionError(f"no reply within {seconds}s") from None


def raw_reply(port: int, *args, auth: tuple | None = None):
    """One command on a fresh raw connection. An error comes back as a
    RespError holding the whole reply line as sent (invalid UTF-8 shows as
    U+FFFD, so it never equals an escaped text)."""
    conn = RawConn(port)
    try:
        if auth:
            assert conn.command("AUTH", *auth) == b"OK"
        conn.send(*args)
        return conn.read(timeout=5)
    finally:
        conn.close()


def assert_raw_error(port: int, expected: str, *args, auth: tuple | None = None) -> None:
    reply = raw_reply(port, *args, auth=auth)
    assert isinstance(reply, RespError), reply
    assert str(reply) == expected


def assert_alive(port: int) -> None:
    assert ping_once(port, timeout=2.0), "the server no longer answers PING"
