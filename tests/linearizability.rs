//! The linearizability checker on its own, against histories whose answer is known:
//! linearizable ones (including unknown outcomes) must pass, non-linearizable ones must
//! fail, and per-key partitioning must keep long histories cheap.
#![cfg(feature = "testing")]

use raftnode::testing::linearizability::{check, check_exhaustive, CheckError, Model};
use raftnode::testing::sim::kv::{KvInput, KvModel, KvOutput};
use raftnode::testing::sim::{History, Operation, ReadMode, SimRng};

fn put(key: u8, value: u64) -> KvInput {
    KvInput::Put { key, value }
}

fn get(key: u8) -> KvInput {
    KvInput::Get {
        key,
        mode: ReadMode::Linearizable,
    }
}

fn cas(key: u8, expected: Option<u64>, new: u64) -> KvInput {
    KvInput::Cas { key, expected, new }
}

/// An operation with known output over `[invoke, ret]` in the event order.
fn op(
    client: u64,
    input: KvInput,
    output: KvOutput,
    invoke: u64,
    ret: u64,
) -> Operation<KvInput, KvOutput> {
    Operation {
        client,
        input,
        output: Some(output),
        invoke,
        ret: Some(ret),
        invoke_step: invoke,
        return_step: Some(ret),
    }
}

/// An operation whose outcome is unknown (timed out, leader lost).
fn unknown(client: u64, input: KvInput, invoke: u64) -> Operation<KvInput, KvOutput> {
    Operation {
        client,
        input,
        output: None,
        invoke,
        ret: None,
        invoke_step: invoke,
        return_step: None,
    }
}

const DONE: KvOutput = KvOutput::Done;

fn value(v: Option<u64>) -> KvOutput {
    KvOutput::Value(v)
}

const BUDGET: u64 = 1_000_000;

/// Checks `h` with [`check`] and with the exhaustive search alone, which must agree
/// (so each test covers both searches).
fn both(h: &[Operation<KvInput, KvOutput>]) -> Result<(), CheckError> {
    let quick_first = check(&KvModel, h, BUDGET);
    assert_eq!(quick_first, check_exhaustive(&KvModel, h, BUDGET));
    quick_first
}

/// Sequential operations that match the model are linearizable.
#[test]
fn sequential_history_passes() {
    let h = vec![
        op(1, put(0, 1), DONE, 1, 2),
        op(1, get(0), value(Some(1)), 3, 4),
        op(2, cas(0, Some(1), 2), KvOutput::Swapped(true), 5, 6),
        op(2, cas(0, Some(1), 3), KvOutput::Swapped(false), 7, 8),
        op(1, KvInput::Delete { key: 0 }, DONE, 9, 10),
        op(1, get(0), value(None), 11, 12),
    ];
    assert_eq!(both(&h), Ok(()));
}

/// A read after a completed write that returns the old value is a stale read.
#[test]
fn stale_read_fails() {
    let h = vec![
        op(1, put(0, 1), DONE, 1, 2),
        op(2, get(0), value(None), 3, 4),
    ];
    assert!(matches!(
        both(&h),
        Err(CheckError::NotLinearizable { partition: 0, .. })
    ));
}

/// Concurrent operations may take effect in either order.
#[test]
fn concurrent_reads_may_see_either_value() {
    let h = vec![
        op(1, put(0, 1), DONE, 1, 6),
        op(2, get(0), value(Some(1)), 2, 3),
        op(3, get(0), value(None), 4, 7),
    ];
    // Client 2 saw the write before client 3 started but client 3 saw the old value:
    // impossible, since once 1 is visible it stays.
    assert!(both(&h).is_err());
    let h = vec![
        op(1, put(0, 1), DONE, 1, 6),
        op(3, get(0), value(None), 2, 3),
        op(2, get(0), value(Some(1)), 4, 7),
    ];
    assert_eq!(both(&h), Ok(()));
}

