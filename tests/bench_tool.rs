//! `spooky-bench`, the load tool the performance suite trusts: `get` sends a method, headers
//! and a body, verifies the certificate when given a CA, and fails fast with a clear message
//! on an `http://` URL or a port where nothing answers; `load` reports responses by status and
//! Spooky's own refusals by reason, over HTTP/3, HTTP/2 and HTTP/1.1, and counts body bytes
//! (raw QUIC downloads from `quic-serve` too).

mod support;

use std::time::{Duration, Instant};

use support::backend::Backend;
use support::proxy::{Proxy, hello_and_app, pipeline, pipeline_with};
use support::{TempDir, TestCert};

/// Runs `spooky-bench ARGS` to the end, off the test's runtime: (success, stdout, stderr).
async fn bench(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spooky-bench"))
            .args(&args)
            .output()
            .expect("run spooky-bench");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_sends_method_headers_and_body_and_verifies_when_asked() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let proxy = Proxy::start(&pipeline(&cert.toml(), &hello_and_app(&backend.url())));
    let base = format!("https://localhost:{}", proxy.h3_addr.port());
    let ca = cert.cert_path.display().to_string();

    let (ok, out, err) = bench(args(&[
        "get",
        "--cacert",
        &ca,
        "-H",
        "x-probe: 7",
        &format!("{base}/headers"),
    ]))
    .await;
    assert!(ok, "{err}");
    assert!(out.starts_with("HTTP/3 200"), "{out}");
    assert!(
        out.contains("x-probe: 7"),
        "the header reached the backend: {out}"
    );

    let (ok, out, err) = bench(args(&[
        "get",
        "-X",
        "PUT",
        "-d",
        "a body",
        "-i",
        &format!("{base}/echo"),
    ]))
    .await;
    assert!(ok, "{err}");
    assert!(out.ends_with("\n\na body"), "the body came back: {out}");

    // A CA that did not sign the proxy's certificate: verification is on, so it fails.
    let other_dir = TempDir::new();
    let other = TestCert::generate(&other_dir);
    let (ok, _, err) = bench(args(&[
        "get",
        "--cacert",
        &other.cert_path.display().to_string(),
        &format!("{base}/hello"),
    ]))
    .await;
    assert!(!ok, "an unknown issuer is refused");
    assert!(err.contains("spooky-bench:"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_fails_fast_and_clearly_on_http_urls_and_silent_ports() {
    let (ok, _, err) = bench(args(&["get", "http://127.0.0.1:8080/"])).await;
    assert!(!ok);
    assert!(err.contains("https://"), "says what it needs: {err}");

    // A UDP port nobody listens on (bound here, then freed).
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("udp")
        .port();
    let start = Instant::now();
    let (ok, _, err) = bench(args(&[
        "get",
        "--timeout",
        "1s",
        &format!("https://127.0.0.1:{port}/"),
    ]))
    .await;
    assert!(!ok);
    assert!(err.contains("no HTTP/3 answer"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "bounded by --timeout"
    );

    let (ok, _, err) = bench(args(&["get", "--timeout", "soon", "https://127.0.0.1:1/"])).await;
    assert!(!ok);
    assert!(err.contains("soon"), "names the bad value: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_counts_responses_by_status_and_refusals_by_reason() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    // Only /hello is routed: anything else is Spooky's own 404 (no_route).
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3", "h2", "http1"]"#,
        &cert.toml(),
        "[[routes]]\nname = \"hello\"\nmatch = { path_prefix = \"/hello\" }\nrespond = { status = 200, body = \"hi\\n\" }\n",
    ));
    let url = |p: &str| format!("https://127.0.0.1:{}{p}", proxy.h3_addr.port());
    let run = |u: String, proto: &str| {
        bench(args(&[
            "load",
            "--proto",
            proto,
            "--url",
            &u,
            "--connections",
            "2",
            "--streams",
            "2",
            "--duration",
            "10s",
            "--max-requests",
            "40",
            "--machine",
        ]))
    };
    for proto in ["h3", "h2", "h1"] {
        let (ok, out, err) = run(url("/nowhere"), proto).await;
        assert!(ok, "{proto}: {err}");
        assert!(out.contains(" ok=0 "), "{proto}: {out}");
        assert!(out.contains("status=404:40"), "{proto}: {out}");
        assert!(out.contains("reasons=no_route:40"), "{proto}: {out}");
    }

    // Open loop at a fixed rate: every request answered, none refused.
    let (ok, out, err) = bench(args(&[
        "load",
        "--url",
        &url("/hello"),
        "--connections",
        "1",
        "--streams",
        "4",
        "--rate",
        "200",
        "--duration",
        "10s",
        "--max-requests",
        "40",
        "--machine",
    ]))
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains(" ok=40 ") && out.contains("status=200:40"),
        "{out}"
    );
    assert!(out.contains("reasons=-"), "{out}");
    // Every body counted: 40 × "hi\n".
    assert!(out.contains(" bytes=120 "), "{out}");
}

/// Kills the child when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_quic_downloads_are_counted_to_the_byte() {
    use std::io::BufRead;
    // Not a multiple of the server's 64 KiB chunks: the last write is a short one.
    const SIZE: u64 = 100_000;
    let mut server = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_spooky-bench"))
            .args([
                "quic-serve",
                "--addr",
                "127.0.0.1:0",
                "--size",
                &SIZE.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run spooky-bench quic-serve"),
    );
    let stdout = server.0.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    })
    .await
    .expect("join")
    .expect("read quic-serve's first line");
    let addr = line
        .trim()
        .strip_prefix("quic listening on ")
        .unwrap_or_else(|| panic!("quic-serve said: {line}"));
    let (ok, out, err) = bench(args(&[
        "load",
        "--proto",
        "quic",
        "--url",
        &format!("https://{addr}/"),
        "--connections",
        "2",
        "--streams",
        "3",
        "--duration",
        "20s",
        "--max-requests",
        "12",
        "--machine",
    ]))
    .await;
    assert!(ok, "{err}");
    assert!(out.contains(" ok=12 ") && out.contains("errors=0"), "{out}");
    assert!(out.contains(&format!(" bytes={} ", 12 * SIZE)), "{out}");
    drop(server);

    // Nothing there any more: a clear failure, not a hang.
    let (ok, _, err) = bench(args(&[
        "load",
        "--proto",
        "quic",
        "--url",
        &format!("https://{addr}/"),
        "--max-requests",
        "1",
    ]))
    .await;
    assert!(!ok);
    assert!(err.contains("no raw QUIC handshake"), "{err}");
}
