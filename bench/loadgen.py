"""A lean load generator for what redis-benchmark cannot express: a pipeline
of command groups (the client's tagged write: SET + SADD + EXPIRE per tag),
and a read that needs the reply of a first read (GET ver:<scope>, then
GET v<N>:<key>). It also runs the module command and plain commands, so that
ratios taken from it compare like with like.

One process, one epoll loop over all the connections, commands encoded ahead
of time, no client library: the client's cost per operation stays low, so
what differs between two kinds is mostly the server's work and the number of
round trips. The run has a fixed window after a warm-up; operations that
complete inside the window are counted. Every loop is bounded in time.
"""

import gc
import multiprocessing as mp
import os
import random
import select
import socket
import time

import resp

VALUE = b"v" * 100

# kind -> (pipelined, replies per unit of work and key)
KINDS = {
    "set": (True, 1),           # SET key v
    "tag_pipeline": (True, 5),  # SET key v EX 3600, then per tag SADD tag:<t> key, EXPIRE tag:<t> 3900
    "tagset_module": (True, 1),  # TAG.SET key v EX 3600 TAGS 2 t1 t2
    # The shapes where keys are re-tagged as they are rewritten: two tags,
    # each a fresh random number per write ("fresh"), or one fresh random
    # tag and `all` on every key ("all"); EX 600.
    "tag_pipeline_fresh": (True, 5),
    "tagset_fresh": (True, 1),
    "tag_pipeline_all": (True, 5),
    "tagset_all": (True, 1),
    "get": (False, 1),          # GET v5:key
    "vget_2rt": (False, 2),     # GET ver:s, then GET v<N>:key with the N just read
    "vget_module": (False, 1),  # VER.GET s key
}


SHAPES = ("tag_pipeline_fresh", "tagset_fresh", "tag_pipeline_all", "tagset_all")


def key_name(i):
    # The same names redis-benchmark makes from key:__rand_int__ with -r.
    return "key:%012d" % i


def tag_write_group(k):
    """The client's tagged write (tags t1, t2), as services pipeline it."""
    return resp.encode_many([
        (b"SET", k, VALUE, b"EX", b"3600"),
        (b"SADD", b"tag:t1", k), (b"EXPIRE", b"tag:t1", b"3900"),
        (b"SADD", b"tag:t2", k), (b"EXPIRE", b"tag:t2", b"3900")])


def _shape_tags(kind, rnd, keyspace):
    t = b"t:%d" % rnd.randrange(keyspace)
    return (t, b"u:%d" % rnd.randrange(keyspace)) if kind.endswith("fresh") else (t, b"all")


def _shape_requests(kind, keys, rnd, keyspace):
    """One batch of a re-tagging shape: each key with tags drawn now."""
    out = []
    for k in keys:
        a, b = _shape_tags(kind, rnd, keyspace)
        if kind.startswith("tagset"):
            out.append(resp.encode(b"TAG.SET", k, VALUE, b"EX", b"600", b"TAGS", b"2", a, b))
        else:
            out.append(resp.encode_many([
                (b"SET", k, VALUE, b"EX", b"600"),
                (b"SADD", b"tag:" + a, k), (b"EXPIRE", b"tag:" + a, b"900"),
                (b"SADD", b"tag:" + b, k), (b"EXPIRE", b"tag:" + b, b"900")]))
    return b"".join(out)


def _requests(kind, key, pipeline_keys):
    """The bytes one connection sends for one unit of work."""
    if kind == "set":
        return b"".join(resp.encode(b"SET", k, VALUE) for k in pipeline_keys)
    if kind == "tag_pipeline":
        return b"".join(tag_write_group(k) for k in pipeline_keys)
    if kind == "tagset_module":
        return b"".join(resp.encode(b"TAG.SET", k, VALUE, b"EX", b"3600", b"TAGS", b"2", b"t1", b"t2")
                        for k in pipeline_keys)
    if kind == "get":
        return resp.encode(b"GET", b"v5:" + key)
    if kind == "vget_module":
        return resp.encode(b"VER.GET", b"s", key)
    if kind == "vget_2rt":
        return resp.encode(b"GET", b"ver:s")
    raise ValueError(kind)


_NEED = object()


def _parse_one(buf):
    """(reply, consumed) for one non-array reply at the start of buf, or _NEED."""
    i = buf.find(b"\r\n")
    if i < 0:
        return _NEED
    t = buf[:1]
    if t == b"$":
        n = int(buf[1:i])
        if n < 0:
            return None, i + 2
        end = i + 2 + n + 2
        if len(buf) < end:
            return _NEED
        return bytes(buf[i + 2:i + 2 + n]), end
    if t == b"-":
        return resp.RespError(bytes(buf[1:i]).decode(errors="replace")), i + 2
    return bytes(buf[1:i]), i + 2


class _Conn:
    __slots__ = ("sock", "buf", "stage", "reqs", "ri", "keys")

    def __init__(self, port, keys):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.stage = 0
        self.keys = keys
        self.reqs = None
        self.ri = 0


def quiet_child(cpu, no_gc=False):
    """A load or probe process: the objects inherited from the parent left
    out of collections (`no_gc`: no collections at all, which would stall
    the process, not the server), pinned to `cpu` where the machine allows."""
    if no_gc:
        gc.disable()
    gc.freeze()
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass


