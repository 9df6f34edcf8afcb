"""Redis Cluster: 3 masters and 3 replicas on loopback, the module loaded in
every node, created with `redis-cli --cluster create … --cluster-replicas 1`
and driven through redis-py's RedisCluster, as users' clients do. Keys need
no hash tags: a key's index entries live in the key's own slot; TAG.PURGE,
TAG.CARD and TAG.MEMBERS sent to any master answer for the whole cluster."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

import harness
from harness import ServerFactory, error_text, wait_until

REDIS_CLI = shutil.which("redis-cli")
pytestmark = pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is needed to create a cluster")

N_KEYS = 2000


def slot_of(key: bytes | str) -> int:
    return harness_slot(key.encode() if isinstance(key, str) else key)


def harness_slot(key: bytes) -> int:
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            key = key[s + 1:e]
    crc = 0
    for b in key:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc & 16383


class Cluster:
    def __init__(self, factory: ServerFactory, module_args=()):
        self.factory = factory
        self.nodes = []
        taken: set[int] = set()
        for i in range(6):
            # A master that saw itself in a minority while the cluster
            # formed waits out a rejoin delay (the node timeout, at most
            # 5 s on Redis 7.0) before it serves: 3 s keeps failure
            # detection far from the pauses of a busy machine.
            s = factory.new(module_args=module_args, name=f"node{i}", extra_args=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--appendonly", "yes", "--cluster-node-timeout", "3000"])
            s.port = harness.cluster_port(taken)
            s.start()
            self.nodes.append(s)
        out = subprocess.run(
            [REDIS_CLI, "--cluster", "create",
             *[f"127.0.0.1:{s.port}" for s in self.nodes],
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        self.wait_ok()
        self.rc = RedisCluster(host="127.0.0.1", port=self.nodes[0].port,
                               decode_responses=False, socket_timeout=30)

    def client(self, s) -> redis.Redis:
        return s.client(socket_timeout=30)

    def wait_ok(self, timeout: float = 60) -> None:
        def ok():
            for s in self.nodes:
                if s.proc is None or s.proc.poll() is not None:
                    continue
                c = self.client(s)
                info = c.execute_command("CLUSTER", "INFO").decode()
                if "cluster_state:ok" not in info or "cluster_known_nodes:6" not in info:
                    return False
                # Every node sees the same three masters and three replicas.
                flags = [line.split(" ")[2].split(",")
                         for line in c.execute_command("CLUSTER", "NODES").decode().splitlines()]
                lines = c.execute_command("CLUSTER", "NODES").decode().splitlines()
                # Every link up: module messages need one.
                if any(line.split(" ")[7] != "connected" for line in lines):
                    return False
                live = [f for f in flags if "fail" not in f and "fail?" not in f]
                if (sum("master" in f for f in live) != 3
                        or sum("slave" in f for f in live) != sum(
                            1 for n in self.nodes if n.proc and n.proc.poll() is None) - 3):
                    return False
            return True
        wait_until(ok, timeout, interval=0.1, what="every node sees cluster_state:ok")

    def roles(self):
        """(masters, replicas) servers, as the cluster sees them now."""
        masters, replicas = [], []
        for s in self.nodes:
            role = self.client(s).execute_command("ROLE")[0]
            (masters if role == b"master" else replicas).append(s)
        return masters, replicas

    def masters(self):
        return self.roles()[0]

    def node(self, s) -> ClusterNode:
        n = self.rc.get_node(host="127.0.0.1", port=s.port)
        assert n is not None
        return n

    def on(self, s, *args):
        """A keyless command sent to one master, as a client pointed at it does."""
        return self.rc.execute_command(*args, target_nodes=self.node(s))

    def all_keys(self) -> set[bytes]:
        """Every key of every master but the rules' hashes."""
        out = set()
        for m in self.masters():
            out |= {k for k in self.client(m).keys("*") if not k.startswith(b"tagcache:links")}
        return out

    def fill(self, n: int = N_KEYS, tags=lambda i: (f"t{i % 5}", "all")) -> list[bytes]:
        keys = []
        pipe = self.rc.pipeline(transaction=False)
        for i in range(n):
            k = f"item:{i}".encode()
            keys.append(k)
            t = tags(i)
            pipe.execute_command("TAG.SET", k, f"v{i}", "TAGS", len(t), *t)
        assert all(r == b"OK" for r in pipe.execute())
        return keys

    def flush(self) -> None:
        for m in self.masters():
            self.client(m).flushall()

    def sync_replicas(self) -> None:
        for m in self.masters():
            assert self.client(m).execute_command("WAIT", 1, 5000) >= 1


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    factory = ServerFactory(tmp_path_factory.mktemp("cluster"))
    c = Cluster(factory)
    yield c
    factory.stop_all()


