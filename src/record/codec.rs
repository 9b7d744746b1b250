//! The recording's file format: a versioned header, then frames (`length`, `crc32`,
//! payload), each payload one record whose first byte is its kind. Encoding never fails;
//! decoding returns a message naming what is wrong, never panics.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft::eraftpb::{ConfChangeV2, Message};
use raft::SnapshotStatus;

use crate::config::{Config, SnapshotPolicy};
use crate::node::ReadConsistency;
use crate::proposals::WriteToken;

/// The first bytes of every recording.
pub(crate) const MAGIC: &[u8; 12] = b"RAFTNODE-REC";
/// The format version this build writes and reads.
pub(crate) const VERSION: u32 = 1;
/// Header: magic, then the version (u32 LE).
pub(crate) const HEADER_LEN: usize = MAGIC.len() + 4;
/// Frame header: payload length (u32 LE), then the payload's CRC-32 (u32 LE).
pub(crate) const FRAME_HEADER_LEN: usize = 8;

/// Record kinds, the payload's first byte.
pub(crate) const KIND_START: u8 = 1;
pub(crate) const KIND_INPUT: u8 = 2;
pub(crate) const KIND_END: u8 = 3;
pub(crate) const KIND_TRUNCATED: u8 = 4;

/// The header of a new recording.
pub(crate) fn header() -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&VERSION.to_le_bytes());
    h
}

/// `payload` framed: length, CRC-32, payload.
pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks the header; returns the bytes after it.
pub(crate) fn check_header(file: &[u8]) -> Result<&[u8], String> {
    if file.len() < HEADER_LEN || &file[..MAGIC.len()] != MAGIC {
        return Err("not a raftnode recording (no RAFTNODE-REC header)".to_owned());
    }
    let version = u32::from_le_bytes(file[MAGIC.len()..HEADER_LEN].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!(
            "format version {version}; this build reads version {VERSION}"
        ));
    }
    Ok(&file[HEADER_LEN..])
}

/// A frame's payload and the offset of its frame in the file.
pub(crate) type Frame<'a> = (usize, &'a [u8]);

/// Splits the frames after the header into payloads, each with its offset in the file.
///
/// # Errors
///
/// The offset and what is wrong with the first frame that is cut short or fails its
/// CRC.
pub(crate) fn frames(body: &[u8]) -> Result<Vec<Frame<'_>>, (usize, String)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let offset = HEADER_LEN + at;
        let rest = &body[at..];
        if rest.len() < FRAME_HEADER_LEN {
            return Err((offset, "the file ends inside a frame header".to_owned()));
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let Some(payload) = rest.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
            return Err((
                offset,
                format!(
                    "the file ends inside a frame of {len} bytes ({} left)",
                    rest.len() - FRAME_HEADER_LEN
                ),
            ));
        };
        if crc32fast::hash(payload) != crc {
            return Err((offset, "CRC mismatch: the frame is corrupt".to_owned()));
        }
        out.push((offset, payload));
        at += FRAME_HEADER_LEN + len;
    }
    Ok(out)
}

/// Builds a record's payload.
#[derive(Default)]
pub(crate) struct Enc(pub(crate) Vec<u8>);

impl Enc {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    pub(crate) fn duration(&mut self, d: Duration) {
        self.u64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }
    pub(crate) fn ids(&mut self, ids: &[u64]) {
        self.u32(ids.len() as u32);
        for id in ids {
            self.u64(*id);
        }
    }
    /// A protobuf message, encoded.
    pub(crate) fn proto(&mut self, m: &impl protobuf::Message) {
        // Encoding a well-formed message into a Vec does not fail.
        self.bytes(&m.write_to_bytes().unwrap_or_default());
    }
}

/// Reads a record's payload; every read names the field it was after.
pub(crate) struct Dec<'a> {
    rest: &'a [u8],
}

