"""Leases: TAG.GETL and TAG.SET ... LEASE token (stampede and stale-set protection).

TAG.GETL key [TTL ms] [WAIT ms] replies [value, nil] on a hit, [nil, token]
to the caller that gets the lease, [nil, nil] when another holds it; with
WAIT the caller blocks until the key is written, the lease lapses (then the
first waiter gets the next lease) or the wait runs out. A fill with the token
stores only if nothing invalidated it since it was issued.
"""

import threading
import time

import pytest
import redis

from harness import (WRONGTYPE, RawConn, RespError, assert_alive, error_text, info_pairs, refused,
                     reply_within, tag_set, tags_of, wait_blocked, wait_until)


BAD_TOKEN = "ERR invalid lease token: malformed or never issued"


def getl(r, key, *opts):
    return r.execute_command("TAG.GETL", key, *opts)


def fill(r, key, value, token, *tags, opts=()):
    return r.execute_command("TAG.SET", key, value, *opts, "LEASE", token,
                             "TAGS", len(tags), *tags)


def info(r) -> dict:
    return info_pairs(r.execute_command("TAG.INFO"))


def lease(r, key="k", *opts):
    """Takes the lease on a missing key; returns the token."""
    reply = getl(r, key, *opts)
    assert isinstance(reply, list) and len(reply) == 2, reply
    value, token = reply
    assert value is None and isinstance(token, bytes) and token, reply
    return token


def assert_refused(r, key, token, *tags, value=b"stale"):
    """The fill replies nil and stores nothing."""
    before_rejected = info(r)["leases_rejected"]
    had = r.get(key)
    assert fill(r, key, value, token, *tags) is None
    assert r.get(key) == had
    for t in tags:
        if had is None:
            assert not r.sismember(f"tag:{t}", key)
    assert info(r)["leases_rejected"] == before_rejected + 1


# ---------------------------------------------------------------- replies


def test_hit_miss_held(r):
    r.set("hit", "v")
    assert getl(r, "hit") == [b"v", None]
    t = lease(r, "k")
    assert getl(r, "k") == [None, None]
    assert getl(r, "k", "TTL", 100) == [None, None]
    # Another key has its own lease.
    t2 = lease(r, "k2")
    assert t2 != t
    i = info(r)
    assert i["leases_granted"] == 2
    assert i["leases_outstanding"] == 2
    assert i["lease_waiters"] == 0
    # A hit hands out nothing.
    assert getl(r, "hit", "TTL", 100, "WAIT", 100) == [b"v", None]
    assert info(r)["leases_granted"] == 2


def test_fill_with_token(r):
    t = lease(r, "k")
    assert fill(r, "k", "fresh", t, "a", "b", opts=("EX", 100)) == b"OK"
    assert r.get("k") == b"fresh"
    assert tags_of(r, "k") == {b"a", b"b"}
    assert 0 < r.ttl("k") <= 100
    assert getl(r, "k") == [b"fresh", None]
    i = info(r)
    assert i["leases_outstanding"] == 0
    assert i["leases_rejected"] == 0
    # The next miss (after a purge) gets a new lease.
    r.execute_command("TAG.PURGE", "a")
    t2 = lease(r, "k")
    assert t2 != t


def test_token_is_good_for_one_store(r):
    t = lease(r, "k")
    assert fill(r, "k", "v1", t, "a") == b"OK"
    assert fill(r, "k", "v2", t, "a") is None
    assert r.get("k") == b"v1"
    r.delete("k")
    assert fill(r, "k", "v3", t, "a") is None
    assert not r.exists("k")


def test_token_for_another_key(r):
    t = lease(r, "k")
    lease(r, "j")
    try:
        reply = fill(r, "j", "v", t, "a")
        assert reply is None
    except redis.ResponseError as e:
        assert error_text(e) == BAD_TOKEN
    assert not r.exists("j")
    assert not r.exists("tag:a")
    # The token is still good for its own key.
    assert fill(r, "k", "v", t, "a") == b"OK"


# ---------------------------------------------------------------- refusals


def test_refused_after_purge_of_one_of_its_tags(r):
    tag_set(r, "other", "v", "b")
    t = lease(r, "k")
    assert r.execute_command("TAG.PURGE", "b") == 1
    assert_refused(r, "k", t, "a", "b")
    assert not r.exists("k")
    assert not r.exists("tag:a") and not r.exists("tag:b")


