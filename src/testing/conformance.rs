//! A conformance suite for [`LogStore`] implementations.
//!
//! Each `check_*` function takes a fresh, empty store, exercises one obligation of the
//! [`LogStore`] contract (and of `raft::Storage` as raft-rs 0.7 relies on it), and panics
//! with a message naming the obligation if the store breaks it. [`run_all`] runs every
//! check. The checks only make writes the driver could make: contiguous appends, snapshots
//! of entries the log holds, compaction up to the stored snapshot.
//!
//! For a store on disk, `new_store` opens a store in a new empty directory, and `reopen`
//! drops the store and opens the same directory again, as a restarted process would.
//!
//! # Examples
//!
//! ```
//! use raftnode::testing::conformance;
//! use raftnode::MemLogStore;
//!
//! // A MemLogStore is not durable; "reopening" it is keeping the same handle.
//! conformance::run_all(MemLogStore::new, |store| store);
//! ```

use std::fmt;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, NO_LIMIT};

use crate::log_store::LogStore;

/// Runs every conformance check against stores made by `new_store`.
///
/// `reopen` simulates a restart: given a store that was synced, it returns the store as a
/// fresh process would open it (for [`crate::MemLogStore`]: the same handle; for a durable
/// store: drop it and open it again from disk).
///
/// # Panics
///
/// When a store breaks an obligation; the message names the check and the obligation.
pub fn run_all<S: LogStore, F: FnMut() -> S, R: FnMut(S) -> S>(mut new_store: F, mut reopen: R) {
    check_fresh_store(new_store());
    check_append_truncates_conflicting_suffix(new_store());
    check_append_rejects_hole(new_store());
    check_entries_max_size(new_store());
    check_entries_bounds(new_store());
    check_term_bounds(new_store());
    check_compact(new_store());
    check_compact_past_snapshot_rejected(new_store());
    check_apply_snapshot_replaces_log(new_store());
    check_apply_snapshot_rejects_stale(new_store());
    check_store_snapshot_keeps_log(new_store());
    check_snapshot_unavailable_when_none(new_store());
    check_hard_state_and_conf_state_roundtrip(new_store());
    check_restart_equivalence(new_store(), &mut reopen);
}

/// Checks what a new, empty store reports: `first_index()` 1, `last_index()` 0,
/// `term(0)` 0 (raft reads the term of the entry before the first one), a default
/// HardState and ConfState, no entries, no snapshot, and `compact(1)` is a no-op.
///
/// # Panics
///
/// When the store breaks one of these; also when `store` is not empty.
pub fn check_fresh_store<S: LogStore>(mut store: S) {
    let c = Check::new("check_fresh_store", &store);
    let (hard_state, conf_state) = c.initial_state(&store);
    c.eq(
        "a fresh store's HardState",
        hard_state,
        HardState::default(),
    );
    c.eq(
        "a fresh store's ConfState",
        conf_state,
        ConfState::default(),
    );
    c.eq(
        "entries(1, 1) on a fresh store",
        c.entries(&store, 1, 1, None),
        Ok(vec![]),
    );
    c.eq(
        "snapshot() on a fresh store",
        store.snapshot(0, 1).map(|s| meta(&s)),
        Err(snapshot_unavailable()),
    );
    c.ok("compact(1) at bootstrap (a no-op)", store.compact(1));
    c.eq("first_index() after compact(1)", c.first_index(&store), 1);
    c.ok("sync()", store.sync());
    c.eq("last_index() after sync()", c.last_index(&store), 0);
}

/// Checks that `append` drops every stored entry at or after the first new index, and
/// that appended entries read back exactly (index, term, type, data, context).
///
/// # Panics
///
/// When the store breaks one of these; also when `store` is not empty.
pub fn check_append_truncates_conflicting_suffix<S: LogStore>(mut store: S) {
    let c = Check::new("check_append_truncates_conflicting_suffix", &store);
    let mut log = entries(1..=5, 1);
    log[3].term = 2;
    log[4].term = 2;
    c.ok("append(1..=5)", store.append(&log));
    c.expect_log(&store, "after append(1..=5)", &log);

    let overwrite = entries(3..=4, 3);
    c.ok("append(3..=4) over 1..=5", store.append(&overwrite));
    log.truncate(2);
    log.extend(overwrite);
    c.expect_log(
        &store,
        "after append(3..=4) over 1..=5 (entry 5 must be dropped)",
        &log,
    );
    c.eq(
        "term(5) after the suffix 3..=5 was replaced by 3..=4",
        store.term(5),
        Err(unavailable()),
    );

    let extend = entries(5..=6, 3);
    c.ok("append(5..=6) at last_index + 1", store.append(&extend));
    log.extend(extend);
    c.expect_log(&store, "after append(5..=6) at last_index + 1", &log);

    let single = entries(2..=2, 4);
    c.ok("append([2]) over 1..=6", store.append(&single));
    log.truncate(1);
    log.extend(single);
    c.expect_log(
        &store,
        "after append([2]) over 1..=6 (entries 3..=6 must be dropped)",
        &log,
    );

    c.ok("append([]) (a no-op)", store.append(&[]));
    c.expect_log(&store, "after append([])", &log);

    let whole = entries(1..=1, 5);
    c.ok("append([1]) at first_index", store.append(&whole));
    c.expect_log(
        &store,
        "after append([1]) at first_index (the whole log is replaced)",
        &whole,
    );
}

