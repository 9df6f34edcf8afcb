"""Versioned keys: VER.GET / VER.SET / VER.BUMP / VER.CURRENT.

The token `ver:<scope>` holds the scope's version as an integer string; values
live at `v<N>:<key>`, readable with GET by any client that builds the name.
A version never repeats: after the token is deleted, flushed or expires, the
next version is above every version handed out before.
"""

import re
import time

import pytest
import redis

from harness import (RawConn, acl_client, dataset, digest, error_text, noperm_key, refused,
                     wait_aof_rewrite, wait_sync, wait_until)

READONLY = "READONLY You can't write against a read only replica."

# Far above the clock in microseconds (~1.8e15 today): a version taken from
# here cannot be reached again by the clock, so only the module's own memory
# of the versions it handed out keeps the next one above it.
FAR = 5_000_000_000_000_000_000


def vkey(version: int, key: str) -> str:
    return f"v{version}:{key}"


def current(r, scope):
    return r.execute_command("VER.CURRENT", scope)


def ver_get(r, scope, key):
    return r.execute_command("VER.GET", scope, key)


def ver_set(r, scope, key, value, *opts):
    return r.execute_command("VER.SET", scope, key, value, *opts)


def bump(r, *scopes):
    return r.execute_command("VER.BUMP", *scopes)


# ---------------------------------------------------------------- basics


def test_round_trip(r):
    assert ver_get(r, "s", "k") is None
    assert current(r, "s") is None
    assert ver_set(r, "s", "k", "v1") == b"OK"
    n = current(r, "s")
    assert isinstance(n, int) and n > 0
    # The token is a plain integer string, readable by GET.
    assert r.get("ver:s") == str(n).encode()
    assert ver_get(r, "s", "k") == b"v1"
    # The value is an ordinary key under the version.
    assert r.get(vkey(n, "k")) == b"v1"
    assert r.ttl(vkey(n, "k")) == -1
    assert set(r.keys("*")) == {b"ver:s", vkey(n, "k").encode()}
    # Overwrite under the same version.
    assert ver_set(r, "s", "k", "v2") == b"OK"
    assert current(r, "s") == n
    assert ver_get(r, "s", "k") == b"v2"
    assert ver_get(r, "s", "other") is None
    # Scopes are independent; binary-safe values.
    assert ver_set(r, "t", "k", b"\x00\xff") == b"OK"
    assert ver_get(r, "t", "k") == b"\x00\xff"
    assert ver_get(r, "s", "k") == b"v2"


def test_ver_set_expiry_options(r):
    now = int(time.time())
    ver_set(r, "s", "ex", "v", "EX", 100)
    ver_set(r, "s", "px", "v", "px", 100000)
    ver_set(r, "s", "exat", "v", "EXAT", now + 100)
    ver_set(r, "s", "pxat", "v", "PXAT", (now + 100) * 1000 + 123)
    n = current(r, "s")
    for k in ("ex", "px", "exat"):
        ttl = r.pttl(vkey(n, k))
        assert 90_000 < ttl <= 100_000, (k, ttl)
    assert r.execute_command("PEXPIRETIME", vkey(n, "pxat")) == (now + 100) * 1000 + 123
    # The token itself gets no TTL from VER.SET.
    assert r.pttl("ver:s") == -1
    # A VER.SET without an expiry clears the value's TTL, as SET does.
    ver_set(r, "s", "ex", "v2")
    assert r.pttl(vkey(n, "ex")) == -1
    # A short TTL lapses.
    ver_set(r, "s", "short", "v", "PX", 50)
    assert ver_get(r, "s", "short") == b"v"
    wait_until(lambda: ver_get(r, "s", "short") is None, 3, what="value expiry")
    assert not r.exists(vkey(n, "short"))


