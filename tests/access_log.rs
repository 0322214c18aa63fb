//! The access log, from the real binary: one JSON line per exchange with every documented
//! field, for a proxied response, a direct response, a shed request, an upstream failure and
//! a client that left, over HTTP/3, HTTP/2 and HTTP/1.1; the text form; sampling and a
//! route that opts out; reopening on SIGUSR1; and a destination nobody reads, which drops and
//! counts lines while requests go on.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use http::Request;
use serde_json::Value;
use support::backend::Backend;
use support::named::Client;
use support::proxy::{Proxy, pipeline_with};
use support::tcp::{Sender, get};
use support::{TempDir, TestCert, connect, dead_addr, url};

/// The JSON fields every line has (null when they do not apply).
const FIELDS: [&str; 25] = [
    "ts",
    "id",
    "request_id",
    "client",
    "client_ip",
    "protocol",
    "tls",
    "sni",
    "method",
    "authority",
    "path",
    "route",
    "upstream",
    "backend",
    "attempts",
    "status",
    "reason",
    "outcome",
    "bytes_in",
    "bytes_out",
    "ttfb_ms",
    "duration_ms",
    "stages",
    "identity",
    "identity_sha256",
];

/// Routes: `/hello` answered by the proxy, `/dead` to a backend that refuses connections,
/// everything else to `backend` (one request at a time; a second is shed by select).
fn routes(backend: &Backend, extra_route: &str) -> String {
    format!(
        r#"
[stages.select]
when_full = "shed"

[[routes]]
name = "hello"
match = {{ path_prefix = "/hello" }}
respond = {{ status = 200, body = "hello from spooky\n" }}

[[routes]]
name = "dead"
match = {{ path_prefix = "/dead" }}
upstream = "dead"

{extra_route}

[[routes]]
name = "app"
match = {{ path_prefix = "/" }}
upstream = "app"

[upstreams.app]
backends = [ {{ url = "{}", max_inflight = 1 }} ]

[upstreams.dead]
backends = [ {{ url = "http://{}" }} ]
"#,
        backend.url(),
        dead_addr()
    )
}

fn start(cert: &TestCert, log: &str, rest: &str) -> Proxy {
    Proxy::start(&pipeline_with(
        r#"["h3", "h2", "http1"]"#,
        &cert.toml(),
        &format!("[access_log]\n{log}\n\n{rest}"),
    ))
}

