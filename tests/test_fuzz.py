"""Seeded random argument fuzzing of every module command.

Each seed drives a few hundred to a thousand calls of TAG.* and VER.*
commands against one server, over a raw RESP connection so that arbitrary
bytes (NUL, CR/LF, invalid UTF-8, 4-byte UTF-8, characters whose code point
ends in 0x00 such as U+1F600 and U+4E00) arrive exactly as generated. Calls
are a mix of structurally valid ones (so that some succeed and the dataset
keeps changing), valid ones with a few arguments mutated, and random ones.

Every call is sent in one pipeline with its checks:

    INFO stats, DEBUG DIGEST, <call>, PING, DEBUG DIGEST, INFO stats, ECHO nonce

The server runs a client's pipelined commands back to back, so nothing
else (timers, active expiry) runs between the two digests unless the call
blocks (a blocked call is released with CLIENT UNBLOCK after half a
second). After each call the test checks:

  * the server is alive and the connection still answers PING. If the
    process died, the failure shows the exact call, the module's panic
    message and crash line from the server log, and whether the call alone
    crashes a freshly seeded server again; the server is then restarted and
    fuzzing goes on, up to a few crashes. A server that stops answering
    (hung or busy: no reply within a few seconds, or one call taking more
    than SLOW_CALL) or a connection whose replies stop while the server
    still answers others ends the seed with the module's TAG.INFO
    counters, the rules created so far and the calls before it;
  * every error reply is a well-formed RESP error: one line, no raw CR or
    LF, starting with a Redis error code (ERR, WRONGTYPE, NOPERM, ...), and
    the reply stream stays in step (the PING and the ECHO nonce come back);
  * a refused call changes nothing: when the call replied an error (or
    TAG.SET replied nil: NX/XX/LEASE refused the write) the digests before
    and after are equal. Calls during which a key expired lazily
    (`expired_keys` moved) or that blocked are not judged on the digest.
    When a refused call did change the digest, the test also looks whether
    the dataset changes with no command at all, and says so.

The server is loaded with `events-stream` set, so that purges, bumps and
rule firings also write a stream key, and the dataset is seeded with
tagged strings, a tagged hash and list, a client-written tag set, an index
key of the wrong type, version tokens (one next to the 64-bit limit, one
not a number) and a rule, re-seeded every RESEED_EVERY calls.

Failures are collected and reported together at the end with the seed,
the call number and the exact call (repr of its byte arguments; a long run
of one repeated unit is written `unit * count`).

Environment:
  TAGCACHE_FUZZ_SEEDS        comma-separated seeds (default: the four below)
  TAGCACHE_FUZZ_CALLS        calls per seed (default 1000)
  TAGCACHE_FUZZ_SECONDS      time budget per seed (default 13)
  TAGCACHE_FUZZ_MAX_CRASHES  crashes per seed before giving up (default 5)
"""

from __future__ import annotations

import os
import random
import re
import socket
import time

import pytest

from harness import RawConn, ping_once

DEFAULT_SEEDS = [1009, 2027, 3041, 4073]
SEEDS = [int(s) for s in os.environ.get("TAGCACHE_FUZZ_SEEDS", "").split(",") if s.strip()]
SEEDS = SEEDS or DEFAULT_SEEDS
CALLS = int(os.environ.get("TAGCACHE_FUZZ_CALLS", "1000"))
SECONDS = float(os.environ.get("TAGCACHE_FUZZ_SECONDS", "13"))
MAX_CRASHES = int(os.environ.get("TAGCACHE_FUZZ_MAX_CRASHES", "5"))
MAX_FAILURES = 40           # stop collecting after this many failures of any kind
RESEED_EVERY = 150          # calls between re-seeding the dataset
BLOCK_GRACE = 0.5           # s before a silent call is released with CLIENT UNBLOCK
REPLY_TIMEOUT = 5.0         # s for any reply once a call is not blocked
SLOW_CALL = 3.0             # s for a call with its checks, unless it blocked

