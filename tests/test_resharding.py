"""Resharding keeps every tag: keys that leave or arrive with their slots,
by `MIGRATE`/`RESTORE-ASKING` (every server) or by atomic slot migration
(`CLUSTER MIGRATESLOTS`, Valkey 9.0+), with writes going on meanwhile; and a
client's own `MIGRATE` or `RESTORE-ASKING` of a key outside a resharding is
a removal or a replacing write like any other (SPEC: Redis Cluster)."""

from __future__ import annotations

import random
import subprocess
import threading
import time

import pytest
import redis
from redis.cluster import RedisCluster

from harness import ServerFactory, error_text, tag_info, wait_until
from test_cluster import (REDIS_CLI, Cluster, assert_index_is_local, assert_replicas_match, digest,
                          slot_of, stale_marks)

pytestmark = pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is needed to create a cluster")


@pytest.fixture
def fresh(tmp_path):
    factory = ServerFactory(tmp_path)
    c = Cluster(factory, module_args=["cluster-timeout-ms", "1000"])
    yield c
    factory.stop_all()


SPLIT = "TRYAGAIN Multiple keys request during rehashing of slot"


def node_id(c: Cluster, s) -> str:
    return c.client(s).execute_command("CLUSTER", "MYID").decode()


def owned_slots(c: Cluster, s) -> list[int]:
    """The slots a master serves, from its own line of CLUSTER NODES."""
    for line in c.client(s).execute_command("CLUSTER", "NODES").decode().splitlines():
        f = line.split(" ")
        if "myself" in f[2].split(","):
            out = []
            for r in f[8:]:
                if r.startswith("["):
                    continue
                a, _, b = r.partition("-")
                out.extend(range(int(a), int(b or a) + 1))
            return out
    raise AssertionError("no myself line")


def tags_of(c: Cluster, keys) -> dict:
    out = {}
    for k in keys:
        out[k] = sorted(c.rc.execute_command("TAG.TAGS", k))
    return out


def assert_index_on_owners(c: Cluster) -> None:
    """Every index set and stale hash sits on the master that owns its slot."""
    for m in c.masters():
        mine = set(owned_slots(c, m))
        for k in c.client(m).keys("tagcache:*"):
            if k.startswith(b"tagcache:links"):
                continue
            assert slot_of(k) in mine, (m.port, k)


def test_a_key_migrated_alone_leaves_no_index_entry_on_its_source(fresh, tmp_path):
    """`MIGRATE` of one tagged key to a server outside the cluster, no slot
    on the move: the key is gone from the source as by `DEL`, untagged
    there, and a later plain `SET` of that name there (after a reload too)
    carries no tag and survives a purge."""
    outside = ServerFactory(tmp_path / "outside").start()
    try:
        k = b"item:alone"
        fresh.rc.execute_command("TAG.SET", k, "v", "TAGS", 1, "solo")
        src = next(m for m in fresh.masters() if m.port == fresh.rc.get_node_from_key(k).port)
        cs = fresh.client(src)
        assert cs.execute_command("MIGRATE", "127.0.0.1", outside.port, k, 0, 5000) == b"OK"
        assert outside.client().get(k) == b"v"
        assert cs.exists(k) == 0
        assert [s for s in cs.keys("tagcache:idx:*") if k in cs.smembers(s)] == []
        assert cs.execute_command("DEBUG", "RELOAD") == b"OK"
        cs.set(k, "plain")
        assert fresh.rc.execute_command("TAG.TAGS", k) == []
        assert fresh.on(src, "TAG.PURGE", "solo") == 0
        assert cs.get(k) == b"plain"
    finally:
        outside.stop()


def test_restore_asking_replace_outside_a_migration_ends_the_old_tags(fresh):
    k = b"item:restored"
    fresh.rc.execute_command("TAG.SET", k, "old", "TAGS", 2, "a", "b")
    fresh.rc.set(b"item:other", "new")
    payload = fresh.rc.dump(b"item:other")
    owner = next(m for m in fresh.masters() if m.port == fresh.rc.get_node_from_key(k).port)
    co = fresh.client(owner)
    assert co.execute_command("RESTORE-ASKING", k, 0, payload, "REPLACE") == b"OK"
    assert co.get(k) == b"new"
    assert fresh.rc.execute_command("TAG.TAGS", k) == []
    assert [s for s in co.keys("tagcache:idx:*") if k in co.smembers(s)] == []
    assert fresh.on(owner, "TAG.PURGE", "a") == 0
    assert co.get(k) == b"new"


def tagged_key_and_its_nodes(c: Cluster, k: bytes):
    """`k` written with tag `t`; returns its slot, the master holding it,
    another master, that master's replica, and the index set naming `k`."""
    c.rc.execute_command("TAG.SET", k, "v", "TAGS", 1, "t")
    masters, replicas = c.roles()
    src = next(m for m in masters if m.port == c.rc.get_node_from_key(k).port)
    dst = next(m for m in masters if m is not src)
    mine = next(r for r in replicas
                if c.client(r).info("replication")["master_port"] == src.port)
    cs = c.client(src)
    (idx,) = [s for s in cs.keys("tagcache:idx:*") if k in cs.smembers(s)]
    return slot_of(k), src, dst, mine, idx


