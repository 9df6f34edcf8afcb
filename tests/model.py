"""A plain-Python model of tagcache (SPEC.md) over a small universe, a random
step generator driven by it, and an executor that replays steps against a
real server and compares every reply with the model.

Used by test_model.py. The model is deliberately simple:

- Two databases (0 and 1), each a dict `kv` of name -> (type, value) that
  holds the universe keys, the source keys and the tag sets (`tag:<t>`, type
  'set', value = the member names). Membership of k in tag t is exactly
  "the set tag:t contains k"; every key deletion or non-tag overwrite removes
  the key from every tag set of its database, and an emptied set disappears.
- Rules (TAG.LINK) per database, version tokens per database. Versions are
  symbolic: a new version gets an id; its number is learnt from the first
  reply that shows it (VER.BUMP, VER.CURRENT) and must be above every number
  learnt before for that scope (SPEC: a version never repeats) and differ
  from the numbers of the other scopes (values live at v<N>:<key> whatever
  the scope, so two scopes at one version would read each other's values).
- Inside a pipeline, transaction or script, the replies of plain commands on
  tag sets are not checked (SPEC promises what module commands see there);
  their effect on the index is.
- Expiry: every key's remaining lifetime is bounded in `ttl` (ms, None = no
  expiry): an upper bound that the server's PTTL must not exceed and must be
  within SLACK_MS of. All lifetimes the generator gives are long (100 s and
  more) except the "expire" step's, which waits for the key to expire.
- Stale state (SPEC "Stale-while-revalidate"), per database in `stale`: a key
  soft-invalidated (TAG.INVALIDATE ... SOFT) is ['stale', lease]; a key written
  by TAG.SET ... EX n STALE m is ['soft', n_ms, m_ms, linked] (soft-expiring,
  fresh for the whole run; `linked` while its expiry is still fresh-until + m).
  The server's hash `tagcache:stale` must name exactly these keys, with "0" for
  stale ones and the fresh-until time for soft-expiring ones. Stale state ends
  when the key is deleted, expires, is overwritten, renamed or moved, or its
  database flushed; an in-place change (APPEND, HSET), EXPIRE and tag changes
  keep it; SWAPDB swaps it with the database.
- Refresh leases of stale keys (TAG.GETL), `lease` in a stale entry: 'avail'
  (no caller got a token since the key became stale: the next TAG.GETL must
  get one), 'out' (a caller got it: the next gets nil) or 'unknown' (SPEC does
  not say whether a token was voided: the next reply's token is not checked,
  and the lease is out after it). A lease out becomes unknown on anything that
  may refuse it, read widely: any invalidation (hard or soft, a purge, a rule
  firing) in its database, any write naming the key that keeps its stale state
  (APPEND, HSET, EXPIRE, TAG.ADD, TAG.REM), and SWAPDB. Leases are asked for
  with TTL of 600 s or more, so none lapses during a run. TAG.GETL of a
  missing key hands out a fill lease: its token is not checked.
"""

from __future__ import annotations

import copy
import random
import time

from harness import RawConn, RespError

KEYS = [b"k0", b"k1", b"k2", b"k3", b"k4", b"k5"]
TAGS = [b"t0", b"t1", b"t2", b"t3"]
SRC = [b"src:0", b"src:1"]  # sources of the rule `TAG.LINK src: t`
SCOPES = [b"s0", b"s1"]
VKEYS = [b"a", b"b"]
TAG_PREFIX = b"tag:"
LINK_SOURCE, LINK_TAGS = b"src:", b"t"
STALE_KEY = b"tagcache:stale"  # the module's stale hash (SPEC "Stale-while-revalidate")
SLACK_MS = 150_000  # a lifetime set during a run has run down by less than this when checked


def tkey(t: bytes) -> bytes:
    return TAG_PREFIX + t


# ---------------------------------------------------------------- expected replies


class Err:
    """An error reply whose message begins with `code`."""

    def __init__(self, code: str):
        self.code = code

    def __repr__(self):
        return f"Err({self.code})"


class AnyReply:
    """A reply the model does not check (SPEC leaves it open)."""

    def __repr__(self):
        return "<any>"


class Sorted:
    """An array compared as a sorted list."""

    def __init__(self, items):
        self.items = sorted(items)

    def __repr__(self):
        return f"Sorted({self.items})"


class Token:
    """A lease token: a non-empty bulk string (opaque)."""

    def __repr__(self):
        return "<token>"


class Range:
    """An integer in [lo, hi]."""

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi

    def __repr__(self):
        return f"Range({self.lo}..{self.hi})"


class Ver:
    """A version number known only symbolically."""

    def __init__(self, scope: bytes, vid: int):
        self.scope, self.vid = scope, vid

    def __repr__(self):
        return f"Ver({self.scope.decode()}#{self.vid})"


class Invalid(Exception):
    """A step whose precondition the model does not meet (a shrunk sequence
    can produce one: e.g. a client SADD of a key that no longer exists)."""


# ---------------------------------------------------------------- the model