/// Checks that `append` refuses entries that start past `last_index() + 1` (a hole) and
/// leaves the log as it was.
///
/// # Panics
///
/// When the store breaks one of these; also when `store` is not empty.
pub fn check_append_rejects_hole<S: LogStore>(mut store: S) {
    let c = Check::new("check_append_rejects_hole", &store);
    c.err(
        "append([2]) on an empty log (hole at 1)",
        store.append(&entries(2..=2, 1)),
    );
    c.eq(
        "last_index() after a rejected append",
        c.last_index(&store),
        0,
    );

    let log = entries(1..=3, 1);
    c.ok("append(1..=3)", store.append(&log));
    c.err(
        "append([5]) after last index 3 (hole at 4)",
        store.append(&entries(5..=6, 1)),
    );
    c.expect_log(
        &store,
        "after a rejected append (the log must be unchanged)",
        &log,
    );
}

/// Checks that `entries(low, high, max_size)` honours `max_size` as raft-rs's
/// `limit_size` does: at least one entry; more only while the total encoded size
/// (`protobuf::Message::compute_size`) stays within `max_size`; all of them when they fit
/// or when `max_size` is `None` or `NO_LIMIT`. The result is always a prefix of the range.
///
/// # Panics
///
/// When the store breaks one of these; also when `store` is not empty.
pub fn check_entries_max_size<S: LogStore>(mut store: S) {
    let c = Check::new("check_entries_max_size", &store);
    let log: Vec<Entry> = (1..=8)
        .map(|index| {
            let mut entry = entry(index, 1);
            entry.data = vec![b'd'; 10 * index as usize].into();
            entry
        })
        .collect();
    c.ok("append(1..=8)", store.append(&log));
    c.expect_log(&store, "after append(1..=8)", &log);
    c.eq(
        "entries(1, 9, NO_LIMIT)",
        c.entries(&store, 1, 9, Some(NO_LIMIT)),
        Ok(log.clone()),
    );

    for low in [1u64, 3] {
        let range = &log[(low - 1) as usize..];
        let sizes: Vec<u64> = range.iter().map(encoded_size).collect();
        let total: u64 = sizes.iter().sum();
        let mut budgets = vec![0, 1, total - 1, total, total + 1];
        let mut running = 0;
        for size in &sizes {
            running += size;
            budgets.extend([running - 1, running, running + 1]);
        }
        for max in budgets {
            let what = format!("entries({low}, 9, Some({max}))");
            let got = match c.entries(&store, low, 9, Some(max)) {
                Ok(got) => got,
                Err(e) => c.fail(format_args!("{what} must succeed, got Err({e:?})")),
            };
            if got.is_empty() {
                c.fail(format_args!("{what} must return at least one entry"));
            }
            if got[..] != range[..got.len()] {
                c.fail(format_args!(
                    "{what} must return a prefix of entries {low}..9, got indexes {:?}",
                    indexes(&got)
                ));
            }
            let got_size: u64 = got.iter().map(encoded_size).sum();
            if got.len() > 1 && got_size > max {
                c.fail(format_args!(
                    "{what} returned {} entries of {got_size} bytes, over max_size",
                    got.len()
                ));
            }
            if total <= max && got.len() != range.len() {
                c.fail(format_args!(
                    "{what} must return all {} entries ({total} bytes fit), got {}",
                    range.len(),
                    got.len()
                ));
            }
        }
    }
}

