//! A TCP stream that holds small writes until the next read, so the end of
//! one message and the length of the next leave in one segment.
//!
//! The core flushes at the end of every message and before it waits to read.
//! On a socket the flush at the end of a message costs a segment of its own
//! (and a wake-up of the peer) for nothing: the peer cannot answer before the
//! next length anyway. This stream makes `flush` free and pushes what it
//! holds before every read instead, and on [`Coalesce::push`] (which the owner
//! must call before it stops using the stream). Large writes go straight
//! through.

use std::io::{self, Read, Write};
use std::net::TcpStream;

/// Writes up to this size are held back; the buffer never exceeds it.
const HOLD_UP_TO: usize = 16 * 1024;

/// A stream whose small writes wait for the next read or [`push`](Self::push).
#[derive(Debug)]
pub struct Coalesce<S = TcpStream> {
    inner: S,
    pending: Vec<u8>,
}

impl<S: Write> Coalesce<S> {
    /// Wraps a connected stream.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Vec::with_capacity(HOLD_UP_TO),
        }
    }

    /// Writes out everything held back. Resumable: bytes that went are
    /// dropped from the buffer even when a later write fails.
    pub fn push(&mut self) -> io::Result<()> {
        let mut sent = 0;
        let result = loop {
            if sent == self.pending.len() {
                break Ok(());
            }
            match self.inner.write(&self.pending[sent..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.pending.drain(..sent);
        result?;
        self.inner.flush()
    }
}

impl<S: Write> Write for Coalesce<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pending.len() + buf.len() <= HOLD_UP_TO {
            self.pending.extend_from_slice(buf);
            return Ok(buf.len());
        }
        self.push()?;
        if buf.len() <= HOLD_UP_TO {
            self.pending.extend_from_slice(buf);
            return Ok(buf.len());
        }
        self.inner.write(buf)
    }

    /// Free: what is held goes out before the next read, or on `push`.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<S: Read + Write> Read for Coalesce<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.push()?;
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every write it is given.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Read for Recorder {
        fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
            Ok(0)
        }
    }

    #[test]
    fn test_small_writes_leave_together_on_read() {
        let mut s = Coalesce::new(Recorder::default());
        s.write_all(b"payload").unwrap();
        s.flush().unwrap();
        s.write_all(&[0, 0, 0, 5]).unwrap();
        assert!(s.inner.writes.is_empty());
        let _ = s.read(&mut [0u8; 1]).unwrap();
        assert_eq!(s.inner.writes, [b"payload\0\0\0\x05".to_vec()]);
    }

    #[test]
    fn test_large_write_goes_through_after_pending() {
        let mut s = Coalesce::new(Recorder::default());
        s.write_all(b"len!").unwrap();
        let big = vec![7u8; HOLD_UP_TO + 1];
        s.write_all(&big).unwrap();
        assert_eq!(s.inner.writes, [b"len!".to_vec(), big]);
        s.push().unwrap();
        assert_eq!(s.inner.writes.len(), 2);
    }
}
