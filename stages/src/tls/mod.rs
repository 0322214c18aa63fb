//! Certificates for the listeners: PEM files chosen by SNI, or a self-signed certificate made
//! at start; the same store serves QUIC (TLS 1.3, ALPN `h3`) and TCP (ALPN `h2`, `http/1.1`).
//!
//! SNI picks the most specific entry: an exact name, then the `*.parent` wildcard (one label,
//! as TLS wildcards go), then the entry marked `default = true` (or the first). At load, every configured name must
//! be covered by its certificate's SANs and the key must match the certificate.

pub mod config;
pub mod identity;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::http::host::HostPattern;
use crate::tls::config::{ClientAuth, TlsConfig, TlsSetting};

/// A certificate chain and its private key.
pub struct CertKey {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// What can go wrong loading a listener's certificates or building its TLS config.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: not a PEM certificate chain: {source}", path.display())]
    Chain {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: no certificate in the file", .0.display())]
    NoCertificate(PathBuf),
    #[error("{}: not a PEM private key: {source}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("generated key: {0}")]
    GeneratedKey(&'static str),
    #[error("{what}: unusable private key: {source}")]
    UnusableKey {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{what}: the key does not match the certificate: {source}")]
    Mismatch {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{0}")]
    Name(String),
    #[error("{what}: the certificate's subject alternative names do not cover \"{name}\"")]
    NotCovered { what: String, name: String },
    #[error(
        "[listeners.tls] has no certificate: set cert and key, or [[listeners.tls.certificates]]"
    )]
    NoDefault,
    #[error("client_auth needs client_ca (the CAs client certificates chain to)")]
    NoClientCa,
    #[error("{}: not PEM certificates: {source}", path.display())]
    ClientCaPem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: {source}", path.display())]
    ClientCaCert {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("client_ca: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("TLS versions: {0}")]
    Versions(#[source] rustls::Error),
    #[error("QUIC: {0}")]
    Quic(#[source] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("client_identity_header: \"{0}\" is not a header name")]
    ForwardHeader(String),
}

/// Reads a PEM certificate chain and private key.
pub fn load_pem(cert: &Path, key: &Path) -> Result<CertKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Chain {
            path: cert.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_path_buf(),
        source,
    })?;
    Ok(CertKey { chain, key })
}

/// A self-signed certificate for `localhost`, `127.0.0.1` and `::1`.
pub fn self_signed() -> Result<CertKey, TlsError> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ck = rcgen::generate_simple_self_signed(names).map_err(TlsError::Generate)?;
    Ok(CertKey {
        chain: vec![ck.cert.der().clone()],
        key: PrivateKeyDer::try_from(ck.signing_key.serialize_der())
            .map_err(TlsError::GeneratedKey)?,
    })
}

/// The ring crypto provider, passed explicitly everywhere (no process-wide default needed).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Turns a chain and key into a signing certificate, checking that they belong together.
fn certified(ck: CertKey, what: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = provider()
        .key_provider
        .load_private_key(ck.key)
        .map_err(|source| TlsError::UnusableKey {
            what: what.to_string(),
            source,
        })?;
    let certified = CertifiedKey::new(ck.chain, key);
    certified
        .keys_match()
        .map_err(|source| TlsError::Mismatch {
            what: what.to_string(),
            source,
        })?;
    Ok(Arc::new(certified))
}

/// Checks that the leaf certificate's SANs cover a configured name (for `*.suffix`, any name
/// under the suffix).
fn covers(cert: &CertificateDer<'_>, pattern: &HostPattern) -> bool {
    let probe = match pattern {
        HostPattern::Exact(h) => h.clone(),
        HostPattern::Wildcard(suffix) => format!("spooky-sni-probe{suffix}"),
    };
    let (Ok(ee), Ok(name)) = (
        webpki::EndEntityCert::try_from(cert),
        ServerName::try_from(probe.as_str()),
    ) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

/// The certificates of one listener, by server name.
#[derive(Debug)]
pub struct Certs {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl Certs {
    /// Loads a listener's certificates; `None` for a plaintext listener.
    pub fn load(setting: &TlsSetting, listener: &str) -> Result<Option<Certs>, TlsError> {
        match setting {
            TlsSetting::Off => Ok(None),
            TlsSetting::SelfSigned => {
                tracing::warn!(
                    listener,
                    "no [listeners.tls]: serving a generated self-signed certificate for localhost"
                );
                let default = certified(self_signed()?, "generated certificate")?;
                Ok(Some(Certs {
                    exact: HashMap::new(),
                    wildcard: HashMap::new(),
                    default,
                }))
            }
            TlsSetting::Files(cfg) => Certs::from_files(cfg).map(Some),
        }
    }

    fn from_files(cfg: &TlsConfig) -> Result<Certs, TlsError> {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut first = None;
        let mut default = None;
        if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
            let ck = certified(load_pem(cert, key)?, &cert.display().to_string())?;
            first = Some(ck);
        }
        for entry in &cfg.certificates {
            let what = entry.cert.display().to_string();
            let ck = certified(load_pem(&entry.cert, &entry.key)?, &what)?;
            for name in &entry.names {
                let pattern = HostPattern::parse(name).map_err(TlsError::Name)?;
                if !covers(&ck.cert[0], &pattern) {
                    return Err(TlsError::NotCovered {
                        what,
                        name: name.clone(),
                    });
                }
                match pattern {
                    HostPattern::Exact(h) => exact.insert(h, ck.clone()),
                    HostPattern::Wildcard(s) => wildcard.insert(s, ck.clone()),
                };
            }
            if entry.default {
                default = Some(ck.clone());
            }
            first.get_or_insert(ck);
        }
        let default = default.or(first).ok_or(TlsError::NoDefault)?;
        Ok(Certs {
            exact,
            wildcard,
            default,
        })
    }

    /// Each certificate served (once, however many names pick it): subject, DNS names and
    /// expiry (`/status`).
    pub fn summary(&self) -> Vec<CertSummary> {
        let mut seen: Vec<&Arc<CertifiedKey>> = Vec::new();
        for ck in std::iter::once(&self.default)
            .chain(self.exact.values())
            .chain(self.wildcard.values())
        {
            if !seen.iter().any(|s| Arc::ptr_eq(s, ck)) {
                seen.push(ck);
            }
        }
        seen.into_iter()
            .filter_map(|ck| CertSummary::of(ck.cert.first()?))
            .collect()
    }

    /// The certificate for a server name: exact, then the wildcard for its parent domain (a
    /// TLS wildcard stands for exactly one label, RFC 6125 §6.4.3), then the default.
    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(c) = self.exact.get(&name) {
            return c.clone();
        }
        if let Some(dot) = name.find('.')
            && let Some(c) = self.wildcard.get(&name[dot..])
        {
            return c.clone();
        }
        self.default.clone()
    }
}

/// A served certificate as `/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertSummary {
    pub subject: String,
    pub names: Vec<String>,
    /// Seconds since the epoch, and days from now (negative once expired).
    pub not_after_unix: i64,
    pub days_left: i64,
}

impl CertSummary {
    fn of(der: &CertificateDer<'_>) -> Option<CertSummary> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
        let names = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                        x509_parser::extensions::GeneralName::IPAddress(ip) => {
                            Some(format!("{ip:?}"))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let not_after = cert.validity().not_after.timestamp();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Some(CertSummary {
            subject: cert.subject().to_string(),
            names,
            not_after_unix: not_after,
            days_left: (not_after - now).div_euclid(86_400),
        })
    }
}

/// The SNI resolver shared by a listener's QUIC and TCP sides. The certificates sit behind a
/// lock so a reload can swap them for new handshakes while established connections go on.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<Certs>>,
    /// The client-certificate verifier (mTLS), and a generation counting each time it or the
    /// certificates were set: server configs are rebuilt when it moves.
    verifier: RwLock<(u64, Option<Arc<dyn ClientCertVerifier>>)>,
}

/// The client-certificate verifier as last set, and its generation.
pub type VerifierGen = (u64, Option<Arc<dyn ClientCertVerifier>>);

impl CertStore {
    pub fn new(certs: Certs) -> Arc<CertStore> {
        Arc::new(CertStore {
            current: RwLock::new(Arc::new(certs)),
            verifier: RwLock::new((0, None)),
        })
    }

    /// Verifies client certificates with `v` in handshakes from now on (server configs that
    /// use it are rebuilt: see [`ServerConfigCell`]).
    pub fn set_client_verifier(&self, v: Option<Arc<dyn ClientCertVerifier>>) {
        let mut g = self.verifier.write().unwrap_or_else(|e| e.into_inner());
        *g = (g.0 + 1, v);
    }

    pub fn client_verifier(&self) -> VerifierGen {
        self.verifier
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Serves `certs` to new handshakes from now on. The server configs are rebuilt too, and
    /// with them their session caches: resumption (and 0-RTT) state rotates with the
    /// certificates.
    pub fn replace(&self, certs: Certs) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certs);
        let mut g = self.verifier.write().unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
    }

    /// What the certificates served now are (`/status`).
    pub fn summary(&self) -> Vec<CertSummary> {
        self.certs().summary()
    }

    fn certs(&self) -> Arc<Certs> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certs().pick(hello.server_name()))
    }
}

