"""Index hygiene: the tag index follows every change of the keyspace.

When a tagged key expires, is evicted, deleted, overwritten by a non-tag
write, renamed, moved, or its database is flushed or swapped, no tag set keeps
a member that does not exist and an emptied tag set disappears; a renamed key
keeps its tags under its new name; an in-place change of a key tagged with
TAG.ADD keeps its tags.

The stress test writes TAGCACHE_STRESS_KEYS tagged keys (default 100000;
lower it for a quick local run).
"""

import os
import random
import time

import pytest
import redis

from harness import (RawConn, digest, info_pairs, error_text, members, server_time_ms, set_of, tag_set, tag_sets,
                     tags_of, wait_server_time_past, wait_sync, wait_until)


def tag_info(r) -> dict:
    return info_pairs(r.execute_command("TAG.INFO"))


def assert_index_clean(r, prefix=b"tag:"):
    """No tag set has a member that does not exist; the module's view
    (TAG.MEMBERS, TAG.CARD, TAG.TAGS) agrees with the sets."""
    sets = tag_sets(r, prefix)
    for set_key, mem in sets.items():
        assert mem, f"empty tag set {set_key!r} left behind"
        tag = set_key[len(prefix):]
        missing = {m for m in mem if not r.exists(m)}
        assert not missing, f"{set_key!r} keeps members that do not exist: {missing}"
        assert members(r, tag) == set(mem), set_key
        assert r.execute_command("TAG.CARD", tag) == len(mem), set_key
        for m in mem:
            assert tag in tags_of(r, m), (m, tag)
    return sets


def seed(r):
    tag_set(r, "k1", "v1", "a", "b")
    tag_set(r, "k2", "v2", "b")
    tag_set(r, "k3", "v3", "c")
    r.hset("h", mapping={"f": "1"})
    assert r.execute_command("TAG.ADD", "h", "b", "h") == 2
    assert set(r.smembers("tag:b")) == {b"k1", b"k2", b"h"}


# ---------------------------------------------------------------- expiry


def test_expired_member_disappears(r):
    seed(r)
    tag_set(r, "short", "v", "a", "b", "only", opts=("PX", 50))
    r.execute_command("TAG.ADD", "h", "gone-with-h")
    r.pexpire("h", 50)
    assert b"short" in r.smembers("tag:a")
    # Only the sets are read: the expiry is found by the server's active cycle.
    wait_until(lambda: b"short" not in r.smembers("tag:a")
               and b"h" not in r.smembers("tag:b"), 3, what="expired members removed")
    assert not r.exists("tag:only")
    assert not r.exists("tag:gone-with-h")
    assert not r.exists("tag:h")
    assert r.smembers("tag:a") == {b"k1"}
    assert r.smembers("tag:b") == {b"k1", b"k2"}
    assert members(r, "only") == set()
    assert r.execute_command("TAG.CARD", "only") == 0
    assert tags_of(r, "short") == set()
    assert_index_clean(r)
    info = tag_info(r)
    assert info["tagged_keys"] == 3
    assert info["tags"] == 3


def test_lazily_expired_member_disappears(r):
    seed(r)
    r.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", 0)
    try:
        tag_set(r, "short", "v", "a", "lazy", opts=("PX", 30))
        # Due once 30 ms have passed on the server's clock (found out without
        # looking the key up, which would expire it).
        wait_server_time_past(r, server_time_ms(r) + 30)
        assert b"short" in r.smembers("tag:lazy")  # not expired by anyone yet
        assert r.get("short") is None  # the read expires it
        assert not r.exists("tag:lazy")
        assert r.smembers("tag:a") == {b"k1"}
        assert_index_clean(r)
    finally:
        r.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", 1)


# ---------------------------------------------------------------- deletion


@pytest.mark.parametrize("how", ["DEL", "UNLINK", "GETDEL"])
def test_deleted_member_disappears(r, how):
    seed(r)
    if how == "GETDEL":
        assert r.execute_command("GETDEL", "k1") == b"v1"
    else:
        assert r.execute_command(how, "k1", "k3", "nokey") == 2
    assert not r.exists("tag:a")
    if how == "GETDEL":
        assert r.smembers("tag:c") == {b"k3"}
    else:
        assert not r.exists("tag:c")
    assert r.smembers("tag:b") == {b"k2", b"h"}
    assert tags_of(r, "k1") == set()
    assert assert_index_clean(r)
    # The name can be tagged afresh, with no trace of the old tags.
    tag_set(r, "k1", "again", "z")
    assert tags_of(r, "k1") == {b"z"}
    assert b"k1" not in r.smembers("tag:b")


