"""TAG.PURGE: deletion count, index cleanup, client-written sets, errors, tracking."""

import time

import pytest
import redis

from harness import (WRONGTYPE, Push, RawConn, dataset, digest, error_text, refused, set_of,
                     tag_set, tags_of, wait_sync)


def populate(r):
    tag_set(r, "k1", "v1", "a")
    tag_set(r, "k2", "v2", "a", "b")
    tag_set(r, "k3", "v3", "b")
    tag_set(r, "k4", "v4", "c")


def test_purge_deletes_keys_and_tag_set(r):
    populate(r)
    assert r.execute_command("TAG.PURGE", "a") == 2
    assert not r.exists("k1")
    assert not r.exists("k2")
    assert not r.exists("tag:a")
    assert r.get("k3") == b"v3"
    assert r.get("k4") == b"v4"
    assert r.execute_command("TAG.MEMBERS", "a") == []
    assert r.execute_command("TAG.CARD", "a") == 0


def test_purge_removes_deleted_keys_from_their_other_tags(r):
    populate(r)
    r.execute_command("TAG.PURGE", "a")
    assert r.smembers("tag:b") == {b"k3"}
    assert tags_of(r, "k3") == {b"b"}
    assert r.execute_command("TAG.TAGS", "k2") == []
    # Only k3 is left under b: a second purge counts only it.
    assert r.execute_command("TAG.PURGE", "b") == 1
    assert not r.exists("tag:b")
    assert set(r.keys("*")) == {b"k4", b"tag:c"}


def test_purge_last_member_of_other_tag_removes_that_set(r):
    tag_set(r, "k", "v", "a", "only")
    assert r.execute_command("TAG.PURGE", "a") == 1
    assert not r.exists("tag:only")
    assert r.dbsize() == 0


def test_purge_several_tags_counts_each_key_once(r):
    populate(r)
    assert r.execute_command("TAG.PURGE", "a", "b") == 3
    for k in ("k1", "k2", "k3", "tag:a", "tag:b"):
        assert not r.exists(k), k
    assert r.get("k4") == b"v4"
    assert r.smembers("tag:c") == {b"k4"}


def test_purge_repeated_tag_counts_once(r):
    populate(r)
    assert r.execute_command("TAG.PURGE", "a", "a") == 2


def test_purge_unknown_tag(r):
    populate(r)
    before = dataset(r)
    assert r.execute_command("TAG.PURGE", "nope") == 0
    assert dataset(r) == before


def test_purge_deletes_keys_of_any_type(r):
    r.hset("h", "f", "v")
    r.rpush("l", "x")
    r.sadd("s", "m")
    tag_set(r, "k", "v", "t")
    r.execute_command("TAG.ADD", "h", "t")
    r.execute_command("TAG.ADD", "l", "t")
    r.execute_command("TAG.ADD", "s", "t")
    assert r.execute_command("TAG.PURGE", "t") == 4
    assert r.dbsize() == 0


def test_purge_client_written_set(r):
    r.set("x1", "v")
    r.set("x2", "v")
    r.hset("x3", "f", "v")
    r.sadd("tag:x", "x1", "x2", "x3", "ghost")
    r.set("untouched", "v")
    assert r.execute_command("TAG.PURGE", "x") == 3
    for k in ("x1", "x2", "x3", "tag:x"):
        assert not r.exists(k), k
    assert r.get("untouched") == b"v"


def test_purge_client_written_set_only_ghosts_counts_zero(r):
    r.sadd("tag:x", "ghost1", "ghost2")
    assert r.execute_command("TAG.PURGE", "x") == 0
    assert not r.exists("tag:x")


def test_purge_mixed_module_and_client_written_members(r):
    tag_set(r, "m1", "v", "x", "y")
    r.set("legacy1", "v")
    r.sadd("tag:x", "legacy1")
    assert r.execute_command("TAG.PURGE", "x") == 2
    assert not r.exists("m1")
    assert not r.exists("legacy1")
    assert not r.exists("tag:x")
    assert not r.exists("tag:y")


@pytest.mark.parametrize("order", ["bad-last", "bad-first"])
def test_purge_wrongtype_changes_nothing(r, order):
    populate(r)
    r.set("tag:bad", "a string")
    tags = ["a", "b", "bad"] if order == "bad-last" else ["bad", "a", "b"]
    before = dataset(r)
    d = digest(r)
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("TAG.PURGE", *tags)
    assert error_text(e.value) == WRONGTYPE
    assert dataset(r) == before
    assert digest(r) == d
    assert r.smembers("tag:a") == {b"k1", b"k2"}
    assert tags_of(r, "k2") == {b"a", b"b"}


def test_purge_after_purge_is_zero(r):
    populate(r)
    assert r.execute_command("TAG.PURGE", "a") == 2
    assert r.execute_command("TAG.PURGE", "a") == 0


def test_purged_key_can_be_set_again(r):
    tag_set(r, "k", "v", "a", "b")
    r.execute_command("TAG.PURGE", "a")
    assert tag_set(r, "k", "v2", "b") == b"OK"
    assert tags_of(r, "k") == {b"b"}
    assert r.execute_command("TAG.PURGE", "b") == 1
    assert not r.exists("k")


# ---------------------------------------------------------------- CLIENT TRACKING


