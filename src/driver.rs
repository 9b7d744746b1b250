//! The Ready loop: one function that handles one `Ready` in the mandated order.
//!
//! This module is free of threads, channels and clocks. It takes the `RawNode` (which
//! owns the `LogStore`), the `StateMachine` and an [`Outbox`], and does one Ready. The
//! runtime thread and the deterministic simulator both call it, so what the simulator
//! checks is the code that ships. The numbered steps below match `docs/ready-loop.md`.
//!
//! "raft-rs note N" cites docs/raft-rs-notes.md.

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
use crate::timing::Stamp;

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
    /// The node was killed (`Node::kill`): stop before the next entry is applied, as a
    /// crash would.
    fn killed(&self) -> bool {
        false
    }
    /// Step 7 ended: raft now counts `applied` as applied. Observers only.
    fn advanced(&mut self, applied: u64) {
        let _ = applied;
    }
    /// Whether a timed proposal is in flight (docs/operations.md, "Proposal timing"):
    /// only then does the driver read the clock for [`Outbox::stamp`].
    fn timing(&self) -> bool {
        false
    }
    /// What the driver did just now, for the timing of proposals. Observers only.
    fn stamp(&mut self, stamp: Stamp) {
        let _ = stamp;
    }
    /// The empty entry at `index` carried a `context`: a checkpoint marker (or
    /// something posing as one). Called right after the state machine applied it, so
    /// `digest` gives the state as of `index`; it is called only for a marker that
    /// asks for it.
    ///
    /// # Errors
    ///
    /// [`DriverError::Diverged`] stops the node before any later entry is applied.
    fn marker(
        &mut self,
        index: u64,
        context: &[u8],
        digest: &dyn Fn() -> Option<u64>,
    ) -> Result<(), DriverError> {
        let _ = (index, context, digest);
        Ok(())
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
    /// `Node::kill` was called while entries were being applied.
    #[error("killed")]
    Killed,
    /// The state machine diverged from the leader's and `stop_on_divergence` is set.
    #[error("state machine diverged: {0}")]
    Diverged(crate::status::Divergence),
}

impl DriverError {
    pub(crate) fn stop_reason(&self) -> StopReason {
        match self {
            DriverError::Storage(e) => StopReason::Storage(e.to_string()),
            DriverError::StateMachine(e) => StopReason::StateMachine(e.to_string()),
            DriverError::Raft(e) => StopReason::Raft(e.clone()),
            e @ DriverError::CorruptEntry { .. } => StopReason::Storage(e.to_string()),
            DriverError::Killed => StopReason::Killed,
            DriverError::Diverged(d) => StopReason::Diverged(d.clone()),
        }
    }
}

/// Counters the driver keeps; read by `Node::status` and the benchmarks.
#[derive(Debug, Default, Clone)]
pub(crate) struct DriverStats {
    pub readies: u64,
    pub syncs: u64,
    pub entries_appended: u64,
    pub entries_applied: u64,
    pub snapshots_restored: u64,
    /// Committed entries the `advance_before_apply` fault holds for the next drive.
    pub deferred: Vec<Entry>,
    /// The slowest log store sync since the core last took it (diagnosis).
    pub slowest_sync: std::time::Duration,
    /// Time spent applying committed entries in the current drive, and the most one
    /// drive spent since the core last took it (diagnosis).
    pub applying: std::time::Duration,
    pub slowest_apply: std::time::Duration,
}

