"""A minimal RESP2 connection for the parts of the benchmark where client
overhead must stay out of the figures: bulk fills, timed single calls (the
purge commands, whose argument lists are encoded before the clock starts) and
the latency probe.
"""

import socket
import time


class RespError(Exception):
    """An error reply (-ERR ..., -WRONGTYPE ...)."""


def _b(x):
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode()
    return str(x).encode()


def encode(*args):
    """Encode one command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        a = _b(a)
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)


def encode_many(commands):
    return b"".join(encode(*c) for c in commands)


class Conn:
    """A blocking connection with a small reply parser."""

    def __init__(self, host, port, timeout=120.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.pos = 0

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # -- reading ---------------------------------------------------------
    def _fill(self):
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("server closed the connection")
        if self.pos:
            self.buf = self.buf[self.pos:] + data
            self.pos = 0
        else:
            self.buf += data

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                line = self.buf[self.pos:i]
                self.pos = i + 2
                return line
            self._fill()

    def _exact(self, n):
        while len(self.buf) - self.pos < n + 2:
            self._fill()
        data = self.buf[self.pos:self.pos + n]
        self.pos += n + 2
        return data

    def read_reply(self):
        """One reply; error replies are returned as RespError instances."""
        line = self._line()
        t = line[:1]
        rest = line[1:]
        if t == b"+":
            return rest
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.read_reply() for _ in range(n)]
        if t == b"-":
            return RespError(rest.decode(errors="replace"))
        raise ConnectionError("protocol error: %r" % line[:80])

    # -- calling ---------------------------------------------------------
    def send(self, data):
        self.sock.sendall(data)

    def call(self, *args):
        self.sock.sendall(encode(*args))
        r = self.read_reply()
        if isinstance(r, RespError):
            raise r
        return r

    def timed(self, payload):
        """Send a pre-encoded command, wait for its reply.

        Returns (reply, seconds), timed from the first byte sent to the reply
        read, so that encoding is not counted.
        """
        t0 = time.perf_counter()
        self.sock.sendall(payload)
        r = self.read_reply()
        return r, time.perf_counter() - t0

    def pipeline(self, batches, deadline=None):
        """Send pre-encoded batches (bytes, number_of_commands) one window at
        a time and read every reply. Returns (replies_read, first_error)."""
        total = 0
        first_error = None
        for payload, count in batches:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("fill did not finish in time")
            self.sock.sendall(payload)
            for _ in range(count):
                r = self.read_reply()
                if first_error is None and isinstance(r, RespError):
                    first_error = r
            total += count
        return total, first_error


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
