"""TAG.INFO, INFO tagcache, and command metadata (COMMAND INFO / DOCS / GETKEYS)."""

import json

import pytest

from harness import RawConn, tag_set

WRITE_COMMANDS = ["tag.set", "tag.add", "tag.rem", "tag.purge"]
READ_COMMANDS = ["tag.members", "tag.card", "tag.tags", "tag.info"]
ALL_COMMANDS = WRITE_COMMANDS + READ_COMMANDS

# Minimum argument counts (command name included) in Redis's arity convention:
# negative for "at least", positive for "exactly".
ARITY = {
    "tag.set": -6,  # TAG.SET key value TAGS 1 tag
    "tag.add": -3,
    "tag.rem": -3,
    "tag.purge": -2,
    "tag.members": 2,
    "tag.card": 2,
    "tag.tags": 2,
    "tag.info": 1,
}
# Commands whose first argument is a key name.
FIRST_KEY_ONE = ["tag.set", "tag.add", "tag.rem", "tag.tags"]


def as_text(v):
    return v.decode(errors="replace") if isinstance(v, bytes) else v


def parse_tag_info(reply) -> dict:
    """TAG.INFO as a dict, from either a JSON string or a flat name/value array."""
    if isinstance(reply, (bytes, str)):
        data = json.loads(as_text(reply))
        assert isinstance(data, dict), data
        return data
    if isinstance(reply, dict):
        return {as_text(k): v for k, v in reply.items()}
    assert isinstance(reply, list) and len(reply) % 2 == 0, reply
    return {as_text(reply[i]): reply[i + 1] for i in range(0, len(reply), 2)}


def flatten(d, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}; values decoded to text or numbers."""
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{as_text(k)}."))
    elif isinstance(d, list) and d and len(d) % 2 == 0 and all(
        isinstance(x, (bytes, str)) for x in d[::2]
    ):
        # A nested name/value array (RESP2 has no maps).
        for i in range(0, len(d), 2):
            out.update(flatten(d[i + 1], f"{prefix}{as_text(d[i])}."))
    else:
        v = as_text(d)
        if isinstance(v, str):
            try:
                v = int(v)
            except ValueError:
                pass
        out[prefix.rstrip(".")] = v
    return out


def numeric(info: dict) -> dict:
    return {k: v for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def test_tag_info_reports_counters_that_move(r):
    before = flatten(parse_tag_info(r.execute_command("TAG.INFO")))
    assert numeric(before), f"no counters in TAG.INFO: {before}"
    tag_set(r, "k1", "v", "a")
    tag_set(r, "k2", "v", "a")
    r.execute_command("TAG.PURGE", "a")
    after = flatten(parse_tag_info(r.execute_command("TAG.INFO")))
    grown = [k for k, v in numeric(after).items() if v > numeric(before).get(k, 0)]
    assert grown, f"no counter moved after TAG.SET/TAG.PURGE:\n{before}\n{after}"


def test_tag_info_reports_settings(r):
    info = flatten(parse_tag_info(r.execute_command("TAG.INFO")))
    values = {as_text(v) if not isinstance(v, int) else v for v in info.values()}
    assert "tag:" in values, info
    assert "tagcache:events" in values, info


def test_info_section(server, r):
    conn = RawConn(server.port)
    try:
        text = conn.command("INFO", "tagcache").decode()
    finally:
        conn.close()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    headers = [ln for ln in lines if ln.startswith("#")]
    fields = [ln for ln in lines if ":" in ln and not ln.startswith("#")]
    assert any("tagcache" in h.lower() for h in headers), text
    assert fields, text
    assert all(f.split(":", 1)[0].startswith("tagcache") for f in fields), text
    # The section is part of INFO everything too.
    conn = RawConn(server.port)
    try:
        everything = conn.command("INFO", "everything").decode()
    finally:
        conn.close()
    assert fields[0].split(":", 1)[0] + ":" in everything


@pytest.fixture
def resp3(server):
    conn = RawConn(server.port)
    conn.command("HELLO", 3)
    yield conn
    conn.close()


def command_info(conn, name):
    reply = conn.command("COMMAND", "INFO", name)
    assert len(reply) == 1
    return reply[0]


@pytest.mark.parametrize("name", ALL_COMMANDS)
def test_command_info(resp3, name):
    info = command_info(resp3, name)
    assert info is not None, f"{name} missing from COMMAND INFO"
    cname, arity, flags, first, last, step = info[:6]
    assert cname == name.encode()
    assert arity == ARITY[name], (name, arity)
    flags = set(flags)
    if name in WRITE_COMMANDS:
        assert b"write" in flags, flags
        assert b"readonly" not in flags, flags
    else:
        assert b"readonly" in flags, flags
        assert b"write" not in flags, flags
    if name in FIRST_KEY_ONE:
        assert first == 1, (name, first)
        key_specs = info[8]
        assert key_specs, f"{name} has no key specs"
        bs = key_specs[0][b"begin_search"]
        assert bs[b"type"] == b"index" and bs[b"spec"][b"index"] == 1, key_specs
    if name == "tag.info":
        assert first == 0


@pytest.mark.parametrize("name", ALL_COMMANDS)
def test_command_docs(resp3, name):
    docs = resp3.command("COMMAND", "DOCS", name)
    assert name.encode() in docs, f"{name} missing from COMMAND DOCS: {docs}"
    doc = docs[name.encode()]
    assert doc.get(b"summary"), doc
    assert doc.get(b"group") == b"module", doc
    assert doc.get(b"module") == b"tagcache", doc


@pytest.mark.parametrize("name", [n for n in ALL_COMMANDS if n != "tag.info"])
def test_command_docs_arguments(resp3, name):
    doc = resp3.command("COMMAND", "DOCS", name)[name.encode()]
    args = doc.get(b"arguments")
    assert args, f"{name} documents no arguments: {doc}"
    first = args[0]
    assert first.get(b"name") and first.get(b"type"), args


def test_command_getkeys_tag_set(resp3):
    keys = resp3.command("COMMAND", "GETKEYS", "TAG.SET", "k", "v", "EX", 10, "TAGS", 1, "a")
    assert keys[0] == b"k"
    assert b"v" not in keys and b"EX" not in keys


@pytest.mark.parametrize("name", ["tag.add", "tag.rem"])
def test_command_getkeys_add_rem(resp3, name):
    keys = resp3.command("COMMAND", "GETKEYS", name, "k", "a", "b")
    assert keys[0] == b"k"


def test_command_list_has_every_command(resp3):
    names = set(resp3.command("COMMAND", "LIST", "FILTERBY", "MODULE", "tagcache"))
    assert set(n.encode() for n in ALL_COMMANDS) <= names, names


def test_tag_info_is_a_map_under_resp3_and_a_flat_array_under_resp2(server):
    """As Redis's own CONFIG GET and XINFO reply: name/value pairs are a map
    under RESP3, a flat array under RESP2, in the same order."""
    v3 = RawConn(server.port)
    v3.command("HELLO", 3)
    m = v3.command("TAG.INFO")
    v3.close()
    v2 = RawConn(server.port)
    flat = v2.command("TAG.INFO")
    v2.close()
    assert isinstance(m, dict), m
    assert isinstance(flat, list) and len(flat) == 2 * len(m), flat
    assert list(m.keys()) == flat[0::2]
    assert flat[0:2] == [b"commands", 2] and m[b"commands"] == 1
    assert m[b"tag_prefix"] == b"tag:"