/// A write with an unknown outcome may have happened: a later read may see it.
#[test]
fn unknown_write_may_have_taken_effect() {
    let h = vec![
        unknown(1, put(0, 5), 1),
        op(2, get(0), value(Some(5)), 2, 3),
        op(2, get(0), value(Some(5)), 4, 5),
    ];
    assert_eq!(both(&h), Ok(()));
}

/// A write with an unknown outcome may also never have happened.
#[test]
fn unknown_write_may_never_take_effect() {
    let h = vec![
        unknown(1, put(0, 5), 1),
        op(2, get(0), value(None), 2, 3),
        op(2, get(0), value(None), 10, 11),
    ];
    assert_eq!(both(&h), Ok(()));
}

/// But an unknown write cannot take effect before it was invoked, nor un-happen.
#[test]
fn unknown_write_cannot_precede_its_invocation_or_flicker() {
    let before = vec![
        op(2, get(0), value(Some(5)), 1, 2),
        unknown(1, put(0, 5), 3),
    ];
    assert!(both(&before).is_err());
    let flicker = vec![
        unknown(1, put(0, 5), 1),
        op(2, get(0), value(Some(5)), 2, 3),
        op(2, get(0), value(None), 4, 5),
    ];
    assert!(both(&flicker).is_err());
}

/// An unknown compare-and-set takes effect only if it would have matched.
#[test]
fn unknown_cas_follows_the_model() {
    let h = vec![
        op(1, put(0, 1), DONE, 1, 2),
        unknown(2, cas(0, Some(7), 9), 3),
        op(1, get(0), value(Some(9)), 4, 5),
    ];
    assert!(both(&h).is_err());
    let h = vec![
        op(1, put(0, 7), DONE, 1, 2),
        unknown(2, cas(0, Some(7), 9), 3),
        op(1, get(0), value(Some(9)), 4, 5),
    ];
    assert_eq!(both(&h), Ok(()));
}

/// A lost acknowledged write (acked, then gone) is caught.
#[test]
fn lost_acknowledged_write_fails() {
    let h = vec![
        op(1, put(0, 1), DONE, 1, 2),
        op(1, put(0, 2), DONE, 3, 4),
        op(2, get(0), value(Some(1)), 5, 6),
    ];
    assert!(both(&h).is_err());
}

/// Keys are checked independently: a violation names its key, and a long history over
/// many keys with many concurrent operations stays within a small budget.
#[test]
fn partitions_by_key() {
    let h = vec![
        op(1, put(0, 1), DONE, 1, 2),
        op(1, put(3, 1), DONE, 3, 4),
        op(2, get(3), value(None), 5, 6),
        op(2, get(0), value(Some(1)), 7, 8),
    ];
    assert!(matches!(
        both(&h),
        Err(CheckError::NotLinearizable { partition: 3, .. })
    ));
    // 4,000 operations, 5 clients overlapping, on 8 keys.
    let mut history: History<KvInput, KvOutput> = History::new();
    let mut values = [None; 8];
    for round in 0..800u64 {
        let ids: Vec<_> = (0..5u64)
            .map(|c| {
                let key = ((round * 5 + c) % 8) as u8;
                if c % 2 == 0 {
                    (history.invoke(c, put(key, round), round), key, Some(round))
                } else {
                    (history.invoke(c, get(key), round), key, None)
                }
            })
            .collect();
        for (id, key, written) in ids {
            let out = match written {
                Some(v) => {
                    values[key as usize] = Some(v);
                    DONE
                }
                None => value(values[key as usize]),
            };
            history.complete(id, out, round);
        }
    }
    let history = history.into_operations();
    assert_eq!(check(&KvModel, &history, 200_000), Ok(()));
    assert_eq!(check_exhaustive(&KvModel, &history, 200_000), Ok(()));
}

