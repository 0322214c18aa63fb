//! Hedge-retry: owns the attempt budget. Dispatch hands an exchange back (`Flow::Retry`) when
//! an attempt failed in a way that is safe to repeat (connect failure of an idempotent,
//! bodyless request); the engine sends it back through select to another backend, and this
//! stage lets it through only while attempts remain. Hedging comes with the full policy later.

use serde::Deserialize;

use crate::contract::exchange::Exchange;
use crate::contract::flow::Flow;
use crate::contract::reason::Reason;

/// `[stages.hedge-retry]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Retries after the first attempt (connect failures only, idempotent bodyless requests).
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_retries() -> u32 {
    1
}

impl Default for Config {
    fn default() -> Self {
        Config {
            retries: default_retries(),
        }
    }
}

/// The running stage.
pub struct HedgeRetry {
    retries: u32,
}

impl HedgeRetry {
    pub fn build(config: &Config) -> Self {
        HedgeRetry {
            retries: config.retries,
        }
    }

    pub async fn process(&self, ex: Exchange) -> Flow {
        // `attempts` holds the failed attempts so far; the one about to be made is not in it.
        let failed = u32::try_from(ex.decided.attempts.len()).unwrap_or(u32::MAX);
        if failed > self.retries {
            return Flow::Reject(ex, Reason::UpstreamConnect);
        }
        Flow::Continue(ex)
    }
}
