"""Rules: TAG.LINK source-prefix tag-prefix.

A write to, deletion or expiry of a key `source-prefix + rest` (any client,
any command) purges the tag `tag-prefix + rest`: every key carrying it is
deleted, except the key whose change fired the rule. A rule's purge fires no
further rules. Rules live in the hash `tagcache:links`, so they persist and
replicate with the dataset; they never fire on a replica.
"""

import pytest
import redis

from harness import (WRONGTYPE, dataset, digest, error_text, info_pairs, tag_set, tag_sets, tags_of,
                     wait_aof_rewrite, wait_sync, wait_until)


def link(r, source, tag_prefix):
    return r.execute_command("TAG.LINK", source, tag_prefix)


def links(r):
    return r.execute_command("TAG.LINKS")


def pages(r):
    """Three cached pages built from product 42 (two of them) and 43."""
    tag_set(r, "page:a", "html-a", "p:42")
    tag_set(r, "page:b", "html-b", "p:42", "p:43")
    tag_set(r, "page:c", "html-c", "p:43")


def assert_42_purged(r):
    assert not r.exists("page:a")
    assert not r.exists("page:b")
    assert r.get("page:c") == b"html-c"
    assert r.smembers("tag:p:43") == {b"page:c"}


# ---------------------------------------------------------------- firing


FIRES = {
    "SET": lambda r: r.set("product:42", "row"),
    "SET EX": lambda r: r.set("product:42", "row", ex=100),
    "MSET": lambda r: r.mset({"product:42": "row", "other": "x"}),
    "HSET": lambda r: r.hset("product:42", "name", "x"),
    "RPUSH": lambda r: r.rpush("product:42", "x"),
    "SADD": lambda r: r.sadd("product:42", "x"),
    "INCR": lambda r: r.incr("product:42"),
    "APPEND": lambda r: r.append("product:42", "x"),
    "TAG.SET": lambda r: tag_set(r, "product:42", "row", "rows"),
}


@pytest.mark.parametrize("how", FIRES.keys())
def test_write_of_source_fires(r, how):
    assert link(r, "product:", "p:") == b"OK"
    pages(r)
    FIRES[how](r)
    assert_42_purged(r)
    assert r.exists("product:42")
    assert not r.exists("tag:p:42")
    if how == "TAG.SET":
        assert tags_of(r, "product:42") == {b"rows"}
    assert set(r.keys("*")) - {b"product:42", b"other", b"tag:rows"} == {
        b"page:c", b"tag:p:43", b"tagcache:links"}


@pytest.mark.parametrize("how", ["DEL", "UNLINK", "GETDEL"])
def test_delete_of_source_fires(r, how):
    r.set("product:42", "row")
    link(r, "product:", "p:")
    pages(r)
    assert r.execute_command(how, "product:42") in (1, b"row")
    assert_42_purged(r)
    assert not r.exists("product:42")


def test_expiry_of_source_fires(r):
    link(r, "product:", "p:")
    r.set("product:42", "row", px=50)
    pages(r)
    # Only the index is read: the expiry is found by the server's own cycle.
    wait_until(lambda: not r.exists("tag:p:42"), 3, what="rule fired by expiry")
    assert_42_purged(r)
    assert not r.exists("product:42")


def test_write_of_unrelated_key_does_not_fire(r):
    link(r, "product:", "p:")
    pages(r)
    before = dataset(r)
    r.set("products", "x")      # not under the prefix
    r.set("product", "x")
    r.set("xproduct:42", "x")
    r.set("product:4", "x")     # purges p:4, which nothing carries
    after = dataset(r)
    for k in (b"products", b"product", b"xproduct:42", b"product:4"):
        after.pop(k)
    assert after == before


