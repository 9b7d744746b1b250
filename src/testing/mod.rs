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