@pytest.fixture
def cluster(shared):
    shared.flush()
    shared.rc = RedisCluster(host="127.0.0.1", port=shared.masters()[0].port,
                             decode_responses=False, socket_timeout=30)
    return shared


@pytest.fixture
def fresh(tmp_path):
    factory = ServerFactory(tmp_path)
    c = Cluster(factory, module_args=["cluster-timeout-ms", "1000"])
    yield c
    for s in c.nodes:
        if s.proc is not None and s.proc.poll() is None:
            try:
                os.kill(s.proc.pid, signal.SIGCONT)
            except OSError:
                pass
    factory.stop_all()


def index_keys(c: Cluster, s) -> list[bytes]:
    return [k for k in c.client(s).keys("tagcache:idx:*")]


def assert_index_is_local(c: Cluster) -> None:
    """Every index set lives in its members' slot, on the node that holds
    them, and names only keys that exist there."""
    for m in c.masters():
        cl = c.client(m)
        for k in index_keys(c, m):
            slot = slot_of(k)
            for member in cl.smembers(k):
                assert slot_of(member) == slot, (k, member)
                assert cl.exists(member) == 1, (k, member)


def test_keys_need_no_hash_tags_and_index_lives_in_their_slot(cluster):
    keys = cluster.fill()
    masters = cluster.masters()
    assert sum(len(index_keys(cluster, m)) for m in masters) > 0
    assert_index_is_local(cluster)
    # Nothing in the standalone layout.
    for m in masters:
        assert cluster.client(m).keys("tag:*") == []
    for k in keys[:50]:
        assert sorted(cluster.rc.execute_command("TAG.TAGS", k)) in (
            sorted([f"t{int(k.split(b':')[1]) % 5}".encode(), b"all"]),)
    node = cluster.client(masters[0])
    got = node.command_getkeys("TAG.SET", "k", "v", "TAGS", 2, "a", "b")
    assert [k.encode() if isinstance(k, str) else k for k in got] == [b"k"]


def test_card_members_and_purge_answer_for_the_whole_cluster_from_each_master(cluster):
    keys = cluster.fill()
    masters = cluster.masters()
    assert len(masters) == 3
    for m in masters:
        assert cluster.on(m, "TAG.CARD", "all") == N_KEYS
        assert cluster.on(m, "TAG.CARD", "t1") == N_KEYS // 5
        assert sorted(cluster.on(m, "TAG.MEMBERS", "t2")) == sorted(
            k for i, k in enumerate(keys) if i % 5 == 2)
    for i, m in enumerate(masters):
        assert cluster.on(m, "TAG.PURGE", f"t{i}") == N_KEYS // 5
        for k in keys[i::5]:
            assert cluster.rc.exists(k) == 0
    assert cluster.on(masters[0], "TAG.CARD", "all") == N_KEYS - 3 * N_KEYS // 5
    assert cluster.on(masters[1], "TAG.PURGE", "t3", "t4", "all") == N_KEYS - 3 * N_KEYS // 5
    assert cluster.all_keys() == set()
    assert cluster.on(masters[2], "TAG.PURGE", "all") == 0


def test_large_sliced_purge_spans_every_master(cluster):
    masters = cluster.masters()
    for m in masters:
        cluster.client(m).config_set("tagcache.purge-atomic-max", 100)
    try:
        cluster.fill(3000, tags=lambda i: ("big",))
        assert cluster.on(masters[1], "TAG.PURGE", "big") == 3000
        assert cluster.all_keys() == set()
        cluster.fill(600, tags=lambda i: ("big",))
        assert cluster.on(masters[2], "TAG.PURGE", "big", "ASYNC") == 600
        wait_until(lambda: cluster.all_keys() == set(), 20, what="ASYNC purge done everywhere")
    finally:
        for m in masters:
            cluster.client(m).config_set("tagcache.purge-atomic-max", 10000)


def test_client_written_sets_are_honoured_for_their_own_slot(cluster):
    rc = cluster.rc
    rc.set("{u}a", "1")
    rc.set("{u}b", "2")
    rc.set("other", "3")
    assert rc.sadd("tag:{u}x", "{u}a", "{u}b", "other") == 3
    masters = cluster.masters()
    port = rc.get_node_from_key("tag:{u}x").port
    owner = [m for m in masters if m.port == port][0]
    elsewhere = [m for m in masters if m is not owner][0]
    assert cluster.on(elsewhere, "TAG.CARD", "{u}x") == 2
    assert cluster.on(elsewhere, "TAG.PURGE", "{u}x") == 2
    assert rc.exists("{u}a", "{u}b") == 0
    # A member of another slot is left alone, as the client's own script
    # could not reach it either.
    assert rc.get("other") == b"3"


