"""Seeded model-based random test of SLICED purges (SPEC.md, "Large purges"
and "Security").

With `purge-atomic-max` small, `TAG.PURGE t1 [t2] ASYNC` of more keys runs in
slices across turns of the event loop, and other clients' commands run
between the slices. The contract checked here:

- The selection is fixed when the call arrives: the purge deletes every key
  that carried one of the purged tags then, except a key whose VALUE any
  command wrote after the call arrived (SET, TAG.SET: it survives with
  whatever that write gave it, later commands included).
- A selected key that is only untagged meanwhile (TAG.REM, SREM on the tag
  set, the set rewritten with SINTERSTORE/SUNIONSTORE or deleted) still goes.
- Keys first tagged after the call arrived are never touched; a key deleted
  or expired meanwhile is simply gone.
- The ASYNC reply is, at once, the number of distinct keys that carried the
  tags when the call arrived; TAG.INFO `purges_in_progress` drops to 0 when
  the purge is done; the index then holds exactly the live keys' tags (no
  member that does not exist) and the replica's DEBUG DIGEST equals the
  master's.
- A user who may not delete every selected key gets NOPERM and nothing is
  deleted (an ACL selector that allows only GET on a key does not count).

Interleaving-independence rule: the interfering commands are chosen ONLY
among those whose final effect does not depend on where the purge's slices
fall between them (their replies may, and are not checked). So a selected key
that no command has written yet may be written, untagged, deleted or
expired, but not APPENDed to, tagged, RENAMEd or MOVEd (the outcome would
depend on whether the purge got there first); a key that is not selected,
or whose value was written after the call, is "free": it is the clients'
alone and any command may touch it. The plain-Python model applies the
commands in order and expects the selected, never-written keys gone.

The interfering commands go, at random: in the same pipeline as the purge
(same event-loop turn, before its first slice), and/or in 1-4 pipelines on
a second connection sent one after another once the ASYNC reply is back
(between slices). A TAG.INFO probe at the head of the second connection's
first pipeline records whether the purge was still running then; a test
whose purges never ran across turns fails (it would prove nothing).

On a mismatch the failure shows the seed, the round, the purge, the
interfering commands (with where they were sent) and the differing keys.
Environment: TAGCACHE_SLICED_SEEDS (comma-separated, default 1..6),
TAGCACHE_SLICED_ROUNDS (rounds per seed, default 3).
"""

from __future__ import annotations

import os
import random
import time

import pytest
import redis

from harness import dataset, digest, error_text, info_pairs, tag_info, wait_sync, wait_until

SEEDS = [int(s) for s in os.environ.get("TAGCACHE_SLICED_SEEDS", "1,2,3,4,5,6").split(",")
         if s.strip()]
ROUNDS = int(os.environ.get("TAGCACHE_SLICED_ROUNDS", "3"))

ATOMIC_MAX = 20
SLICED = ["purge-atomic-max", str(ATOMIC_MAX), "purge-slice-us", "100"]
TAGS = ["t0", "t1", "t2", "t3", "t4"]
PURGE_TIMEOUT = 10.0
# How a round sends its interfering commands: all in the purge's pipeline
# (A), all on the second connection after the reply (B), or split (AB).
MODES = ["B", "AB", "A"]


def tag_key(t: str) -> str:
    return f"tag:{t}"


# ---------------------------------------------------------------- the model


