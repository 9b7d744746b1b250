//! Client sessions: a retried proposal is applied at most once, and the retry gets the
//! first attempt's response (the Raft thesis, §6.3).
//!
//! [`Sessions`] wraps the host's [`SessionMachine`] and is itself the
//! [`StateMachine`] the node runs. Every command it is given is an envelope:
//!
//! - a *registration* ([`Sessions::register_command`]) opens a session; its id is the
//!   log index of that entry, so every replica assigns the same id;
//! - a *session command* ([`Session::command`]) carries (session id, sequence number)
//!   and the host's command; the wrapper applies it only if its sequence number is new
//!   for that session, and otherwise answers with the response it recorded the first
//!   time;
//! - a *plain command* ([`Sessions::plain`]) goes to the host's machine without any
//!   deduplication.
//!
//! The session table (each session's last sequence number, its response and the index
//! it was last used at) is replicated state: it is part of the wrapper's snapshots and is
//! rebuilt by applying the log, and a state machine that survives restarts keeps it
//! durable through the [`SessionMachine`] hooks. Sessions expire by a rule that depends
//! only on the log ([`SessionLimits`]), never on a replica's clock, so every replica
//! expires the same sessions at the same index.
//!
//! [`Session::propose`] is the retrying client: it turns `NotLeader`, `Timeout`,
//! `OutcomeUnknown`, `Dropped` and `Busy` into further attempts with the same sequence
//! number until one of them answers, which makes a retry safe. See `docs/sessions.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::{ProposeError, StateMachineError};
use crate::node::Node;
use crate::state_machine::StateMachine;

/// A [`StateMachine`] whose responses can be kept in the replicated session table, and
/// (for a state machine that survives restarts) that keeps the table durable.
///
/// An in-memory state machine (one that starts empty, `applied_index() == 0`, and is
/// rebuilt from the snapshot and the log) implements only the two response codecs: the
/// table is rebuilt with it. A state machine whose state survives a restart must also
/// override the four persistence hooks, or [`Sessions::new`] refuses it.
///
/// # Correctness
///
/// - `decode_response(encode_response(r))` must give a response equal to `r`: a retry
///   answered from a snapshot's table gets the decoded copy.
/// - A durable implementation persists each [`SessionUpdate`] in the same atomic write
///   as the entry's effect and its applied index; otherwise a crash between the two
///   either forgets a session (its retries are then refused as expired, the safe
///   direction) or, worse, keeps an effect without its sequence number, and a retry
///   applies it twice.
pub trait SessionMachine: StateMachine {
    /// Encodes a response for the session table (snapshots, durable tables).
    fn encode_response(response: &Self::Response) -> Vec<u8>;

    /// Decodes what [`Self::encode_response`] produced.
    ///
    /// # Errors
    ///
    /// A [`StateMachineError`] for bytes that do not decode: the snapshot holding them
    /// is refused (or, at start, the node does not start).
    fn decode_response(bytes: &[u8]) -> Result<Self::Response, StateMachineError>;

    /// Applies `command` at `index` and persists `update` atomically with it. The
    /// default calls [`StateMachine::apply`] and keeps nothing (right for a state machine
    /// that is rebuilt from the log at every start).
    ///
    /// # Correctness
    ///
    /// As [`StateMachine::apply`]; a durable state machine writes `update` (upsert the
    /// record, delete the expired ids) in the same transaction as the command's effect.
    fn apply_in_session(
        &mut self,
        index: u64,
        command: &[u8],
        update: &SessionUpdate<'_, Self::Response>,
    ) -> Self::Response {
        let _ = update;
        self.apply(index, command)
    }

    /// Records that the entry at `index` ran no command of the host's (a registration,
    /// a repeated sequence number, an expired session, a raft no-op) and persists
    /// `update` with it. The default calls [`StateMachine::apply_noop`].
    ///
    /// # Correctness
    ///
    /// As [`StateMachine::apply_noop`]; a durable state machine must persist a non-empty
    /// `update` (and the index) atomically, even though the command had no effect.
    fn apply_noop_in_session(&mut self, index: u64, update: &SessionUpdate<'_, Self::Response>) {
        let _ = update;
        self.apply_noop(index)
    }

