//! A cluster of `Kv` nodes on real TCP transports (plain or TLS), shared by
//! `tests/network.rs` and `tests/tls.rs`.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use raftnode::{
    Config, MemLogStore, Node, RefusalReason, Role, TcpConfig, TcpHandle, TcpTransport,
};

use super::{logger, test_config, wait_until, Kv, DEADLINE};

/// Running nodes, their transports' handles and their state machines.
pub struct TcpCluster {
    pub nodes: BTreeMap<u64, Node<Kv>>,
    pub handles: BTreeMap<u64, TcpHandle>,
    pub states: BTreeMap<u64, Kv>,
}

impl TcpCluster {
    /// Starts one voter per transport (the voters are the transports' ids) with
    /// `test_config`. Every transport is first told the others' addresses and the
    /// `extra` members'.
    pub fn start(
        transports: BTreeMap<u64, TcpTransport>,
        extra: &[(u64, SocketAddr)],
    ) -> TcpCluster {
        TcpCluster::start_with(transports, extra, |_, _, addr| addr, test_config)
    }

    /// Starts `n` voters (ids 1..=n) on plain TCP transports bound to loopback port 0,
    /// all with `cluster_id`.
    pub fn start_plain(cluster_id: u64, n: u64) -> TcpCluster {
        let transports = (1..=n)
            .map(|id| {
                let config = TcpConfig::new(cluster_id, "127.0.0.1:0".parse().expect("address"));
                (id, TcpTransport::bind(config, &logger()).expect("bind"))
            })
            .collect();
        TcpCluster::start(transports, &[])
    }

    /// Like `start`, but node `from` reaches node `to` (listening at `addr`) at
    /// `route(from, to, addr)`, and each node's config is `config(id, voters)`.
    pub fn start_with(
        mut transports: BTreeMap<u64, TcpTransport>,
        extra: &[(u64, SocketAddr)],
        route: impl Fn(u64, u64, SocketAddr) -> SocketAddr,
        config: impl Fn(u64, &[u64]) -> Config,
    ) -> TcpCluster {
        let ids: Vec<u64> = transports.keys().copied().collect();
        let addrs: Vec<(u64, SocketAddr)> = transports
            .iter()
            .map(|(&id, t)| (id, t.local_addr()))
            .collect();
        for (&id, transport) in transports.iter_mut() {
            for &(peer, addr) in &addrs {
                if peer != id {
                    transport.set_peer(peer, route(id, peer, addr));
                }
            }
            for &(peer, addr) in extra {
                transport.set_peer(peer, addr);
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
                config(id, &ids),
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
                .and_then(|mut h| h.wait_timeout(Duration::from_secs(5)));
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

/// Writes `bytes` to a node one at a time, `pace` apart, reading in between, until the
/// node closes the connection; returns when that was, counted from `opened`. An error
/// if the node answered (the handshake completed) or kept the connection open for
/// `DEADLINE`.
pub fn trickle_until_closed<S: Read + Write>(
    stream: &mut S,
    tcp: &TcpStream,
    bytes: &[u8],
    pace: Duration,
    opened: Instant,
) -> Result<Duration, String> {
    let mut rest = bytes.iter();
    let mut buf = [0u8; 64];
    while opened.elapsed() < DEADLINE {
        if let Some(&byte) = rest.next() {
            if stream
                .write_all(&[byte])
                .and_then(|()| stream.flush())
                .is_err()
            {
                return Ok(opened.elapsed());
            }
        }
        // The read timeout paces the trickle; the node closing ends it at once.
        tcp.set_read_timeout(Some(pace))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(opened.elapsed()),
            Ok(n) => {
                return Err(format!(
                    "the node answered {n} bytes: the handshake completed"
                ))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Ok(opened.elapsed()),
        }
    }
    Err(format!("still open after {DEADLINE:?}"))
}

/// A TCP forwarder in front of one node, for one direction of one pair of nodes, that
/// can simulate a network partition the way the kernel lives through one: connections
/// open when the partition starts stall for good (no byte forwarded, nothing closed,
/// like an established connection whose retransmissions have backed off far past the
/// heal), and connections opened during the partition are held until it heals (like a
/// connect whose SYN gets through on a retransmission).
pub struct Proxy {
    addr: SocketAddr,
    state: std::sync::Arc<ProxyState>,
}

struct ProxyState {
    gate: parking_lot::Mutex<Gate>,
    changed: parking_lot::Condvar,
    /// Every socket the proxy holds, to shut down when it is dropped.
    sockets: parking_lot::Mutex<Vec<TcpStream>>,
}

struct Gate {
    /// Bumped when a partition starts: connections born before it are dead.
    epoch: u64,
    partitioned: bool,
    closed: bool,
}

impl Proxy {
    /// Starts forwarding connections made to `Proxy::addr` to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let state = std::sync::Arc::new(ProxyState {
            gate: parking_lot::Mutex::new(Gate {
                epoch: 0,
                partitioned: false,
                closed: false,
            }),
            changed: parking_lot::Condvar::new(),
            sockets: parking_lot::Mutex::new(Vec::new()),
        });
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let born = {
                    let gate = shared.gate.lock();
                    if gate.closed {
                        return;
                    }
                    gate.epoch
                };
                let (Ok(client), Ok(server)) = (client, TcpStream::connect(upstream)) else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let clones = (client.try_clone(), server.try_clone());
                let (Ok(client2), Ok(server2)) = clones else {
                    continue;
                };
                shared.sockets.lock().extend(
                    [&client, &server]
                        .into_iter()
                        .filter_map(|s| s.try_clone().ok()),
                );
                let s = shared.clone();
                std::thread::spawn(move || s.pump(client, server, born));
                let s = shared.clone();
                std::thread::spawn(move || s.pump(server2, client2, born));
            }
        });
        Proxy { addr, state }
    }

    /// Where to connect instead of the node.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts a partition: open connections stall for good, new ones are held.
    pub fn partition(&self) {
        let mut gate = self.state.gate.lock();
        gate.epoch += 1;
        gate.partitioned = true;
        self.state.changed.notify_all();
    }

    /// Ends the partition: held connections and new ones forward again.
    pub fn heal(&self) {
        self.state.gate.lock().partitioned = false;
        self.state.changed.notify_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.gate.lock().closed = true;
        self.state.changed.notify_all();
        for socket in self.state.sockets.lock().drain(..) {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        let _ = TcpStream::connect(self.addr); // wakes the acceptor
    }
}

impl ProxyState {
    /// Copies `from` to `to`, each read passing the gate first.
    fn pump(&self, mut from: TcpStream, mut to: TcpStream, born: u64) {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = from.read(&mut buf).unwrap_or(0);
            if !self.pass(born) {
                return;
            }
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                let _ = to.shutdown(std::net::Shutdown::Both);
                let _ = from.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    }

    /// Waits until a connection born in epoch `born` may forward: false when it never
    /// will again (the proxy is closing; a dead connection waits for that).
    fn pass(&self, born: u64) -> bool {
        let mut gate = self.gate.lock();
        loop {
            if gate.closed {
                return false;
            }
            let dead = gate.epoch > born;
            if !dead && !gate.partitioned {
                return true;
            }
            self.changed.wait(&mut gate);
        }
    }
}
