//! The Ready loop: one function that handles one `Ready` in the mandated order.
//!
//! This module is free of threads, channels and clocks. It takes the `RawNode` (which
//! owns the `LogStore`), the `StateMachine` and an [`Outbox`], and does one Ready. The
//! runtime thread and the deterministic simulator both call it, so what the simulator
//! checks is the code that ships. The numbered steps below match `docs/ready-loop.md`.

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message, Snapshot,
};
use raft::{RawNode, ReadState, SoftState};

use crate::error::{StateMachineError, StopReason, StorageError};
use crate::log_store::LogStore;
use crate::proposals::AppliedAs;
use crate::snapshot_codec::{self, MemberContexts};
use crate::state_machine::StateMachine;

/// Where the driver puts what leaves a Ready: messages, applied results, read states.
///
/// The runtime sends messages through the `Transport` and resolves waiters; the
/// simulator queues them in its virtual network.
pub(crate) trait Outbox<R> {
    /// Step 4: messages that may leave now. Called after the Ready's writes were synced.
    fn send(&mut self, messages: Vec<Message>);
    /// Step 5: the entry at `index` of `term` was applied.
    fn applied(&mut self, index: u64, term: u64, applied: AppliedAs<'_, R>);
    /// A conf change entry was applied; `cs` is the ConfState after it and `removed`
    /// the nodes it took out of the group entirely (a leave-joint entry carries no
    /// changes of its own, yet removes the outgoing voters that are not incoming).
    fn conf_changed(&mut self, index: u64, changes: &ConfChangeV2, cs: &ConfState, removed: &[u64]);
    /// A snapshot from the leader was installed and the state machine restored from it.
    fn snapshot_restored(&mut self, snapshot: &Snapshot);
    /// Read index confirmations (ReadIndex); serve each once applied >= its index.
    fn read_states(&mut self, states: Vec<ReadState>);
    /// The role or leader changed.
    fn soft_state(&mut self, ss: &SoftState);
    /// Where the driver logs what it decides on its own.
    fn logger(&self) -> &slog::Logger;
    /// Step 7 ended: raft now counts `applied` as applied. Observers only.
    fn advanced(&mut self, applied: u64) {
        let _ = applied;
    }
}

/// A fault that stops the node.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DriverError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("state machine: {0}")]
    StateMachine(#[from] StateMachineError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("corrupt committed entry at index {index}: {detail}")]
    CorruptEntry { index: u64, detail: String },
}

impl DriverError {
    pub(crate) fn stop_reason(&self) -> StopReason {
        match self {
            DriverError::Storage(e) => StopReason::Storage(e.to_string()),
            DriverError::StateMachine(e) => StopReason::StateMachine(e.to_string()),
            DriverError::Raft(e) => StopReason::Raft(e.clone()),
            e @ DriverError::CorruptEntry { .. } => StopReason::Storage(e.to_string()),
        }
    }
}

/// Counters the driver keeps; read by `Node::status` and the benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DriverStats {
    pub readies: u64,
    pub syncs: u64,
    pub entries_appended: u64,
    pub entries_applied: u64,
    pub snapshots_restored: u64,
}

/// Test-only switches that re-introduce classic Ready-loop bugs, so the simulator can
/// prove it catches them. All off in normal builds.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Faults {
    /// Send persisted messages before syncing (votes and acks ahead of durability).
    pub send_before_sync: bool,
    /// Install a leader's snapshot in the log store but leave the state machine as it
    /// was (ERRATA 5 ignored): replicas then diverge.
    pub skip_snapshot_restore: bool,
    /// Apply (and acknowledge) a leader's new entries as soon as they are durable on its
    /// own disk, before a quorum has them: before the commit is durable. An entry a
    /// later leader overwrites was then applied and acknowledged anyway.
    pub apply_before_commit: bool,
    /// Compact the log to its last index when taking a snapshot, dropping entries past
    /// the snapshot (ERRATA 14 ignored): raft then needs entries nobody can serve.
    pub compact_past_snapshot: bool,
}

