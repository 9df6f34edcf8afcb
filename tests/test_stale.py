"""Stale-while-revalidate: TAG.INVALIDATE [ALL] [SOFT grace-ms] [ASYNC] TAGS n tag...

TAG.PURGE is the short form of a hard TAG.INVALIDATE. ALL selects the keys
that carry every named tag. SOFT marks the selected keys stale instead of
deleting them: the value stays readable, the key keeps its tags, its expiry
comes at the latest grace-ms from now, and it is named in the hash
`tagcache:stale`. TAG.GETL on a stale key hands the value to every caller and
one refresh token to the first; the refresh (TAG.SET ... LEASE token) makes
the key fresh. Any write that replaces the value, a delete, an expiry, a
rename or a move ends the stale state; an in-place change does not.
"""

import json
import threading
import time

import pytest

from harness import (Push, RawConn, acl_client, dataset, digest, info_pairs, noperm_key, refused, tag_set,
                     tag_info, tags_of, wait_sync, wait_tag_info, wait_until)

STALE = b"tagcache:stale"
CHANNEL = b"tagcache:events"
SLICED = ("purge-atomic-max", "20")

ARITY = "ERR wrong number of arguments for 'tag.invalidate' command"
NUMTAGS = "ERR numtags must be a positive integer equal to the number of tags that follow"
NOT_INTEGER = "ERR value is not an integer or out of range"
GRACE_RANGE = "ERR grace-ms must be between 1 and 2592000000"
EMPTY_TAG = "ERR tag must not be empty"


def inv(r, *args):
    return r.execute_command("TAG.INVALIDATE", *args)


def soft(r, grace, *tags, opts=()):
    return r.execute_command("TAG.INVALIDATE", *opts, "SOFT", grace, "TAGS", len(tags), *tags)


def getl(r, key, *opts):
    return r.execute_command("TAG.GETL", key, *opts)


def fill(r, key, value, token, *tags, opts=()):
    return r.execute_command("TAG.SET", key, value, *opts, "LEASE", token,
                             "TAGS", len(tags), *tags)


def stale_hash(r) -> dict:
    return r.hgetall(STALE)


def refresh_token(r, key, value=b"v", *opts):
    """The first TAG.GETL on a stale key: the value and a refresh token."""
    reply = getl(r, key, *opts)
    assert isinstance(reply, list) and len(reply) == 2, reply
    assert reply[0] == value and isinstance(reply[1], bytes) and reply[1], reply
    return reply[1]


def fill_tagged(r, n, tags=("big",), prefix="k", value="v"):
    p = r.pipeline(transaction=False)
    for i in range(n):
        p.execute_command("TAG.SET", f"{prefix}{i}", value, "TAGS", len(tags), *tags)
        if i % 5000 == 4999:
            p.execute()
            p = r.pipeline(transaction=False)
    p.execute()


class Subscriber:
    """A RESP2 connection subscribed to the events channel."""

    def __init__(self, port):
        self.conn = RawConn(port, timeout=3)
        self.conn.send("SUBSCRIBE", CHANNEL)
        assert self.conn.read(timeout=3) == [b"subscribe", CHANNEL, 1]

    def next(self, timeout=3.0) -> dict:
        msg = self.conn.read(timeout=timeout)
        assert isinstance(msg, list) and msg[:2] == [b"message", CHANNEL], msg
        return json.loads(msg[2])

    def close(self):
        self.conn.close()


def without_ts(ev: dict) -> dict:
    assert isinstance(ev.get("ts"), int), ev
    return {k: v for k, v in ev.items() if k != "ts"}


# ---------------------------------------------------------------- arguments


BAD_CALLS = {
    "no arguments": ((), ARITY),
    "TAGS alone": (("TAGS",), ARITY),
    "TAGS without tags": (("TAGS", 1), ARITY),
    "SOFT without TAGS": (("SOFT", 5000), ARITY),
    "options without tags": (("SOFT", 5000, "TAGS"), ARITY),
    "unknown option": (("FOO", "TAGS", 1, "a"), "ERR syntax error near 'FOO'"),
    "ALL twice": (("ALL", "all", "TAGS", 1, "a"), "ERR syntax error near 'all'"),
    "ASYNC twice": (("async", "ALL", "Async", "TAGS", 1, "a"), "ERR syntax error near 'Async'"),
    "SOFT twice": (("SOFT", 5000, "soft", 5000, "TAGS", 1, "a"),
                   "ERR syntax error near 'soft'"),
    "a word after the grace": (("SOFT", 5000, 5000, "TAGS", 1, "a"),
                               "ERR syntax error near '5000'"),
    "numtags 0": (("TAGS", 0, "a"), NUMTAGS),
    "numtags negative": (("TAGS", -1, "a"), NUMTAGS),
    "numtags not a number": (("TAGS", "abc", "a"), NUMTAGS),
    "numtags too large": (("TAGS", "99999999999999999999", "a"), NUMTAGS),
    "numtags above the tags": (("TAGS", 2, "a"), NUMTAGS),
    "numtags below the tags": (("TAGS", 1, "a", "b"), NUMTAGS),
    "a word after the tags": (("SOFT", 5000, "TAGS", 1, "a", "ASYNC"), NUMTAGS),
    "grace not a number": (("SOFT", "x", "TAGS", 1, "a"), NOT_INTEGER),
    "grace not an integer": (("SOFT", "1.5", "TAGS", 1, "a"), NOT_INTEGER),
    "grace missing": (("SOFT", "TAGS", 1, "a"), NOT_INTEGER),
    "grace 0": (("SOFT", 0, "TAGS", 1, "a"), GRACE_RANGE),
    "grace negative": (("SOFT", -1, "TAGS", 1, "a"), GRACE_RANGE),
    "grace above 30 days": (("SOFT", 2592000001, "TAGS", 1, "a"), GRACE_RANGE),
    "empty tag": (("SOFT", 5000, "TAGS", 1, ""), EMPTY_TAG),
    "empty tag among others": (("ALL", "TAGS", 2, "a", ""), EMPTY_TAG),
    "empty tag, hard": (("TAGS", 2, "a", ""), EMPTY_TAG),
}


