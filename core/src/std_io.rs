//! `std::io` glue (feature `std`): a write-buffering stream for
//! [`FlushPolicy::BeforeRead`].
//!
//! A `std::net::TcpStream` has no buffer of its own: every write is a system
//! call and, with `TCP_NODELAY`, a segment. [`WriteBuffered`] gathers writes in
//! a `std::io::BufWriter` until the next read or flush, so that the end of one
//! message and the length of the next leave in one segment.

use std::io::{BufWriter, Read, Write};

use embedded_io_adapters::std::FromStd;

use crate::blocking::Connection;
use crate::machine::FlushPolicy;

/// A stream whose writes wait in a buffer until the next read or flush.
///
/// Writes of at least the buffer's size go straight through (after what is
/// held); a read first writes out what is held, so a peer is never left
/// waiting for bytes it must answer.
#[derive(Debug)]
pub struct WriteBuffered<S: Write> {
    inner: BufWriter<S>,
}

impl<S: Write> WriteBuffered<S> {
    /// Wraps a connected stream with a buffer of 16 KiB.
    pub fn new(stream: S) -> Self {
        Self {
            inner: BufWriter::with_capacity(16 * 1024, stream),
        }
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// The stream, mutably (for socket options).
    pub fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut()
    }

    /// Bytes written but not yet passed to the stream.
    pub fn pending(&self) -> usize {
        self.inner.buffer().len()
    }
}

impl<S: Read + Write> Read for WriteBuffered<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.inner.buffer().is_empty() {
            self.inner.flush()?;
        }
        self.inner.get_mut().read(buf)
    }
}

impl<S: Write> Write for WriteBuffered<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<S: Read + Write> Connection<FromStd<WriteBuffered<S>>> {
    /// Wraps a `std::io` stream for back-to-back messages: writes wait in a
    /// buffer and the connection flushes under
    /// [`FlushPolicy::BeforeRead`], so the end of one message and the length
    /// of the next leave together. Call [`flush`](Connection::flush) before
    /// the connection goes quiet; every read flushes first.
    pub fn from_std_buffered(stream: S) -> Self {
        let mut conn = Self::new(FromStd::new(WriteBuffered::new(stream)));
        conn.set_flush_policy(FlushPolicy::BeforeRead);
        conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// A stream that records each write call and serves a fixed input.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        input: Vec<u8>,
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
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.input.len());
            buf[..n].copy_from_slice(&self.input[..n]);
            self.input.drain(..n);
            Ok(n)
        }
    }

    #[test]
    fn test_payload_and_next_length_leave_in_one_write() {
        let peer = Recorder {
            input: vec![0xFF, 0xFF, 0xFF],
            ..Recorder::default()
        };
        let mut conn = Connection::from_std_buffered(peer);
        conn.transmit(b"one").unwrap();
        conn.transmit(b"two").unwrap();
        assert_eq!(
            conn.get_ref().inner().pending(),
            3,
            "the last payload waits"
        );
        conn.flush().unwrap();
        let writes = &conn.get_ref().inner().get_ref().writes;
        assert_eq!(
            writes,
            &[
                vec![0xFF],
                vec![0, 0, 0, 3],
                b"one\0\0\0\x03".to_vec(),
                b"two".to_vec()
            ]
        );
    }

    #[test]
    fn test_large_write_goes_through_after_what_is_held() {
        let mut stream = WriteBuffered::new(Recorder::default());
        stream.write_all(b"len!").unwrap();
        let big = vec![7u8; 16 * 1024 + 1];
        stream.write_all(&big).unwrap();
        assert_eq!(stream.get_ref().writes, [b"len!".to_vec(), big]);
        assert_eq!(stream.pending(), 0);
    }
}
