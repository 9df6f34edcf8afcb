"""TAG.SET: value, expiry options, NX/XX, tag replacement, binary safety."""

import time

import pytest
import redis

from harness import (WRONGTYPE, digest, error_text, members, server_time_ms, tag_set,
                     tags_of, wait_server_time_past, wait_sync)


def test_set_returns_ok_and_value_is_a_plain_string(r):
    assert tag_set(r, "product:42", "payload", "product:42", "catalog") == b"OK"
    assert r.get("product:42") == b"payload"
    assert r.type("product:42") == b"string"
    assert r.smembers("tag:product:42") == {b"product:42"}
    assert r.smembers("tag:catalog") == {b"product:42"}
    assert tags_of(r, "product:42") == {b"product:42", b"catalog"}


def test_overwrites_value(r):
    tag_set(r, "k", "v1", "a")
    tag_set(r, "k", "v2", "a")
    assert r.get("k") == b"v2"
    assert r.smembers("tag:a") == {b"k"}


def test_ex(r):
    assert tag_set(r, "k", "v", "a", opts=("EX", 100)) == b"OK"
    assert 98 <= r.ttl("k") <= 100


def test_px(r):
    assert tag_set(r, "k", "v", "a", opts=("PX", 100000)) == b"OK"
    assert 98000 <= r.pttl("k") <= 100000


def test_exat(r):
    at = int(time.time()) + 100
    assert tag_set(r, "k", "v", "a", opts=("EXAT", at)) == b"OK"
    assert 97 <= r.ttl("k") <= 100
    assert r.execute_command("EXPIRETIME", "k") == at


def test_pxat(r):
    at = int(time.time() * 1000) + 100000
    assert tag_set(r, "k", "v", "a", opts=("PXAT", at)) == b"OK"
    assert 97000 <= r.pttl("k") <= 100000
    assert r.execute_command("PEXPIRETIME", "k") == at


def test_px_expires_the_key(r):
    tag_set(r, "k", "v", "a", opts=("PX", 100))
    assert r.get("k") == b"v"
    set_by = server_time_ms(r)  # the TAG.SET ran no later than this
    # Expired as soon as 100 ms have passed on the server's clock.
    wait_server_time_past(r, set_by + 100)
    assert r.get("k") is None


def test_no_expiry_option_clears_existing_ttl(r):
    tag_set(r, "k", "v", "a", opts=("EX", 100))
    assert r.ttl("k") > 0
    tag_set(r, "k", "v2", "a")
    assert r.ttl("k") == -1
    assert r.get("k") == b"v2"


def test_no_expiry_option_clears_ttl_set_by_plain_set(r):
    r.set("k", "old", ex=100)
    tag_set(r, "k", "new", "a")
    assert r.ttl("k") == -1


def test_keepttl_keeps_existing_ttl(r):
    tag_set(r, "k", "v", "a", opts=("EX", 100))
    assert tag_set(r, "k", "v2", "a", opts=("KEEPTTL",)) == b"OK"
    assert r.get("k") == b"v2"
    assert 98 <= r.ttl("k") <= 100


def test_keepttl_on_new_key_sets_no_ttl(r):
    assert tag_set(r, "k", "v", "a", opts=("KEEPTTL",)) == b"OK"
    assert r.ttl("k") == -1


def test_nx_on_missing_key_writes(r):
    assert tag_set(r, "k", "v", "a", opts=("NX",)) == b"OK"
    assert r.get("k") == b"v"
    assert r.smembers("tag:a") == {b"k"}


def test_nx_on_existing_key_replies_nil_and_changes_nothing(r):
    tag_set(r, "k", "v", "a", opts=("EX", 100))
    assert tag_set(r, "k", "other", "b", opts=("NX",)) is None
    assert r.get("k") == b"v"
    assert 98 <= r.ttl("k") <= 100
    assert tags_of(r, "k") == {b"a"}
    assert r.smembers("tag:a") == {b"k"}
    assert not r.exists("tag:b")


