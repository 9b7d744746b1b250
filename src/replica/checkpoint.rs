//! Divergence detection (docs/operations.md, "Divergence"): the markers a leader puts
//! in the log, and what every replica records and compares when it applies them.
//!
//! A marker is an empty normal entry (the state machine sees `apply_noop`) whose
//! `context` is a [`Marker`]; nothing else raftnode appends has an empty command with a
//! context. Two kinds follow each other:
//!
//! - [`Marker::Checkpoint`]: every replica takes its state machine's digest right after
//!   applying it, and keeps the last few ([`DIGESTS_KEPT`]).
//! - [`Marker::Report`]: the leader's own digest at a checkpoint, proposed as soon as the
//!   leader applied it. Every replica that kept its digest at that checkpoint compares.
//!
//! So a non-deterministic apply is found at the first checkpoint at or after it, one
//! commit round trip after that checkpoint applies, whatever the write rate. The format
//! needs no change to the wire: markers travel as ordinary entries.

use std::collections::VecDeque;

use crate::status::Divergence;

/// The first bytes of every marker's context.
const MAGIC: [u8; 8] = *b"rnckpt01";

/// Magic, kind, leader, index, digest.
const MARKER_LEN: usize = MAGIC.len() + 1 + 3 * 8;

const KIND_CHECKPOINT: u8 = 1;
const KIND_REPORT: u8 = 2;

/// How many of its latest checkpoint digests a replica keeps: a report names the
/// checkpoint its leader applied last, which another leader's checkpoint may follow
/// before the report applies.
pub(super) const DIGESTS_KEPT: usize = 4;

/// What an empty log entry with a context says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Marker {
    /// Every replica takes its digest here; `leader` proposed it.
    Checkpoint { leader: u64 },
    /// `leader`'s state machine digest was `digest` right after applying the
    /// checkpoint at `index`.
    Report {
        leader: u64,
        index: u64,
        digest: u64,
    },
}

impl Marker {
    /// The entry context that carries this marker.
    pub(super) fn encode(self) -> Vec<u8> {
        let (kind, leader, index, digest) = match self {
            Marker::Checkpoint { leader } => (KIND_CHECKPOINT, leader, 0, 0),
            Marker::Report {
                leader,
                index,
                digest,
            } => (KIND_REPORT, leader, index, digest),
        };
        let mut out = Vec::with_capacity(MARKER_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(kind);
        for n in [leader, index, digest] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    /// Reads a marker back from the context of the empty entry at `at`; `Err` says why
    /// it is not one an honest raftnode leader writes.
    pub(super) fn parse(ctx: &[u8], at: u64) -> Result<Marker, &'static str> {
        if ctx.len() != MARKER_LEN {
            return Err("not the length of a checkpoint marker");
        }
        if ctx[..MAGIC.len()] != MAGIC {
            return Err("no checkpoint marker magic");
        }
        let word = |i: usize| {
            let start = MAGIC.len() + 1 + 8 * i;
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&ctx[start..start + 8]);
            u64::from_le_bytes(raw)
        };
        let (leader, index, digest) = (word(0), word(1), word(2));
        if leader == 0 {
            return Err("marker names no leader");
        }
        match ctx[MAGIC.len()] {
            KIND_CHECKPOINT if index == 0 && digest == 0 => Ok(Marker::Checkpoint { leader }),
            KIND_CHECKPOINT => Err("checkpoint marker carries an index or a digest"),
            KIND_REPORT if index == 0 || index >= at => {
                Err("report names no checkpoint before itself")
            }
            KIND_REPORT => Ok(Marker::Report {
                leader,
                index,
                digest,
            }),
            _ => Err("unknown marker kind"),
        }
    }
}

/// One replica's checkpoint bookkeeping. Allocated on the first marker it applies or
/// proposes, so a group without checkpoints carries only an empty `Option<Box<_>>`.
#[derive(Debug, Default)]
pub(super) struct Checkpoints {
    /// This replica's digests at the latest checkpoints it applied: (index, digest),
    /// oldest first, at most [`DIGESTS_KEPT`].
    digests: VecDeque<(u64, u64)>,
    /// Index of the last checkpoint applied here: the next one is due
    /// `checkpoint_every` entries after it.
    last: u64,
    /// A checkpoint this node proposed while leading, not yet applied: (index, term).
    /// No second one is proposed while it may still commit.
    proposed: Option<(u64, u64)>,
    /// The digest taken at the checkpoint applied last, for this node to report if it
    /// leads: (index, digest). Taken after every drive, reported or not.
    pub(super) report_due: Option<(u64, u64)>,
    /// The first divergence this replica found.
    pub(super) first: Option<Divergence>,
}

