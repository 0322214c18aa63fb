//! The control plane: reloading the whole configuration as a new generation (`SIGHUP`,
//! `POST /config/reload`), changing upstream membership (the admin API, in `membership`), and
//! what `/status` reports about generations.
//!
//! A reload is all or nothing. It reads and validates the file, loads every listener's
//! certificates, binds every new listener address and builds the new generation; only when
//! all of that worked does it swap: new exchanges use the new generation, in-flight ones
//! finish on the old one (dropped when its last exchange ends), listeners are added, removed,
//! re-bound or updated in place (see `listeners`), and open connections stay open. Any
//! failure leaves the running generation untouched and answers every problem.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Instant;

use metrics::{counter, gauge};
use serde::Serialize;
use spooky_stages::Pipelines;
use spooky_stages::config::{self, Config};
use spooky_stages::engine::Pipeline;
use tokio::sync::mpsc;

use crate::diff::Diff;
use crate::dns::{self, Dns};
use crate::listeners::{self, Change, ServeCmd, Served};
use crate::reload::CertReloader;
use crate::run::RunError;

/// `spooky_config_reloads_total{trigger, outcome}` (file reloads and membership changes) and
/// `spooky_config_generation` (the live generation number, 1 at start).
pub use spooky_stages::metrics::{CONFIG_GENERATION, CONFIG_RELOADS};

/// Why a reload (or a membership change) changed nothing.
#[derive(Debug)]
pub enum Refused {
    /// The file does not parse or validate, or a certificate does not load (400).
    Invalid(Vec<String>),
    /// An address is taken, or a listener change needs a restart (409).
    Conflict(Vec<String>),
    /// The generation could not be built, or a worker is gone (500).
    Failed(Vec<String>),
}

impl Refused {
    pub fn outcome(&self) -> &'static str {
        match self {
            Refused::Invalid(_) => "invalid",
            Refused::Conflict(_) | Refused::Failed(_) => "failed",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Refused::Invalid(_) => 400,
            Refused::Conflict(_) => 409,
            Refused::Failed(_) => 500,
        }
    }

    pub fn errors(&self) -> &[String] {
        match self {
            Refused::Invalid(e) | Refused::Conflict(e) | Refused::Failed(e) => e,
        }
    }
}

/// A reload that took effect.
#[derive(Debug, Serialize)]
pub struct Reloaded {
    pub generation: u64,
    pub diff: Diff,
    /// Keys read only at start that changed (they take effect at the next restart).
    pub restart_needed: Vec<String>,
}

/// What the control plane changes, behind one lock (reloads and API calls are serialized).
pub struct Live {
    /// As read from the file.
    pub file_config: Config,
    /// What runs: the file plus membership changes made through the API since.
    pub config: Config,
    /// Membership changes in effect (cleared by a file reload).
    pub overlay: Vec<String>,
    pub listeners: BTreeMap<String, Served>,
    reloader: Arc<CertReloader>,
    watches: Vec<tokio::task::JoinHandle<()>>,
}

pub struct Control {
    pub file: PathBuf,
    /// Hostname backends' resolved addresses (DNS refresh).
    pub dns: Arc<Dns>,
    dns_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    pub pipelines: Pipelines,
    workers: Vec<mpsc::UnboundedSender<ServeCmd>>,
    worker_count: NonZeroUsize,
    pub live: tokio::sync::Mutex<Live>,
    pub started: Instant,
    generation: AtomicU64,
    /// Generations swapped out, while some exchange still holds them.
    retired: Mutex<Vec<(u64, Weak<Pipeline>)>>,
    /// This process's tag and what it inherited.
    pub process: Mutex<listeners::Process>,
    /// The admin listener (another handle, for a restart to hand over).
    pub admin_socket: Mutex<Option<std::net::TcpListener>>,
    /// Set once a restart handed everything over: the daemon then drains and exits.
    pub handed_over: tokio::sync::Notify,
    restarting: std::sync::atomic::AtomicBool,
    /// Turns true when the admin listener must stop accepting (handed over).
    pub admin_stop: tokio::sync::watch::Sender<bool>,
}