/// Checks `entries` at the edges of the log: `low < first_index()` is exactly
/// `Compacted` (raft then sends a snapshot); `high > last_index() + 1` is an error (raft
/// never asks, but a store must not make entries up; raftnode's stores return
/// `Unavailable`); empty ranges at either end are `Ok(vec![])`.
///
/// # Panics
///
/// When the store breaks one of these; also when `store` is not empty.
pub fn check_entries_bounds<S: LogStore>(mut store: S) {
    let c = Check::new("check_entries_bounds", &store);
    let log = entries(1..=5, 1);
    c.ok("append(1..=5)", store.append(&log));
    c.ok(
        "store_snapshot(index 3)",
        store.store_snapshot(snapshot(3, 1, b"3")),
    );
    c.ok("compact(3)", store.compact(3));
    c.eq("first_index() after compact(3)", c.first_index(&store), 3);

    c.eq(
        "entries(2, 4) with first_index 3",
        c.entries(&store, 2, 4, None),
        Err(compacted()),
    );
    c.eq(
        "entries(1, 6) with first_index 3",
        c.entries(&store, 1, 6, None),
        Err(compacted()),
    );
    c.eq(
        "entries(3, 6)",
        c.entries(&store, 3, 6, None),
        Ok(log[2..].to_vec()),
    );
    c.eq(
        "entries(4, 5)",
        c.entries(&store, 4, 5, None),
        Ok(log[3..4].to_vec()),
    );
    c.eq("entries(3, 3)", c.entries(&store, 3, 3, None), Ok(vec![]));
    c.eq("entries(6, 6)", c.entries(&store, 6, 6, None), Ok(vec![]));
    for (low, high) in [(3, 7), (6, 7), (5, 10)] {
        if let Ok(got) = c.entries(&store, low, high, None) {
            c.fail(format_args!(
                "entries({low}, {high}) with last_index 5 must be an error, got Ok with \
                 indexes {:?}",
                indexes(&got)
            ));
        }
    }
}

/// Checks `term`: exact for every index in `first_index() - 1 ..= last_index()`
/// (including the entry before the first one, after compaction); exactly `Compacted`
/// below that and exactly `Unavailable` above (raft-rs treats any other error as fatal).
///
/// # Panics
///
/// When the store breaks one of these; also when `store` is not empty.
pub fn check_term_bounds<S: LogStore>(mut store: S) {
    let c = Check::new("check_term_bounds", &store);
    c.eq("term(0) on a fresh store", store.term(0), Ok(0));
    c.eq(
        "term(1) on a fresh store",
        store.term(1),
        Err(unavailable()),
    );

    let terms = [1, 1, 2, 2, 3, 3];
    let log: Vec<Entry> = (1u64..).zip(terms).map(|(i, t)| entry(i, t)).collect();
    c.ok("append(1..=6)", store.append(&log));
    c.eq("term(0) with first_index 1", store.term(0), Ok(0));
    for e in &log {
        c.eq(
            &format!("term({})", e.index),
            store.term(e.index),
            Ok(e.term),
        );
    }
    c.eq(
        "term(7) with last_index 6",
        store.term(7),
        Err(unavailable()),
    );

    c.ok(
        "store_snapshot(index 4)",
        store.store_snapshot(snapshot(4, 2, b"4")),
    );
    c.ok("compact(4)", store.compact(4));
    c.eq(
        "term(3) (first_index - 1) after compact(4)",
        store.term(3),
        Ok(2),
    );
    for index in [0, 1, 2] {
        c.eq(
            &format!("term({index}) after compact(4)"),
            store.term(index),
            Err(compacted()),
        );
    }
    c.eq("term(6) after compact(4)", store.term(6), Ok(3));

    c.ok(
        "store_snapshot(index 6)",
        store.store_snapshot(snapshot(6, 3, b"6")),
    );
    c.ok("compact(7) (last_index + 1)", store.compact(7));
    c.eq("first_index() after compact(7)", c.first_index(&store), 7);
    c.eq("last_index() after compact(7)", c.last_index(&store), 6);
    c.eq(
        "term(6) (first_index - 1) after compacting every entry",
        store.term(6),
        Ok(3),
    );
    c.eq("term(5) after compact(7)", store.term(5), Err(compacted()));
    c.eq(
        "term(7) after compact(7)",
        store.term(7),
        Err(unavailable()),
    );
}

