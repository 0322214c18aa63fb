//! The listeners as served: bound on the control thread, served by every worker, and changed
//! by a reload. A listener is known by its name:
//! * added: bound (every worker's sockets) before anything else changes, then served;
//! * removed: stops accepting, asks its connections to finish (HTTP/2 and HTTP/3 GOAWAY,
//!   HTTP/1.1 `connection: close`) and closes once they did;
//! * a new `bind`: the new address is bound first, then the old one is removed as above;
//! * other keys (TLS, timeouts, limits, …): updated in place — new connections get the new
//!   settings, open ones keep theirs, the sockets stay (no connection is dropped);
//! * the same `bind` with other `protocols`: refused (409), since the old sockets would still
//!   hold the address (use a new address, or restart).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;

use spooky_stages::adapters::h3::server::H3Listener;
use spooky_stages::adapters::h3::steer::{SteeredSocket, Steering};
use spooky_stages::adapters::swap::Swap;
use spooky_stages::adapters::tcp::server::TcpListenerRt;
use spooky_stages::adapters::{BindError, sockets};
use spooky_stages::config::{ListenerConfig, Protocol, StagesConfig};
use spooky_stages::tls::{self, CertStore, Certs};
use tokio::sync::{mpsc, oneshot, watch};

use crate::restart::Inherited;
use crate::run::RunError;

/// What a worker is asked to serve: one listener's sockets of that worker.
pub struct ServeCmd {
    pub h3: Option<(Arc<Swap<H3Listener>>, std::net::UdpSocket, Arc<Steering>)>,
    pub tcp: Option<(TcpListenerRt, std::net::TcpListener)>,
    /// Turns true when the listener is removed (or the daemon shuts down).
    pub stop: watch::Receiver<bool>,
    /// Serving: the QUIC endpoint's steered socket, if any.
    pub up: oneshot::Sender<Result<Option<Arc<SteeredSocket>>, RunError>>,
}

/// A listener being served.
pub struct Served {
    pub config: ListenerConfig,
    pub addr: SocketAddr,
    pub h3: Option<Arc<Swap<H3Listener>>>,
    pub tcp: Option<TcpListenerRt>,
    pub certs: Option<Arc<CertStore>>,
    stop: watch::Sender<bool>,
    /// How its QUIC datagrams are steered, and each worker's steered socket (in order).
    pub steering: Option<Arc<Steering>>,
    pub steered: Vec<Arc<SteeredSocket>>,
    /// Its sockets, kept to hand over at a restart (the workers own the originals).
    pub sockets: ListenerSockets,
}

