//! Each check refuses what it names and lets the honest message through; two oracle
//! tests hold the checks against raft-rs 0.7 itself (a `RawNode` on `MemStorage`).

use std::panic::{catch_unwind, AssertUnwindSafe};

use raft::eraftpb::{Entry, HardState, Snapshot};
use raft::storage::MemStorage;

use super::*;

/// Node 1 follows node 2 in term 5; its log ends at index 10.
fn follower() -> Local {
    Local {
        id: 1,
        term: 5,
        leading: false,
        leader: 2,
        last_index: 10,
    }
}

/// Node 1 leads term 5; its log ends at index 10.
fn leader() -> Local {
    Local {
        leading: true,
        leader: 1,
        ..follower()
    }
}

fn msg(t: MessageType, from: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(t);
    m.from = from;
    m.to = 1;
    m.term = 5;
    m
}

fn entry(index: u64, term: u64) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e
}

/// An honest append from the leader: after (8, 4), entries 9 and 10 of term 5.
fn append() -> Message {
    let mut m = msg(MessageType::MsgAppend, 2);
    m.index = 8;
    m.log_term = 4;
    m.commit = 8;
    m.set_entries(vec![entry(9, 5), entry(10, 5)].into());
    m
}

fn conf_state(voters: &[u64], learners: &[u64]) -> ConfState {
    let mut cs = ConfState::default();
    cs.voters = voters.to_vec();
    cs.learners = learners.to_vec();
    cs
}

fn snapshot_msg(cs: ConfState) -> Message {
    let mut m = msg(MessageType::MsgSnapshot, 2);
    let meta = m.mut_snapshot().mut_metadata();
    meta.index = 20;
    meta.term = 4;
    meta.set_conf_state(cs);
    m.mut_snapshot().data = framed_data();
    m
}

/// Snapshot data as raftnode frames it: stored, no member table.
fn framed_data() -> bytes::Bytes {
    crate::snapshot_codec::encode(bytes::Bytes::from_static(b"k\tv\n"))
}

fn read_ctx(node: u64) -> Entry {
    let mut e = Entry::default();
    let mut data = node.to_le_bytes().to_vec();
    data.extend_from_slice(&[7; 16]);
    e.data = data.into();
    e
}

fn refused(m: &Message, local: &Local) -> Option<Refusal> {
    check(m, local).err()
}

#[test]
fn all_lists_every_reason_in_order_with_distinct_words() {
    for (i, r) in Refusal::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i, "{r:?}");
    }
    let words: std::collections::BTreeSet<_> = Refusal::ALL.iter().map(|r| r.to_string()).collect();
    assert_eq!(words.len(), Refusal::ALL.len());
}

#[test]
fn honest_messages_pass() {
    let f = follower();
    let l = leader();
    assert_eq!(refused(&append(), &f), None);
    assert_eq!(
        refused(&snapshot_msg(conf_state(&[1, 2, 3], &[4])), &f),
        None
    );
    let mut hb = msg(MessageType::MsgHeartbeat, 2);
    hb.commit = 10;
    assert_eq!(refused(&hb, &f), None);
    let mut resp = msg(MessageType::MsgAppendResponse, 2);
    resp.index = 10;
    resp.commit = 9;
    assert_eq!(refused(&resp, &l), None);
    let mut vote = msg(MessageType::MsgRequestVote, 3);
    vote.term = 6;
    (vote.index, vote.log_term, vote.commit) = (12, 5, 9);
    assert_eq!(refused(&vote, &f), None);
    let mut read = msg(MessageType::MsgReadIndex, 2);
    read.term = 0;
    read.set_entries(vec![read_ctx(2)].into());
    assert_eq!(refused(&read, &l), None);
    let mut answer = msg(MessageType::MsgReadIndexResp, 2);
    answer.index = 9;
    answer.set_entries(vec![read_ctx(1)].into());
    assert_eq!(refused(&answer, &f), None);
    assert_eq!(refused(&msg(MessageType::MsgTimeoutNow, 2), &f), None);
    assert_eq!(refused(&msg(MessageType::MsgTransferLeader, 3), &l), None);
    // From an older term, raft-rs answers without looking: only the shape is checked.
    let mut stale = msg(MessageType::MsgHeartbeat, 3);
    (stale.term, stale.commit) = (4, 99);
    assert_eq!(refused(&stale, &f), None);
}

