//! The entry point of the coverage-guided validator target (`tests/fuzz/`,
//! docs/testing.md): a peer's messages, checked by the validator every node runs before
//! raft-rs's `step`, then stepped into a real raft-rs `RawNode` and its Ready handled by
//! raftnode's own driver, as a node does.
//!
//! What it proves, for every input: the validator never panics, and a message that
//! passes it panics neither raft-rs nor the Ready loop, nor stops the node. A panic
//! inside [`check_peer_message`] is the finding; libFuzzer reports it as a crash.
//!
//! # Input layout
//!
//! The first [`STATE_BYTES`] bytes build the node's local state (node 1 of voters 1, 2
//! and 3), the rest are the peer's messages:
//!
//! | byte | meaning |
//! |------|---------|
//! | 0 | bits 0-1: role (0 follower with no leader, 1 follower of node 2, 2 candidate or, with bit 2, pre-candidate, 3 leader); bit 3: node 4 is a learner; bit 4: `pre_vote`; bit 5: `check_quorum`; bit 6: frame every `MsgSnapshot`'s data as an honest raftnode sender does (see below) |
//! | 1 | the snapshot the log starts after: index `byte % 64` (none when 0) |
//! | 2 | entries after it: `byte % 16` |
//! | 3 | entry `i` is one term above the entry before it when bit `i % 8` is set |
//! | 4 | bits 0-1: the HardState term above the last entry's; bits 2-7: the commit, as a share of the entries |
//! | 5.. | up to [`MAX_STEPS`] records: a little-endian `u16` length, then that many bytes of a protobuf `eraftpb::Message`; a length of 0 is one `tick` instead |
//!
//! Snapshot data must carry raftnode's framing and checksum to pass the validator, which
//! a fuzzer cannot forge at random (a CRC-32); with bit 6 set, the harness frames the
//! data the message carries, as [`StateMachine::snapshot`]'s
//! bytes are framed by an honest peer, so that the checks behind it are reached too.
//!
//! raftnode's notices (`MsgUnreachable`, `MsgSnapStatus`) are handled by the runtime's
//! per-group core, not here: the validator refuses them as [`Refusal::LocalType`].

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeV2, ConfState, Entry, HardState, Message, MessageType, Snapshot};
use raft::{RawNode, ReadState, SoftState};

use crate::driver::{self, DriverStats, Faults, Outbox};
use crate::error::StateMachineError;
use crate::proposals::AppliedAs;
use crate::snapshot_codec::{self, MemberContexts};
use crate::{Config, LogStore, MemLogStore, Refusal, StateMachine};

/// Bytes of the input that build the local state.
pub const STATE_BYTES: usize = 5;
/// Most message records (or ticks) one input steps.
pub const MAX_STEPS: usize = 16;
/// This node's id.
const LOCAL: u64 = 1;

/// What [`check_peer_message`] did with an input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Messages that passed the validator and were stepped into raft-rs.
    pub stepped: usize,
    /// Messages the validator refused, with the reason, in input order.
    pub refused: Vec<Refusal>,
    /// Records that are not a schema-conforming `eraftpb::Message`: the transport refuses
    /// these before the validator sees them.
    pub undecodable: usize,
    /// Records that were a `tick`.
    pub ticks: usize,
}

/// Builds the local state from the input's first [`STATE_BYTES`] bytes, then checks each
/// message record with the validator and steps what passes into raft-rs, handling every
/// Ready with raftnode's driver. Inputs shorter than [`STATE_BYTES`] do nothing.
///
/// # Panics
///
/// When the validator, raft-rs or the driver panics, or the driver stops the node on a
/// message the validator let through: each is a bug this target exists to find.
///
/// # Examples
///
/// ```
/// use raftnode::testing::fuzz::check_peer_message;
///
/// // A follower of node 2 with 3 entries, then one record: 2 junk bytes.
/// let outcome = check_peer_message(&[1, 0, 3, 0, 0, 2, 0, 0xff, 0xff]);
/// assert_eq!((outcome.stepped, outcome.undecodable), (0, 1));
/// ```
pub fn check_peer_message(input: &[u8]) -> Outcome {
    let mut outcome = Outcome::default();
    let Some((state, mut records)) = input.split_first_chunk::<STATE_BYTES>() else {
        return outcome;
    };
    let mut node = FuzzNode::new(state);
    for _ in 0..MAX_STEPS {
        let Some((len, rest)) = records.split_first_chunk::<2>() else {
            break;
        };
        let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
        let (bytes, rest) = rest.split_at(len);
        records = rest;
        if bytes.is_empty() {
            node.raw.tick();
            node.drive();
            outcome.ticks += 1;
            continue;
        }
        if crate::wire::scan_message(bytes).is_err() {
            outcome.undecodable += 1;
            continue;
        }
        let Ok(mut m) = Message::parse_from_bytes(bytes) else {
            outcome.undecodable += 1;
            continue;
        };
        if node.frame_snapshots && m.get_msg_type() == MessageType::MsgSnapshot {
            let data = std::mem::take(&mut m.mut_snapshot().data);
            m.mut_snapshot().data = snapshot_codec::encode_with_members(data, &members());
        }
        match node.step(m) {
            Ok(()) => outcome.stepped += 1,
            Err(refusal) => outcome.refused.push(refusal),
        }
    }
    outcome
}

