//! One node, in memory: the smallest useful raftnode program.
//!
//! ```sh
//! cargo run --example single_mem_node
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use raftnode::{
    ChannelNetwork, Config, MemLogStore, Node, ReadConsistency, StateMachine, StateMachineError,
};

/// `set key value` commands on a map; the response is the previous value.
#[derive(Default)]
struct Map {
    entries: BTreeMap<String, String>,
    applied: u64,
}

impl StateMachine for Map {
    type Response = Option<String>;

    fn apply(&mut self, index: u64, command: &[u8]) -> Option<String> {
        self.applied = index;
        let text = String::from_utf8_lossy(command);
        let (key, value) = text.strip_prefix("set ")?.split_once(' ')?;
        self.entries.insert(key.to_string(), value.to_string())
    }

    fn apply_noop(&mut self, index: u64) {
        self.applied = index;
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn snapshot(&self) -> Result<bytes::Bytes, StateMachineError> {
        let lines: Vec<String> = self
            .entries
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        Ok(lines.join("\n").into_bytes().into())
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        let text = std::str::from_utf8(data).map_err(StateMachineError::new)?;
        self.entries = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.applied = index;
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::new(1);
    config.initial_voters = vec![1];
    config.tick_interval = Duration::from_millis(10);
    let network = ChannelNetwork::new();
    let node = Node::start(
        config,
        MemLogStore::new(),
        Map::default(),
        network.transport(1),
        &raftnode::discard_logger(),
    )?;
    node.wait_for_leader(Duration::from_secs(5))?;

    node.propose(b"set greeting hello".to_vec())?.wait()?;
    let previous = node.propose(b"set greeting bonjour".to_vec())?.wait()?;
    let now = node.read(ReadConsistency::Linearizable, Duration::from_secs(5), |m| {
        m.entries.get("greeting").cloned()
    })?;
    println!("greeting was {previous:?}, is now {now:?}");
    let status = node.status()?;
    println!(
        "role {:?}, term {}, applied {}",
        status.role, status.term, status.applied
    );
    node.shutdown();
    Ok(())
}
