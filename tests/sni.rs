//! SNI: the most specific certificate per server name, the same on TCP and QUIC; names a
//! certificate does not cover are a config error.

mod support;

use rustls::pki_types::CertificateDer;
use spooky::h3client::{H3Client, Trust};
use support::proxy::{Proxy, pipeline_with};
use support::tcp::{client_config, tls_connect};
use support::{TempDir, spooky};

struct Pem {
    cert: String,
    key: String,
    der: CertificateDer<'static>,
}

fn cert(dir: &TempDir, file: &str, sans: &[&str]) -> Pem {
    let ck =
        rcgen::generate_simple_self_signed(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("rcgen");
    let cert = dir.0.join(format!("{file}.pem"));
    let key = dir.0.join(format!("{file}.key"));
    std::fs::write(&cert, ck.cert.pem()).expect("write");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write");
    Pem {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        der: ck.cert.der().clone(),
    }
}

const REST: &str = r#"
[[routes]]
name = "hello"
match = { path_prefix = "/" }
respond = { status = 200, body = "hi\n" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn most_specific_certificate_per_sni_on_tcp_and_quic() {
    let dir = TempDir::new();
    let exact = cert(&dir, "exact", &["api.example.com"]);
    let wild = cert(&dir, "wild", &["*.example.com"]);
    // The fallback also covers names the others do not, so every handshake below verifies and
    // the check is only on which certificate was chosen.
    let fallback = cert(
        &dir,
        "fallback",
        &[
            "localhost",
            "127.0.0.1",
            "deep.www.example.com",
            "unknown.test",
        ],
    );
    let tls = format!(
        r#"
[[listeners.tls.certificates]]
cert = "{}"
key = "{}"
names = ["*.example.com"]

[[listeners.tls.certificates]]
cert = "{}"
key = "{}"
names = ["api.example.com"]

[[listeners.tls.certificates]]
cert = "{}"
key = "{}"
names = ["localhost"]
default = true
"#,
        wild.cert, wild.key, exact.cert, exact.key, fallback.cert, fallback.key
    );
    let proxy = Proxy::start(&pipeline_with(r#"["h3", "h2", "http1"]"#, &tls, REST));
    let roots = vec![exact.der.clone(), wild.der.clone(), fallback.der.clone()];
    let tcp = proxy.tcp_addr.expect("tcp");
    let cases = [
        ("api.example.com", &exact.der),
        ("www.example.com", &wild.der),
        ("deep.www.example.com", &fallback.der), // a wildcard covers one label only
        ("localhost", &fallback.der),
        ("unknown.test", &fallback.der),
    ];
    let quic = H3Client::new(Trust::Roots(roots.clone())).expect("client");
    for (sni, want) in cases {
        let cfg = client_config(&roots, &[b"h2"]);
        let (_, leaf) = tls_connect(tcp, sni, cfg).await.expect("TCP handshake");
        assert_eq!(&leaf, want, "TCP certificate for {sni}");
        // QUIC: the same store decides.
        let c = quic
            .connect(proxy.h3_addr, sni)
            .await
            .expect("QUIC handshake");
        let ids = c.conn.peer_identity().expect("identity");
        let chain = ids
            .downcast::<Vec<CertificateDer<'static>>>()
            .expect("certs");
        assert_eq!(&chain[0], want, "QUIC certificate for {sni}");
    }
    // No SNI at all (an IP address is never sent as SNI): the default.
    let (_, leaf) = tls_connect(tcp, "127.0.0.1", client_config(&roots, &[b"h2"]))
        .await
        .expect("no-SNI handshake");
    assert_eq!(leaf, fallback.der);
}

#[test]
fn a_name_the_certificate_does_not_cover_is_a_config_error() {
    let dir = TempDir::new();
    let exact = cert(&dir, "exact", &["api.example.com"]);
    let text = pipeline_with(
        r#"["h3"]"#,
        &format!(
            "[[listeners.tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\nnames = [\"api.example.com\", \"www.example.com\"]\n",
            exact.cert, exact.key
        ),
        REST,
    );
    let file = dir.0.join("p.toml");
    std::fs::write(&file, &text).expect("write");
    let (code, _, err) = spooky(&["check", &file.display().to_string()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("listeners[0].tls"), "{err}");
    assert!(err.contains("do not cover \"www.example.com\""), "{err}");
    // A key that belongs to another certificate is refused too.
    let other = cert(&dir, "other", &["api.example.com"]);
    let text = text
        .replace(&exact.key, &other.key)
        .replace(", \"www.example.com\"", "");
    std::fs::write(&file, &text).expect("write");
    let (code, _, err) = spooky(&["check", &file.display().to_string()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("does not match the certificate"), "{err}");
}
