//! Client certificates (mTLS): off / optional / required, with and without a certificate, on
//! TCP and on QUIC; the verified identity forwarded to the backend in a configured header.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use spooky::h3client::{H3Client, Trust};
use support::backend::Backend;
use support::proxy::{Proxy, app_upstream, pipeline_with};
use support::tcp::{Sender, body, client_config_with};
use support::tls_backend::Ca;
use support::{TempDir, TestCert, url};

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// What the backend saw in `x-client-identity`, or why the request failed.
async fn over_tcp(
    proxy: &Proxy,
    roots: &[CertificateDer<'static>],
    id: Option<Identity>,
) -> Result<String, String> {
    let cfg = client_config_with(roots, &[b"h2"], id);
    let mut s = Sender::connect_with(proxy.tcp_addr.expect("tcp"), cfg)
        .await
        .map_err(|e| e.to_string())?;
    let req = Request::get("https://localhost/headers")
        .header("x-client-identity", "forged by the client")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = s.try_send(req).await.map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::OK {
        return Err(format!("status {}", resp.status()));
    }
    Ok(identity_line(&body(resp).await.0))
}

async fn over_quic(
    proxy: &Proxy,
    roots: &[CertificateDer<'static>],
    id: Option<Identity>,
) -> Result<String, String> {
    let client =
        H3Client::with_identity(Trust::Roots(roots.to_vec()), id).map_err(|e| e.to_string())?;
    let conn = client
        .connect(proxy.h3_addr, "localhost")
        .await
        .map_err(|e| e.to_string())?;
    let req = Request::get(url("/headers"))
        .header("x-client-identity", "forged by the client")
        .body(())
        .expect("req");
    let resp = conn.request(req, None).await.map_err(|e| e.to_string())?;
    if resp.status != StatusCode::OK {
        return Err(format!("status {}", resp.status));
    }
    Ok(identity_line(&resp.body))
}

fn identity_line(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .lines()
        .find(|l| l.starts_with("x-client-identity:"))
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_auth_modes_on_tcp_and_quic() {
    let dir = TempDir::new();
    let server = TestCert::generate(&dir);
    let ca = Ca::new("client CA");
    let ca_path = dir.0.join("client-ca.pem");
    ca.write(&ca_path);
    let issued = ca.issue(&dir, "client", &["client-a.example"]);
    let identity = || Some((issued.chain.clone(), issued.key.clone_key()));
    let backend = Backend::start().await;
    let roots = vec![server.der.clone()];
    let rest = app_upstream(&backend.url());
    for mode in ["off", "optional", "required"] {
        let tls = format!(
            "tls = {{ cert = \"{}\", key = \"{}\", client_auth = \"{mode}\", client_ca = \"{}\", client_identity_header = \"x-client-identity\" }}",
            server.cert_path.display(),
            server.key_path.display(),
            ca_path.display()
        );
        let proxy = Proxy::start_logging(
            &pipeline_with(r#"["h3", "h2", "http1"]"#, &tls, &rest),
            Some("warn,spooky_stages::tls=debug"),
        );
        for quic in [false, true] {
            let run = |id| {
                let (proxy, roots) = (&proxy, &roots);
                async move {
                    if quic {
                        over_quic(proxy, roots, id).await
                    } else {
                        over_tcp(proxy, roots, id).await
                    }
                }
            };
            let with = run(identity()).await;
            let without = run(None).await;
            let side = if quic { "QUIC" } else { "TCP" };
            match mode {
                "off" => {
                    // Not asked for, so not sent: nothing forwarded, and the forged value is gone.
                    assert_eq!(with.as_deref(), Ok(""), "{side} off, with cert");
                    assert_eq!(without.as_deref(), Ok(""), "{side} off, without cert");
                }
                "optional" => {
                    let line = with.unwrap_or_else(|e| panic!("{side} optional with cert: {e}"));
                    assert!(
                        line.contains("san=\"dns:client-a.example\""),
                        "{side}: {line}"
                    );
                    assert!(line.contains("sha256="), "{side}: {line}");
                    assert!(!line.contains("forged"), "{side}: {line}");
                    assert_eq!(without.as_deref(), Ok(""), "{side} optional, without cert");
                    // The identity is loggable: each verified client certificate is logged.
                    let log = proxy.log();
                    assert!(
                        log.lines()
                            .any(|l| l.contains("client certificate verified")
                                && l.contains("dns:client-a.example")
                                && l.contains("sha256=")),
                        "{side}: {log}"
                    );
                }
                _ => {
                    let line = with.unwrap_or_else(|e| panic!("{side} required with cert: {e}"));
                    assert!(
                        line.contains("san=\"dns:client-a.example\""),
                        "{side}: {line}"
                    );
                    assert!(
                        without.is_err(),
                        "{side} required without a certificate must fail: {without:?}"
                    );
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused_when_required() {
    let dir = TempDir::new();
    let server = TestCert::generate(&dir);
    let ca = Ca::new("client CA");
    let ca_path = dir.0.join("client-ca.pem");
    ca.write(&ca_path);
    let stranger = Ca::new("other CA").issue(&dir, "stranger", &["stranger.example"]);
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\", client_auth = \"required\", client_ca = \"{}\" }}",
        server.cert_path.display(),
        server.key_path.display(),
        ca_path.display()
    );
    let rest = "[[routes]]\nname = \"hi\"\nrespond = { status = 200, body = \"hi\" }\n";
    let proxy = Proxy::start(&pipeline_with(r#"["h3", "h2"]"#, &tls, rest));
    let roots = vec![server.der.clone()];
    let id = Some((stranger.chain.clone(), stranger.key.clone_key()));
    assert!(over_tcp(&proxy, &roots, id).await.is_err());
    let id = Some((stranger.chain.clone(), stranger.key.clone_key()));
    assert!(over_quic(&proxy, &roots, id).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_ca_is_reloaded_with_the_certificates() {
    let dir = TempDir::new();
    let server = TestCert::generate(&dir);
    let (old_ca, new_ca) = (Ca::new("old client CA"), Ca::new("new client CA"));
    let ca_path = dir.0.join("client-ca.pem");
    old_ca.write(&ca_path);
    let old_client = old_ca.issue(&dir, "old", &["old.example"]);
    let new_client = new_ca.issue(&dir, "new", &["new.example"]);
    let old_id = || Some((old_client.chain.clone(), old_client.key.clone_key()));
    let new_id = || Some((new_client.chain.clone(), new_client.key.clone_key()));
    let backend = Backend::start().await;
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\", client_auth = \"required\", client_ca = \"{}\", client_identity_header = \"x-client-identity\" }}",
        server.cert_path.display(),
        server.key_path.display(),
        ca_path.display()
    );
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3", "h2"]"#,
        &tls,
        &app_upstream(&backend.url()),
    ));
    let roots = vec![server.der.clone()];
    let accepted = |r: &Result<String, String>, who: &str| {
        let line = r.as_ref().unwrap_or_else(|e| panic!("{who}: {e}"));
        assert!(line.contains(who), "{who}: {line}");
    };
    accepted(&over_tcp(&proxy, &roots, old_id()).await, "old.example");
    accepted(&over_quic(&proxy, &roots, old_id()).await, "old.example");
    assert!(over_tcp(&proxy, &roots, new_id()).await.is_err());
    assert!(over_quic(&proxy, &roots, new_id()).await.is_err());

    // A connection made under the old CA, kept open across the reload.
    let mut kept = Sender::connect_with(
        proxy.tcp_addr.expect("tcp"),
        client_config_with(&roots, &[b"h2"], old_id()),
    )
    .await
    .expect("old client");
    let get = || {
        Request::get("https://localhost/headers")
            .body(Full::new(Bytes::new()))
            .expect("req")
    };
    assert_eq!(kept.send(get()).await.status(), StatusCode::OK);

    new_ca.write(&ca_path);
    proxy.sighup();
    let reloads = [("kind", "certs"), ("result", "ok")];
    proxy
        .wait_metric("spooky_control_reloads_total", &reloads, |v| v == 1.0)
        .await;
    accepted(&over_tcp(&proxy, &roots, new_id()).await, "new.example");
    accepted(&over_quic(&proxy, &roots, new_id()).await, "new.example");
    assert!(
        over_tcp(&proxy, &roots, old_id()).await.is_err(),
        "new TCP handshakes no longer trust the old CA"
    );
    assert!(
        over_quic(&proxy, &roots, old_id()).await.is_err(),
        "new QUIC handshakes no longer trust the old CA"
    );
    assert_eq!(
        kept.send(get()).await.status(),
        StatusCode::OK,
        "an established connection goes on untouched"
    );

    // A broken client CA file is refused as a whole: the new CA keeps serving.
    std::fs::write(&ca_path, "not a certificate").expect("write");
    proxy.sighup();
    // SIGHUP reloads the whole configuration, which checks the file first: the reload is
    // refused as invalid and nothing changes.
    let refused = [("trigger", "file"), ("outcome", "invalid")];
    proxy
        .wait_metric("spooky_config_reloads_total", &refused, |v| v == 1.0)
        .await;
    accepted(&over_tcp(&proxy, &roots, new_id()).await, "new.example");
    accepted(&over_quic(&proxy, &roots, new_id()).await, "new.example");
    assert!(
        proxy.log().contains("client_ca") || proxy.log().contains("client-ca.pem"),
        "the refusal names the file: {}",
        proxy.log()
    );
}
