//! Target `session`: an `arbitrary` sequence of operations on one async
//! `Connection` against a reactive scripted peer, checked against a simple
//! reference model of the protocol.
//!
//! Operations: `Transmit` (the peer accepts or rejects the length),
//! `Receive` (the peer sends a message; we offer some capacity), `Stall`
//! (a later transport call fails; the operation is called again), `Cancel`
//! (the next operation's future is dropped after N polls over a transport
//! that returns `Pending`; while it is half done another operation must fail
//! with `InProgress` and touch nothing; then it is called again and must
//! finish as if never interrupted), `Close` (the peer's stream ends after
//! N more bytes, possibly mid-message) and `Collide` (the peer starts a
//! message of its own while we send ours: `Conflict`).
//!
//! Asserts: every result equals the model's (`Ok`, `Rejected`, `Conflict`, `TooLarge`,
//! `Closed`, `UnexpectedEof` with its phase, greeting errors, `Broken`); the
//! peer parses exactly the bytes the model expects (a message reaches it
//! whole or not at all; our statuses are the model's); nothing is delivered
//! partially; the driver never reads a byte the peer would not send and
//! never touches the transport once broken. The peer sees our bytes only
//! when we flush: the driver must flush before it waits to read, and every
//! call that leaves the connection usable must return flushed.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use arbitrary::{Arbitrary, Unstructured};
use tinyproto::asynch::Connection;
use tinyproto::embedded_io_async::{ErrorType, Read, Write};
use tinyproto::{Phase, MAX_MESSAGE_LEN};

use crate::{Error, Stall};

/// At most this many operations per input.
const MAX_OPS: usize = 64;
/// Polls after which an uncancelled operation counts as stuck.
const MAX_POLLS: usize = 1 << 22;

/// One step of the session.
#[derive(Debug, Clone, Arbitrary)]
pub enum Op {
    /// We send `payload`; the peer answers 0xFF if `accept`, else 0x00.
    Transmit {
        /// The message.
        payload: Vec<u8>,
        /// The peer's answer to our length.
        accept: bool,
    },
    /// The peer sends `payload`; we receive into a buffer of `capacity`.
    Receive {
        /// The message.
        payload: Vec<u8>,
        /// Our buffer's length.
        capacity: u8,
    },
    /// The `after % 16`-th transport call from now fails once.
    Stall {
        /// Calls to let through first.
        after: u8,
    },
    /// The next transmit or receive is dropped after `polls` polls (if not
    /// done by then), then called again.
    Cancel {
        /// Polls before the drop.
        polls: u8,
    },
    /// The peer's stream ends after `after` more bytes.
    Close {
        /// Bytes the peer still sends.
        after: u8,
    },
    /// We send `payload` while the peer starts a message of its own at the
    /// same moment: where the answer to our length is due comes the first
    /// byte of its length, `0x01 + first % 0xF0` (a length of 16 MiB or
    /// more, so the byte cannot be a status). We must report `Conflict`,
    /// send no payload and be broken.
    Collide {
        /// The message.
        payload: Vec<u8>,
        /// Picks the first byte of the peer's length.
        first: u8,
    },
}

/// The whole scenario.
#[derive(Debug, Arbitrary)]
pub struct Input {
    /// The peer's greeting byte is 0xFF unless this is 0xF0 or more, then
    /// it is this byte (0xFE: connection limit; others: protocol error).
    pub greeting: u8,
    /// `set_max_message_len`, if any.
    pub max_len: Option<u8>,
    /// Transport moves: bit 7 returns `Pending` once first, the low seven
    /// bits cap the bytes moved (`0x7F`: no cap). Empty: no pending, no cap.
    pub plan: Vec<u8>,
    /// The operations.
    pub ops: Vec<Op>,
}

/// Runs one fuzz input.
pub fn run(data: &[u8]) {
    if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        check(&input);
    }
}