def test_refused_after_purge_of_a_tag_nobody_carried(r):
    t = lease(r, "k")
    assert r.execute_command("TAG.PURGE", "a", "zzz") == 0
    assert_refused(r, "k", t, "a")


def test_not_refused_by_unrelated_purge(r):
    tag_set(r, "other", "v", "b")
    t = lease(r, "k")
    r.execute_command("TAG.PURGE", "b", "c")
    assert fill(r, "k", "v", t, "a") == b"OK"
    assert r.get("k") == b"v"


def test_not_refused_by_purge_before_issue(r):
    r.execute_command("TAG.PURGE", "a")
    lease(r, "unrelated")  # a lease outstanding while the purge is remembered
    r.execute_command("TAG.PURGE", "a")
    t = lease(r, "k")
    assert fill(r, "k", "v", t, "a") == b"OK"


def test_refused_after_delete_of_the_key(r):
    t = lease(r, "k")
    r.set("k", "written")
    r.delete("k")
    assert_refused(r, "k", t, "a")
    assert not r.exists("k")


def test_refused_after_delete_of_an_existing_key(r):
    """A key that exists but is read through a lease it cannot get: the
    invalidator deletes it, a reader takes the lease, a writer recreates and
    deletes it again before the fill."""
    r.set("k", "v0")
    r.delete("k")
    t = lease(r, "k")
    r.set("k", "v1")
    r.unlink("k")
    assert_refused(r, "k", t, "a")


OTHER_FILLS = {
    "SET": lambda r: r.set("k", "newer"),
    "TAG.SET": lambda r: tag_set(r, "k", "newer", "a"),
    "HSET": lambda r: r.hset("k", "f", "newer"),
    "APPEND": lambda r: r.append("k", "newer"),
    "RPUSH": lambda r: r.rpush("k", "newer"),
    "MSET": lambda r: r.mset({"k": "newer", "x": "y"}),
    "RENAME onto": lambda r: (r.set("src", "newer"), r.rename("src", "k")),
    "COPY onto": lambda r: (r.set("src", "newer"), r.copy("src", "k")),
    "RESTORE": lambda r: (r.set("src", "newer"), r.restore("k", 0, r.dump("src"))),
    "MOVE into": lambda r: (r.execute_command("SELECT", 1), r.set("k", "newer"),
                            r.execute_command("MOVE", "k", 0), r.execute_command("SELECT", 0)),
    "SET in MULTI": lambda r: r.pipeline(transaction=True).set("k", "newer").execute(),
    "SET in a script": lambda r: r.eval("return redis.call('SET', KEYS[1], 'newer')", 1, "k"),
}


@pytest.mark.parametrize("how", OTHER_FILLS.keys())
def test_refused_after_another_fill(server, how):
    r = server.client(single_connection_client=True)
    t = lease(r, "k")
    OTHER_FILLS[how](r)
    before = r.dump("k")
    assert before is not None
    assert fill(r, "k", "stale", t, "a") is None
    assert r.dump("k") == before


def wait_lapsed(r, within: float) -> None:
    """Waits, at most `within` seconds, until no lease is outstanding."""
    wait_until(lambda: info(r)["leases_outstanding"] == 0, within, interval=0.01,
               what=f"the lease lapsed within {within}s")


def test_refused_after_lapse(r):
    t = lease(r, "k", "TTL", 100)
    wait_lapsed(r, 0.25)
    assert info(r)["leases_outstanding"] == 0
    assert_refused(r, "k", t, "a")
    assert not r.exists("k")
    # The next reader gets a new lease.
    t2 = lease(r, "k")
    assert t2 != t
    assert fill(r, "k", "v", t2, "a") == b"OK"


def test_refused_after_flush(r):
    t = lease(r, "k")
    r.flushall()
    assert_refused(r, "k", t, "a")


def test_leases_are_per_database(server, r):
    db1 = server.client(db=1)
    t0 = lease(r, "k")
    t1 = lease(db1, "k")
    assert t0 != t1
    db1.set("k", "in db 1")
    assert fill(r, "k", "v0", t0, "a") == b"OK"
    assert fill(db1, "k", "v1", t1, "a") is None
    assert db1.get("k") == b"in db 1"


def test_lease_ttl_default_from_config(r):
    assert r.config_get("tagcache.lease-ttl") == {"tagcache.lease-ttl": "10000"}
    r.config_set("tagcache.lease-ttl", 100)
    t = lease(r, "k")
    wait_lapsed(r, 0.25)  # the configured 100 ms, not the default 10 s
    assert_refused(r, "k", t, "a")


