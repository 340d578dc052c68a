//! Accepting: a round of accepts on a non-blocking listener, and the
//! refusal of a connection past the limit (the single byte 0xFE, then a
//! brief linger so that the peer can read it).

use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use embedded_io_adapters::std::FromStd;

use crate::transport::Stream;

/// At most this many refused connections linger at once, waiting for the
/// peer to read the 0xFE before the close; more are closed at once.
const MAX_LINGERING_REFUSALS: usize = 32;

/// How long a refused connection lingers for the peer to read 0xFE.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// At most this many accepts per listener before the loop looks at its
/// other events (the rest follow at once).
const ACCEPT_BATCH: usize = 256;

/// How a round of accepting went.
pub(crate) enum Accepted {
    /// Until `WouldBlock`: nothing waits any more.
    All,
    /// A batch, with more waiting.
    Some,
    /// An error (out of file descriptors and the like).
    Failed,
}

/// Accepts up to a batch of connections from a non-blocking listener.
pub(crate) fn accept_some(
    listener: &TcpListener,
    mut take: impl FnMut(TcpStream, SocketAddr),
) -> Accepted {
    for _ in 0..ACCEPT_BATCH {
        match listener.accept() {
            Ok((stream, peer)) => take(stream, peer),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Accepted::All,
            // One connection's trouble (aborted before it was accepted): the
            // rest of the backlog is still there.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                ) =>
            {
                continue
            }
            Err(e) => {
                log::warn!("accept failed: {e}");
                return Accepted::Failed;
            }
        }
    }
    Accepted::Some
}

/// Raises the open-file soft limit to the hard limit: each connection holds
/// one file descriptor.
pub(crate) fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => log::debug!("open-file limit: {limit}"),
        Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
    }
}

/// The refusals of a server's loop: how many linger now.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    lingering: Arc<AtomicUsize>,
    /// Over TLS, the 0xFE goes inside the session, after a handshake.
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsSide>,
}

impl Refusals {
    #[cfg_attr(not(feature = "tls"), allow(unused_variables))]
    pub(crate) fn new(cfg: &crate::config::Config) -> Self {
        Self {
            lingering: Arc::default(),
            #[cfg(feature = "tls")]
            tls: cfg.tls.clone(),
        }
    }

    /// Answers a connection past the limit with the single byte 0xFE and
    /// closes it, letting it linger briefly so the peer can read the byte
    /// before the close (a close with the peer's greeting unread would
    /// reset the connection and could destroy the 0xFE in flight). At most
    /// [`MAX_LINGERING_REFUSALS`] linger at once; more are closed at once.
    /// Over TLS all of it (the handshake first) is on the lingering thread:
    /// never a round trip on the accepting loop.
    pub(crate) fn refuse(&self, stream: TcpStream) {
        if let Err(e) = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_write_timeout(Some(REFUSAL_LINGER)))
            .and_then(|()| stream.set_read_timeout(Some(REFUSAL_LINGER)))
        {
            log::debug!("refusal not sent: {e}");
            return;
        }
        let socket = Arc::new(stream);
        let tcp = crate::transport::Tcp(socket.clone());
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            match tls.wrap(tcp) {
                Ok(stream) => self.linger(stream, socket, true),
                Err(e) => log::debug!("refusal not sent: {e}"),
            }
            return;
        }
        let mut stream: Box<dyn Stream> = Box::new(tcp);
        if let Err(e) = send_refusal(&mut stream) {
            log::debug!("refusal not sent: {e}");
            return;
        }
        self.linger(stream, socket, false);
    }

    /// Lingers on a thread of its own (sending the refusal first if
    /// `send`), reading until the peer closes or the linger ends.
    fn linger(&self, mut stream: Box<dyn Stream>, socket: Arc<TcpStream>, send: bool) {
        if self.lingering.fetch_add(1, Ordering::SeqCst) >= MAX_LINGERING_REFUSALS {
            self.lingering.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let lingering = self.lingering.clone();
        let spawned = thread::Builder::new()
            .name("tinyproto-refuse".into())
            .spawn(move || {
                if !send || send_refusal(&mut stream).is_ok() {
                    let _ = socket.shutdown(Shutdown::Write);
                    let deadline = Instant::now() + REFUSAL_LINGER;
                    let mut buf = [0u8; 64];
                    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                        if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
                            break;
                        }
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                }
                lingering.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            self.lingering.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Writes the refusal (0xFE) and ends the stream's session.
fn send_refusal(stream: &mut Box<dyn Stream>) -> io::Result<()> {
    tinyproto::blocking::refuse_connection_limit(&mut FromStd::new(&mut *stream))?;
    stream.flush()?;
    stream.close();
    Ok(())
}