/// A future that is pending once (waking itself), then ready.
#[derive(Default)]
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// What the peer is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PeerState {
    /// Between messages: any byte from us is out of step.
    Idle,
    /// We transmit: collecting our length, then answering `accept`.
    AwaitLength { accept: bool, got: Vec<u8> },
    /// We transmit: collecting the accepted payload.
    AwaitPayload { len: usize, got: Vec<u8> },
    /// We receive: our status for `payload` is due.
    AwaitStatus { payload: Vec<u8> },
    /// Both send: collecting our length, then sending its own (first byte
    /// `first`) instead of an answer.
    Collide { first: u8, got: Vec<u8> },
    /// After a collision: out of step for good, any byte from us is wrong.
    Collided,
}

/// What the peer does next, once it is between messages.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PeerAction {
    /// Take a message from us, answering `accept`.
    Expect { accept: bool },
    /// Send `payload` to us.
    Send { payload: Vec<u8> },
    /// Take our length, then send a length of its own starting with `first`.
    Collide { first: u8 },
}

/// A reactive peer that follows the protocol by the letter (written
/// independently of tinyproto's machines), behind a transport that pends,
/// splits and stalls as the plan says.
#[derive(Debug)]
struct Sim {
    plan: Vec<u8>,
    next: usize,
    /// The call (counted from 0) that fails with a stall, if armed.
    stall_in: Option<usize>,
    /// Transport calls that completed (moved bytes or failed).
    calls: usize,
    /// Bytes the peer has sent that we have not read.
    inbound: VecDeque<u8>,
    /// Bytes we may still read before the peer's stream ends.
    budget: Option<usize>,
    /// Our greeting arrived.
    our_greeting: bool,
    state: PeerState,
    /// The peer's next exchange, queued until the current one ends.
    queued: Option<PeerAction>,
    /// Messages that reached the peer whole.
    received: Vec<Vec<u8>>,
    /// Every status byte we answered to the peer's lengths.
    statuses: Vec<u8>,
    /// Bytes we wrote; the peer sees them only once we flush.
    outbox: Vec<u8>,
    written: usize,
}

impl Sim {
    fn new(greeting: u8, plan: Vec<u8>) -> Self {
        Self {
            plan,
            next: 0,
            stall_in: None,
            calls: 0,
            inbound: VecDeque::from([greeting]),
            budget: None,
            our_greeting: false,
            state: PeerState::Idle,
            queued: None,
            received: Vec::new(),
            statuses: Vec::new(),
            outbox: Vec::new(),
            written: 0,
        }
    }

    /// Starts a transport call: maybe pend once, maybe stall; returns the
    /// most bytes the call may move.
    async fn begin_call(&mut self) -> Result<usize, Stall> {
        let byte = self.plan.get(self.next % self.plan.len().max(1)).copied();
        self.next = self.next.wrapping_add(1);
        if byte.is_some_and(|b| b & 0x80 != 0) {
            YieldOnce::default().await;
        }
        let call = self.calls;
        self.calls += 1;
        if self.stall_in == Some(call) {
            self.stall_in = None;
            return Err(Stall);
        }
        Ok(match byte.map(|b| b & 0x7F) {
            None | Some(0x7F) => usize::MAX,
            Some(n) => usize::from(n) + 1,
        })
    }

    /// The peer reads one byte we wrote.
    fn on_byte(&mut self, byte: u8) {
        if !self.our_greeting {
            assert_eq!(byte, 0xFF, "our greeting");
            self.our_greeting = true;
            return;
        }
        match &mut self.state {
            PeerState::Idle => panic!("byte {byte:#04x} from us between messages"),
            PeerState::AwaitLength { accept, got } => {
                got.push(byte);
                if got.len() == 4 {
                    let len = u32::from_be_bytes(got[..].try_into().unwrap()) as usize;
                    let accept = *accept;
                    self.inbound.push_back(if accept { 0xFF } else { 0x00 });
                    self.state = if !accept {
                        PeerState::Idle
                    } else if len == 0 {
                        self.received.push(Vec::new());
                        PeerState::Idle
                    } else {
                        PeerState::AwaitPayload {
                            len,
                            got: Vec::new(),
                        }
                    };
                }
            }
            PeerState::AwaitPayload { len, got } => {
                got.push(byte);
                if got.len() == *len {
                    self.received.push(std::mem::take(got));
                    self.state = PeerState::Idle;
                }
            }
            PeerState::Collide { first, got } => {
                got.push(byte);
                if got.len() == 4 {
                    self.inbound.extend([*first, 0, 0, 1]);
                    self.state = PeerState::Collided;
                }
            }
            PeerState::Collided => panic!("byte {byte:#04x} from us after a conflict"),
            PeerState::AwaitStatus { payload } => {
                self.statuses.push(byte);
                match byte {
                    0xFF => self.inbound.extend(payload.iter()),
                    0x00 => {}
                    _ => panic!("status byte {byte:#04x} from us"),
                }
                self.state = PeerState::Idle;
            }
        }
    }