def test_writes_whose_tag_sets_left_ahead_are_refused_with_tryagain(fresh):
    """A resharding by `MIGRATE` moves keys in any order: when a key's index
    set has left and the key has not, a write that would change the key's
    tags (a plain `SET`, `DEL`, `EXPIRE`, a `TAG.SET` with other tags) is
    refused with `TRYAGAIN` and changes nothing, as the server refuses a
    command whose keys are split between the two nodes; reads pass. On the
    node the slot arrives at, a `TAG.SET` (with `ASKING`) that would write a
    set not arrived yet is refused the same way. Once the slot has moved,
    the key carries the tags it had and a purge takes it."""
    k = b"item:left-behind"
    slot, src, dst, _, idx = tagged_key_and_its_nodes(fresh, k)
    cs, cd = fresh.client(src), fresh.client(dst)
    other = next(b"item:o:%d" % n for n in range(200000) if slot_of(b"item:o:%d" % n) == slot)
    cs.execute_command("SET", other, "before")
    assert cd.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(fresh, src)) == b"OK"
    assert cs.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(fresh, dst)) == b"OK"
    assert cs.execute_command("MIGRATE", "127.0.0.1", dst.port, idx, 0, 5000) == b"OK"
    refused = [("SET", k, "plain"), ("DEL", k), ("EXPIRE", k, 100), ("APPEND", k, "x"),
               ("TAG.SET", k, "v2", "TAGS", 1, "u"), ("TAG.REM", k, "t")]
    for cmd in refused:
        with pytest.raises(redis.ResponseError) as e:
            cs.execute_command(*cmd)
        assert error_text(e.value) == SPLIT, cmd
    assert cs.get(k) == b"v" and cs.ttl(k) == -1
    assert cs.execute_command("TAG.TAGS", k) == [b"t"]
    # A `SETSLOT` that fails (an unknown node; a user not allowed it)
    # changes no slot's state, and lifts no refusal.
    with pytest.raises(redis.ResponseError):
        cs.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", "f" * 40)
    cs.execute_command("ACL", "SETUSER", "ops", "on", ">pw", "~*", "&*", "+@all", "-cluster")
    ops = redis.Redis(host="127.0.0.1", port=src.port, username="ops", password="pw")
    with pytest.raises(redis.exceptions.NoPermissionError):
        ops.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
    ops.close()
    with pytest.raises(redis.ResponseError) as e:
        cs.set(k, "after-a-failed-setslot")
    assert error_text(e.value) == SPLIT
    # In a transaction the refusal comes as the command is queued, and
    # the whole transaction is discarded, as for the server's own TRYAGAIN.
    pipe = cs.pipeline(transaction=True)
    pipe.set(other, "in-multi")
    pipe.set(k, "in-multi")
    with pytest.raises(redis.ResponseError) as e:
        pipe.execute()
    text = error_text(e.value)  # redis-py names the queued command that failed
    assert text.startswith("TRYAGAIN ") and text.endswith(SPLIT[len("TRYAGAIN "):]), text
    assert cs.get(k) == b"v" and cs.get(other) == b"before"
    with pytest.raises(redis.ResponseError) as e:
        cs.eval("return redis.call('SET', KEYS[1], 'from-lua')", 1, k)
    # A script's write is refused by the server's own check of a script's
    # keys in a cluster (its text varies by server).
    text = error_text(e.value)
    assert ("ttempted to access a non local key in a cluster node" in text  # 7.0, Valkey
            or "undeclared keys were accessed during rehashing of the slot" in text  # 8.x
            or text.startswith(SPLIT)), text
    assert cs.get(k) == b"v"
    # The receiving node: a TAG.SET of a new key of the slot (sent there
    # with ASKING) writes only sets that have arrived.
    k2 = next(b"item:lb:%d" % n for n in range(200000) if slot_of(b"item:lb:%d" % n) == slot)
    cd.execute_command("ASKING")
    with pytest.raises(redis.ResponseError) as e:
        cd.execute_command("TAG.SET", k2, "w", "TAGS", 1, "new-tag")
    assert error_text(e.value) == SPLIT
    cd.execute_command("ASKING")
    assert cd.exists(k2) == 0
    cd.execute_command("ASKING")
    assert cd.execute_command("TAG.SET", k2, "w", "TAGS", 1, "t") == b"OK"
    # The slot ends its move: the key follows, and carries what it had.
    assert cs.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000,
                              "KEYS", k, other) == b"OK"
    for c in (cd, cs):
        assert c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(fresh, dst)) == b"OK"
    fresh.wait_ok()
    wait_until(lambda: cd.execute_command("TAG.TAGS", k) == [b"t"], timeout=10)
    assert sorted(cd.smembers(idx)) == sorted([k, k2])
    assert [s for s in cs.keys("tagcache:*") if slot_of(s) == slot] == []
    assert fresh.on(dst, "TAG.PURGE", "t") == 2
    assert cd.exists(k, k2) == 0
    # Once moved, writes of the slot are plain writes again, there.
    fresh.rc.execute_command("TAG.SET", k, "again", "TAGS", 1, "t")
    assert cd.set(k, "plain") is True
    assert cd.execute_command("TAG.TAGS", k) == []


def keys_of_slot(slot: int, prefix: bytes, n: int) -> list[bytes]:
    found = (b"%s:%d" % (prefix, i) for i in range(400000))
    return [k for k in found if slot_of(k) == slot][:n]


