"""Stampede protection as caching guides recommend it without the module:
lock-and-poll.

A reader that misses the cache takes a lock key with SET NX EX; the one that
gets it loads the value from the database and writes it back, the others
sleep and read again. Plain redis-py client code, as services write it.
"""

import time

LOCK_PREFIX = "lock:"
LOCK_TTL = 30        # seconds; the lock outlives a crashed loader by this much
POLL_SLEEP = 0.1     # seconds between reads while another client loads


def lock_and_poll_get(r, key, load, ttl_ms, deadline, max_tries=1000):
    """Read `key`; on a miss, load it once under a lock, or poll until filled.

    load() returns the value (the database call). Returns (value, polls);
    value is None when `deadline` (time.monotonic()) passed first.
    """
    polls = 0
    for _ in range(max_tries):
        v = r.get(key)
        if v is not None:
            return v, polls
        if r.set(LOCK_PREFIX + key, 1, nx=True, ex=LOCK_TTL):
            try:
                v = load()
                r.set(key, v, px=ttl_ms)
            finally:
                r.delete(LOCK_PREFIX + key)
            return v, polls
        if time.monotonic() >= deadline:
            break
        polls += 1
        time.sleep(POLL_SLEEP)
    return None, polls


def lock_and_poll_steps(key, ttl_ms, deadline, max_tries=1000):
    """The same pattern, step by step, for an event loop (bench/openloop.py)
    that runs many readers on one thread: it yields ("cmd", argv) and gets
    the reply, ("load",) and gets the value (the database call), ("sleep",
    seconds). Returns the value, or None when `deadline` passed first.
    Each step is the redis-py call of lock_and_poll_get above."""
    for _ in range(max_tries):
        v = yield ("cmd", ("GET", key))
        if v is not None:
            return v
        got = yield ("cmd", ("SET", LOCK_PREFIX + key, 1, "NX", "EX", LOCK_TTL))
        if got is not None:
            # (The simulated load cannot fail: no try/finally needed here.)
            v = yield ("load",)
            yield ("cmd", ("SET", key, v, "PX", ttl_ms))
            yield ("cmd", ("DEL", LOCK_PREFIX + key))
            return v
        if time.monotonic() >= deadline:
            break
        yield ("count", "polls")
        yield ("sleep", POLL_SLEEP)
    return None
