"""Regression tests: one section per reported defect, each test named after
its item (test_item01_..., test_item02_..., ...).

Each test encodes the behaviour SPEC.md requires, with exact replies, exact
error texts and the resulting keyspace (and, where it matters, the replica's
keyspace through DEBUG DIGEST). Blocked clients are driven through raw
sockets so that they really block inside the server; every wait is bounded.
"""

from __future__ import annotations

import socket
import time

import pytest
import redis

import harness
from harness import (RawConn, RespError, acl_client, dataset, digest,
                     error_text, tag_set, tags_of, wait_aof_rewrite,
                     wait_link_up, wait_sync, wait_until)

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
I64_MAX = "9223372036854775807"


# ---------------------------------------------------------------- helpers


def esc(raw: bytes) -> str:
    """A client's bytes as an error reply must show them: printable ASCII as
    is, anything else (and ' and \\) as \\xHH with lowercase hex digits."""
    return "".join(
        chr(b) if 0x20 <= b <= 0x7E and b not in (0x27, 0x5C) else f"\\x{b:02x}"
        for b in raw
    )


def syntax_error(word: bytes) -> str:
    return f"ERR syntax error near '{esc(word)}'"


def noperm_key(key: bytes) -> str:
    return f"NOPERM this user has no permissions to access the '{esc(key)}' key"


def tag_info(r) -> dict:
    flat = r.execute_command("TAG.INFO")
    return {(k.decode() if isinstance(k, bytes) else k): v
            for k, v in zip(flat[0::2], flat[1::2])}


def lease(r, key, *opts) -> bytes:
    """Takes the lease on a missing key and returns its token."""
    reply = r.execute_command("TAG.GETL", key, *opts)
    assert isinstance(reply, list) and len(reply) == 2, reply
    value, token = reply
    assert value is None and isinstance(token, bytes) and token, reply
    return token


def fill(r, key, value, token, *tags):
    return r.execute_command("TAG.SET", key, value, "LEASE", token,
                             "TAGS", len(tags), *tags)


def blocked_clients(r) -> int:
    return r.info("clients")["blocked_clients"]


def wait_blocked(r, n: int, timeout: float = 3.0) -> None:
    wait_until(lambda: blocked_clients(r) == n, timeout, what=f"{n} blocked client(s)")


def reply_within(conn: RawConn, seconds: float):
    """The next reply on a raw connection, or a failure if none arrives in time."""
    try:
        return conn.read(timeout=seconds)
    except (socket.timeout, TimeoutError):
        raise AssertionError(f"no reply within {seconds}s") from None


def raw_reply(port: int, *args, auth: tuple | None = None):
    """One command on a fresh raw connection. An error comes back as a
    RespError holding the whole reply line as sent (invalid UTF-8 shows as
    U+FFFD, so it never equals an escaped text)."""
    conn = RawConn(port)
    try:
        if auth:
            assert conn.command("AUTH", *auth) == b"OK"
        conn.send(*args)
        return conn.read(timeout=5)
    finally:
        conn.close()


def assert_raw_error(port: int, expected: str, *args, auth: tuple | None = None) -> None:
    reply = raw_reply(port, *args, auth=auth)
    assert isinstance(reply, RespError), reply
    assert str(reply) == expected


def assert_alive(port: int) -> None:
    assert harness.ping_once(port, timeout=2.0), "the server no longer answers PING"


def refused(r, *args) -> str:
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command(*args)
    return error_text(e.value)


def set_of(r, key) -> set:
    return set(r.smembers(key))


class BareServer(harness.Server):
    """A server started without the module (it is loaded later with MODULE LOAD)."""

    def argv(self) -> list[str]:
        argv = super().argv()
        i = argv.index("--loadmodule")
        return argv[:i] + argv[i + 2 + len(self.module_args):]


# ---------------------------------------------------------------- item 1
# Leases and blocked clients never crash the server.


