"""TAG.ADD, TAG.REM, TAG.MEMBERS, TAG.CARD, TAG.TAGS."""

import pytest
import redis

from harness import dataset, error_text, members, tag_set, tags_of


def test_add_to_hash(r):
    r.hset("h", mapping={"f1": "v1", "f2": "v2"})
    assert r.execute_command("TAG.ADD", "h", "a", "b") == 2
    assert r.execute_command("TAG.ADD", "h", "b", "c") == 1
    assert r.execute_command("TAG.ADD", "h", "a", "a") == 0
    assert tags_of(r, "h") == {b"a", b"b", b"c"}
    for t in ("a", "b", "c"):
        assert r.smembers(f"tag:{t}") == {b"h"}
    assert r.hgetall("h") == {b"f1": b"v1", b"f2": b"v2"}
    assert r.type("h") == b"hash"


def test_add_to_list(r):
    r.rpush("l", "x", "y")
    assert r.execute_command("TAG.ADD", "l", "a") == 1
    assert r.execute_command("TAG.ADD", "l", "a") == 0
    assert tags_of(r, "l") == {b"a"}
    assert r.smembers("tag:a") == {b"l"}
    assert r.lrange("l", 0, -1) == [b"x", b"y"]


def test_add_repeated_tag_in_one_call_counts_once(r):
    r.set("s", "v")
    assert r.execute_command("TAG.ADD", "s", "a", "a", "a") == 1
    assert r.scard("tag:a") == 1


def test_add_to_key_tagged_by_tag_set(r):
    tag_set(r, "k", "v", "a")
    assert r.execute_command("TAG.ADD", "k", "a", "b") == 1
    assert tags_of(r, "k") == {b"a", b"b"}
    assert r.get("k") == b"v"


def test_add_keeps_ttl(r):
    r.set("k", "v", ex=100)
    r.execute_command("TAG.ADD", "k", "a")
    assert 98 <= r.ttl("k") <= 100


def test_add_on_missing_key_is_an_error_and_changes_nothing(r):
    r.set("other", "v")
    before = dataset(r)
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("TAG.ADD", "missing", "a")
    assert error_text(e.value) == "ERR no such key"
    assert dataset(r) == before
    assert not r.exists("tag:a")
    assert not r.exists("missing")


def test_add_binary_tag(r):
    r.set(b"\x00k", "v")
    assert r.execute_command("TAG.ADD", b"\x00k", b"\xff\x00") == 1
    assert r.smembers(b"tag:\xff\x00") == {b"\x00k"}
    assert tags_of(r, b"\x00k") == {b"\xff\x00"}


def test_rem(r):
    r.hset("h", "f", "v")
    r.execute_command("TAG.ADD", "h", "a", "b", "c")
    assert r.execute_command("TAG.REM", "h", "a", "zz") == 1
    assert tags_of(r, "h") == {b"b", b"c"}
    assert not r.sismember("tag:a", "h")
    assert r.execute_command("TAG.REM", "h", "b", "c", "b") == 2
    assert tags_of(r, "h") == set()
    assert r.execute_command("TAG.REM", "h", "b") == 0
    # Removing tags leaves the key itself alone.
    assert r.hgetall("h") == {b"f": b"v"}


def test_rem_keeps_other_members(r):
    tag_set(r, "k1", "v", "a")
    tag_set(r, "k2", "v", "a")
    assert r.execute_command("TAG.REM", "k1", "a") == 1
    assert r.smembers("tag:a") == {b"k2"}
    assert members(r, "a") == {b"k2"}
    assert r.get("k1") == b"v"


def test_rem_then_purge_spares_the_key(r):
    tag_set(r, "k1", "v", "a", "b")
    r.execute_command("TAG.REM", "k1", "a")
    assert r.execute_command("TAG.PURGE", "a") == 0
    assert r.get("k1") == b"v"


def test_members_and_card(r):
    tag_set(r, "k1", "v", "a")
    tag_set(r, "k2", "v", "a", "b")
    r.hset("h", "f", "v")
    r.execute_command("TAG.ADD", "h", "a")
    assert members(r, "a") == {b"k1", b"k2", b"h"}
    assert r.execute_command("TAG.CARD", "a") == 3
    assert members(r, "b") == {b"k2"}
    assert r.execute_command("TAG.CARD", "b") == 1


def test_members_and_card_of_unknown_tag(r):
    assert r.execute_command("TAG.MEMBERS", "nope") == []
    assert r.execute_command("TAG.CARD", "nope") == 0


def test_tags_of_untagged_and_missing_key(r):
    r.set("plain", "v")
    assert r.execute_command("TAG.TAGS", "plain") == []
    assert r.execute_command("TAG.TAGS", "missing") == []


def test_tags_reply_has_no_duplicates(r):
    tag_set(r, "k", "v", "a", "b", "c")
    tags = r.execute_command("TAG.TAGS", "k")
    assert sorted(tags) == [b"a", b"b", b"c"]
