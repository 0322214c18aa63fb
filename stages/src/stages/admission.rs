//! Admission: the global inflight cap. An exchange takes one permit here and holds it until it
//! ends; when the cap is full the stage sheds (503 + `Retry-After`) or waits, per `when_full`.

use std::num::NonZeroUsize;

use serde::Deserialize;
use spooky_sync::{Cap, TryAcquireError};

use crate::contract::exchange::Exchange;
use crate::contract::flow::Flow;
use crate::contract::reason::Reason;
use crate::stages::WhenFull;

/// `[stages.admission]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Exchanges admitted at once, across all listeners.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: NonZeroUsize,
}

fn default_max_inflight() -> NonZeroUsize {
    NonZeroUsize::new(4096).unwrap_or(NonZeroUsize::MIN)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_inflight: default_max_inflight(),
        }
    }
}

/// The running stage.
pub struct Admission {
    cap: Cap,
    when_full: WhenFull,
}

impl Admission {
    pub fn build(config: &Config, when_full: WhenFull) -> Self {
        Admission {
            cap: Cap::new(config.max_inflight.get()),
            when_full,
        }
    }

    /// The global inflight cap (for metrics and drain).
    pub fn cap(&self) -> &Cap {
        &self.cap
    }

    /// Sets the admission gauges (scrape time).
    pub fn sample_gauges(&self, pipeline: &str) {
        use crate::metrics::{ADMISSION_INFLIGHT, ADMISSION_WAITING};
        metrics::gauge!(ADMISSION_INFLIGHT, "pipeline" => pipeline.to_string())
            .set(self.cap.in_use() as f64);
        metrics::gauge!(ADMISSION_WAITING, "pipeline" => pipeline.to_string())
            .set(self.cap.waiting() as f64);
    }

    pub async fn process(&self, mut ex: Exchange) -> Flow {
        let permit = match self.cap.try_acquire() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return Flow::Reject(ex, Reason::ShuttingDown),
            Err(TryAcquireError::Full) if self.when_full == WhenFull::Shed => {
                return Flow::Reject(ex, Reason::AdmissionFull);
            }
            Err(TryAcquireError::Full) => {
                let acquired = {
                    let acquire = self.cap.acquire();
                    tokio::select! {
                        r = acquire => Some(r),
                        () = ex.cancelled() => None,
                    }
                };
                match acquired {
                    Some(Ok(p)) => p,
                    Some(Err(_)) => return Flow::Reject(ex, Reason::ShuttingDown),
                    None => return Flow::Abandon(ex, Reason::Cancelled),
                }
            }
        };
        ex.permits.admission = Some(permit);
        Flow::Continue(ex)
    }
}
