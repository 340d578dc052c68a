//! One connection on an event thread ([`Served`]): the task in flight,
//! driven through the core's [`Machine`] until its I/O would block, with
//! its deadlines, its room in the memory budget, the hooks, and its end.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Poll, Token};
use tinyproto::duplex::{self, Direction};
use tinyproto::{FlushPolicy, Machine, Moved, Step};

use super::handler::{EventConn, EventHandler, Outgoing};
use super::wire::Wire;
use crate::budget::{Lease, NoRoom};
use crate::config::SharedConfig;
use crate::conn::{chunk_buffer_len, release, Owner, FIRST_STEP, RECEIVE_CHUNK};
use crate::connections::{Ended, LoopEvent, Shared};
use crate::error::{Deadline, Error};
use crate::handler::{panic_message, Take};
use crate::id::ConnId;
use crate::sleep::Mailbox;

/// A message waiting for room in the memory budget looks again this often.
const BUDGET_RETRY: Duration = Duration::from_millis(5);

/// At most this many of the peer's messages are taken before one of ours
/// goes out (as for a connection thread).
const MAX_TAKEN_BEFORE_SEND: usize = 64;

/// Runs one operation of `$served`'s machine until it is done (`Some`, with
/// its result) or its I/O would block (`None`); `?` on a socket's failure.
macro_rules! run {
    ($served:ident, $op:expr) => {
        loop {
            let moved = match $op {
                Step::Done(result) => break Some(result.map_err(protocol)),
                Step::Io(io) => $served.wire.perform(io)?,
            };
            let Some(moved) = moved else {
                break None;
            };
            if let Err(e) = $served.machine.moved(moved) {
                break Some(Err(protocol(e)));
            }
        }
    };
}

/// A connection handed to an event thread.
pub(crate) struct NewConn {
    pub(crate) id: ConnId,
    pub(crate) stream: Arc<TcpStream>,
    pub(crate) peer: SocketAddr,
    pub(crate) cfg: SharedConfig,
    pub(crate) owner: Owner,
    pub(crate) handler: Box<dyn EventHandler>,
    pub(crate) mailbox: Arc<Mailbox>,
    /// A client's `connect_to`, waiting for the greeting's outcome (no hook
    /// runs for a connection whose greeting failed: the caller is told).
    pub(crate) caller: Option<Sender<Result<(), Error>>>,
}

/// What a connection is doing.
#[derive(Debug)]
enum Task {
    /// Exchanging the greeting.
    Greet,
    /// Between messages: the peer's next length, or ours to send.
    Idle,
    /// A length arrived: the handler decides, and room is leased.
    Decide(u32),
    /// Answering 0xFF to a length of `len` (`chunked`: to the handler in
    /// chunks).
    Accept { len: u32, chunked: bool },
    /// The payload of a message of `len` bytes arriving.
    Payload { len: u32, chunked: bool },
    /// Answering 0x00, with the reason for the loop, if any.
    Reject(Option<Error>),
    /// The first message of the outbox going out.
    Send,
}

/// A connection on an event thread.
pub(super) struct Served {
    conn: EventConn,
    handler: Box<dyn EventHandler>,
    machine: Machine,
    pub(super) wire: Wire,
    task: Task,
    /// The whole message arriving, or the chunk buffer.
    msg: Vec<u8>,
    /// The room `msg` holds in the memory budget.
    lease: Option<Lease>,
    /// The first message of the outbox is going out.
    in_flight: bool,
    /// It, through the plugins, if they changed it.
    transformed: Option<Vec<u8>>,
    /// The deadline that ends the connection.
    deadline: Option<(Instant, Deadline)>,
    /// When to look again for room in the budget.
    retry_at: Option<Instant>,
    /// When `loop_pass` runs next, if an interval is set.
    next_pass: Option<Instant>,
    /// The timer this connection has in its thread's heap.
    pub(super) scheduled: Option<Instant>,
    /// The peer's messages taken while one of ours waited.
    taken_while_due: usize,
    /// A duplex server's connection: its first message is its hello.
    hello_due: bool,
    /// Who waits for the greeting's outcome (a client's `connect_to`).
    caller: Option<Sender<Result<(), Error>>>,
}

