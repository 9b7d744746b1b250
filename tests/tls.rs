//! Mutual TLS over the TCP transport (feature `tls`): a cluster whose certificates come
//! from one CA elects and replicates; a node with a foreign CA's certificate, a client
//! presenting another node's identity, a client with no certificate, and plaintext or
//! silent peers are refused with their reason counted while the cluster keeps
//! committing; and a misconfigured `TlsConfig` is an error before the node starts.
//!
//! Every certificate is generated here with `rcgen`: a CA per test, one certificate per
//! node whose DNS name is `raftnode::tls::node_server_name(id)`.
//!
//! Env: `RAFTNODE_TLS_SNAPSHOT_MIB` sets the state size of the snapshot test (default 16
//! MiB, sent in 1 MiB chunks).
//!
//! "raft-rs note N" cites docs/raft-rs-notes.md.

#![cfg(feature = "tls")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tcp::{trickle_until_closed, TcpCluster};
use common::*;
use raftnode::testing::wire::{self, Handshake};
use raftnode::tls::{node_server_name, TlsConfig, TlsConfigError};
use raftnode::{MemLogStore, Node, ReadConsistency, RefusalReason, TcpConfig, TcpTransport};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

const CLUSTER_ID: u64 = 0x7150_0001;

/// A member every transport knows but raft does not: raw test clients speak as it, so
/// they never displace a real peer's connection.
const SPARE: u64 = 9;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("loopback address")
}

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A node certificate and its key, as PEM.
struct Identity {
    cert_pem: String,
    key_pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` with the given extended key usages.
    fn issue(&self, names: &[String], usages: Vec<ExtendedKeyUsagePurpose>) -> Identity {
        let mut params = CertificateParams::new(names.to_vec()).expect("node params");
        params.extended_key_usages = usages;
        let key = KeyPair::generate().expect("node key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("node certificate");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// The certificate of node `id`: its name, usable as server and as client.
    fn node(&self, id: u64) -> Identity {
        self.issue(
            &[node_server_name(id)],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    fn tls(&self, id: u64) -> TlsConfig {
        let node = self.node(id);
        TlsConfig::from_pem(
            id,
            self.pem().as_bytes(),
            node.cert_pem.as_bytes(),
            node.key_pem.as_bytes(),
        )
        .expect("a valid TLS config")
    }
}

fn bind(tls: TlsConfig) -> TcpTransport {
    let mut config = TcpConfig::new(CLUSTER_ID, loopback());
    config.tls = Some(tls);
    TcpTransport::bind(config, &logger()).expect("bind")
}

/// Voters 1..=n over mutual TLS with certificates from `ca`; every transport also
/// knows the `extra` members (not raft voters) at the given addresses.
fn tls_cluster(ca: &Ca, n: u64, extra: &[(u64, SocketAddr)]) -> TcpCluster {
    let transports = (1..=n).map(|id| (id, bind(ca.tls(id)))).collect();
    TcpCluster::start(transports, extra)
}

/// A raw TLS client speaking the wire format by hand, with `identity` as its client
/// certificate (none when `None`), trusting `ca` for the node it dials.
fn tls_client(
    ca: &Ca,
    identity: Option<&Identity>,
    addr: SocketAddr,
    to: u64,
) -> StreamOwned<ClientConnection, TcpStream> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).expect("CA DER"))
        .expect("CA root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots);
    let config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(node_server_name(to)).expect("server name");
    let conn = ClientConnection::new(Arc::new(config), name).expect("client connection");
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    StreamOwned::new(conn, tcp)
}

/// Sends a handshake claiming `from` on `stream`.
fn send_handshake(stream: &mut impl Write, from: u64, to: u64) {
    let hello = Handshake {
        cluster_id: CLUSTER_ID,
        from,
        to,
    };
    // The node may already have refused the TLS session: a failed write is a refusal
    // too, which the caller checks through the node's counters.
    let _ = stream
        .write_all(&hello.encode())
        .and_then(|()| stream.flush());
}

/// Reads until the node closes the connection (EOF or error); true if a whole valid
/// handshake answer arrived first.
fn answered_then_closed(stream: &mut impl Read) -> bool {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() >= wire::HANDSHAKE_BYTES {
                    let mut answer = [0u8; wire::HANDSHAKE_BYTES];
                    answer.copy_from_slice(&got[..wire::HANDSHAKE_BYTES]);
                    return Handshake::decode(&answer).is_ok();
                }
            }
        }
    }
    false
}

/// Proves three nodes whose certificates come from one CA elect a leader and replicate
/// every committed write to every node over mutual TLS (Raft §5.2, §5.3) with no
/// refusal, and that stopping a node with TLS connections open ends promptly (the
/// readers notice the shutdown through the TLS layer).
#[test]
fn three_nodes_elect_and_replicate_over_tls() {
    let ca = Ca::new("cluster CA");
    let c = tls_cluster(&ca, 3, &[]);
    c.wait_leader();
    for i in 0..20 {
        c.propose_ok(put(&format!("k{i}"), &i.to_string()));
    }
    let map = c.wait_same_maps();
    assert_eq!(map.len(), 20);
    for (id, handle) in &c.handles {
        let stats = handle.stats();
        assert_eq!(stats.refused_total(), 0, "node {id} refused {stats:?}");
        assert!(
            stats.messages_sent > 0 && stats.messages_received > 0,
            "{stats:?}"
        );
    }
    for (id, node) in &c.nodes {
        let started = Instant::now();
        node.kill();
        let elapsed = started.elapsed();
        // A thread that missed the shutdown would hold `stop` for connect_timeout + 1 s.
        assert!(
            elapsed < Duration::from_millis(2500),
            "node {id} took {elapsed:?} to stop"
        );
    }
}

/// Proves a snapshot several chunks long crosses TLS to a learner added by a membership
/// change, is restored intact, and is reported `Finish` only after the learner's ack
/// came back over TLS (raft-rs note 13); prints the transfer time.
#[test]
fn large_snapshot_crosses_tls_to_a_new_learner() {
    let ca = Ca::new("cluster CA");
    let size = blob_bytes("RAFTNODE_TLS_SNAPSHOT_MIB", 16);
    let leader_transport = bind(ca.tls(1));
    let mut learner_config = TcpConfig::new(CLUSTER_ID, loopback());
    learner_config.tls = Some(ca.tls(2));
    learner_config
        .peers
        .insert(1, leader_transport.local_addr());
    let learner_transport = TcpTransport::bind(learner_config, &logger()).expect("bind");
    let learner_addr = learner_transport.local_addr();
    let (leader_handle, learner_handle) = (leader_transport.handle(), learner_transport.handle());

    let leader = Node::start(
        blob_config(1, &[1]),
        MemLogStore::new(),
        Blob::default(),
        leader_transport,
        &logger(),
    )
    .expect("leader starts");
    leader.wait_for_leader(DEADLINE).expect("leader elected");
    leader
        .propose(format!("fill 11 {size}").into_bytes())
        .expect("queued")
        .wait_timeout(DEADLINE)
        .expect("filled");
    let want = leader
        .read(ReadConsistency::Linearizable, DEADLINE, |b| {
            fingerprint(&b.data)
        })
        .expect("read");
    let index = leader.snapshot_now().expect("snapshot").expect("taken");

    let started = Instant::now();
    let learner = Node::start(
        blob_config(2, &[]),
        MemLogStore::new(),
        Blob::default(),
        learner_transport,
        &logger(),
    )
    .expect("learner starts");
    leader
        .add_learner(2, learner_addr.to_string(), DEADLINE)
        .expect("learner added");
    wait_until("learner restored the snapshot", || {
        learner
            .status()
            .map(|s| s.applied >= index)
            .unwrap_or(false)
    });
    let elapsed = started.elapsed();
    assert_eq!(
        learner.read_stale(|b| fingerprint(&b.data)).expect("read"),
        want
    );
    wait_until("leader saw the snapshot acknowledged", || {
        leader_handle.stats().snapshots_sent >= 1
    });
    let received = learner_handle.stats();
    assert!(received.snapshots_received >= 1, "{received:?}");
    assert_eq!(received.refused_total(), 0, "{received:?}");
    assert_eq!(leader_handle.stats().refused_total(), 0);
    eprintln!(
        "tls snapshot: {} MiB in {} chunks, transfer + restore {elapsed:?}",
        size >> 20,
        size.div_ceil(1 << 20)
    );
    learner.kill();
    leader.kill();
}

/// Proves a node whose certificate (for its own id, which every transport counts as a
/// member) is signed by a foreign CA cannot join: its connections are refused with
/// `Tls`, it never writes a message on an established connection nor hears from the
/// cluster, and the cluster keeps committing. Then proves the accepting node refuses a
/// foreign client certificate by itself, from a client that trusts the cluster's CA.
#[test]
fn node_with_a_foreign_ca_cannot_join() {
    let ca = Ca::new("cluster CA");
    let foreign = Ca::new("foreign CA");
    let stranger_id = 4;
    let mut stranger_transport = bind(foreign.tls(stranger_id));
    let stranger_addr = stranger_transport.local_addr();
    let stranger_handle = stranger_transport.handle();
    let c = tls_cluster(&ca, 3, &[(stranger_id, stranger_addr)]);
    for id in 1..=3 {
        stranger_transport.set_peer(id, c.addr(id));
    }
    // A voter in its own eyes: it campaigns, sending votes to every node.
    let stranger = Node::start(
        test_config(stranger_id, &[1, 2, 3, stranger_id]),
        MemLogStore::new(),
        Kv::default(),
        stranger_transport,
        &logger(),
    )
    .expect("stranger starts");
    c.wait_leader();
    wait_until("the cluster refused the stranger's TLS", || {
        c.refused_everywhere(RefusalReason::Tls) >= 2
    });
    for i in 0..10 {
        c.propose_ok(put("k", &i.to_string()));
    }
    assert_eq!(c.wait_same_maps().get("k").map(String::as_str), Some("9"));
    let stats = stranger_handle.stats();
    assert_eq!(stats.messages_sent, 0, "{stats:?}");
    assert!(stats.connect_failures > 0, "{stats:?}");
    assert_eq!(stats.messages_received, 0, "{stats:?}");
    let status = stranger.status().expect("stranger status");
    assert_eq!(status.leader, None, "{status:?}");
    assert_eq!(c.refused_everywhere(RefusalReason::Identity), 0);
    stranger.kill();

    // A stranger that trusts the cluster's CA (so it accepts the node's certificate)
    // but holds a foreign one for a member id is refused by the node's own check.
    let leader = c.wait_leader();
    let handle = c.handles[&leader].clone();
    let before = handle.stats().refused(RefusalReason::Tls);
    let forged = foreign.node(stranger_id);
    let mut stream = tls_client(&ca, Some(&forged), c.addr(leader), leader);
    send_handshake(&mut stream, stranger_id, leader);
    assert!(!answered_then_closed(&mut stream));
    wait_until("the foreign client certificate refused", || {
        handle.stats().refused(RefusalReason::Tls) > before
    });
    c.propose_ok(put("k", "after"));
}

/// Proves the identity check: a client with a valid cluster certificate for the spare
/// member is served when it claims that member (the control), and refused with
/// `Identity` when it claims a real member with it, or claims the spare member with
/// node 2's certificate; the cluster keeps committing.
#[test]
fn another_nodes_identity_is_refused() {
    let ca = Ca::new("cluster CA");
    let c = tls_cluster(&ca, 3, &[(SPARE, "127.0.0.1:9".parse().expect("addr"))]);
    let leader = c.wait_leader();
    let addr = c.addr(leader);
    let handle = c.handles[&leader].clone();
    let spare = ca.node(SPARE);
    let node2 = ca.node(2);

    let mut control = tls_client(&ca, Some(&spare), addr, leader);
    send_handshake(&mut control, SPARE, leader);
    let mut answer = [0u8; wire::HANDSHAKE_BYTES];
    control
        .read_exact(&mut answer)
        .expect("the control is answered");
    Handshake::decode(&answer).expect("a valid answer");
    assert_eq!(handle.stats().refused(RefusalReason::Identity), 0);
    drop(control);

    // A real member that is not the node dialed (claiming the node's own id is
    // `NonMember`, refused before any certificate is looked at).
    let member = *c
        .nodes
        .keys()
        .find(|&&id| id != leader)
        .expect("a follower");
    let cases = [(&spare, member), (&node2, SPARE)];
    for (i, (identity, claimed)) in cases.into_iter().enumerate() {
        let before = handle.stats().refused(RefusalReason::Identity);
        let mut stream = tls_client(&ca, Some(identity), addr, leader);
        send_handshake(&mut stream, claimed, leader);
        assert!(!answered_then_closed(&mut stream), "case {i} was answered");
        wait_until(&format!("case {i}: identity refused"), || {
            handle.stats().refused(RefusalReason::Identity) > before
        });
        c.propose_ok(put("after", &i.to_string()));
    }
    assert_eq!(
        c.wait_same_maps().get("after").map(String::as_str),
        Some("1")
    );
}

/// Proves a TLS client presenting no certificate is refused with `Tls` before any
/// handshake answer, and the cluster keeps committing.
#[test]
fn client_without_a_certificate_is_refused() {
    let ca = Ca::new("cluster CA");
    let c = tls_cluster(&ca, 3, &[(SPARE, "127.0.0.1:9".parse().expect("addr"))]);
    let leader = c.wait_leader();
    let handle = c.handles[&leader].clone();
    let before = handle.stats().refused(RefusalReason::Tls);
    let mut stream = tls_client(&ca, None, c.addr(leader), leader);
    send_handshake(&mut stream, SPARE, leader);
    assert!(!answered_then_closed(&mut stream));
    wait_until("the certificate-less client refused", || {
        handle.stats().refused(RefusalReason::Tls) > before
    });
    c.propose_ok(put("after", "1"));
    c.wait_same_maps();
}

/// Proves plaintext raftnode traffic (a valid plaintext handshake) and a silent
/// connection sent to a TLS listener are both refused with `Tls` (the silent one once
/// `connect_timeout` passes: the TLS handshake cannot pin a thread), and the node keeps
/// serving.
#[test]
fn plaintext_and_silent_peers_are_refused() {
    let ca = Ca::new("cluster CA");
    let c = tls_cluster(&ca, 3, &[(SPARE, "127.0.0.1:9".parse().expect("addr"))]);
    let leader = c.wait_leader();
    let addr = c.addr(leader);
    let handle = c.handles[&leader].clone();

    let before = handle.stats().refused(RefusalReason::Tls);
    let mut plain = TcpStream::connect(addr).expect("connect");
    plain.set_read_timeout(Some(DEADLINE)).expect("timeout");
    send_handshake(&mut plain, SPARE, leader);
    assert!(!answered_then_closed(&mut plain));
    wait_until("plaintext refused", || {
        handle.stats().refused(RefusalReason::Tls) > before
    });
    c.propose_ok(put("after", "plain"));

    let before = handle.stats().refused(RefusalReason::Tls);
    let mut silent = TcpStream::connect(addr).expect("connect");
    silent.set_read_timeout(Some(DEADLINE)).expect("timeout");
    assert!(!answered_then_closed(&mut silent));
    wait_until("silent peer refused", || {
        handle.stats().refused(RefusalReason::Tls) > before
    });
    c.propose_ok(put("after", "silent"));
    assert_eq!(
        c.wait_same_maps().get("after").map(String::as_str),
        Some("silent")
    );
}

/// Proves one deadline covers the TLS handshake and the raftnode handshake together: a
/// member that completes TLS at once and then trickles its raftnode handshake one byte
/// every 100 ms (one TLS record each, 3.6 s in all) is cut off once `connect_timeout`
/// (2 s) has passed since it connected (`BadHandshake`), and so is a stranger trickling
/// the TLS handshake itself (`Tls`); the node keeps serving (issue 13).
#[test]
fn trickled_handshakes_are_cut_at_connect_timeout() {
    let ca = Ca::new("cluster CA");
    let c = tls_cluster(&ca, 3, &[(SPARE, "127.0.0.1:9".parse().expect("addr"))]);
    let leader = c.wait_leader();
    let addr = c.addr(leader);
    let handle = c.handles[&leader].clone();
    let timeout = TcpConfig::new(CLUSTER_ID, loopback()).connect_timeout;
    let pace = Duration::from_millis(100);
    let in_time = |closed: Duration, what: &str| {
        eprintln!("trickled {what} closed after {closed:?} (connect_timeout {timeout:?})");
        assert!(
            closed >= timeout,
            "{what}: closed after {closed:?}, before the deadline"
        );
        assert!(
            closed < timeout + Duration::from_millis(1500),
            "{what}: closed after {closed:?}, long past the {timeout:?} deadline"
        );
    };

    let before = handle.stats().refused(RefusalReason::BadHandshake);
    let opened = Instant::now();
    let spare = ca.node(SPARE);
    let mut stream = tls_client(&ca, Some(&spare), addr, leader);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .expect("TLS handshake with a member's certificate");
    }
    let tcp = stream.sock.try_clone().expect("clone");
    let hello = Handshake {
        cluster_id: CLUSTER_ID,
        from: SPARE,
        to: leader,
    }
    .encode();
    let closed = trickle_until_closed(&mut stream, &tcp, &hello, pace, opened)
        .expect("the node closes the trickled connection");
    in_time(closed, "raftnode handshake over TLS");
    wait_until("the trickled handshake is counted", || {
        handle.stats().refused(RefusalReason::BadHandshake) > before
    });

    // A TLS record header announcing 512 bytes, then the bytes one by one.
    let before = handle.stats().refused(RefusalReason::Tls);
    let mut record = vec![0x16, 0x03, 0x01, 0x02, 0x00];
    record.resize(5 + 512, 0);
    let opened = Instant::now();
    let mut raw = TcpStream::connect(addr).expect("connect");
    let tcp = raw.try_clone().expect("clone");
    let closed = trickle_until_closed(&mut raw, &tcp, &record, pace, opened)
        .expect("the node closes the trickled TLS handshake");
    in_time(closed, "TLS handshake");
    wait_until("the trickled TLS handshake is counted", || {
        handle.stats().refused(RefusalReason::Tls) > before
    });
    c.propose_ok(put("after", "trickle"));
}

/// Proves each misconfiguration is a typed error at construction, or at start for a
/// configuration made for another node: garbage or empty PEM, a missing file, a key
/// that is not the certificate's, a certificate for another node, one from another CA,
/// and one without the client-auth usage.
#[test]
fn misconfigured_tls_is_an_error_before_the_node_runs() {
    let ca = Ca::new("cluster CA");
    let foreign = Ca::new("foreign CA");
    let ca_pem = ca.pem();
    let node1 = ca.node(1);
    let node2 = ca.node(2);
    let build = |ca_pem: &str, cert: &str, key: &str| {
        TlsConfig::from_pem(1, ca_pem.as_bytes(), cert.as_bytes(), key.as_bytes())
    };
    assert!(build(&ca_pem, &node1.cert_pem, &node1.key_pem).is_ok());

    let err = build("not pem at all", &node1.cert_pem, &node1.key_pem).unwrap_err();
    assert!(
        matches!(err, TlsConfigError::Missing { what: "CA", .. }),
        "{err}"
    );
    show(&err);
    let err = build(&ca_pem, &node1.cert_pem, "").unwrap_err();
    assert!(
        matches!(
            err,
            TlsConfigError::Missing {
                what: "private key",
                ..
            }
        ),
        "{err}"
    );
    show(&err);
    let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    let err = build(&ca_pem, broken, &node1.key_pem).unwrap_err();
    assert!(
        matches!(
            err,
            TlsConfigError::Pem {
                what: "certificate",
                ..
            }
        ),
        "{err}"
    );
    show(&err);
    let err = TlsConfig::from_pem_files(1, "/nonexistent/ca.pem", "c.pem", "k.pem").unwrap_err();
    assert!(
        matches!(err, TlsConfigError::Read { what: "CA", .. }),
        "{err}"
    );
    show(&err);

    let err = build(&ca_pem, &node1.cert_pem, &node2.key_pem).unwrap_err();
    assert!(matches!(err, TlsConfigError::Key { .. }), "{err}");
    show(&err);
    let err = build(&ca_pem, &node2.cert_pem, &node2.key_pem).unwrap_err();
    assert!(
        matches!(err, TlsConfigError::Certificate { node_id: 1, .. }),
        "{err}"
    );
    show(&err);
    assert!(err.to_string().contains("node-1.raftnode"), "{err}");
    let stranger = foreign.node(1);
    let err = build(&ca_pem, &stranger.cert_pem, &stranger.key_pem).unwrap_err();
    assert!(matches!(err, TlsConfigError::Certificate { .. }), "{err}");
    show(&err);
    let server_only = ca.issue(
        &[node_server_name(1)],
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    );
    let err = build(&ca_pem, &server_only.cert_pem, &server_only.key_pem).unwrap_err();
    assert!(
        matches!(err, TlsConfigError::Certificate { .. }) && err.to_string().contains("client"),
        "{err}"
    );
    show(&err);

    // Valid for node 1, started as node 2.
    let transport = bind(ca.tls(1));
    let err = Node::start(
        test_config(2, &[2]),
        MemLogStore::new(),
        Kv::default(),
        transport,
        &logger(),
    )
    .map(|_| ())
    .unwrap_err();
    assert!(
        err.to_string().contains("certificate is for node 1"),
        "{err}"
    );
}

/// Shows what the errors read like (run with `--nocapture`).
fn show(err: &TlsConfigError) {
    eprintln!("TlsConfigError: {err}");
}
