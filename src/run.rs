//! `spooky run FILE`: load, build the pipeline, bind listeners, serve until SIGTERM/SIGINT,
//! then drain: stop accepting, let in-flight exchanges finish up to `drain_timeout`, exit 0.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use spooky_stages::Pipelines;
use spooky_stages::adapters::h3::server::H3Listener;
use spooky_stages::config::{self, Config};
use spooky_stages::metrics::SECONDS_BUCKETS;
use spooky_stages::tls;
use tokio::sync::watch;

use spooky_stages::adapters::BindError;
use spooky_stages::engine::BuildError;

use crate::admin::{self, AdminState};
use crate::control::Control;
use crate::dns::Dns;
use crate::listeners::{self, Process, ServeCmd};
use crate::restart::Inherited;
use crate::{EXIT_BAD_CONFIG, EXIT_FAILED};

pub fn run(file: &Path) -> ExitCode {
    // Sockets handed over by a process this one replaces (a restart), read before any
    // thread starts.
    let inherited = Inherited::from_env();
    let config = match config::load(file) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    // A restart keeps the worker count: the sockets it inherits are per worker.
    let workers = inherited
        .workers
        .unwrap_or_else(|| config.pipeline.workers.resolve());
    let process = Process {
        tag: inherited.tag.unwrap_or_else(crate::restart::fresh_tag),
        inherited,
    };
    // The control runtime (signals, admin, certificate reload, drain); the listeners are
    // served by the workers' own runtimes.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(serve(config, file, workers, process)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// How often the metrics recorder folds histogram samples into their buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(1);

/// Why the daemon could not start (or keep) serving.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("metrics: {0}")]
    Metrics(#[source] metrics_exporter_prometheus::BuildError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("listener \"{0}\": h3 needs TLS")]
    H3NeedsTls(String),
    #[error("the bound address: {0}")]
    LocalAddr(#[source] std::io::Error),
    #[error("admin.token_file {}: {source}", path.display())]
    Token {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin: cannot bind TCP {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("signals: {0}")]
    Signal(#[source] std::io::Error),
    #[error("cannot start a worker: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("a worker stopped while starting")]
    WorkerGone,
}

async fn serve(
    config: Config,
    file: &Path,
    workers: NonZeroUsize,
    mut process: Process,
) -> Result<(), RunError> {
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .map_err(RunError::Metrics)?
        .install_recorder()
        .map_err(RunError::Metrics)?;
    spooky_stages::metrics::describe();
    metrics::gauge!(spooky_stages::metrics::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
    // Histogram samples wait in the recorder until upkeep folds them into buckets: without it
    // they would pile up between scrapes (a few hundred bytes per request, unbounded).
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(METRICS_UPKEEP);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    // Hostname backends with DNS refresh are resolved before the first generation.
    let dns = Arc::new(Dns::default());
    crate::control::resolve_all(&dns, &config, false).await;
    let pipelines = Pipelines::start(&dns.expand(&config))?;
    let (drained_tx, drained_rx) = watch::channel(false);

    // The workers: one thread and one single-threaded runtime each, serving the sockets the
    // control plane hands them (at start and on every reload that adds a listener).
    let mut threads = Vec::new();
    let mut senders = Vec::new();
    for index in 0..workers.get() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let signals = WorkerSignals {
            drained: drained_rx.clone(),
            linger: config.pipeline.drain_linger.0,
            drain_timeout: config.pipeline.drain_timeout.0,
        };
        let pipelines = pipelines.clone();
        let thread = std::thread::Builder::new()
            .name(format!("spooky-worker-{index}"))
            .spawn(move || worker(index, rx, pipelines, signals))
            .map_err(RunError::Runtime)?;
        threads.push(thread);
        senders.push(tx);
    }
    let mut served = BTreeMap::new();
    for l in &config.listeners {
        let started = listeners::load_certs(l)
            .map_err(RunError::from)
            .and_then(|c| listeners::prepare(l, &config.stages, c, workers, &mut process));
        let started = match started {
            Ok(r) => r.serve(&senders).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(s) => {
                served.insert(l.name.clone(), s);
            }
            Err(e) => {
                let _ = drained_tx.send(true);
                return Err(e);
            }
        }
    }

    let token = read_token(&config)?;
    let admin = match config.admin.as_ref().map(|a| a.bind) {
        Some(bind) => Some(match process.inherited.admin(bind) {
            Some(inherited) => inherited,
            None => std::net::TcpListener::bind(bind)
                .map_err(|source| RunError::Admin { addr: bind, source })?,
        }),
        None => None,
    };
    let pipeline_name = config.pipeline.name.clone();
    let drain_timeout = config.pipeline.drain_timeout.0;
    let linger = config.pipeline.drain_linger.0;
    let control = Arc::new(Control::new(
        file.to_path_buf(),
        dns,
        config,
        pipelines.clone(),
        senders,
        served,
        process,
    ));
    control.start_dns().await;
    let state = Arc::new(AdminState {
        prometheus,
        pipelines: pipelines.clone(),
        ready: AtomicBool::new(false),
        token,
        control: control.clone(),
        version: env!("CARGO_PKG_VERSION"),
        last_stage_totals: std::sync::Mutex::default(),
    });
    if let Some(admin) = admin {
        let addr = admin.local_addr().map_err(RunError::LocalAddr)?;
        *control
            .admin_socket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(admin.try_clone().map_err(RunError::LocalAddr)?);
        admin.set_nonblocking(true).map_err(RunError::LocalAddr)?;
        let tcp = tokio::net::TcpListener::from_std(admin)
            .map_err(|source| RunError::Admin { addr, source })?;
        println!("listening listener=admin protocol=http1 addr={addr}");
        tokio::spawn(admin::serve(
            tcp,
            state.clone(),
            control.admin_stop.subscribe(),
        ));
    }
    state.ready.store(true, Ordering::Release);
    tracing::info!(pipeline = %pipeline_name, file = %file.display(), workers, "ready");
    println!("ready pipeline={pipeline_name} workers={workers}");
    // A process this one replaces stops accepting once it hears this.
    control
        .process
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .inherited
        .ready();
    crate::notify::ready();

    let handed_over = wait_for_shutdown(&control).await?;
    let deadline = drain_timeout;
    tracing::info!(
        live = pipelines.drain().live(),
        ?deadline,
        "shutting down: draining"
    );
    // Listeners learn first, so that once /ready answers 503 no new connection is taken.
    control.stop_listeners().await;
    state.ready.store(false, Ordering::Release);
    if handed_over {
        // Handed over: the new process takes every new connection. Requests that crossed
        // our GOAWAY (or `connection: close`) on the wire are still served for a grace of
        // `drain_linger` before late ones are refused.
        tokio::time::sleep(linger).await;
    }
    pipelines.drain().close();
    if tokio::time::timeout(deadline, pipelines.drain().wait())
        .await
        .is_err()
    {
        tracing::warn!(
            cancelled = pipelines.drain().live(),
            "drain deadline passed: cancelling the rest"
        );
        // Tunnels (WebSockets) never end by themselves: close them cleanly, both ways.
        spooky_stages::contract::tunnel::close_all();
    } else {
        tracing::info!("drained");
    }
    // Each worker now lets its connections deliver their last bytes, then closes them.
    let _ = drained_tx.send(true);
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
    Ok(())
}

/// The admin token, from `admin.token_file`.
fn read_token(config: &Config) -> Result<Option<String>, RunError> {
    match config.admin.as_ref().and_then(|a| a.token_file.as_ref()) {
        Some(f) => Ok(Some(
            std::fs::read_to_string(f)
                .map_err(|source| RunError::Token {
                    path: f.clone(),
                    source,
                })?
                .trim()
                .to_string(),
        )),
        None => Ok(None),
    }
}

/// What the daemon tells its workers: once the pipeline drained or the drain deadline
/// passed, close connections after `linger` (`drained`).
struct WorkerSignals {
    drained: watch::Receiver<bool>,
    linger: Duration,
    /// How long a removed HTTP/3 listener's connections get to finish before it closes.
    drain_timeout: Duration,
}

/// A worker thread: its own single-threaded runtime serving the sockets it is handed, until
/// the daemon has drained; returns once its connections are closed.
fn worker(
    index: usize,
    mut cmds: tokio::sync::mpsc::UnboundedReceiver<ServeCmd>,
    pipelines: Pipelines,
    mut signals: WorkerSignals,
) {
    spooky_stages::workers::enter(index);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            // Every command's sender learns it through its dropped `up`.
            tracing::error!(worker = index, error = %e, "cannot start a worker runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let mut endpoints: Vec<quinn::Endpoint> = Vec::new();
        let mut h3_tasks = Vec::new();
        let mut tcp_tasks = Vec::new();
        let mut open = true;
        loop {
            let cmd = tokio::select! {
                c = cmds.recv(), if open => c,
                _ = signals.drained.wait_for(|d| *d) => break,
            };
            let Some(cmd) = cmd else {
                open = false;
                continue;
            };
            let ServeCmd { h3, tcp, stop, up } = cmd;
            let mut started = Ok(());
            let mut steered = None;
            if let Some((cell, socket, steering)) = h3 {
                match cell.load().endpoint(socket, &steering, index) {
                    Ok((e, s)) => {
                        steered = Some(s);
                        h3_tasks.push(tokio::spawn(H3Listener::serve(
                            cell,
                            e.clone(),
                            pipelines.clone(),
                            stop.clone(),
                        )));
                        tokio::spawn(close_when_removed(
                            e.clone(),
                            stop.clone(),
                            signals.drain_timeout,
                        ));
                        endpoints.push(e);
                    }
                    Err(e) => started = Err(e.into()),
                }
            }
            if let Some((listener, socket)) = tcp {
                match tokio::net::TcpListener::from_std(socket) {
                    Ok(t) => tcp_tasks.push(tokio::spawn(listener.serve(
                        t,
                        pipelines.clone(),
                        stop.clone(),
                    ))),
                    Err(e) => started = Err(RunError::Runtime(e)),
                }
            }
            let _ = up.send(started.map(|()| steered));
        }
        let linger = signals.linger;
        // QUIC drops unsent stream data on close: give responses just finished time to reach
        // their clients (or the clients time to close) before closing what is left.
        for e in &endpoints {
            let _ = tokio::time::timeout(linger, e.wait_idle()).await;
        }
        for e in &endpoints {
            e.close(quinn::VarInt::from_u32(0x100), b"shutdown"); // H3_NO_ERROR
        }
        for t in h3_tasks {
            let _ = t.await;
        }
        // TCP connections that just finished a response are still writing its last bytes (an
        // exchange ends when hyper takes its last frame): each listener returns once its
        // connections are closed, which graceful shutdown makes quick; bounded all the same.
        for t in tcp_tasks {
            if tokio::time::timeout(linger, t).await.is_err() {
                tracing::warn!(
                    ?linger,
                    "TCP connections still open after drain_linger: closing them"
                );
            }
        }
        for e in &endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(1), e.wait_idle()).await;
        }
    });
}

/// A listener removed by a reload: once its connections finished (they were sent GOAWAY),
/// or after `deadline`, its QUIC endpoint closes and its UDP socket is released. (At
/// shutdown the worker closes every endpoint itself.)
async fn close_when_removed(
    endpoint: quinn::Endpoint,
    mut stop: watch::Receiver<bool>,
    deadline: Duration,
) {
    if stop.wait_for(|s| *s).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(deadline, endpoint.wait_idle()).await;
    endpoint.close(quinn::VarInt::from_u32(0x100), b"listener removed");
}

/// Waits for SIGTERM or SIGINT, or for a restart to hand over (`true`); reloads the whole
/// configuration (certificates included) on every SIGHUP meanwhile, reopens the access log on
/// SIGUSR1, and restarts on SIGUSR2.
async fn wait_for_shutdown(control: &Arc<Control>) -> Result<bool, RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signal)?;
    let mut usr2 = signal(SignalKind::user_defined2()).map_err(RunError::Signal)?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(RunError::Signal)?;
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM");
                return Ok(false);
            }
            _ = int.recv() => {
                tracing::info!("SIGINT");
                return Ok(false);
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = control.reload("signal").await;
            }
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: reopening the access log");
                spooky_stages::access_log::reopen_all();
            }
            _ = usr2.recv() => {
                tracing::info!("SIGUSR2: restarting with socket inheritance");
                let _ = control.restart("signal").await;
            }
            () = control.handed_over.notified() => {
                tracing::info!("handed over to the new process: draining");
                return Ok(true);
            }
        }
    }
}
