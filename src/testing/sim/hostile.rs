//! Hostile members: a seeded generator of raft messages that look valid (right member
//! ids, plausible and implausible terms, indexes, commits, ConfStates, snapshots) and
//! that the simulator fires at live nodes next to the honest traffic
//! ([`SimConfig::hostile_per_million`](super::SimConfig::hostile_per_million)).
//!
//! Every message is in "class 1" (docs/hostile-fuzzing.md): one a member with a bug, an
//! old binary or a restored backup could send, that a node either refuses with its local
//! checks (src/validate.rs, src/notice.rs) or that raft-rs handles safely. Each
//! [`Mutation`] says which: [`Mutation::must_be_refused`] kinds break a rule the checks
//! enforce in the target's current state (the simulator fails the run if one passes),
//! the others reach raft-rs and must leave it safe (the run's linearizability and
//! invariant checks say whether they did).
//!
//! Lies that Raft by design cannot defend against are never generated: a vote granted,
//! an append or heartbeat response, or an append, heartbeat, snapshot, `MsgTimeoutNow`
//! or read answer in the name of the leader of a term the target is in (or of a term
//! above it) whose content the checks cannot tell from the truth. Raft is not
//! Byzantine-tolerant: one such message can commit what no quorum holds (a heartbeat
//! re-addressed from another follower, simulator seed 272 of an earlier attempt) or
//! elect a second leader.

use bytes::Bytes;
use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};

use super::SimRng;
use crate::validate::MAX_INDEX;

/// One kind of hostile message. [`SimReport::hostile_by_mutation`](super::SimReport)
/// counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Mutation {
    /// A real message seen on the network earlier, sent again unmodified to its
    /// addressee, however old: Raft is safe under any delay and duplication.
    Replay,
    /// A real message with a term below the target's and scrambled indexes, commit,
    /// log terms and entries: raft-rs only answers it with its own term.
    StaleTerm,
    /// A `MsgReadIndex` with a well-formed context of the claimed sender that it never
    /// made: a leader answers a read nobody waits for, anyone else refuses.
    ReadIndexForged,
    /// A `MsgTransferLeader` to the target in its term: a leader hands leadership to
    /// the claimed sender (and voids its lease), anyone else refuses.
    TransferRequest,
    /// A well-formed notice in the target's term ("my log ends at", "I refused your
    /// snapshot"): it only makes a leader send more.
    NoticeForged,
    /// Issue 13's first frame: a `MsgAppend` with a term at or far above the target's,
    /// an index far past its log, `log_term` 0 and `commit` equal to the index.
    AnchorPastLog,
    /// A `MsgAppend` whose `log_term` is above its term.
    AnchorTermAhead,
    /// A `MsgAppend` whose entries do not follow its index one by one.
    EntryGap,
    /// A `MsgAppend` entry with term 0, above the message's, or below the one before.
    EntryTerm,
    /// A `MsgAppend` carrying a conf change entry that does not decode.
    EntryConfChange,
    /// A `MsgHeartbeat` in or above the target's term committing past its last index.
    CommitPastLog,
    /// An append, heartbeat or snapshot in the target's term from a node other than
    /// the leader the target leads or follows.
    NotFromLeader,
    /// An append or heartbeat response to a leader, in its term, naming an index,
    /// commit or reject hint past its last index (issue 13's third frame).
    ResponsePastLog,
    /// A response with `request_snapshot` set.
    SnapshotRequest,
    /// A vote or pre-vote request from a log position no candidate has.
    VoteLog,
    /// A read-index request or answer without exactly one read context of its asker.
    ReadContext,
    /// A `MsgTimeoutNow` from a node the target does not follow in that term.
    TimeoutNowStale,
    /// A `MsgReadIndexResp` with the target's context from a node it does not follow.
    ReadIndexRespStale,
    /// A `MsgSnapshot` whose metadata index or term is 0, or above the message's term.
    SnapshotMetadata,
    /// A `MsgSnapshot` whose ConfState raft-rs cannot restore: a voter also a learner,
    /// no voters, an id twice or 0, a bad joint configuration (issue 13's second frame).
    ConfState,
    /// A `MsgSnapshot` with garbage data: random bytes, a real frame with a byte
    /// flipped, or a real frame cut short (issue 13's fourth frame).
    SnapshotGarbage,
    /// A message addressed to another node (or to node 0) delivered to the target.
    Misaddressed,
    /// A message naming no sender, or the target itself.
    BadSender,
    /// A type that never travels: `MsgPropose`.
    LocalType,
    /// An index, term or commit above 2^63 - 1.
    OutOfRange,
    /// Term 0 on a type that needs one, or a term on a `MsgReadIndex`.
    BadTerm,
    /// A notice with fields no raftnode peer sets.
    BadNotice,
}

