"""Large purges (SPEC.md, "Large purges"): above purge-atomic-max keys,
TAG.PURGE runs in slices while every other client is served; the caller
waits (or, with ASYNC, gets the count at once); keys written after the call
survive; replicas, the AOF and a restart mid-purge end consistent."""

import socket
import threading
import time

import pytest
import redis

from harness import (digest, error_text, info_pairs, noperm_key, wait_aof_rewrite, wait_sync,
                     wait_until)

SMALL = ("purge-atomic-max", "100")


def fill(r, n, tag="big", prefix="k", extra=None):
    p = r.pipeline(transaction=False)
    for i in range(n):
        tags = [tag] + ([extra(i)] if extra else [])
        p.execute_command("TAG.SET", f"{prefix}{i}", "v", "TAGS", len(tags), *tags)
        if i % 5000 == 4999:
            p.execute()
            p = r.pipeline(transaction=False)
    p.execute()


def info(r):
    return info_pairs(r.execute_command("TAG.INFO"))


def test_settings_and_bounds(server, r):
    assert r.config_get("tagcache.purge-atomic-max") == {"tagcache.purge-atomic-max": "10000"}
    assert r.config_get("tagcache.purge-slice-us") == {"tagcache.purge-slice-us": "1000"}
    r.config_set("tagcache.purge-atomic-max", 0)
    with pytest.raises(redis.ResponseError) as e:
        r.config_set("tagcache.purge-slice-us", 99)
    assert error_text(e.value) == (
        "ERR CONFIG SET failed (possibly related to argument 'tagcache.purge-slice-us')"
        " - argument must be between 100 and 100000 inclusive")
    with pytest.raises(redis.ResponseError) as e:
        r.config_set("tagcache.purge-atomic-max", 100_000_001)
    assert error_text(e.value) == (
        "ERR CONFIG SET failed (possibly related to argument 'tagcache.purge-atomic-max')"
        " - argument must be between 0 and 100000000 inclusive")


def test_sliced_purge_deletes_every_key_and_cleans_the_index(servers):
    s = servers.start(module_args=SMALL)
    r = s.client()
    fill(r, 3000, extra=lambda i: f"o{i % 7}")
    tag_set_untouched = r.execute_command("TAG.SET", "other", "v", "TAGS", 1, "o1")
    assert tag_set_untouched == b"OK"
    sub = s.client().pubsub()
    sub.subscribe("tagcache:events")
    assert sub.get_message(timeout=2)["type"] == "subscribe"
    assert r.execute_command("TAG.PURGE", "big") == 3000
    assert r.dbsize() == 1 + 1  # `other` and tag:o1
    assert r.smembers("tag:o1") == {b"other"}
    assert r.execute_command("TAG.TAGS", "other") == [b"o1"]
    events = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        m = sub.get_message(timeout=0.2)
        if m and m["type"] == "message":
            events.append(m["data"])
    assert len(events) == 1 and b'"keys":3000' in events[0] and b'"op":"purge"' in events[0]
    i = info(r)
    assert (i["purges_in_progress"], i["purge_keys_left"], i["tagged_keys"]) == (0, 0, 1)


def test_other_clients_are_served_while_a_big_purge_runs(servers):
    s = servers.start(module_args=SMALL)
    r = s.client()
    fill(r, 200_000)
    result = {}

    def purge():
        result["n"] = s.client().execute_command("TAG.PURGE", "big")
        result["at"] = time.monotonic()

    t = threading.Thread(target=purge)
    t.start()
    other = s.client()
    answered = []
    deadline = time.monotonic() + 60
    while t.is_alive() and time.monotonic() < deadline:
        start = time.monotonic()
        assert other.ping()
        answered.append((start, time.monotonic() - start))
    t.join(60)
    assert result["n"] == 200_000
    during = [lat for at, lat in answered if at < result["at"]]
    assert len(during) >= 20, len(during)
    # No reply waited for the whole purge: the server was not held.
    assert max(during) < 0.5, max(during)
    assert r.dbsize() == 0