def test_purge_sends_tracking_invalidation_resp2_redirect(server, r):
    tag_set(r, "k1", "v", "a")
    tag_set(r, "k2", "v", "a")
    tag_set(r, "k3", "v", "other")

    # RESP2 tracking: invalidations go to a subscriber of __redis__:invalidate.
    sub = RawConn(server.port)
    try:
        sub_id = sub.command("CLIENT", "ID")
        sub.send("SUBSCRIBE", "__redis__:invalidate")
        assert sub.read()[0] == b"subscribe"

        reader = server.client(single_connection_client=True)
        reader.execute_command("CLIENT", "TRACKING", "on", "REDIRECT", sub_id)
        assert reader.get("k1") == b"v"
        assert reader.get("k2") == b"v"
        assert reader.get("k3") == b"v"

        assert r.execute_command("TAG.PURGE", "a") == 2
        # Something after the purge that does invalidate, as a marker.
        r.set("k3", "changed")

        seen = []
        while b"k3" not in seen:
            msg = sub.read(timeout=5)
            assert msg[:2] == [b"message", b"__redis__:invalidate"], msg
            seen.extend(msg[2] or [])
        assert set(seen) == {b"k1", b"k2", b"k3"}, seen
    finally:
        sub.close()


def test_purge_sends_tracking_invalidation_resp3(server, r):
    tag_set(r, "k1", "v", "a")
    tag_set(r, "k2", "v", "b")
    conn = RawConn(server.port)
    try:
        hello = conn.command("HELLO", 3)
        assert isinstance(hello, dict)
        assert conn.command("CLIENT", "TRACKING", "on") == b"OK"
        assert conn.command("GET", "k1") == b"v"
        assert conn.command("GET", "k2") == b"v"

        assert r.execute_command("TAG.PURGE", "a") == 1

        # Invalidations for the purge arrive before the reply to a later PING.
        conn.send("PING")
        seen = set()
        while True:
            msg = conn.read(timeout=5)
            if not isinstance(msg, Push):
                assert msg == b"PONG"
                break
            if msg and msg[0] == b"invalidate" and msg[1]:
                seen.update(msg[1])
        assert b"k1" in seen
        assert b"k2" not in seen
    finally:
        conn.close()


# ---------------------------------------------------------------- index keys that are not sets


def test_purge_past_a_tag_set_replaced_by_a_string(master_replica):
    master, replica = master_replica
    m, rc = master.client(), replica.client()
    tag_set(m, "k1", "v", "a", "b")
    tag_set(m, "k2", "v", "a", "c")
    m.delete("tag:b")
    m.set("tag:b", "str")
    assert m.execute_command("TAG.PURGE", "a") == 2
    assert not m.exists("k1") and not m.exists("k2")
    assert m.get("tag:b") == b"str"
    assert not m.exists("tag:a")
    assert not m.exists("tag:c")
    assert tags_of(m, "k1") == set()
    assert tags_of(m, "k2") == set()
    assert set(m.keys("*")) == {b"tag:b"}
    m.set("k1", "fresh")
    assert m.execute_command("TAG.PURGE", "a") == 0
    assert m.get("k1") == b"fresh"
    wait_sync(m, rc)
    assert rc.get("k1") == b"fresh"
    assert digest(rc) == digest(m)


def test_purge_naming_a_tag_key_holding_a_string_is_all_or_nothing_on_master_and_replica(
        master_replica):
    master, replica = master_replica
    m, rc = master.client(), replica.client()
    tag_set(m, "k1", "v", "a")
    m.set("tag:z", "str")
    before = dataset(m)
    d = digest(m)
    assert refused(m, "TAG.PURGE", "a", "z") == WRONGTYPE
    assert dataset(m) == before
    assert digest(m) == d
    assert m.get("k1") == b"v"
    assert set_of(m, "tag:a") == {b"k1"}
    wait_sync(m, rc)
    assert rc.get("k1") == b"v"
    assert digest(rc) == d


# ---------------------------------------------------------------- earlier commands of one round trip
# A module command sees the effects of the commands before it in the same
# pipeline, transaction or script.


@pytest.mark.parametrize("mode", ["pipeline", "multi", "eval"])
def test_purge_sees_an_overwrite_earlier_in_the_same_pipeline_transaction_or_script(server, mode):
    r = server.client(single_connection_client=True)
    tag_set(r, "k", "v", "t")
    if mode == "eval":
        purged = r.eval("redis.call('SET', KEYS[1], 'fresh') "
                        "return redis.call('TAG.PURGE', ARGV[1])", 1, "k", "t")
    else:
        p = r.pipeline(transaction=(mode == "multi"))
        p.set("k", "fresh")
        p.execute_command("TAG.PURGE", "t")
        set_reply, purged = p.execute()
        assert set_reply is True
    assert purged == 0
    assert r.get("k") == b"fresh"
    assert r.execute_command("TAG.TAGS", "k") == []
    assert not r.exists("tag:t")


def del_events(r, action, timeout=5.0):
    """The keys named by `__keyevent@0__:del` messages while `action` runs
    (notify-keyspace-events with generic events), in order."""
    r.config_set("notify-keyspace-events", "Eg")
    p = r.pubsub()
    p.subscribe("__keyevent@0__:del")
    assert p.get_message(timeout=2)["type"] == "subscribe"
    try:
        action()
        out = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = p.get_message(timeout=0.2)
            if m is None:
                break
            out.append(m["data"])
        return out
    finally:
        p.close()
        r.config_set("notify-keyspace-events", "")


@pytest.mark.parametrize("atomic_max", [10000, 0], ids=["one-step", "sliced"])
def test_purge_fires_a_del_event_per_deleted_key_when_generic_events_are_on(r, atomic_max):
    r.config_set("tagcache.purge-atomic-max", atomic_max)
    try:
        keys = [f"ev:{i}" for i in range(300)]
        for k in keys:
            tag_set(r, k, "v", "evt")
        got = del_events(r, lambda: r.execute_command("TAG.PURGE", "evt"))
        assert sorted(x for x in got if x != b"tag:evt") == sorted(k.encode() for k in keys)
        assert len(got) == len(set(got))
    finally:
        r.config_set("tagcache.purge-atomic-max", 10000)