/// A search that runs out of budget says so instead of guessing.
#[test]
fn budget_exhaustion_is_reported() {
    // Twelve overlapping acknowledged puts and a read inside them that matches none:
    // proving the violation means trying every subset of the puts before the read.
    let mut h: Vec<_> = (0..12)
        .map(|c| op(c, put(0, c + 100), DONE, c + 1, 100 + c))
        .collect();
    h.push(op(99, get(0), value(Some(7)), 50, 51));
    assert!(matches!(
        check(&KvModel, &h, 1_000),
        Err(CheckError::BudgetExhausted { .. })
    ));
    let message = check(&KvModel, &h, 1_000).unwrap_err().to_string();
    assert!(message.starts_with("inconclusive: "), "{message}");
    // With the budget it needs, the answer is a violation.
    assert!(matches!(
        check(&KvModel, &h, 10_000_000),
        Err(CheckError::NotLinearizable { .. })
    ));
}

/// Reads with unknown outcomes are left out (`Model::is_read_only`): they cannot
/// constrain the history, and the same 40 pending operations as above cost nothing
/// when they are reads, while a wrong acknowledged read is still caught.
#[test]
fn unknown_reads_are_left_out() {
    let mut h: Vec<_> = (0..40).map(|c| unknown(c, get(0), c + 1)).collect();
    h.push(op(98, put(0, 7), DONE, 50, 51));
    h.push(op(99, get(0), value(Some(7)), 100, 101));
    assert_eq!(check(&KvModel, &h, 1_000), Ok(()));
    assert_eq!(check_exhaustive(&KvModel, &h, 1_000), Ok(()));
    // Without the put, the read of 7 is a violation, found at once.
    h.retain(|o| !matches!(o.input, KvInput::Put { .. }));
    assert!(matches!(
        check(&KvModel, &h, 1_000),
        Err(CheckError::NotLinearizable { .. })
    ));
}

/// The model itself: compare-and-set on an absent key.
#[test]
fn kv_model_cas_on_absent_key() {
    let (state, out) = KvModel.step(&None, &cas(0, None, 4));
    assert_eq!((state, out), (Some(4), KvOutput::Swapped(true)));
}

/// An unknown write takes effect at most once: one `put 5` cannot explain two reads of
/// 5 with an acknowledged `put 3` between them (a checker that treated unknown writes as
/// always available would pass this), while two such puts can.
#[test]
fn unknown_write_takes_effect_at_most_once() {
    let mut h = vec![
        unknown(1, put(0, 5), 1),
        op(2, get(0), value(Some(5)), 2, 3),
        op(2, put(0, 3), DONE, 4, 5),
        op(2, get(0), value(Some(5)), 6, 7),
    ];
    assert!(matches!(both(&h), Err(CheckError::NotLinearizable { .. })));
    h.push(unknown(3, put(0, 5), 4));
    assert_eq!(both(&h), Ok(()));
}

/// The state a stretch of concurrent writes leaves behind carries over to what follows:
/// after `put 1` and `put 2` overlap and both return, the key holds one of them for good
/// (a checker that split the history there and let each later read pick either state
/// would pass the first history).
#[test]
fn state_carries_across_a_quiescent_point() {
    let mut h = vec![
        op(1, put(0, 1), DONE, 1, 4),
        op(2, put(0, 2), DONE, 2, 3),
        op(1, get(0), value(Some(1)), 5, 6),
        op(2, get(0), value(Some(2)), 7, 8),
    ];
    assert!(both(&h).is_err());
    h[3].output = Some(value(Some(1)));
    assert_eq!(both(&h), Ok(()));
}

