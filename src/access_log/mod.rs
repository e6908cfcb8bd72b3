//! The access log: one line per request (and per tunnel), written off the
//! request path.
//!
//! Each worker formats its lines into a buffer of its own
//! ([`WorkerLog`]) and hands a full buffer (or, at least every `flush`
//! period, whatever it holds) to one writer thread over a bounded queue.
//! A worker never waits: with the queue full, the buffer's lines are
//! dropped and counted (`/stats` `access_log_dropped`). The writer thread
//! appends to the file (or standard output) and reopens it on `SIGUSR1`
//! ([`AccessLog::reopen`]), for logrotate. What a line holds and how it is
//! laid out is [`record`]'s.

pub mod record;

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::config::{AccessLogConfig, LogTarget};
pub use record::{AiLine, CacheStatus, Record, TlsInfo};

enum Message {
    Lines(Vec<u8>),
    Reopen,
    /// Answer once everything before it is written.
    Sync(std::sync::mpsc::Sender<()>),
    /// Close the file and end the thread (the gateway stopped).
    Close,
}

/// The node's access log: the writer thread and the queue to it.
pub struct AccessLog {
    queue: Sender<Message>,
    /// Emptied buffers the writer gives back, for the workers to reuse.
    spare: Receiver<Vec<u8>>,
    target: Arc<Mutex<LogTarget>>,
}

impl AccessLog {
    /// Starts the writer thread, writing where `config` says; it opens the
    /// file when the first lines come (a bad path is reported in the
    /// gateway's log then, and the lines are dropped).
    pub fn start(config: &AccessLogConfig) -> std::io::Result<Arc<AccessLog>> {
        let (queue, inbox) = crossbeam_channel::bounded(config.queue);
        let (give_back, spare) = crossbeam_channel::bounded(config.queue);
        let target = Arc::new(Mutex::new(config.target.clone()));
        let writer_target = target.clone();
        std::thread::Builder::new()
            .name("ringgate-log".to_string())
            .spawn(move || write_lines(inbox, give_back, writer_target))?;
        Ok(Arc::new(AccessLog {
            queue,
            spare,
            target,
        }))
    }

    /// Reopens the file (`SIGUSR1`, after logrotate moved it away).
    pub fn reopen(&self) {
        let _ = self.queue.try_send(Message::Reopen);
    }

    /// Waits (at most `limit`) until the writer wrote every line handed to
    /// it so far: the gateway is stopping.
    pub fn sync(&self, limit: std::time::Duration) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.queue.send_timeout(Message::Sync(done), limit).is_ok() {
            let _ = wait.recv_timeout(limit);
        }
    }

    /// Ends the writer thread once it wrote what it was given (at most
    /// `limit` later): the gateway stopped.
    pub fn close(&self, limit: std::time::Duration) {
        let _ = self.queue.send_timeout(Message::Close, limit);
    }

    /// Writes to `target` from now on (a reload changed `access_log.path`).
    pub fn retarget(&self, target: &LogTarget) {
        let mut current = self.target.lock().unwrap_or_else(|e| e.into_inner());
        if *current != *target {
            *current = target.clone();
            drop(current);
            self.reopen();
        }
    }
}

fn write_lines(
    inbox: Receiver<Message>,
    give_back: Sender<Vec<u8>>,
    target: Arc<Mutex<LogTarget>>,
) {
    let mut out: Option<Box<dyn Write>> = None;
    let open = |target: &Mutex<LogTarget>| -> Option<Box<dyn Write>> {
        let target = target.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match target {
            LogTarget::Stdout => Some(Box::new(std::io::stdout())),
            LogTarget::File(path) => match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            {
                Ok(f) => Some(Box::new(f)),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "access log: cannot open the file; lines are dropped until it can");
                    None
                }
            },
        }
    };
    for message in inbox {
        match message {
            Message::Reopen => out = open(&target),
            Message::Sync(done) => {
                let _ = done.send(());
            }
            Message::Close => return,
            Message::Lines(mut lines) => {
                if out.is_none() {
                    out = open(&target);
                }
                if let Some(w) = out.as_mut() {
                    if let Err(e) = w.write_all(&lines).and_then(|()| w.flush()) {
                        tracing::error!(error = %e, "access log: write failed; reopening");
                        out = None;
                    }
                }
                lines.clear();
                let _ = give_back.try_send(lines);
            }
        }
    }
}

/// One worker's side of the log: its buffer, and the counts for `/stats`.
pub struct WorkerLog {
    log: Arc<AccessLog>,
    buf: RefCell<Vec<u8>>,
    lines: Cell<u64>,
    /// Lines handed to the writer, and lines dropped with the queue full.
    pub written: Cell<u64>,
    pub dropped: Cell<u64>,
    /// For sampling.
    rng: Cell<u64>,
}

impl WorkerLog {
    pub fn new(log: Arc<AccessLog>, worker: usize) -> WorkerLog {
        WorkerLog {
            log,
            buf: RefCell::new(Vec::new()),
            lines: Cell::new(0),
            written: Cell::new(0),
            dropped: Cell::new(0),
            rng: Cell::new(
                0x9E37_79B9_7F4A_7C15 ^ (worker as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407),
            ),
        }
    }

    /// Whether this request is logged, under `sample_ppm` millionths.
    pub fn sampled(&self, sample_ppm: u32) -> bool {
        if sample_ppm >= 1_000_000 {
            return true;
        }
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        (x % 1_000_000) < u64::from(sample_ppm)
    }

    /// Appends one line (written by `write`, without its newline); hands the
    /// buffer over once it holds `buffer` bytes.
    pub fn push(&self, buffer: usize, write: impl FnOnce(&mut Vec<u8>)) {
        let full = {
            let mut buf = self.buf.borrow_mut();
            if buf.capacity() == 0 {
                *buf = self
                    .log
                    .spare
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(buffer));
            }
            write(&mut buf);
            buf.push(b'\n');
            buf.len() >= buffer
        };
        self.lines.set(self.lines.get() + 1);
        if full {
            self.hand_over();
        }
    }

    /// Gives what the buffer holds to the writer thread (never waits).
    pub fn hand_over(&self) {
        let lines = self.lines.replace(0);
        if lines == 0 {
            return;
        }
        let buf = std::mem::take(&mut *self.buf.borrow_mut());
        match self.log.queue.try_send(Message::Lines(buf)) {
            Ok(()) => self.written.set(self.written.get() + lines),
            Err(TrySendError::Full(Message::Lines(mut buf)))
            | Err(TrySendError::Disconnected(Message::Lines(mut buf))) => {
                self.dropped.set(self.dropped.get() + lines);
                buf.clear();
                *self.buf.borrow_mut() = buf;
            }
            Err(_) => {}
        }
    }
}
