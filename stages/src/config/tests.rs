//! Each kind of configuration error gives its message with line, column and key; all of a
//! file's errors come out together.

use super::*;

const GOOD: &str = r#"
[pipeline]
name = "t"
chain = ["ingress", "admission", "route", "queue", "select", "hedge-retry", "dispatch", "egress"]

[[listeners]]
name = "edge"
bind = "127.0.0.1:8443"

[admin]
bind = "127.0.0.1:9901"

[stages.queue]
capacity = 10
deadline = "250ms"

[[routes]]
name = "app"
match = { host = "*.example.com", path_prefix = "/", methods = ["GET"] }
upstream = "app"

[upstreams.app]
backends = [ { url = "http://127.0.0.1:8080" } ]
"#;

fn errors(text: &str) -> Vec<ConfigError> {
    match parse("p.toml", text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.0,
    }
}

/// The single error of `text`, checked for line and key and a fragment of its message.
fn one(text: &str, line: usize, key: &str, fragment: &str) -> ConfigError {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected one error, got: {errs:#?}");
    let e = errs.into_iter().next().expect("one");
    assert_eq!((e.line, e.key.as_str()), (line, key), "{e}");
    assert!(
        e.message.contains(fragment),
        "message `{}` lacks `{fragment}`",
        e.message
    );
    assert_eq!(e.file, "p.toml");
    assert!(e.to_string().starts_with(&format!("p.toml:{line}:")), "{e}");
    e
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle")
        + 1
}

#[test]
fn good_config_parses_with_defaults() {
    let c = parse("p.toml", GOOD).expect("valid");
    assert_eq!(c.chain.len(), 8);
    assert_eq!(c.stages.queue.capacity.get(), 10);
    assert_eq!(
        c.stages.queue.deadline.0,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(c.stages.settings(StageKind::Dispatch).queue, 256);
    assert_eq!(
        c.stages.settings(StageKind::Admission).when_full,
        WhenFull::Shed
    );
}

#[test]
fn chain_order_errors() {
    let t = GOOD.replace(
        r#"chain = ["ingress", "admission", "route", "queue", "select", "hedge-retry", "dispatch", "egress"]"#,
        r#"chain = ["admission", "ingress", "dispatch", "select", "route", "queue", "egress", "hedge-retry"]"#,
    );
    let errs = errors(&t);
    let line = line_of(&t, "chain =");
    let msgs: Vec<String> = errs.iter().map(|e| e.message.clone()).collect();
    for want in [
        "\"ingress\" must be the first stage",
        "\"egress\" must be the last stage",
        "\"route\" must come before \"select\"",
        "\"queue\" must come before \"select\"",
        "\"select\" must come before \"dispatch\"",
    ] {
        assert!(
            msgs.iter().any(|m| m == want),
            "missing `{want}` in {msgs:#?}"
        );
    }
    assert!(
        errs.iter()
            .all(|e| e.line == line && e.key == "pipeline.chain")
    );
}

#[test]
fn unknown_and_missing_stages_in_chain() {
    let t = GOOD.replace(r#""hedge-retry", "dispatch", "#, r#""hedge-retyr", "#);
    let errs = errors(&t);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    let has = |m: &str| {
        errs.iter()
            .any(|e| e.message.contains(m) && e.key == "pipeline.chain")
    };
    assert!(
        has("unknown stage \"hedge-retyr\" (did you mean \"hedge-retry\"?)"),
        "{errs:#?}"
    );
    assert!(has("the chain must contain \"dispatch\""), "{errs:#?}");
}

#[test]
fn undefined_upstream_names_route_and_suggests() {
    let t = GOOD.replace(r#"upstream = "app""#, r#"upstream = "apq""#);
    one(
        &t,
        line_of(&t, "upstream = \"apq\""),
        "routes[0].upstream",
        "upstream \"apq\" is not defined (did you mean \"app\"?)",
    );
}

#[test]
fn zero_capacities_are_refused() {
    let t = GOOD.replace("capacity = 10", "capacity = 0");
    one(
        &t,
        line_of(&t, "capacity = 0"),
        "stages.queue.capacity",
        "expected a positive integer",
    );
    let t = GOOD.replace("[admin]", "[stages.dispatch]\nconcurrency = 0\n\n[admin]");
    one(
        &t,
        line_of(&t, "concurrency = 0"),
        "stages.dispatch.concurrency",
        "expected a positive integer",
    );
}

#[test]
fn durations_and_sizes_must_parse() {
    let t = GOOD.replace("\"250ms\"", "\"250 parsecs\"");
    one(
        &t,
        line_of(&t, "parsecs"),
        "stages.queue.deadline",
        "unknown unit",
    );
    let t = GOOD.replace(
        "[admin]",
        "[stages.ingress]\nmax_header_bytes = \"16 lightyears\"\n\n[admin]",
    );
    one(
        &t,
        line_of(&t, "lightyears"),
        "stages.ingress.max_header_bytes",
        "unknown unit",
    );
}

#[test]
fn upstream_read_ahead_must_fit_hypers_buffer() {
    for bad in ["4KiB", "32MiB"] {
        let t = GOOD.replace(
            "[admin]",
            &format!("[stages.dispatch]\nupstream_read_ahead = \"{bad}\"\n\n[admin]"),
        );
        one(
            &t,
            line_of(&t, bad),
            "stages.dispatch.upstream_read_ahead",
            "from \"8KiB\" to \"16MiB\"",
        );
    }
    let t = GOOD.replace(
        "[admin]",
        "[stages.dispatch]\nupstream_read_ahead = \"16KiB\"\n\n[admin]",
    );
    let config = parse("p.toml", &t).expect("16KiB is valid");
    assert_eq!(
        config.stages.dispatch.client_settings().read_ahead,
        16 * 1024
    );
}

#[test]
fn bind_addresses_must_parse() {
    let t = GOOD.replace("bind = \"127.0.0.1:9901\"", "bind = \"localhost:99999\"");
    one(&t, line_of(&t, "99999"), "admin.bind", "socket address");
}

#[test]
fn unknown_keys_are_refused() {
    let t = GOOD.replace(
        "deadline = \"250ms\"",
        "deadline = \"250ms\"\ndeadlnie = \"1s\"",
    );
    one(
        &t,
        line_of(&t, "deadlnie"),
        "stages.queue.deadlnie",
        "unknown key `deadlnie` (did you mean \"deadline\"?)",
    );
    let t = format!("{GOOD}\n[extras]\nx = 1\n");
    one(&t, line_of(&t, "[extras]"), "extras", "unknown section");
    let t = GOOD.replace("[stages.queue]", "[stages.qeue]");
    one(
        &t,
        line_of(&t, "[stages.qeue]"),
        "stages.qeue",
        "unknown stage",
    );
}

#[test]
fn route_rules() {
    let t = GOOD.replace("path_prefix = \"/\"", "path_prefix = \"api\"");
    one(
        &t,
        line_of(&t, "path_prefix"),
        "routes[0].match.path_prefix",
        "must start with '/'",
    );
    let t = GOOD.replace("\"*.example.com\"", "\"*.exa mple.com\"");
    one(
        &t,
        line_of(&t, "exa mple"),
        "routes[0].match.host",
        "not a host pattern",
    );
    let t = GOOD.replace("methods = [\"GET\"]", "methods = [\"get\"]");
    one(
        &t,
        line_of(&t, "methods"),
        "routes[0].match.methods",
        "not an HTTP method",
    );
    let t = GOOD.replace(
        "upstream = \"app\"\n",
        "upstream = \"app\"\nrespond = { status = 200 }\n",
    );
    one(
        &t,
        line_of(&t, "[[routes]]"),
        "routes[0]",
        "more than one action",
    );
}

#[test]
fn backend_urls() {
    let t = GOOD.replace(
        "\"http://127.0.0.1:8080\"",
        "\"https://127.0.0.1:8080\", protocol = \"h2c\"",
    );
    one(
        &t,
        line_of(&t, "https://"),
        "upstreams.app.backends[0].protocol",
        "use an http:// URL",
    );
    let t = GOOD.replace("http://127.0.0.1:8080", "ftp://127.0.0.1:8080");
    one(
        &t,
        line_of(&t, "ftp://"),
        "upstreams.app.backends[0].url",
        "expected an http:// or https:// URL",
    );
    let t = GOOD.replace(
        "[upstreams.app]",
        "[upstreams.app]\ntls = { ca_file = \"/nonexistent/ca.pem\" }",
    );
    one(
        &t,
        line_of(&t, "ca_file"),
        "upstreams.app.tls.ca_file",
        "cannot read /nonexistent/ca.pem",
    );
    let t = GOOD.replace("http://127.0.0.1:8080", "http://127.0.0.1:8080/api");
    one(
        &t,
        line_of(&t, "/api\""),
        "upstreams.app.backends[0].url",
        "no path",
    );
}

#[test]
fn all_errors_are_reported_at_once_in_file_order() {
    let t = GOOD
        .replace("bind = \"127.0.0.1:8443\"", "bind = \"nowhere\"")
        .replace("capacity = 10", "capacity = 0")
        .replace("upstream = \"app\"", "upstream = \"nope\"");
    let errs = errors(&t);
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "listeners[0].bind",
            "stages.queue.capacity",
            "routes[0].upstream"
        ],
        "{errs:#?}"
    );
    assert!(errs.windows(2).all(|w| w[0].line < w[1].line));
}

#[test]
fn invalid_toml_points_at_the_spot() {
    let t = GOOD.replace("name = \"t\"", "name = \"t");
    let errs = errors(&t);
    assert_eq!(errs[0].line, line_of(&t, "name = \"t"));
    assert!(errs[0].message.starts_with("invalid TOML"));
}

#[test]
fn reference_toml_documents_the_defaults() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/reference.toml");
    let text = std::fs::read_to_string(path).expect("config/reference.toml");
    let c = parse(path, &text).expect("reference.toml is valid");
    let d = StagesConfig::default();
    assert_eq!(c.stages.settings, d.settings);
    assert_eq!(c.stages.ingress, d.ingress);
    assert_eq!(c.stages.admission, d.admission);
    assert_eq!(c.stages.queue, d.queue);
    assert_eq!(c.stages.hedge_retry, d.hedge_retry);
    assert_eq!(c.stages.dispatch, d.dispatch);
    assert_eq!(c.stages.egress, d.egress);
    let l = &c.listeners[0];
    let u = &c.upstreams["app"];
    assert_eq!(l.max_connections, model::default_max_connections());
    assert_eq!(l.max_streams_per_connection, model::default_max_streams());
    assert_eq!(l.idle_timeout, model::default_idle_timeout());
    assert_eq!(l.max_connections_per_client, None, "off unless set");
    assert_eq!(c.pipeline.drain_timeout, model::default_drain_timeout());
    assert_eq!(c.pipeline.drain_linger, model::default_drain_linger());
    assert_eq!(c.pipeline.workers, crate::units::Workers::default());
    assert_eq!(l.alt_svc, AltSvc::default());
    assert_eq!(l.redirect, Redirect::default());
    assert_eq!(l.redirect_port, 443);
    assert_eq!(u.tls.verify, Verify::default());
    assert_eq!(u.backends[0].protocol, BackendProtocol::default());
    assert_eq!(u.balance, crate::upstreams::config::Balance::default());
    assert_eq!(u.fallback, crate::upstreams::config::Balance::default());
    assert!(u.backends[0].enabled);
    assert_eq!(
        c.routes[0].path_case,
        crate::stages::route::PathCase::default()
    );
    assert_eq!(u.max_inflight, model::default_upstream_inflight());
    assert_eq!(
        u.backends[0].max_inflight,
        model::default_backend_inflight()
    );
    assert_eq!(c.access_log, crate::access_log::Config::default());
    assert!(c.routes[0].access_log);
}

#[test]
fn tracing_keys_are_checked() {
    let t = GOOD.replace(
        "[admin]",
        "[tracing]\notlp_endpoint = \"localhost:4317\"\n\n[admin]",
    );
    one(
        &t,
        line_of(&t, "localhost:4317"),
        "tracing.otlp_endpoint",
        "http://HOST:PORT",
    );
    let t = GOOD.replace(
        "[admin]",
        "[tracing]\notlp_endpoint = \"http://127.0.0.1:4317\"\nsample_ratio = 2\n\n[admin]",
    );
    one(
        &t,
        line_of(&t, "sample_ratio"),
        "tracing.sample_ratio",
        "from 0 to 1",
    );
    let t = GOOD.replace(
        "[admin]",
        "[tracing]\notlp_endpoint = \"http://127.0.0.1:4317\"\n\n[admin]",
    );
    let c = parse("p.toml", &t).expect("valid");
    let warned = c.warnings.iter().any(|w| w.key == "tracing");
    // Without the feature nothing is exported, and the operator is told so.
    assert_eq!(warned, !crate::trace::BUILT, "{:?}", c.warnings);
    assert_eq!(c.tracing.map(|t| t.sample_ratio), Some(0.01));
}

#[test]
fn access_log_keys_are_checked() {
    let t = GOOD.replace(
        "[admin]",
        "[access_log]\npath = \"stdout\"\nformat = \"yaml\"\n\n[admin]",
    );
    one(
        &t,
        line_of(&t, "yaml"),
        "access_log.format",
        "expected `json` or `text`",
    );
    let t = GOOD.replace(
        "[admin]",
        "[access_log]\npath = \"stdout\"\nsample = 1.5\n\n[admin]",
    );
    one(&t, line_of(&t, "1.5"), "access_log.sample", "from 0 to 1");
}

#[test]
fn path_and_connection_keys_are_enums_with_clear_errors() {
    let t = GOOD.replace(
        "[admin]",
        "[stages.ingress]\nnormalize_path = \"yes\"\nmerge_slashes = true\n\n[admin]",
    );
    let errs = errors(&t);
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"stages.ingress.normalize_path"), "{errs:?}");
    assert!(keys.contains(&"stages.ingress.merge_slashes"), "{errs:?}");
    let bad = errs
        .iter()
        .find(|e| e.key == "stages.ingress.normalize_path")
        .expect("normalize_path error");
    assert!(
        bad.message.contains("rfc3986"),
        "names what is expected: {}",
        bad.message
    );
    let t = GOOD.replacen("bind = ", "max_connections_per_client = 0\nbind = ", 1);
    let errs = errors(&t);
    assert!(
        errs.iter()
            .any(|e| e.key.ends_with("max_connections_per_client")),
        "{errs:?}"
    );
}

