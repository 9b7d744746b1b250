//! `Node`: the handle users hold to propose, read, change membership and watch status.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{bounded, unbounded, Sender, TrySendError};
use parking_lot::{Condvar, Mutex, RwLock};
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState};
use slog::{info, o, Logger};

use crate::config::Config;
use crate::driver::Faults;
use crate::error::{
    MembershipError, NodeError, ProposeError, ReadError, StartError, StopReason, StorageError,
};
use crate::host::Wake;
use crate::log_store::LogStore;
use crate::mailbox::{DeliverError, Mailbox, Push};
use crate::membership::{self, Membership, MembershipChange};
use crate::proposals::{slot, ProposalHandle, StoppedError};
use crate::runtime::{Request, Runtime};
use crate::state_machine::StateMachine;
use crate::status::{Metrics, Status};
use crate::transport::Transport;

/// How fresh a read must be. See `docs/reads.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReadConsistency {
    /// Sees every write acknowledged before the read began, on any node. Costs one
    /// heartbeat round trip to a quorum (ReadIndex), no log write.
    Linearizable,
    /// Like `Linearizable` but trusts the leader's lease instead of asking a quorum;
    /// leader only, needs `Config::lease_reads`. Wrong if clocks drift badly.
    Lease,
    /// This node's current state, possibly behind the leader. No coordination.
    Stale,
    /// This node's state once it has applied at least the write of the token (from
    /// [`ProposalHandle::wait_applied`](crate::ProposalHandle::wait_applied)), on any
    /// replica, leader, follower or learner: read-your-writes with no quorum round.
    /// Waits (until the read's timeout) while this node is behind the token; sees
    /// every write up to the token's, and possibly later ones, but is not linearizable
    /// (another client's newer write may not be visible yet).
    AtLeast(crate::WriteToken),
}

/// State shared by the handles and the driver thread.
pub(crate) struct Shared {
    pub metrics: Metrics,
    /// Set (before `closed`) when the driver stops; callers read it after `Stopped`.
    pub stop_reason: Mutex<Option<StopReason>>,
    pub leader: AtomicU64,
    /// Peer inputs queued and not yet taken by the driver (`max_pending_messages`).
    pub peers_queued: AtomicUsize,
    /// Client requests queued and not yet taken (`max_pending_requests`).
    pub requests_queued: AtomicUsize,
    /// Set by `Node::kill`: the driver stops before the next request it would take.
    pub killed: AtomicBool,
    /// Set under the write lock by the exiting driver, which then drains the queue;
    /// senders hold the read lock across their send. So no request is ever left in the
    /// queue with nobody to resolve it (crossbeam keeps queued items while a sender lives).
    pub closed: RwLock<bool>,
    /// Notified (under `stop_reason`) once `closed` is set: `Node::wait_stopped`.
    pub stopped: Condvar,
    /// Which raft messages the core logs (`Node::set_message_log`).
    pub message_log: crate::message_log::MessageLogSwitch,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Shared {
            metrics: Metrics::default(),
            stop_reason: Mutex::new(None),
            leader: AtomicU64::new(0),
            peers_queued: AtomicUsize::new(0),
            requests_queued: AtomicUsize::new(0),
            killed: AtomicBool::new(false),
            closed: RwLock::new(false),
            stopped: Condvar::new(),
            message_log: Default::default(),
        }
    }
}

struct Inner<M: StateMachine> {
    id: u64,
    /// The one queue into the driver: client requests and peer inputs alike, so the
    /// driver waits on a single channel (one wake-up path).
    req_tx: Sender<Request<M>>,
    max_pending_requests: usize,
    /// Kept only for the test kit's `Node::mailbox`.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    mailbox: Mailbox,
    shared: Arc<Shared>,
    /// The node's own driver thread (`Node::start`); `None` once joined, and always for a
    /// group on a [`crate::GroupHost`] thread.
    thread: Mutex<Option<JoinHandle<()>>>,
    /// For a group on a host: how a queued request gets the host thread's attention,
    /// and which thread that is (so a stop called from inside the state machine does not
    /// wait for itself).
    hosted: Option<(Arc<Wake>, ThreadId)>,
    max_proposal_bytes: usize,
    /// Stamp each proposal with the time it was made (`Config::proposal_timing`, then
    /// `Node::set_proposal_timing`).
    proposal_timing: AtomicBool,
    logger: Logger,
}