@pytest.mark.parametrize("case", BAD_CALLS.keys())
def test_a_refused_invalidate_has_the_exact_error_and_changes_nothing(r, case):
    args, expected = BAD_CALLS[case]
    tag_set(r, "k1", "v", "a", "b")
    tag_set(r, "k2", "v", "a", opts=("PX", 60000))
    tag_set(r, "k3", "v", "b")
    before, info_before = dataset(r), tag_info(r)
    assert refused(r, "TAG.INVALIDATE", *args) == expected
    assert dataset(r) == before
    assert not r.exists(STALE)
    info = tag_info(r)
    for field in ("purges", "keys_purged", "keys_marked_stale", "stale_keys",
                  "events_published", "purges_in_progress"):
        assert info[field] == info_before[field], field
    assert getl(r, "k1") == [b"v", None]


def test_options_come_in_any_order_and_case(r):
    for i in range(3):
        tag_set(r, f"ab{i}", "v", "a", "b")
    tag_set(r, "a_only", "v", "a")
    assert inv(r, "async", "Soft", 60000, "all", "tags", 2, "a", "b") == 3
    assert inv(r, "ALL", "SOFT", 60000, "TAGS", 2, "b", "a") == 3
    assert inv(r, "soft", 60000, "ASYNC", "TAGS", 1, "a") == 4
    assert set(stale_hash(r)) == {b"ab0", b"ab1", b"ab2", b"a_only"}
    assert inv(r, "Async", "ALL", "tags", 2, "a", "b") == 3
    wait_until(lambda: r.dbsize() == 3, 5, what="async purge")
    assert sorted(r.keys("*")) == [b"a_only", b"tag:a", STALE]


# ---------------------------------------------------------------- hard


def test_hard_invalidate_deletes_every_key_carrying_any_tag_and_counts_them(r):
    tag_set(r, "k1", "v", "a")
    tag_set(r, "k2", "v", "b", "c")
    tag_set(r, "k3", "v", "c")
    tag_set(r, "keep", "v", "d")
    assert inv(r, "TAGS", 3, "a", "b", "nobody") == 2
    assert sorted(r.keys("*")) == [b"k3", b"keep", b"tag:c", b"tag:d"]
    assert r.smembers("tag:c") == {b"k3"}
    assert inv(r, "TAGS", 1, "a") == 0


def build_purge_dataset(r):
    for i in range(6):
        tags = ["t1"] if i % 3 == 0 else ["t2", "x"] if i % 3 == 1 else ["x"]
        tag_set(r, f"k{i}", f"v{i}", *tags)
    r.sadd("tag:t2", "plain", "gone")
    r.set("plain", "p")


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
def test_tag_purge_is_exactly_a_hard_invalidate(server, r, async_):
    sub = Subscriber(server.port)
    try:
        results = []
        for call in (("TAG.PURGE", "t1", "t2") + (("ASYNC",) if async_ else ()),
                     ("TAG.INVALIDATE",) + (("ASYNC",) if async_ else ())
                     + ("TAGS", 2, "t1", "t2")):
            r.flushall()
            build_purge_dataset(r)
            reply = r.execute_command(*call)
            wait_until(lambda: tag_info(r)["purges_in_progress"] == 0, 5, what="purge end")
            results.append((reply, dataset(r), without_ts(sub.next())))
        assert results[0] == results[1]
        reply, data, event = results[0]
        if not async_:
            # (The ASYNC reply: test_an_async_reply_counts_the_selected_keys_that_exist.)
            assert reply == 5
        assert sorted(data) == [b"k2", b"k5", b"tag:x"]
        assert event == {"op": "purge", "tags": ["t1", "t2"], "scopes": [], "keys": 5,
                         "source": None}
    finally:
        sub.close()


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_an_async_reply_counts_the_selected_keys_that_exist(r, mode):
    """A member of a client-written set that names no key carries no tag: the
    ASYNC reply counts the keys selected (for SOFT, those that exist), as the
    reply without ASYNC and the event do."""
    r.set("k1", "v")
    tag_set(r, "k2", "v", "a")
    r.sadd("tag:a", "k1", "gone")
    opts = ("SOFT", 60000) if mode == "soft" else ()
    assert inv(r, *opts, "ASYNC", "TAGS", 1, "a") == 2
    wait_until(lambda: tag_info(r)["purges_in_progress"] == 0, 5, what="the call ended")
    if mode == "soft":
        assert set(stale_hash(r)) == {b"k1", b"k2"}
    else:
        assert r.keys("k*") == []


# ---------------------------------------------------------------- ALL


def test_all_selects_only_keys_carrying_every_tag(r):
    tag_set(r, "ab", "v", "a", "b")
    tag_set(r, "abc", "v", "a", "b", "c")
    tag_set(r, "a", "v", "a")
    tag_set(r, "bc", "v", "b", "c")
    assert inv(r, "ALL", "TAGS", 2, "a", "b") == 2
    assert sorted(r.keys("*")) == [b"a", b"bc", b"tag:a", b"tag:b", b"tag:c"]
    assert r.smembers("tag:a") == {b"a"}
    assert r.smembers("tag:b") == {b"bc"}
    assert r.smembers("tag:c") == {b"bc"}
    assert tags_of(r, "bc") == {b"b", b"c"}
    # A tag nobody carries selects nothing.
    assert inv(r, "ALL", "TAGS", 2, "b", "nobody") == 0
    assert r.get("bc") == b"v"
    # ALL of one tag is any-of.
    assert inv(r, "ALL", "TAGS", 1, "c") == 1
    assert sorted(r.keys("*")) == [b"a", b"tag:a"]


def test_all_honours_client_written_tag_sets(r):
    for k in ("k1", "k2", "k3", "k4"):
        r.set(k, "v")
    r.sadd("tag:a", "k1", "k2", "k4", "missing")
    r.sadd("tag:b", "k2", "k3", "k4", "missing")
    assert inv(r, "ALL", "SOFT", 60000, "TAGS", 2, "a", "b") == 2
    assert stale_hash(r) == {b"k2": b"0", b"k4": b"0"}
    assert r.get("k2") == b"v" and 0 < r.pttl("k2") <= 60000
    assert r.pttl("k1") == -1 and r.pttl("k3") == -1
    assert inv(r, "ALL", "TAGS", 2, "b", "a") == 2
    assert sorted(r.keys("k*")) == [b"k1", b"k3"]
    assert r.smembers("tag:a") == {b"k1"}
    assert r.smembers("tag:b") == {b"k3"}
    assert not r.exists(STALE)


