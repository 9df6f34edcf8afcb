"""An in-process L1 cache in front of Redis, kept correct by the server.

Reads go to a local dict first; on a miss they go to Redis and the value is
kept locally. Redis's server-assisted client-side caching (CLIENT TRACKING)
remembers which keys this process has read and tells it when one of them
changes: a write, a DEL, an expiry, an eviction, or a TAG.PURGE / TAG.LINK
rule of the tagcache module deleting it. The invalidation arrives on a second
connection (CLIENT TRACKING ON REDIRECT <id>, subscribed to
`__redis__:invalidate`), so it works with RESP2 and any redis-py connection
pool, and a background thread drops the named keys from the dict.

Correctness rules this example follows:

* Every connection that reads for the cache has tracking on, redirected to
  the listener; this is done in the connection's connect hook, so a
  reconnected connection is tracked again.
* A value read from Redis is stored locally only if no invalidation for the
  key arrived while the read was in flight (a "pending" marker per key),
  otherwise a value superseded during the read could be kept.
* If the listener's connection is lost, invalidations may have been missed:
  the dict is cleared and the cache bypasses itself until the listener is
  back and every data connection has been re-pointed to it.
* `sync()` waits until every invalidation Redis sent before the call has
  been applied: it writes a private sentinel key it has read, and waits for
  that key's own invalidation, which Redis sends on the same connection
  after all earlier ones.

Usage:

    cache = L1Cache(host="127.0.0.1", port=6379)
    cache.get("product:42")          # from Redis, then kept locally
    cache.get("product:42")          # from the dict
    # another process: TAG.PURGE product:42  -> dropped here within ms
    cache.close()

Run `python3 examples/l1_cache.py --port 6379` for a short demonstration
against a server with the tagcache module loaded.
"""

from __future__ import annotations

import argparse
import collections
import threading
import time
import uuid

import redis

INVALIDATE_CHANNEL = b"__redis__:invalidate"