/// A running Raft node: a handle to its driver thread.
///
/// Cheap to clone; every clone talks to the same node. The node stops on
/// [`Node::shutdown`], when the last handle is dropped, or on a fatal storage error;
/// every call after that returns a `Stopped` error.
///
/// # Examples
///
/// A single-node cluster in memory:
///
/// ```
/// use std::time::Duration;
/// use raftnode::{Config, ChannelNetwork, MemLogStore, Node, ReadConsistency};
/// # use raftnode::{StateMachine, StateMachineError};
/// # #[derive(Default)] struct Sum { total: u64, applied: u64 }
/// # impl StateMachine for Sum {
/// #     type Response = u64;
/// #     fn apply(&mut self, i: u64, c: &[u8]) -> u64 { self.total += c.len() as u64; self.applied = i; self.total }
/// #     fn apply_noop(&mut self, i: u64) { self.applied = i; }
/// #     fn applied_index(&self) -> u64 { self.applied }
/// #     fn snapshot(&self) -> Result<bytes::Bytes, StateMachineError> { Ok(self.total.to_le_bytes().to_vec().into()) }
/// #     fn restore(&mut self, i: u64, d: &[u8]) -> Result<(), StateMachineError> {
/// #         self.total = u64::from_le_bytes(d.try_into().map_err(StateMachineError::new)?); self.applied = i; Ok(()) }
/// # }
/// let mut config = Config::new(1);
/// config.initial_voters = vec![1];
/// config.tick_interval = Duration::from_millis(10);
/// let network = ChannelNetwork::new();
/// let logger = raftnode::discard_logger();
/// let node = Node::start(config, MemLogStore::new(), Sum::default(), network.transport(1), &logger)?;
/// node.wait_for_leader(Duration::from_secs(5))?;
/// let total = node.propose(b"hello".to_vec())?.wait()?;
/// assert_eq!(total, 5);
/// let seen = node.read(ReadConsistency::Linearizable, Duration::from_secs(5), |sm| sm.total)?;
/// assert_eq!(seen, 5);
/// node.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Node<M: StateMachine> {
    inner: Arc<Inner<M>>,
}

impl<M: StateMachine> Clone for Node<M> {
    fn clone(&self) -> Self {
        Node {
            inner: self.inner.clone(),
        }
    }
}

impl<M: StateMachine> std::fmt::Debug for Node<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl<M: StateMachine> Node<M> {
    /// Starts a node on `store`, `state_machine` and `transport`, with its driver thread.
    ///
    /// On first start (the store holds no state) a node whose `config.initial_voters` is
    /// non-empty bootstraps the group; otherwise it restarts from what the store holds,
    /// resuming after the state machine's durable [`StateMachine::applied_index`]. A state
    /// machine behind the store's snapshot is restored from it first.
    ///
    /// # Errors
    ///
    /// [`StartError`] when the config is invalid, the store cannot be read or written, the
    /// state machine cannot be restored, the state machine claims entries the log does not
    /// hold, raft refuses the stored state, or the transport cannot start.
    pub fn start<S: LogStore, T: Transport>(
        config: Config,
        store: S,
        state_machine: M,
        transport: T,
        logger: &Logger,
    ) -> Result<Self, StartError> {
        Self::start_with_faults(
            config,
            store,
            state_machine,
            transport,
            logger,
            Faults::none(),
        )
    }

    /// [`Node::start`] with the core's bug switches set (the test kit's
    /// [`crate::testing::sim::Bugs`]), to prove a test catches the bug each one puts
    /// back. Never use it outside such a test.
    ///
    /// # Errors
    ///
    /// As [`Node::start`].
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn start_with_bugs<S: LogStore, T: Transport>(
        config: Config,
        store: S,
        state_machine: M,
        transport: T,
        logger: &Logger,
        bugs: &crate::testing::sim::Bugs,
    ) -> Result<Self, StartError> {
        Self::start_with_faults(
            config,
            store,
            state_machine,
            transport,
            logger,
            bugs.faults(),
        )
    }