/// A generation that was swapped out and still has exchanges.
#[derive(Serialize)]
pub struct Draining {
    pub generation: u64,
    /// Exchanges still running on it (and anything else holding it).
    pub holders: usize,
    /// Permits its exchanges hold (stage places, admission, upstream and backend caps).
    pub held: usize,
}

impl Control {
    pub fn new(
        file: PathBuf,
        dns: Arc<Dns>,
        config: Config,
        pipelines: Pipelines,
        workers: Vec<mpsc::UnboundedSender<ServeCmd>>,
        listeners: BTreeMap<String, Served>,
        process: listeners::Process,
    ) -> Control {
        let worker_count = NonZeroUsize::new(workers.len()).unwrap_or(NonZeroUsize::MIN);
        let (reloader, watches) = certs_of(&listeners);
        for outcome in ["ok", "invalid", "failed"] {
            for trigger in ["file", "api", "dns", "restart"] {
                counter!(CONFIG_RELOADS, "trigger" => trigger, "outcome" => outcome).absolute(0);
            }
        }
        gauge!(CONFIG_GENERATION).set(1.0);
        Control {
            file,
            dns,
            dns_tasks: Mutex::default(),
            pipelines,
            workers,
            worker_count,
            live: tokio::sync::Mutex::new(Live {
                file_config: config.clone(),
                config,
                overlay: Vec::new(),
                listeners,
                reloader,
                watches,
            }),
            started: Instant::now(),
            generation: AtomicU64::new(1),
            retired: Mutex::default(),
            process: Mutex::new(process),
            admin_socket: Mutex::default(),
            handed_over: tokio::sync::Notify::new(),
            restarting: std::sync::atomic::AtomicBool::new(false),
            admin_stop: tokio::sync::watch::channel(false).0,
        }
    }

    /// The live generation number.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Generations swapped out that some exchange still holds.
    pub fn draining(&self) -> Vec<Draining> {
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        retired.retain(|(_, w)| w.strong_count() > 0);
        retired
            .iter()
            .filter_map(|(g, w)| {
                let p = w.upgrade()?;
                Some(Draining {
                    generation: *g,
                    // This upgrade is one of them.
                    holders: Arc::strong_count(&p) - 1,
                    held: p.held(),
                })
            })
            .collect()
    }

    /// Reloads every listener's certificates (`POST /certs/reload`).
    pub async fn reload_certs(&self) -> (bool, Vec<String>) {
        self.live.lock().await.reloader.reload_all()
    }

    /// Reloads the configuration file; `trigger` is `"signal"` or `"api"` (for logs).
    pub async fn reload(self: &Arc<Self>, trigger: &'static str) -> Result<Reloaded, Refused> {
        let result = {
            let mut live = self.live.lock().await;
            self.reload_locked(&mut live).await
        };
        if result.is_ok() {
            self.start_dns().await;
        }
        let outcome = match &result {
            Ok(r) => {
                tracing::info!(
                    trigger,
                    generation = r.generation,
                    diff = %r.diff.summary(),
                    "configuration reloaded"
                );
                for line in r.diff.lines() {
                    tracing::info!(generation = r.generation, "{line}");
                }
                for key in &r.restart_needed {
                    tracing::warn!(
                        key,
                        "changed, but read only at start: takes effect at the next restart"
                    );
                }
                "ok"
            }
            Err(e) => {
                tracing::error!(
                    trigger,
                    outcome = e.outcome(),
                    errors = %e.errors().join("; "),
                    "configuration reload refused: still serving generation {}",
                    self.generation()
                );
                e.outcome()
            }
        };
        counter!(CONFIG_RELOADS, "trigger" => "file", "outcome" => outcome).increment(1);
        result
    }