class Model:
    """db0/db1: key -> [value, set of tags]. `doomed`: the selected keys no
    command has written since the call (the purge deletes them, whatever
    else happens to them). `expiring`: names given a 1 ms TTL."""

    def __init__(self):
        self.db0: dict[str, list] = {}
        self.db1: dict[str, list] = {}
        self.doomed: set[str] = set()
        self.expiring: set[str] = set()
        self.known: set[str] = set()
        self.counter = 0

    def put(self, key: str, value: str, tags) -> None:
        self.db0[key] = [value, set(tags)]
        self.known.add(key)

    def fresh(self, prefix: str, kind: str) -> str:
        self.counter += 1
        name = f"{prefix}{kind}{self.counter}"
        self.known.add(name)
        return name

    def value(self) -> str:
        self.counter += 1
        return f"w{self.counter}"

    def free(self) -> list[str]:
        """Keys that exist for sure, whatever the interleaving."""
        return sorted(k for k in self.db0 if k not in self.doomed)

    def selection(self, tags) -> set[str]:
        return {k for k, (_, kt) in self.db0.items() if kt & set(tags)}

    def expected_db0(self) -> dict[str, list]:
        return {k: e for k, e in self.db0.items() if k not in self.doomed}

    def expected_sets(self) -> dict[str, set]:
        out: dict[str, set] = {}
        for k, (_, tags) in self.expected_db0().items():
            for t in tags:
                out.setdefault(t, set()).add(k)
        return out


class Generator:
    """Interfering commands, each applied to the model as it is made. `ok`
    says which key names the sending user may touch; `prefixes` are the
    prefixes of fresh names."""

    def __init__(self, rng: random.Random, model: Model, purged: list[str]):
        self.rng = rng
        self.m = model
        self.purged = purged

    def tag(self) -> str:
        return self.rng.choice(self.purged) if self.rng.random() < 0.6 else self.rng.choice(TAGS)

    def pick(self, names, ok):
        names = [n for n in names if ok(n)]
        return self.rng.choice(names) if names else None

    def present(self, ok):
        """Any key in db 0, selected-and-unwritten ones half the time."""
        doomed = sorted(self.m.doomed)
        if doomed and self.rng.random() < 0.5:
            return self.pick(doomed, ok)
        return self.pick(sorted(self.m.db0), ok)

    def any_name(self, ok, prefixes):
        r = self.rng.random()
        if r < 0.4:
            return self.present(ok)
        if r < 0.8:
            return self.pick(sorted(self.m.known), ok)
        return self.m.fresh(self.rng.choice(prefixes), "n")

    # Each op returns the command, or None when it does not apply now.

    def op_set(self, ok, prefixes):
        k = self.any_name(ok, prefixes)
        if k is None:
            return None
        v = self.m.value()
        self.m.put(k, v, ())
        self.m.doomed.discard(k)
        return ("SET", k, v)

    def op_tag_set(self, ok, prefixes):
        k = self.any_name(ok, prefixes)
        if k is None:
            return None
        tags = self.rng.sample(TAGS, self.rng.randint(1, 3))
        v = self.m.value()
        self.m.put(k, v, tags)
        self.m.doomed.discard(k)
        return ("TAG.SET", k, v, "TAGS", len(tags), *tags)

    def op_tag_set_new(self, ok, prefixes):
        k = self.m.fresh(self.rng.choice(prefixes), "n")
        tags = sorted({self.rng.choice(self.purged), self.rng.choice(TAGS)})
        v = self.m.value()
        self.m.put(k, v, tags)
        return ("TAG.SET", k, v, "TAGS", len(tags), *tags)

    def _untag(self, ok, cmd):
        k = self.present(ok)
        if k is None:
            return None
        t = self.tag()
        self.m.db0[k][1].discard(t)
        return cmd(k, t)

    def op_tag_rem(self, ok, prefixes):
        return self._untag(ok, lambda k, t: ("TAG.REM", k, t))

    def op_srem(self, ok, prefixes):
        return self._untag(ok, lambda k, t: ("SREM", tag_key(t), k))

    def op_rewrite_set(self, ok, prefixes):
        t = self.tag()
        return (self.rng.choice(["SINTERSTORE", "SUNIONSTORE"]), tag_key(t), tag_key(t))

    def op_del_set(self, ok, prefixes):
        t = self.tag()
        for _, tags in self.m.db0.values():
            tags.discard(t)
        return ("DEL", tag_key(t))

    def _tag_free(self, ok, cmd):
        k = self.pick(self.m.free(), ok)
        if k is None:
            return None
        t = self.tag()
        self.m.db0[k][1].add(t)
        return cmd(k, t)

    def op_sadd(self, ok, prefixes):
        return self._tag_free(ok, lambda k, t: ("SADD", tag_key(t), k))

    def op_tag_add(self, ok, prefixes):
        return self._tag_free(ok, lambda k, t: ("TAG.ADD", k, t))

    def _gone(self, ok, cmd):
        k = self.present(ok)
        if k is None:
            return None
        del self.m.db0[k]
        self.m.doomed.discard(k)
        return cmd(k)

    def op_del(self, ok, prefixes):
        return self._gone(ok, lambda k: ("DEL", k))

    def op_pexpire(self, ok, prefixes):
        def cmd(k):
            self.m.expiring.add(k)
            return ("PEXPIRE", k, 1)
        return self._gone(ok, cmd)

    def op_append(self, ok, prefixes):
        k = self.pick(self.m.free(), ok)
        if k is None:
            return None
        self.m.db0[k][0] += "x"
        return ("APPEND", k, "x")

    def op_rename(self, ok, prefixes):
        k = self.pick(self.m.free(), ok)
        if k is None:
            return None
        to = self.m.fresh(self.rng.choice(prefixes), "r")
        self.m.db0[to] = self.m.db0.pop(k)
        return ("RENAME", k, to)

    def op_move(self, ok, prefixes):
        k = self.pick(self.m.free(), ok)
        if k is None:
            return None
        if k not in self.m.db1:
            value, _ = self.m.db0.pop(k)
            # MOVE takes the key out of db 0's index; db 1 has no tag sets.
            self.m.db1[k] = [value, set()]
        return ("MOVE", k, 1)

    OPS = [  # (weight, op)
        (4, op_set), (4, op_tag_set), (2, op_tag_set_new),
        (3, op_tag_rem), (3, op_srem), (1, op_rewrite_set), (1, op_del_set),
        (3, op_sadd), (3, op_tag_add),
        (2, op_del), (2, op_pexpire),
        (2, op_append), (2, op_rename), (1, op_move),
    ]

    def command(self, ok, prefixes):
        weights = [w for w, _ in self.OPS]
        for _ in range(20):
            (_, op), = self.rng.choices(self.OPS, weights)
            cmd = op(self, ok, prefixes)
            if cmd is not None:
                return cmd
        return ("PING",)


