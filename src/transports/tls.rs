//! Mutual TLS for [`crate::TcpTransport`] (feature `tls`): [`TlsConfig`], the naming
//! rule that binds a certificate to a node id ([`node_server_name`]), and the
//! handshakes the transport's threads run.
//!
//! Every node holds a certificate signed by the cluster's CA whose DNS subject
//! alternative name is `node-<id>.raftnode` (see [`node_server_name`]). Both ends of a
//! connection present their certificate:
//!
//! - the connecting node checks that the accepting node's certificate chains to the CA
//!   and names the node it meant to reach;
//! - the accepting node checks that the connecting node's certificate chains to the CA,
//!   and, once the raftnode handshake says which node the peer claims to be, that the
//!   certificate names that node. Otherwise it refuses the connection
//!   ([`crate::RefusalReason::Tls`], [`crate::RefusalReason::Identity`]).
//!
//! TLS 1.3 only, with the `ring` crypto provider; no session resumption, so every
//! connection checks the certificates again.
//!
//! See `docs/security.md` for the threat model and how to make certificates.

use std::fmt;
use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, RootCertStore, ServerConfig,
    ServerConnection, SideData, StreamOwned,
};

/// The DNS name suffix shared by every node certificate: node `id` is
/// `node-<id>.raftnode`.
pub const SERVER_NAME_SUFFIX: &str = "raftnode";

/// The DNS subject alternative name node `id`'s certificate must carry:
/// `node-<id>.raftnode`.
///
/// The name is the same in every cluster: what keeps clusters apart is the CA, so use
/// one CA per cluster (see `docs/security.md`).
///
/// # Examples
///
/// ```
/// assert_eq!(raftnode::tls::node_server_name(3), "node-3.raftnode");
/// ```
pub fn node_server_name(id: u64) -> String {
    format!("node-{id}.{SERVER_NAME_SUFFIX}")
}

