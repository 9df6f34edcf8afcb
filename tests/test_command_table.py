"""The command table in src/commands/table.rs is the one record of every
command: its name, handler, flags, arity, summary and key specs. What the server
reports (COMMAND LIST / INFO / DOCS, ACL categories) must equal it."""

import re

import pytest

from harness import ROOT, RawConn, server_version

TABLE = ROOT / "src" / "commands" / "table.rs"

# Command flags as the module table writes them -> as COMMAND INFO shows them.
FLAG_NAMES = {"write": b"write", "readonly": b"readonly", "deny-oom": b"denyoom", "fast": b"fast"}


def records():
    """(name, flags, summary, arity) of every Info block in the table."""
    text = TABLE.read_text()
    out = []
    for block in re.finditer(r"Info \{(.*?)\n        \}", text, re.S):
        body = block.group(1)
        name = re.search(r'name: "([^"]+)"', body)
        flags = re.search(r'flags: "([^"]*)"', body)
        summary = re.search(r'summary: "([^"]*)"', body)
        arity = re.search(r"arity: (-?\d+)", body)
        if name and flags and summary and arity:
            out.append((name.group(1), flags.group(1), summary.group(1), int(arity.group(1))))
    return out


RECORDS = records()


def test_the_table_is_read():
    names = [r[0] for r in RECORDS]
    assert "tag.set" in names and "ver.get" in names and "tag.apply" in names, names
    assert len(names) == len(set(names)), names


@pytest.fixture
def conn(server):
    c = RawConn(server.port)
    c.command("HELLO", 3)
    yield c
    c.close()


def test_command_list_equals_the_table(conn):
    listed = set(conn.command("COMMAND", "LIST", "FILTERBY", "MODULE", "tagcache"))
    assert listed == {r[0].encode() for r in RECORDS}


@pytest.mark.parametrize("name,flags,summary,arity", RECORDS, ids=[r[0] for r in RECORDS])
def test_command_info_and_docs_equal_the_record(conn, name, flags, summary, arity):
    (info,) = conn.command("COMMAND", "INFO", name)
    assert info[0] == name.encode()
    assert info[1] == arity
    shown = set(info[2])
    for f in flags.split():
        assert FLAG_NAMES[f] in shown, (name, f, shown)
    assert (b"write" in shown) == ("write" in flags.split())
    doc = conn.command("COMMAND", "DOCS", name)[name.encode()]
    assert doc[b"summary"] == summary.encode()
    assert doc[b"group"] == b"module" and doc[b"module"] == b"tagcache"


def test_acl_category_holds_every_command(conn):
    """Where the server has module ACL categories (Redis 7.4+, Valkey),
    `+@tagcache` covers exactly the module's commands."""
    kind, version = server_version()
    if kind == "redis" and version < (7, 4, 0):
        cats = conn.command("ACL", "CAT")
        assert b"tagcache" not in cats, "no module categories before Redis 7.4"
        return
    listed = set(conn.command("ACL", "CAT", "tagcache"))
    assert listed == {r[0].encode() for r in RECORDS}
    for name, flags, _, _ in RECORDS:
        cats = set(conn.command("ACL", "CAT", "write" if "write" in flags.split() else "read"))
        assert name.encode() in cats, (name, flags)