    async fn reload_locked(&self, live: &mut Live) -> Result<Reloaded, Refused> {
        let new = config::load(&self.file)
            .map_err(|e| Refused::Invalid(e.0.iter().map(ToString::to_string).collect()))?;
        let diff = Diff::between(&live.config, &new);
        let mut restart_needed = Vec::new();
        if new.pipeline.workers != live.config.pipeline.workers {
            restart_needed.push("pipeline.workers".to_string());
        }
        if !crate::diff::same(&new.admin, &live.config.admin) {
            restart_needed.push("admin".to_string());
        }
        let plan = listeners::plan(&live.listeners, &new.listeners).map_err(Refused::Conflict)?;

        // Every listener's certificates, before anything changes.
        let mut loaded = BTreeMap::new();
        let mut bad = Vec::new();
        for l in &new.listeners {
            match listeners::load_certs(l) {
                Ok(c) => {
                    loaded.insert(l.name.clone(), c);
                }
                Err(e) => {
                    counter!(spooky_stages::metrics::CONTROL_RELOADS, "kind" => "certs", "result" => "error")
                        .increment(1);
                    bad.push(format!("listeners.{}.tls: {e}", l.name));
                }
            }
        }
        if !bad.is_empty() {
            return Err(Refused::Invalid(bad));
        }
        // New addresses bound (all of them, or none kept).
        let mut ready = Vec::new();
        let mut taken = Vec::new();
        for (name, change) in &plan {
            if !matches!(change, Change::Add | Change::Rebind) {
                continue;
            }
            let Some(l) = new.listeners.iter().find(|l| &l.name == name) else {
                continue;
            };
            let Some(certs) = loaded.remove(name) else {
                continue;
            };
            let prepared = {
                let mut process = self.process.lock().unwrap_or_else(PoisonError::into_inner);
                listeners::prepare(l, &new.stages, certs, self.worker_count, &mut process)
            };
            match prepared {
                Ok(r) => ready.push((name.clone(), r)),
                Err(e) => taken.push(e.to_string()),
            }
        }
        if !taken.is_empty() {
            return Err(Refused::Conflict(taken));
        }
        // Hostnames the new file refreshes are resolved before it is served.
        resolve_all(&self.dns, &new, true).await;
        let next = self
            .pipelines
            .build(&self.dns.expand(&new))
            .map_err(|e| Refused::Failed(vec![e.to_string()]))?;

        // From here on, the new configuration is served.
        self.swap(next);
        for (name, r) in ready {
            let served = r
                .serve(&self.workers)
                .await
                .map_err(|e| Refused::Failed(vec![e.to_string()]))?;
            if let Some(old) = live.listeners.insert(name, served) {
                old.stop();
            }
        }
        for (name, change) in &plan {
            match change {
                Change::Remove => {
                    if let Some(old) = live.listeners.remove(name) {
                        old.stop();
                    }
                }
                Change::Update => {
                    let (Some(s), Some(l), Some(certs)) = (
                        live.listeners.get_mut(name),
                        new.listeners.iter().find(|l| &l.name == name),
                        loaded.remove(name),
                    ) else {
                        continue;
                    };
                    s.update(l, &new.stages, certs)
                        .map_err(|e| Refused::Failed(vec![e.to_string()]))?;
                }
                Change::Add | Change::Rebind => {}
            }
        }
        // Kept listeners: their certificate files are read again (SIGHUP reloads them too).
        for (name, certs) in loaded {
            if let Some(s) = live.listeners.get(&name) {
                s.replace_certs(certs);
            }
        }
        for w in live.watches.drain(..) {
            w.abort();
        }
        (live.reloader, live.watches) = certs_of(&live.listeners);
        self.dns.retain(&new);
        live.file_config = new.clone();
        live.config = new;
        live.overlay.clear();
        Ok(Reloaded {
            generation: self.generation(),
            diff,
            restart_needed,
        })
    }

