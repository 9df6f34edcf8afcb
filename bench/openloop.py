"""Open-loop readers on many connections in one event loop, with a client
pattern written as plain sequential code (a generator per request).

Each client has its own connection and its own schedule: request k is due at
start + phase + k / rate (the phases spread the clients evenly over one
interval). A client sends one request at a time; a request due while the
previous one is still running goes out as soon as that one ends, and every
latency counts from the time the request was *due*, so a client held up (by
a lock, a poll, a blocked WAIT) is charged for every request it should have
sent meanwhile. Once a second (or at the times given) a control connection
sends an invalidation command.

A request is a generator that yields steps and receives their results:

    ("cmd", argv or pre-encoded bytes)  send, receive the reply (RESP2: bytes,
                                        int, None, list; an error reply ends
                                        the request as failed)
    ("load",)                           the database call: counted, takes
                                        `db_seconds`, receives the value
    ("sleep", seconds)                  a timer
    ("spawn", generator)                run a background task (same steps) on a
                                        spare connection; receives None at once
    ("count", name)                     add one to a counter

and returns the value it read (None: it failed). Everything runs in a forked
process pinned to the load CPU. Every loop is bounded: the number of
requests per client is fixed, and the whole run stops at a hard deadline.
"""

import array
import heapq
import multiprocessing as mp
import queue
import select
import socket
import time

import resp
from loadgen import quiet_child

LOAD = ("load",)


def cmd(*argv):
    return ("cmd", argv)


def pre(*argv):
    """A command step encoded once, ahead of time."""
    return ("cmd", resp.encode(*argv))


def sleep(seconds):
    return ("sleep", seconds)


def spawn(gen):
    return ("spawn", gen)


def count(name):
    return ("count", name)


class _Need(Exception):
    pass


def _parse(buf, pos):
    """(reply, next position) of one RESP2 reply at buf[pos:]; _Need if
    incomplete."""
    i = buf.find(b"\r\n", pos)
    if i < 0:
        raise _Need
    t = buf[pos:pos + 1]
    if t == b"$":
        n = int(buf[pos + 1:i])
        if n < 0:
            return None, i + 2
        end = i + 2 + n
        if len(buf) < end + 2:
            raise _Need
        return bytes(buf[i + 2:end]), end + 2
    if t == b"*":
        n = int(buf[pos + 1:i])
        if n < 0:
            return None, i + 2
        out = []
        p = i + 2
        for _ in range(n):
            v, p = _parse(buf, p)
            out.append(v)
        return out, p
    if t == b":":
        return int(buf[pos + 1:i]), i + 2
    if t == b"-":
        return resp.RespError(bytes(buf[pos + 1:i]).decode(errors="replace")), i + 2
    if t == b"+":
        return bytes(buf[pos + 1:i]), i + 2
    raise ValueError("unexpected reply type %r" % bytes(buf[pos:pos + 20]))


class _Conn:
    __slots__ = ("sock", "fd", "buf", "gen", "role", "idx", "sched", "waiting")

    def __init__(self, port, role, idx):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fd = self.sock.fileno()
        self.buf = bytearray()
        self.gen = None
        self.role = role      # "client", "helper", "control"
        self.idx = idx
        self.sched = 0.0
        self.waiting = False


