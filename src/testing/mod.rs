//! The public test kit (feature `testing`): tools to test your own implementations.
//!
//! - [`conformance`]: a suite every `LogStore` must pass.
//! - [`sim`]: a deterministic simulator that runs the real Ready loop on a seeded,
//!   faulty cluster, with your state machine.
//! - [`linearizability`]: the checker the simulator uses, usable on any history.
//!
//! See `docs/testing.md`.

pub mod conformance;
pub mod fuzz;
pub mod linearizability;
pub mod sim;
