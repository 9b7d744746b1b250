//! `GroupHost`: many Raft groups in one process on a fixed pool of driver threads.
//!
//! Each group is the same per-group core and runtime a [`Node::start`] node runs on its
//! own thread; here a group is pinned to one of the host's threads, and a thread turns
//! only the groups that have work: a request or a peer message (the handle wakes the
//! thread), or a tick that is due (a timer heap per thread). docs/multi-raft.md.

use std::any::Any;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{JoinHandle, ThreadId};
use std::time::Instant;

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use slog::{error, info, o, Logger};

use crate::config::Config;
use crate::driver::Faults;
use crate::error::{ConfigError, StartError, StopReason};
use crate::log_store::LogStore;
use crate::node::{panic_text, prepare, Node};
use crate::runtime::Runtime;
use crate::state_machine::StateMachine;
use crate::transport::Transport;

/// How a [`GroupHost`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostConfig {
    /// Driver threads; every group is pinned to one of them (the least loaded when it
    /// starts). Default: the number of cores ([`std::thread::available_parallelism`]).
    pub threads: usize,
    /// Prefix of the threads' names (`<name>-<n>`). Default `raftnode-host`.
    pub name: String,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            name: "raftnode-host".into(),
        }
    }
}

impl HostConfig {
    /// The most threads a host may have.
    pub const MAX_THREADS: usize = 1024;

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the field when `threads` is 0 or above
    /// [`HostConfig::MAX_THREADS`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.threads == 0 || self.threads > Self::MAX_THREADS {
            return Err(ConfigError::new(
                "threads",
                format!(
                    "{} must be between 1 and {}",
                    self.threads,
                    Self::MAX_THREADS
                ),
            ));
        }
        Ok(())
    }
}

/// How a group's handle gets its host thread's attention: at most one `Wake` of a group
/// is queued at a time (`scheduled`), so a thread's command queue holds at most one
/// entry per group plus the host's own commands, which bounds it.
pub(crate) struct Wake {
    group: u64,
    scheduled: AtomicBool,
    thread: Sender<Command>,
}

impl Wake {
    /// Called after every request or peer input is queued for the group.
    pub(crate) fn wake(&self) {
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            // The thread is gone only once the host has shut down, and then the group
            // has stopped and its queue is closed: nothing left to wake.
            let _ = self.thread.send(Command::Wake(self.group));
        }
    }
}

/// A group's runtime, whatever its store and state machine types.
trait Hosted: Send {
    fn poll(&mut self) -> Option<StopReason>;
    fn finish(&mut self, reason: StopReason);
    fn next_tick(&self) -> Instant;
    fn has_queued(&self) -> bool;
}

impl<S: LogStore, M: StateMachine> Hosted for Runtime<S, M> {
    fn poll(&mut self) -> Option<StopReason> {
        Runtime::poll(self)
    }
    fn finish(&mut self, reason: StopReason) {
        Runtime::finish(self, reason);
    }
    fn next_tick(&self) -> Instant {
        Runtime::next_tick(self)
    }
    fn has_queued(&self) -> bool {
        Runtime::has_queued(self)
    }
}

enum Command {
    Add(u64, Box<dyn Hosted>, Arc<Wake>),
    Wake(u64),
    Exit,
}

/// One group on a host thread.
struct Slot {
    runtime: Box<dyn Hosted>,
    wake: Arc<Wake>,
}

/// A host thread's loop: commands in, turns of the groups that have work, timers.
struct HostThread {
    groups: HashMap<u64, Slot>,
    /// (next tick, group): at most two entries per group (its live one and one left
    /// behind when a turn caused by input also ticked it); stale ones are skipped.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Groups with input left after a turn (more than `max_batch` queued).
    again: Vec<u64>,
    load: Arc<AtomicUsize>,
    logger: Logger,
}