/// An unknown write that no read returns and no compare-and-set expects can still be
/// needed: here only `put 2` explains why `cas 1 -> 3` failed. Dropping "unobserved"
/// unknown writes would report this linearizable history as a violation.
#[test]
fn unread_unknown_write_can_explain_a_failed_cas() {
    let mut h = vec![
        op(1, put(0, 1), DONE, 1, 2),
        unknown(2, put(0, 2), 3),
        op(1, cas(0, Some(1), 3), KvOutput::Swapped(false), 4, 5),
        op(1, put(0, 5), DONE, 6, 7),
        op(1, get(0), value(Some(5)), 8, 9),
    ];
    assert_eq!(both(&h), Ok(()));
    h.remove(1);
    assert!(both(&h).is_err());
}

/// Unknown operations can take effect back to back: `cas 1 -> 2` then `cas 2 -> 3`
/// explain a read of 3, but not if the second was invoked after the read returned.
#[test]
fn unknown_operations_can_chain() {
    let mut h = vec![
        op(1, put(0, 1), DONE, 1, 2),
        unknown(2, cas(0, Some(1), 2), 3),
        unknown(3, cas(0, Some(2), 3), 4),
        op(1, get(0), value(Some(3)), 5, 6),
    ];
    assert_eq!(both(&h), Ok(()));
    h[2].invoke = 7;
    assert!(both(&h).is_err());
}

/// The search keeps, among ways to reach the same state, the one that used fewer
/// unknown operations: the first read of 5 is explained either by `delete, put 5` or
/// by `put 5, delete, unknown put 5`; only the first saves the unknown `put 5` for the
/// second read.
#[test]
fn unknown_write_kept_for_later() {
    let mut h = vec![
        op(1, put(0, 5), DONE, 1, 4),
        unknown(2, put(0, 5), 2),
        op(4, KvInput::Delete { key: 0 }, DONE, 3, 5),
        op(3, get(0), value(Some(5)), 6, 7),
        op(3, put(0, 3), DONE, 8, 9),
        op(3, get(0), value(Some(5)), 10, 11),
    ];
    assert_eq!(both(&h), Ok(()));
    h.remove(1);
    assert!(both(&h).is_err());
}

/// A violation report marks the response no linearization explains.
#[test]
fn violation_names_the_unexplained_response() {
    let h = vec![
        op(1, put(0, 1), DONE, 1, 2),
        op(2, get(0), value(Some(1)), 3, 4),
        op(2, get(0), value(Some(9)), 5, 6),
    ];
    let Err(CheckError::NotLinearizable { operations, .. }) = both(&h) else {
        panic!("not reported");
    };
    let marked: Vec<_> = operations
        .iter()
        .filter(|l| l.contains("no linearization explains"))
        .collect();
    assert_eq!(marked.len(), 1, "{operations:#?}");
    assert!(marked[0].contains("Some(9)"), "{operations:#?}");
}

/// Decides `h` by brute force: every subset of the unknown operations, every order
/// that respects real time, against the model. Exponential; for tiny histories only.
fn brute_force(h: &[Operation<KvInput, KvOutput>]) -> bool {
    fn place(
        h: &[Operation<KvInput, KvOutput>],
        left: &mut Vec<usize>,
        state: Option<u64>,
    ) -> bool {
        if left.is_empty() {
            return true;
        }
        for i in 0..left.len() {
            let k = left[i];
            // Another operation still to place returned before this one was invoked.
            if left
                .iter()
                .any(|&j| h[j].ret.is_some_and(|r| r < h[k].invoke))
            {
                continue;
            }
            let (next, out) = KvModel.step(&state, &h[k].input);
            if h[k].output.as_ref().is_some_and(|o| *o != out) {
                continue;
            }
            left.remove(i);
            let ok = place(h, left, next);
            left.insert(i, k);
            if ok {
                return true;
            }
        }
        false
    }
    let unknown: Vec<usize> = (0..h.len()).filter(|&k| h[k].ret.is_none()).collect();
    (0..1u32 << unknown.len()).any(|subset| {
        let mut left: Vec<usize> = (0..h.len())
            .filter(|k| match unknown.iter().position(|u| u == k) {
                Some(bit) => subset & (1 << bit) != 0,
                None => true,
            })
            .collect();
        place(h, &mut left, None)
    })
}

