//! The access log's writer: one thread per destination, fed by a bounded channel of lines.
//!
//! The data path never waits on it. A line is handed over with `try_send`; when the channel is
//! full (the destination is slower than the traffic, or stuck: a pipe nobody reads, a full
//! disk) the line is dropped and counted in `spooky_access_log_dropped_total`. The thread
//! writes through a buffer and flushes whenever the channel is empty, so lines reach the
//! destination within a moment of their exchange ending.
//!
//! Writers are shared by destination across workers and config generations (a reload keeps
//! the same file open); the thread ends when the last generation using it is gone, after
//! writing what it was handed.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use crate::by_key::ByKey;
use crate::metrics::{ACCESS_LOG_DROPPED, ACCESS_LOG_ERRORS, ACCESS_LOG_LINES, ACCESS_LOG_REOPENS};

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dest {
    Stdout,
    Stderr,
    File(PathBuf),
}

impl Dest {
    /// `"stdout"`, `"stderr"`, or a file path; `"off"` is none.
    pub fn parse(path: &str) -> Option<Dest> {
        match path {
            "off" | "" => None,
            "stdout" => Some(Dest::Stdout),
            "stderr" => Some(Dest::Stderr),
            p => Some(Dest::File(PathBuf::from(p))),
        }
    }
}

/// Bumped on SIGUSR1: every file writer reopens its file before its next write.
static REOPEN: AtomicU64 = AtomicU64::new(0);

/// Asks every file destination to be reopened (after logrotate moved it away); each writer
/// wakes for it at once.
pub fn reopen_all() {
    REOPEN.fetch_add(1, Ordering::Relaxed);
    for w in LIVE.live() {
        // An empty line is the wake-up call; it is not written.
        let _ = w.tx.try_send(String::new());
    }
}

/// The sending end of one destination's writer.
pub struct Writer {
    tx: SyncSender<String>,
    lines: metrics::Counter,
    dropped: metrics::Counter,
}

impl Writer {
    /// Hands a line to the thread, or drops and counts it when the thread is behind.
    pub fn send(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => self.lines.increment(1),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.increment(1),
        }
    }
}

/// The running writers, by destination.
static LIVE: ByKey<Dest, Writer> = ByKey::new();

/// Registers the access-log counters at zero, so alerting sees them before the first line.
pub fn describe() {
    metrics::counter!(ACCESS_LOG_LINES).increment(0);
    metrics::counter!(ACCESS_LOG_DROPPED).increment(0);
    metrics::counter!(ACCESS_LOG_ERRORS).increment(0);
    metrics::counter!(ACCESS_LOG_REOPENS).increment(0);
}

/// The writer for `dest`: the running one, or a new thread with room for `buffer` lines.
/// A file is opened (created, appended to) here, so a path that cannot be written is an
/// error at start or reload, not a silent loss.
pub fn open(dest: &Dest, buffer: usize) -> io::Result<Arc<Writer>> {
    LIVE.get_or_make(dest, || {
        let sink = Sink::open(dest)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(buffer);
        std::thread::Builder::new()
            .name("spooky-access-log".into())
            .spawn(move || run(rx, sink))?;
        Ok(Arc::new(Writer {
            tx,
            lines: metrics::counter!(ACCESS_LOG_LINES),
            dropped: metrics::counter!(ACCESS_LOG_DROPPED),
        }))
    })
}

/// Where the thread writes.
enum Sink {
    Stdout(io::Stdout),
    Stderr(io::Stderr),
    File {
        path: PathBuf,
        file: BufWriter<File>,
    },
}

fn open_file(path: &Path) -> io::Result<BufWriter<File>> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    Ok(BufWriter::with_capacity(64 * 1024, file))
}

impl Sink {
    fn open(dest: &Dest) -> io::Result<Sink> {
        Ok(match dest {
            Dest::Stdout => Sink::Stdout(io::stdout()),
            Dest::Stderr => Sink::Stderr(io::stderr()),
            Dest::File(p) => Sink::File {
                path: p.clone(),
                file: open_file(p)?,
            },
        })
    }

    fn write(&mut self, line: &str) -> io::Result<()> {
        if line.is_empty() {
            return Ok(());
        }
        match self {
            Sink::Stdout(s) => s.lock().write_all(line.as_bytes()),
            Sink::Stderr(s) => s.lock().write_all(line.as_bytes()),
            Sink::File { file, .. } => file.write_all(line.as_bytes()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(s) => s.flush(),
            Sink::Stderr(s) => s.flush(),
            Sink::File { file, .. } => file.flush(),
        }
    }

    /// Opens the file again under its name (logrotate moved the old one away).
    fn reopen(&mut self) -> io::Result<()> {
        if let Sink::File { path, file } = self {
            let _ = file.flush();
            *file = open_file(path)?;
            metrics::counter!(ACCESS_LOG_REOPENS).increment(1);
        }
        Ok(())
    }
}

/// The thread: write what comes, flush when idle, reopen when asked, end when every sender
/// is gone.
fn run(rx: Receiver<String>, mut sink: Sink) {
    let errors = metrics::counter!(ACCESS_LOG_ERRORS);
    let mut seen = REOPEN.load(Ordering::Relaxed);
    let mut failing = false;
    let mut report = |r: io::Result<()>, what: &str| match r {
        Ok(()) => failing = false,
        Err(e) => {
            errors.increment(1);
            if !failing {
                tracing::warn!(error = %e, "access log: {what} failed");
            }
            failing = true;
        }
    };
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let now = REOPEN.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            report(sink.reopen(), "reopen");
        }
        let Some(first) = first else { continue };
        report(sink.write(&first), "write");
        while let Ok(line) = rx.try_recv() {
            report(sink.write(&line), "write");
        }
        report(sink.flush(), "flush");
    }
    report(sink.flush(), "flush");
}
