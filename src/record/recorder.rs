//! The recording side: [`Effects`], the digest of what the core emitted for one input,
//! and [`Recorder`], which the runtime feeds each input and its effects and which writes
//! them, framed, to the file within its byte bound.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, HardState, Message, Snapshot};
use slog::{info, warn, Logger};

use super::codec::{self, Enc, Input};
use super::store::{StoreFailure, StoreTap};
use super::RecordTo;
use crate::config::Config;
use crate::digest::fnv1a;
use crate::error::{MembershipError, ProposeError, ReadError, StateMachineError};
use crate::log_store::LogStore;
use crate::proposals::WriteToken;
use crate::replica::{Host, Replica};
use crate::state_machine::StateMachine;

/// Bytes the writer buffers before it writes to the file.
const BUFFER_BYTES: usize = 64 << 10;

/// A running digest (FNV-1a, 64 bits) of one input's effects, with counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Effects {
    pub(crate) hash: u64,
    pub(crate) messages: u32,
    pub(crate) applied: u32,
}

impl Default for Effects {
    fn default() -> Self {
        Effects {
            hash: crate::digest::FNV_START,
            messages: 0,
            applied: 0,
        }
    }
}

impl Effects {
    fn fold(&mut self, tag: u8, bytes: &[u8]) {
        let h = fnv1a(self.hash, &[tag]);
        let h = fnv1a(h, &(bytes.len() as u64).to_le_bytes());
        self.hash = fnv1a(h, bytes);
    }

    fn outcome(&mut self, tag: u8, result: Result<&[u8], String>) {
        match result {
            Ok(bytes) => self.fold(tag, bytes),
            Err(e) => self.fold(tag | 0x80, e.as_bytes()),
        }
    }

    /// Messages the core sent: their encoded bytes.
    pub(crate) fn sent(&mut self, messages: &[Message]) {
        for m in messages {
            self.messages += 1;
            self.fold(1, &m.write_to_bytes().unwrap_or_default());
        }
    }

    pub(crate) fn peer_added(&mut self, id: u64, context: &[u8]) {
        self.fold(2, &[&id.to_le_bytes()[..], context].concat());
    }

    pub(crate) fn peer_removed(&mut self, id: u64) {
        self.fold(3, &id.to_le_bytes());
    }

    pub(crate) fn proposed<R>(&mut self, result: &Result<(R, WriteToken), ProposeError>) {
        let at = |t: &WriteToken| [t.index().to_le_bytes(), t.term().to_le_bytes()].concat();
        self.outcome(
            4,
            result
                .as_ref()
                .map(|(_, t)| at(t))
                .as_deref()
                .map_err(ToString::to_string),
        );
    }

    pub(crate) fn conf_change_done(&mut self, result: &Result<ConfState, MembershipError>) {
        let cs = result
            .as_ref()
            .map(|cs| cs.write_to_bytes().unwrap_or_default());
        self.outcome(5, cs.as_deref().map_err(ToString::to_string));
    }

    pub(crate) fn read_done<M>(&mut self, result: &Result<&M, ReadError>) {
        self.outcome(
            6,
            result
                .as_ref()
                .map(|_| &[][..])
                .map_err(ToString::to_string),
        );
    }

    pub(crate) fn transfer_done(&mut self, result: &Result<(), MembershipError>) {
        self.outcome(
            7,
            result
                .as_ref()
                .map(|_| &[][..])
                .map_err(ToString::to_string),
        );
    }

    pub(crate) fn applied_entry(&mut self, index: u64, term: u64) {
        self.applied += 1;
        self.fold(8, &[index.to_le_bytes(), term.to_le_bytes()].concat());
    }

    /// What a call returned (`snapshot_now`, `drive`): Ok with its value, or the kind of
    /// error (not its text: a replay store words a recorded store error its own way).
    pub(crate) fn returned(&mut self, result: Result<Option<u64>, &'static str>) {
        match result {
            Ok(None) => self.fold(9, &[0]),
            Ok(Some(v)) => self.fold(9, &[&[1][..], &v.to_le_bytes()].concat()),
            Err(kind) => self.fold(9 | 0x80, kind.as_bytes()),
        }
    }

    pub(crate) fn encode(&self, e: &mut Enc) {
        e.u64(self.hash);
        e.u32(self.messages);
        e.u32(self.applied);
    }

    pub(crate) fn decode(d: &mut codec::Dec<'_>) -> Result<Effects, String> {
        Ok(Effects {
            hash: d.u64("the effects digest")?,
            messages: d.u32("the message count")?,
            applied: d.u32("the applied count")?,
        })
    }
}