impl<'a> Dec<'a> {
    pub(crate) fn new(payload: &'a [u8]) -> Self {
        Dec { rest: payload }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.rest.len() < n {
            return Err(format!("the record ends inside {what}"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    pub(crate) fn usize(&mut self, what: &str) -> Result<usize, String> {
        usize::try_from(self.u64(what)?).map_err(|_| format!("{what} does not fit a usize"))
    }
    pub(crate) fn bool(&mut self, what: &str) -> Result<bool, String> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("{what}: {b} is not a bool")),
        }
    }
    pub(crate) fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }
    pub(crate) fn duration(&mut self, what: &str) -> Result<Duration, String> {
        Ok(Duration::from_nanos(self.u64(what)?))
    }
    pub(crate) fn ids(&mut self, what: &str) -> Result<Vec<u64>, String> {
        let n = self.u32(what)? as usize;
        if n > self.rest.len() / 8 {
            return Err(format!("{what}: {n} ids do not fit the record"));
        }
        (0..n).map(|_| self.u64(what)).collect()
    }
    pub(crate) fn proto<P: protobuf::Message>(&mut self, what: &str) -> Result<P, String> {
        let bytes = self.bytes(what)?;
        P::parse_from_bytes(bytes).map_err(|e| format!("{what}: {e}"))
    }
    /// Fails unless every byte was read.
    pub(crate) fn finish(&self, what: &str) -> Result<(), String> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(format!("{} bytes left over after {what}", self.rest.len()))
        }
    }
}

/// Writes every field of `config` but `record` (a replay records nothing). The
/// destructuring makes a new `Config` field a compile error here until it is recorded.
pub(crate) fn encode_config(e: &mut Enc, config: &Config) {
    let Config {
        id,
        initial_voters,
        election_ticks,
        heartbeat_ticks,
        tick_interval,
        max_size_per_msg,
        max_inflight_msgs,
        check_quorum,
        pre_vote,
        lease_reads,
        max_clock_drift,
        max_uncommitted_bytes,
        max_committed_bytes_per_ready,
        max_proposal_bytes,
        max_pending_requests,
        max_pending_messages,
        max_batch,
        snapshot,
        shutdown_transfer_timeout,
        election_storm_threshold,
        election_backoff_limit,
        election_tick_range,
        quiesce_after_timeouts,
        catch_up_lag,
        checkpoint_every,
        stop_on_divergence,
        record: _,
        // Proposal timing observes, it decides nothing: a replay does not time.
        proposal_timing: _,
        slow_proposal: _,
    } = config;
    e.u64(*id);
    e.ids(initial_voters);
    for n in [*election_ticks, *heartbeat_ticks] {
        e.u64(n as u64);
    }
    e.duration(*tick_interval);
    e.u64(*max_size_per_msg);
    e.u64(*max_inflight_msgs as u64);
    for b in [*check_quorum, *pre_vote, *lease_reads] {
        e.bool(b);
    }
    e.u64(max_clock_drift.to_bits());
    e.u64(*max_uncommitted_bytes);
    e.u64(*max_committed_bytes_per_ready);
    for n in [
        *max_proposal_bytes,
        *max_pending_requests,
        *max_pending_messages,
        *max_batch,
    ] {
        e.u64(n as u64);
    }
    e.u64(snapshot.every_applied);
    e.u64(snapshot.trailing_entries);
    e.duration(snapshot.report_timeout);
    e.duration(*shutdown_transfer_timeout);
    e.u64(*election_storm_threshold);
    e.u64(*election_backoff_limit as u64);
    e.bool(election_tick_range.is_some());
    let (min, max) = election_tick_range.unwrap_or((0, 0));
    e.u64(min as u64);
    e.u64(max as u64);
    e.u64(*quiesce_after_timeouts as u64);
    e.u64(*catch_up_lag);
    e.u64(*checkpoint_every);
    e.bool(*stop_on_divergence);
}

