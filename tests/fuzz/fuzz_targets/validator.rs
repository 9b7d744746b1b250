//! The validator target: a synthetic local state and a peer's messages (layout in
//! `raftnode::testing::fuzz`); every message the validator lets through is stepped
//! into raft-rs and its Ready handled by raftnode's driver. Any panic is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    raftnode::testing::fuzz::check_peer_message(data);
});
