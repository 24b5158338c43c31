//! A clamd client (INSTREAM over TCP), built to scan an upload while it is
//! being stored.
//!
//! The protocol: `zINSTREAM\0`, then chunks each prefixed with its length as
//! 4 bytes big-endian, then a zero length; clamd answers one NUL-terminated
//! line: `stream: OK`, `stream: <signature> FOUND`, or `<reason> ERROR`
//! (`INSTREAM size limit exceeded. ERROR` past its `StreamMaxLength`).
//!
//! Only an explicit `stream: OK` is [`Verdict::Clean`]: a refused connection,
//! a timeout, a cut connection, a body that ended early, an unknown answer
//! and clamd's own limits (with `AlertExceedsMax`,
//! `Heuristics.Limits.Exceeded.*`) all give [`Verdict::Unscannable`].
//! Whether an unscannable upload is refused is the caller's policy.
//!
//! Use in the data plane: [`Scanner::tee`] wraps the request body; the
//! wrapped body goes to [`crate::Backend::put`] while a task streams the same
//! chunks to clamd; then [`ScanHandle::verdict`] decides whether the stored
//! blob is committed (metadata row) or deleted.
//!
//! ```no_run
//! # async fn f(backend: &dyn strata_storage::Backend, key: &strata_storage::BlobKey,
//! #            body: strata_storage::ByteStream) -> Result<(), Box<dyn std::error::Error>> {
//! use strata_storage::antivirus::{Scanner, Verdict};
//! let scanner = Scanner::new("127.0.0.1:53310");
//! let (body, scan) = scanner.tee(body);
//! let size = backend.put(key, body, None).await?;
//! match scan.verdict().await {
//!     Verdict::Clean => { /* commit the metadata row */ }
//!     Verdict::Infected(name) => { backend.delete(key).await?; /* 422, audit */ }
//!     Verdict::Unscannable(why) => { backend.delete(key).await?; /* fail closed */ }
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::ByteStream;

/// clamd's own limit on one chunk is its `StreamMaxLength`; smaller chunks
/// keep each write (and its timeout) short.
const MAX_CHUNK: usize = 1024 * 1024;
/// Longer answers are not clamd's.
const MAX_REPLY: usize = 4096;
/// Chunks in flight between the upload and the scan task: the upload runs at
/// most this far ahead of clamd.
const TEE_DEPTH: usize = 8;
/// What clamd calls data it could not scan whole, with `AlertExceedsMax`.
const LIMITS_EXCEEDED: &str = "Heuristics.Limits.Exceeded";

/// What clamd said about a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// clamd answered `stream: OK` for the complete body.
    Clean,
    /// A signature matched; its name as clamd reports it (our local EICAR
    /// signature: `Eicar-Test-Signature.UNOFFICIAL`).
    Infected(String),
    /// No verdict: clamd unreachable, slow, over its limits, or the body did
    /// not arrive whole. Never to be taken as clean.
    Unscannable(String),
}

