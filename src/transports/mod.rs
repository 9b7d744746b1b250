//! [`crate::Transport`] implementations.
//!
//! - [`ChannelNetwork`] / [`ChannelTransport`]: every node in one process, messages on
//!   crossbeam channels, with fault injection (partitions, one-way cuts, isolation, drop
//!   rates, delay) for tests, examples and benchmarks.

mod channel;

pub use channel::{ChannelNetwork, ChannelTransport, NetworkStats};
