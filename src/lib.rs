//! # raftnode
//!
//! An embeddable Raft consensus library on TiKV's [raft-rs](https://docs.rs/raft/0.7):
//! implement [`StateMachine`] for your service, pick a [`LogStore`] and a [`Transport`]
//! (or use the ones in the box), start a [`Node`] per replica, and get a replicated,
//! fault-tolerant service. The library drives raft-rs's `RawNode` and its Ready loop
//! itself, in the order raft needs (snapshot, append, HardState, send, apply), so you
//! never touch `Ready` or `LightReady`.
//!
//! ```
//! use std::time::Duration;
//! use raftnode::{ChannelNetwork, Config, MemLogStore, Node, StateMachine, StateMachineError};
//!
//! /// A replicated counter: every command adds its length.
//! #[derive(Default)]
//! struct Counter { total: u64, applied: u64 }
//!
//! impl StateMachine for Counter {
//!     type Response = u64;
//!     fn apply(&mut self, index: u64, command: &[u8]) -> u64 {
//!         self.total += command.len() as u64;
//!         self.applied = index;
//!         self.total
//!     }
//!     fn apply_noop(&mut self, index: u64) { self.applied = index; }
//!     fn applied_index(&self) -> u64 { self.applied }
//!     fn snapshot(&self) -> Result<bytes::Bytes, StateMachineError> {
//!         Ok(self.total.to_le_bytes().to_vec().into())
//!     }
//!     fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
//!         self.total = u64::from_le_bytes(data.try_into().map_err(StateMachineError::new)?);
//!         self.applied = index;
//!         Ok(())
//!     }
//! }
//!
//! let network = ChannelNetwork::new();
//! let logger = raftnode::discard_logger();
//! let mut nodes = Vec::new();
//! for id in 1..=3 {
//!     let mut config = Config::new(id);
//!     config.initial_voters = vec![1, 2, 3];
//!     config.tick_interval = Duration::from_millis(10);
//!     nodes.push(Node::start(config, MemLogStore::new(), Counter::default(), network.transport(id), &logger)?);
//! }
//! let leader = nodes[0].wait_for_leader(Duration::from_secs(10))?;
//! let leader = &nodes[leader as usize - 1];
//! assert_eq!(leader.propose(b"abc".to_vec())?.wait()?, 3);
//! for node in &nodes { node.shutdown(); }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Map
//!
//! - [`StateMachine`], [`LogStore`], [`Transport`]: the three traits, each with its
//!   correctness obligations.
//! - [`Node`]: propose, read, change membership, transfer leadership, status.
//! - [`Config`]: every knob, validated.
//! - [`Sessions`] and [`Session`]: client sessions, so a retried proposal is applied at
//!   most once and the retry gets the first response (`docs/sessions.md`).
//! - In the box: [`MemLogStore`] (not durable), [`EngineLogStore`] (durable, on
//!   raft-engine; `docs/durability.md`), [`ChannelNetwork`] (in-process, with fault
//!   injection), [`TcpTransport`] (separate processes; `docs/security.md`).
//! - `tls` (feature `tls`): mutual TLS for [`TcpTransport`], certificates bound to node
//!   ids (`docs/security.md`).
//! - `testing` (feature `testing`): the `LogStore` conformance suite, a deterministic
//!   simulator with a linearizability checker, and a durable KV state machine.
//! - `driver.rs` (private): the Ready loop, step by step as `docs/ready-loop.md` says.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod config;
mod diagnose;
mod digest;
mod driver;
mod error;
pub mod export;
mod host;
mod log_store;
mod mailbox;
mod membership;
mod message_log;
mod node;
mod notice;
mod peer_watch;
mod proposals;
mod record;
mod replica;
mod runtime;
pub mod sessions;
mod snapshot_codec;
mod state_machine;
mod status;
mod storage;
mod timing;
mod transport;
mod transports;
mod validate;
// The frame format and handshake; tests and fuzzers reach it as `testing::wire`.
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
mod wire;

#[cfg(feature = "testing")]
pub mod testing;

/// The `bytes` crate, whose [`Bytes`](bytes::Bytes) [`StateMachine::snapshot`] returns.
pub use bytes;
pub use config::{Config, SnapshotPolicy};
pub use diagnose::{Finding, FindingKind, DIAGNOSE_AFTER_TIMEOUTS};
pub use error::{
    ConfigError, MembershipError, NodeError, ProposeError, ReadError, ReplayError, StartError,
    StateMachineError, StopReason, StorageError, TransportError,
};
pub use host::{GroupHost, HostConfig};
pub use log_store::LogStore;
pub use mailbox::{DeliverError, Mailbox};
pub use membership::{Membership, MembershipChange};
pub use message_log::MessageLog;
#[cfg(feature = "terminal-logger")]
pub use node::terminal_logger;
pub use node::{discard_logger, Node, ReadConsistency};
pub use proposals::{Applied, ProposalHandle, WriteToken};
pub use record::{replay, Mismatch, RecordTo, ReplayReport, MIN_RECORD_BYTES};
/// The `slog` crate, whose [`Logger`](slog::Logger) [`Node::start`] takes.
pub use sessions::{
    RetryError, RetryPolicy, Session, SessionLimits, SessionMachine, SessionReply, Sessions,
};
pub use slog;
pub use state_machine::StateMachine;
pub use status::{Divergence, MetricsSnapshot, PeerProgress, ProgressState, Role, Status};
pub use storage::MemLogStore;
pub use storage::{EngineLogStore, EngineOptions, LogEngine};
pub use timing::{Latency, ProposalTiming, Stage};
pub use transport::Transport;
/// Mutual TLS for [`TcpTransport`] (feature `tls`).
#[cfg(feature = "tls")]
pub use transports::tls;
#[cfg(feature = "tls")]
pub use transports::tls::{TlsConfig, TlsConfigError};
pub use transports::{ChannelNetwork, ChannelTransport, NetworkStats};
pub use transports::{RefusalReason, TcpConfig, TcpHandle, TcpStats, TcpTransport};
pub use validate::Refusal;

/// The code blocks of `docs/multi-raft.md`, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../docs/multi-raft.md")]
pub struct MultiRaftDoc;

/// The code blocks of `README.md`, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoc;

/// The code blocks of `docs/getting-started.md`, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../docs/getting-started.md")]
pub struct GettingStartedDoc;

/// The code blocks of `docs/configuration.md`, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../docs/configuration.md")]
pub struct ConfigurationDoc;

/// The code blocks of `docs/durability.md`, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../docs/durability.md")]
pub struct DurabilityDoc;

/// The code blocks of `docs/implementing-log-store.md`, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../docs/implementing-log-store.md")]
pub struct ImplementingLogStoreDoc;

/// The code blocks of `docs/implementing-state-machine.md`, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../docs/implementing-state-machine.md")]
pub struct ImplementingStateMachineDoc;

/// The code blocks of `docs/implementing-transport.md`, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../docs/implementing-transport.md")]
pub struct ImplementingTransportDoc;

/// The code blocks of `docs/operations.md`, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../docs/operations.md")]
pub struct OperationsDoc;

/// The code blocks of `docs/reads.md`, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../docs/reads.md")]
pub struct ReadsDoc;

/// The code blocks of `docs/sessions.md`, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../docs/sessions.md")]
pub struct SessionsDoc;

/// The code blocks of `docs/testing.md`, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../docs/testing.md")]
pub struct TestingDoc;

/// raft-rs types that appear in this crate's API.
pub mod raft_types {
    pub use raft::eraftpb::{
        ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot,
    };
    pub use raft::SnapshotStatus;
}