#[test]
fn workers_is_auto_or_a_count_with_clear_errors() {
    let with = |v: &str| GOOD.replacen("[pipeline]\n", &format!("[pipeline]\nworkers = {v}\n"), 1);
    let c = parse("p.toml", &with("3")).expect("a count");
    assert_eq!(c.pipeline.workers.resolve().get(), 3);
    let c = parse("p.toml", &with("\"auto\"")).expect("auto");
    assert_eq!(c.pipeline.workers, crate::units::Workers::Auto);
    assert_eq!(c.pipeline.workers.resolve(), crate::workers::available());
    for bad in ["0", "-1", "100000", "\"many\"", "1.5"] {
        let t = with(bad);
        one(&t, 3, "pipeline.workers", "auto");
    }
}

#[test]
fn retries_and_hedges_without_the_attempt_loop_are_warned_about() {
    let text = GOOD
        .replace("\"hedge-retry\", ", "")
        .replace(
            "upstream = \"app\"\n",
            "upstream = \"app\"\nhedge = { delay = \"50ms\" }\n",
        )
        .replace(
            "[upstreams.app]\n",
            "[upstreams.app]\nretry = { attempts = 2 }\n",
        );
    let config = parse("p.toml", &text).expect("valid");
    let warned: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(warned.len(), 2, "{warned:?}");
    assert!(warned[0].contains("routes[0].hedge") && warned[0].contains("nothing is hedged"));
    assert!(warned[1].contains("upstreams.app.retry") && warned[1].contains("one attempt"));
    // With hedge-retry in the chain, no warning.
    let text = text.replace("\"select\", ", "\"select\", \"hedge-retry\", ");
    assert!(parse("p.toml", &text).expect("valid").warnings.is_empty());
}