def test_rules_reach_every_master_and_fire_cluster_wide(cluster):
    masters = cluster.masters()
    assert cluster.on(masters[0], "TAG.LINK", "product:", "p:") == b"OK"
    for m in masters:
        wait_until(lambda m=m: cluster.on(m, "TAG.LINKS") == [[b"product:", b"p:"]], 1,
                   what="the rule on every master within a second")
    keys = cluster.fill(300, tags=lambda i: (f"p:{i % 3}",))
    cluster.rc.set("product:1", "changed")
    wait_until(lambda: all(cluster.rc.exists(k) == 0 for k in keys[1::3]), 5,
               what="keys tagged p:1 purged on every master")
    assert all(cluster.rc.exists(k) == 1 for k in keys[0::3])
    assert cluster.on(masters[2], "TAG.UNLINK", "product:") == 1
    for m in masters:
        wait_until(lambda m=m: cluster.on(m, "TAG.LINKS") == [], 1, what="rule removed everywhere")


def test_replicas_equal_their_masters_after_a_mixed_workload(cluster):
    rc = cluster.rc
    keys = cluster.fill(800)
    for k in keys[:100]:
        rc.delete(k)
    for k in keys[100:200]:
        rc.set(k, "plain")
    for k in keys[200:250]:
        rc.execute_command("TAG.ADD", k, "extra")
    masters = cluster.masters()
    cluster.on(masters[0], "TAG.PURGE", "t3")
    cluster.sync_replicas()
    _, replicas = cluster.roles()
    for r in replicas:
        rcl = cluster.client(r)
        info = rcl.info("replication")
        master = [m for m in masters if m.port == info["master_port"]][0]
        wait_until(lambda: cluster.client(master).execute_command("DEBUG", "DIGEST")
                   == rcl.execute_command("DEBUG", "DIGEST"), 10, what="replica digest")
    assert_index_is_local(cluster)


