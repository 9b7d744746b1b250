//! What a replica knows about its peers beyond raft-rs's progress: when it last heard
//! from each, which told it they are shutting down, which the transport reported
//! unreachable, and which say this node was removed.
//!
//! Two decisions use it. A leadership hand-over (a transfer, or a graceful shutdown
//! of the leader) goes only to a voter heard from within the last election timeout
//! that neither announced it is stopping nor was reported unreachable since: raft-rs's
//! own `recent_active` is cleared at every quorum check and on every election, so it
//! cannot tell a healthy peer from a gone one at an arbitrary moment. And a node that
//! missed the commit of its own removal learns of it from its peers: when a majority of
//! its voters each say, from an applied index past its own, that it is not a member,
//! it was removed in between (node ids are never reused, docs/membership.md).
//!
//! Pure bookkeeping, in ticks: the replica feeds it and asks it.

/// Per-peer notes, for the few members of one group (a linear scan beats a map).
#[derive(Debug, Default)]
pub(crate) struct PeerWatch {
    peers: Vec<Peer>,
    /// Peers that said this node is not a member, each with its applied index then.
    removal_votes: Vec<(u64, u64)>,
    /// Removal notices sent in the current tick, to bound what a removed node's
    /// messages can make this node send.
    notices_this_tick: u32,
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    id: u64,
    /// The tick of the last message stepped from it.
    heard: Option<u64>,
    /// The tick it announced it is shutting down.
    stopping: Option<u64>,
    /// The transport reported it unreachable after the last message from it.
    unreachable: bool,
}

/// Removal notices a node sends per tick at most, whatever arrives.
pub(crate) const REMOVAL_NOTICES_PER_TICK: u32 = 8;

impl PeerWatch {
    fn peer(&mut self, id: u64) -> &mut Peer {
        let i = match self.peers.iter().position(|p| p.id == id) {
            Some(i) => i,
            None => {
                self.peers.push(Peer {
                    id,
                    heard: None,
                    stopping: None,
                    unreachable: false,
                });
                self.peers.len() - 1
            }
        };
        &mut self.peers[i]
    }

    /// A message from member `id` was stepped at `tick`.
    pub(crate) fn heard(&mut self, id: u64, tick: u64) {
        let p = self.peer(id);
        p.heard = Some(tick);
        p.unreachable = false;
    }

    /// Member `id` announced at `tick` that it is shutting down.
    pub(crate) fn stopping(&mut self, id: u64, tick: u64) {
        self.peer(id).stopping = Some(tick);
    }

    /// The transport reported member `id` unreachable.
    pub(crate) fn unreachable(&mut self, id: u64) {
        self.peer(id).unreachable = true;
    }

    /// Forgets `id` (it left the group).
    pub(crate) fn forget(&mut self, id: u64) {
        self.peers.retain(|p| p.id != id);
        self.removal_votes.retain(|(from, _)| *from != id);
    }

