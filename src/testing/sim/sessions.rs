//! [`SessionWorkload`]: any workload, with its clients in sessions ([`crate::Sessions`]).

use bytes::Bytes;

use super::{ClientOp, SimRng, Workload};
use crate::sessions::{self, Session, SessionMachine, SessionReply, Sessions};
use crate::state_machine::StateMachine;
use crate::testing::linearizability::Model;

type Input<W> = <<W as Workload>::Model as Model>::Input;
type Output<W> = <<W as Workload>::Model as Model>::Output;

/// Runs workload `W` with its state machine wrapped in [`Sessions`]: each client opens a
/// session before its first write, numbers its writes, and retries a write whose
/// outcome is unknown (a timeout, a lost leadership, a crash) with the same sequence
/// number on another node until one answers. The simulator then checks that no
/// session command is applied at two log indexes, on top of its usual checks. Half the
/// reads of a client that has written are token reads instead (its last write's
/// `WriteToken`, `ReadConsistency::AtLeast`, on a random node), checked to be served
/// only once that node applied the write; they are not linearizable, so they stay out
/// of the history.
///
/// # Examples
///
/// ```
/// use raftnode::testing::sim::{self, kv::KvWorkload, SessionWorkload, SimConfig};
///
/// let workload = SessionWorkload::new(KvWorkload::default());
/// let config = SimConfig { steps: 2_000, ..SimConfig::from_seed(7) };
/// let report = sim::run(&workload, &config)?;
/// assert!(report.sessions > 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct SessionWorkload<W> {
    /// The workload whose clients get sessions.
    pub inner: W,
    /// Test-only: wrap the machine with its deduplication off
    /// (`Sessions::without_dedup_for_tests`), to prove the exactly-once check catches
    /// the double applies that follow.
    pub dedup_off: bool,
}

impl<W> SessionWorkload<W> {
    /// `inner` with sessions, deduplication on.
    pub fn new(inner: W) -> Self {
        SessionWorkload {
            inner,
            dedup_off: false,
        }
    }
}

impl<W> Workload for SessionWorkload<W>
where
    W: Workload,
    W::Machine: SessionMachine,
    <W::Machine as StateMachine>::Response: Clone,
{
    type Machine = Sessions<W::Machine>;
    type Model = W::Model;

    fn model(&self) -> W::Model {
        self.inner.model()
    }

    fn new_machine(&self) -> Sessions<W::Machine> {
        let machine =
            Sessions::new(self.inner.new_machine()).expect("the simulator's machines start empty");
        if self.dedup_off {
            return machine.without_dedup_for_tests();
        }
        machine
    }

    fn next_op(&self, rng: &mut SimRng) -> ClientOp<Input<W>> {
        self.inner.next_op(rng)
    }

    fn write_output(
        &self,
        input: &Input<W>,
        response: SessionReply<<W::Machine as StateMachine>::Response>,
    ) -> Output<W> {
        match response {
            SessionReply::Applied(r) | SessionReply::Repeated(r) => {
                self.inner.write_output(input, r)
            }
            SessionReply::Registered(_) | SessionReply::Rejected(_) => panic!(
                "the simulator hands registrations and rejected session replies to \
                 `registered` and `session_lost`, never to write_output"
            ),
        }
    }

    fn read_output(&self, machine: &Sessions<W::Machine>, input: &Input<W>) -> Output<W> {
        self.inner.read_output(machine.inner(), input)
    }

    fn final_reads(&self) -> Vec<Input<W>> {
        self.inner.final_reads()
    }

    fn register_command(&self) -> Option<Bytes> {
        Some(Sessions::<W::Machine>::register_command())
    }

    fn registered(
        &self,
        response: &SessionReply<<W::Machine as StateMachine>::Response>,
    ) -> Option<u64> {
        match response {
            SessionReply::Registered(id) => Some(*id),
            _ => None,
        }
    }

    fn in_session(&self, session: u64, seq: u64, command: &Bytes) -> Bytes {
        Session::resume(session, seq)
            .command(command)
            .bytes()
            .clone()
    }

    fn session_lost(
        &self,
        response: &SessionReply<<W::Machine as StateMachine>::Response>,
    ) -> bool {
        matches!(
            response,
            SessionReply::Rejected(_) | SessionReply::Registered(_)
        )
    }

    fn fresh_apply(
        command: &[u8],
        response: &SessionReply<<W::Machine as StateMachine>::Response>,
    ) -> Option<(u64, u64)> {
        match response {
            SessionReply::Applied(_) => sessions::session_of(command),
            _ => None,
        }
    }
}