    /// Restores the host's snapshot `data` at `index` and replaces the durable session
    /// table with `sessions`, atomically. The default calls [`StateMachine::restore`].
    ///
    /// # Errors
    ///
    /// As [`StateMachine::restore`].
    fn restore_with_sessions(
        &mut self,
        index: u64,
        data: &[u8],
        sessions: &[SessionRecord<Self::Response>],
    ) -> Result<(), StateMachineError> {
        let _ = sessions;
        self.restore(index, data)
    }

    /// The durable session table as of [`StateMachine::applied_index`], read once when
    /// [`Sessions::new`] wraps the machine. `None` (the default) says the machine keeps
    /// no table: right only for a machine that starts empty.
    ///
    /// # Errors
    ///
    /// A [`StateMachineError`] when the stored table cannot be read.
    fn load_sessions(
        &self,
    ) -> Result<Option<Vec<SessionRecord<Self::Response>>>, StateMachineError> {
        Ok(None)
    }
}

/// One session as the table keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord<R> {
    /// The session's id: the log index of its registration.
    pub id: u64,
    /// The highest sequence number applied for it (0: none yet).
    pub last_seq: u64,
    /// The response to `last_seq`, returned again to a retry of it.
    pub response: Option<R>,
    /// The log index the session was last used at (registration or command).
    pub last_index: u64,
}

/// What one applied entry changed in the session table, for a durable
/// [`SessionMachine`] to persist with the entry.
#[derive(Debug)]
pub struct SessionUpdate<'a, R> {
    /// The session to insert or overwrite (its response is the one just produced, or the
    /// one already kept). `None` when no session was touched.
    pub upsert: Option<SessionUpdateRecord<'a, R>>,
    /// Sessions that expired at this entry: delete them.
    pub expired: &'a [u64],
}

/// The session record of a [`SessionUpdate`], borrowing its response.
#[derive(Debug)]
pub struct SessionUpdateRecord<'a, R> {
    /// The session's id.
    pub id: u64,
    /// Its highest applied sequence number.
    pub last_seq: u64,
    /// The response to `last_seq`; `None` for a session that has run no command yet, or
    /// while [`SessionMachine::apply_in_session`] is still computing it (the durable
    /// machine stores the response it is about to return).
    pub response: Option<&'a R>,
    /// The index it was last used at (this entry's).
    pub last_index: u64,
}

impl<R> SessionUpdate<'_, R> {
    /// True when the entry changed nothing in the table.
    pub fn is_empty(&self) -> bool {
        self.upsert.is_none() && self.expired.is_empty()
    }
}

/// When sessions expire. Both rules count log entries, so every replica expires the
/// same sessions at the same entry; they must be equal on every replica (like the state
/// machine's code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// At most this many sessions; registering one more expires the least recently used.
    pub max_sessions: usize,
    /// A session not used for this many log entries expires.
    pub idle_entries: u64,
}

impl Default for SessionLimits {
    /// 10,000 sessions, idle for at most 1,000,000 entries.
    fn default() -> Self {
        SessionLimits {
            max_sessions: 10_000,
            idle_entries: 1_000_000,
        }
    }
}

/// What the wrapped state machine answers for each entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionReply<R> {
    /// The command's response; for a repeated sequence number, the response recorded
    /// when it was first applied.
    Applied(R),
    /// The same, for a repeated sequence number: the command was not applied again.
    Repeated(R),
    /// A registration: the new session's id.
    Registered(u64),
    /// The command was not applied.
    Rejected(SessionRejection),
}