def test_refused_after_rule_purge(r):
    r.execute_command("TAG.LINK", "product:", "p:")
    t = lease(r, "page:1")
    r.set("product:1", "changed")  # purges tag p:1
    assert_refused(r, "page:1", t, "p:1")
    assert not r.exists("page:1")
    # A rule purge of another tag does not refuse.
    t2 = lease(r, "page:2")
    r.set("product:3", "changed")
    assert fill(r, "page:2", "v", t2, "p:2") == b"OK"


def test_stale_set_race(r):
    """Reader misses and takes the lease, reads the database (old row);
    a writer updates the row and purges the tag; the reader's fill with the
    row it read before the purge is refused: nothing stale is cached."""
    database = {"row": "old"}
    t = lease(r, "page")
    read = database["row"]
    database["row"] = "new"
    r.execute_command("TAG.PURGE", "row")
    assert fill(r, "page", read, t, "row") is None
    assert not r.exists("page")
    # The next reader caches the new row.
    t2 = lease(r, "page")
    assert fill(r, "page", database["row"], t2, "row") == b"OK"
    assert r.get("page") == b"new"


@pytest.mark.parametrize("token", [b"bogus", b"1-2", b"", b"ffffffff-0000000000000000",
                                   b"1-e6c2b49d5ec44887", b"\xff\x00"])
def test_bad_token_is_an_error(r, token):
    lease(r, "k")
    before = info(r)
    with pytest.raises(redis.ResponseError) as e:
        fill(r, "k", "v", token, "a")
    assert error_text(e.value) == BAD_TOKEN
    assert not r.exists("k")
    assert not r.exists("tag:a")
    after = info(r)
    assert after["leases_outstanding"] == before["leases_outstanding"]


def test_token_of_another_server_is_an_error(servers):
    a = servers.start().client()
    b = servers.start().client()
    t = lease(a, "k")
    lease(b, "k")
    with pytest.raises(redis.ResponseError) as e:
        fill(b, "k", "v", t, "a")
    assert error_text(e.value) == BAD_TOKEN
    assert not b.exists("k")


# ---------------------------------------------------------------- waiting


class Caller(threading.Thread):
    def __init__(self, server, *args):
        super().__init__(daemon=True)
        self.client = server.client(socket_timeout=15)
        self.args = args
        self.reply = None
        self.error = None
        self.elapsed = None

    def run(self):
        t0 = time.monotonic()
        try:
            self.reply = self.client.execute_command(*self.args)
        except Exception as e:  # noqa: BLE001 - inspected by the test
            self.error = e
        self.elapsed = time.monotonic() - t0


def wait_waiters(r, n):
    wait_until(lambda: info(r)["lease_waiters"] == n, 3, what=f"{n} blocked waiter(s)")


def test_wait_wakes_with_the_value(server, r):
    t = lease(r, "k")
    w = Caller(server, "TAG.GETL", "k", "WAIT", 5000)
    w.start()
    wait_waiters(r, 1)
    w.join(0.2)
    assert w.is_alive(), (w.reply, w.error)  # it stays blocked until the fill
    assert fill(r, "k", "filled", t, "a") == b"OK"
    w.join(3)
    assert not w.is_alive()
    assert w.error is None, w.error
    assert w.reply == [b"filled", None]
    assert w.elapsed < 2
    assert info(r)["lease_waiters"] == 0


def test_plain_set_wakes_waiters(server, r):
    lease(r, "k")
    ws = [Caller(server, "TAG.GETL", "k", "WAIT", 5000) for _ in range(3)]
    for w in ws:
        w.start()
    wait_waiters(r, 3)
    r.set("k", "plain")
    for w in ws:
        w.join(3)
        assert w.reply == [b"plain", None], (w.reply, w.error)
        assert w.elapsed < 2


def test_wait_runs_out(server, r):
    lease(r, "k")
    w = Caller(server, "TAG.GETL", "k", "WAIT", 300)
    w.start()
    w.join(3)
    assert not w.is_alive()
    assert w.reply == [None, None], (w.reply, w.error)
    assert 0.25 <= w.elapsed < 1.5, w.elapsed
    assert info(r)["lease_waiters"] == 0
    # The lease is still held by the first caller.
    assert getl(r, "k") == [None, None]


