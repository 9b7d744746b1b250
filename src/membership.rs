//! Membership changes: building and validating `ConfChangeV2`s.

use bytes::Bytes;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};

use crate::error::MembershipError;

/// One change to the group's membership, for [`crate::Node::change_membership`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a node as a voter, or promote a learner to voter, safely: it first receives
    /// the log as a learner, and the change is made only once it has caught up
    /// (`Config::catch_up_lag`; docs/membership.md, "Adding a voter safely").
    AddVoter(u64),
    /// Add a node as a voter, or promote a learner, at once, whether or not it holds
    /// the log: until it catches up it counts towards the quorum without helping it,
    /// so a group whose majority needs it stops committing. For a node known to be
    /// current (restored from a recent backup of a member, say).
    AddVoterNow(u64),
    /// Add a node as a learner (receives the log, does not vote).
    AddLearner(u64),
    /// Remove a voter or a learner.
    Remove(u64),
}

/// A group's configuration, as a membership change left it: who votes and who only
/// learns. During a joint change (`voters_outgoing` not empty) decisions need a
/// majority of `voters` and of `voters_outgoing`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Membership {
    /// The voters (of the incoming configuration, during a joint change).
    pub voters: Vec<u64>,
    /// The learners: they receive the log and do not vote.
    pub learners: Vec<u64>,
    /// The voters of the outgoing configuration; empty unless the group is joint.
    pub voters_outgoing: Vec<u64>,
    /// Outgoing voters that become learners when the group leaves the joint change.
    pub learners_next: Vec<u64>,
    /// Whether the group leaves the joint change on its own (raftnode's changes do).
    pub auto_leave: bool,
}

impl Membership {
    /// Whether the group is in a joint configuration.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Whether `id` is a voter or a learner (in either half of a joint configuration).
    pub fn contains(&self, id: u64) -> bool {
        [
            &self.voters,
            &self.learners,
            &self.voters_outgoing,
            &self.learners_next,
        ]
        .iter()
        .any(|ids| ids.contains(&id))
    }
}

impl From<&ConfState> for Membership {
    fn from(cs: &ConfState) -> Self {
        Membership {
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            voters_outgoing: cs.voters_outgoing.clone(),
            learners_next: cs.learners_next.clone(),
            auto_leave: cs.auto_leave,
        }
    }
}

impl MembershipChange {
    fn to_single(self) -> ConfChangeSingle {
        let (change_type, id) = match self {
            MembershipChange::AddVoter(id) | MembershipChange::AddVoterNow(id) => {
                (ConfChangeType::AddNode, id)
            }
            MembershipChange::AddLearner(id) => (ConfChangeType::AddLearnerNode, id),
            MembershipChange::Remove(id) => (ConfChangeType::RemoveNode, id),
        };
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = id;
        single
    }
}

/// The nodes `changes` make voters that must catch up first (`AddVoter`, not
/// `AddVoterNow`).
pub(crate) fn joining(changes: &[MembershipChange]) -> Vec<u64> {
    changes
        .iter()
        .filter_map(|c| match c {
            MembershipChange::AddVoter(id) => Some(*id),
            _ => None,
        })
        .collect()
}

/// Builds the `ConfChangeV2` for `changes`; several changes enter a joint configuration
/// that raft leaves automatically once it is committed.
pub(crate) fn build(changes: &[MembershipChange], context: Bytes) -> ConfChangeV2 {
    let mut cc = ConfChangeV2::default();
    cc.set_changes(
        changes
            .iter()
            .map(|c| c.to_single())
            .collect::<Vec<_>>()
            .into(),
    );
    cc.context = context;
    cc
}

/// Checks `cc` against the current configuration, so mistakes are reported as clear
/// errors instead of being refused by raft at apply time.
pub(crate) fn validate_change(cc: &ConfChangeV2, conf: &ConfState) -> Result<(), MembershipError> {
    let invalid = |s: String| Err(MembershipError::Invalid(s));
    if cc.changes.is_empty() {
        if conf.voters_outgoing.is_empty() {
            return invalid(
                "an empty change leaves a joint configuration, and the group is not in one".into(),
            );
        }
        return Ok(());
    }
    let mut voters: Vec<u64> = conf.voters.clone();
    let mut learners: Vec<u64> = conf.learners.clone();
    let mut seen = Vec::new();
    for change in cc.get_changes() {
        let id = change.node_id;
        if id == 0 {
            return invalid("node id 0 is reserved".into());
        }
        if seen.contains(&id) {
            return invalid(format!("node {id} appears twice in one change"));
        }
        seen.push(id);
        match change.get_change_type() {
            ConfChangeType::AddNode => {
                if voters.contains(&id) {
                    return invalid(format!("node {id} is already a voter"));
                }
                learners.retain(|l| *l != id);
                voters.push(id);
            }
            ConfChangeType::AddLearnerNode => {
                if learners.contains(&id) {
                    return invalid(format!("node {id} is already a learner"));
                }
                if voters.contains(&id) {
                    return invalid(format!(
                        "node {id} is a voter; remove it before adding it as a learner"
                    ));
                }
                learners.push(id);
            }
            ConfChangeType::RemoveNode => {
                if !voters.contains(&id) && !learners.contains(&id) {
                    return invalid(format!("node {id} is not a member"));
                }
                voters.retain(|v| *v != id);
                learners.retain(|l| *l != id);
            }
        }
    }
    if voters.is_empty() {
        return invalid("the change would remove the last voter".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(voters: &[u64], learners: &[u64]) -> ConfState {
        let mut cs = ConfState::default();
        cs.voters = voters.to_vec();
        cs.learners = learners.to_vec();
        cs
    }

    fn check(changes: &[MembershipChange], cs: &ConfState) -> Result<(), MembershipError> {
        validate_change(&build(changes, Bytes::new()), cs)
    }

    #[test]
    fn clear_errors_for_bad_changes() {
        use MembershipChange::*;
        let cs = conf(&[1, 2, 3], &[4]);
        assert!(check(&[AddVoter(5)], &cs).is_ok());
        assert!(check(&[AddVoter(4)], &cs).is_ok(), "promotion");
        assert!(
            matches!(check(&[AddVoter(2)], &cs), Err(MembershipError::Invalid(m)) if m.contains("already a voter"))
        );
        assert!(
            matches!(check(&[Remove(9)], &cs), Err(MembershipError::Invalid(m)) if m.contains("not a member"))
        );
        assert!(matches!(
            check(&[AddVoter(0)], &cs),
            Err(MembershipError::Invalid(_))
        ));
        assert!(
            matches!(check(&[Remove(1)], &conf(&[1], &[])), Err(MembershipError::Invalid(m)) if m.contains("last voter"))
        );
        assert!(matches!(check(&[], &cs), Err(MembershipError::Invalid(_))));
        assert!(check(&[AddVoter(5), Remove(1)], &cs).is_ok());
    }
}
