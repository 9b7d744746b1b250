//! A cluster of `Kv` nodes on real TCP transports (plain or TLS), shared by
//! `tests/network.rs` and `tests/tls.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use raftnode::{MemLogStore, Node, RefusalReason, Role, TcpHandle, TcpTransport};

use super::{logger, test_config, wait_until, Kv, DEADLINE};

/// Running nodes, their transports' handles and their state machines.
pub struct TcpCluster {
    pub nodes: BTreeMap<u64, Node<Kv>>,
    pub handles: BTreeMap<u64, TcpHandle>,
    pub states: BTreeMap<u64, Kv>,
}

impl TcpCluster {
    /// Starts one voter per transport (the voters are the transports' ids). Every
    /// transport is first told the others' addresses and the `extra` members'.
    pub fn start(
        mut transports: BTreeMap<u64, TcpTransport>,
        extra: &[(u64, SocketAddr)],
    ) -> TcpCluster {
        let ids: Vec<u64> = transports.keys().copied().collect();
        let addrs: Vec<(u64, SocketAddr)> = transports
            .iter()
            .map(|(&id, t)| (id, t.local_addr()))
            .collect();
        for (&id, transport) in transports.iter_mut() {
            for &(peer, addr) in addrs.iter().chain(extra) {
                if peer != id {
                    transport.set_peer(peer, addr);
                }
            }
        }
        let mut cluster = TcpCluster {
            nodes: BTreeMap::new(),
            handles: BTreeMap::new(),
            states: BTreeMap::new(),
        };
        for (id, transport) in transports {
            let kv = Kv::default();
            cluster.handles.insert(id, transport.handle());
            let node = Node::start(
                test_config(id, &ids),
                MemLogStore::new(),
                kv.clone(),
                transport,
                &logger(),
            )
            .expect("node starts");
            cluster.nodes.insert(id, node);
            cluster.states.insert(id, kv);
        }
        cluster
    }

    pub fn addr(&self, id: u64) -> SocketAddr {
        self.handles[&id].local_addr()
    }

    /// Waits until exactly one of the running nodes leads and all agree on it.
    pub fn wait_leader(&self) -> u64 {
        let mut leader = 0;
        wait_until("one agreed leader over TCP", || {
            let statuses: Vec<_> = self
                .nodes
                .values()
                .filter_map(|n| n.status().ok())
                .collect();
            let leaders: Vec<_> = statuses.iter().filter(|s| s.role == Role::Leader).collect();
            if statuses.len() != self.nodes.len() || leaders.len() != 1 {
                return false;
            }
            leader = leaders[0].id;
            let term = leaders[0].term;
            statuses
                .iter()
                .all(|s| s.leader == Some(leader) && s.term == term)
        });
        leader
    }

    /// Proposes on the leader, retrying across leader changes, until applied.
    pub fn propose_ok(&self, command: Vec<u8>) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "proposal never committed");
            let leader = self.wait_leader();
            let outcome = self.nodes[&leader]
                .propose(command.clone())
                .and_then(|h| h.wait_timeout(Duration::from_secs(5)));
            if outcome.is_ok() {
                return;
            }
        }
    }

    /// Waits until every running node applied the same map, and returns it.
    pub fn wait_same_maps(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        wait_until("every node applied the same map", || {
            let maps: Vec<_> = self
                .states
                .iter()
                .filter(|(id, _)| self.nodes.contains_key(id))
                .map(|(_, kv)| kv.state.lock().map.clone())
                .collect();
            map = maps[0].clone();
            maps.iter().all(|m| *m == map)
        });
        map
    }

    /// Connections refused for `reason`, summed over every node.
    pub fn refused_everywhere(&self, reason: RefusalReason) -> u64 {
        self.handles
            .values()
            .map(|h| h.stats().refused(reason))
            .sum()
    }
}

impl Drop for TcpCluster {
    fn drop(&mut self) {
        for node in self.nodes.values() {
            node.kill();
        }
    }
}