def test_wait_zero_does_not_block_forever(server, r):
    """WAIT 0 follows the other blocking commands' convention or returns at
    once; either way a hit or a fill answers it."""
    t = lease(r, "k")
    w = Caller(server, "TAG.GETL", "k", "WAIT", 0)
    w.start()
    wait_until(lambda: not w.is_alive() or info(r)["lease_waiters"] == 1, 3,
               what="the WAIT 0 call answered or blocked")
    if w.is_alive():
        fill(r, "k", "v", t, "a")
        w.join(3)
        assert w.reply == [b"v", None]
    else:
        assert w.reply == [None, None]


def test_lapse_hands_the_lease_to_one_waiter(server, r):
    t = lease(r, "k", "TTL", 300)
    w1 = Caller(server, "TAG.GETL", "k", "WAIT", 5000)
    w1.start()
    wait_waiters(r, 1)
    w2 = Caller(server, "TAG.GETL", "k", "WAIT", 5000)
    w2.start()
    wait_waiters(r, 2)
    w1.join(3)
    assert not w1.is_alive(), "the first waiter is handed the lapsed lease"
    value, t2 = w1.reply
    assert value is None and isinstance(t2, bytes) and t2 != t, w1.reply
    assert 0.15 < w1.elapsed < 2
    assert w2.is_alive(), "only one waiter gets the lease"
    assert info(r)["lease_waiters"] == 1
    # The old token is void; the new one fills and wakes the other waiter.
    assert fill(r, "k", "stale", t, "a") is None
    assert fill(r, "k", "fresh", t2, "a") == b"OK"
    w2.join(3)
    assert w2.reply == [b"fresh", None], (w2.reply, w2.error)


def test_stampede_200_clients(server, r):
    n = 200
    db_calls = []
    lock = threading.Lock()
    barrier = threading.Barrier(n)
    results = [None] * n
    clients = [server.client(socket_timeout=15) for _ in range(n)]
    for c in clients:
        c.ping()

    def worker(i):
        c = clients[i]
        try:
            barrier.wait(10)
            value, token = c.execute_command("TAG.GETL", "hot", "TTL", 5000, "WAIT", 5000)
            if value is None and token is not None:
                with lock:
                    db_calls.append(i)
                time.sleep(0.1)  # the database call
                assert fill(c, "hot", "computed", token, "t") == b"OK"
                value = b"computed"
            results[i] = value
        except Exception as e:  # noqa: BLE001 - reported below
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    errors = [x for x in results if isinstance(x, Exception)]
    assert not errors, errors[:3]
    assert len(db_calls) == 1, f"{len(db_calls)} callers computed the value"
    assert results == [b"computed"] * n, [x for x in results if x != b"computed"][:5]
    assert time.monotonic() - t0 < 10
    i = info(r)
    assert i["leases_granted"] == 1
    assert i["leases_outstanding"] == 0
    assert i["lease_waiters"] == 0


def test_waiter_disconnect_is_forgotten(server, r):
    t = lease(r, "k")
    c = server.client(socket_timeout=0.3)
    with pytest.raises(redis.TimeoutError):
        c.execute_command("TAG.GETL", "k", "WAIT", 5000)
    c.close()
    wait_waiters(r, 0)
    assert fill(r, "k", "v", t, "a") == b"OK"
    assert r.ping()


def test_getl_in_multi_does_not_block(r):
    lease(r, "k")
    t0 = time.monotonic()
    p = r.pipeline(transaction=True)
    p.execute_command("TAG.GETL", "k", "WAIT", 5000)
    p.execute_command("TAG.GETL", "missing", "WAIT", 5000)
    p.execute_command("TAG.GETL", "missing", "WAIT", 5000)
    res = p.execute()
    assert time.monotonic() - t0 < 1
    assert res[0] == [None, None]
    assert res[1][0] is None and isinstance(res[1][1], bytes)
    assert res[2] == [None, None]
    assert info(r)["lease_waiters"] == 0


def test_getl_in_script_does_not_block(r):
    lease(r, "k")
    t0 = time.monotonic()
    res = r.eval("return redis.call('TAG.GETL', KEYS[1], 'WAIT', 5000)", 1, "k")
    assert time.monotonic() - t0 < 1
    assert res == [None, None]


# ---------------------------------------------------------------- bad calls


TTL_RANGE = "ERR TTL must be between 1 and 86400000 milliseconds"
WAIT_RANGE = "ERR WAIT must be between 0 and 86400000 milliseconds"
NOT_INTEGER = "ERR value is not an integer or out of range"

