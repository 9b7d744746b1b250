//! Five nodes in one process: node 1 bootstraps a group of one, nodes 2-5 join through
//! membership changes, 100 proposals are applied, and every node ends with the same
//! entries. Exits 0 in seconds.
//!
//! ```sh
//! cargo run --release --example five_mem_node
//! ```

use std::time::{Duration, Instant};

use raftnode::{ChannelNetwork, Config, MemLogStore, Node, StateMachine, StateMachineError};

/// Keeps every applied command and a running checksum of them.
#[derive(Default)]
struct Journal {
    commands: Vec<(u64, Vec<u8>)>,
    checksum: u64,
    applied: u64,
}

impl StateMachine for Journal {
    type Response = u64;

    fn apply(&mut self, index: u64, command: &[u8]) -> u64 {
        for b in command {
            self.checksum = self.checksum.rotate_left(5) ^ u64::from(*b);
        }
        self.commands.push((index, command.to_vec()));
        self.applied = index;
        index
    }

    fn apply_noop(&mut self, index: u64) {
        self.applied = index;
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn snapshot(&self) -> Result<bytes::Bytes, StateMachineError> {
        let mut out = self.checksum.to_le_bytes().to_vec();
        for (index, command) in &self.commands {
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&(command.len() as u32).to_le_bytes());
            out.extend_from_slice(command);
        }
        Ok(out.into())
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        let bad = || StateMachineError::new("truncated journal snapshot");
        let mut rest = data;
        let mut take = |n: usize| -> Result<&[u8], StateMachineError> {
            if rest.len() < n {
                return Err(bad());
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        self.checksum = u64::from_le_bytes(take(8)?.try_into().map_err(|_| bad())?);
        self.commands.clear();
        while let Ok(raw_index) = take(8) {
            let i = u64::from_le_bytes(raw_index.try_into().map_err(|_| bad())?);
            let len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad())?) as usize;
            self.commands.push((i, take(len)?.to_vec()));
        }
        self.applied = index;
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let network = ChannelNetwork::new();
    let logger = raftnode::discard_logger();
    let timeout = Duration::from_secs(10);

    let config = |id: u64| {
        let mut c = Config::new(id);
        c.tick_interval = Duration::from_millis(10);
        c
    };

    // Node 1 bootstraps a group of one; 2..=5 start empty and wait to be added.
    let mut first = config(1);
    first.initial_voters = vec![1];
    let mut nodes = vec![Node::start(
        first,
        MemLogStore::new(),
        Journal::default(),
        network.transport(1),
        &logger,
    )?];
    for id in 2..=5 {
        nodes.push(Node::start(
            config(id),
            MemLogStore::new(),
            Journal::default(),
            network.transport(id),
            &logger,
        )?);
    }
    let leader = nodes[0].wait_for_leader(timeout)?;
    println!("node {leader} leads the group of one");

    // Grow the group: `add_voter` makes each new member a learner and promotes it once
    // it has caught up, so the quorum never waits on an empty node.
    for id in 2..=5 {
        nodes[0].add_voter(id, Vec::new(), timeout)?;
    }
    let status = nodes[0].status()?;
    println!("voters after membership changes: {:?}", status.voters);

    // 100 proposals, all in flight at once.
    let handles: Vec<_> = (0..100)
        .map(|i| nodes[0].propose(format!("entry-{i:03}").into_bytes()))
        .collect::<Result<_, _>>()?;
    let mut last_index = 0;
    for mut handle in handles {
        last_index = handle.wait_timeout(timeout)?;
    }

    // Every node applies the same 100 entries in the same order.
    let deadline = Instant::now() + timeout;
    let mut journals = Vec::new();
    for node in &nodes {
        loop {
            let (applied, count, checksum) =
                node.read_stale(|j| (j.applied, j.commands.len(), j.checksum))?;
            if applied >= last_index {
                journals.push((node.id(), count, checksum));
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("node {} applied only up to {applied}", node.id()).into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let reference = nodes[0].read_stale(|j| j.commands.clone())?;
    for node in &nodes[1..] {
        let commands = node.read_stale(|j| j.commands.clone())?;
        if commands != reference {
            return Err(format!("node {} applied different entries", node.id()).into());
        }
    }
    for (id, count, checksum) in &journals {
        println!("node {id}: applied {count} entries, checksum {checksum:016x}");
    }
    println!(
        "all five nodes applied the same {} entries (last index {last_index}) in {:?}",
        reference.len(),
        started.elapsed()
    );
    for node in &nodes {
        node.shutdown();
    }
    Ok(())
}
