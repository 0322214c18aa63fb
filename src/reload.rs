//! Certificate hot reload: on SIGHUP, on `POST /certs/reload` (admin, bearer token) and, for
//! listeners with `watch = true`, when their files change. A listener's certificates, keys
//! and `client_ca` (mTLS) are reloaded together. New handshakes get the new ones; established
//! connections go on untouched. A broken file (bad PEM, key mismatch, names not covered, an
//! unusable client CA) is refused with a log line and the old set keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use metrics::counter;
use spooky_stages::config::{ListenerConfig, TlsSetting};
use spooky_stages::metrics::CONTROL_RELOADS;
use spooky_stages::tls::{self, CertStore, Certs};

/// One listener's certificates and where they come from.
struct Entry {
    listener: String,
    setting: TlsSetting,
    store: Arc<CertStore>,
}

/// Every listener's certificate store.
#[derive(Default)]
pub struct CertReloader {
    entries: Vec<Entry>,
}

impl CertReloader {
    pub fn add(&mut self, listener: &ListenerConfig, store: Arc<CertStore>) {
        self.entries.push(Entry {
            listener: listener.name.clone(),
            setting: listener.tls.clone(),
            store,
        });
    }

    /// Reloads every listener that reads certificate files; one line per listener, and
    /// whether all succeeded.
    pub fn reload_all(&self) -> (bool, Vec<String>) {
        let mut ok = true;
        let mut lines = Vec::new();
        for e in self
            .entries
            .iter()
            .filter(|e| matches!(e.setting, TlsSetting::Files(_)))
        {
            match reload_one(e) {
                Ok(()) => lines.push(format!("listener {}: reloaded", e.listener)),
                Err(err) => {
                    ok = false;
                    lines.push(format!(
                        "listener {}: refused ({err}); still serving the previous certificates",
                        e.listener
                    ));
                }
            }
        }
        (ok, lines)
    }

    /// Starts a watch task for each listener with `watch = true` (abort them to stop).
    pub fn watch(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            let TlsSetting::Files(cfg) = &e.setting else {
                continue;
            };
            if !cfg.watch {
                continue;
            }
            let mut files: Vec<PathBuf> = cfg
                .cert
                .iter()
                .chain(cfg.key.iter())
                .chain(cfg.client_ca.iter())
                .cloned()
                .collect();
            for c in &cfg.certificates {
                files.push(c.cert.clone());
                files.push(c.key.clone());
            }
            let interval = cfg.watch_interval.0.max(Duration::from_millis(50));
            let this = self.clone();
            // The baseline is taken now, as the listener's certificates were just loaded: taken
            // at the task's first poll, a file changed before that poll (the runtime busy at
            // start) became the baseline and was never loaded.
            let mut seen = stamps(&files);
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(interval).await;
                    let now = stamps(&files);
                    if now != seen {
                        seen = now;
                        let _ = reload_one(&this.entries[i]);
                    }
                }
            }));
        }
        tasks
    }
}

fn reload_one(e: &Entry) -> Result<(), tls::TlsError> {
    // Certificates and the client CA (mTLS) are reloaded together, or not at all.
    let loaded = Certs::load(&e.setting, &e.listener).and_then(|certs| {
        let verifier = tls::client_verifier(&e.setting)?;
        Ok(certs.map(|c| (c, verifier)))
    });
    match loaded {
        Ok(Some((certs, verifier))) => {
            e.store.replace(certs);
            e.store.set_client_verifier(verifier);
            counter!(CONTROL_RELOADS, "kind" => "certs", "result" => "ok").increment(1);
            tracing::info!(listener = %e.listener, "certificates (and client CA) reloaded: new handshakes use them");
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(err) => {
            counter!(CONTROL_RELOADS, "kind" => "certs", "result" => "error").increment(1);
            tracing::error!(listener = %e.listener, error = %err, "certificate reload refused: still serving the previous certificates");
            Err(err)
        }
    }
}

/// Modification time and length of each file (missing files count as a change when they
/// come back).
fn stamps(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}
