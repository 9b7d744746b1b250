//! Record and replay (docs/operations.md, "Record and replay"): `record` runs three
//! in-memory nodes with recording on and writes some keys; `replay` re-drives a fresh
//! core from one node's file offline and prints the report (exit 1 on a mismatch).
//!
//! ```sh
//! cargo run --example replay -- record /tmp/rec
//! cargo run --example replay -- replay /tmp/rec/node-1.rec
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use raftnode::{ChannelNetwork, Config, MemLogStore, Node, RecordTo, StateMachine};
use raftnode::{ProposeError, StateMachineError};

#[derive(Parser)]
#[command(about = "Record a 3-node in-memory cluster, or replay one node's recording")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run three nodes recording to `<dir>/node-<id>.rec` and write `--keys` keys.
    Record {
        dir: PathBuf,
        #[arg(long, default_value_t = 100)]
        keys: usize,
        /// The size bound of each file.
        #[arg(long, default_value_t = 64 << 20)]
        max_bytes: u64,
    },
    /// Replay a recording made by `record` and print what it found.
    Replay { file: PathBuf },
}

/// `key=value` commands into a map; the digest covers every pair.
#[derive(Default)]
struct Map {
    map: BTreeMap<String, String>,
    applied: u64,
}

impl StateMachine for Map {
    type Response = ();

    fn apply(&mut self, index: u64, command: &[u8]) {
        let text = String::from_utf8_lossy(command);
        let (key, value) = text.split_once('=').unwrap_or((&text, ""));
        self.map.insert(key.to_owned(), value.to_owned());
        self.applied = index;
    }

    fn apply_noop(&mut self, index: u64) {
        self.applied = index;
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }

    fn snapshot(&self) -> Result<bytes::Bytes, StateMachineError> {
        let lines: String = self.map.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        Ok(lines.into())
    }

    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        let text = std::str::from_utf8(data).map_err(StateMachineError::new)?;
        self.map = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        self.applied = index;
        Ok(())
    }

    fn digest(&self) -> Option<u64> {
        let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ self.applied;
        for b in self
            .map
            .iter()
            .flat_map(|(k, v)| k.bytes().chain([0]).chain(v.bytes()))
        {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Some(h)
    }
}

fn record(dir: PathBuf, keys: usize, max_bytes: u64) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(&dir)?;
    let network = ChannelNetwork::new();
    let logger = raftnode::discard_logger();
    let timeout = Duration::from_secs(10);
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let mut config = Config::new(id);
        config.initial_voters = vec![1, 2, 3];
        config.tick_interval = Duration::from_millis(10);
        let path = dir.join(format!("node-{id}.rec"));
        config.record = Some(RecordTo::new(&path, max_bytes));
        nodes.push(Node::start(
            config,
            MemLogStore::new(),
            Map::default(),
            network.transport(id),
            &logger,
        )?);
        println!("node {id} records to {}", path.display());
    }
    let mut leader = nodes[0].wait_for_leader(timeout)?;
    let mut written = 0;
    while written < keys {
        let command = format!("key-{written}=value-{written}").into_bytes();
        match nodes[leader as usize - 1]
            .propose(command)
            .and_then(|mut h| h.wait_timeout(timeout))
        {
            Ok(()) => written += 1,
            // The leader changed: ask the new one.
            Err(ProposeError::NotLeader { .. }) => leader = nodes[0].wait_for_leader(timeout)?,
            Err(e) => return Err(e.into()),
        }
    }
    for node in &nodes {
        node.shutdown();
    }
    println!("wrote {keys} keys; replay a file with: cargo run --example replay -- replay <file>");
    Ok(())
}

fn main() -> ExitCode {
    let result = match Args::parse().command {
        Command::Record {
            dir,
            keys,
            max_bytes,
        } => record(dir, keys, max_bytes).map(|()| ExitCode::SUCCESS),
        Command::Replay { file } => raftnode::replay(&file, Map::default)
            .map_err(Into::into)
            .map(|report| {
                println!("{report:#?}");
                match &report.mismatch {
                    None => ExitCode::SUCCESS,
                    Some(mismatch) => {
                        eprintln!("the replay differs from the recording: {mismatch}");
                        ExitCode::FAILURE
                    }
                }
            }),
    };
    result.unwrap_or_else(|e: Box<dyn std::error::Error>| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}
