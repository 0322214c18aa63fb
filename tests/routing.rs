//! Routing end to end: every matcher through real HTTP/3, HTTP/2 and HTTP/1.1 clients,
//! rewrites, header edits and forwarding headers as real backends see them, redirects,
//! encoded slashes per route, `spooky route` and `spooky check`.

mod support;

use std::time::Duration;

use support::named::{Client, Named};
use support::proxy::{Proxy, pipeline_with};
use support::{TempDir, TestCert, spooky};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_matcher_rewrite_and_redirect_through_h3_h2_and_http1() {
    let stable = Named::start("stable", Duration::ZERO).await;
    let canary = Named::start("canary", Duration::ZERO).await;
    let beta = Named::start("beta", Duration::ZERO).await;
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let routes = format!(
        r#"
[[routes]]
name = "canary"
match = {{ host = "api.example.com", path_prefix = "/api", headers = {{ x-canary = {{ equals = "yes" }} }} }}
upstream = "canary"

[[routes]]
name = "beta"
match = {{ host = "api.example.com", path_prefix = "/api", query = {{ v = {{ equals = "2" }} }}, cookies = {{ beta = {{ present = true }} }} }}
upstream = "beta"

[[routes]]
name = "api"
match = {{ host = "api.example.com", path_prefix = "/api" }}
upstream = "stable"
rewrite = {{ path_prefix = "/v1", host = "internal.test" }}
request_headers = {{ set = {{ x-original-host = "api.example.com" }}, remove = ["x-debug"] }}
response_headers = {{ set = {{ x-route = "api" }} }}

[[routes]]
name = "exact-host"
match = {{ host = ["API.Example.com", "*.deep.example.com"], path = "/" }}
respond = {{ status = 200, body = "exact host" }}

[[routes]]
name = "h2-only"
match = {{ path = "/proto", protocols = ["h2"] }}
respond = {{ status = 200, body = "h2 only" }}

[[routes]]
name = "proto-any"
match = {{ path = "/proto" }}
respond = {{ status = 200, body = "any protocol" }}

[[routes]]
name = "report"
match = {{ path_regex = "/reports/[0-9]{{4}}", methods = ["GET"] }}
respond = {{ status = 200, body = "report" }}

[[routes]]
name = "moved"
match = {{ path_prefix = "/Old" }}
path_case = "insensitive"
redirect = {{ status = 308, scheme = "https", host = "new.test", prefix = "/new" }}

[[routes]]
name = "sni"
match = {{ path = "/sni", sni = "localhost" }}
respond = {{ status = 200, body = "sni localhost" }}

[[routes]]
name = "fallback"
match = {{ path_prefix = "/" }}
respond = {{ status = 404, body = "nothing" }}

[upstreams.stable]
backends = [ {{ url = "{}" }} ]

[upstreams.canary]
backends = [ {{ url = "{}" }} ]

[upstreams.beta]
backends = [ {{ url = "{}" }} ]
"#,
        stable.url(),
        canary.url(),
        beta.url()
    );
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3", "h2", "http1"]"#,
        &cert.toml(),
        &routes,
    ));
    for proto in ["h3", "h2", "http1"] {
        let mut c = Client::open(proto, &proxy, &cert).await;
        let api = "https://api.example.com";
        // The plain API route: rewritten path and host, header edits both ways.
        let r = c
            .send("GET", &format!("{api}/api/users?x=1"), &[("x-debug", "1")])
            .await;
        assert_eq!(r.status, 200, "{proto}: {r:?}");
        assert_eq!(r.body, "stable /v1/users?x=1", "{proto}");
        assert_eq!(r.header("x-seen-host"), "internal.test", "{proto}");
        assert_eq!(
            r.header("x-seen-original-host"),
            "api.example.com",
            "{proto}"
        );
        assert_eq!(r.header("x-seen-debug"), "-", "{proto}: x-debug removed");
        assert_eq!(r.header("x-route"), "api", "{proto}");
        // Default forwarding: X-Forwarded-* only, for the client's own address and host.
        assert_eq!(r.header("x-seen-xff"), "127.0.0.1", "{proto}");
        assert_eq!(r.header("x-seen-xfh"), "api.example.com", "{proto}");
        assert_eq!(
            r.header("x-seen-forwarded"),
            "-",
            "{proto}: RFC 7239 is opt-in"
        );
        // Header matcher: positive and negative.
        let r = c
            .send("GET", &format!("{api}/api/x"), &[("x-canary", "yes")])
            .await;
        assert_eq!(r.body, "canary /api/x", "{proto}");
        let r = c
            .send("GET", &format!("{api}/api/x"), &[("x-canary", "no")])
            .await;
        assert_eq!(r.body, "stable /v1/x", "{proto}");
        // Query and cookie together; either alone is not enough.
        let r = c
            .send(
                "GET",
                &format!("{api}/api/x?v=2"),
                &[("cookie", "a=1; beta=1")],
            )
            .await;
        assert_eq!(r.body, "beta /api/x?v=2", "{proto}");
        let r = c.send("GET", &format!("{api}/api/x?v=2"), &[]).await;
        assert_eq!(r.body, "stable /v1/x?v=2", "{proto}");
        // Host: case, port and trailing dot do not matter; a wildcard takes any depth but
        // never its apex; a host group falls back to host-less routes.
        for host in [
            "api.example.com",
            "API.EXAMPLE.COM:8443",
            "a.b.deep.example.com",
        ] {
            let r = c.send("GET", &format!("https://{host}/"), &[]).await;
            assert_eq!(r.body, "exact host", "{proto} {host}");
        }
        let r = c.send("GET", "https://deep.example.com/", &[]).await;
        assert_eq!(r.body, "nothing", "{proto}: apex");
        let r = c.send("GET", &format!("{api}/elsewhere"), &[]).await;
        assert_eq!((r.status, r.body.as_str()), (404, "nothing"), "{proto}");
        // Protocol matcher.
        let r = c.send("GET", "https://localhost/proto", &[]).await;
        let want = if proto == "h2" {
            "h2 only"
        } else {
            "any protocol"
        };
        assert_eq!(r.body, want, "{proto}");
        // Anchored regex, method-specific.
        let r = c.send("GET", "https://localhost/reports/2026", &[]).await;
        assert_eq!(r.body, "report", "{proto}");
        let r = c.send("GET", "https://localhost/reports/2026x", &[]).await;
        assert_eq!(r.body, "nothing", "{proto}");
        let r = c.send("POST", "https://localhost/reports/2026", &[]).await;
        assert_eq!(r.body, "nothing", "{proto}");
        // Redirect with a prefix replaced, case-insensitive match, query kept.
        let r = c.send("GET", "https://localhost/OLD/a/b?q=1", &[]).await;
        assert_eq!(r.status, 308, "{proto}");
        assert_eq!(
            r.header("location"),
            "https://new.test/new/a/b?q=1",
            "{proto}"
        );
        // SNI: every client here connects with the name localhost.
        let r = c.send("GET", "https://other.test/sni", &[]).await;
        assert_eq!(r.body, "sni localhost", "{proto}");
    }
}

