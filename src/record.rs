//! Record and replay: a recorder the runtime feeds every input its core receives, and
//! [`replay`], which re-drives a fresh core from the file offline and checks it emits
//! the same effects and ends in the same state (docs/operations.md, "Record and
//! replay").
//!
//! A recording holds one *segment* per start of the core (a restart appends a new
//! segment to the same file): the starting state (the config, the incarnation that
//! seeds the election timeout draw, the applied index, the store's contents as raft-rs
//! reads them, the state machine's snapshot), then one record per input (a message, a
//! tick, a proposal, a read's consistency and deadline, a conf change, a storage write
//! that failed, ...) with a digest of what the core emitted for it, then the end state
//! (HardState, last index, the state machine's digest). Records are framed with their
//! length and a CRC-32; the file never grows past [`RecordTo::max_bytes`].

mod codec;
mod recorder;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use raft::eraftpb::{ConfState, Message};
use slog::Logger;

use crate::driver::{DriverError, Faults};
use crate::error::{MembershipError, ProposeError, ReadError, ReplayError};
use crate::node::Shared;
use crate::proposals::WriteToken;
use crate::replica::{Host, Replica};
use crate::state_machine::StateMachine;
use crate::storage::MemLogStore;

pub(crate) use codec::Input;
pub(crate) use recorder::{Effects, EndState, Recorder, StartState};
pub(crate) use store::TappedStore;

use codec::Dec;
use store::{StoreFailure, StoreTap};

/// The smallest [`RecordTo::max_bytes`] [`Config::validate`](crate::Config::validate)
/// accepts.
pub const MIN_RECORD_BYTES: u64 = 4096;

/// Where a node records its core's inputs ([`Config::record`](crate::Config::record)).
///
/// Each start of the node appends a segment to the file at `path` (creating it, with a
/// header, if it does not exist). Once the file holds `max_bytes` the recorder stops
/// writing, logs once at warn and ends the file with a marker that says it was
/// truncated; a replay reproduces everything up to the marker. An error opening or
/// writing the file never stops the node: it logs a warning and runs unrecorded.
///
/// # Examples
///
/// ```
/// let mut config = raftnode::Config::new(1);
/// config.record = Some(raftnode::RecordTo::new("/tmp/node-1.rec", 64 << 20));
/// config.validate()?;
/// # Ok::<(), raftnode::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordTo {
    /// The recording file.
    pub path: PathBuf,
    /// The most bytes the file may hold, all segments together; at least
    /// [`MIN_RECORD_BYTES`].
    pub max_bytes: u64,
}

impl RecordTo {
    /// Records to `path`, at most `max_bytes` bytes.
    pub fn new(path: impl Into<PathBuf>, max_bytes: u64) -> Self {
        RecordTo {
            path: path.into(),
            max_bytes,
        }
    }
}

/// What a [`replay`] did and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Segments replayed (one per start of the recorded node).
    pub segments: usize,
    /// Inputs replayed, all segments together.
    pub inputs: u64,
    /// Messages the replayed core sent.
    pub messages: u64,
    /// Entries the replayed core applied.
    pub entries_applied: u64,
    /// The recording ended at its size bound: the replay covers what came before.
    pub truncated: bool,
    /// Segments that end without their end record (the node still running, killed, or
    /// panicked): their inputs were compared, their end state was not.
    pub unfinished: usize,
    /// The state machine's digest at the end of the last segment replayed, if it has one.
    pub final_digest: Option<u64>,
    /// The first place the replay differed from the recording; the replay stops there.
    /// `None`: it reproduced the recording exactly.
    pub mismatch: Option<Mismatch>,
}

/// Where and how a replay first differed from its recording.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Mismatch {
    /// The segment, from 0.
    pub segment: usize,
    /// The input within the segment, from 1; 0 is the core's construction and
    /// `None` the segment's end state.
    pub input: Option<u64>,
    /// The input's kind (`step`, `tick`, `drive`, ...) or `start` / `end`.
    pub what: &'static str,
    /// What the recording says.
    pub expected: String,
    /// What the replay produced.
    pub got: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = self
            .input
            .map_or("its end".to_owned(), |i| format!("input {i}"));
        write!(
            f,
            "segment {} at {at} ({}): expected {}, got {}",
            self.segment, self.what, self.expected, self.got
        )
    }
}

/// The words a [`DriverError`] is recorded with (its kind, not its text).
pub(crate) fn error_kind(e: &DriverError) -> &'static str {
    match e {
        DriverError::Storage(_) => "storage",
        DriverError::StateMachine(_) => "state machine",
        DriverError::Raft(_) => "raft",
        DriverError::CorruptEntry { .. } => "corrupt entry",
        DriverError::Killed => "killed",
        DriverError::Diverged(_) => "diverged",
    }
}