impl Verdict {
    pub fn is_clean(&self) -> bool {
        matches!(self, Verdict::Clean)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Clean => f.write_str("clean"),
            Verdict::Infected(name) => write!(f, "infected ({name})"),
            Verdict::Unscannable(why) => write!(f, "not scanned ({why})"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot connect to clamd at {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("clamd at {addr}: no answer within {timeout:?} ({during})")]
    Timeout {
        addr: String,
        timeout: Duration,
        during: &'static str,
    },
    #[error("clamd at {addr}: {during}: {source}")]
    Io {
        addr: String,
        during: &'static str,
        source: io::Error,
    },
    #[error("clamd at {addr} answered {reply:?}")]
    Protocol { addr: String, reply: String },
}

/// Where clamd is and how long to wait for it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Scanner {
    addr: String,
    connect_timeout: Duration,
    io_timeout: Duration,
}

impl Scanner {
    /// `addr` is `host:port` (resolved on each connect, so a Kubernetes
    /// Service name works). Timeouts: 3 s to connect, 30 s per write and for
    /// the answer after the last byte.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            connect_timeout: Duration::from_secs(3),
            io_timeout: Duration::from_secs(30),
        }
    }

    pub fn with_timeouts(mut self, connect: Duration, io: Duration) -> Self {
        self.connect_timeout = connect;
        self.io_timeout = io;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Readiness: `zPING` answered with `PONG`.
    pub async fn ping(&self) -> Result<(), ScanError> {
        let mut conn = self.connect().await?;
        self.timed("PING", conn.write_all(b"zPING\0")).await?;
        let reply = read_reply(&mut conn, self).await?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(ScanError::Protocol {
                addr: self.addr.clone(),
                reply,
            })
        }
    }

    /// Opens an INSTREAM session; feed it with [`ScanSession::send`].
    pub async fn start(&self) -> Result<ScanSession, ScanError> {
        let mut conn = self.connect().await?;
        self.timed("INSTREAM", conn.write_all(b"zINSTREAM\0"))
            .await?;
        Ok(ScanSession {
            scanner: self.clone(),
            conn,
            broken: None,
        })
    }

    /// Scans bytes already in memory.
    pub async fn scan_bytes(&self, data: &[u8]) -> Verdict {
        let mut session = match self.start().await {
            Ok(session) => session,
            Err(e) => return Verdict::Unscannable(e.to_string()),
        };
        // A failed send is recorded in the session; finish reports it.
        let _ = session.send(data).await;
        session.finish().await
    }

    /// Scans a body while it flows on: returns the same body (chunks are
    /// passed through unchanged, errors included) and a handle to the
    /// verdict. The verdict is [`Verdict::Clean`] only if the body ended
    /// normally and clamd said OK for all of it; if clamd fails or is slow
    /// to connect, the body still flows (at most [`TEE_DEPTH`] chunks ahead
    /// of clamd while it works) and the verdict says why it was not scanned.
    pub fn tee(&self, body: ByteStream) -> (ByteStream, ScanHandle) {
        let (tx, rx) = mpsc::channel(TEE_DEPTH);
        let scanner = self.clone();
        let task = tokio::spawn(async move { scanner.scan_channel(rx).await });
        let state = TeeState { body, tx: Some(tx) };
        let stream = futures::stream::unfold(state, |mut state| async move {
            match state.body.next().await {
                Some(Ok(chunk)) => {
                    if let Some(tx) = &state.tx
                        && tx.send(TeeMsg::Chunk(chunk.clone())).await.is_err()
                    {
                        // The scan task has its verdict already (an error):
                        // keep the body flowing without it.
                        state.tx = None;
                    }
                    Some((Ok(chunk), state))
                }
                Some(Err(e)) => {
                    // Dropping the sender without `End` tells the scan that
                    // the body is incomplete.
                    state.tx = None;
                    Some((Err(e), state))
                }
                None => {
                    if let Some(tx) = state.tx.take() {
                        let _ = tx.send(TeeMsg::End).await;
                    }
                    None
                }
            }
        });
        (Box::pin(stream), ScanHandle { task: Some(task) })
    }

    async fn scan_channel(self, mut rx: mpsc::Receiver<TeeMsg>) -> Verdict {
        let mut session = match self.start().await {
            Ok(session) => session,
            Err(e) => return Verdict::Unscannable(e.to_string()),
        };
        loop {
            match rx.recv().await {
                Some(TeeMsg::Chunk(chunk)) => {
                    if session.send(&chunk).await.is_err() {
                        // clamd stopped listening (over its limit, or gone):
                        // its answer, if any, is the verdict. Dropping `rx`
                        // lets the body flow on without us.
                        drop(rx);
                        return session.finish().await;
                    }
                }
                Some(TeeMsg::End) => return session.finish().await,
                None => {
                    return Verdict::Unscannable("the body ended before it was complete".into());
                }
            }
        }
    }

    async fn connect(&self) -> Result<TcpStream, ScanError> {
        match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.addr)).await {
            Ok(Ok(conn)) => {
                // Small writes (length prefixes) must not wait for Nagle.
                let _ = conn.set_nodelay(true);
                Ok(conn)
            }
            Ok(Err(source)) => Err(ScanError::Connect {
                addr: self.addr.clone(),
                source,
            }),
            Err(_) => Err(ScanError::Timeout {
                addr: self.addr.clone(),
                timeout: self.connect_timeout,
                during: "connect",
            }),
        }
    }

    async fn timed<T>(
        &self,
        during: &'static str,
        fut: impl Future<Output = io::Result<T>>,
    ) -> Result<T, ScanError> {
        match tokio::time::timeout(self.io_timeout, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(ScanError::Io {
                addr: self.addr.clone(),
                during,
                source,
            }),
            Err(_) => Err(ScanError::Timeout {
                addr: self.addr.clone(),
                timeout: self.io_timeout,
                during,
            }),
        }
    }
}

/// One INSTREAM scan in progress.
pub struct ScanSession {
    scanner: Scanner,
    conn: TcpStream,
    /// Why sending stopped, if it did: the verdict can then not be clean.
    broken: Option<String>,
}