    /// Why leadership may not go to `id` at `tick`, in words for an error; `None` when it
    /// may: heard from within `window` ticks, not reported unreachable since, and no
    /// shutdown announced within the last `stopping_window` ticks (a node that restarts
    /// is a candidate again after that).
    pub(crate) fn why_not_lead(
        &self,
        id: u64,
        tick: u64,
        window: u64,
        stopping_window: u64,
    ) -> Option<&'static str> {
        let Some(p) = self.peers.iter().find(|p| p.id == id) else {
            return Some("has not been heard from");
        };
        if p.stopping
            .is_some_and(|t| tick.saturating_sub(t) < stopping_window)
        {
            return Some("is shutting down");
        }
        if p.unreachable {
            return Some("was reported unreachable by the transport");
        }
        match p.heard {
            Some(t) if tick.saturating_sub(t) < window => None,
            _ => Some("has not been heard from within an election timeout"),
        }
    }

    /// The ids in `voters`, other than `me`, not heard from within `window` ticks of
    /// `tick` (diagnosis).
    pub(crate) fn silent(&self, voters: &[u64], me: u64, tick: u64, window: u64) -> Vec<u64> {
        voters
            .iter()
            .copied()
            .filter(|id| *id != me)
            .filter(|id| {
                !self.peers.iter().any(|p| {
                    p.id == *id && p.heard.is_some_and(|t| tick.saturating_sub(t) < window)
                })
            })
            .collect()
    }

    /// Forgets every removal vote (a leader proved this node a member, or a belief in
    /// the removal is being checked again).
    pub(crate) fn clear_removal_votes(&mut self) {
        self.removal_votes.clear();
    }

    /// `from` sent what a member sends only to a node it counts as a member (a vote
    /// request, an append, a heartbeat, a snapshot): its earlier "not a member" no
    /// longer counts. Returns whether it had said so.
    pub(crate) fn revoke_removal_vote(&mut self, from: u64) -> bool {
        let before = self.removal_votes.len();
        self.removal_votes.retain(|(id, _)| *id != from);
        self.removal_votes.len() != before
    }

    /// Whether voters forming a majority of `voters` (as in
    /// [`PeerWatch::removal_vote`]) still say this node, at `applied`, is not a member.
    pub(crate) fn removal_confirmed(&self, applied: u64, voters: &[u64]) -> bool {
        let confirming = self
            .removal_votes
            .iter()
            .filter(|(id, at)| *at > applied && voters.contains(id))
            .count();
        !voters.is_empty() && confirming > voters.len() / 2
    }

    /// A new tick began: the per-tick allowance of removal notices is back.
    pub(crate) fn on_tick(&mut self) {
        self.notices_this_tick = 0;
    }

    /// Whether this node may send one more removal notice in this tick (and counts it).
    pub(crate) fn take_notice_allowance(&mut self) -> bool {
        if self.notices_this_tick >= REMOVAL_NOTICES_PER_TICK {
            return false;
        }
        self.notices_this_tick += 1;
        true
    }

    /// `from` says this node is not a member as of its applied index `their_applied`.
    /// Returns true once voters forming a majority of `voters` (this node's own view
    /// of its voters, itself included and never counted) each said so from an applied
    /// index past `applied`, this node's own.
    pub(crate) fn removal_vote(
        &mut self,
        from: u64,
        their_applied: u64,
        applied: u64,
        voters: &[u64],
    ) -> bool {
        if !voters.contains(&from) {
            return false;
        }
        match self.removal_votes.iter_mut().find(|(id, _)| *id == from) {
            Some(vote) => vote.1 = vote.1.max(their_applied),
            None => self.removal_votes.push((from, their_applied)),
        }
        self.removal_confirmed(applied, voters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leadership_goes_only_to_peers_heard_from_and_not_stopping() {
        let mut w = PeerWatch::default();
        assert_eq!(
            w.why_not_lead(2, 10, 20, 60),
            Some("has not been heard from")
        );
        w.heard(2, 10);
        assert!(w.why_not_lead(2, 29, 20, 60).is_none());
        assert!(
            w.why_not_lead(2, 30, 20, 60).is_some(),
            "silent for a whole election timeout"
        );
        w.heard(2, 30);
        w.unreachable(2);
        assert!(w.why_not_lead(2, 31, 20, 60).is_some());
        w.heard(2, 32);
        assert!(
            w.why_not_lead(2, 32, 20, 60).is_none(),
            "heard again after the report"
        );
        w.stopping(2, 33);
        w.heard(2, 34);
        assert_eq!(w.why_not_lead(2, 34, 20, 60), Some("is shutting down"));
        w.heard(2, 93);
        assert!(
            w.why_not_lead(2, 93, 20, 60).is_none(),
            "back after the stopping window"
        );
        w.forget(2);
        assert!(w.why_not_lead(2, 93, 20, 60).is_some());
    }

    #[test]
    fn removal_needs_a_majority_of_voters_from_past_this_nodes_applied_index() {
        let voters = [1, 2, 3];
        let mut w = PeerWatch::default();
        // Node 3 applied up to 10.
        assert!(
            !w.removal_vote(1, 12, 10, &voters),
            "one voter is not a majority"
        );
        assert!(
            !w.removal_vote(9, 12, 10, &voters),
            "not a voter: not counted"
        );
        assert!(
            !w.removal_vote(2, 10, 10, &voters),
            "a peer not past this node's applied index may not have applied the addition"
        );
        assert!(w.removal_vote(2, 11, 10, &voters));
        // Once this node applied past what they said, their word no longer counts.
        assert!(!w.removal_vote(2, 11, 12, &voters));
        // A vote request, append or heartbeat from a voter takes its word back.
        assert!(w.revoke_removal_vote(2));
        assert!(!w.revoke_removal_vote(2), "already taken back");
        assert!(!w.removal_confirmed(10, &voters));
        assert!(
            w.removal_vote(2, 11, 10, &voters),
            "said again: counts again"
        );
        // A group of two: the only other voter is not a majority.
        let mut w = PeerWatch::default();
        assert!(!w.removal_vote(1, 50, 10, &[1, 2]));
    }

    #[test]
    fn removal_notices_are_bounded_per_tick() {
        let mut w = PeerWatch::default();
        let sent = (0..100).filter(|_| w.take_notice_allowance()).count();
        assert_eq!(sent, REMOVAL_NOTICES_PER_TICK as usize);
        w.on_tick();
        assert!(w.take_notice_allowance());
    }
}
