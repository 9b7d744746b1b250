//! The public test kit (feature `testing`): tools to test your own implementations.

pub mod conformance;