/// Why [`Sessions`] did not apply a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionRejection {
    /// The session does not exist (expired, or never registered). Whether an earlier
    /// attempt of the command was applied is unknown; register a new session.
    #[error("session {id} has expired or was never registered")]
    Expired {
        /// The session's id.
        id: u64,
    },
    /// A sequence number below the session's last one: the session has moved on, and
    /// that command's response is no longer kept.
    #[error("sequence number {seq} of session {id} is below its last one ({last})")]
    Stale {
        /// The session's id.
        id: u64,
        /// The sequence number asked for.
        seq: u64,
        /// The session's last sequence number.
        last: u64,
    },
    /// The command is not a sessions envelope (proposed without [`Session::command`] or
    /// [`Sessions::plain`]).
    #[error("not a sessions envelope")]
    Malformed,
}

const TAG_PLAIN: u8 = 0xC0;
const TAG_REGISTER: u8 = 0xC1;
const TAG_COMMAND: u8 = 0xC2;
const COMMAND_HEADER: usize = 17;
const SNAPSHOT_MAGIC: &[u8; 4] = b"RNS1";

/// The session id and sequence number of a session command, or `None` for any other
/// envelope (for checkers and tools that read the log).
pub fn session_of(command: &[u8]) -> Option<(u64, u64)> {
    if command.len() < COMMAND_HEADER || command[0] != TAG_COMMAND {
        return None;
    }
    Some((read_u64(&command[1..9]), read_u64(&command[9..17])))
}

fn read_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("8 bytes"))
}

/// Wraps a [`SessionMachine`] with the replicated session table; run
/// `Node<Sessions<M>>`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use raftnode::{ChannelNetwork, Config, MemLogStore, Node, Session, Sessions, RetryPolicy};
/// # use raftnode::{SessionMachine, StateMachine, StateMachineError};
/// # #[derive(Default)] struct Counter { total: u64, applied: u64 }
/// # impl StateMachine for Counter {
/// #     type Response = u64;
/// #     fn apply(&mut self, index: u64, c: &[u8]) -> u64 { self.total += c.len() as u64; self.applied = index; self.total }
/// #     fn apply_noop(&mut self, index: u64) { self.applied = index; }
/// #     fn applied_index(&self) -> u64 { self.applied }
/// #     fn snapshot(&self) -> Result<bytes::Bytes, StateMachineError> { Ok(self.total.to_le_bytes().to_vec().into()) }
/// #     fn restore(&mut self, index: u64, d: &[u8]) -> Result<(), StateMachineError> {
/// #         self.total = u64::from_le_bytes(d.try_into().map_err(StateMachineError::new)?); self.applied = index; Ok(()) }
/// # }
/// impl SessionMachine for Counter {
///     fn encode_response(total: &u64) -> Vec<u8> { total.to_le_bytes().to_vec() }
///     fn decode_response(b: &[u8]) -> Result<u64, StateMachineError> {
///         Ok(u64::from_le_bytes(b.try_into().map_err(StateMachineError::new)?))
///     }
/// }
///
/// let net = ChannelNetwork::new();
/// let mut config = Config::new(1);
/// config.initial_voters = vec![1];
/// let machine = Sessions::new(Counter::default())?;
/// let node = Node::start(config, MemLogStore::new(), machine, net.transport(1), &raftnode::discard_logger())?;
/// node.wait_for_leader(Duration::from_secs(5))?;
///
/// let policy = RetryPolicy::default();
/// let nodes = [node.clone()];
/// let mut session = Session::register(&nodes, &policy)?;
/// assert_eq!(session.propose(&nodes, b"abc", &policy)?, 3);
/// node.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Sessions<M: SessionMachine> {
    inner: M,
    limits: SessionLimits,
    table: BTreeMap<u64, SessionRecord<M::Response>>,
    /// (last_index, id) of every session: the expiry order.
    by_use: BTreeSet<(u64, u64)>,
    /// Test-only fault: apply every session command as new (no deduplication).
    dedup_off: bool,
}

impl<M: SessionMachine> std::fmt::Debug for Sessions<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("limits", &self.limits)
            .field("sessions", &self.table.len())
            .finish_non_exhaustive()
    }
}