/// Handles every pending Ready (raft paginates committed entries): loops while
/// `has_ready`. Returns how many Readies were handled.
///
/// # Errors
///
/// A [`DriverError`] means the node must stop: a write or sync failed, a snapshot could
/// not be restored, or a committed entry is corrupt.
pub(crate) fn drive<S, M, O>(
    raw: &mut RawNode<S>,
    sm: &mut M,
    out: &mut O,
    stats: &mut DriverStats,
    faults: Faults,
) -> Result<usize, DriverError>
where
    S: LogStore,
    M: StateMachine,
    O: Outbox<M::Response>,
{
    let mut handled = 0;
    while raw.has_ready() {
        handle_ready(raw, sm, out, stats, faults)?;
        handled += 1;
    }
    Ok(handled)
}

/// Handles one Ready: snapshot → append → HardState (+ sync) → send → apply → advance →
/// LightReady. See `docs/ready-loop.md` for why each step sits where it does.
pub(crate) fn handle_ready<S, M, O>(
    raw: &mut RawNode<S>,
    sm: &mut M,
    out: &mut O,
    stats: &mut DriverStats,
    faults: Faults,
) -> Result<(), DriverError>
where
    S: LogStore,
    M: StateMachine,
    O: Outbox<M::Response>,
{
    let mut rd = raw.ready();
    stats.readies += 1;
    let mut applied = raw.raft.raft_log.applied;

    if let Some(ss) = rd.ss() {
        out.soft_state(ss);
    }

    // 1. Snapshot. Install it in the log store before any entry (it replaces the log),
    //    then restore the state machine from it. A crash between the two is repaired at
    //    start: the state machine is behind the store's snapshot and is restored again.
    if !rd.snapshot().is_empty() {
        let snapshot = rd.snapshot().clone();
        let index = snapshot.get_metadata().index;
        raw.mut_store().apply_snapshot(snapshot.clone())?;
        if !faults.skip_snapshot_restore {
            restore_state_machine(sm, &snapshot)?;
        }
        applied = index;
        stats.snapshots_restored += 1;
        out.snapshot_restored(&snapshot);
    }

    // 2. Append. `append` drops any stored suffix the new entries conflict with.
    if !rd.entries().is_empty() {
        stats.entries_appended += rd.entries().len() as u64;
        raw.mut_store().append(rd.entries())?;
    }

    // 3. HardState (term, vote, commit), then one sync for everything this Ready wrote.
    if let Some(hs) = rd.hs() {
        raw.mut_store().set_hard_state(hs)?;
    }
    if faults.send_before_sync && !rd.persisted_messages().is_empty() {
        out.send(rd.take_persisted_messages());
    }
    if rd.must_sync() {
        raw.mut_store().sync()?;
        stats.syncs += 1;
    }
    if faults.apply_before_commit && raw.raft.state == raft::StateRole::Leader {
        // The bug: the leader's own copy is durable, so it applies the entries now.
        let early = rd.entries().to_vec();
        apply_early(sm, out, early);
    }

    // 4. Send. `messages` (leader only) could have left before the sync; persisted
    //    messages (votes, append acks) must not: they promise what is now durable.
    if !rd.messages().is_empty() {
        out.send(rd.take_messages());
    }
    if !rd.persisted_messages().is_empty() {
        out.send(rd.take_persisted_messages());
    }
    if !rd.read_states().is_empty() {
        out.read_states(rd.take_read_states());
    }

    // 5. Apply committed entries, before `advance` (ERRATA 2).
    let committed = rd.take_committed_entries();
    apply_entries(raw, sm, out, committed, &mut applied, stats, faults)?;

    // 6. Advance: the Ready's writes are persisted; applying is reported separately.
    let mut light = raw.advance_append(rd);

    // 7. LightReady, in full (ERRATA 3): persist its commit index, send its messages,
    //    apply its committed entries, then report the applied index.
    if light.commit_index().is_some() {
        let hs = raw.raft.hard_state();
        raw.mut_store().set_hard_state(&hs)?;
    }
    if !light.messages().is_empty() {
        out.send(light.take_messages());
    }
    let committed = light.take_committed_entries();
    apply_entries(raw, sm, out, committed, &mut applied, stats, faults)?;
    raw.advance_apply_to(applied);
    out.advanced(applied);
    Ok(())
}

