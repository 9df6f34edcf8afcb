"""A restart from RDB or AOF restores values, TTLs and the tag index exactly."""

import pytest

from harness import digest, tag_set, tag_sets, tags_of, wait_aof_rewrite
import workload


def snapshot(r):
    keys = workload.tagged_keys(r)
    return {
        "sets": tag_sets(r),
        "tags": {k: tags_of(r, k) for k in keys},
        "expire": {k: r.execute_command("PEXPIRETIME", k) for k in keys},
        "digest": digest(r),
    }


def assert_same_snapshot(after, before):
    """Compares part by part so that a failure shows what differs."""
    for part in ("sets", "tags", "expire"):
        a, b = after[part], before[part]
        missing = {k: b[k] for k in b.keys() - a.keys()}
        extra = {k: a[k] for k in a.keys() - b.keys()}
        changed = {k: (b[k], a[k]) for k in a.keys() & b.keys() if a[k] != b[k]}
        assert not (missing or extra or changed), (
            f"{part} differ after restart: missing={missing} extra={extra} "
            f"changed(before, after)={changed}"
        )
    assert after["digest"] == before["digest"]


def check_purge_after_restart(r, before):
    """The reverse index survived: purging a tag also cleans the keys' other tags."""
    hot = before["sets"][b"tag:hot"]
    live = {k for k in hot if r.exists(k)}
    assert live, "workload left nothing under tag hot"
    assert r.execute_command("TAG.PURGE", "hot") == len(live)
    assert not r.exists("tag:hot")
    for k in live:
        assert not r.exists(k)
        for tag_key, members in tag_sets(r).items():
            assert k not in members, (k, tag_key)
    # Writes still work after the restart.
    assert tag_set(r, "fresh", "v", "hot") == b"OK"
    assert tags_of(r, "fresh") == {b"hot"}


def test_restart_from_rdb(servers):
    s = servers.start()
    r = s.client()
    workload.run(r, legacy=False)
    before = snapshot(r)
    assert before["sets"] and before["tags"]
    assert r.save()
    r = s.restart()
    assert_same_snapshot(snapshot(r), before)
    check_purge_after_restart(r, before)


@pytest.mark.parametrize("persistence", ["rdb", "aof"])
def test_restart_with_client_written_sets(servers, persistence):
    """Tag sets written with plain SADD, as existing client code does, next to
    the module's own: TAG.TAGS and the sets read the same after a restart."""
    extra = ["--appendonly", "yes", "--appendfsync", "always"] if persistence == "aof" else []
    s = servers.start(extra_args=extra)
    r = s.client()
    wait_aof_rewrite(r)
    workload.run(r, rounds=1, legacy=True)
    before = snapshot(r)
    assert b"tag:legacy" in before["sets"]
    if persistence == "rdb":
        assert r.save()
    r = s.restart()
    assert_same_snapshot(snapshot(r), before)


def test_rdb_restart_after_purge(servers):
    s = servers.start()
    r = s.client()
    tag_set(r, "k1", "v", "a", "b")
    tag_set(r, "k2", "v", "b")
    r.execute_command("TAG.PURGE", "a")
    r.save()
    r = s.restart()
    assert not r.exists("k1")
    assert r.smembers("tag:b") == {b"k2"}
    assert tags_of(r, "k2") == {b"b"}
    assert r.execute_command("TAG.PURGE", "b") == 1
    assert r.dbsize() == 0


AOF_VARIANTS = {
    "incremental": [],
    "rewrite-rdb-preamble": ["--aof-use-rdb-preamble", "yes"],
    "rewrite-no-preamble": ["--aof-use-rdb-preamble", "no"],
}


@pytest.mark.parametrize("variant", AOF_VARIANTS.keys())
def test_restart_from_aof(servers, variant):
    s = servers.start(extra_args=["--appendonly", "yes", "--appendfsync", "always",
                                  *AOF_VARIANTS[variant]])
    r = s.client()
    wait_aof_rewrite(r)
    workload.run(r, legacy=False)
    if variant.startswith("rewrite"):
        r.bgrewriteaof()
        wait_aof_rewrite(r)
        # Commands after the rewrite land in the incremental file.
        tag_set(r, "after-rewrite", "v", "hot", "late")
    before = snapshot(r)
    assert before["sets"] and before["tags"]
    r = s.restart()
    assert_same_snapshot(snapshot(r), before)
    check_purge_after_restart(r, before)


def test_aof_replays_refused_and_failed_calls_as_nothing(servers):
    import redis

    s = servers.start(extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    r = s.client()
    wait_aof_rewrite(r)
    tag_set(r, "k", "v", "a", opts=("EX", 1000))
    assert tag_set(r, "k", "v2", "b", opts=("NX",)) is None
    with pytest.raises(redis.ResponseError):
        r.execute_command("TAG.SET", "k", "v3", "EX", 0, "TAGS", 1, "c")
    before = snapshot(r)
    r = s.restart()
    assert_same_snapshot(snapshot(r), before)
    assert r.get("k") == b"v"
    assert not r.exists("tag:b") and not r.exists("tag:c")