impl<M: SessionMachine> Sessions<M>
where
    M::Response: Clone,
{
    /// Wraps `inner` with the default [`SessionLimits`].
    ///
    /// # Errors
    ///
    /// As [`Sessions::with_limits`].
    pub fn new(inner: M) -> Result<Self, StateMachineError> {
        Self::with_limits(inner, SessionLimits::default())
    }

    /// Wraps `inner`, loading its durable session table if it keeps one.
    ///
    /// # Errors
    ///
    /// A [`StateMachineError`] when `inner` starts with applied entries
    /// (`applied_index() > 0`) but keeps no session table
    /// ([`SessionMachine::load_sessions`] returns `None`): its retries could apply
    /// twice after a restart. Also when the stored table cannot be read, or when the
    /// limits are zero.
    pub fn with_limits(inner: M, limits: SessionLimits) -> Result<Self, StateMachineError> {
        if limits.max_sessions == 0 || limits.idle_entries == 0 {
            return Err(StateMachineError::new(
                "SessionLimits: max_sessions and idle_entries must be at least 1",
            ));
        }
        let stored = inner.load_sessions()?;
        if stored.is_none() && inner.applied_index() > 0 {
            return Err(StateMachineError::new(format!(
                "the state machine resumes at applied index {} but keeps no session table \
                 (SessionMachine::load_sessions returned None): implement the persistence \
                 hooks (docs/sessions.md, \"Durable state machines\")",
                inner.applied_index()
            )));
        }
        let mut s = Sessions {
            inner,
            limits,
            table: BTreeMap::new(),
            by_use: BTreeSet::new(),
            dedup_off: false,
        };
        s.replace_table(stored.unwrap_or_default());
        Ok(s)
    }

    /// Test-only: a wrapper that applies every session command as new, the bug sessions
    /// exist to prevent. The simulator's bug test uses it to prove its exactly-once
    /// check fails without deduplication.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn without_dedup_for_tests(mut self) -> Self {
        self.dedup_off = true;
        self
    }

    /// The command that registers a new session; its response is
    /// [`SessionReply::Registered`] with the id.
    pub fn register_command() -> Bytes {
        Bytes::from_static(&[TAG_REGISTER])
    }

    /// `command` as a plain envelope: applied without deduplication, like a
    /// proposal to the bare state machine.
    pub fn plain(command: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(command.len() + 1);
        out.push(TAG_PLAIN);
        out.extend_from_slice(command);
        out.into()
    }

    /// The wrapped state machine.
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// The wrapped state machine, mutably (for the host's own bookkeeping; changing
    /// replicated state through it breaks determinism).
    pub fn inner_mut(&mut self) -> &mut M {
        &mut self.inner
    }

    /// The limits sessions expire by.
    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when no session is open.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The record of session `id`, if it is open.
    pub fn session(&self, id: u64) -> Option<&SessionRecord<M::Response>> {
        self.table.get(&id)
    }

    fn replace_table(&mut self, records: Vec<SessionRecord<M::Response>>) {
        self.table.clear();
        self.by_use.clear();
        for r in records {
            self.by_use.insert((r.last_index, r.id));
            self.table.insert(r.id, r);
        }
    }

    fn touch(&mut self, id: u64, index: u64) {
        if let Some(r) = self.table.get_mut(&id) {
            self.by_use.remove(&(r.last_index, id));
            r.last_index = index;
            self.by_use.insert((index, id));
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(r) = self.table.remove(&id) {
            self.by_use.remove(&(r.last_index, id));
        }
    }

    /// Expires the sessions idle for more than `idle_entries` as of `index`, and, when
    /// `make_room`, the least recently used ones until one more fits.
    fn expire(&mut self, index: u64, make_room: bool) -> Vec<u64> {
        let mut gone = Vec::new();
        while let Some(&(last, id)) = self.by_use.first() {
            let idle = index.saturating_sub(last) > self.limits.idle_entries;
            let full = make_room && self.table.len() >= self.limits.max_sessions;
            if !idle && !full {
                break;
            }
            self.remove(id);
            gone.push(id);
        }
        gone
    }

    fn noop(&mut self, index: u64, upsert: Option<u64>, expired: &[u64]) {
        let record = upsert.and_then(|id| self.table.get(&id));
        let update = SessionUpdate {
            upsert: record.map(|r| SessionUpdateRecord {
                id: r.id,
                last_seq: r.last_seq,
                response: r.response.as_ref(),
                last_index: r.last_index,
            }),
            expired,
        };
        self.inner.apply_noop_in_session(index, &update);
    }

    fn apply_command(
        &mut self,
        index: u64,
        id: u64,
        seq: u64,
        command: &[u8],
    ) -> SessionReply<M::Response> {
        let expired = self.expire(index, false);
        let Some(record) = self.table.get(&id) else {
            self.noop(index, None, &expired);
            return SessionReply::Rejected(SessionRejection::Expired { id });
        };
        let last = record.last_seq;
        if !self.dedup_off && seq <= last {
            if seq < last {
                self.touch(id, index);
                self.noop(index, Some(id), &expired);
                return SessionReply::Rejected(SessionRejection::Stale { id, seq, last });
            }
            self.touch(id, index);
            let response = self.table[&id].response.clone();
            self.noop(index, Some(id), &expired);
            return match response {
                Some(r) => SessionReply::Repeated(r),
                // A sequence number is recorded only with its response.
                None => SessionReply::Rejected(SessionRejection::Stale { id, seq, last }),
            };
        }
        self.touch(id, index);
        let update = SessionUpdate {
            upsert: Some(SessionUpdateRecord {
                id,
                last_seq: seq.max(last),
                response: None,
                last_index: index,
            }),
            expired: &expired,
        };
        let response = self.inner.apply_in_session(index, command, &update);
        let r = self.table.get_mut(&id).expect("checked above");
        r.last_seq = seq.max(last);
        r.response = Some(response.clone());
        SessionReply::Applied(response)
    }

    fn encode_table(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&(self.table.len() as u64).to_le_bytes());
        for r in self.table.values() {
            out.extend_from_slice(&r.id.to_le_bytes());
            out.extend_from_slice(&r.last_seq.to_le_bytes());
            out.extend_from_slice(&r.last_index.to_le_bytes());
            match &r.response {
                Some(resp) => {
                    let bytes = M::encode_response(resp);
                    out.push(1);
                    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                    out.extend_from_slice(&bytes);
                }
                None => out.push(0),
            }
        }
    }
}

