//! An idle timer for a streamed body: it runs only while the body waits for its peer, and
//! starts over after each frame. Armed lazily at the first wait, so a body that never waits
//! (a small one, already buffered) costs no timer at all, and a frame costs one flag.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// How long a body may wait for its next frame.
pub struct Idle {
    after: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    progressed: bool,
}

impl Idle {
    pub fn new(after: Duration) -> Idle {
        Idle {
            after,
            sleep: None,
            progressed: false,
        }
    }

    /// The limit.
    pub fn after(&self) -> Duration {
        self.after
    }

    /// A frame arrived: the next wait starts from zero.
    pub fn progressed(&mut self) {
        self.progressed = true;
    }

    /// The body is waiting (its source returned `Pending`): whether it has now waited too
    /// long. Registers for a wake-up at the limit otherwise.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let after = self.after;
        let sleep = match &mut self.sleep {
            Some(s) => {
                if self.progressed {
                    s.as_mut().reset(Instant::now() + after);
                }
                s
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep(after))),
        };
        self.progressed = false;
        matches!(sleep.as_mut().poll(cx), Poll::Ready(()))
    }
}
