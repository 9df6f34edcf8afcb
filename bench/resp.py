"""RESP for the benchmark: commands encoded before the clock starts, and a
connection for bulk fills, timed single calls and the latency probe.

The connection and its reply parser are the test harness's
(tests/harness.py RawConn); this adds what only the benchmark needs:
pre-encoded payloads sent as they are, pipelined windows, and timing.
"""

import socket
import time

from shared import harness

RespError = harness.RespError


def _b(x):
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode()
    return str(x).encode()


def encode(*args):
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        a = _b(a)
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)


def encode_many(commands):
    return b"".join(encode(*c) for c in commands)


def batched(commands_iter, per_batch=1000):
    """Group an iterable of encoded commands into (bytes, count) windows."""
    chunk = []
    for c in commands_iter:
        chunk.append(c)
        if len(chunk) >= per_batch:
            yield b"".join(chunk), len(chunk)
            chunk = []
    if chunk:
        yield b"".join(chunk), len(chunk)


class Conn(harness.RawConn):
    """harness.RawConn (loopback) with Nagle off, plus pre-encoded sends.

    `read()` returns an error reply as a RespError instance (not raised);
    `command(*args)` raises it.
    """

    def __init__(self, port, timeout=120.0):
        super().__init__(port, timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_raw(self, payload):
        self.sock.sendall(payload)

    def timed(self, payload):
        """Send a pre-encoded command and wait for its reply. Returns
        (reply, seconds), timed from the first byte sent to the reply read."""
        t0 = time.perf_counter()
        self.sock.sendall(payload)
        r = self.read()
        return r, time.perf_counter() - t0

    def pipeline(self, batches, deadline=None):
        """Send pre-encoded (bytes, count) windows one at a time and read
        every reply. Returns (replies_read, first_error_reply)."""
        total = 0
        first_error = None
        for payload, count in batches:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("pipeline did not finish in time")
            self.sock.sendall(payload)
            for _ in range(count):
                r = self.read()
                if first_error is None and isinstance(r, RespError):
                    first_error = r
            total += count
        return total, first_error