def test_deleting_every_member_removes_the_set(r):
    for i in range(50):
        tag_set(r, f"k{i}", "v", "many", f"own{i}")
    r.delete(*[f"k{i}" for i in range(50)])
    assert r.dbsize() == 0
    assert tag_info(r)["tagged_keys"] == 0
    assert tag_info(r)["tags"] == 0


# ---------------------------------------------------------------- overwrite


OVERWRITES = {
    "SET": lambda r: r.set("k1", "plain"),
    "SET GET": lambda r: r.set("k1", "plain", get=True),
    "SET EX": lambda r: r.set("k1", "plain", ex=100),
    "SETEX": lambda r: r.execute_command("SETEX", "k1", 100, "plain"),
    "PSETEX": lambda r: r.execute_command("PSETEX", "k1", 100000, "plain"),
    "GETSET": lambda r: r.getset("k1", "plain"),
    "MSET": lambda r: r.mset({"k1": "plain", "k3": "plain"}),
    "RESTORE REPLACE": lambda r: r.restore("k1", 0, r.dump("k2"), replace=True),
    "COPY REPLACE": lambda r: r.copy("k2", "k1", replace=True),
    "SORT STORE": lambda r: (r.rpush("src", 3, 1, 2), r.sort("src", store="k1")),
    "SUNIONSTORE": lambda r: (r.sadd("src", "x"), r.sunionstore("k1", ["src"])),
    "ZUNIONSTORE": lambda r: (r.zadd("src", {"x": 1}), r.zunionstore("k1", ["src"])),
}


@pytest.mark.parametrize("how", OVERWRITES.keys())
def test_overwrite_ends_tags(r, how):
    seed(r)
    OVERWRITES[how](r)
    assert r.exists("k1")
    assert tags_of(r, "k1") == set()
    assert not r.exists("tag:a")
    assert r.smembers("tag:b") == {b"k2", b"h"}
    if how == "MSET":
        assert not r.exists("tag:c")
    else:
        assert r.smembers("tag:c") == {b"k3"}
    assert_index_clean(r)
    # A TAG.SET afterwards tags it afresh.
    tag_set(r, "k1", "tagged", "new")
    assert tags_of(r, "k1") == {b"new"}
    assert r.smembers("tag:new") == {b"k1"}


def test_overwrite_of_a_hash_tagged_with_tag_add(r):
    seed(r)
    r.set("h", "now a string")
    assert tags_of(r, "h") == set()
    assert not r.exists("tag:h")
    assert r.smembers("tag:b") == {b"k1", b"k2"}
    assert_index_clean(r)


def test_tag_set_with_other_tags_leaves_the_old_ones(r):
    seed(r)
    tag_set(r, "k1", "v", "b", "z")
    assert tags_of(r, "k1") == {b"b", b"z"}
    assert not r.exists("tag:a")
    assert_index_clean(r)


# ---------------------------------------------------------------- in place


IN_PLACE = {
    "HSET": ("h", lambda r: r.hset("h", "g", "2")),
    "HDEL one of two": ("h", lambda r: (r.hset("h", "g", "2"), r.hdel("h", "g"))),
    "RPUSH": ("l", lambda r: r.rpush("l", "z")),
    "LPOP one of two": ("l", lambda r: r.lpop("l")),
    "APPEND": ("s", lambda r: r.append("s", "more")),
    "INCR": ("n", lambda r: r.incr("n")),
    "SETRANGE": ("s", lambda r: r.setrange("s", 0, "X")),
    "EXPIRE": ("s", lambda r: r.expire("s", 1000)),
    "PERSIST": ("s", lambda r: (r.expire("s", 1000), r.persist("s"))),
    "SADD": ("set", lambda r: r.sadd("set", "m2")),
}