/// Why a [`TlsConfig`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A PEM file could not be read.
    #[error("cannot read the {what} file {path}: {source}")]
    Read {
        /// Which input: `"CA"`, `"certificate"` or `"private key"`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An input holds no PEM item of the expected kind.
    #[error("the {what} PEM holds no {expected}")]
    Missing {
        /// Which input: `"CA"`, `"certificate"` or `"private key"`.
        what: &'static str,
        /// What was looked for, e.g. `"CERTIFICATE block"`.
        expected: &'static str,
    },
    /// An input is not valid PEM.
    #[error("the {what} PEM cannot be parsed: {detail}")]
    Pem {
        /// Which input: `"CA"`, `"certificate"` or `"private key"`.
        what: &'static str,
        /// The parser's message.
        detail: String,
    },
    /// A CA certificate is not a usable trust anchor.
    #[error("CA certificate {index} is not a usable trust anchor: {detail}")]
    Ca {
        /// Position of the certificate in the CA PEM, from 0.
        index: usize,
        /// Why.
        detail: String,
    },
    /// The private key does not belong to the certificate (or cannot be used).
    #[error("the private key does not match the certificate: {detail}")]
    Key {
        /// Why.
        detail: String,
    },
    /// This node's own certificate would be refused by its peers: it does not chain to
    /// the CA, is expired, lacks the `serverAuth`/`clientAuth` usage, or does not carry
    /// the name [`node_server_name`] of `node_id`.
    #[error("the certificate is not valid for node {node_id} ({name}) under this CA: {detail}")]
    Certificate {
        /// The node the configuration is for.
        node_id: u64,
        /// The DNS name the certificate must carry.
        name: String,
        /// Why it is refused.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("rustls refused the configuration: {0}")]
    Rustls(String),
}

/// TLS material of one node: the cluster CA, this node's certificate chain and key,
/// checked together. Set it as [`crate::TcpConfig::tls`].
///
/// Construction checks everything that can be checked alone, so that a misconfigured
/// node refuses to start instead of failing its first connection: the PEM inputs parse,
/// the key matches the certificate, and the certificate chains to the CA, is currently
/// valid, and names this node ([`node_server_name`]) for both server and client use.
///
/// Cloning is cheap (the rustls configurations are shared).
///
/// # Examples
///
/// ```no_run
/// use raftnode::tls::TlsConfig;
///
/// let tls = TlsConfig::from_pem_files(3, "ca.pem", "node-3.pem", "node-3.key")?;
/// let mut config = raftnode::TcpConfig::new(0x5eed, "0.0.0.0:7003".parse()?);
/// config.tls = Some(tls);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    node_id: u64,
    /// Kept for equality and `Debug`; the trust anchors live in the configs.
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("node_id", &self.node_id)
            .field("ca_certificates", &self.ca.len())
            .field("chain_certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Equal when for the same node, with the same CA and certificate chain (a certificate
/// has one key).
impl PartialEq for TlsConfig {
    fn eq(&self, other: &Self) -> bool {
        self.node_id == other.node_id && self.ca == other.ca && self.chain == other.chain
    }
}

impl Eq for TlsConfig {}

impl TlsConfig {
    /// Builds the configuration of node `node_id` from PEM text: `ca_pem` holds the
    /// cluster CA certificate(s), `cert_pem` this node's certificate first, then any
    /// intermediates, and `key_pem` its private key (PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    ///
    /// [`TlsConfigError::Missing`] or [`TlsConfigError::Pem`] for an input with nothing
    /// usable, [`TlsConfigError::Ca`] for a CA certificate that is not a trust anchor,
    /// [`TlsConfigError::Key`] when the key does not match the certificate, and
    /// [`TlsConfigError::Certificate`] when the certificate would not be accepted by
    /// this node's peers as node `node_id`.
    pub fn from_pem(
        node_id: u64,
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<TlsConfig, TlsConfigError> {
        let ca = certificates("CA", ca_pem)?;
        let chain = certificates("certificate", cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            pem::Error::NoItemsFound => TlsConfigError::Missing {
                what: "private key",
                expected: "PRIVATE KEY block",
            },
            other => TlsConfigError::Pem {
                what: "private key",
                detail: other.to_string(),
            },
        })?;
        Self::from_der(node_id, ca, chain, key)
    }

    /// [`TlsConfig::from_pem`] reading the three PEM files.
    ///
    /// # Errors
    ///
    /// [`TlsConfigError::Read`] when a file cannot be read, then those of
    /// [`TlsConfig::from_pem`].
    pub fn from_pem_files(
        node_id: u64,
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsConfig, TlsConfigError> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsConfigError::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        let ca = read("CA", ca.as_ref())?;
        let cert = read("certificate", cert.as_ref())?;
        let key = read("private key", key.as_ref())?;
        Self::from_pem(node_id, &ca, &cert, &key)
    }

    /// The node this configuration's certificate names.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    fn from_der(
        node_id: u64,
        ca: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<TlsConfig, TlsConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for (index, cert) in ca.iter().enumerate() {
            roots.add(cert.clone()).map_err(|e| TlsConfigError::Ca {
                index,
                detail: e.to_string(),
            })?;
        }
        let roots = Arc::new(roots);
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(|e| {
            TlsConfigError::Key {
                detail: e.to_string(),
            }
        })?;
        let rustls_error = |e: rustls::Error| TlsConfigError::Rustls(e.to_string());
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
        check_own_certificate(
            node_id,
            &chain,
            server_verifier.as_ref(),
            client_verifier.as_ref(),
        )?;

        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(rustls_error)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(rustls_error)?;
        // Nodes never resume: every connection checks the certificates again.
        server.send_tls13_tickets = 0;
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(rustls_error)?
            .with_webpki_verifier(server_verifier)
            .with_client_auth_cert(chain.clone(), key)
            .map_err(rustls_error)?;
        client.resumption = Resumption::disabled();
        // The accepting node has one certificate; SNI would only show the id in clear.
        client.enable_sni = false;
        Ok(TlsConfig {
            node_id,
            ca,
            chain,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

fn certificates(
    what: &'static str,
    pem_text: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem_text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::Pem {
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::Missing {
            what,
            expected: "CERTIFICATE block",
        });
    }
    Ok(certs)
}

/// Checks this node's certificate as its peers will: as a server certificate for its
/// name, and as a client certificate.
fn check_own_certificate(
    node_id: u64,
    chain: &[CertificateDer<'static>],
    server_verifier: &WebPkiServerVerifier,
    client_verifier: &dyn ClientCertVerifier,
) -> Result<(), TlsConfigError> {
    let name = node_server_name(node_id);
    let refused = |detail: String| TlsConfigError::Certificate {
        node_id,
        name: name.clone(),
        detail,
    };
    let server_name =
        ServerName::try_from(name.clone()).map_err(|e| refused(format!("not a DNS name: {e}")))?;
    let now = UnixTime::now();
    server_verifier
        .verify_server_cert(&chain[0], &chain[1..], &server_name, &[], now)
        .map_err(|e| refused(format!("as a server certificate: {e}")))?;
    client_verifier
        .verify_client_cert(&chain[0], &chain[1..], now)
        .map_err(|e| refused(format!("as a client certificate: {e}")))?;
    Ok(())
}

/// A TLS stream over a socket, as the reader (server side) or a writer (client side)
/// holds it.
pub(super) enum TlsStream {
    Server(StreamOwned<ServerConnection, TcpStream>),
    Client(StreamOwned<ClientConnection, TcpStream>),
}

impl TlsStream {
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            TlsStream::Server(s) => &s.sock,
            TlsStream::Client(s) => &s.sock,
        }
    }
}

impl io::Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            TlsStream::Server(s) => s.read(buf),
            TlsStream::Client(s) => s.read(buf),
        }
    }
}

