//! Unit tests of the session table: deduplication, expiry, snapshots, durable hooks.

use super::*;

/// (index, (session, last seq) upserted, sessions expired) of one table update.
type Update = (u64, Option<(u64, u64)>, Vec<u64>);

/// A counter whose response is the running total; counts how often each command ran.
#[derive(Default)]
struct Counter {
    total: u64,
    applied: u64,
    runs: u64,
    /// Set to make the machine look durable: it resumes at `applied` after a restart.
    keeps: Option<Vec<SessionRecord<u64>>>,
    updates: Vec<Update>,
}

impl StateMachine for Counter {
    type Response = u64;
    fn apply(&mut self, index: u64, command: &[u8]) -> u64 {
        self.total += u64::from(command[0]);
        self.applied = index;
        self.runs += 1;
        self.total
    }
    fn apply_noop(&mut self, index: u64) {
        self.applied = index;
    }
    fn applied_index(&self) -> u64 {
        self.applied
    }
    fn snapshot(&self) -> Result<Bytes, StateMachineError> {
        Ok(Bytes::copy_from_slice(&self.total.to_le_bytes()))
    }
    fn restore(&mut self, index: u64, data: &[u8]) -> Result<(), StateMachineError> {
        self.total = u64::from_le_bytes(data.try_into().map_err(StateMachineError::new)?);
        self.applied = index;
        Ok(())
    }
}

impl SessionMachine for Counter {
    fn encode_response(r: &u64) -> Vec<u8> {
        r.to_le_bytes().to_vec()
    }
    fn decode_response(b: &[u8]) -> Result<u64, StateMachineError> {
        Ok(u64::from_le_bytes(
            b.try_into().map_err(StateMachineError::new)?,
        ))
    }
    fn apply_in_session(&mut self, index: u64, command: &[u8], u: &SessionUpdate<'_, u64>) -> u64 {
        self.updates.push((
            index,
            u.upsert.as_ref().map(|r| (r.id, r.last_seq)),
            u.expired.to_vec(),
        ));
        self.apply(index, command)
    }
    fn apply_noop_in_session(&mut self, index: u64, u: &SessionUpdate<'_, u64>) {
        self.updates.push((
            index,
            u.upsert.as_ref().map(|r| (r.id, r.last_seq)),
            u.expired.to_vec(),
        ));
        self.apply_noop(index)
    }
    fn load_sessions(&self) -> Result<Option<Vec<SessionRecord<u64>>>, StateMachineError> {
        Ok(self.keeps.clone())
    }
}

/// Applies `commands` from index `from` on, returning the replies.
fn run(s: &mut Sessions<Counter>, from: u64, commands: &[Bytes]) -> Vec<SessionReply<u64>> {
    commands
        .iter()
        .enumerate()
        .map(|(i, c)| s.apply(from + i as u64, c))
        .collect()
}

#[test]
fn a_repeated_sequence_number_is_answered_from_the_table_not_applied() {
    let mut s = Sessions::new(Counter::default()).unwrap();
    assert_eq!(
        s.apply(1, &Sessions::<Counter>::register_command()),
        SessionReply::Registered(1)
    );
    let mut session = Session::resume(1, 1);
    let first = session.command(&[5]);
    let second = session.command(&[7]);
    let replies = run(
        &mut s,
        2,
        &[
            first.bytes.clone(),
            first.bytes.clone(),
            second.bytes.clone(),
            second.bytes,
        ],
    );
    assert_eq!(
        replies,
        vec![
            SessionReply::Applied(5),
            SessionReply::Repeated(5),
            SessionReply::Applied(12),
            SessionReply::Repeated(12),
        ]
    );
    assert_eq!(s.inner().runs, 2);
    assert_eq!(s.applied_index(), 5);
    // The session has moved on: the first command's response is gone.
    assert_eq!(
        s.apply(6, &first.bytes),
        SessionReply::Rejected(SessionRejection::Stale {
            id: 1,
            seq: 1,
            last: 2
        })
    );
    assert_eq!(s.inner().runs, 2);
}