/// Checks `compact`: it drops exactly the entries before `compact_index`, keeps
/// `term(compact_index - 1)`, is a no-op at or below `first_index()` (including
/// `compact(1)` at bootstrap), refuses `compact_index > last_index() + 1`, and the log
/// keeps growing from `last_index()` afterwards.
///
/// # Panics
///
/// When the store breaks one of these; also when `store` is not empty.
pub fn check_compact<S: LogStore>(mut store: S) {
    let c = Check::new("check_compact", &store);
    c.ok("compact(0) on a fresh store (a no-op)", store.compact(0));
    c.ok("compact(1) on a fresh store (a no-op)", store.compact(1));
    c.eq("first_index() after compact(1)", c.first_index(&store), 1);

    let mut log = entries(1..=5, 1);
    log.extend(entries(6..=10, 2));
    c.ok("append(1..=10)", store.append(&log));
    c.ok(
        "store_snapshot(index 10)",
        store.store_snapshot(snapshot(10, 2, b"10")),
    );

    c.ok("compact(4)", store.compact(4));
    c.eq("first_index() after compact(4)", c.first_index(&store), 4);
    c.expect_log(&store, "after compact(4)", &log[3..]);
    c.eq("term(3) after compact(4)", store.term(3), Ok(1));

    for no_op in [2, 4] {
        c.ok(
            &format!("compact({no_op}) with first_index 4 (a no-op)"),
            store.compact(no_op),
        );
        c.expect_log(&store, &format!("after compact({no_op})"), &log[3..]);
    }

    c.err("compact(12) with last_index 10", store.compact(12));
    c.expect_log(&store, "after a rejected compact(12)", &log[3..]);

    c.ok("compact(11) (last_index + 1)", store.compact(11));
    c.eq("first_index() after compact(11)", c.first_index(&store), 11);
    c.eq("last_index() after compact(11)", c.last_index(&store), 10);
    c.eq("term(10) after compact(11)", store.term(10), Ok(2));
    c.eq(
        "entries(11, 11) after compact(11)",
        c.entries(&store, 11, 11, None),
        Ok(vec![]),
    );

    let more = entries(11..=12, 2);
    c.ok(
        "append(11..=12) after compacting every entry",
        store.append(&more),
    );
    c.expect_log(&store, "after append(11..=12)", &more);
}

/// Checks that `compact` refuses to drop entries the stored snapshot does not cover
/// (`compact_index - 1 > snapshot index`), and leaves the log as it was.
///
/// # Panics
///
/// When the store breaks one of these; also when `store` is not empty.
pub fn check_compact_past_snapshot_rejected<S: LogStore>(mut store: S) {
    let c = Check::new("check_compact_past_snapshot_rejected", &store);
    let log = entries(1..=10, 1);
    c.ok("append(1..=10)", store.append(&log));
    c.err("compact(2) with no snapshot stored", store.compact(2));
    c.expect_log(&store, "after a rejected compact(2)", &log);

    c.ok(
        "store_snapshot(index 5)",
        store.store_snapshot(snapshot(5, 1, b"5")),
    );
    c.err("compact(7) with the snapshot at 5", store.compact(7));
    c.expect_log(&store, "after a rejected compact(7)", &log);

    c.ok("compact(6) with the snapshot at 5", store.compact(6));
    c.expect_log(&store, "after compact(6)", &log[5..]);
    c.eq("term(5) after compact(6)", store.term(5), Ok(1));
}

/// Checks `apply_snapshot`: afterwards every entry is gone, `first_index()` is
/// `index + 1`, `last_index()` is `index`, `term(index)` is the snapshot's term, the
/// ConfState is the snapshot's, the HardState's commit and term are at least the
/// snapshot's index and term, and `snapshot()` returns it with its data. Covers a
/// snapshot past the log and one inside it.
///
/// # Panics
///
/// When the store breaks one of these; also when `store` is not empty.
pub fn check_apply_snapshot_replaces_log<S: LogStore>(mut store: S) {
    let c = Check::new("check_apply_snapshot_replaces_log", &store);
    c.ok("append(1..=5)", store.append(&entries(1..=5, 1)));
    c.ok("set_hard_state", store.set_hard_state(&hard_state(1, 1, 3)));
    c.ok("set_conf_state", store.set_conf_state(&voters(&[1])));

    let past = snapshot(10, 3, b"state at 10");
    c.ok(
        "apply_snapshot(index 10) past the log",
        store.apply_snapshot(past.clone()),
    );
    c.expect_snapshot_installed(&store, "after apply_snapshot(index 10)", &past);

    let after = entries(11..=20, 3);
    c.ok("append(11..=20) after apply_snapshot", store.append(&after));
    c.expect_log(&store, "after append(11..=20)", &after);

    let mut inside = snapshot(15, 4, b"state at 15");
    inside.mut_metadata().set_conf_state(voters(&[1, 2, 4]));
    c.ok(
        "apply_snapshot(index 15) inside the log 11..=20",
        store.apply_snapshot(inside.clone()),
    );
    c.expect_snapshot_installed(&store, "after apply_snapshot(index 15)", &inside);
}

