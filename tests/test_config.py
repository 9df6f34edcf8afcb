"""Module load arguments and CONFIG GET/SET tagcache.<name>."""

import pytest

from harness import tag_set

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