def test_source_key_keeps_its_membership(r):
    """The key whose change fired the rule survives, even if it carries
    the purged tag, and stays a member of it."""
    link(r, "product:", "p:")
    pages(r)
    tag_set(r, "product:42", "row", "p:42")
    assert r.get("product:42") == b"row"
    assert r.smembers("tag:p:42") == {b"product:42"}
    assert tags_of(r, "product:42") == {b"p:42"}
    assert not r.exists("page:a") and not r.exists("page:b")
    # A later change fires again; it is still spared.
    tag_set(r, "page:d", "html-d", "p:42")
    r.append("product:42", "!")
    assert r.get("product:42") == b"row!"
    assert not r.exists("page:d")
    assert r.smembers("tag:p:42") == {b"product:42"}


def test_several_rules_match(r):
    link(r, "user:", "u:")
    link(r, "user:1", "one:")
    tag_set(r, "a", "v", "u:12")
    tag_set(r, "b", "v", "one:2")
    tag_set(r, "c", "v", "u:13")
    r.set("user:12", "x")
    assert not r.exists("a") and not r.exists("b")
    assert r.get("c") == b"v"


def test_binary_prefixes(r):
    link(r, b"src\x00\xff", b"t\x00")
    tag_set(r, "k", "v", b"t\x00rest")
    r.set(b"src\x00\xffrest", "x")
    assert not r.exists("k")
    assert links(r) == [[b"src\x00\xff", b"t\x00"]]


def test_unlink_stops_the_rule(r):
    link(r, "product:", "p:")
    link(r, "order:", "o:")
    assert r.execute_command("TAG.UNLINK", "product:") == 1
    assert r.execute_command("TAG.UNLINK", "product:") == 0
    assert r.execute_command("TAG.UNLINK", "never:") == 0
    pages(r)
    r.set("product:42", "row")
    assert r.get("page:a") == b"html-a"
    assert r.get("page:b") == b"html-b"
    assert links(r) == [[b"order:", b"o:"]]
    # The other rule still fires.
    tag_set(r, "o-page", "v", "o:1")
    r.set("order:1", "x")
    assert not r.exists("o-page")
    # Removing the last rule removes the hash.
    assert r.execute_command("TAG.UNLINK", "order:") == 1
    assert links(r) == []
    assert not r.exists("tagcache:links")


def test_links_listing(r):
    assert links(r) == []
    link(r, "user:", "u:")
    link(r, "order:", "o:")
    link(r, "product:", "p:")
    assert links(r) == [[b"order:", b"o:"], [b"product:", b"p:"], [b"user:", b"u:"]]
    # Each rule records its creator (a NUL, then the tag prefix): its
    # purges have that user's permissions.
    assert r.hgetall("tagcache:links") == {
        b"order:": b"default\x00o:", b"product:": b"default\x00p:", b"user:": b"default\x00u:"}
    # A rule a client writes into the hash with a plain command is vouched
    # for by nobody: it fires, and may delete nothing (the keys it would have
    # purged are counted).
    denied = int(info_pairs(r.execute_command("TAG.INFO"))["rule_keys_denied"])
    r.hset("tagcache:links", "hand:", "h:")
    tag_set(r, "by-hand", "v", "h:1")
    r.set("hand:1", "x")
    wait_until(lambda: int(info_pairs(r.execute_command("TAG.INFO"))[
        "rule_keys_denied"]) == denied + 1, 2, what="hand-written rule fired")
    assert r.get("by-hand") == b"v"
    r.hdel("tagcache:links", "hand:")
    # Relinking a source replaces its tag prefix.
    link(r, "user:", "people:")
    assert links(r) == [[b"order:", b"o:"], [b"product:", b"p:"], [b"user:", b"people:"]]
    tag_set(r, "k-old", "v", "u:1")
    tag_set(r, "k-new", "v", "people:1")
    r.set("user:1", "x")
    assert r.exists("k-old") and not r.exists("k-new")


def test_rule_per_database(server, r):
    """Rules belong to the database whose hash holds them."""
    link(r, "product:", "p:")
    db1 = server.client(db=1)
    tag_set(db1, "page:a", "html", "p:42")
    db1.set("product:42", "x")  # no rule in db 1
    assert db1.get("page:a") == b"html"
    assert db1.execute_command("TAG.LINKS") == []
    link(db1, "product:", "other:")
    tag_set(r, "page:a", "html", "p:42")
    db1.set("product:42", "y")
    assert r.get("page:a") == b"html"
    assert db1.get("page:a") == b"html"
    r.set("product:42", "z")
    assert not r.exists("page:a")
    assert db1.get("page:a") == b"html"