class DB:
    def __init__(self):
        self.kv: dict[bytes, tuple] = {}
        self.rules: dict[bytes, bytes] = {}
        self.tokens: dict[bytes, int] = {}  # scope -> version id
        self.vvals: dict[tuple, bytes] = {}  # (scope, vid, key) -> value
        self.ttl: dict[bytes, int | None] = {}  # key -> upper bound of its PTTL (None: no expiry)
        self.stale: dict[bytes, list] = {}  # key -> ['stale', lease] | ['soft', n_ms, m_ms, linked]

    # -- tag index

    def tag_members(self, t: bytes) -> set:
        e = self.kv.get(tkey(t))
        return set(e[1]) if e else set()

    def tags_of(self, k: bytes) -> list:
        return [n[len(TAG_PREFIX):] for n, (ty, v) in self.kv.items()
                if n.startswith(TAG_PREFIX) and k in v]

    def set_members(self, t: bytes, members) -> None:
        members = frozenset(members)
        if members:
            self.kv[tkey(t)] = ("set", members)
        else:
            self.kv.pop(tkey(t), None)

    def untag(self, k: bytes) -> None:
        """k leaves every tag set of this database."""
        for t in self.tags_of(k):
            self.set_members(t, self.tag_members(t) - {k})

    def delete(self, k: bytes) -> bool:
        if k not in self.kv:
            return False
        del self.kv[k]
        self.untag(k)
        self.ttl.pop(k, None)
        self.stale.pop(k, None)
        return True

    # -- stale state and refresh leases

    def mark_stale(self, k: bytes, grace: int) -> None:
        """A soft invalidation selected k (which exists)."""
        st = self.stale.get(k)
        if st is not None and st[0] == "stale":
            if st[1] == "out":
                st[1] = "unknown"
        else:
            self.stale[k] = ["stale", "avail"]  # k became stale now
        cur = self.ttl.get(k)
        self.ttl[k] = grace if cur is None else min(cur, grace)

    def touch_lease(self, k: bytes) -> None:
        """Something that may refuse a refresh lease of k happened."""
        st = self.stale.get(k)
        if st is not None and st[0] == "stale" and st[1] == "out":
            st[1] = "unknown"

    def invalidated(self) -> None:
        """An invalidation ran in this database: a refresh lease out may have
        been refused by it (SPEC leaves open which ones a later TAG.GETL
        treats so)."""
        for k in list(self.stale):
            self.touch_lease(k)