    /// Sets the peer up for our transmit, once it is done with the last
    /// exchange.
    fn expect_message(&mut self, accept: bool) {
        self.queue(PeerAction::Expect { accept });
    }

    /// Lets the peer start sending `payload` once it is done with the last
    /// exchange.
    fn send_message(&mut self, payload: &[u8]) {
        self.queue(PeerAction::Send {
            payload: payload.to_vec(),
        });
    }

    /// Lets the peer collide with our next transmit.
    fn collide(&mut self, first: u8) {
        self.queue(PeerAction::Collide { first });
    }

    fn queue(&mut self, action: PeerAction) {
        assert!(
            self.queued.is_none(),
            "the peer never finished the last exchange"
        );
        self.queued = Some(action);
        self.start_next();
    }

    /// Starts the queued action if the peer is between messages.
    fn start_next(&mut self) {
        if self.state != PeerState::Idle {
            return;
        }
        match self.queued.take() {
            None => {}
            Some(PeerAction::Expect { accept }) => {
                self.state = PeerState::AwaitLength {
                    accept,
                    got: Vec::new(),
                };
            }
            Some(PeerAction::Collide { first }) => {
                self.state = PeerState::Collide {
                    first,
                    got: Vec::new(),
                };
            }
            Some(PeerAction::Send { payload }) => {
                self.inbound
                    .extend((payload.len() as u32).to_be_bytes().iter());
                self.state = PeerState::AwaitStatus { payload };
            }
        }
    }

    /// A snapshot of everything an operation might change.
    fn footprint(&self) -> (usize, usize, usize) {
        (self.calls, self.written, self.inbound.len())
    }
}

impl ErrorType for Sim {
    type Error = Stall;
}

impl Read for Sim {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Stall> {
        let max = self.begin_call().await?;
        assert!(
            self.outbox.is_empty(),
            "the driver waits to read with unflushed bytes the peer cannot see"
        );
        if self.budget == Some(0) {
            return Ok(0);
        }
        assert!(
            !self.inbound.is_empty(),
            "the driver waits for a byte the peer never sends (out of step)"
        );
        let n = buf
            .len()
            .min(max)
            .min(self.inbound.len())
            .min(self.budget.unwrap_or(usize::MAX));
        for slot in &mut buf[..n] {
            *slot = self.inbound.pop_front().unwrap();
        }
        if let Some(b) = &mut self.budget {
            *b -= n;
        }
        Ok(n)
    }
}

impl Write for Sim {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Stall> {
        let max = self.begin_call().await?;
        let n = buf.len().min(max);
        self.outbox.extend_from_slice(&buf[..n]);
        self.written += n;
        Ok(n)
    }

    async fn flush(&mut self) -> Result<(), Stall> {
        self.begin_call().await?;
        for byte in std::mem::take(&mut self.outbox) {
            self.on_byte(byte);
            self.start_next();
        }
        Ok(())
    }
}

/// Polls `future` at most `max_polls` times; `None` if it was not done by
/// then (the caller then drops it: a cancellation).
fn drive<F: Future>(future: F, max_polls: usize) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..max_polls {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return Some(out);
        }
    }
    None
}

/// The reference model of our end of the connection.
#[derive(Debug)]
struct Model {
    broken: bool,
    greeted: bool,
    peer_greeting: u8,
    budget: Option<usize>,
    max_len: u32,
    received: Vec<Vec<u8>>,
    statuses: Vec<u8>,
}

impl Model {
    /// Takes `n` bytes from the peer's stream; false if it ends first (then
    /// whatever was left is gone).
    fn take(&mut self, n: usize) -> bool {
        match &mut self.budget {
            None => true,
            Some(b) if *b >= n => {
                *b -= n;
                true
            }
            Some(b) => {
                *b = 0;
                false
            }
        }
    }

