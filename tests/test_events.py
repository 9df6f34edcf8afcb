"""Events: one JSON document per purge, bump and rule firing.

Published on the pub/sub channel `tagcache:events` (config
`tagcache.events-channel`, empty = off) and, when `tagcache.events-stream` is
set, appended to that stream as field `event` with `MAXLEN ~
<events-stream-maxlen>`. Index hygiene publishes nothing.
"""

import json
import queue
import threading
import time

import pytest
import redis

from harness import (WRONGTYPE, RawConn, error_text, tag_set, wait_aof_rewrite, wait_sync,
                     wait_until)

CHANNEL = b"tagcache:events"
READ_TIMEOUT = 3.0


class Subscriber:
    """A RESP2 connection subscribed to one channel."""

    def __init__(self, port, channel=CHANNEL):
        self.conn = RawConn(port, timeout=READ_TIMEOUT)
        self.conn.send("SUBSCRIBE", channel)
        reply = self.conn.read(timeout=READ_TIMEOUT)
        assert reply == [b"subscribe", channel, 1], reply
        self.channel = channel

    def next(self, timeout=READ_TIMEOUT) -> dict:
        msg = self.conn.read(timeout=timeout)
        assert isinstance(msg, list) and msg[0] == b"message", msg
        assert msg[1] == self.channel, msg
        return json.loads(msg[2])

    def close(self):
        self.conn.close()


@pytest.fixture
def sub(server):
    s = Subscriber(server.port)
    yield s
    s.close()


def marker(r, name="marker"):
    """A purge whose event ends a sequence: whatever the subscriber reads
    before it was published before it."""
    r.execute_command("TAG.PURGE", name)


def next_is_marker(sub, name="marker"):
    ev = sub.next()
    assert ev["op"] == "purge" and ev["tags"] == [name], f"unexpected event {ev}"


def now_ms():
    return int(time.time() * 1000)


def assert_event(ev, op, tags, scopes, keys, source, t0, t1):
    assert set(ev) == {"op", "tags", "scopes", "keys", "source", "ts"}, ev
    assert ev["op"] == op
    assert ev["tags"] == tags
    assert ev["scopes"] == scopes
    assert ev["keys"] == keys
    assert ev["source"] == source
    assert isinstance(ev["ts"], int) and t0 - 5 <= ev["ts"] <= t1 + 5, (ev["ts"], t0, t1)


# ---------------------------------------------------------------- pub/sub


def test_one_event_per_purge(r, sub):
    tag_set(r, "k1", "v", "a")
    tag_set(r, "k2", "v", "b", "c")
    tag_set(r, "k3", "v", "c")
    tag_set(r, "k4", "v", "other")
    t0 = now_ms()
    assert r.execute_command("TAG.PURGE", "a", "b", "c") == 3
    t1 = now_ms()
    assert_event(sub.next(), "purge", ["a", "b", "c"], [], 3, None, t0, t1)
    # A purge that deletes nothing is an event too.
    t0 = now_ms()
    assert r.execute_command("TAG.PURGE", "nothing") == 0
    assert_event(sub.next(), "purge", ["nothing"], [], 0, None, t0, now_ms())
    marker(r)
    next_is_marker(sub)


def test_one_event_per_bump(r, sub):
    r.execute_command("VER.SET", "s1", "k", "v")
    t0 = now_ms()
    reply = r.execute_command("VER.BUMP", "s1", "s2")
    assert len(reply) == 2
    assert_event(sub.next(), "bump", [], ["s1", "s2"], 0, None, t0, now_ms())
    r.execute_command("VER.BUMP", "s3")
    ev = sub.next()
    assert ev["op"] == "bump" and ev["scopes"] == ["s3"]
    # VER.SET creating a token is not a bump.
    r.execute_command("VER.SET", "s4", "k", "v")
    marker(r)
    next_is_marker(sub)


def test_one_event_per_rule_firing(r, sub):
    r.execute_command("TAG.LINK", "product:", "p:")
    tag_set(r, "page:1", "v", "p:42")
    tag_set(r, "page:2", "v", "p:42", "x")
    t0 = now_ms()
    r.set("product:42", "row")
    assert_event(sub.next(), "link", ["p:42"], [], 2, "product:42", t0, now_ms())
    # A firing that finds nothing is still one event; a delete fires too.
    r.delete("product:42")
    ev = sub.next()
    assert ev["op"] == "link" and ev["source"] == "product:42" and ev["keys"] == 0
    # Expiry of the source.
    tag_set(r, "page:3", "v", "p:7")
    r.set("product:7", "row", px=50)
    ev = sub.next()
    assert ev["op"] == "link" and ev["tags"] == ["p:7"] and ev["keys"] == 1
    assert ev["source"] == "product:7"
    marker(r)
    next_is_marker(sub)


