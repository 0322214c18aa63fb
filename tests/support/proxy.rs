//! The daemon under test: `spooky run` on a TOML written to a temp dir, with its listener and
//! admin on ports the OS picks (`127.0.0.1:0`), read back from its `listening …` lines.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::TempDir;

pub struct Proxy {
    pub h3_addr: SocketAddr,
    /// The TCP side (h2/http1) of the first listener that has one.
    pub tcp_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    child: Child,
    /// The pipeline file it runs (tests rewrite it, then reload).
    pub file: std::path::PathBuf,
    _dir: TempDir,
    log: std::path::PathBuf,
}

/// A pipeline TOML with every stage, the given extra sections, and OS-picked ports.
/// `listener_extra` goes inside `[[listeners]]` (e.g. a `tls = {…}` line).
pub fn pipeline(listener_extra: &str, rest: &str) -> String {
    pipeline_with(r#"["h3"]"#, listener_extra, rest)
}

/// A catch-all route `app` to an upstream `app` with one backend at `url`.
pub fn app_upstream(url: &str) -> String {
    format!(
        "[[routes]]\nname = \"app\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"app\"\n\n[upstreams.app]\nbackends = [ {{ url = \"{url}\" }} ]\n"
    )
}

/// A direct-response route `/hello` ("hello from spooky") and everything else to an upstream
/// `app` with one backend at `url`.
pub fn hello_and_app(url: &str) -> String {
    format!(
        "[[routes]]\nname = \"hello\"\nmatch = {{ path_prefix = \"/hello\" }}\nrespond = {{ status = 200, body = \"hello from spooky\\n\" }}\n\n{}",
        app_upstream(url)
    )
}

/// An access-control route (`/admin` answered 403 by the proxy) and everything else to an
/// upstream `app` with one backend at `url`: a path that walks around the first shows up at
/// the backend.
pub fn admin_and_app(url: &str) -> String {
    format!(
        "[[routes]]\nname = \"admin\"\nmatch = {{ path_prefix = \"/admin\" }}\nrespond = {{ status = 403, body = \"forbidden\\n\" }}\n\n{}",
        app_upstream(url)
    )
}

/// [`pipeline`] with the listener's protocols.
pub fn pipeline_with(protocols: &str, listener_extra: &str, rest: &str) -> String {
    format!(
        r#"
[pipeline]
name = "test"
chain = ["ingress", "admission", "route", "queue", "select", "hedge-retry", "dispatch", "egress"]
drain_timeout = "10s"

[[listeners]]
name = "edge"
bind = "127.0.0.1:0"
protocols = {protocols}
{listener_extra}

[admin]
bind = "127.0.0.1:0"

{rest}
"#
    )
}

impl Proxy {
    /// Starts the daemon and waits for its `ready` line.
    pub fn start(toml: &str) -> Proxy {
        Proxy::start_logging(toml, None)
    }

    /// [`Proxy::start`] with the daemon's log filter (`SPOOKY_LOG`); by default `warn`, or
    /// `SPOOKY_TEST_LOG` when set.
    pub fn start_logging(toml: &str, filter: Option<&str>) -> Proxy {
        let dir = TempDir::new();
        let file = dir.0.join("pipeline.toml");
        std::fs::write(&file, toml).expect("write pipeline");
        let log = dir.0.join("stderr.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_spooky"))
            .arg("run")
            .arg(&file)
            .env(
                "SPOOKY_LOG",
                filter.map(str::to_string).unwrap_or_else(|| {
                    std::env::var("SPOOKY_TEST_LOG").unwrap_or_else(|_| "warn".into())
                }),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn spooky");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut h3, mut admin, mut tcp) = (None, None, None);
        for line in lines.by_ref() {
            let line = line.expect("read stdout");
            if line.starts_with("ready") {
                break;
            }
            let addr = line
                .rsplit("addr=")
                .next()
                .and_then(|a| a.parse::<SocketAddr>().ok());
            if line.contains("protocol=h3") {
                h3 = h3.or(addr);
            } else if line.contains("protocol=tcp") {
                tcp = tcp.or(addr);
            } else if line.contains("listener=admin") {
                admin = addr;
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Proxy {
            h3_addr: h3
                .or(tcp)
                .expect("proxy printed no listener address (did it start?)"),
            tcp_addr: tcp,
            admin_addr: admin.expect("proxy printed no admin address"),
            child,
            file,
            _dir: dir,
            log,
        }
    }

    /// What the daemon has logged so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET` on the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        self.admin_call("GET", path, None, "").await
    }

    /// `POST` on the admin listener with an optional bearer token: (status, body).
    pub async fn admin_post(&self, path: &str, token: Option<&str>) -> (u16, String) {
        self.admin_call("POST", path, token, "").await
    }

    /// Any admin call with an optional bearer token and JSON body: (status, body).
    pub async fn admin_call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let auth = token
            .map(|t| format!("authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let mut s = tokio::net::TcpStream::connect(self.admin_addr)
            .await
            .expect("admin connect");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("admin write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("admin read");
        let status = out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// The value of one sample: `name` with every `label="value"` in `labels`; 0 if absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, body) = self.admin_get("/metrics").await;
        sample(&body, name, labels)
    }

    /// `spooky_stage_rejected_total` of one stage and reason.
    pub async fn rejected(&self, stage: &str, reason: &str) -> f64 {
        self.metric(
            "spooky_stage_rejected_total",
            &[("stage", stage), ("reason", reason)],
        )
        .await
    }

    /// Polls `/metrics` until `pred` holds for the sample (bounded: 10 s), returning it.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        pred: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.metric(name, labels).await;
            if pred(v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting on {name}{labels:?}: last value {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every cap an exchange can hold is back to zero (waits, bounded, for in-flight teardown).
    pub async fn assert_caps_zero(&self) {
        for (name, labels) in [
            ("spooky_exchanges_live", &[][..]),
            ("spooky_admission_inflight", &[][..]),
            ("spooky_upstream_inflight", &[][..]),
            ("spooky_backend_inflight", &[][..]),
            ("spooky_route_queue_waiting", &[][..]),
        ] {
            self.wait_metric(name, labels, |v| v == 0.0).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    /// Waits (bounded: 10 s) until `/ready` answers 503: the signal that draining has begun.
    pub async fn wait_until_not_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.admin_get("/ready").await.0 != 503 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never started draining"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Sends SIGHUP.
    pub fn sighup(&self) {
        self.signal("-HUP");
    }

    /// Sends a signal by name (`-USR1`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Waits (bounded: 20 s) for the daemon to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        for _ in 0..2000 {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("spooky did not exit within 20 s");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sums the samples of `name` whose labels include all of `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let metric = l.split(['{', ' ']).next().unwrap_or("");
            metric == name
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}
