//! A scripted blocking transport: reads come from a fixed byte string,
//! writes are captured, and a plan taken from the fuzzer input decides how
//! many bytes each call moves and when a call stalls with an error.

use tinyproto::blocking::Connection;
use tinyproto::embedded_io::{ErrorType, Read, Write};

use crate::Stall;

/// What one transport call may do, decoded from one plan byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Fail with [`Stall`] and move nothing.
    Stall,
    /// Move at most this many bytes.
    UpTo(usize),
}

/// Decodes a plan byte: `0xF0..=0xFF` stall (when stalls are allowed and the
/// previous call did not stall), `0x00..=0x7F` move 1 to 128 bytes, anything
/// else moves as much as the call asks for.
pub fn decode(byte: u8, stalls_allowed: bool) -> Move {
    match byte {
        0xF0..=0xFF if stalls_allowed => Move::Stall,
        0x00..=0x7F => Move::UpTo(usize::from(byte) + 1),
        _ => Move::UpTo(usize::MAX),
    }
}

/// A cyclic plan of moves; the empty plan moves everything and never stalls.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    bytes: &'a [u8],
    next: usize,
    stalls: bool,
    just_stalled: bool,
    /// Stalls injected so far.
    pub stalled: usize,
}

impl<'a> Plan<'a> {
    /// A plan cycling through `bytes`; `stalls` enables stall injection.
    pub fn new(bytes: &'a [u8], stalls: bool) -> Self {
        Self {
            bytes,
            next: 0,
            stalls,
            just_stalled: false,
            stalled: 0,
        }
    }

    /// The next move. Two stalls never follow each other, so every retry
    /// after a stall makes progress.
    pub fn next_move(&mut self) -> Move {
        let Some(&byte) = self.bytes.get(self.next % self.bytes.len().max(1)) else {
            return Move::UpTo(usize::MAX);
        };
        self.next = self.next.wrapping_add(1);
        let mv = decode(byte, self.stalls && !self.just_stalled);
        self.just_stalled = mv == Move::Stall;
        if self.just_stalled {
            self.stalled += 1;
        }
        mv
    }
}

/// A blocking transport that reads `input` and records what is written.
#[derive(Debug)]
pub struct Script<'a> {
    input: &'a [u8],
    pos: usize,
    plan: Plan<'a>,
    /// Every byte written, in order.
    pub written: Vec<u8>,
    /// Flushes that succeeded.
    pub flushes: usize,
}

impl<'a> Script<'a> {
    /// Reads `input` and writes into a buffer, moving bytes as `plan` says.
    pub fn new(input: &'a [u8], plan: Plan<'a>) -> Self {
        Self {
            input,
            pos: 0,
            plan,
            written: Vec::new(),
            flushes: 0,
        }
    }

    /// Bytes of the input read so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }

    /// Stalls injected so far.
    pub fn stalls(&self) -> usize {
        self.plan.stalled
    }
}

impl ErrorType for Script<'_> {
    type Error = Stall;
}

impl Read for Script<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Stall> {
        let Move::UpTo(max) = self.plan.next_move() else {
            return Err(Stall);
        };
        let rest = &self.input[self.pos..];
        let n = buf.len().min(max).min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Script<'_> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Stall> {
        let Move::UpTo(max) = self.plan.next_move() else {
            return Err(Stall);
        };
        let n = buf.len().min(max);
        self.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), Stall> {
        if self.plan.next_move() == Move::Stall {
            return Err(Stall);
        }
        self.flushes += 1;
        Ok(())
    }
}

/// Calls `op` again while it fails with a stall, as the driver docs ask.
/// Panics if it never stops stalling.
pub fn retry<T>(mut op: impl FnMut() -> Result<T, crate::Error>) -> Result<T, crate::Error> {
    for _ in 0..crate::MAX_RETRIES {
        match op() {
            Err(tinyproto::Error::Io(Stall)) => continue,
            other => return other,
        }
    }
    panic!(
        "operation keeps stalling: no progress after {} retries",
        crate::MAX_RETRIES
    );
}

/// Chunk sizes cycling through the plan bytes (1..=256 bytes each),
/// everything at once for an empty plan.
pub fn sizes(plan: &[u8]) -> impl FnMut() -> usize + '_ {
    let mut i = 0usize;
    move || {
        i = i.wrapping_add(1);
        match plan.get(i % plan.len().max(1)) {
            Some(&b) => usize::from(b) + 1,
            None => usize::MAX,
        }
    }
}

/// Receives one message with `begin_receive(limit)`, reading it through
/// chunks of `next_size()` bytes. A stall mid-payload either retries the read
/// (odd chunk size) or drops the reader and calls `begin_receive` again
/// (even size): both must resume the same message. Checks that the reader
/// never yields more than the announced length.
pub fn receive_chunked(
    conn: &mut Connection<Script<'_>>,
    limit: u32,
    next_size: &mut impl FnMut() -> usize,
) -> Result<Vec<u8>, crate::Error> {
    let mut chunk = [0u8; 256];
    let mut got = Vec::new();
    let mut announced = None;
    for _ in 0..crate::MAX_RETRIES {
        let mut reader = match conn.begin_receive(limit) {
            Ok(reader) => reader,
            Err(tinyproto::Error::Io(Stall)) => continue,
            Err(e) => return Err(e),
        };
        let len = reader.len();
        assert_eq!(
            *announced.get_or_insert(len),
            len,
            "resumed another message"
        );
        assert!(len <= limit, "accepted over the limit");
        assert_eq!(reader.remaining() as usize, len as usize - got.len());
        loop {
            let n = next_size().min(chunk.len());
            match reader.read(&mut chunk[..n]) {
                Ok(0) => {
                    assert_eq!(reader.remaining(), 0);
                    assert_eq!(got.len(), len as usize, "ended early");
                    assert_eq!(reader.read(&mut chunk), Ok(0), "read past the end");
                    return Ok(got);
                }
                Ok(k) => {
                    assert!(k <= n);
                    got.extend_from_slice(&chunk[..k]);
                    assert!(got.len() <= len as usize, "delivered more than announced");
                }
                Err(tinyproto::Error::Io(Stall)) if n.is_multiple_of(2) => break,
                Err(tinyproto::Error::Io(Stall)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    panic!("begin_receive keeps stalling");
}

/// Sends one message with `begin_transmit`, writing it in chunks of
/// `next_size()` bytes. A stall either retries the write (odd size) or
/// drops the writer and calls `begin_transmit` again (even size).
pub fn transmit_chunked(
    conn: &mut Connection<Script<'_>>,
    msg: &[u8],
    next_size: &mut impl FnMut() -> usize,
) -> Result<(), crate::Error> {
    for _ in 0..crate::MAX_RETRIES {
        let mut writer = match conn.begin_transmit(msg.len() as u32) {
            Ok(writer) => writer,
            Err(tinyproto::Error::Io(Stall)) => continue,
            Err(e) => return Err(e),
        };
        let resumed = loop {
            let offset = msg.len() - writer.remaining() as usize;
            if offset == msg.len() {
                break false;
            }
            let n = next_size().min(msg.len() - offset);
            match writer.write(&msg[offset..offset + n]) {
                Ok(k) => assert!(k >= 1 && k <= n),
                Err(tinyproto::Error::Io(Stall)) if n.is_multiple_of(2) => break true,
                Err(tinyproto::Error::Io(Stall)) => {}
                Err(e) => return Err(e),
            }
        };
        if resumed {
            continue;
        }
        match writer.finish() {
            Err(tinyproto::Error::Io(Stall)) => continue,
            other => return other,
        }
    }
    panic!("begin_transmit keeps stalling");
}