@pytest.mark.parametrize("how", IN_PLACE.keys())
def test_in_place_change_keeps_tags(r, how):
    r.hset("h", mapping={"f": "1"})
    r.rpush("l", "a", "b")
    r.set("s", "str")
    r.set("n", 1)
    r.sadd("set", "m1")
    for k in ("h", "l", "s", "n", "set"):
        assert r.execute_command("TAG.ADD", k, "kinds", f"only-{k}") == 2
    key, change = IN_PLACE[how]
    change(r)
    assert r.exists(key)
    assert tags_of(r, key) == {b"kinds", f"only-{key}".encode()}
    assert r.smembers(f"tag:only-{key}") == {key.encode()}
    assert r.smembers("tag:kinds") == {b"h", b"l", b"s", b"n", b"set"}
    assert_index_clean(r)


def test_in_place_change_of_tag_set_key_keeps_tags(r):
    tag_set(r, "s", "str", "a")
    r.append("s", "more")
    r.expire("s", 1000)
    assert tags_of(r, "s") == {b"a"}
    assert r.smembers("tag:a") == {b"s"}


# ---------------------------------------------------------------- rename


def test_rename_tags_follow(r):
    seed(r)
    assert r.rename("k1", "n1") is True
    assert r.smembers("tag:a") == {b"n1"}
    assert r.smembers("tag:b") == {b"n1", b"k2", b"h"}
    assert tags_of(r, "n1") == {b"a", b"b"}
    assert tags_of(r, "k1") == set()
    assert r.get("n1") == b"v1"
    # Renamed twice, and a hash tagged with TAG.ADD.
    r.rename("n1", "n2")
    r.rename("h", "h2")
    assert r.smembers("tag:a") == {b"n2"}
    assert r.smembers("tag:b") == {b"n2", b"k2", b"h2"}
    assert r.smembers("tag:h") == {b"h2"}
    assert tags_of(r, "h2") == {b"b", b"h"}
    assert_index_clean(r)
    # Purging by tag finds the key under its new name.
    assert r.execute_command("TAG.PURGE", "a") == 1
    assert not r.exists("n2")
    assert r.smembers("tag:b") == {b"k2", b"h2"}
    assert_index_clean(r)


def test_rename_onto_a_tagged_key(r):
    seed(r)
    # k3 (tag c) replaces k2 (tag b): k2's tags end, k3's follow.
    r.rename("k3", "k2")
    assert r.get("k2") == b"v3"
    assert tags_of(r, "k2") == {b"c"}
    assert r.smembers("tag:c") == {b"k2"}
    assert r.smembers("tag:b") == {b"k1", b"h"}
    assert_index_clean(r)


def test_rename_onto_itself(r):
    seed(r)
    r.rename("k1", "k1")
    assert tags_of(r, "k1") == {b"a", b"b"}
    assert r.smembers("tag:a") == {b"k1"}
    assert_index_clean(r)


def test_renamenx(r):
    seed(r)
    assert r.renamenx("k1", "k2") is False  # refused: nothing moves
    assert tags_of(r, "k1") == {b"a", b"b"}
    assert tags_of(r, "k2") == {b"b"}
    assert r.renamenx("k1", "fresh") is True
    assert tags_of(r, "fresh") == {b"a", b"b"}
    assert r.smembers("tag:a") == {b"fresh"}
    assert r.smembers("tag:b") == {b"fresh", b"k2", b"h"}
    assert_index_clean(r)


def test_renamed_key_expires_under_its_new_name(r):
    tag_set(r, "k", "v", "a", opts=("PX", 100))
    r.rename("k", "n")
    assert r.smembers("tag:a") == {b"n"}
    wait_until(lambda: not r.exists("tag:a"), 3, what="renamed key's expiry")
    assert tags_of(r, "n") == set()
    assert r.dbsize() == 0


# ---------------------------------------------------------------- databases


@pytest.fixture
def r0(server):
    """One connection, so that SELECT holds for the following commands."""
    return server.client(single_connection_client=True)


def test_move(r0):
    r = r0
    seed(r)
    assert r.move("k1", 1) is True
    assert not r.exists("tag:a")
    assert r.smembers("tag:b") == {b"k2", b"h"}
    assert tags_of(r, "k1") == set()
    assert_index_clean(r)
    r.execute_command("SELECT", 1)
    try:
        assert r.get("k1") == b"v1"
        assert r.keys("tag:*") == []
        # In db 1 the moved key can be tagged and purged on its own.
        assert r.execute_command("TAG.ADD", "k1", "db1") == 1
        assert r.execute_command("TAG.PURGE", "db1") == 1
        assert r.dbsize() == 0
    finally:
        r.execute_command("SELECT", 0)
    assert r.get("k2") == b"v2"