/// The store's contents as raft-rs reads them at start, plus what the core starts from.
pub(crate) struct StartState {
    pub(crate) config: Config,
    pub(crate) incarnation: u64,
    pub(crate) applied: u64,
    pub(crate) hard_state: HardState,
    pub(crate) conf_state: ConfState,
    pub(crate) snapshot: Snapshot,
    /// The compaction point: (index, term) of the entry before the first.
    pub(crate) truncated: (u64, u64),
    pub(crate) entries: Vec<raft::eraftpb::Entry>,
    pub(crate) sm_snapshot: Vec<u8>,
}

impl StartState {
    /// Reads `store` the way raft-rs does and the state machine's snapshot.
    ///
    /// # Errors
    ///
    /// What failed to read, as text (the recorder then records nothing).
    pub(crate) fn capture<S: LogStore, M: StateMachine>(
        config: &Config,
        incarnation: u64,
        applied: u64,
        store: &S,
        sm: &M,
    ) -> Result<StartState, String> {
        let raft_err = |what: &str, e: raft::Error| format!("reading the store's {what}: {e}");
        let state = store
            .initial_state()
            .map_err(|e| raft_err("initial state", e))?;
        let first = store
            .first_index()
            .map_err(|e| raft_err("first index", e))?;
        let last = store.last_index().map_err(|e| raft_err("last index", e))?;
        if first == 0 {
            return Err("the store's first index is 0 (raft-rs logs start at 1)".to_owned());
        }
        let truncated_term = store
            .term(first - 1)
            .map_err(|e| raft_err("compaction point", e))?;
        let entries = store
            .entries(first, last + 1, None, raft::GetEntriesContext::empty(false))
            .map_err(|e| raft_err("entries", e))?;
        let snapshot = store.snapshot(0, 0).unwrap_or_default();
        let sm_snapshot = sm
            .snapshot()
            .map_err(|e: StateMachineError| format!("the state machine's snapshot: {e}"))?;
        let mut config = config.clone();
        config.record = None;
        Ok(StartState {
            config,
            incarnation,
            applied,
            hard_state: state.hard_state,
            conf_state: state.conf_state,
            snapshot,
            truncated: (first - 1, truncated_term),
            entries,
            sm_snapshot: sm_snapshot.to_vec(),
        })
    }

    pub(crate) fn encode(&self, e: &mut Enc) {
        codec::encode_config(e, &self.config);
        e.u64(self.incarnation);
        e.u64(self.applied);
        e.proto(&self.hard_state);
        e.proto(&self.conf_state);
        e.proto(&self.snapshot);
        e.u64(self.truncated.0);
        e.u64(self.truncated.1);
        e.u32(self.entries.len() as u32);
        for entry in &self.entries {
            e.proto(entry);
        }
        e.bytes(&self.sm_snapshot);
    }

    pub(crate) fn decode(d: &mut codec::Dec<'_>) -> Result<StartState, String> {
        let config = codec::decode_config(d)?;
        let incarnation = d.u64("the incarnation")?;
        let applied = d.u64("the applied index")?;
        let hard_state = d.proto("the HardState")?;
        let conf_state = d.proto("the ConfState")?;
        let snapshot = d.proto("the stored snapshot")?;
        let truncated = (
            d.u64("the compaction index")?,
            d.u64("the compaction term")?,
        );
        let n = d.u32("the entry count")?;
        let entries = (0..n)
            .map(|_| d.proto("an entry"))
            .collect::<Result<_, _>>()?;
        let sm_snapshot = d.bytes("the state machine's snapshot")?.to_vec();
        Ok(StartState {
            config,
            incarnation,
            applied,
            hard_state,
            conf_state,
            snapshot,
            truncated,
            entries,
            sm_snapshot,
        })
    }
}

/// What a segment ends with, compared by the replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EndState {
    pub(crate) hard_state: (u64, u64, u64),
    pub(crate) last_index: u64,
    pub(crate) digest: Option<u64>,
}

impl EndState {
    pub(crate) fn of<S: LogStore, M: StateMachine, H: Host<M>>(
        replica: &Replica<S, M, H>,
    ) -> EndState {
        let raft = &replica.raw().raft;
        let hs = raft.hard_state();
        EndState {
            hard_state: (hs.term, hs.vote, hs.commit),
            last_index: raft.raft_log.last_index(),
            digest: replica.state_machine().digest(),
        }
    }

    pub(crate) fn encode(&self, e: &mut Enc) {
        let (term, vote, commit) = self.hard_state;
        for v in [term, vote, commit, self.last_index] {
            e.u64(v);
        }
        e.bool(self.digest.is_some());
        e.u64(self.digest.unwrap_or(0));
    }