/// Checks that `apply_snapshot` refuses a snapshot older than the stored one (raft-rs's
/// `SnapshotOutOfDate`) and leaves the store as it was.
///
/// # Panics
///
/// When the store breaks one of these; also when `store` is not empty.
pub fn check_apply_snapshot_rejects_stale<S: LogStore>(mut store: S) {
    let c = Check::new("check_apply_snapshot_rejects_stale", &store);
    let log = entries(1..=10, 2);
    c.ok("append(1..=10)", store.append(&log));
    let stored = snapshot(6, 2, b"6");
    c.ok(
        "store_snapshot(index 6)",
        store.store_snapshot(stored.clone()),
    );
    c.err(
        "apply_snapshot(index 4) with the snapshot at 6",
        store.apply_snapshot(snapshot(4, 2, b"4")),
    );
    c.expect_log(&store, "after a rejected apply_snapshot", &log);
    c.eq(
        "snapshot() after a rejected apply_snapshot",
        store.snapshot(0, 1),
        Ok(stored),
    );
}

/// Checks `store_snapshot`: the log, HardState and ConfState are unchanged; `snapshot()`
/// returns the newest stored snapshot with its data; an older snapshot is refused.
///
/// # Panics
///
/// When the store breaks one of these; also when `store` is not empty.
pub fn check_store_snapshot_keeps_log<S: LogStore>(mut store: S) {
    let c = Check::new("check_store_snapshot_keeps_log", &store);
    let mut log = entries(1..=4, 1);
    log.extend(entries(5..=10, 2));
    c.ok("append(1..=10)", store.append(&log));
    let hs = hard_state(2, 1, 8);
    let cs = voters(&[1, 2, 3]);
    c.ok("set_hard_state", store.set_hard_state(&hs));
    c.ok("set_conf_state", store.set_conf_state(&cs));

    let six = snapshot(6, 2, b"state at 6");
    c.ok("store_snapshot(index 6)", store.store_snapshot(six.clone()));
    c.expect_log(&store, "after store_snapshot(index 6)", &log);
    c.eq(
        "initial_state() after store_snapshot",
        c.initial_state(&store),
        (hs.clone(), cs.clone()),
    );
    c.eq(
        "snapshot() after store_snapshot(index 6)",
        store.snapshot(0, 1),
        Ok(six.clone()),
    );

    let eight = snapshot(8, 2, b"state at 8");
    c.ok(
        "store_snapshot(index 8)",
        store.store_snapshot(eight.clone()),
    );
    c.eq(
        "snapshot() after store_snapshot(index 8)",
        store.snapshot(0, 1),
        Ok(eight.clone()),
    );

    c.err(
        "store_snapshot(index 6) with the snapshot at 8",
        store.store_snapshot(six),
    );
    c.eq(
        "snapshot() after a rejected older store_snapshot",
        store.snapshot(0, 1),
        Ok(eight),
    );
    c.expect_log(&store, "after a rejected store_snapshot", &log);
    c.eq(
        "initial_state() after a rejected store_snapshot",
        c.initial_state(&store),
        (hs, cs),
    );
}

/// Checks that `snapshot()` is exactly `SnapshotTemporarilyUnavailable` until a snapshot
/// is stored (never an index-0 or made-up snapshot: raft-rs panics on those), and that
/// it never returns a snapshot older than `request_index`.
///
/// # Panics
///
/// When the store breaks one of these; also when `store` is not empty.
pub fn check_snapshot_unavailable_when_none<S: LogStore>(mut store: S) {
    let c = Check::new("check_snapshot_unavailable_when_none", &store);
    c.eq(
        "snapshot() on a fresh store",
        store.snapshot(0, 1).map(|s| meta(&s)),
        Err(snapshot_unavailable()),
    );
    c.ok("append(1..=3)", store.append(&entries(1..=3, 1)));
    c.ok("set_hard_state", store.set_hard_state(&hard_state(1, 1, 3)));
    c.ok("set_conf_state", store.set_conf_state(&voters(&[1])));
    c.ok("compact(1)", store.compact(1));
    c.eq(
        "snapshot() with entries and a commit index but no stored snapshot",
        store.snapshot(0, 1).map(|s| meta(&s)),
        Err(snapshot_unavailable()),
    );

    let two = snapshot(2, 1, b"2");
    c.ok("store_snapshot(index 2)", store.store_snapshot(two.clone()));
    c.eq("snapshot(0, 1)", store.snapshot(0, 1), Ok(two.clone()));
    c.eq("snapshot(2, 1)", store.snapshot(2, 1), Ok(two));
    match store.snapshot(3, 1) {
        Err(e) if e == snapshot_unavailable() => {}
        Ok(s) if meta(&s).0 >= 3 => {}
        other => c.fail(format_args!(
            "snapshot(request_index 3, ..) with the snapshot at 2 must be \
             SnapshotTemporarilyUnavailable or a snapshot at index >= 3, got {:?}",
            other.map(|s| meta(&s))
        )),
    }
}

