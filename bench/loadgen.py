"""Python load generator: redis-py clients in several processes.

Used where redis-benchmark cannot express the client pattern (a pipeline of
command groups, a read that needs the reply of a first read) and, with the same
code, for the module command and the plain command, so that ratios taken from
it compare like with like.

Every worker runs for a fixed window; operations that complete inside the
measurement window (after a warm-up) are counted. All loops are bounded in time.
"""

import gc
import multiprocessing as mp
import os
import random
import select
import socket
import threading
import time

import redis

import resp
from baseline import patterns

VALUE = b"v" * 100


def key_name(i):
    # The same names redis-benchmark makes from key:__rand_int__ with -r.
    return "key:%012d" % i


# -- one batch of work per kind -----------------------------------------------
# Each returns the number of logical operations it completed.

def _op_set(r, keys, pipeline, st):
    p = r.pipeline(transaction=False)
    for _ in range(pipeline):
        p.set(st.next(), VALUE)
    p.execute()
    return pipeline


def _op_tag_pipeline(r, keys, pipeline, st):
    # One group = SET key v EX 3600 + per tag SADD tag:<t> key, EXPIRE tag:<t> 3900
    p = r.pipeline(transaction=False)
    for _ in range(pipeline):
        patterns.tag_write_pipelined(p, st.next(), VALUE, 3600, ("t1", "t2"))
    p.execute()
    return pipeline


def _op_tagset_module(r, keys, pipeline, st):
    p = r.pipeline(transaction=False)
    for _ in range(pipeline):
        p.execute_command("TAG.SET", st.next(), VALUE, "EX", 3600, "TAGS", 2, "t1", "t2")
    p.execute()
    return pipeline


def _op_tagset_lua(r, keys, pipeline, st):
    p = r.pipeline(transaction=False)
    sha = st.params["sha"]
    for _ in range(pipeline):
        p.evalsha(sha, 3, st.next(), "tag:t1", "tag:t2", VALUE, 3600)
    p.execute()
    return pipeline


def _op_get(r, keys, pipeline, st):
    v = r.get("v5:" + st.next())
    if v is None:
        st.misses += 1
    return 1


def _op_vget_2rt(r, keys, pipeline, st):
    v = patterns.versioned_get(r, "s", st.next())
    if v is None:
        st.misses += 1
    return 1


def _op_vget_module(r, keys, pipeline, st):
    v = r.execute_command("VER.GET", "s", st.next())
    if v is None:
        st.misses += 1
    return 1


KINDS = {
    "set": _op_set,
    "tag_pipeline": _op_tag_pipeline,
    "tagset_module": _op_tagset_module,
    "tagset_lua": _op_tagset_lua,
    "get": _op_get,
    "vget_2rt": _op_vget_2rt,
    "vget_module": _op_vget_module,
}

# Kinds run by the raw-socket event loop (see _evloop_main).
RAW_KINDS = ("raw_set", "raw_tag_pipeline", "raw_tagset_module",
             "raw_get", "raw_vget_2rt", "raw_vget_module")


class _State:
    def __init__(self, seed, keyspace, params):
        rnd = random.Random(seed)
        self.order = [key_name(rnd.randrange(keyspace)) for _ in range(8192)]
        self.i = 0
        self.misses = 0
        self.params = params

    def next(self):
        self.i = (self.i + 1) & 8191
        return self.order[self.i]


def _thread_main(port, kind, pipeline, keyspace, params, seed, ready, go, times, out):
    fn = KINDS[kind]
    st = _State(seed, keyspace, params)
    keys = None
    count = 0
    err = None
    try:
        r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
        r.ping()
    except Exception as e:  # noqa: BLE001 - reported to the caller
        out.append((0, 0, "connect: %s" % e))
        ready.release()
        return
    ready.release()
    if not go.wait(60):
        out.append((0, 0, "start signal never came"))
        return
    t_start, t_warm, t_end = times
    while time.monotonic() < t_start:
        time.sleep(0.001)
    try:
        while True:
            if time.monotonic() >= t_end:
                break
            n = fn(r, keys, pipeline, st)
            done = time.monotonic()
            if t_warm <= done <= t_end:
                count += n
    except redis.exceptions.ResponseError as e:
        err = "ERR reply: %s" % e
    except Exception as e:  # noqa: BLE001
        err = "%s: %s" % (type(e).__name__, e)
    finally:
        try:
            r.close()
        except Exception:  # noqa: BLE001
            pass
    out.append((count, st.misses, err))


def _process_main(port, kind, nthreads, pipeline, keyspace, params, seed, cpu,
                  ready_q, go_ev, times_arr, result_q):
    gc.freeze()  # leave the objects inherited from the parent out of collections
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
    ready = threading.Semaphore(0)
    tgo = threading.Event()
    out = []
    times = []
    threads = [
        threading.Thread(target=_thread_main,
                         args=(port, kind, pipeline, keyspace, params, seed * 1000 + t,
                               ready, tgo, times, out), daemon=True)
        for t in range(nthreads)
    ]
    for t in threads:
        t.start()
    for _ in threads:
        ready.acquire(timeout=30)
    ready_q.put(os.getpid())
    if not go_ev.wait(60):
        result_q.put((0, 0, ["process: start signal never came"]))
        return
    times.extend([times_arr[0], times_arr[1], times_arr[2]])
    tgo.set()
    for t in threads:
        t.join(timeout=times_arr[2] - time.monotonic() + 60)
    total = sum(c for c, _, _ in out)
    misses = sum(m for _, m, _ in out)
    errors = sorted({e for _, _, e in out if e})
    result_q.put((total, misses, errors))


