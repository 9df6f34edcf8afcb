"""The client-side cache-invalidation patterns that services write today.

These are the baselines the benchmark compares tagcache against. They are
written the way application code usually writes them with redis-py, so the
numbers show what users get now.
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))

TAG_PREFIX = "tag:"
VER_PREFIX = "ver:"
TAG_SET_EXTRA_TTL = 300  # tag sets outlive their keys by this many seconds


def read_script(name):
    """Source of one of the Lua baselines in this folder (tag_set, purge)."""
    with open(os.path.join(HERE, name + ".lua"), "rb") as f:
        return f.read()


def load_scripts(client):
    """SCRIPT LOAD both Lua baselines; returns {'tag_set': sha, 'purge': sha}."""
    return {name: client.script_load(read_script(name)) for name in ("tag_set", "purge")}


def tag_write_pipelined(pipe, key, value, ttl, tags):
    """Queue one tagged write on a redis-py pipeline (transaction=False).

    SET key value EX ttl, then for each tag SADD tag:<t> key and
    EXPIRE tag:<t> ttl+300. Not atomic: other clients can see the value
    without its tags, or the tags without the value.
    """
    pipe.set(key, value, ex=ttl)
    for tag in tags:
        tag_key = TAG_PREFIX + tag
        pipe.sadd(tag_key, key)
        pipe.expire(tag_key, ttl + TAG_SET_EXTRA_TTL)


def tag_write_lua(client, sha, key, value, ttl, tags):
    """One tagged write through the tag_set.lua script (EVALSHA)."""
    tag_keys = [TAG_PREFIX + t for t in tags]
    return client.evalsha(sha, 1 + len(tag_keys), key, *tag_keys, value, ttl)


def purge_lua(client, sha, tag):
    """Purge a tag with purge.lua; returns the number of keys deleted."""
    return client.evalsha(sha, 1, TAG_PREFIX + tag)


def versioned_get(client, scope, key):
    """Two round trips: GET ver:<scope>, then GET v<N>:<key>."""
    version = client.get(VER_PREFIX + scope)
    if version is None:
        return None
    if isinstance(version, bytes):
        version = version.decode()
    return client.get("v%s:%s" % (version, key))


def versioned_bump(client, scope):
    """Invalidate a scope: INCR ver:<scope>."""
    return client.incr(VER_PREFIX + scope)