class Model:
    def __init__(self):
        self.dbs = [DB(), DB()]
        self.next_vid = 0
        self.vorder: dict[bytes, list] = {s: [] for s in SCOPES}  # scope -> vids in creation order
        self.vnum: dict[int, int] = {}  # vid -> number learnt from a reply

    def copy(self) -> "Model":
        return copy.deepcopy(self)

    def new_version(self, scope: bytes) -> int:
        vid = self.next_vid
        self.next_vid += 1
        self.vorder[scope].append(vid)
        return vid

    # -- rules

    def fire(self, db: int, key: bytes) -> None:
        """A write to, deletion or expiry of `key`: rules whose source prefix
        it has purge the tag (except `key` itself); a rule's purge fires no
        further rules."""
        D = self.dbs[db]
        for src, tp in sorted(D.rules.items()):
            if key.startswith(src):
                tag = tp + key[len(src):]
                D.invalidated()
                for victim in D.tag_members(tag) - {key}:
                    D.delete(victim)
                if key in D.tag_members(tag):
                    D.set_members(tag, {key})
                else:
                    D.set_members(tag, ())

    def write(self, db: int, key: bytes, entry: tuple, keep_tags: bool = False) -> None:
        D = self.dbs[db]
        if not keep_tags:
            # The value is replaced: tags, lifetime and stale state end.
            D.untag(key)
            D.ttl[key] = None
            D.stale.pop(key, None)
        else:
            # An in-place change (or a new key).
            D.ttl.setdefault(key, None)
            D.touch_lease(key)
        D.kv[key] = entry
        self.fire(db, key)

    def remove(self, db: int, key: bytes) -> bool:
        if self.dbs[db].delete(key):
            self.fire(db, key)
            return True
        return False

    # -- commands

    def apply(self, db: int, cmd: tuple):
        """Applies one command; returns the expected reply."""
        D = self.dbs[db]
        name = cmd[0].upper() if isinstance(cmd[0], str) else cmd[0].decode().upper()
        a = list(cmd[1:])

        def typed(k, want):
            e = D.kv.get(k)
            if e is not None and e[0] != want:
                return Err("WRONGTYPE")
            return e

        if name == "TAG.SET":
            k, v = a[0], a[1]
            i = 2
            nx = xx = False
            ttl = stale = None
            while a[i] != "TAGS":
                if a[i] == "NX":
                    nx = True
                elif a[i] == "XX":
                    xx = True
                elif a[i] == "PX":
                    ttl = int(a[i + 1])
                    i += 1
                elif a[i] == "EX":
                    ttl = int(a[i + 1]) * 1000
                    i += 1
                elif a[i] == "STALE":
                    stale = int(a[i + 1])
                    i += 1
                else:
                    raise ValueError(f"model does not know TAG.SET option {a[i]!r}")
                i += 1
            n = int(a[i + 1])
            tags = a[i + 2:i + 2 + n]
            exists = k in D.kv
            if (nx and exists) or (xx and not exists):
                return None
            D.untag(k)
            D.kv[k] = ("string", v)
            D.stale.pop(k, None)
            if stale is not None:
                # Soft expiry: fresh for ttl, then stale for `stale` more.
                D.stale[k] = ["soft", ttl, stale, True]
                ttl += stale
            D.ttl[k] = ttl
            for t in tags:
                D.set_members(t, D.tag_members(t) | {k})
            self.fire(db, k)
            return b"OK"
        if name == "TAG.ADD":
            k, tags = a[0], a[1:]
            if k not in D.kv:
                return Err("ERR")
            D.touch_lease(k)
            added = 0
            for t in dict.fromkeys(tags):
                if k not in D.tag_members(t):
                    D.set_members(t, D.tag_members(t) | {k})
                    added += 1
            return added
        if name == "TAG.REM":
            k, tags = a[0], a[1:]
            if k not in D.kv:
                return AnyReply()  # 0 or an error: either way nothing changes
            D.touch_lease(k)
            removed = 0
            for t in dict.fromkeys(tags):
                if k in D.tag_members(t):
                    D.set_members(t, D.tag_members(t) - {k})
                    removed += 1
            return removed
        if name == "TAG.PURGE":
            victims = set()
            for t in a:
                victims |= D.tag_members(t)
            D.invalidated()
            for k in victims:
                D.delete(k)
            for k in sorted(victims):
                self.fire(db, k)
            for t in a:
                D.set_members(t, ())
            return len(victims)
        if name == "TAG.INVALIDATE":
            i = 0
            match_all, grace = False, None
            while str(a[i]).upper() != "TAGS":
                w = str(a[i]).upper()
                if w == "ALL":
                    match_all = True
                elif w == "SOFT":
                    grace = int(a[i + 1])
                    i += 1
                elif w != "ASYNC":
                    raise ValueError(f"model does not know TAG.INVALIDATE option {a[i]!r}")
                i += 1
            n = int(a[i + 1])
            tags = a[i + 2:i + 2 + n]
            if match_all:
                selected = set.intersection(*[D.tag_members(t) for t in tags])
            else:
                selected = set().union(*[D.tag_members(t) for t in tags])
            selected = {k for k in selected if k in D.kv}
            D.invalidated()
            if grace is not None:
                for k in selected:
                    D.mark_stale(k, grace)
                return len(selected)
            for k in selected:
                D.delete(k)
            for k in sorted(selected):
                self.fire(db, k)
            if not match_all:
                for t in tags:
                    D.set_members(t, ())
            return len(selected)
        if name == "TAG.GETL":
            k = a[0]
            e = D.kv.get(k)
            if e is None:
                return [None, AnyReply()]  # a fill lease: this caller's or another's
            if e[0] != "string":
                raise Invalid(f"TAG.GETL {k!r}: {k!r} is a {e[0]}")
            st = D.stale.get(k)
            if st is not None and st[0] == "stale":
                lease, st[1] = st[1], "out"
                return [e[1], {"avail": Token(), "out": None}.get(lease, AnyReply())]
            return [e[1], None]
        if name == "PTTL":
            k = a[0]
            if k not in D.kv:
                return -2
            cap = D.ttl.get(k)
            return -1 if cap is None else Range(max(1, cap - SLACK_MS), cap)
        if name == "TAG.MEMBERS":
            return Sorted(D.tag_members(a[0]))
        if name == "TAG.CARD":
            return len(D.tag_members(a[0]))
        if name == "TAG.TAGS":
            return Sorted(D.tags_of(a[0]) if a[0] in D.kv else [])
        if name == "TAG.LINK":
            D.rules[a[0]] = a[1]
            return b"OK"
        if name == "TAG.UNLINK":
            return 1 if D.rules.pop(a[0], None) is not None else 0
        if name == "TAG.LINKS":
            return [[s, t] for s, t in sorted(D.rules.items())]
        if name == "SET":
            self.write(db, a[0], ("string", a[1]))
            return b"OK"
        if name == "GET":
            e = typed(a[0], "string")
            return e if isinstance(e, Err) else (e[1] if e else None)
        if name == "TYPE":
            e = D.kv.get(a[0])
            return e[0].encode() if e else b"none"
        if name in ("DEL", "UNLINK"):
            n = 0
            for k in a:
                if k.startswith(b"ver:"):
                    n += 1 if D.tokens.pop(k[4:], None) is not None else 0
                else:
                    n += 1 if self.remove(db, k) else 0
            return n
        if name == "EXISTS":
            return sum(1 for k in a if k in D.kv)
        if name == "RENAME":
            src, dst = a
            if src not in D.kv:
                return Err("ERR")
            if src == dst:
                return b"OK"
            tags = D.tags_of(src)
            entry = D.kv[src]
            ttl = D.ttl.get(src)
            self.remove(db, src)
            self.remove(db, dst)
            D.kv[dst] = entry
            D.ttl[dst] = ttl
            for t in tags:
                D.set_members(t, D.tag_members(t) | {dst})
            self.fire(db, dst)
            return b"OK"
        if name == "COPY":
            src, dst = a[0], a[1]
            replace = len(a) > 2
            if src not in D.kv or (dst in D.kv and not replace):
                return 0
            self.write(db, dst, copy.deepcopy(D.kv[src]))
            D.ttl[dst] = D.ttl.get(src)  # COPY copies the lifetime, not the stale state
            return 1
        if name == "MOVE":
            k, target = a[0], int(a[1])
            T = self.dbs[target]
            if k not in D.kv or k in T.kv:
                return 0
            entry = D.kv[k]
            ttl = D.ttl.get(k)
            self.remove(db, k)
            T.kv[k] = entry
            T.ttl[k] = ttl
            self.fire(target, k)
            return 1
        if name in ("EXPIRE", "PEXPIRE"):
            k = a[0]
            if k not in D.kv:
                return 0
            D.ttl[k] = int(a[1]) * (1000 if name == "EXPIRE" else 1)
            st = D.stale.get(k)
            if st is not None and st[0] == "soft":
                st[3] = False  # still soft-expiring, with another lifetime
            D.touch_lease(k)
            return 1
        if name == "SADD":
            k, ms = a[0], a[1:]
            e = typed(k, "set")
            if isinstance(e, Err):
                return e
            cur = set(e[1]) if e else set()
            if k.startswith(TAG_PREFIX):
                for m in ms:
                    if m not in D.kv:
                        raise Invalid(f"SADD {k!r} {m!r}: {m!r} does not exist")
            new = set(ms) - cur
            D.kv[k] = ("set", frozenset(cur | set(ms)))
            if not k.startswith(TAG_PREFIX):
                D.ttl.setdefault(k, None)
                self.fire(db, k)
            return len(new)
        if name == "SMOVE":
            src, dst, m = a
            es, ed = typed(src, "set"), typed(dst, "set")
            for e in (es, ed):
                if isinstance(e, Err):
                    return e
            if not es or m not in es[1]:
                return 0
            rest = set(es[1]) - {m}
            if rest:
                D.kv[src] = ("set", frozenset(rest))
            else:
                del D.kv[src]
            D.kv[dst] = ("set", frozenset((set(ed[1]) if ed else set()) | {m}))
            return 1
        if name == "SUNIONSTORE":
            dst, srcs = a[0], a[1:]
            result = set()
            for s in srcs:
                e = typed(s, "set")
                if isinstance(e, Err):
                    return e
                if e:
                    result |= e[1]
            if dst.startswith(TAG_PREFIX):
                D.set_members(dst[len(TAG_PREFIX):], result)
            elif result:
                self.write(db, dst, ("set", frozenset(result)))
            else:
                self.remove(db, dst)
            return len(result)
        if name == "HSET":
            k, f, v = a
            e = typed(k, "hash")
            if isinstance(e, Err):
                return e
            h = dict(e[1]) if e else {}
            new = 0 if f in h else 1
            h[f] = v
            self.write(db, k, ("hash", h), keep_tags=True)
            return new
        if name == "APPEND":
            k, x = a
            e = typed(k, "string")
            if isinstance(e, Err):
                return e
            v = (e[1] if e else b"") + x
            self.write(db, k, ("string", v), keep_tags=True)
            return len(v)
        if name == "FLUSHDB":
            self.dbs[db] = DB()
            return b"OK"
        if name == "SWAPDB":
            x, y = int(a[0]), int(a[1])
            self.dbs[x], self.dbs[y] = self.dbs[y], self.dbs[x]
            for Dx in self.dbs:
                Dx.invalidated()  # SPEC does not say whether leases follow their database
            return b"OK"
        if name == "VER.SET":
            s, k, v = a[0], a[1], a[2]
            if s not in D.tokens:
                D.tokens[s] = self.new_version(s)
            D.vvals[(s, D.tokens[s], k)] = v
            return b"OK"
        if name == "VER.GET":
            s, k = a
            if s not in D.tokens:
                return None
            return D.vvals.get((s, D.tokens[s], k))
        if name == "VER.CURRENT":
            s = a[0]
            return Ver(s, D.tokens[s]) if s in D.tokens else None
        if name == "VER.BUMP":
            out = {}
            for s in a:
                if s not in out:
                    D.tokens[s] = self.new_version(s)
                    out[s] = Ver(s, D.tokens[s])
            return out[a[0]] if len(a) == 1 else [out[s] for s in a]
        raise ValueError(f"model does not know {name}")

    # -- replies

    why = ""

    def match(self, expected, actual, in_script: bool = False) -> bool:
        """Compares a reply with the expectation; learns version numbers
        (`why` says what was wrong with one)."""
        if isinstance(expected, AnyReply):
            return True
        if isinstance(expected, Err):
            if in_script:
                return isinstance(actual, bytes) and actual.startswith(
                    b"E!" + expected.code.encode())
            return isinstance(actual, RespError) and str(actual).startswith(expected.code)
        if isinstance(actual, RespError):
            return False
        if isinstance(expected, Token):
            return isinstance(actual, bytes) and len(actual) > 0
        if isinstance(expected, Range):
            return (isinstance(actual, int) and not isinstance(actual, bool)
                    and expected.lo <= actual <= expected.hi)
        if isinstance(expected, Sorted):
            return isinstance(actual, list) and sorted(actual) == expected.items
        if isinstance(expected, Ver):
            if not isinstance(actual, int) or isinstance(actual, bool):
                return False
            if expected.vid in self.vnum:
                return self.vnum[expected.vid] == actual
            if actual <= 0:
                return False
            order = self.vorder[expected.scope]
            before = order[:order.index(expected.vid)]
            for vid in before:
                if vid in self.vnum and self.vnum[vid] >= actual:
                    self.why = (f"version {actual} for scope {expected.scope!r} is not above "
                                f"{self.vnum[vid]}, handed out before for it")
                    return False
            for scope, order in self.vorder.items():
                if scope != expected.scope and any(
                        self.vnum.get(vid) == actual for vid in order):
                    # Values live at v<N>:<key> for every scope: two scopes at
                    # one version read each other's values.
                    self.why = (f"version {actual} for scope {expected.scope!r} was also "
                                f"handed out to scope {scope!r}: VER.GET of one reads "
                                f"values VER.SET wrote for the other (v<N>:<key>)")
                    return False
            self.vnum[expected.vid] = actual
            return True
        if isinstance(expected, list):
            return (isinstance(actual, list) and len(actual) == len(expected)
                    and all(self.match(e, x, in_script) for e, x in zip(expected, actual)))
        return expected == actual

    def show(self, expected):
        if isinstance(expected, Ver) and expected.vid in self.vnum:
            return f"Ver({expected.scope.decode()}={self.vnum[expected.vid]})"
        if isinstance(expected, list):
            return [self.show(e) for e in expected]
        return expected