/// A wrapper snapshot split: the session records and the host's snapshot bytes.
type SplitSnapshot<'a, R> = (Vec<SessionRecord<R>>, &'a [u8]);

/// Splits a wrapper snapshot into its session records and the host's snapshot bytes.
fn decode_snapshot<M: SessionMachine>(
    data: &[u8],
) -> Result<SplitSnapshot<'_, M::Response>, StateMachineError> {
    let bad = |what: &str| StateMachineError::new(format!("sessions snapshot: {what}"));
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], StateMachineError> {
        let end = at
            .checked_add(n)
            .filter(|e| *e <= data.len())
            .ok_or_else(|| bad("truncated"))?;
        let s = &data[at..end];
        at = end;
        Ok(s)
    };
    if take(4)? != SNAPSHOT_MAGIC {
        return Err(bad("missing the RNS1 header"));
    }
    let count = read_u64(take(8)?);
    // Each record is at least 25 bytes: a count beyond that is corrupt, not a reason to
    // allocate.
    if count > (data.len() / 25) as u64 {
        return Err(bad("session count larger than the snapshot"));
    }
    let mut records = Vec::with_capacity(count as usize);
    let mut previous = None;
    for _ in 0..count {
        let id = read_u64(take(8)?);
        let last_seq = read_u64(take(8)?);
        let last_index = read_u64(take(8)?);
        if previous.is_some_and(|p| p >= id) {
            return Err(bad("session ids out of order"));
        }
        previous = Some(id);
        let response = match take(1)?[0] {
            0 => None,
            1 => {
                let len = read_u64(take(8)?);
                let len = usize::try_from(len).map_err(|_| bad("response length"))?;
                Some(M::decode_response(take(len)?)?)
            }
            _ => return Err(bad("bad response flag")),
        };
        records.push(SessionRecord {
            id,
            last_seq,
            response,
            last_index,
        });
    }
    Ok((records, &data[at..]))
}