# -- raw sockets, one event loop ---------------------------------------------
# A lean client: pre-encoded RESP, one process, one epoll loop over all the
# connections, no client library. It keeps the client cost per operation low,
# so that what differs between two kinds is mostly the server's work and the
# number of round trips.

def _raw_requests(kind, key, pipeline_keys):
    """The bytes one connection sends for one unit of work."""
    if kind == "raw_set":
        return b"".join(resp.encode(b"SET", k, VALUE) for k in pipeline_keys)
    if kind == "raw_tag_pipeline":
        return b"".join(resp.encode_many([
            (b"SET", k, VALUE, b"EX", b"3600"),
            (b"SADD", b"tag:t1", k), (b"EXPIRE", b"tag:t1", b"3900"),
            (b"SADD", b"tag:t2", k), (b"EXPIRE", b"tag:t2", b"3900")]) for k in pipeline_keys)
    if kind == "raw_tagset_module":
        return b"".join(resp.encode(b"TAG.SET", k, VALUE, b"EX", b"3600", b"TAGS", b"2", b"t1", b"t2")
                        for k in pipeline_keys)
    if kind == "raw_get":
        return resp.encode(b"GET", b"v5:" + key)
    if kind == "raw_vget_module":
        return resp.encode(b"VER.GET", b"s", key)
    if kind == "raw_vget_2rt":
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


class _RawConn:
    __slots__ = ("sock", "buf", "stage", "reqs", "ri", "key", "keys", "ki", "lines")

    def __init__(self, port, keys):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.stage = 0
        self.keys = keys
        self.ki = 0
        self.reqs = None
        self.ri = 0


def _evloop_main(port, kind, conns, pipeline, keyspace, seed, cpu,
                 ready_q, go_ev, times_arr, result_q):
    gc.freeze()  # leave the objects inherited from the parent out of collections
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
    rnd = random.Random(seed)
    pipelined = kind in ("raw_set", "raw_tag_pipeline", "raw_tagset_module")
    lines_per_unit = pipeline * (5 if kind == "raw_tag_pipeline" else 1)
    ep = select.epoll()
    cs = {}
    err = None
    try:
        for _ in range(conns):
            keys = [key_name(rnd.randrange(keyspace)).encode() for _ in range(1024)]
            c = _RawConn(port, keys)
            if pipelined:
                # 64 different pre-encoded batches per connection, cycled.
                c.reqs = [_raw_requests(kind, None, keys[j * pipeline:(j + 1) * pipeline])
                          for j in range(min(64, len(keys) // pipeline))]
            else:
                c.reqs = [_raw_requests(kind, k, None) for k in keys]
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
            while True:
                now = time.monotonic()
                if now >= t_end:
                    break
                for fd, _ in ep.poll(0.05):
                    c = cs[fd]
                    data = c.sock.recv(1 << 16)
                    if not data:
                        raise ConnectionError("server closed the connection")
                    c.buf += data
                    if pipelined:
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
                    if kind == "raw_vget_2rt" and c.stage == 0:
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


def run(port, kind, conns=50, procs=5, pipeline=1, keyspace=100000, duration=3.0,
        warmup=0.5, cpu=None, params=None, on_window=None):
    """Run one load. Returns dict(ops_per_sec, ops, misses, errors, seconds).

    on_window(start_or_end) is called by this process at the start and at the
    end of the measurement window (used to sample server counters).
    """
    if kind not in KINDS and kind not in RAW_KINDS:
        raise ValueError(kind)
    raw = kind in RAW_KINDS
    procs = 1 if raw else max(1, min(procs, conns))
    ctx = mp.get_context("fork")
    ready_q = ctx.Queue()
    result_q = ctx.Queue()
    go_ev = ctx.Event()
    times_arr = ctx.Array("d", 3)
    per = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
    workers = []
    for i, n in enumerate(per):
        if raw:
            p = ctx.Process(target=_evloop_main,
                            args=(port, kind, n, pipeline, keyspace, i + 1, cpu,
                                  ready_q, go_ev, times_arr, result_q), daemon=True)
        else:
            p = ctx.Process(target=_process_main,
                            args=(port, kind, n, pipeline, keyspace, params or {}, i + 1, cpu,
                                  ready_q, go_ev, times_arr, result_q), daemon=True)
        p.start()
        workers.append(p)
    errors = []
    try:
        for _ in workers:
            ready_q.get(timeout=60)
        now = time.monotonic()
        t_start = now + 0.05
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
        total = misses = 0
        for _ in workers:
            c, m, e = result_q.get(timeout=90)
            total += c
            misses += m
            errors.extend(e)
    finally:
        for p in workers:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    return {
        "ops_per_sec": total / duration if duration > 0 else 0.0,
        "ops": total,
        "misses": misses,
        "errors": sorted(set(errors)),
        "seconds": duration,
    }