# ---------------------------------------------------------------- steps

# A step is (kind, db, cmds):
#   "cmd"      one command
#   "pipe"     commands pipelined (sent together, no transaction)
#   "multi"    MULTI, commands, EXEC
#   "discard"  MULTI, commands, DISCARD (nothing happens)
#   "eval"     one EVAL running the commands with redis.pcall
#   "expire"   PEXPIRE k <short>, wait until the TTL has passed, then EXISTS k (0)
#   "src"      a write or delete of a rule source key, then a bounded wait
#              for the rule's purge
#   "check"    the whole index of both databases against the model

SCRIPT = """
local res = {}
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local args = {}
  for j = 1, n do args[j] = ARGV[i + j] end
  local r = redis.pcall(unpack(args))
  if type(r) == 'table' and r.err then r = 'E!' .. r.err end
  res[#res + 1] = r
  i = i + n + 1
end
return res
"""


def fmt_arg(x) -> str:
    if isinstance(x, bytes):
        s = x.decode(errors="backslashreplace")
    else:
        s = str(x)
    return s if s and " " not in s else repr(s)


def fmt_cmd(cmd) -> str:
    return " ".join(fmt_arg(x) for x in cmd)


def fmt_step(step) -> str:
    kind, db, cmds = step
    pre = f"[db{db}] " if db else ""
    body = "; ".join(fmt_cmd(c) for c in cmds)
    if kind == "cmd":
        return pre + body
    if kind == "pipe":
        return pre + f"PIPELINE {{ {body} }}"
    if kind == "multi":
        return pre + f"MULTI; {body}; EXEC"
    if kind == "discard":
        return pre + f"MULTI; {body}; DISCARD"
    if kind == "eval":
        return pre + f"EVAL {{ {body} }}"
    if kind == "expire":
        return pre + f"{body}; (sleep past TTL); EXISTS {fmt_arg(cmds[0][1])}"
    if kind == "src":
        return pre + f"{body}; (wait for rule purge)"
    if kind == "check":
        return ("CHECK (TAG.MEMBERS/TAG.CARD/SMEMBERS of every tag, TAG.TAGS/TYPE/GET/PTTL "
                "of every key, VER.*, TAG.LINKS, HGETALL tagcache:stale in db0 and db1)")
    return f"{kind} {body}"


