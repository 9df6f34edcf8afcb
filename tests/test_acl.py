"""Every key a command touches is checked against the caller's ACL first."""

import pytest
import redis

import harness
from harness import acl_client, dataset, digest, error_text, tag_set

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
    assert error_text(e.value).startswith("NOPERM"), error_text(e.value)
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
    assert error_text(e.value).startswith("NOPERM")
    assert dataset(admin) == before


def test_purge_of_client_written_set_with_forbidden_member(server, admin):
    admin.set("cache:9", "v")
    admin.set("secret:9", "s")
    admin.sadd("tag:legacy", "cache:9", "secret:9")
    u = acl_client(server, admin, "u", "pw", *CACHE_USER)
    before = dataset(admin)
    with pytest.raises(redis.ResponseError) as e:
        u.execute_command("TAG.PURGE", "legacy")
    assert error_text(e.value).startswith("NOPERM")
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
    assert error_text(e.value).startswith("NOPERM"), error_text(e.value)
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
    assert error_text(e.value).startswith("NOPERM"), error_text(e.value)
    assert admin.dbsize() == 0


def test_tag_add_forbidden_key(server, admin):
    admin.hset("secret:h", "f", "v")
    u = acl_client(server, admin, "u", "pw", *CACHE_USER)
    before = dataset(admin)
    with pytest.raises(redis.ResponseError) as e:
        u.execute_command("TAG.ADD", "secret:h", "t")
    assert error_text(e.value).startswith("NOPERM")
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
    assert error_text(e.value).startswith("NOPERM"), error_text(e.value)
    assert dataset(admin) == before
    with pytest.raises(redis.ResponseError) as e:
        tag_set(u, "secret:2", "v", "c1")
    assert error_text(e.value).startswith("NOPERM"), error_text(e.value)
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
    assert error_text(e.value).startswith("NOPERM"), error_text(e.value)
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
    assert error_text(e.value).startswith("NOPERM"), error_text(e.value)
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
    assert error_text(e.value).startswith("NOPERM"), error_text(e.value)
    assert dataset(admin) == before


ALL_COMMANDS = {
    "tag.set", "tag.apply", "tag.add", "tag.rem", "tag.purge", "tag.members", "tag.card", "tag.tags",
    "tag.info", "tag.link", "tag.unlink", "tag.links", "tag.getl",
    "ver.get", "ver.set", "ver.bump", "ver.current",
}


def test_acl_category_where_the_server_has_module_categories(r):
    """Redis >= 7.4 and Valkey let a module add an ACL category: every
    command is in @tagcache there. Redis 7.0 has no such API."""
    name, version = harness.server_version()
    if name == "redis" and version < (7, 4):
        with pytest.raises(redis.ResponseError):
            r.execute_command("ACL", "CAT", "tagcache")
        return
    listed = {c.decode() for c in r.execute_command("ACL", "CAT", "tagcache")}
    assert listed == ALL_COMMANDS
    r.execute_command("ACL", "SETUSER", "ops", "on", ">pw", "~*", "+@tagcache")
    ops = redis.Redis(host="127.0.0.1", port=r.connection_pool.connection_kwargs["port"],
                      username="ops", password="pw")
    assert ops.execute_command("TAG.SET", "k", "v", "TAGS", 1, "t") == b"OK"
    with pytest.raises(redis.exceptions.NoPermissionError):
        ops.get("k")