/// Waits (bounded: 10 s) until the log file holds a line for every request id in `ids`;
/// returns the lines by request id.
async fn lines_for(path: &std::path::Path, ids: &[String]) -> HashMap<String, Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut by_id = HashMap::new();
        for line in text.lines() {
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if let Some(id) = v["request_id"].as_str() {
                by_id.insert(id.to_string(), v);
            }
        }
        if ids.iter().all(|id| by_id.contains_key(id)) {
            return by_id;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("the access log lacks some of {ids:?}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn has_every_field(line: &Value) {
    let obj = line.as_object().expect("an object");
    for f in FIELDS {
        assert!(obj.contains_key(f), "field {f} missing: {line}");
    }
}

fn attempts(line: &Value) -> Vec<String> {
    line["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ending_is_one_json_line_with_every_field_over_each_protocol() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let log = dir.0.join("access.log");
    let proxy = start(
        &cert,
        &format!("path = \"{}\"\nformat = \"json\"", log.display()),
        &routes(&backend, ""),
    );
    let mut ids = Vec::new();
    let mut held = 0;
    for proto in ["h3", "h2", "http1"] {
        let id = |case: &str| format!("{proto}-{case}");
        let mut c = Client::open(proto, &proxy, &cert).await;
        // Proxied, direct, and a backend that refuses connections.
        for (path, case, status) in [
            ("/ok", "proxied", 200),
            ("/hello", "direct", 200),
            ("/dead", "failed", 502),
        ] {
            let got = c
                .send("GET", &url(path), &[("x-request-id", &id(case))])
                .await;
            assert_eq!(got.status, status, "{proto} {path}");
            ids.push(id(case));
        }
        // Shed: the one backend slot is held, so select sheds the next request.
        let mut holder = Client::open(proto, &proxy, &cert).await;
        let hold_id = id("held");
        let holding = tokio::spawn(async move {
            holder
                .send("GET", &url("/hold/a"), &[("x-request-id", &hold_id)])
                .await
        });
        held += 1;
        backend.state.wait_held(held).await;
        let shed = c
            .send("GET", &url("/x"), &[("x-request-id", &id("shed"))])
            .await;
        assert_eq!(shed.status, 503, "{proto} shed");
        backend.state.release(1);
        assert_eq!(holding.await.expect("held").status, 200);
        backend.state.wait_finished(held).await;
        ids.extend([id("shed"), id("held")]);
        // The client leaves while the backend holds the head.
        held += 1;
        let leaving = id("reset");
        match proto {
            "h3" => {
                let conn = connect(&cert.client(), &proxy).await;
                let mut send = conn.send.clone();
                let req = Request::get(url("/hold/reset"))
                    .header("x-request-id", leaving.as_str())
                    .body(())
                    .expect("req");
                let mut st = send.send_request(req).await.expect("send");
                let _ = st.finish().await;
                backend.state.wait_held(held).await;
                conn.close();
            }
            alpn => {
                let alpn: &[u8] = if alpn == "h2" { b"h2" } else { b"http/1.1" };
                let mut s = Sender::connect(
                    proxy.tcp_addr.expect("tcp"),
                    std::slice::from_ref(&cert.der),
                    alpn,
                )
                .await;
                let pending = tokio::spawn(async move {
                    let mut req = get("/hold/reset");
                    req.headers_mut()
                        .insert("x-request-id", leaving.parse().expect("id"));
                    let _ = s.try_send(req).await;
                });
                backend.state.wait_held(held).await;
                pending.abort();
                let _ = pending.await;
            }
        }
        backend.state.wait_finished(held).await;
        ids.push(id("reset"));
    }
    let lines = lines_for(&log, &ids).await;
    for (id, line) in &lines {
        has_every_field(line);
        let proto = id.split('-').next().unwrap_or("");
        let want = match proto {
            "h3" => "h3",
            "h2" => "h2",
            _ => "http/1.1",
        };
        assert_eq!(line["protocol"], want, "{line}");
        assert_eq!(line["tls"], "TLSv1.3", "{line}");
        assert_eq!(line["sni"], "localhost", "{line}");
        assert_eq!(line["method"], "GET", "{line}");
        assert_eq!(line["authority"], "localhost", "{line}");
        assert!(
            line["client"]
                .as_str()
                .unwrap_or("")
                .starts_with("127.0.0.1:"),
            "{line}"
        );
        assert!(line["ts"].as_str().unwrap_or("").ends_with('Z'), "{line}");
        assert!(line["duration_ms"].as_f64().is_some(), "{line}");
        assert!(line["stages"]["ingress"].as_f64().is_some(), "{line}");
    }
    for proto in ["h3", "h2", "http1"] {
        let l = |case: &str| &lines[&format!("{proto}-{case}")];
        let ok = l("proxied");
        assert_eq!(
            (ok["status"].as_u64(), ok["route"].as_str()),
            (Some(200), Some("app"))
        );
        assert_eq!(ok["upstream"], "app");
        assert_eq!(ok["backend"], backend.url(), "{ok}");
        assert_eq!(attempts(ok), ["response"]);
        assert_eq!(ok["outcome"], "complete");
        assert_eq!(ok["reason"], Value::Null);
        assert_eq!(ok["bytes_out"], "backend /ok\n".len());
        assert!(
            ok["ttfb_ms"]
                .as_f64()
                .is_some_and(|t| t <= ok["duration_ms"].as_f64().unwrap_or(0.0))
        );
        for stage in [
            "ingress",
            "admission",
            "route",
            "queue",
            "select",
            "dispatch",
            "egress",
        ] {
            assert!(ok["stages"][stage].as_f64().is_some(), "{stage}: {ok}");
        }
        let direct = l("direct");
        assert_eq!(
            (direct["status"].as_u64(), direct["route"].as_str()),
            (Some(200), Some("hello"))
        );
        assert_eq!(direct["upstream"], Value::Null);
        assert_eq!(direct["bytes_out"], "hello from spooky\n".len());
        let failed = l("failed");
        assert_eq!(failed["status"], 502, "{failed}");
        assert_eq!(failed["reason"], "upstream_connect", "{failed}");
        assert_eq!(attempts(failed), ["connect_failed"], "{failed}");
        let shed = l("shed");
        assert_eq!(
            (shed["status"].as_u64(), shed["reason"].as_str()),
            (Some(503), Some("no_backend")),
            "{shed}"
        );
        assert_eq!(l("held")["path"], "/hold/a");
        let reset = l("reset");
        assert_eq!(reset["outcome"], "cancelled", "{reset}");
        assert_eq!(reset["status"], Value::Null, "{reset}");
        assert_eq!(reset["path"], "/hold/reset");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_form_sampling_and_a_route_that_opts_out() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let log = dir.0.join("access.log");
    let quiet = "[[routes]]\nname = \"quiet\"\nmatch = { path_prefix = \"/quiet\" }\nrespond = { status = 200, body = \"shh\" }\naccess_log = false\n";
    let proxy = start(
        &cert,
        &format!(
            "path = \"{}\"\nformat = \"text\"\nsample = 0.0",
            log.display()
        ),
        &routes(&backend, quiet),
    );
    let conn = connect(&cert.client(), &proxy).await;
    let send = |path: &'static str, id: &'static str| {
        let req = Request::get(url(path))
            .header("x-request-id", id)
            .body(())
            .expect("req");
        conn.request(req, None)
    };
    // Sampled out (it went well), left out by its route, and always logged (a failure).
    assert_eq!(send("/ok", "fine").await.expect("ok").status, 200);
    assert_eq!(send("/quiet", "quiet").await.expect("quiet").status, 200);
    assert_eq!(send("/dead", "broken").await.expect("dead").status, 502);
    assert_eq!(send("/hello", "last").await.expect("hello").status, 200);
    proxy
        .wait_metric("spooky_access_log_lines_total", &[], |v| v >= 1.0)
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("rid=broken") || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let line = lines[0];
    assert!(
        line.contains(" h3 \"GET localhost/dead\" 502 upstream_connect route=dead upstream=dead "),
        "{line}"
    );
    assert!(line.contains(" attempts=1 "), "{line}");
    assert!(line.ends_with("rid=broken"), "{line}");
    assert_eq!(
        proxy.metric("spooky_access_log_lines_total", &[]).await,
        1.0
    );
    assert_eq!(
        proxy.metric("spooky_access_log_dropped_total", &[]).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_file_after_it_was_moved() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let log = dir.0.join("access.log");
    let moved = dir.0.join("access.log.1");
    let proxy = start(
        &cert,
        &format!("path = \"{}\"", log.display()),
        &routes(&backend, ""),
    );
    let conn = connect(&cert.client(), &proxy).await;
    let get = |id: &'static str| {
        let req = Request::get(url("/hello"))
            .header("x-request-id", id)
            .body(())
            .expect("req");
        conn.request(req, None)
    };
    assert_eq!(get("before").await.expect("before").status, 200);
    lines_for(&log, &["before".into()]).await;
    std::fs::rename(&log, &moved).expect("rotate");
    proxy.signal("-USR1");
    proxy
        .wait_metric("spooky_access_log_reopens_total", &[], |v| v >= 1.0)
        .await;
    assert_eq!(get("after").await.expect("after").status, 200);
    let fresh = lines_for(&log, &["after".into()]).await;
    assert!(!fresh.contains_key("before"));
    let old = std::fs::read_to_string(&moved).expect("moved file");
    assert!(
        old.contains("\"before\"") && !old.contains("\"after\""),
        "{old}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_nobody_reads_drops_lines_and_never_slows_requests() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let fifo = dir.0.join("stuck.pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    // Opened for reading (so the proxy's open succeeds) and never read: the pipe fills.
    const O_NONBLOCK: i32 = 0o4000;
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(&fifo)
        .expect("open fifo");
    let proxy = start(
        &cert,
        &format!("path = \"{}\"\nbuffer = 16", fifo.display()),
        &routes(&backend, ""),
    );
    let mut c = Client::open("h2", &proxy, &cert).await;
    // A pipe holds 64 KiB: 2 000 lines of a few hundred bytes are far more than it and the
    // 16-line buffer take. Every request is still answered (bounded: the whole loop must end
    // within 60 s, far more than 2 000 requests take).
    let long = "x".repeat(150);
    let all = async {
        for i in 0..2_000 {
            let got = c
                .send("GET", &url(&format!("/hello/{i}/{long}")), &[])
                .await;
            assert_eq!(got.status, 200);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("requests were held up by the access log");
    let dropped = proxy.metric("spooky_access_log_dropped_total", &[]).await;
    let handed = proxy.metric("spooky_access_log_lines_total", &[]).await;
    assert!(dropped > 0.0, "nothing dropped ({handed} handed over)");
    assert_eq!(dropped + handed, 2_000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_or_made_forwarded_returned_and_logged() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let backend = Backend::start().await;
    let log = dir.0.join("access.log");
    let proxy = start(
        &cert,
        &format!("path = \"{}\"", log.display()),
        &routes(&backend, ""),
    );
    let forwarded = |body: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .map(str::to_string)
    };
    let mut made = Vec::new();
    for proto in ["h3", "h2", "http1"] {
        let mut c = Client::open(proto, &proxy, &cert).await;
        // The client's id: forwarded as is, and returned.
        let mine = format!("{proto}-client-id");
        let got = c
            .send("GET", &url("/headers"), &[("x-request-id", &mine)])
            .await;
        assert_eq!(got.header("x-request-id"), mine, "{proto}");
        assert_eq!(
            forwarded(&got.body).as_deref(),
            Some(mine.as_str()),
            "{proto}"
        );
        // None, and one that is not plausible (a space in it): a new UUID, the same at the
        // backend and on the response.
        for sent in [None, Some("not an id")] {
            let headers: Vec<(&str, &str)> = sent.iter().map(|v| ("x-request-id", *v)).collect();
            let got = c.send("GET", &url("/headers"), &headers).await;
            let id = got.header("x-request-id").to_string();
            assert_eq!(id.len(), 36, "{proto}: {id:?}");
            assert_eq!(&id[14..15], "4", "{proto}: a version-4 UUID: {id}");
            assert_eq!(
                forwarded(&got.body).as_deref(),
                Some(id.as_str()),
                "{proto}"
            );
            assert!(!made.contains(&id), "ids repeat: {id}");
            made.push(id);
        }
        // Answers the proxy makes carry it too (a refusal, a direct response).
        let got = c
            .send("GET", &url("/dead"), &[("x-request-id", "refused-1")])
            .await;
        assert_eq!((got.status, got.header("x-request-id")), (502, "refused-1"));
        let got = c.send("GET", &url("/hello"), &[]).await;
        assert_eq!(got.header("x-request-id").len(), 36);
        made.push(got.header("x-request-id").to_string());
    }
    // Every made id is the one logged (waits, bounded, for a line with each).
    lines_for(&log, &made).await;
}