fn apply_entries<S, M, O>(
    raw: &mut RawNode<S>,
    sm: &mut M,
    out: &mut O,
    entries: Vec<Entry>,
    applied: &mut u64,
    stats: &mut DriverStats,
    faults: Faults,
) -> Result<(), DriverError>
where
    S: LogStore,
    M: StateMachine,
    O: Outbox<M::Response>,
{
    for entry in entries {
        let (index, term) = (entry.index, entry.term);
        if index <= *applied {
            // Defensive: raft never hands an applied entry twice; never apply one twice.
            continue;
        }
        if faults.apply_before_commit && index <= sm.applied_index() {
            // The bug's other half: whatever committed at this index, the state machine
            // already applied what this node once proposed there.
            *applied = index;
            continue;
        }
        // Dispatch on the type first (ERRATA 8): a leave-joint ConfChangeV2 has empty data.
        match entry.get_entry_type() {
            EntryType::EntryNormal if entry.data.is_empty() => {
                sm.apply_noop(index);
                out.applied(index, term, AppliedAs::Empty);
            }
            EntryType::EntryNormal => {
                let response = sm.apply(index, &entry.data);
                out.applied(index, term, AppliedAs::Command(response));
            }
            EntryType::EntryConfChange => {
                let mut cc = ConfChange::default();
                cc.merge_from_bytes(&entry.data)
                    .map_err(|e| corrupt(index, format!("ConfChange: {e}")))?;
                apply_conf_change(raw, sm, out, index, term, &v1_to_v2(&cc))?;
            }
            EntryType::EntryConfChangeV2 => {
                let mut cc = ConfChangeV2::default();
                cc.merge_from_bytes(&entry.data)
                    .map_err(|e| corrupt(index, format!("ConfChangeV2: {e}")))?;
                apply_conf_change(raw, sm, out, index, term, &cc)?;
            }
        }
        *applied = index;
        stats.entries_applied += 1;
    }
    Ok(())
}

/// The `apply_before_commit` fault: applies a leader's normal entries that are durable
/// on its own disk but not yet committed.
fn apply_early<M, O>(sm: &mut M, out: &mut O, entries: Vec<Entry>)
where
    M: StateMachine,
    O: Outbox<M::Response>,
{
    for entry in entries {
        if entry.get_entry_type() != EntryType::EntryNormal {
            // Conf changes still wait for their commit; so does everything after one.
            break;
        }
        if entry.index <= sm.applied_index() {
            continue;
        }
        if entry.data.is_empty() {
            sm.apply_noop(entry.index);
            out.applied(entry.index, entry.term, AppliedAs::Empty);
        } else {
            let response = sm.apply(entry.index, &entry.data);
            out.applied(entry.index, entry.term, AppliedAs::Command(response));
        }
    }
}

/// Applies a conf change (V1 converted to V2, as raft-rs does itself) and persists the
/// ConfState it gives (ERRATA 10).
fn apply_conf_change<S, M, O>(
    raw: &mut RawNode<S>,
    sm: &mut M,
    out: &mut O,
    index: u64,
    term: u64,
    changes: &ConfChangeV2,
) -> Result<(), DriverError>
where
    S: LogStore,
    M: StateMachine,
    O: Outbox<M::Response>,
{
    let before = raw.raft.prs().conf().to_conf_state();
    match raw.apply_conf_change(changes) {
        Ok(cs) => {
            raw.mut_store().set_conf_state(&cs)?;
            // A membership change must not be lost behind a state machine that already
            // counts its index as applied: make the ConfState durable now (rare, cheap).
            raw.mut_store().sync()?;
            sm.apply_noop(index);
            let mut removed: Vec<u64> = before
                .voters
                .iter()
                .chain(&before.voters_outgoing)
                .chain(&before.learners)
                .chain(&before.learners_next)
                .copied()
                .filter(|id| !is_member(&cs, *id))
                .collect();
            removed.sort_unstable();
            removed.dedup();
            out.conf_changed(index, changes, &cs, &removed);
            out.applied(index, term, AppliedAs::ConfChange(&cs));
            if raw.raft.state == raft::StateRole::Leader
                && !raw.raft.prs().conf().voters().contains(raw.raft.id)
            {
                step_down_removed_leader(raw, out);
            }
        }
        Err(e) => {
            // Every replica fails the same way on the same entry: treat it as a no-op.
            slog::warn!(out.logger(), "conf change refused at apply"; "index" => index, "error" => %e);
            sm.apply_noop(index);
            out.applied(index, term, AppliedAs::Empty);
        }
    }
    Ok(())
}