def test_nx_refused_by_untagged_key(r):
    r.set("k", "plain")
    assert tag_set(r, "k", "other", "b", opts=("NX",)) is None
    assert r.get("k") == b"plain"
    assert not r.exists("tag:b")


def test_xx_on_missing_key_replies_nil_and_changes_nothing(r):
    assert tag_set(r, "k", "v", "a", opts=("XX",)) is None
    assert not r.exists("k")
    assert not r.exists("tag:a")
    assert r.dbsize() == 0


def test_xx_on_existing_key_writes(r):
    tag_set(r, "k", "v", "a")
    assert tag_set(r, "k", "v2", "b", opts=("XX",)) == b"OK"
    assert r.get("k") == b"v2"
    assert tags_of(r, "k") == {b"b"}


def test_expiry_with_condition(r):
    tag_set(r, "k", "v", "a")
    assert tag_set(r, "k", "v2", "a", opts=("XX", "PX", 50000)) == b"OK"
    assert 48000 <= r.pttl("k") <= 50000


def _case_opts(word):
    now = time.time()
    return {
        "ex": ("ex", 100),
        "Px": ("Px", 100000),
        "exat": ("exat", int(now) + 100),
        "pxAT": ("pxAT", int(now * 1000) + 100000),
        "nX": ("nX",),
        "KeepTtl": ("KeepTtl",),
    }[word]


@pytest.mark.parametrize("word", ["ex", "Px", "exat", "pxAT", "nX", "KeepTtl"])
def test_option_words_are_case_insensitive(r, word):
    opts = _case_opts(word)
    assert r.execute_command("TAG.SET", "k", "v", *opts, "tags", 1, "a") == b"OK"
    assert r.get("k") == b"v"
    assert r.smembers("tag:a") == {b"k"}
    if len(opts) == 2:
        assert r.ttl("k") > 90
    else:
        assert r.ttl("k") == -1


def test_tags_word_case_insensitive(r):
    assert r.execute_command("TAG.SET", "k", "v", "TaGs", 1, "a") == b"OK"
    assert tags_of(r, "k") == {b"a"}


def test_repeated_tag_counts_once(r):
    assert tag_set(r, "k", "v", "a", "a", "b", "a") == b"OK"
    tags = r.execute_command("TAG.TAGS", "k")
    assert sorted(tags) == [b"a", b"b"]
    assert r.scard("tag:a") == 1
    assert r.execute_command("TAG.CARD", "a") == 1


def test_binary_safe_key_value_and_tags(r):
    key = b"k\x00\xff\r\n"
    value = b"\x00\xff\x01\r\nvalue"
    tag = b"t\x00\xff"
    assert tag_set(r, key, value, tag, b"\xfe") == b"OK"
    assert r.get(key) == value
    assert r.smembers(b"tag:" + tag) == {key}
    assert r.smembers(b"tag:\xfe") == {key}
    assert tags_of(r, key) == {tag, b"\xfe"}
    assert members(r, tag) == {key}
    assert r.execute_command("TAG.PURGE", tag) == 1
    assert not r.exists(key)
    assert not r.exists(b"tag:\xfe")


def test_empty_value_is_allowed(r):
    assert tag_set(r, "k", b"", "a") == b"OK"
    assert r.get("k") == b""
    assert r.exists("k")


def test_retagging_replaces_tags(r):
    tag_set(r, "k", "v", "a", "b")
    tag_set(r, "k", "v", "b", "c")
    assert b"k" not in r.smembers("tag:a")
    assert r.smembers("tag:b") == {b"k"}
    assert r.smembers("tag:c") == {b"k"}
    assert tags_of(r, "k") == {b"b", b"c"}
    assert members(r, "a") == set()
    assert r.execute_command("TAG.CARD", "a") == 0


def test_retagging_leaves_other_keys_in_old_tag(r):
    tag_set(r, "k1", "v", "a")
    tag_set(r, "k2", "v", "a")
    tag_set(r, "k1", "v", "z")
    assert r.smembers("tag:a") == {b"k2"}
    assert r.smembers("tag:z") == {b"k1"}
    # Purging the old tag no longer touches the re-tagged key.
    assert r.execute_command("TAG.PURGE", "a") == 1
    assert r.get("k1") == b"v"
    assert not r.exists("k2")


