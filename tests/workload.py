"""A mixed tag workload shared by the replication and persistence tests."""

import time

from harness import tag_set


def run(r, rounds: int = 3, legacy: bool = True) -> None:
    """TAG.SET with and without expiry, TAG.ADD, TAG.REM, TAG.PURGE, plain
    overwrites and deletes, binary names, and (with `legacy`) tag sets written
    with plain SADD. Leaves a dataset with several tags."""
    now = int(time.time())
    for i in range(rounds):
        for j in range(20):
            key = f"item:{i}:{j}"
            tags = [f"cat:{j % 4}", f"round:{i}"]
            if j % 5 == 0:
                tags.append("hot")
            opts = ()
            if j % 4 == 1:
                opts = ("EX", 1000 + j)
            elif j % 4 == 2:
                opts = ("PX", 2_000_000 + j)
            elif j % 4 == 3:
                opts = ("EXAT", now + 5000 + j)
            tag_set(r, key, f"value-{i}-{j}", *tags, opts=opts)
        # Re-tag some keys, keep TTL on others, refused NX/XX.
        tag_set(r, f"item:{i}:0", "retagged", "retag", f"round:{i}")
        tag_set(r, f"item:{i}:1", "kept", f"cat:1", opts=("KEEPTTL",))
        tag_set(r, f"item:{i}:2", "nx-refused", "never", opts=("NX",))
        tag_set(r, f"missing:{i}", "xx-refused", "never", opts=("XX",))
        tag_set(r, f"item:{i}:3", "px-at", "cat:3", opts=("PXAT", (now + 9000) * 1000))
        # Other types tagged with TAG.ADD, then changed in place.
        r.hset(f"hash:{i}", mapping={"a": "1", "b": "2"})
        r.execute_command("TAG.ADD", f"hash:{i}", "hashes", f"round:{i}", "cat:0")
        r.rpush(f"list:{i}", "x", "y")
        r.execute_command("TAG.ADD", f"list:{i}", "lists", "hot")
        r.execute_command("TAG.REM", f"hash:{i}", "cat:0")
        r.hset(f"hash:{i}", "c", "3")
        # Plain writes over tagged keys, and deletes.
        r.set(f"item:{i}:4", "plain overwrite")
        r.set(f"item:{i}:5", "plain overwrite with ttl", ex=3000)
        r.delete(f"item:{i}:6")
        if legacy:
            # Client-written tag sets, as existing code writes them.
            r.set(f"legacy:{i}", "v")
            r.set(f"legacy:{i}:b", "v", ex=4000)
            r.sadd("tag:legacy", f"legacy:{i}", f"legacy:{i}:b")
        # Binary names.
        tag_set(r, b"bin:%d\x00\xff" % i, b"\x00\xff", b"t\x00\xff", b"hot")
    r.execute_command("TAG.PURGE", "cat:2")
    r.execute_command("TAG.PURGE", "round:0", "lists")
    r.execute_command("TAG.PURGE", "nonexistent")
    if legacy:
        r.execute_command("TAG.PURGE", "legacy")
        r.set("legacy:late", "v")
        r.sadd("tag:legacy", "legacy:late")


def tagged_keys(r):
    """Every live key that is not an index set."""
    return [k for k in r.keys(b"*") if not k.startswith(b"tag:")]