/// A leader that applied its own removal must not stay in office: raft-rs keeps it
/// leader with no progress entry of its own, and the next commit it computes panics
/// (`maybe_commit` unwraps the leader's own progress). It steps down at once, and hands
/// over first by sending `MsgTimeoutNow` to the remaining voter that holds its whole
/// log, if there is one (what a leadership transfer ends with); otherwise the group
/// elects a leader after an election timeout.
fn step_down_removed_leader<S, R, O>(raw: &mut RawNode<S>, out: &mut O)
where
    S: LogStore,
    O: Outbox<R>,
{
    let (id, term) = (raw.raft.id, raw.raft.term);
    let last = raw.raft.raft_log.last_index();
    let prs = raw.raft.prs();
    let heir = prs
        .iter()
        .filter(|(peer, pr)| {
            **peer != id && prs.conf().voters().contains(**peer) && pr.matched == last
        })
        .map(|(peer, _)| *peer)
        .min();
    slog::info!(out.logger(), "this leader was removed from the group: stepping down";
        "heir" => heir);
    if let Some(to) = heir {
        let mut m = Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgTimeoutNow);
        m.from = id;
        m.to = to;
        m.term = term;
        out.send(vec![m]);
    }
    raw.raft.become_follower(term, raft::INVALID_ID);
}

fn corrupt(index: u64, detail: String) -> DriverError {
    DriverError::CorruptEntry { index, detail }
}

/// Restores the state machine from a snapshot's (possibly compressed) data.
pub(crate) fn restore_state_machine<M: StateMachine>(
    sm: &mut M,
    snapshot: &Snapshot,
) -> Result<(), DriverError> {
    let index = snapshot.get_metadata().index;
    let data = snapshot_codec::decode(&snapshot.data).map_err(|detail| {
        DriverError::StateMachine(StateMachineError::new(format!(
            "snapshot at index {index} is unreadable: {detail}"
        )))
    })?;
    sm.restore(index, &data)?;
    Ok(())
}

/// Takes a snapshot of the state machine at its applied index (framed with the members'
/// contexts, `members`), stores it, and compacts the log to keep `trailing_entries`
/// entries behind it. Returns the snapshot's index,
/// or `None` when nothing new was applied since the stored snapshot.
pub(crate) fn take_snapshot<S, M>(
    raw: &mut RawNode<S>,
    sm: &M,
    trailing_entries: u64,
    faults: Faults,
    members: &MemberContexts,
) -> Result<Option<u64>, DriverError>
where
    S: LogStore,
    M: StateMachine,
{
    let applied = raw.raft.raft_log.applied;
    let stored = raw
        .store()
        .snapshot(0, 0)
        .map(|s| s.get_metadata().index)
        .unwrap_or(0);
    if applied == 0 || applied <= stored {
        return Ok(None);
    }
    debug_assert!(faults.apply_before_commit || sm.applied_index() == applied);
    let term = raw
        .raft
        .raft_log
        .term(applied)
        .map_err(|e| DriverError::Raft(format!("term of applied index {applied}: {e}")))?;
    let data = snapshot_codec::encode_with_members(sm.snapshot()?, members);
    let mut snapshot = Snapshot::default();
    snapshot.data = data;
    let meta = snapshot.mut_metadata();
    meta.index = applied;
    meta.term = term;
    // raft's configuration is the one every applied conf change produced: the ConfState
    // at `applied` (ERRATA 5, 14).
    meta.set_conf_state(raw.raft.prs().conf().to_conf_state());
    raw.mut_store().store_snapshot(snapshot)?;
    let mut compact_to = (applied + 1).saturating_sub(trailing_entries);
    if faults.compact_past_snapshot {
        // The bug: everything on disk is "covered", entries past the snapshot included.
        compact_to = raw.raft.raft_log.last_index() + 1;
    }
    let first = raw
        .store()
        .first_index()
        .map_err(|e| DriverError::Raft(e.to_string()))?;
    if compact_to > first {
        raw.mut_store().compact(compact_to)?;
    }
    Ok(Some(applied))
}