/// The mistakes a new user makes, each said in config terms, none hiding another.
#[test]
fn errors_people_hit_are_said_plainly_and_none_hides_another() {
    // A typo in [pipeline] still lets the undefined upstream below be found.
    let text = GOOD
        .replace("chain = ", "chian = ")
        .replace("upstream = \"app\"", "upstream = \"ap\"");
    let errs = errors(&text);
    let all = errs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        all.contains("pipeline.chian: unknown key `chian` (did you mean \"chain\"?)"),
        "{all}"
    );
    assert!(
        all.contains("routes[0].upstream"),
        "the typo hid the route's error: {all}"
    );
    // A stage table: the common keys are candidates too.
    let e = one(
        &GOOD.replace("capacity = 10", "capacity = 10\nconcurency = 4"),
        line_of(
            &GOOD.replace("capacity = 10", "capacity = 10\nconcurency = 4"),
            "concurency",
        ),
        "stages.queue.concurency",
        "(did you mean \"concurrency\"?)",
    );
    assert!(e.message.contains("`when_full`"), "{e}");
    // Numbers in words a config writer uses.
    let zero = GOOD.replace("capacity = 10", "capacity = 0");
    let e = one(
        &zero,
        line_of(&zero, "capacity = 0"),
        "stages.queue.capacity",
        "expected a positive integer (1 or more)",
    );
    assert!(!e.message.contains("usize"), "{e}");
    // Two listeners on one address, and the admin on a listener's TCP address.
    let twice = GOOD.replace(
        "[admin]",
        "[[listeners]]\nname = \"again\"\nbind = \"127.0.0.1:8443\"\n\n[admin]",
    );
    one(
        &twice,
        line_of(&twice, "name = \"again\"") + 1,
        "listeners[1].bind",
        "UDP 127.0.0.1:8443 is listener \"edge\"'s already",
    );
    let admin = GOOD
        .replace(
            "bind = \"127.0.0.1:8443\"",
            "bind = \"127.0.0.1:8443\"\nprotocols = [\"h3\", \"h2\"]",
        )
        .replace("bind = \"127.0.0.1:9901\"", "bind = \"127.0.0.1:8443\"");
    one(
        &admin,
        line_of(&admin, "[admin]") + 1,
        "admin.bind",
        "the same address as listener \"edge\"",
    );
    // tls = "off" with the default protocols says what to change.
    let off = GOOD.replace(
        "bind = \"127.0.0.1:8443\"",
        "bind = \"127.0.0.1:8443\"\ntls = \"off\"",
    );
    one(
        &off,
        line_of(&off, "tls = \"off\""),
        "listeners[0].tls",
        "protocols must be [\"http1\"]",
    );
}

#[test]
fn relative_paths_are_the_config_files_directorys() {
    let dir = std::env::temp_dir().join(format!("spooky-rel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let text = GOOD.replace("bind = \"127.0.0.1:8443\"", "bind = \"127.0.0.1:8443\"\ntls = { cert = \"certs/missing.pem\", key = \"certs/missing.key\" }");
    let file = dir.join("p.toml");
    let errs = match parse(&file.display().to_string(), &text) {
        Ok(_) => panic!("the files do not exist"),
        Err(e) => e.0,
    };
    let want = dir.join("certs/missing.pem").display().to_string();
    assert!(
        errs.iter().any(|e| e.message.contains(&want)),
        "the resolved path in: {errs:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