# ---------------------------------------------------------------- soft


def test_soft_invalidation_keeps_the_value_readable_and_caps_its_ttl(r):
    tag_set(r, "k1", "v1", "a", "b")
    tag_set(r, "k2", "v2", "a")
    tag_set(r, "other", "o", "c")
    assert soft(r, 5000, "a") == 2
    assert r.get("k1") == b"v1" and r.get("k2") == b"v2"
    assert tags_of(r, "k1") == {b"a", b"b"} and tags_of(r, "k2") == {b"a"}
    assert r.smembers("tag:a") == {b"k1", b"k2"}
    for k in ("k1", "k2"):
        assert 4000 < r.pttl(k) <= 5000, r.pttl(k)
    assert r.pttl("other") == -1
    assert stale_hash(r) == {b"k1": b"0", b"k2": b"0"}
    assert getl(r, "other") == [b"o", None]


def test_soft_invalidation_keeps_an_earlier_expiry(r):
    tag_set(r, "short", "v", "a", opts=("PX", 1000))
    tag_set(r, "long", "v", "a", opts=("PX", 600000))
    assert soft(r, 60000, "a") == 2
    assert 0 < r.pttl("short") <= 1000
    assert 50000 < r.pttl("long") <= 60000
    assert set(stale_hash(r)) == {b"short", b"long"}


def test_soft_reply_counts_selected_keys_that_exist_including_stale_ones(r):
    tag_set(r, "k1", "v", "a")
    tag_set(r, "k2", "v", "a", "b")
    r.sadd("tag:b", "never-written")
    assert soft(r, 60000, "a", "b") == 2
    assert soft(r, 60000, "b") == 1
    assert soft(r, 60000, "a", "b") == 2
    assert soft(r, 60000, "nobody") == 0
    assert not r.exists("never-written")
    assert set(stale_hash(r)) == {b"k1", b"k2"}


def test_a_key_stale_twice_keeps_the_earlier_end(r):
    tag_set(r, "k", "v", "a")
    assert soft(r, 5000, "a") == 1
    assert soft(r, 60000, "a") == 1
    assert 4000 < r.pttl("k") <= 5000
    assert soft(r, 1000, "a") == 1
    assert 0 < r.pttl("k") <= 1000
    assert stale_hash(r) == {b"k": b"0"}


def test_a_hard_purge_deletes_a_stale_key(r):
    tag_set(r, "k1", "v", "a")
    tag_set(r, "k2", "v", "a")
    assert soft(r, 60000, "a") == 2
    assert r.execute_command("TAG.PURGE", "a") == 2
    assert r.dbsize() == 0
    assert not r.exists(STALE)


def test_the_end_of_the_grace_deletes_the_key_and_its_stale_mark(r):
    tag_set(r, "k", "v", "a")
    tag_set(r, "keep", "v", "b")
    assert soft(r, 100, "a") == 1
    wait_until(lambda: not r.exists("k"), 3, what="the grace ran out")
    wait_until(lambda: not r.exists(STALE), 2, what="the stale mark went")
    assert r.smembers("tag:a") == set()
    assert getl(r, "keep") == [b"v", None]


# ---------------------------------------------------------------- TAG.GETL on a stale key


def test_getl_on_a_stale_key_gives_the_value_to_all_and_a_token_to_the_first(server, r):
    tag_set(r, "k", "v", "a")
    tag_set(r, "fresh", "f", "b")
    assert getl(r, "k") == [b"v", None]
    assert soft(r, 60000, "a") == 1
    token = refresh_token(r, "k")
    assert getl(r, "k") == [b"v", None]
    other = server.client()
    t0 = time.monotonic()
    assert getl(other, "k", "WAIT", 3000) == [b"v", None]
    assert getl(other, "k", "TTL", 100, "WAIT", 3000) == [b"v", None]
    assert time.monotonic() - t0 < 0.5
    assert getl(r, "fresh") == [b"f", None]
    assert getl(r, "fresh", "WAIT", 1000) == [b"f", None]
    assert isinstance(token, bytes)


def test_a_lapsed_refresh_lease_goes_to_the_next_caller(r):
    tag_set(r, "k", "v", "a")
    assert soft(r, 60000, "a") == 1
    t1 = refresh_token(r, "k", b"v", "TTL", 100)
    assert getl(r, "k") == [b"v", None]
    wait_until(lambda: tag_info(r)["leases_outstanding"] == 0, 1, interval=0.01,
               what="the refresh lease lapsed")
    t2 = refresh_token(r, "k")
    assert t2 != t1
    assert getl(r, "k") == [b"v", None]
    assert fill(r, "k", "late", t1, "a") is None
    assert r.get("k") == b"v"
    assert fill(r, "k", "new", t2, "a") == b"OK"
    assert getl(r, "k") == [b"new", None]


def test_a_soft_reinvalidation_voids_the_refresh_lease(r):
    tag_set(r, "k", "v", "a")
    assert soft(r, 60000, "a") == 1
    t1 = refresh_token(r, "k")
    assert getl(r, "k") == [b"v", None]
    assert soft(r, 60000, "a") == 1
    t2 = refresh_token(r, "k")
    assert t2 != t1
    assert getl(r, "k") == [b"v", None]
    assert fill(r, "k", "old", t1, "a") is None
    assert r.get("k") == b"v"
    assert fill(r, "k", "new", t2, "a") == b"OK"
    assert r.get("k") == b"new"


def test_the_refresh_with_the_token_stores_and_makes_the_key_fresh(r):
    tag_set(r, "k", "v", "a", "b")
    assert soft(r, 60000, "a") == 1
    token = refresh_token(r, "k")
    assert fill(r, "k", "new", token, "a", "c") == b"OK"
    assert r.get("k") == b"new"
    assert tags_of(r, "k") == {b"a", b"c"}
    assert r.pttl("k") == -1
    assert not r.hexists(STALE, "k")
    assert not r.exists(STALE)
    assert getl(r, "k") == [b"new", None]
    assert getl(r, "k") == [b"new", None]
    # The token was good for one store.
    assert fill(r, "k", "again", token, "a") is None
    assert r.get("k") == b"new"