    pub(crate) fn decode(d: &mut codec::Dec<'_>) -> Result<EndState, String> {
        let hard_state = (d.u64("term")?, d.u64("vote")?, d.u64("commit")?);
        let last_index = d.u64("last index")?;
        let has = d.bool("digest")?;
        let digest = d.u64("digest")?;
        Ok(EndState {
            hard_state,
            last_index,
            digest: has.then_some(digest),
        })
    }
}

/// Writes one node's recording: a segment per start of its core (see the module docs
/// of `record`). Never fails the node: an I/O error stops the recording with a warning.
pub(crate) struct Recorder {
    /// `None` once the recording stopped (bound reached, I/O error, segment ended).
    out: Option<BufWriter<File>>,
    /// Bytes the file may still grow by, the truncation marker's frame held in reserve.
    budget: u64,
    /// The segment's start: instants are written as offsets from it.
    start: Instant,
    /// The record being built: the input, then its effects.
    record: Enc,
    /// Whether an input is between `begin_input` and `end_input`.
    open: bool,
    tap: Arc<Mutex<StoreTap>>,
    logger: Logger,
    path: String,
}

/// The truncation marker's frame: header plus its one-byte payload.
const MARKER_BYTES: u64 = codec::FRAME_HEADER_LEN as u64 + 1;

impl Recorder {
    /// Opens (or creates) the file and starts a segment at `start`. `None`, with a
    /// warning, when the file cannot be used: the node runs unrecorded.
    pub(crate) fn open(to: &RecordTo, start: Instant, logger: &Logger) -> Option<Recorder> {
        let path = to.path.display().to_string();
        match Self::open_file(to, logger) {
            Ok((_, len, truncated)) if truncated || len + MARKER_BYTES > to.max_bytes => {
                warn!(logger, "not recording: the recording file reached its size bound";
                    "path" => path, "bytes" => len, "max_bytes" => to.max_bytes);
                None
            }
            Ok((file, len, _)) => Some(Recorder {
                out: Some(BufWriter::with_capacity(BUFFER_BYTES, file)),
                budget: to
                    .max_bytes
                    .saturating_sub(len)
                    .saturating_sub(MARKER_BYTES),
                start,
                record: Enc::default(),
                open: false,
                tap: Arc::default(),
                logger: logger.clone(),
                path,
            }),
            Err(e) => {
                warn!(logger, "not recording: the recording file cannot be used";
                    "path" => path, "error" => e);
                None
            }
        }
    }

