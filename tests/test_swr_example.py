"""The stale-while-revalidate example (examples/swr.py): a hot key soft-
invalidated keeps being served, and exactly one caller recomputes it."""

import sys
import threading

from harness import ROOT, wait_until

sys.path.insert(0, str(ROOT / "examples"))
from swr import cached  # noqa: E402


def test_the_example_serves_stale_values_and_refreshes_once(server):
    r = server.client()
    calls = []
    version = {"n": 1}

    def compute():
        calls.append(version["n"])
        return f"v{version['n']}".encode()

    assert cached(r, "page:42", compute, ["product:42"], background=False) == b"v1"
    assert calls == [1]
    assert cached(r, "page:42", compute, ["product:42"]) == b"v1"
    assert calls == [1], "a fresh value is served without a compute"
    version["n"] = 2
    assert r.execute_command("TAG.INVALIDATE", "SOFT", 60000, "TAGS", 1, "product:42") == 1
    release = threading.Event()

    def slow_compute():
        calls.append(2)
        release.wait(5)
        return b"v2"

    got = []
    errors = []

    def reader():
        try:
            c = server.client()
            got.append(cached(c, "page:42", slow_compute, ["product:42"], background=False))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(20)]
    for t in threads:
        t.start()
    # Every reader but the refresher is served while the refresh is still
    # being computed: nobody waits for it.
    wait_until(lambda: len(got) == 19, 5, what="19 readers served during the refresh")
    assert got == [b"v1"] * 19
    release.set()
    for t in threads:
        t.join(10)
    assert not errors, errors
    assert got == [b"v1"] * 20
    assert calls == [1, 2], "exactly one refresh"
    wait_until(lambda: r.get("page:42") == b"v2", 2, what="the refresh stored")
    assert cached(r, "page:42", compute, ["product:42"]) == b"v2"
    assert calls == [1, 2]
    assert r.hexists("tagcache:stale", "page:42") == 1  # fresh until EX, then stale
    assert r.hget("tagcache:stale", "page:42") != b"0"


def test_a_refresh_computed_before_a_later_invalidation_is_not_stored(server):
    r = server.client()
    assert cached(r, "k", lambda: b"old", ["t"], background=False) == b"old"
    r.execute_command("TAG.INVALIDATE", "SOFT", 60000, "TAGS", 1, "t")

    def slow_compute():
        # Data read, then the tag invalidated again before the store.
        r.execute_command("TAG.INVALIDATE", "SOFT", 60000, "TAGS", 1, "t")
        return b"computed-from-old-data"

    assert cached(r, "k", slow_compute, ["t"], background=False) == b"old"
    assert r.get("k") == b"old"
    # The next reader gets a new lease and refreshes.
    assert cached(r, "k", lambda: b"new", ["t"], background=False) == b"old"
    assert r.get("k") == b"new"