def test_a_refresh_computed_before_a_later_soft_invalidation_is_refused(r):
    tag_set(r, "k", "v", "a", "b")
    assert soft(r, 60000, "a") == 1
    token = refresh_token(r, "k")
    assert soft(r, 60000, "b") == 1
    assert fill(r, "k", "computed", token, "a", "b") is None
    assert r.get("k") == b"v"
    assert r.hexists(STALE, "k")
    assert tags_of(r, "k") == {b"a", b"b"}


def test_a_refresh_computed_before_a_later_hard_invalidation_is_refused(r):
    tag_set(r, "k", "v", "a", "b")
    assert soft(r, 60000, "a") == 1
    token = refresh_token(r, "k")
    assert inv(r, "TAGS", 1, "b") == 1
    assert fill(r, "k", "computed", token, "a", "b") is None
    assert not r.exists("k")
    assert not r.exists("tag:a") and not r.exists("tag:b")
    assert not r.exists(STALE)


# ---------------------------------------------------------------- hygiene


def _restore_replace(r):
    r.set("src", "new")
    r.restore("k", 0, r.dump("src"), replace=True)
    r.delete("src")


def _expire(r):
    r.pexpire("k", 30)
    wait_until(lambda: not r.exists("k"), 2, what="k expired")


ENDING = {
    "SET": (lambda r: r.set("k", "new"), "k", 0, b"new"),
    "TAG.SET": (lambda r: tag_set(r, "k", "new", "a"), "k", 0, b"new"),
    "RESTORE REPLACE": (_restore_replace, "k", 0, b"new"),
    "DEL": (lambda r: r.delete("k"), None, 0, None),
    "expiry": (_expire, None, 0, None),
    "RENAME": (lambda r: r.rename("k", "k2"), "k2", 0, b"v"),
    "MOVE": (lambda r: r.move("k", 1), "k", 1, b"v"),
}


@pytest.mark.parametrize("how", ENDING.keys())
def test_a_replacing_write_delete_expiry_rename_or_move_ends_the_stale_state(server, how):
    r = server.client()
    tag_set(r, "k", "v", "a")
    tag_set(r, "other", "v", "a")
    assert soft(r, 60000, "a") == 2
    assert stale_hash(r) == {b"k": b"0", b"other": b"0"}
    change, now_at, db, value = ENDING[how]
    change(r)
    wait_until(lambda: not r.hexists(STALE, "k"), 2, what="k's stale mark went")
    assert stale_hash(r) == {b"other": b"0"}
    if now_at is not None:
        c = server.client(db=db)
        assert not c.hexists(STALE, now_at)
        assert not c.exists(STALE) or db == 0
        assert getl(c, now_at) == [value, None]
    # The other key is still stale.
    refresh_token(r, "other")


IN_PLACE = {
    "APPEND": (lambda r: r.append("k", "+"), b"v+", lambda p: 50000 < p <= 60000),
    "SETRANGE": (lambda r: r.setrange("k", 0, "w"), b"w", lambda p: 50000 < p <= 60000),
    "EXPIRE": (lambda r: r.expire("k", 1000), b"v", lambda p: 900000 < p <= 1000000),
    "PERSIST": (lambda r: r.persist("k"), b"v", lambda p: p == -1),
}


@pytest.mark.parametrize("how", IN_PLACE.keys())
def test_an_in_place_change_or_a_new_lifetime_keeps_the_key_stale(r, how):
    tag_set(r, "k", "v", "a")
    assert soft(r, 60000, "a") == 1
    change, value, pttl_ok = IN_PLACE[how]
    change(r)
    assert pttl_ok(r.pttl("k")), r.pttl("k")
    assert stale_hash(r) == {b"k": b"0"}
    refresh_token(r, "k", value)
    assert getl(r, "k") == [value, None]
    assert tags_of(r, "k") == {b"a"}


# ---------------------------------------------------------------- tracking and events


def test_tracking_clients_are_told_of_every_key_marked_stale(server, r):
    tag_set(r, "k1", "v", "a")
    tag_set(r, "k2", "v", "a", "b")
    tag_set(r, "k3", "v", "b")
    conn = RawConn(server.port)
    try:
        assert isinstance(conn.command("HELLO", 3), dict)
        assert conn.command("CLIENT", "TRACKING", "on") == b"OK"
        for k in ("k1", "k2", "k3"):
            assert conn.command("GET", k) == b"v"
        assert soft(r, 60000, "a") == 2
        conn.send("PING")
        seen = []
        for _ in range(20):
            msg = conn.read(timeout=5)
            if not isinstance(msg, Push):
                assert msg == b"PONG"
                break
            assert msg[0] == b"invalidate", msg
            seen.extend(msg[1] or [])
        else:
            raise AssertionError("no PONG after 20 messages")
        assert sorted(seen) == [b"k1", b"k2"]
        # Asked again, the client is served the stale value.
        assert conn.command("GET", "k1") == b"v"
    finally:
        conn.close()


def test_events_say_stale_with_the_grace_and_all_for_an_all_selection(server, r):
    tag_set(r, "k1", "v", "a", "b")
    tag_set(r, "k2", "v", "a")
    tag_set(r, "k3", "v", "b")
    sub = Subscriber(server.port)
    try:
        base = {"scopes": [], "source": None}
        assert soft(r, 5000, "a") == 2
        assert without_ts(sub.next()) == dict(base, op="stale", grace_ms=5000, keys=2,
                                              tags=["a"])
        assert inv(r, "ALL", "SOFT", 7000, "TAGS", 2, "a", "b") == 1
        assert without_ts(sub.next()) == dict(base, op="stale", grace_ms=7000, keys=1,
                                              tags=["a", "b"], match="all")
        assert soft(r, 9000, "nobody") == 0
        assert without_ts(sub.next()) == dict(base, op="stale", grace_ms=9000, keys=0,
                                              tags=["nobody"])
        assert inv(r, "ALL", "TAGS", 2, "a", "b") == 1
        assert without_ts(sub.next()) == dict(base, op="purge", keys=1, tags=["a", "b"],
                                              match="all")
        assert inv(r, "TAGS", 2, "a", "b") == 2
        assert without_ts(sub.next()) == dict(base, op="purge", keys=2, tags=["a", "b"])
        with pytest.raises((TimeoutError, OSError)):
            sub.conn.read(timeout=0.3)
    finally:
        sub.close()


