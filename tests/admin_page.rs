//! The admin listener's page (`GET /`): served self-contained (no external assets) behind the
//! admin token when one is set (a browser's Basic login carries it), open on a loopback admin
//! without one; and, in headless Chromium when the machine has it (CI installs it), it loads
//! with no console errors and draws every stage of the running chain and every upstream.
//! `spooky health` asks the same listener.

mod support;

use support::backend::Backend;
use support::proxy::{Proxy, app_upstream, pipeline_with};
use support::{TempDir, TestCert, spooky};

const TOKEN: &str = "a-token-long-enough-for-the-admin";

/// One raw request to the admin listener: the whole answer (head and body).
async fn raw(proxy: &Proxy, path: &str, headers: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy.admin_addr)
        .await
        .expect("admin");
    let req = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

fn status_of(answer: &str) -> u16 {
    answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn start(dir: &TempDir, backend: &Backend, token: bool) -> Proxy {
    let cert = TestCert::generate(dir);
    let token_line = if token {
        let f = dir.0.join("token");
        std::fs::write(&f, TOKEN).expect("token");
        format!("token_file = \"{}\"\n", f.display())
    } else {
        String::new()
    };
    Proxy::start(&pipeline_with(
        r#"["h3", "h2"]"#,
        &cert.toml(),
        &format!("{token_line}\n{}", app_upstream(&backend.url())),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_behind_the_token_when_one_is_set() {
    let dir = TempDir::new();
    let backend = Backend::start().await;
    let proxy = start(&dir, &backend, true);
    let denied = raw(&proxy, "/", "").await;
    assert_eq!(status_of(&denied), 401, "{denied}");
    assert!(
        denied
            .to_ascii_lowercase()
            .contains("www-authenticate: basic realm="),
        "a browser must be asked for the token: {denied}"
    );
    assert_eq!(status_of(&raw(&proxy, "/status", "").await), 401);
    // The bearer token, or the browser's Basic login with the token as the password.
    let bearer = raw(&proxy, "/", &format!("authorization: Bearer {TOKEN}\r\n")).await;
    assert_eq!(status_of(&bearer), 200);
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("ops:{TOKEN}"));
    let page = raw(&proxy, "/", &format!("authorization: Basic {basic}\r\n")).await;
    assert_eq!(status_of(&page), 200);
    let status = raw(
        &proxy,
        "/status",
        &format!("authorization: Basic {basic}\r\n"),
    )
    .await;
    assert_eq!(status_of(&status), 200);
    let wrong = base64::engine::general_purpose::STANDARD.encode("ops:not-the-token");
    assert_eq!(
        status_of(&raw(&proxy, "/", &format!("authorization: Basic {wrong}\r\n")).await),
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_draws_every_stage_and_upstream() {
    let dir = TempDir::new();
    let backend = Backend::start().await;
    let proxy = start(&dir, &backend, false);
    // Served as one self-contained HTML file.
    let answer = raw(&proxy, "/", "").await;
    assert_eq!(status_of(&answer), 200);
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/html"), "{answer}");
    assert!(lower.contains("content-security-policy: default-src 'none'"));
    let (_, html) = answer.split_once("\r\n\r\n").expect("body");
    for external in ["src=\"http", "href=\"http", "<link", "@import", "src=\"//"] {
        assert!(!html.contains(external), "an external asset: {external}");
    }
    assert!(
        html.contains("fetch(\"/status\""),
        "the page draws from /status"
    );
    // The stages it must draw: the running chain, from /status.
    let (_, status) = proxy.admin_get("/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    let stages: Vec<String> = status["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter_map(|s| s["stage"].as_str().map(str::to_string))
        .collect();
    assert_eq!(stages.len(), 8, "{stages:?}");

    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok()
        })
    else {
        assert!(
            std::env::var_os("SPOOKY_REQUIRE_CHROMIUM").is_none(),
            "SPOOKY_REQUIRE_CHROMIUM is set but no Chromium is installed"
        );
        eprintln!("no Chromium here: the page was checked as served, not rendered");
        return;
    };
    let profile = TempDir::new();
    let url = format!("http://{}/", proxy.admin_addr);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--enable-logging=stderr",
                "--v=0",
                // Virtual time: the page's fetch and its one-second refresh run to completion.
                "--virtual-time-budget=3000",
            ])
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg("--dump-dom")
            .arg(&url)
            .output()
    })
    .await
    .expect("join")
    .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    let console_errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") && (l.contains("Uncaught") || l.contains("Error")))
        .collect();
    assert!(
        console_errors.is_empty(),
        "console errors: {console_errors:?}"
    );
    for s in &stages {
        assert!(
            dom.contains(&format!("data-stage=\"{s}\"")),
            "stage {s} not drawn:\n{dom}"
        );
    }
    assert!(dom.contains(">app<"), "upstream app not drawn:\n{dom}");
    assert!(
        dom.contains("<div id=\"error\"></div>"),
        "the page reports an error:\n{dom}"
    );
    // In the chain's order.
    let at = |s: &str| {
        dom.find(&format!("data-stage=\"{s}\""))
            .unwrap_or(usize::MAX)
    };
    assert!(
        stages.windows(2).all(|w| at(&w[0]) < at(&w[1])),
        "{stages:?}"
    );
    assert_eq!(
        stages,
        [
            "ingress",
            "admission",
            "route",
            "queue",
            "select",
            "hedge-retry",
            "dispatch",
            "egress"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooky_health_asks_the_admin_listener() {
    let dir = TempDir::new();
    let backend = Backend::start().await;
    let proxy = start(&dir, &backend, false);
    let admin = proxy.admin_addr.to_string();
    let (code, _, _) = spooky(&["health", "--admin", &admin]);
    assert_eq!(code, 0);
    drop(proxy);
    let (code, _, err) = spooky(&["health", "--admin", &admin]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&admin), "{err}");
}
