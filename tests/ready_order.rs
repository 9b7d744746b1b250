//! The Ready loop's ordering, observed from outside: a recording LogStore and Transport
//! prove that nothing a message promises leaves the node before it is durable.
//!
//! "raft-rs note N" cites docs/raft-rs-notes.md.

mod common;

use std::sync::Arc;

use common::*;
use parking_lot::Mutex;
use raftnode::raft_types::{ConfState, Entry, HardState, Message, MessageType, Snapshot};
use raftnode::{
    ChannelTransport, LogStore, Mailbox, MemLogStore, Node, StorageError, Transport, TransportError,
};

#[derive(Debug, Clone)]
enum Event {
    Append { last: u64 },
    HardState(HardState),
    Sync,
    Send(Message),
}

type Events = Arc<Mutex<Vec<Event>>>;

struct RecordingStore {
    inner: MemLogStore,
    events: Events,
}

common::forward_storage!(RecordingStore, inner);

impl LogStore for RecordingStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        if let Some(last) = entries.last() {
            self.events.lock().push(Event::Append { last: last.index });
        }
        self.inner.append(entries)
    }
    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError> {
        self.events.lock().push(Event::HardState(hs.clone()));
        self.inner.set_hard_state(hs)
    }
    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), StorageError> {
        self.inner.set_conf_state(cs)
    }
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.inner.apply_snapshot(snapshot)
    }
    fn store_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        self.inner.store_snapshot(snapshot)
    }
    fn compact(&mut self, index: u64) -> Result<(), StorageError> {
        self.inner.compact(index)
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        self.events.lock().push(Event::Sync);
        self.inner.sync()
    }
}

struct RecordingTransport {
    inner: ChannelTransport,
    events: Events,
}

impl Transport for RecordingTransport {
    fn start(&mut self, mailbox: Mailbox) -> Result<(), TransportError> {
        self.inner.start(mailbox)
    }
    fn send(&mut self, messages: Vec<Message>) {
        {
            let mut events = self.events.lock();
            for m in &messages {
                events.push(Event::Send(m.clone()));
            }
        }
        self.inner.send(messages)
    }
}

/// Replays one node's events and checks that every append acknowledgement and every
/// granted vote was sent only after a sync that made it durable (raft-rs note 1).
fn check_persist_before_send(id: u64, events: &[Event]) -> (u64, usize) {
    let (mut written_last, mut synced_last) = (0u64, 0u64);
    let (mut written_hs, mut synced_hs) = (HardState::default(), HardState::default());
    let (mut acks, mut votes) = (0, 0);
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Append { last } => written_last = *last,
            Event::HardState(hs) => written_hs = hs.clone(),
            Event::Sync => {
                synced_last = written_last;
                synced_hs = written_hs.clone();
            }
            Event::Send(m) => match m.get_msg_type() {
                MessageType::MsgAppendResponse if !m.reject => {
                    acks = acks.max(m.index);
                    assert!(
                        m.index <= synced_last,
                        "node {id} event {i}: acknowledged index {} but only {synced_last} was synced",
                        m.index
                    );
                }
                MessageType::MsgRequestVoteResponse if !m.reject => {
                    votes += 1;
                    assert!(
                        synced_hs.term >= m.term && synced_hs.vote == m.to,
                        "node {id} event {i}: granted a vote to {} in term {} before it was synced ({synced_hs:?})",
                        m.to,
                        m.term
                    );
                }
                _ => {}
            },
        }
    }
    (acks, votes)
}

/// Proves sync happens before persisted messages are sent, on every node through
/// elections and replication (append acks and granted votes are checked one by one).
#[test]
fn sync_happens_before_persisted_messages_are_sent() {
    let network = raftnode::ChannelNetwork::new();
    let logger = logger();
    let mut nodes = Vec::new();
    let mut logs = Vec::new();
    for id in 1..=3 {
        let events: Events = Arc::default();
        let store = RecordingStore {
            inner: MemLogStore::new(),
            events: events.clone(),
        };
        let transport = RecordingTransport {
            inner: network.transport(id),
            events: events.clone(),
        };
        nodes.push(
            Node::start(
                test_config(id, &[1, 2, 3]),
                store,
                Kv::default(),
                transport,
                &logger,
            )
            .unwrap(),
        );
        logs.push(events);
    }
    let leader = nodes[0].wait_for_leader(DEADLINE).unwrap();
    let leader = &nodes[leader as usize - 1];
    let handles: Vec<_> = (0..100)
        .map(|i| leader.propose(put(&format!("k{i}"), "v")).expect("queued"))
        .collect();
    for mut h in handles {
        h.wait_timeout(DEADLINE).unwrap();
    }
    let last = leader.status().unwrap().last_index;
    // A second election (by transfer) exercises vote responses after replication too.
    let follower = nodes.iter().find(|n| n.id() != leader.id()).unwrap();
    leader.transfer_leader(follower.id(), DEADLINE).unwrap();
    for n in &nodes {
        n.kill();
    }
    let (mut acks, mut votes) = (0u64, 0);
    for (i, events) in logs.iter().enumerate() {
        let (a, v) = check_persist_before_send(i as u64 + 1, &events.lock());
        acks = acks.max(a);
        votes += v;
    }
    assert!(
        acks >= last,
        "acknowledgements never reached the last index {last}: {acks}"
    );
    assert!(votes >= 1, "no granted vote observed");
}