# ---------------------------------------------------------------- one round


def fill(client, model: Model, names_and_tags) -> None:
    p = client.pipeline(transaction=False)
    for i, (k, tags) in enumerate(names_and_tags):
        v = f"v{i}"
        if tags:
            p.execute_command("TAG.SET", k, v, "TAGS", len(tags), *tags)
        else:
            p.set(k, v)
        model.put(k, v, tags)
    assert all(x is True or x == "OK" for x in p.execute())


def random_tags(rng: random.Random, pool=TAGS) -> list[str]:
    if rng.random() < 0.1:
        return []
    return rng.sample(pool, rng.randint(1, min(3, len(pool))))


def info_dict(reply) -> dict:
    return info_pairs(reply)


def expire_now(master, model: Model) -> None:
    """Keys given a 1 ms TTL are deleted now (a lookup expires them), so
    that the index, the replica and the model agree."""
    if not model.expiring:
        return
    time.sleep(0.01)
    p = master.pipeline(transaction=False)
    for k in sorted(model.expiring):
        p.exists(k)
    p.execute()


def observed(client) -> tuple[dict, dict]:
    """(key -> [value, set of tags], tag -> members) of one database."""
    keys = sorted(client.keys("*"))
    plain = [k for k in keys if not k.startswith("tag:")]
    sets = [k for k in keys if k.startswith("tag:")]
    p = client.pipeline(transaction=False)
    for k in plain:
        p.get(k)
        p.execute_command("TAG.TAGS", k)
    for k in sets:
        p.smembers(k)
    out = p.execute(raise_on_error=False)
    values = {k: [out[2 * i], set(out[2 * i + 1])] for i, k in enumerate(plain)}
    members = {k[len("tag:"):]: set(out[2 * len(plain) + i]) for i, k in enumerate(sets)}
    return values, members