/// The backends that 30 clients, as named by `X-Forwarded-For`, were hashed to.
async fn hashed_owners(c: &mut Client) -> std::collections::HashSet<String> {
    let mut owners = std::collections::HashSet::new();
    for i in 0..30 {
        let xff = format!("198.51.100.{i}");
        let r = c
            .send(
                "GET",
                "https://localhost/hashed",
                &[("x-forwarded-for", &xff)],
            )
            .await;
        owners.insert(r.header("x-backend").to_string());
    }
    owners
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_follow_the_route_policy_and_trust_only_trusted_proxies() {
    let app = Named::start("app", Duration::ZERO).await;
    let hashed = [
        Named::start("h1", Duration::ZERO).await,
        Named::start("h2", Duration::ZERO).await,
        Named::start("h3", Duration::ZERO).await,
    ];
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let config = |trusted: &str| {
        let hashed: Vec<String> = hashed
            .iter()
            .map(|b| format!("{{ url = \"{}\" }}", b.url()))
            .collect();
        format!(
            r#"
[stages.ingress]
trusted_proxies = ["{trusted}"]

[stages.dispatch]
forwarded_header = "both"

[[routes]]
name = "append"
match = {{ path = "/append" }}
upstream = "app"

[[routes]]
name = "replace"
match = {{ path = "/replace" }}
upstream = "app"
forwarded = "replace"

[[routes]]
name = "strip"
match = {{ path = "/strip" }}
upstream = "app"
forwarded = "strip"

[[routes]]
name = "rewritten"
match = {{ path = "/rewritten" }}
upstream = "app"
rewrite = {{ host = "internal.test" }}

[[routes]]
name = "hashed"
match = {{ path = "/hashed" }}
upstream = "hashed"

[upstreams.app]
backends = [ {{ url = "{}" }} ]

[upstreams.hashed]
balance = "consistent-hash"
hash_key = "client-ip"
backends = [ {} ]
"#,
            app.url(),
            hashed.join(", ")
        )
    };
    let claims = [
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-proto", "http"),
        ("forwarded", "for=1.2.3.4;proto=http"),
    ];
    // The client (127.0.0.1) is a trusted proxy.
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &cert.toml(),
        &config("127.0.0.0/8"),
    ));
    let mut c = Client::open("h3", &proxy, &cert).await;
    let r = c.send("GET", "https://localhost/append", &claims).await;
    assert_eq!(r.header("x-seen-xff"), "1.2.3.4, 127.0.0.1");
    assert_eq!(
        r.header("x-seen-xfp"),
        "http",
        "the trusted proxy knew the scheme"
    );
    assert_eq!(r.header("x-seen-xfh"), "localhost");
    assert_eq!(
        r.header("x-seen-forwarded"),
        "for=1.2.3.4;proto=http, for=127.0.0.1;proto=https;host=localhost"
    );
    let r = c.send("GET", "https://localhost/replace", &claims).await;
    assert_eq!(r.header("x-seen-xff"), "127.0.0.1");
    assert_eq!(r.header("x-seen-xfp"), "https");
    assert_eq!(
        r.header("x-seen-forwarded"),
        "for=127.0.0.1;proto=https;host=localhost"
    );
    let r = c.send("GET", "https://localhost/strip", &claims).await;
    for h in ["x-seen-xff", "x-seen-xfp", "x-seen-xfh", "x-seen-forwarded"] {
        assert_eq!(r.header(h), "-", "{h}");
    }
    let r = c.send("GET", "https://localhost/rewritten", &[]).await;
    assert_eq!(r.header("x-seen-host"), "internal.test");
    assert_eq!(
        r.header("x-seen-xfh"),
        "localhost",
        "the client's host, not the rewrite"
    );
    // client-ip keys use the address the trusted proxy reports: clients spread.
    let owners = hashed_owners(&mut c).await;
    assert!(owners.len() >= 2, "{owners:?}");
    drop(proxy);

    // 127.0.0.1 is not trusted now: what it claims is dropped, and its own address is the key.
    let proxy = Proxy::start(&pipeline_with(
        r#"["h3"]"#,
        &cert.toml(),
        &config("10.0.0.0/8"),
    ));
    let mut c = Client::open("h3", &proxy, &cert).await;
    let r = c.send("GET", "https://localhost/append", &claims).await;
    assert_eq!(r.header("x-seen-xff"), "127.0.0.1");
    assert_eq!(r.header("x-seen-xfp"), "https");
    assert_eq!(
        r.header("x-seen-forwarded"),
        "for=127.0.0.1;proto=https;host=localhost"
    );
    let owners = hashed_owners(&mut c).await;
    assert_eq!(
        owners.len(),
        1,
        "one client address, one backend: {owners:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_may_take_encoded_slashes_that_every_other_route_refuses() {
    let app = Named::start("app", Duration::ZERO).await;
    let dir = TempDir::new();
    let cert = TestCert::generate(&dir);
    let routes = format!(
        "[[routes]]\nname = \"files\"\nmatch = {{ path_prefix = \"/files\" }}\nencoded_slashes = \"keep\"\nupstream = \"app\"\n\n[[routes]]\nname = \"rest\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n\n[upstreams.app]\nbackends = [ {{ url = \"{}\" }} ]\n",
        app.url()
    );
    let proxy = Proxy::start(&pipeline_with(r#"["h3"]"#, &cert.toml(), &routes));
    let mut c = Client::open("h3", &proxy, &cert).await;
    // One segment (a%2Fb): kept encoded, upper-cased; dot segments still go.
    let r = c
        .send("GET", "https://localhost/files/a%2fb/./c", &[])
        .await;
    assert_eq!((r.status, r.body.as_str()), (200, "app /files/a%2Fb/c"));
    let r = c.send("GET", "https://localhost/other/a%2Fb", &[]).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("encoded_slash"), "{r:?}");
    assert_eq!(app.seen(), 1);
}

#[test]
fn spooky_route_explains_decisions() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/routing.toml");
    let run = |args: &[&str]| {
        let mut all = vec!["route", file];
        all.extend_from_slice(args);
        let (code, out, err) = spooky(&all);
        assert_eq!(code, 0, "{err}");
        out
    };
    let out = run(&[
        "GET",
        "https://API.example.com:8443/api/users?x=1",
        "-H",
        "x-canary: no",
        "-H",
        "x-debug: 1",
    ]);
    assert_eq!(
        out,
        "request: GET https://API.example.com:8443/api/users?x=1 (h3)
matched as: host api.example.com, path /api/users
route: api
  action: upstream api-v1
  upstream request: GET /v1/users?x=1 (authority API.example.com:8443)
  upstream: api-v1 (least-connections, backends http://127.0.0.1:8081 http://127.0.0.1:8082)
candidates, most specific first:
  api-beta     [api.example.com; path prefix /api]  no match: query parameter v is not equal to \"2\"
  api-canary   [api.example.com; path prefix /api]  no match: header x-canary is not equal to \"yes\"
  api          [api.example.com; path prefix /api]  chosen
  site         [*.example.com; path prefix /]  matches, lost: exact host api.example.com beats wildcard *.example.com
  internal-h3  [any host; path prefix /]  no match: sni is not internal.example.net
  fallback     [any host; path prefix /]  matches, lost: exact host api.example.com beats no host
"
    );
    let out = run(&["GET", "https://www.example.org/DOCS/intro?lang=en"]);
    assert!(out.contains("route: old-docs\n  action: redirect 308\n  answer: 308, location https://docs.example.com/guide/intro?lang=en\n"), "{out}");
    let out = run(&["GET", "https://x.example.com/", "--cookie", "session=abc"]);
    assert!(
        out.contains("  action: split site-v1 95, site-v2 5, sticky by cookie:session\n"),
        "{out}"
    );
    assert!(out.contains("http://127.0.0.1:8087 (disabled)"), "{out}");
    let out = run(&[
        "GET",
        "https://api.example.com/reports/2026/11",
        "--protocol",
        "http1",
    ]);
    assert!(out.contains("route: reports\n"), "{out}");
    let out = run(&["POST", "https://api.example.com/reports/2026/11"]);
    assert!(out.contains("  reports      [api.example.com; path regex /reports/[0-9]{4}/[0-9]{2}]  no match: method is not listed\n"), "{out}");
    let out = run(&["GET", "https://internal.example.net/x", "--protocol", "h3"]);
    assert!(out.contains("route: internal-h3\n"), "{out}");
    let out = run(&["GET", "https://internal.example.net/x", "--protocol", "h2"]);
    assert!(out.contains("route: fallback\n"), "{out}");
    // A bad request on the command line is a clear error.
    let (code, _, err) = spooky(&["route", file, "GET", "/no-host"]);
    assert_eq!(code, 64);
    assert!(err.contains("give a whole URL"), "{err}");
}

#[test]
fn bad_routing_config_is_an_error_with_its_place_and_surprises_are_warnings() {
    let dir = TempDir::new();
    let file = dir.0.join("p.toml");
    let check = |rest: &str| {
        std::fs::write(&file, pipeline_with(r#"["h3"]"#, "", rest)).expect("write");
        spooky(&["check", &file.display().to_string()])
    };
    let up = "[upstreams.a]\nbackends = [ { url = \"http://127.0.0.1:1\" } ]\n";
    let cases = [
        (
            "match = { path_regex = \"([a-z\" }\nupstream = \"a\"",
            "routes[0].match.path_regex",
            "is not a valid regular expression",
        ),
        (
            "split = [ { upstream = \"a\", weight = 0 } ]",
            "routes[0].split",
            "split weights sum to zero",
        ),
        (
            "split = [ { upstream = \"nope\", weight = 1 } ]",
            "routes[0].split.0.upstream",
            "upstream \"nope\" is not defined",
        ),
        (
            "redirect = { status = 200, host = \"x.test\" }",
            "routes[0].redirect.status",
            "is not a redirect status",
        ),
        (
            "upstream = \"a\"\nmatch = { headers = { x = { regex = \"(\" } } }",
            "routes[0].match.headers.x",
            "is not a valid regular expression",
        ),
    ];
    for (route, key, message) in cases {
        let (code, _, err) = check(&format!("[[routes]]\nname = \"r\"\n{route}\n\n{up}"));
        assert_eq!(code, 64, "{route}: {err}");
        assert!(
            err.contains(&format!(": {key}: ")) && err.contains(message),
            "{route}: {err}"
        );
        // file:line:column
        assert!(err.contains(&format!("{}:", file.display())), "{err}");
    }
    let (code, _, err) = check(&format!(
        "[[routes]]\nname = \"r\"\nupstream = \"a\"\n\n{up}balance = \"consistent-hash\"\nhash_key = \"ip\"\n"
    ));
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("upstreams.a.hash_key") && err.contains("\"ip\" is not a request key"),
        "{err}"
    );
    let (code, _, err) = check(&format!(
        "[stages.ingress]\ntrusted_proxies = [\"10.0.0.0/33\"]\n\n[[routes]]\nname = \"r\"\nupstream = \"a\"\nforwarded = \"sometimes\"\n\n{up}"
    ));
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("stages.ingress.trusted_proxies")
            && err.contains("\"10.0.0.0/33\" is not an address block"),
        "{err}"
    );
    assert!(
        err.contains("routes[0].forwarded") && err.contains("append"),
        "{err}"
    );
    // Warnings: valid, exit 0, printed.
    let (code, out, err) = check(&format!(
        "[[routes]]\nname = \"one\"\nmatch = {{ path_prefix = \"/x/\", headers = {{ a = {{ present = true }} }} }}\nupstream = \"a\"\n\n[[routes]]\nname = \"two\"\nmatch = {{ path_prefix = \"/x/\", headers = {{ b = {{ present = true }} }} }}\nupstream = \"a\"\n\n{up}\n[upstreams.unused]\nbackends = [ {{ url = \"http://127.0.0.1:2\" }}, {{ url = \"http://127.0.0.1:2\" }} ]\n"
    ));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("5 warning(s)"), "{out}");
    assert!(
        err.contains("route \"one\" and route \"two\" are equally specific"),
        "{err}"
    );
    assert!(err.contains("\"/x/\" ends with a slash"), "{err}");
    assert!(
        err.contains("upstreams.unused: no route uses this upstream"),
        "{err}"
    );
    assert!(err.contains("the same URL as backends[0]"), "{err}");
}
