//! The request queue's bound (`Config::max_pending_requests`): with the driver busy,
//! requests past the bound are refused with `Busy` at once, a stop still gets through a
//! full queue, and everything queued is answered. For a node on its own thread and for a
//! group on a `GroupHost`.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use raftnode::{
    ChannelNetwork, Config, GroupHost, HostConfig, MemLogStore, Node, ProposeError,
    ReadConsistency, ReadError, StateMachine, StateMachineError, StopReason,
};

/// Applies commands; `hold` blocks the driver in `apply` until the test releases it.
struct Gate {
    applied: u64,
    entered: mpsc::Sender<()>,
    release: Arc<Mutex<mpsc::Receiver<()>>>,
}

impl StateMachine for Gate {
    type Response = ();
    fn apply(&mut self, index: u64, command: &[u8]) {
        if command == b"hold" {
            let _ = self.entered.send(());
            let _ = self.release.lock().recv_timeout(DEADLINE);
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
        Ok(bytes::Bytes::new())
    }
    fn restore(&mut self, index: u64, _: &[u8]) -> Result<(), StateMachineError> {
        self.applied = index;
        Ok(())
    }
}

const BOUND: usize = 4;

fn config() -> Config {
    let mut config = test_config(1, &[1]);
    config.max_pending_requests = BOUND;
    config
}

/// Holds the driver in `apply`, fills the queue to the bound, checks the refusals, then
/// releases it and checks every queued proposal is answered.
fn bound_holds(node: &Node<Gate>, entered: &mpsc::Receiver<()>, release: &mpsc::Sender<()>) {
    node.wait_for_leader(DEADLINE).expect("leader");
    let held = node.propose(b"hold".to_vec()).expect("queued");
    entered.recv_timeout(DEADLINE).expect("the driver is held");
    let queued: Vec<_> = (0..BOUND)
        .map(|i| node.propose(format!("q{i}").into_bytes()).expect("room"))
        .collect();
    assert!(matches!(
        node.propose(b"one too many".to_vec()),
        Err(ProposeError::Busy)
    ));
    let read = node.read(ReadConsistency::Linearizable, DEADLINE, |g: &Gate| {
        g.applied
    });
    assert!(matches!(read, Err(ReadError::Busy)), "{read:?}");
    release.send(()).expect("release");
    held.wait().expect("held proposal commits");
    for handle in queued {
        handle.wait().expect("queued proposal commits");
    }
}

fn gate() -> (Gate, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let gate = Gate {
        applied: 0,
        entered: entered_tx,
        release: Arc::new(Mutex::new(release_rx)),
    };
    (gate, entered_rx, release_tx)
}

/// Proves the bound on a node's own thread, and that a stop gets through a full queue.
#[test]
fn a_full_queue_refuses_with_busy_and_still_stops() {
    let (gate, entered, release) = gate();
    let node = Node::start(
        config(),
        MemLogStore::new(),
        gate,
        ChannelNetwork::new().transport(1),
        &logger(),
    )
    .expect("starts");
    bound_holds(&node, &entered, &release);

    // Full again, then stop: the shutdown is not refused for want of room.
    let _held = node.propose(b"hold".to_vec()).expect("queued");
    entered.recv_timeout(DEADLINE).expect("the driver is held");
    let _queued: Vec<_> = (0..BOUND)
        .map(|i| node.propose(format!("r{i}").into_bytes()).expect("room"))
        .collect();
    let stopper = {
        let node = node.clone();
        std::thread::spawn(move || node.shutdown())
    };
    release.send(()).expect("release");
    assert_eq!(stopper.join().expect("stopped"), StopReason::Shutdown);
}

/// Proves the same bound for a group on a host thread.
#[test]
fn a_hosted_group_has_the_same_bound() {
    let mut host_config = HostConfig::default();
    host_config.threads = 1;
    let host = GroupHost::start(host_config, &logger()).expect("host");
    let (gate, entered, release) = gate();
    let node = host
        .start_group(
            1,
            config(),
            MemLogStore::new(),
            gate,
            ChannelNetwork::new().transport(1),
        )
        .expect("starts");
    bound_holds(&node, &entered, &release);
    drop(release);
    host.shutdown();
    assert_eq!(
        node.wait_stopped(Duration::ZERO),
        Some(StopReason::Shutdown)
    );
}