def diff_db(name: str, got: dict, want: dict, got_sets: dict, want_sets: dict,
            selected=frozenset()) -> list[str]:
    lines = []
    for k in sorted(set(got) | set(want)):
        sel = " (selected)" if k in selected else ""
        if k not in got:
            lines.append(f"{name} {k}{sel}: missing, model has {want[k]}")
        elif k not in want:
            lines.append(f"{name} {k}{sel}: present {got[k]}, model has no such key")
        elif got[k] != want[k]:
            lines.append(f"{name} {k}{sel}: {got[k]} != model {want[k]}")
    for t in sorted(set(got_sets) | set(want_sets)):
        g, w = got_sets.get(t, set()), want_sets.get(t, set())
        if g != w:
            lines.append(f"{name} tag:{t}: extra {sorted(g - w)} missing {sorted(w - g)}")
    return lines


def compare(server, model: Model, selection: set) -> list[str]:
    master = server.client(decode_responses=True)
    got0, sets0 = observed(master)
    want0 = model.expected_db0()
    lines = diff_db("db0", got0, want0, sets0, model.expected_sets(), selection)
    want_sets = model.expected_sets()
    p = master.pipeline(transaction=False)
    for t in TAGS:
        p.execute_command("TAG.CARD", t)
    for t, card in zip(TAGS, p.execute()):
        if card != len(want_sets.get(t, ())):
            lines.append(f"db0 TAG.CARD {t} = {card}, model {len(want_sets.get(t, ()))}")
    got1, sets1 = observed(server.client(db=1, decode_responses=True))
    lines += diff_db("db1", got1, model.db1, sets1, {})
    return lines


class Round:
    """One purge with its interfering commands, on fresh servers."""

    def __init__(self, seed: int, number: int, mode: str, label: str = ""):
        self.seed, self.number, self.mode, self.label = seed, number, mode, label
        self.purge: tuple = ()
        self.reply = None
        self.selected = 0
        self.a_part: list[tuple] = []
        self.b_chunks: list[list[tuple]] = []
        self.probe: dict | None = None

    def describe(self) -> str:
        lines = [f"seed={self.seed} round={self.number} mode={self.mode} {self.label}".rstrip(),
                 f"purge on A: {' '.join(map(str, self.purge))} -> {self.reply!r}"
                 f" (selected at arrival: {self.selected})"]
        for cmd in self.a_part:
            lines.append(f"  A (same pipeline): {' '.join(map(str, cmd))}")
        for i, chunk in enumerate(self.b_chunks):
            for cmd in chunk:
                lines.append(f"  B pipeline {i}: {' '.join(map(str, cmd))}")
        if self.probe is not None:
            lines.append(f"TAG.INFO at the head of B: purges_in_progress="
                         f"{self.probe.get('purges_in_progress')} purge_keys_left="
                         f"{self.probe.get('purge_keys_left')}")
        return "\n".join(lines)

    def fail(self, what: str, lines=()) -> None:
        shown = list(lines)[:40]
        more = f"\n  ... {len(lines) - 40} more" if len(lines) > 40 else ""
        raise AssertionError(f"{what}\n{self.describe()}\n" + "\n".join(shown) + more)


