//! Capture of QEMU's output streams: the serial console (kernel messages and
//! init's output) and QEMU's own stderr. A reader thread per stream appends
//! to the per-test log file and keeps the lines in memory.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Lines kept in memory per stream (older ones stay only in the log file).
const MAX_LINES: usize = 200_000;

#[derive(Default)]
struct Buf {
    lines: VecDeque<String>,
    /// Number of lines dropped from the front.
    dropped: usize,
    partial: Vec<u8>,
    closed: bool,
}

impl Buf {
    fn push_line(&mut self, raw: &[u8]) {
        let mut s = String::from_utf8_lossy(raw).into_owned();
        s.retain(|c| c != '\r');
        self.lines.push_back(s);
        if self.lines.len() > MAX_LINES {
            self.lines.pop_front();
            self.dropped += 1;
        }
    }
}

/// An output stream of QEMU, captured line by line.
#[derive(Clone)]
pub struct Capture {
    inner: Arc<(Mutex<Buf>, Condvar)>,
}

/// The shared log file both capture threads write to.
pub type SharedLog = Arc<Mutex<File>>;

impl Capture {
    /// Starts a thread reading `stream` to EOF. Each complete line is
    /// appended to `log` (with `prefix`) and kept in memory.
    pub fn spawn<R: Read + Send + 'static>(
        stream: R,
        log: SharedLog,
        prefix: &'static str,
    ) -> (Capture, JoinHandle<()>) {
        let cap = Capture {
            inner: Arc::new((Mutex::new(Buf::default()), Condvar::new())),
        };
        let c = cap.clone();
        let h = std::thread::spawn(move || c.pump(stream, log, prefix));
        (cap, h)
    }

    fn lock(&self) -> MutexGuard<'_, Buf> {
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pump<R: Read>(&self, mut stream: R, log: SharedLog, prefix: &str) {
        let mut chunk = [0u8; 8192];
        loop {
            let n = match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let data = &chunk[..n];
            if let Ok(mut f) = log.lock() {
                if prefix.is_empty() {
                    let _ = f.write_all(data);
                } else {
                    // Prefix whole lines; stderr is line-oriented anyway.
                    for line in data.split_inclusive(|&b| b == b'\n') {
                        let _ = f.write_all(prefix.as_bytes());
                        let _ = f.write_all(line);
                    }
                }
            }
            let mut b = self.lock();
            for &byte in data {
                if byte == b'\n' {
                    let line = std::mem::take(&mut b.partial);
                    b.push_line(&line);
                } else {
                    b.partial.push(byte);
                }
            }
            drop(b);
            self.inner.1.notify_all();
        }
        let mut b = self.lock();
        if !b.partial.is_empty() {
            let line = std::mem::take(&mut b.partial);
            b.push_line(&line);
        }
        b.closed = true;
        drop(b);
        self.inner.1.notify_all();
    }

    /// The last `n` lines (including an unterminated last line), joined.
    pub fn tail(&self, n: usize) -> String {
        let b = self.lock();
        let partial =
            (!b.partial.is_empty()).then(|| String::from_utf8_lossy(&b.partial).into_owned());
        let take = n.saturating_sub(partial.is_some() as usize);
        let start = b.lines.len().saturating_sub(take);
        let mut out: Vec<String> = b.lines.range(start..).cloned().collect();
        out.extend(partial);
        out.join("\n")
    }

    /// The absolute number of complete lines seen so far (a mark for
    /// [`Capture::wait_for`]).
    pub fn mark(&self) -> usize {
        let b = self.lock();
        b.dropped + b.lines.len()
    }

    /// Whether any complete line contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.lock().lines.iter().any(|l| l.contains(needle))
    }

    /// Lines from absolute line number `mark` on that contain `needle`.
    pub fn find_since(&self, mark: usize, needle: &str) -> Vec<String> {
        let b = self.lock();
        let start = mark.saturating_sub(b.dropped);
        b.lines
            .iter()
            .skip(start)
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Waits until a line numbered `mark` or later contains one of
    /// `needles`, the stream closes, or `timeout` passes. Returns the
    /// matching line, or `None`.
    pub fn wait_for(&self, mark: usize, needles: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut b = self.lock();
        loop {
            let start = mark.saturating_sub(b.dropped);
            if let Some(l) = b
                .lines
                .iter()
                .skip(start)
                .find(|l| needles.iter().any(|n| l.contains(n)))
            {
                return Some(l.clone());
            }
            let now = Instant::now();
            if b.closed || now >= deadline {
                return None;
            }
            b = self
                .inner
                .1
                .wait_timeout(b, (deadline - now).min(Duration::from_millis(200)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Whether the stream has reached EOF (QEMU exited).
    pub fn closed(&self) -> bool {
        self.lock().closed
    }
}