def test_swapdb(server, r0):
    r = r0
    seed(r)
    r.execute_command("SELECT", 1)
    tag_set(r, "k1", "db1-value", "x")
    tag_set(r, "other", "v", "x", "b")
    r.execute_command("SELECT", 0)
    assert r.swapdb(0, 1) is True
    # db 0 now holds what db 1 held, with its tags.
    assert r.get("k1") == b"db1-value"
    assert tags_of(r, "k1") == {b"x"}
    assert tags_of(r, "other") == {b"x", b"b"}
    assert tags_of(r, "k2") == set()
    assert r.smembers("tag:b") == {b"other"}
    assert_index_clean(r)
    assert r.execute_command("TAG.PURGE", "b") == 1
    assert set(r.keys("*")) == {b"k1", b"tag:x"}
    r.execute_command("SELECT", 1)
    assert r.get("k1") == b"v1"
    assert tags_of(r, "k1") == {b"a", b"b"}
    assert r.smembers("tag:b") == {b"k1", b"k2", b"h"}
    assert_index_clean(r)
    # Changes in the swapped database keep its index clean.
    r.delete("k1")
    assert not r.exists("tag:a")
    assert r.smembers("tag:b") == {b"k2", b"h"}
    assert r.execute_command("TAG.PURGE", "b") == 2
    assert set(r.keys("*")) == {b"k3", b"tag:c"}
    assert_index_clean(r)


def test_flushdb(server, r0):
    r = r0
    seed(r)
    r.execute_command("SELECT", 1)
    tag_set(r, "k1", "db1", "a")
    r.execute_command("SELECT", 0)
    assert r.flushdb() is True
    assert r.dbsize() == 0
    assert tags_of(r, "k1") == set()
    assert members(r, "a") == set()
    # The same names tagged again carry only their new tags.
    tag_set(r, "k1", "v", "z")
    r.set("k2", "plain")
    assert tags_of(r, "k1") == {b"z"}
    assert tags_of(r, "k2") == set()
    assert set(r.keys("*")) == {b"k1", b"k2", b"tag:z"}
    # The other database is untouched.
    r.execute_command("SELECT", 1)
    assert tags_of(r, "k1") == {b"a"}
    assert r.smembers("tag:a") == {b"k1"}
    r.execute_command("SELECT", 0)
    assert r.flushall() is True
    r.execute_command("SELECT", 1)
    assert tags_of(r, "k1") == set()
    assert r.dbsize() == 0
    r.execute_command("SELECT", 0)
    assert tag_info(r)["tagged_keys"] == 0


# ---------------------------------------------------------------- replica


def test_hygiene_replicates(master_replica):
    master, replica = master_replica
    m, rep = master.client(), replica.client()
    seed(m)
    tag_set(m, "short", "v", "a", "b", opts=("PX", 50))
    m.delete("k3")
    m.rename("k1", "n1")
    m.set("k2", "plain")
    wait_until(lambda: not m.exists("short") and b"short" not in m.smembers("tag:a"),
               3, what="expiry")
    wait_sync(m, rep)
    assert tag_sets(rep) == tag_sets(m) == {b"tag:a": {b"n1"}, b"tag:b": {b"n1", b"h"},
                                            b"tag:h": {b"h"}}
    assert tags_of(rep, "n1") == {b"a", b"b"}
    assert digest(rep) == digest(m)
    assert_index_clean(rep)


# ---------------------------------------------------------------- eviction


def test_evicted_member_disappears(r):
    """A tagged key evicted under maxmemory leaves its tag sets."""
    seed(r)
    big = "x" * 20000
    for i in range(20):
        tag_set(r, f"big:{i}", big, "big", f"own:{i}")
    r.config_set("maxmemory-policy", "allkeys-random")
    used = r.info("memory")["used_memory"]
    r.config_set("maxmemory", used - 150_000)
    try:
        r.set("trigger", "x")
    except redis.exceptions.OutOfMemoryError:
        pass
    r.config_set("maxmemory", 0)
    assert r.info("stats")["evicted_keys"] > 0
    assert_index_clean(r)
    live = [k for k in r.keys("big:*")]
    assert len(live) < 20
    if r.exists("tag:big"):
        assert set(r.smembers("tag:big")) == set(live)