    fn start_with_faults<S: LogStore, T: Transport>(
        config: Config,
        store: S,
        state_machine: M,
        transport: T,
        logger: &Logger,
        faults: Faults,
    ) -> Result<Self, StartError> {
        let (runtime, parts) = prepare(
            config,
            store,
            state_machine,
            transport,
            logger.clone(),
            faults,
            None,
        )?;
        let thread_shared = parts.shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("raftnode-{}", parts.id))
            .spawn(move || {
                let mut runtime = runtime;
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.run()));
                let reason =
                    outcome.unwrap_or_else(|payload| StopReason::Panic(panic_text(&*payload)));
                thread_shared.stop_reason.lock().get_or_insert(reason);
                // Only now release the waiters: whoever sees `Stopped` can read why.
                drop(runtime);
            })
            .map_err(StartError::Spawn)?;
        Ok(parts.into_node(Some(thread), None))
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The node's inbound handle, the one its transport received in `start`: for tests
    /// that inject peer messages (feature `testing`). It bypasses the transport, and
    /// with it the transport's authentication, so it is not part of the normal API:
    /// peers reach a node only through its transport.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn mailbox(&self) -> Mailbox {
        self.inner.mailbox.clone()
    }

    /// Proposes `command`; the returned handle resolves with the state machine's
    /// response once the command is applied on this node.
    ///
    /// `Ok` means only that the command was queued. The proposal is never forwarded: on
    /// a follower the handle resolves to [`ProposeError::NotLeader`] with the leader's id.
    /// Commands queued together travel in one raft message and share one fsync.
    ///
    /// # Errors
    ///
    /// Immediately: [`ProposeError::Empty`], [`ProposeError::TooLarge`],
    /// [`ProposeError::Busy`] (queue full), [`ProposeError::Stopped`]. Through the
    /// handle: see [`ProposeError`].
    pub fn propose(
        &self,
        command: impl Into<Bytes>,
    ) -> Result<ProposalHandle<M::Response>, ProposeError> {
        let command = command.into();
        if command.is_empty() {
            return Err(ProposeError::Empty);
        }
        if command.len() > self.inner.max_proposal_bytes {
            return Err(ProposeError::TooLarge {
                size: command.len(),
                limit: self.inner.max_proposal_bytes,
            });
        }
        let (handle, done) = slot();
        let at = self
            .inner
            .proposal_timing
            .load(Ordering::Relaxed)
            .then(crate::timing::tick);
        self.submit(Request::Propose(command, done, at))?;
        Ok(ProposalHandle::new(handle))
    }

    /// Runs `query` against the state machine at the given consistency and returns its
    /// result. The query runs on the driver thread: keep it short.
    ///
    /// Works on followers too for `Linearizable` (the leader confirms the read index)
    /// and `Stale`. See `docs/reads.md` for what each level guarantees.
    ///
    /// # Errors
    ///
    /// [`ReadError::ZeroDeadline`] for a zero `timeout`; [`ReadError::Timeout`] when no
    /// quorum confirmed the read in time (no leader, partitioned leader);
    /// [`ReadError::NotLeader`] / [`ReadError::LeaseNotEnabled`] for lease reads;
    /// [`ReadError::Busy`], [`ReadError::Stopped`].
    pub fn read<T, F>(
        &self,
        consistency: ReadConsistency,
        timeout: Duration,
        query: F,
    ) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: FnOnce(&M) -> T + Send + 'static,
    {
        if timeout.is_zero() {
            return Err(ReadError::ZeroDeadline);
        }
        let deadline = Instant::now() + timeout;
        let (handle, done) = slot::<T, ReadError>();
        let query = Box::new(move |sm: Result<&M, ReadError>| done.complete(sm.map(query)));
        self.submit(Request::Read {
            consistency,
            deadline,
            query,
        })?;
        handle.wait_deadline(Some(deadline))
    }

    /// Reads this node's current state without any coordination: possibly stale.
    ///
    /// # Errors
    ///
    /// [`ReadError::Busy`], [`ReadError::Stopped`].
    pub fn read_stale<T, F>(&self, query: F) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: FnOnce(&M) -> T + Send + 'static,
    {
        self.read(ReadConsistency::Stale, Duration::from_secs(3600), query)
    }

    /// Adds `id` as a voter (or promotes the learner `id`), safely: a node that is not a
    /// member joins as a learner first, and it becomes a voter only once the leader
    /// replicates to it steadily and it holds all but [`Config::catch_up_lag`]
    /// committed entries (a snapshot installed first if it needed one). So a node that
    /// starts empty never counts towards the quorum before it can help it
    /// (docs/membership.md, "Adding a voter safely"). `context` travels with the change
    /// to every member's transport (`Transport::add_peer`): put the new member's
    /// address there. Returns the new [`Membership`] once the promotion is applied on
    /// this node; `timeout` covers the catch-up too.
    ///
    /// [`Config::catch_up_lag`]: crate::Config::catch_up_lag
    ///
    /// # Errors
    ///
    /// [`MembershipError::CatchUpTimeout`] when the node had not caught up by the
    /// deadline (it stays a learner); otherwise see [`Node::change_membership`].
    pub fn add_voter(
        &self,
        id: u64,
        context: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Membership, MembershipError> {
        self.change(&[MembershipChange::AddVoter(id)], context.into(), timeout)
    }

    /// Adds `id` as a voter, or promotes the learner `id`, at once, whether or not it
    /// holds the log: until it catches up it counts towards the quorum without helping
    /// it, so a group whose majority needs it stops committing (a 1-node group adding
    /// a second, empty voter waits for the whole log to reach it). For a node known to
    /// be current; [`Node::add_voter`] is the safe default.
    ///
    /// # Errors
    ///
    /// See [`Node::change_membership`].
    pub fn add_voter_now(
        &self,
        id: u64,
        context: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Membership, MembershipError> {
        self.change(
            &[MembershipChange::AddVoterNow(id)],
            context.into(),
            timeout,
        )
    }

    /// Adds `id` as a learner: it receives the log but does not vote.
    ///
    /// # Errors
    ///
    /// See [`Node::change_membership`].
    pub fn add_learner(
        &self,
        id: u64,
        context: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Membership, MembershipError> {
        self.change(&[MembershipChange::AddLearner(id)], context.into(), timeout)
    }

    /// Promotes the learner `id` to voter once it has caught up, as [`Node::add_voter`]
    /// does ([`Node::add_voter_now`] promotes at once).
    ///
    /// # Errors
    ///
    /// See [`Node::add_voter`]; [`MembershipError::Invalid`] when `id` is not a
    /// learner.
    pub fn promote(&self, id: u64, timeout: Duration) -> Result<Membership, MembershipError> {
        let status = self.status().map_err(|_| MembershipError::Stopped)?;
        if !status.learners.contains(&id) {
            return Err(MembershipError::Invalid(format!(
                "node {id} is not a learner"
            )));
        }
        self.change(&[MembershipChange::AddVoter(id)], Bytes::new(), timeout)
    }

    /// Removes the voter or learner `id`. A removed node stops campaigning and reports
    /// `removed` in its [`Status`]; node ids are never reused.
    ///
    /// The leader may remove itself: once the change applies it steps down and asks a
    /// remaining voter that holds its whole log to campaign at once (raft-rs alone would
    /// keep it leading a group it is no longer part of, and panic on its next commit).
    ///
    /// # Errors
    ///
    /// See [`Node::change_membership`].
    pub fn remove(&self, id: u64, timeout: Duration) -> Result<Membership, MembershipError> {
        self.change(&[MembershipChange::Remove(id)], Bytes::new(), timeout)
    }

    /// Applies several changes at once through joint consensus (ConfChangeV2); the group
    /// leaves the joint configuration automatically once it is committed. Proposed on
    /// the leader; returns once the change is applied on this node. Nodes the change
    /// adds with [`MembershipChange::AddVoter`] first catch up as learners, as with
    /// [`Node::add_voter`], and the change is proposed after that. With several
    /// changes the membership returned is the joint one (`voters_outgoing` non-empty);
    /// watch [`Status::voters_outgoing`] to see the group leave it. See
    /// `docs/membership.md`.
    ///
    /// # Errors
    ///
    /// [`MembershipError::NotLeader`]; [`MembershipError::Invalid`] (adding a member,
    /// removing a non-member, removing the last voter, id 0, duplicates);
    /// [`MembershipError::Rejected`] (another change pending, or the group is still
    /// joint, or an earlier change still waits for a node to catch up);
    /// [`MembershipError::CatchUpTimeout`] (a joining node did not catch up in time);
    /// [`MembershipError::OutcomeUnknown`], [`MembershipError::Timeout`],
    /// [`MembershipError::Busy`], [`MembershipError::Stopped`].
    pub fn change_membership(
        &self,
        changes: &[MembershipChange],
        context: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Membership, MembershipError> {
        if changes.is_empty() {
            return Err(MembershipError::Invalid("no changes given".into()));
        }
        self.change(changes, context.into(), timeout)
    }

    fn change(
        &self,
        changes: &[MembershipChange],
        context: Bytes,
        timeout: Duration,
    ) -> Result<Membership, MembershipError> {
        let (handle, done) = slot::<ConfState, MembershipError>();
        let deadline = Instant::now() + timeout;
        self.submit(Request::ConfChange {
            change: Box::new(membership::build(changes, context)),
            joining: membership::joining(changes),
            deadline,
            done,
        })?;
        // A little past the driver's own deadline, so a catch-up that ran out reports
        // `CatchUpTimeout` rather than a bare `Timeout`.
        handle
            .wait_deadline(Some(deadline + Duration::from_millis(50)))
            .map(|cs| Membership::from(&cs))
    }

    /// Moves leadership to `to` and returns once `to` leads (as this node sees it).
    ///
    /// A lagging `to` is first caught up by the leader; the transfer is retried until
    /// the deadline.
    ///
    /// # Errors
    ///
    /// [`MembershipError::NotLeader`] on a follower; [`MembershipError::Invalid`] when
    /// `to` is not a voter; [`MembershipError::Timeout`] after `timeout`;
    /// [`MembershipError::Busy`], [`MembershipError::Stopped`].
    pub fn transfer_leader(&self, to: u64, timeout: Duration) -> Result<(), MembershipError> {
        let (handle, done) = slot();
        let deadline = Instant::now() + timeout;
        self.submit(Request::TransferLeader { to, deadline, done })?;
        handle.wait_deadline(Some(deadline + Duration::from_millis(50)))
    }

    /// Switches the logging of raft messages, per message type, while the node runs:
    /// one `info` line per message sent or received, with its type, from, to, term,
    /// index, log_term, commit, number of entries and reject flag. `info` survives
    /// release builds (unlike the `debug` lines raftnode writes for every message when
    /// the logger takes `debug`). Takes effect on the next message.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(node: &raftnode::Node<impl raftnode::StateMachine>) {
    /// use raftnode::{raft_types::MessageType, MessageLog};
    /// // Why do elections keep starting? Log the votes.
    /// node.set_message_log(MessageLog::only(&[
    ///     MessageType::MsgRequestPreVote,
    ///     MessageType::MsgRequestVote,
    ///     MessageType::MsgRequestVoteResponse,
    /// ]));
    /// // ... and stop.
    /// node.set_message_log(MessageLog::off());
    /// # }
    /// ```
    pub fn set_message_log(&self, log: crate::MessageLog) {
        self.inner.shared.message_log.set(log);
    }

    /// Turns the per-proposal lifecycle timing on or off from now on (it starts as
    /// `Config::proposal_timing` says): proposals made while it is off are not timed,
    /// and what was timed before stays in `Status::proposal_timing` (docs/operations.md,
    /// "Proposal timing").
    pub fn set_proposal_timing(&self, on: bool) {
        if on {
            crate::timing::warm_up();
        }
        self.inner.proposal_timing.store(on, Ordering::Relaxed);
    }

    /// The message types this node logs now ([`Node::set_message_log`]).
    pub fn message_log(&self) -> crate::MessageLog {
        self.inner.shared.message_log.get()
    }

    /// What looks wrong with the group from this node: each [`Finding`] names the
    /// problem ([`FindingKind`]), gives the numbers that show it and a remedy in one
    /// sentence. Empty when healthy. A condition is reported once it has held for
    /// [`DIAGNOSE_AFTER_TIMEOUTS`] election timeouts (or, for a slow sync or `Busy`
    /// refusals, happened within them), and no longer once it has ended. The same list
    /// is [`Status::findings`]; docs/operations.md, "Diagnosis", explains every finding.
    ///
    /// [`Finding`]: crate::Finding
    /// [`FindingKind`]: crate::FindingKind
    /// [`DIAGNOSE_AFTER_TIMEOUTS`]: crate::DIAGNOSE_AFTER_TIMEOUTS
    ///
    /// # Errors
    ///
    /// As [`Node::status`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(node: &raftnode::Node<impl raftnode::StateMachine>) -> Result<(), raftnode::NodeError> {
    /// for finding in node.diagnose()? {
    ///     eprintln!("{finding}"); // e.g. "no_quorum: no leader known for 3s; ...; start or ..."
    /// }
    /// # Ok(()) }
    /// ```
    pub fn diagnose(&self) -> Result<Vec<crate::Finding>, NodeError> {
        Ok(self.status()?.findings)
    }

    /// A point-in-time view of the node: role, term, leader, indexes, membership,
    /// per-peer progress (leader only), metrics and findings ([`Node::diagnose`]).
    ///
    /// # Errors
    ///
    /// [`NodeError::Busy`], [`NodeError::Stopped`], or [`NodeError::Timeout`] if the driver
    /// does not answer within 10 s.
    pub fn status(&self) -> Result<Status, NodeError> {
        let (handle, done) = slot();
        self.submit(Request::Status(done))?;
        handle.wait_deadline(Some(Instant::now() + Duration::from_secs(10)))
    }

    /// Takes a snapshot of the state machine now and compacts the log behind it.
    /// Returns its index, or `None` if nothing was applied since the last one.
    ///
    /// # Errors
    ///
    /// [`NodeError::Stopped`] (also when the snapshot failed: the node stops),
    /// [`NodeError::Busy`], [`NodeError::Timeout`] after 60 s.
    pub fn snapshot_now(&self) -> Result<Option<u64>, NodeError> {
        let (handle, done) = slot();
        self.submit(Request::SnapshotNow(done))?;
        handle.wait_deadline(Some(Instant::now() + Duration::from_secs(60)))
    }

    /// Starts an election on this node now (tests and operators; normally elections
    /// start on their own).
    ///
    /// # Errors
    ///
    /// [`NodeError::Busy`], [`NodeError::Stopped`].
    pub fn campaign(&self) -> Result<(), NodeError> {
        self.submit(Request::Campaign)
    }

    /// The leader this node can vouch for: itself while it leads, or the leader of its
    /// term if it heard from it within the last election timeout (`election_ticks`
    /// ticks). `None` otherwise, so a dead leader is not named for longer than that
    /// (raft-rs alone names it until the next election ends). `Status::leader` and the
    /// `NotLeader { leader }` hints follow the same rule. Cheap: no round trip to the
    /// driver.
    pub fn leader(&self) -> Option<u64> {
        match self.inner.shared.leader.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }

    /// Blocks until this node knows a leader (as [`Node::leader`] reports it: fresh
    /// within an election timeout), and returns it.
    ///
    /// # Errors
    ///
    /// [`NodeError::Timeout`] when no leader is known after `timeout`;
    /// [`NodeError::Stopped`].
    pub fn wait_for_leader(&self, timeout: Duration) -> Result<u64, NodeError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_stopped() {
                return Err(NodeError::Stopped);
            }
            if let Some(leader) = self.leader() {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                return Err(NodeError::Timeout);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Blocks until a leader has proven it leads, and returns it: a `Linearizable` read
    /// through this node succeeds, which takes a quorum answering that leader in its
    /// term, after this call began. Unlike [`Node::leader`], the answer cannot name a
    /// leader that lost its quorum, though leadership may move right after.
    ///
    /// # Errors
    ///
    /// [`NodeError::Timeout`] when no leader proved itself within `timeout` (no quorum,
    /// or an election still going on); [`NodeError::Stopped`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo<M: raftnode::StateMachine>(node: &raftnode::Node<M>) -> Result<(), raftnode::NodeError> {
    /// let leader = node.confirmed_leader(std::time::Duration::from_secs(5))?;
    /// println!("send writes to node {leader}");
    /// # Ok(()) }
    /// ```
    pub fn confirmed_leader(&self, timeout: Duration) -> Result<u64, NodeError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NodeError::Timeout);
            }
            match self.read(ReadConsistency::Linearizable, left, |_| ()) {
                Ok(()) => {
                    if let Some(leader) = self.leader() {
                        return Ok(leader);
                    }
                }
                Err(ReadError::Stopped) => return Err(NodeError::Stopped),
                Err(ReadError::Timeout) => return Err(NodeError::Timeout),
                // A full queue, or a read refused for now: try again shortly (bounded
                // by `deadline`).
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    /// Why the node stopped, or `None` while it runs.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.inner.shared.stop_reason.lock().clone()
    }

    /// Whether the node has stopped.
    pub fn is_stopped(&self) -> bool {
        self.inner.shared.stop_reason.lock().is_some()
    }

    /// Blocks until the node has stopped, for at most `timeout`, and returns why; `None`
    /// if it is still running when `timeout` passes.
    ///
    /// "Stopped" means its driver thread has finished: every caller waiting on it has
    /// its `Stopped` error. A host uses this to leave as soon as its node stops (a full
    /// disk, a failed state machine), instead of finding out on the next request:
    ///
    /// ```no_run
    /// # fn host<M: raftnode::StateMachine>(node: raftnode::Node<M>) {
    /// let watched = node.clone();
    /// std::thread::spawn(move || loop {
    ///     if let Some(reason) = watched.wait_stopped(std::time::Duration::from_secs(60)) {
    ///         eprintln!("raft node stopped: {reason}");
    ///         std::process::exit(1);
    ///     }
    /// });
    /// # }
    /// ```
    pub fn wait_stopped(&self, timeout: Duration) -> Option<StopReason> {
        let shared = &self.inner.shared;
        let deadline = Instant::now().checked_add(timeout);
        let mut reason = shared.stop_reason.lock();
        loop {
            if *shared.closed.read() {
                return Some(reason.clone().unwrap_or(StopReason::Shutdown));
            }
            match deadline {
                Some(deadline) => {
                    if shared.stopped.wait_until(&mut reason, deadline).timed_out()
                        && !*shared.closed.read()
                    {
                        return None;
                    }
                }
                None => shared.stopped.wait(&mut reason),
            }
        }
    }

    /// Stops the node gracefully: if it leads, it first hands leadership to the most
    /// up-to-date voter (up to `Config::shutdown_transfer_timeout`), then stops the
    /// driver thread and joins it. Every pending caller gets a `Stopped` error.
    /// Returns why the node stopped (`Shutdown`, or an earlier fatal error).
    /// Idempotent; other handles see `Stopped` afterwards.
    pub fn shutdown(&self) -> StopReason {
        self.inner.stop(true)
    }

    /// Stops the node at once, as far as raftnode is concerned: the driver stops before
    /// the next request it would take and before the next entry it would apply (also in
    /// the middle of a Ready: entries not yet applied stay committed in the log, as
    /// after a crash), requests still queued get `Stopped`, and it handles no further
    /// Ready, sends nothing more, hands no leadership over and tells no peer.
    /// Returns [`StopReason::Killed`] (or an earlier fatal error).
    ///
    /// It is not a power cut: what the log store and the state machine have written
    /// stays written (whether synced or not, the process still holds it), and dropping
    /// them runs their `Drop` ([`EngineLogStore`](crate::EngineLogStore) flushes). To
    /// test what survives a real crash, kill the process (`tests/crash_loop.rs` does).
    pub fn kill(&self) -> StopReason {
        self.inner.shared.killed.store(true, Ordering::Release);
        self.inner.stop(false)
    }

    /// For [`crate::GroupHost`]: queues this hosted group's shutdown without waiting
    /// (a stop from a host thread's own state machine is not waited for either).
    pub(crate) fn begin_stop(&self, graceful: bool) {
        match &self.inner.hosted {
            Some((_, thread)) if *thread == std::thread::current().id() => {
                let _ = self
                    .inner
                    .enqueue::<NodeError>(Request::Shutdown { graceful: false });
            }
            _ => self.inner.begin_stop_hosted(graceful),
        }
    }

    /// For [`crate::GroupHost`]: waits until this hosted group has stopped; does not
    /// wait when called from the group's own host thread (it stops after this turn).
    pub(crate) fn wait_closed(&self) -> StopReason {
        match &self.inner.hosted {
            Some((_, thread)) if *thread == std::thread::current().id() => StopReason::Shutdown,
            _ => self.inner.wait_closed(),
        }
    }

    fn submit<E: StoppedError + BusyError>(&self, request: Request<M>) -> Result<(), E> {
        self.inner.enqueue(request)
    }
}

/// Errors that have a "queue full" value.
pub(crate) trait BusyError {
    fn busy() -> Self;
}

impl BusyError for ProposeError {
    fn busy() -> Self {
        ProposeError::Busy
    }
}
impl BusyError for ReadError {
    fn busy() -> Self {
        ReadError::Busy
    }
}
impl BusyError for NodeError {
    fn busy() -> Self {
        NodeError::Busy
    }
}
impl BusyError for MembershipError {
    fn busy() -> Self {
        MembershipError::Busy
    }
}

impl<M: StateMachine> Inner<M> {
    /// Queues a client request, or `Busy` when `max_pending_requests` are queued.
    /// A `Shutdown` is always queued: a stop must get through a full queue (one per
    /// stop call, so the bound still holds but for those).
    fn enqueue<E: StoppedError + BusyError>(&self, request: Request<M>) -> Result<(), E> {
        let closed = self.shared.closed.read();
        if *closed {
            return Err(E::stopped());
        }
        let queued = &self.shared.requests_queued;
        let over = queued.fetch_add(1, Ordering::AcqRel) >= self.max_pending_requests;
        if over && !matches!(request, Request::Shutdown { .. }) {
            queued.fetch_sub(1, Ordering::AcqRel);
            crate::status::bump(&self.shared.metrics.requests_busy);
            return Err(E::busy());
        }
        // The counters above and in `peer_push` are the bounds. A node on its own
        // thread has a preallocated channel with room for both bounds and
        // `SHUTDOWN_SLACK` stops, so this `send` does not block below that; a hosted
        // group's channel grows on demand (`queue`).
        if self.req_tx.send(request).is_err() {
            queued.fetch_sub(1, Ordering::AcqRel);
            return Err(E::stopped());
        }
        if let Some((wake, _)) = &self.hosted {
            wake.wake();
        }
        Ok(())
    }

    fn stop(&self, graceful: bool) -> StopReason {
        if let Some((_, host_thread)) = &self.hosted {
            return self.stop_hosted(graceful, *host_thread);
        }
        let thread = self.thread.lock().take();
        if let Some(thread) = thread {
            if thread.thread().id() == std::thread::current().id() {
                // Called from inside the state machine: the driver exits after this turn.
                let _ = self.enqueue::<NodeError>(Request::Shutdown { graceful: false });
                *self.thread.lock() = Some(thread);
                return StopReason::Shutdown;
            }
            // Always queued (a full queue does not refuse a shutdown), so the join below
            // cannot wait for a driver that was never told to stop.
            let _ = self.enqueue::<NodeError>(Request::Shutdown { graceful });
            let _ = thread.join();
            info!(self.logger, "driver thread joined");
        }
        self.shared
            .stop_reason
            .lock()
            .clone()
            .unwrap_or(StopReason::Shutdown)
    }
}

impl<M: StateMachine> Inner<M> {
    /// `stop` for a group on a host thread: queue the shutdown, then wait until the host
    /// thread has dropped the group's runtime (every waiter released).
    fn stop_hosted(&self, graceful: bool, host_thread: ThreadId) -> StopReason {
        if host_thread == std::thread::current().id() {
            // Called from inside a state machine on that thread: the group exits after
            // this turn; waiting here would wait for ourselves.
            let _ = self.enqueue::<NodeError>(Request::Shutdown { graceful: false });
            return StopReason::Shutdown;
        }
        self.begin_stop_hosted(graceful);
        self.wait_closed()
    }

    /// Queues a hosted group's shutdown (always queued, see `enqueue`).
    fn begin_stop_hosted(&self, graceful: bool) {
        let _ = self.enqueue::<NodeError>(Request::Shutdown { graceful });
    }

    /// Waits, without a deadline, until the group's runtime has been dropped.
    fn wait_closed(&self) -> StopReason {
        let mut reason = self.shared.stop_reason.lock();
        while !*self.shared.closed.read() {
            self.shared.stopped.wait(&mut reason);
        }
        reason.clone().unwrap_or(StopReason::Shutdown)
    }
}

impl<M: StateMachine> Drop for Inner<M> {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// The mailbox's way into the driver's queue, bounded by `max_pending_messages` on its
/// own so a flood of client requests never starves raft traffic (and vice versa).
fn peer_push<M: StateMachine>(
    tx: Sender<Request<M>>,
    shared: Arc<Shared>,
    limit: usize,
    wake: Option<Arc<Wake>>,
) -> Push {
    Arc::new(move |input| {
        let dropped = || {
            shared.peers_queued.fetch_sub(1, Ordering::AcqRel);
            shared
                .metrics
                .messages_dropped
                .fetch_add(1, Ordering::Relaxed);
        };
        if shared.peers_queued.fetch_add(1, Ordering::AcqRel) >= limit {
            dropped();
            return Err(DeliverError::Full);
        }
        match tx.try_send(Request::Peer(Box::new(input))) {
            Ok(()) => {
                if let Some(wake) = &wake {
                    wake.wake();
                }
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                dropped();
                Err(DeliverError::Full)
            }
            Err(TrySendError::Disconnected(_)) => {
                shared.peers_queued.fetch_sub(1, Ordering::AcqRel);
                Err(DeliverError::Stopped)
            }
        }
    })
}

/// What `prepare` builds besides the runtime: the parts of a `Node` handle.
pub(crate) struct NodeParts<M: StateMachine> {
    pub(crate) id: u64,
    req_tx: Sender<Request<M>>,
    max_pending_requests: usize,
    mailbox: Mailbox,
    pub(crate) shared: Arc<Shared>,
    max_proposal_bytes: usize,
    /// `Config::proposal_timing`: stamp each proposal with the time it was made.
    proposal_timing: bool,
    logger: Logger,
}

impl<M: StateMachine> NodeParts<M> {
    /// The handle, once the runtime runs on `thread` (its own) or on a host thread.
    pub(crate) fn into_node(
        self,
        thread: Option<JoinHandle<()>>,
        hosted: Option<(Arc<Wake>, ThreadId)>,
    ) -> Node<M> {
        info!(self.logger, "node started");
        Node {
            inner: Arc::new(Inner {
                id: self.id,
                req_tx: self.req_tx,
                max_pending_requests: self.max_pending_requests,
                mailbox: self.mailbox,
                shared: self.shared,
                thread: Mutex::new(thread),
                hosted,
                max_proposal_bytes: self.max_proposal_bytes,
                proposal_timing: AtomicBool::new(self.proposal_timing),
                logger: self.logger,
            }),
        }
    }
}

/// Everything of a start but the thread: checks the config, recovers the store and the
/// state machine, starts the transport on the node's mailbox and builds the runtime.
/// `wake` is set for a group on a host thread.
///
/// # Errors
///
/// As [`Node::start`].
pub(crate) fn prepare<S: LogStore, M: StateMachine, T: Transport>(
    config: Config,
    mut store: S,
    mut state_machine: M,
    mut transport: T,
    logger: Logger,
    faults: Faults,
    wake: Option<Arc<Wake>>,
) -> Result<(Runtime<S, M>, NodeParts<M>), StartError> {
    config.validate()?;
    if config.proposal_timing {
        crate::timing::warm_up();
    }
    // `parent` goes to the runtime, which hands it to raft-rs: raft-rs adds `raft_id`
    // itself, so it is added once per line.
    let parent = logger;
    let logger = parent.new(o!("raft_id" => config.id));
    let applied = crate::replica::recover(&config, &mut store, &mut state_machine, &logger)?;

    let (req_tx, req_rx) = queue(&config, wake.is_some());
    let shared = Arc::new(Shared::new());
    let mailbox = Mailbox::from_fn(
        config.id,
        peer_push(
            req_tx.clone(),
            shared.clone(),
            config.max_pending_messages,
            wake,
        ),
    );
    transport.start(mailbox.clone())?;

    let parts = NodeParts {
        id: config.id,
        req_tx,
        max_pending_requests: config.max_pending_requests,
        mailbox,
        shared: shared.clone(),
        max_proposal_bytes: config.max_proposal_bytes,
        proposal_timing: config.proposal_timing,
        logger: logger.clone(),
    };
    info!(logger, "node recovered"; "applied" => applied);
    // Members added by membership changes get their contexts (addresses) back from the
    // snapshot's member table and the log (docs/membership.md) as the replica starts,
    // and hands them to the transport.
    let runtime = Runtime::new(
        store,
        state_machine,
        applied,
        Box::new(transport),
        config,
        req_rx,
        shared,
        parent,
        faults,
    )?;
    Ok((runtime, parts))
}

/// Room past both bounds in a preallocated queue, for stops (a shutdown is queued even
/// when the queue is full); only a pile-up of more concurrent stops than this waits for
/// the driver to take one.
const SHUTDOWN_SLACK: usize = 64;

/// A node's one input queue. On its own thread (`Node::start`): a preallocated array
/// channel with room for both bounds, the fastest queue crossbeam has, which costs
/// about 200 bytes per slot up front (25 MiB at the default bounds). Hosted on a
/// `GroupHost`, where thousands of groups share a process: a channel that grows on
/// demand (a few hundred bytes while idle; about 7 % more instructions per proposal at
/// 256 proposers, docs/benchmarks.md). Either way the counters are the bounds.
fn queue<M: StateMachine>(
    config: &Config,
    hosted: bool,
) -> (Sender<Request<M>>, crossbeam_channel::Receiver<Request<M>>) {
    if hosted {
        unbounded()
    } else {
        bounded(config.max_pending_requests + config.max_pending_messages + SHUTDOWN_SLACK)
    }
}

/// The text of a panic payload.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into())
}

/// A logger that drops everything, for tests and examples.
pub fn discard_logger() -> Logger {
    Logger::root(slog::Discard, o!())
}

/// A logger that writes lines at `level` and above to stderr, one per line with a
/// timestamp, ready to hand to [`Node::start`] (feature `terminal-logger`).
///
/// # Examples
///
/// ```
/// let logger = raftnode::terminal_logger(raftnode::slog::Level::Info);
/// raftnode::slog::info!(logger, "starting"; "node" => 1);
/// ```
#[cfg(feature = "terminal-logger")]
pub fn terminal_logger(level: slog::Level) -> Logger {
    use slog::Drain;
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator).build();
    Logger::root(drain.filter_level(level).fuse(), o!())
}

/// On first start, writes the initial ConfState when `initial_voters` is set.
pub(crate) fn bootstrap_if_new<S: LogStore>(
    config: &Config,
    store: &mut S,
    logger: &Logger,
) -> Result<(), StartError> {
    let state = store.initial_state().map_err(raft_to_storage)?;
    let is_new = state.hard_state == HardState::default()
        && state.conf_state.voters.is_empty()
        && state.conf_state.learners.is_empty()
        && store.last_index().map_err(raft_to_storage)? == 0;
    if is_new && !config.initial_voters.is_empty() {
        // Sorted, so every node writes the same entries whatever order its list has.
        let mut voters = config.initial_voters.clone();
        voters.sort_unstable();
        let mut cs = ConfState::default();
        cs.voters = voters.clone();
        // The initial voters are also written as committed conf-change entries at term 1
        // (as etcd's bootstrap does): a member added later that catches up from the log
        // rather than from a snapshot learns them by applying these entries, instead of
        // believing the group has no voters but those added after it.
        let entries = bootstrap_entries(&voters)?;
        store.append(&entries)?;
        let mut hs = HardState::default();
        hs.term = 1;
        hs.commit = entries.len() as u64;
        store.set_hard_state(&hs)?;
        store.set_conf_state(&cs)?;
        store.sync()?;
        info!(logger, "bootstrapped a new group"; "voters" => ?cs.voters);
    }
    Ok(())
}

/// One committed `AddNode` entry per initial voter, at indexes `1..=n`, term 1. Every
/// node of a new group writes the same entries, so their logs match.
fn bootstrap_entries(voters: &[u64]) -> Result<Vec<Entry>, StartError> {
    voters
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut cc = ConfChange::default();
            cc.set_change_type(ConfChangeType::AddNode);
            cc.node_id = *id;
            let data = protobuf::Message::write_to_bytes(&cc)
                .map_err(|e| StartError::Raft(format!("encoding the bootstrap entries: {e}")))?;
            let mut entry = Entry::default();
            entry.set_entry_type(EntryType::EntryConfChange);
            entry.term = 1;
            entry.index = i as u64 + 1;
            entry.data = data.into();
            Ok(entry)
        })
        .collect()
}

fn raft_to_storage(e: raft::Error) -> StorageError {
    StorageError::Engine {
        op: "read",
        detail: e.to_string(),
    }
}
