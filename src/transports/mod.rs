//! [`crate::Transport`] implementations.
//!
//! - [`ChannelNetwork`] / [`ChannelTransport`]: every node in one process, messages on
//!   crossbeam channels, with fault injection (partitions, one-way cuts, isolation, drop
//!   rates, delay) for tests, examples and benchmarks.
//! - [`TcpTransport`]: one process per node over TCP, refusing strangers (handshake with
//!   cluster and node ids) and checking bytes before protobuf parses them; with the
//!   `tls` feature, optionally over mutual TLS ([`tls`]) with certificates bound to node
//!   ids.

mod channel;
mod tcp;
#[cfg(feature = "tls")]
pub mod tls;

pub use channel::{ChannelNetwork, ChannelTransport, NetworkStats};
pub use tcp::{RefusalReason, TcpConfig, TcpHandle, TcpStats, TcpTransport};
