//! [`LogStore`](crate::LogStore) implementations that ship with the crate.

mod engine;
mod memory;
pub(crate) mod snapshot_file;
pub(crate) mod window;

pub use engine::{EngineLogStore, EngineOptions, LogEngine};
pub use memory::MemLogStore;