ERROR_CODES = {
    b"ERR", b"WRONGTYPE", b"NOPERM", b"CROSSSLOT", b"EXECABORT", b"BUSY", b"BUSYKEY",
    b"NOSCRIPT", b"OOM", b"READONLY", b"LOADING", b"MOVED", b"ASK", b"TRYAGAIN",
    b"UNBLOCKED", b"NOAUTH", b"WRONGPASS", b"NOREPLICAS", b"MASTERDOWN", b"MISCONF",
    b"CLUSTERDOWN", b"NOTBUSY",
}

COMMANDS = [
    b"TAG.SET", b"TAG.ADD", b"TAG.REM", b"TAG.PURGE", b"TAG.MEMBERS", b"TAG.CARD",
    b"TAG.TAGS", b"TAG.INFO", b"TAG.LINK", b"TAG.UNLINK", b"TAG.LINKS", b"TAG.GETL",
    b"VER.GET", b"VER.SET", b"VER.BUMP", b"VER.CURRENT",
]

OPTION_WORDS = [
    b"EX", b"PX", b"EXAT", b"PXAT", b"KEEPTTL", b"NX", b"XX", b"LEASE", b"TAGS",
    b"TTL", b"WAIT", b"ASYNC",
]

NUMBERS = [
    b"9223372036854775807", b"-9223372036854775808", b"9223372036854775808",
    b"-9223372036854775809", str(2**64).encode(), b"18446744073709551615",
    str(2**63 // 1000 + 1).encode(), b"9223372036854775", b"9223372036854776",
    b"86400000", b"86400001", b"100000000000", b"0", b"-0", b"00", b"1", b"-1", b"2",
    b"3", b"1e3", b"  1", b"1 ", b"+1", b"0x10", b"1.5", b"-1.5", b"inf", b"nan",
    b"\x001", b"1\x00", b"\xd9\xa1",  # ARABIC-INDIC DIGIT ONE
    b"\xef\xbc\x91",  # FULLWIDTH DIGIT ONE
]

SPECIAL = [
    "\U0001F600".encode(),           # U+1F600: 4-byte UTF-8, code point ends in 0x00
    "\u4e00".encode(),               # U+4E00 (CJK one): code point ends in 0x00
    "\u0100".encode(), "\U00010000".encode(), "\U00010300".encode(),
    "a\U0001F600b".encode(), "\u4e00\u4e01".encode(), "\u00e9".encode(),
    b"\x00", b"a\x00b", b"\x00\x00\x00", b"\r\n", b"\r", b"\n", b"a\r\nb",
    b"\r\n-ERR injected\r\n", b"\r\n+OK\r\n", b"\xff", b"\xfe\xff", b"\xc3\x28",
    b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xc0\x80", b"\xf0\x9f\x98",
    b"%s%n%x", b"{x}", b"{}", b"*", b"?", b"[", b"\\", b"'", b'"', b"tag:", b"ver:",
    b"v1:", b"tagcache:links", b"tagcache:stream", b"-", b"--", b" ", b"\t",
]

KEYS = [
    b"k0", b"k1", b"k2", b"k3", b"h", b"lst", b"plain", b"new0", b"new1",
    b"missing", b"src:1", b"src:2", b"tag:t0", b"tag:legacy", b"ver:s0",
    "\U0001F600k".encode(), "\u4e00".encode(),
]
TAGS = [b"t0", b"t1", b"t2", b"t3", b"legacy", b"wrong", b"1", b"ASYNC",
        "\U0001F600".encode()]
SCOPES = [b"s0", b"s1", b"max", b"bad", b"fresh", "\u4e00".encode()]
SOURCES = [b"src:", b"user:", b"k", b"zz:", b"ver:", b"tagcache:"]


class ErrorReply:
    """An error reply, with its raw bytes (after the leading '-')."""

    def __init__(self, raw: bytes):
        self.raw = raw

    def __repr__(self):
        return f"ErrorReply({self.raw!r})"


class Status(bytes):
    """A simple-string reply (+...)."""


class Desync(Exception):
    """The reply stream is not valid RESP where a reply was expected."""


class FuzzConn(RawConn):
    """RESP2 over a socket, keeping error replies as exact bytes."""

    def send_many(self, commands) -> None:
        parts = []
        for args in commands:
            parts.append(b"*%d\r\n" % len(args))
            for a in args:
                parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(parts))

    def reply(self, timeout: float | None = REPLY_TIMEOUT):
        if timeout is not None:
            self.sock.settimeout(timeout)
        line = self._line()
        kind, rest = line[:1], line[1:]
        try:
            if kind == b"+":
                return Status(rest)
            if kind == b"-":
                return ErrorReply(rest)
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                return None if n < 0 else self._exact(n)
            if kind == b"*":
                n = int(rest)
                return None if n < 0 else [self.reply(None) for _ in range(n)]
        except ValueError as e:
            raise Desync(f"bad RESP header {line!r}") from e
        raise Desync(f"unexpected line {line!r}")

    def cmd(self, *args):
        self.send_many([[a if isinstance(a, bytes) else str(a).encode() for a in args]])
        return self.reply()


