//! Leader election (Raft paper §5.2) and partitions.

mod common;

use common::*;
use raftnode::Role;

/// Proves election safety on a healthy 3-node cluster: exactly one leader emerges and
/// every node agrees on it and its term (§5.2).
#[test]
fn three_nodes_elect_exactly_one_leader() {
    let c = Cluster::new(3);
    let leader = c.wait_leader();
    let term = c.status(leader).term;
    assert_eq!(c.leaders_among(&[1, 2, 3]), vec![leader]);
    for id in 1..=3 {
        let s = c.status(id);
        assert_eq!(s.leader, Some(leader));
        assert_eq!(s.term, term);
        if id != leader {
            assert_eq!(s.role, Role::Follower);
        }
    }
    let m = c.status(leader).metrics;
    assert!(m.elections_won >= 1, "the leader counted its win: {m:?}");
}

/// Proves a 5-node cluster split [1,2] | [3,4,5]: the majority side elects a leader and
/// keeps committing, the minority has none (check_quorum makes an old leader there step
/// down), and after healing every node converges on one leader with no committed entry
/// lost (§5.2, §5.4).
#[test]
fn five_node_partition_majority_elects_minority_does_not_and_heal_converges() {
    let c = Cluster::new(5);
    c.wait_leader();
    for i in 0..20 {
        c.propose_ok(put(&format!("before{i}"), "x"));
    }
    c.network.partition(&[1, 2], &[3, 4, 5]);

    let majority_leader = c.wait_leader_among(&[3, 4, 5]);
    wait_until("minority has no leader", || {
        c.leaders_among(&[1, 2]).is_empty()
    });
    // The majority keeps committing.
    let mut h = c.node(majority_leader).propose(put("during", "y")).unwrap();
    h.wait_timeout(DEADLINE).unwrap();
    // The minority cannot commit.
    for id in [1, 2] {
        let s = c.status(id);
        assert_ne!(s.role, Role::Leader, "node {id} leads without a quorum");
    }

    c.network.heal();
    let leader = c.wait_leader();
    let final_index = c.status(leader).commit;
    c.wait_applied(&[1, 2, 3, 4, 5], final_index);
    let reference = c.map_of(leader);
    assert_eq!(reference.get("during").map(String::as_str), Some("y"));
    for i in 0..20 {
        assert!(
            reference.contains_key(&format!("before{i}")),
            "committed entry before{i} lost"
        );
    }
    for id in 1..=5 {
        assert_eq!(c.map_of(id), reference, "node {id} diverged");
    }
    c.assert_no_double_apply();
}

/// Proves the leader's death leads to a new leader among the survivors, and that no
/// proposal acknowledged before the crash is lost (§5.4 leader completeness).
#[test]
fn leader_killed_new_leader_keeps_every_acknowledged_write() {
    let mut c = Cluster::new(3);
    let old = c.wait_leader();
    let mut acknowledged = Vec::new();
    for i in 0..50 {
        let key = format!("k{i}");
        c.propose_ok(put(&key, "v"));
        acknowledged.push(key);
    }
    c.kill(old);
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let new = c.wait_leader_among(&survivors);
    assert_ne!(new, old);
    assert!(c.status(new).term > 0);
    let map = c.map_of(new);
    for key in &acknowledged {
        assert!(
            map.contains_key(key),
            "acknowledged {key} lost after the leader died"
        );
    }
    // And the new leader commits new writes.
    c.node(new)
        .propose(put("after", "1"))
        .unwrap()
        .wait_timeout(DEADLINE)
        .unwrap();
}

/// Proves a follower that campaigns while the leader is healthy does not disrupt it:
/// with pre-vote and check_quorum, peers that hear from their leader refuse the
/// pre-vote, so neither the leader nor the term changes (thesis §9.6).
#[test]
fn campaign_against_healthy_leader_is_refused() {
    let c = Cluster::new(3);
    let leader = c.wait_leader();
    let term = c.status(leader).term;
    let other = (1..=3).find(|id| *id != leader).unwrap();
    c.node(other).campaign().unwrap();
    wait_until("the pre-vote round lost", || {
        c.status(other).metrics.elections_lost >= 1
    });
    assert_eq!(c.wait_leader(), leader);
    assert_eq!(
        c.status(leader).term,
        term,
        "a refused pre-vote must not bump the term"
    );
}

/// Proves a dead leader stops being named once an election timeout (`election_ticks`)
/// has passed. raft-rs alone keeps naming it until this node's own election timer fires
/// (it clears `leader_id` only on becoming a pre-candidate); here that timer is drawn
/// from 80..100 ticks, four times `election_ticks`, so the hint must go while the
/// survivor is still a plain follower. With the leader and one follower killed, nobody
/// can be elected; `leader()`, `Status::leader` and the `NotLeader` hint all say "no
/// leader known".
#[test]
fn a_dead_leader_is_not_named_once_an_election_timeout_passed() {
    let mut c = Cluster::with_config(3, |config| {
        config.election_tick_range = Some((80, 100));
    });
    let leader = c.wait_leader();
    c.propose_ok(put("k", "v"));
    let survivor = (1..=3).find(|&id| id != leader).expect("a follower");
    let other = (1..=3)
        .find(|&id| id != leader && id != survivor)
        .expect("another");
    wait_until("the survivor knows the leader", || {
        c.status(survivor).leader == Some(leader)
    });
    c.kill(leader);
    c.kill(other);
    let killed = std::time::Instant::now();
    let node = c.node(survivor).clone();
    let mut role = None;
    wait_until("the survivor stops naming the dead leader", || {
        let status = node.status().expect("status");
        role = Some(status.role);
        status.leader.is_none() && node.leader().is_none()
    });
    let after = killed.elapsed();
    assert_eq!(
        role,
        Some(Role::Follower),
        "the hint went only when raft-rs's own election timer fired"
    );
    match node.propose(put("k", "w")).expect("queued").wait() {
        Err(raftnode::ProposeError::NotLeader { leader: None }) => {}
        other => panic!("expected NotLeader without a hint, got {other:?}"),
    }
    // One election timeout is 20 ticks of 10 ms.
    eprintln!("dead leader unnamed after {after:?}");
}

