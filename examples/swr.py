"""Stale-while-revalidate with tagcache: serve the cached value, and let
exactly one caller refresh it when it is stale.

    value = cached(r, "page:42", render_page, tags=["product:42"], ex=60,
                   stale_ms=300_000)

`TAG.GETL` answers `[value, token]`:

* `[value, None]`: fresh (or stale while another caller refreshes it):
  serve it.
* `[value, token]`: stale, and this caller holds the refresh lease: serve
  it, and compute the new value (here in a background thread, so the
  caller is not kept waiting) and store it with `LEASE token`.
* `[None, token]`: a miss, and this caller fills it.
* `[None, None]`: a miss another caller is filling: `WAIT` blocks inside
  Redis until it is filled (or the lease passes to this caller).

A value stored with `STALE` stays readable, stale, for `stale_ms` after its
fresh time; `TAG.INVALIDATE SOFT grace-ms TAGS ...` makes every key of a
tag stale at once, so readers keep being served while one of them
refreshes. The store with `LEASE` is refused (nothing stored) if the key
or one of its tags was invalidated after the lease was issued: a value
computed from data read before an invalidation is never cached.
"""

import threading

import redis


def store(r, key, value, token, tags, ex, stale_ms):
    """Stores a value computed under the lease `token`; False if refused."""
    reply = r.execute_command("TAG.SET", key, value, "EX", ex, "STALE", stale_ms,
                              "LEASE", token, "TAGS", len(tags), *tags)
    return reply is not None


def cached(r: redis.Redis, key, compute, tags, ex=60, stale_ms=300_000, wait_ms=2000,
           background=True):
    """The value of `key`, computed by `compute()` on a miss, refreshed by
    one caller at a time once stale. `background=False` refreshes inline
    (the caller waits for its own refresh)."""
    value, token = r.execute_command("TAG.GETL", key, "WAIT", wait_ms)
    if token is None:
        # Fresh, stale while someone else refreshes, or (None) a fill that
        # did not come within wait_ms: the caller decides without the cache.
        return value if value is not None else compute()
    if value is None:
        new = compute()
        store(r, key, new, token, tags, ex, stale_ms)
        return new

    def refresh():
        store(r, key, compute(), token, tags, ex, stale_ms)

    if background:
        threading.Thread(target=refresh, daemon=True).start()
    else:
        refresh()
    return value