#[test]
fn unknown_sessions_and_foreign_bytes_are_refused_without_applying() {
    let mut s = Sessions::new(Counter::default()).unwrap();
    let mut ghost = Session::resume(99, 1);
    assert_eq!(
        s.apply(1, ghost.command(&[1]).bytes()),
        SessionReply::Rejected(SessionRejection::Expired { id: 99 })
    );
    assert_eq!(
        s.apply(2, b"raw"),
        SessionReply::Rejected(SessionRejection::Malformed)
    );
    assert_eq!(
        s.apply(3, &[TAG_COMMAND, 1, 2]),
        SessionReply::Rejected(SessionRejection::Malformed)
    );
    assert_eq!(s.inner().runs, 0);
    assert_eq!(s.applied_index(), 3);
    assert_eq!(
        s.apply(4, &Sessions::<Counter>::plain(&[3])),
        SessionReply::Applied(3)
    );
    assert_eq!(
        s.apply(5, &Sessions::<Counter>::plain(&[3])),
        SessionReply::Applied(6)
    );
}

#[test]
fn sessions_expire_by_log_position_only() {
    let limits = SessionLimits {
        max_sessions: 2,
        idle_entries: 10,
    };
    let mut s = Sessions::with_limits(Counter::default(), limits).unwrap();
    let reg = Sessions::<Counter>::register_command();
    assert_eq!(
        run(&mut s, 1, &[reg.clone(), reg.clone()]),
        vec![SessionReply::Registered(1), SessionReply::Registered(2)]
    );
    // Session 1 is used again at index 3, so session 2 is the least recently used.
    let mut one = Session::resume(1, 1);
    assert_eq!(
        s.apply(3, one.command(&[1]).bytes()),
        SessionReply::Applied(1)
    );
    assert_eq!(s.apply(4, &reg), SessionReply::Registered(4));
    assert!(
        s.session(2).is_none(),
        "the least recently used session makes room"
    );
    assert_eq!(s.inner().updates.last().unwrap().2, vec![2]);
    // Idle for more than 10 entries: session 1 (last used at 3) expires at 14, session 4
    // (registered at 4) at 15.
    for i in 5..14 {
        s.apply_noop(i);
    }
    assert_eq!(s.len(), 2);
    s.apply_noop(14);
    assert!(s.session(1).is_none() && s.session(4).is_some());
    assert_eq!(
        s.apply(15, one.command(&[1]).bytes()),
        SessionReply::Rejected(SessionRejection::Expired { id: 1 })
    );
    assert!(s.is_empty(), "session 4 expired at 15 too");
}

#[test]
fn the_table_travels_in_snapshots() {
    let mut s = Sessions::new(Counter::default()).unwrap();
    s.apply(1, &Sessions::<Counter>::register_command());
    let mut session = Session::resume(1, 1);
    let cmd = session.command(&[9]);
    assert_eq!(s.apply(2, cmd.bytes()), SessionReply::Applied(9));
    let snap = s.snapshot().unwrap();

    let mut other = Sessions::new(Counter::default()).unwrap();
    other.check_snapshot(2, &snap).unwrap();
    other.restore(2, &snap).unwrap();
    assert_eq!(other.inner().total, 9);
    assert_eq!(other.snapshot().unwrap()[..], snap[..]);
    assert_eq!(other.apply(3, cmd.bytes()), SessionReply::Repeated(9));
    assert_eq!(
        other.inner().runs,
        0,
        "the restored replica did not apply it again"
    );
}

