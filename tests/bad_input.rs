//! Bad input never crashes a node: each gets a clear error or a logged drop, and the
//! node keeps serving.

mod common;

use std::time::Duration;

use common::*;
use raftnode::raft_types::{Message, MessageType};
use raftnode::{Config, MemLogStore, Node, ProposeError, StartError};

/// Proves malformed configs are refused with the field and the limit named.
#[test]
fn malformed_config_is_refused_with_field_named() {
    let mut config = Config::new(1);
    config.heartbeat_ticks = 20;
    config.election_ticks = 20;
    let network = raftnode::ChannelNetwork::new();
    let err = Node::start(
        config,
        MemLogStore::new(),
        Kv::default(),
        network.transport(1),
        &logger(),
    )
    .unwrap_err();
    match err {
        StartError::Config(e) => {
            assert_eq!(e.field, "heartbeat_ticks");
            assert!(e.to_string().contains("(20)"), "{e}");
        }
        other => panic!("expected a config error, got {other}"),
    }
    let err = Node::start(
        Config::new(0),
        MemLogStore::new(),
        Kv::default(),
        network.transport(2),
        &logger(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("id"), "{err}");
}

/// Proves messages from unknown peers, addressed to other nodes, of local types, or
/// with impossible contents are dropped, and the cluster keeps committing.
#[test]
fn messages_from_unknown_peers_and_malformed_messages_are_dropped() {
    let c = Cluster::new(3);
    let leader = c.wait_leader();
    let mailbox = c.node(leader).mailbox();
    let mut junk = Vec::new();
    for (t, from, to) in [
        (MessageType::MsgAppendResponse, 99, leader), // unknown peer
        (MessageType::MsgHeartbeatResponse, 42, leader), // unknown peer
        (MessageType::MsgHup, 2, leader),             // a malformed notice (commit set)
        (MessageType::MsgPropose, 2, leader),         // proposals never travel
        (MessageType::MsgHeartbeat, 2, leader + 10),  // wrong `to`
        (MessageType::MsgAppend, 0, leader),          // no sender
    ] {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.from = from;
        m.to = to;
        m.term = 1;
        if t == MessageType::MsgHup {
            m.commit = 5;
        }
        junk.push(m);
    }
    // A heartbeat whose commit is far past the follower's log would panic raft-rs.
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let hb = heartbeat_past_log(leader, follower, c.status(leader).term);
    c.node(follower).mailbox().deliver(hb).unwrap();
    for m in junk {
        mailbox.deliver(m).unwrap();
    }
    c.propose_ok(put("still", "serving"));
    wait_until("drops counted", || {
        c.status(leader).metrics.step_errors >= 6
    });
    assert!(!c.node(leader).is_stopped());
    assert!(!c.node(follower).is_stopped());
    assert!(c.status(follower).metrics.step_errors >= 1);
}

/// Proves oversize and empty proposals get clear errors and the node keeps serving.
#[test]
fn oversized_and_empty_proposals_are_refused() {
    let c = Cluster::with_config(1, |cfg| cfg.max_proposal_bytes = 1024);
    let leader = c.wait_leader();
    let n = c.node(leader);
    assert_eq!(
        n.propose(vec![1u8; 2048]).unwrap_err(),
        ProposeError::TooLarge {
            size: 2048,
            limit: 1024
        }
    );
    assert_eq!(n.propose(Vec::new()).unwrap_err(), ProposeError::Empty);
    c.propose_ok(put("ok", "1"));
}

/// Proves every call after shutdown returns a Stopped error instead of hanging or
/// panicking, and that pending callers are released.
#[test]
fn calls_after_shutdown_return_stopped() {
    let c = Cluster::new(1);
    let leader = c.wait_leader();
    let n = c.node(leader).clone();
    assert_eq!(n.shutdown(), raftnode::StopReason::Shutdown);
    assert_eq!(n.propose(put("a", "b")).unwrap_err(), ProposeError::Stopped);
    assert_eq!(n.status().unwrap_err(), raftnode::NodeError::Stopped);
    assert_eq!(
        n.read_stale(|_| ()).unwrap_err(),
        raftnode::ReadError::Stopped
    );
    assert_eq!(
        n.add_voter(7, Vec::new(), Duration::from_secs(1))
            .unwrap_err(),
        raftnode::MembershipError::Stopped
    );
    assert_eq!(
        n.shutdown(),
        raftnode::StopReason::Shutdown,
        "shutdown is idempotent"
    );
    assert!(n.is_stopped());
}

/// Proves a panic inside the state machine stops the node and surfaces as Stopped to
/// every caller, never as a hang.
#[test]
fn panic_in_driver_surfaces_as_stopped() {
    use raftnode::{StateMachine, StateMachineError};
    struct Bomb(u64);
    impl StateMachine for Bomb {
        type Response = ();
        fn apply(&mut self, index: u64, command: &[u8]) {
            if command == b"boom" {
                panic!("boom at {index}");
            }
            self.0 = index;
        }
        fn apply_noop(&mut self, index: u64) {
            self.0 = index;
        }
        fn applied_index(&self) -> u64 {
            self.0
        }
        fn snapshot(&self) -> Result<bytes::Bytes, StateMachineError> {
            Ok(bytes::Bytes::new())
        }
        fn restore(&mut self, index: u64, _: &[u8]) -> Result<(), StateMachineError> {
            self.0 = index;
            Ok(())
        }
    }
    let network = raftnode::ChannelNetwork::new();
    let node = Node::start(
        test_config(1, &[1]),
        MemLogStore::new(),
        Bomb(0),
        network.transport(1),
        &logger(),
    )
    .unwrap();
    node.wait_for_leader(DEADLINE).unwrap();
    node.propose(b"fine".to_vec()).unwrap().wait().unwrap();
    let mut pending = node.propose(b"boom".to_vec()).unwrap();
    assert_eq!(pending.wait_timeout(DEADLINE), Err(ProposeError::Stopped));
    wait_until("stop reason recorded", || node.is_stopped());
    assert!(
        matches!(node.stop_reason(), Some(raftnode::StopReason::Panic(m)) if m.contains("boom"))
    );
    assert_eq!(
        node.propose(b"more".to_vec()).unwrap_err(),
        ProposeError::Stopped
    );
}