/// Reads what [`encode_config`] wrote, `record` left `None`.
pub(crate) fn decode_config(d: &mut Dec<'_>) -> Result<Config, String> {
    let mut c = Config::new(d.u64("config.id")?);
    c.initial_voters = d.ids("config.initial_voters")?;
    c.election_ticks = d.usize("config.election_ticks")?;
    c.heartbeat_ticks = d.usize("config.heartbeat_ticks")?;
    c.tick_interval = d.duration("config.tick_interval")?;
    c.max_size_per_msg = d.u64("config.max_size_per_msg")?;
    c.max_inflight_msgs = d.usize("config.max_inflight_msgs")?;
    c.check_quorum = d.bool("config.check_quorum")?;
    c.pre_vote = d.bool("config.pre_vote")?;
    c.lease_reads = d.bool("config.lease_reads")?;
    c.max_clock_drift = f64::from_bits(d.u64("config.max_clock_drift")?);
    c.max_uncommitted_bytes = d.u64("config.max_uncommitted_bytes")?;
    c.max_committed_bytes_per_ready = d.u64("config.max_committed_bytes_per_ready")?;
    c.max_proposal_bytes = d.usize("config.max_proposal_bytes")?;
    c.max_pending_requests = d.usize("config.max_pending_requests")?;
    c.max_pending_messages = d.usize("config.max_pending_messages")?;
    c.max_batch = d.usize("config.max_batch")?;
    let mut snapshot = SnapshotPolicy::default();
    snapshot.every_applied = d.u64("config.snapshot.every_applied")?;
    snapshot.trailing_entries = d.u64("config.snapshot.trailing_entries")?;
    snapshot.report_timeout = d.duration("config.snapshot.report_timeout")?;
    c.snapshot = snapshot;
    c.shutdown_transfer_timeout = d.duration("config.shutdown_transfer_timeout")?;
    c.election_storm_threshold = d.u64("config.election_storm_threshold")?;
    c.election_backoff_limit = d.usize("config.election_backoff_limit")?;
    let pinned = d.bool("config.election_tick_range")?;
    let range = (
        d.usize("config.election_tick_range")?,
        d.usize("config.election_tick_range")?,
    );
    c.election_tick_range = pinned.then_some(range);
    c.quiesce_after_timeouts = d.usize("config.quiesce_after_timeouts")?;
    c.catch_up_lag = d.u64("config.catch_up_lag")?;
    c.checkpoint_every = d.u64("config.checkpoint_every")?;
    c.stop_on_divergence = d.bool("config.stop_on_divergence")?;
    c.validate()
        .map_err(|e| format!("the recorded config is invalid: {e}"))?;
    Ok(c)
}

/// One call into the core, as the runtime made it. Instants are written as offsets from
/// the segment's start and read back against the replay's own base instant.
#[derive(Debug, Clone)]
pub(crate) enum Input<'a> {
    Step(Cow<'a, Message>),
    Unreachable(u64),
    ReportSnapshot(u64, SnapshotStatus),
    Propose(Bytes),
    FlushProposals,
    ConfChange {
        change: Cow<'a, ConfChangeV2>,
        joining: Cow<'a, [u64]>,
        deadline: Instant,
    },
    Read {
        consistency: ReadConsistency,
        deadline: Instant,
    },
    TransferLeader {
        to: u64,
        deadline: Instant,
    },
    Campaign,
    BeginShutdown {
        graceful: bool,
    },
    SnapshotNow,
    Tick,
    Drive,
    Exit,
}

impl Input<'_> {
    /// The name the replay report uses for this input.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Input::Step(_) => "step",
            Input::Unreachable(_) => "report_unreachable",
            Input::ReportSnapshot(..) => "report_snapshot",
            Input::Propose(_) => "propose",
            Input::FlushProposals => "flush_proposals",
            Input::ConfChange { .. } => "propose_conf_change",
            Input::Read { .. } => "read",
            Input::TransferLeader { .. } => "transfer_leader",
            Input::Campaign => "campaign",
            Input::BeginShutdown { .. } => "begin_shutdown",
            Input::SnapshotNow => "snapshot_now",
            Input::Tick => "tick",
            Input::Drive => "drive",
            Input::Exit => "exit",
        }
    }

    /// Writes the input's tag and fields; instants as offsets from `start`.
    pub(crate) fn encode(&self, e: &mut Enc, start: Instant) {
        let at = |i: Instant| i.saturating_duration_since(start);
        match self {
            Input::Step(m) => {
                e.u8(1);
                e.proto(m.as_ref());
            }
            Input::Unreachable(peer) => {
                e.u8(2);
                e.u64(*peer);
            }
            Input::ReportSnapshot(peer, status) => {
                e.u8(3);
                e.u64(*peer);
                e.bool(*status == SnapshotStatus::Failure);
            }
            Input::Propose(data) => {
                e.u8(4);
                e.bytes(data);
            }
            Input::FlushProposals => e.u8(5),
            Input::ConfChange {
                change,
                joining,
                deadline,
            } => {
                e.u8(6);
                e.proto(change.as_ref());
                e.ids(joining);
                e.duration(at(*deadline));
            }
            Input::Read {
                consistency,
                deadline,
            } => {
                e.u8(7);
                encode_consistency(e, *consistency);
                e.duration(at(*deadline));
            }
            Input::TransferLeader { to, deadline } => {
                e.u8(8);
                e.u64(*to);
                e.duration(at(*deadline));
            }
            Input::Campaign => e.u8(9),
            Input::BeginShutdown { graceful } => {
                e.u8(10);
                e.bool(*graceful);
            }
            Input::SnapshotNow => e.u8(11),
            Input::Tick => e.u8(12),
            Input::Drive => e.u8(13),
            Input::Exit => e.u8(14),
        }
    }

    /// Reads what [`Input::encode`] wrote; offsets become instants after `base`.
    pub(crate) fn decode(d: &mut Dec<'_>, base: Instant) -> Result<Input<'static>, String> {
        let at = |d: &mut Dec<'_>, what: &str| after(base, d.duration(what)?);
        Ok(match d.u8("the input's kind")? {
            1 => Input::Step(Cow::Owned(d.proto("step's message")?)),
            2 => Input::Unreachable(d.u64("report_unreachable's peer")?),
            3 => {
                let peer = d.u64("report_snapshot's peer")?;
                let status = match d.bool("report_snapshot's status")? {
                    true => SnapshotStatus::Failure,
                    false => SnapshotStatus::Finish,
                };
                Input::ReportSnapshot(peer, status)
            }
            4 => Input::Propose(Bytes::copy_from_slice(d.bytes("propose's data")?)),
            5 => Input::FlushProposals,
            6 => Input::ConfChange {
                change: Cow::Owned(d.proto("the conf change")?),
                joining: Cow::Owned(d.ids("the conf change's joining voters")?),
                deadline: at(d, "the conf change's deadline")?,
            },
            7 => Input::Read {
                consistency: decode_consistency(d)?,
                deadline: at(d, "the read's deadline")?,
            },
            8 => Input::TransferLeader {
                to: d.u64("transfer_leader's target")?,
                deadline: at(d, "transfer_leader's deadline")?,
            },
            9 => Input::Campaign,
            10 => Input::BeginShutdown {
                graceful: d.bool("begin_shutdown's graceful")?,
            },
            11 => Input::SnapshotNow,
            12 => Input::Tick,
            13 => Input::Drive,
            14 => Input::Exit,
            kind => return Err(format!("unknown input kind {kind}")),
        })
    }
}

