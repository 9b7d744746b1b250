//! Message-flow logging switched at run time (`Node::set_message_log`): lines appear
//! for the chosen types only, at `info`, with the guide's fields, and stop when it is
//! switched off.

mod common;

use std::sync::Arc;

use common::{test_config, wait_until, Kv, DEADLINE};
use raftnode::raft_types::MessageType;
use raftnode::{ChannelNetwork, MemLogStore, MessageLog, Node};
use slog::{Drain, Key, Level, OwnedKVList, Record, Serializer, KV};
use std::sync::Mutex;

/// Keeps every record as `level msg key=value ...`.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

struct Line(String);

impl Serializer for Line {
    fn emit_arguments(&mut self, key: Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        self.0.push_str(&format!(" {key}={val}"));
        Ok(())
    }
}

impl Drain for Capture {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut line = Line(format!(
            "{} {}",
            record.level().as_short_str(),
            record.msg()
        ));
        let _ = record.kv().serialize(record, &mut line);
        let _ = values.serialize(record, &mut line);
        self.0.lock().expect("not poisoned").push(line.0);
        Ok(())
    }
}

impl Capture {
    fn messages(&self) -> Vec<String> {
        self.0
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|l| l.contains("raft message"))
            .cloned()
            .collect()
    }
}

#[test]
fn message_log_follows_the_switch_per_type() {
    let network = ChannelNetwork::new();
    let capture = Capture::default();
    // Only `info` and above reach the drain: what a release build keeps.
    let watched = slog::Logger::root(capture.clone().filter_level(Level::Info).fuse(), slog::o!());
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let logger = if id == 1 {
            watched.clone()
        } else {
            raftnode::discard_logger()
        };
        let node = Node::start(
            test_config(id, &[1, 2, 3]),
            MemLogStore::new(),
            Kv::default(),
            network.transport(id),
            &logger,
        )
        .expect("starts");
        nodes.push(node);
    }
    let leader = nodes[0].wait_for_leader(DEADLINE).expect("a leader");
    let propose = |what: &str| {
        nodes[leader as usize - 1]
            .propose(common::put(what, "v"))
            .expect("queued")
            .wait_timeout(DEADLINE)
            .expect("applied");
    };
    propose("before");
    assert!(
        capture.messages().is_empty(),
        "off by default: {:?}",
        capture.messages()
    );
    assert!(nodes[0].message_log().is_off());

    let appends = MessageLog::only(&[MessageType::MsgAppend, MessageType::MsgAppendResponse]);
    nodes[0].set_message_log(appends);
    assert_eq!(nodes[0].message_log(), appends);
    propose("during");
    // Node 1 sends (as leader) or receives (as follower) the append carrying it.
    wait_until("an append with one entry logged on node 1", || {
        capture
            .messages()
            .iter()
            .any(|l| l.contains("type=MsgAppend ") && l.contains("entries=1"))
    });
    for line in capture.messages() {
        assert!(line.starts_with("INFO raft message"), "{line}");
        for field in [
            "dir=",
            "from=",
            "to=",
            "term=",
            "index=",
            "log_term=",
            "commit=",
            "entries=",
        ] {
            assert!(line.contains(field), "{field} missing: {line}");
        }
        assert!(
            line.contains("type=MsgAppend ") || line.contains("type=MsgAppendResponse "),
            "only the switched-on types: {line}"
        );
    }

    nodes[0].set_message_log(MessageLog::off());
    // A message the driver thread was logging as the switch flipped may still finish its
    // line: a status request, answered on that thread between messages, waits it out.
    nodes[0].status().expect("status");
    let logged = capture.messages().len();
    for i in 0..5 {
        propose(&format!("after{i}"));
    }
    // The five appends reached node 1 (it applied them), none was logged.
    wait_until("node 1 applied the writes made after the switch", || {
        nodes[0].status().is_ok_and(|s| {
            s.applied
                >= nodes[leader as usize - 1]
                    .status()
                    .map_or(u64::MAX, |l| l.commit)
        })
    });
    assert_eq!(
        capture.messages().len(),
        logged,
        "logging stopped when switched off"
    );
    for node in &nodes {
        node.shutdown();
    }
}
