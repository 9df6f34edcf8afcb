"""Bad calls reply with their exact error (code and text) and change nothing."""

import time

import pytest
import redis

from harness import (WRONGTYPE, RespError, acl_client, assert_alive, assert_raw_error,
                     dataset, digest, error_text, esc, raw_reply, refused, set_of,
                     server_noperm_key, tag_set, wait_sync)

MAX = "9223372036854775807"


def seed(r):
    tag_set(r, "k", "v", "a", "b", opts=("EX", 1000))
    tag_set(r, "k2", "v2", "b")
    r.hset("h", "f", "v")
    r.execute_command("TAG.ADD", "h", "a")
    r.set("plain", "p")


def assert_refused(r, args, expected: str):
    """Runs `args`, expects exactly the error `expected` (code and text), and
    checks that nothing changed."""
    before = dataset(r)
    d = digest(r)
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command(*args)
    msg = error_text(e.value)
    assert msg == expected, (args, msg)
    assert dataset(r) == before
    assert digest(r) == d
    return msg


def arity_error(command: str) -> str:
    return f"ERR wrong number of arguments for '{command.lower()}' command"


def syntax_error_near(word: str) -> str:
    return f"ERR syntax error near '{word}'"


SET_ARITY = arity_error("TAG.SET")
NUMTAGS = "ERR numtags must be a positive integer equal to the number of tags that follow"
EXPIRE = "ERR invalid expire time in 'tag.set' command"
NOT_INTEGER = "ERR value is not an integer or out of range"
EMPTY_TAG = "ERR tag must not be empty"


ARITY = [
    ("TAG.SET",),
    ("TAG.SET", "k"),
    ("TAG.SET", "k", "v"),
    ("TAG.ADD",),
    ("TAG.ADD", "k"),
    ("TAG.REM",),
    ("TAG.REM", "k"),
    ("TAG.PURGE",),
    ("TAG.MEMBERS",),
    ("TAG.MEMBERS", "a", "b"),
    ("TAG.CARD",),
    ("TAG.CARD", "a", "b"),
    ("TAG.TAGS",),
    ("TAG.TAGS", "k", "k2"),
    ("TAG.INFO", "extra", "args"),
]


@pytest.mark.parametrize("args", ARITY, ids=[" ".join(a) for a in ARITY])
def test_wrong_arity(r, args):
    seed(r)
    assert_refused(r, args, arity_error(args[0]))


def new_key_set(*rest):
    return ("TAG.SET", "new", "nv", *rest)


def over_k(*rest):
    """On an existing key: a refused call must not touch its value, TTL or tags."""
    return ("TAG.SET", "k", "changed", *rest)


