//! The transport under the core's blocking driver: one byte stream (a TCP
//! socket, or a stream over one such as TLS) with read-ahead, a write
//! buffer and deadlines, as an `embedded_io` stream.
//!
//! **Deadlines** follow tinyproto-embassy's `Socket`: an exchange is begun
//! ([`Transport::begin_exchange`]: every read and write must be done by its
//! deadline), or awaited ([`Transport::await_exchange`]: reads wait for its
//! first byte until a given instant, and that byte starts the message
//! deadline), and ended ([`Transport::end_exchange`]). A read or write that
//! runs out of time fails with `io::ErrorKind::TimedOut` and records which
//! [`Deadline`] it was ([`Transport::take_expired`]). The core advances only
//! by bytes that moved, so the message in flight stays resumable; the
//! connection decides whether to resume or to give up. Each single write
//! also has [`Timeouts::write`](crate::Timeouts::write) to make progress.
//!
//! **Buffers.** Small reads (a length, a status byte, a small payload) take
//! up to [`READ_AHEAD`] bytes from the socket at once, so that the length
//! and the payload of a small message cost one system call. Writes gather
//! in a buffer of up to [`WRITE_BUFFER`] bytes until a flush or the next
//! read (a peer only answers what it has seen), so that the end of one
//! message and the length of the next leave in one segment.
//!
//! **Socket timeouts** are system calls: they are set only when the wait
//! wanted differs from the one set by more than a sixteenth (so a deadline
//! is kept to within about 6 %), not before every read and write.

use std::io::{self};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Deadline;

/// Socket timeouts may not be zero.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// Bytes a small read takes from the socket at once.
const READ_AHEAD: usize = 512;

/// Writes wait in a buffer of at most this many bytes; larger ones go
/// straight to the stream (after what waits).
const WRITE_BUFFER: usize = 16 * 1024;

/// A byte stream over a TCP socket: what a [`Transport`] carries.
pub(crate) trait Stream: io::Read + io::Write + Send {
    /// The socket under the stream: its timeouts, its blocking mode, its
    /// shutdown and its readiness are the transport's to set and watch.
    fn socket(&self) -> &TcpStream;

    /// True when the stream holds bytes it read from the socket already and
    /// has not handed out (a TLS stream's decrypted records): the socket may
    /// be quiet, yet there is something to read.
    fn has_buffered_input(&mut self) -> bool {
        false
    }

    /// The certificate the peer presented (TLS), once the handshake is done.
    #[cfg(feature = "tls")]
    fn peer_certificate(&self) -> Option<rustls::pki_types::CertificateDer<'static>> {
        None
    }

    /// True while a read may also write and a write also read (a TLS
    /// handshake): both socket timeouts then bound every call.
    fn talks_both_ways(&self) -> bool {
        false
    }

    /// Ends the stream's own session before the socket closes (TLS's
    /// close_notify), without reading; nothing for a plain socket.
    fn close(&mut self) {}

    /// One read that takes what the socket holds and never waits: `Err`
    /// of kind `WouldBlock` when it holds nothing. (A socket timeout
    /// cannot do this: the kernel rounds any timeout up to a clock tick,
    /// some milliseconds.) A stream with a layer of its own (TLS) reads
    /// through it with the socket switched to non-blocking for the call:
    /// three system calls.
    fn read_without_waiting(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket().set_nonblocking(true)?;
        let read = self.read(buf);
        self.socket().set_nonblocking(false)?;
        read
    }
}

/// A plain TCP connection, its socket shared with the registry (one file
/// descriptor per connection: the reactor watches it, a forced stop shuts
/// it).
#[derive(Debug, Clone)]
pub(crate) struct Tcp(pub(crate) Arc<TcpStream>);

impl io::Read for Tcp {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl io::Write for Tcp {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // a socket has no buffer of its own to flush
    }
}

impl Stream for Tcp {
    fn socket(&self) -> &TcpStream {
        &self.0
    }