@pytest.mark.parametrize("order", ["sets-first", "keys-first"])
def test_keys_rewritten_where_they_arrived_before_the_slot_is_assigned_keep_their_last_write(
        fresh, order):
    """A resharding by `MIGRATE` moves a slot's keys and its index sets and
    stale hash in any order, and a client may write a key that has arrived
    (with `ASKING`) before the slot is assigned there, or in the same turn
    as the `SETSLOT … NODE`. What arrived from the node it left says what
    the key carried before that write: once the slot is assigned, each key
    carries what its last write gave it, is stale only if it was stale and
    not rewritten since, and a purge takes exactly the keys that carry the
    tag."""
    plain, retagged, kept, late, inplace, renamed, retold = keys_of_slot(
        slot_of(b"item:arrive"), b"item:arrive", 7)
    for k in (plain, retagged, kept, late, inplace, retold):
        fresh.rc.execute_command("TAG.SET", k, "v", "TAGS", 2, "t", "u")
    slot = slot_of(plain)
    src = next(m for m in fresh.masters() if m.port == fresh.rc.get_node_from_key(plain).port)
    dst = next(m for m in fresh.masters() if m is not src)
    cs, cd = fresh.client(src), fresh.client(dst)
    assert fresh.on(src, "TAG.INVALIDATE", "SOFT", 600000, "TAGS", 1, "u") == 6
    module_keys = [k for k in cs.keys("tagcache:*") if slot_of(k) == slot]
    assert len(module_keys) == 3  # the sets of t and u, the stale hash
    assert cd.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(fresh, src)) == b"OK"
    assert cs.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(fresh, dst)) == b"OK"

    def migrate(keys):
        assert cs.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000,
                                  "KEYS", *keys) == b"OK"

    def asking(*cmd):
        cd.execute_command("ASKING")
        return cd.execute_command(*cmd)

    if order == "sets-first":
        migrate(module_keys)
        migrate([plain, retagged, kept, late, inplace, retold])
        assert asking("SET", plain, "plain") is True
        assert asking("TAG.SET", retagged, "v2", "TAGS", 1, "t") == b"OK"
        want_retagged = [b"t"]
        # Module commands see the tags that have arrived for the key.
        assert sorted(asking("TAG.TAGS", retold)) == [b"t", b"u"]
        assert asking("TAG.ADD", retold, "u") == 0
        assert asking("TAG.REM", retold, "t") == 1
        assert asking("TAG.TAGS", retold) == [b"u"]
    else:
        migrate([plain, retagged, kept, late, inplace, retold])
        assert asking("SET", plain, "plain") is True
        # Its tag sets have not arrived: refused whole, as a command whose
        # keys are split between the two nodes.
        with pytest.raises(redis.ResponseError) as e:
            asking("TAG.SET", retagged, "v2", "TAGS", 1, "t")
        assert error_text(e.value) == SPLIT
        with pytest.raises(redis.ResponseError) as e:
            asking("TAG.REM", retold, "t")
        assert error_text(e.value) == SPLIT
        migrate(module_keys)
        want_retagged = [b"t", b"u"]
    # A change in place keeps the tags and the stale mark that arrived.
    assert asking("APPEND", inplace, "+") == 2
    # A rename would not carry the tags that arrived (not read yet) to the
    # new name: refused, as the server refuses one to a name not here.
    assert asking("SET", renamed, "r") is True
    for cmd in ("RENAME", "RENAMENX"):
        with pytest.raises(redis.ResponseError) as e:
            asking(cmd, kept, renamed)
        assert error_text(e.value) == SPLIT, cmd
    assert asking("GET", kept) == b"v" and asking("GET", renamed) == b"r"
    cd.execute_command("ASKING")
    pipe = cd.pipeline(transaction=True)
    pipe.execute_command("SET", late, "in-multi")
    pipe.execute_command("RENAME", kept, renamed)
    with pytest.raises(redis.ResponseError) as e:
        pipe.execute()
    text = error_text(e.value)  # redis-py names the queued command that failed
    assert text.startswith("TRYAGAIN ") and text.endswith(SPLIT[len("TRYAGAIN "):]), text
    assert asking("GET", late) == b"v" and asking("GET", kept) == b"v"
    # The same IMPORTING again in the middle of the import forgets nothing.
    assert cd.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(fresh, src)) == b"OK"
    assert cs.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(fresh, dst)) == b"OK"
    # The node it reached is assigned the slot, and a write follows in
    # the same turn, before the slot's data is read there.
    pipe = cd.pipeline(transaction=False)
    pipe.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(fresh, dst))
    pipe.execute_command("SET", late, "plain")
    assert pipe.execute() == [b"OK", True]
    fresh.wait_ok()
    wait_until(lambda: sorted(cd.execute_command("TAG.TAGS", kept)) == [b"t", b"u"], timeout=10,
               what="the slot read where it arrived")
    assert cd.execute_command("TAG.TAGS", plain) == []
    assert cd.execute_command("TAG.TAGS", late) == []
    assert sorted(cd.execute_command("TAG.TAGS", retagged)) == want_retagged
    wait_until(lambda: [s for s in cd.keys("tagcache:idx:*") if slot_of(s) == slot
                        and ({plain, late} & set(cd.smembers(s)))] == [], timeout=10,
               what="the rewritten keys out of the slot's index sets")
    assert sorted(cd.execute_command("TAG.TAGS", inplace)) == [b"t", b"u"]
    assert cd.execute_command("TAG.TAGS", renamed) == []
    want_retold = [b"u"] if order == "sets-first" else [b"t", b"u"]
    assert sorted(cd.execute_command("TAG.TAGS", retold)) == want_retold
    want_stale = {kept, inplace, retold} | ({retagged} if order == "keys-first" else set())
    wait_until(lambda: set(stale_marks(fresh)) == want_stale, timeout=10,
               what="stale marks of the keys not rewritten only")
    assert cd.get(plain) == b"plain" and cd.get(late) == b"plain"
    assert fresh.on(dst, "TAG.PURGE", "u") == len(want_stale)
    assert cd.get(plain) == b"plain" and cd.get(late) == b"plain"
    assert cd.exists(kept, inplace, retold) == 0
    assert fresh.on(dst, "TAG.PURGE", "t") == (1 if order == "sets-first" else 0)
    assert sorted(cd.keys("item:arrive*")) == sorted([plain, late, renamed])
    assert_replicas_match(fresh)