#[test]
fn misaddressed_self_sent_and_local_types_are_refused() {
    let f = follower();
    let mut m = msg(MessageType::MsgHeartbeat, 2);
    m.to = 3;
    assert_eq!(refused(&m, &f), Some(Refusal::Misaddressed));
    for from in [0, 1] {
        assert_eq!(
            refused(&msg(MessageType::MsgHeartbeat, from), &f),
            Some(Refusal::BadSender)
        );
    }
    for t in [
        MessageType::MsgHup,
        MessageType::MsgBeat,
        MessageType::MsgUnreachable,
        MessageType::MsgSnapStatus,
        MessageType::MsgCheckQuorum,
        MessageType::MsgPropose,
    ] {
        assert_eq!(refused(&msg(t, 2), &f), Some(Refusal::LocalType), "{t:?}");
    }
}

#[test]
fn out_of_range_and_bad_terms_are_refused() {
    let f = follower();
    let mut m = append();
    m.commit = MAX_INDEX + 1;
    assert_eq!(refused(&m, &f), Some(Refusal::OutOfRange));
    let mut m = append();
    m.index = MAX_INDEX - 1;
    m.set_entries(vec![entry(MAX_INDEX, 5), entry(MAX_INDEX + 1, 5)].into());
    assert_eq!(refused(&m, &f), Some(Refusal::OutOfRange));
    let mut m = append();
    m.term = 0;
    assert_eq!(refused(&m, &f), Some(Refusal::BadTerm));
    let mut read = msg(MessageType::MsgReadIndex, 2);
    read.set_entries(vec![read_ctx(2)].into());
    assert_eq!(refused(&read, &f), Some(Refusal::BadTerm));
}

#[test]
fn appends_anchored_where_no_log_can_be_are_refused() {
    let f = follower();
    // The frame: a huge term, an index far past the log, log_term 0, commit
    // equal to the index, no entries.
    let mut m = msg(MessageType::MsgAppend, 2);
    (m.term, m.index, m.log_term, m.commit) = (1 << 40, 1 << 30, 0, 1 << 30);
    assert_eq!(refused(&m, &f), Some(Refusal::AppendAnchor));
    let mut m = append();
    m.log_term = 6;
    assert_eq!(refused(&m, &f), Some(Refusal::AppendAnchor));
    let mut m = append();
    (m.index, m.log_term) = (0, 4);
    assert_eq!(refused(&m, &f), Some(Refusal::AppendAnchor));
}

#[test]
fn appends_with_gaps_or_impossible_entry_terms_are_refused() {
    let f = follower();
    let mut m = append();
    m.mut_entries()[1].index = 11;
    assert_eq!(refused(&m, &f), Some(Refusal::AppendGap));
    for (first, second) in [(6, 6), (3, 5), (5, 4), (0, 5)] {
        let mut m = append();
        m.mut_entries()[0].term = first;
        m.mut_entries()[1].term = second;
        assert_eq!(
            refused(&m, &f),
            Some(Refusal::EntryTerm),
            "{first} {second}"
        );
    }
}

#[test]
fn appends_with_undecodable_conf_changes_are_refused() {
    let f = follower();
    for t in [EntryType::EntryConfChange, EntryType::EntryConfChangeV2] {
        let mut m = append();
        m.mut_entries()[0].set_entry_type(t);
        assert_eq!(refused(&m, &f), None, "empty {t:?} decodes");
        m.mut_entries()[0].data = vec![0xff, 0xff, 0xff].into();
        assert_eq!(refused(&m, &f), Some(Refusal::EntryConfChange), "{t:?}");
    }
}