    fn fail(&mut self, e: Error) -> Result<Vec<u8>, Error> {
        if !e.is_recoverable() {
            self.broken = true;
        }
        Err(e)
    }

    /// The greeting every operation starts with.
    fn greet(&mut self) -> Result<(), Error> {
        if self.greeted {
            return Ok(());
        }
        if !self.take(1) {
            return Err(Error::UnexpectedEof {
                phase: Phase::Greeting,
            });
        }
        match self.peer_greeting {
            0xFF => {
                self.greeted = true;
                Ok(())
            }
            0xFE => Err(Error::ConnectionLimit),
            byte => Err(Error::UnexpectedByte {
                phase: Phase::Greeting,
                byte,
            }),
        }
    }

    fn transmit(&mut self, payload: &[u8], accept: bool) -> Result<Vec<u8>, Error> {
        if self.broken {
            return Err(Error::Broken);
        }
        if let Err(e) = self.greet() {
            return self.fail(e);
        }
        // An accepted empty message is whole at the peer once it answers,
        // whether or not its answer reaches us.
        if accept && payload.is_empty() {
            self.received.push(Vec::new());
        }
        if !self.take(1) {
            return self.fail(Error::UnexpectedEof {
                phase: Phase::Status,
            });
        }
        if accept {
            if !payload.is_empty() {
                self.received.push(payload.to_vec());
            }
            Ok(Vec::new())
        } else {
            self.fail(Error::Rejected {
                len: payload.len() as u32,
            })
        }
    }

    /// Our transmit meets the peer's own length where its answer is due.
    fn collide(&mut self, payload: &[u8]) -> Result<Vec<u8>, Error> {
        if self.broken {
            return Err(Error::Broken);
        }
        if let Err(e) = self.greet() {
            return self.fail(e);
        }
        let _ = payload; // none of it is sent
        if !self.take(1) {
            return self.fail(Error::UnexpectedEof {
                phase: Phase::Status,
            });
        }
        self.fail(Error::Conflict)
    }

    fn receive(&mut self, payload: &[u8], capacity: usize) -> Result<Vec<u8>, Error> {
        if self.broken {
            return Err(Error::Broken);
        }
        if let Err(e) = self.greet() {
            return self.fail(e);
        }
        if self.budget == Some(0) {
            return self.fail(Error::Closed);
        }
        if !self.take(4) {
            return self.fail(Error::UnexpectedEof {
                phase: Phase::Length,
            });
        }
        let cap = capacity.min(self.max_len as usize);
        if payload.len() > cap {
            self.statuses.push(0x00);
            return self.fail(Error::TooLarge {
                len: payload.len() as u32,
                capacity: cap as u32,
            });
        }
        self.statuses.push(0xFF);
        if !self.take(payload.len()) {
            return self.fail(Error::UnexpectedEof {
                phase: Phase::Payload,
            });
        }
        Ok(payload.to_vec())
    }
}

