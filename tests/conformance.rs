//! The `LogStore` conformance suite passes against `MemLogStore` and the simulator's
//! `SimStore` (`EngineLogStore` runs it in `tests/durability.rs`).
#![cfg(feature = "testing")]

use raftnode::testing::conformance;
use raftnode::MemLogStore;

// Proves MemLogStore meets every LogStore obligation the suite checks; a MemLogStore is
// not durable, so "reopening" it keeps the same handle (what a restarted node in a test
// sees when the test kept a clone).
#[test]
fn mem_log_store_passes_the_conformance_suite() {
    conformance::run_all(MemLogStore::new, |store| store);
}

// Proves a restart through a clone (what tests do to restart a node on the same store)
// reads the same as the original handle.
#[test]
fn mem_log_store_restart_through_a_clone() {
    let original = MemLogStore::new();
    let mut kept = None;
    conformance::check_restart_equivalence(original, |store: MemLogStore| {
        let clone = store.clone();
        kept = Some(store);
        clone
    });
    assert!(kept.is_some(), "reopen was called");
}

// Proves the simulator's disk meets the same obligations: its log is the shipped stores'
// `LogWindow`, so the simulator checks raftnode against the storage semantics users get.
#[test]
fn sim_store_passes_the_conformance_suite() {
    conformance::run_all(raftnode::testing::sim::SimStore::new, |store| store);
}