class L1Cache:
    """A local key -> value dict that Redis invalidates.

    Thread-safe. Only string values are cached (GET); misses are not cached.
    `max_entries` bounds the dict (least recently used entries go first).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, db: int = 0,
                 max_entries: int = 100_000, **connection_kwargs):
        # RESP2 on every connection: the invalidations arrive as ordinary
        # pub/sub messages on the listener, whatever redis-py's default.
        self._conn_kwargs = dict(host=host, port=port, db=db, protocol=2, **connection_kwargs)
        self._max = max_entries
        self._lock = threading.Lock()
        self._data: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._pending: dict[bytes, object] = {}
        self._sync_waiters: dict[bytes, threading.Event] = {}
        self._healthy = False
        self._closing = threading.Event()
        self._redirect_id: int | None = None
        self.stats = collections.Counter()

        self._listener = self._open_listener()
        self._redis = redis.Redis(redis_connect_func=self._on_data_connect,
                                  **self._conn_kwargs)
        self._redis.ping()
        self._healthy = True
        self._thread = threading.Thread(target=self._listen, name="l1-invalidations",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ reads

    def get(self, key) -> bytes | None:
        """The value of `key`: from the dict if present, else from Redis."""
        key = _as_bytes(key)
        with self._lock:
            if self._healthy and key in self._data:
                self._data.move_to_end(key)
                self.stats["hits"] += 1
                return self._data[key]
            marker = object()
            if self._healthy:
                self._pending[key] = marker
        self.stats["misses"] += 1
        value = self._redis.get(key)  # the read registers the key for tracking
        with self._lock:
            if self._pending.get(key) is marker:
                del self._pending[key]
                if value is not None and self._healthy:
                    self._data[key] = value
                    self._data.move_to_end(key)
                    while len(self._data) > self._max:
                        self._data.popitem(last=False)
        return value

    def cached(self, key) -> bytes | None:
        """What the dict holds for `key` now (no Redis call)."""
        with self._lock:
            return self._data.get(_as_bytes(key))

    def snapshot(self) -> dict[bytes, bytes]:
        with self._lock:
            return dict(self._data)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    # ------------------------------------------------------------ sync

    def sync(self, timeout: float = 5.0) -> None:
        """Returns once every invalidation sent before the call is applied.

        Raises TimeoutError if the server does not confirm within `timeout`.
        """
        sentinel = b"__l1cache:sync:" + uuid.uuid4().hex.encode()
        done = threading.Event()
        with self._lock:
            self._sync_waiters[sentinel] = done
        try:
            self._redis.get(sentinel)  # tracked from now on
            self._redis.set(sentinel, b"1", px=60_000)  # invalidates it
            if not done.wait(timeout):
                raise TimeoutError(f"no invalidation confirmed within {timeout}s")
        finally:
            with self._lock:
                self._sync_waiters.pop(sentinel, None)
            self._redis.delete(sentinel)

    # ------------------------------------------------------------ plumbing

    def _open_listener(self) -> redis.Connection:
        conn = redis.Connection(**self._conn_kwargs)
        conn.connect()
        conn.send_command("CLIENT", "ID")
        self._redirect_id = int(conn.read_response())
        conn.send_command("SUBSCRIBE", INVALIDATE_CHANNEL)
        reply = conn.read_response()
        if not (isinstance(reply, list) and reply[0] == b"subscribe"):
            raise redis.ConnectionError(f"unexpected SUBSCRIBE reply {reply!r}")
        return conn

    def _on_data_connect(self, conn: redis.Connection) -> None:
        """Runs on every (re)connection of a data connection."""
        conn.on_connect()
        conn.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", self._redirect_id)
        if conn.read_response() != b"OK":
            raise redis.ConnectionError("CLIENT TRACKING refused")

    def _apply(self, keys) -> None:
        with self._lock:
            if keys is None:  # FLUSHALL / FLUSHDB: everything
                self._data.clear()
                self._pending.clear()
                self.stats["flushes"] += 1
                for ev in self._sync_waiters.values():
                    ev.set()
                return
            for k in keys:
                k = _as_bytes(k)
                self._data.pop(k, None)
                self._pending.pop(k, None)
                self.stats["invalidations"] += 1
                ev = self._sync_waiters.get(k)
                if ev is not None:
                    ev.set()

    def _listen(self) -> None:
        while not self._closing.is_set():
            try:
                if not self._listener.can_read(timeout=0.1):
                    continue
                msg = self._listener.read_response()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                if self._closing.is_set():
                    return
                self._recover()
                continue
            if isinstance(msg, list) and len(msg) == 3 and msg[0] == b"message" \
                    and msg[1] == INVALIDATE_CHANNEL:
                self._apply(msg[2])

    def _recover(self) -> None:
        """The listener was lost: forget everything, reconnect, re-point."""
        with self._lock:
            self._healthy = False
            self._data.clear()
            self._pending.clear()
        self.stats["recoveries"] += 1
        while not self._closing.is_set():
            try:
                self._listener = self._open_listener()
                # Data connections reconnect (and redirect to the new id) on next use.
                self._redis.connection_pool.disconnect()
                with self._lock:
                    self._healthy = True
                return
            except (redis.ConnectionError, OSError):
                time.sleep(0.5)

    def close(self) -> None:
        self._closing.set()
        self._thread.join(2)
        try:
            self._listener.disconnect()
        finally:
            self._redis.close()

    def __enter__(self) -> "L1Cache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _as_bytes(key) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    return str(key).encode()


def _demo(port: int) -> None:
    r = redis.Redis(port=port)
    r.execute_command("TAG.SET", "demo:product:42", "price=10", "TAGS", 1, "product:42")
    with L1Cache(port=port) as cache:
        print("first read (Redis):", cache.get("demo:product:42"))
        print("second read (local):", cache.get("demo:product:42"), dict(cache.stats))
        r.execute_command("TAG.PURGE", "product:42")
        cache.sync()
        print("after TAG.PURGE, locally cached:", cache.cached("demo:product:42"))
        print("read after purge:", cache.get("demo:product:42"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=6379)
    _demo(ap.parse_args().port)