def test_bump_hides_old_value(r):
    ver_set(r, "s", "k", "old")
    ver_set(r, "s", "k2", "old2")
    n1 = current(r, "s")
    n2 = bump(r, "s")
    assert isinstance(n2, int) and n2 > n1
    assert current(r, "s") == n2
    assert r.get("ver:s") == str(n2).encode()
    assert ver_get(r, "s", "k") is None
    assert ver_get(r, "s", "k2") is None
    # The old values are still there for a client that names them itself.
    assert r.get(vkey(n1, "k")) == b"old"
    assert r.get(vkey(n1, "k2")) == b"old2"
    # A write after the bump lands under the new version.
    ver_set(r, "s", "k", "new")
    assert ver_get(r, "s", "k") == b"new"
    assert r.get(vkey(n2, "k")) == b"new"
    assert r.get(vkey(n1, "k")) == b"old"
    # Bumping a scope that has no token yet creates it.
    n3 = bump(r, "fresh")
    assert isinstance(n3, int) and n3 > 0
    assert current(r, "fresh") == n3


def test_bump_several_scopes(r):
    ver_set(r, "a", "k", "va")
    ver_set(r, "b", "k", "vb")
    ver_set(r, "c", "k", "vc")
    before = {s: current(r, s) for s in ("a", "b", "c")}
    reply = bump(r, "a", "b", "new")
    assert isinstance(reply, list) and len(reply) == 3
    assert all(isinstance(x, int) for x in reply)
    assert reply[0] > before["a"] and reply[1] > before["b"]
    assert [current(r, s) for s in ("a", "b", "new")] == reply
    assert ver_get(r, "a", "k") is None
    assert ver_get(r, "b", "k") is None
    # An untouched scope keeps its version and value.
    assert current(r, "c") == before["c"]
    assert ver_get(r, "c", "k") == b"vc"
    # A scope named twice is bumped once and reported at each place.
    again = bump(r, "a", "c", "a")
    assert len(again) == 3 and again[0] == again[2]
    assert again[0] > reply[0] and again[1] > before["c"]
    assert current(r, "a") == again[0]
    # One scope: an integer, not an array.
    assert isinstance(bump(r, "a"), int)


# ---------------------------------------------------------------- never repeats


def test_versions_strictly_increase(r):
    seen = []
    ver_set(r, "s", "k", "v")
    seen.append(current(r, "s"))
    for _ in range(200):
        seen.append(bump(r, "s"))
    assert all(b > a for a, b in zip(seen, seen[1:])), "versions must strictly increase"


def test_next_version_after_token_deleted(r):
    ver_set(r, "s", "k", "v1")
    n1 = current(r, "s")
    assert r.delete("ver:s") == 1
    assert ver_get(r, "s", "k") is None
    assert current(r, "s") is None
    n2 = bump(r, "s")
    assert n2 > n1
    assert ver_get(r, "s", "k") is None
    assert r.get(vkey(n1, "k")) == b"v1"
    r.delete("ver:s")
    ver_set(r, "s", "k", "v3")
    n3 = current(r, "s")
    assert n3 > n2
    assert ver_get(r, "s", "k") == b"v3"


def test_deleted_far_token_never_repeats(r):
    """The next version is above the highest one handed out, not only above
    the clock: a token taken far above the clock and then deleted does not
    bring the versions back down to where an old value could be read."""
    r.set("ver:s", FAR)
    ver_set(r, "s", "k", "at-far")
    assert r.get(vkey(FAR, "k")) == b"at-far"
    n1 = bump(r, "s")
    assert n1 == FAR + 1
    ver_set(r, "s", "k", "at-far+1")
    r.delete("ver:s")
    n2 = bump(r, "s")
    assert n2 > n1, (n1, n2)
    assert ver_get(r, "s", "k") is None
    # Another scope shares the guarantee: no version handed out before reappears.
    r.delete("ver:s")
    ver_set(r, "s", "k", "fresh")
    assert current(r, "s") > n2
    assert ver_get(r, "s", "k") == b"fresh"
    assert r.get(vkey(FAR, "k")) == b"at-far"
    assert r.get(vkey(n1, "k")) == b"at-far+1"