def test_tag_info_counts_stale_keys_marks_served_values_and_refresh_leases(r):
    fields = ("stale_keys", "keys_marked_stale", "stale_served", "refresh_leases")

    def counts():
        i = tag_info(r)
        return tuple(i[f] for f in fields)

    assert counts() == (0, 0, 0, 0)
    for k in ("k1", "k2", "k3"):
        tag_set(r, k, "v", "a")
    tag_set(r, "fresh", "v", "b")
    assert soft(r, 60000, "a") == 3
    assert counts() == (3, 3, 0, 0)
    assert inv(r, "SOFT", 60000, "TAGS", 2, "a", "nobody") == 3
    assert counts() == (3, 6, 0, 0)
    token = refresh_token(r, "k1")
    assert getl(r, "k1") == [b"v", None]
    assert getl(r, "k1", "WAIT", 100) == [b"v", None]
    assert getl(r, "fresh") == [b"v", None]
    assert counts() == (3, 6, 3, 1)
    assert fill(r, "k1", "new", token, "a") == b"OK"
    assert getl(r, "k1") == [b"new", None]
    wait_tag_info(r, "stale_keys", 2)
    r.delete("k2")
    wait_tag_info(r, "stale_keys", 1)
    assert counts() == (1, 6, 3, 1)


# ---------------------------------------------------------------- sliced


def test_a_large_soft_invalidation_runs_in_slices_and_marks_every_key(servers):
    s = servers.start(module_args=SLICED)
    r = s.client()
    n = 20_000
    fill_tagged(r, n, tags=("big",))
    tag_set(r, "spared", "v", "other")
    conn = RawConn(s.port, timeout=30)
    try:
        conn.send("TAG.INVALIDATE", "SOFT", 60000, "TAGS", 1, "big")
        wait_until(lambda: tag_info(r)["purges_in_progress"] == 1, 5, interval=0.001,
                   what="the soft invalidation runs in slices")
        assert conn.read(timeout=30) == n
    finally:
        conn.close()
    assert tag_info(r)["purges_in_progress"] == 0
    assert r.hlen(STALE) == n
    assert not r.hexists(STALE, "spared")
    assert r.dbsize() == n + 1 + 2 + 1
    p = r.pipeline(transaction=False)
    for i in range(0, n, 997):
        p.pttl(f"k{i}")
    assert all(0 < x <= 60000 for x in p.execute())
    assert r.pttl("spared") == -1
    assert tag_info(r)["stale_keys"] == n


def test_async_soft_invalidation_replies_at_once_with_the_selected_count(servers):
    s = servers.start(module_args=SLICED)
    r = s.client()
    n = 3000
    fill_tagged(r, n, tags=("big",))
    sub = Subscriber(s.port)
    try:
        p = r.pipeline(transaction=False)
        p.execute_command("TAG.INVALIDATE", "SOFT", 60000, "ASYNC", "TAGS", 1, "big")
        p.execute_command("TAG.INFO")
        reply, flat = p.execute()
        assert reply == n
        info = info_pairs(flat)
        assert info["purges_in_progress"] == 1
        assert 0 < info["purge_keys_left"] <= n
        wait_until(lambda: tag_info(r)["purges_in_progress"] == 0, 10, what="the slices ended")
        assert r.hlen(STALE) == n
        assert without_ts(sub.next()) == {"op": "stale", "grace_ms": 60000, "keys": n,
                                          "tags": ["big"], "scopes": [], "source": None}
    finally:
        sub.close()
    assert r.get("k0") == b"v" and 0 < r.pttl("k0") <= 60000


def test_a_large_all_selection_runs_in_slices(servers):
    s = servers.start(module_args=SLICED)
    r = s.client()
    n = 3000
    fill_tagged(r, n, tags=("a", "b"), prefix="ab")
    fill_tagged(r, 500, tags=("a",), prefix="a")
    fill_tagged(r, 500, tags=("b",), prefix="b")
    # Soft, waiting for the reply.
    assert inv(r, "ALL", "SOFT", 60000, "TAGS", 2, "a", "b") == n
    assert r.hlen(STALE) == n
    assert not r.hexists(STALE, "a0") and not r.hexists(STALE, "b0")
    assert r.pttl("a0") == -1 and 0 < r.pttl("ab0") <= 60000
    # Hard, replying at once.
    p = r.pipeline(transaction=False)
    p.execute_command("TAG.INVALIDATE", "ALL", "ASYNC", "TAGS", 2, "a", "b")
    p.execute_command("TAG.INFO")
    reply, flat = p.execute()
    assert reply == n
    info = info_pairs(flat)
    assert info["purges_in_progress"] == 1
    wait_until(lambda: tag_info(r)["purges_in_progress"] == 0, 10, what="the slices ended")
    assert r.keys("ab*") == []
    assert len(r.keys("a[0-9]*")) == 500 and len(r.keys("b[0-9]*")) == 500
    assert r.scard("tag:a") == 500 and r.scard("tag:b") == 500
    assert not r.exists(STALE)


# ---------------------------------------------------------------- ACL


def test_soft_invalidation_needs_the_permission_pexpire_needs(server, r):
    tag_set(r, "u:1", "v", "a")
    tag_set(r, "u:2", "v", "a")
    u = acl_client(server, r, "np", "pw", "~u:*", "~tag:*", "+@all", "-pexpire")
    before, marked = dataset(r), tag_info(r)["keys_marked_stale"]
    # The error names the first selected key it met (the set's order).
    assert refused(u, "TAG.INVALIDATE", "SOFT", 60000, "TAGS", 1, "a") in (
        noperm_key(b"u:1"), noperm_key(b"u:2"))
    assert dataset(r) == before
    assert not r.exists(STALE)
    assert tag_info(r)["keys_marked_stale"] == marked
    assert getl(r, "u:1") == [b"v", None]


