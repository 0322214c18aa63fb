//! `spooky run FILE`: load, build the pipeline, bind listeners, serve until SIGTERM/SIGINT,
//! then drain: stop accepting, let in-flight exchanges finish up to `drain_timeout`, exit 0.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use spooky_stages::Pipelines;
use spooky_stages::adapters::h3::server::H3Listener;
use spooky_stages::adapters::tcp::server::TcpListenerRt;
use spooky_stages::config::{self, Config, ListenerConfig, Protocol};
use spooky_stages::metrics::SECONDS_BUCKETS;
use spooky_stages::tls::{self, CertStore, Certs};
use tokio::sync::watch;

use spooky_stages::adapters::{BindError, sockets};
use spooky_stages::engine::BuildError;

use crate::admin::{self, AdminState};
use crate::reload::CertReloader;
use crate::{EXIT_BAD_CONFIG, EXIT_FAILED};

pub fn run(file: &Path) -> ExitCode {
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
    let workers = config.pipeline.workers.resolve();
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
    match runtime.block_on(serve(config, workers)) {
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
enum RunError {
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

async fn serve(config: Config, workers: NonZeroUsize) -> Result<(), RunError> {
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .map_err(RunError::Metrics)?
        .install_recorder()
        .map_err(RunError::Metrics)?;
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
    let pipelines = Pipelines::start(&config)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (drained_tx, drained_rx) = watch::channel(false);

    let mut reloader = CertReloader::default();
    let mut plans: Vec<WorkerPlan> = (0..workers.get()).map(|_| WorkerPlan::default()).collect();
    for l in &config.listeners {
        let certs = Certs::load(&l.tls, &l.name)?.map(CertStore::new);
        if let Some(store) = &certs {
            store.set_client_verifier(tls::client_verifier(&l.tls)?);
            reloader.add(l, store.clone());
        }
        let sockets = bind_listener(l, workers)?;
        if !sockets.udp.is_empty() {
            let store = certs
                .clone()
                .ok_or_else(|| RunError::H3NeedsTls(l.name.clone()))?;
            let h3 = Arc::new(H3Listener::new(l, &config.stages, store)?);
            println!(
                "listening listener={} protocol=h3 addr={}",
                l.name, sockets.addr
            );
            for (plan, socket) in plans.iter_mut().zip(sockets.udp) {
                plan.h3.push((h3.clone(), socket));
            }
        }
        if !sockets.tcp.is_empty() {
            let h3_port = l
                .protocols
                .contains(&Protocol::H3)
                .then_some(sockets.addr.port());
            let tcp = TcpListenerRt::new(l, &config.stages, certs.clone(), h3_port)?;
            println!(
                "listening listener={} protocol=tcp addr={}",
                l.name, sockets.addr
            );
            for (plan, socket) in plans.iter_mut().zip(sockets.tcp) {
                plan.tcp.push((tcp.clone(), socket));
            }
        }
    }

    // The workers: one thread and one single-threaded runtime each, serving their own sockets.
    let linger = config.pipeline.drain_linger.0;
    let mut threads = Vec::new();
    let mut started = Vec::new();
    for (index, plan) in plans.into_iter().enumerate() {
        let (up_tx, up_rx) = tokio::sync::oneshot::channel();
        let signals = WorkerSignals {
            shutdown: shutdown_rx.clone(),
            drained: drained_rx.clone(),
            linger,
        };
        let pipelines = pipelines.clone();
        let thread = std::thread::Builder::new()
            .name(format!("spooky-worker-{index}"))
            .spawn(move || worker(index, plan, pipelines, signals, up_tx))
            .map_err(RunError::Runtime)?;
        threads.push(thread);
        started.push(up_rx);
    }
    let stop_workers = || {
        let _ = shutdown_tx.send(true);
        let _ = drained_tx.send(true);
    };
    for up in started {
        match up.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                stop_workers();
                return Err(e);
            }
            Err(_) => {
                stop_workers();
                return Err(RunError::WorkerGone);
            }
        }
    }

    let reloader = Arc::new(reloader);
    reloader.watch();
    let token = match config.admin.as_ref().and_then(|a| a.token_file.as_ref()) {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|source| RunError::Token {
                    path: f.clone(),
                    source,
                })?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let state = Arc::new(AdminState {
        prometheus,
        pipelines: pipelines.clone(),
        ready: AtomicBool::new(false),
        token,
        certs: reloader.clone(),
    });
    if let Some(a) = &config.admin {
        let tcp = tokio::net::TcpListener::bind(a.bind)
            .await
            .map_err(|source| RunError::Admin {
                addr: a.bind,
                source,
            })?;
        let addr = tcp.local_addr().map_err(RunError::LocalAddr)?;
        println!("listening listener=admin protocol=http1 addr={addr}");
        tokio::spawn(admin::serve(tcp, state.clone()));
    }
    state.ready.store(true, Ordering::Release);
    tracing::info!(pipeline = %config.pipeline.name, file = %config.file, workers, "ready");
    println!("ready pipeline={} workers={workers}", config.pipeline.name);

    wait_for_shutdown(&reloader).await?;
    let deadline = config.pipeline.drain_timeout.0;
    tracing::info!(
        live = pipelines.drain().live(),
        ?deadline,
        "shutting down: draining"
    );
    // Listeners learn first, so that once /ready answers 503 no new connection is taken.
    let _ = shutdown_tx.send(true);
    state.ready.store(false, Ordering::Release);
    pipelines.drain().close();
    if tokio::time::timeout(deadline, pipelines.drain().wait())
        .await
        .is_err()
    {
        tracing::warn!(
            cancelled = pipelines.drain().live(),
            "drain deadline passed: cancelling the rest"
        );
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

/// One worker's sockets: its UDP socket of each HTTP/3 listener and TCP socket of each TCP
/// listener, with the listener each serves.
#[derive(Default)]
struct WorkerPlan {
    h3: Vec<(Arc<H3Listener>, std::net::UdpSocket)>,
    tcp: Vec<(TcpListenerRt, std::net::TcpListener)>,
}

/// What the daemon tells its workers: stop accepting (`shutdown`), then, once the pipeline
/// drained or the drain deadline passed, close connections after `linger` (`drained`).
struct WorkerSignals {
    shutdown: watch::Receiver<bool>,
    drained: watch::Receiver<bool>,
    linger: Duration,
}

/// A worker thread: its own single-threaded runtime serving its own sockets. Reports on `up`
/// once it serves (or why it cannot), and returns once its connections are closed.
fn worker(
    index: usize,
    plan: WorkerPlan,
    pipelines: Pipelines,
    mut signals: WorkerSignals,
    up: tokio::sync::oneshot::Sender<Result<(), RunError>>,
) {
    spooky_stages::workers::enter(index);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = up.send(Err(RunError::Runtime(e)));
            return;
        }
    };
    runtime.block_on(async move {
        let mut endpoints = Vec::new();
        let mut tcp_listeners = Vec::new();
        for (listener, socket) in plan.h3 {
            match listener.endpoint(socket) {
                Ok(e) => endpoints.push((listener, e)),
                Err(e) => {
                    let _ = up.send(Err(e.into()));
                    return;
                }
            }
        }
        for (listener, socket) in plan.tcp {
            match tokio::net::TcpListener::from_std(socket) {
                Ok(t) => tcp_listeners.push((listener, t)),
                Err(e) => {
                    let _ = up.send(Err(RunError::Runtime(e)));
                    return;
                }
            }
        }
        let mut h3_tasks = Vec::new();
        for (listener, endpoint) in &endpoints {
            h3_tasks.push(tokio::spawn(listener.clone().serve(
                endpoint.clone(),
                pipelines.clone(),
                signals.shutdown.clone(),
            )));
        }
        let mut tcp_tasks = Vec::new();
        for (listener, socket) in tcp_listeners {
            tcp_tasks.push(tokio::spawn(listener.serve(
                socket,
                pipelines.clone(),
                signals.shutdown.clone(),
            )));
        }
        if up.send(Ok(())).is_err() {
            return;
        }
        let _ = signals.drained.wait_for(|d| *d).await;
        let linger = signals.linger;
        // QUIC drops unsent stream data on close: give responses just finished time to reach
        // their clients (or the clients time to close) before closing what is left.
        for (_, e) in &endpoints {
            let _ = tokio::time::timeout(linger, e.wait_idle()).await;
        }
        for (_, e) in &endpoints {
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
        for (_, e) in &endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(1), e.wait_idle()).await;
        }
    });
}