type Build<T> = dyn Fn(Option<Arc<dyn ClientCertVerifier>>) -> Result<T, TlsError> + Send + Sync;

/// A server config built over a [`CertStore`]. Certificates are resolved per handshake and
/// need no rebuild; the client-certificate verifier is fixed inside a rustls config, so when
/// a reload replaces it the config is rebuilt on the next handshake (established connections
/// keep the one they were made with).
pub struct ServerConfigCell<T> {
    store: Arc<CertStore>,
    build: Box<Build<T>>,
    current: std::sync::Mutex<(u64, T)>,
}

impl<T: Clone> ServerConfigCell<T> {
    pub fn new(
        store: Arc<CertStore>,
        build: impl Fn(Option<Arc<dyn ClientCertVerifier>>) -> Result<T, TlsError>
        + Send
        + Sync
        + 'static,
    ) -> Result<Self, TlsError> {
        let (generation, verifier) = store.client_verifier();
        let first = build(verifier)?;
        Ok(ServerConfigCell {
            store,
            build: Box::new(build),
            current: std::sync::Mutex::new((generation, first)),
        })
    }

    /// The config for a new handshake.
    pub fn get(&self) -> T {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let (generation, verifier) = self.store.client_verifier();
        if cur.0 != generation {
            match (self.build)(verifier) {
                Ok(t) => *cur = (generation, t),
                Err(e) => {
                    tracing::error!(error = %e, "server config not rebuilt after reload: keeping the previous one");
                    cur.0 = generation;
                }
            }
        }
        cur.1.clone()
    }
}