impl Mutation {
    /// Every kind, in declaration order.
    pub const ALL: [Mutation; 27] = [
        Mutation::Replay,
        Mutation::StaleTerm,
        Mutation::ReadIndexForged,
        Mutation::TransferRequest,
        Mutation::NoticeForged,
        Mutation::AnchorPastLog,
        Mutation::AnchorTermAhead,
        Mutation::EntryGap,
        Mutation::EntryTerm,
        Mutation::EntryConfChange,
        Mutation::CommitPastLog,
        Mutation::NotFromLeader,
        Mutation::ResponsePastLog,
        Mutation::SnapshotRequest,
        Mutation::VoteLog,
        Mutation::ReadContext,
        Mutation::TimeoutNowStale,
        Mutation::ReadIndexRespStale,
        Mutation::SnapshotMetadata,
        Mutation::ConfState,
        Mutation::SnapshotGarbage,
        Mutation::Misaddressed,
        Mutation::BadSender,
        Mutation::LocalType,
        Mutation::OutOfRange,
        Mutation::BadTerm,
        Mutation::BadNotice,
    ];

    /// Whether the checks must refuse every message of this kind in the state it was
    /// made for. The first five kinds may reach raft-rs.
    pub fn must_be_refused(self) -> bool {
        !matches!(
            self,
            Mutation::Replay
                | Mutation::StaleTerm
                | Mutation::ReadIndexForged
                | Mutation::TransferRequest
                | Mutation::NoticeForged
        )
    }
}

/// What the generator knows of the node it aims at. The simulator reads it just before
/// it steps the message; a forger over a real network reads it earlier, and must then
/// make `last_index` a bound the log cannot reach before the message arrives (so that
/// "past the log" stays past it: tests/hostile_tcp.rs).
#[derive(Debug, Clone)]
pub struct HostileTarget {
    /// The target's id.
    pub id: u64,
    /// Its current term.
    pub term: u64,
    /// Whether it leads `term`.
    pub leading: bool,
    /// The leader the target follows in `term` (0: none known).
    pub leader: u64,
    /// Its last log index, or a bound above it.
    pub last_index: u64,
    /// The senders a forger may claim: other node ids, members or not.
    pub peers: Vec<u64>,
}

/// Real messages kept to be copied: the latest ones, and a uniform sample of the whole
/// run so far (so that some copies are thousands of steps old).
const RECENT: usize = 256;
const OLD: usize = 256;

/// A term or index no log reaches, for "far ahead".
const FAR: u64 = 1 << 40;

/// The generator: its own random stream (so a run without hostile traffic draws exactly
/// the numbers it drew before the generator existed) and the real messages it copies.
///
/// # Examples
///
/// ```
/// use raftnode::testing::sim::{Hostile, HostileTarget};
///
/// let mut forger = Hostile::new(7);
/// let target = HostileTarget { id: 1, term: 3, leading: false, leader: 2, last_index: 10, peers: vec![2, 3] };
/// let made = (0..100).filter_map(|_| forger.generate(&target)).count();
/// assert!(made > 50);
/// ```
pub struct Hostile {
    rng: SimRng,
    recent: Vec<Message>,
    next_recent: usize,
    old: Vec<Message>,
    seen: u64,
}

