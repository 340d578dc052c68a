//! A connection's bytes on an event thread ([`Wire`]): its non-blocking
//! socket, or a TLS session over it ([`Stream`]), with the read-ahead and
//! the write buffer above. The one place an event thread's bytes move.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tinyproto::{Io, Moved, LENGTH_FIELD_LEN};

/// Bytes read ahead of the machine per connection: a small message's
/// length and payload in one system call.
const READ_AHEAD: usize = 4 * 1024;

/// A read that found the socket empty this recently stands for the look
/// before a send. A look only narrows the window in which a peer's message
/// can cross ours; that window is two of the link's one-way delays (tens of
/// microseconds on loopback, more on any other link) plus the time from the
/// look to our length going out.
const FRESH_LOOK: Duration = Duration::from_micros(50);

/// Writes wait in a connection's buffer up to this much, so that the end of
/// one message and the length of the next leave together; larger payloads
/// go from the message itself.
const WRITE_BUFFER: usize = 16 * 1024;

/// What carries a connection's bytes: its socket, or a TLS session over it
/// (feature `tls`; rustls buffers at most 64 KiB of records to send).
pub(super) struct Stream {
    pub(super) socket: Arc<TcpStream>,
    #[cfg(feature = "tls")]
    tls: Option<Box<rustls::Connection>>,
    /// When a read last found the socket empty, if no readiness event came
    /// since: until one does (any later byte brings one; readiness is
    /// edge-triggered), another read would find nothing, and is not made.
    emptied_at: Option<Instant>,
    /// A readiness event said the peer closed its side: its bytes and the
    /// end of the stream came together, and one event brings both. A short
    /// read no longer means the socket is empty: the end is still to read.
    closing: bool,
    /// Since when the socket has taken none of what we write.
    stalled: Stall,
}

/// Since when a connection's writes have made no progress (`None`: they
/// are not stalled).
#[derive(Debug, Default)]
struct Stall(Option<Instant>);

impl Stall {
    /// Notes whether a write moved anything.
    fn note(&mut self, moved: bool) {
        if moved {
            self.0 = None;
        } else if self.0.is_none() {
            self.0 = Some(Instant::now());
        }
    }
}

impl Stream {
    /// A readiness event came: bytes may have arrived since the socket was
    /// last found empty (and with them the end of the stream, if
    /// `read_closed`).
    fn readable(&mut self, read_closed: bool) {
        self.emptied_at = None;
        self.closing |= read_closed;
    }

    /// Reads what is there into `buf`: `Some(0)` at the end of the stream,
    /// `None` if nothing is there now.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.tls {
            return tls_read(
                &self.socket,
                tls,
                &mut self.emptied_at,
                &mut self.stalled,
                buf,
            );
        }
        if self.emptied_at.is_some() {
            return Ok(None);
        }
        let read = retry(|| (&*self.socket).read(&mut *buf))?;
        // A short read emptied the socket too (unless the end is behind it).
        if read.is_none_or(|n| n > 0 && n < buf.len() && !self.closing) {
            self.emptied_at = Some(Instant::now());
        }
        Ok(read)
    }

    /// Writes some of `bytes`: how many went (to the socket, or into the
    /// TLS session's records), `None` if none could now.
    fn write(&mut self, bytes: &[u8]) -> io::Result<Option<usize>> {
        let moved = self.write_now(bytes)?;
        self.stalled.note(moved.is_some());
        Ok(moved)
    }

    fn write_now(&mut self, bytes: &[u8]) -> io::Result<Option<usize>> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.tls {
            let mut n = tls.writer().write(bytes)?;
            if n == 0 {
                // Its records are full: what of them goes out makes room.
                tls_flush(&self.socket, tls, &mut self.stalled)?;
                n = tls.writer().write(bytes)?;
            }
            return Ok((n > 0 || bytes.is_empty()).then_some(n));
        }
        match retry(|| (&*self.socket).write(bytes))? {
            Some(0) if !bytes.is_empty() => Err(io::ErrorKind::WriteZero.into()),
            moved => Ok(moved),
        }
    }

    /// Sends what the TLS session holds; false if the socket takes no more
    /// now. (Nothing to do on a plain socket.)
    fn flush(&mut self) -> io::Result<bool> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.tls {
            return tls_flush(&self.socket, tls, &mut self.stalled);
        }
        Ok(true)
    }
}