/// Checks one scenario.
pub fn check(input: &Input) {
    let peer_greeting = if input.greeting >= 0xF0 {
        input.greeting
    } else {
        0xFF
    };
    let mut conn = Connection::new(Sim::new(peer_greeting, input.plan.clone()));
    let mut model = Model {
        broken: false,
        greeted: false,
        peer_greeting,
        budget: None,
        max_len: MAX_MESSAGE_LEN,
        received: Vec::new(),
        statuses: Vec::new(),
    };
    if let Some(max) = input.max_len {
        conn.set_max_message_len(max.into());
        model.max_len = max.into();
    }
    let mut cancel: Option<usize> = None;

    for op in input.ops.iter().take(MAX_OPS) {
        let before = conn.get_ref().footprint();
        let was_broken = model.broken;
        let (got, want) = match op {
            Op::Stall { after } => {
                let sim = conn.get_mut();
                sim.stall_in = Some(sim.calls + usize::from(after % 16));
                continue;
            }
            Op::Cancel { polls } => {
                cancel = Some(usize::from(*polls));
                continue;
            }
            Op::Close { after } => {
                let after = usize::from(*after);
                let sim = conn.get_mut();
                sim.budget = Some(sim.budget.map_or(after, |b| b.min(after)));
                model.budget = Some(model.budget.map_or(after, |b| b.min(after)));
                continue;
            }
            Op::Transmit { payload, accept } => {
                if !model.broken {
                    conn.get_mut().expect_message(*accept);
                }
                let want = model.transmit(payload, *accept);
                let got = run_to_end(&mut conn, Kind::Transmit, cancel.take(), |conn, polls| {
                    drive(conn.transmit(payload), polls).map(|r| r.map(|()| Vec::new()))
                });
                (got, want)
            }
            Op::Collide { payload, first } => {
                let first = 0x01 + first % 0xF0;
                if !model.broken {
                    conn.get_mut().collide(first);
                }
                let want = model.collide(payload);
                let got = run_to_end(&mut conn, Kind::Transmit, cancel.take(), |conn, polls| {
                    drive(conn.transmit(payload), polls).map(|r| r.map(|()| Vec::new()))
                });
                (got, want)
            }
            Op::Receive { payload, capacity } => {
                if !model.broken {
                    conn.get_mut().send_message(payload);
                }
                let want = model.receive(payload, usize::from(*capacity));
                let mut buf = vec![0u8; usize::from(*capacity)];
                let got = run_to_end(&mut conn, Kind::Receive, cancel.take(), |conn, polls| {
                    drive(conn.receive(&mut buf), polls).map(|r| r.map(<[u8]>::to_vec))
                });
                (got, want)
            }
        };
        assert_eq!(got, want, "{op:?}");
        if !model.broken {
            assert!(
                conn.get_ref().outbox.is_empty(),
                "{op:?} returned with bytes unflushed"
            );
        }
        assert_eq!(conn.is_broken(), model.broken, "broken after {op:?}");
        assert!(!conn.is_in_progress(), "still in progress after {op:?}");
        if was_broken {
            assert_eq!(
                conn.get_ref().footprint(),
                before,
                "touched the transport while broken"
            );
        }
    }
    let sim = conn.get_ref();
    assert_eq!(sim.received, model.received, "messages the peer got");
    assert_eq!(sim.statuses, model.statuses, "statuses we answered");
}

/// Runs one operation to its end: if `cancel` is set, the first attempt is
/// dropped after that many polls; while the operation is then half done,
/// another operation must fail with `InProgress` without touching the
/// transport. Stalls are answered by calling the operation again.
fn run_to_end(
    conn: &mut Connection<Sim>,
    kind: Kind,
    mut cancel: Option<usize>,
    mut op: impl FnMut(&mut Connection<Sim>, usize) -> Option<Result<Vec<u8>, Error>>,
) -> Result<Vec<u8>, Error> {
    for _ in 0..crate::MAX_RETRIES {
        let polls = cancel.take().unwrap_or(MAX_POLLS);
        match op(conn, polls) {
            None if polls == MAX_POLLS => panic!("operation stuck after {MAX_POLLS} polls"),
            None => {
                if conn.is_in_progress() {
                    check_in_progress(conn, kind);
                }
            }
            Some(Err(Error::Io(Stall))) => {}
            Some(result) => return result,
        }
    }
    panic!("operation keeps stalling");
}

/// Which operation is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Transmit,
    Receive,
}

/// While a message is half done, the other operation fails at once with
/// `InProgress` and changes nothing. (Calling the *same* operation again
/// resumes it, so that is not tried here.)
fn check_in_progress(conn: &mut Connection<Sim>, running: Kind) {
    let before = conn.get_ref().footprint();
    let other = match running {
        Kind::Transmit => {
            let mut buf = [0u8; 8];
            drive(conn.receive(&mut buf), 1).map(|r| r.map(<[u8]>::to_vec))
        }
        Kind::Receive => drive(conn.transmit(b"interleaved"), 1).map(|r| r.map(|()| Vec::new())),
    };
    assert_eq!(other, Some(Err(Error::InProgress)), "{running:?} half done");
    assert_eq!(
        conn.get_ref().footprint(),
        before,
        "InProgress touched the transport"
    );
}