def run_round(rnd: Round, rng: random.Random, master, replica, model: Model, purger,
              purged: list[str], purger_ok, prefixes) -> Round:
    """Sends the purge on `purger` (connection A) and the interfering
    commands, waits for the end, compares with the model and the replica.
    `purger_ok(name)`: the key names A's user may touch (B is admin)."""
    admin = master.client(decode_responses=True)
    selection = model.selection(purged)
    rnd.selected = len(selection)
    assert rnd.selected > ATOMIC_MAX, f"seed={rnd.seed}: selection too small to be sliced"
    model.doomed = set(selection)
    gen = Generator(rng, model, purged)

    n = rng.randint(10, 40)
    n_a = {"A": n, "B": 0, "AB": rng.randint(1, n - 1)}[rnd.mode]
    rnd.a_part = [gen.command(purger_ok, [p for p in prefixes if purger_ok(p + "x")])
                  for _ in range(n_a)]
    rest = [gen.command(lambda _: True, prefixes) for _ in range(n - n_a)]
    if rest:
        cuts = sorted(rng.sample(range(1, len(rest)), min(rng.randint(0, 3), len(rest) - 1)))
        rnd.b_chunks = [rest[i:j] for i, j in zip([0, *cuts], [*cuts, len(rest)])]

    rnd.purge = ("TAG.PURGE", *purged, "ASYNC")
    pa = purger.pipeline(transaction=False)
    pa.execute_command(*rnd.purge)
    for cmd in rnd.a_part:
        pa.execute_command(*cmd)
    rnd.reply = pa.execute(raise_on_error=False)[0]
    for i, chunk in enumerate(rnd.b_chunks):
        pb = admin.pipeline(transaction=False)
        if i == 0:
            pb.execute_command("TAG.INFO")
        for cmd in chunk:
            pb.execute_command(*cmd)
        out = pb.execute(raise_on_error=False)
        if i == 0:
            rnd.probe = info_dict(out[0])
    if rnd.reply != len(selection):
        rnd.fail(f"the ASYNC reply is {rnd.reply!r}, not the {len(selection)} keys that"
                 " carried the tags when the call arrived")

    last = {}

    def done():
        last.update(tag_info(admin))
        return last["purges_in_progress"] == 0

    try:
        wait_until(done, PURGE_TIMEOUT, interval=0.005, what="purges_in_progress == 0")
    except AssertionError:
        rnd.fail(f"the purge did not end in {PURGE_TIMEOUT}s: TAG.INFO {last}")
    if last.get("purge_keys_left") != 0:
        rnd.fail(f"purge_keys_left is {last.get('purge_keys_left')} with no purge in progress")
    expire_now(admin, model)

    lines = compare(master, model, selection)
    if lines:
        rnd.fail("the dataset differs from the model (got vs model):", lines)
    replica_client = replica.client()
    wait_sync(master.client(), replica_client)
    if digest(admin) != digest(replica_client):
        rnd.fail("the replica's DEBUG DIGEST differs from the master's",
                 diff_db("replica db0", observed(replica.client(decode_responses=True))[0],
                         observed(admin)[0], {}, {}))
    return rnd


def fresh_pair(servers):
    master = servers.start(module_args=SLICED)
    replica = servers.start_replica(master, module_args=SLICED)
    return master, replica


def stop_pair(master, replica) -> None:
    replica.stop()
    master.stop()


def assert_ran_in_slices(rounds: list[Round]) -> None:
    probed = [r for r in rounds if r.probe is not None]
    if not any(r.probe.get("purges_in_progress") == 1 for r in probed):
        raise AssertionError(
            "no purge was still running when the second connection's commands arrived:"
            " nothing here tested an interleaving\n"
            + "\n".join(f"seed={r.seed} round={r.number}: selected {r.selected}, probe {r.probe}"
                        for r in probed))


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("seed", SEEDS)
def test_sliced_purge_matches_the_model_under_interleaved_writes(servers, seed):
    rng = random.Random(seed)
    rounds = []
    for number in range(ROUNDS):
        mode = MODES[number] if number < len(MODES) else rng.choice(MODES)
        master, replica = fresh_pair(servers)
        model = Model()
        # Slices follow each other with only the other clients' turns
        # between them: a selection of a few thousand keys can be gone
        # before the second connection's commands arrive, so fill more.
        n = rng.randint(6000, 12000)
        fill(master.client(decode_responses=True), model,
             [(f"k{i}", random_tags(rng)) for i in range(n)])
        purged = rng.sample(TAGS, rng.choice([1, 2]))
        rnd = Round(seed, number, mode)
        run_round(rnd, rng, master, replica, model, master.client(decode_responses=True),
                  purged, lambda _: True, [""])
        rounds.append(rnd)
        stop_pair(master, replica)
    assert_ran_in_slices(rounds)