/// A connection's stream with its read-ahead and write buffer.
pub(super) struct Wire {
    pub(super) stream: Stream,
    ahead: Box<[u8]>,
    /// The unread bytes of `ahead`.
    start: usize,
    end: usize,
    /// The peer closed its side.
    eof: bool,
    out: Vec<u8>,
}

impl Wire {
    pub(super) fn new(socket: Arc<TcpStream>) -> Self {
        Self {
            stream: Stream {
                socket,
                #[cfg(feature = "tls")]
                tls: None,
                emptied_at: None,
                closing: false,
                stalled: Stall::default(),
            },
            ahead: vec![0; READ_AHEAD].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            out: Vec::new(),
        }
    }

    /// Carries the connection in TLS from its first byte, as `side` says
    /// (a server's configuration, or a client's and the server's name).
    #[cfg(feature = "tls")]
    pub(super) fn start_tls(&mut self, side: &crate::tls::TlsSide) -> io::Result<()> {
        let session: rustls::Connection = match side {
            crate::tls::TlsSide::Server(config) => {
                rustls::ServerConnection::new(config.clone()).map(Into::into)
            }
            crate::tls::TlsSide::Client(config, name) => {
                rustls::ClientConnection::new(config.clone(), name.clone()).map(Into::into)
            }
        }
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.stream.tls = Some(Box::new(session));
        Ok(())
    }

