"""The L1 cache example (examples/l1_cache.py) never serves a purged value.

Many keys are written with TAG.SET and read through the L1 (which keeps
them locally); TAG.PURGE deletes some tags; once the invalidations are
applied (a bounded wait), no purged value is served, the other keys are
still served locally, and refills are read afresh. Several rounds.
"""

import random
import sys
import threading

import pytest

from harness import ROOT, tag_set, wait_until

sys.path.insert(0, str(ROOT / "examples"))
from l1_cache import L1Cache  # noqa: E402

KEYS = 2000
GROUPS = 10


def key(i):
    return f"item:{i}"


def group_of(i):
    return f"group:{i % GROUPS}"


def load(r, generation, indexes):
    p = r.pipeline(transaction=False)
    for i in indexes:
        p.execute_command("TAG.SET", key(i), f"gen{generation}:{i}", "TAGS", 2,
                          group_of(i), "all")
    p.execute()


@pytest.fixture
def l1(server):
    cache = L1Cache(port=server.port, socket_timeout=10)
    yield cache
    cache.close()


def test_reads_are_served_locally(r, l1):
    load(r, 0, range(100))
    for i in range(100):
        assert l1.get(key(i)) == f"gen0:{i}".encode()
    assert l1.stats["misses"] == 100
    for i in range(100):
        assert l1.get(key(i)) == f"gen0:{i}".encode()
    assert l1.stats["hits"] == 100
    assert len(l1) == 100
    # A miss is not cached.
    assert l1.get("absent") is None
    assert l1.cached("absent") is None


def test_plain_writes_invalidate(r, l1):
    r.set("k", "v1")
    assert l1.get("k") == b"v1"
    r.set("k", "v2")
    l1.sync()
    assert l1.cached("k") is None
    assert l1.get("k") == b"v2"
    r.delete("k")
    l1.sync()
    assert l1.get("k") is None


def test_purge_rounds(r, l1):
    rng = random.Random(7)
    generation = {i: 0 for i in range(KEYS)}
    load(r, 0, range(KEYS))
    for i in range(KEYS):
        assert l1.get(key(i)) == f"gen0:{i}".encode()
    assert len(l1) == KEYS

    for rnd in range(1, 6):
        purged_groups = rng.sample(range(GROUPS), 3)
        purged = [i for i in range(KEYS) if i % GROUPS in purged_groups]
        kept = [i for i in range(KEYS) if i % GROUPS not in purged_groups]
        n = r.execute_command("TAG.PURGE", *[f"group:{g}" for g in purged_groups])
        assert n == len(purged)
        l1.sync(timeout=5)
        local = l1.snapshot()
        stale = [i for i in purged if key(i).encode() in local]
        assert not stale, f"round {rnd}: {len(stale)} purged keys still held locally"
        hits = l1.stats["hits"]
        for i in purged:
            assert l1.get(key(i)) is None, f"round {rnd}: purged {key(i)} served"
        for i in kept:
            assert l1.get(key(i)) == f"gen{generation[i]}:{i}".encode()
        # The kept keys came from the dict, without a Redis call.
        assert l1.stats["hits"] - hits == len(kept)
        # Refill the purged keys with a new generation: read afresh.
        load(r, rnd, purged)
        # The refill's own invalidations (the keys were tracked) must land
        # before the new values are read, or they would drop them again.
        l1.sync(timeout=5)
        for i in purged:
            generation[i] = rnd
            assert l1.get(key(i)) == f"gen{rnd}:{i}".encode()
        for i in purged[:50]:
            assert l1.cached(key(i)) == f"gen{rnd}:{i}".encode()

    # Purge everything: nothing is left locally.
    assert r.execute_command("TAG.PURGE", "all") == KEYS
    l1.sync(timeout=5)
    assert len(l1) == 0
    for i in range(0, KEYS, 97):
        assert l1.get(key(i)) is None


def test_purge_under_concurrent_reads(r, l1):
    """Readers keep reading while tags are purged and refilled; after each
    purge and sync, no value of a purged generation is served."""
    n = 500
    load(r, 0, range(n))
    current = {i: 0 for i in range(n)}
    stop = threading.Event()
    errors = []

    def reader(seed):
        rng = random.Random(seed)
        while not stop.is_set():
            i = rng.randrange(n)
            try:
                l1.get(key(i))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return

    threads = [threading.Thread(target=reader, args=(s,), daemon=True) for s in range(4)]
    for t in threads:
        t.start()
    try:
        for rnd in range(1, 8):
            g = rnd % GROUPS
            members = [i for i in range(n) if i % GROUPS == g]
            r.execute_command("TAG.PURGE", f"group:{g}")
            l1.sync(timeout=5)
            for i in members:
                v = l1.get(key(i))
                assert v is None, f"round {rnd}: {key(i)} served {v!r} after its purge"
            load(r, rnd, members)
            for i in members:
                current[i] = rnd
            # The refill's own invalidations land before the check.
            l1.sync(timeout=5)
            # Whatever is held locally is the current generation.
            for k, v in l1.snapshot().items():
                i = int(k.split(b":")[1])
                assert v == f"gen{current[i]}:{i}".encode(), (k, v, current[i])
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    assert not errors, errors[:3]


def test_rule_and_expiry_invalidate(r, l1):
    r.execute_command("TAG.LINK", "product:", "p:")
    tag_set(r, "page:1", "html", "p:1")
    tag_set(r, "short", "v", "x", opts=("PX", 100))
    assert l1.get("page:1") == b"html"
    assert l1.get("short") == b"v"
    r.set("product:1", "changed")
    l1.sync()
    assert l1.cached("page:1") is None
    assert l1.get("page:1") is None
    wait_until(lambda: l1.cached("short") is None, 3, what="expiry invalidation")
    assert l1.get("short") is None


def test_flush_clears_everything(r, l1):
    load(r, 0, range(50))
    for i in range(50):
        l1.get(key(i))
    assert len(l1) == 50
    r.flushall()
    wait_until(lambda: len(l1) == 0, 3, what="flush invalidation")
    assert l1.get(key(0)) is None