def test_soft_invalidation_of_a_key_the_user_may_not_touch_is_refused(server, r):
    tag_set(r, "u:1", "v", "b")
    tag_set(r, "other:1", "v", "b")
    tag_set(r, "u:2", "v", "c")
    u = acl_client(server, r, "up", "pw", "~u:*", "~tag:*", "+@all")
    before = dataset(r)
    assert refused(u, "TAG.INVALIDATE", "SOFT", 60000, "TAGS", 1, "b") == noperm_key(b"other:1")
    assert refused(u, "TAG.INVALIDATE", "SOFT", 60000, "TAGS", 2, "c", "b") \
        == noperm_key(b"other:1")
    assert dataset(r) == before
    assert not r.exists(STALE)
    # Its own keys it may mark.
    assert u.execute_command("TAG.INVALIDATE", "SOFT", 60000, "TAGS", 1, "c") == 1
    assert stale_hash(r) == {b"u:2": b"0"}


# ---------------------------------------------------------------- replication, persistence


def test_a_replica_follows_soft_invalidations(master_replica):
    master, replica = master_replica
    m, rc = master.client(), replica.client()
    for i in range(10):
        tag_set(m, f"k{i}", f"v{i}", "a" if i % 2 else "b", *(("c",) if i % 3 == 0 else ()))
    tag_set(m, "short", "v", "a", opts=("PX", 30000))
    assert soft(m, 60000, "a") == 6
    assert inv(m, "ALL", "SOFT", 40000, "TAGS", 2, "b", "c") == 2
    assert soft(m, 50000, "c") == 4
    wait_sync(m, rc)
    assert digest(rc) == digest(m)
    assert rc.hgetall(STALE) == m.hgetall(STALE)
    assert len(m.hgetall(STALE)) == 8
    for k in m.keys("*"):
        if m.type(k) == b"string":
            pm, pr = m.pttl(k), rc.pttl(k)
            assert (pm == -1) == (pr == -1), k
            assert abs(pm - pr) <= 1000, (k, pm, pr)
    assert 0 < rc.pttl("short") <= 30000
    assert rc.pttl("k0") <= 40000 and rc.pttl("k3") <= 50000


def test_a_stale_key_is_still_stale_after_debug_reload(r):
    tag_set(r, "k", "v", "a")
    tag_set(r, "fresh", "f", "b")
    assert soft(r, 60000, "a") == 1
    assert r.execute_command("DEBUG", "RELOAD") == b"OK"
    assert stale_hash(r) == {b"k": b"0"}
    assert 50000 < r.pttl("k") <= 60000
    assert tags_of(r, "k") == {b"a"}
    token = refresh_token(r, "k")
    assert getl(r, "k") == [b"v", None]
    assert getl(r, "fresh") == [b"f", None]
    assert fill(r, "k", "new", token, "a") == b"OK"
    assert getl(r, "k") == [b"new", None]


def test_a_promoted_replica_hands_the_refresh_token_to_the_first_caller(master_replica):
    master, replica = master_replica
    m, rc = master.client(), replica.client()
    tag_set(m, "k", "v", "a")
    tag_set(m, "fresh", "f", "b")
    assert soft(m, 60000, "a") == 1
    wait_sync(m, rc)
    master.stop()
    assert rc.execute_command("REPLICAOF", "NO", "ONE") == b"OK"
    assert rc.hgetall(STALE) == {b"k": b"0"}
    token = refresh_token(rc, "k")
    assert getl(rc, "k") == [b"v", None]
    assert getl(rc, "fresh") == [b"f", None]
    assert fill(rc, "k", "new", token, "a") == b"OK"
    assert getl(rc, "k") == [b"new", None]
    assert not rc.exists(STALE)


# ---------------------------------------------------------------- many readers


def test_200_readers_of_a_hot_stale_key_one_refreshes_none_waits(server, r):
    n = 200
    tag_set(r, "hot", "v", "a")
    clients = [server.client(socket_timeout=5) for _ in range(n)]
    for c in clients:
        assert c.ping()
    barrier = threading.Barrier(n + 1)
    invalidated = threading.Event()
    results = [None] * n  # per thread: list of (after_invalidation, reply, seconds)

    def reader(i):
        out = []
        results[i] = out
        try:
            barrier.wait(10)
            deadline = time.monotonic() + 10
            after_until = None
            for _ in range(400):
                now = time.monotonic()
                if now > deadline:
                    break
                if after_until is None and invalidated.is_set():
                    after_until = now + 0.5
                if after_until is not None and now > after_until:
                    break
                after = invalidated.is_set()
                t0 = time.monotonic()
                reply = clients[i].execute_command("TAG.GETL", "hot", "WAIT", 3000)
                out.append((after, reply, time.monotonic() - t0))
                time.sleep(0.03)
        except Exception as e:  # noqa: BLE001 - reported below
            out.append(("error", e, 0))

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait(10)
    time.sleep(0.1)
    assert soft(r, 60000, "a") == 1
    invalidated.set()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    calls = [c for out in results for c in out]
    errors = [c for c in calls if c[0] == "error"]
    assert not errors, errors[:3]
    assert all(any(after for after, _, _ in out) for out in results), \
        "every reader read after the invalidation"
    assert all(reply[0] == b"v" for _, reply, _ in calls), \
        [reply for _, reply, _ in calls if reply[0] != b"v"][:5]
    tokens = [reply[1] for _, reply, _ in calls if reply[1] is not None]
    assert len(tokens) == 1, f"{len(tokens)} refresh tokens handed out"
    # Each call asked to WAIT 3 s: a reader that was blocked would show it.
    slowest = max(sec for _, _, sec in calls)
    assert slowest < 1.0, slowest
    i = tag_info(r)
    assert i["refresh_leases"] == 1
    assert i["lease_waiters"] == 0
    assert fill(r, "hot", "new", tokens[0], "a") == b"OK"
    assert getl(r, "hot") == [b"new", None]