#[test]
fn leader_only_messages_from_another_node_are_refused() {
    let f = follower();
    for m in [
        append(),
        msg(MessageType::MsgHeartbeat, 3),
        snapshot_msg(conf_state(&[1, 2, 3], &[])),
    ] {
        let mut m = m;
        m.from = 3;
        assert_eq!(refused(&m, &f), Some(Refusal::NotFromLeader), "{m:?}");
        // Sent to the leader of the term itself.
        assert_eq!(refused(&m, &leader()), Some(Refusal::NotFromLeader));
        // A new term may have a new leader.
        m.term = 6;
        assert_eq!(refused(&m, &f), None);
        // A candidate knows no leader yet.
        m.term = 5;
        assert_eq!(refused(&m, &Local { leader: 0, ..f }), None);
    }
    assert_eq!(
        refused(&msg(MessageType::MsgTimeoutNow, 3), &f),
        Some(Refusal::StaleLeader)
    );
    let mut m = msg(MessageType::MsgTimeoutNow, 2);
    m.term = 6;
    assert_eq!(refused(&m, &f), Some(Refusal::StaleLeader));
    let mut m = msg(MessageType::MsgReadIndexResp, 3);
    m.set_entries(vec![read_ctx(1)].into());
    assert_eq!(refused(&m, &f), Some(Refusal::StaleLeader));
}

#[test]
fn heartbeat_commit_past_the_log_is_refused() {
    let mut m = msg(MessageType::MsgHeartbeat, 2);
    m.commit = 11;
    assert_eq!(refused(&m, &follower()), Some(Refusal::CommitPastLog));
    m.term = 6; // a new leader's heartbeat is applied just the same
    assert_eq!(refused(&m, &follower()), Some(Refusal::CommitPastLog));
}

#[test]
fn responses_past_the_leaders_log_are_refused() {
    let l = leader();
    for t in [
        MessageType::MsgAppendResponse,
        MessageType::MsgHeartbeatResponse,
    ] {
        for field in 0..3 {
            let mut m = msg(t, 2);
            *[&mut m.index, &mut m.commit, &mut m.reject_hint][field] = 11;
            assert_eq!(
                refused(&m, &l),
                Some(Refusal::PastLeaderLog),
                "{t:?} {field}"
            );
            // A follower drops it, a higher term makes this node follow: no harm.
            assert_eq!(refused(&m, &follower()), None);
        }
    }
    let mut m = msg(MessageType::MsgAppendResponse, 2);
    (m.reject, m.request_snapshot) = (true, 5);
    assert_eq!(refused(&m, &l), Some(Refusal::SnapshotRequest));
}

#[test]
fn vote_requests_whose_last_term_is_above_the_campaign_term_pass() {
    // Entries of term 7 persisted, the HardState with term 7 lost in a crash: the node
    // campaigns at term 6 with a last term of 7 (simulator seed 2034355).
    let f = follower();
    for t in [MessageType::MsgRequestVote, MessageType::MsgRequestPreVote] {
        let mut m = msg(t, 3);
        m.term = 6;
        (m.index, m.log_term, m.commit) = (12, 7, 9);
        assert_eq!(refused(&m, &f), None);
    }
}

#[test]
fn vote_requests_from_impossible_log_positions_are_refused() {
    let f = follower();
    for (index, log_term, commit) in [(12, 0, 9), (0, 3, 0), (12, 5, 13)] {
        for t in [MessageType::MsgRequestVote, MessageType::MsgRequestPreVote] {
            let mut m = msg(t, 3);
            m.term = 6;
            (m.index, m.log_term, m.commit) = (index, log_term, commit);
            assert_eq!(
                refused(&m, &f),
                Some(Refusal::VoteLog),
                "{index} {log_term}"
            );
        }
    }
}

#[test]
fn read_index_messages_need_one_context_of_the_asker() {
    let l = leader();
    let mut m = msg(MessageType::MsgReadIndex, 2);
    m.term = 0;
    assert_eq!(refused(&m, &l), Some(Refusal::ReadContext), "no entry");
    m.set_entries(vec![read_ctx(3)].into());
    assert_eq!(
        refused(&m, &l),
        Some(Refusal::ReadContext),
        "someone else's"
    );
    m.set_entries(vec![read_ctx(2), read_ctx(2)].into());
    assert_eq!(refused(&m, &l), Some(Refusal::ReadContext), "two");
    let mut m = msg(MessageType::MsgReadIndexResp, 2);
    m.set_entries(vec![read_ctx(2)].into());
    assert_eq!(refused(&m, &follower()), Some(Refusal::ReadContext));
}

#[test]
fn leader_requests_to_a_non_leader_are_refused() {
    let m = msg(MessageType::MsgTransferLeader, 3);
    assert_eq!(refused(&m, &follower()), Some(Refusal::NotLeader));
    let mut m = m;
    m.term = 6;
    assert_eq!(refused(&m, &leader()), Some(Refusal::NotLeader));
    let mut read = msg(MessageType::MsgReadIndex, 2);
    read.term = 0;
    read.set_entries(vec![read_ctx(2)].into());
    assert_eq!(refused(&read, &follower()), Some(Refusal::NotLeader));
}