/// Removes from `messages` every `MsgSnapshot` whose ConfState does not hold its
/// recipient and returns those recipients. raft-rs on the receiver ignores such a
/// snapshot (a member added after the stored snapshot was taken), so a leader that
/// sent it would send the same useless snapshot again on every probe.
pub(crate) fn hold_back_stale_snapshots(messages: &mut Vec<Message>) -> Vec<u64> {
    let mut held = Vec::new();
    messages.retain(|m| {
        if m.get_msg_type() != raft::eraftpb::MessageType::MsgSnapshot {
            return true;
        }
        let cs = m.get_snapshot().get_metadata().get_conf_state();
        let holds = cs.voters.contains(&m.to)
            || cs.learners.contains(&m.to)
            || cs.voters_outgoing.contains(&m.to);
        if !holds {
            held.push(m.to);
        }
        holds
    });
    held
}

/// Follows [`hold_back_stale_snapshots`]: on a leader, takes a fresh snapshot (which
/// holds the current membership) when something was applied since the stored one, then
/// reports the held-back snapshots as failed so raft sends the fresh one on its next
/// probe. Returns the new snapshot's index, if one was taken.
///
/// # Errors
///
/// As [`take_snapshot`].
pub(crate) fn replace_stale_snapshot<S, M>(
    raw: &mut RawNode<S>,
    sm: &M,
    trailing_entries: u64,
    faults: Faults,
    members: &MemberContexts,
    peers: &[u64],
) -> Result<Option<u64>, DriverError>
where
    S: LogStore,
    M: StateMachine,
{
    if raw.raft.state != raft::StateRole::Leader {
        return Ok(None);
    }
    let taken = take_snapshot(raw, sm, trailing_entries, faults, members)?;
    for peer in peers {
        raw.report_snapshot(*peer, raft::SnapshotStatus::Failure);
    }
    Ok(taken)
}

/// Describes a V1 change in V2 form, so observers see one shape.
pub(crate) fn v1_to_v2(cc: &ConfChange) -> ConfChangeV2 {
    let mut single = raft::eraftpb::ConfChangeSingle::default();
    single.set_change_type(cc.get_change_type());
    single.node_id = cc.node_id;
    let mut v2 = ConfChangeV2::default();
    v2.mut_changes().push(single);
    v2.context = cc.context.clone();
    v2
}

/// Whether `id` is in `cs` at all: voter (incoming or outgoing) or learner.
pub(crate) fn is_member(cs: &ConfState, id: u64) -> bool {
    cs.voters.contains(&id)
        || cs.voters_outgoing.contains(&id)
        || cs.learners.contains(&id)
        || cs.learners_next.contains(&id)
}

