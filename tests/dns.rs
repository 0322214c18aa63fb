//! DNS refresh: a hostname backend's members follow the answers of a DNS server the test
//! controls; a failed resolution keeps the last good set.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use support::dns::DnsServer;
use support::named::{Client, Named};
use support::proxy::{Proxy, pipeline_with};
use support::{TempDir, TestCert};

const TOKEN: &str = "dns-refresh-token-0123456789";

/// Which backends answer `n` requests (bodies start with the backend's name).
async fn who(client: &mut Client, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..n {
        let got = client.send("GET", "https://localhost/x", &[]).await;
        assert_eq!(got.status, 200, "{}", got.body);
        let name = got.body.split(' ').next().unwrap_or("").to_string();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_follow_dns_answers_and_a_failure_keeps_the_last_good_set() {
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    // Two backends on one port, on 127.0.0.1 and 127.0.0.2.
    let one = Named::start("one", Duration::ZERO).await;
    let port = one.addr().port();
    let _two = Named::start_on(
        "two",
        Duration::ZERO,
        SocketAddr::from(([127, 0, 0, 2], port)),
    )
    .await;
    let (ip1, ip2) = (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2));
    let dns = DnsServer::start(&[ip1]).await;
    let token = dir.0.join("token");
    std::fs::write(&token, TOKEN).expect("token");
    let rest = format!(
        "token_file = \"{}\"\n\n[[routes]]\nname = \"app\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n\n[upstreams.app]\ndns_refresh = \"100ms\"\ndns_resolver = \"{}\"\nbackends = [ {{ url = \"http://backend.test:{port}\" }} ]\n",
        token.display(),
        dns.addr
    );
    let proxy = Proxy::start(&pipeline_with(r#"["h3", "h2"]"#, &cert.toml(), &rest));
    let mut client = Client::open("h2", &proxy, &cert).await;
    // Resolved at start: one member.
    assert_eq!(who(&mut client, 6).await, ["one"]);
    let (_, ups) = proxy
        .admin_call("GET", "/upstreams/app/backends", Some(TOKEN), "")
        .await;
    let ups: Value = serde_json::from_str(&ups).expect("json");
    assert_eq!(
        ups[0]["id"],
        format!("backend.test:{port}@127.0.0.1"),
        "{ups}"
    );

    // A second address: both serve. Each change is served as a new generation.
    let changed = [("trigger", "dns"), ("outcome", "ok")];
    let base = proxy.metric("spooky_config_reloads_total", &changed).await;
    dns.set(Some(&[ip1, ip2]));
    proxy
        .wait_metric("spooky_config_reloads_total", &changed, |v| v > base)
        .await;
    assert_eq!(who(&mut client, 8).await, ["one", "two"]);

    // The server fails: the last good set keeps serving.
    dns.set(None);
    let failed = proxy
        .metric("spooky_dns_refreshes_total", &[("outcome", "failed")])
        .await;
    proxy
        .wait_metric(
            "spooky_dns_refreshes_total",
            &[("outcome", "failed")],
            |v| v >= failed + 2.0,
        )
        .await;
    assert_eq!(who(&mut client, 8).await, ["one", "two"]);

    // Only the second address: the first is removed.
    dns.set(Some(&[ip2]));
    proxy
        .wait_metric("spooky_config_reloads_total", &changed, |v| v > base + 1.0)
        .await;
    assert_eq!(who(&mut client, 6).await, ["two"]);
    assert!(dns.queries() >= 4);
    proxy.assert_caps_zero().await;
}