def test_writes_from_other_clients_just_after_a_slot_is_assigned_keep_their_last_write(fresh):
    """Right after the slot's `SETSLOT … NODE` on the node it reaches, other
    clients write its keys there (no `ASKING` needed: the slot is this
    node's), as the slot is read. Each key carries what its last write gave
    it; module commands see the tags that arrived; a purge is refused with
    `TRYAGAIN` while the slot is not read, and afterwards takes exactly the
    keys that carry the tag."""
    plain, gone, retagged, kept, seen = keys_of_slot(slot_of(b"item:late"), b"item:late", 5)
    for k in (plain, gone, retagged, kept, seen):
        fresh.rc.execute_command("TAG.SET", k, "v", "TAGS", 1, "t")
    slot = slot_of(plain)
    src = next(m for m in fresh.masters() if m.port == fresh.rc.get_node_from_key(plain).port)
    dst = next(m for m in fresh.masters() if m is not src)
    cs, cd = fresh.client(src), fresh.client(dst)
    others = [fresh.client(dst) for _ in range(3)]
    for o in others:
        assert o.ping() is True
    assert cd.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(fresh, src)) == b"OK"
    assert cs.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(fresh, dst)) == b"OK"
    keys = [k for k in cs.keys("*") if slot_of(k) == slot]
    assert cs.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *keys) == b"OK"
    assert cs.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(fresh, dst)) == b"OK"
    assert cd.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(fresh, dst)) == b"OK"
    # Other clients, each its own turn, right after the slot became this
    # node's.
    assert others[0].set(plain, "plain") is True
    assert others[1].delete(gone) == 1
    try:
        assert others[2].execute_command("TAG.PURGE", "w") == 0
    except redis.ResponseError as e:
        assert error_text(e).startswith("TRYAGAIN "), error_text(e)
    assert others[2].execute_command("TAG.SET", retagged, "v2", "TAGS", 1, "u") == b"OK"
    assert others[0].execute_command("TAG.TAGS", seen) == [b"t"]
    fresh.wait_ok()
    wait_until(lambda: cd.execute_command("TAG.TAGS", kept) == [b"t"], timeout=10,
               what="the slot read where it arrived")
    assert fresh.on(dst, "TAG.PURGE", "u") == 1
    assert cd.exists(retagged) == 0
    assert cd.execute_command("TAG.TAGS", plain) == []
    wait_until(lambda: [s for s in cd.keys("tagcache:idx:*") if slot_of(s) == slot
                        and ({plain, gone, retagged} & set(cd.smembers(s)))] == [], timeout=10,
               what="the rewritten keys out of the slot's index sets")
    assert fresh.on(dst, "TAG.CARD", "t") == 2
    assert fresh.on(dst, "TAG.PURGE", "t") == 2
    assert cd.get(plain) == b"plain"
    assert sorted(k for k in fresh.all_keys() if k.startswith(b"item:late")) == [plain]
    assert_replicas_match(fresh)


@pytest.mark.parametrize("seed", range(1, 4))
def test_random_commands_while_a_slot_moves_key_by_key_match_a_model(fresh, seed):
    """One slot's tagged keys (some stale) and its index sets and stale hash
    move by `MIGRATE` in random batches, in random order. Between batches,
    random commands on its keys go where a cluster client sends them (the
    node that has the key; the receiving one, with `ASKING`, otherwise), and
    each reply is checked against a plain-Python model of each key's value,
    tags and stale mark (a `TRYAGAIN` changes nothing). Once the slot is
    assigned, the keys, their tags, stale marks and index sets, and what each
    purge deletes, are the model's."""
    rng = random.Random(seed)
    pool = [b"a", b"b", b"c"]
    names = keys_of_slot(slot_of(b"item:model"), b"item:model", 24)
    slot = slot_of(names[0])
    model: dict[bytes, dict] = {}
    for i, k in enumerate(names[:18]):
        tags = {pool[i % 3]} | ({rng.choice(pool)} if rng.random() < 0.5 else set())
        fresh.rc.execute_command("TAG.SET", k, b"v0", "TAGS", len(tags), *sorted(tags))
        model[k] = {"value": b"v0", "tags": tags, "stale": False}
    src = next(m for m in fresh.masters() if m.port == fresh.rc.get_node_from_key(names[0]).port)
    dst = next(m for m in fresh.masters() if m is not src)
    cs, cd = fresh.client(src), fresh.client(dst)
    n_a = sum(1 for e in model.values() if b"a" in e["tags"])
    assert fresh.on(src, "TAG.INVALIDATE", "SOFT", 600000, "TAGS", 1, "a") == n_a
    for e in model.values():
        e["stale"] = b"a" in e["tags"]
    set_of = {k[-1:]: k for k in cs.keys("tagcache:idx:*") if slot_of(k) == slot}
    assert sorted(set_of) == pool
    assert cd.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(fresh, src)) == b"OK"
    assert cs.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(fresh, dst)) == b"OK"

    history: list = []

    def send(k, *cmd):
        """Where a cluster client sends a command on `k`: the reply, or
        the error's text."""
        on_src = k in cs.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        c = cs if on_src else cd
        try:
            if not on_src:
                c.execute_command("ASKING")
            r = c.execute_command(*cmd)
        except redis.ResponseError as e:
            r = error_text(e)
        history.append((cmd, "src" if on_src else "dst", r))
        return on_src, r

    def story(keys):
        """What happened to `keys`, for a failure's message."""
        return [h for h in history if any(k in h[0] for k in keys)]

    def random_command():
        k = rng.choice(names)
        e = model.get(k)
        op = rng.choice(["tag.set", "set", "del", "append", "tag.add", "tag.rem", "tag.tags"])
        if op == "tag.set":
            tags = set(rng.sample(pool, rng.randint(1, 2)))
            on_src, r = send(k, "TAG.SET", k, b"w", "TAGS", len(tags), *sorted(tags))
            if r != SPLIT:
                assert r == b"OK", (op, k, r)
                model[k] = {"value": b"w", "tags": tags, "stale": False}
        elif op == "set":
            on_src, r = send(k, "SET", k, b"p")
            if r != SPLIT:
                assert r is True, (op, k, r)
                model[k] = {"value": b"p", "tags": set(), "stale": False}
        elif op == "del":
            on_src, r = send(k, "DEL", k)
            if r != SPLIT:
                assert r == (1 if e else 0), (op, k, r)
                model.pop(k, None)
        elif op == "append":
            on_src, r = send(k, "APPEND", k, b"+")
            if r != SPLIT:
                value = (e["value"] if e else b"") + b"+"
                assert r == len(value), (op, k, r)
                if e:
                    e["value"] = value
                else:
                    model[k] = {"value": value, "tags": set(), "stale": False}
        elif op in ("tag.add", "tag.rem"):
            t = rng.choice(pool)
            on_src, r = send(k, op.upper(), k, t)
            if r == SPLIT:
                return
            if op == "tag.add" and not e:
                assert r == "ERR no such key", (op, k, r)
                return
            had = bool(e) and t in e["tags"]
            assert r == (int(not had) if op == "tag.add" else int(had)), (op, k, t, r)
            if e:
                (e["tags"].add if op == "tag.add" else e["tags"].discard)(t)
        else:
            on_src, r = send(k, "TAG.TAGS", k)
            want = e["tags"] if e else set()
            if not on_src:
                # Where the key arrived, before the slot is read: the tags
                # whose sets have arrived.
                def arrived(t):
                    cd.execute_command("ASKING")
                    return cd.exists(set_of[t]) == 1
                want = {t for t in want if arrived(t)}
            assert sorted(r) == sorted(want), (op, k, on_src, r)

    for _ in range(40):
        on_src = cs.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        if not on_src:
            break
        batch = rng.sample(on_src, min(len(on_src), rng.randint(1, 4)))
        assert cs.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000,
                                  "KEYS", *batch) == b"OK"
        history.append((("MIGRATE", *batch), "src", b"OK"))
        for _ in range(rng.randint(1, 4)):
            random_command()
    rest = cs.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    if rest:
        assert cs.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000,
                                  "KEYS", *rest) == b"OK"
    # The node the slot leaves is told first, or last.
    source_first = rng.random() < 0.5
    if source_first:
        assert cs.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(fresh, dst)) == b"OK"
    # A write in the same turn as the slot's assignment, before it is read.
    k = rng.choice(names)
    pipe = cd.pipeline(transaction=False)
    pipe.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(fresh, dst))
    pipe.execute_command("SET", k, b"last")
    assert pipe.execute() == [b"OK", True]
    model[k] = {"value": b"last", "tags": set(), "stale": False}
    if not source_first:
        assert cs.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(fresh, dst)) == b"OK"
    fresh.wait_ok()
    assert cs.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    for k in names:
        e = model.get(k)
        assert cd.get(k) == (e["value"] if e else None), story([k])
        assert sorted(cd.execute_command("TAG.TAGS", k)) == sorted(e["tags"] if e else []), \
            story([k])
    for t in pool:
        want = {k for k, e in model.items() if t in e["tags"]}
        got = set(cd.smembers(set_of[t]))
        assert got == want, (t, story(got ^ want))
    stale = set(stale_marks(fresh))
    want = {k for k, e in model.items() if e["stale"]}
    assert stale == want, story(stale ^ want)
    # The marks the node keeps in memory: a stale key hands its first
    # reader a refresh lease, a fresh one none.
    for k, e in model.items():
        value, token = cd.execute_command("TAG.GETL", k)
        assert value == e["value"] and (token is not None) == e["stale"], story([k])
    # Commands ran on both nodes, and were applied on both.
    for node in ("src", "dst"):
        assert any(h[1] == node and h[2] != SPLIT for h in history if h[0][0] != "MIGRATE"), node
    assert_replicas_match(fresh)
    for t in pool:
        want = {k for k, e in model.items() if t in e["tags"]}
        assert fresh.on(dst, "TAG.PURGE", t) == len(want), t
        for k in want:
            model.pop(k)
    assert set(cd.keys("item:model*")) == set(model)


