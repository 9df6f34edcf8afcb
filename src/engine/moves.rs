//! Slots moving between the masters of a cluster. Whatever the server's
//! signal (a `MIGRATE`/`RESTORE-ASKING` resharding ending with `CLUSTER
//! SETSLOT … NODE`, Valkey's atomic slot migration, Redis's), the module
//! learns one of two things about a set of slots: its keys arrived here
//! (rebuild what the module keeps in memory for them from the data that
//! came: their index sets and stale hashes are keys of the same slots, so
//! they moved with them), or they left (forget what the module kept for
//! them). While an atomic migration imports slots, their keys arrive as
//! plain writes in any order, which are not a client's and untag nothing:
//! the module leaves them alone until the import ends. Plain Rust,
//! unit-tested without a server.

use super::slot;

pub const SLOTS: usize = 16384;

/// A set of cluster slots.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotSet {
    bits: Box<[u64; SLOTS / 64]>,
}

impl Default for SlotSet {
    fn default() -> SlotSet {
        SlotSet {
            bits: Box::new([0; SLOTS / 64]),
        }
    }
}

impl std::fmt::Debug for SlotSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl SlotSet {
    /// The slots `start..=end`; nothing of a range outside 0..16383 or
    /// backwards (a server's data is checked, never trusted to index).
    pub fn add_range(&mut self, start: i64, end: i64) {
        if start < 0 || end < start || end >= SLOTS as i64 {
            return;
        }
        // Whole words at a time: `CLUSTER NODES` gives a master's slots as
        // ranges of thousands, read again every turn of the event loop
        // while a resharding runs.
        let (Ok(a), Ok(b)) = (usize::try_from(start), usize::try_from(end)) else {
            return;
        };
        let mut s = a;
        while s <= b {
            let (w, bit) = (s / 64, s % 64);
            let n = (64 - bit).min(b - s + 1);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            if let Some(word) = self.bits.get_mut(w) {
                *word |= mask;
            }
            s += n;
        }
    }

    pub fn add(&mut self, s: u16) {
        if let Some(w) = self.bits.get_mut(usize::from(s / 64)) {
            *w |= 1 << (s % 64);
        }
    }

    pub fn remove(&mut self, s: u16) {
        if let Some(w) = self.bits.get_mut(usize::from(s / 64)) {
            *w &= !(1 << (s % 64));
        }
    }

    pub fn contains(&self, s: u16) -> bool {
        self.bits
            .get(usize::from(s / 64))
            .is_some_and(|w| w & (1 << (s % 64)) != 0)
    }

    /// Whether the slot of `key` is in the set.
    pub fn holds(&self, key: &[u8]) -> bool {
        self.contains(slot::slot(key))
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }

    /// The slots in the set, in order: empty words skipped whole (a
    /// resharding signals one slot at a time).
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.bits.iter().enumerate().flat_map(|(w, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros();
                rest &= rest - 1;
                u16::try_from(w * 64 + bit as usize).ok()
            })
        })
    }

    fn insert_all(&mut self, other: &SlotSet) {
        for (a, b) in self.bits.iter_mut().zip(other.bits.iter()) {
            *a |= b;
        }
    }

    fn remove_all(&mut self, other: &SlotSet) {
        for (a, b) in self.bits.iter_mut().zip(other.bits.iter()) {
            *a &= !b;
        }
    }
}

/// What the server says about some slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// An atomic migration started importing them here.
    ImportStarted,
    /// It failed: the server drops what had arrived.
    ImportFailed,
    /// They are this node's now, with their keys.
    ImportCompleted,
    /// An atomic migration started exporting them from here (this node
    /// serves them until it ends).
    ExportStarted,
    ExportFailed,
    /// They belong to another node now: their keys here go (trimmed by
    /// the server, without an event per key).
    ExportCompleted,
    /// The server trimmed their keys here (a slot left, or a failed
    /// import).
    Trimmed,
    /// A `MIGRATE` resharding gave them to this node (`CLUSTER SETSLOT …
    /// NODE`): what arrived by `RESTORE-ASKING` is read again.
    Assigned,
}

/// What the module does about it.
#[derive(Debug, PartialEq, Eq)]
pub enum Then {
    Nothing,
    /// Rebuild the in-memory state of these slots from their data.
    Arrived(SlotSet),
    /// Forget the in-memory state of these slots.
    Left(SlotSet),
}