/// The client-certificate verifier of a listener (mTLS), if `client_auth` asks for one.
pub fn client_verifier(
    setting: &TlsSetting,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, TlsError> {
    let TlsSetting::Files(cfg) = setting else {
        return Ok(None);
    };
    if cfg.client_auth == ClientAuth::Off {
        return Ok(None);
    }
    let Some(ca) = &cfg.client_ca else {
        return Err(TlsError::NoClientCa);
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::ClientCaPem {
            path: ca.clone(),
            source,
        })?;
    for c in certs {
        roots.add(c).map_err(|source| TlsError::ClientCaCert {
            path: ca.clone(),
            source,
        })?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = match cfg.client_auth {
        ClientAuth::Optional => builder.allow_unauthenticated(),
        _ => builder,
    };
    builder.build().map(Some).map_err(TlsError::Verifier)
}

fn server_crypto(
    store: Arc<CertStore>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(TlsError::Versions)?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(store);
    cfg.alpn_protocols = alpn;
    Ok(cfg)
}

/// A TLS 1.3 server config offering ALPN `h3`; with `early_data`, resumed clients may send
/// 0-RTT data (QUIC takes no other limit than `u32::MAX`: flow control bounds it).
pub fn h3_server_crypto(
    store: Arc<CertStore>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    early_data: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = server_crypto(
        store,
        verifier,
        &[&rustls::version::TLS13],
        vec![b"h3".to_vec()],
    )?;
    if early_data {
        cfg.max_early_data_size = u32::MAX;
    }
    Ok(cfg)
}

/// A TLS 1.2/1.3 server config offering the given ALPN protocols (`h2`, `http/1.1`).
pub fn tcp_server_crypto(
    store: Arc<CertStore>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ServerConfig, TlsError> {
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    server_crypto(store, verifier, &versions, alpn)
}

/// The header that forwards the client identity to backends (`client_identity_header`).
pub fn forward_header(setting: &TlsSetting) -> Result<Option<http::HeaderName>, TlsError> {
    match setting {
        TlsSetting::Files(TlsConfig {
            client_identity_header: Some(h),
            ..
        }) => http::HeaderName::from_bytes(h.as_bytes())
            .map(Some)
            .map_err(|_| TlsError::ForwardHeader(h.clone())),
        _ => Ok(None),
    }
}

/// The identity in a verified peer chain (its leaf).
pub fn identity_of(
    chain: Option<&[CertificateDer<'_>]>,
    remote: std::net::SocketAddr,
) -> Option<Arc<crate::tls::identity::ClientIdentity>> {
    let id = chain
        .and_then(|c| c.first())
        .map(|leaf| Arc::new(crate::tls::identity::ClientIdentity::from_der(leaf)))?;
    tracing::debug!(%remote, subject = %id.subject, san = %id.sans.join(","), sha256 = %id.sha256, "client certificate verified");
    Some(id)
}