#[test]
fn impossible_snapshot_metadata_is_refused() {
    let f = follower();
    for (index, term) in [(0, 4), (20, 0), (20, 6)] {
        let mut m = snapshot_msg(conf_state(&[1, 2, 3], &[]));
        let meta = m.mut_snapshot().mut_metadata();
        (meta.index, meta.term) = (index, term);
        assert_eq!(
            refused(&m, &f),
            Some(Refusal::SnapshotMetadata),
            "{index} {term}"
        );
    }
}

#[test]
fn snapshot_data_outside_the_framing_is_refused() {
    let f = follower();
    let garbage: [&[u8]; 4] = [
        b"",
        b"garbage, not a raftnode snapshot",
        b"RNS\x07data",
        b"RNS\x80\xff\xff",
    ];
    // Without a checksum (every raftnode peer writes one) or with a wrong one.
    for data in garbage {
        let mut m = snapshot_msg(conf_state(&[1, 2, 3], &[]));
        m.mut_snapshot().data = data.to_vec().into();
        assert_eq!(refused(&m, &f), Some(Refusal::SnapshotChecksum), "{data:?}");
    }
    let mut damaged = framed_data().to_vec();
    damaged[5] ^= 1;
    let mut m = snapshot_msg(conf_state(&[1, 2, 3], &[]));
    m.mut_snapshot().data = damaged.into();
    assert_eq!(refused(&m, &f), Some(Refusal::SnapshotChecksum));
    // A checksum that matches bytes that are not raftnode's framing.
    for data in garbage.into_iter().skip(1) {
        let mut sealed = data.to_vec();
        if sealed.len() >= 4 {
            sealed[3] |= 0x40;
        }
        let crc = crc32fast::hash(&sealed);
        sealed.extend_from_slice(&crc.to_le_bytes());
        let mut m = snapshot_msg(conf_state(&[1, 2, 3], &[]));
        m.mut_snapshot().data = sealed.into();
        let expected = if data.starts_with(b"RNS") {
            Refusal::SnapshotData
        } else {
            Refusal::SnapshotChecksum
        };
        assert_eq!(refused(&m, &f), Some(expected), "{data:?}");
    }
}

#[test]
fn malformed_conf_states_are_refused() {
    let f = follower();
    let joint = |voters: &[u64], outgoing: &[u64], learners: &[u64], next: &[u64], auto| {
        let mut cs = conf_state(voters, learners);
        cs.voters_outgoing = outgoing.to_vec();
        cs.learners_next = next.to_vec();
        cs.auto_leave = auto;
        cs
    };
    let bad = [
        conf_state(&[1, 2, 3], &[3]),                 // a voter also a learner
        joint(&[], &[1, 2, 3], &[], &[], false),      // joint, removing every voter
        conf_state(&[], &[1]),                        // no voters
        conf_state(&[1, 1, 2], &[]),                  // twice
        conf_state(&[0, 1], &[]),                     // id 0
        joint(&[1, 2], &[1, 2, 3], &[3], &[], false), // outgoing voter also a learner
        joint(&[1, 2], &[1, 2, 3], &[], &[4], false), // learners_next not outgoing
        joint(&[1, 2, 3], &[1, 2, 3], &[], &[3], false), // learners_next still a voter
        joint(&[1, 2], &[], &[], &[3], false),        // learners_next, not joint
        joint(&[1, 2], &[], &[], &[], true),          // auto_leave, not joint
    ];
    for cs in bad {
        assert_eq!(
            refused(&snapshot_msg(cs.clone()), &f),
            Some(Refusal::ConfState),
            "{cs:?}"
        );
    }
    let good = [
        joint(&[1, 2], &[1, 2, 3], &[], &[3], true),
        joint(&[1, 2, 4], &[1, 2, 3], &[5], &[], false),
    ];
    for cs in good {
        assert_eq!(refused(&snapshot_msg(cs.clone()), &f), None, "{cs:?}");
    }
}