/// The atomic migrations in progress on this node.
#[derive(Default)]
pub struct Moves {
    importing: SlotSet,
    exporting: SlotSet,
    /// Whether `importing` has a slot (asked on every keyspace event).
    any_import: bool,
}

impl Moves {
    pub fn on(&mut self, signal: Signal, slots: &SlotSet) -> Then {
        let then = self.apply(signal, slots);
        self.any_import = !self.importing.is_empty();
        then
    }

    fn apply(&mut self, signal: Signal, slots: &SlotSet) -> Then {
        match signal {
            Signal::ImportStarted => {
                self.importing.insert_all(slots);
                Then::Nothing
            }
            Signal::ImportFailed => {
                self.importing.remove_all(slots);
                Then::Left(slots.clone())
            }
            Signal::ImportCompleted => {
                self.importing.remove_all(slots);
                Then::Arrived(slots.clone())
            }
            Signal::Assigned => Then::Arrived(slots.clone()),
            Signal::ExportStarted => {
                self.exporting.insert_all(slots);
                Then::Nothing
            }
            Signal::ExportFailed => {
                self.exporting.remove_all(slots);
                Then::Nothing
            }
            Signal::ExportCompleted | Signal::Trimmed => {
                self.exporting.remove_all(slots);
                Then::Left(slots.clone())
            }
        }
    }

    /// Whether writes to `key` now are an import's, not a client's.
    pub fn importing(&self, key: &[u8]) -> bool {
        self.any_import && self.importing.holds(key)
    }

    /// Whether slots of this node are moving (a purge then waits: their
    /// keys are on two nodes).
    pub fn active(&self) -> bool {
        !self.importing.is_empty() || !self.exporting.is_empty()
    }
}

/// Valkey 9.0+: the server event `AtomicSlotMigration` (id 19).
pub const VALKEY_EVENT: u64 = 19;

/// The signal of a subevent of Valkey's atomic slot migration event.
pub fn valkey_signal(sub: u64) -> Option<Signal> {
    Some(match sub {
        0 => Signal::ImportStarted,
        1 => Signal::ExportStarted,
        2 => Signal::ImportFailed,
        3 => Signal::ExportFailed,
        4 => Signal::ImportCompleted,
        5 => Signal::ExportCompleted,
        _ => return None,
    })
}

/// Redis 8.4+: the server events `ClusterSlotMigration` (id 18) and
/// `ClusterSlotMigrationTrim` (id 19).
pub const REDIS_EVENT: u64 = 18;
pub const REDIS_TRIM_EVENT: u64 = 19;

/// The signal of a subevent of Redis's slot migration events.
pub fn redis_signal(event: u64, sub: u64) -> Option<Signal> {
    Some(match (event, sub) {
        (REDIS_EVENT, 0) => Signal::ImportStarted,
        (REDIS_EVENT, 1) => Signal::ImportFailed,
        (REDIS_EVENT, 2) => Signal::ImportCompleted,
        (REDIS_EVENT, 3) => Signal::ExportStarted,
        (REDIS_EVENT, 4) => Signal::ExportFailed,
        (REDIS_EVENT, 5) => Signal::ExportCompleted,
        // Trimming started, ended, or went on in the background: either
        // way the keys of those slots are not this node's.
        (REDIS_TRIM_EVENT, 0..=2) => Signal::Trimmed,
        _ => return None,
    })
}

/// The state a `CLUSTER SETSLOT <slot> <state>` asks for here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    Migrating,
    Importing,
    /// `STABLE`, or `NODE` (which ends either state).
    Settled,
}

impl Asked {
    pub fn parse(state: &[u8]) -> Option<Asked> {
        let is = |w: &[u8]| state.eq_ignore_ascii_case(w);
        if is(b"migrating") {
            Some(Asked::Migrating)
        } else if is(b"importing") {
            Some(Asked::Importing)
        } else if is(b"stable") || is(b"node") {
            Some(Asked::Settled)
        } else {
            None
        }
    }
}

/// This node's slots as its own line of `CLUSTER NODES` gives them.
#[derive(Default, Debug)]
pub struct Myself {
    pub owned: SlotSet,
    /// `[slot->-node]`: leaving by `MIGRATE`.
    pub migrating: SlotSet,
    /// `[slot-<-node]`: arriving by `RESTORE-ASKING`.
    pub importing: SlotSet,
}

