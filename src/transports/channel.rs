//! [`ChannelNetwork`]: an in-process network on crossbeam channels, with fault injection.
//!
//! One hub holds the table of registered mailboxes and the active faults behind one
//! `RwLock`; every [`ChannelTransport`] reads it once per `send` batch. Without faults a
//! send is a table lookup and a `try_send` per message. Delays are served by one
//! background thread per network, started by the first [`ChannelNetwork::set_delay`].
//!
//! "raft-rs note N" cites docs/raft-rs-notes.md.

use std::cmp::Ordering as CmpOrdering;
use std::collections::binary_heap::PeekMut;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::RwLock;
use raft::eraftpb::{Message, MessageType};
use raft::SnapshotStatus;

use crate::error::TransportError;
use crate::mailbox::{DeliverError, Mailbox};
use crate::transport::Transport;

/// Seed of the drop-rate RNG for [`ChannelNetwork::new`].
const DEFAULT_SEED: u64 = 0x5EED_0FC4_A22E_1500;

/// Most messages the delay thread holds at once; beyond it, delayed sends are dropped
/// and counted in [`NetworkStats::dropped_by_fault`].
const MAX_DELAYED_MESSAGES: u64 = 1 << 20;

/// A simulated network connecting the nodes of one cluster inside one process.
///
/// A cheap handle: clones share the same network. [`ChannelNetwork::transport`] makes the
/// [`Transport`] for a node; when that node starts, its mailbox is registered here under
/// its id, replacing any earlier registration, so a restarted node is reachable again.
///
/// Faults ([`partition`](Self::partition), [`cut`](Self::cut),
/// [`isolate`](Self::isolate), drop rates, [`set_delay`](Self::set_delay)) take effect
/// for every message sent after the call returns, from any thread. Dropped messages are
/// lost silently, as on a real network; raft retransmits. The random drops come from a
/// small RNG seeded by [`ChannelNetwork::with_seed`], so a single-threaded run replays
/// exactly; with several driver threads the interleaving, and so which message draws
/// which number, is up to the scheduler.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// use raftnode::ChannelNetwork;
///
/// let network = ChannelNetwork::with_seed(7);
/// // One transport per node; each is handed to that node when it starts.
/// let transports: Vec<_> = (1..=3).map(|id| network.transport(id)).collect();
/// assert_eq!(transports[0].id(), 1);
///
/// // Node 1 loses contact with nodes 2 and 3; 10% of the rest is lost, all of it late.
/// network.partition(&[1], &[2, 3]);
/// network.set_drop_rate(0.1);
/// network.set_delay(Duration::from_millis(5));
///
/// // Back to a perfect network.
/// network.heal();
/// assert_eq!(network.stats().dropped_by_fault, 0);
/// ```
#[derive(Clone)]
pub struct ChannelNetwork {
    hub: Arc<Hub>,
}

/// The [`Transport`] of one node on a [`ChannelNetwork`].
///
/// `start` registers the node's mailbox on the network; `send` hands each message to the
/// mailbox registered under `msg.to`, applying the network's faults; `stop` (or dropping
/// the transport) unregisters the node.
///
/// # Correctness
///
/// - A message to a node that is not registered, or whose node has stopped, is dropped
///   and the sender's raft is told with [`Mailbox::report_unreachable`].
/// - A message to a node whose queue is full is dropped (the receiving mailbox counts it).
/// - Every `MsgSnapshot` is reported to the sender's raft with
///   [`Mailbox::report_snapshot`]: `Finish` once it is in the receiver's queue, `Failure`
///   if it was dropped for any reason (raft-rs note 13).
pub struct ChannelTransport {
    id: u64,
    hub: Arc<Hub>,
    /// Set by `start`; the generation tells our registration from a later one for the
    /// same id, so a stale transport's `stop` cannot unregister a restarted node.
    started: Option<(Mailbox, u64)>,
}

/// Message counts of a [`ChannelNetwork`], from [`ChannelNetwork::stats`].
///
/// Every message sent ends up in exactly one of `delivered`, `dropped_by_fault`,
/// `undeliverable` and `queue_full`, or is still counted in `delayed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetworkStats {
    /// Messages placed in their destination's queue.
    pub delivered: u64,
    /// Messages dropped by a cut, a partition, an isolation, a drop rate, or a full
    /// delay queue.
    pub dropped_by_fault: u64,
    /// Messages whose destination was not registered or had stopped.
    pub undeliverable: u64,
    /// Messages dropped because their destination's queue was full.
    pub queue_full: u64,
    /// Messages held by the delay thread right now (a gauge, not a counter).
    pub delayed: u64,
}

/// What every handle to one network shares.
struct Hub {
    core: Arc<Core>,
    /// The delay thread, started by the first non-zero `set_delay`. It holds `core` but
    /// not the hub, so dropping the hub drops its sender, which tells it to exit.
    delay: OnceLock<DelayThread>,
}

struct DelayThread {
    tx: Sender<DelayedBatch>,
    handle: JoinHandle<()>,
}

/// The state shared by the hub and its delay thread.
struct Core {
    table: RwLock<Table>,
    stats: Counters,
    /// SplitMix64 state for random drops; advanced atomically so senders never lock.
    rng: AtomicU64,
}