#[test]
fn warnings_are_limited_to_one_per_reason_per_second() {
    let refusals = Refusals::default();
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    assert_eq!(refusals.record(Refusal::AppendGap, t0), Some(0));
    assert_eq!(refusals.record(Refusal::AppendGap, t0 + ms(10)), None);
    assert_eq!(refusals.record(Refusal::AppendGap, t0 + ms(999)), None);
    // Another reason has its own window.
    assert_eq!(refusals.record(Refusal::ConfState, t0 + ms(20)), Some(0));
    assert_eq!(refusals.record(Refusal::AppendGap, t0 + ms(1000)), Some(2));
    let counts = refusals.snapshot();
    assert_eq!(counts.get(&Refusal::AppendGap), Some(&4));
    assert_eq!(counts.get(&Refusal::ConfState), Some(&1));
    assert_eq!(counts.len(), 2);
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// Node 1 of {1, 2, 3}: entries 1..=5 of term 1 and 6..=8 of term 2, commit 6, term 2,
/// following node 2.
fn raw_follower() -> RawNode<MemStorage> {
    let storage = MemStorage::new_with_conf_state(conf_state(&[1, 2, 3], &[]));
    {
        let mut core = storage.wl();
        let entries: Vec<Entry> = (1..=8)
            .map(|i| entry(i, if i <= 5 { 1 } else { 2 }))
            .collect();
        core.append(&entries).expect("append");
        let mut hs = HardState::default();
        (hs.term, hs.commit) = (2, 6);
        core.set_hardstate(hs);
    }
    let config = raft::Config {
        id: 1,
        election_tick: 10,
        heartbeat_tick: 1,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    let mut raw = RawNode::new(&config, storage, &logger()).expect("raw node");
    raw.raft.become_follower(2, 2);
    raw
}

/// The same log, node 1 leading term 3.
fn raw_leader() -> RawNode<MemStorage> {
    let mut raw = raw_follower();
    raw.raft.become_candidate();
    raw.raft.become_leader();
    raw
}

/// Proves the ConfState check is exactly raft-rs's: over every ConfState on ids 1..=3
/// that names node 1, raft-rs restores what the check lets through and panics on every
/// one the check refuses.
#[test]
fn conf_state_check_matches_raft_restore_exhaustively() {
    let (mut accepted, mut refused_count) = (0, 0);
    for bits in 0u32..(1 << 13) {
        let pick = |list: u32| -> Vec<u64> {
            (1..=3u64)
                .filter(|id| bits & (1 << (list * 3 + (*id as u32 - 1))) != 0)
                .collect()
        };
        let mut cs = conf_state(&pick(0), &pick(1));
        cs.voters_outgoing = pick(2);
        cs.learners_next = pick(3);
        cs.auto_leave = bits & (1 << 12) != 0;
        let named =
            cs.voters.contains(&1) || cs.learners.contains(&1) || cs.voters_outgoing.contains(&1);
        if !named {
            continue;
        }
        let mut m = msg(MessageType::MsgSnapshot, 2);
        (m.term, m.to) = (2, 1);
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 20;
        snapshot.mut_metadata().term = 2;
        snapshot.mut_metadata().set_conf_state(cs.clone());
        snapshot.data = framed_data();
        m.set_snapshot(snapshot);
        let mut raw = raw_follower();
        let ours = check_message(&m, 1, &raw);
        let raft_ok = catch_unwind(AssertUnwindSafe(|| raw.step(m))).is_ok();
        assert_eq!(
            ours.is_ok(),
            raft_ok,
            "{cs:?}: check {ours:?}, raft ok {raft_ok}"
        );
        if raft_ok {
            assert_eq!(raw.raft.raft_log.committed, 20, "{cs:?} restored");
            accepted += 1;
        } else {
            refused_count += 1;
        }
    }
    assert!(
        accepted > 50 && refused_count > 1000,
        "{accepted} {refused_count}"
    );
}

/// A seeded stream of plausible and implausible messages: every one the checks let
/// through steps into a raft-rs follower or leader without a panic, and everything the
/// node sends in answer passes the stateless checks at its receiver.
#[test]
fn accepted_messages_never_panic_raft() {
    let mut seed = 0x5eed_u64;
    let mut next = move |n: u64| {
        // splitmix64
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    };
    let types = [
        MessageType::MsgAppend,
        MessageType::MsgAppendResponse,
        MessageType::MsgRequestVote,
        MessageType::MsgRequestVoteResponse,
        MessageType::MsgSnapshot,
        MessageType::MsgHeartbeat,
        MessageType::MsgHeartbeatResponse,
        MessageType::MsgTransferLeader,
        MessageType::MsgTimeoutNow,
        MessageType::MsgReadIndex,
        MessageType::MsgReadIndexResp,
        MessageType::MsgRequestPreVote,
        MessageType::MsgRequestPreVoteResponse,
    ];
    let (mut stepped, mut refused_count) = (0, 0);
    for round in 0..6000 {
        let mut raw = if round % 2 == 0 {
            raw_follower()
        } else {
            raw_leader()
        };
        for _ in 0..4 {
            let small = |next: &mut dyn FnMut(u64) -> u64| match next(8) {
                0 => 1 << 40,
                _ => next(14),
            };
            let mut m = msg(types[next(types.len() as u64) as usize], 2 + next(2));
            m.term = [0, 1, 2, 3, 4, 1 << 40][next(6) as usize];
            m.index = small(&mut next);
            m.log_term = next(5);
            m.commit = small(&mut next);
            m.commit_term = next(4);
            m.reject = next(2) == 0;
            m.reject_hint = small(&mut next);
            for i in 0..next(4) {
                let mut e = entry(m.index + 1 + i, next(5));
                if next(4) == 0 {
                    e.index = next(14);
                }
                if next(3) == 0 {
                    e = read_ctx(1 + next(3));
                }
                m.mut_entries().push(e);
            }
            if m.get_msg_type() == MessageType::MsgSnapshot {
                let (index, term) = (small(&mut next), next(5));
                let mut ids = |n: u64| (1..=3).filter(|_| next(n) == 0).collect::<Vec<u64>>();
                let mut cs = conf_state(&ids(2), &ids(4));
                cs.voters_outgoing = ids(4);
                cs.learners_next = ids(6);
                let meta = m.mut_snapshot().mut_metadata();
                (meta.index, meta.term) = (index, term);
                meta.set_conf_state(cs);
                if next(4) != 0 {
                    m.mut_snapshot().data = framed_data();
                }
            }
            if check_message(&m, 1, &raw).is_err() {
                refused_count += 1;
                continue;
            }
            stepped += 1;
            let shown = format!("{m:?}");
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let _ = raw.step(m);
            }));
            assert!(outcome.is_ok(), "round {round}: raft panicked on {shown}");
            for out in raw.raft.msgs.drain(..) {
                let shape = check_shape(&out, out.to);
                assert!(
                    shape.is_ok(),
                    "after {shown}, node 1 sent {out:?}: {shape:?}"
                );
            }
        }
    }
    assert!(
        stepped > 2000 && refused_count > 2000,
        "{stepped} {refused_count}"
    );
}

