//! QMP client over a unix socket, built on the `qapi` crate's synchronous
//! [`qapi::Qmp`]. Events that arrive while a command runs are kept, with
//! their QMP timestamps, in a buffer the caller drains.

use anyhow::{anyhow, bail, Context, Result};
use qapi::qmp::{Event, QMP};
use qapi::{Command, Qmp, Stream};
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The `qapi` stream type over a unix socket.
pub type QmpStream = Stream<BufReader<UnixStream>, UnixStream>;

/// A QMP event with the time QEMU stamped on it.
#[derive(Debug, Clone)]
pub struct QmpEvent {
    /// The event (e.g. `Event::BALLOON_CHANGE { data, .. }`).
    pub event: Event,
    /// QEMU's timestamp (since the Unix epoch, host clock).
    pub timestamp: SystemTime,
}

impl QmpEvent {
    fn new(event: Event) -> QmpEvent {
        // `qapi_spec::Timestamp` keeps its fields private but serializes
        // them as QMP does.
        let ts = serde_json::to_value(event.timestamp()).ok();
        let field = |k: &str| ts.as_ref().and_then(|v| v[k].as_u64()).unwrap_or(0);
        let timestamp = UNIX_EPOCH
            + Duration::from_secs(field("seconds"))
            + Duration::from_micros(field("microseconds"));
        QmpEvent { event, timestamp }
    }

    /// The `actual` value of a `BALLOON_CHANGE` event.
    pub fn balloon_actual(&self) -> Option<u64> {
        match &self.event {
            Event::BALLOON_CHANGE { data, .. } => u64::try_from(data.actual).ok(),
            _ => None,
        }
    }

    /// The event's name, e.g. `BALLOON_CHANGE`.
    pub fn name(&self) -> String {
        serde_json::to_value(&self.event)
            .ok()
            .and_then(|v| v["event"].as_str().map(str::to_string))
            .unwrap_or_else(|| "?".into())
    }
}

/// A connected, negotiated QMP session.
pub struct QmpClient {
    qmp: Qmp<QmpStream>,
    greeting: QMP,
    events: Vec<QmpEvent>,
}

impl QmpClient {
    /// Connects to the QMP socket at `path` and negotiates capabilities.
    /// Replies must come within `io_timeout`.
    pub fn connect(path: &Path, io_timeout: Duration) -> Result<QmpClient> {
        let sock = UnixStream::connect(path)
            .with_context(|| format!("connecting to QMP socket {}", path.display()))?;
        Self::from_socket(sock, io_timeout)
    }

    /// Connects, retrying until `deadline` while the socket does not exist
    /// yet or refuses; `alive` is called between attempts and its error
    /// aborts (e.g. QEMU exited).
    pub fn connect_retry(
        path: &Path,
        deadline: Instant,
        io_timeout: Duration,
        mut alive: impl FnMut() -> Result<()>,
    ) -> Result<QmpClient> {
        loop {
            match UnixStream::connect(path) {
                Ok(sock) => return Self::from_socket(sock, io_timeout),
                Err(e) => {
                    alive()?;
                    if Instant::now() >= deadline {
                        return Err(e).with_context(|| {
                            format!("connecting to QMP socket {}", path.display())
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    fn from_socket(sock: UnixStream, io_timeout: Duration) -> Result<QmpClient> {
        sock.set_read_timeout(Some(io_timeout))?;
        sock.set_write_timeout(Some(io_timeout))?;
        let reader = BufReader::new(sock.try_clone()?);
        let mut qmp = Qmp::new(Stream::new(reader, sock));
        let greeting = qmp
            .handshake()
            .map_err(|e| anyhow!("QMP handshake failed: {e} (is another client connected?)"))?;
        let mut c = QmpClient {
            qmp,
            greeting,
            events: Vec::new(),
        };
        c.collect_events();
        Ok(c)
    }

    /// QEMU's greeting (version, capabilities).
    pub fn greeting(&self) -> &QMP {
        &self.greeting
    }

    fn collect_events(&mut self) {
        let new: Vec<QmpEvent> = self.qmp.events().map(QmpEvent::new).collect();
        self.events.extend(new);
    }

    /// Executes a command, e.g. `execute(&qapi::qmp::query_balloon {})`.
    /// Events received meanwhile go to the event buffer.
    pub fn execute<C: Command>(&mut self, cmd: &C) -> Result<C::Ok> {
        let r = self.qmp.execute(cmd);
        self.collect_events();
        r.map_err(|e| anyhow!("QMP {} failed: {e}", C::NAME))
    }

    /// Reads pending events (by running a no-op command).
    pub fn poll_events(&mut self) -> Result<()> {
        let r = self.qmp.nop();
        self.collect_events();
        r.context("QMP poll (query-version) failed")
    }

    /// Events received so far and not drained.
    pub fn events(&self) -> &[QmpEvent] {
        &self.events
    }

    /// Takes the buffered events (oldest first).
    pub fn drain_events(&mut self) -> Vec<QmpEvent> {
        std::mem::take(&mut self.events)
    }

    /// Waits up to `timeout` for a buffered or new event matching `pred`
    /// (polling every 50 ms) and removes it from the buffer.
    pub fn wait_event(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&QmpEvent) -> bool,
    ) -> Result<QmpEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(&mut pred) {
                return Ok(self.events.remove(i));
            }
            if Instant::now() >= deadline {
                bail!(
                    "no QMP event {what} within {timeout:?} (buffered: {:?})",
                    self.events.iter().map(QmpEvent::name).collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
            self.poll_events()?;
        }
    }

    /// The raw `qapi` handle, for anything not wrapped here. Events it
    /// reads stay in its own queue until the next [`QmpClient::execute`].
    pub fn raw(&mut self) -> &mut Qmp<QmpStream> {
        &mut self.qmp
    }
}