impl<M: SessionMachine> StateMachine for Sessions<M>
where
    M::Response: Clone,
{
    type Response = SessionReply<M::Response>;

    fn apply(&mut self, index: u64, command: &[u8]) -> SessionReply<M::Response> {
        match command.first() {
            Some(&TAG_PLAIN) => {
                let expired = self.expire(index, false);
                let update = SessionUpdate {
                    upsert: None,
                    expired: &expired,
                };
                SessionReply::Applied(self.inner.apply_in_session(index, &command[1..], &update))
            }
            Some(&TAG_REGISTER) if command.len() == 1 => {
                let expired = self.expire(index, true);
                // Ids are log indexes: unique and the same on every replica.
                let id = index;
                self.table.insert(
                    id,
                    SessionRecord {
                        id,
                        last_seq: 0,
                        response: None,
                        last_index: index,
                    },
                );
                self.by_use.insert((index, id));
                self.noop(index, Some(id), &expired);
                SessionReply::Registered(id)
            }
            Some(&TAG_COMMAND) if command.len() >= COMMAND_HEADER => {
                let (id, seq) = session_of(command).expect("length checked");
                self.apply_command(index, id, seq, &command[COMMAND_HEADER..])
            }
            _ => {
                let expired = self.expire(index, false);
                self.noop(index, None, &expired);
                SessionReply::Rejected(SessionRejection::Malformed)
            }
        }
    }

    fn apply_noop(&mut self, index: u64) {
        let expired = self.expire(index, false);
        self.noop(index, None, &expired);
    }

    fn applied_index(&self) -> u64 {
        self.inner.applied_index()
    }

    fn snapshot(&self) -> Result<Bytes, StateMachineError> {
        let inner = self.inner.snapshot()?;
        let mut out = Vec::with_capacity(12 + self.table.len() * 40 + inner.len());
        self.encode_table(&mut out);
        out.extend_from_slice(&inner);
        Ok(out.into())
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        let (records, inner) = decode_snapshot::<M>(data)?;
        self.inner.restore_with_sessions(index, inner, &records)?;
        self.replace_table(records);
        Ok(())
    }

    fn check_snapshot(&self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        let (_, inner) = decode_snapshot::<M>(data)?;
        self.inner.check_snapshot(index, inner)
    }

    /// The host's digest mixed with the session table's (each session's id, last
    /// sequence number and last use; the responses follow from the commands). `None`
    /// when the host's is.
    fn digest(&self) -> Option<u64> {
        let inner = self.inner.digest()?;
        // FNV-1a over the table's numbers: deterministic, no randomized hasher.
        let mut h = crate::digest::FNV_START ^ inner;
        for r in self.table.values() {
            for n in [r.id, r.last_seq, r.last_index] {
                h = crate::digest::fnv1a(h, &n.to_le_bytes());
            }
        }
        Some(h)
    }
}

/// How [`Session::propose`] retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Give up after this long in all (the outcome is then unknown).
    pub deadline: Duration,
    /// How long one attempt waits for its outcome before trying again.
    pub attempt_timeout: Duration,
    /// The pause before the first retry; it doubles up to `max_backoff`.
    pub backoff: Duration,
    /// The longest pause between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 30 s in all, 2 s per attempt, pauses from 10 ms doubling to 500 ms.
    fn default() -> Self {
        RetryPolicy {
            deadline: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(2),
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(500),
        }
    }
}

