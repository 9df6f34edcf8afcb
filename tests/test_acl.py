"""Every key a command touches is checked against the caller's ACL first."""

import pytest
import redis

import harness
from harness import (acl_client, dataset, digest, error_text, noperm_key, refused,
                     server_noperm_key, set_of, tag_set, tags_of, wait_tag_info,
                     wait_until)

CACHE_USER = ("~cache:*", "~tag:*", "+@all")


@pytest.fixture
def admin(r):
    return r


def seed(r):
    tag_set(r, "cache:1", "v1", "shared", "c1")
    tag_set(r, "cache:2", "v2", "shared")
    tag_set(r, "secret:1", "s1", "shared")
    tag_set(r, "cache:3", "v3", "public")


def test_purge_of_tag_holding_forbidden_key_is_refused_whole(server, admin):
    seed(admin)
    u = acl_client(server, admin, "u", "pw", *CACHE_USER)
    before = dataset(admin)
    d = digest(admin)
    with pytest.raises(redis.ResponseError) as e:
        u.execute_command("TAG.PURGE", "shared")
    assert error_text(e.value) == noperm_key(b"secret:1")
    assert dataset(admin) == before
    assert digest(admin) == d
    assert admin.get("cache:1") == b"v1"
    assert admin.get("cache:2") == b"v2"
    assert admin.get("secret:1") == b"s1"
    assert admin.smembers("tag:shared") == {b"cache:1", b"cache:2", b"secret:1"}


def test_purge_of_several_tags_refused_if_any_holds_forbidden_key(server, admin):
    seed(admin)
    u = acl_client(server, admin, "u", "pw", *CACHE_USER)
    before = dataset(admin)
    with pytest.raises(redis.ResponseError) as e:
        u.execute_command("TAG.PURGE", "public", "shared")
    assert error_text(e.value) == noperm_key(b"secret:1")
    assert dataset(admin) == before


def test_purge_of_client_written_set_with_forbidden_member(server, admin):
    admin.set("cache:9", "v")
    admin.set("secret:9", "s")
    admin.sadd("tag:legacy", "cache:9", "secret:9")
    u = acl_client(server, admin, "u", "pw", *CACHE_USER)
    before = dataset(admin)
    with pytest.raises(redis.ResponseError) as e:
        u.execute_command("TAG.PURGE", "legacy")
    assert error_text(e.value) == noperm_key(b"secret:9")
    assert dataset(admin) == before


def test_purge_of_allowed_keys_works(server, admin):
    seed(admin)
    u = acl_client(server, admin, "u", "pw", *CACHE_USER)
    assert u.execute_command("TAG.PURGE", "public") == 1
    assert not admin.exists("cache:3")
    assert admin.get("cache:1") == b"v1"


def test_tag_set_forbidden_key(server, admin):
    u = acl_client(server, admin, "u", "pw", *CACHE_USER)
    with pytest.raises(redis.ResponseError) as e:
        tag_set(u, "secret:x", "v", "t")
    # The server's own check of the declared keys answers first.
    assert error_text(e.value) == server_noperm_key()
    assert not admin.exists("secret:x")
    assert not admin.exists("tag:t")
    assert admin.dbsize() == 0


def test_tag_set_allowed_key(server, admin):
    u = acl_client(server, admin, "u", "pw", *CACHE_USER)
    assert tag_set(u, "cache:x", "v", "t") == b"OK"
    assert admin.get("cache:x") == b"v"
    assert admin.smembers("tag:t") == {b"cache:x"}


def test_tag_set_needs_access_to_tag_sets(server, admin):
    u = acl_client(server, admin, "nosets", "pw", "~cache:*", "+@all")
    with pytest.raises(redis.ResponseError) as e:
        tag_set(u, "cache:x", "v", "t")
    assert error_text(e.value) == noperm_key(b"tag:t")
    assert admin.dbsize() == 0


def test_tag_add_forbidden_key(server, admin):
    admin.hset("secret:h", "f", "v")
    u = acl_client(server, admin, "u", "pw", *CACHE_USER)
    before = dataset(admin)
    with pytest.raises(redis.ResponseError) as e:
        u.execute_command("TAG.ADD", "secret:h", "t")
    assert error_text(e.value) == server_noperm_key()
    assert dataset(admin) == before