/// Checks that `set_hard_state` and `set_conf_state` read back through
/// `initial_state()` (the newest write wins, joint configurations included) and do not
/// touch the log.
///
/// # Panics
///
/// When the store breaks one of these; also when `store` is not empty.
pub fn check_hard_state_and_conf_state_roundtrip<S: LogStore>(mut store: S) {
    let c = Check::new("check_hard_state_and_conf_state_roundtrip", &store);
    let log = entries(1..=3, 3);
    c.ok("append(1..=3)", store.append(&log));

    let first = hard_state(3, 2, 1);
    c.ok("set_hard_state", store.set_hard_state(&first));
    c.eq("HardState read back", c.initial_state(&store).0, first);
    let second = hard_state(4, 0, 2);
    c.ok("set_hard_state again", store.set_hard_state(&second));
    c.eq(
        "HardState read back after a second write",
        c.initial_state(&store).0,
        second.clone(),
    );

    let mut simple = voters(&[1, 2, 3]);
    simple.learners = vec![4];
    c.ok("set_conf_state", store.set_conf_state(&simple));
    c.eq("ConfState read back", c.initial_state(&store).1, simple);
    let joint = ConfState {
        voters: vec![1, 2, 4],
        voters_outgoing: vec![1, 2, 3],
        learners: vec![5],
        learners_next: vec![3],
        auto_leave: true,
        ..ConfState::default()
    };
    c.ok("set_conf_state (joint)", store.set_conf_state(&joint));
    c.eq(
        "joint ConfState read back",
        c.initial_state(&store),
        (second, joint),
    );
    c.expect_log(&store, "after set_hard_state and set_conf_state", &log);
}

/// Checks that a synced store reopens exactly as it was: after writes of every kind
/// (appends with a truncated suffix, HardState, ConfState, a stored snapshot and
/// compaction; then an applied snapshot; then more entries and a joint ConfState), a
/// `sync` and `reopen`, every `raft::Storage` read gives the same answer, and the
/// reopened store keeps appending where the log ends.
///
/// # Panics
///
/// When the store breaks one of these; also when `store` is not empty.
pub fn check_restart_equivalence<S: LogStore>(mut store: S, mut reopen: impl FnMut(S) -> S) {
    let c = Check::new("check_restart_equivalence", &store);

    let mut log: Vec<Entry> = (1..=12)
        .map(|index| entry(index, if index <= 6 { 1 } else { 2 }))
        .collect();
    log[4].context = "ctx".into();
    log[5].set_entry_type(raft::eraftpb::EntryType::EntryConfChangeV2);
    c.ok("append(1..=12)", store.append(&log));
    c.ok(
        "append(10..=11) over 1..=12",
        store.append(&entries(10..=11, 3)),
    );
    c.ok("set_hard_state", store.set_hard_state(&hard_state(3, 1, 9)));
    c.ok("set_conf_state", store.set_conf_state(&voters(&[1, 2, 3])));
    c.ok(
        "store_snapshot(index 7)",
        store.store_snapshot(snapshot(7, 2, b"state at 7")),
    );
    c.ok("compact(5)", store.compact(5));
    store = c.restart(
        store,
        &mut reopen,
        "entries, states, stored snapshot, compaction",
    );

    let next = entries(12..=12, 3);
    c.ok("append(12) after reopening", store.append(&next));
    c.eq(
        "entries(12, 13) after reopening and appending",
        c.entries(&store, 12, 13, None),
        Ok(next),
    );

    c.ok(
        "apply_snapshot(index 20)",
        store.apply_snapshot(snapshot(20, 4, b"state at 20")),
    );
    c.ok(
        "set_hard_state",
        store.set_hard_state(&hard_state(4, 0, 20)),
    );
    store = c.restart(store, &mut reopen, "applied snapshot");

    c.ok("append(21..=23)", store.append(&entries(21..=23, 4)));
    let joint = ConfState {
        voters: vec![1, 2, 4],
        voters_outgoing: vec![1, 2, 3],
        auto_leave: true,
        ..ConfState::default()
    };
    c.ok("set_conf_state (joint)", store.set_conf_state(&joint));
    c.ok(
        "set_hard_state",
        store.set_hard_state(&hard_state(5, 4, 22)),
    );
    drop(c.restart(
        store,
        &mut reopen,
        "entries after an applied snapshot, joint ConfState",
    ));
}