impl io::Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            TlsStream::Server(s) => s.write(buf),
            TlsStream::Client(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            TlsStream::Server(s) => s.flush(),
            TlsStream::Client(s) => s.flush(),
        }
    }
}

/// Runs the server side of the TLS handshake on an accepted socket, by `deadline`
/// in all. Err: why the peer is refused (no certificate, another CA, not TLS, slow).
pub(super) fn accept(
    config: &TlsConfig,
    mut tcp: TcpStream,
    deadline: Instant,
) -> Result<TlsStream, String> {
    let mut conn =
        ServerConnection::new(config.server.clone()).map_err(|e| format!("TLS setup: {e}"))?;
    complete_handshake(&mut conn, &mut tcp, deadline)?;
    Ok(TlsStream::Server(StreamOwned::new(conn, tcp)))
}

/// Runs the client side of the TLS handshake to node `peer`, by `deadline` in all:
/// the peer must present a certificate from the CA naming `peer`.
pub(super) fn connect(
    config: &TlsConfig,
    peer: u64,
    mut tcp: TcpStream,
    deadline: Instant,
) -> Result<TlsStream, String> {
    let name = ServerName::try_from(node_server_name(peer))
        .map_err(|e| format!("node {peer} has no valid TLS name: {e}"))?;
    let mut conn = ClientConnection::new(config.client.clone(), name)
        .map_err(|e| format!("TLS setup: {e}"))?;
    complete_handshake(&mut conn, &mut tcp, deadline)?;
    Ok(TlsStream::Client(StreamOwned::new(conn, tcp)))
}

/// Checks that the certificate the peer of an accepted connection presented names node
/// `claimed` (its chain to the CA was checked by the handshake).
pub(super) fn check_identity(stream: &TlsStream, claimed: u64) -> Result<(), String> {
    let TlsStream::Server(server) = stream else {
        return Err("not an accepted connection".into());
    };
    let cert = server
        .conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or("no client certificate")?;
    let parsed = ParsedCertificate::try_from(cert).map_err(|e| format!("certificate: {e}"))?;
    let name = node_server_name(claimed);
    let server_name = ServerName::try_from(name.as_str()).map_err(|e| e.to_string())?;
    rustls::client::verify_server_name(&parsed, &server_name).map_err(|e| {
        format!("claims node {claimed} but its certificate is not valid for {name}: {e}")
    })
}

/// Drives a handshake to its end by hand rather than with `complete_io`, so that the
/// deadline holds even against a peer trickling bytes. The deadline is the whole
/// connection's: the raftnode handshake that follows shares it.
fn complete_handshake<S: SideData>(
    conn: &mut ConnectionCommon<S>,
    tcp: &mut TcpStream,
    deadline: Instant,
) -> Result<(), String> {
    let (read_timeout, write_timeout) = (tcp.read_timeout(), tcp.write_timeout());
    let outcome = (|| {
        while conn.is_handshaking() || conn.wants_write() {
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or("TLS handshake timed out")?;
            tcp.set_read_timeout(Some(left))
                .and_then(|()| tcp.set_write_timeout(Some(left)))
                .map_err(|e| e.to_string())?;
            if conn.wants_write() {
                conn.write_tls(tcp).map_err(|e| format!("TLS write: {e}"))?;
                continue;
            }
            match conn.read_tls(tcp) {
                Ok(0) => return Err("closed during the TLS handshake".to_string()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => return Err("TLS handshake timed out".to_string()),
                Err(e) => return Err(format!("TLS read: {e}")),
            }
            if let Err(e) = conn.process_new_packets() {
                // Tell the peer why (an alert), best effort.
                let _ = conn.write_tls(tcp);
                return Err(format!("TLS: {e}"));
            }
        }
        Ok(())
    })();
    let _ = tcp.set_read_timeout(read_timeout.ok().flatten());
    let _ = tcp.set_write_timeout(write_timeout.ok().flatten());
    outcome
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
