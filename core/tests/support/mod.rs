//! A scripted transport shared by the driver tests: the peer's bytes are
//! fixed in advance, our bytes are captured, and a seeded generator decides
//! how many bytes each call moves and when a call fails with a retryable
//! error (blocking) or returns `Pending` (async).

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

/// Retryable transport errors a non-blocking socket produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockError {
    WouldBlock,
    Interrupted,
}

impl core::fmt::Display for MockError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl core::error::Error for MockError {}

impl embedded_io::Error for MockError {
    fn kind(&self) -> embedded_io::ErrorKind {
        match self {
            MockError::WouldBlock => embedded_io::ErrorKind::Other,
            MockError::Interrupted => embedded_io::ErrorKind::Interrupted,
        }
    }
}

/// How a [`ScriptIo`] splits and disturbs the stream.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Largest number of bytes one call moves (at least 1).
    pub max_chunk: usize,
    /// Out of 256: how often a call fails (blocking) or pends (async).
    pub disturb: u8,
    pub seed: u64,
}

impl Shape {
    /// Whole buffers, no disturbance.
    pub const WHOLE: Shape = Shape {
        max_chunk: usize::MAX,
        disturb: 0,
        seed: 1,
    };
}

pub struct ScriptIo {
    input: Vec<u8>,
    pos: usize,
    pub output: Vec<u8>,
    shape: Shape,
    rng: u64,
    /// Set by an async call that returned `Pending` once already.
    yielded: bool,
    /// At the end of the input: stall (WouldBlock / Pending) instead of EOF.
    pub stall_at_end: bool,
    /// How much of `output` had been flushed at the last flush.
    pub flushed: usize,
}

impl ScriptIo {
    pub fn new(input: Vec<u8>, shape: Shape) -> Self {
        Self {
            input,
            pos: 0,
            output: Vec::new(),
            shape,
            rng: shape.seed | 1,
            yielded: false,
            stall_at_end: false,
            flushed: 0,
        }
    }

    /// More bytes from the peer.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    fn stalled(&self, buf: &[u8]) -> bool {
        self.stall_at_end && !buf.is_empty() && self.pos == self.input.len()
    }

    /// Bytes of the input not read yet.
    pub fn unread(&self) -> &[u8] {
        &self.input[self.pos..]
    }

    fn next(&mut self) -> u64 {
        // xorshift64: deterministic per seed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn disturbed(&mut self) -> bool {
        (self.next() & 0xFF) < self.shape.disturb as u64
    }

    fn chunk(&mut self, want: usize) -> usize {
        let max = self.shape.max_chunk.max(1);
        let n = if max == usize::MAX {
            want
        } else {
            1 + (self.next() as usize % max)
        };
        n.min(want)
    }

    fn error(&mut self) -> MockError {
        if self.next() & 1 == 0 {
            MockError::WouldBlock
        } else {
            MockError::Interrupted
        }
    }

    fn do_read(&mut self, buf: &mut [u8]) -> usize {
        let n = self.chunk(buf.len().min(self.input.len() - self.pos));
        buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
        self.pos += n;
        n
    }

    fn do_write(&mut self, buf: &[u8]) -> usize {
        let n = self.chunk(buf.len());
        self.output.extend_from_slice(&buf[..n]);
        n
    }
}

impl embedded_io::ErrorType for ScriptIo {
    type Error = MockError;
}

impl embedded_io::Read for ScriptIo {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, MockError> {
        if self.stalled(buf) {
            return Err(MockError::WouldBlock);
        }
        if !buf.is_empty() && self.disturbed() {
            return Err(self.error());
        }
        Ok(self.do_read(buf))
    }
}

impl embedded_io::Write for ScriptIo {
    fn write(&mut self, buf: &[u8]) -> Result<usize, MockError> {
        if !buf.is_empty() && self.disturbed() {
            return Err(self.error());
        }
        Ok(self.do_write(buf))
    }

    fn flush(&mut self) -> Result<(), MockError> {
        if self.disturbed() {
            return Err(self.error());
        }
        self.flushed = self.output.len();
        Ok(())
    }
}

/// Returns `Pending` once when the script says so, then is ready.
struct MaybePending<'a>(&'a mut ScriptIo);

impl Future for MaybePending<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        let io = &mut *self.0;
        if !io.yielded && io.disturbed() {
            io.yielded = true;
            return Poll::Pending;
        }
        io.yielded = false;
        Poll::Ready(())
    }
}

impl embedded_io_async::Read for ScriptIo {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, MockError> {
        if self.stalled(buf) {
            core::future::pending::<()>().await;
        }
        MaybePending(self).await;
        Ok(self.do_read(buf))
    }
}

impl embedded_io_async::Write for ScriptIo {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, MockError> {
        MaybePending(self).await;
        Ok(self.do_write(buf))
    }

    async fn flush(&mut self) -> Result<(), MockError> {
        MaybePending(self).await;
        self.flushed = self.output.len();
        Ok(())
    }
}

/// Polls `future` at most `polls` times; `None` if it did not finish (it is
/// then dropped, which is how an async caller cancels).
pub fn poll_at_most<F: Future>(future: F, polls: usize) -> Option<F::Output> {
    let mut future = core::pin::pin!(future);
    let mut cx = Context::from_waker(core::task::Waker::noop());
    for _ in 0..polls {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return Some(out);
        }
    }
    None
}