def test_keys_written_or_tagged_after_the_call_survive(servers):
    s = servers.start(module_args=SMALL)
    r = s.client()
    fill(r, 100_000)
    conn = socket.create_connection(("127.0.0.1", s.port))
    conn.sendall(b"*2\r\n$9\r\nTAG.PURGE\r\n$3\r\nbig\r\n")
    wait_until(lambda: info(r)["purges_in_progress"] == 1, 5, interval=0.001,
               what="purge started")
    # While it runs: fresh fills of old keys, and new keys with the tag.
    w = s.client()
    p = w.pipeline(transaction=False)
    for i in range(0, 100_000, 1000):
        p.execute_command("TAG.SET", f"k{i}", "fresh", "TAGS", 1, "big")
        p.execute_command("TAG.SET", f"new{i}", "new", "TAGS", 1, "big")
    p.execute()
    conn.settimeout(60)
    reply = conn.recv(64)
    conn.close()
    assert reply.startswith(b":")
    # Every key but the rewritten ones that the purge had not reached yet.
    assert 99_900 <= int(reply[1:].split(b"\r\n")[0]) <= 100_000
    for i in range(0, 100_000, 1000):
        assert r.get(f"k{i}") == b"fresh"
        assert r.get(f"new{i}") == b"new"
        assert r.execute_command("TAG.TAGS", f"k{i}") == [b"big"]
    assert r.dbsize() == 200 + 1
    assert r.scard("tag:big") == 200


def test_async_replies_at_once_and_carries_on(servers):
    s = servers.start(module_args=SMALL)
    r = s.client()
    fill(r, 100_000)
    assert r.execute_command("TAG.PURGE", "big", "async") == 100_000
    i = info(r)
    assert i["purges_in_progress"] == 1 and 0 < i["purge_keys_left"] <= 100_000
    wait_until(lambda: r.dbsize() == 0, 30, what="async purge")
    wait_until(lambda: info(r)["purges_in_progress"] == 0, 5, what="purge end")
    # A tag named ASYNC is purged when it is not named last.
    r.execute_command("TAG.SET", "x", "v", "TAGS", 1, "ASYNC")
    assert r.execute_command("TAG.PURGE", "ASYNC", "none") == 1


def test_in_a_transaction_a_big_purge_is_one_step(servers):
    s = servers.start(module_args=SMALL)
    r = s.client()
    fill(r, 1000)
    p = r.pipeline(transaction=True)
    p.execute_command("TAG.PURGE", "big")
    p.dbsize()
    assert p.execute() == [1000, 0]


