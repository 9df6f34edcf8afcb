"""Adversarial tests: interleavings of plain and module commands, ACL
corners and blocked clients that a user or an attacker can produce.

Each failing test names the SPEC.md promise it checks; the passing ones pin
the trickiest interleavings that held. Blocked clients are driven through
raw sockets; every wait is bounded.
"""

from __future__ import annotations

import socket
import time

import pytest
import redis

import harness
from harness import (WRONGTYPE, RawConn, dataset, digest, acl_client, error_text, refused,
                     server_time_ms, tag_set, tags_of, wait_server_time_past, wait_sync,
                     wait_tag_info, wait_until)


def wait_index(r, expected: dict, timeout: float = 5.0) -> None:
    """Waits until TAG.TAGS of each key and the existence of each tag set
    are as `expected` ({key: set of tags} and {tag set: True/False}): the
    index upkeep a command owes (removing a member from a tag set, ...) is
    paid after its reply."""
    def reached():
        for name, want in expected.items():
            if isinstance(want, bool):
                if bool(r.exists(name)) != want:
                    return False
            elif tags_of(r, name) != want:
                return False
        return True

    wait_until(reached, timeout, what=f"the index as {expected}")


def raw_pipeline(port: int, *cmds):
    """Sends commands in one write on a fresh connection; returns the replies."""
    c = RawConn(port)
    try:
        for cmd in cmds:
            c.send(*cmd)
        return [c.read(timeout=5) for _ in cmds]
    finally:
        c.close()


def reply_within(conn: RawConn, seconds: float):
    try:
        return conn.read(timeout=seconds)
    except (socket.timeout, TimeoutError):
        raise AssertionError(f"no reply within {seconds}s") from None


# ------------------------------------------------- a refused call changed data
# SPEC: "a command that replies an error has changed nothing (master, replica
# and AOF alike)"; "after any mix of commands ... a replica's dataset equals
# its master's".


@pytest.mark.parametrize("numadd", [1, 0], ids=["as-added-set", "as-removed-set"])
def test_tag_apply_naming_its_own_key_as_a_set_changes_nothing(master_replica, numadd):
    master, replica = master_replica
    r, rr = master.client(), replica.client()
    r.set("other", "1")
    before = dataset(r)
    assert refused(r, "TAG.APPLY", "k", "v", "PERSIST", numadd, "k") == (
        "ERR a key cannot carry the tag whose index it is")
    assert dataset(r) == before
    assert r.exists("k") == 0
    r.set("after", "1")
    wait_sync(r, rr)
    assert digest(r) == digest(rr)


# ------------------------------------------------ client-written memberships
# SPEC: "writes made by plain SADD to a tag set are honoured by TAG.PURGE like
# any other membership"; only "a write that replaces a key's value" ends its
# old tags: a key written for the first time replaces nothing.


@pytest.mark.parametrize("transaction", [False, True], ids=["pipeline", "multi"])
def test_sadd_before_the_first_write_of_the_key_is_honoured(server, r, transaction):
    p = r.pipeline(transaction=transaction)
    p.sadd("tag:t", "k")
    p.set("k", "v", ex=60)
    assert p.execute() == [1, True]
    wait_index(r, {"k": {b"t"}, "tag:t": True})
    assert r.smembers("tag:t") == {b"k"}
    assert tags_of(r, "k") == {b"t"}
    assert r.execute_command("TAG.PURGE", "t") == 1
    assert r.exists("k") == 0


# SPEC: "a write that replaces a key's value (SET, ...) ends its old tags", in
# a transaction as anywhere. A SADD that changed nothing, made earlier in its
# own round trip, must not keep the tag of a key a later EXEC overwrites.


def test_set_in_exec_ends_tags_while_another_client_queues_a_transaction(server, r):
    other = RawConn(server.port)
    try:
        other.send("MULTI")
        assert other.read(timeout=5) == b"OK"
        tag_set(r, "a", "1", "t")
        assert r.sadd("tag:t", "a") == 0
        wait_index(r, {"a": {b"t"}, "tag:t": True})
        p = r.pipeline(transaction=True)
        p.set("a", "2")
        assert p.execute() == [True]
        wait_index(r, {"a": set(), "tag:t": False})
        assert tags_of(r, "a") == set()
        assert r.exists("tag:t") == 0
        assert r.execute_command("TAG.PURGE", "t") == 0
        assert r.get("a") == b"2"
    finally:
        other.close()


def test_set_in_exec_ends_tags_after_a_refused_nested_multi(server, r):
    replies = raw_pipeline(server.port, ("MULTI",), ("MULTI",), ("DISCARD",))
    assert replies[0] == b"OK" and replies[2] == b"OK"
    tag_set(r, "a", "1", "t")
    assert r.sadd("tag:t", "a") == 0
    wait_index(r, {"a": {b"t"}, "tag:t": True})
    p = r.pipeline(transaction=True)
    p.set("a", "2")
    assert p.execute() == [True]
    wait_index(r, {"a": set(), "tag:t": False})
    assert tags_of(r, "a") == set()
    assert r.exists("tag:t") == 0