/// Replays the recording at `path` offline: for each segment, a fresh core on a
/// [`MemLogStore`] loaded with the recorded starting state and a state machine from
/// `make_sm` restored from the recorded snapshot, driven input by input on a virtual
/// clock (no threads, no wall clock), each input's effects compared with the recorded
/// digest (every message sent, byte for byte; every entry applied; every outcome), and
/// at the segment's end the HardState, the last index and the state machine's
/// [`digest`](StateMachine::digest) (when it has one). Storage writes that failed while
/// recording fail again at the same call.
///
/// `make_sm` builds an empty state machine of the recorded kind; it is called once per
/// segment. A replay that differs stops at the first difference and says where in
/// [`ReplayReport::mismatch`]: a difference is a finding, not an error.
///
/// # Errors
///
/// [`ReplayError`] when the file cannot be read, is not a recording of this version, is
/// cut short or corrupt (a frame's CRC), holds a record that does not decode, or a
/// state raft-rs or the state machine refuses.
///
/// # Examples
///
/// ```no_run
/// # #[derive(Default)] struct Sum { applied: u64 }
/// # impl raftnode::StateMachine for Sum {
/// #     type Response = ();
/// #     fn apply(&mut self, index: u64, _: &[u8]) { self.applied = index; }
/// #     fn apply_noop(&mut self, index: u64) { self.applied = index; }
/// #     fn applied_index(&self) -> u64 { self.applied }
/// #     fn snapshot(&self) -> Result<bytes::Bytes, raftnode::StateMachineError> {
/// #         Ok(bytes::Bytes::new())
/// #     }
/// #     fn restore(&mut self, i: u64, _: &[u8]) -> Result<(), raftnode::StateMachineError> {
/// #         self.applied = i;
/// #         Ok(())
/// #     }
/// # }
/// let report = raftnode::replay("node-1.rec", Sum::default)?;
/// if let Some(mismatch) = &report.mismatch {
///     eprintln!("the replay differs: {mismatch}");
/// }
/// # Ok::<(), raftnode::ReplayError>(())
/// ```
pub fn replay<M: StateMachine>(
    path: impl AsRef<Path>,
    mut make_sm: impl FnMut() -> M,
) -> Result<ReplayReport, ReplayError> {
    let path = path.as_ref();
    let file = std::fs::read(path).map_err(|source| ReplayError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let body =
        codec::check_header(&file).map_err(|detail| ReplayError::Format { offset: 0, detail })?;
    let frames =
        codec::frames(body).map_err(|(offset, detail)| ReplayError::Format { offset, detail })?;
    let mut report = ReplayReport::default();
    let mut rest = &frames[..];
    while let Some(&(offset, payload)) = rest.first() {
        match payload.first() {
            Some(&codec::KIND_TRUNCATED) => {
                report.truncated = true;
                rest = &rest[1..];
            }
            Some(&codec::KIND_START) => {
                let segment = report.segments;
                report.segments += 1;
                let used = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    Segment::replay(rest, segment, &mut make_sm, &mut report)
                }))
                .map_err(|panic| ReplayError::Refused {
                    segment,
                    detail: panic_text(&panic),
                })??;
                if report.mismatch.is_some() {
                    return Ok(report);
                }
                rest = &rest[used..];
            }
            _ => {
                return Err(ReplayError::Format {
                    offset,
                    detail: "a record outside a segment (no start record before it)".to_owned(),
                })
            }
        }
    }
    Ok(report)
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic");
    format!("the core panicked on the recorded state: {text}")
}

/// The replay's host: no tokens, every effect folded into the digest.
#[derive(Default)]
struct ReplayHost {
    effects: Effects,
}

impl<M: StateMachine> Host<M> for ReplayHost {
    type Propose = ();
    type ConfChange = ();
    type Read = ();
    type Transfer = ();

    fn send(&mut self, messages: Vec<Message>) {
        self.effects.sent(&messages);
    }
    fn add_peer(&mut self, id: u64, context: &[u8]) {
        self.effects.peer_added(id, context);
    }
    fn remove_peer(&mut self, id: u64) {
        self.effects.peer_removed(id);
    }
    fn proposed(&mut self, _: (), result: Result<(M::Response, WriteToken), ProposeError>) {
        self.effects.proposed(&result);
    }
    fn conf_change_done(&mut self, _: (), result: Result<ConfState, MembershipError>) {
        self.effects.conf_change_done(&result);
    }
    fn read_done(&mut self, _: (), result: Result<&M, ReadError>) {
        self.effects.read_done(&result);
    }
    fn transfer_done(&mut self, _: (), result: Result<(), MembershipError>) {
        self.effects.transfer_done(&result);
    }
    fn applied_entry(&mut self, index: u64, term: u64) {
        self.effects.applied_entry(index, term);
    }
}

