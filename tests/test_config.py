"""Module load arguments and CONFIG GET/SET tagcache.<name>."""

import pytest
import redis

from harness import (Server, digest, error_text, refused, set_of, tag_set, tags_of,
                     wait_aof_rewrite, wait_sync)

DEFAULTS = {
    "tag-prefix": b"tag:",
    "ver-prefix": b"ver:",
    "events-channel": b"tagcache:events",
    "events-stream": b"",
    "events-stream-maxlen": b"10000",
    "lease-ttl": b"10000",
}


def text(v):
    return v.decode() if isinstance(v, bytes) else v


def config_get(r, name):
    """The value as bytes (redis-py decodes CONFIG GET replies itself)."""
    reply = {text(k): v for k, v in r.config_get(f"tagcache.{name}").items()}
    key = f"tagcache.{name}"
    assert key in reply, f"CONFIG GET {key} -> {reply}"
    v = reply[key]
    return v if isinstance(v, bytes) else str(v).encode()


@pytest.mark.parametrize("name", DEFAULTS.keys())
def test_defaults(r, name):
    assert config_get(r, name) == DEFAULTS[name]


def test_config_get_pattern_lists_every_setting(r):
    reply = r.config_get("tagcache.*")
    names = {text(k) for k in reply}
    assert {f"tagcache.{n}" for n in DEFAULTS} <= names, names


def test_tag_prefix_load_argument(servers):
    s = servers.start(module_args=["tag-prefix", "t_"])
    r = s.client()
    assert config_get(r, "tag-prefix") == b"t_"
    assert tag_set(r, "k", "v", "a") == b"OK"
    assert r.smembers("t_a") == {b"k"}
    assert not r.exists("tag:a")
    assert r.execute_command("TAG.CARD", "a") == 1
    assert r.execute_command("TAG.ADD", "k", "b") == 1
    assert r.smembers("t_b") == {b"k"}
    assert r.execute_command("TAG.PURGE", "a") == 1
    assert not r.exists("k")
    assert not r.exists("t_a")
    assert not r.exists("t_b")


def test_tag_prefix_honours_client_written_sets(servers):
    s = servers.start(module_args=["tag-prefix", "t_"])
    r = s.client()
    r.set("x", "v")
    r.sadd("t_legacy", "x")
    assert r.execute_command("TAG.PURGE", "legacy") == 1
    assert not r.exists("x")


def test_every_setting_as_load_argument(servers):
    args = {
        "tag-prefix": "tg|",
        "ver-prefix": "vr|",
        "events-channel": "ch:tc",
        "events-stream": "st:tc",
        "events-stream-maxlen": "500",
        "lease-ttl": "2500",
    }
    s = servers.start(module_args=[x for kv in args.items() for x in kv])
    r = s.client()
    for name, value in args.items():
        assert config_get(r, name) == value.encode(), name


def test_config_set_at_run_time(r):
    assert r.config_set("tagcache.lease-ttl", 3000)
    assert config_get(r, "lease-ttl") == b"3000"
    assert r.config_set("tagcache.events-channel", "other:events")
    assert config_get(r, "events-channel") == b"other:events"


BAD_LOAD_ARGS = {
    "unknown argument": (["bogus-arg", "1"], "bogus-arg"),
    "value-less tag-prefix": (["tag-prefix"], "tag-prefix"),
    "value-less after a good pair": (["ver-prefix", "v:", "lease-ttl"], "lease-ttl"),
    "non-numeric maxlen": (["events-stream-maxlen", "lots"], "events-stream-maxlen"),
    "non-numeric lease-ttl": (["lease-ttl", "soon"], "lease-ttl"),
}


@pytest.mark.parametrize("args,word", BAD_LOAD_ARGS.values(), ids=BAD_LOAD_ARGS.keys())
def test_bad_load_arguments_refuse_to_load(servers, args, word):
    s = servers.new(module_args=args)
    came_up, log = s.start_expect_failure()
    assert not came_up, f"server started with module args {args}"
    assert word in log, f"log does not name {word!r}:\n{log[-3000:]}"


# ---------------------------------------------------------------- prefixes are load-time settings


def immutable_error(name: str) -> str:
    return (f"ERR CONFIG SET failed (possibly related to argument 'tagcache.{name}')"
            f" - can't set immutable config")


@pytest.mark.parametrize("name,default", [("tag-prefix", b"tag:"), ("ver-prefix", b"ver:")])
def test_a_prefix_cannot_be_changed_by_config_set(r, name, default):
    assert refused(r, "CONFIG", "SET", f"tagcache.{name}", "idx:") == immutable_error(name)
    assert config_get(r, name) == default
    assert tag_set(r, "k", "v", "a") == b"OK"
    assert r.execute_command("VER.SET", "s", "vk", "v") == b"OK"
    assert r.exists("tag:a") == 1
    assert not r.exists("idx:a")
    assert r.execute_command("VER.GET", "s", "vk") == b"v"
    assert [k for k in r.keys("*") if k.startswith(b"idx:")] == []