# ---------------------------------------------------------------- restarts

from harness import server_time_ms, wait_aof_rewrite, wait_server_time_past  # noqa: E402


def pexpiretime(r, key) -> int:
    return r.execute_command("PEXPIRETIME", key)


@pytest.mark.parametrize("how", ["aof", "aof-rewritten", "rdb"])
def test_stale_keys_survive_a_restart(servers, how):
    """From the AOF as written command by command, from an AOF rewritten
    (BGREWRITEAOF), and from an RDB (SAVE, then the server killed): the same
    keys stale, until the same instants; the first TAG.GETL gets a token."""
    aof = how.startswith("aof")
    s = servers.start(extra_args=["--appendonly", "yes"] if aof else [])
    r = s.client()
    tag_set(r, "k", "v", "a")
    tag_set(r, "long", "l", "a", opts=("PX", 600000))
    tag_set(r, "fresh", "f", "b")
    # Soft-expiring, still fresh.
    tag_set(r, "soon", "s", "c", opts=("PX", 600000, "STALE", 60000))
    assert soft(r, 60000, "a") == 2
    before = stale_hash(r)
    assert before[b"k"] == b"0" and before[b"long"] == b"0"
    assert int(before[b"soon"]) == pexpiretime(r, "soon") - 60000
    assert sorted(before) == [b"k", b"long", b"soon"]
    ends = {k: pexpiretime(r, k) for k in ("k", "long", "soon")}
    assert pexpiretime(r, "fresh") == -1
    stale_keys = tag_info(r)["stale_keys"]
    if how == "aof-rewritten":
        r.execute_command("BGREWRITEAOF")
        wait_aof_rewrite(r)
    if aof:
        r = s.restart(graceful=True)
        assert not (s.dir / "dump.rdb").exists()
    else:
        assert r.save()
        r = s.restart(graceful=False)
    assert stale_hash(r) == before
    assert {k: pexpiretime(r, k) for k in ("k", "long", "soon")} == ends
    for k in ("k", "long"):
        assert 0 < r.pttl(k) <= 60000
    assert r.pttl("fresh") == -1
    assert tags_of(r, "k") == {b"a"} and tags_of(r, "long") == {b"a"}
    assert tag_info(r)["stale_keys"] == stale_keys
    other = s.client()
    token = refresh_token(r, "k")
    assert getl(other, "k") == [b"v", None]
    refresh_token(other, "long", b"l")
    assert getl(r, "long") == [b"l", None]
    assert getl(r, "fresh") == [b"f", None]
    assert getl(r, "soon") == [b"s", None]
    assert fill(r, "k", "new", token, "a") == b"OK"
    assert getl(other, "k") == [b"new", None]
    assert set(stale_hash(r)) == {b"long", b"soon"}


# ---------------------------------------------------------------- TAG.SET ... STALE


def test_tag_set_stale_is_fresh_then_stale_then_gone(server, r):
    t0 = server_time_ms(r)
    assert tag_set(r, "k", "v", "t", opts=("PX", 300, "STALE", 5000)) == b"OK"
    t1 = server_time_ms(r)
    assert getl(r, "k") == [b"v", None]
    fresh_until = int(r.hget(STALE, "k"))
    assert t0 + 300 <= fresh_until <= t1 + 300
    assert pexpiretime(r, "k") == fresh_until + 5000
    assert 5000 < r.pttl("k") <= 5300
    assert tags_of(r, "k") == {b"t"}
    wait_server_time_past(r, fresh_until)
    other = server.client()
    token = refresh_token(r, "k")
    assert getl(other, "k") == [b"v", None]
    t0 = time.monotonic()
    assert getl(other, "k", "WAIT", 2000) == [b"v", None]
    assert time.monotonic() - t0 < 1
    assert r.get("k") == b"v"
    assert pexpiretime(r, "k") == fresh_until + 5000
    # The refresh stores and the key is fresh, with no soft expiry.
    assert fill(r, "k", "new", token, "t") == b"OK"
    assert getl(other, "k") == [b"new", None]
    assert r.pttl("k") == -1
    assert not r.exists(STALE)

    # PX 100 STALE 400: fresh, stale, then gone with its mark and tags.
    assert tag_set(r, "s", "v", "t", opts=("px", 100, "stale", 400)) == b"OK"
    fresh_until = int(r.hget(STALE, "s"))
    end = pexpiretime(r, "s")
    assert end == fresh_until + 400
    wait_server_time_past(r, fresh_until)
    token = refresh_token(r, "s")
    assert getl(other, "s") == [b"v", None]
    wait_until(lambda: not r.exists("s"), 3, what="the soft expiry ended")
    assert server_time_ms(r) >= end
    wait_until(lambda: not r.exists(STALE), 2, what="the stale mark went")
    assert r.smembers("tag:t") == {b"k"}
    assert isinstance(token, bytes)


@pytest.mark.parametrize("how", ["soft-expiry", "soft-invalidation"])
def test_a_refresh_lease_still_out_when_the_key_expires_is_an_ordinary_fill_lease(
        server, r, how):
    """SPEC: "A refresh lease still out when the key expires is an ordinary
    fill lease from then on (others get [nil, nil] and may WAIT)." """
    if how == "soft-expiry":
        assert tag_set(r, "s", "v", "t", opts=("PX", 100, "STALE", 400)) == b"OK"
        wait_server_time_past(r, int(r.hget(STALE, "s")))
    else:
        tag_set(r, "s", "v", "t")
        assert soft(r, 400, "t") == 1
    token = refresh_token(r, "s")
    other = server.client()
    assert getl(other, "s") == [b"v", None]
    wait_until(lambda: not r.exists("s"), 3, what="the key expired")
    assert getl(other, "s") == [None, None]
    assert fill(r, "s", "again", token, "t") == b"OK"
    assert getl(other, "s") == [b"again", None]


STALE_NEEDS_EXPIRY = "ERR STALE needs an expiry: EX, PX, EXAT or PXAT"
STALE_RANGE = "ERR STALE must be between 1 and 2592000000 milliseconds"