@pytest.mark.parametrize("order", ["set-then-kill", "kill-then-set"])
def test_item01_waiters_killed_in_the_pipeline_that_fills_the_key(server, r, order):
    for round_ in range(3):
        key = f"k{round_}"
        lease(r, key, "TTL", 5000)
        waiters = [RawConn(server.port) for _ in range(3)]
        try:
            ids = [w.command("CLIENT", "ID") for w in waiters]
            for w in waiters:
                w.send("TAG.GETL", key, "WAIT", 20000)
            wait_blocked(r, 3)
            p = r.pipeline(transaction=False)
            if order == "set-then-kill":
                p.set(key, "v")
            for i in ids:
                p.execute_command("CLIENT", "KILL", "ID", i)
            if order == "kill-then-set":
                p.set(key, "v")
            expected = [True, 1, 1, 1] if order == "set-then-kill" else [1, 1, 1, True]
            assert p.execute() == expected
            assert_alive(server.port)
            assert r.ping()
            assert r.get(key) == b"v"
        finally:
            for w in waiters:
                w.close()
    wait_blocked(r, 0)
    assert_alive(server.port)


def test_item01_waiters_timing_out_as_the_key_is_filled(server, r):
    """WAIT 20, and the key written around the moment the waits run out:
    every waiter gets one reply (the value or a timeout) and the server lives."""
    for round_ in range(12):
        key = f"t{round_}"
        lease(r, key, "TTL", 5000)
        waiters = [RawConn(server.port) for _ in range(3)]
        try:
            for w in waiters:
                w.send("TAG.GETL", key, "WAIT", 20)
            time.sleep(0.015 + 0.002 * round_)
            assert r.set(key, "v")
            assert_alive(server.port)
            for w in waiters:
                assert reply_within(w, 2.0) in ([None, None], [b"v", None])
            assert r.get(key) == b"v"
        finally:
            for w in waiters:
                w.close()
    wait_blocked(r, 0)
    assert_alive(server.port)


def test_item01_client_unblock_releases_a_waiter(server, r):
    token = lease(r, "k", "TTL", 5000)
    w = RawConn(server.port)
    w2 = RawConn(server.port)
    try:
        wid = w.command("CLIENT", "ID")
        w.send("TAG.GETL", "k", "WAIT", 20000)
        wait_blocked(r, 1)
        assert r.execute_command("CLIENT", "UNBLOCK", wid) == 1
        assert reply_within(w, 2.0) == [None, None]
        assert_alive(server.port)

        w2id = w2.command("CLIENT", "ID")
        w2.send("TAG.GETL", "k", "WAIT", 20000)
        wait_blocked(r, 1)
        assert r.execute_command("CLIENT", "UNBLOCK", w2id, "ERROR") == 1
        reply = reply_within(w2, 2.0)
        assert isinstance(reply, RespError), reply
        assert str(reply).startswith("UNBLOCKED "), str(reply)
        assert_alive(server.port)
        wait_blocked(r, 0)

        # Both connections still work, and the lease is still the first caller's.
        assert w.command("PING") == b"PONG"
        assert w2.command("PING") == b"PONG"
        assert r.execute_command("TAG.GETL", "k") == [None, None]
        assert fill(r, "k", "v", token, "a") == b"OK"
        assert r.get("k") == b"v"
    finally:
        w.close()
        w2.close()
    assert_alive(server.port)


def test_item01_client_unblock_in_the_pipeline_that_fills_the_key(server, r):
    for round_ in range(3):
        key = f"u{round_}"
        lease(r, key, "TTL", 5000)
        w = RawConn(server.port)
        try:
            wid = w.command("CLIENT", "ID")
            w.send("TAG.GETL", key, "WAIT", 20000)
            wait_blocked(r, 1)
            p = r.pipeline(transaction=False)
            p.set(key, "v")
            p.execute_command("CLIENT", "UNBLOCK", wid)
            set_reply, unblocked = p.execute()
            assert set_reply is True
            assert unblocked in (0, 1)
            assert reply_within(w, 2.0) in ([b"v", None], [None, None])
            assert w.command("PING") == b"PONG"
            assert_alive(server.port)
        finally:
            w.close()
    wait_blocked(r, 0)


# ---------------------------------------------------------------- item 2
# Error replies that echo a client's bytes are well-formed.

WORDS = [
    b"\xf0\x9f\x98\x80",  # 4-byte UTF-8 (U+1F600)
    "\u4e00".encode(),   # a character whose code point ends in 0x00
    b"a\x00b\r\n",        # NUL, CR, LF
    b"it's\\",            # quote and backslash
    b"\xff\xfe",          # invalid UTF-8
]