impl HostThread {
    fn run(mut self, rx: Receiver<Command>) {
        loop {
            let timeout = match self.timers.peek() {
                Some(Reverse((at, _))) => at.saturating_duration_since(Instant::now()),
                None => std::time::Duration::from_secs(3600),
            };
            let first = if self.again.is_empty() {
                match rx.recv_timeout(timeout) {
                    Ok(command) => Some(command),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => Some(Command::Exit),
                }
            } else {
                rx.try_recv().ok()
            };
            // Bounded: a flood of wakes cannot keep the timers from running.
            let mut next = first;
            let mut handled = 0;
            while let Some(command) = next {
                match command {
                    Command::Exit => return self.exit(),
                    Command::Add(group, runtime, wake) => self.add(group, runtime, wake),
                    Command::Wake(group) => self.turn(group),
                }
                handled += 1;
                next = if handled < 1024 {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            for group in std::mem::take(&mut self.again) {
                self.turn(group);
            }
            let now = Instant::now();
            while let Some(&Reverse((at, group))) = self.timers.peek() {
                if at > now {
                    break;
                }
                self.timers.pop();
                let due = self
                    .groups
                    .get(&group)
                    .is_some_and(|slot| slot.runtime.next_tick() <= now);
                if due {
                    self.turn(group);
                }
            }
        }
    }

    fn add(&mut self, group: u64, runtime: Box<dyn Hosted>, wake: Arc<Wake>) {
        self.timers.push(Reverse((runtime.next_tick(), group)));
        self.groups.insert(group, Slot { runtime, wake });
        // Input may have arrived (and its wake been ignored) before the group was here.
        self.turn(group);
    }

    /// One turn of `group`, isolated: a panic stops that group only.
    fn turn(&mut self, group: u64) {
        let Some(slot) = self.groups.get_mut(&group) else {
            return;
        };
        // Cleared before the queue is drained: input queued from here on wakes us again.
        slot.wake.scheduled.store(false, Ordering::Release);
        let before = slot.runtime.next_tick();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| slot.runtime.poll()));
        let stopped = match outcome {
            Ok(None) => None,
            Ok(Some(reason)) => Some(reason),
            Err(payload) => {
                let reason = StopReason::Panic(panic_text(&*payload));
                error!(self.logger, "group panicked; stopping it"; "group" => group, "reason" => %reason);
                Some(reason)
            }
        };
        match stopped {
            None => {
                let after = slot.runtime.next_tick();
                if after != before {
                    self.timers.push(Reverse((after, group)));
                }
                if slot.runtime.has_queued() {
                    self.again.push(group);
                }
            }
            Some(reason) => {
                let mut slot = self.groups.remove(&group).expect("looked up above");
                self.load.fetch_sub(1, Ordering::Relaxed);
                // Recording the reason and releasing the waiters (the drop) run even
                // after a panic, so a caller sees `Stopped`, never a hang.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    slot.runtime.finish(reason)
                }));
                drop(slot);
            }
        }
    }

    /// The host is going away: every group still here stops now (as a crash would, the
    /// host has already asked each to shut down gracefully where it could).
    fn exit(mut self) {
        for (_, mut slot) in self.groups.drain() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                slot.runtime.finish(StopReason::Shutdown)
            }));
        }
    }
}

/// What the host keeps of a group: its handle (type-erased) and how to stop it.
struct Registered {
    node: Box<dyn Any + Send + Sync>,
    /// Queues the group's shutdown (graceful or not) without waiting.
    begin_stop: Box<dyn Fn(bool) + Send + Sync>,
    /// Waits until the group has stopped; returns why.
    wait_stopped: Box<dyn Fn() -> StopReason + Send + Sync>,
}

impl Registered {
    fn stop(&self, graceful: bool) -> StopReason {
        (self.begin_stop)(graceful);
        (self.wait_stopped)()
    }
}

struct Worker {
    tx: Sender<Command>,
    id: ThreadId,
    load: Arc<AtomicUsize>,
}

struct HostInner {
    workers: Vec<Worker>,
    joins: Mutex<Vec<JoinHandle<()>>>,
    groups: Mutex<BTreeMap<u64, Registered>>,
    /// Serializes starts, so a group id is checked and registered at once.
    starting: Mutex<()>,
    stopped: AtomicBool,
    logger: Logger,
}