def test_next_version_after_flushall(r):
    ver_set(r, "s", "k", "v1")
    n1 = current(r, "s")
    r.set("ver:far", FAR)
    nf = bump(r, "far")
    assert nf == FAR + 1
    assert r.flushall() is True
    assert r.dbsize() == 0
    assert ver_get(r, "s", "k") is None
    assert ver_get(r, "far", "k") is None
    # Someone writes the old value back under its old name: it stays hidden.
    r.set(vkey(n1, "k"), "resurrected")
    r.set(vkey(nf, "k"), "resurrected")
    n2 = bump(r, "s")
    assert n2 > nf > n1
    assert ver_get(r, "s", "k") is None
    ver_set(r, "far", "k", "new")
    assert current(r, "far") > nf
    assert ver_get(r, "far", "k") == b"new"


def test_next_version_after_token_expired(r):
    ver_set(r, "s", "k", "v1")
    n1 = current(r, "s")
    # The token gets a TTL (as a legacy client could give it) and lapses.
    r.set("ver:s", FAR, px=300)
    ver_set(r, "s", "k", "at-far")
    nb = bump(r, "s")
    assert nb == FAR + 1
    ver_set(r, "s", "k", "at-far+1")
    # A bump keeps the token's TTL, as INCR does.
    assert 0 < r.pttl("ver:s") <= 300
    wait_until(lambda: not r.exists("ver:s"), 3, what="token expiry")
    assert ver_get(r, "s", "k") is None
    assert current(r, "s") is None
    ver_set(r, "s", "k", "after")
    n2 = current(r, "s")
    assert n2 > nb > n1
    assert ver_get(r, "s", "k") == b"after"
    assert r.get(vkey(nb, "k")) == b"at-far+1"
    assert r.get(vkey(FAR, "k")) == b"at-far"
    assert r.get(vkey(n1, "k")) == b"v1"


def test_legacy_incr_invalidates(r):
    ver_set(r, "s", "k", "old")
    n = current(r, "s")
    assert r.incr("ver:s") == n + 1
    assert current(r, "s") == n + 1
    assert ver_get(r, "s", "k") is None
    ver_set(r, "s", "k", "new")
    assert r.get(vkey(n + 1, "k")) == b"new"
    assert ver_get(r, "s", "k") == b"new"
    assert r.get(vkey(n, "k")) == b"old"
    # A bump after the INCR continues above it.
    assert bump(r, "s") > n + 1
    assert ver_get(r, "s", "k") is None


def test_legacy_token_written_by_client(r):
    """A token written by existing client code (`SET ver:s 7`) is honoured."""
    r.set("ver:s", 7)
    r.set("v7:k", "legacy")
    assert current(r, "s") == 7
    assert ver_get(r, "s", "k") == b"legacy"
    ver_set(r, "s", "k2", "x")
    assert r.get("v7:k2") == b"x"
    assert bump(r, "s") > 7
    assert ver_get(r, "s", "k") is None


# ---------------------------------------------------------------- errors


def seed(r):
    ver_set(r, "s", "k", "v", "EX", 1000)
    ver_set(r, "s", "k2", "v2")
    r.set("plain", "p")
    r.set("ver:bad", "not-a-number")
    r.rpush("ver:list", "x")


def assert_refused(r, args, expected: str):
    before = dataset(r)
    d = digest(r)
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command(*args)
    msg = error_text(e.value)
    assert msg == expected, (args, msg)
    assert dataset(r) == before, args
    assert digest(r) == d, args
    return msg


ARITY = [
    ("VER.GET",),
    ("VER.GET", "s"),
    ("VER.GET", "s", "k", "extra"),
    ("VER.SET",),
    ("VER.SET", "s"),
    ("VER.SET", "s", "k"),
    ("VER.BUMP",),
    ("VER.CURRENT",),
    ("VER.CURRENT", "s", "t"),
]


@pytest.mark.parametrize("args", ARITY, ids=[" ".join(a) for a in ARITY])
def test_wrong_arity(r, args):
    seed(r)
    name = args[0].lower()
    assert_refused(r, args, f"ERR wrong number of arguments for '{name}' command")


MAX = "9223372036854775807"
INVALID_EXPIRE = "ERR invalid expire time in 'ver.set' command"
NOT_INTEGER = "ERR value is not an integer or out of range"