struct Table {
    peers: BTreeMap<u64, Registration>,
    next_generation: u64,
    /// `!faults.is_empty()`, kept in step by every fault setter so the fault-free `send`
    /// checks one bool.
    faults_active: bool,
    faults: Faults,
}

struct Registration {
    mailbox: Mailbox,
    generation: u64,
}

#[derive(Default)]
struct Faults {
    /// Directed links `(from, to)` that drop everything.
    cuts: BTreeSet<(u64, u64)>,
    /// Nodes cut off from every node, including ones that register later.
    isolated: BTreeSet<u64>,
    drop_rate: f64,
    /// Per directed link; replaces `drop_rate` on that link.
    link_drop_rates: BTreeMap<(u64, u64), f64>,
    delay: Duration,
    /// Per directed link; replaces `delay` on that link.
    link_delays: BTreeMap<(u64, u64), Duration>,
}

/// Padded to its own cache lines so counting does not contend with the table lock.
#[repr(align(128))]
#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    dropped_by_fault: AtomicU64,
    undeliverable: AtomicU64,
    queue_full: AtomicU64,
    delayed: AtomicU64,
}

/// Counts for one batch, added to [`Counters`] once, so a batch costs one atomic add.
#[derive(Default)]
struct Tally {
    delivered: u64,
    dropped_by_fault: u64,
    undeliverable: u64,
    queue_full: u64,
}

/// Messages from one sender, all due at the same instant.
struct DelayedBatch {
    due: Instant,
    from: Mailbox,
    messages: Vec<Message>,
}

/// A heap entry: ordered by due time, then by arrival, so equal delays keep send order.
struct Delayed {
    due: Instant,
    seq: u64,
    batch: DelayedBatch,
}

impl ChannelNetwork {
    /// Creates an empty network with no faults, its drop RNG seeded with a fixed value.
    pub fn new() -> Self {
        Self::with_seed(DEFAULT_SEED)
    }

    /// Creates an empty network with no faults, its drop RNG seeded with `seed`.
    ///
    /// Two networks with the same seed drop the same messages when they are sent in
    /// the same order.
    pub fn with_seed(seed: u64) -> Self {
        let core = Core {
            table: RwLock::new(Table {
                peers: BTreeMap::new(),
                next_generation: 0,
                faults_active: false,
                faults: Faults::default(),
            }),
            stats: Counters::default(),
            rng: AtomicU64::new(seed),
        };
        ChannelNetwork {
            hub: Arc::new(Hub {
                core: Arc::new(core),
                delay: OnceLock::new(),
            }),
        }
    }

    /// Returns the transport for node `id`, to be handed to that node when it starts.
    ///
    /// The node becomes reachable when its node calls [`Transport::start`]. Calling this
    /// again for the same id (to restart a node) is fine: the last one started wins.
    ///
    /// # Panics
    ///
    /// If `id` is 0, which raft reserves for "no node".
    pub fn transport(&self, id: u64) -> ChannelTransport {
        assert_ne!(id, 0, "raft node ids are non-zero");
        ChannelTransport {
            id,
            hub: Arc::clone(&self.hub),
            started: None,
        }
    }

    /// Whether node `id` is registered: started and not stopped.
    pub fn is_registered(&self, id: u64) -> bool {
        self.hub.core.table.read().peers.contains_key(&id)
    }

    /// Cuts every link between `left` and `right`, both ways. Links within each group,
    /// and with nodes in neither, are untouched. Adds to the cuts already in place.
    pub fn partition(&self, left: &[u64], right: &[u64]) {
        self.hub.core.update_faults(|faults| {
            for &a in left {
                for &b in right {
                    faults.cuts.insert((a, b));
                    faults.cuts.insert((b, a));
                }
            }
        });
    }

    /// Cuts the one-way link from `from` to `to`: messages from `from` to `to` are
    /// dropped, messages from `to` to `from` still arrive.
    pub fn cut(&self, from: u64, to: u64) {
        self.hub.core.update_faults(|faults| {
            faults.cuts.insert((from, to));
        });
    }

    /// Cuts node `id` off from every node, both ways, including nodes that register
    /// later.
    pub fn isolate(&self, id: u64) {
        self.hub.core.update_faults(|faults| {
            faults.isolated.insert(id);
        });
    }

    /// Removes the cuts, partitions and isolations; drop rates and delays stay (a
    /// partition that heals on a lossy network stays lossy).
    pub fn heal_partitions(&self) {
        self.hub.core.update_faults(|faults| {
            faults.cuts.clear();
            faults.isolated.clear();
        });
    }

    /// Removes every fault: cuts, partitions, isolations, drop rates and delays
    /// ([`heal_partitions`](Self::heal_partitions) keeps the rates and delays).
    ///
    /// Messages already delayed are still delivered at their due time.
    pub fn heal(&self) {
        self.hub
            .core
            .update_faults(|faults| *faults = Faults::default());
    }

    /// Drops each message with probability `rate` (0.0 to 1.0), on every link without a
    /// rate of its own ([`set_link_drop_rate`](Self::set_link_drop_rate)).
    ///
    /// # Panics
    ///
    /// If `rate` is not within `0.0..=1.0`.
    pub fn set_drop_rate(&self, rate: f64) {
        check_rate(rate);
        self.hub
            .core
            .update_faults(|faults| faults.drop_rate = rate);
    }