impl Served {
    /// Stops accepting; open connections are asked to finish.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// A listener bound and built, not yet served.
pub struct Ready {
    served: Served,
    sockets: ListenerSockets,
}

/// What a process is: its tag (connection IDs) and what it inherited.
pub struct Process {
    pub tag: u8,
    pub inherited: Inherited,
}

/// Certificates loaded for a listener (checked before anything changes).
pub struct Loaded {
    certs: Option<Certs>,
    verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

/// Loads a listener's certificates and client CA.
pub fn load_certs(l: &ListenerConfig) -> Result<Loaded, tls::TlsError> {
    Ok(Loaded {
        certs: Certs::load(&l.tls, &l.name)?,
        verifier: tls::client_verifier(&l.tls)?,
    })
}

/// Binds `l` (every worker's sockets) and builds what serves it.
pub fn prepare(
    l: &ListenerConfig,
    stages: &StagesConfig,
    loaded: Loaded,
    workers: NonZeroUsize,
    process: &mut Process,
) -> Result<Ready, RunError> {
    let certs = loaded.certs.map(CertStore::new);
    if let Some(store) = &certs {
        store.set_client_verifier(loaded.verifier);
    }
    let (udp, tcp) = process.inherited.take(&l.name, l.bind);
    let sockets = if udp.is_empty() && tcp.is_empty() {
        bind_listener(l, workers)?
    } else {
        let addr = udp
            .first()
            .map(std::net::UdpSocket::local_addr)
            .or_else(|| tcp.first().map(std::net::TcpListener::local_addr))
            .transpose()
            .map_err(RunError::LocalAddr)?
            .unwrap_or(l.bind);
        tracing::info!(listener = %l.name, %addr, udp = udp.len(), tcp = tcp.len(), "serving inherited sockets");
        ListenerSockets { addr, udp, tcp }
    };
    let steering = match sockets.udp.is_empty() {
        true => None,
        false => {
            let s = Steering::new(process.tag).map_err(RunError::LocalAddr)?;
            if let Some((tag, inboxes)) = &process.inherited.predecessor
                && let Some(mine) = inboxes.get(&l.name)
            {
                s.set_predecessor(*tag, mine.clone());
            }
            Some(s)
        }
    };
    let (h3, tcp) = build(
        l,
        stages,
        certs.clone(),
        sockets.addr,
        !sockets.udp.is_empty(),
    )?;
    let h3 = h3.map(|h| Swap::new(Arc::new(h)));
    let (stop, _) = watch::channel(false);
    let kept = sockets.try_clone().map_err(RunError::LocalAddr)?;
    Ok(Ready {
        served: Served {
            config: l.clone(),
            addr: sockets.addr,
            h3,
            tcp,
            certs,
            stop,
            steering,
            steered: Vec::new(),
            sockets: kept,
        },
        sockets,
    })
}

type Built = (Option<H3Listener>, Option<TcpListenerRt>);

fn build(
    l: &ListenerConfig,
    stages: &StagesConfig,
    certs: Option<Arc<CertStore>>,
    addr: SocketAddr,
    h3: bool,
) -> Result<Built, RunError> {
    let wants_tcp = l.protocols.iter().any(|p| *p != Protocol::H3);
    let h3 = match h3 {
        true => {
            let store = certs
                .clone()
                .ok_or_else(|| RunError::H3NeedsTls(l.name.clone()))?;
            Some(H3Listener::new(l, stages, store)?)
        }
        false => None,
    };
    let tcp = match wants_tcp {
        true => {
            let h3_port = l.protocols.contains(&Protocol::H3).then_some(addr.port());
            Some(TcpListenerRt::new(l, stages, certs, h3_port)?)
        }
        false => None,
    };
    Ok((h3, tcp))
}

impl Ready {
    /// Hands each worker its sockets and waits until all serve.
    pub async fn serve(
        self,
        workers: &[mpsc::UnboundedSender<ServeCmd>],
    ) -> Result<Served, RunError> {
        let Ready {
            mut served,
            sockets,
        } = self;
        let mut udp = sockets.udp.into_iter();
        let mut tcp = sockets.tcp.into_iter();
        let mut ups = Vec::new();
        for w in workers {
            let (up, up_rx) = oneshot::channel();
            let h3 = match (&served.h3, udp.next(), &served.steering) {
                (Some(cell), Some(socket), Some(steering)) => {
                    Some((cell.clone(), socket, steering.clone()))
                }
                _ => None,
            };
            let cmd = ServeCmd {
                h3,
                tcp: served.tcp.clone().zip(tcp.next()),
                stop: served.stop.subscribe(),
                up,
            };
            w.send(cmd).map_err(|_| RunError::WorkerGone)?;
            ups.push(up_rx);
        }
        for up in ups {
            if let Some(steered) = up.await.map_err(|_| RunError::WorkerGone)?? {
                served.steered.push(steered);
            }
        }
        for kind in [("h3", served.h3.is_some()), ("tcp", served.tcp.is_some())] {
            if kind.1 {
                println!(
                    "listening listener={} protocol={} addr={}",
                    served.config.name, kind.0, served.addr
                );
            }
        }
        Ok(served)
    }
}

/// How a reload changes one listener.
pub enum Change {
    Add,
    Remove,
    /// A new address: bind the new one, then remove the old.
    Rebind,
    /// Same sockets, new settings.
    Update,
}

/// What a reload does to the listeners, or why it cannot.
pub fn plan(
    old: &BTreeMap<String, Served>,
    new: &[ListenerConfig],
) -> Result<Vec<(String, Change)>, Vec<String>> {
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for l in new {
        match old.get(&l.name) {
            None => out.push((l.name.clone(), Change::Add)),
            Some(s) if s.config.bind != l.bind => out.push((l.name.clone(), Change::Rebind)),
            Some(s) if s.config.protocols != l.protocols => refused.push(format!(
                "listeners.{}.protocols: changing the protocols of a listener on the same address needs new sockets while the old ones still hold it; use a new bind address (or restart)",
                l.name
            )),
            Some(s) if crate::diff::same(&s.config, l) => {}
            Some(_) => out.push((l.name.clone(), Change::Update)),
        }
    }
    for name in old.keys() {
        if !new.iter().any(|l| &l.name == name) {
            out.push((name.clone(), Change::Remove));
        }
    }
    if refused.is_empty() {
        Ok(out)
    } else {
        Err(refused)
    }
}

impl Served {
    /// Serves new connections with `l`'s settings and `loaded` certificates, on the same
    /// sockets.
    pub fn update(
        &mut self,
        l: &ListenerConfig,
        stages: &StagesConfig,
        loaded: Loaded,
    ) -> Result<(), RunError> {
        let certs = loaded.certs.map(CertStore::new);
        if let Some(store) = &certs {
            store.set_client_verifier(loaded.verifier);
        }
        let (h3, tcp) = build(l, stages, certs.clone(), self.addr, self.h3.is_some())?;
        if let (Some(cell), Some(mut next)) = (&self.h3, h3) {
            next.carry_over(&cell.load());
            cell.store(Arc::new(next));
        }
        if let (Some(cur), Some(next)) = (&self.tcp, tcp) {
            cur.update(&next);
        }
        self.config = l.clone();
        self.certs = certs;
        Ok(())
    }

    /// Applies freshly loaded certificates to the running store (a kept listener).
    pub fn replace_certs(&self, loaded: Loaded) {
        if let (Some(store), Some(certs)) = (&self.certs, loaded.certs) {
            store.replace(certs);
            store.set_client_verifier(loaded.verifier);
            if matches!(self.config.tls, spooky_stages::config::TlsSetting::Files(_)) {
                metrics::counter!(spooky_stages::metrics::CONTROL_RELOADS, "kind" => "certs", "result" => "ok")
                    .increment(1);
            }
        }
    }
}

/// A listener's sockets, one of each kind it serves per worker, all on `addr`.
pub struct ListenerSockets {
    pub addr: SocketAddr,
    pub udp: Vec<std::net::UdpSocket>,
    pub tcp: Vec<std::net::TcpListener>,
}

impl ListenerSockets {
    /// Another handle on each socket (the same sockets).
    fn try_clone(&self) -> std::io::Result<ListenerSockets> {
        Ok(ListenerSockets {
            addr: self.addr,
            udp: self
                .udp
                .iter()
                .map(std::net::UdpSocket::try_clone)
                .collect::<Result<_, _>>()?,
            tcp: self
                .tcp
                .iter()
                .map(std::net::TcpListener::try_clone)
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Binds a listener's UDP (h3) and TCP (h2, http1) sockets, one each per worker, on the same
/// port number. With port 0, the TCP side takes the port the UDP side got; if that TCP port is
/// taken, both try again.
pub fn bind_listener(
    l: &ListenerConfig,
    workers: NonZeroUsize,
) -> Result<ListenerSockets, RunError> {
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