BAD_OPTIONS = {
    "EX 0": (("EX", 0), INVALID_EXPIRE),
    "PX 0": (("PX", 0), INVALID_EXPIRE),
    "EXAT 0": (("EXAT", 0), INVALID_EXPIRE),
    "PXAT 0": (("PXAT", 0), INVALID_EXPIRE),
    "EX negative": (("EX", -5), INVALID_EXPIRE),
    "PX negative": (("PX", -1), INVALID_EXPIRE),
    "EXAT negative": (("EXAT", -1), INVALID_EXPIRE),
    "PXAT negative": (("PXAT", -1), INVALID_EXPIRE),
    "EX overflows in ms": (("EX", MAX), INVALID_EXPIRE),
    "EXAT overflows in ms": (("EXAT", MAX), INVALID_EXPIRE),
    "PX overflows when added to now": (("PX", MAX), INVALID_EXPIRE),
    "EX non-numeric": (("EX", "abc"), NOT_INTEGER),
    "PX float": (("PX", "1.5"), NOT_INTEGER),
    "EX too large for i64": (("EX", "99999999999999999999"), NOT_INTEGER),
    "EX without value": (("EX",), "ERR syntax error near 'EX'"),
    "unknown option": (("FOO", 1), "ERR syntax error near 'FOO'"),
    "KEEPTTL is not a VER.SET option": (("KEEPTTL",), "ERR syntax error near 'KEEPTTL'"),
    # The word named is the one that is wrong: the second expiry option, the
    # word after the last option (as TAG.SET does).
    "two expiry options": (("EX", 10, "PX", 10), "ERR syntax error near 'PX'"),
    "trailing word": (("EX", 10, "junk"), "ERR syntax error near 'junk'"),
}


@pytest.mark.parametrize("case", BAD_OPTIONS.keys())
def test_ver_set_bad_options(r, case):
    seed(r)
    opts, expected = BAD_OPTIONS[case]
    # On an existing key and on a new scope: nothing changes, no token appears.
    assert_refused(r, ("VER.SET", "s", "k", "changed", *opts), expected)
    assert_refused(r, ("VER.SET", "newscope", "k", "v", *opts), expected)
    assert not r.exists("ver:newscope")


def test_non_integer_token(r):
    seed(r)
    msg = "ERR version token is not an integer"
    for args in (("VER.GET", "bad", "k"), ("VER.SET", "bad", "k", "v"),
                 ("VER.BUMP", "bad"), ("VER.CURRENT", "bad")):
        assert_refused(r, args, msg)
    # One bad scope among several: no scope is bumped.
    n = current(r, "s")
    assert_refused(r, ("VER.BUMP", "s", "bad"), msg)
    assert current(r, "s") == n
    assert ver_get(r, "s", "k") == b"v"


def test_token_of_wrong_type(r):
    seed(r)
    wrongtype = "WRONGTYPE Operation against a key holding the wrong kind of value"
    for args in (("VER.GET", "list", "k"), ("VER.SET", "list", "k", "v"),
                 ("VER.BUMP", "list"), ("VER.CURRENT", "list"), ("VER.BUMP", "s", "list")):
        assert_refused(r, args, wrongtype)


def test_value_of_wrong_type(r):
    seed(r)
    n = current(r, "s")
    r.hset(vkey(n, "h"), "f", "v")
    assert_refused(r, ("VER.GET", "s", "h"),
                   "WRONGTYPE Operation against a key holding the wrong kind of value")


# ---------------------------------------------------------------- ACL


def assert_noperm(r, client, args, key):
    before = dataset(r)
    with pytest.raises(redis.ResponseError) as e:
        client.execute_command(*args)
    msg = error_text(e.value)
    assert msg == noperm_key(key.encode()), (args, msg)
    assert dataset(r) == before, args