def test_replica_and_aof_follow_a_sliced_purge(servers):
    m = servers.start(module_args=SMALL, name="master",
                      extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    rep = servers.start_replica(m, module_args=SMALL)
    mc, rc = m.client(), rep.client()
    wait_aof_rewrite(mc)
    fill(mc, 20_000, extra=lambda i: f"o{i % 3}")
    fill(mc, 500, tag="keep", prefix="kept")
    assert mc.execute_command("TAG.PURGE", "big") == 20_000
    # Every deletion fsynced to the AOF: on a busy machine the replica may
    # take well over the usual bound to catch up.
    wait_sync(mc, rc, timeout=60)
    assert digest(rc) == digest(mc)
    assert rc.dbsize() == mc.dbsize() == 501
    before = digest(mc)
    mc = m.restart()
    assert digest(mc) == before


def test_a_caller_that_leaves_does_not_stop_the_purge(servers):
    s = servers.start(module_args=SMALL)
    r = s.client()
    fill(r, 50_000)
    conn = socket.create_connection(("127.0.0.1", s.port))
    conn.sendall(b"*2\r\n$9\r\nTAG.PURGE\r\n$3\r\nbig\r\n")
    wait_until(lambda: info(r)["purges_in_progress"] == 1, 5, what="purge started")
    conn.close()
    wait_until(lambda: r.dbsize() == 0, 30, what="purge finished")
    assert r.ping()


def test_client_unblock_releases_the_caller_with_an_error(servers):
    s = servers.start(module_args=SMALL)
    r = s.client()
    fill(r, 100_000)
    c = s.client()
    cid = c.client_id()
    out = {}

    def purge():
        try:
            out["reply"] = c.execute_command("TAG.PURGE", "big")
        except redis.ResponseError as e:
            out["error"] = str(e)

    t = threading.Thread(target=purge)
    t.start()
    wait_until(lambda: info(r)["purges_in_progress"] == 1, 5, what="purge started")
    assert r.client_unblock(cid) == 1
    t.join(10)
    assert out == {"error": "UNBLOCKED the purge carries on in the background"}, out
    wait_until(lambda: r.dbsize() == 0, 30, what="purge finished")


def test_restart_mid_purge_then_the_same_purge_finishes(servers):
    s = servers.start(module_args=SMALL,
                      extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    r = s.client()
    wait_aof_rewrite(r)
    fill(r, 100_000)
    assert r.execute_command("TAG.PURGE", "big", "ASYNC") == 100_000
    wait_until(lambda: r.dbsize() < 90_000, 10, interval=0.001, what="purge under way")
    s.kill()
    s.start()
    r = s.client()
    left = r.dbsize()
    assert 0 < left - 1 < 100_000, left
    # Every key left still carries the tag.
    assert r.scard("tag:big") == left - 1
    assert r.execute_command("TAG.PURGE", "big") == left - 1
    assert r.dbsize() == 0


def test_overlapping_purges_delete_each_key_once(servers):
    s = servers.start(module_args=SMALL)
    r = s.client()
    fill(r, 30_000, tag="a", extra=lambda i: "b" if i % 2 == 0 else "c")
    r1, r2 = s.client(), s.client()
    results = {}

    def purge(name, client):
        results[name] = client.execute_command("TAG.PURGE", name)

    threads = [threading.Thread(target=purge, args=("a", r1)),
               threading.Thread(target=purge, args=("b", r2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["a"] + results["b"] == 30_000, results
    assert r.dbsize() == 0


def test_a_key_the_caller_may_not_delete_stops_the_purge_before_anything_goes(servers):
    s = servers.start(module_args=SMALL)
    admin = s.client()
    fill(admin, 500)
    admin.execute_command("TAG.SET", "secret:1", "s", "TAGS", 1, "big")
    admin.acl_setuser("lim", enabled=True, passwords=["+pw"], keys=["k*", "tag:*"],
                      commands=["+@all"])
    lim = redis.Redis(host="127.0.0.1", port=s.port, username="lim", password="pw")
    sub = admin.pubsub()
    sub.subscribe("tagcache:events")
    assert sub.get_message(timeout=2)["type"] == "subscribe"
    purges = info(admin)["purges"]
    with pytest.raises(redis.exceptions.NoPermissionError) as e:
        lim.execute_command("TAG.PURGE", "big")
    assert error_text(e.value) == noperm_key(b"secret:1")
    assert admin.dbsize() == 502
    assert admin.scard("tag:big") == 501
    # A refused purge is no purge: nothing counted, no event.
    wait_until(lambda: info(admin)["purges_in_progress"] == 0, 5, what="purge ended")
    assert info(admin)["purges"] == purges
    assert sub.get_message(timeout=0.5) is None


def test_a_purge_follows_its_keys_through_swapdb(servers):
    s = servers.start(module_args=SMALL)
    r = s.client()
    other = s.client(db=1)
    fill(r, 50_000)
    other.set("stays", "1")
    assert r.execute_command("TAG.PURGE", "big", "ASYNC") == 50_000
    r.swapdb(0, 1)
    wait_until(lambda: info(r)["purges_in_progress"] == 0, 30, what="purge end")
    # The purged keys now live in db 1; db 0 holds what db 1 held.
    assert other.dbsize() == 0
    assert r.dbsize() == 1 and r.get("stays") == b"1"


# ---- A sliced purge's selection is fixed when the call arrives.


def purge_done(r):
    wait_until(lambda: info(r)["purges_in_progress"] == 0, 10, what="the purge ended")


def test_sliced_purge_never_deletes_a_key_tagged_after_an_untag_frees_its_slot(servers):
    """A key untagged in the middle frees its place in the index; the key
    tagged next takes it. The purge deletes the untagged key (its value is
    what the purge invalidates) and never the newcomer."""
    s = servers.start(module_args=SMALL)
    r = s.client()
    fill(r, 2000, tag="t")
    p = r.pipeline(transaction=False)
    p.execute_command("TAG.PURGE", "t", "ASYNC")
    p.execute_command("TAG.REM", "k5", "t")
    p.execute_command("TAG.SET", "victim", "fresh", "TAGS", 1, "other")
    for i in range(6, 40):
        p.execute_command("TAG.REM", f"k{i}", "t")
        p.execute_command("TAG.SET", f"victim{i}", "fresh", "TAGS", 1, "other")
    assert p.execute()[0] == 2000
    purge_done(r)
    assert r.get("victim") == b"fresh"
    assert all(r.get(f"victim{i}") == b"fresh" for i in range(6, 40))
    assert r.exists("k5") == 0 and r.exists("k39") == 0
    assert r.dbsize() == 1 + 35  # tag:other and its 35 keys
    assert r.smembers("tag:other") == {b"victim"} | {f"victim{i}".encode() for i in range(6, 40)}


def test_sliced_purge_deletes_only_what_the_user_selected(servers):
    """A user who may touch only her own keys cannot make a purge of her
    tag delete keys of others by untagging hers and tagging theirs."""
    s = servers.start(module_args=SMALL)
    admin = s.client()
    for i in range(50):
        admin.set(f"secret:{i}", "s")
    admin.execute_command("ACL", "SETUSER", "eve", "on", ">pw", "~eve:*", "~tag:*", "+@all")
    eve = s.client(username="eve", password="pw")
    fill(eve, 3000, tag="mine", prefix="eve:k")
    p = eve.pipeline(transaction=False)
    p.execute_command("TAG.PURGE", "mine", "ASYNC")
    for i in range(50):
        p.execute_command("TAG.REM", f"eve:k{i}", "mine")
        p.sadd("tag:x", f"secret:{i}")
    assert p.execute()[0] == 3000
    purge_done(admin)
    assert [admin.get(f"secret:{i}") for i in range(50)] == [b"s"] * 50
    assert admin.keys("eve:*") == []


def test_sliced_purge_deletes_every_selected_key_when_its_set_is_rewritten(servers):
    """SINTERSTORE tag:t tag:t in the middle: every key that carried t when
    the call arrived goes, and the set keeps no member that does not exist."""
    s = servers.start(module_args=SMALL)
    r = s.client()
    fill(r, 3000, tag="t")
    other = s.client()
    p = r.pipeline(transaction=False)
    p.execute_command("TAG.PURGE", "t", "ASYNC")
    p.execute()
    for _ in range(5):
        other.sinterstore("tag:t", ["tag:t"])
        other.srem("tag:t", "k2999", "k2998")
    purge_done(r)
    assert r.dbsize() == 0, r.keys("*")[:10]
    assert r.execute_command("TAG.CARD", "t") == 0


@pytest.mark.parametrize("change", ["srem", "del-set", "rename-set", "tag-rem"])
def test_sliced_purge_deletes_a_key_only_untagged_meanwhile(servers, change):
    s = servers.start(module_args=SMALL)
    r = s.client()
    fill(r, 1500, tag="t")
    p = r.pipeline(transaction=False)
    p.execute_command("TAG.PURGE", "t", "ASYNC")
    if change == "srem":
        p.srem("tag:t", "k1400")
    elif change == "del-set":
        p.delete("tag:t")
    elif change == "rename-set":
        p.rename("tag:t", "elsewhere")
    else:
        p.execute_command("TAG.REM", "k1400", "t")
    p.execute()
    purge_done(r)
    assert r.exists("k1400") == 0
    assert r.keys("k*") == []


def test_sliced_purge_spares_what_was_written_and_follows_renames(servers):
    s = servers.start(module_args=SMALL)
    r = s.client()
    fill(r, 1500, tag="t")
    p = r.pipeline(transaction=False)
    p.execute_command("TAG.PURGE", "t", "ASYNC")
    p.set("k1499", "fresh")                       # written: survives
    p.append("k1498", "more")                     # in-place write: survives
    p.rename("k1497", "moved")                    # renamed: still this purge's
    p.rename("k1496", "k1495")                    # k1495's value replaced: k1496's goes
    p.execute_command("TAG.SET", "late", "v", "TAGS", 1, "t")  # tagged after: untouched
    p.execute()
    purge_done(r)
    assert r.get("k1499") == b"fresh"
    assert r.get("k1498") == b"vmore"
    assert not r.exists("moved") and not r.exists("k1495")
    assert r.get("late") == b"v"
    assert sorted(r.keys("*")) == [b"k1498", b"k1499", b"late", b"tag:t"]
    # An in-place change keeps the key's tags.
    assert r.smembers("tag:t") == {b"late", b"k1498"}


def test_sliced_purge_follows_move_and_swapdb(servers):
    s = servers.start(module_args=SMALL)
    r = s.client()
    fill(r, 1500, tag="t")
    p = r.pipeline(transaction=False)
    p.execute_command("TAG.PURGE", "t", "ASYNC")
    p.move("k3", 1)      # left the database: not this purge's any more
    p.swapdb(0, 2)
    p.execute()
    db2 = s.client(db=2)
    purge_done(r)
    assert db2.keys("k*") == []
    assert s.client(db=1).get("k3") == b"v"
    assert r.dbsize() == 0


def test_rule_purge_above_the_bound_runs_in_slices(servers):
    """A rule's purge follows every rule of TAG.PURGE: sliced above
    purge-atomic-max, so other clients are served meanwhile; one event."""
    s = servers.start(module_args=("purge-atomic-max", "100", "purge-slice-us", "100"))
    r = s.client()
    r.execute_command("TAG.LINK", "user:", "u:")
    fill(r, 20_000, tag="u:1")
    sub = s.client().pubsub()
    sub.subscribe("tagcache:events")
    assert sub.get_message(timeout=2)["type"] == "subscribe"
    r.set("user:1", "x")
    # The firing returned at once: the purge goes on in slices.
    assert info(r)["purges_in_progress"] == 1
    assert r.dbsize() > 10_000
    purge_done(r)
    assert sorted(r.keys("*")) == [b"tagcache:links", b"user:1"]
    msgs = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not msgs:
        m = sub.get_message(timeout=0.2)
        if m and m["type"] == "message":
            msgs.append(m["data"])
    assert len(msgs) == 1
    assert b'"op":"link"' in msgs[0] and b'"keys":20000' in msgs[0] and b'"source":"user:1"' in msgs[0]


def test_rule_purge_in_slices_leaves_what_its_owner_may_not_delete(servers):
    s = servers.start(module_args=SMALL)
    admin = s.client()
    admin.execute_command("ACL", "SETUSER", "bob", "on", ">pw", "~bob:*", "~tag:*", "~src:*",
                          "~tagcache:*", "+@all")
    bob = s.client(username="bob", password="pw")
    bob.execute_command("TAG.LINK", "src:", "s:")
    fill(admin, 500, tag="s:1", prefix="bob:k")
    fill(admin, 500, tag="s:1", prefix="other:k")
    denied = info(admin)["rule_keys_denied"]
    admin.set("src:1", "x")
    purge_done(admin)
    assert admin.keys("bob:*") == []
    assert len(admin.keys("other:*")) == 500
    assert info(admin)["rule_keys_denied"] == denied + 500


def test_sliced_purge_deletes_a_key_first_named_in_a_tag_set_before_it_existed(servers):
    """A client's SADD of a name that is no key yet, then any command that
    creates it (HSET, LPUSH, INCR): the sliced purge deletes it, as the
    atomic one does."""
    s = servers.start(module_args=("purge-atomic-max", "0"))
    r = s.client()
    r.sadd("tag:t", "h", "l", "n")
    r.hset("h", "f", "v")
    r.lpush("l", "x")
    r.incr("n")
    assert r.execute_command("TAG.PURGE", "t") == 3
    assert r.dbsize() == 0


def test_async_caller_checked_key_by_key_gets_its_count_when_the_purge_ends_first(servers):
    # Slices of 100 us over 20,000 keys: the checks span many turns, and
    # the FLUSHALL lands while they run.
    s = servers.start(module_args=("purge-atomic-max", "100", "purge-slice-us", "100"))
    admin = s.client()
    fill(admin, 20_000, tag="t", prefix="u:")
    admin.execute_command("ACL", "SETUSER", "u", "on", ">pw", "~u:*", "~tag:*", "+@all")
    u = s.client(username="u", password="pw")
    conn = u.connection_pool.get_connection()
    try:
        conn.send_command("TAG.PURGE", "t", "ASYNC")
        wait_until(lambda: info(admin)["purges_in_progress"] == 1, 2, what="the purge started")
        assert info(admin)["purge_keys_left"] == 20_000, "still checking: nothing taken yet"
        admin.flushall()
        assert conn.read_response() == 20_000
    finally:
        u.connection_pool.release(conn)
    purge_done(admin)
    assert admin.dbsize() == 0