def test_item02_emoji_option_word(server, r):
    assert_raw_error(server.port, "ERR syntax error near '\\xf0\\x9f\\x98\\x80'",
                     "TAG.GETL", "t0", "\U0001F600".encode())
    assert_alive(server.port)
    assert r.dbsize() == 0


BAD_WORD_CALLS = {
    "TAG.GETL": lambda w: ("TAG.GETL", "t0", w),
    "TAG.SET": lambda w: ("TAG.SET", "k", "v", w, "TAGS", 1, "t"),
    "VER.SET": lambda w: ("VER.SET", "s", "k", "v", w),
}


@pytest.mark.parametrize("command", BAD_WORD_CALLS.keys())
def test_item02_unknown_option_word_is_escaped(server, r, command):
    tag_set(r, "k", "old", "t0")
    before = dataset(r)
    d = digest(r)
    # The documented example, spelt out.
    assert_raw_error(server.port, "ERR syntax error near 'a\\x00b\\x0d\\x0a'",
                     *BAD_WORD_CALLS[command](b"a\x00b\r\n"))
    assert_alive(server.port)
    for word in WORDS:
        assert_raw_error(server.port, syntax_error(word), *BAD_WORD_CALLS[command](word))
        assert_alive(server.port)
        assert dataset(r) == before, word
        assert digest(r) == d, word


def test_item02_noperm_for_a_binary_key_is_well_formed(server, r):
    """The server's own ACL check (key specs) may answer before the module;
    either way the reply is one exact, well-formed line."""
    key = b"\xff\x00k"
    acl_client(server, r, "u", "pw", "+@all", "~allowed*")
    own = raw_reply(server.port, "SET", key, "v", auth=("u", "pw"))
    assert isinstance(own, RespError) and str(own).startswith("NOPERM "), own
    reply = raw_reply(server.port, "TAG.SET", key, "v", "TAGS", 1, "t", auth=("u", "pw"))
    assert isinstance(reply, RespError), reply
    assert str(reply) in (
        "NOPERM this user has no permissions to access the '\\xff\\x00k' key", str(own))
    assert_alive(server.port)
    assert r.dbsize() == 0


def test_item02_noperm_naming_a_purged_member_is_escaped(server, r):
    """TAG.PURGE declares no keys: the module checks the members itself and
    names the one the caller may not delete."""
    key = b"\xff\x00k"
    r.set(key, "v")
    r.sadd("tag:t", key)
    acl_client(server, r, "u", "pw", "+@all", "~allowed*", "~tag:*")
    before = dataset(r)
    assert_raw_error(server.port,
                     "NOPERM this user has no permissions to access the '\\xff\\x00k' key",
                     "TAG.PURGE", "t", auth=("u", "pw"))
    assert_alive(server.port)
    assert dataset(r) == before


# ---------------------------------------------------------------- item 3
# TAG.SET only touches the old tags' sets that still hold the key.


def test_item03_deleted_tag_set_replaced_by_a_string(r):
    assert tag_set(r, "k", "v1", "t") == b"OK"
    r.delete("tag:t")
    assert tags_of(r, "k") == set()
    r.set("tag:t", "hello")
    assert tag_set(r, "k", "v2", "u") == b"OK"
    assert r.get("k") == b"v2"
    assert set_of(r, "tag:u") == {b"k"}
    assert r.get("tag:t") == b"hello"
    assert tags_of(r, "k") == {b"u"}


def test_item03_new_tag_key_holding_a_string_changes_nothing(master_replica):
    master, replica = master_replica
    m, rc = master.client(), replica.client()
    assert tag_set(m, "k", "v1", "t") == b"OK"
    m.set("tag:u", "str")
    before = dataset(m)
    assert refused(m, "TAG.SET", "k", "v2", "TAGS", 2, "t", "u") == WRONGTYPE
    assert dataset(m) == before
    assert m.get("k") == b"v1"
    assert set_of(m, "tag:t") == {b"k"}
    assert m.get("tag:u") == b"str"
    wait_sync(m, rc)
    assert rc.get("k") == b"v1"
    assert set_of(rc, "tag:t") == {b"k"}
    assert digest(rc) == digest(m)


# ---------------------------------------------------------------- item 4
# TAG.PURGE and index keys that are not sets.


