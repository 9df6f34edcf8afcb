"""A replica's dataset and tag index equal its master's."""

import pytest

from harness import (digest, tag_set, tag_sets, tags_of, wait_link_up, wait_sync,
                     wait_until)
import workload


def assert_same(m, rep):
    assert rep.dbsize() == m.dbsize()
    assert tag_sets(rep) == tag_sets(m)
    assert digest(rep) == digest(m)


def test_streamed_workload(master_replica):
    master, replica = master_replica
    m, rep = master.client(), replica.client()
    workload.run(m)
    wait_sync(m, rep)
    assert m.dbsize() > 0
    assert tag_sets(m), "workload left no tag sets"
    assert_same(m, rep)


def test_replica_tag_tags_match_master(master_replica):
    master, replica = master_replica
    m, rep = master.client(), replica.client()
    workload.run(m)
    wait_sync(m, rep)
    for key in workload.tagged_keys(m):
        assert tags_of(rep, key) == tags_of(m, key), key


def test_full_sync_after_workload(servers):
    master = servers.start(name="master")
    m = master.client()
    workload.run(m)
    replica = servers.start_replica(master)
    rep = replica.client()
    assert_same(m, rep)
    # Writes after the full sync still stream.
    tag_set(m, "after", "v", "hot", opts=("PX", 500000))
    m.execute_command("TAG.PURGE", "hashes")
    wait_sync(m, rep)
    assert_same(m, rep)


def test_expiry_times_are_absolute_on_replica(master_replica):
    master, replica = master_replica
    m, rep = master.client(), replica.client()
    tag_set(m, "k1", "v", "a", opts=("EX", 1000))
    tag_set(m, "k2", "v", "a", opts=("PX", 1000000))
    wait_sync(m, rep)
    for k in ("k1", "k2"):
        assert rep.execute_command("PEXPIRETIME", k) == m.execute_command("PEXPIRETIME", k)


def test_purge_replicates(master_replica):
    master, replica = master_replica
    m, rep = master.client(), replica.client()
    tag_set(m, "k1", "v", "a", "b")
    tag_set(m, "k2", "v", "b")
    wait_sync(m, rep)
    assert m.execute_command("TAG.PURGE", "a") == 1
    wait_sync(m, rep)
    assert not rep.exists("k1")
    assert rep.smembers("tag:b") == {b"k2"}
    assert not rep.exists("tag:a")
    assert_same(m, rep)


def test_refused_writes_replicate_nothing(master_replica):
    master, replica = master_replica
    m, rep = master.client(), replica.client()
    tag_set(m, "k", "v", "a")
    wait_sync(m, rep)
    assert tag_set(m, "k", "v2", "b", opts=("NX",)) is None
    assert tag_set(m, "missing", "v", "b", opts=("XX",)) is None
    wait_sync(m, rep)
    assert rep.get("k") == b"v"
    assert not rep.exists("missing")
    assert not rep.exists("tag:b")
    assert_same(m, rep)


def test_read_commands_work_on_replica(master_replica):
    master, replica = master_replica
    m, rep = master.client(), replica.client()
    tag_set(m, "k1", "v", "a")
    tag_set(m, "k2", "v", "a", "b")
    wait_sync(m, rep)
    assert set(rep.execute_command("TAG.MEMBERS", "a")) == {b"k1", b"k2"}
    assert rep.execute_command("TAG.CARD", "a") == 2
    assert tags_of(rep, "k2") == {b"a", b"b"}


