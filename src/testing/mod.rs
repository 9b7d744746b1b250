//! The public test kit (feature `testing`): tools to test your own implementations.
//!
//! - [`conformance`]: a suite every `LogStore` must pass.
//! - [`sim`]: a deterministic simulator that runs the real Ready loop on a seeded,
//!   faulty cluster, with your state machine.
//! - [`linearizability`]: the checker the simulator uses, usable on any history.
//! - [`wire`]: the TCP transport's frame format and handshake, for fuzzers and tests
//!   that speak it (not part of the stable API).
//!
//! See `docs/testing.md`.

pub mod conformance;
pub mod fuzz;
pub mod linearizability;
pub mod sim;
/// The TCP transport's frame format and handshake (not part of the stable API).
#[doc(hidden)]
pub mod wire {
    pub use crate::wire::*;
}

/// A "not a member" notice from `from` to `to` at `term`, claiming `from` applied up to
/// `applied` (docs/security.md, "Notices"): what a peer sends a node it no longer counts
/// as a member, for tests that forge one.
pub fn not_a_member_notice(from: u64, to: u64, term: u64, applied: u64) -> raft::eraftpb::Message {
    crate::notice::not_a_member(from, to, term, applied)
}