/// Many Raft groups in one process, on a fixed pool of driver threads.
///
/// Each group is a full raftnode group (its own [`Config`], log store, state machine
/// and transport) with a [`Node`] handle that has the whole API of a node started with
/// [`Node::start`]. The difference is the thread: a hosted group is pinned to one of
/// the host's threads, and a thread turns only the groups with work (input, or a tick
/// that is due), so a thousand groups cost a few threads, not a thousand.
///
/// A group runs until it is stopped ([`Node::shutdown`] or [`GroupHost::stop_group`]),
/// stops on a fatal error (a panic in one group stops that group only), or the host
/// shuts down. Unlike a [`Node::start`] node, dropping every handle does not stop a
/// hosted group: the host keeps it ([`GroupHost::node`] gives a handle back).
///
/// Cheap to clone; the host shuts down (every group killed, threads joined) when
/// [`GroupHost::shutdown`] is called or the last clone is dropped.
///
/// # Examples
///
/// Three single-voter groups on two threads:
///
/// ```
/// use std::time::Duration;
/// use raftnode::{ChannelNetwork, Config, GroupHost, HostConfig, MemLogStore};
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
/// let mut host_config = HostConfig::default();
/// host_config.threads = 2;
/// let logger = raftnode::discard_logger();
/// let host = GroupHost::start(host_config, &logger)?;
/// for group in 1..=3 {
///     let mut config = Config::new(1);
///     config.initial_voters = vec![1];
///     config.tick_interval = Duration::from_millis(10);
///     let network = ChannelNetwork::new();
///     let node = host.start_group(group, config, MemLogStore::new(), Sum::default(), network.transport(1))?;
///     node.wait_for_leader(Duration::from_secs(5))?;
///     assert_eq!(node.propose(vec![0; group as usize])?.wait()?, group);
/// }
/// assert_eq!(host.groups(), vec![1, 2, 3]);
/// host.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct GroupHost {
    inner: Arc<HostShutdownOnDrop>,
}

/// Shuts the host down when the last `GroupHost` clone goes.
struct HostShutdownOnDrop(HostInner);

impl Drop for HostShutdownOnDrop {
    fn drop(&mut self) {
        self.0.shutdown(false);
    }
}

impl std::fmt::Debug for GroupHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupHost")
            .field("threads", &self.inner.0.workers.len())
            .field("groups", &self.inner.0.groups.lock().len())
            .finish()
    }
}

impl GroupHost {
    /// Starts the host's threads.
    ///
    /// # Errors
    ///
    /// [`StartError::Config`] for an invalid [`HostConfig`], [`StartError::Spawn`] when a
    /// thread cannot be spawned.
    pub fn start(config: HostConfig, logger: &Logger) -> Result<GroupHost, StartError> {
        config.validate()?;
        let logger = logger.new(o!("host" => config.name.clone()));
        let mut workers = Vec::with_capacity(config.threads);
        let mut joins = Vec::with_capacity(config.threads);
        for n in 0..config.threads {
            let (tx, rx) = unbounded();
            let load = Arc::new(AtomicUsize::new(0));
            let thread = HostThread {
                groups: HashMap::new(),
                timers: BinaryHeap::new(),
                again: Vec::new(),
                load: load.clone(),
                logger: logger.new(o!("thread" => n)),
            };
            let join = std::thread::Builder::new()
                .name(format!("{}-{n}", config.name))
                .spawn(move || thread.run(rx));
            let join = match join {
                Ok(join) => join,
                Err(e) => {
                    for worker in &workers {
                        let _ = Worker::send(worker, Command::Exit);
                    }
                    return Err(StartError::Spawn(e));
                }
            };
            workers.push(Worker {
                tx,
                id: join.thread().id(),
                load,
            });
            joins.push(join);
        }
        info!(logger, "group host started"; "threads" => config.threads);
        Ok(GroupHost {
            inner: Arc::new(HostShutdownOnDrop(HostInner {
                workers,
                joins: Mutex::new(joins),
                groups: Mutex::new(BTreeMap::new()),
                starting: Mutex::new(()),
                stopped: AtomicBool::new(false),
                logger,
            })),
        })
    }