def test_sadd_then_exec_overwrite_in_one_pipeline_ends_the_tag(server, r):
    """Held: a no-op SADD before MULTI does not count for the EXEC after it."""
    tag_set(r, "a", "1", "t")
    replies = raw_pipeline(server.port, ("SADD", "tag:t", "a"), ("MULTI",),
                           ("SET", "a", "2"), ("EXEC",))
    assert replies == [0, b"OK", b"QUEUED", [b"OK"]]
    wait_index(r, {"a": set(), "tag:t": False})
    assert tags_of(r, "a") == set()
    assert r.exists("tag:t") == 0


# ------------------------------------------------------- index hygiene
# SPEC: "no tag keeps a member that no longer exists"; the index is exact for
# "cached keys whose own names begin with the tag prefix"; TAG.ADD "tags an
# existing key of any type".


def test_purge_deleting_a_tagged_tag_set_leaves_no_member_behind(master_replica):
    master, replica = master_replica
    r, rr = master.client(), replica.client()
    tag_set(r, "x", "v", "a")
    assert r.execute_command("TAG.ADD", "tag:a", "t") == 1
    assert r.smembers("tag:t") == {b"tag:a"}
    assert r.execute_command("TAG.PURGE", "a") == 1
    # tag:a was itself a member of tag:t: its deletion empties tag:t.
    wait_until(lambda: r.keys("*") == [], 5, what="no key left")
    assert r.keys("*") == []
    # The tag set comes back: it carries no tag it was not given.
    tag_set(r, "y", "v", "a")
    assert tags_of(r, "tag:a") == set()
    assert r.exists("tag:t") == 0
    assert r.execute_command("TAG.PURGE", "t") == 0
    wait_sync(r, rr)
    assert digest(r) == digest(rr)


def test_tag_tags_omits_a_tag_whose_set_expired(r):
    r.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", 0)
    tag_set(r, "k", "v", "t", "u")
    assert r.pexpire("tag:t", 1)
    # The set's expiry time is at most 1 ms past the server's clock now.
    wait_server_time_past(r, server_time_ms(r) + 1)
    assert r.execute_command("TAG.TAGS", "k") == [b"u"]


def test_rename_a_tagged_key_onto_its_own_tag_set(r):
    """Held: the set is replaced by the key, which carries nothing after."""
    tag_set(r, "a", "1", "t")
    tag_set(r, "b", "1", "t")
    r.rename("a", "tag:t")
    wait_index(r, {"tag:t": set(), "b": set()})
    assert r.type("tag:t") == b"string"
    assert tags_of(r, "tag:t") == set()
    assert tags_of(r, "b") == set()
    assert refused(r, "TAG.PURGE", "t") == WRONGTYPE


# ---------------------------------------------------------------- ACL
# SPEC: "A rule (TAG.LINK) records the user who created it, and each firing
# purges with that user's permissions: a key that user may not delete is
# left in place."


@pytest.mark.parametrize("value", [b"default\x00", b""], ids=["forged-owner", "no-owner"])
def test_rule_written_by_a_restricted_user_purges_with_its_permissions(server, r, value):
    app = acl_client(server, r, "app", "pw", "+@all", "~app:*", "~tag:*", "~tagcache:links")
    tag_set(r, "secret:1", "s", "x")
    app.hset("tagcache:links", "app:", value)
    app.set("app:x", "1")
    # The rule has fired (and purged what it could).
    wait_tag_info(r, "rule_firings", 1)
    assert r.exists("secret:1") == 1
    assert r.smembers("tag:x") == {b"secret:1"}


def test_rule_made_with_tag_link_by_a_restricted_user_spares_its_keys(server, r):
    """Held: the same rule made with TAG.LINK leaves the key in place."""
    app = acl_client(server, r, "app", "pw", "+@all", "~app:*", "~tag:*", "~tagcache:links")
    tag_set(r, "secret:1", "s", "x")
    assert app.execute_command("TAG.LINK", "app:", "") == b"OK"
    app.set("app:x", "1")
    # The rule has fired (and purged what it could).
    wait_tag_info(r, "rule_firings", 1)
    assert r.exists("secret:1") == 1


# ------------------------------------------------- scripts, waiters, unload


LIB = """#!lua name=advlib
redis.register_function('getl', function(keys, args)
  return redis.call('TAG.GETL', keys[1], 'WAIT', 1000) end)
redis.register_function('setpurge', function(keys, args)
  redis.call('SET', keys[1], 'x'); return redis.call('TAG.PURGE', args[1]) end)
"""


def test_getl_wait_cannot_block_in_scripts_and_transactions(r):
    assert r.execute_command("TAG.GETL", "k")[0] is None
    r.function_load(LIB)
    started = time.monotonic()
    assert r.eval("return redis.call('TAG.GETL', KEYS[1], 'WAIT', 1000)", 1, "k") == [None, None]
    assert r.fcall("getl", 1, "k") == [None, None]
    p = r.pipeline(transaction=True)
    p.execute_command("TAG.GETL", "k", "WAIT", 1000)
    assert p.execute() == [[None, None]]
    assert time.monotonic() - started < 0.9
    tag_set(r, "a", "1", "t")
    assert r.fcall("setpurge", 1, "a", "t") == 0
    assert r.get("a") == b"x"
    assert r.ping()