def narrowed_after_an_unrestricted_call(server, admin, narrow):
    """A user with every key purges once (so the module has seen it is
    unrestricted), then is narrowed by `narrow(admin)`; its next purge of a
    tag holding a key it lost must be refused whole."""
    seed(admin)
    u = acl_client(server, admin, "u", "pw", "~*", "+@all")
    assert u.execute_command("TAG.PURGE", "public") == 1
    assert tag_set(u, "cache:4", "v4", "shared") == b"OK"
    narrow(admin)
    before = dataset(admin)
    with pytest.raises(redis.ResponseError) as e:
        u.execute_command("TAG.PURGE", "shared")
    assert error_text(e.value) == noperm_key(b"secret:1")
    assert dataset(admin) == before
    with pytest.raises(redis.ResponseError) as e:
        tag_set(u, "secret:2", "v", "c1")
    assert error_text(e.value) == server_noperm_key()
    assert dataset(admin) == before


def test_a_user_narrowed_by_acl_setuser_is_checked_key_by_key_again(server, admin):
    narrowed_after_an_unrestricted_call(
        server, admin,
        lambda a: a.execute_command("ACL", "SETUSER", "u", "resetkeys", "~cache:*", "~tag:*"))


def test_a_user_narrowed_inside_multi_exec_is_checked_key_by_key_again(server, admin):
    """The narrowing is queued, the user purges before the EXEC runs it."""
    seed(admin)
    u = acl_client(server, admin, "u", "pw", "~*", "+@all")
    tx = server.client(single_connection_client=True)
    assert tx.execute_command("MULTI") == b"OK"
    assert tx.execute_command("ACL", "SETUSER", "u", "resetkeys", "~cache:*", "~tag:*") == b"QUEUED"
    assert u.execute_command("TAG.PURGE", "public") == 1
    assert tx.execute_command("EXEC") == [b"OK"]
    before = dataset(admin)
    with pytest.raises(redis.ResponseError) as e:
        u.execute_command("TAG.PURGE", "shared")
    assert error_text(e.value) == noperm_key(b"secret:1")
    assert dataset(admin) == before


def test_a_user_narrowed_by_acl_load_is_checked_key_by_key_again(servers):
    s = servers.new()
    s.extra_args += ["--aclfile", str(s.dir / "users.acl")]
    (s.dir / "users.acl").write_text("user default on nopass ~* &* +@all\n"
                                     "user u on >pw ~* &* +@all\n")
    s.start()
    admin = s.client()

    def narrow(a):
        (s.dir / "users.acl").write_text("user default on nopass ~* &* +@all\n"
                                         "user u on >pw ~cache:* ~tag:* &* +@all\n")
        assert a.execute_command("ACL", "LOAD") == b"OK"
    seed(admin)
    u = s.client(username="u", password="pw")
    assert u.execute_command("TAG.PURGE", "public") == 1
    narrow(admin)
    u = s.client(username="u", password="pw")
    before = dataset(admin)
    with pytest.raises(redis.ResponseError) as e:
        u.execute_command("TAG.PURGE", "shared")
    assert error_text(e.value) == noperm_key(b"secret:1")
    assert dataset(admin) == before


def test_sliced_purge_checks_a_narrowed_user_key_by_key(server, admin):
    admin.config_set("tagcache.purge-atomic-max", 0)
    narrowed_after_an_unrestricted_call(
        server, admin,
        lambda a: a.execute_command("ACL", "SETUSER", "u", "resetkeys", "~cache:*", "~tag:*"))


def test_read_only_everywhere_is_not_every_key(server, admin):
    """`%R~*` lets a user read every key, not delete them."""
    seed(admin)
    u = acl_client(server, admin, "u", "pw", "%R~*", "~tag:*", "~cache:*", "+@all")
    before = dataset(admin)
    with pytest.raises(redis.ResponseError) as e:
        u.execute_command("TAG.PURGE", "shared")
    assert error_text(e.value) == noperm_key(b"secret:1")
    assert dataset(admin) == before


def module_commands(r) -> set:
    """The module's commands, as the server lists them."""
    return {c.decode() if isinstance(c, bytes) else c for c in r.command_list(module="tagcache")}