# name: (arguments, the exact error)
BAD = {
    "TTL 0": (("k", "TTL", 0), TTL_RANGE),
    "TTL -1": (("k", "TTL", -1), TTL_RANGE),
    "TTL non-numeric": (("k", "TTL", "abc"), NOT_INTEGER),
    "WAIT -1": (("k", "WAIT", -1), WAIT_RANGE),
    "WAIT non-numeric": (("k", "WAIT", "x"), NOT_INTEGER),
    "unknown option": (("k", "FOO", 1), "ERR syntax error near 'FOO'"),
    "TTL without value": (("k", "TTL"), "ERR syntax error near 'TTL'"),
    "WAIT without value": (("k", "WAIT"), "ERR syntax error near 'WAIT'"),
    "TTL twice": (("k", "TTL", 10, "TTL", 10), "ERR syntax error near 'TTL'"),
    "trailing word": (("k", "TTL", 10, "extra"), "ERR syntax error near 'extra'"),
}


@pytest.mark.parametrize("case", BAD.keys())
def test_bad_arguments(r, case):
    args, expected = BAD[case]
    before = info(r)
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("TAG.GETL", *args)
    assert error_text(e.value) == expected
    after = info(r)
    assert after["leases_outstanding"] == before["leases_outstanding"] == 0
    assert after["leases_granted"] == before["leases_granted"]
    # No lease was issued: the next caller gets it.
    lease(r, "k")


def test_wrong_arity(r):
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("TAG.GETL")
    assert error_text(e.value) == "ERR wrong number of arguments for 'tag.getl' command"


def test_getl_on_wrong_type(r):
    r.hset("h", "f", "v")
    with pytest.raises(redis.ResponseError) as e:
        getl(r, "h")
    assert error_text(e.value) == WRONGTYPE
    assert info(r)["leases_outstanding"] == 0


def test_lease_option_missing_token(r):
    lease(r, "k")
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("TAG.SET", "k", "v", "LEASE")
    assert error_text(e.value) == "ERR wrong number of arguments for 'tag.set' command"
    assert not r.exists("k")


def test_lease_ttl_config_range(r):
    prefix = "ERR CONFIG SET failed (possibly related to argument 'tagcache.lease-ttl') - "
    for bad, why in (("0", "argument must be between 1 and 86400000 inclusive"),
                     ("-1", "argument must be between 1 and 86400000 inclusive"),
                     ("abc", "argument couldn't be parsed into an integer")):
        with pytest.raises(redis.ResponseError) as e:
            r.config_set("tagcache.lease-ttl", bad)
        assert error_text(e.value) == prefix + why, bad
    assert r.config_get("tagcache.lease-ttl") == {"tagcache.lease-ttl": "10000"}


# ---------------------------------------------------------------- blocked clients and the server
# Waiters killed, unblocked or timing out around the fill never crash the
# server, and each waiter gets one reply.


@pytest.mark.parametrize("order", ["set-then-kill", "kill-then-set"])
def test_waiters_killed_in_the_pipeline_that_fills_the_key(server, r, order):
    for round_ in range(3):
        key = f"k{round_}"
        lease(r, key, "TTL", 5000)
        waiters = [RawConn(server.port) for _ in range(3)]
        try:
            ids = [w.command("CLIENT", "ID") for w in waiters]
            for w in waiters:
                w.send("TAG.GETL", key, "WAIT", 20000)
            wait_blocked(r, 3)
            p = r.pipeline(transaction=False)
            if order == "set-then-kill":
                p.set(key, "v")
            for i in ids:
                p.execute_command("CLIENT", "KILL", "ID", i)
            if order == "kill-then-set":
                p.set(key, "v")
            expected = [True, 1, 1, 1] if order == "set-then-kill" else [1, 1, 1, True]
            assert p.execute() == expected
            assert_alive(server.port)
            assert r.ping()
            assert r.get(key) == b"v"
        finally:
            for w in waiters:
                w.close()
    wait_blocked(r, 0)
    assert_alive(server.port)


def test_waiters_timing_out_as_the_key_is_filled_each_get_one_reply(server, r):
    """WAIT 20, and the key written around the moment the waits run out:
    every waiter gets one reply (the value or a timeout) and the server lives."""
    for round_ in range(12):
        key = f"t{round_}"
        lease(r, key, "TTL", 5000)
        waiters = [RawConn(server.port) for _ in range(3)]
        try:
            for w in waiters:
                w.send("TAG.GETL", key, "WAIT", 20)
            # The behaviour under test: the write lands around the moment
            # the 20 ms waits run out, a little later each round.
            time.sleep(0.015 + 0.002 * round_)
            assert r.set(key, "v")
            assert_alive(server.port)
            for w in waiters:
                assert reply_within(w, 2.0) in ([None, None], [b"v", None])
            assert r.get(key) == b"v"
        finally:
            for w in waiters:
                w.close()
    wait_blocked(r, 0)
    assert_alive(server.port)