COVERS_INDEX = "ERR source-prefix must not cover the tag index keys"

BAD = {
    "empty source": (("TAG.LINK", "", "x:"), "ERR source-prefix must not be empty"),
    "source is the tag prefix": (("TAG.LINK", "tag:", "x:"), COVERS_INDEX),
    "source under the tag prefix": (("TAG.LINK", "tag:abc", "x:"), COVERS_INDEX),
    "source covers the tag prefix": (("TAG.LINK", "t", "x:"), COVERS_INDEX),
    "source covers the tag prefix 2": (("TAG.LINK", "ta", "x:"), COVERS_INDEX),
    "arity link 1": (("TAG.LINK", "a:"), "ERR wrong number of arguments for 'tag.link' command"),
    "unknown option after the prefixes": (("TAG.LINK", "a:", "b:", "c:"),
                                          "ERR syntax error near 'c:'"),
    "soft without its grace": (("TAG.LINK", "a:", "b:", "SOFT"), "ERR syntax error near 'SOFT'"),
    "soft grace of zero": (("TAG.LINK", "a:", "b:", "SOFT", "0"),
                           "ERR grace-ms must be between 1 and 2592000000"),
    "soft grace not a number": (("TAG.LINK", "a:", "b:", "SOFT", "x"),
                                "ERR value is not an integer or out of range"),
    "arity link 5": (("TAG.LINK", "a:", "b:", "SOFT", "1", "x"),
                     "ERR wrong number of arguments for 'tag.link' command"),
    "arity unlink 0": (("TAG.UNLINK",), "ERR wrong number of arguments for 'tag.unlink' command"),
    "arity unlink 2": (("TAG.UNLINK", "a", "b"),
                       "ERR wrong number of arguments for 'tag.unlink' command"),
    "arity links": (("TAG.LINKS", "x"), "ERR wrong number of arguments for 'tag.links' command"),
}


@pytest.mark.parametrize("case", BAD.keys())
def test_bad_calls(r, case):
    link(r, "product:", "p:")
    pages(r)
    args, expected = BAD[case]
    before = dataset(r)
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command(*args)
    assert error_text(e.value) == expected
    assert dataset(r) == before
    assert links(r) == [[b"product:", b"p:"]]


def test_custom_tag_prefix(servers):
    r = servers.start(module_args=["tag-prefix", "idx:"]).client()
    # With another index prefix, `tag:` is an ordinary source prefix...
    assert link(r, "tag:", "p:") == b"OK"
    # ...and the index keys' prefix is refused.
    for bad in ("idx:", "i", "idx:abc"):
        with pytest.raises(redis.ResponseError) as e:
            link(r, bad, "x:")
        assert error_text(e.value) == COVERS_INDEX, bad
    tag_set(r, "page", "v", "p:1")
    assert r.smembers("idx:p:1") == {b"page"}
    r.set("tag:1", "x")
    assert not r.exists("page")
    assert not r.exists("idx:p:1")


def test_source_deleted_by_a_purge_fires(r):
    """TAG.PURGE is a deletion like any other: a purged source key fires
    its rule (a client's purge, not a rule's)."""
    link(r, "product:", "p:")
    tag_set(r, "product:42", "row", "products")
    tag_set(r, "page:1", "html", "p:42")
    assert r.execute_command("TAG.PURGE", "products") == 1
    assert not r.exists("page:1")
    assert set(r.keys("*")) == {b"tagcache:links"}


def test_rename_and_move_of_source_fire(r):
    link(r, "product:", "p:")
    r.set("product:1", "row")
    tag_set(r, "page:1", "h", "p:1")
    tag_set(r, "page:2", "h", "p:2")
    tag_set(r, "page:3", "h", "p:3")
    r.rename("product:1", "product:2")  # the old name goes, the new is written
    assert not r.exists("page:1") and not r.exists("page:2")
    assert r.get("page:3") == b"h"
    r.rename("product:2", "product:3")
    r.move("product:3", 1)
    assert not r.exists("page:3")


