//! [`LogStore`](crate::LogStore) implementations that ship with the crate.

mod memory;

pub use memory::MemLogStore;