def test_item04_purge_past_a_replaced_tag_set(master_replica):
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


def test_item04_purge_is_all_or_nothing_on_wrongtype(master_replica):
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


# ---------------------------------------------------------------- item 5
# A module command sees the effects of the commands before it in the same
# pipeline, transaction or script.

MODES = ["pipeline", "multi", "eval"]


@pytest.mark.parametrize("mode", MODES)
def test_item05_overwrite_then_purge(server, mode):
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


@pytest.mark.parametrize("mode", MODES)
def test_item05_rename_then_tags_and_purge(server, mode):
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


# ---------------------------------------------------------------- item 6
# Keys under the tag prefix: renamed in and out, and cached keys themselves.


def test_item06_rename_into_and_out_of_the_tag_prefix(r):
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


def test_item06_cached_key_under_the_tag_prefix_expires(r):
    assert tag_set(r, "tag:foo", "v", "bar", opts=("PX", 200)) == b"OK"
    assert set_of(r, "tag:bar") == {b"tag:foo"}
    wait_until(lambda: r.exists("tag:foo") == 0, 3, what="tag:foo expired")
    wait_until(lambda: r.exists("tag:bar") == 0, 2, what="tag:bar removed")
    assert r.execute_command("TAG.MEMBERS", "bar") == []


def test_item06_cached_key_under_the_tag_prefix_overwritten(r):
    tag_set(r, "tag:g", "v", "h")
    r.set("tag:g", "other")
    assert r.execute_command("TAG.TAGS", "tag:g") == []
    assert not r.exists("tag:h")
    assert r.get("tag:g") == b"other"


# ---------------------------------------------------------------- item 7
# Changes the index used to miss.


def test_item07_zrangestore_overwrites_a_tagged_key(r):
    tag_set(r, "d", "v", "t")
    r.zadd("src", {"a": 1})
    assert r.execute_command("ZRANGESTORE", "d", "src", 0, -1) == 1
    assert r.execute_command("TAG.TAGS", "d") == []
    assert not r.exists("tag:t")


def test_item07_sunionstore_into_a_tag_set(r):
    r.set("x", 1)
    r.sadd("s1", "x")
    assert r.sunionstore("tag:u", ["s1"]) == 1
    assert r.execute_command("TAG.TAGS", "x") == [b"u"]
    r.delete("x")
    wait_until(lambda: b"x" not in r.smembers("tag:u"), 2, what="x removed from tag:u")


def test_item07_smove_into_a_tag_set(r):
    r.set("y", 1)
    r.sadd("s2", "y")
    assert r.smove("s2", "tag:w", "y") is True
    assert r.execute_command("TAG.TAGS", "y") == [b"w"]
    r.delete("y")
    wait_until(lambda: b"y" not in r.smembers("tag:w"), 2, what="y removed from tag:w")


def test_item07_rename_a_set_into_the_tag_prefix(r):
    r.set("z", 1)
    r.sadd("s3", "z")
    r.rename("s3", "tag:q")
    assert r.execute_command("TAG.TAGS", "z") == [b"q"]
    r.delete("z")
    wait_until(lambda: b"z" not in r.smembers("tag:q"), 2, what="z removed from tag:q")


def test_item07_discarded_sadd_tags_nothing(server, r):
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


def test_item07_debug_reload_keeps_the_index(r):
    tag_set(r, "a1", "v", "x", "y")
    tag_set(r, "a2", "v", "y")
    tag_set(r, "a3", "v", "z")
    r.set("a4", "v")
    r.sadd("tag:x", "a4")
    keys = ["a1", "a2", "a3", "a4"]

    def snapshot():
        info = tag_info(r)
        section = r.info("tagcache")
        return {
            "tag_info": (info["tagged_keys"], info["tags"]),
            "info": (section["tagcache_tagged_keys"], section["tagcache_tags"]),
            "tags": {k: tags_of(r, k) for k in keys},
            "digest": digest(r),
        }

    before = snapshot()
    assert before["tags"] == {"a1": {b"x", b"y"}, "a2": {b"y"}, "a3": {b"z"}, "a4": {b"x"}}
    assert r.execute_command("DEBUG", "RELOAD") == b"OK"
    assert snapshot() == before
    assert r.execute_command("TAG.PURGE", "x") == 2
    assert set(r.keys("*")) == {b"a2", b"a3", b"tag:y", b"tag:z"}
    assert set_of(r, "tag:y") == {b"a2"}