impl Served {
    pub(super) fn new(new: NewConn) -> Self {
        let NewConn {
            id,
            stream,
            peer,
            cfg,
            owner,
            handler,
            mailbox,
            caller,
        } = new;
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let now = Instant::now();
        let mut machine = Machine::new();
        machine.set_flush_policy(FlushPolicy::BeforeRead);
        machine.set_max_message_len(cfg.max_message_len);
        Self {
            deadline: Some((now + cfg.timeouts.greeting, Deadline::Greeting)),
            next_pass: cfg.loop_pass_interval.map(|i| now + i),
            conn: EventConn {
                id,
                peer,
                local,
                cfg,
                owner,
                outbox: VecDeque::new(),
                stop: false,
                direction: None,
                #[cfg(feature = "tls")]
                identity: None,
                mailbox,
                last_activity: now,
            },
            handler,
            machine,
            wire: Wire::new(stream),
            task: Task::Greet,
            msg: Vec::new(),
            lease: None,
            in_flight: false,
            transformed: None,
            retry_at: None,
            scheduled: None,
            taken_while_due: 0,
            hello_due: false,
            caller,
        }
    }

    /// Makes the socket non-blocking and registers it with `poll`; starts
    /// TLS on it if the server serves TLS.
    pub(super) fn register(&mut self, poll: &Poll) -> io::Result<()> {
        #[cfg(feature = "tls")]
        if let Some(side) = &self.conn.cfg.tls {
            self.wire.start_tls(side)?;
        }
        let socket = self.wire.socket();
        socket.set_nonblocking(true)?;
        socket.set_nodelay(self.conn.cfg.nodelay)?;
        poll.registry().register(
            &mut SourceFd(&socket.as_raw_fd()),
            Token(self.conn.id.as_u64() as usize),
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    /// Moves the connection on until its I/O would block: `None`, or the
    /// connection's end.
    pub(super) fn drive(&mut self) -> Option<Result<(), Error>> {
        match self.advance() {
            Ok(Some(())) => Some(Ok(())),
            Ok(None) => None,
            Err(e) if e.is_closed() => Some(Ok(())),
            Err(e) => Some(Err(e)),
        }
    }

    /// [`drive`](Self::drive): `Ok(None)` to wait, `Ok(Some(()))` at a
    /// normal end.
    fn advance(&mut self) -> Result<Option<()>, Error> {
        let now = Instant::now();
        if let Some((at, which)) = self.deadline {
            // A message waiting for room is refused at its deadline, not ended.
            if now >= at && !matches!(self.task, Task::Decide(_)) {
                return Err(Error::Timeout(which));
            }
        }

        loop {
            match &mut self.task {
                Task::Greet => {
                    let Some(greeted) = run!(self, self.machine.greet()) else {
                        return self.wait();
                    };
                    greeted?;
                    if let Some(caller) = self.caller.take() {
                        let _ = caller.send(Ok(()));
                    }
                    #[cfg(feature = "tls")]
                    {
                        self.conn.identity = self
                            .wire
                            .peer_certificate()
                            .and_then(crate::tls::PeerIdentity::from_certificate);
                    }
                    self.task = Task::Idle;
                    if self.conn.cfg.duplex {
                        // A duplex server's connection opens with its hello,
                        // within a greeting's time; `pre_loop` follows it.
                        let wait = self.conn.cfg.timeouts.greeting;
                        self.deadline = Some((Instant::now() + wait, Deadline::Greeting));
                        self.hello_due = true;
                    } else {
                        self.deadline = None;
                        self.hook(|h, conn| h.pre_loop(conn))?;
                    }
                }
                Task::Idle => {
                    if let Some(end) = self.between_messages(now)? {
                        return Ok(end);
                    }
                }
                Task::Decide(len) => {
                    let len = *len;
                    if !self.decide(len, now) {
                        return self.wait();
                    }
                }
                Task::Accept { len, chunked } => {
                    let (len, chunked) = (*len, *chunked);
                    let Some(accepted) = run!(self, self.machine.begin_receive(len)) else {
                        return self.wait();
                    };
                    accepted?;
                    self.task = Task::Payload { len, chunked };
                }
                Task::Payload { len, chunked } => {
                    let (len, chunked) = (*len, *chunked);
                    if !self.take_payload(len, chunked)? {
                        return self.wait();
                    }
                }
                Task::Reject(_) => {
                    let Some(rejected) = run!(self, self.machine.reject()) else {
                        return self.wait();
                    };
                    let len = rejected?;
                    self.message_done();
                    let Task::Reject(reason) = std::mem::replace(&mut self.task, Task::Idle) else {
                        unreachable!("matched above");
                    };
                    match reason {
                        None => log::info!("{}: rejected a message of {len} bytes", self.conn.id),
                        Some(reason) => self.hook(|_, _| Err(reason))?,
                    }
                }
                Task::Send => {
                    if !self.send_first()? {
                        return self.wait();
                    }
                }
            }
        }
    }

    /// Between messages: moves what other connections queued into the
    /// outbox, ends the connection if it is stopping and nothing is left,
    /// sends ours if nothing of the peer's is arriving, or reads the peer's
    /// length. `Some` to return from `advance`.
    fn between_messages(&mut self, now: Instant) -> Result<Option<Option<()>>, Error> {
        // What other connections queued, as far as the outbox has room
        // (the rest waits in the mailbox, whose room bounds theirs).
        let room = self
            .conn
            .cfg
            .queue_len
            .max(1)
            .saturating_sub(self.conn.outbox.len());
        {
            let mut inbox = self.conn.mailbox.lock();
            let taken = inbox.queued.len().min(room);
            self.conn
                .outbox
                .extend(inbox.queued.drain(..taken).map(Outgoing::Queued));
        }
        if self.next_pass.is_some_and(|at| now >= at) {
            self.next_pass = self.conn.cfg.loop_pass_interval.map(|i| now + i);
            self.hook(|h, conn| h.loop_pass(conn))?;
        }
        // Looked for only when it decides something: ours to send, or a stop.
        let stopping = self.conn.is_stopping();
        let begun = if self.conn.outbox.is_empty() && !stopping {
            true
        } else {
            self.machine.is_in_progress() || self.wire.peer_has_begun()?
        };
        // Bounded: a peer that keeps sending cannot hold ours back for ever
        // (what crosses it then is a conflict).
        let overdue =
            self.taken_while_due >= MAX_TAKEN_BEFORE_SEND && !self.machine.is_in_progress();
        if !self.conn.outbox.is_empty() && (!begun || overdue) {
            self.task = Task::Send;
            return Ok(None);
        }
        if !begun && stopping {
            // What was written goes out before the close; a peer that does
            // not read it has the write deadline.
            if !self.wire.flush()? {
                return self.wait().map(Some);
            }
            return Ok(Some(Some(())));
        }
        let Some(len) = run!(self, self.machine.next_length()) else {
            if self.machine.is_in_progress() {
                self.arm(Deadline::Message, self.conn.cfg.timeouts.message);
            } else if self.hello_due {
                // The greeting's deadline runs on.
            } else {
                self.deadline = self
                    .conn
                    .cfg
                    .timeouts
                    .idle
                    .map(|idle| (self.conn.last_activity + idle, Deadline::Idle));
            }
            return self.wait().map(Some);
        };
        let len = len?;
        self.arm(Deadline::Message, self.conn.cfg.timeouts.message);
        if !self.conn.outbox.is_empty() {
            self.taken_while_due += 1;
        }
        self.task = Task::Decide(len);
        Ok(None)
    }

    /// The handler's decision on a length, and its room in the budget;
    /// false while it waits for room.
    fn decide(&mut self, len: u32, now: Instant) -> bool {
        let take = if self.hello_due {
            Take::Whole // the loop's own: not the handler's to decide
        } else {
            catch_unwind(AssertUnwindSafe(|| {
                self.handler.message_announced(&self.conn, len)
            }))
            .unwrap_or_else(|p| Take::Refuse(Error::Panicked(panic_message(&*p))))
        };
        let (chunked, bytes) = match take {
            Take::Whole if len <= self.conn.cfg.max_message_len => (false, u64::from(len)),
            Take::Whole => {
                self.task = Task::Reject(None);
                return true;
            }
            Take::Chunks if !self.conn.cfg.plugins.is_empty() => {
                self.task = Task::Reject(Some(Error::Plugin(
                    "plugins need whole messages: no chunks with plugins".into(),
                )));
                return true;
            }
            Take::Chunks => (true, chunk_buffer_len(len)),
            Take::Reject => {
                self.task = Task::Reject(None);
                return true;
            }
            Take::Refuse(reason) => {
                self.task = Task::Reject(Some(reason));
                return true;
            }
        };
        let budget = self.conn.cfg.budget.clone();
        match budget.try_lease(bytes) {
            Ok(Some(lease)) => {
                self.lease = Some(lease);
                self.retry_at = None;
                self.task = Task::Accept { len, chunked };
                true
            }
            // Room held by this connection's own queued replies comes back
            // only once they went, and they go only after this message:
            // waiting for it would wait for the deadline.
            Ok(None)
                if self.deadline.is_some_and(|(at, _)| now < at)
                    && !self.conn.is_stopping()
                    && !self.conn.outbox.iter().any(Outgoing::holds_room) =>
            {
                self.retry_at = Some(now + BUDGET_RETRY);
                false
            }
            Ok(None) | Err(NoRoom::OverBudget | NoRoom::NoRoomInTime) => {
                let why = if bytes > budget.limit() {
                    "larger than the whole budget"
                } else if self.conn.outbox.iter().any(Outgoing::holds_room) {
                    "no room, and its own replies, which hold some, go after it"
                } else {
                    "no room in time"
                };
                log::info!("{}: refused a message of {len} bytes: {why}", self.conn.id);
                self.retry_at = None;
                self.task = Task::Reject(Some(Error::MemoryBudget {
                    len,
                    budget: budget.limit(),
                }));
                true
            }
        }
    }

    /// Reads the payload as it arrives: into `msg`, grown no faster than
    /// bytes come, or chunk by chunk to the handler. False to wait; true
    /// once the message was handed on.
    fn take_payload(&mut self, len: u32, chunked: bool) -> Result<bool, Error> {
        if chunked && self.msg.is_empty() {
            // The chunk buffer its lease covers.
            self.msg.resize(chunk_buffer_len(len) as usize, 0);
        }
        loop {
            let remaining = self.machine.remaining() as usize;
            if remaining == 0 {
                break;
            }
            if chunked {
                let Some(n) = read_chunk(&mut self.machine, &mut self.wire, &mut self.msg)? else {
                    return Ok(false);
                };
                let chunk = &self.msg[..n];
                let handler = &mut self.handler;
                let result = catch_unwind(AssertUnwindSafe(|| handler.transmission_chunk(chunk)))
                    .unwrap_or_else(|p| Err(Error::Panicked(panic_message(&*p))));
                if let Err(e) = result {
                    // Half read: out of step.
                    self.machine.break_off();
                    return Err(e);
                }
            } else {
                let old = self.msg.len();
                let step = old.clamp(FIRST_STEP, RECEIVE_CHUNK).min(remaining);
                self.msg.resize(old + step, 0);
                match read_chunk(&mut self.machine, &mut self.wire, &mut self.msg[old..]) {
                    Ok(Some(n)) => self.msg.truncate(old + n),
                    Ok(None) => {
                        self.msg.truncate(old);
                        return Ok(false);
                    }
                    Err(e) => {
                        self.msg.truncate(old);
                        return Err(e);
                    }
                }
            }
        }
        self.message_done();
        self.task = Task::Idle;
        let result = if chunked {
            self.msg = Vec::new();
            self.hook(|h, conn| h.transmission_complete(conn, len))
        } else {
            let mut msg = std::mem::take(&mut self.msg);
            let queued = self.conn.outbox.len();
            let result = match self.conn.cfg.plugins.receive(msg) {
                Ok(plain) if self.hello_due => {
                    msg = plain;
                    self.pair(&msg)
                }
                Ok(plain) => {
                    msg = plain;
                    let result = self.hook(|h, conn| h.transmission_received(conn, &msg));
                    // A reply queued by the hook keeps the message's room in
                    // the budget until it is sent: an echo holds its copy
                    // within the budget, as the message did.
                    if let Some(Outgoing::Own(_, lease @ None)) = self.conn.outbox.get_mut(queued) {
                        *lease = self.lease.take();
                    }
                    result
                }
                Err(e) => {
                    msg = Vec::new();
                    self.hook(|_, _| Err(Error::Plugin(e)))
                }
            };
            release(&mut msg);
            self.msg = msg;
            result
        };
        self.lease = None;
        result?;
        self.hook(|h, conn| h.loop_pass(conn))?;
        Ok(true)
    }
}

impl Served {
    /// Sends the first message of the outbox (through the plugins); false
    /// to wait.
    fn send_first(&mut self) -> Result<bool, Error> {
        self.task = Task::Idle;
        let Some(first) = self.conn.outbox.front() else {
            return Ok(true);
        };
        if !self.in_flight {
            match self.conn.cfg.plugins.transmit(first.bytes()) {
                Ok(Cow::Borrowed(_)) => self.transformed = None,
                Ok(Cow::Owned(wire)) => self.transformed = Some(wire),
                Err(e) => {
                    let first = self.conn.outbox.pop_front().expect("looked at above");
                    self.sent(first, Err(Error::Plugin(e)))?;
                    return Ok(true);
                }
            }
            self.in_flight = true;
            self.arm(Deadline::Message, self.conn.cfg.timeouts.message);
        }
        let msg: &[u8] = match &self.transformed {
            Some(wire) => wire,
            None => self.conn.outbox.front().expect("in flight").bytes(),
        };
        let Some(result) = run!(self, self.machine.transmit(msg)) else {
            self.task = Task::Send;
            return Ok(false);
        };
        let result = match result {
            // A 0x00 with the rest of one length right behind it is the
            // peer's own length: both sides sent at once.
            Err(Error::Protocol(tinyproto::Error::Rejected { .. }))
                if self.wire.peer_length_behind()? =>
            {
                Err(Error::Protocol(tinyproto::Error::Conflict))
            }
            other => other,
        };
        self.in_flight = false;
        if let Some(mut wire) = self.transformed.take() {
            release(&mut wire);
        }
        let first = self.conn.outbox.pop_front().expect("in flight");
        self.taken_while_due = 0;
        self.message_done();
        match result {
            Err(e) if !e.is_recoverable() || self.machine.is_broken() => {
                first.release();
                Err(e)
            }
            Err(e) => {
                let len = first.bytes().len();
                log::info!(
                    "{}: a message of {len} bytes was not taken: {e}",
                    self.conn.id
                );
                self.sent(first, Err(e))?;
                Ok(true)
            }
            Ok(()) => {
                self.sent(first, Ok(()))?;
                Ok(true)
            }
        }
    }

    /// Tells the handler how a message went (one of its own or other
    /// connections'), then frees it.
    fn sent(&mut self, msg: Outgoing, result: Result<(), Error>) -> Result<(), Error> {
        let told = match (&msg, result) {
            (Outgoing::Welcome, Ok(())) => Ok(()),
            (Outgoing::Welcome, Err(e)) => Err(e),
            (_, result) => self.hook(|h, conn| {
                h.transmission_sent(conn, msg.bytes(), &result);
                Ok(())
            }),
        };
        msg.release();
        told
    }

    /// On a duplex server: registers which half of which link the
    /// connection is from its hello (a down half is welcomed first, before
    /// anything queued for it), then runs `pre_loop`.
    fn pair(&mut self, hello: &[u8]) -> Result<(), Error> {
        let (direction, pair) = duplex::parse_hello(hello).ok_or(Error::NotDuplex)?;
        self.hello_due = false;
        if direction == Direction::Down {
            self.conn.outbox.push_front(Outgoing::Welcome);
        }
        self.conn.direction = Some(direction);
        let id = self.conn.id;
        self.conn.owner.connections.set_half(id, direction, pair);
        log::debug!("{id}: {direction:?} half of duplex link {pair:032x}");
        self.hook(|h, conn| h.pre_loop(conn))
    }

    /// Runs a hook: a panic is an error; a recoverable error is logged and
    /// the connection goes on.
    fn hook(
        &mut self,
        f: impl FnOnce(&mut dyn EventHandler, &mut EventConn) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let Self { handler, conn, .. } = self;
        let result = catch_unwind(AssertUnwindSafe(|| f(&mut **handler, conn)))
            .unwrap_or_else(|p| Err(Error::Panicked(panic_message(&*p))));
        match result {
            Err(e) if e.is_recoverable() && !self.machine.is_broken() => {
                log::info!("{}: {e} (the connection goes on)", self.conn.id);
                Ok(())
            }
            other => other,
        }
    }

    /// About to wait for readiness: everything written goes out that can.
    /// A write that has made no progress for the write timeout ends the
    /// connection: judged here, after the drive tried it again (readiness
    /// reports room only once much of it is free, a write takes less).
    fn wait<T>(&mut self) -> Result<Option<T>, Error> {
        self.wire.flush()?;
        if self.write_deadline().is_some_and(|at| Instant::now() >= at) {
            return Err(Error::Timeout(Deadline::Write));
        }
        Ok(None)
    }

    /// When the socket, taking nothing of what we write, has been stalled
    /// too long.
    fn write_deadline(&self) -> Option<Instant> {
        Some(self.wire.stalled_since()? + self.conn.cfg.timeouts.write)
    }

    /// Sets deadline `which`, `after` from now, unless it is set already.
    fn arm(&mut self, which: Deadline, after: Duration) {
        if !matches!(self.deadline, Some((_, set)) if set == which) {
            self.deadline = Some((Instant::now() + after, which));
        }
    }

    /// A message moved, either way.
    fn message_done(&mut self) {
        self.deadline = None;
        self.conn.last_activity = Instant::now();
    }

    /// Puts the connection's next timer in its thread's heap, unless an
    /// earlier one of its is there.
    pub(super) fn schedule(&mut self, timers: &mut BinaryHeap<Reverse<(Instant, ConnId)>>) {
        // A loop pass runs between messages only: mid-message its time
        // must not wake the thread over and over.
        let pass = self.next_pass.filter(|_| matches!(self.task, Task::Idle));
        let next = [
            self.deadline.map(|(at, _)| at),
            self.write_deadline(),
            self.retry_at,
            pass,
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(at) = next {
            if self.scheduled.is_none_or(|s| at < s) {
                timers.push(Reverse((at, self.conn.id)));
                self.scheduled = Some(at);
            }
        }
    }

    /// Ends the connection: `post_loop`, the socket closed, its slot freed
    /// and its end reported to the server's loop.
    pub(super) fn end(
        mut self,
        result: Result<(), Error>,
        poll: &Poll,
        shared: &Shared,
        events: &Sender<LoopEvent>,
    ) {
        let (id, peer) = (self.conn.id, self.conn.peer);
        match &result {
            Ok(()) => log::debug!("{id} ({peer}) ended"),
            Err(e) => log::info!("{id} ({peer}) ended: {e}"),
        }
        let result = match self.caller.take() {
            // Not greeted: the caller of `connect_to` gets the error, and no
            // hook runs, as for a connection that never started.
            Some(caller) => {
                let told = io::Error::other("its greeting failed: connect_to returned the error");
                // A normal end here is the peer's close before its greeting.
                let _ = caller.send(result.and(Err(protocol(tinyproto::Error::Closed))));
                Err(Error::Io(told))
            }
            None => {
                let Self { handler, conn, .. } = &mut self;
                if catch_unwind(AssertUnwindSafe(|| handler.post_loop(conn, &result))).is_err() {
                    log::error!("{id}: post_loop panicked");
                }
                result
            }
        };
        self.wire.close();
        let socket = self.wire.socket();
        if let Err(e) = poll
            .registry()
            .deregister(&mut SourceFd(&socket.as_raw_fd()))
        {
            log::debug!("{id}: deregistering: {e}");
        }
        let _ = socket.shutdown(Shutdown::Both);
        shared.conns().remove(&id);
        let _ = events.send(LoopEvent::Ended(Ended { id, peer, result }));
    }
}

/// A machine's error as this crate's.
fn protocol(e: tinyproto::Error) -> Error {
    Error::Protocol(e.widen())
}

/// Reads one chunk of the payload in flight into `buf`: `Some` with its
/// size, `None` if no byte is there yet.
fn read_chunk(
    machine: &mut Machine,
    wire: &mut Wire,
    buf: &mut [u8],
) -> Result<Option<usize>, Error> {
    loop {
        let moved = match machine.read_chunk(buf) {
            Step::Done(result) => return result.map(Some).map_err(protocol),
            Step::Io(io) => wire.perform(io)?,
        };
        let Some(moved) = moved else {
            return Ok(None);
        };
        machine.moved(moved).map_err(protocol)?;
        // The one read a chunk asks for is the chunk itself (a flush may come first).
        if let Moved::Read(n) = moved {
            return Ok(Some(n));
        }
    }
}
