"""Cluster mode: a key and its tag sets (and a version token and its value
keys) must share a slot; a call that would span slots is a CROSSSLOT error
and changes nothing. One node owning every slot is enough to check this."""

import random
import socket

import pytest
import redis

from harness import error_text, wait_until


def cluster_port() -> int:
    """A free port whose bus port (port + 10000) is free too."""
    rng = random.Random()
    for _ in range(100):
        port = rng.randint(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair")


@pytest.fixture
def cluster(servers):
    s = servers.new(extra_args=["--cluster-enabled", "yes",
                                "--cluster-config-file", "nodes.conf"])
    s.port = cluster_port()
    s.start()
    r = s.client()
    r.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
    wait_until(lambda: b"cluster_state:ok" in r.execute_command("CLUSTER", "INFO"), 10,
               what="cluster state ok")
    return r


def crossslot(r, *args):
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command(*args)
    return error_text(e.value)


def test_same_slot_tags_work(cluster):
    r = cluster
    assert r.execute_command("TAG.SET", "{p42}:name", "lamp", "TAGS", 2, "{p42}", "{p42}:all") == b"OK"
    assert r.execute_command("TAG.MEMBERS", "{p42}") == [b"{p42}:name"]
    assert r.execute_command("TAG.PURGE", "{p42}") == 1
    assert r.exists("{p42}:name") == 0


def test_cross_slot_tag_set_is_refused(cluster):
    r = cluster
    assert crossslot(r, "TAG.SET", "{a}k", "v", "TAGS", 1, "{b}").startswith("CROSSSLOT")
    assert r.dbsize() == 0
    r.execute_command("TAG.SET", "{a}k", "v", "TAGS", 1, "{a}")
    assert crossslot(r, "TAG.ADD", "{a}k", "{b}").startswith("CROSSSLOT")
    assert crossslot(r, "TAG.PURGE", "{a}", "{b}").startswith("CROSSSLOT")
    assert r.exists("{a}k") == 1
    assert r.execute_command("TAG.TAGS", "{a}k") == [b"{a}"]


def test_versions_share_a_slot(cluster):
    r = cluster
    assert r.execute_command("VER.SET", "{u1}", "{u1}:profile", "v") == b"OK"
    assert r.execute_command("VER.GET", "{u1}", "{u1}:profile") == b"v"
    assert crossslot(r, "VER.SET", "scope", "key", "v").startswith("CROSSSLOT")
    assert r.exists("ver:scope") == 0