impl Myself {
    /// Whether the line shows `slot` in the state a `SETSLOT` asked for.
    pub fn shows(&self, slot: u16, asked: Asked) -> bool {
        let (out, into) = (self.migrating.contains(slot), self.importing.contains(slot));
        match asked {
            Asked::Migrating => out,
            Asked::Importing => into,
            Asked::Settled => !out && !into,
        }
    }

    /// The line flagged `myself` of a `CLUSTER NODES` reply; fields 9 on
    /// are slots (`a`, `a-b`, `[a->-id]`, `[a-<-id]`).
    pub fn parse(nodes: &[u8]) -> Option<Myself> {
        let text = String::from_utf8_lossy(nodes);
        let line = text.lines().find(|l| {
            l.split(' ')
                .nth(2)
                .is_some_and(|f| f.split(',').any(|x| x == "myself"))
        })?;
        let mut me = Myself::default();
        for field in line.split(' ').skip(8) {
            let num = |t: &str| t.parse::<i64>().ok();
            if let Some(inner) = field.strip_prefix('[') {
                let (set, slot) = match (inner.split_once("->-"), inner.split_once("-<-")) {
                    (Some((s, _)), _) => (&mut me.migrating, s),
                    (_, Some((s, _))) => (&mut me.importing, s),
                    _ => continue,
                };
                if let Some(s) = num(slot) {
                    set.add_range(s, s);
                }
            } else if let Some((a, b)) = field.split_once('-') {
                if let (Some(a), Some(b)) = (num(a), num(b)) {
                    me.owned.add_range(a, b);
                }
            } else if let Some(s) = num(field) {
                me.owned.add_range(s, s);
            }
        }
        Some(me)
    }

    /// Whether a slot of this node is on the move by `MIGRATE`.
    pub fn moving(&self) -> bool {
        !self.migrating.is_empty() || !self.importing.is_empty()
    }
}

