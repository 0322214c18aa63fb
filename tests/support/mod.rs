//! Shared harness for the end-to-end tests: the real daemon as a child process, real HTTP/1.1
//! backends (hyper) and real HTTP/3 clients (quinn + h3) with rcgen certificates, all on
//! 127.0.0.1.
#![allow(dead_code)]

pub mod backend;
pub mod dns;
pub mod fault;
pub mod frames;
pub mod h3_backend;
pub mod named;
pub mod proxy;
pub mod raw_backend;
pub mod tcp;
pub mod tls_backend;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::pki_types::CertificateDer;
use spooky::h3client::{H3Client, H3Conn, Trust};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "spooky-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate for localhost/127.0.0.1 written as PEM files, and its DER for clients.
pub struct TestCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub der: CertificateDer<'static>,
}

impl TestCert {
    pub fn generate(dir: &TempDir) -> TestCert {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("rcgen");
        let cert_path = dir.0.join("cert.pem");
        let key_path = dir.0.join("key.pem");
        std::fs::write(&cert_path, ck.cert.pem()).expect("write cert");
        std::fs::write(&key_path, ck.signing_key.serialize_pem()).expect("write key");
        TestCert {
            cert_path,
            key_path,
            der: ck.cert.der().clone(),
        }
    }

    /// The `[listeners.tls]` table for this certificate.
    pub fn toml(&self) -> String {
        format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            self.cert_path.display(),
            self.key_path.display()
        )
    }

    /// An HTTP/3 client that trusts only this certificate.
    pub fn client(&self) -> H3Client {
        H3Client::new(Trust::Roots(vec![self.der.clone()])).expect("client")
    }
}

/// Connects a verified HTTP/3 client to the proxy.
pub async fn connect(client: &H3Client, proxy: &proxy::Proxy) -> H3Conn {
    client
        .connect(proxy.h3_addr, "localhost")
        .await
        .expect("connect")
}

/// `https://localhost/<path>` for requests to the proxy.
pub fn url(path: &str) -> String {
    format!("https://localhost{path}")
}

/// Runs the `spooky` binary with `args` to the end: (exit code, stdout, stderr).
pub fn spooky(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spooky"))
        .args(args)
        .output()
        .expect("run spooky");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits (bounded: 10 s) until `cond` holds, checking again each time `changed` is notified;
/// panics naming `what` if it never does.
pub async fn wait_until(changed: &tokio::sync::Notify, what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // Created before the check: a notification between the two is not lost.
        let notified = changed.notified();
        if cond() {
            return;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            panic!("timed out waiting for {what}");
        }
    }
}

/// A loopback address with nothing listening (bound, noted, closed): connections are refused.
pub fn dead_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
}