    /// Starts group `group` on the least loaded thread, as [`Node::start`] starts a node
    /// (the same recovery, bootstrap and checks), and returns its handle.
    ///
    /// `group` names the group on this host only (the Raft ids of its members are
    /// `config.id` and its peers, as for any node); a process that is a member of many
    /// groups gives each its own `group`.
    ///
    /// # Errors
    ///
    /// [`StartError::GroupExists`] when `group` already runs here,
    /// [`StartError::HostStopped`] after [`GroupHost::shutdown`], and every error of
    /// [`Node::start`].
    pub fn start_group<S: LogStore, M: StateMachine, T: Transport>(
        &self,
        group: u64,
        config: Config,
        store: S,
        state_machine: M,
        transport: T,
    ) -> Result<Node<M>, StartError> {
        let host = &self.inner.0;
        let _starting = host.starting.lock();
        if host.stopped.load(Ordering::Acquire) {
            return Err(StartError::HostStopped);
        }
        if host.groups.lock().contains_key(&group) {
            return Err(StartError::GroupExists(group));
        }
        let worker = host
            .workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
            .expect("a host has at least one thread");
        let wake = Arc::new(Wake {
            group,
            scheduled: AtomicBool::new(false),
            thread: worker.tx.clone(),
        });
        let logger = host.logger.new(o!("group" => group));
        let (runtime, parts) = prepare(
            config,
            store,
            state_machine,
            transport,
            logger,
            Faults::none(),
            Some(wake.clone()),
        )?;
        worker.load.fetch_add(1, Ordering::Relaxed);
        if worker
            .send(Command::Add(group, Box::new(runtime), wake.clone()))
            .is_err()
        {
            worker.load.fetch_sub(1, Ordering::Relaxed);
            return Err(StartError::HostStopped);
        }
        let node = parts.into_node(None, Some((wake, worker.id)));
        let (stopper, waiter) = (node.clone(), node.clone());
        host.groups.lock().insert(
            group,
            Registered {
                node: Box::new(node.clone()),
                begin_stop: Box::new(move |graceful| stopper.begin_stop(graceful)),
                wait_stopped: Box::new(move || waiter.wait_closed()),
            },
        );
        Ok(node)
    }

    /// A handle to group `group`, if it runs here and its state machine is `M`.
    pub fn node<M: StateMachine>(&self, group: u64) -> Option<Node<M>> {
        self.inner
            .0
            .groups
            .lock()
            .get(&group)
            .and_then(|r| r.node.downcast_ref::<Node<M>>().cloned())
    }

    /// The groups this host holds, in order (a group that stopped on its own stays
    /// listed until [`GroupHost::stop_group`] removes it).
    pub fn groups(&self) -> Vec<u64> {
        self.inner.0.groups.lock().keys().copied().collect()
    }

    /// Stops group `group` gracefully (as [`Node::shutdown`]) and removes it from the
    /// host; its id can be started again. `None` if no such group runs here.
    pub fn stop_group(&self, group: u64) -> Option<StopReason> {
        let registered = self.inner.0.groups.lock().remove(&group)?;
        Some(registered.stop(true))
    }

    /// How many groups each thread runs (for balance checks and status pages).
    pub fn thread_loads(&self) -> Vec<usize> {
        self.inner
            .0
            .workers
            .iter()
            .map(|w| w.load.load(Ordering::Relaxed))
            .collect()
    }

    /// Stops every group gracefully (each leader first hands over leadership, as
    /// [`Node::shutdown`] does; all at once, not one after the other), then the threads.
    /// Idempotent; later [`GroupHost::start_group`] calls fail with
    /// [`StartError::HostStopped`].
    pub fn shutdown(&self) {
        self.inner.0.shutdown(true);
    }
}

impl Worker {
    fn send(&self, command: Command) -> Result<(), ()> {
        self.tx.send(command).map_err(|_| ())
    }
}

impl HostInner {
    fn shutdown(&self, graceful: bool) {
        {
            let _starting = self.starting.lock();
            if self.stopped.swap(true, Ordering::AcqRel) {
                return;
            }
        }
        let groups = std::mem::take(&mut *self.groups.lock());
        // All shutdowns are queued before the first wait: graceful stops (each waits for
        // a leadership transfer) run side by side, not one after the other.
        for registered in groups.values() {
            (registered.begin_stop)(graceful);
        }
        for registered in groups.values() {
            (registered.wait_stopped)();
        }
        drop(groups);
        for worker in &self.workers {
            let _ = worker.send(Command::Exit);
        }
        let me = std::thread::current().id();
        for join in self.joins.lock().drain(..) {
            // Called from a group's state machine on a host thread: that thread exits
            // after its turn; it cannot join itself.
            if join.thread().id() != me {
                let _ = join.join();
            }
        }
        info!(self.logger, "group host stopped");
    }
}