/// Every index and term a message carries is range-checked, each on its own: at
/// `MAX_INDEX` it passes, one above (and at `u64::MAX`) it is refused.
#[test]
fn every_index_and_term_is_range_checked() {
    type Set = fn(&mut Message, u64);
    let fields: [(&str, Set); 11] = [
        ("term", |m, v| m.term = v),
        ("log_term", |m, v| m.log_term = v),
        ("index", |m, v| m.index = v),
        ("commit", |m, v| m.commit = v),
        ("commit_term", |m, v| m.commit_term = v),
        ("reject_hint", |m, v| m.reject_hint = v),
        ("request_snapshot", |m, v| m.request_snapshot = v),
        ("snapshot index", |m, v| {
            m.mut_snapshot().mut_metadata().index = v
        }),
        ("snapshot term", |m, v| {
            m.mut_snapshot().mut_metadata().term = v
        }),
        ("entry index", |m, v| m.mut_entries()[0].index = v),
        ("entry term", |m, v| m.mut_entries()[0].term = v),
    ];
    for (name, set) in fields {
        for (value, ok) in [(MAX_INDEX, true), (MAX_INDEX + 1, false), (u64::MAX, false)] {
            let mut m = Message::default();
            m.set_entries(vec![entry(1, 1)].into());
            m.index = 0;
            set(&mut m, value);
            if name == "index" {
                // `index + entries` must stay in range too.
                m.clear_entries();
            }
            let result = check_ranges(&m);
            assert_eq!(result.is_ok(), ok, "{name} = {value}: {result:?}");
        }
    }
}