    /// Drops each message from `from` to `to` with probability `rate` (0.0 to 1.0); on
    /// this one-way link it replaces the network-wide rate.
    ///
    /// # Panics
    ///
    /// If `rate` is not within `0.0..=1.0`.
    pub fn set_link_drop_rate(&self, from: u64, to: u64, rate: f64) {
        check_rate(rate);
        self.hub.core.update_faults(|faults| {
            faults.link_drop_rates.insert((from, to), rate);
        });
    }

    /// Delays the delivery of every message sent from now on by `delay`;
    /// `Duration::ZERO` delivers at once again.
    ///
    /// Messages on one link keep their order while the delay is unchanged; changing it
    /// may reorder messages in flight, as a real network may. Cuts in place when a
    /// delayed message falls due drop it. At most 2^20 messages are held; beyond that,
    /// sends are dropped and counted in [`NetworkStats::dropped_by_fault`]. The first
    /// non-zero delay starts the network's one delay thread, which exits when the last
    /// handle to the network (network or transport) is dropped.
    ///
    /// # Panics
    ///
    /// If the delay thread cannot be spawned.
    pub fn set_delay(&self, delay: Duration) {
        if !delay.is_zero() {
            self.hub.delay_thread();
        }
        self.hub.core.update_faults(|faults| faults.delay = delay);
    }

    /// Delays the delivery of every message sent from `from` to `to` from now on by
    /// `delay`; on this one-way link it replaces the network-wide delay
    /// ([`set_delay`](Self::set_delay)), so `Duration::ZERO` makes the link instant.
    /// Asymmetric links are where a lease measured from the wrong instant goes wrong.
    ///
    /// # Panics
    ///
    /// If the delay thread cannot be spawned.
    pub fn set_link_delay(&self, from: u64, to: u64, delay: Duration) {
        if !delay.is_zero() {
            self.hub.delay_thread();
        }
        self.hub.core.update_faults(|faults| {
            faults.link_delays.insert((from, to), delay);
        });
    }

    /// The message counts so far.
    pub fn stats(&self) -> NetworkStats {
        let stats = &self.hub.core.stats;
        NetworkStats {
            delivered: stats.delivered.load(Ordering::Relaxed),
            dropped_by_fault: stats.dropped_by_fault.load(Ordering::Relaxed),
            undeliverable: stats.undeliverable.load(Ordering::Relaxed),
            queue_full: stats.queue_full.load(Ordering::Relaxed),
            delayed: stats.delayed.load(Ordering::Relaxed),
        }
    }
}

impl Default for ChannelNetwork {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ChannelNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.hub.core.table.read();
        f.debug_struct("ChannelNetwork")
            .field("registered", &table.peers.keys().collect::<Vec<_>>())
            .field("faults_active", &table.faults_active)
            .finish()
    }
}

impl ChannelTransport {
    /// The id of the node this transport belongs to.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl fmt::Debug for ChannelTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelTransport")
            .field("id", &self.id)
            .field("started", &self.started.is_some())
            .finish()
    }
}

impl Transport for ChannelTransport {
    /// Registers `mailbox` under this transport's id, replacing any earlier registration.
    ///
    /// # Errors
    ///
    /// [`TransportError::Config`] if `mailbox` belongs to another node.
    fn start(&mut self, mailbox: Mailbox) -> Result<(), TransportError> {
        if mailbox.id() != self.id {
            return Err(TransportError::Config(format!(
                "the ChannelTransport of node {} was started with the mailbox of node {}",
                self.id,
                mailbox.id()
            )));
        }
        let generation = self.hub.core.register(mailbox.clone());
        self.started = Some((mailbox, generation));
        Ok(())
    }

    fn send(&mut self, messages: Vec<Message>) {
        let core = &self.hub.core;
        let Some((own, _)) = &self.started else {
            // `send` before `start` breaks the Transport contract; nobody can be told.
            debug_assert!(false, "ChannelTransport::send before start");
            core.stats
                .undeliverable
                .fetch_add(messages.len() as u64, Ordering::Relaxed);
            return;
        };
        let mut tally = Tally::default();
        let table = core.table.read();
        if !table.faults_active {
            for msg in messages {
                deliver(&table.peers, own, msg, &mut tally);
            }
            drop(table);
        } else {
            let delayed = core.route_with_faults(&table, own, messages, &mut tally);
            drop(table);
            for (delay, messages) in delayed {
                self.hub.send_delayed(own, delay, messages, &mut tally);
            }
        }
        core.stats.add(&tally);
    }

    fn stop(&mut self) {
        if let Some((_, generation)) = self.started.take() {
            self.hub.core.unregister(self.id, generation);
        }
    }
}

impl Drop for ChannelTransport {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Hub {
    /// Starts the delay thread unless it runs already.
    fn delay_thread(&self) -> &DelayThread {
        self.delay.get_or_init(|| {
            let (tx, rx) = crossbeam_channel::unbounded();
            let core = Arc::clone(&self.core);
            let handle = thread::Builder::new()
                .name("raftnode-net-delay".into())
                .spawn(move || run_delay_thread(&core, &rx))
                .expect("spawning the ChannelNetwork delay thread failed");
            DelayThread { tx, handle }
        })
    }