USERS = {
    # May touch only u:* keys (and the tag sets).
    "key-patterns": ["~u:*", "~tag:*", "+@all"],
    # The same, plus a selector that lets it GET any key (but not DEL it).
    "selector": ["~u:*", "~tag:*", "+@all", "(~* +get)"],
}


def restricted_setup(servers, seed: int, user: str):
    """Fresh servers; user eve; u:* keys with random tags of t0..t4 and a
    few other:* keys (eve may not delete them) carrying t0 only."""
    rng = random.Random(1000 * seed + len(user))
    master, replica = fresh_pair(servers)
    admin = master.client(decode_responses=True)
    admin.execute_command("ACL", "SETUSER", "eve", "reset", "on", ">pw", *USERS[user])
    eve = master.client(decode_responses=True, username="eve", password="pw")
    model = Model()
    own = [(f"u:k{i}", random_tags(rng)) for i in range(rng.randint(400, 900))]
    others = [(f"other:k{i}", ["t0"]) for i in range(rng.randint(1, 30))]
    entries = own + others
    rng.shuffle(entries)
    fill(admin, model, entries)
    assert len(model.selection(["t0"])) > ATOMIC_MAX
    return rng, master, replica, admin, eve, model


@pytest.mark.parametrize("user", sorted(USERS))
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_restricted_users_sliced_purge_of_others_keys_is_refused_and_deletes_nothing(
        servers, seed, user):
    """A sliced purge of a tag that also carries keys the user may not
    delete replies NOPERM and deletes nothing, ASYNC or not (SPEC
    "Security": a key it may not touch fails the whole command with NOPERM
    and changes nothing)."""
    rng, master, replica, admin, eve, model = restricted_setup(servers, seed, user)
    before = dataset(master.client())
    problems = []
    for call in [("TAG.PURGE", "t0", "ASYNC"), ("TAG.PURGE", "t0"),
                 ("TAG.PURGE", rng.choice(TAGS[1:]), "t0", "ASYNC"),
                 ("TAG.PURGE", "t0", rng.choice(TAGS[1:]))]:
        try:
            reply = eve.execute_command(*call)
        except redis.ResponseError as e:
            if not error_text(e).startswith("NOPERM"):
                problems.append(f"{' '.join(call)} -> {error_text(e)!r}, not NOPERM")
        else:
            problems.append(f"{' '.join(call)} -> {reply!r}, not NOPERM")
        wait_until(lambda: tag_info(admin)["purges_in_progress"] == 0, PURGE_TIMEOUT,
                   what="the refused purge ended")
    after = dataset(master.client())
    if after != before:
        gone = sorted(k.decode() for k in set(before) - set(after))
        changed = sorted(k.decode() for k in set(before) & set(after) if before[k] != after[k])
        problems.append(f"the refused purges changed the dataset: {len(gone)} keys gone"
                        f" (e.g. {gone[:10]}), changed {changed[:10]}")
    replica_client = replica.client()
    wait_sync(master.client(), replica_client)
    if digest(replica_client) != digest(admin):
        problems.append("the replica's DEBUG DIGEST differs from the master's")
    if problems:
        raise AssertionError(f"seed={seed} user={user} ({' '.join(USERS[user])}),"
                             f" t0 selects {len(model.selection(['t0']))} keys:\n"
                             + "\n".join(problems))
    stop_pair(master, replica)


@pytest.mark.parametrize("user", sorted(USERS))
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_restricted_users_sliced_purge_of_own_tags_matches_the_model(servers, seed, user):
    """A purge of tags carried only by the user's own keys runs as the
    model says, while the user (same pipeline, own keys only) and an admin
    (any keys: writes, tags and renames keys of others) interleave."""
    rng, master, replica, admin, eve, model = restricted_setup(servers, seed, user)
    purged = rng.sample(TAGS[1:], rng.choice([1, 2]))
    rnd = Round(seed, 0, rng.choice(MODES), label=f"user={user} purger=eve")
    run_round(rnd, rng, master, replica, model, eve, purged,
              lambda k: k.startswith("u:") or k.startswith("tag:"), ["u:", "other:"])
    stop_pair(master, replica)
