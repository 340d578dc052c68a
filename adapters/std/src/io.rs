//! The transport under the core's blocking driver: a `TcpStream` whose every
//! read and write is bounded by a deadline.
//!
//! The core advances only by bytes that moved, so when a deadline runs out
//! here (an `io::ErrorKind::TimedOut` error) the message in flight stays
//! resumable; the connection decides whether to resume or to give up.
//!
//! Socket timeouts are system calls: they are set only when the wait wanted
//! differs from the one set by more than a sixteenth (so a deadline is kept
//! to within about 6 %), not before every read and write.

use std::io::{self, Read as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Deadline;

/// Socket timeouts may not be zero.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// Small reads (a length, a status byte, a small payload) take up to this
/// much more from the socket when it is there: the length and the payload of
/// a small message, or one message and the next, cost one system call.
const READ_AHEAD: usize = 512;

/// A `TcpStream` with deadlines, as a `std::io` stream.
#[derive(Debug)]
pub(crate) struct Io {
    /// Shared with the registry (the reactor, a forced stop): one file
    /// descriptor per connection.
    stream: Arc<TcpStream>,
    /// Reads fail with `TimedOut` once this passes.
    read_deadline: Instant,
    read_kind: Deadline,
    /// A read was tried since the read deadline was set.
    read_tried: bool,
    /// The last read waited out its socket timeout: the next one must wait
    /// the right time, not a shorter one left from before.
    read_timed_out: bool,
    /// Each write may wait at most this long for progress.
    write_timeout: Duration,
    /// Which deadline made the last call fail, taken by the connection.
    expired: Option<Deadline>,
    /// When the first byte arrived since the last [`Io::mark_idle`].
    first_byte: Option<Instant>,
    /// When a read last took fewer bytes than it asked for: the socket held
    /// nothing more then.
    drained_at: Option<Instant>,
    /// Writes fail with this [`Deadline`] after this instant, if set.
    write_deadline: Option<(Instant, Deadline)>,
    write_timeout_set: Option<Duration>,
    read_timeout_set: Option<Duration>,
    /// Bytes read from the socket ahead of the reads asking for them
    /// (allocated on first use).
    ahead: Vec<u8>,
    /// Of `ahead`, where the bytes not handed out yet begin and end.
    ahead_pos: usize,
    ahead_end: usize,
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

impl Io {
    pub(crate) fn new(stream: Arc<TcpStream>, write_timeout: Duration) -> Self {
        Self {
            stream,
            read_deadline: Instant::now(),
            read_kind: Deadline::Receive,
            read_tried: false,
            read_timed_out: false,
            write_timeout,
            expired: None,
            first_byte: None,
            drained_at: None,
            write_deadline: None,
            write_timeout_set: None,
            read_timeout_set: None,
            ahead: Vec::new(),
            ahead_pos: 0,
            ahead_end: 0,
        }
    }

    pub(crate) fn stream(&self) -> &Arc<TcpStream> {
        &self.stream
    }

    /// Reads fail with [`Deadline`] `kind` after `deadline`.
    /// Every deadline gets at least one read: one already passed (`now`)
    /// means "take what is there, do not wait".
    pub(crate) fn set_read_deadline(&mut self, deadline: Instant, kind: Deadline) {
        self.read_deadline = deadline;
        self.read_tried = false;
        self.read_kind = kind;
    }

    /// Reads fail at once with [`Deadline`] `kind`, without a look at the
    /// socket, until the next [`set_read_deadline`](Self::set_read_deadline).
    pub(crate) fn refuse_reads(&mut self, kind: Deadline) {
        self.set_read_deadline(Instant::now(), kind);
        self.read_tried = true;
    }

    /// Writes fail with the given [`Deadline`] after its instant (and with
    /// [`Deadline::Write`] when one write makes no progress for the write
    /// timeout).
    pub(crate) fn set_write_deadline(&mut self, deadline: Option<(Instant, Deadline)>) {
        self.write_deadline = deadline;
    }

    /// Forgets when the current message started.
    pub(crate) fn mark_idle(&mut self) {
        self.first_byte = None;
    }

    /// When the first byte arrived since [`mark_idle`](Self::mark_idle).
    pub(crate) fn first_byte(&self) -> Option<Instant> {
        self.first_byte
    }

    /// True when bytes read ahead wait here: the socket may be empty, yet
    /// there is something to read.
    pub(crate) fn has_input(&self) -> bool {
        self.ahead_pos < self.ahead_end
    }

    /// True when nothing is read ahead and a read found the socket empty
    /// (it took fewer bytes than it asked for) less than `within` ago.
    pub(crate) fn drained_within(&self, within: Duration) -> bool {
        !self.has_input() && self.drained_at.is_some_and(|at| at.elapsed() < within)
    }

    /// Bytes read ahead and not handed out yet.
    pub(crate) fn ahead_len(&self) -> usize {
        self.ahead_end - self.ahead_pos
    }

    /// Looks at the socket without waiting and keeps what arrived with the
    /// bytes already read ahead; how many wait now (0: nothing arrived, or
    /// the peer closed, which the next read finds). The read deadline is
    /// left as it was.
    pub(crate) fn look(&mut self) -> Result<usize, io::Error> {
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

    /// The deadline that made the last failing call fail, if one did.
    pub(crate) fn take_expired(&mut self) -> Option<Deadline> {
        self.expired.take()
    }

    fn expire(&mut self, kind: Deadline) -> io::Error {
        self.expired = Some(kind);
        io::Error::new(io::ErrorKind::TimedOut, format!("{kind} deadline ran out"))
    }
}

impl io::Read for Io {
    /// Hands out bytes read ahead first; a small read fills the read-ahead
    /// buffer, a large one goes straight to the socket.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, io::Error> {
        self.expired = None;
        if self.ahead_pos == self.ahead_end && buf.len() < READ_AHEAD {
            if self.ahead.is_empty() {
                self.ahead = vec![0; READ_AHEAD];
            }
            let mut ahead = std::mem::take(&mut self.ahead);
            let read = self.read_socket(&mut ahead);
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
        self.read_socket(buf)
    }
}

impl Io {
    /// One read from the socket, bounded by the read deadline.
    fn read_socket(&mut self, buf: &mut [u8]) -> Result<usize, io::Error> {
        loop {
            let now = Instant::now();
            let wait = if now < self.read_deadline {
                (self.read_deadline - now).max(MIN_TIMEOUT)
            } else if !self.read_tried {
                self.read_tried = true;
                return match self.read_without_waiting(buf)? {
                    Some(n) => Ok(n),
                    None => Err(self.expire(self.read_kind)),
                };
            } else {
                return Err(self.expire(self.read_kind));
            };
            self.read_tried = true;
            // A shorter timeout left from a look at the socket is kept while
            // bytes are there (the read returns at once); once a read waits
            // it out, the next one gets the right one.
            let shorter = self.read_timeout_set.is_some_and(|set| set <= wait);
            if !keeps(self.read_timeout_set, wait) && (self.read_timed_out || !shorter) {
                self.stream.set_read_timeout(Some(wait))?;
                self.read_timeout_set = Some(wait);
            }
            match (&*self.stream).read(buf) {
                Ok(n) => {
                    self.read_timed_out = false;
                    self.note_read(n, buf.len());
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
}

impl Io {
    /// One read that takes what the socket holds and never waits; `None`
    /// when it holds nothing. (A socket timeout cannot do this: the kernel
    /// rounds any timeout up to a clock tick, some milliseconds.)
    fn read_without_waiting(&mut self, buf: &mut [u8]) -> Result<Option<usize>, io::Error> {
        self.stream.set_nonblocking(true)?;
        let read = loop {
            match (&*self.stream).read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        self.stream.set_nonblocking(false)?;
        match read {
            Ok(n) => {
                self.note_read(n, buf.len());
                Ok(Some(n))
            }
            Err(e) if is_timeout(&e) => {
                self.drained_at = Some(Instant::now());
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Notes a read of `n` bytes into a buffer of `asked`.
    fn note_read(&mut self, n: usize, asked: usize) {
        if n > 0 && self.first_byte.is_none() {
            self.first_byte = Some(Instant::now());
        }
        self.drained_at = if n < asked {
            Some(Instant::now())
        } else {
            None
        };
    }
}

impl io::Write for Io {
    fn write(&mut self, buf: &[u8]) -> Result<usize, io::Error> {
        self.expired = None;
        let mut timeout = self.write_timeout;
        let mut kind = Deadline::Write;
        if let Some((deadline, deadline_kind)) = self.write_deadline {
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
        if !keeps(self.write_timeout_set, timeout) {
            self.stream.set_write_timeout(Some(timeout))?;
            self.write_timeout_set = Some(timeout);
        }
        loop {
            match (&*self.stream).write(buf) {
                Ok(n) => {
                    if n > 0 && self.first_byte.is_none() {
                        self.first_byte = Some(Instant::now());
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => return Err(self.expire(kind)),
                Err(e) => return Err(e),
            }
        }
    }

    fn flush(&mut self) -> Result<(), io::Error> {
        Ok(()) // a socket has no buffer of its own to flush
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn pair() -> (Io, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (Io::new(Arc::new(server), Duration::from_secs(5)), client)
    }

    #[test]
    fn test_small_reads_share_one_read_ahead_and_large_ones_go_straight() {
        let (mut io, mut peer) = pair();
        io.set_read_deadline(Instant::now() + Duration::from_secs(30), Deadline::Message);
        peer.write_all(&[0, 0, 0, 3, b'a', b'b', b'c']).unwrap();
        let mut len = [0u8; 4];
        assert_eq!(io.read(&mut len).unwrap(), 4);
        assert_eq!(len, [0, 0, 0, 3]);
        // The payload came with the length: no wait, even with the deadline past.
        io.refuse_reads(Deadline::Receive);
        let mut payload = [0u8; 3];
        assert_eq!(io.read(&mut payload).unwrap(), 3);
        assert_eq!(&payload, b"abc");
        assert!(
            io.read(&mut payload).is_err(),
            "nothing ahead: the refusal holds"
        );
        let big = vec![7u8; 4 * READ_AHEAD];
        peer.write_all(&big).unwrap();
        io.set_read_deadline(Instant::now() + Duration::from_secs(30), Deadline::Message);
        let mut got = vec![0u8; big.len()];
        let mut at = 0;
        while at < got.len() {
            at += io.read(&mut got[at..]).unwrap();
        }
        assert_eq!(got, big);
        drop(peer);
        assert_eq!(io.read(&mut payload).unwrap(), 0, "end of stream");
    }

    #[test]
    fn test_look_keeps_what_arrived_without_waiting() {
        let (mut io, mut peer) = pair();
        io.set_read_deadline(Instant::now() + Duration::from_secs(30), Deadline::Message);
        let start = Instant::now();
        assert_eq!(io.look().unwrap(), 0, "nothing there");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "a look does not wait"
        );
        peer.write_all(&[1, 2]).unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(io.read(&mut byte).unwrap(), 1);
        assert_eq!(io.ahead_len(), 1);
        peer.write_all(&[3, 4]).unwrap();
        // The bytes may take a moment over loopback: a bounded number of looks.
        let mut ahead = io.ahead_len();
        for _ in 0..1000 {
            ahead = io.look().unwrap();
            if ahead == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(ahead, 3, "the byte ahead, then the two that came");
        let mut rest = [0u8; 3];
        assert_eq!(io.read(&mut rest).unwrap(), 3);
        assert_eq!(rest, [2, 3, 4]);
        assert_eq!(io.take_expired(), None, "a look leaves no expired deadline");
        assert!(
            io.read_deadline > Instant::now(),
            "the read deadline is kept"
        );
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
    fn test_read_deadline_expires_with_its_kind() {
        let (mut io, _peer) = pair();
        io.set_read_deadline(
            Instant::now() + Duration::from_millis(30),
            Deadline::Greeting,
        );
        let e = io.read(&mut [0u8; 4]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(io.take_expired(), Some(Deadline::Greeting));
        assert_eq!(io.take_expired(), None);
    }

    #[test]
    fn test_read_records_the_first_byte_only() {
        let (mut io, mut peer) = pair();
        io.set_read_deadline(Instant::now() + Duration::from_secs(30), Deadline::Message);
        assert!(io.first_byte().is_none());
        peer.write_all(b"ab").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(io.read(&mut buf).unwrap(), 1);
        let first = io.first_byte().expect("recorded");
        assert_eq!(io.read(&mut buf).unwrap(), 1);
        assert_eq!(io.first_byte(), Some(first));
        io.mark_idle();
        assert!(io.first_byte().is_none());
        drop(peer);
        assert_eq!(io.read(&mut buf).unwrap(), 0, "end of stream");
    }

    #[test]
    fn test_write_after_its_deadline_expires_without_writing() {
        let (mut io, _peer) = pair();
        io.set_write_deadline(Some((Instant::now(), Deadline::Message)));
        let e = io.write(b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(io.take_expired(), Some(Deadline::Message));
        io.set_write_deadline(None);
        assert_eq!(io.write(b"x").unwrap(), 1);
        assert_eq!(io.take_expired(), None);
    }
}