    /// Builds a generation from `config` (a membership change) and serves it.
    pub fn apply(&self, live: &mut Live, config: Config, change: String) -> Result<u64, Refused> {
        let next = match self.pipelines.build(&self.dns.expand(&config)) {
            Ok(next) => next,
            Err(e) => {
                counter!(CONFIG_RELOADS, "trigger" => "api", "outcome" => "failed").increment(1);
                return Err(Refused::Failed(vec![e.to_string()]));
            }
        };
        self.swap(next);
        live.config = config;
        tracing::info!(generation = self.generation(), change = %change, "membership changed");
        live.overlay.push(change);
        counter!(CONFIG_RELOADS, "trigger" => "api", "outcome" => "ok").increment(1);
        Ok(self.generation())
    }

    /// Serves the running configuration again with the addresses DNS refresh just found.
    async fn dns_changed(&self, upstream: &str) {
        let live = self.live.lock().await;
        let outcome = match self.pipelines.build(&self.dns.expand(&live.config)) {
            Ok(next) => {
                self.swap(next);
                tracing::info!(
                    upstream,
                    generation = self.generation(),
                    "DNS answer changed: members updated"
                );
                "ok"
            }
            Err(e) => {
                tracing::error!(upstream, error = %e, "DNS answer changed, but the generation could not be built");
                "failed"
            }
        };
        counter!(CONFIG_RELOADS, "trigger" => "dns", "outcome" => outcome).increment(1);
    }

    /// (Re)starts one refresh task per upstream with `dns_refresh` and hostname backends.
    pub async fn start_dns(self: &Arc<Self>) {
        let config = self.live.lock().await.file_config.clone();
        let mut tasks = self
            .dns_tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for t in tasks.drain(..) {
            t.abort();
        }
        for (name, u) in &config.upstreams {
            let (urls, Some(policy)) = (dns::names(u), u.dns_refresh) else {
                continue;
            };
            if urls.is_empty() {
                continue;
            }
            let resolver = match dns::resolver(u) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(upstream = %name, error = %e, "no DNS refresh");
                    continue;
                }
            };
            let this = Arc::downgrade(self);
            let name = name.clone();
            tasks.push(tokio::spawn(async move {
                let mut wait = dns::next_refresh(policy, None);
                loop {
                    tokio::time::sleep(wait).await;
                    let Some(control) = this.upgrade() else {
                        return;
                    };
                    let (changed, ttl) = refresh(&control.dns, &resolver, &name, &urls).await;
                    wait = dns::next_refresh(policy, ttl);
                    if changed {
                        control.dns_changed(&name).await;
                    }
                }
            }));
        }
    }

    fn swap(&self, next: Arc<Pipeline>) {
        let old = self.pipelines.swap(next);
        let retired_gen = self.generation.fetch_add(1, Ordering::AcqRel);
        gauge!(CONFIG_GENERATION).set((retired_gen + 1) as f64);
        self.retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((retired_gen, Arc::downgrade(&old)));
    }

    /// Restart with socket inheritance: starts a new process of this binary on every socket
    /// this one serves, waits until it is ready, then retires this one's QUIC sockets (their
    /// datagrams now come through the new process) and hands over: the daemon drains and
    /// exits. The new process's pid.
    pub async fn restart(&self, trigger: &'static str) -> Result<u32, String> {
        use std::sync::atomic::Ordering::AcqRel;
        if self.restarting.swap(true, AcqRel) {
            return Err("a restart is already under way".into());
        }
        let result = self.restart_inner().await;
        let outcome = match &result {
            Ok(pid) => {
                tracing::info!(
                    trigger,
                    pid,
                    "restart: the new process is ready; this one stops accepting, drains and exits"
                );
                "ok"
            }
            Err(e) => {
                tracing::error!(trigger, error = %e, "restart failed: this process goes on serving");
                self.restarting.store(false, Ordering::Release);
                "failed"
            }
        };
        counter!(CONFIG_RELOADS, "trigger" => "restart", "outcome" => outcome).increment(1);
        result
    }

    async fn restart_inner(&self) -> Result<u32, String> {
        let live = self.live.lock().await;
        let steered: Vec<_> = live
            .listeners
            .values()
            .flat_map(|s| s.steered.iter().cloned())
            .collect();
        let mut sockets = Vec::new();
        let mut inboxes = BTreeMap::new();
        let dup = |e: std::io::Error| format!("socket: {e}");
        for (name, s) in &live.listeners {
            for u in &s.sockets.udp {
                sockets.push((
                    format!("{name}/udp"),
                    OwnedFd::from(u.try_clone().map_err(dup)?),
                ));
            }
            for t in &s.sockets.tcp {
                sockets.push((
                    format!("{name}/tcp"),
                    OwnedFd::from(t.try_clone().map_err(dup)?),
                ));
            }
            let addrs = s
                .steered
                .iter()
                .map(|st| st.inbox())
                .collect::<Result<Vec<_>, _>>()
                .map_err(dup)?;
            if !addrs.is_empty() {
                inboxes.insert(name.clone(), addrs);
            }
        }
        if let Some(admin) = &*self
            .admin_socket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            sockets.push((
                "admin/tcp".into(),
                OwnedFd::from(admin.try_clone().map_err(dup)?),
            ));
        }
        let tag = self
            .process
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tag;
        let handover = crate::restart::Handover {
            sockets,
            tag,
            inboxes,
            workers: self.worker_count.get(),
        };
        // Not held while the new process starts: /ready and /status go on answering.
        drop(live);
        let pid = crate::restart::spawn(&self.file, handover).await?;
        // From now on the new process reads the shared sockets: ours read their inboxes.
        for st in &steered {
            st.retire();
        }
        let _ = self.admin_stop.send(true);
        self.handed_over.notify_one();
        Ok(pid)
    }

    /// Stops every listener (shutdown).
    pub async fn stop_listeners(&self) {
        for s in self.live.lock().await.listeners.values() {
            s.stop();
        }
    }
}