def bad_error(raw: bytes) -> str | None:
    """Why an error reply is malformed, or None."""
    if b"\r" in raw or b"\n" in raw:
        return "contains a raw CR or LF"
    code = raw.split(b" ", 1)[0]
    if code not in ERROR_CODES:
        return f"does not start with a Redis error code (starts with {code[:30]!r})"
    return None


def show_bytes(b: bytes) -> str:
    """repr of bytes, exact, with a long run of one repeated unit written as
    `unit * count`."""
    if len(b) > 48:
        for size in range(1, 9):
            unit = b[:size]
            if len(b) % size == 0 and unit * (len(b) // size) == b:
                return f"{unit!r} * {len(b) // size}"
    return repr(b)


def show(args) -> str:
    return "[" + ", ".join(show_bytes(a) for a in args) + "]"


def nested_errors(reply):
    if isinstance(reply, ErrorReply):
        yield reply
    elif isinstance(reply, list):
        for item in reply:
            yield from nested_errors(item)


def expired_keys(info) -> int | None:
    if isinstance(info, bytes):
        m = re.search(rb"expired_keys:(\d+)", info)
        if m:
            return int(m.group(1))
    return None


# ------------------------------------------------------------------ generator


class Gen:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.tokens: list[bytes] = []   # lease tokens handed out by TAG.GETL

    def case(self, word: bytes) -> bytes:
        r = self.rng
        mode = r.random()
        if mode < 0.4:
            return word
        if mode < 0.6:
            return word.lower()
        return bytes(c ^ 0x20 if chr(c).isalpha() and r.random() < 0.5 else c for c in word)

    def atom(self) -> bytes:
        r = self.rng
        x = r.random()
        if x < 0.12:
            return r.choice(KEYS)
        if x < 0.24:
            return r.choice(TAGS)
        if x < 0.40:
            return r.choice(NUMBERS)
        if x < 0.52:
            return self.case(r.choice(OPTION_WORDS))
        if x < 0.72:
            return r.choice(SPECIAL)
        if x < 0.82:
            return r.randbytes(r.randint(0, 24))
        if x < 0.88:
            # valid text around an awkward character
            return r.choice([b"t", b"k", b"src:", b""]) + r.choice(SPECIAL) + r.choice([b"", b"x"])
        if x < 0.93:
            return b""
        if x < 0.96:
            return str(r.randint(-5, 100000)).encode()
        return r.choice([b"a", b"\x00", "\U0001F600".encode()]) * r.randint(100, 600)

    # -- structurally valid calls (most of them succeed)

    def expiry(self) -> list[bytes]:
        r = self.rng
        now = time.time()
        c = r.randrange(7)
        if c == 0:
            return [self.case(b"EX"), str(r.randint(1000, 10**6)).encode()]
        if c == 1:
            return [self.case(b"PX"), str(r.randint(10**6, 10**9)).encode()]
        if c == 2:
            return [self.case(b"EXAT"), str(int(now) + r.randint(1000, 10**6)).encode()]
        if c == 3:
            return [self.case(b"PXAT"), str(int(now * 1000) + r.randint(10**6, 10**9)).encode()]
        if c == 4:
            return [self.case(b"KEEPTTL")]
        return []

    def tags(self, lo=1, hi=3) -> list[bytes]:
        return [self.rng.choice(TAGS[:6]) for _ in range(self.rng.randint(lo, hi))]

    def valid(self) -> list[bytes]:
        r = self.rng
        name = r.choice(COMMANDS + [b"TAG.SET"] * 4 + [b"TAG.GETL", b"VER.SET", b"VER.BUMP"])
        key = r.choice(KEYS[:12])
        if name == b"TAG.SET":
            args = [name, key, r.choice([b"v", b"val\x00ue", r.randbytes(8)])]
            args += self.expiry()
            if r.random() < 0.15:
                args.append(self.case(r.choice([b"NX", b"XX"])))
            if r.random() < 0.2:
                tok = r.choice(self.tokens) if self.tokens and r.random() < 0.7 else b"bogus"
                args += [self.case(b"LEASE"), tok]
            tags = self.tags()
            return args + [self.case(b"TAGS"), str(len(tags)).encode(), *tags]
        if name in (b"TAG.ADD", b"TAG.REM"):
            return [name, key, *self.tags()]
        if name == b"TAG.PURGE":
            tail = [self.case(b"ASYNC")] if r.random() < 0.2 else []
            return [name, *self.tags(1, 2), *tail]
        if name in (b"TAG.MEMBERS", b"TAG.CARD"):
            return [name, r.choice(TAGS)]
        if name == b"TAG.TAGS":
            return [name, key]
        if name in (b"TAG.INFO", b"TAG.LINKS"):
            return [name]
        if name == b"TAG.LINK":
            return [name, r.choice(SOURCES), r.choice([b"t", b"x", b"t0"])]
        if name == b"TAG.UNLINK":
            return [name, r.choice(SOURCES)]
        if name == b"TAG.GETL":
            args = [name, r.choice([b"new0", b"new1", b"missing", b"k0", b"gl"])]
            if r.random() < 0.5:
                args += [self.case(b"TTL"), str(r.randint(50, 5000)).encode()]
            if r.random() < 0.4:
                args += [self.case(b"WAIT"), str(r.randint(0, 200)).encode()]
            return args
        if name == b"VER.GET":
            return [name, r.choice(SCOPES), r.choice([b"vk", b"vk2"])]
        if name == b"VER.SET":
            args = [name, r.choice(SCOPES), r.choice([b"vk", b"vk2"]), b"vv"]
            if r.random() < 0.3:
                args += [self.case(b"EX"), str(r.randint(1000, 10**6)).encode()]
            return args
        if name == b"VER.BUMP":
            return [name, *[r.choice(SCOPES) for _ in range(r.randint(1, 3))]]
        return [name, r.choice(SCOPES)]  # VER.CURRENT

    # -- mutations of valid calls, and random calls

    def mutate(self, args: list[bytes]) -> list[bytes]:
        r = self.rng
        args = list(args)
        for _ in range(r.randint(1, 3)):
            op = r.randrange(8)
            pos = r.randint(1, max(1, len(args) - 1))
            if op == 0 and len(args) > 1:
                args[min(pos, len(args) - 1)] = self.atom()
            elif op == 1:
                args.insert(pos, self.atom())
            elif op == 2 and len(args) > 1:
                del args[min(pos, len(args) - 1)]
            elif op == 3 and len(args) > 1:
                args.insert(pos, args[min(pos, len(args) - 1)])
            elif op == 4:
                # TAGS followed by a wrong count, or a count of a wrong form
                idx = [i for i, a in enumerate(args) if a.upper() == b"TAGS"]
                if idx and idx[0] + 1 < len(args):
                    i = idx[0] + 1
                    try:
                        n = int(args[i])
                    except ValueError:
                        n = 1
                    args[i] = r.choice([str(n + r.choice([-2, -1, 1, 2, 1000])).encode(),
                                        r.choice(NUMBERS)])
                else:
                    args += [self.case(b"TAGS"), r.choice(NUMBERS), self.atom()]
            elif op == 5:
                args.append(self.case(r.choice(OPTION_WORDS)))
                if r.random() < 0.7:
                    args.append(r.choice(NUMBERS + [self.atom()]))
            elif op == 6:
                del args[r.randint(1, len(args)):]
            else:
                args[0] = self.case(args[0])
        return args

    def random_call(self) -> list[bytes]:
        r = self.rng
        return [self.case(r.choice(COMMANDS))] + [self.atom() for _ in range(r.randint(0, 8))]

    def call(self) -> list[bytes]:
        x = self.rng.random()
        if x < 0.30:
            return self.valid()
        if x < 0.80:
            return self.mutate(self.valid())
        return self.random_call()


# ------------------------------------------------------------------ the fuzzer


def seed_commands() -> list[list[bytes]]:
    """A small dataset that the calls hit: tagged strings, a tagged hash and
    list, a client-written tag set, an index key of the wrong type, version
    tokens (one next to the 64-bit limit, one not a number) and a rule."""
    cmds = [
        "DEBUG SET-ACTIVE-EXPIRE 0",
        "TAG.LINK src: t",
        "SET src:1 x",
        "TAG.SET k0 v0 TAGS 2 t0 t1",
        "TAG.SET k1 v1 EX 100000 TAGS 1 t1",
        "TAG.SET k3 v3 PX 100000000 TAGS 2 t3 ASYNC",
        "HSET h f v",
        "TAG.ADD h t0 t2",
        "RPUSH lst a b",
        "TAG.ADD lst t3",
        "SET plain p",
        "SADD tag:legacy k0 plain gone",
        "SET tag:wrong str",
        "VER.SET s0 vk vv",
        "VER.BUMP s1",
        "VER.SET s1 vk vv1",
        "SET ver:max 9223372036854775806",
        "SET ver:bad notanumber",
    ]
    out = [[w.encode() for w in c.split(" ")] for c in cmds]
    out.insert(4, [b"TAG.SET", b"k2", b"\x00bin\xff", b"TAGS", b"2", b"t2",
                   "\U0001F600".encode()])
    return out


class Fuzzer:
    def __init__(self, server, seed: int):
        self.server = server
        self.seed = seed
        self.gen = Gen(random.Random(seed))
        self.failures: list[str] = []
        self.crashes = 0
        self.stats = dict(calls=0, ok=0, errors=0, nil_set=0, blocked=0, abandoned=0,
                          expiry_skips=0, restarts=0)
        self.log_offset = 0
        self.conn: FuzzConn | None = None
        self.control: FuzzConn | None = None
        self.client_id = None
        self.seeding: list[bytes] = []
        self.history: list[str] = []          # the last calls, with short replies
        self.rules = {b"src:": b"t"}          # TAG.LINK rules this run has created

    # -- connections and server life

    def connect(self) -> None:
        for c in (self.conn, self.control):
            if c is not None:
                try:
                    c.close()
                except OSError:
                    pass
        self.conn = FuzzConn(self.server.port, timeout=REPLY_TIMEOUT)
        self.control = FuzzConn(self.server.port, timeout=REPLY_TIMEOUT)
        self.client_id = self.conn.cmd("CLIENT", "ID")

    def log_since_start(self) -> str:
        """What the server said about its death: the module's panic message
        (its NulError bytes decoded), the crash line, the end of stderr."""
        out = []
        try:
            body = self.server.log.read_bytes()[self.log_offset:].decode(errors="replace")
        except OSError:
            body = ""
        lines = body.splitlines()
        for i, line in enumerate(lines):
            if "panicked at" in line or "internal error" in line:
                out.append(line.split(" # ", 1)[-1])
                if i + 1 < len(lines) and lines[i + 1].strip():
                    out.append(lines[i + 1][:160] + (" ..." if len(lines[i + 1]) > 160 else ""))
                    m = re.search(r"NulError\(\d+, \[([\d, ]*)\]\)", lines[i + 1])
                    if m:
                        raw = bytes(int(x) for x in m.group(1).split(",") if x.strip())
                        text = show_bytes(raw[:120]) + (f" ... ({len(raw)} bytes)" if len(raw) > 120 else "")
                        out.append(f"(the error text it tried to send: {text})")
            elif "crashed by signal" in line or "ASSERTION FAILED" in line:
                out.append(line.split(" # ", 1)[-1])
        if not out:
            out = lines[-15:]
        try:
            err = self.server.stderr.read_text(errors="replace").splitlines()
        except OSError:
            err = []
        if err:
            out.append("stderr: " + err[-1])
        return "\n".join("      " + l for l in out)

    def log_offset_at_start(self) -> None:
        try:
            self.log_offset = self.server.log.stat().st_size
        except OSError:
            self.log_offset = 0

    def restart(self) -> None:
        self.server.kill()
        self.log_offset_at_start()
        self.server.start()
        self.stats["restarts"] += 1
        self.rules = {b"src:": b"t"}
        self.history = []
        self.connect()
        self.reseed()

    def reseed(self) -> bool:
        """Writes the seed data again; False (with a failure recorded) if the
        server is too busy to do it in time."""
        for args in seed_commands():
            self.seeding = args
            started = time.monotonic()
            self.conn.cmd(*args)  # an error reply here is fine; a crash is caught by the caller
            took = time.monotonic() - started
            if took > SLOW_CALL:
                self.fail(-1, args, f"re-seeding the dataset: one plain command took {took:.1f}s "
                                    f"(the server is busy). TAG.INFO: {self.counters()}"
                                    + self.context())
                return False
        return True

    def exited(self, grace: float) -> bool:
        """True if the server process ends within `grace` seconds (a crash
        report can take a moment to write)."""
        proc = self.server.proc
        deadline = time.monotonic() + grace
        while proc is not None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return proc is None or proc.poll() is not None

    def context(self) -> str:
        rules = ", ".join(f"{k!r} -> {v!r}" for k, v in self.rules.items())
        return ("\n    rules created so far (TAG.LINK source-prefix -> tag-prefix): " + rules
                + "\n    the calls before it:\n      " + "\n      ".join(self.history))

    def counters(self) -> str:
        """TAG.INFO as one line, for a failure message (best effort)."""
        try:
            c = FuzzConn(self.server.port, timeout=2)
            try:
                info = c.cmd("TAG.INFO")
            finally:
                c.close()
        except (OSError, ConnectionError, Desync) as e:
            return f"(TAG.INFO unavailable: {e!r})"
        if isinstance(info, list):
            info = dict(zip(info[::2], info[1::2]))
        return repr(info)[:600]

    def fail(self, n: int, args, what: str) -> None:
        self.failures.append(f"seed={self.seed} call#{n} {what}\n    call: {show(args)}")

    # -- one call

    def read_call_reply(self, args):
        """The call's reply; a call that blocks is released with CLIENT UNBLOCK.
        Returns (reply, blocked, abandoned)."""
        try:
            return self.conn.reply(BLOCK_GRACE), False, False
        except socket.timeout:
            pass
        released = self.control.cmd("CLIENT", "UNBLOCK", str(self.client_id), "TIMEOUT")
        if released == 1:
            return self.conn.reply(REPLY_TIMEOUT), True, False
        if args[0].upper() == b"TAG.GETL":
            # Blocked without a timeout callback (not unblockable): drop the connection.
            return None, True, True
        return self.conn.reply(REPLY_TIMEOUT), True, False

    def one(self, n: int, args: list[bytes]) -> bool:
        """Runs one call with its checks; False when fuzzing must stop."""
        nonce = b"nonce-%d-%d" % (self.seed, n)
        batch = [[b"INFO", b"stats"], [b"DEBUG", b"DIGEST"], args, [b"PING"],
                 [b"DEBUG", b"DIGEST"], [b"INFO", b"stats"], [b"ECHO", nonce]]
        step = "sending"
        started = time.monotonic()
        try:
            self.conn.send_many(batch)
            step = "reading INFO/DIGEST before the call"
            info1, d1 = self.conn.reply(), self.conn.reply()
            step = "reading the call's reply"
            reply, blocked, abandoned = self.read_call_reply(args)
            if abandoned:
                self.stats["abandoned"] += 1
                self.connect()
                return True
            step = "reading PING after the call"
            pong = self.conn.reply()
            step = "reading DIGEST/INFO after the call"
            d2, info2, echo = self.conn.reply(), self.conn.reply(), self.conn.reply()
        except (OSError, ConnectionError, Desync) as e:
            return self.connection_lost(n, args, step, e)

        self.stats["calls"] += 1
        took = time.monotonic() - started
        if blocked:
            self.stats["blocked"] += 1
        elif took > SLOW_CALL:
            self.fail(n, args, f"the call and its checks took {took:.1f}s (the server is busy; "
                               f"reply {reply!r}). TAG.INFO: {self.counters()}" + self.context())
            return False
        if pong != b"PONG" or echo != nonce:
            self.fail(n, args, f"reply stream out of step after the call: reply={reply!r} "
                               f"then {pong!r}, {d2!r}, ..., {echo!r}")
            self.connect()
            return len(self.failures) < MAX_FAILURES
        for part, what in ((info1, "INFO"), (d1, "DIGEST"), (d2, "DIGEST"), (info2, "INFO")):
            if isinstance(part, ErrorReply):
                self.fail(n, args, f"{what} around the call failed: {part.raw!r}")
        for err in nested_errors(reply):
            why = bad_error(err.raw)
            if why:
                self.fail(n, args, f"malformed error reply ({why}): -{err.raw!r}")

        name = args[0].upper() if args else b""
        refused = isinstance(reply, ErrorReply)
        self.history = (self.history + [f"#{n} {show(args)[:200]} -> {repr(reply)[:80]}"])[-8:]
        if name == b"TAG.LINK" and reply == b"OK" and len(args) == 3:
            self.rules[args[1]] = args[2]
        if name == b"TAG.UNLINK" and not refused and reply and len(args) == 2:
            self.rules.pop(args[1], None)
        nil_set = name == b"TAG.SET" and reply is None
        if refused:
            self.stats["errors"] += 1
        elif nil_set:
            self.stats["nil_set"] += 1
        else:
            self.stats["ok"] += 1
        if name == b"TAG.GETL" and isinstance(reply, list) and len(reply) == 2 \
                and isinstance(reply[1], bytes):
            self.gen.tokens = (self.gen.tokens + [reply[1]])[-20:]

        if (refused or nil_set) and d1 != d2:
            if blocked:
                pass  # other work ran while it was blocked: not judged
            elif expired_keys(info1) != expired_keys(info2):
                self.stats["expiry_skips"] += 1
            else:
                what = f"error {reply.raw!r}" if refused else "nil (write refused)"
                why = self.background()
                self.fail(n, args, f"refused call changed the dataset: replied {what}; "
                                   f"DEBUG DIGEST {d1!r} -> {d2!r}"
                                   + (f"\n    {why}" + self.context() if why else ""))
                if why:
                    return False  # every later call would fail the same way
        return len(self.failures) < MAX_FAILURES

    def background(self) -> str | None:
        """Whether the dataset also changes with no command at all: then the
        change above is not (only) the call's doing but work the module keeps
        running on its own (reported as such, with the module's counters)."""
        try:
            for _ in range(2):
                a = self.conn.cmd("DEBUG", "DIGEST")
                time.sleep(0.05)
                b = self.conn.cmd("DEBUG", "DIGEST")
                if a != b:
                    return ("and the dataset changes by itself: two DEBUG DIGESTs 50 ms apart "
                            "with no command in between differ (work keeps running in the "
                            f"background). TAG.INFO: {self.counters()}")
        except (OSError, ConnectionError, Desync) as e:
            return f"(checking for background changes failed: {e!r})"
        return None

    def connection_lost(self, n, args, step, exc) -> bool:
        if isinstance(exc, socket.timeout) and not self.exited(0.5) and ping_once(self.server.port):
            self.fail(n, args, f"replies lost: no reply within {REPLY_TIMEOUT:.0f}s while {step}, "
                               f"but the server answers PING on a new connection, so this "
                               f"client's replies were dropped or it is stuck. "
                               f"TAG.INFO: {self.counters()}" + self.context())
            return False
        if isinstance(exc, socket.timeout) and not self.exited(0.5):
            self.fail(n, args, f"the server stopped answering while {step}: no reply within "
                               f"{REPLY_TIMEOUT:.0f}s; the process is still running (hung or "
                               f"busy; a pipeline's replies are sent after all of it ran, so "
                               f"the call is the suspect). TAG.INFO: {self.counters()}"
                               + self.context())
            return False
        if not self.exited(5):
            self.fail(n, args, f"connection lost while {step} ({exc!r}) but the server "
                               f"is still running")
            try:
                self.connect()
                if not self.reseed():
                    return False
            except (OSError, ConnectionError, Desync) as e:
                self.fail(n, args, f"cannot reconnect: {e!r}")
                return False
            return len(self.failures) < MAX_FAILURES
        self.crashes += 1
        code = self.server.proc.returncode if self.server.proc else None
        log = self.log_since_start()
        ctx = self.context()
        try:
            self.restart()
            replay = self.replay(args)
        except Exception as e:  # noqa: BLE001 - a failed restart ends this seed
            self.fail(n, args, f"SERVER DIED (exit status {code}); the connection closed while "
                               f"{step}\n    server log:\n{log}")
            self.fail(n, args, f"cannot restart the server: {e!r}")
            return False
        self.fail(n, args, f"SERVER DIED (exit status {code}); the connection closed while "
                           f"{step} (a pipeline's replies are sent after all of it ran, so "
                           f"the call is the suspect); {replay}\n    server log:\n{log}"
                           + ctx)
        return self.crashes < MAX_CRASHES and len(self.failures) < MAX_FAILURES

    def replay(self, args) -> str:
        """Sends the call alone to the freshly restarted and seeded server."""
        try:
            reply = self.conn.cmd(*args)
        except (OSError, ConnectionError, Desync) as e:
            if isinstance(e, socket.timeout) and not self.exited(0.5):
                self.restart()
                return "replayed alone on a freshly seeded server it got no reply (hang)"
            if not self.exited(5):
                self.connect()
                self.reseed()
                return "replayed alone on a freshly seeded server it lost the connection"
            self.restart()
            return "replayed alone on a freshly seeded server it crashes it again"
        return f"replayed alone on a freshly seeded server it did not crash (reply {reply!r})"

    def run(self, calls: int, seconds: float) -> None:
        self.connect()
        deadline = time.monotonic() + seconds
        try:
            if not self.reseed():
                return
        except (OSError, ConnectionError, Desync) as e:
            self.connection_lost(-1, self.seeding, "seeding the dataset", e)
            return
        for n in range(calls):
            if time.monotonic() > deadline:
                break
            if n and n % RESEED_EVERY == 0:
                try:
                    if not self.reseed():
                        break
                except (OSError, ConnectionError, Desync) as e:
                    if not self.connection_lost(n, self.seeding, "re-seeding", e):
                        break
            args = self.gen.call()
            if not self.one(n, args):
                break


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_commands(servers, seed):
    server = servers.start(module_args=("events-stream", "tagcache:stream"))
    fz = Fuzzer(server, seed)
    started = time.monotonic()
    fz.run(CALLS, SECONDS)
    elapsed = time.monotonic() - started
    summary = ", ".join(f"{k}={v}" for k, v in fz.stats.items())
    print(f"fuzz seed={seed}: {summary} in {elapsed:.1f}s")
    if fz.failures:
        pytest.fail(
            f"fuzz seed={seed} (rerun: TAGCACHE_FUZZ_SEEDS={seed} python3 -m pytest "
            f"tests/test_fuzz.py): {len(fz.failures)} failure(s); {summary}\n\n"
            + "\n\n".join(fz.failures),
            pytrace=False,
        )
    assert fz.stats["calls"] >= min(CALLS, 100), f"only {fz.stats['calls']} calls ran: {summary}"
    assert fz.stats["ok"] > 0 and fz.stats["errors"] > 0, summary