def test_links_key_of_wrong_type(r):
    r.set("tagcache:links", "x")
    for args in (("TAG.LINK", "a:", "b:"), ("TAG.UNLINK", "a:"), ("TAG.LINKS",)):
        with pytest.raises(redis.ResponseError) as e:
            r.execute_command(*args)
        assert error_text(e.value) == WRONGTYPE, args
    assert r.get("tagcache:links") == b"x"


# ---------------------------------------------------------------- no loops


def test_rule_onto_its_own_prefix_does_not_loop(server, r):
    link(r, "a:", "a:")
    assert tag_set(r, "a:1", "x", "a:1") == b"OK"
    assert tag_set(r, "a:2", "y", "a:1") == b"OK"
    # The second TAG.SET fired the rule (a:2 -> tag a:2, carried by nobody).
    assert r.get("a:1") == b"x"
    r.set("a:1", "z")
    assert r.get("a:1") == b"z"
    assert not r.exists("a:2")
    assert r.ping()
    assert server.proc.poll() is None
    # a:1 was overwritten by a plain SET: its own tags ended, and a:2, the
    # other member of tag a:1, was purged.
    assert tags_of(r, "a:1") == set()
    assert not r.exists("tag:a:1")
    assert set(r.keys("*")) == {b"a:1", b"tagcache:links"}


def test_chained_rules_terminate(server, r):
    link(r, "x:", "y:")
    link(r, "y:", "x:")
    # y:1 carries tag y:1... and x:1 carries tag x:1.
    tag_set(r, "y:1", "vy", "y:1")
    tag_set(r, "x:1", "vx", "x:1")
    tag_set(r, "other", "vo", "y:1", "x:1")
    # x:1 changes: tag y:1 is purged (y:1 and other deleted). Those deletions
    # of y:1 would purge tag x:1, but a rule's purge fires no further rules.
    r.set("x:1", "new")
    assert r.ping()
    assert server.proc.poll() is None
    assert r.get("x:1") == b"new"
    assert not r.exists("y:1")
    assert not r.exists("other")
    for _ in range(20):
        r.set("x:1", "again")
        r.set("y:1", "again")
    assert r.get("x:1") == b"again" and r.get("y:1") == b"again"


def test_purge_by_rule_is_atomic_for_many_keys(r):
    link(r, "product:", "p:")
    p = r.pipeline(transaction=False)
    for i in range(2000):
        p.execute_command("TAG.SET", f"page:{i}", "v", "TAGS", 2, "p:1", f"own:{i}")
    p.execute()
    r.set("product:1", "x")
    assert r.dbsize() == 2  # product:1 and the rules hash
    assert tag_sets(r) == {}


# ---------------------------------------------------------------- persistence


def test_rules_survive_rdb_restart(servers):
    s = servers.start()
    r = s.client()
    link(r, "product:", "p:")
    link(r, "user:", "u:")
    assert r.save()
    r = s.restart()
    assert links(r) == [[b"product:", b"p:"], [b"user:", b"u:"]]
    pages(r)
    r.set("product:42", "row")
    assert_42_purged(r)


@pytest.mark.parametrize("preamble", ["yes", "no"])
def test_rules_survive_aof_restart(servers, preamble):
    s = servers.start(extra_args=["--appendonly", "yes", "--appendfsync", "always",
                                  "--aof-use-rdb-preamble", preamble])
    r = s.client()
    wait_aof_rewrite(r)
    link(r, "product:", "p:")
    link(r, "gone:", "g:")
    link(r, "user:", "u:")
    r.execute_command("TAG.UNLINK", "gone:")
    r = s.restart()
    assert links(r) == [[b"product:", b"p:"], [b"user:", b"u:"]]
    pages(r)
    r.set("product:42", "row")
    assert_42_purged(r)
    # After a rewrite too.
    r.bgrewriteaof()
    wait_aof_rewrite(r)
    r = s.restart()
    assert links(r) == [[b"product:", b"p:"], [b"user:", b"u:"]]
    tag_set(r, "u-page", "v", "u:1")
    r.set("user:1", "x")
    assert not r.exists("u-page")
    # An AOF replay (of the SET and the rule's deletions) does not fire
    # rules again on load: the dataset after restart is the one before.
    before = dataset(r)
    r = s.restart()
    assert dataset(r) == before