/// A listener's sockets, one of each kind it serves per worker, all on `addr`.
struct ListenerSockets {
    addr: SocketAddr,
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
}

/// Binds a listener's UDP (h3) and TCP (h2, http1) sockets, one each per worker, on the same
/// port number. With port 0, the TCP side takes the port the UDP side got; if that TCP port is
/// taken, both try again.
fn bind_listener(l: &ListenerConfig, workers: NonZeroUsize) -> Result<ListenerSockets, RunError> {
    let wants_h3 = l.protocols.contains(&Protocol::H3);
    let wants_tcp = l.protocols.iter().any(|p| *p != Protocol::H3);
    let reuse = workers.get() > 1;
    let err = |transport: &'static str, addr: SocketAddr| {
        let name = l.name.clone();
        move |source| BindError::Bind {
            listener: name,
            transport,
            addr,
            source,
        }
    };
    let attempts = if l.bind.port() == 0 && wants_h3 && wants_tcp {
        16
    } else {
        1
    };
    let mut attempt = 1;
    let (mut udp, mut tcp) = (Vec::new(), Vec::new());
    let mut addr = l.bind;
    // The first socket of each kind settles the port.
    loop {
        if wants_h3 {
            let first = sockets::udp(l.bind, reuse).map_err(err("UDP", l.bind))?;
            addr = first.local_addr().map_err(RunError::LocalAddr)?;
            udp = vec![first];
        }
        if !wants_tcp {
            break;
        }
        match sockets::tcp(addr, reuse) {
            Ok(first) => {
                addr = first.local_addr().map_err(RunError::LocalAddr)?;
                tcp = vec![first];
                break;
            }
            // The TCP port was taken: try another pair, or give up with its error.
            Err(e) if attempt >= attempts => return Err(err("TCP", addr)(e).into()),
            Err(_) => attempt += 1,
        }
    }
    for _ in 1..workers.get() {
        if wants_h3 {
            udp.push(sockets::udp(addr, reuse).map_err(err("UDP", addr))?);
        }
        if wants_tcp {
            tcp.push(sockets::tcp(addr, reuse).map_err(err("TCP", addr))?);
        }
    }
    Ok(ListenerSockets { addr, udp, tcp })
}

/// Waits for SIGTERM or SIGINT; reloads certificates on every SIGHUP meanwhile.
async fn wait_for_shutdown(reloader: &CertReloader) -> Result<(), RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signal)?;
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM");
                return Ok(());
            }
            _ = int.recv() => {
                tracing::info!("SIGINT");
                return Ok(());
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading certificates");
                let _ = reloader.reload_all();
            }
        }
    }
}