def test_client_unblock_releases_a_waiter(server, r):
    token = lease(r, "k", "TTL", 5000)
    w = RawConn(server.port)
    w2 = RawConn(server.port)
    try:
        wid = w.command("CLIENT", "ID")
        w.send("TAG.GETL", "k", "WAIT", 20000)
        wait_blocked(r, 1)
        assert r.execute_command("CLIENT", "UNBLOCK", wid) == 1
        assert reply_within(w, 2.0) == [None, None]
        assert_alive(server.port)

        w2id = w2.command("CLIENT", "ID")
        w2.send("TAG.GETL", "k", "WAIT", 20000)
        wait_blocked(r, 1)
        assert r.execute_command("CLIENT", "UNBLOCK", w2id, "ERROR") == 1
        reply = reply_within(w2, 2.0)
        assert isinstance(reply, RespError), reply
        assert str(reply) == "UNBLOCKED client unblocked via CLIENT UNBLOCK"
        assert_alive(server.port)
        wait_blocked(r, 0)

        # Both connections still work, and the lease is still the first caller's.
        assert w.command("PING") == b"PONG"
        assert w2.command("PING") == b"PONG"
        assert r.execute_command("TAG.GETL", "k") == [None, None]
        assert fill(r, "k", "v", token, "a") == b"OK"
        assert r.get("k") == b"v"
    finally:
        w.close()
        w2.close()
    assert_alive(server.port)


def test_client_unblock_in_the_pipeline_that_fills_the_key(server, r):
    for round_ in range(3):
        key = f"u{round_}"
        lease(r, key, "TTL", 5000)
        w = RawConn(server.port)
        try:
            wid = w.command("CLIENT", "ID")
            w.send("TAG.GETL", key, "WAIT", 20000)
            wait_blocked(r, 1)
            p = r.pipeline(transaction=False)
            p.set(key, "v")
            p.execute_command("CLIENT", "UNBLOCK", wid)
            set_reply, unblocked = p.execute()
            assert set_reply is True
            assert unblocked in (0, 1)
            assert reply_within(w, 2.0) in ([b"v", None], [None, None])
            assert w.command("PING") == b"PONG"
            assert_alive(server.port)
        finally:
            w.close()
    wait_blocked(r, 0)


# ---------------------------------------------------------------- a refused fill; bounds


def test_a_refused_fill_hands_the_lease_to_a_waiter(server, r):
    a = server.client()
    c = server.client()
    t1 = lease(a, "g", "TTL", 5000)
    b = RawConn(server.port)
    try:
        b.send("TAG.GETL", "g", "WAIT", 5000)
        wait_blocked(r, 1)
        assert c.execute_command("TAG.PURGE", "t") == 0
        assert fill(a, "g", "v", t1, "t") is None
        assert not r.exists("g")
        reply = reply_within(b, 1.0)
        assert isinstance(reply, list) and len(reply) == 2, reply
        value, t2 = reply
        assert value is None and isinstance(t2, bytes) and t2 and t2 != t1, reply
        wait_blocked(r, 0)
        # The purge came before B's lease: B's fill stores.
        assert fill(r, "g", "v2", t2, "t") == b"OK"
        assert r.get("g") == b"v2"
        assert tags_of(r, "g") == {b"t"}
    finally:
        b.close()


I64_MAX = "9223372036854775807"


def test_lease_ttl_and_wait_bounds(r):
    ttl_error = "ERR TTL must be between 1 and 86400000 milliseconds"
    wait_error = "ERR WAIT must be between 0 and 86400000 milliseconds"
    for ttl in (I64_MAX, 86400001, 0):
        assert refused(r, "TAG.GETL", "g", "TTL", ttl) == ttl_error
    for wait in (86400001, I64_MAX, -1):
        assert refused(r, "TAG.GETL", "g", "WAIT", wait) == wait_error
    # Nothing was handed out by the refused calls.
    assert info(r)["leases_outstanding"] == 0
    lease(r, "g")
    lease(r, "g2", "TTL", 86400000)
    lease(r, "g3", "WAIT", 86400000)
    assert r.dbsize() == 0