def test_an_import_given_up_says_nothing_about_the_next_import_of_the_slot(fresh):
    """A key written where its slot was arriving, in an import given up
    (`SETSLOT … STABLE`), is not taken for rewritten when the slot arrives
    there again later: it carries the tags it had on the node it left."""
    k, other = keys_of_slot(slot_of(b"item:given-up"), b"item:given-up", 2)
    slot = slot_of(k)
    fresh.rc.execute_command("TAG.SET", other, "v", "TAGS", 1, "t")
    src = next(m for m in fresh.masters() if m.port == fresh.rc.get_node_from_key(k).port)
    dst = next(m for m in fresh.masters() if m is not src)
    cs, cd = fresh.client(src), fresh.client(dst)

    def importing():
        assert cd.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING",
                                  node_id(fresh, src)) == b"OK"
        assert cs.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING",
                                  node_id(fresh, dst)) == b"OK"

    importing()
    cd.execute_command("ASKING")
    assert cd.set(k, "written-there") is True
    cd.execute_command("ASKING")
    assert cd.delete(k) == 1
    for c in (cd, cs):
        assert c.execute_command("CLUSTER", "SETSLOT", slot, "STABLE") == b"OK"
    # Turns of the event loop pass; then the key is tagged where it is.
    time.sleep(0.3)
    assert cs.execute_command("TAG.SET", k, "v", "TAGS", 1, "t") == b"OK"
    importing()
    module_keys = [x for x in cs.keys("tagcache:*") if slot_of(x) == slot]
    assert cs.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000,
                              "KEYS", k, other, *module_keys) == b"OK"
    for c in (cd, cs):
        assert c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(fresh, dst)) == b"OK"
    fresh.wait_ok()
    wait_until(lambda: cd.execute_command("TAG.TAGS", other) == [b"t"], timeout=10,
               what="the slot read where it arrived")
    assert cd.execute_command("TAG.TAGS", k) == [b"t"]
    assert fresh.on(dst, "TAG.PURGE", "t") == 2


def start_moving(c: Cluster, k: bytes):
    """Marks the slot of `k` migrating from the master holding it to
    another (`SETSLOT … IMPORTING`, then `MIGRATING`); returns the slot,
    both masters and a client of each."""
    src = next(m for m in c.masters() if m.port == c.rc.get_node_from_key(k).port)
    dst = next(m for m in c.masters() if m is not src)
    cs, cd = c.client(src), c.client(dst)
    slot = slot_of(k)
    assert cd.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(c, src)) == b"OK"
    assert cs.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(c, dst)) == b"OK"
    return slot, src, dst, cs, cd