def test_evicted_tag_set_does_not_strand_its_keys(r):
    """Under an allkeys policy the server may evict a tag set itself. The
    keys that carried the tag must not outlive every way to purge them: after
    the set is gone, TAG.PURGE of the tag still leaves none of them."""
    # Deletion paths once, so that their first-use allocations are not
    # counted against the memory the eviction below frees.
    tag_set(r, "warm1", "v", "warm")
    r.delete("warm1")
    tag_set(r, "warm2", "v", "warm")
    r.execute_command("TAG.PURGE", "warm")
    r.config_set("maxmemory-policy", "allkeys-lru")
    r.config_set("maxmemory-samples", 64)
    # Long member names make the set large, so that evicting it alone is
    # enough; fewer keys than samples, so that the eviction sees every key.
    names = [("page:" + "p" * 4000 + f":{i}").encode() for i in range(50)]
    for n in names:
        tag_set(r, n, "html", "t")
    set_size = r.memory_usage("tag:t")
    assert set_size > 200_000
    # The set becomes the least recently used key (the LRU clock ticks in
    # seconds; OBJECT IDLETIME does not touch the key).
    wait_until(lambda: r.object("idletime", "tag:t") >= 2, 10, interval=0.1,
               what="tag:t idle for 2 s")
    for n in names:
        assert r.get(n) == b"html"
    assert r.object("idletime", "tag:t") >= 2
    evicted_before = r.info("stats")["evicted_keys"]
    used = r.info("memory")["used_memory"]
    r.config_set("maxmemory", used - set_size // 2)
    try:
        r.set("trigger", "x")
    except redis.exceptions.OutOfMemoryError:
        pass
    finally:
        r.config_set("maxmemory", 0)
    evicted = r.info("stats")["evicted_keys"] - evicted_before
    assert not r.exists("tag:t"), "setup: the tag set was expected to be evicted first"
    assert 1 <= evicted <= 5, f"setup: {evicted} keys evicted, expected the tag set alone"
    r.execute_command("TAG.PURGE", "t")
    stranded = names

    def none_stranded():
        nonlocal stranded
        stranded = [n for n in names if r.exists(n)]
        return not stranded

    try:
        wait_until(none_stranded, 2, interval=0.05, what="no key tagged 't' left")
    except AssertionError:
        pass  # reported below, with the count
    assert not stranded, (
        f"{len(stranded)} keys tagged 't' survive TAG.PURGE t after tag:t was evicted")


# ---------------------------------------------------------------- stress


STRESS_KEYS = int(os.environ.get("TAGCACHE_STRESS_KEYS", "100000"))
TAG_POOL = [f"pool:{i}" for i in range(200)]


def tracked_memory(r) -> int:
    """used_memory without the replication and client buffers, which depend
    on traffic, not on the dataset or the index."""
    mem = r.info("memory")
    return mem["used_memory"] - sum(
        mem.get(f, 0) for f in ("mem_replication_backlog", "mem_clients_slaves",
                                "mem_clients_normal", "mem_aof_buffer", "mem_cluster_links")
    )


def purge_memory(r):
    try:
        r.execute_command("MEMORY", "PURGE")
    except redis.ResponseError:
        pass


def test_stress_index_stays_clean(servers):
    deadline = time.monotonic() + 120
    rng = random.Random(1234)
    master = servers.start(name="master")
    replica = servers.start_replica(master)
    m, rep = master.client(), replica.client()
    # Every command the test uses, once, before the baseline: one-time
    # allocations (the server's and the module's) are not what the index
    # holds for live keys.
    tag_set(m, "warmup", "v", "warmup", opts=("PX", 100000))
    m.rename("warmup", "warmup2")
    m.set("warmup2", "v", px=100000)
    tag_set(m, "warmup2", "v", "warmup")
    assert_index_clean(m)
    m.unlink("warmup2")
    tag_set(m, "warmup", "v", "warmup")
    m.execute_command("TAG.PURGE", "warmup")
    tag_set(m, "warmup", "v", "warmup", opts=("PX", 1))
    wait_until(lambda: m.dbsize() == 0, 3, what="warm-up expiry")
    tag_info(m)
    wait_sync(m, rep)
    digest(m)
    digest(rep)
    purge_memory(m)
    baseline = tracked_memory(m)
    baseline_info = m.info("memory")

    # Everything below must fit in a few MB above the baseline: evictions happen.
    value = "x" * 300
    maxmemory = baseline + 3 * 1024 * 1024
    m.config_set("maxmemory", maxmemory)
    m.config_set("maxmemory-policy", "allkeys-lru")

    written = []
    errors = 0
    batch = 500
    persistent = 0
    for start in range(0, STRESS_KEYS, batch):
        p = m.pipeline(transaction=False)
        for i in range(start, min(start + batch, STRESS_KEYS)):
            key = f"key:{i}"
            tags = rng.sample(TAG_POOL, rng.randint(1, 4))
            if i % 50 == 0:
                # A few keys without TTL: they leave an index to check
                # once the others are gone (unless evicted).
                p.execute_command("TAG.SET", key, value, "TAGS", len(tags), *tags)
                persistent += 1
            else:
                p.execute_command("TAG.SET", key, value, "PX", rng.randint(50, 500),
                                  "TAGS", len(tags), *tags)
            written.append(key)
            roll = rng.random()
            if roll < 0.05 and written:
                p.delete(rng.choice(written))
            elif roll < 0.10 and written:
                src = rng.choice(written)
                p.rename(src, f"ren:{src}")
            elif roll < 0.15 and written:
                p.set(rng.choice(written), "overwritten", px=rng.randint(50, 500))
            elif roll < 0.17 and written:
                p.unlink(rng.choice(written))
        for res in p.execute(raise_on_error=False):
            if isinstance(res, Exception):
                # A rename of a key that already expired, and OOM refusals
                # under maxmemory, are expected.
                assert error_text(res) in (
                    "ERR no such key",
                    "OOM command not allowed when used memory > 'maxmemory'.",
                ), error_text(res)
                errors += 1
        assert time.monotonic() < deadline, "workload too slow"

    stats = m.info("stats")
    assert stats["evicted_keys"] > 0, "maxmemory never evicted: the test is not testing eviction"
    assert stats["expired_keys"] > 0

    # Every key with a TTL lapses: what is left is the persistent keys.
    # (KEYS hides keys that are past their TTL but not yet reclaimed; the
    # keyspace's `expires` count includes them.)
    wait_until(lambda: m.info("keyspace").get("db0", {}).get("expires", 0) == 0, 20,
               interval=0.1, what="every key with a TTL expired and reclaimed")
    m.config_set("maxmemory", 0)
    assert_index_clean(m)
    left = [k for k in m.keys("*") if not k.startswith(b"tag:")]
    assert all(int(k.rsplit(b":", 1)[1]) % 50 == 0 for k in left), left[:10]
    assert tag_info(m)["tagged_keys"] == len(left)
    wait_sync(m, rep)
    assert digest(rep) == digest(m)
    assert_index_clean(rep)

    # Delete what is left (not FLUSHALL, which drops the index wholesale):
    # the index must shrink back with the data.
    if left:
        m.delete(*left)
    assert m.dbsize() == 0, m.keys("*")[:10]
    info = tag_info(m)
    assert info["tagged_keys"] == 0 and info["tags"] == 0
    wait_sync(m, rep)
    assert rep.dbsize() == 0
    assert digest(rep) == digest(m)

    tolerance = max(baseline // 10, 200 * 1024)
    last = {}

    def memory_back():
        purge_memory(m)
        last["used"] = tracked_memory(m)
        return last["used"] <= baseline + tolerance

    try:
        # The server shrinks its own hash tables in its cron: allow it time.
        wait_until(memory_back, 10, interval=0.2, what="memory back to baseline")
    except AssertionError:
        now_info = m.info("memory")
        m.flushall()
        time.sleep(0.5)
        purge_memory(m)
        after_flush = tracked_memory(m) - baseline
        changed = {f: now_info[f] - v for f, v in baseline_info.items()
                   if isinstance(v, int) and f.startswith(("used_memory", "mem_"))
                   and not f.endswith(("_peak", "_rss", "_human")) and now_info.get(f) != v}
        raise AssertionError(
            f"memory did not return to baseline: baseline={baseline} "
            f"now={last['used']} (+{last['used'] - baseline} bytes, tolerance {tolerance}); "
            f"keys={STRESS_KEYS}; still +{after_flush} after a FLUSHALL; "
            f"INFO memory changes: {changed}"
        ) from None


# ------------------------------------------- client code that re-tags itself


def test_client_rewrite_and_sadd_keeps_membership(r):
    """Client code that rewrites a key and re-adds it to its tag set in one
    script, transaction or pipeline ends with the key still in the set: the
    cleanup of the overwrite must not undo the client's own SADD."""
    r.set("page:1", "v0")
    r.sadd("tag:pages", "page:1")
    script = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('SADD', KEYS[2], KEYS[1])"
    r.eval(script, 2, "page:1", "tag:pages", "v1")
    assert r.smembers("tag:pages") == {b"page:1"}
    p = r.pipeline(transaction=True)
    p.set("page:1", "v2")
    p.sadd("tag:pages", "page:1")
    p.execute()
    assert r.smembers("tag:pages") == {b"page:1"}
    p = r.pipeline(transaction=False)
    p.set("page:1", "v3")
    p.sadd("tag:pages", "page:1")
    p.execute()
    r.ping()  # a later command: deferred cleanups have run
    assert r.smembers("tag:pages") == {b"page:1"}
    assert r.execute_command("TAG.PURGE", "pages") == 1
    assert r.exists("page:1") == 0


def test_set_then_tag_set_in_one_transaction_keeps_new_tags(r):
    tag_set(r, "k", "v", "a")
    p = r.pipeline(transaction=True)
    p.set("k", "plain")
    p.execute_command("TAG.SET", "k", "v2", "TAGS", 1, "a")
    p.execute()
    r.ping()
    assert r.smembers("tag:a") == {b"k"}
    assert r.execute_command("TAG.TAGS", "k") == [b"a"]


# ---------------------------------------------------------------- old tags whose set was replaced


def test_a_tag_set_replaced_by_a_string_is_left_alone_by_the_next_tag_set(r):
    """TAG.SET only touches the old tags' sets that still hold the key."""
    assert tag_set(r, "k", "v1", "t") == b"OK"
    r.delete("tag:t")
    assert tags_of(r, "k") == set()
    r.set("tag:t", "hello")
    assert tag_set(r, "k", "v2", "u") == b"OK"
    assert r.get("k") == b"v2"
    assert set_of(r, "tag:u") == {b"k"}
    assert r.get("tag:t") == b"hello"
    assert tags_of(r, "k") == {b"u"}


# ---------------------------------------------------------------- a rename earlier in one round trip


@pytest.mark.parametrize("mode", ["pipeline", "multi", "eval"])
def test_tags_and_purge_see_a_rename_earlier_in_the_same_pipeline_transaction_or_script(
        server, mode):
    r = server.client(single_connection_client=True)
    tag_set(r, "k", "v", "t")
    if mode == "eval":
        replies = r.eval("return {redis.call('RENAME', KEYS[1], KEYS[2]), "
                         "redis.call('TAG.TAGS', KEYS[2]), "
                         "redis.call('TAG.PURGE', ARGV[1])}", 2, "k", "k2", "t")
        assert replies == [b"OK", [b"t"], 1]
    else:
        p = r.pipeline(transaction=(mode == "multi"))
        p.rename("k", "k2")
        p.execute_command("TAG.TAGS", "k2")
        p.execute_command("TAG.PURGE", "t")
        assert p.execute() == [True, [b"t"], 1]
    assert not r.exists("k")
    assert not r.exists("k2")
    assert not r.exists("tag:t")
    assert r.dbsize() == 0


# ---------------------------------------------------------------- keys under the tag prefix
# Keys renamed into and out of the tag prefix, and cached keys whose own
# names begin with it.


def test_rename_into_and_out_of_the_tag_prefix(r):
    tag_set(r, "rk", "v", "rt")
    r.rename("rk", "tag:zzz")
    r.sadd("tag:other", "x")
    r.rename("tag:other", "plain2")
    assert r.execute_command("TAG.TAGS", "plain2") == []
    assert r.execute_command("TAG.TAGS", "tag:zzz") == [b"rt"]
    assert set_of(r, "tag:rt") == {b"tag:zzz"}
    assert r.execute_command("TAG.PURGE", "rt") == 1
    assert not r.exists("tag:zzz")
    assert not r.exists("tag:rt")
    assert r.type("plain2") == b"set"
    assert set_of(r, "plain2") == {b"x"}


def test_a_cached_key_under_the_tag_prefix_expires_out_of_its_tag(r):
    assert tag_set(r, "tag:foo", "v", "bar", opts=("PX", 200)) == b"OK"
    assert set_of(r, "tag:bar") == {b"tag:foo"}
    wait_until(lambda: r.exists("tag:foo") == 0, 3, what="tag:foo expired")
    wait_until(lambda: r.exists("tag:bar") == 0, 2, what="tag:bar removed")
    assert r.execute_command("TAG.MEMBERS", "bar") == []


def test_a_cached_key_under_the_tag_prefix_overwritten_loses_its_tags(r):
    tag_set(r, "tag:g", "v", "h")
    r.set("tag:g", "other")
    assert r.execute_command("TAG.TAGS", "tag:g") == []
    assert not r.exists("tag:h")
    assert r.get("tag:g") == b"other"


# ---------------------------------------------------------------- store commands and tag sets
# Writes that replace a key or fill a tag set wholesale keep the index exact.


def test_zrangestore_over_a_tagged_key_ends_its_tags(r):
    tag_set(r, "d", "v", "t")
    r.zadd("src", {"a": 1})
    assert r.execute_command("ZRANGESTORE", "d", "src", 0, -1) == 1
    assert r.execute_command("TAG.TAGS", "d") == []
    assert not r.exists("tag:t")


def test_sunionstore_into_a_tag_set_tags_its_members(r):
    r.set("x", 1)
    r.sadd("s1", "x")
    assert r.sunionstore("tag:u", ["s1"]) == 1
    assert r.execute_command("TAG.TAGS", "x") == [b"u"]
    r.delete("x")
    wait_until(lambda: b"x" not in r.smembers("tag:u"), 2, what="x removed from tag:u")


def test_smove_into_a_tag_set_tags_the_member(r):
    r.set("y", 1)
    r.sadd("s2", "y")
    assert r.smove("s2", "tag:w", "y") is True
    assert r.execute_command("TAG.TAGS", "y") == [b"w"]
    r.delete("y")
    wait_until(lambda: b"y" not in r.smembers("tag:w"), 2, what="y removed from tag:w")


def test_a_set_renamed_into_the_tag_prefix_tags_its_members(r):
    r.set("z", 1)
    r.sadd("s3", "z")
    r.rename("s3", "tag:q")
    assert r.execute_command("TAG.TAGS", "z") == [b"q"]
    r.delete("z")
    wait_until(lambda: b"z" not in r.smembers("tag:q"), 2, what="z removed from tag:q")


def test_a_discarded_sadd_to_a_tag_set_tags_nothing(server, r):
    conn = RawConn(server.port)
    try:
        assert conn.command("MULTI") == b"OK"
        assert conn.command("SADD", "tag:d", "victim") == b"QUEUED"
        assert conn.command("DISCARD") == b"OK"
    finally:
        conn.close()
    r.set("victim", 1)
    r.set("o", 1)
    r.sadd("tag:d", "o")
    assert r.execute_command("TAG.MEMBERS", "d") == [b"o"]
    assert r.execute_command("TAG.TAGS", "victim") == []
    assert r.execute_command("TAG.PURGE", "d") == 1
    assert r.get("victim") == b"1"
    assert not r.exists("o")


@pytest.mark.parametrize("away", ["move-and-back", "del", "overwrite"])
def test_a_plain_read_later_in_the_same_pipeline_sees_the_tag_sets_as_the_index_does(r, away):
    """A key moved away and back, deleted or overwritten by a plain command
    has left its tag sets by the next command of the same pipeline (no
    post-notification jobs on Redis 7.0): SISMEMBER, TAG.TAGS and TAG.PURGE
    agree."""
    tag_set(r, "k", "v", "t")
    p = r.pipeline(transaction=False)
    if away == "move-and-back":
        p.move("k", 1)
        p.execute_command("SELECT", 1)
        p.move("k", 0)
        p.execute_command("SELECT", 0)
    elif away == "del":
        p.delete("k")
    else:
        p.set("k", "plain")
    p.sismember("tag:t", "k")
    p.execute_command("TAG.TAGS", "k")
    p.execute_command("TAG.PURGE", "t")
    out = p.execute()
    assert out[-3:] == [0, [], 0]
    assert r.exists("tag:t") == 0
    assert r.exists("k") == (0 if away == "del" else 1)