/// One step of a session, and what the peer does about it.
#[derive(Debug, Clone)]
pub enum Op {
    /// We send `msg`; the peer accepts or rejects its length.
    Transmit { msg: Vec<u8>, accept: bool },
    /// The peer sends `msg`; we receive it into a buffer of `capacity`.
    Receive { msg: Vec<u8>, capacity: usize },
}

/// What a step returned, in a form both runs and the model can compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Received(Vec<u8>),
    Failed(tinyproto::Error<()>),
}

/// The reference model: the peer's script, the bytes we must write, and the
/// outcome of each step.
pub fn model(ops: &[Op]) -> (Vec<u8>, Vec<u8>, Vec<Outcome>) {
    let mut peer = vec![0xFF];
    let mut ours = vec![0xFF];
    let mut outcomes = Vec::new();
    for op in ops {
        match op {
            Op::Transmit { msg, accept } => {
                ours.extend_from_slice(&(msg.len() as u32).to_be_bytes());
                if *accept {
                    peer.push(0xFF);
                    ours.extend_from_slice(msg);
                    outcomes.push(Outcome::Sent);
                } else {
                    peer.push(0x00);
                    outcomes.push(Outcome::Failed(tinyproto::Error::Rejected {
                        len: msg.len() as u32,
                    }));
                }
            }
            Op::Receive { msg, capacity } => {
                peer.extend_from_slice(&(msg.len() as u32).to_be_bytes());
                if msg.len() <= *capacity {
                    ours.push(0xFF);
                    peer.extend_from_slice(msg);
                    outcomes.push(Outcome::Received(msg.clone()));
                } else {
                    ours.push(0x00);
                    outcomes.push(Outcome::Failed(tinyproto::Error::TooLarge {
                        len: msg.len() as u32,
                        capacity: *capacity as u32,
                    }));
                }
            }
        }
    }
    (peer, ours, outcomes)
}

pub fn outcome<E>(r: Result<Option<Vec<u8>>, tinyproto::Error<E>>) -> Outcome {
    match r {
        Ok(None) => Outcome::Sent,
        Ok(Some(msg)) => Outcome::Received(msg),
        Err(e) => Outcome::Failed(e.map_io(|_| ())),
    }
}

/// Runs `ops` on the blocking driver, retrying each step after every
/// retryable transport error (a superloop's way). Stops after the first
/// protocol error.
pub fn run_blocking(ops: &[Op], io: ScriptIo) -> (Vec<Outcome>, ScriptIo) {
    let mut conn = tinyproto::blocking::Connection::new(io);
    let mut outcomes = Vec::new();
    loop {
        match conn.greet() {
            Err(tinyproto::Error::Io(_)) => continue,
            Ok(()) => break,
            Err(e) => {
                return (
                    vec![outcome::<()>(Err(e.map_io(|_| ())))],
                    conn.into_inner(),
                )
            }
        }
    }
    for op in ops {
        let mut buf = vec![
            0u8;
            match op {
                Op::Receive { capacity, .. } => *capacity,
                Op::Transmit { .. } => 0,
            }
        ];
        let result = loop {
            let r = match op {
                Op::Transmit { msg, .. } => conn.transmit(msg).map(|()| None),
                Op::Receive { .. } => conn.receive(&mut buf).map(|m| Some(m.to_vec())),
            };
            match r {
                Err(tinyproto::Error::Io(_)) => continue,
                r => break r,
            }
        };
        let stop = matches!(&result, Err(e) if !e.is_recoverable());
        outcomes.push(outcome(result));
        if stop {
            break;
        }
    }
    (outcomes, conn.into_inner())
}

/// Runs `ops` on the async driver, cancelling every call after `polls`
/// polls and calling it again until it finishes.
pub fn run_async_cancelling(ops: &[Op], io: ScriptIo, polls: usize) -> (Vec<Outcome>, ScriptIo) {
    let mut conn = tinyproto::asynch::Connection::new(io);
    let mut outcomes = Vec::new();
    let mut greeted = None;
    for _ in 0..1000 {
        greeted = poll_at_most(conn.greet(), polls);
        if greeted.is_some() {
            break;
        }
    }
    if let Some(Err(e)) = greeted {
        return (
            vec![outcome::<()>(Err(e.map_io(|_| ())))],
            conn.into_inner(),
        );
    }
    for op in ops {
        let mut buf = vec![
            0u8;
            match op {
                Op::Receive { capacity, .. } => *capacity,
                Op::Transmit { .. } => 0,
            }
        ];
        let mut result = None;
        for _ in 0..100_000 {
            let r = match op {
                Op::Transmit { msg, .. } => {
                    poll_at_most(conn.transmit(msg), polls).map(|r| r.map(|()| None))
                }
                Op::Receive { .. } => {
                    poll_at_most(conn.receive(&mut buf), polls).map(|r| r.map(|m| Some(m.to_vec())))
                }
            };
            if let Some(r) = r {
                result = Some(r);
                break;
            }
        }
        let result = result.expect("a step never finished");
        let stop = matches!(&result, Err(e) if !e.is_recoverable());
        outcomes.push(outcome(result));
        if stop {
            break;
        }
    }
    (outcomes, conn.into_inner())
}