impl Hostile {
    /// A generator whose every choice comes from `seed`.
    pub fn new(seed: u64) -> Self {
        Hostile {
            rng: SimRng::new(seed),
            recent: Vec::with_capacity(RECENT),
            next_recent: 0,
            old: Vec::with_capacity(OLD),
            seen: 0,
        }
    }

    /// The random stream, for the simulator's own hostile draws (rate, target).
    pub(crate) fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }

    /// Keeps a copy of a real message sent on the network (one in four), for
    /// [`Mutation::Replay`] and as the base of other kinds.
    pub fn observe(&mut self, m: &Message) {
        if self.rng.below(4) != 0 {
            return;
        }
        self.seen += 1;
        if self.recent.len() < RECENT {
            self.recent.push(m.clone());
        } else {
            self.recent[self.next_recent] = m.clone();
            self.next_recent = (self.next_recent + 1) % RECENT;
        }
        // Reservoir sampling over the whole run.
        if self.old.len() < OLD {
            self.old.push(m.clone());
        } else {
            let k = self.rng.below(self.seen);
            if (k as usize) < OLD {
                self.old[k as usize] = m.clone();
            }
        }
    }

    /// A real message kept earlier for which `keep` holds, if one is found quickly.
    fn sample(&mut self, keep: impl Fn(&Message) -> bool) -> Option<Message> {
        let total = self.recent.len() + self.old.len();
        if total == 0 {
            return None;
        }
        let start = self.rng.below(total as u64) as usize;
        (0..total.min(64))
            .map(|k| (start + k) % total)
            .map(|i| {
                if i < self.recent.len() {
                    &self.recent[i]
                } else {
                    &self.old[i - self.recent.len()]
                }
            })
            .find(|m| keep(m))
            .cloned()
    }

    fn peer(&mut self, t: &HostileTarget) -> u64 {
        if t.peers.is_empty() {
            return t.id + 1;
        }
        t.peers[self.rng.below(t.peers.len() as u64) as usize]
    }

    /// A term at or above the target's: the same, a little ahead, or far ahead.
    fn term_at_or_ahead(&mut self, t: &HostileTarget) -> u64 {
        match self.rng.below(4) {
            0 => t.term.max(1),
            1 => t.term + self.rng.between(1, 3),
            2 => FAR + self.rng.below(FAR),
            _ => MAX_INDEX - self.rng.below(1_000),
        }
    }

    /// An index past the target's log: just past, or far past.
    fn past_log(&mut self, t: &HostileTarget) -> u64 {
        if self.rng.below(2) == 0 {
            t.last_index + self.rng.between(1, 5)
        } else {
            t.last_index + FAR + self.rng.below(FAR)
        }
    }

    /// Any index: 0, inside the log, around its end, far past, or at the limit.
    fn any_index(&mut self, t: &HostileTarget) -> u64 {
        match self.rng.below(5) {
            0 => 0,
            1 => self.rng.below(t.last_index + 1),
            2 => t.last_index + self.rng.below(3),
            3 => FAR + self.rng.below(FAR),
            _ => MAX_INDEX - self.rng.below(100),
        }
    }

    /// Draws one hostile message for `t`; `None` when the kind drawn needs a state the
    /// target is not in (the caller draws again next time).
    pub fn generate(&mut self, t: &HostileTarget) -> Option<(Mutation, Message)> {
        let kind = Mutation::ALL[self.rng.below(Mutation::ALL.len() as u64) as usize];
        let m = match kind {
            Mutation::Replay => self.replay(t)?,
            Mutation::StaleTerm => self.stale_term(t)?,
            Mutation::ReadIndexForged => {
                let from = self.peer(t);
                let mut m = msg(MessageType::MsgReadIndex, from, t.id, 0);
                m.mut_entries().push(ctx_entry(from, self.rng.next_u64()));
                m
            }
            Mutation::TransferRequest => {
                let term = self.term_at_or_ahead(t);
                msg(MessageType::MsgTransferLeader, self.peer(t), t.id, term)
            }
            Mutation::NoticeForged => self.notice(t),
            Mutation::AnchorPastLog => {
                let term = self.term_at_or_ahead(t);
                let mut m = msg(MessageType::MsgAppend, self.peer(t), t.id, term);
                m.index = self.past_log(t);
                m.commit = m.index;
                m
            }
            Mutation::AnchorTermAhead => {
                let term = self.term_at_or_ahead(t).min(MAX_INDEX - 1);
                let mut m = self.append_base(t, term);
                m.log_term = m.term + self.rng.between(1, 2);
                m.index = m.index.max(1);
                m
            }
            Mutation::EntryGap => {
                let term = self.term_at_or_ahead(t);
                let mut m = self.append_base(t, term);
                let n = m.entries.len();
                let i = self.rng.below(n as u64) as usize;
                let e = &mut m.mut_entries()[i];
                e.index = match self.rng.below(3) {
                    0 => e.index + self.rng.between(1, 3),
                    1 => e.index.saturating_sub(self.rng.between(1, 3)),
                    _ => FAR,
                };
                m
            }
            Mutation::EntryTerm => {
                let term = self.term_at_or_ahead(t).min(MAX_INDEX - 5);
                let mut m = self.append_base(t, term);
                let n = m.entries.len();
                let i = self.rng.below(n as u64) as usize;
                let below = m.get_entries()[..i]
                    .last()
                    .map_or(m.log_term, |e| e.term)
                    .checked_sub(1)
                    .filter(|&b| b > 0);
                m.mut_entries()[i].term = match (self.rng.below(3), below) {
                    (0, _) => 0,
                    (1, Some(b)) => self.rng.between(1, b),
                    _ => m.term + self.rng.between(1, 5),
                };
                m
            }
            Mutation::EntryConfChange => {
                let term = self.term_at_or_ahead(t);
                let mut m = self.append_base(t, term);
                let n = m.entries.len();
                let i = self.rng.below(n as u64) as usize;
                let v2 = self.rng.below(2) == 0;
                let garbage = self.garbage(1, 40, &[0x0F]);
                let e = &mut m.mut_entries()[i];
                e.set_entry_type(if v2 {
                    EntryType::EntryConfChangeV2
                } else {
                    EntryType::EntryConfChange
                });
                e.data = garbage;
                m
            }
            Mutation::CommitPastLog => {
                let term = if self.rng.below(2) == 0 {
                    t.term.max(1)
                } else {
                    self.term_at_or_ahead(t)
                };
                let from = if t.leader != 0 && t.leader != t.id && self.rng.below(2) == 0 {
                    t.leader
                } else {
                    self.peer(t)
                };
                let mut m = msg(MessageType::MsgHeartbeat, from, t.id, term);
                m.commit = self.past_log(t);
                m
            }
            Mutation::NotFromLeader => self.not_from_leader(t)?,
            Mutation::ResponsePastLog => {
                if !t.leading {
                    return None;
                }
                let kind = if self.rng.below(2) == 0 {
                    MessageType::MsgAppendResponse
                } else {
                    MessageType::MsgHeartbeatResponse
                };
                let mut m = msg(kind, self.peer(t), t.id, t.term);
                match self.rng.below(3) {
                    0 => m.index = self.past_log(t),
                    1 => m.commit = self.past_log(t),
                    _ => {
                        m.reject = true;
                        m.reject_hint = self.past_log(t);
                    }
                }
                m
            }
            Mutation::SnapshotRequest => {
                let term = self.term_at_or_ahead(t);
                let mut m = msg(MessageType::MsgAppendResponse, self.peer(t), t.id, term);
                m.index = self.rng.below(t.last_index + 1);
                m.request_snapshot = self.any_index(t).max(1);
                m
            }
            Mutation::VoteLog => {
                let kind = if self.rng.below(2) == 0 {
                    MessageType::MsgRequestVote
                } else {
                    MessageType::MsgRequestPreVote
                };
                let term = self.term_at_or_ahead(t);
                let mut m = msg(kind, self.peer(t), t.id, term);
                match self.rng.below(3) {
                    0 => m.log_term = self.rng.between(1, term),
                    1 => m.index = self.past_log(t),
                    _ => {
                        m.index = self.rng.between(1, t.last_index + 1);
                        m.log_term = self.rng.between(1, term);
                        m.commit = m.index + self.rng.between(1, 100);
                    }
                }
                m
            }
            Mutation::ReadContext => self.read_context(t),
            Mutation::TimeoutNowStale => {
                let from = self.peer(t);
                let term = if from != t.leader || t.leader == 0 {
                    t.term.max(1)
                } else {
                    t.term + self.rng.between(1, 3)
                };
                msg(MessageType::MsgTimeoutNow, from, t.id, term)
            }
            Mutation::ReadIndexRespStale => {
                let from = self.peer(t);
                if from == t.leader && t.leader != 0 {
                    return None;
                }
                let mut m = msg(MessageType::MsgReadIndexResp, from, t.id, t.term.max(1));
                m.index = self.any_index(t);
                m.mut_entries().push(ctx_entry(t.id, self.rng.next_u64()));
                m
            }
            Mutation::SnapshotMetadata => {
                let term = self.term_at_or_ahead(t).min(MAX_INDEX - 5);
                let mut m = self.snapshot_base(t, term);
                let above = m.term + self.rng.between(1, 5);
                let meta = m.mut_snapshot().mut_metadata();
                match self.rng.below(3) {
                    0 => meta.index = 0,
                    1 => meta.term = 0,
                    _ => meta.term = above,
                }
                m
            }
            Mutation::ConfState => {
                let term = self.term_at_or_ahead(t);
                let mut m = self.snapshot_base(t, term);
                let cs = self.bad_conf_state(t);
                m.mut_snapshot().mut_metadata().set_conf_state(cs);
                m
            }
            Mutation::SnapshotGarbage => {
                let term = self.term_at_or_ahead(t);
                let mut m = self.snapshot_base(t, term);
                let data = m.get_snapshot().data.clone();
                let garbage = match self.rng.below(3) {
                    0 if data.len() > 1 => {
                        let mut bytes = data.to_vec();
                        let i = self.rng.below(bytes.len() as u64) as usize;
                        bytes[i] ^= 1 << self.rng.below(8);
                        Bytes::from(bytes)
                    }
                    1 if data.len() > 1 => data.slice(..self.rng.below(data.len() as u64) as usize),
                    _ => self.garbage(0, 200, &[]),
                };
                m.mut_snapshot().data = garbage;
                m
            }
            Mutation::Misaddressed => {
                let mut m = self.any_message(t);
                m.to = if self.rng.below(3) == 0 {
                    0
                } else {
                    let other = self.peer(t);
                    if other == m.from {
                        0
                    } else {
                        other
                    }
                };
                m
            }
            Mutation::BadSender => {
                let mut m = self.any_message(t);
                m.from = if self.rng.below(2) == 0 { 0 } else { t.id };
                m
            }
            Mutation::LocalType => {
                let kind = MessageType::MsgPropose;
                let term = self.term_at_or_ahead(t);
                let mut m = msg(kind, self.peer(t), t.id, term);
                if kind == MessageType::MsgPropose && self.rng.below(2) == 0 {
                    m.term = 0;
                    let mut e = Entry::default();
                    e.data = self.garbage(0, 30, &[]);
                    m.mut_entries().push(e);
                }
                m
            }
            Mutation::OutOfRange => {
                let mut m = self.any_message(t);
                let huge = MAX_INDEX + 1 + self.rng.below(1 << 20);
                match self.rng.below(6) {
                    0 => m.term = huge,
                    1 => m.index = huge,
                    2 => m.commit = huge,
                    3 => m.log_term = huge,
                    4 => m.reject_hint = huge,
                    _ => m.mut_snapshot().mut_metadata().index = huge,
                }
                m
            }
            Mutation::BadTerm => {
                let mut m = self.any_message(t);
                if m.get_msg_type() == MessageType::MsgReadIndex {
                    m.term = self.term_at_or_ahead(t);
                } else {
                    m.term = 0;
                }
                m
            }
            Mutation::BadNotice => {
                let mut m = self.notice(t);
                match self.rng.below(4) {
                    0 => m.term = 0,
                    1 => m.commit = self.rng.between(1, 100),
                    2 => m.reject = !m.reject,
                    _ => m.context = self.garbage(1, 30, &[]),
                }
                m
            }
        };
        Some((kind, m))
    }

    fn replay(&mut self, t: &HostileTarget) -> Option<Message> {
        let id = t.id;
        self.sample(|m| m.to == id)
    }

    /// A copy of a real message to anyone, readdressed to the target, with a term below
    /// its term and its numbers scrambled. Readdressing is safe here: raft-rs answers
    /// every message from an older term with its own term and nothing else.
    fn stale_term(&mut self, t: &HostileTarget) -> Option<Message> {
        if t.term < 2 {
            return None;
        }
        let mut m = match self.sample(|_| true) {
            Some(m) => m,
            None => {
                let kind = TRAVELLING[self.rng.below(TRAVELLING.len() as u64) as usize];
                msg(kind, self.peer(t), t.id, 1)
            }
        };
        m.to = t.id;
        if m.from == t.id || m.from == 0 {
            m.from = self.peer(t);
        }
        if is_notice(&m) {
            m.set_msg_type(MessageType::MsgAppend);
        }
        m.term = self.rng.between(1, t.term - 1);
        for _ in 0..self.rng.between(1, 4) {
            match self.rng.below(6) {
                0 => m.index = self.any_index(t).min(MAX_INDEX - 64),
                1 => m.log_term = self.rng.between(0, m.term),
                2 => m.commit = self.any_index(t),
                3 => m.reject = !m.reject,
                4 => m.reject_hint = self.any_index(t),
                _ => {
                    // Entries that follow the index, of terms the message may hold.
                    let n = self.rng.below(4);
                    let mut entries = Vec::new();
                    for k in 0..n {
                        let mut e = Entry::default();
                        e.index = m.index + 1 + k;
                        e.term = m.term;
                        e.data = self.garbage(0, 16, &[]);
                        entries.push(e);
                    }
                    m.set_entries(entries.into());
                }
            }
        }
        Some(m)
    }

    /// A well-formed notice from a peer in the target's term.
    fn notice(&mut self, t: &HostileTarget) -> Message {
        let from = self.peer(t);
        let term = t.term.max(1);
        match self.rng.below(5) {
            0 => {
                let index = self.rng.below(t.last_index + 1);
                crate::notice::log_ends(from, t.id, term, index)
            }
            4 => {
                let index = self.any_index(t);
                crate::notice::quiet(from, t.id, term, index)
            }
            1 => {
                let index = self.any_index(t).max(1);
                crate::notice::snapshot_refused(from, t.id, term, index)
            }
            2 => crate::notice::stopping(from, t.id, term),
            _ => {
                let index = self.any_index(t);
                crate::notice::not_a_member(from, t.id, term, index)
            }
        }
    }

    /// A `MsgAppend` at `term` whose anchor and entries are well formed: a real one
    /// when one is kept, else one built here, with at least one entry.
    fn append_base(&mut self, t: &HostileTarget, term: u64) -> Message {
        let real = self.sample(|m| m.get_msg_type() == MessageType::MsgAppend);
        let mut m = real.unwrap_or_else(|| {
            let mut m = msg(MessageType::MsgAppend, 0, t.id, term);
            m.index = self.rng.below(t.last_index + 1);
            m.log_term = if m.index == 0 { 0 } else { 1 };
            m
        });
        (m.from, m.to) = (self.peer(t), t.id);
        m.term = term.max(m.log_term).max(1);
        if m.entries.is_empty() {
            let mut e = Entry::default();
            e.index = m.index + 1;
            e.term = m.term;
            e.data = self.garbage(0, 16, &[]);
            m.mut_entries().push(e);
        }
        m
    }

    /// A `MsgSnapshot` at `term` with well-formed metadata and data: a real one when
    /// one is kept, else one framed here (random state-machine bytes, real checksum).
    fn snapshot_base(&mut self, t: &HostileTarget, term: u64) -> Message {
        let real = self.sample(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        let mut m = real.unwrap_or_else(|| {
            let mut m = msg(MessageType::MsgSnapshot, 0, t.id, term);
            let mut snap = Snapshot::default();
            let data = self.garbage(0, 64, &[]);
            snap.data = crate::snapshot_codec::encode_with_members(data, &Default::default());
            let meta = snap.mut_metadata();
            meta.index = self.any_index(t).max(1);
            meta.term = self.rng.between(1, term.max(1));
            let mut cs = ConfState::default();
            cs.voters = vec![1, 2, 3];
            meta.set_conf_state(cs);
            m.set_snapshot(snap);
            m
        });
        (m.from, m.to) = (self.peer(t), t.id);
        m.term = term.max(m.get_snapshot().get_metadata().term);
        m
    }

    /// A ConfState that `validate::check_conf_state` refuses.
    fn bad_conf_state(&mut self, t: &HostileTarget) -> ConfState {
        let mut ids: Vec<u64> = t.peers.iter().copied().chain([t.id]).collect();
        ids.sort_unstable();
        let a = ids[self.rng.below(ids.len() as u64) as usize];
        let b = ids[self.rng.below(ids.len() as u64) as usize];
        let mut cs = ConfState::default();
        cs.voters = ids.clone();
        match self.rng.below(7) {
            0 => cs.learners = vec![a],
            1 => {
                cs.voters.clear();
                cs.learners = vec![a];
            }
            2 => cs.voters.push(a),
            3 => cs.voters.push(0),
            4 => {
                // A joint configuration that removes every incoming voter.
                cs.voters.clear();
                cs.voters_outgoing = ids.clone();
            }
            5 => {
                // learners_next outside the outgoing voters.
                cs.voters_outgoing = ids.iter().copied().filter(|&i| i != b).collect();
                cs.learners_next = vec![b];
            }
            _ => cs.auto_leave = true,
        }
        cs
    }

    /// An append, heartbeat or snapshot in the target's term from a node other than the
    /// one leader of that term it knows (itself, or the one it follows).
    fn not_from_leader(&mut self, t: &HostileTarget) -> Option<Message> {
        if !t.leading && t.leader == 0 {
            return None;
        }
        let from = self.peer(t);
        if from == t.leader {
            return None;
        }
        let term = t.term.max(1);
        let mut m = match self.rng.below(3) {
            0 => {
                let mut m = msg(MessageType::MsgHeartbeat, from, t.id, term);
                m.commit = self.rng.below(t.last_index + 1);
                m
            }
            1 => {
                let mut m = self.append_base(t, term);
                let ok = m.log_term <= term && m.entries.iter().all(|e| e.term <= term);
                if !ok {
                    m = msg(MessageType::MsgAppend, from, t.id, term);
                }
                m
            }
            _ => {
                let m = self.snapshot_base(t, term);
                if m.get_snapshot().get_metadata().term > term {
                    return None;
                }
                m
            }
        };
        (m.from, m.term) = (from, term);
        Some(m)
    }

    fn read_context(&mut self, t: &HostileTarget) -> Message {
        let from = self.peer(t);
        let (mut m, asker) = if self.rng.below(2) == 0 {
            (msg(MessageType::MsgReadIndex, from, t.id, 0), from)
        } else {
            let term = self.term_at_or_ahead(t);
            (msg(MessageType::MsgReadIndexResp, from, t.id, term), t.id)
        };
        match self.rng.below(4) {
            0 => {}
            1 => {
                m.mut_entries().push(ctx_entry(asker, 1));
                m.mut_entries().push(ctx_entry(asker, 2));
            }
            2 => {
                let mut e = Entry::default();
                e.data = self.garbage(0, 40, &[]);
                if e.data.len() == crate::replica::READ_CTX_LEN {
                    e.data = e.data.slice(1..);
                }
                m.mut_entries().push(e);
            }
            _ => {
                let other = if asker == 1 { 2 } else { asker - 1 };
                m.mut_entries().push(ctx_entry(other, self.rng.next_u64()));
            }
        }
        m
    }

    /// A message of a random type the transport carries, to be broken in one field.
    fn any_message(&mut self, t: &HostileTarget) -> Message {
        let mut m = self
            .sample(|m| !is_notice(m))
            .unwrap_or_else(|| msg(MessageType::MsgHeartbeat, 0, t.id, t.term.max(1)));
        (m.from, m.to) = (self.peer(t), t.id);
        m
    }

    /// `lo..=hi` random bytes after `prefix`.
    fn garbage(&mut self, lo: u64, hi: u64, prefix: &[u8]) -> Bytes {
        let n = self.rng.between(lo, hi);
        let mut v = prefix.to_vec();
        v.extend((0..n).map(|_| self.rng.next_u64() as u8));
        Bytes::from(v)
    }
}

