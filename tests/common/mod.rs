//! Shared test helpers: a KV state machine that counts applies, and a cluster harness on
//! the in-process network. Every wait has a deadline; nothing sleeps for a fixed time
//! and hopes.
#![allow(dead_code)]

pub mod slow;
pub mod tcp;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use raftnode::{
    ChannelNetwork, Config, MemLogStore, Node, ReadConsistency, Role, StateMachine,
    StateMachineError, Status,
};

/// A size or seed from the environment (`_` separators allowed), or `default` when the
/// variable is unset.
///
/// # Panics
///
/// When the variable is set but not a number: a typo in a soak command must not fall
/// back to the CI size silently.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Generous for a loaded 2-core machine; only failures wait this long.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A KV state whose contents outlive a node restart, like a perfectly durable state
/// machine: a restarted node resumes at `applied`, so a second apply of any index is
/// a real double apply.
#[derive(Default, Debug)]
pub struct KvState {
    pub map: BTreeMap<String, String>,
    pub applied: u64,
    /// Commands in the order applied, for "identical on every node" checks.
    pub log: Vec<(u64, Vec<u8>)>,
    /// index -> number of times applied; any value above 1 is a double apply.
    pub applies: BTreeMap<u64, u32>,
    pub restores: u64,
    /// Calls of `check_snapshot`.
    pub snapshot_checks: u64,
    /// How many more snapshots `check_snapshot` refuses before it checks for real.
    pub refuse_snapshot_checks: u32,
}

impl KvState {
    /// A deep copy, as a backup of a durable state machine would be.
    pub fn copy(&self) -> KvState {
        KvState {
            map: self.map.clone(),
            applied: self.applied,
            log: self.log.clone(),
            applies: self.applies.clone(),
            restores: self.restores,
            snapshot_checks: self.snapshot_checks,
            refuse_snapshot_checks: self.refuse_snapshot_checks,
        }
    }
}

/// Parses `Kv`'s snapshot format: `key\tvalue` lines.
fn parse_kv_snapshot(data: &[u8]) -> Result<BTreeMap<String, String>, StateMachineError> {
    let text = std::str::from_utf8(data).map_err(StateMachineError::new)?;
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let (k, v) = line
            .split_once('\t')
            .ok_or_else(|| StateMachineError::new("bad line"))?;
        map.insert(k.to_string(), v.to_string());
    }
    Ok(map)
}

/// A KV map. Commands: `put k v`, `del k`. Response: the previous value.
#[derive(Default, Clone)]
pub struct Kv {
    pub state: Arc<Mutex<KvState>>,
}

pub fn put(k: &str, v: &str) -> Vec<u8> {
    format!("put {k} {v}").into_bytes()
}

impl StateMachine for Kv {
    type Response = Option<String>;

    fn apply(&mut self, index: u64, command: &[u8]) -> Option<String> {
        let mut s = self.state.lock();
        assert!(
            index > s.applied,
            "apply out of order: {index} after {}",
            s.applied
        );
        *s.applies.entry(index).or_default() += 1;
        s.applied = index;
        s.log.push((index, command.to_vec()));
        let text = String::from_utf8_lossy(command);
        let mut parts = text.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("put"), Some(k), Some(v)) => s.map.insert(k.to_string(), v.to_string()),
            (Some("del"), Some(k), None) => s.map.remove(k),
            _ => None,
        }
    }

    fn apply_noop(&mut self, index: u64) {
        let mut s = self.state.lock();
        assert!(
            index > s.applied,
            "noop out of order: {index} after {}",
            s.applied
        );
        *s.applies.entry(index).or_default() += 1;
        s.applied = index;
    }

    fn applied_index(&self) -> u64 {
        self.state.lock().applied
    }

    fn snapshot(&self) -> Result<bytes::Bytes, StateMachineError> {
        let s = self.state.lock();
        let mut out = String::new();
        for (k, v) in &s.map {
            out.push_str(k);
            out.push('\t');
            out.push_str(v);
            out.push('\n');
        }
        Ok(out.into_bytes().into())
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        let map = parse_kv_snapshot(data)?;
        let mut s = self.state.lock();
        s.map = map;
        s.applied = index;
        s.log.clear();
        s.restores += 1;
        Ok(())
    }

    fn check_snapshot(&self, _index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        let mut s = self.state.lock();
        s.snapshot_checks += 1;
        if s.refuse_snapshot_checks > 0 {
            s.refuse_snapshot_checks -= 1;
            return Err(StateMachineError::new("refused by the test"));
        }
        parse_kv_snapshot(data).map(|_| ())
    }
}