def _loop(port, make_request, clients, rate, duration, event_offsets, event_cmd, db_seconds, value,
          helpers, grace):
    """The event loop itself (runs in the child). Returns the raw results."""
    interval = 1.0 / rate
    per_client = int(duration * rate)
    conns = [_Conn(port, "client", i) for i in range(clients)]
    spare = [_Conn(port, "helper", i) for i in range(helpers)]
    control = _Conn(port, "control", 0)
    by_fd = {c.fd: c for c in conns + spare + [control]}
    idle_helpers = list(spare)
    backlog = []                     # background tasks waiting for a spare connection
    counters = {"db": 0, "failed": 0, "errors": 0, "backlog_max": 0}
    first_error = []
    sched_a, lat_a = array.array("d"), array.array("d")
    next_k = [0] * clients
    events = []                      # [offset, sent at, reply, replied at]
    heap = []
    seq = [0]

    def push(t, kind, obj, val=None):
        seq[0] += 1
        heapq.heappush(heap, (t, seq[0], kind, obj, val))

    start = time.monotonic() + 0.2
    hard = start + duration + grace
    for i, c in enumerate(conns):
        push(start + interval * i / clients, "start", c)
    enc_event = resp.encode(*event_cmd) if event_cmd else None
    for j, off in enumerate(event_offsets):
        events.append([off, None, None, None])
        push(start + off, "event", j)
    busy = [0]                       # requests and background tasks in progress

    def finish(c, result):
        now = time.monotonic()
        if c.role == "client":
            busy[0] -= 1
            if result is None:
                counters["failed"] += 1
            else:
                sched_a.append(c.sched - start)
                lat_a.append(now - c.sched)
            k = next_k[c.idx]
            if k < per_client:
                t = start + interval * c.idx / clients + k * interval
                if t <= now:
                    begin(c, t)
                else:
                    push(t, "start", c)
        else:
            busy[0] -= 1
            c.gen = None
            if backlog:
                busy[0] += 1
                c.gen = backlog.pop(0)
                step(c, None)
            else:
                idle_helpers.append(c)

    def begin(c, t):
        next_k[c.idx] += 1
        busy[0] += 1
        c.sched = t
        c.gen = make_request()
        step(c, None)

    def step(c, val):
        """Advance c's generator until it waits for a reply or a timer."""
        for _ in range(10000):
            try:
                op = c.gen.send(val)
            except StopIteration as e:
                finish(c, e.value)
                return
            kind = op[0]
            if kind == "cmd":
                payload = op[1] if isinstance(op[1], bytes) else resp.encode(*op[1])
                c.waiting = True
                c.sock.sendall(payload)
                return
            if kind == "load":
                counters["db"] += 1
                push(time.monotonic() + db_seconds, "resume", c, value)
                return
            if kind == "sleep":
                push(time.monotonic() + op[1], "resume", c, None)
                return
            if kind == "spawn":
                if idle_helpers:
                    h = idle_helpers.pop()
                    busy[0] += 1
                    h.gen = op[1]
                    step(h, None)
                else:
                    backlog.append(op[1])
                    counters["backlog_max"] = max(counters["backlog_max"], len(backlog))
                val = None
                continue
            if kind == "count":
                counters[op[1]] = counters.get(op[1], 0) + 1
                val = None
                continue
            raise ValueError("unknown step %r" % (op,))
        raise RuntimeError("a request took 10,000 steps without waiting")

    while True:
        now = time.monotonic()
        if now >= hard:
            break
        if (not heap and busy[0] == 0 and not backlog
                and all(k >= per_client for k in next_k) and not control.waiting):
            break
        timeout = min(0.05, max(0.0, heap[0][0] - now)) if heap else 0.05
        # select(), not epoll: its timeout has microseconds (epoll's is
        # rounded up to a millisecond, which every latency would carry);
        # only the connections with a command out are watched.
        ready, _, _ = select.select([c.fd for c in by_fd.values() if c.waiting], [], [], timeout)
        for fd in ready:
            c = by_fd[fd]
            data = c.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("the server closed a connection")
            c.buf += data
            pos = 0
            while pos < len(c.buf):
                try:
                    reply, pos = _parse(c.buf, pos)
                except _Need:
                    break
                c.waiting = False
                if c.role == "control":
                    events[c.idx][2] = reply
                    events[c.idx][3] = time.monotonic() - start
                    if isinstance(reply, resp.RespError):
                        counters["errors"] += 1
                        first_error[:] = first_error or ["%s: %s" % (" ".join(map(str, event_cmd)), reply)]
                    continue
                if isinstance(reply, resp.RespError):
                    counters["errors"] += 1
                    first_error[:] = first_error or [str(reply)[:150]]
                    finish(c, None)
                    continue
                step(c, reply)
            del c.buf[:pos]
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            t, _, kind, obj, val = heapq.heappop(heap)
            if kind == "start":
                begin(obj, t)
            elif kind == "resume":
                step(obj, val)
            elif kind == "event":
                events[obj][1] = time.monotonic() - start
                if enc_event is not None:
                    control.idx = obj
                    control.waiting = True
                    control.sock.sendall(enc_event)
    unfinished = busy[0] + len(backlog) + sum(per_client - k for k in next_k)
    for c in by_fd.values():
        try:
            c.sock.close()
        except OSError:
            pass
    counters["unfinished"] = unfinished
    return {"sched": sched_a.tobytes(), "lat": lat_a.tobytes(), "counters": counters,
            "events": events, "first_error": first_error[0] if first_error else None,
            "elapsed": time.monotonic() - start}


def _child(args, cpu, out_q):
    quiet_child(cpu, no_gc=True)
    try:
        out_q.put(_loop(*args))
    except Exception as e:  # noqa: BLE001 - reported to the parent
        out_q.put({"crash": "%s: %s" % (type(e).__name__, e)})


def run(port, make_request, clients, rate, duration, event_offsets=(), event_cmd=None, db_seconds=0.05,
        value=b"v", helpers=4, grace=5.0, cpu=None):
    """Run the readers for `duration` s against the server on `port`.

    make_request() returns a new request generator. event_cmd (argv) is sent
    on a control connection at each of event_offsets (seconds after the
    start); with event_cmd None the offsets are only recorded (a run without
    invalidations, read at the same moments).

    Returns dict: sched (request due times, s from the start), lat (s),
    counters (db, failed, errors, unfinished and the requests' own), events
    ([offset, sent, reply, replied]), first_error, elapsed.
    """
    ctx = mp.get_context("fork")
    out_q = ctx.Queue()
    args = (port, make_request, clients, rate, duration, list(event_offsets), event_cmd, db_seconds,
            value, helpers, grace)
    p = ctx.Process(target=_child, args=(args, cpu, out_q), daemon=True)
    p.start()
    try:
        try:
            out = out_q.get(timeout=duration + grace + 60)
        except queue.Empty:
            raise RuntimeError("the reader process sent no result in %.0f s" % (duration + grace + 60))
    finally:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)
    if "crash" in out:
        raise RuntimeError(out["crash"])
    s, lat = array.array("d"), array.array("d")
    s.frombytes(out["sched"])
    lat.frombytes(out["lat"])
    out["sched"], out["lat"] = s, lat
    return out