/// The types raft-rs sends between nodes.
const TRAVELLING: [MessageType; 12] = [
    MessageType::MsgAppend,
    MessageType::MsgAppendResponse,
    MessageType::MsgRequestVote,
    MessageType::MsgRequestVoteResponse,
    MessageType::MsgSnapshot,
    MessageType::MsgHeartbeat,
    MessageType::MsgHeartbeatResponse,
    MessageType::MsgTransferLeader,
    MessageType::MsgTimeoutNow,
    MessageType::MsgReadIndex,
    MessageType::MsgReadIndexResp,
    MessageType::MsgRequestPreVote,
];

fn msg(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    (m.from, m.to, m.term) = (from, to, term);
    m
}

fn is_notice(m: &Message) -> bool {
    matches!(
        m.get_msg_type(),
        MessageType::MsgUnreachable | MessageType::MsgSnapStatus
    )
}

/// An entry holding a read context of node `asker` (random incarnation and round).
fn ctx_entry(asker: u64, salt: u64) -> Entry {
    let mut data = Vec::with_capacity(crate::replica::READ_CTX_LEN);
    data.extend_from_slice(&asker.to_le_bytes());
    data.extend_from_slice(&salt.to_le_bytes());
    data.extend_from_slice(&salt.rotate_left(17).to_le_bytes());
    let mut e = Entry::default();
    e.data = Bytes::from(data);
    e
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use protobuf::Message as _;

    use super::*;
    use crate::validate::{check, check_conf_state, Local};

    fn target(leading: bool, leader: u64) -> HostileTarget {
        HostileTarget {
            id: 2,
            term: 7,
            leading,
            leader,
            last_index: 40,
            peers: vec![1, 3, 4],
        }
    }

    /// Every kind the generator marks as refused is refused by the checks that need no
    /// more than `Local` (the replica's snapshot check aside), in every role.
    #[test]
    fn kinds_marked_refused_are_refused() {
        let mut h = Hostile::new(9);
        let mut seen = BTreeSet::new();
        for (leading, leader) in [(true, 2), (false, 1), (false, 0)] {
            let t = target(leading, leader);
            let local = Local {
                id: t.id,
                term: t.term,
                leading,
                leader,
                last_index: t.last_index,
            };
            for _ in 0..20_000 {
                let Some((kind, m)) = h.generate(&t) else {
                    continue;
                };
                seen.insert(kind);
                let refused = match crate::notice::parse(&m, t.id) {
                    Some(r) => r.is_err(),
                    None => check(&m, &local).is_err(),
                };
                if kind.must_be_refused() {
                    assert!(refused, "{kind:?} passed the checks: {m:?}");
                }
                m.write_to_bytes().expect("every generated message encodes");
            }
        }
        // Without real messages to copy, replays are the only kind never made.
        assert_eq!(seen.len(), Mutation::ALL.len() - 1, "{seen:?}");
    }

    #[test]
    fn bad_conf_states_are_refused() {
        let mut h = Hostile::new(3);
        for _ in 0..1_000 {
            let cs = h.bad_conf_state(&target(false, 1));
            assert!(check_conf_state(&cs).is_err(), "{cs:?}");
        }
    }
}