/// A heartbeat from `leader` to `to` at `term` whose commit is far past any log: raft-rs
/// would panic on it, so a node's checks must refuse it (`CommitPastLog`).
pub fn heartbeat_past_log(leader: u64, to: u64, term: u64) -> raftnode::raft_types::Message {
    let mut hb = raftnode::raft_types::Message::default();
    hb.set_msg_type(raftnode::raft_types::MessageType::MsgHeartbeat);
    hb.from = leader;
    hb.to = to;
    hb.term = term;
    hb.commit = 1_000_000;
    hb
}

/// A read query: the value of `key` in a [`Kv`].
pub fn get(key: &str) -> impl FnOnce(&Kv) -> Option<String> + Send + 'static {
    let key = key.to_string();
    move |kv: &Kv| kv.state.lock().map.get(&key).cloned()
}

/// Polls `cond` until it holds or `DEADLINE` passes; panics with `what` on timeout.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        // Poll interval; the loop is bounded by the deadline above.
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn test_config(id: u64, voters: &[u64]) -> Config {
    let mut c = Config::new(id);
    c.initial_voters = voters.to_vec();
    c.tick_interval = Duration::from_millis(10);
    c.election_ticks = 20;
    c.heartbeat_ticks = 3;
    c
}

pub fn logger() -> slog::Logger {
    if std::env::var_os("RAFTNODE_TEST_LOG").is_some() {
        use slog::Drain;
        let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
        let drain = slog_term::FullFormat::new(decorator).build().fuse();
        slog::Logger::root(drain, slog::o!())
    } else {
        raftnode::discard_logger()
    }
}

/// A cluster of in-memory nodes on one in-process network.
pub struct Cluster {
    pub network: ChannelNetwork,
    pub nodes: BTreeMap<u64, Node<Kv>>,
    pub stores: BTreeMap<u64, MemLogStore>,
    pub states: BTreeMap<u64, Kv>,
    pub logger: slog::Logger,
    pub configure: fn(&mut Config),
}

fn no_change(_: &mut Config) {}

impl Cluster {
    /// Starts `n` voters 1..=n.
    pub fn new(n: u64) -> Cluster {
        Cluster::with_config(n, no_change)
    }

    pub fn with_config(n: u64, configure: fn(&mut Config)) -> Cluster {
        let mut c = Cluster {
            network: ChannelNetwork::new(),
            nodes: BTreeMap::new(),
            stores: BTreeMap::new(),
            states: BTreeMap::new(),
            logger: logger(),
            configure,
        };
        let voters: Vec<u64> = (1..=n).collect();
        for id in 1..=n {
            c.start_node(id, &voters);
        }
        c
    }

    /// Starts (or restarts on its existing store) node `id`. `voters` is only used on
    /// first start.
    pub fn start_node(&mut self, id: u64, voters: &[u64]) -> Node<Kv> {
        let mut config = test_config(id, voters);
        (self.configure)(&mut config);
        let store = self.stores.entry(id).or_default().clone();
        let kv = self.states.entry(id).or_default().clone();
        let node = Node::start(config, store, kv, self.network.transport(id), &self.logger)
            .expect("node starts");
        self.nodes.insert(id, node.clone());
        node
    }

    pub fn node(&self, id: u64) -> &Node<Kv> {
        &self.nodes[&id]
    }

    /// Stops node `id` at once (a crash that keeps its in-memory "disk").
    pub fn kill(&mut self, id: u64) {
        if let Some(node) = self.nodes.remove(&id) {
            node.kill();
        }
    }

    pub fn status(&self, id: u64) -> Status {
        self.nodes[&id].status().expect("status")
    }

    /// Ids of the nodes that currently think they lead, among `ids`.
    pub fn leaders_among(&self, ids: &[u64]) -> Vec<u64> {
        ids.iter()
            .copied()
            .filter(|id| {
                self.nodes
                    .get(id)
                    .is_some_and(|n| n.status().map(|s| s.role == Role::Leader).unwrap_or(false))
            })
            .collect()
    }

    /// Waits until exactly one of `ids` leads and every one of `ids` agrees on it.
    pub fn wait_leader_among(&self, ids: &[u64]) -> u64 {
        let mut leader = 0;
        wait_until("one agreed leader", || {
            let leaders = self.leaders_among(ids);
            if leaders.len() != 1 {
                return false;
            }
            leader = leaders[0];
            let term = self.status(leader).term;
            ids.iter().all(|id| {
                let s = self.status(*id);
                s.leader == Some(leader) && s.term == term
            })
        });
        leader
    }