/// Proves `confirmed_leader` names only a leader a quorum answers: the leader from a
/// follower, the new leader (never the dead one) right after the leader is killed, and
/// nobody (a timeout) once the quorum is gone.
#[test]
fn confirmed_leader_names_only_a_leader_a_quorum_answers() {
    let mut c = Cluster::new(3);
    let leader = c.wait_leader();
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    assert_eq!(c.node(follower).confirmed_leader(DEADLINE), Ok(leader));
    c.kill(leader);
    let new = c
        .node(follower)
        .confirmed_leader(DEADLINE)
        .expect("a new leader");
    assert_ne!(new, leader, "named the dead leader");
    let rest: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    assert!(rest.contains(&new));
    let other = rest.iter().copied().find(|&id| id != follower).unwrap();
    c.kill(other);
    assert_eq!(
        c.node(follower)
            .confirmed_leader(std::time::Duration::from_millis(500)),
        Err(raftnode::NodeError::Timeout)
    );
}

/// Proves the election metrics measure the gap without a leader: after the leader is
/// killed, each survivor reports a `last_election_us` above 0 and no longer than the time from the
/// kill to the new leader, its `leaderless_us` grew by it and `leaderless_gaps` by one
/// (the average election duration is their quotient).
#[test]
fn election_metrics_measure_the_gap_without_a_leader() {
    let mut c = Cluster::new(3);
    let old = c.wait_leader();
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    // The first election counts too: wait until every node knew the leader after it.
    wait_until("every node knows the first leader", || {
        survivors.iter().all(|&id| c.status(id).leader == Some(old))
    });
    let before: Vec<(u64, u64)> = survivors
        .iter()
        .map(|&id| {
            let m = c.status(id).metrics;
            (m.leaderless_us, m.leaderless_gaps)
        })
        .collect();
    let killed = std::time::Instant::now();
    c.kill(old);
    let new = c.wait_leader_among(&survivors);
    wait_until("both survivors know the new leader", || {
        survivors.iter().all(|&id| c.status(id).leader == Some(new))
    });
    let bound = killed.elapsed().as_micros() as u64;
    for (&id, (before, gaps)) in survivors.iter().zip(before) {
        let m = c.status(id).metrics;
        assert_eq!(
            m.leaderless_gaps,
            gaps + 1,
            "node {id}: one more election seen through"
        );
        let average = m.average_election_us().expect("elections seen");
        assert_eq!(average, m.leaderless_us / m.leaderless_gaps, "node {id}");
        assert!(
            average > 0 && average <= m.leaderless_us,
            "node {id}: average {average} us"
        );
        assert!(
            m.last_election_us > 0 && m.last_election_us <= bound,
            "node {id}: last election {} us, {bound} us since the kill",
            m.last_election_us
        );
        assert!(
            m.leaderless_us >= before + m.last_election_us,
            "node {id}: leaderless {} us, was {before} us",
            m.leaderless_us
        );
    }
}

/// Proves an election storm lengthens the election timeout and a lasting leader
/// shortens it again (`Config::election_backoff_limit`): the survivor of a cluster that
/// lost two of three voters campaigns alone; every 5 elections (the storm threshold)
/// double its timeout range up to 4×, so its elections then come at least 4 election
/// timeouts apart (800 ms here; 200–400 ms without the backoff). With the others back
/// and a leader lasting 5 election timeouts at a time, the factor falls back to 1.
#[test]
fn election_storm_lengthens_the_election_timeout_and_a_lasting_leader_shortens_it() {
    let mut c = Cluster::new(3);
    c.wait_leader();
    c.propose_ok(put("a", "1"));
    c.kill(2);
    c.kill(3);
    let node = c.node(1).clone();
    let metrics = || node.status().expect("status").metrics;
    wait_until("the backoff reaches 4", || metrics().election_backoff == 4);
    // Elections at the longest backoff: time three of them.
    let first = metrics().elections_started;
    wait_until("one more election", || metrics().elections_started > first);
    let started = std::time::Instant::now();
    let from = metrics().elections_started;
    wait_until("three more elections", || {
        metrics().elections_started >= from + 3
    });
    let per_election = started.elapsed() / 3;
    assert!(
        per_election >= std::time::Duration::from_millis(700),
        "elections {per_election:?} apart with a 4x backoff (800 ms at the least)"
    );
    c.start_node(2, &[1, 2, 3]);
    c.start_node(3, &[1, 2, 3]);
    c.wait_leader();
    c.propose_ok(put("b", "2"));
    for id in 1..=3 {
        wait_until("the backoff is back to 1", || {
            c.status(id).metrics.election_backoff == 1
        });
    }
}
