//! systemd's readiness protocol (`Type=notify`): when `NOTIFY_SOCKET` is set, a process that
//! became ready says `READY=1` and its pid as `MAINPID`, so that after a restart with socket
//! inheritance systemd follows the new process (with `NotifyAccess=all`).

use std::os::unix::net::UnixDatagram;

/// Tells systemd this process is ready and is the service's main process (nothing without
/// `NOTIFY_SOCKET`).
pub fn ready() {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let msg = format!("READY=1\nMAINPID={}\n", std::process::id());
    let sent = UnixDatagram::unbound().and_then(|s| {
        if let Some(name) = path.strip_prefix('@') {
            // An abstract socket name.
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            s.send_to_addr(msg.as_bytes(), &addr)
        } else {
            s.send_to(msg.as_bytes(), &path)
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, socket = %path, "cannot notify systemd");
    }
}