/// Resolves every refreshed hostname of `config` (only those not known yet when `new_only`).
pub async fn resolve_all(dns: &Dns, config: &Config, new_only: bool) {
    for (name, u) in &config.upstreams {
        let mut urls = dns::names(u);
        if new_only {
            urls.retain(|url| !dns.knows(name, url));
        }
        if urls.is_empty() {
            continue;
        }
        match dns::resolver(u) {
            Ok(r) => {
                refresh(dns, &r, name, &urls).await;
            }
            Err(e) => tracing::error!(upstream = %name, error = %e, "cannot resolve backends"),
        }
    }
}

/// Resolves `urls` of `upstream` once: whether an answer changed the members, and the
/// shortest TTL seen. A failed name keeps its last good addresses.
async fn refresh(
    dns: &Dns,
    resolver: &dns::Tokio,
    upstream: &str,
    urls: &[String],
) -> (bool, Option<std::time::Duration>) {
    let (mut changed, mut failed, mut ttl) = (false, false, None::<std::time::Duration>);
    for url in urls {
        match dns::lookup(resolver, url).await {
            Ok((ips, t)) => {
                changed |= dns.set(upstream, url, ips);
                ttl = Some(ttl.map_or(t, |x| x.min(t)));
            }
            Err(e) => {
                failed = true;
                tracing::warn!(upstream, backend = %url, error = %e, "DNS refresh failed: keeping the last good addresses");
            }
        }
    }
    let outcome = match (failed, changed) {
        (true, _) => "failed",
        (false, true) => "changed",
        (false, false) => "unchanged",
    };
    counter!(dns::DNS_REFRESHES, "upstream" => upstream.to_string(), "outcome" => outcome)
        .increment(1);
    (changed, ttl)
}

/// The certificate reloader of `listeners`, with its file watches started.
fn certs_of(
    listeners: &BTreeMap<String, Served>,
) -> (Arc<CertReloader>, Vec<tokio::task::JoinHandle<()>>) {
    let mut r = CertReloader::default();
    for s in listeners.values() {
        if let Some(store) = &s.certs {
            r.add(&s.config, store.clone());
        }
    }
    let r = Arc::new(r);
    let watches = r.watch();
    (r, watches)
}

impl From<RunError> for Refused {
    fn from(e: RunError) -> Refused {
        Refused::Failed(vec![e.to_string()])
    }
}