STALE_ERRORS = {
    "no expiry": (("STALE", 5000), STALE_NEEDS_EXPIRY),
    "KEEPTTL": (("KEEPTTL", "STALE", 5000), STALE_NEEDS_EXPIRY),
    "KEEPTTL after": (("STALE", 5000, "KEEPTTL"), STALE_NEEDS_EXPIRY),
    "STALE 0": (("PX", 1000, "STALE", 0), STALE_RANGE),
    "STALE negative": (("PX", 1000, "STALE", -1), STALE_RANGE),
    "STALE above 30 days": (("PX", 1000, "STALE", 2592000001), STALE_RANGE),
    "STALE twice": (("PX", 1000, "STALE", 10, "STALE", 10), "ERR syntax error near 'STALE'"),
    "STALE twice, any case": (("stale", 10, "EX", 10, "Stale", 10),
                              "ERR syntax error near 'Stale'"),
}


@pytest.mark.parametrize("case", STALE_ERRORS.keys())
def test_a_refused_stale_option_has_the_exact_error_and_changes_nothing(r, case):
    args, expected = STALE_ERRORS[case]
    tag_set(r, "k", "old", "a", opts=("PX", 60000, "STALE", 1000))
    tag_set(r, "other", "v", "b")
    before = dataset(r)
    marks = stale_hash(r)
    for key in ("k", "new"):
        assert refused(r, "TAG.SET", key, "v", *args, "TAGS", 1, "t") == expected
    assert dataset(r) == before
    assert stale_hash(r) == marks
    assert getl(r, "k") == [b"old", None]


def test_stale_accepts_its_bounds(r):
    assert tag_set(r, "k1", "v", "t", opts=("PX", 1000, "STALE", 1)) == b"OK"
    assert tag_set(r, "k2", "v", "t", opts=("EX", 10, "STALE", 2592000000)) == b"OK"
    assert 2592000000 < r.pttl("k2") <= 2592010000
    assert sorted(stale_hash(r)) == [b"k1", b"k2"]


def test_a_replica_of_a_master_that_ran_tag_set_stale_is_identical(master_replica):
    master, replica = master_replica
    m, rc = master.client(), replica.client()
    now = server_time_ms(m)
    assert tag_set(m, "fresh", "v", "t", opts=("PX", 60000, "STALE", 30000)) == b"OK"
    assert tag_set(m, "soon", "v", "t", opts=("PX", 100, "STALE", 60000)) == b"OK"
    assert tag_set(m, "at", "v", "u", opts=("PXAT", now + 90000, "STALE", 5000)) == b"OK"
    assert tag_set(m, "plain", "v", "u") == b"OK"
    wait_sync(m, rc)
    marks = m.hgetall(STALE)
    assert sorted(marks) == [b"at", b"fresh", b"soon"]
    assert rc.hgetall(STALE) == marks
    assert digest(rc) == digest(m)
    for k in (b"at", b"fresh", b"soon"):
        assert pexpiretime(rc, k) == pexpiretime(m, k)
        assert int(marks[k]) == pexpiretime(m, k) - {b"at": 5000, b"fresh": 30000,
                                                     b"soon": 60000}[k]
    assert int(marks[b"at"]) == now + 90000
    # Past "soon"'s fresh time: the master hands out its refresh token, and
    # the replica still matches.
    wait_server_time_past(m, int(marks[b"soon"]))
    refresh_token(m, "soon")
    assert getl(m, "fresh") == [b"v", None]
    m.execute_command("TAG.SET", "plain", "w", "STALE", 1000, "PX", 50000, "TAGS", 1, "u")
    wait_sync(m, rc)
    assert rc.hgetall(STALE) == m.hgetall(STALE)
    assert len(rc.hgetall(STALE)) == 4
    assert digest(rc) == digest(m)


def test_no_purge_or_soft_invalidation_touches_the_stale_hash_for_a_user_who_may_not(server, r):
    """The module's own writes of tagcache:stale are not the caller's; a
    member naming the hash itself is, like any key."""
    tag_set(r, "k", "v", "t")
    r.execute_command("TAG.INVALIDATE", "SOFT", 60000, "TAGS", 1, "t")
    mal = acl_client(server, r, "mal", "pw", "~tag:*", "~mine:*", "+@all")
    mal.sadd("tag:evil", "tagcache:stale")
    assert refused(mal, "TAG.PURGE", "evil") == noperm_key(b"tagcache:stale")
    assert refused(mal, "TAG.INVALIDATE", "SOFT", "1", "TAGS", "1", "evil") == \
        noperm_key(b"tagcache:stale")
    assert r.hgetall("tagcache:stale") == {b"k": b"0"}
    assert r.pttl("tagcache:stale") == -1


def test_a_name_marked_stale_that_is_no_key_leaves_nothing_behind(r):
    r.sadd("tag:t", "newkey")
    assert r.execute_command("TAG.INVALIDATE", "SOFT", 60000, "TAGS", 1, "t") == 0
    assert r.exists("tagcache:stale") == 0
    assert info_pairs(r.execute_command("TAG.INFO"))["stale_keys"] == 0
    r.append("newkey", "hello")
    assert r.execute_command("TAG.GETL", "newkey") == [b"hello", None]


def test_a_client_write_of_the_stale_hash_is_the_last_word(r):
    tag_set(r, "k", "v", "t")
    r.execute_command("TAG.INVALIDATE", "SOFT", 60000, "TAGS", 1, "t")
    r.hdel("tagcache:stale", "k")
    assert r.execute_command("TAG.GETL", "k") == [b"v", None]
    assert info_pairs(r.execute_command("TAG.INFO"))["stale_keys"] == 0


def test_a_soft_invalidation_reads_the_tag_sets_with_the_callers_permission(server, r):
    """As TAG.MEMBERS would: a user who may not read a tag's index learns
    nothing of it through a soft invalidation."""
    tag_set(r, "cache:1", "v", "secret-project")
    u = acl_client(server, r, "u", "pw", "~cache:*", "+@all")
    assert refused(u, "TAG.INVALIDATE", "SOFT", "100000", "TAGS", "1", "secret-project") == \
        noperm_key(b"tag:secret-project")
    assert r.exists("tagcache:stale") == 0 and r.pttl("cache:1") == -1