// Unit tests only: compiled out of the module (`cfg(test)`), they never
// see client input or keyspace data, so `unwrap` here is a test assertion.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn its_own_line_of_cluster_nodes_gives_this_nodes_slots() {
        let text = b"aaa 127.0.0.1:7001@17001 master - 0 1 2 connected 5461-10922\n\
bbb 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5 7 9-10 [8->-aaa] [11-<-ccc]\n";
        let me = Myself::parse(text).unwrap();
        assert_eq!(
            me.owned.iter().collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5, 7, 9, 10]
        );
        assert_eq!(me.migrating.iter().collect::<Vec<_>>(), vec![8]);
        assert_eq!(me.importing.iter().collect::<Vec<_>>(), vec![11]);
        assert!(me.moving());
        assert!(Myself::parse(b"aaa 1:1@1 master - 0 0 1 connected 0-10\n").is_none());
        let quiet =
            Myself::parse(b"a b myself,master - 0 0 1 connected 0-16383 junk 9-x\n").unwrap();
        assert!(!quiet.moving());
        assert!(quiet.owned.contains(16383));
    }

    #[test]
    fn a_setslot_is_seen_to_have_run_once_the_line_shows_its_state() {
        let text =
            b"bbb 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-10 [8->-aaa] [11-<-ccc]\n";
        let me = Myself::parse(text).unwrap();
        let asked = |w: &[u8]| Asked::parse(w).unwrap();
        assert!(me.shows(8, asked(b"MIGRATING")) && !me.shows(8, asked(b"importing")));
        assert!(me.shows(11, asked(b"Importing")) && !me.shows(11, asked(b"stable")));
        assert!(me.shows(3, asked(b"STABLE")) && me.shows(3, asked(b"node")));
        assert!(!me.shows(3, asked(b"migrating")) && !me.shows(8, asked(b"NODE")));
        assert_eq!(Asked::parse(b"bogus"), None);
        assert_eq!(Asked::parse(b""), None);
    }

    fn slots(ranges: &[(i64, i64)]) -> SlotSet {
        let mut s = SlotSet::default();
        for &(a, b) in ranges {
            s.add_range(a, b);
        }
        s
    }

    #[test]
    fn slot_sets_take_only_real_ranges() {
        let s = slots(&[(0, 2), (16383, 16383), (10, 5), (-1, 3), (16380, 16384)]);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 1, 2, 16383]);
        assert!(SlotSet::default().is_empty());
        let k = b"product:42";
        assert!(slots(&[(0, 16383)]).holds(k));
        assert!(!slots(&[(0, 0)]).holds(b"x") || slot::slot(b"x") == 0);
    }

    #[test]
    fn a_slot_removed_leaves_the_others() {
        let mut s = slots(&[(0, 2), (64, 64), (16383, 16383)]);
        s.remove(1);
        s.remove(64);
        s.remove(100);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 2, 16383]);
        s.remove(0);
        s.remove(2);
        s.remove(16383);
        assert!(s.is_empty());
    }

    #[test]
    fn ranges_set_exactly_their_slots() {
        for (a, b) in [
            (0, 0),
            (0, 63),
            (0, 64),
            (5, 200),
            (63, 64),
            (100, 16383),
            (16383, 16383),
        ] {
            let s = slots(&[(a, b)]);
            let want: Vec<u16> = (a as u16..=b as u16).collect();
            assert_eq!(s.iter().collect::<Vec<_>>(), want, "{a}-{b}");
        }
    }

    #[test]
    fn an_import_is_quiet_until_it_ends_then_its_slots_are_read() {
        let mut m = Moves::default();
        let s = slots(&[(100, 199)]);
        let key = [b"{".as_slice(), slot::name_in(150), b"}k"].concat();
        let other = [b"{".as_slice(), slot::name_in(300), b"}k"].concat();
        assert_eq!(m.on(Signal::ImportStarted, &s), Then::Nothing);
        assert!(m.importing(&key) && !m.importing(&other));
        assert!(m.active());
        assert_eq!(m.on(Signal::ImportCompleted, &s), Then::Arrived(s.clone()));
        assert!(!m.importing(&key) && !m.active());
    }

    #[test]
    fn a_failed_import_forgets_and_an_export_leaves_at_its_end() {
        let mut m = Moves::default();
        let s = slots(&[(5, 9)]);
        m.on(Signal::ImportStarted, &s);
        assert_eq!(m.on(Signal::ImportFailed, &s), Then::Left(s.clone()));
        assert!(!m.active());
        assert_eq!(m.on(Signal::ExportStarted, &s), Then::Nothing);
        assert!(m.active(), "a purge waits while slots leave");
        assert!(
            !m.importing(b"k"),
            "an export's keys are still the clients'"
        );
        assert_eq!(m.on(Signal::ExportFailed, &s), Then::Nothing);
        assert!(!m.active());
        m.on(Signal::ExportStarted, &s);
        assert_eq!(m.on(Signal::ExportCompleted, &s), Then::Left(s.clone()));
        assert_eq!(m.on(Signal::Trimmed, &s), Then::Left(s.clone()));
        assert!(!m.active());
    }

    #[test]
    fn both_servers_events_map_to_the_same_signals() {
        use Signal::*;
        let valkey: Vec<_> = (0..7).map(valkey_signal).collect();
        assert_eq!(
            valkey,
            vec![
                Some(ImportStarted),
                Some(ExportStarted),
                Some(ImportFailed),
                Some(ExportFailed),
                Some(ImportCompleted),
                Some(ExportCompleted),
                None
            ]
        );
        let redis: Vec<_> = (0..8).map(|s| redis_signal(REDIS_EVENT, s)).collect();
        assert_eq!(
            redis,
            vec![
                Some(ImportStarted),
                Some(ImportFailed),
                Some(ImportCompleted),
                Some(ExportStarted),
                Some(ExportFailed),
                Some(ExportCompleted),
                None, // a module's propagation hook: nothing moves
                None
            ]
        );
        for sub in 0..3 {
            assert_eq!(redis_signal(REDIS_TRIM_EVENT, sub), Some(Trimmed));
        }
        assert_eq!(redis_signal(REDIS_TRIM_EVENT, 3), None);
        assert_eq!(redis_signal(7, 0), None);
    }

    #[test]
    fn a_resharding_by_migrate_ends_with_its_slots_read_again() {
        let mut m = Moves::default();
        let s = slots(&[(42, 42)]);
        assert_eq!(m.on(Signal::Assigned, &s), Then::Arrived(s.clone()));
        assert!(!m.active());
    }
}