type ReplayCore<M> = Replica<TappedStore<MemLogStore>, M, ReplayHost>;

/// One segment being replayed.
struct Segment<M: StateMachine> {
    core: ReplayCore<M>,
    tap: Arc<Mutex<StoreTap>>,
    base: Instant,
    index: usize,
}

fn format_error(offset: usize, detail: String) -> ReplayError {
    ReplayError::Format { offset, detail }
}

impl<M: StateMachine> Segment<M> {
    /// Replays the segment that starts `frames`; returns how many frames it spans.
    fn replay(
        frames: &[codec::Frame<'_>],
        index: usize,
        make_sm: &mut impl FnMut() -> M,
        report: &mut ReplayReport,
    ) -> Result<usize, ReplayError> {
        let (offset, payload) = frames[0];
        let mut d = Dec::new(&payload[1..]);
        // The core's construction writes nothing, so no write can have failed in it.
        let (start, built) = StartState::decode(&mut d)
            .and_then(|s| Ok((s, recorder::decode_failure(&mut d)?)))
            .and_then(|(s, _)| Ok((s, Effects::decode(&mut d)?)))
            .and_then(|r| d.finish("the start record").map(|()| r))
            .map_err(|e| format_error(offset, e))?;
        let (mut segment, got) = Segment::start(start, index, make_sm)?;
        if let Some(m) = segment.compare(Some(0), "start", built, got, None, None) {
            report.mismatch = Some(m);
            return Ok(1);
        }
        for (used, &(offset, payload)) in frames.iter().enumerate().skip(1) {
            let Some((&kind, body)) = payload.split_first() else {
                return Err(format_error(offset, "an empty record".to_owned()));
            };
            let mut d = Dec::new(body);
            match kind {
                codec::KIND_INPUT => {
                    let n = used as u64;
                    let mismatch = segment
                        .input(&mut d, n, report)
                        .map_err(|e| format_error(offset, e))?;
                    if mismatch.is_some() {
                        report.mismatch = mismatch;
                        return Ok(used + 1);
                    }
                }
                codec::KIND_END => {
                    let end = (|| {
                        let complete = d.bool("the end record")?;
                        let end = complete.then(|| EndState::decode(&mut d)).transpose()?;
                        d.finish("the end record").map(|()| end)
                    })()
                    .map_err(|e| format_error(offset, e))?;
                    report.mismatch = segment.end(end.as_ref(), report);
                    return Ok(used + 1);
                }
                codec::KIND_TRUNCATED => {
                    report.truncated = true;
                    segment.unfinished(report);
                    return Ok(used + 1);
                }
                // The next start: this segment's end was never written (a crash).
                codec::KIND_START => {
                    segment.unfinished(report);
                    return Ok(used);
                }
                kind => return Err(format_error(offset, format!("unknown record kind {kind}"))),
            }
        }
        segment.unfinished(report);
        Ok(frames.len())
    }

    /// The segment ends without its end record: nothing to compare the state with.
    fn unfinished(&self, report: &mut ReplayReport) {
        report.unfinished += 1;
        report.final_digest = self.core.state_machine().digest();
    }

    /// A fresh core on the recorded starting state, and the effects of building it.
    fn start(
        start: StartState,
        index: usize,
        make_sm: &mut impl FnMut() -> M,
    ) -> Result<(Self, Effects), ReplayError> {
        let refused = |detail: String| ReplayError::Refused {
            segment: index,
            detail,
        };
        let store = MemLogStore::restored(
            start.hard_state,
            start.conf_state,
            start.snapshot,
            start.truncated,
            start.entries,
        )
        .map_err(|e| refused(format!("the recorded store: {e}")))?;
        let tap = Arc::new(Mutex::new(StoreTap::default()));
        let store = TappedStore::new(store, Some(tap.clone()));
        let mut sm = make_sm();
        if start.applied > 0 && sm.applied_index() != start.applied {
            sm.restore(start.applied, &start.sm_snapshot)
                .map_err(ReplayError::StateMachine)?;
        }
        if sm.applied_index() != start.applied {
            return Err(refused(format!(
                "the state machine starts at applied index {} but the recording at {}",
                sm.applied_index(),
                start.applied
            )));
        }
        let base = Instant::now();
        let logger = Logger::root(slog::Discard, slog::o!());
        let mut core = Replica::new(
            start.config,
            store,
            sm,
            start.applied,
            ReplayHost::default(),
            Arc::new(Shared::new()),
            logger,
            Faults::none(),
            start.incarnation,
            base,
        )
        .map_err(|e| refused(e.to_string()))?;
        let got = std::mem::take(&mut core.host_mut().effects);
        let segment = Segment {
            core,
            tap,
            base,
            index,
        };
        Ok((segment, got))
    }

    /// Replays one input record; `Some` when its effects differ from the recording's.
    fn input(
        &mut self,
        d: &mut Dec<'_>,
        n: u64,
        report: &mut ReplayReport,
    ) -> Result<Option<Mismatch>, String> {
        let now = codec::after(self.base, d.duration("the input's time")?)?;
        let input = Input::decode(d, self.base)?;
        let failure = recorder::decode_failure(d)?;
        let expected = Effects::decode(d)?;
        d.finish("the input record")?;
        let what = input.name();
        self.tap.lock().begin(failure.clone());
        self.apply(input, now);
        let got = std::mem::take(&mut self.core.host_mut().effects);
        let (failed, unreached) = self.tap.lock().end();
        report.inputs += 1;
        report.messages += u64::from(got.messages);
        report.entries_applied += u64::from(got.applied);
        let failed = failed.or(unreached.map(|f| StoreFailure {
            detail: "never reached".to_owned(),
            ..f
        }));
        Ok(self.compare(Some(n), what, expected, got, failure, failed))
    }

    fn apply(&mut self, input: Input<'static>, now: Instant) {
        let core = &mut self.core;
        match input {
            Input::Step(m) => core.step(m.into_owned(), now),
            Input::Unreachable(peer) => core.report_unreachable(peer),
            Input::ReportSnapshot(peer, status) => core.report_snapshot(peer, status),
            Input::Propose(data) => core.propose(data, (), None),
            Input::FlushProposals => core.flush_proposals(),
            Input::ConfChange {
                change,
                joining,
                deadline,
            } => core.propose_conf_change(change.into_owned(), joining.into_owned(), deadline, ()),
            Input::Read {
                consistency,
                deadline,
            } => core.read(consistency, deadline, (), now),
            Input::TransferLeader { to, deadline } => core.transfer_leader(to, deadline, ()),
            Input::Campaign => core.campaign(),
            Input::BeginShutdown { graceful } => core.begin_shutdown(graceful, now),
            Input::SnapshotNow => {
                let result = core.snapshot_now();
                let result = result.as_ref().map(|i| *i).map_err(error_kind);
                core.host_mut().effects.returned(result);
            }
            Input::Tick => core.tick(now),
            Input::Drive => {
                let result = core.drive(now);
                let result = result.as_ref().map(|()| None).map_err(error_kind);
                core.host_mut().effects.returned(result);
            }
            Input::Exit => core.exit(),
        }
    }

    fn compare(
        &self,
        input: Option<u64>,
        what: &'static str,
        expected: Effects,
        got: Effects,
        expected_failure: Option<StoreFailure>,
        got_failure: Option<StoreFailure>,
    ) -> Option<Mismatch> {
        let at = |f: &Option<StoreFailure>| f.as_ref().map(|f| (f.call, f.op));
        let show = |e: &Effects, f: &Option<StoreFailure>| {
            let failed = f.as_ref().map_or(String::new(), |f| {
                format!(", write {} ({}) failed", f.call, f.op.name())
            });
            format!(
                "effects {:#018x} ({} messages, {} applied{failed})",
                e.hash, e.messages, e.applied
            )
        };
        if expected == got && at(&expected_failure) == at(&got_failure) {
            return None;
        }
        Some(Mismatch {
            segment: self.index,
            input,
            what,
            expected: show(&expected, &expected_failure),
            got: show(&got, &got_failure),
        })
    }

    /// Compares the end state (when the recording has one) and finishes the report.
    fn end(&self, expected: Option<&EndState>, report: &mut ReplayReport) -> Option<Mismatch> {
        let got = EndState::of(&self.core);
        report.final_digest = got.digest;
        let Some(expected) = expected else {
            report.unfinished += 1;
            return None;
        };
        // A state machine without a digest in the recording is not compared.
        let digest_differs = expected.digest.is_some() && expected.digest != got.digest;
        if expected.hard_state == got.hard_state
            && expected.last_index == got.last_index
            && !digest_differs
        {
            return None;
        }
        let show = |e: &EndState| {
            let (term, vote, commit) = e.hard_state;
            let digest = e.digest.map_or("none".to_owned(), |d| format!("{d:#018x}"));
            format!(
                "term {term}, vote {vote}, commit {commit}, last index {}, digest {digest}",
                e.last_index
            )
        };
        Some(Mismatch {
            segment: self.index,
            input: None,
            what: "end",
            expected: show(expected),
            got: show(&got),
        })
    }
}