# ---------------------------------------------------------------- item 8
# MODULE LOAD into a running server with tag sets and rules.


def test_item08_module_load_into_a_running_server(servers):
    bare = BareServer(servers.tmp / "bare", servers.module,
                      extra_args=["--enable-module-command", "yes"])
    servers.servers.append(bare)
    bare.start()
    r = bare.client()
    r.sadd("tag:t", "k1", "k2")
    r.set("k1", "a")
    r.set("k2", "b")
    r.hset("tagcache:links", "user:", "u:")
    assert r.execute_command("MODULE", "LOAD", str(servers.module)) == b"OK"
    assert r.execute_command("TAG.TAGS", "k1") == [b"t"]
    assert r.execute_command("TAG.LINKS") == [[b"user:", b"u:"]]
    r.set("k1", "fresh")
    assert r.execute_command("TAG.PURGE", "t") == 1
    assert r.get("k1") == b"fresh"
    assert not r.exists("k2")
    assert tag_set(r, "ukey", "v", "u:1") == b"OK"
    r.set("user:1", "x")
    wait_until(lambda: r.exists("ukey") == 0, 2, what="ukey purged by the rule")
    assert r.get("user:1") == b"x"


# ---------------------------------------------------------------- item 9
# tag-prefix and ver-prefix are load-time settings.


def config_value(r, name) -> bytes:
    """CONFIG GET tagcache.<name> as bytes (redis-py turns the reply into a dict)."""
    def as_bytes(v):
        return v if isinstance(v, bytes) else str(v).encode()

    reply = {as_bytes(k): as_bytes(v) for k, v in r.config_get(f"tagcache.{name}").items()}
    return reply[f"tagcache.{name}".encode()]


def immutable_error(name: str) -> str:
    return (f"ERR CONFIG SET failed (possibly related to argument 'tagcache.{name}')"
            f" - can't set immutable config")


@pytest.mark.parametrize("name,default", [("tag-prefix", b"tag:"), ("ver-prefix", b"ver:")])
def test_item09_config_set_of_a_prefix_is_refused(r, name, default):
    assert refused(r, "CONFIG", "SET", f"tagcache.{name}", "idx:") == immutable_error(name)
    assert config_value(r, name) == default
    assert tag_set(r, "k", "v", "a") == b"OK"
    assert r.execute_command("VER.SET", "s", "vk", "v") == b"OK"
    assert r.exists("tag:a") == 1
    assert not r.exists("idx:a")
    assert r.execute_command("VER.GET", "s", "vk") == b"v"
    assert [k for k in r.keys("*") if k.startswith(b"idx:")] == []


