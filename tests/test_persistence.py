"""A restart from RDB or AOF restores values, TTLs and the tag index exactly."""

import pytest

from harness import (Server, digest, error_text, set_of, tag_info, tag_set, tag_sets, tags_of,
                     wait_aof_rewrite, wait_until)
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
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("TAG.SET", "k", "v3", "EX", 0, "TAGS", 1, "c")
    assert error_text(e.value) == "ERR invalid expire time in 'tag.set' command"
    before = snapshot(r)
    r = s.restart()
    assert_same_snapshot(snapshot(r), before)
    assert r.get("k") == b"v"
    assert not r.exists("tag:b") and not r.exists("tag:c")


# ---------------------------------------------------------------- reloads


def test_debug_reload_keeps_the_index(r):
    tag_set(r, "a1", "v", "x", "y")
    tag_set(r, "a2", "v", "y")
    tag_set(r, "a3", "v", "z")
    r.set("a4", "v")
    r.sadd("tag:x", "a4")
    keys = ["a1", "a2", "a3", "a4"]

    def snapshot():
        info = tag_info(r)
        section = r.info("tagcache")
        return {
            "tag_info": (info["tagged_keys"], info["tags"]),
            "info": (section["tagcache_tagged_keys"], section["tagcache_tags"]),
            "tags": {k: tags_of(r, k) for k in keys},
            "digest": digest(r),
        }

    before = snapshot()
    assert before["tags"] == {"a1": {b"x", b"y"}, "a2": {b"y"}, "a3": {b"z"}, "a4": {b"x"}}
    assert r.execute_command("DEBUG", "RELOAD") == b"OK"
    assert snapshot() == before
    assert r.execute_command("TAG.PURGE", "x") == 2
    assert set(r.keys("*")) == {b"a2", b"a3", b"tag:y", b"tag:z"}
    assert set_of(r, "tag:y") == {b"a2"}


class BareServer(Server):
    """A server started without the module (it is loaded later with MODULE LOAD)."""

    def argv(self) -> list[str]:
        argv = super().argv()
        i = argv.index("--loadmodule")
        return argv[:i] + argv[i + 2 + len(self.module_args):]


def test_module_load_into_a_running_server_indexes_its_tag_sets_and_rules(servers):
    bare = BareServer(servers.tmp / "bare", servers.module,
                      extra_args=["--enable-module-command", "yes"])
    servers.servers.append(bare)
    bare.start()
    r = bare.client()
    r.sadd("tag:t", "k1", "k2")
    r.set("k1", "a")
    r.set("k2", "b")
    r.hset("tagcache:links", "user:", "u:")
    assert r.execute_command("MODULE", "LOAD", str(servers.module)) == b"OK"
    assert r.execute_command("TAG.TAGS", "k1") == [b"t"]
    assert r.execute_command("TAG.LINKS") == [[b"user:", b"u:"]]
    r.set("k1", "fresh")
    assert r.execute_command("TAG.PURGE", "t") == 1
    assert r.get("k1") == b"fresh"
    assert not r.exists("k2")
    assert tag_set(r, "ukey", "v", "u:1") == b"OK"
    r.set("user:1", "x")
    wait_until(lambda: r.exists("ukey") == 0, 2, what="ukey purged by the rule")
    assert r.get("user:1") == b"x"