    /// One system call: `recv` with `MSG_DONTWAIT`, the socket left in
    /// blocking mode.
    fn read_without_waiting(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (_, n) = rustix::net::recv(&*self.0, buf, rustix::net::RecvFlags::DONTWAIT)?;
        Ok(n)
    }
}

impl<S: Stream + ?Sized> Stream for Box<S> {
    fn socket(&self) -> &TcpStream {
        (**self).socket()
    }

    fn has_buffered_input(&mut self) -> bool {
        (**self).has_buffered_input()
    }

    #[cfg(feature = "tls")]
    fn peer_certificate(&self) -> Option<rustls::pki_types::CertificateDer<'static>> {
        (**self).peer_certificate()
    }

    fn talks_both_ways(&self) -> bool {
        (**self).talks_both_ways()
    }

    fn close(&mut self) {
        (**self).close()
    }

    fn read_without_waiting(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_without_waiting(buf)
    }
}

/// A [`Stream`] with read-ahead, a write buffer and deadlines.
pub(crate) struct Transport<S> {
    stream: S,
    /// The exchange in progress: reads and writes fail with this
    /// [`Deadline`] once the instant passes.
    deadline: Option<(Instant, Deadline)>,
    /// An awaited exchange that has not begun: reads fail with this
    /// [`Deadline`] once the instant passes.
    wait_until: Option<(Instant, Deadline)>,
    /// An awaited exchange gets this message deadline from its first byte.
    message_limit: Option<Duration>,
    /// A read was tried since the read limit was set: a limit already
    /// passed gets one look at the socket, never more.
    read_tried: bool,
    /// The last read waited out its socket timeout: the next one must wait
    /// the right time, not a shorter one left from before.
    read_timed_out: bool,
    /// Each write may wait at most this long for progress.
    write_timeout: Duration,
    /// Which deadline made the last call fail, taken by the connection.
    expired: Option<Deadline>,
    write_timeout_set: Option<Duration>,
    read_timeout_set: Option<Duration>,
    /// Bytes read ahead of the reads asking for them (allocated on first
    /// use), and where those not handed out yet begin and end.
    ahead: Vec<u8>,
    ahead_pos: usize,
    ahead_end: usize,
    /// Bytes written and not yet passed to the stream.
    out: Vec<u8>,
}

impl<S> std::fmt::Debug for Transport<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("deadline", &self.deadline)
            .field("wait_until", &self.wait_until)
            .field("ahead", &(self.ahead_end - self.ahead_pos))
            .field("out", &self.out.len())
            .finish_non_exhaustive()
    }
}