def _evloop_main(port, kind, conns, pipeline, keyspace, seed, cpu, ready_q, go_ev, times_arr, result_q):
    quiet_child(cpu)
    rnd = random.Random(seed)
    pipelined, per_key = KINDS[kind]
    lines_per_unit = pipeline * per_key
    ep = select.epoll()
    cs = {}
    err = None
    try:
        for _ in range(conns):
            keys = [key_name(rnd.randrange(keyspace)).encode() for _ in range(1024)]
            c = _Conn(port, keys)
            if kind in SHAPES:
                # Every key twice per cycle, with tags drawn each time: a
                # key is re-tagged whenever it is written.
                n = min(64, len(keys) // pipeline)
                c.reqs = [_shape_requests(kind, keys[j * pipeline:(j + 1) * pipeline], rnd, keyspace)
                          for _ in range(2) for j in range(n)]
            elif pipelined:
                # 64 different pre-encoded batches per connection, cycled.
                c.reqs = [_requests(kind, None, keys[j * pipeline:(j + 1) * pipeline])
                          for j in range(min(64, len(keys) // pipeline))]
            else:
                c.reqs = [_requests(kind, k, None) for k in keys]
            cs[c.sock.fileno()] = c
            ep.register(c.sock.fileno(), select.EPOLLIN)
    except OSError as e:
        err = "connect: %s" % e
    ready_q.put(os.getpid())
    if not go_ev.wait(60):
        result_q.put((0, 0, ["start signal never came"]))
        return
    t_start, t_warm, t_end = times_arr[0], times_arr[1], times_arr[2]
    count = misses = 0
    if err is None:
        while time.monotonic() < t_start:
            time.sleep(0.001)
        for c in cs.values():
            c.sock.sendall(c.reqs[0])
        try:
            while time.monotonic() < t_end:
                for fd, _ in ep.poll(0.05):
                    c = cs[fd]
                    data = c.sock.recv(1 << 16)
                    if not data:
                        raise ConnectionError("server closed the connection")
                    c.buf += data
                    if pipelined:
                        # Every reply of these kinds is one line (+OK, :1, $-1).
                        if c.buf.count(b"\r\n") < lines_per_unit:
                            continue
                        if c.buf[:1] == b"-" or b"\r\n-" in c.buf:
                            j = c.buf.find(b"-")
                            raise resp.RespError(bytes(c.buf[j + 1:c.buf.find(b"\r\n", j)]).decode())
                        del c.buf[:]
                        done = time.monotonic()
                        if t_warm <= done <= t_end:
                            count += pipeline
                        c.ri = (c.ri + 1) % len(c.reqs)
                        c.sock.sendall(c.reqs[c.ri])
                        continue
                    p = _parse_one(c.buf)
                    if p is _NEED:
                        continue
                    reply, used = p
                    del c.buf[:used]
                    if isinstance(reply, resp.RespError):
                        raise reply
                    if kind == "vget_2rt" and c.stage == 0:
                        if reply is None:
                            misses += 1
                        else:
                            c.stage = 1
                            c.sock.sendall(resp.encode(b"GET", b"v" + reply + b":" + c.keys[c.ri]))
                            continue
                    c.stage = 0
                    if reply is None:
                        misses += 1
                    done = time.monotonic()
                    if t_warm <= done <= t_end:
                        count += 1
                    c.ri = (c.ri + 1) % len(c.reqs)
                    c.sock.sendall(c.reqs[c.ri])
        except resp.RespError as e:
            err = "ERR reply: %s" % e
        except (OSError, ConnectionError, ValueError) as e:
            err = "%s: %s" % (type(e).__name__, e)
    for c in cs.values():
        try:
            c.sock.close()
        except OSError:
            pass
    ep.close()
    result_q.put((count, misses, [err] if err else []))


def run(port, kind, conns=50, pipeline=1, keyspace=100000, duration=3.0, warmup=0.5, cpu=None,
        on_window=None):
    """Run one load. Returns dict(ops_per_sec, ops, misses, errors, seconds).

    on_window("start" | "end") is called by this process at the start and at
    the end of the measurement window (to sample server counters).
    """
    if kind not in KINDS:
        raise ValueError(kind)
    ctx = mp.get_context("fork")
    ready_q, result_q = ctx.Queue(), ctx.Queue()
    go_ev = ctx.Event()
    times_arr = ctx.Array("d", 3)
    p = ctx.Process(target=_evloop_main,
                    args=(port, kind, conns, pipeline, keyspace, 1, cpu, ready_q, go_ev, times_arr,
                          result_q), daemon=True)
    p.start()
    try:
        ready_q.get(timeout=60)
        t_start = time.monotonic() + 0.05
        t_warm = t_start + warmup
        t_end = t_warm + duration
        times_arr[0], times_arr[1], times_arr[2] = t_start, t_warm, t_end
        go_ev.set()
        time.sleep(max(0.0, t_warm - time.monotonic()))
        if on_window:
            on_window("start")
        time.sleep(max(0.0, t_end - time.monotonic()))
        if on_window:
            on_window("end")
        total, misses, errors = result_q.get(timeout=90)
    finally:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)
    return {"ops_per_sec": total / duration if duration > 0 else 0.0, "ops": total,
            "misses": misses, "errors": sorted(set(errors)), "seconds": duration}