fn members() -> MemberContexts {
    MemberContexts::new()
}

/// Node 1 on a [`MemLogStore`], with the state machine and outbox the driver needs.
struct FuzzNode {
    raw: RawNode<MemLogStore>,
    sm: NullMachine,
    out: NullOutbox,
    stats: DriverStats,
    frame_snapshots: bool,
}

impl FuzzNode {
    /// The local state of the input's first bytes (see the module docs), persisted, then
    /// the role taken and its first Ready handled.
    fn new(state: &[u8; STATE_BYTES]) -> FuzzNode {
        let [flags, snapshot_index, entries, bumps, hard_state] = *state;
        let mut cs = ConfState::default();
        cs.voters = vec![1, 2, 3];
        if flags & 0x08 != 0 {
            cs.learners = vec![4];
        }
        let snapshot_index = u64::from(snapshot_index % 64);
        let snapshot_term = u64::from(snapshot_index > 0);
        let mut store = MemLogStore::new();
        if snapshot_index > 0 {
            let mut snapshot = Snapshot::default();
            snapshot.data = snapshot_codec::encode_with_members(Bytes::new(), &members());
            let meta = snapshot.mut_metadata();
            meta.index = snapshot_index;
            meta.term = snapshot_term;
            meta.set_conf_state(cs.clone());
            store
                .apply_snapshot(snapshot)
                .expect("snapshot of a fresh store");
        } else {
            store
                .set_conf_state(&cs)
                .expect("conf state of a fresh store");
        }
        let mut term = snapshot_term.max(1);
        let log: Vec<Entry> = (0..u64::from(entries % 16))
            .map(|i| {
                term += u64::from(bumps >> (i % 8) & 1);
                let mut e = Entry::default();
                e.index = snapshot_index + 1 + i;
                e.term = term;
                e
            })
            .collect();
        let last_term = log.last().map_or(snapshot_term, |e| e.term);
        let mut hs = HardState::default();
        hs.term = last_term + u64::from(hard_state & 3);
        hs.commit = snapshot_index + log.len() as u64 * u64::from(hard_state >> 2) / 63;
        store.append(&log).expect("append to a fresh store");
        store
            .set_hard_state(&hs)
            .expect("hard state of a fresh store");

        let mut config = Config::new(LOCAL);
        config.pre_vote = flags & 0x10 != 0;
        config.check_quorum = flags & 0x20 != 0;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&config.to_raft(snapshot_index), store, &logger)
            .expect("a valid local state");
        let mut node = FuzzNode {
            raw,
            sm: NullMachine {
                applied: snapshot_index,
            },
            out: NullOutbox { logger },
            stats: DriverStats::default(),
            frame_snapshots: flags & 0x40 != 0,
        };
        let raft = &mut node.raw.raft;
        match flags & 3 {
            0 => {}
            1 => raft.become_follower(hs.term, 2),
            2 if flags & 0x04 != 0 => raft.become_pre_candidate(),
            2 => raft.become_candidate(),
            _ => {
                raft.become_candidate();
                raft.become_leader();
            }
        }
        node.drive();
        node
    }

    /// What the runtime's core does with a peer's message: the validator, the snapshot
    /// decode, then `step` and the Ready loop.
    fn step(&mut self, m: Message) -> Result<(), Refusal> {
        crate::validate::check_message(&m, LOCAL, &self.raw)?;
        if m.get_msg_type() == MessageType::MsgSnapshot {
            snapshot_codec::decode(&m.get_snapshot().data).map_err(|_| Refusal::SnapshotData)?;
        }
        // An error is raft-rs dropping the message (an unknown peer): routine.
        let _ = self.raw.step(m);
        self.drive();
        Ok(())
    }

    fn drive(&mut self) {
        let result = driver::drive(
            &mut self.raw,
            &mut self.sm,
            &mut self.out,
            &mut self.stats,
            Faults::default(),
        );
        if let Err(e) = result {
            panic!("a message the validator let through stopped the node: {e}");
        }
    }
}