def test_a_tag_prefix_load_argument_holds_through_aof_restart_and_replica(servers):
    args = ["tag-prefix", "idx:"]
    master = servers.start(module_args=args, name="master",
                           extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    m = master.client()
    wait_aof_rewrite(m)
    replica = servers.start_replica(master, module_args=args)
    rc = replica.client()
    msg = refused(m, "CONFIG", "SET", "tagcache.tag-prefix", "tag:")
    assert msg == immutable_error("tag-prefix")
    assert config_get(m, "tag-prefix") == b"idx:"
    assert tag_set(m, "k", "v", "a") == b"OK"
    assert m.execute_command("TAG.ADD", "k", "b") == 1
    expected = {b"k", b"idx:a", b"idx:b"}
    assert set(m.keys("*")) == expected
    assert set_of(m, "idx:a") == {b"k"} and set_of(m, "idx:b") == {b"k"}
    wait_sync(m, rc)
    assert set(rc.keys("*")) == expected
    assert set_of(rc, "idx:a") == {b"k"} and set_of(rc, "idx:b") == {b"k"}
    assert tags_of(rc, "k") == {b"a", b"b"}
    d = digest(m)
    assert digest(rc) == d
    m = master.restart()
    assert set(m.keys("*")) == expected
    assert digest(m) == d
    assert tags_of(m, "k") == {b"a", b"b"}


# ---- No client or admin byte reaches a C string unescaped; prefixes that
# would name one key twice refuse the load; re-applying a prefix succeeds.


class ModulelessServer(Server):
    """A server started without the module, to load it with MODULE LOAD."""

    def argv(self) -> list[str]:
        argv = super().argv()
        i = argv.index("--loadmodule")
        return argv[:i] + argv[i + 2 + len(self.module_args):]


def loaded_modules(r) -> set:
    """The names MODULE LIST shows (newer servers list built-in ones too)."""
    return {m[b"name"] for m in r.execute_command("MODULE", "LIST")} - {b"lua", b"vectorset"}


def moduleless(servers):
    s = ModulelessServer(servers.tmp / "bare", servers.module,
                         extra_args=["--enable-module-command", "yes"])
    servers.servers.append(s)
    s.start()
    return s


LOAD_FAILED = "ERR Error loading the extension. Please check the server logs."


@pytest.mark.parametrize("args", [
    [b"bad\x00opt", b"v"],
    [b"%s%s%n%n", b"v"],
    [b"events-channel", b"a\x00b"],
    [b"events-channel", b"%n%n"],
    [b"tag-prefix", b"\xff\x00"],
], ids=["nul-name", "format-name", "nul-value", "format-value", "binary-prefix"])
def test_module_load_with_hostile_arguments_refuses_or_loads_and_stays_up(servers, args):
    s = moduleless(servers)
    r = s.client()
    try:
        r.execute_command("MODULE", "LOAD", str(servers.module), *args)
        loaded = True
    except redis.ResponseError as e:
        assert error_text(e) == LOAD_FAILED
        loaded = False
    assert r.ping()
    if loaded:
        # Only a value without NUL may load; it reads back as given.
        assert args == [b"events-channel", b"%n%n"]
        assert r.config_get("tagcache.*")["tagcache.events-channel"] == "%n%n"
    else:
        assert loaded_modules(r) == set()
        assert "refusing to load" in s.log.read_text(errors="replace")


def test_module_loadex_with_a_nul_in_a_setting_refuses_to_load(servers):
    s = moduleless(servers)
    r = s.client()
    for extra in (["ARGS", "events-channel", b"a\x00b"],
                  ["CONFIG", "tagcache.events-channel", b"a\x00b"]):
        with pytest.raises(redis.ResponseError) as e:
            r.execute_command("MODULE", "LOADEX", str(servers.module), *extra)
        assert error_text(e.value) == LOAD_FAILED
        assert r.ping()
        assert loaded_modules(r) == set()


@pytest.mark.parametrize("name", ["events-channel", "events-stream"])
def test_config_set_of_a_string_setting_with_a_nul_is_refused(r, name):
    before = config_get(r, name)
    assert refused(r, "CONFIG", "SET", f"tagcache.{name}", b"a\x00b") == (
        f"ERR CONFIG SET failed (possibly related to argument 'tagcache.{name}')"
        f" - value must not contain NUL bytes")
    assert config_get(r, name) == before
    assert r.config_get("tagcache.*")  # every getter still answers


@pytest.mark.parametrize("name,default", [("tag-prefix", "tag:"), ("ver-prefix", "ver:")])
def test_config_set_of_a_prefix_to_its_value_in_force_succeeds(r, name, default):
    assert r.config_set(f"tagcache.{name}", default) is True
    assert config_get(r, name) == default.encode()
    # As Redis's own CONFIG sanity test does: every setting set to its value.
    for k, v in r.config_get("tagcache.*").items():
        assert r.config_set(k, v) is True
    assert tag_set(r, "k", "v", "a") == b"OK"
    assert r.smembers("tag:a") == {b"k"}


OVERLAPPING = {
    "equal": ["tag-prefix", "ver:", "ver-prefix", "ver:"],
    "tag under ver": ["tag-prefix", "ver:x", "ver-prefix", "ver:"],
    "ver under tag": ["tag-prefix", "v", "ver-prefix", "vv:"],
    "module keys": ["tag-prefix", "tagcache:"],
    "under module keys": ["tag-prefix", "tagcache:x"],
    "covering module keys": ["tag-prefix", "tagcache"],
    "covering module keys short": ["tag-prefix", "t"],
    "versioned values": ["tag-prefix", "v1:"],
    "versioned values ver": ["ver-prefix", "v12:"],
    "versioned values prefix": ["ver-prefix", "v1"],
}


@pytest.mark.parametrize("args", OVERLAPPING.values(), ids=OVERLAPPING.keys())
def test_overlapping_prefixes_refuse_to_load(servers, args):
    s = servers.new(module_args=args)
    came_up, log = s.start_expect_failure()
    assert not came_up, f"server started with module args {args}"
    assert "refusing to load" in log and "overlap" in log, log[-2000:]


def test_prefixes_that_only_look_alike_load(servers):
    s = servers.start(module_args=["tag-prefix", "va:", "ver-prefix", "v:"])
    r = s.client()
    assert tag_set(r, "k", "v", "a") == b"OK"
    assert r.smembers("va:a") == {b"k"}