def test_writes_of_stale_keys_whose_stale_hash_left_ahead_are_refused_with_tryagain(fresh):
    """The slot's stale hash leaves by `MIGRATE` before its keys: a write
    that would end a key's stale mark there (`DEL`, a plain `SET`) is
    refused with `TRYAGAIN` and changes nothing; once the keys follow and
    the slot is assigned, they are still stale, and nothing else is."""
    k, k2, fresh_key = keys_of_slot(slot_of(b"item:stale-ahead"), b"item:stale-ahead", 3)
    slot = slot_of(k)
    for x in (k, k2):
        fresh.rc.execute_command("TAG.SET", x, b"v0", "TAGS", 1, "a")
    fresh.rc.execute_command("TAG.SET", fresh_key, b"v0", "TAGS", 1, "b")
    assert fresh.on(fresh.masters()[0], "TAG.INVALIDATE", "SOFT", 600000, "TAGS", 1, "a") == 2
    (hash_key,) = [x for m in fresh.masters() for x in fresh.client(m).keys("tagcache:stale*")
                   if slot_of(x) == slot]
    slot, src, dst, cs, cd = start_moving(fresh, k)
    assert cs.execute_command("MIGRATE", "127.0.0.1", dst.port, hash_key, 0, 5000) == b"OK"
    for cmd in [("DEL", k), ("SET", k2, "x")]:
        with pytest.raises(redis.ResponseError) as e:
            cs.execute_command(*cmd)
        assert error_text(e.value) == SPLIT, cmd
    # A key that is not stale is written as usual.
    assert cs.set(fresh_key, "plain") is True
    assert cs.get(k) == b"v0" and cs.get(k2) == b"v0"
    rest = cs.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
    assert cs.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *rest) == b"OK"
    for c in (cs, cd):
        assert c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(fresh, dst)) == b"OK"
    fresh.wait_ok()
    wait_until(lambda: set(stale_marks(fresh)) == {k, k2}, timeout=10,
               what="the two stale keys stale where they arrived")
    assert cd.execute_command("TAG.TAGS", fresh_key) == []
    assert fresh.on(dst, "TAG.PURGE", "a") == 2
    assert cd.exists(k, k2) == 0 and cd.get(fresh_key) == b"plain"


def test_a_stale_key_that_expires_after_its_stale_hash_left_leaves_no_mark_behind(fresh):
    """A stale key lives out its grace and expires on the node its slot
    leaves, after the slot's stale hash has left: once the slot is assigned
    where it arrives, no stale mark names it there, and a key written later
    under that name is fresh."""
    k, other = keys_of_slot(slot_of(b"item:grace"), b"item:grace", 2)
    slot = slot_of(k)
    fresh.rc.execute_command("TAG.SET", k, b"v0", "TAGS", 1, "a")
    fresh.rc.execute_command("TAG.SET", other, b"v0", "TAGS", 1, "a")
    assert fresh.on(fresh.masters()[0], "TAG.INVALIDATE", "SOFT", 600000, "TAGS", 1, "a") == 2
    assert fresh.rc.pexpire(k, 300) is True
    (hash_key,) = [x for m in fresh.masters() for x in fresh.client(m).keys("tagcache:stale*")
                   if slot_of(x) == slot]
    slot, src, dst, cs, cd = start_moving(fresh, k)
    assert cs.execute_command("MIGRATE", "127.0.0.1", dst.port, hash_key, 0, 5000) == b"OK"
    wait_until(lambda: k not in cs.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100),
               timeout=10, what="the stale key expired where it was")
    rest = cs.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
    assert cs.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *rest) == b"OK"
    for c in (cs, cd):
        assert c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(fresh, dst)) == b"OK"
    fresh.wait_ok()
    wait_until(lambda: set(stale_marks(fresh)) == {other}, timeout=10,
               what="the stale mark of the key that expired gone")
    assert cd.set(k, "new") is True
    assert cd.execute_command("TAG.GETL", k, "TTL", 1000) == [b"new", None]
    assert set(stale_marks(fresh)) == {other}


def test_a_master_demoted_while_its_tag_sets_are_away_applies_its_new_masters_writes(fresh):
    """The refusal is a master's: once the node that saw an index set leave
    ahead is a replica (a failover in the middle of a move), its new
    master's writes of that key reach it, and the two stay identical."""
    k = b"item:demoted"
    slot, src, dst, mine, idx = tagged_key_and_its_nodes(fresh, k)
    cs, cd = fresh.client(src), fresh.client(dst)
    assert cd.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(fresh, src)) == b"OK"
    assert cs.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(fresh, dst)) == b"OK"
    assert cs.execute_command("MIGRATE", "127.0.0.1", dst.port, idx, 0, 5000) == b"OK"
    with pytest.raises(redis.ResponseError) as e:
        cs.set(k, "refused")
    assert error_text(e.value) == SPLIT
    fresh.sync_replicas()
    cr = fresh.client(mine)
    assert cr.execute_command("CLUSTER", "FAILOVER") == b"OK"
    wait_until(lambda: cr.execute_command("ROLE")[0] == b"master"
               and cs.execute_command("ROLE")[0] == b"slave", 30, what="the replica promoted")
    assert cr.set(k, "after-failover") is True
    cs.execute_command("READONLY")
    wait_until(lambda: cs.get(k) == b"after-failover", 10,
               what="the demoted master applies its new master's write")
    wait_until(lambda: digest(cs) == digest(cr), 10, what="the two datasets equal")