/// A state machine that holds nothing and accepts every snapshot.
struct NullMachine {
    applied: u64,
}

impl StateMachine for NullMachine {
    type Response = ();

    fn apply(&mut self, index: u64, _: &[u8]) {
        self.applied = index;
    }

    fn apply_noop(&mut self, index: u64) {
        self.applied = index;
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn snapshot(&self) -> Result<Bytes, StateMachineError> {
        Ok(Bytes::new())
    }

    fn restore(&mut self, index: u64, _: &[u8]) -> Result<(), StateMachineError> {
        self.applied = index;
        Ok(())
    }
}

/// Drops what the node sends: the target looks at one node.
struct NullOutbox {
    logger: slog::Logger,
}

impl Outbox<()> for NullOutbox {
    fn send(&mut self, _: Vec<Message>) {}
    fn applied(&mut self, _: u64, _: u64, _: AppliedAs<'_, ()>) {}
    fn conf_changed(&mut self, _: u64, _: &ConfChangeV2, _: &ConfState, _: &[u64]) {}
    fn snapshot_restored(&mut self, _: &Snapshot) {}
    fn read_states(&mut self, _: Vec<ReadState>) {}
    fn soft_state(&mut self, _: &SoftState) {}
    fn logger(&self) -> &slog::Logger {
        &self.logger
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(m: &Message) -> Vec<u8> {
        let bytes = m.write_to_bytes().expect("encode");
        let mut out = (bytes.len() as u16).to_le_bytes().to_vec();
        out.extend_from_slice(&bytes);
        out
    }

    fn from_peer(t: MessageType, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.from = 2;
        m.to = LOCAL;
        m.term = term;
        m
    }

    /// Proves an honest append from the leader a follower knows is stepped and
    /// committed through the driver: the target reaches raft-rs, not only the checks.
    #[test]
    fn an_honest_append_is_stepped_and_committed() {
        // Follower of node 2, 4 entries of term 1, HardState term 1, commit 0.
        let mut input = vec![1, 0, 4, 0, 0];
        let mut m = from_peer(MessageType::MsgAppend, 1);
        (m.index, m.log_term, m.commit) = (4, 1, 5);
        let mut e = Entry::default();
        (e.index, e.term) = (5, 1);
        m.mut_entries().push(e);
        input.extend(record(&m));
        let outcome = check_peer_message(&input);
        assert_eq!(outcome.stepped, 1, "{outcome:?}");
        assert!(outcome.refused.is_empty());
    }

    /// Proves the issue 13 append (index far past the log, log_term 0, commit = index)
    /// is refused before raft-rs, whose `commit_to` would panic on it.
    #[test]
    fn the_commit_past_log_append_is_refused() {
        let mut input = vec![1, 0, 2, 0, 0];
        let mut m = from_peer(MessageType::MsgAppend, 1 << 40);
        (m.index, m.log_term, m.commit) = (1 << 30, 0, 1 << 30);
        input.extend(record(&m));
        let outcome = check_peer_message(&input);
        assert_eq!(outcome.refused, vec![Refusal::AppendAnchor]);
        assert_eq!(outcome.stepped, 0);
    }

    /// Proves a snapshot framed by the harness (bit 6) passes the checks and is
    /// installed by the driver, so the fuzzer reaches the snapshot path.
    #[test]
    fn a_framed_snapshot_is_installed() {
        let mut input = vec![1 | 0x40, 0, 2, 0, 0];
        let mut m = from_peer(MessageType::MsgSnapshot, 1);
        let meta = m.mut_snapshot().mut_metadata();
        (meta.index, meta.term) = (10, 1);
        meta.mut_conf_state().voters = vec![1, 2, 3];
        input.extend(record(&m));
        let outcome = check_peer_message(&input);
        assert_eq!(outcome.stepped, 1, "{outcome:?}");
        // Unframed, the same snapshot is refused for its missing checksum.
        input[0] = 1;
        let outcome = check_peer_message(&input);
        assert_eq!(outcome.refused, vec![Refusal::SnapshotChecksum]);
    }

    /// Proves a leader's state is built (every role is reachable) and ticks run.
    #[test]
    fn a_leader_ticks() {
        let outcome = check_peer_message(&[3, 5, 3, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(outcome.ticks, 2);
    }
}