def test_acl_category_where_the_server_has_module_categories(r):
    """Redis >= 7.4 and Valkey let a module add an ACL category: every
    command is in @tagcache there. Redis 7.0 has no such API."""
    name, version = harness.server_version()
    if name == "redis" and version < (7, 4):
        assert refused(r, "ACL", "CAT", "tagcache") == "ERR Unknown category 'tagcache'"
        return
    listed = {c.decode() for c in r.execute_command("ACL", "CAT", "tagcache")}
    assert listed == module_commands(r)
    assert {"tag.set", "tag.invalidate", "ver.get"} <= listed
    r.execute_command("ACL", "SETUSER", "ops", "on", ">pw", "~*", "+@tagcache")
    ops = redis.Redis(host="127.0.0.1", port=r.connection_pool.connection_kwargs["port"],
                      username="ops", password="pw")
    assert ops.execute_command("TAG.SET", "k", "v", "TAGS", 1, "t") == b"OK"
    with pytest.raises(redis.exceptions.NoPermissionError) as e:
        ops.get("k")
    assert error_text(e.value) == "NOPERM User ops has no permissions to run the 'get' command"


# ---------------------------------------------------------------- tagging is a write; rules' owners


def test_a_read_only_user_cannot_tag_or_untag_a_key(server, r):
    r.set("secret:1", "s1")
    r.execute_command("TAG.ADD", "secret:1", "c:y")
    ro = acl_client(server, r, "ro", "pw", "+@all", "resetkeys",
                    "%R~secret:*", "~c:*", "~tag:*")
    assert ro.get("secret:1") == b"s1"
    own = refused(ro, "SET", "secret:1", "x")  # the server's own text for this
    assert own == server_noperm_key(), own
    before = dataset(r)
    d = digest(r)
    for args in (("TAG.ADD", "secret:1", "c:x"), ("TAG.REM", "secret:1", "c:y")):
        msg = refused(ro, *args)
        assert msg in (noperm_key(b"secret:1"), own), (args, msg)
        assert dataset(r) == before, args
        assert digest(r) == d, args
    assert tags_of(r, "secret:1") == {b"c:y"}
    assert not r.exists("tag:c:x")


def rule_scenario(r):
    r.set("secret:1", "s1")
    r.set("secret:2", "s2")
    assert r.execute_command("TAG.ADD", "secret:1", "cacheX") == 1
    assert r.execute_command("TAG.ADD", "secret:2", "cacheX") == 1
    assert tag_set(r, "cache:page", "v", "cacheX") == b"OK"
    assert set_of(r, "tag:cacheX") == {b"secret:1", b"secret:2", b"cache:page"}


def test_a_rule_purges_with_its_creators_permissions(server, r):
    rule_scenario(r)
    lim = acl_client(server, r, "lim", "pw", "+@all", "resetkeys",
                     "~cache:*", "~tag:cache*", "~tagcache:links")
    assert lim.execute_command("TAG.LINK", "cache:trigger", "cache") == b"OK"
    r.set("cache:triggerX", "x")  # written by the default user
    wait_until(lambda: r.exists("cache:page") == 0, 2, what="cache:page purged by the rule")
    # The firing is over (the counter moves once it has purged what it may).
    wait_tag_info(r, "rule_firings", 1)
    assert r.get("secret:1") == b"s1"
    assert r.get("secret:2") == b"s2"
    assert r.get("cache:triggerX") == b"x"


def test_the_same_rule_created_by_the_default_user_purges_every_key(server, r):
    rule_scenario(r)
    assert r.execute_command("TAG.LINK", "cache:trigger", "cache") == b"OK"
    r.set("cache:triggerX", "x")
    wait_until(lambda: r.exists("cache:page", "secret:1", "secret:2") == 0, 2,
               what="every key carrying cacheX purged")
    assert r.get("cache:triggerX") == b"x"
    assert not r.exists("tag:cacheX")


# ---------------------------------------------------------------- reads reveal nothing unreadable


def test_tag_tags_lists_only_tags_the_caller_may_read(server, r):
    tag_set(r, "k", "v", "pub", "priv")
    u = acl_client(server, r, "u", "pw", "+@all", "~k", "~tag:pub")
    assert u.execute_command("TAG.TAGS", "k") == [b"pub"]
    assert sorted(r.execute_command("TAG.TAGS", "k")) == [b"priv", b"pub"]


def test_members_and_card_do_not_depend_on_unreadable_keys(server, r):
    r.set("hidden1", "x")
    r.sadd("tag:m", "hidden1", "hidden2")
    u = acl_client(server, r, "u", "pw", "+@all", "~tag:m")
    assert sorted(u.execute_command("TAG.MEMBERS", "m")) == [b"hidden1", b"hidden2"]
    assert u.execute_command("TAG.CARD", "m") == 2
    assert r.execute_command("TAG.MEMBERS", "m") == [b"hidden1"]
    assert r.execute_command("TAG.CARD", "m") == 1