def test_retagging_drops_tags_added_with_tag_add(r):
    tag_set(r, "k", "v", "a")
    assert r.execute_command("TAG.ADD", "k", "extra") == 1
    tag_set(r, "k", "v2", "c")
    assert tags_of(r, "k") == {b"c"}
    assert b"k" not in r.smembers("tag:extra")


def test_overwrites_a_key_of_another_type(r):
    r.hset("k", "f", "v")
    assert tag_set(r, "k", "str", "a") == b"OK"
    assert r.type("k") == b"string"
    assert r.get("k") == b"str"


def test_index_key_of_wrong_type_refuses_and_changes_nothing(r):
    r.set("tag:bad", "not a set")
    tag_set(r, "k", "old", "a")
    before = {k: r.dump(k) for k in r.keys("*")}
    with pytest.raises(redis.ResponseError) as e:
        tag_set(r, "k", "new", "b", "bad")
    assert error_text(e.value) == WRONGTYPE
    assert {k: r.dump(k) for k in r.keys("*")} == before
    assert r.get("k") == b"old"
    assert not r.exists("tag:b")
    assert tags_of(r, "k") == {b"a"}


# A key written again with the tags it already has makes no tag-set writes:
# the index must know the member is really there, whatever came before.

def _srem_then_reset(r, how):
    assert tag_set(r, "k", "v1", "t", "u") == b"OK"
    if how == "pipeline":
        p = r.pipeline(transaction=False)
        p.srem("tag:t", "k")
        p.execute_command("TAG.SET", "k", "v2", "TAGS", 2, "t", "u")
        assert p.execute() == [1, b"OK"]
    elif how == "multi":
        p = r.pipeline(transaction=True)
        p.srem("tag:t", "k")
        p.execute_command("TAG.SET", "k", "v2", "TAGS", 2, "t", "u")
        assert p.execute() == [1, b"OK"]
    else:
        assert r.eval("redis.call('SREM', KEYS[2], KEYS[1]); "
                      "return redis.call('TAG.SET', KEYS[1], 'v2', 'TAGS', 2, 't', 'u')",
                      2, "k", "tag:t") == b"OK"
    assert r.get("k") == b"v2"
    assert r.smembers("tag:t") == {b"k"}
    assert r.smembers("tag:u") == {b"k"}
    assert r.execute_command("TAG.PURGE", "t") == 1
    assert r.keys("*") == []


@pytest.mark.parametrize("how", ["pipeline", "multi", "lua"])
def test_reset_with_same_tags_after_a_client_srem_joins_the_set_again(r, how):
    _srem_then_reset(r, how)


def test_reset_with_same_tags_after_the_set_was_deleted_or_replaced(r):
    assert tag_set(r, "k", "v1", "t") == b"OK"
    r.delete("tag:t")
    assert tag_set(r, "k", "v2", "t") == b"OK"
    assert r.smembers("tag:t") == {b"k"}
    r.delete("tmp")
    r.sadd("tmp", "other")
    r.rename("tmp", "tag:t")
    assert tag_set(r, "k", "v3", "t") == b"OK"
    assert r.smembers("tag:t") == {b"k", b"other"}
    r.sadd("tmp2", "x")
    r.sunionstore("tag:t", "tmp2")
    assert tag_set(r, "k", "v4", "t") == b"OK"
    assert r.smembers("tag:t") == {b"k", b"x"}


def test_reset_with_same_tags_keeps_the_replica_equal(master_replica):
    master, replica = master_replica
    r, rr = master.client(), replica.client()
    expected = set()
    for i in range(50):
        key = f"k{i % 7}".encode()
        assert tag_set(r, key, f"v{i}", "t", f"u{i % 3}") == b"OK"
        expected.add(key)
        if i % 5 == 0:
            assert r.srem("tag:t", key) == 1
            expected.discard(key)
    assert r.smembers("tag:t") == expected
    wait_sync(r, rr)
    assert digest(r) == digest(rr)
    assert rr.smembers("tag:t") == expected