/// Declares [`Faults`]: with `cfg(test)` or the `testing` feature, a set of switches;
/// otherwise a zero-sized type whose every switch is the constant `false`, so the bug
/// branches are compiled out of the mandated loop of a normal build.
macro_rules! faults {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Test-only switches that re-introduce classic Ready-loop and core bugs, so the
        /// simulator and the integration tests can prove they catch them. All off by
        /// default; without `cfg(test)` or the `testing` feature they do not exist.
        #[cfg(any(test, feature = "testing"))]
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub(crate) struct Faults {
            $($(#[$doc])* pub(crate) $name: bool,)*
        }

        /// Without `cfg(test)` or the `testing` feature: no switches at all.
        #[cfg(not(any(test, feature = "testing")))]
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub(crate) struct Faults;

        impl Faults {
            /// Every switch off: what a normal build runs with.
            pub(crate) fn none() -> Self {
                Self::default()
            }

            $(
                $(#[$doc])*
                #[inline(always)]
                pub(crate) fn $name(&self) -> bool {
                    #[cfg(any(test, feature = "testing"))]
                    {
                        self.$name
                    }
                    #[cfg(not(any(test, feature = "testing")))]
                    {
                        false
                    }
                }
            )*
        }
    };
}

faults! {
    /// Send persisted messages before syncing (votes and acks ahead of durability).
    send_before_sync,
    /// Install a leader's snapshot in the log store but leave the state machine as it
    /// was (docs/snapshots.md): replicas then diverge.
    skip_snapshot_restore,
    /// Apply (and acknowledge) a leader's new entries as soon as they are durable on its
    /// own disk, before a quorum has them: before the commit is durable. An entry a
    /// later leader overwrites was then applied and acknowledged anyway.
    apply_before_commit,
    /// Compact the log to its last index when taking a snapshot, dropping entries past
    /// the snapshot (docs/snapshots.md): raft then needs entries nobody can serve.
    compact_past_snapshot,
    /// Tell raft a Ready's committed entries were applied before the state machine has
    /// applied them (the guide's `advance` before apply): they are applied on the next
    /// drive, so in between raft's applied index runs ahead of the state machine.
    advance_before_apply,
    /// Forget to persist the commit index a `LightReady` carries.
    light_commit_not_persisted,
    /// Forget to persist the ConfState `apply_conf_change` returns.
    conf_state_not_persisted,
    /// Serve a linearizable or lease read on a node that believes it leads, from local
    /// state, without ReadIndex or lease.
    read_without_read_index,
    /// Hand `Linearizable` reads to raft-rs's `LeaseBased` read-only mode, as 0.1 did
    /// with `lease_reads` on: a cut-off leader answers them from its lease.
    linearizable_from_raft_lease,
    /// Measure the lease from when a quorum round's confirmation was received instead
    /// of when the round was sent.
    lease_from_receipt,
    /// Number ReadIndex contexts from 1 at every start and retry a waiting read with
    /// its first context, as 0.1 did: a late acknowledgement of an earlier use then
    /// confirms a later round.
    read_ctx_reused,
    /// Ignore peers' "not a member" notices, as 0.1 did: a node that missed the commit
    /// of its own removal never learns it.
    removal_notice_ignored,
    /// Keep a removal learnt from peers' notices for good (until a leader replicates),
    /// never campaigning to hear the voters again: a group whose every node was talked
    /// into it by forged notices never elects a leader again.
    removal_belief_final,
    /// Hand leadership to any voter, as 0.1 did: also to one that announced it is
    /// shutting down or has not been heard from.
    transfer_to_any_voter,
    /// Wake a quiet group only on peer messages, not on a request from this node's host:
    /// a quiet group whose leader died never notices (nothing sends it a message).
    quiet_wakes_only_on_messages,
    /// Stretch a leader's lease over the time its group is quiet ("the followers are
    /// quiet, none will campaign"): a cut-off quiet leader then answers lease reads
    /// after a follower woken by a client was elected.
    lease_kept_while_quiet,
    /// Serve an `AtLeast` read at once, as a `Stale` one, without waiting for the
    /// token's write to be applied here.
    token_read_without_wait,
    /// Promote a joining voter at once, as 0.1's `add_voter` did, without waiting for it
    /// to catch up as a learner: a group whose quorum needs the new node stalls until it
    /// has the log.
    promote_without_catch_up,
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
    if faults.advance_before_apply() && !stats.deferred.is_empty() {
        // The fault's other half: what raft already counts as applied reaches the state
        // machine one drive late.
        let deferred = std::mem::take(&mut stats.deferred);
        let mut applied = sm.applied_index();
        apply_entries(raw, sm, out, deferred, &mut applied, stats, faults)?;
    }
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
        if !faults.skip_snapshot_restore() {
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
        if out.timing() {
            let last = rd.entries().last().map_or(0, |e| e.index);
            out.stamp(Stamp::Appended { last });
        }
    }

    // 3. HardState (term, vote, commit), then one sync for everything this Ready wrote.
    if let Some(hs) = rd.hs() {
        raw.mut_store().set_hard_state(hs)?;
    }
    if faults.send_before_sync() && !rd.persisted_messages().is_empty() {
        out.send(rd.take_persisted_messages());
    }
    if rd.must_sync() {
        let started = std::time::Instant::now();
        raw.mut_store().sync()?;
        stats.slowest_sync = stats.slowest_sync.max(started.elapsed());
        stats.syncs += 1;
        if out.timing() {
            out.stamp(Stamp::Synced);
        }
    }
    if faults.apply_before_commit() && raw.raft.state == raft::StateRole::Leader {
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

    // 5. Apply committed entries, before `advance` (docs/ready-loop.md, step 5).
    let committed = rd.take_committed_entries();
    if faults.advance_before_apply() {
        defer_apply(committed, &mut applied, stats);
    } else {
        apply_entries(raw, sm, out, committed, &mut applied, stats, faults)?;
    }

    // 6. Advance: the Ready's writes are persisted; applying is reported separately.
    let mut light = raw.advance_append(rd);

    // 7. LightReady, in full (raft-rs note 3): persist its commit index, send its messages,
    //    apply its committed entries, then report the applied index.
    if light.commit_index().is_some() && !faults.light_commit_not_persisted() {
        let hs = raw.raft.hard_state();
        raw.mut_store().set_hard_state(&hs)?;
    }
    if !light.messages().is_empty() {
        out.send(light.take_messages());
    }
    let committed = light.take_committed_entries();
    if faults.advance_before_apply() {
        defer_apply(committed, &mut applied, stats);
    } else {
        apply_entries(raw, sm, out, committed, &mut applied, stats, faults)?;
    }
    raw.advance_apply_to(applied);
    out.advanced(applied);
    Ok(())
}

/// The `advance_before_apply` fault: counts `entries` as applied for raft now and
/// keeps them for the next drive.
fn defer_apply(entries: Vec<Entry>, applied: &mut u64, stats: &mut DriverStats) {
    if let Some(last) = entries.last() {
        *applied = (*applied).max(last.index);
    }
    stats.deferred.extend(entries);
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
    if entries.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let timed = out.timing();
    if timed {
        let (first, last) = (entries[0].index, entries[entries.len() - 1].index);
        out.stamp(Stamp::Applying { first, last });
    }
    let result = apply_each(raw, sm, out, entries, applied, stats, faults);
    stats.applying += started.elapsed();
    if timed {
        out.stamp(Stamp::Applied);
    }
    result
}

fn apply_each<S, M, O>(
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
        if out.killed() {
            // As a crash would: what is applied stays applied, nothing more is.
            return Err(DriverError::Killed);
        }
        let (index, term) = (entry.index, entry.term);
        if index <= *applied {
            // Defensive: raft never hands an applied entry twice; never apply one twice.
            continue;
        }
        if faults.apply_before_commit() && index <= sm.applied_index() {
            // The bug's other half: whatever committed at this index, the state machine
            // already applied what this node once proposed there.
            *applied = index;
            continue;
        }
        // Dispatch on the type first (raft-rs note 8): a leave-joint ConfChangeV2 has empty data.
        match entry.get_entry_type() {
            EntryType::EntryNormal if entry.data.is_empty() => {
                sm.apply_noop(index);
                if !entry.context.is_empty() {
                    // Only checkpoint markers have a context (docs/operations.md,
                    // "Divergence"): the state is as of `index` now, before any later
                    // entry.
                    out.marker(index, &entry.context, &|| sm.digest())?;
                }
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
                apply_conf_change(raw, sm, out, index, term, &v1_to_v2(&cc), faults)?;
            }
            EntryType::EntryConfChangeV2 => {
                let mut cc = ConfChangeV2::default();
                cc.merge_from_bytes(&entry.data)
                    .map_err(|e| corrupt(index, format!("ConfChangeV2: {e}")))?;
                apply_conf_change(raw, sm, out, index, term, &cc, faults)?;
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
/// ConfState it gives (raft-rs note 10).
fn apply_conf_change<S, M, O>(
    raw: &mut RawNode<S>,
    sm: &mut M,
    out: &mut O,
    index: u64,
    term: u64,
    changes: &ConfChangeV2,
    faults: Faults,
) -> Result<(), DriverError>
where
    S: LogStore,
    M: StateMachine,
    O: Outbox<M::Response>,
{
    let before = raw.raft.prs().conf().to_conf_state();
    match raw.apply_conf_change(changes) {
        Ok(cs) => {
            if !faults.conf_state_not_persisted() {
                raw.mut_store().set_conf_state(&cs)?;
            }
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
    debug_assert!(
        faults.apply_before_commit()
            || faults.advance_before_apply()
            || sm.applied_index() == applied
    );
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
    // at `applied` (raft-rs notes 5, 14).
    meta.set_conf_state(raw.raft.prs().conf().to_conf_state());
    raw.mut_store().store_snapshot(snapshot)?;
    let mut compact_to = (applied + 1).saturating_sub(trailing_entries);
    if faults.compact_past_snapshot() {
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

    /// Proves every entry is applied before raft is told it was applied (raft-rs note 2):
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
    /// persisted (raft-rs notes 8, 10).
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

    /// Every step of the Ready loop, in one log: the store's writes, the sends, the
    /// state machine's applies and restores, and raft being told what was applied.
    #[derive(Debug, Clone, PartialEq)]
    enum Step {
        Snapshot(u64),
        Append(u64),
        HardState { term: u64, commit: u64 },
        ConfState(Vec<u64>),
        Sync,
        Send(raft::eraftpb::MessageType),
        Apply(u64),
        Restore(u64),
        Advance(u64),
    }

    type Steps = std::sync::Arc<parking_lot::Mutex<Vec<Step>>>;

    #[derive(Clone)]
    struct RecStore {
        inner: MemLogStore,
        steps: Steps,
    }

    impl raft::Storage for RecStore {
        fn initial_state(&self) -> raft::Result<raft::RaftState> {
            self.inner.initial_state()
        }
        fn entries(
            &self,
            low: u64,
            high: u64,
            max: impl Into<Option<u64>>,
            ctx: raft::GetEntriesContext,
        ) -> raft::Result<Vec<Entry>> {
            self.inner.entries(low, high, max, ctx)
        }
        fn term(&self, idx: u64) -> raft::Result<u64> {
            self.inner.term(idx)
        }
        fn first_index(&self) -> raft::Result<u64> {
            self.inner.first_index()
        }
        fn last_index(&self) -> raft::Result<u64> {
            self.inner.last_index()
        }
        fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
            self.inner.snapshot(request_index, to)
        }
    }

    impl LogStore for RecStore {
        fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
            let last = entries.last().map_or(0, |e| e.index);
            self.steps.lock().push(Step::Append(last));
            self.inner.append(entries)
        }
        fn set_hard_state(&mut self, hs: &raft::eraftpb::HardState) -> Result<(), StorageError> {
            self.steps.lock().push(Step::HardState {
                term: hs.term,
                commit: hs.commit,
            });
            self.inner.set_hard_state(hs)
        }
        fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), StorageError> {
            self.steps.lock().push(Step::ConfState(cs.voters.clone()));
            self.inner.set_conf_state(cs)
        }
        fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
            self.steps
                .lock()
                .push(Step::Snapshot(snapshot.get_metadata().index));
            self.inner.apply_snapshot(snapshot)
        }
        fn store_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
            self.inner.store_snapshot(snapshot)
        }
        fn compact(&mut self, index: u64) -> Result<(), StorageError> {
            self.inner.compact(index)
        }
        fn sync(&mut self) -> Result<(), StorageError> {
            self.steps.lock().push(Step::Sync);
            self.inner.sync()
        }
    }

    struct RecSm {
        applied: u64,
        steps: Steps,
    }

    impl StateMachine for RecSm {
        type Response = u64;
        fn apply(&mut self, index: u64, _: &[u8]) -> u64 {
            self.applied = index;
            self.steps.lock().push(Step::Apply(index));
            index
        }
        fn apply_noop(&mut self, index: u64) {
            self.applied = index;
            self.steps.lock().push(Step::Apply(index));
        }
        fn applied_index(&self) -> u64 {
            self.applied
        }
        fn snapshot(&self) -> Result<bytes::Bytes, StateMachineError> {
            Ok(bytes::Bytes::from_static(b"state"))
        }
        fn restore(&mut self, index: u64, _: &[u8]) -> Result<(), StateMachineError> {
            self.applied = index;
            self.steps.lock().push(Step::Restore(index));
            Ok(())
        }
    }

    struct RecOut {
        steps: Steps,
        sent: Vec<Message>,
        logger: slog::Logger,
    }

    impl Outbox<u64> for RecOut {
        fn send(&mut self, messages: Vec<Message>) {
            for m in &messages {
                self.steps.lock().push(Step::Send(m.get_msg_type()));
            }
            self.sent.extend(messages);
        }
        fn applied(&mut self, _: u64, _: u64, _: AppliedAs<'_, u64>) {}
        fn conf_changed(&mut self, _: u64, _: &ConfChangeV2, _: &ConfState, _: &[u64]) {}
        fn snapshot_restored(&mut self, _: &Snapshot) {}
        fn read_states(&mut self, _: Vec<ReadState>) {}
        fn soft_state(&mut self, _: &SoftState) {}
        fn logger(&self) -> &slog::Logger {
            &self.logger
        }
        fn advanced(&mut self, applied: u64) {
            self.steps.lock().push(Step::Advance(applied));
        }
    }

    struct Rec {
        raw: RawNode<RecStore>,
        sm: RecSm,
        out: RecOut,
        steps: Steps,
    }

    impl Rec {
        fn new(id: u64, voters: &[u64]) -> Rec {
            let steps = Steps::default();
            let mut inner = MemLogStore::new();
            let mut cs = ConfState::default();
            cs.voters = voters.to_vec();
            inner.set_conf_state(&cs).unwrap();
            let store = RecStore {
                inner,
                steps: steps.clone(),
            };
            let logger = slog::Logger::root(slog::Discard, slog::o!());
            let raw = RawNode::new(&crate::Config::new(id).to_raft(0), store, &logger).unwrap();
            Rec {
                raw,
                sm: RecSm {
                    applied: 0,
                    steps: steps.clone(),
                },
                out: RecOut {
                    steps: steps.clone(),
                    sent: Vec::new(),
                    logger,
                },
                steps,
            }
        }

        /// Handles one Ready and returns the steps it took.
        fn one_ready(&mut self) -> Vec<Step> {
            assert!(self.raw.has_ready());
            handle_ready(
                &mut self.raw,
                &mut self.sm,
                &mut self.out,
                &mut DriverStats::default(),
                Faults::default(),
            )
            .unwrap();
            std::mem::take(&mut *self.steps.lock())
        }
    }

    /// The exact order of one leader's Ready for a proposal in a single-node group: the
    /// entry is appended and synced; raft commits it when told it is persisted, so the
    /// LightReady carries the commit index, which is persisted before the entry is
    /// applied, and raft hears of the apply last.
    #[test]
    fn ready_order_on_a_single_node_leader() {
        let mut n = Rec::new(1, &[1]);
        n.raw.campaign().unwrap();
        let steps = n.one_ready();
        // Becoming leader appends its empty entry at index 1 in term 1.
        assert_eq!(
            steps,
            vec![
                Step::Append(1),
                Step::HardState { term: 1, commit: 0 },
                Step::Sync,
                Step::HardState { term: 1, commit: 1 },
                Step::Apply(1),
                Step::Advance(1),
            ]
        );
        n.raw.propose(Vec::new(), b"x".to_vec()).unwrap();
        let steps = n.one_ready();
        assert_eq!(
            steps,
            vec![
                Step::Append(2),
                Step::Sync,
                Step::HardState { term: 1, commit: 2 },
                Step::Apply(2),
                Step::Advance(2),
            ]
        );
    }

    /// The order on a follower: append, one sync, then the append response (a persisted
    /// message); the commit index persisted before the apply of what the leader
    /// committed, then raft hears of it. And the exact order for a snapshot: installed
    /// in the store, state machine restored, then the HardState, the sync, the response,
    /// and raft told last.
    #[test]
    fn ready_order_on_a_follower_and_for_a_snapshot() {
        let mut leader = Rec::new(1, &[1, 2]);
        let mut follower = Rec::new(2, &[1, 2]);
        leader.raw.campaign().unwrap();
        // Shuttle messages until nothing is left, taking each node's Readies.
        let mut follower_readies = Vec::new();
        for _ in 0..20 {
            while leader.raw.has_ready() {
                leader.one_ready();
            }
            for m in std::mem::take(&mut leader.out.sent) {
                follower.raw.step(m).unwrap();
            }
            while follower.raw.has_ready() {
                follower_readies.push(follower.one_ready());
            }
            for m in std::mem::take(&mut follower.out.sent) {
                leader.raw.step(m).unwrap();
            }
        }
        assert_eq!(leader.raw.raft.state, raft::StateRole::Leader);
        // The follower's Ready that took the leader's first entry (index 1).
        let append = follower_readies
            .iter()
            .find(|r| r.contains(&Step::Append(1)))
            .expect("the follower appended the leader's entry");
        let pos = |s: &Step| append.iter().position(|x| x == s).expect("step present");
        assert!(pos(&Step::Append(1)) < pos(&Step::Sync), "{append:?}");
        assert!(
            pos(&Step::Sync) < pos(&Step::Send(raft::eraftpb::MessageType::MsgAppendResponse)),
            "the ack leaves after the sync: {append:?}"
        );
        // The follower applies index 1 once the leader's commit reaches it, before raft
        // hears of it.
        let apply = follower_readies
            .iter()
            .find(|r| r.contains(&Step::Apply(1)))
            .expect("the follower applied index 1");
        let a = apply.iter().position(|x| *x == Step::Apply(1)).unwrap();
        let adv = apply.iter().position(|x| *x == Step::Advance(1)).unwrap();
        let hs = apply
            .iter()
            .position(|x| matches!(x, Step::HardState { commit, .. } if *commit >= 1))
            .expect("the commit index is persisted");
        assert!(hs < a && a < adv, "{apply:?}");

        // A snapshot at index 5 of term 1 sent to a fresh follower.
        let mut fresh = Rec::new(3, &[1, 3]);
        let mut snapshot = Snapshot::default();
        snapshot.data = snapshot_codec::encode_with_members(
            bytes::Bytes::from_static(b"state"),
            &MemberContexts::new(),
        );
        let meta = snapshot.mut_metadata();
        meta.index = 5;
        meta.term = 1;
        meta.mut_conf_state().voters = vec![1, 3];
        let mut m = Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
        m.from = 1;
        m.to = 3;
        m.term = 1;
        m.set_snapshot(snapshot);
        fresh.raw.step(m).unwrap();
        let steps = fresh.one_ready();
        assert_eq!(
            steps,
            vec![
                Step::Snapshot(5),
                Step::Restore(5),
                Step::HardState { term: 1, commit: 5 },
                Step::Sync,
                Step::Send(raft::eraftpb::MessageType::MsgAppendResponse),
                Step::Advance(5),
            ]
        );
    }
}