def plain_on_tag_set(cmd) -> bool:
    """A plain (not module) command that names a tag set."""
    return not cmd_name(cmd).startswith(("TAG.", "VER.")) and any(
        isinstance(x, bytes) and x.startswith(TAG_PREFIX) for x in cmd[1:])


def cmd_name(cmd) -> str:
    n = cmd[0]
    return (n.decode() if isinstance(n, bytes) else n).upper()


class Generator:
    """Random steps; a model runs alongside so that preconditions hold."""

    def __init__(self, seed: int, exclude=()):
        self.rng = random.Random(seed)
        self.model = Model()
        self.counter = 0
        self.exclude = set(exclude)  # choice names left out (to look past a known failure)

    def value(self) -> bytes:
        self.counter += 1
        return b"v%d" % self.counter

    def inner(self, m: Model, db: int = 0, first: bool = True) -> tuple:
        """One command. `first` is False for the second and later commands of
        a pipeline, transaction or script: those leave out SMOVE and
        SUNIONSTORE from tag sets, plain commands that read a tag set to
        write another key. SPEC promises that module commands see the
        effects of the commands before them; a plain read of an index set
        that a command earlier in the same batch changed implicitly (SET,
        RENAME, ...) is not a promise to test."""
        rng = self.rng
        D = m.dbs[db]
        k = rng.choice(KEYS)
        k2 = rng.choice([x for x in KEYS if x != k])
        t = rng.choice(TAGS)
        choices = [
            ("TAG.SET", 22), ("TAG.ADD", 7), ("TAG.REM", 4), ("TAG.PURGE", 4),
            ("TAG.MEMBERS", 2), ("TAG.CARD", 1), ("TAG.TAGS", 3),
            ("SET", 5), ("GET", 2), ("DEL", 3), ("UNLINK", 2), ("RENAME", 4),
            ("COPY", 3), ("MOVE", 2), ("EXPIRE", 1), ("SADD tag", 5), ("SADD", 1),
            ("SMOVE", 2), ("SUNIONSTORE tag", 2), ("SUNIONSTORE key", 1), ("HSET", 4),
            ("VER.SET", 3), ("VER.GET", 3), ("VER.BUMP", 2), ("VER.CURRENT", 1),
            ("DEL ver", 0.5), ("invalidate", 7), ("getl", 5), ("APPEND", 1.5),
        ]
        choices = [(c, w) for c, w in choices if c not in self.exclude
                   and (first or c not in ("SMOVE", "SUNIONSTORE tag", "SUNIONSTORE key"))]
        what = rng.choices([c for c, _ in choices], [w for _, w in choices])[0]
        if what == "TAG.SET":
            tags = rng.sample(TAGS, rng.randint(1, 3))
            if rng.random() < 0.1:
                tags.append(tags[0])
            opts = []
            r = rng.random()
            if r < 0.25:
                opts += ["PX", rng.randint(100_000, 200_000)]
            elif r < 0.4 and "stale" not in self.exclude:
                # Soft expiry: fresh for the whole run, then stale.
                exp = ["EX", rng.randint(100, 300)]
                st = ["STALE", rng.randint(600_000, 900_000)]
                opts += exp + st if rng.random() < 0.5 else st + exp
            r = rng.random()
            if r < 0.12:
                opts.append("NX")
            elif r < 0.24:
                opts.append("XX")
            return ("TAG.SET", k, self.value(), *opts, "TAGS", len(tags), *tags)
        if what == "TAG.ADD":
            tags = rng.sample(TAGS, rng.randint(1, 2))
            if rng.random() < 0.1:
                tags.append(tags[0])
            return ("TAG.ADD", k, *tags)
        if what == "TAG.REM":
            return ("TAG.REM", k, *rng.sample(TAGS, rng.randint(1, 2)))
        if what == "TAG.PURGE":
            return ("TAG.PURGE", *rng.sample(TAGS, rng.choice([1, 1, 1, 2])))
        if what == "invalidate":
            tags = rng.sample(TAGS, rng.choice([1, 1, 2, 2, 3]))
            if rng.random() < 0.1:
                tags.append(tags[0])
            opts = []
            if rng.random() < 0.4:
                opts.append(["ALL"])
            if "soft" not in self.exclude and rng.random() < 0.6:
                opts.append(["SOFT", rng.randint(600_000, 900_000)])
            if rng.random() < 0.3:
                opts.append(["ASYNC"])
            rng.shuffle(opts)
            words = []
            for o in opts:
                w = o[0].lower() if rng.random() < 0.25 else o[0]
                words += [w, *o[1:]]
            return ("TAG.INVALIDATE", *words, "TAGS", len(tags), *tags)
        if what == "getl":
            pool = [x for x in KEYS if x not in D.kv or D.kv[x][0] == "string"]
            stale = [x for x in pool if D.stale.get(x, [None])[0] == "stale"]
            out = [x for x in stale if D.stale[x][1] != "avail"]
            r = rng.random()
            if out and r < 0.4:
                pool = out  # a token is out: the next caller gets none
            elif stale and r < 0.7:
                pool = stale
            if not pool:
                return ("TAG.TAGS", k)
            return ("TAG.GETL", rng.choice(pool), "TTL", rng.randint(600_000, 900_000))
        if what == "APPEND":
            return ("APPEND", k, b"+")
        if what in ("TAG.MEMBERS", "TAG.CARD"):
            return (what, t)
        if what == "TAG.TAGS":
            return ("TAG.TAGS", k)
        if what == "SET":
            return ("SET", k, self.value())
        if what == "GET":
            return ("GET", k)
        if what in ("DEL", "UNLINK"):
            return (what, k) if rng.random() < 0.7 else (what, k, k2)
        if what == "RENAME":
            return ("RENAME", k, k if rng.random() < 0.05 else k2)
        if what == "COPY":
            return ("COPY", k, k2, "REPLACE") if rng.random() < 0.6 else ("COPY", k, k2)
        if what == "MOVE":
            return ("MOVE", k, 1 - db)
        if what == "EXPIRE":
            return ("EXPIRE", k, rng.randint(1000, 2000))
        if what == "SADD tag":
            live = [x for x in KEYS if x in D.kv]
            if not live:
                return ("TAG.TAGS", k)
            return ("SADD", tkey(t), *rng.sample(live, rng.randint(1, min(2, len(live)))))
        if what == "SADD":
            return ("SADD", k, rng.choice([b"m0", b"m1"]))
        if what == "SMOVE":
            t2 = rng.choice([x for x in TAGS if x != t])
            pool = sorted(D.tag_members(t)) or KEYS
            return ("SMOVE", tkey(t), tkey(t2), rng.choice(pool))
        if what == "SUNIONSTORE tag":
            srcs = rng.sample(TAGS, rng.randint(1, 2))
            return ("SUNIONSTORE", tkey(t), *[tkey(x) for x in srcs])
        if what == "SUNIONSTORE key":
            return ("SUNIONSTORE", k, tkey(t))
        if what == "HSET":
            return ("HSET", k, rng.choice([b"f0", b"f1"]), self.value())
        scope = rng.choice(SCOPES)
        vk = rng.choice(VKEYS)
        if what == "VER.SET":
            opts = ["PX", rng.randint(100_000, 200_000)] if rng.random() < 0.2 else []
            return ("VER.SET", scope, vk, self.value(), *opts)
        if what == "VER.GET":
            return ("VER.GET", scope, vk)
        if what == "VER.BUMP":
            return ("VER.BUMP", scope) if rng.random() < 0.7 else ("VER.BUMP", *SCOPES)
        if what == "VER.CURRENT":
            return ("VER.CURRENT", scope)
        if what == "DEL ver":
            return ("DEL", b"ver:" + scope)
        raise AssertionError(what)

    def step(self):
        rng = self.rng
        m = self.model
        kinds = [("cmd", 55), ("pipe", 5), ("multi", 7), ("discard", 2), ("eval", 5),
                 ("expire", 1.5), ("src", 4), ("check", 4), ("moveback", 3),
                 ("swapdb", 1), ("flushdb", 0.3), ("link", 1.2), ("getl twice", 2)]
        kinds = [(k, w) for k, w in kinds if k not in self.exclude
                 and not (k == "getl twice" and "getl" in self.exclude)]
        kind = rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        if kind == "cmd":
            step = ("cmd", 0, (self.inner(m),))
        elif kind in ("pipe", "multi", "eval", "discard"):
            n = rng.randint(2, 3) if kind in ("pipe", "eval") else rng.randint(1, 3)
            scratch = m.copy() if kind == "discard" else m
            cmds = []
            for i in range(n):
                c = self.inner(scratch, first=(i == 0))
                scratch.apply(0, c)
                cmds.append(c)
            return (kind, 0, tuple(cmds))  # already applied (or discarded)
        elif kind == "expire":
            step = ("expire", 0, (("PEXPIRE", rng.choice(KEYS), rng.randint(30, 80)),))
        elif kind == "src":
            s = rng.choice(SRC)
            c = ("SET", s, self.value()) if rng.random() < 0.75 else ("DEL", s)
            step = ("src", 0, (c,))
        elif kind == "check":
            step = ("check", 0, ())
        elif kind == "getl twice":
            # Two callers in a row (a pipeline) of a key, stale if there is
            # one: a token for the first since the key became stale, none for
            # the second.
            D = m.dbs[0]
            pool = [k for k in KEYS if D.kv.get(k, ("string",))[0] == "string"]
            stale = [k for k in pool if D.stale.get(k, [None])[0] == "stale"]
            if stale and rng.random() < 0.8:
                pool = stale
            if pool:
                g = ("TAG.GETL", rng.choice(pool), "TTL", rng.randint(600_000, 900_000))
                step = ("pipe", 0, (g, g))
            else:
                step = ("cmd", 0, (("TAG.TAGS", rng.choice(KEYS)),))
        elif kind == "moveback":
            D1 = m.dbs[1]
            live = [k for k in KEYS if k in D1.kv]
            if live and rng.random() < 0.8:
                step = ("cmd", 1, (("MOVE", rng.choice(live), 0),))
            else:
                step = ("cmd", 1, (("TAG.TAGS", rng.choice(KEYS)),))
        elif kind == "swapdb":
            step = ("cmd", 0, (("SWAPDB", 0, 1),))
        elif kind == "flushdb":
            step = ("cmd", 0, (("FLUSHDB",),))
        else:  # link
            if rng.random() < 0.75:
                step = ("cmd", 0, (("TAG.LINK", LINK_SOURCE, LINK_TAGS),))
            else:
                step = ("cmd", 0, (("TAG.UNLINK", LINK_SOURCE),))
        apply_step_to_model(m, step)
        return step

    def steps(self, n: int) -> list:
        return [self.step() for _ in range(n)]