    /// Queues `messages` from `from` on the delay thread, due `delay` from now.
    fn send_delayed(
        &self,
        from: &Mailbox,
        delay: Duration,
        messages: Vec<Message>,
        tally: &mut Tally,
    ) {
        let count = messages.len() as u64;
        let held = self.core.stats.delayed.fetch_add(count, Ordering::Relaxed);
        if held + count > MAX_DELAYED_MESSAGES {
            self.core.stats.delayed.fetch_sub(count, Ordering::Relaxed);
            for msg in &messages {
                drop_by_fault(from, msg, tally);
            }
            return;
        }
        let batch = DelayedBatch {
            due: Instant::now() + delay,
            from: from.clone(),
            messages,
        };
        // The delay is set only after the thread started, and the thread runs until
        // the hub (which we hold) is dropped, so it is there and listening.
        let thread = self
            .delay
            .get()
            .expect("a delay is set only after its thread started");
        thread
            .tx
            .send(batch)
            .expect("the delay thread outlives the hub");
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(DelayThread { tx, handle }) = self.delay.take() {
            drop(tx);
            // The thread exits as soon as it sees the channel closed. A panic there has
            // been printed already; re-raising it in a destructor would only abort.
            let _ = handle.join();
        }
    }
}

impl Core {
    fn update_faults(&self, change: impl FnOnce(&mut Faults)) {
        let mut table = self.table.write();
        change(&mut table.faults);
        table.faults_active = !table.faults.is_empty();
    }

    fn register(&self, mailbox: Mailbox) -> u64 {
        let mut table = self.table.write();
        table.next_generation += 1;
        let generation = table.next_generation;
        let id = mailbox.id();
        table.peers.insert(
            id,
            Registration {
                mailbox,
                generation,
            },
        );
        generation
    }

    fn unregister(&self, id: u64, generation: u64) {
        let mut table = self.table.write();
        if table.peers.get(&id).map(|r| r.generation) == Some(generation) {
            table.peers.remove(&id);
        }
    }

    /// Applies cuts and drop rates to `messages`, delivers the survivors now if their
    /// link has no delay, and returns those to be delayed, grouped by delay. Each link
    /// has one delay, so a link's messages stay in one group, in order.
    fn route_with_faults(
        &self,
        table: &Table,
        own: &Mailbox,
        messages: Vec<Message>,
        tally: &mut Tally,
    ) -> BTreeMap<Duration, Vec<Message>> {
        let from = own.id();
        let faults = &table.faults;
        let mut delayed: BTreeMap<Duration, Vec<Message>> = BTreeMap::new();
        for msg in messages {
            let delay = faults.delay(from, msg.to);
            if faults.is_cut(from, msg.to) || self.roll(faults.drop_rate(from, msg.to)) {
                drop_by_fault(own, &msg, tally);
            } else if delay.is_zero() {
                deliver(&table.peers, own, msg, tally);
            } else {
                delayed.entry(delay).or_default().push(msg);
            }
        }
        delayed
    }

    /// Delivers the batches in `heap` that are due at `now`, dropping messages whose
    /// link has been cut meanwhile.
    fn deliver_due(&self, heap: &mut BinaryHeap<Delayed>, now: Instant) {
        if heap.peek().is_none_or(|next| next.due > now) {
            return;
        }
        let mut tally = Tally::default();
        let mut released = 0;
        let table = self.table.read();
        while let Some(next) = heap.peek_mut() {
            if next.due > now {
                break;
            }
            let DelayedBatch { from, messages, .. } = PeekMut::pop(next).batch;
            released += messages.len() as u64;
            for msg in messages {
                if table.faults.is_cut(from.id(), msg.to) {
                    drop_by_fault(&from, &msg, &mut tally);
                } else {
                    deliver(&table.peers, &from, msg, &mut tally);
                }
            }
        }
        drop(table);
        self.stats.add(&tally);
        self.stats.delayed.fetch_sub(released, Ordering::Relaxed);
    }

    /// Draws whether to drop a message at drop probability `rate`. Draws nothing at 0,
    /// so links without a drop rate do not shift the sequence.
    fn roll(&self, rate: f64) -> bool {
        if rate <= 0.0 {
            return false;
        }
        if rate >= 1.0 {
            return true;
        }
        // SplitMix64 (Steele, Lea, Flood 2014), top 53 bits as a uniform f64 in [0, 1).
        const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut z = self
            .rng
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let uniform = (z >> 11) as f64 / (1u64 << 53) as f64;
        uniform < rate
    }
}

impl Faults {
    fn is_empty(&self) -> bool {
        self.cuts.is_empty()
            && self.isolated.is_empty()
            && self.drop_rate == 0.0
            && self.link_drop_rates.is_empty()
            && self.delay.is_zero()
            && self.link_delays.is_empty()
    }

    fn delay(&self, from: u64, to: u64) -> Duration {
        self.link_delays
            .get(&(from, to))
            .copied()
            .unwrap_or(self.delay)
    }

    fn is_cut(&self, from: u64, to: u64) -> bool {
        self.isolated.contains(&from)
            || self.isolated.contains(&to)
            || self.cuts.contains(&(from, to))
    }