/// Why [`Session::propose`] (or [`Session::register`]) gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RetryError {
    /// The deadline passed without an answer. The command may or may not have been
    /// applied; retrying it again with the same session stays safe.
    #[error("no answer within the retry deadline (last error: {last})")]
    DeadlineExceeded {
        /// What the last attempt returned.
        last: ProposeError,
    },
    /// The session table refused the command ([`SessionRejection`]). For `Expired`,
    /// whether an earlier attempt applied is unknown; register a new session.
    #[error("refused by the session table: {0}")]
    Rejected(SessionRejection),
    /// The command can never be proposed (`TooLarge`, `Empty`): nothing was applied.
    #[error("the command cannot be proposed: {0}")]
    Invalid(ProposeError),
    /// No node was given.
    #[error("no nodes to propose to")]
    NoNodes,
}

/// A proposal in a session, ready to send and to resend: [`Session::command`] makes
/// it, and every attempt sends the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCommand {
    id: u64,
    seq: u64,
    bytes: Bytes,
}

impl SessionCommand {
    /// The session's id.
    pub fn session(&self) -> u64 {
        self.id
    }

    /// The command's sequence number in its session.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The envelope to propose.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// A client's session: registers once, then numbers each command so that retries of it
/// are recognized.
///
/// One command at a time per session: [`Session::propose`] takes `&mut self`, and the
/// table keeps only the last command's response. Open several sessions for concurrent
/// commands (they are cheap: one table record each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    id: u64,
    next_seq: u64,
}

impl Session {
    /// A session handle for an id registered before (kept by the client across its own
    /// restarts), continuing at `next_seq` (one above the last sequence number used).
    pub fn resume(id: u64, next_seq: u64) -> Self {
        Session {
            id,
            next_seq: next_seq.max(1),
        }
    }

    /// Registers a new session through whichever of `nodes` leads, retrying under
    /// `policy`. A retried registration may open an extra session that nobody uses; it
    /// expires under [`SessionLimits`].
    ///
    /// # Errors
    ///
    /// As [`Session::propose`].
    pub fn register<M>(
        nodes: &[Node<Sessions<M>>],
        policy: &RetryPolicy,
    ) -> Result<Self, RetryError>
    where
        M: SessionMachine,
        M::Response: Clone,
    {
        let reply = retry(nodes, &Sessions::<M>::register_command(), policy)?;
        match reply {
            SessionReply::Registered(id) => Ok(Session { id, next_seq: 1 }),
            SessionReply::Rejected(r) => Err(RetryError::Rejected(r)),
            // The register envelope only ever answers Registered or Malformed.
            SessionReply::Applied(_) | SessionReply::Repeated(_) => {
                Err(RetryError::Rejected(SessionRejection::Malformed))
            }
        }
    }

    /// The session's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The sequence number the next command gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Numbers `command` as this session's next and wraps it: propose
    /// [`SessionCommand::bytes`], and on any doubt propose the same bytes again.
    pub fn command(&mut self, command: &[u8]) -> SessionCommand {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut out = Vec::with_capacity(COMMAND_HEADER + command.len());
        out.push(TAG_COMMAND);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(command);
        SessionCommand {
            id: self.id,
            seq,
            bytes: out.into(),
        }
    }

    /// Proposes `command` in this session through whichever of `nodes` leads, retrying
    /// under `policy` until an attempt answers: the command is applied at most once,
    /// and every answer is the response of that one application.
    ///
    /// `nodes` are the handles this process holds (in a process hosting one replica,
    /// the one node; the helper then follows no redirect and waits for this node to
    /// lead or to learn the outcome). Use [`Session::command`] and [`propose_with`] to
    /// retry through your own RPC instead.
    ///
    /// # Errors
    ///
    /// [`RetryError::DeadlineExceeded`] (outcome unknown), [`RetryError::Rejected`],
    /// [`RetryError::Invalid`], [`RetryError::NoNodes`].
    pub fn propose<M>(
        &mut self,
        nodes: &[Node<Sessions<M>>],
        command: &[u8],
        policy: &RetryPolicy,
    ) -> Result<M::Response, RetryError>
    where
        M: SessionMachine,
        M::Response: Clone,
    {
        let command = self.command(command);
        Self::send(nodes, &command, policy)
    }