    pub fn wait_leader(&self) -> u64 {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        self.wait_leader_among(&ids)
    }

    /// Proposes on the current leader, retrying on leader changes until applied.
    pub fn propose_ok(&self, command: Vec<u8>) -> Option<String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "proposal never succeeded");
            let leader = self.wait_leader();
            match self.nodes[&leader]
                .propose(command.clone())
                .and_then(|mut h| h.wait_timeout(Duration::from_secs(5)))
            {
                Ok(r) => return r,
                // Back off before retrying; the loop is bounded by `deadline`.
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Waits until every node in `ids` applied at least `index`.
    pub fn wait_applied(&self, ids: &[u64], index: u64) {
        wait_until(&format!("nodes {ids:?} applied {index}"), || {
            ids.iter().all(|id| self.status(*id).applied >= index)
        });
    }

    pub fn map_of(&self, id: u64) -> BTreeMap<String, String> {
        self.nodes[&id]
            .read_stale(|kv| kv.state.lock().map.clone())
            .expect("read")
    }

    /// Asserts no index was applied twice on any node.
    pub fn assert_no_double_apply(&self) {
        for (id, kv) in &self.states {
            for (index, count) in &kv.state.lock().applies {
                assert_eq!(*count, 1, "node {id} applied index {index} {count} times");
            }
        }
    }

    pub fn read(&self, id: u64, key: &str) -> Result<Option<String>, raftnode::ReadError> {
        let key = key.to_string();
        self.nodes[&id].read(
            ReadConsistency::Linearizable,
            Duration::from_secs(2),
            move |kv| kv.state.lock().map.get(&key).cloned(),
        )
    }

    pub fn shutdown(&mut self) {
        for (_, node) in std::mem::take(&mut self.nodes) {
            node.kill();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Proposes `count` commands `put {prefix}{i} {i}` on `node`, keeping up to `window`
/// proposals in flight, and waits for every one. Panics on any failure.
pub fn propose_in_flight(node: &Node<Kv>, prefix: &str, count: usize, window: usize) {
    let mut start = 0;
    while start < count {
        let end = (start + window).min(count);
        let handles: Vec<_> = (start..end)
            .map(|i| {
                node.propose(put(&format!("{prefix}{i}"), &i.to_string()))
                    .expect("queued")
            })
            .collect();
        for mut h in handles {
            h.wait_timeout(DEADLINE).expect("proposal applied");
        }
        start = end;
    }
}

/// The membership a node reports, sorted: (voters, learners, voters_outgoing).
pub fn conf_of(status: &Status) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
    let sorted = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    };
    (
        sorted(&status.voters),
        sorted(&status.learners),
        sorted(&status.voters_outgoing),
    )
}

/// Waits until every node in `ids` reports exactly `voters` and `learners`, not joint.
pub fn wait_conf(c: &Cluster, ids: &[u64], voters: &[u64], learners: &[u64]) {
    let want = (voters.to_vec(), learners.to_vec(), Vec::new());
    wait_until(
        &format!("nodes {ids:?} agree on voters {voters:?} learners {learners:?}"),
        || ids.iter().all(|id| conf_of(&c.status(*id)) == want),
    );
}

/// A background writer: proposes `put load-{n} {n}` in a loop to whichever node leads,
/// tolerating leader changes (`NotLeader`, `OutcomeUnknown`, `Dropped`, `Timeout`), and
/// records which writes were acknowledged.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    nodes: Arc<Mutex<Vec<Node<Kv>>>>,
    acked: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Starts writing through `nodes` (more can be added with [`Load::add_node`]).
    pub fn start(nodes: Vec<Node<Kv>>) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let nodes = Arc::new(Mutex::new(nodes));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (t_stop, t_nodes, t_acked) = (stop.clone(), nodes.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !t_stop.load(std::sync::atomic::Ordering::Relaxed) {
                let leader = t_nodes
                    .lock()
                    .iter()
                    .find(|node| node.leader() == Some(node.id()))
                    .cloned();
                let Some(leader) = leader else {
                    // Background writer: poll for a leader until told to stop.
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let key = format!("load-{n}");
                let outcome = leader
                    .propose(put(&key, &n.to_string()))
                    .and_then(|mut h| h.wait_timeout(Duration::from_secs(5)));
                match outcome {
                    Ok(_) => {
                        t_acked.lock().push(key);
                        n += 1;
                    }
                    // Back off after a failed write; callers bound the run with deadlines.
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Load {
            stop,
            nodes,
            acked,
            thread: Some(thread),
        }
    }

    /// Lets the writer propose through `node` too.
    pub fn add_node(&self, node: Node<Kv>) {
        self.nodes.lock().push(node);
    }

    /// Number of acknowledged writes so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().len()
    }

    /// Waits until at least `more` further writes are acknowledged.
    pub fn wait_progress(&self, more: usize) {
        let target = self.acked() + more;
        wait_until(&format!("{more} more writes acknowledged"), || {
            self.acked() >= target
        });
    }

    /// Stops the writer and returns the keys of every acknowledged write.
    pub fn stop(mut self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("load thread");
        }
        std::mem::take(&mut *self.acked.lock())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Peak resident set size of this process in KiB (`VmHWM` in /proc/self/status), or
/// `None` where /proc is not available.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Current resident set size of this process in KiB (`VmRSS`), or `None`.
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the peak RSS (`VmHWM`) to the current RSS; returns false where unsupported.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A state machine holding one large blob, set by `fill <seed> <bytes>`.
#[derive(Default)]
pub struct Blob {
    pub data: bytes::Bytes,
    pub applied: u64,
}

/// `len` bytes from a xorshift64 stream: LZ4 cannot shrink them.
pub fn xorshift_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A cheap fingerprint of the blob: length and the xor of its 8-byte words.
pub fn fingerprint(data: &[u8]) -> (usize, u64) {
    let folded = data.chunks(8).fold(0u64, |acc, chunk| {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        acc ^ u64::from_le_bytes(word)
    });
    (data.len(), folded)
}

impl StateMachine for Blob {
    type Response = ();

    fn apply(&mut self, index: u64, command: &[u8]) {
        let text = String::from_utf8_lossy(command);
        let mut parts = text.split(' ');
        if let (Some("fill"), Some(seed), Some(len)) = (parts.next(), parts.next(), parts.next()) {
            if let (Ok(seed), Ok(len)) = (seed.parse(), len.parse()) {
                self.data = xorshift_bytes(seed, len).into();
            }
        }
        self.applied = index;
    }

    fn apply_noop(&mut self, index: u64) {
        self.applied = index;
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn snapshot(&self) -> Result<bytes::Bytes, StateMachineError> {
        Ok(self.data.clone())
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        self.data = bytes::Bytes::copy_from_slice(data);
        self.applied = index;
        Ok(())
    }
}

/// A blob state size in bytes: `var` in MiB, else `default_mib`.
pub fn blob_bytes(var: &str, default_mib: usize) -> usize {
    let mib = std::env::var(var)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(default_mib);
    mib << 20
}

/// A node config for the large-snapshot tests: snapshots only when asked, nothing kept
/// behind them, so a learner added later needs the snapshot.
pub fn blob_config(id: u64, voters: &[u64]) -> Config {
    let mut config = test_config(id, voters);
    config.snapshot.every_applied = 0;
    config.snapshot.trailing_entries = 0;
    config
}

/// Implements `raft::Storage` for a test's `LogStore` wrapper by forwarding every read
/// to the wrapped store in its field `$inner` (the wrappers differ only in their writes).
#[allow(unused_macros)]
macro_rules! forward_storage {
    ($store:ty, $inner:ident) => {
        impl raft::Storage for $store {
            fn initial_state(&self) -> raft::Result<raft::RaftState> {
                self.$inner.initial_state()
            }
            fn entries(
                &self,
                low: u64,
                high: u64,
                max: impl Into<Option<u64>>,
                ctx: raft::GetEntriesContext,
            ) -> raft::Result<Vec<raftnode::raft_types::Entry>> {
                self.$inner.entries(low, high, max, ctx)
            }
            fn term(&self, idx: u64) -> raft::Result<u64> {
                self.$inner.term(idx)
            }
            fn first_index(&self) -> raft::Result<u64> {
                self.$inner.first_index()
            }
            fn last_index(&self) -> raft::Result<u64> {
                self.$inner.last_index()
            }
            fn snapshot(
                &self,
                request_index: u64,
                to: u64,
            ) -> raft::Result<raftnode::raft_types::Snapshot> {
                self.$inner.snapshot(request_index, to)
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use forward_storage;