/// The name of the running check, to prefix every failure, plus read helpers.
struct Check {
    name: &'static str,
}

impl Check {
    /// Starts `name`, asserting that `store` is empty as the checks require.
    fn new<S: LogStore>(name: &'static str, store: &S) -> Self {
        let check = Check { name };
        let first = check.first_index(store);
        let last = check.last_index(store);
        if (first, last) != (1, 0) {
            check.fail(format_args!(
                "the store passed in must be new and empty (first_index 1, last_index 0), \
                 got first_index {first}, last_index {last}"
            ));
        }
        check
    }

    fn fail(&self, message: impl fmt::Display) -> ! {
        panic!("LogStore conformance: {}: {message}", self.name)
    }

    fn ok<E: fmt::Debug>(&self, what: &str, result: Result<(), E>) {
        if let Err(e) = result {
            self.fail(format_args!("{what} must succeed, got Err({e:?})"));
        }
    }

    fn err<E>(&self, what: &str, result: Result<(), E>) {
        if result.is_ok() {
            self.fail(format_args!("{what} must be refused with an Err, got Ok"));
        }
    }

    fn eq<T: PartialEq + fmt::Debug>(&self, what: &str, got: T, want: T) {
        if got != want {
            self.fail(format_args!("{what}: expected {want:?}, got {got:?}"));
        }
    }

    fn first_index<S: LogStore>(&self, store: &S) -> u64 {
        store
            .first_index()
            .unwrap_or_else(|e| self.fail(format_args!("first_index() must succeed, got {e:?}")))
    }

    fn last_index<S: LogStore>(&self, store: &S) -> u64 {
        store
            .last_index()
            .unwrap_or_else(|e| self.fail(format_args!("last_index() must succeed, got {e:?}")))
    }

    fn initial_state<S: LogStore>(&self, store: &S) -> (HardState, ConfState) {
        match store.initial_state() {
            Ok(state) => (state.hard_state, state.conf_state),
            Err(e) => self.fail(format_args!("initial_state() must succeed, got {e:?}")),
        }
    }