# ---------------------------------------------------------------- replication


def test_rules_reach_replica(master_replica):
    master, replica = master_replica
    m, rep = master.client(), replica.client()
    link(m, "product:", "p:")
    link(m, "user:", "u:")
    wait_sync(m, rep)
    assert rep.execute_command("TAG.LINKS") == [[b"product:", b"p:"], [b"user:", b"u:"]]
    pages(m)
    tag_set(m, "product:42", "row", "p:42")
    wait_sync(m, rep)
    assert_42_purged(rep)
    assert rep.get("product:42") == b"row"
    assert rep.smembers("tag:p:42") == {b"product:42"}
    assert digest(rep) == digest(m)
    # Deletion and expiry on the master: the replica follows the master's
    # deletions and fires nothing itself.
    pages(m)
    m.delete("product:42")
    tag_set(m, "u-page", "v", "u:9")
    m.set("user:9", "x", px=50)
    wait_until(lambda: not m.exists("u-page"), 3, what="rule fired by expiry")
    wait_sync(m, rep)
    assert_42_purged(rep)
    assert not rep.exists("u-page")
    assert digest(rep) == digest(m)
    # Unlink reaches the replica.
    m.execute_command("TAG.UNLINK", "user:")
    wait_sync(m, rep)
    assert rep.execute_command("TAG.LINKS") == [[b"product:", b"p:"]]


def test_replica_linked_after_rules(servers):
    master = servers.start(name="master")
    m = master.client()
    link(m, "product:", "p:")
    pages(m)
    replica = servers.start_replica(master)
    rep = replica.client()
    assert rep.execute_command("TAG.LINKS") == [[b"product:", b"p:"]]
    m.set("product:42", "row")
    wait_sync(m, rep)
    assert_42_purged(rep)
    assert digest(rep) == digest(m)


def test_rules_never_fire_on_replica(master_replica):
    """The replica holds its own copy of the rules but only applies the
    master's writes: a key the master spared stays on the replica."""
    master, replica = master_replica
    m, rep = master.client(), replica.client()
    link(m, "product:", "p:")
    tag_set(m, "product:42", "row", "p:42")
    tag_set(m, "product:42", "row2", "p:42")  # fires; the source is spared
    wait_sync(m, rep)
    assert rep.get("product:42") == b"row2"
    assert rep.smembers("tag:p:42") == {b"product:42"}
    assert dataset(rep) == dataset(m)
    assert digest(rep) == digest(m)


# ---- Rules nobody can forge: however the rules' hash is written otherwise,
# no rule acts with the rights of anyone but its writer (or nobody), not at
# once and not after a reload, restart, replica sync or failover.

FORGED = b"default\x00s:"


def eve_and_a_secret(server, r):
    r.set("secret:1", "s")
    r.execute_command("ACL", "SETUSER", "eve", "on", ">pw", "~eve:*", "~tagcache:links",
                      "+@all")
    eve = server.client(username="eve", password="pw")
    eve.ping()
    tag_set(r, "secret:1", "s", "s:1")
    return eve


def assert_forged_rule_acts_for_nobody(r, writer):
    """The forged rule is listed, persisted as owned by nobody, and a write
    of its source deletes nothing."""
    assert [b"eve:x", b"s:"] in links(r)
    wait_until(lambda: r.hget("tagcache:links", "eve:x") == b"(no owner)\x00s:", 2,
               what="the forged rule written again as owned by nobody")
    writer.set("eve:x1", "b")
    wait_until(lambda: r.exists("secret:1") == 1, 0.3)
    assert r.get("secret:1") == b"s"