/// True when a socket timeout set to `set` may be kept for a wait of
/// `wanted`: within a sixteenth of it either way. Longer, a deadline is
/// overshot by at most that much; shorter, the read wakes early and waits
/// again.
fn keeps(set: Option<Duration>, wanted: Duration) -> bool {
    set.is_some_and(|set| set.abs_diff(wanted) <= wanted / 16)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl<S: Stream> Transport<S> {
    pub(crate) fn new(stream: S, write_timeout: Duration) -> Self {
        Self {
            stream,
            deadline: None,
            wait_until: None,
            message_limit: None,
            read_tried: false,
            read_timed_out: false,
            write_timeout,
            expired: None,
            write_timeout_set: None,
            read_timeout_set: None,
            ahead: Vec::new(),
            ahead_pos: 0,
            ahead_end: 0,
            out: Vec::new(),
        }
    }

    // ---- deadlines ----

    /// An exchange begins: every read and write must be done by `until`,
    /// or fails with `which`. An instant already passed still gets one
    /// look at the socket ("take what is there, do not wait").
    pub(crate) fn begin_exchange(&mut self, until: Instant, which: Deadline) {
        self.deadline = Some((until, which));
        self.wait_until = None;
        self.message_limit = None;
        self.read_tried = false;
    }

    /// Waits for the peer to begin an exchange: reads wait for its first
    /// byte until `until` (then fail with `which`); that byte begins the
    /// exchange, with `message` from then on.
    pub(crate) fn await_exchange(&mut self, until: Instant, which: Deadline, message: Duration) {
        self.deadline = None;
        self.wait_until = Some((until, which));
        self.message_limit = Some(message);
        self.read_tried = false;
    }

    /// No exchange in progress: no deadline (but each write's own).
    pub(crate) fn end_exchange(&mut self) {
        self.deadline = None;
        self.wait_until = None;
        self.message_limit = None;
    }

    /// The deadline of the exchange in progress, if one has begun.
    pub(crate) fn deadline(&self) -> Option<(Instant, Deadline)> {
        self.deadline
    }

    /// The deadline that made the last failing call fail, if one did.
    pub(crate) fn take_expired(&mut self) -> Option<Deadline> {
        self.expired.take()
    }

    fn limit(&self) -> Option<(Instant, Deadline)> {
        self.deadline.or(self.wait_until)
    }

    fn expire(&mut self, kind: Deadline) -> io::Error {
        self.expired = Some(kind);
        io::Error::new(io::ErrorKind::TimedOut, format!("{kind} deadline ran out"))
    }

    /// A byte of the peer's was handed out: an awaited exchange has begun.
    fn exchange_began(&mut self) {
        if let Some(message) = self.message_limit.take() {
            self.deadline = Some((Instant::now() + message, Deadline::Message));
            self.wait_until = None;
        }
    }

    // ---- what is there to read ----

    /// True when bytes wait here, read ahead from the socket: the socket
    /// may be empty, yet there is something to read (no readiness would
    /// report it).
    pub(crate) fn has_input(&mut self) -> bool {
        self.ahead_pos < self.ahead_end || self.stream.has_buffered_input()
    }

    /// The stream, for what only it knows (the peer's certificate).
    #[cfg(feature = "tls")]
    pub(crate) fn stream(&self) -> &S {
        &self.stream
    }

    /// Writes out what waits and ends the stream's own session (TLS's
    /// close_notify), within the exchange's deadline or the write timeout.
    pub(crate) fn close(&mut self) {
        if !self.stream.talks_both_ways() {
            let _ = self.write_out();
        }
        self.stream.close();
    }

    /// Bytes read ahead and not handed out yet.
    pub(crate) fn ahead_len(&self) -> usize {
        self.ahead_end - self.ahead_pos
    }

    /// Looks at the socket without waiting and keeps what arrived with the
    /// bytes already read ahead; how many wait now (0: nothing arrived, or
    /// the peer closed, which the next read finds). Deadlines are left as
    /// they were.
    pub(crate) fn look(&mut self) -> io::Result<usize> {
        if self.ahead.is_empty() {
            self.ahead = vec![0; READ_AHEAD];
        }
        self.ahead.copy_within(self.ahead_pos..self.ahead_end, 0);
        self.ahead_end -= self.ahead_pos;
        self.ahead_pos = 0;
        if self.ahead_end == self.ahead.len() {
            return Ok(self.ahead_end);
        }
        let mut ahead = std::mem::take(&mut self.ahead);
        let read = self.read_without_waiting(&mut ahead[self.ahead_end..]);
        self.ahead = ahead;
        self.ahead_end += read?.unwrap_or(0);
        Ok(self.ahead_len())
    }

    // ---- the stream ----

    /// One read from the stream, bounded by the read limit (with no
    /// exchange begun or awaited: a look, never a wait).
    fn read_stream(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let now = Instant::now();
            let (at, kind) = self.limit().unwrap_or((now, Deadline::Receive));
            let wait = if now < at {
                (at - now).max(MIN_TIMEOUT)
            } else if self.read_tried {
                return Err(self.expire(kind));
            } else {
                self.read_tried = true;
                return match self.read_without_waiting(buf)? {
                    Some(n) => Ok(n),
                    None => Err(self.expire(kind)),
                };
            };
            self.read_tried = true;
            self.set_read_timeout(wait, !self.read_timed_out)?;
            if self.stream.talks_both_ways() {
                self.set_write_timeout(wait.min(self.write_timeout))?;
            }
            match self.stream.read(buf) {
                Ok(n) => {
                    self.read_timed_out = false;
                    return Ok(n);
                }
                Err(e) if is_timeout(&e) => {
                    self.read_timed_out = true;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sets the socket's read timeout for a wait of `wait`, unless the one
    /// set will do: within a sixteenth, or shorter if `shorter_will_do` (a
    /// shorter one left from a brief wait is kept while bytes come at once;
    /// once a read waits it out, the next one gets the right one).
    fn set_read_timeout(&mut self, wait: Duration, shorter_will_do: bool) -> io::Result<()> {
        let set = self.read_timeout_set;
        let will_do = keeps(set, wait) || (shorter_will_do && set.is_some_and(|set| set <= wait));
        if !will_do {
            self.stream.socket().set_read_timeout(Some(wait))?;
            self.read_timeout_set = Some(wait);
        }
        Ok(())
    }

    /// Sets the socket's write timeout, unless the one set will do.
    fn set_write_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        let timeout = timeout.max(MIN_TIMEOUT);
        if !keeps(self.write_timeout_set, timeout) {
            self.stream.socket().set_write_timeout(Some(timeout))?;
            self.write_timeout_set = Some(timeout);
        }
        Ok(())
    }

    /// One read that takes what the socket holds and never waits
    /// ([`Stream::read_without_waiting`]); `None` when it holds nothing.
    fn read_without_waiting(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            return match self.stream.read_without_waiting(buf) {
                Ok(n) => Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => Ok(None),
                Err(e) => Err(e),
            };
        }
    }

    /// One write to the stream, bounded by the exchange's deadline and the
    /// write timeout.
    fn write_stream(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut timeout = self.write_timeout;
        let mut kind = Deadline::Write;
        if let Some((deadline, deadline_kind)) = self.deadline {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(self.expire(deadline_kind));
            }
            if remaining < timeout {
                timeout = remaining;
                kind = deadline_kind;
            }
        }
        let timeout = timeout.max(MIN_TIMEOUT);
        self.set_write_timeout(timeout)?;
        if self.stream.talks_both_ways() {
            // A read inside a write must not time out early.
            self.set_read_timeout(timeout, false)?;
        }
        loop {
            match self.stream.write(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => return Err(self.expire(kind)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes out what waits in the write buffer.
    fn write_out(&mut self) -> io::Result<()> {
        let mut at = 0;
        let result = loop {
            if at == self.out.len() {
                break self.stream.flush();
            }
            let out = std::mem::take(&mut self.out);
            let wrote = self.write_stream(&out[at..]);
            self.out = out;
            match wrote {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => at += n,
                Err(e) => break Err(e),
            }
        };
        // What went is gone; what did not waits for the next flush.
        self.out.drain(..at);
        result
    }
}

impl<S: Stream> embedded_io::ErrorType for Transport<S> {
    type Error = io::Error;
}

impl<S: Stream> embedded_io::Read for Transport<S> {
    /// Writes out what waits first (a peer only answers what it has seen),
    /// then reads; the first byte handed out begins an awaited exchange.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.expired = None;
        if !self.out.is_empty() {
            self.write_out()?;
        }
        let n = self.read_some(buf)?;
        if n > 0 {
            self.exchange_began();
        }
        Ok(n)
    }
}

impl<S: Stream> Transport<S> {
    /// Hands out bytes read ahead; a small read fills the read-ahead
    /// buffer, a large one goes straight to the stream.
    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ahead_pos == self.ahead_end && buf.len() < READ_AHEAD {
            if self.ahead.is_empty() {
                self.ahead = vec![0; READ_AHEAD];
            }
            let mut ahead = std::mem::take(&mut self.ahead);
            let read = self.read_stream(&mut ahead);
            self.ahead = ahead;
            // Only bytes that arrived count: after an error nothing is ahead.
            let n = read?;
            self.ahead_pos = 0;
            self.ahead_end = n;
        }
        if self.ahead_pos < self.ahead_end {
            let n = buf.len().min(self.ahead_end - self.ahead_pos);
            buf[..n].copy_from_slice(&self.ahead[self.ahead_pos..self.ahead_pos + n]);
            self.ahead_pos += n;
            return Ok(n);
        }
        if buf.len() < READ_AHEAD {
            return Ok(0); // end of stream
        }
        self.read_stream(buf)
    }
}

impl<S: Stream> embedded_io::ReadReady for Transport<S> {
    /// True when bytes of the peer's are here or in the socket (looked at
    /// without waiting).
    fn read_ready(&mut self) -> io::Result<bool> {
        Ok(self.has_input() || self.look()? > 0)
    }
}

impl<S: Stream> embedded_io::Write for Transport<S> {
    /// Gathers `buf` in the write buffer, or (at least a buffer's worth)
    /// writes it straight out after what waits.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.expired = None;
        if self.out.len() + buf.len() <= WRITE_BUFFER {
            self.out.extend_from_slice(buf);
            return Ok(buf.len());
        }
        if !self.out.is_empty() {
            self.write_out()?;
        }
        if buf.len() < WRITE_BUFFER {
            self.out.extend_from_slice(buf);
            return Ok(buf.len());
        }
        self.write_stream(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.expired = None;
        self.write_out()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_io::{Read, Write};
    use std::io::{Read as _, Write as _};
    use std::net::TcpListener;

    const LONG: Duration = Duration::from_secs(30);

    fn pair() -> (Transport<Tcp>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (
            Transport::new(Tcp(Arc::new(server)), Duration::from_secs(5)),
            client,
        )
    }

    #[test]
    fn test_small_reads_share_one_read_ahead_and_large_ones_go_straight() {
        let (mut t, mut peer) = pair();
        t.begin_exchange(Instant::now() + LONG, Deadline::Message);
        peer.write_all(&[0, 0, 0, 3, b'a', b'b', b'c']).unwrap();
        let mut len = [0u8; 4];
        assert_eq!(t.read(&mut len).unwrap(), 4);
        assert_eq!(len, [0, 0, 0, 3]);
        // The payload came with the length: no wait, even with the deadline past.
        t.begin_exchange(Instant::now(), Deadline::Receive);
        let mut payload = [0u8; 3];
        assert_eq!(t.read(&mut payload).unwrap(), 3);
        assert_eq!(&payload, b"abc");
        assert!(t.read(&mut payload).is_err(), "nothing ahead: expired");
        assert_eq!(t.take_expired(), Some(Deadline::Receive));
        let big = vec![7u8; 4 * READ_AHEAD];
        peer.write_all(&big).unwrap();
        t.begin_exchange(Instant::now() + LONG, Deadline::Message);
        let mut got = vec![0u8; big.len()];
        let mut at = 0;
        while at < got.len() {
            at += t.read(&mut got[at..]).unwrap();
        }
        assert_eq!(got, big);
        drop(peer);
        assert_eq!(t.read(&mut payload).unwrap(), 0, "end of stream");
    }

    #[test]
    fn test_an_awaited_exchange_gets_the_message_deadline_from_its_first_byte() {
        let (mut t, mut peer) = pair();
        let until = Instant::now() + Duration::from_millis(50);
        t.await_exchange(until, Deadline::Receive, LONG);
        assert_eq!(t.deadline(), None, "not begun");
        peer.write_all(&[1]).unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(t.read(&mut byte).unwrap(), 1);
        let (at, kind) = t.deadline().expect("begun by the first byte");
        assert_eq!(kind, Deadline::Message);
        assert!(
            at > Instant::now() + LONG / 2,
            "the message limit, from now"
        );
        // Past the awaited instant, the exchange goes on under its own deadline.
        while Instant::now() < until {
            std::thread::yield_now();
        }
        peer.write_all(&[2]).unwrap();
        assert_eq!(t.read(&mut byte).unwrap(), 1);
        assert_eq!(byte, [2]);
    }

    #[test]
    fn test_an_awaited_exchange_that_never_begins_fails_with_its_kind() {
        let (mut t, _peer) = pair();
        t.await_exchange(
            Instant::now() + Duration::from_millis(30),
            Deadline::Greeting,
            LONG,
        );
        let e = t.read(&mut [0u8; 4]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t.take_expired(), Some(Deadline::Greeting));
        assert_eq!(t.take_expired(), None);
    }

    #[test]
    fn test_look_keeps_what_arrived_without_waiting() {
        let (mut t, mut peer) = pair();
        t.begin_exchange(Instant::now() + LONG, Deadline::Message);
        let start = Instant::now();
        assert_eq!(t.look().unwrap(), 0, "nothing there");
        assert!(start.elapsed() < LONG, "a look does not wait");
        peer.write_all(&[1, 2]).unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(t.read(&mut byte).unwrap(), 1);
        assert_eq!(t.ahead_len(), 1);
        peer.write_all(&[3, 4]).unwrap();
        // The bytes may take a moment over loopback: a bounded number of looks.
        let mut ahead = t.ahead_len();
        for _ in 0..1000 {
            ahead = t.look().unwrap();
            if ahead == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(ahead, 3, "the byte ahead, then the two that came");
        let mut rest = [0u8; 3];
        assert_eq!(t.read(&mut rest).unwrap(), 3);
        assert_eq!(rest, [2, 3, 4]);
        assert_eq!(t.take_expired(), None, "a look leaves no expired deadline");
        assert!(t.deadline().is_some(), "the deadline is kept");
    }

    #[test]
    fn test_writes_wait_for_a_flush_or_the_next_read() {
        let (mut t, mut peer) = pair();
        peer.set_read_timeout(Some(LONG)).unwrap();
        t.write_all(b"len:").unwrap();
        t.write_all(b"payload").unwrap();
        t.flush().unwrap();
        let mut got = [0u8; 11];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"len:payload");
        // A read writes out what waits before it reads.
        t.write_all(b"?").unwrap();
        peer.write_all(b"!").unwrap();
        t.begin_exchange(Instant::now() + LONG, Deadline::Message);
        let mut answer = [0u8; 1];
        assert_eq!(t.read(&mut answer).unwrap(), 1);
        assert_eq!(&answer, b"!");
        let mut question = [0u8; 1];
        peer.read_exact(&mut question).unwrap();
        assert_eq!(&question, b"?");
        // A large write goes straight out, after what waited.
        t.write_all(b"<").unwrap();
        let big = vec![9u8; 2 * WRITE_BUFFER];
        t.write_all(&big).unwrap();
        t.flush().unwrap();
        let mut got = vec![0u8; 1 + big.len()];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got[0], b'<');
        assert_eq!(&got[1..], &big[..]);
    }

    #[test]
    fn test_timeouts_are_kept_within_a_sixteenth() {
        let s = Duration::from_secs(16);
        assert!(!keeps(None, s));
        assert!(keeps(Some(s), s));
        assert!(
            keeps(Some(Duration::from_secs(15)), s),
            "a sixteenth shorter"
        );
        assert!(
            keeps(Some(Duration::from_secs(17)), s),
            "a sixteenth longer"
        );
        assert!(!keeps(Some(Duration::from_millis(14_900)), s));
        assert!(!keeps(Some(Duration::from_millis(17_100)), s));
    }

    #[test]
    fn test_write_after_its_deadline_expires_without_writing() {
        let (mut t, _peer) = pair();
        t.begin_exchange(Instant::now(), Deadline::Message);
        let e = t.write_all(&vec![1u8; 2 * WRITE_BUFFER]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t.take_expired(), Some(Deadline::Message));
        t.end_exchange();
        t.write_all(b"x").unwrap();
        t.flush().unwrap();
        assert_eq!(t.take_expired(), None);
    }
}