def apply_step_to_model(m: Model, step) -> None:
    """Advances the model over a step without checking replies (generation)."""
    kind, db, cmds = step
    if kind in ("cmd", "src", "pipe", "multi", "eval"):
        for c in cmds:
            m.apply(db, c)
    elif kind == "expire":
        if m.apply(db, cmds[0]) == 1:
            m.remove(db, cmds[0][1])


# ---------------------------------------------------------------- execution


class Mismatch(Exception):
    """A reply or a state that differs from the model."""

    def __init__(self, signature: tuple, message: str, index: int | None = None):
        super().__init__(message)
        self.signature = signature
        self.message = message
        self.index = index


def conns(port: int) -> list:
    c0 = RawConn(port, timeout=10)
    c1 = RawConn(port, timeout=10)
    c1.command("SELECT", 1)
    return [c0, c1]


def exchange(conn: RawConn, cmds: list) -> list:
    """Sends commands together, reads their replies (errors as RespError)."""
    for c in cmds:
        conn.send(*c)
    return [conn.read() for _ in cmds]


def server_ms(conn: RawConn) -> int:
    """The server's clock (TIME) in milliseconds."""
    (t,) = exchange(conn, [("TIME",)])
    return int(t[0]) * 1000 + int(t[1]) // 1000


def wait_server_clock_past(conn: RawConn, ms: int, timeout: float = 5.0) -> None:
    """Waits (bounded) until the server's clock is past `ms`: a key whose
    expiry time is `ms` or earlier is then expired for every later command,
    and nothing looked it up meanwhile."""
    deadline = time.monotonic() + timeout
    while server_ms(conn) <= ms:
        if time.monotonic() > deadline:
            raise AssertionError(f"the server's clock did not pass {ms} within {timeout}s")
        time.sleep(0.005)