def test_waiters_through_unblock_kill_and_debug_reload(server, r):
    token = r.execute_command("TAG.GETL", "k", "TTL", 10000)[1]
    assert isinstance(token, bytes)
    conns = [RawConn(server.port, timeout=10) for _ in range(3)]
    ids = []
    for c in conns:
        c.send("CLIENT", "ID")
        ids.append(c.read(timeout=5))
        c.send("TAG.GETL", "k", "TTL", 10000, "WAIT", 5000)
    try:
        wait_until(lambda: r.info("clients")["blocked_clients"] == 3, 5, what="3 waiters")
        assert r.execute_command("CLIENT", "UNBLOCK", ids[0]) == 1
        assert reply_within(conns[0], 3) == [None, None]
        assert r.execute_command("CLIENT", "KILL", "ID", ids[1]) == 1
        r.execute_command("DEBUG", "RELOAD")
        value, lease = reply_within(conns[2], 3)
        assert value is None and isinstance(lease, bytes) and lease != token
        assert r.execute_command("TAG.SET", "k", "v", "LEASE", lease, "TAGS", 1, "t") == b"OK"
        assert r.info("clients")["blocked_clients"] == 0
        assert r.execute_command("TAG.MEMBERS", "t") == [b"k"]
    finally:
        for c in conns:
            c.close()


def unload_blocked_error() -> str:
    if harness.newer_than_7_0():
        return ("ERR Error unloading module: the module has blocked clients."
                " Please wait for them to be unblocked and try again")
    return ("ERR Error unloading module: the module has blocked clients."
            " Please wait them unblocked and try again")


UNLOAD_TIMER = ("ERR Error unloading module: the module holds timer that is not fired."
                " Please stop the timer or wait until it fires.")


def unload_once_its_timers_fired(r, timeout: float = 5.0) -> None:
    """MODULE UNLOAD, again while the server refuses it for a timer of the
    module's that has not fired yet (the only refusal allowed)."""
    def unloaded():
        try:
            reply = r.execute_command("MODULE", "UNLOAD", "tagcache")
        except redis.ResponseError as e:
            assert error_text(e) == UNLOAD_TIMER, error_text(e)
            return False
        assert reply == b"OK", reply
        return True

    wait_until(unloaded, timeout, interval=0.02, what="MODULE UNLOAD once the timers fired")


def test_module_unload_refused_with_waiters_then_reload_rebuilds(servers):
    s = servers.start(extra_args=["--enable-module-command", "yes"])
    r = s.client()
    tag_set(r, "a", "1", "t")
    tag_set(r, "b", "1", "t")
    assert r.execute_command("TAG.GETL", "k", "TTL", 100)[0] is None
    waiter = RawConn(s.port, timeout=10)
    try:
        waiter.send("TAG.GETL", "k", "TTL", 100, "WAIT", 500)
        wait_until(lambda: r.info("clients")["blocked_clients"] == 1, 5, what="a waiter")
        assert refused(r, "MODULE", "UNLOAD", "tagcache") == unload_blocked_error()
        value, lease = reply_within(waiter, 3)
        assert value is None and isinstance(lease, bytes)
    finally:
        waiter.close()
    # The lease and wait timers fire: the lease lapses, then the server lets
    # the module go once no timer of its is left.
    wait_tag_info(r, "leases_outstanding", 0)
    wait_tag_info(r, "lease_waiters", 0)
    unload_once_its_timers_fired(r)
    r.set("a", "2")          # unseen: tag:t still names it, and the sets are the data
    r.sadd("tag:u", "b")     # a client-written membership
    assert r.execute_command("MODULE", "LOAD", str(servers.module)) == b"OK"
    wait_index(r, {"b": {b"t", b"u"}})
    assert tags_of(r, "b") == {b"t", b"u"}
    assert r.execute_command("TAG.PURGE", "u") == 1
    assert r.execute_command("TAG.MEMBERS", "t") == [b"a"]


def test_promoted_replica_index_after_deletes_renames_and_expiry(master_replica):
    master, replica = master_replica
    r, rr = master.client(), replica.client()
    for i in range(50):
        opts = ("PX", 300) if i % 3 == 0 else ()
        tag_set(r, f"k{i}", "v", f"t{i % 5}", "all", opts=opts)
    r.delete("k1")
    r.set("k2", "x")
    r.rename("k4", "k4b")
    r.sadd("tag:t0", "k5")
    wait_sync(r, rr)
    rr.execute_command("REPLICAOF", "NO", "ONE")
    expiring = [f"k{i}" for i in range(0, 50, 3)]
    wait_until(lambda: rr.exists(*expiring) == 0, 5, what="expired keys gone")
    assert tags_of(rr, "k5") == {b"t0", b"all"}
    assert tags_of(rr, "k4b") == {b"t4", b"all"}
    assert rr.execute_command("TAG.PURGE", "all") == 31
    assert sorted(rr.keys("*")) == [b"k2"]