def test_reshard_moves_index_with_keys(fresh):
    keys = fresh.fill()
    masters = fresh.masters()
    src, dst = masters[0], masters[1]
    src_id = fresh.client(src).execute_command("CLUSTER", "MYID").decode()
    dst_id = fresh.client(dst).execute_command("CLUSTER", "MYID").decode()
    out = subprocess.run(
        [REDIS_CLI, "--cluster", "reshard", f"127.0.0.1:{src.port}",
         "--cluster-from", src_id, "--cluster-to", dst_id,
         "--cluster-slots", "300", "--cluster-yes"],
        capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    fresh.wait_ok()
    assert_index_is_local(fresh)
    rc = RedisCluster(host="127.0.0.1", port=dst.port, decode_responses=False, socket_timeout=30)
    fresh.rc = rc
    assert fresh.on(dst, "TAG.CARD", "all") == N_KEYS
    for k in keys[:100]:
        assert sorted(rc.execute_command("TAG.TAGS", k)) == sorted(
            [f"t{int(k.split(b':')[1]) % 5}".encode(), b"all"])
    assert fresh.on(src, "TAG.PURGE", "all") == N_KEYS
    assert fresh.all_keys() == set()


def test_failover_then_purge(fresh):
    keys = fresh.fill()
    masters, replicas = fresh.roles()
    assert fresh.on(masters[0], "TAG.LINK", "product:", "p:") == b"OK"
    for m in masters:
        wait_until(lambda m=m: fresh.on(m, "TAG.LINKS") == [[b"product:", b"p:"]], 1,
                   what="the rule on every master")
    fresh.sync_replicas()
    promoted = replicas[0]
    assert fresh.client(promoted).execute_command("CLUSTER", "FAILOVER") == b"OK"
    wait_until(lambda: fresh.client(promoted).execute_command("ROLE")[0] == b"master", 30,
               what="replica promoted")
    fresh.wait_ok()
    rc = RedisCluster(host="127.0.0.1", port=promoted.port, decode_responses=False,
                      socket_timeout=30)
    fresh.rc = rc
    # The rules failed over with the master's data.
    assert fresh.on(promoted, "TAG.LINKS") == [[b"product:", b"p:"]]
    assert fresh.on(promoted, "TAG.CARD", "all") == len(keys)
    assert fresh.on(promoted, "TAG.PURGE", "all") == len(keys)
    assert fresh.all_keys() == set()


def test_a_silent_master_times_out_then_the_same_purge_finishes(fresh):
    keys = fresh.fill()
    masters = fresh.masters()
    asker, silent = masters[0], masters[2]
    on_silent = [k for k in keys if fresh.rc.get_node_from_key(k).port == silent.port]
    assert on_silent
    os.kill(silent.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(redis.ResponseError) as e:
            fresh.on(asker, "TAG.PURGE", "all")
        assert time.monotonic() - t0 < 5
        assert error_text(e.value) == (
            "ERR 1 of 3 masters did not answer within cluster-timeout-ms (1000)")
        for m in masters[:2]:
            assert [k for k in fresh.client(m).keys("item:*")] == []
    finally:
        os.kill(silent.proc.pid, signal.SIGCONT)
    fresh.wait_ok()
    assert fresh.on(asker, "TAG.PURGE", "all") in (0, len(on_silent))
    assert fresh.all_keys() == set()


def test_a_replica_refuses_cluster_wide_reads(cluster):
    cluster.fill(100)
    _, replicas = cluster.roles()
    with pytest.raises(redis.ResponseError) as e:
        cluster.client(replicas[0]).execute_command("TAG.CARD", "all")
    assert error_text(e.value) == (
        "ERR in a cluster this is answered by a master, for every master")


def test_a_purge_refused_where_it_arrives_is_sent_nowhere(cluster):
    masters = cluster.masters()
    origin = masters[0]
    rc = cluster.rc
    keys = [f"ok:{i}".encode() for i in range(300)]
    for k in keys:
        assert rc.execute_command("TAG.SET", k, "v", "TAGS", 1, "mixed") == b"OK"
    # A key on the master the call reaches that the user may not delete.
    secret = next(f"secret:{i}".encode() for i in range(10000)
                  if rc.get_node_from_key(f"secret:{i}").port == origin.port)
    assert rc.execute_command("TAG.SET", secret, "s", "TAGS", 1, "mixed") == b"OK"
    for m in masters:
        cluster.client(m).execute_command(
            "ACL", "SETUSER", "u", "reset", "on", ">pw", "~ok:*", "~tagcache:*", "+@all")
    u = origin.client(username="u", password="pw")
    with pytest.raises(redis.ResponseError) as e:
        u.execute_command("TAG.PURGE", "mixed")
    assert error_text(e.value) == harness.noperm_key(secret)
    # Nothing went anywhere: the other masters were never asked.
    for k in keys + [secret]:
        assert rc.exists(k) == 1
    assert cluster.on(masters[1], "TAG.CARD", "mixed") == 301


def test_a_rule_purge_on_other_masters_fires_no_further_rules(cluster):
    masters = cluster.masters()
    rc = cluster.rc
    assert cluster.on(masters[0], "TAG.LINK", "product:", "product:") == b"OK"
    for m in masters:
        wait_until(lambda m=m: cluster.on(m, "TAG.LINKS") == [[b"product:", b"product:"]], 1,
                   what="the rule on every master")
    # product:43 carries tag product:42 and product:42 carries product:43:
    # writing product:42 purges product:43, and that deletion must not
    # purge product:42 (a rule's purge fires no rule).
    def rule_firings():
        return sum(harness.tag_info(cluster.client(m))["rule_firings"] for m in masters)

    firings = rule_firings()
    rc.execute_command("TAG.SET", "product:43", "b", "TAGS", 1, "product:42")
    rc.execute_command("TAG.SET", "product:42", "a", "TAGS", 1, "product:43")
    rc.set("product:42", "changed")
    wait_until(lambda: rc.exists("product:43") == 0, 5, what="product:43 purged")
    # The rule fires once per write of a product: key (three writes). A rule
    # fired by the deletion of product:43 would be counted on the master
    # that deleted it before that master answers anything else.
    wait_until(lambda: rule_firings() == firings + 3, 5,
               what="three rule firings in the cluster")
    assert rc.get("product:42") == b"changed"
    assert rule_firings() == firings + 3
    assert cluster.on(masters[1], "TAG.UNLINK", "product:") == 1


def test_an_async_purge_publishes_one_event(cluster):
    masters = cluster.masters()
    for m in masters:
        cluster.client(m).config_set("tagcache.purge-atomic-max", 10)
    try:
        cluster.fill(300, tags=lambda i: ("ev",))
        sub = cluster.client(masters[0])
        ps = sub.pubsub()
        ps.subscribe("tagcache:events")
        assert ps.get_message(timeout=2)["type"] == "subscribe"
        assert cluster.on(masters[0], "TAG.PURGE", "ev", "ASYNC") == 300
        wait_until(lambda: cluster.all_keys() == set(), 20, what="ASYNC purge done")
        events = []
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            msg = ps.get_message(timeout=0.2)
            if msg and msg["type"] == "message":
                events.append(msg["data"])
        assert len(events) == 1, events
        ps.close()
    finally:
        for m in masters:
            cluster.client(m).config_set("tagcache.purge-atomic-max", 10000)


def test_a_purge_while_a_slot_moves_replies_tryagain_then_finishes(fresh):
    keys = fresh.fill(600, tags=lambda i: ("mv",))
    masters = fresh.masters()
    a, b = masters[0], masters[1]
    ca = fresh.client(a)
    b_id = fresh.client(b).execute_command("CLUSTER", "MYID").decode()
    slot = next(harness_slot(k) for k in keys if fresh.rc.get_node_from_key(k).port == a.port)
    assert ca.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", b_id) == b"OK"
    want = "TRYAGAIN a slot of a master is being migrated: purge again when it is done"
    # Asked of the master whose slot moves: refused before anything goes.
    with pytest.raises(redis.ResponseError) as e:
        ca.execute_command("TAG.PURGE", "mv")
    assert error_text(e.value) == want
    assert all(fresh.rc.exists(k) == 1 for k in keys)
    # Asked of another master: that master's part is refused, the call says so.
    with pytest.raises(redis.ResponseError) as e:
        fresh.client(b).execute_command("TAG.PURGE", "mv")
    assert error_text(e.value) == want
    on_a = [k for k in keys if fresh.rc.get_node_from_key(k).port == a.port]
    assert all(ca.exists(k) == 1 for k in on_a)
    assert ca.execute_command("CLUSTER", "SETSLOT", slot, "STABLE") == b"OK"
    fresh.on(b, "TAG.PURGE", "mv")
    assert fresh.all_keys() == set()


def test_rules_stay_with_a_master_whose_rules_slot_moves(fresh):
    masters = fresh.masters()
    a, b = masters[0], masters[1]
    ca, cb = fresh.client(a), fresh.client(b)
    assert fresh.on(a, "TAG.LINK", "product:", "p:") == b"OK"
    for m in masters:
        wait_until(lambda m=m: fresh.on(m, "TAG.LINKS") == [[b"product:", b"p:"]], 1,
                   what="the rule on every master")
    [copy] = ca.keys("tagcache:links*")
    slot = harness_slot(copy)
    a_id = ca.execute_command("CLUSTER", "MYID").decode()
    b_id = cb.execute_command("CLUSTER", "MYID").decode()
    # Move the one slot that holds a's copy of the rules, as a resharding does.
    assert cb.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", a_id) == b"OK"
    assert ca.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", b_id) == b"OK"
    moving = ca.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    assert copy in moving
    assert ca.execute_command("MIGRATE", "127.0.0.1", b.port, "", 0, 5000, "KEYS", *moving) == b"OK"
    for m in masters:
        fresh.client(m).execute_command("CLUSTER", "SETSLOT", slot, "NODE", b_id)
    fresh.wait_ok()
    # a wrote its rules again in a slot it keeps; b holds two copies, one rule.
    wait_until(lambda: [k for k in ca.keys("tagcache:links*") if k != copy], 5,
               what="a's rules written again")
    assert fresh.on(a, "TAG.LINKS") == [[b"product:", b"p:"]]
    assert fresh.on(b, "TAG.LINKS") == [[b"product:", b"p:"]]
    # And they still fire, on every master.
    fresh.rc = RedisCluster(host="127.0.0.1", port=b.port, decode_responses=False,
                            socket_timeout=30)
    on_a = next(f"product:{i}" for i in range(10000)
                if fresh.rc.get_node_from_key(f"product:{i}").port == a.port)
    n = on_a.split(":")[1]
    keys = fresh.fill(300, tags=lambda i: (f"p:{n}",))
    fresh.rc.set(on_a, "changed")
    wait_until(lambda: all(fresh.rc.exists(k) == 0 for k in keys), 5,
               what="keys tagged by the rule purged on every master")


# ---------------------------------------------------------------- stale-while-revalidate
#
# TAG.INVALIDATE [ALL] [SOFT grace-ms] [ASYNC] TAGS n tag... sent to any
# master answers for the whole cluster, as TAG.PURGE does. A soft
# invalidation marks each selected key stale in the hash
# `tagcache:stale{<slot-name>}` of the key's own slot (field = key, value
# "0"), caps its expiry at grace-ms, and replies the number of selected keys
# that exist; TAG.GETL then hands the first caller a refresh token.

import binascii  # noqa: E402
import json  # noqa: E402

from harness import digest  # noqa: E402

GRACE = 60000


def stale_marks(c: Cluster) -> dict:
    """Every stale mark of the cluster, key -> value. Each lives in a
    `tagcache:stale{…}` hash of its key's slot, on the master that holds the
    key, and names a key that exists."""
    marks = {}
    for m in c.masters():
        cl = c.client(m)
        for h in cl.keys("tagcache:stale*"):
            assert h.startswith(b"tagcache:stale{") and h.endswith(b"}"), h
            for field, value in cl.hgetall(h).items():
                assert slot_of(field) == slot_of(h), (h, field)
                assert cl.exists(field) == 1, (h, field)
                assert field not in marks, field
                marks[field] = value
    return marks


def stale_count(c: Cluster) -> int:
    n = 0
    for m in c.masters():
        cl = c.client(m)
        n += sum(cl.hlen(h) for h in cl.keys("tagcache:stale*"))
    return n


def assert_replicas_match(c: Cluster) -> None:
    """Each replica's dataset equals its master's (DEBUG DIGEST)."""
    c.sync_replicas()
    masters, replicas = c.roles()
    assert len(replicas) == 3
    for r in replicas:
        rcl = c.client(r)
        port = rcl.info("replication")["master_port"]
        mcl = c.client(next(m for m in masters if m.port == port))
        wait_until(lambda: digest(mcl) == digest(rcl), 10,
                   what=f"replica {r.port} digest equals its master's")


def data_keys(c: Cluster) -> set:
    """Every key of every master but the module's own and tag sets."""
    return {k for k in c.all_keys() if not k.startswith((b"tagcache:", b"tag:"))}


def owners(c: Cluster, keys) -> set:
    return {c.rc.get_node_from_key(k).port for k in keys}


def key_in_slot_of(name: str, prefix: str) -> bytes:
    """A key `<prefix><n>` (no hash tag) in the slot of `name`."""
    want = slot_of(name)
    return next(k for k in (f"{prefix}{i}".encode() for i in range(1_000_000))
                if binascii.crc_hqx(k, 0) & 16383 == want)


class Events:
    """The events channel, as seen by a subscriber of one node (a module's
    PUBLISH reaches every node of a cluster)."""

    def __init__(self, c: Cluster, s):
        self.ps = c.client(s).pubsub()
        self.ps.subscribe("tagcache:events")
        assert self.ps.get_message(timeout=2)["type"] == "subscribe"

    def drain(self, quiet: float = 0.5, timeout: float = 10) -> list:
        """Every event until none came for `quiet` seconds, without "ts"."""
        out = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last < quiet:
            msg = self.ps.get_message(timeout=0.05)
            if msg and msg["type"] == "message":
                ev = json.loads(msg["data"])
                assert isinstance(ev.pop("ts"), int), ev
                out.append(ev)
                last = time.monotonic()
        return out

    def close(self):
        self.ps.close()


def getl(c: Cluster, key):
    """TAG.GETL routed to the key's owner."""
    return c.rc.execute_command("TAG.GETL", key)


def assert_refresh_token_then_none(c: Cluster, key, value) -> None:
    first = getl(c, key)
    assert isinstance(first, list) and len(first) == 2, first
    assert first[0] == value and isinstance(first[1], bytes) and first[1], (key, first)
    assert getl(c, key) == [value, None], key


def value_of(k: bytes) -> bytes:
    return b"v" + k.split(b":")[1]


def test_soft_invalidation_from_each_master_marks_keys_stale_on_every_master(cluster):
    masters = cluster.masters()
    rc = cluster.rc
    assert len(masters) == 3
    for i, m in enumerate(masters):
        cluster.flush()
        keys = cluster.fill(60, tags=lambda j: ("soft", f"g{j % 2}"))
        assert owners(cluster, keys) == {s.port for s in masters}
        spare = [f"spare:{j}".encode() for j in range(12)]
        for k in spare:
            assert rc.execute_command("TAG.SET", k, "s", "TAGS", 1, "other") == b"OK"
        assert owners(cluster, spare) == {s.port for s in masters}
        # A key tagged then deleted is no longer selected.
        assert rc.execute_command("TAG.SET", "gone:1", "x", "TAGS", 1, "soft") == b"OK"
        assert rc.delete("gone:1") == 1
        # A client-written set in its own slot: an existing plain key is
        # selected and counted, a name that is no key is not.
        plain = key_in_slot_of("tag:soft", "plain:")
        never = key_in_slot_of("tag:soft", "never:")
        rc.set(plain, "p")
        assert rc.sadd("tag:soft", plain, never) == 2
        events = Events(cluster, m)
        try:
            assert cluster.on(m, "TAG.INVALIDATE", "SOFT", GRACE, "TAGS", 1, "soft") == 61
            assert events.drain() == [{"op": "stale", "grace_ms": GRACE, "tags": ["soft"],
                                       "scopes": [], "keys": 61, "source": None}]
        finally:
            events.close()
        assert stale_marks(cluster) == {**{k: b"0" for k in keys}, plain: b"0"}
        assert rc.exists(never) == 0
        for k in keys:
            assert rc.get(k) == value_of(k)
            assert 0 < rc.pttl(k) <= GRACE, (k, rc.pttl(k))
            assert sorted(rc.execute_command("TAG.TAGS", k)) == sorted(
                [b"soft", f"g{int(k.split(b':')[1]) % 2}".encode()])
        assert rc.get(plain) == b"p" and 0 < rc.pttl(plain) <= GRACE
        for k in spare:
            assert rc.pttl(k) == -1
        # Again from the next master, longer grace, half the keys: all
        # already stale, all counted, their earlier end kept.
        nxt = masters[(i + 1) % 3]
        assert cluster.on(nxt, "TAG.INVALIDATE", "SOFT", 10 * GRACE, "TAGS", 2,
                          "g0", "nobody") == 30
        assert all(0 < rc.pttl(k) <= GRACE for k in keys)
        assert len(stale_marks(cluster)) == 61
        for k in keys:
            assert_refresh_token_then_none(cluster, k, value_of(k))
        for k in spare:
            assert getl(cluster, k) == [b"s", None]
        assert_replicas_match(cluster)
        # A hard invalidation from another master deletes every stale key.
        other = masters[(i + 2) % 3]
        assert cluster.on(other, "TAG.INVALIDATE", "TAGS", 1, "soft") == 61
        assert all(rc.exists(k) == 0 for k in keys + [plain])
        assert stale_marks(cluster) == {}
        assert all(rc.get(k) == b"s" for k in spare)
        assert data_keys(cluster) == set(spare)
        assert_replicas_match(cluster)


def test_all_selection_from_each_master_leaves_keys_with_only_some_tags(cluster):
    masters = cluster.masters()
    rc = cluster.rc
    combos = (("a", "b"), ("a",), ("b",), ("a", "b", "c"))
    for i, m in enumerate(masters):
        cluster.flush()
        keys = cluster.fill(60, tags=lambda j: combos[j % 4])
        both = [k for j, k in enumerate(keys) if j % 4 in (0, 3)]
        some = [k for j, k in enumerate(keys) if j % 4 in (1, 2)]
        assert owners(cluster, both) == owners(cluster, some) == {s.port for s in masters}
        events = Events(cluster, m)
        try:
            assert cluster.on(m, "TAG.INVALIDATE", "ALL", "SOFT", GRACE,
                              "TAGS", 2, "a", "b") == 30
            assert events.drain() == [{"op": "stale", "grace_ms": GRACE, "tags": ["a", "b"],
                                       "scopes": [], "keys": 30, "source": None,
                                       "match": "all"}]
        finally:
            events.close()
        assert stale_marks(cluster) == {k: b"0" for k in both}
        for k in both:
            assert 0 < rc.pttl(k) <= GRACE
            assert_refresh_token_then_none(cluster, k, value_of(k))
        for k in some:
            assert rc.pttl(k) == -1
            assert getl(cluster, k) == [value_of(k), None]
        assert cluster.on(m, "TAG.INVALIDATE", "ALL", "SOFT", GRACE,
                          "TAGS", 2, "a", "nobody") == 0
        assert_replicas_match(cluster)
        other = masters[(i + 1) % 3]
        assert cluster.on(other, "TAG.INVALIDATE", "ALL", "TAGS", 2, "b", "a") == 30
        assert all(rc.exists(k) == 0 for k in both)
        assert stale_marks(cluster) == {}
        for j, k in enumerate(keys):
            if j % 4 in (1, 2):
                assert rc.get(k) == value_of(k)
                assert rc.execute_command("TAG.TAGS", k) == [combos[j % 4][0].encode()]
        for s in masters:
            assert cluster.on(s, "TAG.CARD", "a") == 15
            assert cluster.on(s, "TAG.CARD", "b") == 15
            assert cluster.on(s, "TAG.CARD", "c") == 0
        # ALL of one tag is any-of, hard, from the third master.
        assert cluster.on(masters[(i + 2) % 3], "TAG.INVALIDATE", "ALL", "TAGS", 1, "a") == 15
        assert data_keys(cluster) == {k for j, k in enumerate(keys) if j % 4 == 2}
        assert_replicas_match(cluster)


def test_sliced_and_async_soft_invalidations_span_every_master(cluster):
    """Above purge-atomic-max (set at run time with CONFIG SET on every
    master, as test_large_sliced_purge_spans_every_master does)."""
    masters = cluster.masters()
    rc = cluster.rc
    for m in masters:
        cluster.client(m).config_set("tagcache.purge-atomic-max", 10)

    def idle():
        return all(harness.tag_info(cluster.client(s))["purges_in_progress"] == 0
                   for s in masters)

    try:
        keys = cluster.fill(300, tags=lambda i: ("big",))
        assert owners(cluster, keys) == {s.port for s in masters}
        # The caller waits for the reply.
        assert cluster.on(masters[0], "TAG.INVALIDATE", "SOFT", GRACE, "TAGS", 1, "big") == 300
        assert stale_marks(cluster) == {k: b"0" for k in keys}
        wait_until(idle, 10, what="no purge in progress")
        cluster.flush()
        keys = cluster.fill(300, tags=lambda i: ("big",))
        assert rc.execute_command("TAG.SET", "spare:0", "s", "TAGS", 1, "other") == b"OK"
        events = Events(cluster, masters[2])
        try:
            assert cluster.on(masters[2], "TAG.INVALIDATE", "SOFT", GRACE, "ASYNC",
                              "TAGS", 1, "big") == 300
            wait_until(lambda: stale_count(cluster) == 300 and idle(), 20,
                       what="every key marked, on every master")
            assert events.drain() == [{"op": "stale", "grace_ms": GRACE, "tags": ["big"],
                                       "scopes": [], "keys": 300, "source": None}]
        finally:
            events.close()
        assert stale_marks(cluster) == {k: b"0" for k in keys}
        for k in keys[::7]:
            assert rc.get(k) == value_of(k) and 0 < rc.pttl(k) <= GRACE
        assert rc.pttl("spare:0") == -1
        for k in keys[:30]:
            assert_refresh_token_then_none(cluster, k, value_of(k))
        assert_replicas_match(cluster)
    finally:
        wait_until(idle, 20, what="no purge in progress")
        for m in masters:
            cluster.client(m).config_set("tagcache.purge-atomic-max", 10000)


def test_a_soft_rule_fired_on_any_master_marks_keys_stale_on_every_master(cluster):
    masters = cluster.masters()
    rc = cluster.rc
    assert cluster.on(masters[0], "TAG.LINK", "product:", "p:", "SOFT", GRACE) == b"OK"
    try:
        for m in masters:
            wait_until(lambda m=m: cluster.on(m, "TAG.LINKS")
                       == [[b"product:", b"p:", b"SOFT", GRACE]], 1,
                       what="the soft rule on every master within a second")
        # One source key held by each master.
        ns = [next(n for n in range(10000)
                   if rc.get_node_from_key(f"product:{n}").port == m.port) for m in masters]
        keys = cluster.fill(90, tags=lambda j: (f"p:{ns[j % 3]}",))
        spare = [f"spare:{j}".encode() for j in range(12)]
        for k in spare:
            assert rc.execute_command("TAG.SET", k, "s", "TAGS", 1, "p:none") == b"OK"
        events = Events(cluster, masters[0])
        seen = []
        try:
            for idx in range(3):
                rc.set(f"product:{ns[idx]}", "changed")
                marked = [k for j, k in enumerate(keys) if j % 3 <= idx]
                wait_until(lambda: stale_count(cluster) == len(marked), 5,
                           what=f"keys tagged p:{ns[idx]} marked stale")
                assert stale_marks(cluster) == {k: b"0" for k in marked}
                assert owners(cluster, keys[idx::3]) == {s.port for s in masters}
                seen.append(events.drain())
        finally:
            events.close()
        for j, k in enumerate(keys):
            assert rc.get(k) == value_of(k)
            assert 0 < rc.pttl(k) <= GRACE
            assert_refresh_token_then_none(cluster, k, value_of(k))
        for k in spare:
            assert rc.pttl(k) == -1 and getl(cluster, k) == [b"s", None]
        assert_replicas_match(cluster)
        # One link event per firing, with the grace and the number of keys
        # it marked: 30, on all three masters together.
        assert seen == [[{"op": "link", "grace_ms": GRACE, "tags": [f"p:{ns[idx]}"],
                          "scopes": [], "keys": 30, "source": f"product:{ns[idx]}"}]
                        for idx in range(3)]
    finally:
        cluster.on(masters[1], "TAG.UNLINK", "product:")
        for m in masters:
            wait_until(lambda m=m: cluster.on(m, "TAG.LINKS") == [], 1,
                       what="rule removed everywhere")