def test_acl_value_keys_are_checked(server, r):
    ver_set(r, "s", "k", "v")
    n = current(r, "s")
    tokens_only = acl_client(server, r, "tokens", "pw", "~ver:*", "+@all")
    assert tokens_only.execute_command("VER.CURRENT", "s") == n
    assert_noperm(r, tokens_only, ("VER.GET", "s", "k"), vkey(n, "k"))
    assert_noperm(r, tokens_only, ("VER.SET", "s", "k", "x"), vkey(n, "k"))
    # A new scope: not even the token is created.
    with pytest.raises(redis.ResponseError) as e:
        tokens_only.execute_command("VER.SET", "new", "k", "x")
    # It names the value key of the version the new scope would start at.
    assert re.fullmatch(r"NOPERM this user has no permissions to access the 'v[0-9]+:k' key",
                        error_text(e.value)), error_text(e.value)
    assert not r.exists("ver:new")
    assert bump(tokens_only, "s") > n


def test_acl_tokens_are_checked(server, r):
    bump(r, "a", "b")
    before = {s: current(r, s) for s in ("a", "b")}
    only_a = acl_client(server, r, "only-a", "pw", "~ver:a", "~v1*", "+@all")
    assert_noperm(r, only_a, ("VER.BUMP", "a", "b"), "ver:b")
    assert_noperm(r, only_a, ("VER.CURRENT", "b"), "ver:b")
    assert_noperm(r, only_a, ("VER.GET", "b", "k"), "ver:b")
    assert_noperm(r, only_a, ("VER.SET", "b", "k", "v"), "ver:b")
    assert {s: current(r, s) for s in ("a", "b")} == before
    assert ver_set(only_a, "a", "k", "v") == b"OK"
    assert ver_get(only_a, "a", "k") == b"v"


def test_acl_read_only_user(server, r):
    ver_set(r, "s", "k", "v")
    reader = acl_client(server, r, "reader", "pw", "%R~*", "+@all")
    assert ver_get(reader, "s", "k") == b"v"
    assert reader.execute_command("VER.CURRENT", "s") == current(r, "s")
    assert_noperm(r, reader, ("VER.SET", "s", "k", "x"), "ver:s")
    assert_noperm(r, reader, ("VER.BUMP", "s"), "ver:s")


# ---------------------------------------------------------------- replication


def test_replica_follows_versions(master_replica):
    master, replica = master_replica
    m, rep = master.client(), replica.client()
    scopes = [f"scope{i}" for i in range(5)]
    for rnd in range(4):
        for i, s in enumerate(scopes):
            for j in range(10):
                opts = ()
                if j % 3 == 1:
                    opts = ("EX", 1000 + j)
                elif j % 3 == 2:
                    opts = ("PX", 2_000_000 + j)
                ver_set(m, s, f"k{j}", f"v{rnd}-{i}-{j}", *opts)
        bump(m, scopes[rnd % len(scopes)])
        bump(m, scopes[(rnd + 1) % len(scopes)], scopes[(rnd + 2) % len(scopes)])
    m.incr("ver:scope0")
    ver_set(m, "scope0", "k0", "after-incr")
    wait_sync(m, rep)
    assert rep.dbsize() == m.dbsize()
    assert digest(rep) == digest(m)
    for s in scopes:
        assert rep.execute_command("VER.CURRENT", s) == current(m, s)
        for j in range(10):
            assert rep.execute_command("VER.GET", s, f"k{j}") == ver_get(m, s, f"k{j}"), (s, j)
    assert rep.execute_command("VER.GET", "scope0", "k0") == b"after-incr"
    # Expiry times are absolute on the replica.
    n = current(m, "scope1")
    assert rep.execute_command("PEXPIRETIME", vkey(n, "k1")) == \
        m.execute_command("PEXPIRETIME", vkey(n, "k1"))
    # The read commands work on a read-only replica; the writes are refused.
    with pytest.raises(redis.ResponseError) as e:
        rep.execute_command("VER.SET", "scope1", "k", "v")
    assert error_text(e.value) == READONLY
    with pytest.raises(redis.ResponseError) as e:
        rep.execute_command("VER.BUMP", "scope1")
    assert error_text(e.value) == READONLY