def check_commands(m: Model, db: int) -> list:
    """Read-only commands whose replies cover the whole state of a database."""
    cmds = []
    for t in TAGS:
        cmds += [("TAG.MEMBERS", t), ("TAG.CARD", t), ("SMEMBERS", tkey(t))]
    for k in KEYS + SRC:
        cmds += [("TAG.TAGS", k), ("TYPE", k), ("PTTL", k)]
        e = m.dbs[db].kv.get(k)
        if e and e[0] == "string":
            cmds.append(("GET", k))
    for s in SCOPES:
        cmds.append(("VER.CURRENT", s))
        for vk in VKEYS:
            cmds.append(("VER.GET", s, vk))
    cmds.append(("TAG.LINKS",))
    return cmds


def expected_read(m: Model, db: int, cmd: tuple):
    if cmd_name(cmd) == "SMEMBERS":
        return Sorted(m.dbs[db].tag_members(cmd[1][len(TAG_PREFIX):]))
    return m.apply(db, cmd)


def stale_hash_problem(m: Model, conn: RawConn, db: int) -> str | None:
    """Compares the database's `tagcache:stale` hash with the model: the same
    fields; "0" for a stale key; for a soft-expiring key its fresh-until time
    (unix ms): ahead of the server's clock by at most the EX given (and by
    more than that minus SLACK_MS), and, while its lifetime is still the one
    TAG.SET gave, exactly STALE ms before the key's expiry time."""
    D = m.dbs[db]
    linked = sorted(k for k, st in D.stale.items() if st[0] == "soft" and st[3])
    replies = exchange(conn, [("TIME",), ("HGETALL", STALE_KEY),
                              *[("PEXPIRETIME", k) for k in linked]])
    t, flat = replies[0], replies[1]
    if isinstance(flat, RespError) or not isinstance(flat, list):
        return f"`HGETALL {STALE_KEY.decode()}` replied {flat!r}"
    now = int(t[0]) * 1000 + int(t[1]) // 1000
    actual = dict(zip(flat[0::2], flat[1::2]))
    expected = {k: (b"0" if st[0] == "stale" else f"fresh-until ~now+{st[1]}ms")
                for k, st in sorted(D.stale.items())}
    head = (f"`HGETALL {STALE_KEY.decode()}` replied {actual!r}, model expects "
            f"{expected!r}")
    if set(actual) != set(D.stale):
        return head
    exptime = dict(zip(linked, replies[2:]))
    for k, st in sorted(D.stale.items()):
        v = actual[k]
        if st[0] == "stale":
            if v != b"0":
                return head + f" (field {k.decode()} of a stale key must be 0)"
            continue
        if not v.isdigit():
            return head + f" (field {k.decode()} is not a time in unix ms)"
        ahead = int(v) - now
        if not st[1] - SLACK_MS < ahead <= st[1]:
            return head + (f" (field {k.decode()}: fresh until {int(v)}, {ahead} ms after the "
                           f"server's clock {now}; TAG.SET gave EX {st[1] // 1000})")
        if k in exptime and exptime[k] != int(v) + st[2]:
            return head + (f" (field {k.decode()}: fresh until {int(v)}, but PEXPIRETIME is "
                           f"{exptime[k]!r}, not fresh-until + STALE {st[2]})")
    return None