# name: (call, its exact error)
BAD_TAG_SET = {
    # TAGS / numtags
    "missing TAGS": (new_key_set("EX", 10), SET_ARITY),
    "missing TAGS no options": (("TAG.SET", "new", "nv", "NX"), SET_ARITY),
    "TAGS without numtags": (new_key_set("TAGS"), SET_ARITY),
    "numtags 0": (new_key_set("TAGS", 0), SET_ARITY),
    "numtags 0 with a tag": (new_key_set("TAGS", 0, "a"), NUMTAGS),
    "numtags negative": (new_key_set("TAGS", -1, "a"), NUMTAGS),
    "numtags non-numeric": (new_key_set("TAGS", "x", "a"), NUMTAGS),
    "numtags too large": (new_key_set("TAGS", 2, "a"), NUMTAGS),
    "numtags huge": (new_key_set("TAGS", MAX, "a"), NUMTAGS),
    "numtags too small": (new_key_set("TAGS", 1, "a", "b"), NUMTAGS),
    "option after tags": (new_key_set("TAGS", 1, "a", "EX", 10), NUMTAGS),
    "junk after tags": (over_k("TAGS", 1, "a", "junk"), NUMTAGS),
    "empty tag": (new_key_set("TAGS", 1, ""), EMPTY_TAG),
    "empty tag among others": (over_k("TAGS", 2, "a", ""), EMPTY_TAG),
    # expiry values
    "EX 0": (new_key_set("EX", 0, "TAGS", 1, "a"), EXPIRE),
    "EX -1": (new_key_set("EX", -1, "TAGS", 1, "a"), EXPIRE),
    "EX abc": (new_key_set("EX", "abc", "TAGS", 1, "a"), NOT_INTEGER),
    "EX 1.5": (new_key_set("EX", "1.5", "TAGS", 1, "a"), NOT_INTEGER),
    "EX empty": (new_key_set("EX", "", "TAGS", 1, "a"), NOT_INTEGER),
    "EX missing value": (new_key_set("EX", "TAGS", 1, "a"), NOT_INTEGER),
    "EX overflow": (over_k("EX", MAX, "TAGS", 1, "a"), EXPIRE),
    "EX overflow in ms": (new_key_set("EX", str(2**63 // 1000 + 1), "TAGS", 1, "a"), EXPIRE),
    "EX beyond i64": (new_key_set("EX", "99999999999999999999", "TAGS", 1, "a"), NOT_INTEGER),
    "PX 0": (new_key_set("PX", 0, "TAGS", 1, "a"), EXPIRE),
    "PX -5": (new_key_set("PX", -5, "TAGS", 1, "a"), EXPIRE),
    "PX abc": (new_key_set("PX", "abc", "TAGS", 1, "a"), NOT_INTEGER),
    "PX overflow": (over_k("PX", MAX, "TAGS", 1, "a"), EXPIRE),
    "EXAT 0": (new_key_set("EXAT", 0, "TAGS", 1, "a"), EXPIRE),
    "EXAT -1": (over_k("EXAT", -1, "TAGS", 1, "a"), EXPIRE),
    "EXAT abc": (new_key_set("EXAT", "abc", "TAGS", 1, "a"), NOT_INTEGER),
    "EXAT overflow": (new_key_set("EXAT", MAX, "TAGS", 1, "a"), EXPIRE),
    "PXAT 0": (new_key_set("PXAT", 0, "TAGS", 1, "a"), EXPIRE),
    "PXAT -1": (new_key_set("PXAT", -1, "TAGS", 1, "a"), EXPIRE),
    "PXAT abc": (over_k("PXAT", "abc", "TAGS", 1, "a"), NOT_INTEGER),
    # conflicting options
    "EX and PX": (new_key_set("EX", 10, "PX", 10000, "TAGS", 1, "a"), syntax_error_near("PX")),
    "EX twice": (new_key_set("EX", 10, "EX", 20, "TAGS", 1, "a"), syntax_error_near("EX")),
    "EXAT and PXAT": (over_k("EXAT", 2000000000, "PXAT", 2000000000000, "TAGS", 1, "a"),
                      syntax_error_near("PXAT")),
    "PX and EXAT": (new_key_set("PX", 10, "EXAT", 2000000000, "TAGS", 1, "a"),
                    syntax_error_near("EXAT")),
    "KEEPTTL then EX": (over_k("KEEPTTL", "EX", 10, "TAGS", 1, "a"), syntax_error_near("EX")),
    "EX then KEEPTTL": (over_k("EX", 10, "KEEPTTL", "TAGS", 1, "a"), syntax_error_near("KEEPTTL")),
    "NX and XX": (over_k("NX", "XX", "TAGS", 1, "a"), syntax_error_near("XX")),
    "XX and NX": (new_key_set("XX", "NX", "TAGS", 1, "a"), syntax_error_near("NX")),
    # unknown words
    "unknown option": (new_key_set("FOO", "TAGS", 1, "a"), syntax_error_near("FOO")),
    "unknown option on existing key": (over_k("XYZZY", "TAGS", 1, "a"), syntax_error_near("XYZZY")),
    "misspelt TAGS": (new_key_set("TAG", 1, "a"), syntax_error_near("TAG")),
    "LEASE without token": (new_key_set("LEASE"), SET_ARITY),
}


@pytest.mark.parametrize("args,expected", BAD_TAG_SET.values(), ids=BAD_TAG_SET.keys())
def test_tag_set_bad_input(r, args, expected):
    seed(r)
    assert_refused(r, args, expected)


def test_numtags_error_names_numtags(r):
    assert_refused(r, new_key_set("TAGS", 2, "a"), NUMTAGS)


def test_expiry_error_names_expire(r):
    assert_refused(r, new_key_set("EX", 0, "TAGS", 1, "a"), EXPIRE)


def test_unknown_option_error_names_it(r):
    assert_refused(r, new_key_set("FROBNICATE", "TAGS", 1, "a"), syntax_error_near("FROBNICATE"))


def test_exat_in_the_future_is_not_an_overflow(r):
    # Guard for the overflow cases above: a sane absolute time works.
    at = int(time.time()) + 1000
    assert tag_set(r, "x", "v", "a", opts=("EXAT", at)) == b"OK"


@pytest.mark.parametrize("key", ["new", "k"])
def test_lease_with_bogus_token_stores_nothing(r, key):
    seed(r)
    before = dataset(r)
    d = digest(r)
    try:
        reply = r.execute_command("TAG.SET", key, "leased", "LEASE", "bogus-token", "TAGS", 1, "z")
    except redis.ResponseError as e:
        assert error_text(e) == "ERR invalid lease token: malformed or never issued"
    else:
        assert reply is None
    assert dataset(r) == before
    assert digest(r) == d
    assert not r.exists("tag:z")


# name: (call, its exact error)
BAD_OTHER = {
    "TAG.ADD missing key": (("TAG.ADD", "missing", "a"), "ERR no such key"),
    "TAG.ADD empty tag": (("TAG.ADD", "plain", ""), EMPTY_TAG),
    "TAG.ADD empty tag among others": (("TAG.ADD", "plain", "x", ""), EMPTY_TAG),
    "TAG.REM empty tag": (("TAG.REM", "k", ""), EMPTY_TAG),
}


@pytest.mark.parametrize("args,expected", BAD_OTHER.values(), ids=BAD_OTHER.keys())
def test_other_commands_bad_input(r, args, expected):
    seed(r)
    assert_refused(r, args, expected)


def test_tag_add_on_wrongtype_index_changes_nothing(r):
    seed(r)
    r.set("tag:bad", "string")
    assert_refused(r, ("TAG.ADD", "plain", "x", "bad"), WRONGTYPE)


def test_server_survives_bad_input(r):
    """No bad call takes the server down."""
    seed(r)
    bad = [args for args, _ in list(BAD_TAG_SET.values()) + list(BAD_OTHER.values())]
    for args in bad + ARITY:
        try:
            r.execute_command(*args)
        except redis.ResponseError:
            pass
    assert r.ping()
    assert r.get("k") == b"v"


# ---------------------------------------------------------------- client bytes in errors
# Error replies that echo a client's bytes are well-formed: every byte
# outside printable ASCII (and ' and \) as \xHH.

WORDS = [
    b"\xf0\x9f\x98\x80",  # 4-byte UTF-8 (U+1F600)
    "\u4e00".encode(),   # a character whose code point ends in 0x00
    b"a\x00b\r\n",        # NUL, CR, LF
    b"it's\\",            # quote and backslash
    b"\xff\xfe",          # invalid UTF-8
]


def syntax_error(word: bytes) -> str:
    return syntax_error_near(esc(word))


def test_an_emoji_option_word_is_escaped_in_the_syntax_error(server, r):
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
def test_an_unknown_option_word_is_escaped_in_the_syntax_error(server, r, command):
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


def test_noperm_for_a_binary_key_is_one_escaped_line(server, r):
    """The server's own ACL check (key specs) may answer before the module;
    either way the reply is one exact, well-formed line."""
    key = b"\xff\x00k"
    acl_client(server, r, "u", "pw", "+@all", "~allowed*")
    own = raw_reply(server.port, "SET", key, "v", auth=("u", "pw"))
    assert isinstance(own, RespError), own
    assert str(own) == server_noperm_key()
    reply = raw_reply(server.port, "TAG.SET", key, "v", "TAGS", 1, "t", auth=("u", "pw"))
    assert isinstance(reply, RespError), reply
    assert str(reply) in (
        "NOPERM this user has no permissions to access the '\\xff\\x00k' key", str(own))
    assert_alive(server.port)
    assert r.dbsize() == 0


def test_noperm_naming_a_purged_member_is_escaped(server, r):
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


# ---------------------------------------------------------------- an index key of another type


def test_tag_set_onto_a_tag_key_holding_a_string_changes_nothing_on_master_and_replica(
        master_replica):
    """TAG.SET only touches the old tags' sets that still hold the key; a new
    tag whose index key holds a string refuses the whole call."""
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
