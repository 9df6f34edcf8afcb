"""A replica's dataset and tag index equal its master's."""

from harness import digest, tag_set, tag_sets, tags_of, wait_sync
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
