//! Restart without dropping traffic (`POST /restart`, `SIGUSR2`): a new process of the same
//! binary inherits every listening socket (each listener's UDP and TCP sockets of every
//! worker, and the admin listener), becomes ready, and only then does this one stop
//! accepting, drain and exit.
//!
//! The sockets go to the new process as file descriptors 3… (the `LISTEN_FDS` protocol of
//! systemd, names in `SPOOKY_INHERIT`), with a pipe on which it says `ready`. QUIC needs more
//! than the sockets: the new process reads the shared UDP sockets, and every datagram whose
//! connection ID carries this process's tag is forwarded to this process's per-worker inbox
//! (`SPOOKY_PREDECESSOR`), which it reads once retired (`adapters::h3::steer`). So QUIC
//! connections of the old process keep receiving their packets until they finish, while the
//! old process sends them HTTP/3 GOAWAY so that clients move on to the new one.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::process::Command;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};

/// How long the new process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a process was handed by the one it replaces.
#[derive(Default)]
pub struct Inherited {
    /// Sockets by `(listener, "udp" | "tcp")`; the admin listener is `("admin", "tcp")`.
    udp: BTreeMap<String, Vec<std::net::UdpSocket>>,
    tcp: BTreeMap<String, Vec<std::net::TcpListener>>,
    /// This process's tag (connection IDs), and its predecessor's tag and inboxes.
    pub tag: Option<u8>,
    pub predecessor: Option<(u8, BTreeMap<String, Vec<SocketAddr>>)>,
    /// Where to say `ready`.
    ready_fd: Option<i32>,
    /// The predecessor's worker count (sockets are per worker).
    pub workers: Option<std::num::NonZeroUsize>,
}

impl Inherited {
    /// Reads what the predecessor passed (nothing when started by hand). Call first thing,
    /// before any thread starts (it reads and clears `LISTEN_FDS`).
    pub fn from_env() -> Inherited {
        let mut fds = listenfd::ListenFd::from_env();
        let mut out = Inherited::default();
        let Ok(names) = std::env::var("SPOOKY_INHERIT") else {
            return out;
        };
        for (i, name) in names.split(',').enumerate().take(fds.len()) {
            let Some((listener, kind)) = name.rsplit_once('/') else {
                continue;
            };
            match kind {
                "udp" => {
                    if let Ok(Some(s)) = fds.take_udp_socket(i) {
                        out.udp.entry(listener.to_string()).or_default().push(s);
                    }
                }
                _ => {
                    if let Ok(Some(s)) = fds.take_tcp_listener(i) {
                        out.tcp.entry(listener.to_string()).or_default().push(s);
                    }
                }
            }
        }
        out.tag = std::env::var("SPOOKY_TAG")
            .ok()
            .and_then(|t| t.parse().ok());
        out.ready_fd = std::env::var("SPOOKY_READY_FD")
            .ok()
            .and_then(|t| t.parse().ok());
        out.workers = std::env::var("SPOOKY_WORKERS")
            .ok()
            .and_then(|t| t.parse().ok());
        out.predecessor = std::env::var("SPOOKY_PREDECESSOR")
            .ok()
            .and_then(|p| parse_predecessor(&p));
        out
    }

    /// The inherited sockets of `listener`, when they are on `bind` (or `bind` asks for any
    /// port): UDP, TCP.
    pub fn take(
        &mut self,
        listener: &str,
        bind: SocketAddr,
    ) -> (Vec<std::net::UdpSocket>, Vec<std::net::TcpListener>) {
        let fits = |a: std::io::Result<SocketAddr>| {
            a.is_ok_and(|a| a.ip() == bind.ip() && (bind.port() == 0 || a.port() == bind.port()))
        };
        let udp = self
            .udp
            .remove(listener)
            .filter(|s| s.first().is_some_and(|s| fits(s.local_addr())))
            .unwrap_or_default();
        let tcp = self
            .tcp
            .remove(listener)
            .filter(|s| s.first().is_some_and(|s| fits(s.local_addr())))
            .unwrap_or_default();
        (udp, tcp)
    }

    /// The inherited admin listener, when it is on `bind`.
    pub fn admin(&mut self, bind: SocketAddr) -> Option<std::net::TcpListener> {
        let (_, mut tcp) = self.take("admin", bind);
        tcp.pop()
    }