def test_replica_full_sync_then_stream(servers):
    master = servers.start(name="master")
    m = master.client()
    ver_set(m, "s", "k", "v1")
    bump(m, "s")
    ver_set(m, "s", "k", "v2")
    replica = servers.start_replica(master)
    rep = replica.client()
    assert rep.execute_command("VER.GET", "s", "k") == b"v2"
    bump(m, "s", "t")
    ver_set(m, "t", "k", "vt")
    wait_sync(m, rep)
    assert rep.execute_command("VER.GET", "s", "k") is None
    assert rep.execute_command("VER.GET", "t", "k") == b"vt"
    assert digest(rep) == digest(m)


# ---------------------------------------------------------------- persistence


def test_aof_restart_keeps_versions(servers):
    s = servers.start(extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    r = s.client()
    wait_aof_rewrite(r)
    for i in range(3):
        for j in range(10):
            opts = ("PX", 3_000_000) if j % 2 else ()
            ver_set(r, f"s{i}", f"k{j}", f"v{i}-{j}", *opts)
    bump(r, "s0")
    ver_set(r, "s0", "k0", "after-bump")
    bump(r, "s1", "s2")
    r.incr("ver:s2")
    ver_set(r, "s2", "k1", "after-incr")
    before = {
        "data": dataset(r),
        "current": {f"s{i}": current(r, f"s{i}") for i in range(3)},
        "values": {(f"s{i}", f"k{j}"): ver_get(r, f"s{i}", f"k{j}")
                   for i in range(3) for j in range(10)},
        "expire": {k: r.execute_command("PEXPIRETIME", k) for k in r.keys("v*")},
        "digest": digest(r),
    }
    r = s.restart()
    after = {
        "data": dataset(r),
        "current": {f"s{i}": current(r, f"s{i}") for i in range(3)},
        "values": {(f"s{i}", f"k{j}"): ver_get(r, f"s{i}", f"k{j}")
                   for i in range(3) for j in range(10)},
        "expire": {k: r.execute_command("PEXPIRETIME", k) for k in r.keys("v*")},
        "digest": digest(r),
    }
    for part in before:
        assert after[part] == before[part], part
    assert after["values"][("s0", "k0")] == b"after-bump"
    assert after["values"][("s2", "k1")] == b"after-incr"
    # Versions keep growing after the restart.
    assert bump(r, "s0") > before["current"]["s0"]
    assert ver_get(r, "s0", "k0") is None


# ---------------------------------------------------------------- command table


@pytest.fixture
def raw(server):
    conn = RawConn(server.port)
    yield conn
    conn.close()


EXPECTED = {
    # name: (arity, flags that must be present, flags that must be absent)
    "ver.get": (3, {b"readonly", b"fast"}, {b"write"}),
    "ver.current": (2, {b"readonly", b"fast"}, {b"write"}),
    "ver.set": (-4, {b"write", b"denyoom"}, {b"readonly"}),
    "ver.bump": (-2, {b"write"}, {b"readonly"}),
}


@pytest.mark.parametrize("name", EXPECTED.keys())
def test_command_info(raw, name):
    reply = raw.command("COMMAND", "INFO", name)
    assert len(reply) == 1 and reply[0] is not None, reply
    info = reply[0]
    assert info[0] == name.encode()
    arity, present, absent = EXPECTED[name]
    assert info[1] == arity
    flags = set(info[2])
    assert present <= flags, flags
    assert not (absent & flags), flags
    # The first argument (the scope) names the version token.
    assert info[3] == 1


def test_command_list_has_ver_commands(raw):
    names = set(raw.command("COMMAND", "LIST"))
    assert {b"ver.get", b"ver.set", b"ver.bump", b"ver.current"} <= names


def test_a_bump_past_the_largest_version_is_an_overflow_error(r):
    top = "9223372036854775807"
    r.set("ver:s", top)
    for _ in range(2):
        assert refused(r, "VER.BUMP", "s") == "ERR increment or decrement would overflow"
        assert r.get("ver:s") == top.encode()
    assert r.keys("*") == [b"ver:s"]