def test_item09_prefix_load_argument_through_aof_and_replica(servers):
    args = ["tag-prefix", "idx:"]
    master = servers.start(module_args=args, name="master",
                           extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    m = master.client()
    wait_aof_rewrite(m)
    replica = servers.start_replica(master, module_args=args)
    rc = replica.client()
    msg = refused(m, "CONFIG", "SET", "tagcache.tag-prefix", "tag:")
    assert msg == immutable_error("tag-prefix")
    assert config_value(m, "tag-prefix") == b"idx:"
    assert tag_set(m, "k", "v", "a") == b"OK"
    assert m.execute_command("TAG.ADD", "k", "b") == 1
    expected = {b"k", b"idx:a", b"idx:b"}
    assert set(m.keys("*")) == expected
    assert set_of(m, "idx:a") == {b"k"} and set_of(m, "idx:b") == {b"k"}
    wait_sync(m, rc)
    assert set(rc.keys("*")) == expected
    assert set_of(rc, "idx:a") == {b"k"} and set_of(rc, "idx:b") == {b"k"}
    assert tags_of(rc, "k") == {b"a", b"b"}
    d = digest(m)
    assert digest(rc) == d
    m = master.restart()
    assert set(m.keys("*")) == expected
    assert digest(m) == d
    assert tags_of(m, "k") == {b"a", b"b"}


# ---------------------------------------------------------------- item 10
# ACL: tagging needs write permission; rules purge with their creator's rights.


def test_item10_read_only_user_cannot_tag(server, r):
    r.set("secret:1", "s1")
    r.execute_command("TAG.ADD", "secret:1", "c:y")
    ro = acl_client(server, r, "ro", "pw", "+@all", "resetkeys",
                    "%R~secret:*", "~c:*", "~tag:*")
    assert ro.get("secret:1") == b"s1"
    own = refused(ro, "SET", "secret:1", "x")  # the server's own text for this
    assert own.startswith("NOPERM "), own
    before = dataset(r)
    d = digest(r)
    for args in (("TAG.ADD", "secret:1", "c:x"), ("TAG.REM", "secret:1", "c:y")):
        msg = refused(ro, *args)
        assert msg in (noperm_key(b"secret:1"), own), (args, msg)
        assert dataset(r) == before, args
        assert digest(r) == d, args
    assert tags_of(r, "secret:1") == {b"c:y"}
    assert not r.exists("tag:c:x")


def rule_scenario(r):
    r.set("secret:1", "s1")
    r.set("secret:2", "s2")
    assert r.execute_command("TAG.ADD", "secret:1", "cacheX") == 1
    assert r.execute_command("TAG.ADD", "secret:2", "cacheX") == 1
    assert tag_set(r, "cache:page", "v", "cacheX") == b"OK"
    assert set_of(r, "tag:cacheX") == {b"secret:1", b"secret:2", b"cache:page"}


def test_item10_rule_purges_with_its_creators_permissions(server, r):
    rule_scenario(r)
    lim = acl_client(server, r, "lim", "pw", "+@all", "resetkeys",
                     "~cache:*", "~tag:cache*", "~tagcache:links")
    assert lim.execute_command("TAG.LINK", "cache:trigger", "cache") == b"OK"
    r.set("cache:triggerX", "x")  # written by the default user
    wait_until(lambda: r.exists("cache:page") == 0, 2, what="cache:page purged by the rule")
    time.sleep(0.2)
    assert r.get("secret:1") == b"s1"
    assert r.get("secret:2") == b"s2"
    assert r.get("cache:triggerX") == b"x"


def test_item10_same_rule_created_by_the_default_user_deletes_them(server, r):
    rule_scenario(r)
    assert r.execute_command("TAG.LINK", "cache:trigger", "cache") == b"OK"
    r.set("cache:triggerX", "x")
    wait_until(lambda: r.exists("cache:page", "secret:1", "secret:2") == 0, 2,
               what="every key carrying cacheX purged")
    assert r.get("cache:triggerX") == b"x"
    assert not r.exists("tag:cacheX")


# ---------------------------------------------------------------- item 11
# Read commands reveal nothing the caller could not read.


def test_item11_tag_tags_lists_only_readable_tags(server, r):
    tag_set(r, "k", "v", "pub", "priv")
    u = acl_client(server, r, "u", "pw", "+@all", "~k", "~tag:pub")
    assert u.execute_command("TAG.TAGS", "k") == [b"pub"]
    assert sorted(r.execute_command("TAG.TAGS", "k")) == [b"priv", b"pub"]


def test_item11_members_and_card_do_not_depend_on_unreadable_keys(server, r):
    r.set("hidden1", "x")
    r.sadd("tag:m", "hidden1", "hidden2")
    u = acl_client(server, r, "u", "pw", "+@all", "~tag:m")
    assert sorted(u.execute_command("TAG.MEMBERS", "m")) == [b"hidden1", b"hidden2"]
    assert u.execute_command("TAG.CARD", "m") == 2
    assert r.execute_command("TAG.MEMBERS", "m") == [b"hidden1"]
    assert r.execute_command("TAG.CARD", "m") == 1


# ---------------------------------------------------------------- item 12
# A refused fill hands the lease to a waiter; numeric bounds.


def test_item12_refused_fill_hands_the_lease_to_a_waiter(server, r):
    a = server.client()
    c = server.client()
    t1 = lease(a, "g", "TTL", 5000)
    b = RawConn(server.port)
    try:
        b.send("TAG.GETL", "g", "WAIT", 5000)
        wait_blocked(r, 1)
        assert c.execute_command("TAG.PURGE", "t") == 0
        assert fill(a, "g", "v", t1, "t") is None
        assert not r.exists("g")
        reply = reply_within(b, 1.0)
        assert isinstance(reply, list) and len(reply) == 2, reply
        value, t2 = reply
        assert value is None and isinstance(t2, bytes) and t2 and t2 != t1, reply
        wait_blocked(r, 0)
        # The purge came before B's lease: B's fill stores.
        assert fill(r, "g", "v2", t2, "t") == b"OK"
        assert r.get("g") == b"v2"
        assert tags_of(r, "g") == {b"t"}
    finally:
        b.close()


def test_item12_version_overflow_is_an_error(r):
    r.set("ver:s", I64_MAX)
    for _ in range(2):
        assert refused(r, "VER.BUMP", "s") == "ERR increment or decrement would overflow"
        assert r.get("ver:s") == I64_MAX.encode()
    assert r.keys("*") == [b"ver:s"]


def test_item12_lease_ttl_and_wait_bounds(r):
    ttl_error = "ERR TTL must be between 1 and 86400000 milliseconds"
    wait_error = "ERR WAIT must be between 0 and 86400000 milliseconds"
    for ttl in (I64_MAX, 86400001, 0):
        assert refused(r, "TAG.GETL", "g", "TTL", ttl) == ttl_error
    for wait in (86400001, I64_MAX, -1):
        assert refused(r, "TAG.GETL", "g", "WAIT", wait) == wait_error
    # Nothing was handed out by the refused calls.
    assert tag_info(r)["leases_outstanding"] == 0
    lease(r, "g")
    lease(r, "g2", "TTL", 86400000)
    lease(r, "g3", "WAIT", 86400000)
    assert r.dbsize() == 0


# ---------------------------------------------------------------- item 14
# Replicas keep loading with repl-diskless-load swapdb (async loading).

SKIP_LINE = ("Skipping diskless-load because there are modules that are not aware"
             " of async replication.")
SWAP_LINE = "REPLICA sync: Swapping active DB with loaded DB"  # MASTER/PRIMARY <-> ...
DONE_LINE = "REPLICA sync: Finished with success"


def replica_log(replica) -> str:
    return replica.log.read_text(errors="replace")


def test_item14_swapdb_replica_loads_asynchronously(servers):
    master = servers.start(name="master", extra_args=[
        "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"])
    m = master.client()
    tag_set(m, "k1", "v1", "a", "b")
    m.set("k2", "v2")
    m.sadd("tag:c", "k2")
    replica = servers.start_replica(master, extra_args=["--repl-diskless-load", "swapdb"])
    rc = replica.client()
    log = replica_log(replica)
    assert log.count(DONE_LINE) == 1
    assert SKIP_LINE not in log
    assert log.count(SWAP_LINE) == 1
    assert tags_of(rc, "k1") == {b"a", b"b"}
    assert tags_of(rc, "k2") == {b"c"}
    assert digest(rc) == digest(m)

    # A second full sync from the same master (same replication id): the
    # replica keeps serving the old data while it loads the new.
    # One transaction, so that the replica cannot reconnect before the
    # writes have overflowed the backlog.
    m.config_set("repl-backlog-size", 16384)
    p = m.pipeline(transaction=True)
    p.execute_command("CLIENT", "KILL", "TYPE", "replica")
    for i in range(8):
        p.set(f"filler:{i}", "x" * (512 * 1024))
    p.execute_command("TAG.SET", "k3", "v3", "TAGS", 1, "d")
    p.delete("k1")
    p.execute()
    wait_until(lambda: replica_log(replica).count(DONE_LINE) >= 2, 15,
               what="a second full sync")
    wait_link_up(rc)
    wait_sync(m, rc)
    log = replica_log(replica)
    assert SKIP_LINE not in log
    assert log.count(SWAP_LINE) == 2
    assert tags_of(rc, "k3") == {b"d"}
    assert tags_of(rc, "k1") == set()
    assert tags_of(rc, "k2") == {b"c"}
    assert not rc.exists("tag:a") and not rc.exists("tag:b")
    assert digest(rc) == digest(m)
    # The index follows what the master does next.
    assert m.execute_command("TAG.PURGE", "c") == 1
    wait_sync(m, rc)
    assert not rc.exists("k2")
    assert rc.execute_command("TAG.MEMBERS", "d") == [b"k3"]
    assert digest(rc) == digest(m)