    /// The file, positioned at its end, its length (a new file gets the header), and
    /// whether it ends with the truncation marker (then it takes no more segments). A
    /// tail cut inside a frame (a process that crashed while writing) is cut off, with a
    /// warning, so the new segment follows whole frames.
    fn open_file(to: &RecordTo, logger: &Logger) -> Result<(File, u64, bool), String> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&to.path)
            .map_err(|e| e.to_string())?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        if len == 0 {
            let header = codec::header();
            file.write_all(&header).map_err(|e| e.to_string())?;
            return Ok((file, header.len() as u64, false));
        }
        let mut head = [0; codec::HEADER_LEN];
        file.read_exact(&mut head)
            .map_err(|e| format!("reading its header: {e}"))?;
        codec::check_header(&head)?;
        let whole = whole_frames_end(&file, len).map_err(|e| format!("reading it: {e}"))?;
        if whole < len {
            warn!(logger, "the recording ends inside a frame (a crash while writing?); \
                cutting it off before this segment"; "path" => to.path.display().to_string(),
                "bytes" => len, "cut_at" => whole);
            file.set_len(whole)
                .map_err(|e| format!("cutting the cut frame off: {e}"))?;
        }
        let mut tail = [0; MARKER_BYTES as usize];
        let truncated = whole >= (codec::HEADER_LEN as u64) + MARKER_BYTES
            && file.seek(SeekFrom::Start(whole - MARKER_BYTES)).is_ok()
            && file.read_exact(&mut tail).is_ok()
            && tail[..] == codec::frame(&[codec::KIND_TRUNCATED])[..];
        Ok((file, whole, truncated))
    }

    /// Whether records are still written (not past the bound, no I/O error).
    pub(crate) fn is_recording(&self) -> bool {
        self.out.is_some()
    }

    /// The tap the recorded store reports failed writes to.
    pub(crate) fn tap(&self) -> Arc<Mutex<StoreTap>> {
        self.tap.clone()
    }

    /// Starts the segment's first record; [`Recorder::end_input`] ends it with the
    /// effects of the core's construction.
    pub(crate) fn begin_start(&mut self, state: &StartState) {
        self.record = Enc::default();
        self.record.u8(codec::KIND_START);
        state.encode(&mut self.record);
        self.tap.lock().begin(None);
        self.open = true;
    }

    /// Starts the record of one input at `now`.
    pub(crate) fn begin_input(&mut self, now: Instant, input: &Input<'_>) {
        self.record = Enc::default();
        self.record.u8(codec::KIND_INPUT);
        self.record
            .duration(now.saturating_duration_since(self.start));
        input.encode(&mut self.record, self.start);
        self.tap.lock().begin(None);
        self.open = true;
    }

    /// Ends the record begun last with the input's effects and the write that failed
    /// in it, and writes it.
    pub(crate) fn end_input(&mut self, effects: Effects) {
        if !std::mem::take(&mut self.open) {
            return;
        }
        let (failed, _) = self.tap.lock().end();
        encode_failure(&mut self.record, failed.as_ref());
        effects.encode(&mut self.record);
        let payload = std::mem::take(&mut self.record.0);
        self.write(&payload);
    }

    /// Ends the segment with the core's final state and flushes. `complete` is false
    /// when the last input did not finish (a kill, a panic): the replay then does not
    /// compare the end state.
    pub(crate) fn end_segment(&mut self, end: Option<&EndState>) {
        // An input begun and never ended (a panic in the core) leaves the end unknown.
        let end = end.filter(|_| !std::mem::take(&mut self.open));
        let mut e = Enc::default();
        e.u8(codec::KIND_END);
        e.bool(end.is_some());
        if let Some(end) = end {
            end.encode(&mut e);
        }
        self.write(&e.0);
        if let Some(mut out) = self.out.take() {
            if let Err(e) = out.flush() {
                warn!(self.logger, "recording: flushing the file failed";
                    "path" => &self.path, "error" => %e);
            }
        }
    }

    fn write(&mut self, payload: &[u8]) {
        let Some(out) = &mut self.out else {
            return;
        };
        let framed = codec::frame(payload);
        if framed.len() as u64 > self.budget {
            let marker = codec::frame(&[codec::KIND_TRUNCATED]);
            let result = out.write_all(&marker).and_then(|()| out.flush());
            warn!(self.logger, "recording reached its size bound; recording stopped";
                "path" => &self.path, "error" => ?result.err());
            self.out = None;
            return;
        }
        if let Err(e) = out.write_all(&framed) {
            warn!(self.logger, "recording stopped: writing the file failed";
                "path" => &self.path, "error" => %e);
            self.out = None;
            return;
        }
        self.budget -= framed.len() as u64;
    }

    /// Logs where the recording goes (once per segment).
    pub(crate) fn announce(&self) {
        info!(self.logger, "recording the core's inputs"; "path" => &self.path,
            "bytes_left" => self.budget);
    }
}

/// Where the last whole frame of a file of `len` bytes ends (frame lengths only; the
/// replay checks the CRCs).
fn whole_frames_end(file: &File, len: u64) -> std::io::Result<u64> {
    let mut reader = BufReader::new(file);
    let mut at = codec::HEADER_LEN as u64;
    reader.seek(SeekFrom::Start(at))?;
    let mut head = [0; codec::FRAME_HEADER_LEN];
    while at + codec::FRAME_HEADER_LEN as u64 <= len {
        reader.read_exact(&mut head)?;
        let payload = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
        let next = at + codec::FRAME_HEADER_LEN as u64 + payload;
        if next > len {
            break;
        }
        reader.seek_relative(payload as i64)?;
        at = next;
    }
    Ok(at)
}

pub(crate) fn encode_failure(e: &mut Enc, failure: Option<&StoreFailure>) {
    e.bool(failure.is_some());
    if let Some(f) = failure {
        e.u32(f.call);
        e.u8(f.op as u8);
        e.bytes(f.detail.as_bytes());
    }
}

pub(crate) fn decode_failure(d: &mut codec::Dec<'_>) -> Result<Option<StoreFailure>, String> {
    if !d.bool("the store failure flag")? {
        return Ok(None);
    }
    let call = d.u32("the failed write's number")?;
    let op = d.u8("the failed write")?;
    let op = super::store::WriteOp::from_u8(op).ok_or_else(|| format!("unknown write {op}"))?;
    let detail = String::from_utf8_lossy(d.bytes("the store error")?).into_owned();
    Ok(Some(StoreFailure { call, op, detail }))
}
