//! Host side of the guest command agent (`scripts/guest/agent`) on the
//! virtio-serial port named `agent`.
//!
//! Request: `<id> <base64 command>\n`. Reply: `BEGIN <id>\n`, base64 of the
//! combined stdout+stderr (any number of lines), `END <id> <exit code>\n`.
//! Lines that are not part of the awaited reply (e.g. the late reply of a
//! command that timed out) are skipped.

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Output and exit code of a guest command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    /// stdout and stderr, interleaved as written.
    pub output: String,
    /// Exit code (`sh -c` semantics: 128+N when killed by signal N).
    pub code: i32,
}

/// A connection to the guest agent.
pub struct Agent {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    partial: Vec<u8>,
}

impl Agent {
    /// Connects to the agent chardev socket at `path` (QEMU listens).
    /// Drops the connection and connects again: after the guest's
    /// virtio-serial device was reset (system sleep), QEMU only tells the
    /// guest that the host side is open when a client connects.
    pub fn reconnect(&mut self, path: &Path) -> Result<()> {
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
        let next_id = self.next_id;
        *self = Agent::connect(path)?;
        self.next_id = next_id;
        Ok(())
    }

    /// Connects to the agent's socket (QEMU's end of the virtio-serial port).
    pub fn connect(path: &Path) -> Result<Agent> {
        let sock = UnixStream::connect(path)
            .with_context(|| format!("connecting to agent socket {}", path.display()))?;
        sock.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(Agent {
            reader: BufReader::new(sock.try_clone()?),
            writer: sock,
            next_id: 1,
            partial: Vec::new(),
        })
    }

    /// Sends `cmd` and returns the request id.
    pub fn send(&mut self, cmd: &str) -> Result<String> {
        let id = format!("r{}", self.next_id);
        self.next_id += 1;
        let line = format!("{id} {}\n", B64.encode(cmd));
        self.writer
            .write_all(line.as_bytes())
            .context("writing to the guest agent")?;
        Ok(id)
    }

    /// Reads one line, waiting until `deadline`; `Ok(None)` on timeout.
    fn read_line(&mut self, deadline: Instant) -> Result<Option<String>> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let slice = (deadline - now).min(Duration::from_millis(250));
            self.reader.get_ref().set_read_timeout(Some(slice))?;
            // Bytes read before an error stay in `partial`.
            match self.reader.read_until(b'\n', &mut self.partial) {
                Ok(0) => bail!("guest agent connection closed (QEMU exited?)"),
                Ok(_) if self.partial.ends_with(b"\n") => {
                    let line = String::from_utf8_lossy(&self.partial)
                        .trim_end()
                        .to_string();
                    self.partial.clear();
                    return Ok(Some(line));
                }
                Ok(_) => bail!("guest agent connection closed mid-line (QEMU exited?)"),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("reading from the guest agent"),
            }
        }
    }

    /// Waits for the reply to request `id` until `deadline`, calling `alive`
    /// about every 250 ms (its error aborts the wait). `Ok(None)` on
    /// timeout.
    pub fn recv(
        &mut self,
        id: &str,
        deadline: Instant,
        mut alive: impl FnMut() -> Result<()>,
    ) -> Result<Option<CmdOutput>> {
        let begin = format!("BEGIN {id}");
        let end = format!("END {id} ");
        let mut in_reply = false;
        let mut b64 = String::new();
        loop {
            let Some(line) = self.read_line(deadline)? else {
                alive()?;
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                continue;
            };
            if !in_reply {
                in_reply = line == begin;
                continue;
            }
            if let Some(code) = line.strip_prefix(&end) {
                let code: i32 = code
                    .trim()
                    .parse()
                    .map_err(|_| anyhow!("bad agent reply line {line:?}"))?;
                let bytes = B64
                    .decode(b64.as_bytes())
                    .context("bad base64 in the agent's reply")?;
                return Ok(Some(CmdOutput {
                    output: String::from_utf8_lossy(&bytes).into_owned(),
                    code,
                }));
            }
            if line.starts_with("BEGIN ") || line.starts_with("END ") {
                bail!("agent reply to {id} interrupted by {line:?}");
            }
            b64.push_str(line.trim());
        }
    }
}