def test_hygiene_publishes_nothing(r, sub):
    tag_set(r, "k1", "v", "a")
    tag_set(r, "k2", "v", "a")
    tag_set(r, "k3", "v", "a")
    tag_set(r, "k4", "v", "a", opts=("PX", 30))
    tag_set(r, "k5", "v", "a")
    r.delete("k1")
    r.unlink("k2")
    r.set("k3", "plain")
    r.rename("k5", "k6")
    wait_until(lambda: b"k4" not in r.smembers("tag:a"), 3, what="expiry")
    r.execute_command("TAG.REM", "k6", "a")
    r.flushall()
    marker(r)
    next_is_marker(sub)


def test_failed_purge_publishes_nothing(r, sub):
    r.set("tag:bad", "not a set")
    tag_set(r, "k", "v", "good")
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("TAG.PURGE", "good", "bad")
    assert error_text(e.value) == WRONGTYPE
    assert r.exists("k")
    marker(r)
    next_is_marker(sub)


def test_purges_in_multi(r, sub):
    tag_set(r, "k1", "v", "a")
    tag_set(r, "k2", "v", "b")
    p = r.pipeline(transaction=True)
    p.execute_command("TAG.PURGE", "a")
    p.execute_command("TAG.PURGE", "b")
    assert p.execute() == [1, 1]
    assert sub.next()["tags"] == ["a"]
    assert sub.next()["tags"] == ["b"]
    marker(r)
    next_is_marker(sub)


def test_channel_off_and_renamed(server, r, sub):
    assert r.config_get("tagcache.events-channel") == {"tagcache.events-channel": "tagcache:events"}
    r.config_set("tagcache.events-channel", "")
    assert r.config_get("tagcache.events-channel") == {"tagcache.events-channel": ""}
    tag_set(r, "k", "v", "a")
    r.execute_command("TAG.PURGE", "a")
    r.execute_command("VER.BUMP", "s")
    r.config_set("tagcache.events-channel", "elsewhere")
    other = Subscriber(server.port, b"elsewhere")
    try:
        r.execute_command("TAG.PURGE", "on-other")
        assert other.next()["tags"] == ["on-other"]
    finally:
        other.close()
    r.config_set("tagcache.events-channel", "tagcache:events")
    marker(r)
    # Nothing from the time the channel was off or elsewhere.
    next_is_marker(sub)


def test_event_arrives_after_the_deletion(server, r):
    """A subscriber that reads a key upon the event never sees the purged value."""
    r.execute_command("TAG.LINK", "product:", "p:")
    seen = queue.Queue()
    ready = threading.Event()

    def follow():
        s = Subscriber(server.port)
        reader = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)
        ready.set()
        try:
            for _ in range(3):
                ev = s.next(timeout=5)
                seen.put((ev, {k: reader.get(k) for k in ("page:1", "page:2", "page:3")}))
        except Exception as e:  # noqa: BLE001 - reported through the queue
            seen.put((e, None))
        finally:
            s.close()
            reader.close()

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    assert ready.wait(5)
    wait_until(lambda: r.pubsub_numsub(CHANNEL) == [(CHANNEL, 1)], 5,
               what="the follower subscribed")
    tag_set(r, "page:1", "v1", "a")
    tag_set(r, "page:2", "v2", "p:1")
    tag_set(r, "page:3", "v3", "p:2")
    r.execute_command("TAG.PURGE", "a")
    r.set("product:1", "x")
    r.set("product:2", "x", px=30)
    results = [seen.get(timeout=5) for _ in range(3)]
    t.join(5)
    for ev, values in results:
        assert not isinstance(ev, Exception), ev
    (e1, v1), (e2, v2), (e3, v3) = results
    assert e1["op"] == "purge" and v1["page:1"] is None
    assert e2["op"] == "link" and v2["page:2"] is None
    assert e3["op"] == "link" and v3["page:3"] is None


# ---------------------------------------------------------------- stream


def xevents(r, stream="ev"):
    return [json.loads(fields[b"event"]) for _, fields in r.xrange(stream)]


def test_stream_receives_events(r, sub):
    r.config_set("tagcache.events-stream", "ev")
    tag_set(r, "k", "v", "a")
    r.execute_command("TAG.PURGE", "a", "b")
    r.execute_command("VER.BUMP", "s1", "s2")
    r.execute_command("TAG.LINK", "product:", "p:")
    r.set("product:1", "x")
    evs = xevents(r)
    assert [e["op"] for e in evs] == ["purge", "bump", "link"]
    assert evs[0]["tags"] == ["a", "b"] and evs[0]["keys"] == 1
    assert evs[1]["scopes"] == ["s1", "s2"]
    assert evs[2]["source"] == "product:1"
    # The stream entry is the pub/sub payload.
    assert [sub.next() for _ in range(3)] == evs
    info = r.xinfo_stream("ev")
    assert info["length"] == 3
    for _, fields in r.xrange("ev"):
        assert list(fields) == [b"event"]
    # Switched off: no more entries.
    r.config_set("tagcache.events-stream", "")
    r.execute_command("TAG.PURGE", "x")
    assert r.xlen("ev") == 3