/// `base + offset`, or an error where `Instant` cannot go that far.
pub(crate) fn after(base: Instant, offset: Duration) -> Result<Instant, String> {
    base.checked_add(offset)
        .ok_or_else(|| format!("a time {offset:?} after the start is out of range"))
}

fn encode_consistency(e: &mut Enc, consistency: ReadConsistency) {
    match consistency {
        ReadConsistency::Linearizable => e.u8(0),
        ReadConsistency::Lease => e.u8(1),
        ReadConsistency::Stale => e.u8(2),
        ReadConsistency::AtLeast(token) => {
            e.u8(3);
            e.u64(token.index());
            e.u64(token.term());
        }
    }
}

fn decode_consistency(d: &mut Dec<'_>) -> Result<ReadConsistency, String> {
    Ok(match d.u8("the read's consistency")? {
        0 => ReadConsistency::Linearizable,
        1 => ReadConsistency::Lease,
        2 => ReadConsistency::Stale,
        3 => ReadConsistency::AtLeast(WriteToken::new(
            d.u64("the read token's index")?,
            d.u64("the read token's term")?,
        )),
        kind => return Err(format!("unknown read consistency {kind}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves a config survives the round trip field by field (its Debug text covers
    /// every field) and a cut record is an error, not a panic.
    #[test]
    fn config_round_trips_and_a_cut_record_is_an_error() {
        let mut config = Config::new(3);
        config.initial_voters = vec![1, 2, 3];
        config.election_tick_range = Some((12, 30));
        config.max_clock_drift = 0.25;
        config.checkpoint_every = 50;
        let mut e = Enc::default();
        encode_config(&mut e, &config);
        let back = decode_config(&mut Dec::new(&e.0)).unwrap();
        assert_eq!(format!("{back:?}"), format!("{config:?}"));
        for cut in 0..e.0.len() {
            assert!(
                decode_config(&mut Dec::new(&e.0[..cut])).is_err(),
                "cut at {cut}"
            );
        }
    }

    /// Proves frames split back as written and a flipped bit or a cut tail is named.
    #[test]
    fn frames_check_their_crc_and_length() {
        let mut body = frame(b"one");
        body.extend(frame(b"two"));
        let got = frames(&body).unwrap();
        assert_eq!(
            got.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
            [b"one", b"two"]
        );
        let mut flipped = body.clone();
        flipped[9] ^= 1;
        assert!(frames(&flipped).unwrap_err().1.contains("CRC"));
        assert!(frames(&body[..body.len() - 1])
            .unwrap_err()
            .1
            .contains("ends inside"));
    }
}