def test_borrowed_values_replicate_exactly(master_replica):
    """TAG.SET stores and replicates the client's own argument strings: a
    big value (which arrives as the whole query buffer, and is trimmed),
    binary bytes, pipelines, transactions, and a script (whose argument
    objects the server reuses between calls when nobody else holds them)
    all reach the replica byte for byte."""
    master, replica = master_replica
    m, rep = master.client(), replica.client()
    big = b"\x00\r\n" + bytes(range(256)) * 200 + b"\xff"
    assert tag_set(m, "big", big, "a", opts=("EX", 1000)) == b"OK"
    p = m.pipeline(transaction=False)
    for i in range(50):
        p.execute_command("TAG.SET", f"p{i}", b"v\x00%d" % i, "EX", 1000, "TAGS", 1, "a")
    assert p.execute() == [b"OK"] * 50
    tx = m.pipeline(transaction=True)
    tx.execute_command("TAG.SET", "t1", b"one\r\n", "TAGS", 1, "b")
    tx.execute_command("TAG.SET", "t2", big, "TAGS", 1, "b")
    assert tx.execute() == [b"OK", b"OK"]
    script = (
        "redis.call('TAG.SET', KEYS[1], ARGV[1], 'TAGS', 1, 'c') "
        "redis.call('TAG.SET', KEYS[2], ARGV[2], 'TAGS', 1, 'c') "
        "redis.call('SET', KEYS[3], ARGV[1]) "
        "return redis.call('TAG.SET', KEYS[1], ARGV[2], 'TAGS', 1, 'c')"
    )
    assert m.eval(script, 3, "s1", "s2", "plain", b"first", b"second") == b"OK"
    wait_sync(m, rep)
    expected = {
        "big": big,
        "t1": b"one\r\n",
        "t2": big,
        "s1": b"second",
        "s2": b"second",
        "plain": b"first",
        "p7": b"v\x007",
    }
    for key, value in expected.items():
        assert m.get(key) == value, key
        assert rep.get(key) == value, key
    assert_same(m, rep)


def test_big_values_with_many_tags_and_versions_replicate_exactly(master_replica):
    """A big value (trimmed once stored) written with more tag sets than the
    short replication forms take, and by VER.SET (replicated as SET), reaches
    the replica byte for byte."""
    master, replica = master_replica
    m, rep = master.client(), replica.client()
    tags = [f"t{i}" for i in range(12)]
    values = {f"k{i}": bytes([i]) * 40000 + b"\r\n\x00" for i in range(5)}
    for key, value in values.items():
        assert tag_set(m, key, value, *tags, opts=("EX", 1000)) == b"OK"
    # Written again, leaving half its tags and taking new ones.
    assert tag_set(m, "k0", values["k1"], *tags[6:], "n1", "n2", "n3") == b"OK"
    values["k0"] = values["k1"]
    big = b"\xff" * 50000
    assert m.execute_command("VER.SET", "scope", "vk", big, "EX", 1000) == b"OK"
    wait_sync(m, rep)
    for key, value in values.items():
        assert rep.get(key) == value, key
    assert tags_of(rep, "k0") == tags_of(m, "k0")
    assert sorted(tags_of(m, "k0")) == sorted(t.encode() for t in tags[6:] + ["n1", "n2", "n3"])
    assert_same(m, rep)


# ---------------------------------------------------------------- async loading
# Replicas keep loading with repl-diskless-load swapdb (async loading).

SKIP_LINE = ("Skipping diskless-load because there are modules that are not aware"
             " of async replication.")
SWAP_LINE = "REPLICA sync: Swapping active DB with loaded DB"  # MASTER/PRIMARY <-> ...
DONE_LINE = "REPLICA sync: Finished with success"


def replica_log(replica) -> str:
    return replica.log.read_text(errors="replace")


def test_a_swapdb_replica_loads_asynchronously_and_keeps_the_index(servers):
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


@pytest.mark.parametrize("store", ["SUNIONSTORE", "SINTERSTORE", "SDIFFSTORE"])
def test_a_tagged_key_overwritten_by_a_store_of_its_own_tag_set_reaches_the_replica(
        master_replica, store):
    """The store reads the tag set the overwritten key leaves: the replica
    must get the store before the set loses the key, as the master ran it."""
    master, replica = master_replica
    m, rp = master.client(), replica.client()
    tag_set(m, "k0", "v", "t3")
    tag_set(m, "k1", "v", "t3")
    args = ["k0", "tag:t3"] if store != "SDIFFSTORE" else ["k0", "tag:t3", "tag:none"]
    m.execute_command(store, *args)
    wait_sync(m, rp)
    assert m.smembers("k0") == {b"k0", b"k1"}
    assert rp.smembers("k0") == {b"k0", b"k1"}
    assert digest(m) == digest(rp)