# ---- Permission is what the plain command would be allowed, selectors
# included: a selector whose keys match but whose commands do not allow the
# access does not count.

SELECTOR_USER = ("~foo:*", "~tag:*", "+@all", "(~* +get)")


def test_purge_refuses_a_key_a_selector_only_lets_the_user_get(server, admin):
    tag_set(admin, "foo:1", "v", "shared")
    tag_set(admin, "bar", "b", "shared")
    u = acl_client(server, admin, "sel", "pw", *SELECTOR_USER)
    assert u.get("bar") == b"b"
    assert refused(u, "DEL", "bar") == server_noperm_key()
    before = dataset(admin)
    assert refused(u, "TAG.PURGE", "shared") == noperm_key(b"bar")
    assert refused(u, "TAG.PURGE", "shared", "ASYNC") == noperm_key(b"bar")
    assert dataset(admin) == before


def test_sliced_purge_refuses_a_key_a_selector_only_lets_the_user_get(servers):
    s = servers.start(module_args=("purge-atomic-max", "10"))
    admin = s.client()
    for i in range(50):
        tag_set(admin, f"foo:{i}", "v", "shared")
    tag_set(admin, "bar", "b", "shared")
    u = acl_client(s, admin, "sel", "pw", *SELECTOR_USER)
    before = dataset(admin)
    assert refused(u, "TAG.PURGE", "shared") == noperm_key(b"bar")
    assert dataset(admin) == before


def test_a_rule_deletes_nothing_a_selector_only_lets_its_owner_get(server, admin):
    tag_set(admin, "foo:1", "v", "p:1")
    tag_set(admin, "bar", "b", "p:1")
    u = acl_client(server, admin, "sel", "pw", "~foo:*", "~tag:*", "~tagcache:*", "~src:*",
                   "+@all", "(~* +get)")
    assert u.execute_command("TAG.LINK", "src:", "p:") == b"OK"
    denied = int(harness.tag_info(admin)["rule_keys_denied"])
    admin.set("src:1", "x")
    wait_until(lambda: not admin.exists("foo:1"), 2, what="the rule purged foo:1")
    assert admin.get("bar") == b"b"
    assert int(harness.tag_info(admin)["rule_keys_denied"]) == denied + 1


def test_a_selector_that_only_reads_gives_no_access_to_tag_sets(server, admin):
    """No `~tag:*` in the root selector: a selector `(~* +get)` neither
    writes nor reads tag sets on the user's behalf."""
    tag_set(admin, "foo:1", "v", "t")
    u = acl_client(server, admin, "reader", "pw", "~foo:*", "+@all", "(~* +get)")
    before = dataset(admin)
    assert refused(u, "TAG.SET", "foo:2", "v", "TAGS", "1", "t") == noperm_key(b"tag:t")
    assert refused(u, "TAG.ADD", "foo:1", "u") == noperm_key(b"tag:u")
    assert refused(u, "TAG.REM", "foo:1", "t") == noperm_key(b"tag:t")
    assert refused(u, "TAG.MEMBERS", "t") == noperm_key(b"tag:t")
    assert refused(u, "TAG.CARD", "t") == noperm_key(b"tag:t")
    assert u.execute_command("TAG.TAGS", "foo:1") == []
    assert dataset(admin) == before


def test_a_user_without_del_cannot_purge(server, admin):
    tag_set(admin, "foo:1", "v", "t")
    u = acl_client(server, admin, "nodel", "pw", "~*", "+@all", "-del")
    assert refused(u, "TAG.PURGE", "t") == noperm_key(b"tag:t")
    assert admin.get("foo:1") == b"v"


def test_a_user_given_only_the_commands_it_uses_may_use_them(server, admin):
    """Writing a tag set on a user's behalf is allowed to a user who may run
    TAG.SET (or TAG.ADD) on it; reading a key to one who may TAG.GETL it."""
    u = acl_client(server, admin, "app", "pw", "~*", "+ping", "+tag.set", "+tag.getl", "+get")
    assert u.execute_command("TAG.SET", "k", "v", "TAGS", 1, "t") == b"OK"
    assert u.execute_command("TAG.GETL", "k") == [b"v", None]
    assert admin.smembers("tag:t") == {b"k"}
    who = "User app" if harness.newer_than_7_0() else "this user"
    assert refused(u, "TAG.PURGE", "t") == \
        f"NOPERM {who} has no permissions to run the 'tag.purge' command"