def test_a_setslot_held_for_the_replicas_is_followed_once_it_runs(fresh):
    """Valkey holds `CLUSTER SETSLOT` until the master's replicas have it,
    and runs it in a later turn. Writes in the slot while it is held see the
    slot as it was; once it has run and the key's index set has left, a
    write that would change the set is refused whole, at once (not the
    value written and the set's update refused after)."""
    info = fresh.client(fresh.nodes[0]).info("server")
    if "valkey_version" not in info:
        pytest.skip("only Valkey holds CLUSTER SETSLOT for the replicas")
    k = b"item:held"
    slot, src, dst, mine, idx = tagged_key_and_its_nodes(fresh, k)
    cs, cd = fresh.client(src), fresh.client(dst)
    neighbours = [b"item:hn:%d" % n for n in range(200000) if slot_of(b"item:hn:%d" % n) == slot][:3]
    assert cd.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(fresh, src)) == b"OK"
    sleeper = threading.Thread(
        target=lambda: fresh.client(mine).execute_command("DEBUG", "SLEEP", "0.6"), daemon=True)
    sleeper.start()
    time.sleep(0.1)
    held = {}
    setslot = threading.Thread(target=lambda: held.setdefault("reply", fresh.client(src).execute_command(
        "CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(fresh, dst))), daemon=True)
    setslot.start()
    # Writes of the slot while the SETSLOT is held: plain tagged writes.
    writer = fresh.client(src)
    deadline = time.monotonic() + 5
    n = 0
    while setslot.is_alive() and time.monotonic() < deadline:
        assert writer.execute_command("TAG.SET", neighbours[n % 3], "w", "TAGS", 1, "t") == b"OK"
        n += 1
        time.sleep(0.005)
    setslot.join(5)
    sleeper.join(5)
    assert held.get("reply") == b"OK" and n > 0
    assert cs.execute_command("MIGRATE", "127.0.0.1", dst.port, idx, 0, 5000) == b"OK"
    for cmd in [("TAG.SET", k, "v2", "TAGS", 1, "u"), ("TAG.SET", k, "v3", "TAGS", 1, "t"),
                ("SET", k, "plain")]:
        with pytest.raises(redis.ResponseError) as e:
            cs.execute_command(*cmd)
        assert error_text(e.value) == SPLIT, cmd
    assert cs.get(k) == b"v" and cs.execute_command("TAG.TAGS", k) == [b"t"]


def is_valkey9(c: Cluster) -> bool:
    info = c.client(c.nodes[0]).info("server")
    return int(str(info.get("valkey_version", "0")).split(".")[0]) >= 9


class Writer(threading.Thread):
    """Rewrites random keys while slots move: TAG.SET with new tags (the
    key's tags are then those), or a plain SET (the key carries none).
    Bounded in count and time; what it wrote last per key is kept."""

    def __init__(self, c: Cluster, keys, seed: int):
        super().__init__(daemon=True)
        self.rc = RedisCluster(host="127.0.0.1", port=c.masters()[0].port,
                               decode_responses=False, socket_timeout=30)
        self.keys = keys
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.wrote: dict[bytes, list] = {}
        self.errors: list[str] = []
        self.refused: list[str] = []

    def run(self):
        deadline = time.monotonic() + 60
        for i in range(20000):
            if self.stop.is_set() or time.monotonic() > deadline:
                break
            k = self.rng.choice(self.keys)
            try:
                if self.rng.random() < 0.7:
                    t = sorted({f"w{self.rng.randrange(3)}", "all"})
                    self.rc.execute_command("TAG.SET", k, f"w{i}", "TAGS", len(t), *t)
                    self.wrote[k] = [x.encode() for x in t]
                else:
                    self.rc.set(k, f"p{i}")
                    self.wrote[k] = []
            except (redis.exceptions.TryAgainError, redis.exceptions.ClusterError) as e:
                # Refused while its slot moved (the client's retries ran
                # out): it changed nothing, so the last write stands.
                self.refused.append(str(e))
            except redis.RedisError as e:
                self.errors.append(str(e))
                self.wrote.pop(k, None)
            time.sleep(0.001)


def assert_tags_as_written(c: Cluster, keys, before: dict, writer: Writer) -> dict:
    """Every key carries the tags it had, or those of the writer's last
    write of it. Returns the tags."""
    assert writer.errors == [], writer.errors[:5]
    want = dict(before)
    want.update({k: sorted(t) for k, t in writer.wrote.items()})
    got = tags_of(c, keys)
    assert got == want, ([(k, got[k], want[k]) for k in keys if got[k] != want[k]], writer.errors[:5])
    return want


def atomic_migrate(c: Cluster, src, dst, slots: list[int]) -> None:
    """CLUSTER MIGRATESLOTS of `slots` (contiguous) from src to dst; waits
    until every node sees dst own them."""
    a, b = slots[0], slots[-1]
    cs = c.client(src)
    assert cs.execute_command("CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", a, b, "NODE",
                              node_id(c, dst)) == b"OK"

    def moved():
        return all(x in owned_slots(c, dst) for x in (a, b)) and a not in owned_slots(c, src)
    wait_until(moved, 60, interval=0.05, what=f"slots {a}-{b} owned by {dst.port}")
    c.wait_ok()


def test_atomic_slot_migration_keeps_tags_and_stale_state_with_writes_going_on(fresh):
    if not is_valkey9(fresh):
        pytest.skip("atomic slot migration (CLUSTER MIGRATESLOTS) is a Valkey 9.0+ command")
    keys = fresh.fill(3000)
    # Some keys stale: a soft invalidation of t1 from one master.
    assert fresh.on(fresh.masters()[0], "TAG.INVALIDATE", "SOFT", 600000, "TAGS", 1, "t1") == 600
    marks = stale_marks(fresh)
    assert len(marks) == 600
    before = tags_of(fresh, keys)
    masters = fresh.masters()
    src, dst = masters[0], masters[1]
    moving = owned_slots(fresh, src)[:300]
    in_moving = [k for k in keys if slot_of(k) in set(moving)]
    assert len(in_moving) > 20
    writer = Writer(fresh, in_moving[:50] + keys[-50:], seed=7)
    writer.start()
    try:
        atomic_migrate(fresh, src, dst, moving)
        time.sleep(0.2)
    finally:
        writer.stop.set()
        writer.join(30)
    fresh.rc = RedisCluster(host="127.0.0.1", port=dst.port, decode_responses=False,
                            socket_timeout=30)
    want = assert_tags_as_written(fresh, keys, before, writer)
    # A key rewritten meanwhile is fresh; every other stale key still is.
    after = stale_marks(fresh)
    assert after == {k: v for k, v in marks.items() if k not in writer.wrote}
    assert_index_is_local(fresh)
    assert_index_on_owners(fresh)
    n_all = sum(1 for t in want.values() if b"all" in t)
    for m in fresh.masters():
        assert fresh.on(m, "TAG.CARD", "all") == n_all
    assert_replicas_match(fresh)
    assert fresh.on(src, "TAG.PURGE", "all") == n_all
    left = {k for k in fresh.all_keys() if not k.startswith((b"tagcache:", b"tag:"))}
    assert left == {k for k, t in want.items() if b"all" not in t}
    assert_replicas_match(fresh)


def test_commands_right_after_a_large_atomic_import_see_every_tag(fresh):
    """The node an atomic import reaches reads its slots a few at a time
    once it ends, so that a large import does not hold the server; until a
    slot is read, a command on one of its keys reads that slot first, a
    purge or count reads them all first, and a key that other clients
    replace or remove meanwhile carries what that write gave it."""
    if not is_valkey9(fresh):
        pytest.skip("atomic slot migration (CLUSTER MIGRATESLOTS) is a Valkey 9.0+ command")
    masters = fresh.masters()
    src, dst = masters[0], masters[1]
    moving = owned_slots(fresh, src)[:20]
    names = {}
    for i in range(200000):
        names.setdefault(slot_of(b"%d" % i), b"%d" % i)
        if all(x in names for x in moving):
            break
    keys = [b"{%s}big:%d" % (names[x], i) for x in moving for i in range(1000)]
    cs = fresh.client(src)
    pipe = cs.pipeline(transaction=False)
    for i, k in enumerate(keys):
        pipe.execute_command("TAG.SET", k, "v", "TAGS", 1, "a")
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    # Keys of the last slot: read last.
    plain, gone, retagged, seen = keys[-4:]
    others = [fresh.client(dst) for _ in range(4)]
    for o in others:
        assert o.ping() is True
    assert cs.execute_command("CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", moving[0], moving[-1],
                              "NODE", node_id(fresh, dst)) == b"OK"
    wait_until(lambda: moving[-1] in owned_slots(fresh, dst), 60, interval=0.001,
               what="the slots owned by the node they reached")
    assert others[0].set(plain, "plain") is True
    assert others[1].delete(gone) == 1
    assert others[2].execute_command("TAG.SET", retagged, "v2", "TAGS", 1, "c") == b"OK"
    assert others[3].execute_command("TAG.TAGS", seen) == [b"a"]
    fresh.wait_ok()
    assert fresh.on(dst, "TAG.CARD", "a") == len(keys) - 3
    assert fresh.on(src, "TAG.CARD", "c") == 1
    assert others[0].execute_command("TAG.TAGS", plain) == []
    wait_until(lambda: not {plain, gone, retagged} & set(
        others[0].smembers(b"tagcache:idx:{%s}a" % names[moving[-1]])), timeout=10,
        what="the rewritten keys out of the slot's index set")
    assert_index_on_owners(fresh)
    assert fresh.on(src, "TAG.PURGE", "a") == len(keys) - 3
    assert fresh.on(dst, "TAG.PURGE", "c") == 1
    assert sorted(k for k in fresh.all_keys() if b"}big:" in k) == [plain]
    assert_replicas_match(fresh)


def test_atomic_migration_back_and_forth_keeps_the_index_exact(fresh):
    """Slots moved away and back: nothing of them stays behind on the node
    they left, and the node they return to reads them again."""
    if not is_valkey9(fresh):
        pytest.skip("atomic slot migration (CLUSTER MIGRATESLOTS) is a Valkey 9.0+ command")
    keys = fresh.fill(1500)
    before = tags_of(fresh, keys)
    masters = fresh.masters()
    a, b = masters[0], masters[1]
    moving = owned_slots(fresh, a)[-100:]
    atomic_migrate(fresh, a, b, moving)
    for m in (a, b):
        cl = fresh.client(m)
        data = [k for k in cl.keys("*") if not k.startswith((b"tagcache:", b"tag:"))]
        assert tag_info(cl)["tagged_keys"] == len(data), m.port
    atomic_migrate(fresh, b, a, moving)
    fresh.rc = RedisCluster(host="127.0.0.1", port=a.port, decode_responses=False,
                            socket_timeout=30)
    assert tags_of(fresh, keys) == before
    assert_index_is_local(fresh)
    assert_index_on_owners(fresh)
    for m in fresh.masters():
        assert fresh.on(m, "TAG.CARD", "all") == len(keys)
    assert_replicas_match(fresh)


def test_a_resharding_by_migrate_with_writes_going_on_keeps_every_tag(fresh):
    """`redis-cli --cluster reshard` (MIGRATE, RESTORE-ASKING, then CLUSTER
    SETSLOT … NODE) of 300 slots while another client rewrites keys."""
    keys = fresh.fill(3000)
    assert fresh.on(fresh.masters()[0], "TAG.INVALIDATE", "SOFT", 600000, "TAGS", 1, "t2") == 600
    marks = stale_marks(fresh)
    before = tags_of(fresh, keys)
    masters = fresh.masters()
    src, dst = masters[0], masters[1]
    moving = set(owned_slots(fresh, src)[:300])
    in_moving = [k for k in keys if slot_of(k) in moving]
    writer = Writer(fresh, in_moving[:50] + keys[-50:], seed=11)
    writer.start()
    try:
        out = subprocess.run(
            [REDIS_CLI, "--cluster", "reshard", f"127.0.0.1:{src.port}",
             "--cluster-from", node_id(fresh, src), "--cluster-to", node_id(fresh, dst),
             "--cluster-slots", "300", "--cluster-yes"],
            capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    finally:
        writer.stop.set()
        writer.join(30)
    fresh.wait_ok()
    fresh.rc = RedisCluster(host="127.0.0.1", port=dst.port, decode_responses=False,
                            socket_timeout=30)
    want = assert_tags_as_written(fresh, keys, before, writer)
    assert stale_marks(fresh) == {k: v for k, v in marks.items() if k not in writer.wrote}
    assert_index_is_local(fresh)
    assert_index_on_owners(fresh)
    n_all = sum(1 for t in want.values() if b"all" in t)
    for m in fresh.masters():
        assert fresh.on(m, "TAG.CARD", "all") == n_all
        cl = fresh.client(m)
        data = [k for k in cl.keys("*") if not k.startswith((b"tagcache:", b"tag:"))]
        tagged = [k for k in data if want.get(k)]
        assert tag_info(cl)["tagged_keys"] == len(tagged), m.port
    assert_replicas_match(fresh)
    assert fresh.on(src, "TAG.PURGE", "all") == n_all
    left = {k for k in fresh.all_keys() if not k.startswith((b"tagcache:", b"tag:"))}
    assert left == {k for k, t in want.items() if b"all" not in t}
