"""Bad calls reply with an error that starts with its code and change nothing."""

import time

import pytest
import redis

from harness import dataset, digest, error_text, tag_set

MAX = "9223372036854775807"


def seed(r):
    tag_set(r, "k", "v", "a", "b", opts=("EX", 1000))
    tag_set(r, "k2", "v2", "b")
    r.hset("h", "f", "v")
    r.execute_command("TAG.ADD", "h", "a")
    r.set("plain", "p")


def assert_refused(r, args, codes=("ERR",), words=()):
    """Runs `args`, expects an error starting with one of `codes` (and naming
    one of `words`, when given), and checks that nothing changed."""
    before = dataset(r)
    d = digest(r)
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command(*args)
    msg = error_text(e.value)
    assert msg.startswith(tuple(codes)), msg
    if words:
        assert any(w.lower() in msg.lower() for w in words), msg
    assert dataset(r) == before
    assert digest(r) == d
    return msg


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
    assert_refused(r, args, words=("argument", "arity"))


def new_key_set(*rest):
    return ("TAG.SET", "new", "nv", *rest)


def over_k(*rest):
    """On an existing key: a refused call must not touch its value, TTL or tags."""
    return ("TAG.SET", "k", "changed", *rest)


BAD_TAG_SET = {
    # TAGS / numtags
    "missing TAGS": new_key_set("EX", 10),
    "missing TAGS no options": ("TAG.SET", "new", "nv", "NX"),
    "TAGS without numtags": new_key_set("TAGS"),
    "numtags 0": new_key_set("TAGS", 0),
    "numtags 0 with a tag": new_key_set("TAGS", 0, "a"),
    "numtags negative": new_key_set("TAGS", -1, "a"),
    "numtags non-numeric": new_key_set("TAGS", "x", "a"),
    "numtags too large": new_key_set("TAGS", 2, "a"),
    "numtags huge": new_key_set("TAGS", MAX, "a"),
    "numtags too small": new_key_set("TAGS", 1, "a", "b"),
    "option after tags": new_key_set("TAGS", 1, "a", "EX", 10),
    "junk after tags": over_k("TAGS", 1, "a", "junk"),
    "empty tag": new_key_set("TAGS", 1, ""),
    "empty tag among others": over_k("TAGS", 2, "a", ""),
    # expiry values
    "EX 0": new_key_set("EX", 0, "TAGS", 1, "a"),
    "EX -1": new_key_set("EX", -1, "TAGS", 1, "a"),
    "EX abc": new_key_set("EX", "abc", "TAGS", 1, "a"),
    "EX 1.5": new_key_set("EX", "1.5", "TAGS", 1, "a"),
    "EX empty": new_key_set("EX", "", "TAGS", 1, "a"),
    "EX missing value": new_key_set("EX", "TAGS", 1, "a"),
    "EX overflow": over_k("EX", MAX, "TAGS", 1, "a"),
    "EX overflow in ms": new_key_set("EX", str(2**63 // 1000 + 1), "TAGS", 1, "a"),
    "EX beyond i64": new_key_set("EX", "99999999999999999999", "TAGS", 1, "a"),
    "PX 0": new_key_set("PX", 0, "TAGS", 1, "a"),
    "PX -5": new_key_set("PX", -5, "TAGS", 1, "a"),
    "PX abc": new_key_set("PX", "abc", "TAGS", 1, "a"),
    "PX overflow": over_k("PX", MAX, "TAGS", 1, "a"),
    "EXAT 0": new_key_set("EXAT", 0, "TAGS", 1, "a"),
    "EXAT -1": over_k("EXAT", -1, "TAGS", 1, "a"),
    "EXAT abc": new_key_set("EXAT", "abc", "TAGS", 1, "a"),
    "EXAT overflow": new_key_set("EXAT", MAX, "TAGS", 1, "a"),
    "PXAT 0": new_key_set("PXAT", 0, "TAGS", 1, "a"),
    "PXAT -1": new_key_set("PXAT", -1, "TAGS", 1, "a"),
    "PXAT abc": over_k("PXAT", "abc", "TAGS", 1, "a"),
    # conflicting options
    "EX and PX": new_key_set("EX", 10, "PX", 10000, "TAGS", 1, "a"),
    "EX twice": new_key_set("EX", 10, "EX", 20, "TAGS", 1, "a"),
    "EXAT and PXAT": over_k("EXAT", 2000000000, "PXAT", 2000000000000, "TAGS", 1, "a"),
    "PX and EXAT": new_key_set("PX", 10, "EXAT", 2000000000, "TAGS", 1, "a"),
    "KEEPTTL then EX": over_k("KEEPTTL", "EX", 10, "TAGS", 1, "a"),
    "EX then KEEPTTL": over_k("EX", 10, "KEEPTTL", "TAGS", 1, "a"),
    "NX and XX": over_k("NX", "XX", "TAGS", 1, "a"),
    "XX and NX": new_key_set("XX", "NX", "TAGS", 1, "a"),
    # unknown words
    "unknown option": new_key_set("FOO", "TAGS", 1, "a"),
    "unknown option on existing key": over_k("XYZZY", "TAGS", 1, "a"),
    "misspelt TAGS": new_key_set("TAG", 1, "a"),
    "LEASE without token": new_key_set("LEASE"),
}


@pytest.mark.parametrize("args", BAD_TAG_SET.values(), ids=BAD_TAG_SET.keys())
def test_tag_set_bad_input(r, args):
    seed(r)
    assert_refused(r, args)


def test_numtags_error_names_numtags(r):
    assert_refused(r, new_key_set("TAGS", 2, "a"), words=("numtags", "tags"))


def test_expiry_error_names_expire(r):
    assert_refused(r, new_key_set("EX", 0, "TAGS", 1, "a"), words=("expire", "ex"))


def test_unknown_option_error_names_it(r):
    assert_refused(r, new_key_set("FROBNICATE", "TAGS", 1, "a"), words=("syntax", "frobnicate"))


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
        assert error_text(e).startswith("ERR"), error_text(e)
    else:
        assert reply is None
    assert dataset(r) == before
    assert digest(r) == d
    assert not r.exists("tag:z")


BAD_OTHER = {
    "TAG.ADD missing key": ("TAG.ADD", "missing", "a"),
    "TAG.ADD empty tag": ("TAG.ADD", "plain", ""),
    "TAG.ADD empty tag among others": ("TAG.ADD", "plain", "x", ""),
    "TAG.REM empty tag": ("TAG.REM", "k", ""),
}


@pytest.mark.parametrize("args", BAD_OTHER.values(), ids=BAD_OTHER.keys())
def test_other_commands_bad_input(r, args):
    seed(r)
    assert_refused(r, args)


def test_tag_add_on_wrongtype_index_changes_nothing(r):
    seed(r)
    r.set("tag:bad", "string")
    assert_refused(r, ("TAG.ADD", "plain", "x", "bad"), codes=("WRONGTYPE", "ERR"))


def test_server_survives_bad_input(r):
    """No bad call takes the server down."""
    seed(r)
    for args in list(BAD_TAG_SET.values()) + list(BAD_OTHER.values()) + ARITY:
        try:
            r.execute_command(*args)
        except redis.ResponseError:
            pass
    assert r.ping()
    assert r.get("k") == b"v"