impl Checkpoints {
    /// The checkpoint at `index` was applied and the state machine's digest there is
    /// `digest`.
    pub(super) fn on_checkpoint(&mut self, index: u64, digest: Option<u64>) {
        self.last = index;
        if self.proposed.is_some_and(|(at, _)| at <= index) {
            self.proposed = None;
        }
        if let Some(digest) = digest {
            if self.digests.len() == DIGESTS_KEPT {
                self.digests.pop_front();
            }
            self.digests.push_back((index, digest));
            self.report_due = Some((index, digest));
        }
    }

    /// This replica's digest at the checkpoint `index`, if it applied that checkpoint
    /// (and still keeps it): one restored from a snapshot past it, restarted since, or
    /// whose state machine has no digest, did not.
    pub(super) fn digest_at(&self, index: u64) -> Option<u64> {
        self.digests
            .iter()
            .find(|(at, _)| *at == index)
            .map(|(_, digest)| *digest)
    }

    /// Whether a leader of `term` that applied up to `applied` should propose a
    /// checkpoint now.
    pub(super) fn is_due(&self, applied: u64, term: u64, every: u64) -> bool {
        let in_flight = self
            .proposed
            .is_some_and(|(at, t)| t == term && at > applied);
        !in_flight && applied >= self.last.saturating_add(every)
    }

    /// This leader proposed a checkpoint at `index` in `term`.
    pub(super) fn proposed(&mut self, index: u64, term: u64) {
        self.proposed = Some((index, term));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip() {
        for m in [
            Marker::Checkpoint { leader: 3 },
            Marker::Report {
                leader: 1,
                index: 40,
                digest: u64::MAX,
            },
        ] {
            assert_eq!(Marker::parse(&m.encode(), 41), Ok(m));
        }
    }

    /// Bad input never crashes a node: whatever a forged entry's context holds, parsing
    /// returns an error naming why (the replica counts it and goes on).
    #[test]
    fn forged_contexts_are_refused_not_trusted() {
        let good = Marker::Report {
            leader: 1,
            index: 40,
            digest: 7,
        }
        .encode();
        let mut cases: Vec<(Vec<u8>, u64)> = vec![
            (Vec::new(), 41),
            (vec![0xff; 3], 41),
            (good[..MARKER_LEN - 1].to_vec(), 41),
            ([good.as_slice(), &[0]].concat(), 41),
            // A report naming itself or a later index.
            (good.clone(), 40),
            (good.clone(), 12),
        ];
        let mut bad_magic = good.clone();
        bad_magic[0] ^= 1;
        cases.push((bad_magic, 41));
        let mut bad_kind = good.clone();
        bad_kind[MAGIC.len()] = 9;
        cases.push((bad_kind, 41));
        let mut no_leader = good.clone();
        no_leader[MAGIC.len() + 1..MAGIC.len() + 9].fill(0);
        cases.push((no_leader, 41));
        let mut checkpoint_with_digest = good.clone();
        checkpoint_with_digest[MAGIC.len()] = KIND_CHECKPOINT;
        cases.push((checkpoint_with_digest, 41));
        for (ctx, at) in cases {
            assert!(Marker::parse(&ctx, at).is_err(), "{ctx:?} at {at}");
        }
        // Arbitrary bytes of every length around the marker's: never a panic.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for len in 0..80 {
            let ctx: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = Marker::parse(&ctx, seed);
        }
    }

    #[test]
    fn a_checkpoint_is_due_every_interval_and_one_at_a_time() {
        let mut c = Checkpoints::default();
        assert!(!c.is_due(9, 1, 10));
        assert!(c.is_due(10, 1, 10));
        c.proposed(11, 1);
        assert!(!c.is_due(10, 1, 10), "in flight");
        assert!(c.is_due(10, 2, 10), "a new term: the proposal may be lost");
        c.on_checkpoint(11, Some(5));
        assert_eq!(c.report_due, Some((11, 5)));
        assert!(!c.is_due(20, 1, 10));
        assert!(c.is_due(21, 1, 10));
    }

    #[test]
    fn only_the_latest_digests_are_kept() {
        let mut c = Checkpoints::default();
        for i in 1..=(DIGESTS_KEPT as u64 + 2) {
            c.on_checkpoint(i * 10, Some(i));
        }
        assert_eq!(c.digest_at(10), None);
        assert_eq!(c.digest_at(20), None);
        assert_eq!(c.digest_at(30), Some(3));
        assert_eq!(c.digests.len(), DIGESTS_KEPT);
        c.on_checkpoint(100, None);
        assert_eq!(c.digest_at(100), None, "no digest, nothing to compare");
    }
}