    /// Tells the predecessor this process is ready (it then stops accepting and drains).
    pub fn ready(&mut self) {
        if let Some(fd) = self.ready_fd.take() {
            // The pipe's write end, reopened through /proc (no raw descriptor handling).
            match std::fs::OpenOptions::new()
                .write(true)
                .open(format!("/proc/self/fd/{fd}"))
            {
                Ok(mut f) => {
                    let _ = f.write_all(b"ready\n");
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot tell the previous process we are ready")
                }
            }
        }
    }
}

/// `TAG;listener=addr,addr;listener=addr`.
fn parse_predecessor(s: &str) -> Option<(u8, BTreeMap<String, Vec<SocketAddr>>)> {
    let mut parts = s.split(';');
    let tag = parts.next()?.parse().ok()?;
    let mut inboxes = BTreeMap::new();
    for p in parts {
        let (name, addrs) = p.split_once('=')?;
        let addrs = addrs
            .split(',')
            .filter(|a| !a.is_empty())
            .map(|a| a.parse().ok())
            .collect::<Option<Vec<SocketAddr>>>()?;
        inboxes.insert(name.to_string(), addrs);
    }
    Some((tag, inboxes))
}

/// Everything the new process is handed.
pub struct Handover {
    /// `(name, socket)`: `edge/udp`, `edge/tcp`, `admin/tcp`, in fd order.
    pub sockets: Vec<(String, OwnedFd)>,
    /// This process's tag and each listener's inboxes by worker.
    pub tag: u8,
    pub inboxes: BTreeMap<String, Vec<SocketAddr>>,
    pub workers: usize,
}

/// Starts the new process and waits until it is ready: its pid.
pub async fn spawn(file: &std::path::Path, handover: Handover) -> Result<u32, String> {
    let exe = std::env::current_exe().map_err(|e| format!("the running binary: {e}"))?;
    let (reader, writer) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let n = handover.sockets.len();
    let names: Vec<&str> = handover.sockets.iter().map(|(n, _)| n.as_str()).collect();
    let inherit = names.join(",");
    let mut predecessor = handover.tag.to_string();
    for (name, addrs) in &handover.inboxes {
        let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        predecessor.push_str(&format!(";{name}={}", list.join(",")));
    }
    let mut mappings: Vec<FdMapping> = Vec::with_capacity(n + 1);
    for (i, (_, fd)) in handover.sockets.into_iter().enumerate() {
        mappings.push(FdMapping {
            parent_fd: fd,
            child_fd: 3 + i as i32,
        });
    }
    let ready_fd = 3 + n as i32;
    mappings.push(FdMapping {
        parent_fd: OwnedFd::from(writer),
        child_fd: ready_fd,
    });
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg(file)
        .env("LISTEN_FDS", n.to_string())
        .env_remove("LISTEN_PID")
        .env("SPOOKY_INHERIT", inherit)
        .env("SPOOKY_TAG", handover.tag.wrapping_add(1).to_string())
        .env("SPOOKY_PREDECESSOR", predecessor)
        .env("SPOOKY_READY_FD", ready_fd.to_string())
        .env("SPOOKY_WORKERS", handover.workers.to_string());
    cmd.fd_mappings(mappings)
        .map_err(|e| format!("file descriptors: {e}"))?;
    let mut child = cmd.spawn().map_err(|e| format!("cannot start it: {e}"))?;
    // Our copies of the write end go with the command: the read below ends at EOF if the
    // child dies before it says ready.
    drop(cmd);
    let pid = child.id();
    let waited = tokio::time::timeout(
        READY_TIMEOUT,
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(reader).read_line(&mut line);
            line
        }),
    )
    .await;
    match waited {
        Ok(Ok(line)) if line.trim() == "ready" => {
            // Reaped by init once it exits after us; nobody waits on it here.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            Ok(pid)
        }
        Ok(_) => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            Err(format!(
                "the new process {pid} exited before it was ready ({status}); see its log"
            ))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "the new process {pid} was not ready within {READY_TIMEOUT:?}: stopped it"
            ))
        }
    }
}

/// A process tag for a process started by hand (from its pid: two processes sharing sockets
/// are always a predecessor and its successor, whose tags differ by construction).
pub fn fresh_tag() -> u8 {
    (std::process::id() % 256) as u8
}