def test_stream_maxlen_trims(r):
    r.config_set("stream-node-max-entries", 10)
    r.config_set("tagcache.events-stream", "ev")
    r.config_set("tagcache.events-stream-maxlen", 10)
    assert r.config_get("tagcache.events-stream-maxlen") == {"tagcache.events-stream-maxlen": "10"}
    for i in range(300):
        r.execute_command("TAG.PURGE", f"t{i}")
    n = r.xlen("ev")
    assert 10 <= n <= 30, n  # approximate trimming keeps whole nodes
    last = xevents(r)[-1]
    assert last["tags"] == ["t299"]


MAXLEN_REFUSED = ("ERR CONFIG SET failed (possibly related to argument"
                  " 'tagcache.events-stream-maxlen') - ")
OUT_OF_RANGE = MAXLEN_REFUSED + "argument must be between 1 and 1000000000 inclusive"
NOT_PARSED = MAXLEN_REFUSED + "argument couldn't be parsed into an integer"


@pytest.mark.parametrize("value,expected", [
    ("0", OUT_OF_RANGE), ("-1", OUT_OF_RANGE), ("-100", OUT_OF_RANGE), ("abc", NOT_PARSED),
    ("1.5", NOT_PARSED), ("", NOT_PARSED), ("1000000001", OUT_OF_RANGE)],
    ids=["0", "-1", "-100", "abc", "1.5", "", "1000000001"])
def test_stream_maxlen_range(r, value, expected):
    before = r.config_get("tagcache.events-stream-maxlen")
    assert before == {"tagcache.events-stream-maxlen": "10000"}
    with pytest.raises(redis.ResponseError) as e:
        r.config_set("tagcache.events-stream-maxlen", value)
    assert error_text(e.value) == expected
    assert r.config_get("tagcache.events-stream-maxlen") == before


def test_stream_maxlen_settable(r):
    for v in ("1", "5", "1000000000"):
        assert r.config_set("tagcache.events-stream-maxlen", v) is True
        assert r.config_get("tagcache.events-stream-maxlen") == {"tagcache.events-stream-maxlen": v}


def test_stream_maxlen_at_load(servers):
    s = servers.start(module_args=["events-stream", "ev", "events-stream-maxlen", "7"])
    r = s.client()
    assert r.config_get("tagcache.events-stream") == {"tagcache.events-stream": "ev"}
    assert r.config_get("tagcache.events-stream-maxlen") == {"tagcache.events-stream-maxlen": "7"}
    r.execute_command("TAG.PURGE", "a")
    assert r.xlen("ev") == 1


def test_consumer_group_replays_after_aof_restart(servers):
    s = servers.start(module_args=["events-stream", "ev"],
                      extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    r = s.client()
    wait_aof_rewrite(r)
    r.xgroup_create("ev", "g", id="$", mkstream=True)
    for i in range(5):
        tag_set(r, f"k{i}", "v", f"t{i}")
        r.execute_command("TAG.PURGE", f"t{i}")
    got = r.xreadgroup("g", "c1", {"ev": ">"}, count=2)
    first = [json.loads(f[b"event"])["tags"] for _, f in got[0][1]]
    assert first == [["t0"], ["t1"]]
    # The service is down: more events meanwhile.
    r.execute_command("VER.BUMP", "scope")
    r = s.restart()
    r.execute_command("TAG.PURGE", "after")
    got = r.xreadgroup("g", "c1", {"ev": ">"}, count=100)
    rest = [json.loads(f[b"event"]) for _, f in got[0][1]]
    assert [e["tags"] for e in rest[:3]] == [["t2"], ["t3"], ["t4"]]
    assert rest[3]["op"] == "bump" and rest[3]["scopes"] == ["scope"]
    assert rest[4]["tags"] == ["after"]
    assert len(rest) == 5
    # The two read before the restart are still pending for c1.
    pending = r.xpending("ev", "g")
    assert pending["pending"] == 7


def test_consumer_group_replays_after_rdb_restart(servers):
    s = servers.start(module_args=["events-stream", "ev"])
    r = s.client()
    r.xgroup_create("ev", "g", id="0", mkstream=True)
    for i in range(4):
        r.execute_command("TAG.PURGE", f"t{i}")
    r.xreadgroup("g", "c1", {"ev": ">"}, count=1)
    assert r.save()
    r = s.restart()
    got = r.xreadgroup("g", "c1", {"ev": ">"}, count=100)
    assert [json.loads(f[b"event"])["tags"] for _, f in got[0][1]] == [["t1"], ["t2"], ["t3"]]


def test_stream_replicates(servers):
    master = servers.start(name="master", module_args=["events-stream", "ev"])
    replica = servers.start_replica(master, module_args=["events-stream", "ev"])
    m, rep = master.client(), replica.client()
    tag_set(m, "k", "v", "a")
    m.execute_command("TAG.PURGE", "a")
    m.execute_command("VER.BUMP", "s")
    wait_sync(m, rep)
    assert rep.xrange("ev") == m.xrange("ev")
    assert rep.xlen("ev") == 2
    assert rep.execute_command("DEBUG", "DIGEST") == m.execute_command("DEBUG", "DIGEST")