@pytest.mark.parametrize("how", ["hset", "pipeline-reload", "multi"])
def test_a_forged_rule_acts_for_nobody_after_a_reload(server, r, how):
    eve = eve_and_a_secret(server, r)
    if how == "hset":
        eve.hset("tagcache:links", "eve:x", FORGED)
        r.execute_command("DEBUG", "RELOAD")
    elif how == "pipeline-reload":
        p = r.pipeline(transaction=False)
        p.execute_command("HSET", "tagcache:links", "eve:x", FORGED)
        p.execute_command("DEBUG", "RELOAD")
        p.execute()
    else:
        p = eve.pipeline(transaction=True)
        p.hset("tagcache:links", "eve:x", FORGED)
        p.set("eve:x0", "b")
        p.execute()
        r.execute_command("DEBUG", "RELOAD")
    assert_forged_rule_acts_for_nobody(r, eve)


def test_a_forged_rule_stays_unowned_when_others_link_and_unlink(server, r):
    eve = eve_and_a_secret(server, r)
    eve.hset("tagcache:links", "eve:x", FORGED)
    link(r, "other:", "o:")
    assert r.execute_command("TAG.UNLINK", "other:") == 1
    assert_forged_rule_acts_for_nobody(r, eve)


def test_a_forged_rule_acts_for_nobody_after_a_restart(servers):
    s = servers.start(extra_args=["--appendonly", "yes"])
    r = s.client()
    eve = eve_and_a_secret(s, r)
    eve.hset("tagcache:links", "eve:x", FORGED)
    wait_until(lambda: r.hget("tagcache:links", "eve:x") == b"(no owner)\x00s:", 2)
    r = s.restart()
    r.execute_command("ACL", "SETUSER", "eve", "on", ">pw", "~eve:*", "~tagcache:links",
                      "+@all")
    eve = s.client(username="eve", password="pw")
    assert_forged_rule_acts_for_nobody(r, eve)


def test_a_restored_rules_hash_acts_for_nobody(server, r):
    eve = eve_and_a_secret(server, r)
    other = server.client(db=1)
    other.hset("tagcache:links", "eve:x", FORGED)
    payload = other.dump("tagcache:links")
    other.delete("tagcache:links")
    eve.restore("tagcache:links", 0, payload, replace=True)
    assert_forged_rule_acts_for_nobody(r, eve)
    r.execute_command("DEBUG", "RELOAD")
    assert_forged_rule_acts_for_nobody(r, eve)


def test_a_forged_rule_acts_for_nobody_on_a_promoted_replica(master_replica):
    master, replica = master_replica
    m = master.client()
    eve = eve_and_a_secret(master, m)
    link(m, "user:", "u:")
    eve.hset("tagcache:links", "eve:x", FORGED)
    wait_until(lambda: replica.client().hget("tagcache:links", "eve:x")
               == b"(no owner)\x00s:", 5, what="the replica has the disowned rule")
    rc = replica.client()
    rc.execute_command("REPLICAOF", "NO", "ONE")
    rc.execute_command("ACL", "SETUSER", "eve", "on", ">pw", "~eve:*", "~tagcache:links",
                       "+@all")
    eve2 = replica.client(username="eve", password="pw")
    assert_forged_rule_acts_for_nobody(rc, eve2)
    # The rule made with TAG.LINK still acts for its owner.
    tag_set(rc, "page", "v", "u:1")
    rc.set("user:1", "x")
    wait_until(lambda: rc.exists("page") == 0, 2, what="the real rule fired")


def test_a_rule_removed_by_a_client_and_written_back_acts_for_nobody(server, r):
    eve = eve_and_a_secret(server, r)
    link(r, "eve:", "s:")  # made by default: it would purge secret:1
    value = r.hget("tagcache:links", "eve:")
    eve.hdel("tagcache:links", "eve:")
    eve.hset("tagcache:links", "eve:", value)
    wait_until(lambda: r.hget("tagcache:links", "eve:") == b"(no owner)\x00s:", 2,
               what="the replayed rule written again as owned by nobody")
    eve.set("eve:1", "b")
    wait_until(lambda: r.exists("secret:1") == 1, 0.3)
    assert r.get("secret:1") == b"s"
