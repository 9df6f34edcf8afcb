"""The client-side cache-invalidation patterns that services write today,
the baselines the benchmark compares tagcache with.

- Tagged write as a script: tag_set.lua (EVALSHA), run by redis-benchmark.
- Tagged write as a pipeline (no MULTI): SET key v EX ttl, then per tag
  SADD tag:<t> key and EXPIRE tag:<t> ttl+300; sent by bench/loadgen.py
  (tag_write_group), 16 groups in flight per connection.
- Purge by tag: purge.lua (SMEMBERS + DEL loop), or a variadic DEL of the
  tag set and every key when the client knows them.
- Versioned read: GET ver:<scope>, then GET v<N>:<key> (bench/loadgen.py
  kind vget_2rt).
- Stampede protection: lock-and-poll (stampede.py).
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))

TAG_PREFIX = "tag:"


def read_script(name):
    """Source of one of the Lua baselines in this folder (tag_set, purge)."""
    with open(os.path.join(HERE, name + ".lua"), "rb") as f:
        return f.read()


def load_scripts(client):
    """SCRIPT LOAD both Lua baselines; returns {'tag_set': sha, 'purge': sha}."""
    return {name: client.script_load(read_script(name)) for name in ("tag_set", "purge")}