def full_check(m: Model, cs: list, index, phase: str = "check") -> None:
    for db in (0, 1):
        cmds = check_commands(m, db)
        replies = exchange(cs[db], cmds)
        # The signature (what a shrunk sequence must fail with) is only the
        # phase: which read shows a divergence first depends on the order of
        # the checks.
        signature = ("aof" if "AOF" in phase else "state",)
        for c, actual in zip(cmds, replies):
            exp = expected_read(m, db, c)
            if not m.match(exp, actual):
                raise Mismatch(
                    signature,
                    f"{phase}: db{db} `{fmt_cmd(c)}` replied {actual!r}, model expects "
                    f"{m.show(exp)!r}" + (f" ({m.why})" if m.why else ""),
                    index)
        problem = stale_hash_problem(m, cs[db], db)
        if problem:
            raise Mismatch(signature, f"{phase}: db{db} {problem}", index)


def run_step(m: Model, cs: list, step, index: int) -> None:
    kind, db, cmds = step
    conn = cs[db]

    def compare(c, exp, actual, in_script=False, where=""):
        if not m.match(exp, actual, in_script):
            raise Mismatch(
                ("reply", kind, cmd_name(c)),
                f"step {index} ({fmt_step(step)}): {where}`{fmt_cmd(c)}` replied {actual!r}, "
                f"model expects {m.show(exp)!r}" + (f" ({m.why})" if m.why else ""),
                index)

    def lenient(exp_list):
        """Inside a pipeline, transaction or script, the replies of plain
        commands on tag sets are not checked: SPEC promises only that module
        commands see the effects of the commands before them (their effect on
        the index is still checked by the following checks)."""
        if kind == "cmd":
            return exp_list
        return [AnyReply() if plain_on_tag_set(c) else e for c, e in zip(cmds, exp_list)]

    if kind in ("cmd", "pipe"):
        expected = lenient([m.apply(db, c) for c in cmds])
        for c, exp, actual in zip(cmds, expected, exchange(conn, list(cmds))):
            compare(c, exp, actual)
    elif kind in ("multi", "discard"):
        scratch = m.copy() if kind == "discard" else m
        expected = lenient([scratch.apply(db, c) for c in cmds])
        end = "EXEC" if kind == "multi" else "DISCARD"
        replies = exchange(conn, [("MULTI",), *cmds, (end,)])
        for c, actual in zip(cmds, replies[1:-1]):
            compare(c, b"QUEUED", actual, where="queued ")
        if kind == "multi":
            res = replies[-1]
            if not isinstance(res, list) or len(res) != len(cmds):
                raise Mismatch(("reply", kind, "EXEC"),
                               f"step {index} ({fmt_step(step)}): EXEC replied {res!r}", index)
            for c, exp, actual in zip(cmds, expected, res):
                compare(c, exp, actual, where="in EXEC ")
        elif replies[-1] != b"OK":
            raise Mismatch(("reply", kind, "DISCARD"),
                           f"step {index}: DISCARD replied {replies[-1]!r}", index)
    elif kind == "eval":
        expected = lenient([m.apply(db, c) for c in cmds])
        argv = []
        for c in cmds:
            argv += [len(c), *c]
        (res,) = exchange(conn, [("EVAL", SCRIPT, 0, *argv)])
        if not isinstance(res, list) or len(res) != len(cmds):
            raise Mismatch(("reply", kind, "EVAL"),
                           f"step {index} ({fmt_step(step)}): EVAL replied {res!r}", index)
        for c, exp, actual in zip(cmds, expected, res):
            compare(c, exp, actual, in_script=True, where="in script ")
    elif kind == "expire":
        (c,) = cmds
        exp = m.apply(db, c)
        (actual,) = exchange(conn, [c])
        compare(c, exp, actual)
        if exp == 1:
            m.remove(db, c[1])
            wait_server_clock_past(conn, server_ms(conn) + int(c[2]))
        (actual,) = exchange(conn, [("EXISTS", c[1])])
        compare(("EXISTS", c[1]), 1 if c[1] in m.dbs[db].kv else 0, actual)
    elif kind == "src":
        (c,) = cmds
        exp = m.apply(db, c)
        (actual,) = exchange(conn, [c])
        compare(c, exp, actual)
        D = m.dbs[db]
        for src, tp in D.rules.items():
            if c[1].startswith(src):
                tag_key = tkey(tp + c[1][len(src):])
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline:
                    (n,) = exchange(conn, [("EXISTS", tag_key)])
                    if n == (1 if tag_key in D.kv else 0):
                        break
                    time.sleep(0.01)
    elif kind == "check":
        full_check(m, cs, index)
    else:
        raise ValueError(kind)