/// Returns true when `change_type` adds the node (as voter or learner).
pub(crate) fn is_addition(change_type: ConfChangeType) -> bool {
    matches!(
        change_type,
        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemLogStore;
    use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition};

    #[derive(Debug, Clone, PartialEq)]
    enum Event {
        Apply(u64),
        Noop(u64),
        Advanced(u64),
        Conf(Vec<u64>, Vec<u64>),
    }

    type Log = std::sync::Arc<parking_lot::Mutex<Vec<Event>>>;

    #[derive(Default)]
    struct Sm {
        applied: u64,
        events: Log,
    }

    impl StateMachine for Sm {
        type Response = u64;
        fn apply(&mut self, index: u64, _: &[u8]) -> u64 {
            self.applied = index;
            self.events.lock().push(Event::Apply(index));
            index
        }
        fn apply_noop(&mut self, index: u64) {
            self.applied = index;
            self.events.lock().push(Event::Noop(index));
        }
        fn applied_index(&self) -> u64 {
            self.applied
        }
        fn snapshot(&self) -> Result<bytes::Bytes, StateMachineError> {
            Ok(bytes::Bytes::new())
        }
        fn restore(&mut self, index: u64, _: &[u8]) -> Result<(), StateMachineError> {
            self.applied = index;
            Ok(())
        }
    }

    struct Recorder {
        events: Log,
        logger: slog::Logger,
    }

    impl Outbox<u64> for Recorder {
        fn send(&mut self, _: Vec<Message>) {}
        fn applied(&mut self, _: u64, _: u64, _: AppliedAs<'_, u64>) {}
        fn conf_changed(&mut self, _: u64, _: &ConfChangeV2, cs: &ConfState, _: &[u64]) {
            self.events
                .lock()
                .push(Event::Conf(cs.voters.clone(), cs.voters_outgoing.clone()));
        }
        fn snapshot_restored(&mut self, _: &Snapshot) {}
        fn read_states(&mut self, _: Vec<ReadState>) {}
        fn soft_state(&mut self, _: &SoftState) {}
        fn logger(&self) -> &slog::Logger {
            &self.logger
        }
        fn advanced(&mut self, applied: u64) {
            self.events.lock().push(Event::Advanced(applied));
        }
    }

    fn single_node() -> (RawNode<MemLogStore>, Sm, Recorder, MemLogStore) {
        let store = MemLogStore::new();
        let mut cs = ConfState::default();
        cs.voters = vec![1];
        let mut s = store.clone();
        s.set_conf_state(&cs).unwrap();
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut raw =
            RawNode::new(&crate::Config::new(1).to_raft(0), store.clone(), &logger).unwrap();
        raw.campaign().unwrap();
        let log = Log::default();
        let mut sm = Sm {
            applied: 0,
            events: log.clone(),
        };
        let mut out = Recorder {
            events: log,
            logger,
        };
        drive(
            &mut raw,
            &mut sm,
            &mut out,
            &mut DriverStats::default(),
            Faults::default(),
        )
        .unwrap();
        assert_eq!(raw.raft.state, raft::StateRole::Leader);
        (raw, sm, out, store)
    }

    /// Proves every entry is applied before raft is told it was applied (ERRATA 2):
    /// each `advanced(i)` comes after the apply of `i`, never before.
    #[test]
    fn apply_happens_before_advance() {
        let (mut raw, mut sm, mut out, _) = single_node();
        for i in 0..5u8 {
            raw.propose(Vec::new(), vec![i + 1]).unwrap();
            drive(
                &mut raw,
                &mut sm,
                &mut out,
                &mut DriverStats::default(),
                Faults::default(),
            )
            .unwrap();
        }
        // One log shared by the state machine and the outbox gives one order.
        let events = sm.events.lock().clone();
        let mut applied_so_far = 0;
        let mut advances = 0;
        for (pos, e) in events.iter().enumerate() {
            match e {
                Event::Apply(i) | Event::Noop(i) => applied_so_far = *i,
                Event::Advanced(a) => {
                    advances += 1;
                    assert!(
                        *a <= applied_so_far,
                        "event {pos}: raft was told {a} was applied before the state machine applied it ({events:?})"
                    );
                }
                Event::Conf(..) => {}
            }
        }
        assert!(advances >= 5);
        assert_eq!(raw.raft.raft_log.applied, sm.applied);
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Event::Apply(_)))
                .count(),
            5
        );
    }

    /// Proves a leave-joint ConfChangeV2, whose data is empty, is applied: the group
    /// leaves the joint configuration and the ConfState without outgoing voters is
    /// persisted (ERRATA 8, 10).
    #[test]
    fn leave_joint_with_empty_data_is_applied() {
        let (mut raw, mut sm, mut out, store) = single_node();
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Explicit);
        for id in [2, 3] {
            let mut single = ConfChangeSingle::default();
            single.set_change_type(ConfChangeType::AddLearnerNode);
            single.node_id = id;
            cc.mut_changes().push(single);
        }
        raw.propose_conf_change(Vec::new(), cc).unwrap();
        drive(
            &mut raw,
            &mut sm,
            &mut out,
            &mut DriverStats::default(),
            Faults::default(),
        )
        .unwrap();
        assert!(
            !raw.raft
                .prs()
                .conf()
                .to_conf_state()
                .voters_outgoing
                .is_empty(),
            "entered joint"
        );
        assert!(
            !store.conf_state().voters_outgoing.is_empty(),
            "joint ConfState persisted"
        );

        // The leave-joint change: an EntryConfChangeV2 with empty data.
        raw.propose_conf_change(Vec::new(), ConfChangeV2::default())
            .unwrap();
        let last = raw.raft.raft_log.last_index();
        drive(
            &mut raw,
            &mut sm,
            &mut out,
            &mut DriverStats::default(),
            Faults::default(),
        )
        .unwrap();
        assert!(
            sm.events.lock().contains(&Event::Noop(last)),
            "leave-joint entry reached the state machine"
        );
        let cs = store.conf_state();
        assert!(cs.voters_outgoing.is_empty(), "left joint: {cs:?}");
        assert_eq!(cs.learners, vec![2, 3]);
        assert!(out.events.lock().contains(&Event::Conf(vec![1], vec![])));
    }
}