    fn entries<S: LogStore>(
        &self,
        store: &S,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> raft::Result<Vec<Entry>> {
        store.entries(low, high, max_size, GetEntriesContext::empty(false))
    }

    /// Asserts that the log is exactly `log`: first and last index, every entry, every
    /// term, and the term just before the first entry is answerable.
    fn expect_log<S: LogStore>(&self, store: &S, when: &str, log: &[Entry]) {
        let (Some(head), Some(tail)) = (log.first(), log.last()) else {
            unreachable!("expect_log needs a non-empty log")
        };
        let first = self.first_index(store);
        let last = self.last_index(store);
        if (first, last) != (head.index, tail.index) {
            self.fail(format_args!(
                "{when}: the log must be {}..={}, got first_index {first}, last_index {last}",
                head.index, tail.index
            ));
        }
        match self.entries(store, first, last + 1, None) {
            Ok(got) if got == log => {}
            Ok(got) => self.fail(format_args!(
                "{when}: entries({first}, {}) must read back what was written: expected \
                 {log:?}, got {got:?}",
                last + 1
            )),
            Err(e) => self.fail(format_args!(
                "{when}: entries({first}, {}) must succeed, got {e:?}",
                last + 1
            )),
        }
        for e in log {
            self.eq(
                &format!("{when}: term({})", e.index),
                store.term(e.index),
                Ok(e.term),
            );
        }
        if let Err(e) = store.term(first - 1) {
            self.fail(format_args!(
                "{when}: term(first_index - 1 = {}) must be answerable, got {e:?}",
                first - 1
            ));
        }
    }

    /// Asserts the state `apply_snapshot(snapshot)` must leave.
    fn expect_snapshot_installed<S: LogStore>(&self, store: &S, when: &str, snapshot: &Snapshot) {
        let (index, term) = meta(snapshot);
        self.eq(
            &format!("{when}: first_index()"),
            self.first_index(store),
            index + 1,
        );
        self.eq(
            &format!("{when}: last_index()"),
            self.last_index(store),
            index,
        );
        self.eq(
            &format!("{when}: term({index})"),
            store.term(index),
            Ok(term),
        );
        self.eq(
            &format!("{when}: term({}) (every entry is gone)", index - 1),
            store.term(index - 1),
            Err(compacted()),
        );
        self.eq(
            &format!("{when}: term({}) (every entry is gone)", index + 1),
            store.term(index + 1),
            Err(unavailable()),
        );
        self.eq(
            &format!("{when}: entries({}, {})", index + 1, index + 1),
            self.entries(store, index + 1, index + 1, None),
            Ok(vec![]),
        );
        self.eq(
            &format!("{when}: entries({index}, {})", index + 1),
            self.entries(store, index, index + 1, None),
            Err(compacted()),
        );
        let (hard_state, conf_state) = self.initial_state(store);
        self.eq(
            &format!("{when}: ConfState"),
            &conf_state,
            snapshot.get_metadata().get_conf_state(),
        );
        if hard_state.commit < index || hard_state.term < term {
            self.fail(format_args!(
                "{when}: the HardState's commit must be >= {index} and its term >= {term}, \
                 got {hard_state:?}"
            ));
        }
        self.eq(
            &format!("{when}: snapshot()"),
            store.snapshot(0, 2),
            Ok(snapshot.clone()),
        );
    }

    /// Syncs, records every read, reopens, and asserts the reopened store reads the same.
    fn restart<S: LogStore>(&self, mut store: S, reopen: &mut impl FnMut(S) -> S, what: &str) -> S {
        self.ok(&format!("sync() after writing {what}"), store.sync());
        let before = Observed::read(&store);
        let store = reopen(store);
        let after = Observed::read(&store);
        before.expect_same(self, &after, what);
        store
    }
}

/// Every `raft::Storage` read of a store, to compare a store before and after a restart.
#[derive(Debug)]
struct Observed {
    initial_state: raft::Result<(HardState, ConfState)>,
    first_index: raft::Result<u64>,
    last_index: raft::Result<u64>,
    /// `term(i)` for `i` from two below `first_index - 1` to one past `last_index`.
    terms: Vec<(u64, raft::Result<u64>)>,
    entries: raft::Result<Vec<Entry>>,
    snapshot: raft::Result<Snapshot>,
}

impl Observed {
    fn read<S: LogStore>(store: &S) -> Self {
        let first = store.first_index().unwrap_or(1);
        let last = store.last_index().unwrap_or(0);
        Observed {
            initial_state: store
                .initial_state()
                .map(|state| (state.hard_state, state.conf_state)),
            first_index: store.first_index(),
            last_index: store.last_index(),
            terms: (first.saturating_sub(3)..=last + 1)
                .map(|index| (index, store.term(index)))
                .collect(),
            entries: store.entries(first, last + 1, None, GetEntriesContext::empty(false)),
            snapshot: store.snapshot(0, 1),
        }
    }

    fn expect_same(&self, check: &Check, after: &Observed, what: &str) {
        let when = format!("after writing {what}, sync() and reopening");
        check.eq(
            &format!("{when}: initial_state()"),
            &after.initial_state,
            &self.initial_state,
        );
        check.eq(
            &format!("{when}: first_index()"),
            &after.first_index,
            &self.first_index,
        );
        check.eq(
            &format!("{when}: last_index()"),
            &after.last_index,
            &self.last_index,
        );
        check.eq(&format!("{when}: term(..)"), &after.terms, &self.terms);
        check.eq(
            &format!("{when}: entries(first_index, last_index + 1)"),
            &after.entries,
            &self.entries,
        );
        check.eq(
            &format!("{when}: snapshot()"),
            &after.snapshot,
            &self.snapshot,
        );
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("entry {index} of term {term}").into(),
        ..Entry::default()
    }
}

fn entries(indexes: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    indexes.map(|index| entry(index, term)).collect()
}

fn snapshot(index: u64, term: u64, data: &'static [u8]) -> Snapshot {
    let mut snapshot = Snapshot {
        data: data.into(),
        ..Snapshot::default()
    };
    let meta = snapshot.mut_metadata();
    meta.index = index;
    meta.term = term;
    meta.set_conf_state(voters(&[1, 2, 3]));
    snapshot
}

fn voters(ids: &[u64]) -> ConfState {
    ConfState {
        voters: ids.to_vec(),
        ..ConfState::default()
    }
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..HardState::default()
    }
}

fn meta(snapshot: &Snapshot) -> (u64, u64) {
    (snapshot.get_metadata().index, snapshot.get_metadata().term)
}

fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.index).collect()
}

fn encoded_size(entry: &Entry) -> u64 {
    u64::from(entry.compute_size())
}

fn compacted() -> raft::Error {
    raft::Error::Store(raft::StorageError::Compacted)
}

fn unavailable() -> raft::Error {
    raft::Error::Store(raft::StorageError::Unavailable)
}

fn snapshot_unavailable() -> raft::Error {
    raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable)
}