    /// The certificate the TLS peer presented (verified by the
    /// configuration's verifier), once the handshake is done.
    #[cfg(feature = "tls")]
    pub(super) fn peer_certificate(&self) -> Option<rustls::pki_types::CertificateDer<'static>> {
        self.stream
            .tls
            .as_ref()?
            .peer_certificates()?
            .first()
            .cloned()
    }

    /// The socket under the stream.
    pub(super) fn socket(&self) -> &TcpStream {
        &self.stream.socket
    }

    /// A readiness event came for the socket (saying the peer closed its
    /// side, if `read_closed`).
    pub(super) fn readable(&mut self, read_closed: bool) {
        self.stream.readable(read_closed);
    }

    /// Since when the socket has taken none of what we write, if it is
    /// stalled: what the write deadline counts from.
    pub(super) fn stalled_since(&self) -> Option<Instant> {
        self.stream.stalled.0
    }

    /// Does the machine's I/O: what moved, or `None` if it would block.
    pub(super) fn perform(&mut self, io: Io<'_>) -> io::Result<Option<Moved>> {
        Ok(match io {
            Io::Write(bytes) => self.write(bytes)?.map(Moved::Wrote),
            Io::Read(buf) => self.read(buf)?.map(Moved::Read),
            Io::Flush => self.flush()?.then_some(Moved::Flushed),
        })
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        if self.start == self.end {
            if self.eof {
                return Ok(Some(0));
            }
            if buf.len() >= READ_AHEAD {
                // A large payload goes straight into its buffer.
                return self.stream.read(buf);
            }
            if !self.fill()? {
                return Ok(None);
            }
            if self.start == self.end {
                return Ok(Some(0));
            }
        }
        let n = buf.len().min(self.end - self.start);
        buf[..n].copy_from_slice(&self.ahead[self.start..self.start + n]);
        self.start += n;
        Ok(Some(n))
    }

    /// Reads what the stream has into the read-ahead; false if nothing was
    /// there (the end of the stream counts as something).
    fn fill(&mut self) -> io::Result<bool> {
        if self.start > 0 {
            self.ahead.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.ahead.len() {
            return Ok(true);
        }
        match self.stream.read(&mut self.ahead[self.end..])? {
            None => Ok(false),
            Some(0) => {
                self.eof = true;
                Ok(true)
            }
            Some(n) => {
                self.end += n;
                Ok(true)
            }
        }
    }

    /// True when the peer has begun a message: bytes are here or in the
    /// socket (its close is not a message: ours still goes, and fails as on
    /// a thread of its own). Looked for right before ours would go out: with a
    /// read of the socket, unless a read found it empty just now (within
    /// [`FRESH_LOOK`]: the echo of a message just read).
    pub(super) fn peer_has_begun(&mut self) -> io::Result<bool> {
        if self.start == self.end && !self.eof {
            if self
                .stream
                .emptied_at
                .is_some_and(|at| at.elapsed() > FRESH_LOOK)
            {
                // A readiness event may be on its way: look for ourselves.
                self.stream.emptied_at = None;
            }
            self.fill()?;
        }
        Ok(self.start < self.end)
    }

    /// The core's [`zero_answer_is_a_length`](tinyproto::zero_answer_is_a_length)
    /// over what follows a 0x00 answer, looked for if too little is here.
    pub(super) fn peer_length_behind(&mut self) -> io::Result<bool> {
        if self.end - self.start < LENGTH_FIELD_LEN - 1 && !self.eof {
            self.fill()?;
        }
        Ok(tinyproto::zero_answer_is_a_length(self.end - self.start))
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<Option<usize>> {
        if self.out.len() + bytes.len() > WRITE_BUFFER && !self.flush()? {
            return Ok(None);
        }
        if self.out.len() + bytes.len() <= WRITE_BUFFER {
            self.out.extend_from_slice(bytes);
            return Ok(Some(bytes.len()));
        }
        self.stream.write(bytes)
    }

    /// Writes the buffer out (and what the TLS session holds); false if the
    /// socket takes no more now.
    pub(super) fn flush(&mut self) -> io::Result<bool> {
        while !self.out.is_empty() {
            match self.stream.write(&self.out)? {
                None => return Ok(false),
                Some(n) => {
                    self.out.drain(..n);
                }
            }
        }
        self.stream.flush()
    }

    /// Ends the stream: over TLS, close_notify goes out if the socket takes
    /// it now (nothing is waited for; a handshake that never completed gets
    /// none, its alert went out when it failed).
    pub(super) fn close(&mut self) {
        let _ = self.flush();
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.stream.tls {
            if !tls.is_handshaking() {
                tls.send_close_notify();
                let _ = tls_flush(&self.stream.socket, tls, &mut self.stream.stalled);
            }
        }
    }
}

/// Plaintext from the TLS session: what it has decrypted, else what the
/// records the socket has now decrypt to (its own flight goes out first:
/// the handshake talks both ways). `Some(0)` at the end of the stream, an
/// `InvalidData` error carrying the `rustls::Error` when TLS fails (its
/// alert is sent first).
#[cfg(feature = "tls")]
fn tls_read(
    socket: &TcpStream,
    tls: &mut rustls::Connection,
    emptied_at: &mut Option<Instant>,
    stalled: &mut Stall,
    buf: &mut [u8],
) -> io::Result<Option<usize>> {
    loop {
        match tls.reader().read(buf) {
            // 0: the peer's close_notify.
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // Closed without close_notify: during the handshake a TLS
            // failure, after it a close (the protocol's framing tells one
            // mid-message from one between messages).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                if tls.is_handshaking() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        rustls::Error::General(format!(
                            "the peer closed during the handshake ({e})"
                        )),
                    ));
                }
                return Ok(Some(0));
            }
            Err(e) => return Err(e),
        }
        tls_flush(socket, tls, stalled)?;
        if emptied_at.is_some() {
            return Ok(None);
        }
        match tls.read_tls(&mut &*socket) {
            // 0: the end of the stream, which the reader reports next.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                *emptied_at = Some(Instant::now());
                return Ok(None);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if let Err(e) = tls.process_new_packets() {
            // The alert tells the peer why.
            let _ = tls_flush(socket, tls, stalled);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
}

/// Writes the TLS session's records out; false if the socket takes no more
/// now. Any byte that goes is progress; nothing left to send is no stall.
#[cfg(feature = "tls")]
fn tls_flush(
    socket: &TcpStream,
    tls: &mut rustls::Connection,
    stalled: &mut Stall,
) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(&mut &*socket) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => stalled.note(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                stalled.note(false);
                return Ok(false);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    stalled.note(true);
    Ok(true)
}

/// A non-blocking call's bytes, `None` if it would block; retried when a
/// signal interrupted it.
fn retry(mut call: impl FnMut() -> io::Result<usize>) -> io::Result<Option<usize>> {
    loop {
        match call() {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
