//! `spooky run FILE`: load, build the pipeline, bind listeners, serve until SIGTERM/SIGINT,
//! then drain: stop accepting, let in-flight exchanges finish up to `drain_timeout`, exit 0.

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

use spooky_stages::adapters::BindError;
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

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
}

async fn serve(config: Config) -> Result<(), RunError> {
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .map_err(RunError::Metrics)?
        .install_recorder()
        .map_err(RunError::Metrics)?;
    let pipelines = Pipelines::start(&config)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let mut reloader = CertReloader::default();
    let mut endpoints = Vec::new();
    let mut tasks = Vec::new();
    let mut tcp_tasks = Vec::new();
    for l in &config.listeners {
        let certs = Certs::load(&l.tls, &l.name)?.map(CertStore::new);
        if let Some(store) = &certs {
            store.set_client_verifier(tls::client_verifier(&l.tls)?);
            reloader.add(l, store.clone());
        }
        let (h3, tcp) = bind_listener(l, &config, certs).await?;
        if let Some(listener) = h3 {
            let addr = listener.local_addr().map_err(RunError::LocalAddr)?;
            println!("listening listener={} protocol=h3 addr={addr}", l.name);
            endpoints.push(listener.endpoint().clone());
            tasks.push(tokio::spawn(
                listener.serve(pipelines.clone(), shutdown_rx.clone()),
            ));
        }
        if let Some(listener) = tcp {
            let addr = listener.local_addr().map_err(RunError::LocalAddr)?;
            println!("listening listener={} protocol=tcp addr={addr}", l.name);
            tcp_tasks.push(tokio::spawn(
                listener.serve(pipelines.clone(), shutdown_rx.clone()),
            ));
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
    tracing::info!(pipeline = %config.pipeline.name, file = %config.file, "ready");
    println!("ready pipeline={}", config.pipeline.name);

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
    // QUIC drops unsent stream data on close: give responses just finished time to reach
    // their clients (or the clients time to close) before closing what is left.
    let linger = config.pipeline.drain_linger.0;
    for e in &endpoints {
        let _ = tokio::time::timeout(linger, e.wait_idle()).await;
    }
    for e in &endpoints {
        e.close(quinn::VarInt::from_u32(0x100), b"shutdown"); // H3_NO_ERROR
    }
    for t in tasks {
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
    Ok(())
}

/// Binds a listener's UDP (h3) and TCP (h2, http1) sides on the same port number. With port
/// 0, the TCP side takes the port the UDP side got; if that TCP port is taken, both try again.
async fn bind_listener(
    l: &ListenerConfig,
    config: &Config,
    certs: Option<Arc<CertStore>>,
) -> Result<(Option<H3Listener>, Option<TcpListenerRt>), RunError> {
    let wants_h3 = l.protocols.contains(&Protocol::H3);
    let wants_tcp = l.protocols.iter().any(|p| *p != Protocol::H3);
    let attempts = if l.bind.port() == 0 && wants_h3 && wants_tcp {
        16
    } else {
        1
    };
    let mut attempt = 1;
    loop {
        let mut bind = l.clone();
        let mut h3 = None;
        if wants_h3 {
            let store = certs
                .clone()
                .ok_or_else(|| RunError::H3NeedsTls(l.name.clone()))?;
            let listener = H3Listener::bind(l, &config.stages, store)?;
            // TCP takes the same port number.
            bind.bind = listener.local_addr().map_err(RunError::LocalAddr)?;
            h3 = Some(listener);
        }
        if !wants_tcp {
            return Ok((h3, None));
        }
        let h3_port = h3.as_ref().map(|_| bind.bind.port());
        match TcpListenerRt::bind(&bind, &config.stages, certs.clone(), h3_port).await {
            Ok(tcp) => return Ok((h3, Some(tcp))),
            // The TCP port was taken: try another pair, or give up with its error.
            Err(e) if attempt >= attempts => return Err(e.into()),
            Err(_) => attempt += 1,
        }
    }
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