    /// Proposes an already numbered `command` (say, one a client kept across its own
    /// restart) with the same retries as [`Session::propose`].
    ///
    /// # Errors
    ///
    /// As [`Session::propose`].
    pub fn send<M>(
        nodes: &[Node<Sessions<M>>],
        command: &SessionCommand,
        policy: &RetryPolicy,
    ) -> Result<M::Response, RetryError>
    where
        M: SessionMachine,
        M::Response: Clone,
    {
        match retry(nodes, command.bytes(), policy)? {
            SessionReply::Applied(r) | SessionReply::Repeated(r) => Ok(r),
            SessionReply::Rejected(r) => Err(RetryError::Rejected(r)),
            SessionReply::Registered(_) => Err(RetryError::Rejected(SessionRejection::Malformed)),
        }
    }
}

/// What one attempt of [`propose_with`] returned.
pub type Attempt<R> = Result<SessionReply<R>, ProposeError>;

/// The retry loop of [`Session::propose`] over any way of reaching the cluster:
/// `attempt(bytes, leader_hint)` proposes `bytes` (to the leader it knows, or the hint
/// from the last `NotLeader`) and waits at most `policy.attempt_timeout` for the reply.
///
/// Retries on `NotLeader`, `Dropped`, `OutcomeUnknown`, `Timeout`, `Busy` and
/// `Stopped`, with the same bytes; returns the first reply.
///
/// # Errors
///
/// [`RetryError::DeadlineExceeded`] when `policy.deadline` passes (outcome unknown),
/// [`RetryError::Invalid`] for `TooLarge` / `Empty`.
pub fn propose_with<R>(
    bytes: &Bytes,
    policy: &RetryPolicy,
    mut attempt: impl FnMut(&Bytes, Option<u64>) -> Attempt<R>,
) -> Result<SessionReply<R>, RetryError> {
    let deadline = Instant::now() + policy.deadline;
    let mut pause = policy.backoff;
    let mut hint = None;
    // One redirect is followed at once per pause; two nodes naming each other during an
    // election would otherwise spin.
    let mut redirected = false;
    loop {
        let last = match attempt(bytes, hint) {
            Ok(reply) => return Ok(reply),
            Err(e @ (ProposeError::TooLarge { .. } | ProposeError::Empty)) => {
                return Err(RetryError::Invalid(e))
            }
            Err(ProposeError::NotLeader { leader }) => {
                // A redirect with a leader to go to is tried at once.
                if leader.is_some() && leader != hint && !redirected {
                    hint = leader;
                    redirected = true;
                    if Instant::now() < deadline {
                        continue;
                    }
                }
                hint = leader;
                ProposeError::NotLeader { leader }
            }
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(RetryError::DeadlineExceeded { last });
        }
        // The pause is the point (library backoff, not test synchronization): no leader,
        // a full queue or a lost leadership need time to resolve, and a retry storm
        // would only delay that. Bounded by `deadline`.
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(policy.max_backoff);
        redirected = false;
    }
}

/// One attempt on in-process nodes: the hinted node, else one that believes it leads,
/// else the next one in turn.
fn retry<M>(
    nodes: &[Node<Sessions<M>>],
    bytes: &Bytes,
    policy: &RetryPolicy,
) -> Result<SessionReply<M::Response>, RetryError>
where
    M: SessionMachine,
    M::Response: Clone,
{
    if nodes.is_empty() {
        return Err(RetryError::NoNodes);
    }
    let mut turn = 0usize;
    propose_with(bytes, policy, |bytes, hint| {
        let by_id = |id: u64| nodes.iter().find(|n| n.id() == id);
        let node = hint
            .and_then(by_id)
            .or_else(|| nodes.iter().find_map(|n| n.leader().and_then(by_id)))
            .unwrap_or_else(|| {
                turn += 1;
                &nodes[turn % nodes.len()]
            });
        let mut handle = node.propose(bytes.clone())?;
        handle.wait_timeout(policy.attempt_timeout)
    })
}

#[cfg(test)]
mod tests;