/// A random tiny history on one key: each operation gets an interval and, when it takes
/// effect, a point inside it; outputs come from running the model in point order, and
/// up to two outputs are then changed, so a good share of the histories are violations.
fn random_history(rng: &mut SimRng) -> Vec<Operation<KvInput, KvOutput>> {
    let n = rng.between(2, 7) as usize;
    let mut h = Vec::new();
    let mut points = Vec::new();
    for k in 0..n {
        let v = rng.below(3);
        let input = match rng.below(5) {
            0 | 1 => put(0, v),
            2 => get(0),
            3 => KvInput::Delete { key: 0 },
            _ => cas(0, (rng.below(3) > 0).then(|| rng.below(3)), v),
        };
        let invoke = rng.below(20) * 3;
        let ret = invoke + 3 * rng.between(1, 8) + 1;
        let point = rng.between(invoke + 1, ret - 1);
        if rng.below(4) == 0 {
            let mut o = unknown(k as u64, input, invoke);
            o.invoke += 1;
            h.push(o);
            if rng.below(2) == 0 {
                points.push((point, k));
            }
        } else {
            h.push(op(k as u64, input, DONE, invoke, ret));
            points.push((point, k));
        }
    }
    points.sort_unstable();
    let mut state = None;
    for (_, k) in points {
        let (next, out) = KvModel.step(&state, &h[k].input);
        state = next;
        if h[k].ret.is_some() {
            h[k].output = Some(out);
        }
    }
    for _ in 0..rng.below(3) {
        let k = rng.below(n as u64) as usize;
        if h[k].ret.is_some() {
            h[k].output = Some(match h[k].input {
                KvInput::Get { .. } => value((rng.below(3) > 0).then(|| rng.below(3))),
                KvInput::Cas { .. } => KvOutput::Swapped(rng.below(2) == 0),
                _ => DONE,
            });
        }
    }
    h
}

/// Every pruning keeps the verdict exact: on 30,000 random tiny histories (unknown
/// puts, deletes and compare-and-sets among them, about half not linearizable) the
/// checker agrees with a brute-force search over every order and every subset of the
/// unknown operations.
#[test]
fn agrees_with_brute_force_on_small_histories() {
    let mut rng = SimRng::new(7);
    let (mut good, mut bad) = (0, 0);
    for round in 0..30_000 {
        let h = random_history(&mut rng);
        let expected = brute_force(&h);
        let got = both(&h);
        assert_eq!(
            got.is_ok(),
            expected,
            "round {round}: checker says {got:?}, brute force {expected}, history {h:#?}"
        );
        if expected {
            good += 1;
        } else {
            bad += 1;
        }
    }
    assert!(
        good > 10_000 && bad > 2_500,
        "{good} linearizable, {bad} not"
    );
}

/// Hundreds of unknown-outcome writes on one key no longer exhaust the search (the
/// simulator's worst histories looked like this): a history where about half of them
/// took effect passes, and a read of a value nobody wrote is reported as a violation
/// rather than running out of budget, which trying every subset of the unknown writes
/// would.
#[test]
fn unknown_heavy_history_is_decided() {
    let mut rng = SimRng::new(11);
    let mut h = Vec::new();
    let mut state = None;
    for i in 0..600u64 {
        let t = 3 * i + 1;
        if i % 3 == 0 {
            h.push(op(i % 5, get(0), value(state), t, t + 1));
        } else {
            let v = rng.below(32);
            h.push(unknown(i % 5, put(0, v), t));
            if rng.below(2) == 0 {
                state = Some(v);
            }
        }
    }
    assert_eq!(both(&h), Ok(()));
    h.push(op(9, get(0), value(Some(77)), 5_000, 5_001));
    assert!(matches!(both(&h), Err(CheckError::NotLinearizable { .. })));
}