#[test]
fn corrupt_snapshots_are_refused() {
    let mut s = Sessions::new(Counter::default()).unwrap();
    s.apply(1, &Sessions::<Counter>::register_command());
    s.apply(2, Session::resume(1, 1).command(&[1]).bytes());
    let snap = s.snapshot().unwrap();
    let fresh = Sessions::new(Counter::default()).unwrap();
    for cut in [0, 3, 11, 20, 40] {
        assert!(
            fresh.check_snapshot(2, &snap[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    let mut bad = snap.to_vec();
    bad[0] = b'X';
    assert!(fresh.check_snapshot(2, &bad).is_err());
    let mut huge = snap.to_vec();
    huge[4..12].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(fresh.check_snapshot(2, &huge).is_err());
    let mut flag = snap.to_vec();
    flag[12 + 24] = 7;
    assert!(fresh.check_snapshot(2, &flag).is_err());
}

#[test]
fn a_machine_that_resumes_without_a_table_is_refused() {
    let durable_without_table = Counter {
        applied: 5,
        ..Counter::default()
    };
    let err = Sessions::new(durable_without_table).unwrap_err();
    assert!(err.to_string().contains("keeps no session table"), "{err}");
    let durable = Counter {
        applied: 5,
        keeps: Some(vec![SessionRecord {
            id: 3,
            last_seq: 1,
            response: Some(4),
            last_index: 5,
        }]),
        ..Counter::default()
    };
    let mut s = Sessions::new(durable).unwrap();
    assert_eq!(
        s.apply(6, Session::resume(3, 1).command(&[1]).bytes()),
        SessionReply::Repeated(4)
    );
    assert!(Sessions::with_limits(
        Counter::default(),
        SessionLimits {
            max_sessions: 0,
            idle_entries: 1
        }
    )
    .is_err());
}

#[test]
fn durable_hooks_see_every_table_change() {
    let mut s = Sessions::new(Counter::default()).unwrap();
    s.apply(1, &Sessions::<Counter>::register_command());
    let mut session = Session::resume(1, 1);
    let cmd = session.command(&[2]);
    s.apply(2, cmd.bytes());
    s.apply(3, cmd.bytes());
    let u = &s.inner().updates;
    assert_eq!(u[0], (1, Some((1, 0)), vec![]));
    assert_eq!(u[1], (2, Some((1, 1)), vec![]));
    assert_eq!(
        u[2],
        (3, Some((1, 1)), vec![]),
        "a repeat moves last_index: persisted too"
    );
}

#[cfg(feature = "testing")]
#[test]
fn the_test_fault_applies_repeats_again() {
    let mut s = Sessions::new(Counter::default())
        .unwrap()
        .without_dedup_for_tests();
    s.apply(1, &Sessions::<Counter>::register_command());
    let cmd = Session::resume(1, 1).command(&[2]);
    assert_eq!(s.apply(2, cmd.bytes()), SessionReply::Applied(2));
    assert_eq!(s.apply(3, cmd.bytes()), SessionReply::Applied(4));
}

#[test]
fn session_of_reads_only_session_commands() {
    let cmd = Session::resume(7, 3).command(b"x");
    assert_eq!(session_of(cmd.bytes()), Some((7, 3)));
    assert_eq!(session_of(&Sessions::<Counter>::plain(&[0; 20])), None);
    assert_eq!(session_of(&Sessions::<Counter>::register_command()), None);
}

#[test]
fn retries_follow_redirects_and_stop_at_invalid_commands() {
    let policy = RetryPolicy {
        deadline: Duration::from_secs(5),
        attempt_timeout: Duration::from_millis(10),
        backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    };
    let bytes = Bytes::from_static(b"c");
    let mut hints = Vec::new();
    let mut answers = vec![
        Err(ProposeError::NotLeader { leader: Some(2) }),
        Err(ProposeError::OutcomeUnknown { index: 4, term: 2 }),
        Err(ProposeError::Timeout),
        Ok(SessionReply::Repeated(1u64)),
    ]
    .into_iter();
    let reply = propose_with(&bytes, &policy, |_, hint| {
        hints.push(hint);
        answers.next().unwrap()
    })
    .unwrap();
    assert_eq!(reply, SessionReply::Repeated(1));
    assert_eq!(hints, vec![None, Some(2), Some(2), Some(2)]);
    let invalid = propose_with::<u64>(&bytes, &policy, |_, _| Err(ProposeError::Empty));
    assert_eq!(invalid, Err(RetryError::Invalid(ProposeError::Empty)));
    let short = RetryPolicy {
        deadline: Duration::from_millis(20),
        ..policy
    };
    let gave_up = propose_with::<u64>(&bytes, &short, |_, _| Err(ProposeError::Busy));
    assert_eq!(
        gave_up,
        Err(RetryError::DeadlineExceeded {
            last: ProposeError::Busy
        })
    );
}
