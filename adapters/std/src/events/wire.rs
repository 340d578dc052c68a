//! A connection's non-blocking socket, its read-ahead and its write
//! buffer ([`Wire`]): the one place an event thread's bytes move.

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

/// A connection's non-blocking socket with its read-ahead and write
/// buffer: the one place its bytes move.
pub(super) struct Wire {
    pub(super) socket: Arc<TcpStream>,
    pub(super) ahead: Box<[u8]>,
    /// The unread bytes of `ahead`.
    pub(super) start: usize,
    pub(super) end: usize,
    /// The peer closed its side.
    pub(super) eof: bool,
    /// When a read last found the socket empty, if no readiness event came
    /// since: until one does (any later byte brings one; readiness is
    /// edge-triggered), another read would find nothing, and is not made.
    emptied_at: Option<Instant>,
    pub(super) out: Vec<u8>,
}

impl Wire {
    pub(super) fn new(socket: Arc<TcpStream>) -> Self {
        Self {
            socket,
            ahead: vec![0; READ_AHEAD].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            emptied_at: None,
            out: Vec::new(),
        }
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
                return self.read_socket(buf);
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

    /// Reads what the socket has into the read-ahead; false if nothing was
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
        let (end, socket) = (self.end, &self.socket);
        let read = Self::read_from(socket, &mut self.emptied_at, &mut self.ahead[end..])?;
        match read {
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

    fn read_socket(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        Self::read_from(&self.socket, &mut self.emptied_at, buf)
    }

    /// One non-blocking read into `buf`, unless the socket was found empty
    /// since its last readiness; a short read finds it empty too.
    fn read_from(
        socket: &TcpStream,
        emptied_at: &mut Option<Instant>,
        buf: &mut [u8],
    ) -> io::Result<Option<usize>> {
        if emptied_at.is_some() {
            return Ok(None);
        }
        let read = retry(|| (&*socket).read(&mut *buf))?;
        if read.is_none_or(|n| n > 0 && n < buf.len()) {
            *emptied_at = Some(Instant::now());
        }
        Ok(read)
    }

    /// A readiness event came: bytes may have arrived since the socket was
    /// last found empty.
    pub(super) fn readable(&mut self) {
        self.emptied_at = None;
    }

    /// True when the peer has begun a message (or closed): bytes are here
    /// or in the socket. Looked for right before ours would go out: with a
    /// read of the socket, unless a read found it empty just now (within
    /// [`FRESH_LOOK`]: the echo of a message just read).
    pub(super) fn peer_has_begun(&mut self) -> io::Result<bool> {
        if self.start == self.end && !self.eof {
            if self.emptied_at.is_some_and(|at| at.elapsed() > FRESH_LOOK) {
                // A readiness event may be on its way: look for ourselves.
                self.emptied_at = None;
            }
            self.fill()?;
        }
        Ok(self.start < self.end || self.eof)
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
        match retry(|| (&*self.socket).write(bytes))? {
            Some(0) => Err(io::ErrorKind::WriteZero.into()),
            moved => Ok(moved),
        }
    }

    /// Writes the buffer out; false if the socket takes no more now.
    pub(super) fn flush(&mut self) -> io::Result<bool> {
        while !self.out.is_empty() {
            match retry(|| (&*self.socket).write(&self.out))? {
                None => return Ok(false),
                Some(0) => return Err(io::ErrorKind::WriteZero.into()),
                Some(n) => {
                    self.out.drain(..n);
                }
            }
        }
        Ok(true)
    }
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