    fn drop_rate(&self, from: u64, to: u64) -> f64 {
        self.link_drop_rates
            .get(&(from, to))
            .copied()
            .unwrap_or(self.drop_rate)
    }
}

impl Counters {
    fn add(&self, tally: &Tally) {
        let fields = [
            (&self.delivered, tally.delivered),
            (&self.dropped_by_fault, tally.dropped_by_fault),
            (&self.undeliverable, tally.undeliverable),
            (&self.queue_full, tally.queue_full),
        ];
        for (counter, n) in fields {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest due first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// The delay thread: holds batches until due, then delivers them. Exits when the hub's
/// sender is dropped, failing the snapshots it still holds.
fn run_delay_thread(core: &Core, rx: &Receiver<DelayedBatch>) {
    let mut heap: BinaryHeap<Delayed> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |heap: &mut BinaryHeap<Delayed>, batch: DelayedBatch| {
        seq += 1;
        heap.push(Delayed {
            due: batch.due,
            seq,
            batch,
        });
    };
    loop {
        let received = match heap.peek() {
            Some(next) => rx.recv_deadline(next.due),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(batch) => {
                push(&mut heap, batch);
                for batch in rx.try_iter() {
                    push(&mut heap, batch);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        core.deliver_due(&mut heap, Instant::now());
    }
    for Delayed { batch, .. } in heap {
        for msg in &batch.messages {
            report_snapshot_if_any(&batch.from, msg, SnapshotStatus::Failure);
        }
    }
}

/// Hands `msg` to the mailbox registered under `msg.to`, and tells the sender's raft
/// what it needs to know.
fn deliver(peers: &BTreeMap<u64, Registration>, from: &Mailbox, msg: Message, tally: &mut Tally) {
    let to = msg.to;
    let is_snapshot = msg.msg_type == MessageType::MsgSnapshot;
    let outcome = match peers.get(&to) {
        Some(peer) => peer.mailbox.deliver(msg),
        None => Err(DeliverError::Stopped),
    };
    let status = match outcome {
        Ok(()) => {
            tally.delivered += 1;
            SnapshotStatus::Finish
        }
        Err(DeliverError::Full) => {
            tally.queue_full += 1;
            SnapshotStatus::Failure
        }
        Err(DeliverError::Stopped) => {
            tally.undeliverable += 1;
            from.report_unreachable(to);
            SnapshotStatus::Failure
        }
    };
    if is_snapshot {
        from.report_snapshot(to, status);
    }
}

fn drop_by_fault(from: &Mailbox, msg: &Message, tally: &mut Tally) {
    tally.dropped_by_fault += 1;
    report_snapshot_if_any(from, msg, SnapshotStatus::Failure);
}

fn report_snapshot_if_any(from: &Mailbox, msg: &Message, status: SnapshotStatus) {
    if msg.msg_type == MessageType::MsgSnapshot {
        from.report_snapshot(msg.to, status);
    }
}

fn check_rate(rate: f64) {
    assert!(
        (0.0..=1.0).contains(&rate),
        "drop rate {rate} must be within 0.0..=1.0"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::PeerInput;
    use MessageType::{MsgAppend, MsgHeartbeat, MsgSnapshot};

    /// What a mailbox received, in a comparable form.
    #[derive(Debug, PartialEq)]
    enum Got {
        /// A message: from, to, type, index.
        Message(u64, u64, MessageType, u64),
        Unreachable(u64),
        Snapshot(u64, SnapshotStatus),
    }

    struct TestNode {
        transport: ChannelTransport,
        rx: Receiver<PeerInput>,
        dropped: Arc<AtomicU64>,
    }

    impl TestNode {
        fn start(network: &ChannelNetwork, id: u64, capacity: usize) -> TestNode {
            let (tx, rx) = crossbeam_channel::bounded(capacity);
            let dropped = Arc::new(AtomicU64::new(0));
            let mut transport = network.transport(id);
            transport
                .start(Mailbox::new(id, tx, Arc::clone(&dropped)))
                .expect("start");
            TestNode {
                transport,
                rx,
                dropped,
            }
        }

        fn send(&mut self, to: u64, msg_type: MessageType, index: u64) {
            let from = self.transport.id();
            self.transport.send(vec![msg(from, to, msg_type, index)]);
        }

        fn got(&self) -> Vec<Got> {
            self.rx
                .try_iter()
                .map(|input| match input {
                    PeerInput::Message(m) => Got::Message(m.from, m.to, m.msg_type, m.index),
                    PeerInput::Unreachable(peer) => Got::Unreachable(peer),
                    PeerInput::Snapshot(peer, status) => Got::Snapshot(peer, status),
                })
                .collect()
        }
    }

    fn msg(from: u64, to: u64, msg_type: MessageType, index: u64) -> Message {
        Message {
            from,
            to,
            msg_type,
            index,
            ..Message::default()
        }
    }

    /// The stats once `settled` holds for them, waiting up to 5 s.
    fn settled_stats(
        network: &ChannelNetwork,
        settled: impl Fn(&NetworkStats) -> bool,
    ) -> NetworkStats {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stats = network.stats();
            if settled(&stats) || Instant::now() > deadline {
                return stats;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn cluster(network: &ChannelNetwork, n: u64) -> Vec<TestNode> {
        (1..=n)
            .map(|id| TestNode::start(network, id, 1024))
            .collect()
    }

    /// Each message reaches exactly the mailbox of its `to`, untouched and in order.
    #[test]
    fn delivers_each_message_to_its_destination() {
        let network = ChannelNetwork::new();
        let mut nodes = cluster(&network, 3);
        nodes[0].transport.send(vec![
            msg(1, 2, MsgAppend, 1),
            msg(1, 3, MsgAppend, 2),
            msg(1, 2, MsgHeartbeat, 3),
        ]);
        assert_eq!(
            nodes[1].got(),
            [
                Got::Message(1, 2, MsgAppend, 1),
                Got::Message(1, 2, MsgHeartbeat, 3)
            ]
        );
        assert_eq!(nodes[2].got(), [Got::Message(1, 3, MsgAppend, 2)]);
        assert_eq!(nodes[0].got(), []);
        assert_eq!(network.stats().delivered, 3);
    }

    /// A message to an id nobody registered makes the sender's raft hear "unreachable".
    #[test]
    fn unknown_destination_reports_unreachable_to_sender() {
        let network = ChannelNetwork::new();
        let mut nodes = cluster(&network, 1);
        nodes[0].send(9, MsgAppend, 1);
        assert_eq!(nodes[0].got(), [Got::Unreachable(9)]);
        assert_eq!(network.stats().undeliverable, 1);
    }

    /// A destination whose node stopped (mailbox closed) is unreachable too.
    #[test]
    fn stopped_destination_reports_unreachable() {
        let network = ChannelNetwork::new();
        let mut nodes = cluster(&network, 2);
        // Node 2 stays registered, but its queue is closed, as when its driver died.
        let TestNode {
            transport: _registered,
            rx,
            ..
        } = nodes.pop().expect("two nodes");
        drop(rx);
        nodes[0].send(2, MsgAppend, 1);
        assert_eq!(nodes[0].got(), [Got::Unreachable(2)]);
    }

    /// `stop` unregisters; a restarted node re-registers and is reached again, and the
    /// stale transport's late `stop` does not unregister the new one.
    #[test]
    fn restart_re_registers_and_stale_stop_is_ignored() {
        let network = ChannelNetwork::new();
        let mut nodes = cluster(&network, 2);
        nodes[1].transport.stop();
        assert!(!network.is_registered(2));
        nodes[0].send(2, MsgAppend, 1);
        assert_eq!(nodes[0].got(), [Got::Unreachable(2)]);

        let mut stale = network.transport(2);
        let (tx, _stale_rx) = crossbeam_channel::bounded(8);
        stale
            .start(Mailbox::new(2, tx, Arc::default()))
            .expect("start");
        let restarted = TestNode::start(&network, 2, 8);
        stale.stop();
        assert!(network.is_registered(2));
        nodes[0].send(2, MsgAppend, 2);
        assert_eq!(restarted.got(), [Got::Message(1, 2, MsgAppend, 2)]);
    }

    /// Dropping a transport unregisters its node.
    #[test]
    fn dropping_a_transport_unregisters() {
        let network = ChannelNetwork::new();
        let node = TestNode::start(&network, 1, 8);
        assert!(network.is_registered(1));
        drop(node);
        assert!(!network.is_registered(1));
    }

    #[test]
    fn start_with_another_nodes_mailbox_fails() {
        let network = ChannelNetwork::new();
        let (tx, _rx) = crossbeam_channel::bounded(8);
        let mut transport = network.transport(1);
        let err = transport.start(Mailbox::new(2, tx, Arc::default()));
        assert!(matches!(err, Err(TransportError::Config(_))));
        assert!(!network.is_registered(1) && !network.is_registered(2));
    }

    /// raft-rs note 13: every MsgSnapshot is reported, Finish when delivered, Failure otherwise.
    #[test]
    fn snapshot_status_is_reported_for_every_outcome() {
        let network = ChannelNetwork::new();
        let mut nodes = cluster(&network, 3);
        let mut tiny = TestNode::start(&network, 4, 1);

        nodes[0].send(2, MsgSnapshot, 1);
        assert_eq!(nodes[0].got(), [Got::Snapshot(2, SnapshotStatus::Finish)]);

        nodes[0].send(9, MsgSnapshot, 1);
        assert_eq!(
            nodes[0].got(),
            [
                Got::Unreachable(9),
                Got::Snapshot(9, SnapshotStatus::Failure)
            ]
        );

        network.cut(1, 3);
        nodes[0].send(3, MsgSnapshot, 1);
        assert_eq!(nodes[0].got(), [Got::Snapshot(3, SnapshotStatus::Failure)]);
        network.heal();

        nodes[0].send(4, MsgAppend, 1); // fills node 4's one-slot queue
        nodes[0].send(4, MsgSnapshot, 2);
        assert_eq!(nodes[0].got(), [Got::Snapshot(4, SnapshotStatus::Failure)]);
        assert_eq!(tiny.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(network.stats().queue_full, 1);
        tiny.transport.stop();
    }

    /// A full destination queue drops silently: no unreachable report.
    #[test]
    fn full_queue_drops_without_unreachable() {
        let network = ChannelNetwork::new();
        let mut sender = TestNode::start(&network, 1, 8);
        let receiver = TestNode::start(&network, 2, 1);
        sender
            .transport
            .send(vec![msg(1, 2, MsgAppend, 1), msg(1, 2, MsgAppend, 2)]);
        assert_eq!(receiver.got(), [Got::Message(1, 2, MsgAppend, 1)]);
        assert_eq!(sender.got(), []);
        assert_eq!(receiver.dropped.load(Ordering::Relaxed), 1);
        let stats = network.stats();
        assert_eq!((stats.delivered, stats.queue_full), (1, 1));
    }

    /// A partition blocks both directions between the groups, and only between them.
    #[test]
    fn partition_blocks_both_ways_until_heal() {
        let network = ChannelNetwork::new();
        let mut nodes = cluster(&network, 3);
        network.partition(&[1], &[2, 3]);
        nodes[0].send(2, MsgAppend, 1);
        nodes[1].send(1, MsgAppend, 2);
        nodes[1].send(3, MsgAppend, 3);
        assert_eq!(nodes[0].got(), []);
        assert_eq!(nodes[1].got(), []);
        assert_eq!(nodes[2].got(), [Got::Message(2, 3, MsgAppend, 3)]);
        assert_eq!(network.stats().dropped_by_fault, 2);

        network.heal();
        nodes[0].send(2, MsgAppend, 4);
        assert_eq!(nodes[1].got(), [Got::Message(1, 2, MsgAppend, 4)]);
    }

    /// `heal_partitions` lifts cuts and isolations and keeps the drop rate.
    #[test]
    fn heal_partitions_keeps_the_drop_rate() {
        let network = ChannelNetwork::new();
        let mut nodes = cluster(&network, 3);
        network.set_drop_rate(1.0);
        network.partition(&[1], &[2]);
        network.isolate(3);
        network.heal_partitions();
        nodes[0].send(2, MsgAppend, 1);
        nodes[1].send(3, MsgAppend, 2);
        assert_eq!(nodes[1].got(), []);
        assert_eq!(nodes[2].got(), []);
        // The rate alone decides now: with it at 0 the cut and the isolation are gone.
        network.set_drop_rate(0.0);
        nodes[0].send(2, MsgAppend, 3);
        nodes[1].send(3, MsgAppend, 4);
        assert_eq!(nodes[1].got(), [Got::Message(1, 2, MsgAppend, 3)]);
        assert_eq!(nodes[2].got(), [Got::Message(2, 3, MsgAppend, 4)]);
    }

    #[test]
    fn cut_is_one_way() {
        let network = ChannelNetwork::new();
        let mut nodes = cluster(&network, 2);
        network.cut(1, 2);
        nodes[0].send(2, MsgAppend, 1);
        nodes[1].send(1, MsgAppend, 2);
        assert_eq!(nodes[1].got(), []);
        assert_eq!(nodes[0].got(), [Got::Message(2, 1, MsgAppend, 2)]);
    }

    /// Isolation cuts a node off both ways, also from nodes that register later.
    #[test]
    fn isolate_cuts_off_from_everyone() {
        let network = ChannelNetwork::new();
        let mut nodes = cluster(&network, 3);
        network.isolate(3);
        let late = TestNode::start(&network, 4, 8);
        nodes[2].send(1, MsgAppend, 1);
        nodes[2].send(4, MsgAppend, 2);
        nodes[0].send(3, MsgAppend, 3);
        nodes[0].send(2, MsgAppend, 4);
        assert_eq!(nodes[0].got(), []);
        assert_eq!(late.got(), []);
        assert_eq!(nodes[2].got(), []);
        assert_eq!(nodes[1].got(), [Got::Message(1, 2, MsgAppend, 4)]);
    }

    fn delivered_indexes(network: &ChannelNetwork, rate: f64, count: u64) -> Vec<u64> {
        let mut nodes = cluster(network, 2);
        network.set_drop_rate(rate);
        let mut kept = Vec::new();
        for index in 0..count {
            nodes[0].send(2, MsgAppend, index);
            kept.extend(nodes[1].rx.try_iter().map(|input| match input {
                PeerInput::Message(m) => m.index,
                _ => unreachable!("only messages are sent"),
            }));
        }
        kept
    }

    /// The drop rate drops about that fraction, and the same seed drops the same ones.
    #[test]
    fn drop_rate_is_statistical_and_seeded() {
        let count = 20_000;
        let network = ChannelNetwork::with_seed(42);
        let kept = delivered_indexes(&network, 0.3, count);
        let dropped = count - kept.len() as u64;
        assert!(
            (5_400..=6_600).contains(&dropped),
            "dropped {dropped} of {count} at rate 0.3"
        );
        let stats = network.stats();
        assert_eq!(stats.dropped_by_fault, dropped);
        assert_eq!(stats.delivered, kept.len() as u64);

        let replay = delivered_indexes(&ChannelNetwork::with_seed(42), 0.3, count);
        assert_eq!(kept, replay);
        let other = delivered_indexes(&ChannelNetwork::with_seed(43), 0.3, count);
        assert_ne!(kept, other);
    }

    /// A link's own rate replaces the global one on that link only.
    #[test]
    fn link_drop_rate_overrides_global_rate() {
        let network = ChannelNetwork::new();
        let mut nodes = cluster(&network, 3);
        network.set_drop_rate(1.0);
        network.set_link_drop_rate(1, 3, 0.0);
        for index in 0..100 {
            nodes[0].send(2, MsgAppend, index);
            nodes[0].send(3, MsgAppend, index);
        }
        assert_eq!(nodes[1].got().len(), 0);
        assert_eq!(nodes[2].got().len(), 100);
    }

    #[test]
    #[should_panic(expected = "drop rate")]
    fn drop_rate_out_of_range_panics() {
        ChannelNetwork::new().set_drop_rate(1.5);
    }

    /// Delayed messages arrive no earlier than the delay, in send order per link.
    #[test]
    fn delay_holds_messages_and_keeps_link_order() {
        let network = ChannelNetwork::new();
        let mut nodes = cluster(&network, 3);
        let delay = Duration::from_millis(100);
        network.set_delay(delay);
        let sent = Instant::now();
        for index in 0..100 {
            nodes[0].send(2, MsgAppend, index);
            nodes[2].send(2, MsgAppend, index);
        }
        nodes[0].send(3, MsgSnapshot, 0);

        let mut from_1 = Vec::new();
        let mut from_3 = Vec::new();
        while from_1.len() + from_3.len() < 200 {
            match nodes[1].rx.recv_timeout(Duration::from_secs(5)) {
                Ok(PeerInput::Message(m)) if m.from == 1 => from_1.push(m.index),
                Ok(PeerInput::Message(m)) => from_3.push(m.index),
                _ => panic!("delayed messages did not arrive"),
            }
            assert!(sent.elapsed() >= delay, "a message arrived early");
        }
        let in_order: Vec<u64> = (0..100).collect();
        assert_eq!(from_1, in_order);
        assert_eq!(from_3, in_order);

        let report = nodes[0].rx.recv_timeout(Duration::from_secs(5));
        assert!(matches!(
            report,
            Ok(PeerInput::Snapshot(3, SnapshotStatus::Finish))
        ));
        // The delay thread counts a batch after handing it over; wait for that.
        let stats = settled_stats(&network, |s| s.delayed == 0);
        assert_eq!(stats.delivered, 201);
    }

    /// A link delay holds only its own link; the other direction stays instant.
    #[test]
    fn link_delay_holds_only_its_link() {
        let network = ChannelNetwork::new();
        let mut nodes = cluster(&network, 2);
        let delay = Duration::from_millis(500);
        network.set_link_delay(2, 1, delay);
        let sent = Instant::now();
        nodes[0].send(2, MsgAppend, 1);
        nodes[1].send(1, MsgAppend, 2);
        match nodes[1].rx.recv_timeout(Duration::from_secs(5)) {
            Ok(PeerInput::Message(m)) => assert_eq!(m.index, 1),
            _ => panic!("the instant direction did not deliver"),
        }
        assert!(sent.elapsed() < delay, "the undelayed direction was held");
        match nodes[0].rx.recv_timeout(Duration::from_secs(5)) {
            Ok(PeerInput::Message(m)) => assert_eq!(m.index, 2),
            _ => panic!("the delayed direction did not deliver"),
        }
        assert!(sent.elapsed() >= delay, "the delayed link delivered early");
        network.heal();
        assert!(!network.hub.core.table.read().faults_active);
    }

    /// A cut made while a message is delayed drops it when it falls due.
    #[test]
    fn cut_applies_to_messages_in_flight() {
        let network = ChannelNetwork::new();
        let mut nodes = cluster(&network, 2);
        let delay = Duration::from_millis(250);
        network.set_delay(delay);
        let sent = Instant::now();
        nodes[0].send(2, MsgSnapshot, 1);
        network.cut(1, 2);
        if sent.elapsed() >= delay {
            eprintln!("inconclusive: the machine is too slow to cut within {delay:?}");
            return;
        }
        let report = nodes[0].rx.recv_timeout(Duration::from_secs(5));
        assert!(matches!(
            report,
            Ok(PeerInput::Snapshot(2, SnapshotStatus::Failure))
        ));
        assert_eq!(nodes[1].got(), []);
        let stats = settled_stats(&network, |s| s.delayed == 0);
        assert_eq!(stats.dropped_by_fault, 1);
    }

    /// Dropping the last handle stops the delay thread, which fails the snapshots it held.
    #[test]
    fn delay_thread_exits_when_network_is_dropped() {
        let network = ChannelNetwork::new();
        let mut sender = TestNode::start(&network, 1, 8);
        let receiver = TestNode::start(&network, 2, 8);
        network.set_delay(Duration::from_secs(3600));
        sender.send(2, MsgSnapshot, 1);
        let core = Arc::downgrade(&network.hub.core);
        let TestNode {
            transport,
            rx: sender_rx,
            ..
        } = sender;
        drop((network, transport, receiver));
        assert!(
            core.upgrade().is_none(),
            "the delay thread still holds the core"
        );
        assert!(matches!(
            sender_rx.try_recv(),
            Ok(PeerInput::Snapshot(2, SnapshotStatus::Failure))
        ));
    }
}