impl ScanSession {
    /// Sends the next bytes of the body. After an error (clamd closed the
    /// connection, e.g. past its `StreamMaxLength`), further sends fail too
    /// and [`ScanSession::finish`] reports why.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), ScanError> {
        if let Some(why) = &self.broken {
            return Err(ScanError::Io {
                addr: self.scanner.addr.clone(),
                during: "send",
                source: io::Error::new(io::ErrorKind::BrokenPipe, why.clone()),
            });
        }
        // An empty chunk would be the end marker.
        for piece in data.chunks(MAX_CHUNK) {
            let len = u32::try_from(piece.len()).unwrap_or(u32::MAX).to_be_bytes();
            let conn = &mut self.conn;
            let result = self
                .scanner
                .timed("send", async {
                    conn.write_all(&len).await?;
                    conn.write_all(piece).await
                })
                .await;
            if let Err(e) = result {
                self.broken = Some(e.to_string());
                return Err(e);
            }
        }
        Ok(())
    }

    /// Ends the stream and reads clamd's verdict.
    pub async fn finish(mut self) -> Verdict {
        if self.broken.is_none() {
            let conn = &mut self.conn;
            if let Err(e) = self.scanner.timed("end", conn.write_all(&[0; 4])).await {
                self.broken = Some(e.to_string());
            }
        }
        match read_reply(&mut self.conn, &self.scanner).await {
            // An answer is the verdict even after a failed send: clamd
            // answers its size-limit error before closing the connection.
            Ok(reply) => match (parse_reply(&reply), &self.broken) {
                // Never clean unless clamd saw everything.
                (Verdict::Clean, Some(why)) => {
                    Verdict::Unscannable(format!("clamd said OK, but sending failed: {why}"))
                }
                (verdict, _) => verdict,
            },
            Err(e) => Verdict::Unscannable(match self.broken {
                Some(why) => format!("sending to clamd failed ({why}), and no answer: {e}"),
                None => e.to_string(),
            }),
        }
    }
}

/// The verdict of a [`Scanner::tee`] scan. Dropping it stops the scan.
pub struct ScanHandle {
    task: Option<tokio::task::JoinHandle<Verdict>>,
}

impl ScanHandle {
    /// Waits for clamd's answer; call it after the body was consumed (the
    /// put returned), or it waits for the body's end.
    pub async fn verdict(mut self) -> Verdict {
        match self.task.take() {
            Some(task) => task
                .await
                .unwrap_or_else(|e| Verdict::Unscannable(format!("scan task failed: {e}"))),
            None => Verdict::Unscannable("scan already awaited".into()),
        }
    }
}

impl Drop for ScanHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

enum TeeMsg {
    Chunk(Bytes),
    End,
}

struct TeeState {
    body: ByteStream,
    tx: Option<mpsc::Sender<TeeMsg>>,
}

/// Reads one NUL-terminated answer (or up to EOF).
async fn read_reply(conn: &mut TcpStream, scanner: &Scanner) -> Result<String, ScanError> {
    let mut reply = Vec::new();
    let read = async {
        let mut buf = [0u8; 512];
        loop {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
            if reply.contains(&0) || reply.len() > MAX_REPLY {
                break;
            }
        }
        Ok::<_, io::Error>(())
    };
    scanner.timed("reading the answer", read).await?;
    let end = reply.iter().position(|&b| b == 0).unwrap_or(reply.len());
    let text = String::from_utf8_lossy(&reply[..end]).trim().to_owned();
    if text.is_empty() {
        return Err(ScanError::Io {
            addr: scanner.addr.clone(),
            during: "reading the answer",
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed without an answer",
            ),
        });
    }
    Ok(text)
}

fn parse_reply(reply: &str) -> Verdict {
    if reply == "stream: OK" {
        return Verdict::Clean;
    }
    if let Some(name) = reply
        .strip_prefix("stream: ")
        .and_then(|rest| rest.strip_suffix(" FOUND"))
    {
        if name.starts_with(LIMITS_EXCEEDED) {
            return Verdict::Unscannable(format!("over clamd's scan limits ({name})"));
        }
        return Verdict::Infected(name.to_owned());
    }
    Verdict::Unscannable(format!("clamd answered {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(parse_reply("stream: OK"), Verdict::Clean);
        assert_eq!(
            parse_reply("stream: Eicar-Test-Signature FOUND"),
            Verdict::Infected("Eicar-Test-Signature".into())
        );
        assert!(matches!(
            parse_reply("stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND"),
            Verdict::Unscannable(_)
        ));
        assert!(matches!(
            parse_reply("INSTREAM size limit exceeded. ERROR"),
            Verdict::Unscannable(_)
        ));
        for odd in ["stream: OKAY", "OK", "stream: ok", "stream:  OK x", "PONG"] {
            assert!(!parse_reply(odd).is_clean(), "{odd}");
        }
    }
}
