//! A real server on 127.0.0.1 with a recording handler (on a thread per
//! connection, or on the event threads), and raw-socket helpers for peers
//! scripted byte by byte.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tinyproto::Phase;
use tinyproto_std::{
    Conn, ConnId, Connections, Context, Deadline, Error, EventConn, EventHandler, Handler, Hooks,
    Server, StopHandle, Take,
};

pub use tinyproto_tests::wait_until;

/// Generous bound for anything a loaded machine should do quickly.
pub const LONG: Duration = Duration::from_secs(30);

/// How a connection ended, as its `post_loop` saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    UnexpectedByte(Phase, u8),
    Eof(Phase),
    Timeout(Deadline),
    Panicked,
    Other(String),
}

impl From<&Result<(), Error>> for Outcome {
    fn from(r: &Result<(), Error>) -> Self {
        match r {
            Ok(()) => Outcome::Ok,
            Err(Error::Protocol(tinyproto::Error::UnexpectedByte { phase, byte })) => {
                Outcome::UnexpectedByte(*phase, *byte)
            }
            Err(Error::Protocol(tinyproto::Error::UnexpectedEof { phase })) => Outcome::Eof(*phase),
            Err(Error::Timeout(d)) => Outcome::Timeout(*d),
            Err(Error::Panicked(_)) => Outcome::Panicked,
            Err(e) => Outcome::Other(format!("{e:?}")),
        }
    }
}

/// What the recording handler saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    PreLoop,
    Received(Vec<u8>),
    PostLoop(Outcome),
    /// A message this side sent (as queued) and its outcome: from
    /// `EventHandler::transmission_sent` (event threads only).
    Sent(Vec<u8>, Outcome),
    /// From the server hooks.
    Shutdown(Outcome),
}

/// Echoes, and obeys a few commands: b"panic" panics, b"big" answers
/// 32 MiB, b"all:<text>" broadcasts <text> to the others and answers
/// b"sent", b"sleep" sleeps 8 s.
pub struct Recorder {
    pub events: Sender<(ConnId, Event)>,
}

impl Handler for Recorder {
    fn pre_loop(&mut self, conn: &mut Conn) -> Result<(), Error> {
        let _ = self.events.send((conn.id(), Event::PreLoop));
        Ok(())
    }

    fn transmission_received(&mut self, conn: &mut Conn, msg: &[u8]) -> Result<(), Error> {
        let _ = self.events.send((conn.id(), Event::Received(msg.to_vec())));
        match msg {
            b"panic" => panic!("a hook panicked on purpose"),
            b"big" => conn.transmit(&vec![0x5A; 32 << 20]),
            b"sleep" => {
                thread::sleep(Duration::from_secs(8));
                Ok(())
            }
            m if m.starts_with(b"all:") => {
                let connections = conn.active_connections();
                connections.broadcast(&m[4..], Some(conn.id()));
                conn.transmit(b"sent")
            }
            _ => conn.transmit(msg),
        }
    }

    fn post_loop(&mut self, conn: &mut Conn, result: &Result<(), Error>) {
        let _ = self
            .events
            .send((conn.id(), Event::PostLoop(result.into())));
    }
}

/// The event threads' twin of [`Recorder`]: the same events and commands,
/// replies queued with `EventConn::send`, and each message's outcome
/// reported as [`Event::Sent`]. b"sleep" is not a command here (a hook on
/// an event thread must not block): it is echoed like any other message.
pub struct EventRecorder {
    pub events: Sender<(ConnId, Event)>,
}

impl EventHandler for EventRecorder {
    fn pre_loop(&mut self, conn: &mut EventConn) -> Result<(), Error> {
        let _ = self.events.send((conn.id(), Event::PreLoop));
        Ok(())
    }

    fn transmission_received(&mut self, conn: &mut EventConn, msg: &[u8]) -> Result<(), Error> {
        let _ = self.events.send((conn.id(), Event::Received(msg.to_vec())));
        match msg {
            b"panic" => panic!("a hook panicked on purpose"),
            b"big" => conn.send(&vec![0x5A; 32 << 20]),
            m if m.starts_with(b"all:") => {
                let connections = conn.active_connections();
                connections.broadcast(&m[4..], Some(conn.id()));
                conn.send(b"sent")
            }
            _ => conn.send(msg),
        }
    }

    fn transmission_sent(&mut self, conn: &mut EventConn, msg: &[u8], result: &Result<(), Error>) {
        let _ = self
            .events
            .send((conn.id(), Event::Sent(msg.to_vec(), result.into())));
    }

    fn post_loop(&mut self, conn: &mut EventConn, result: &Result<(), Error>) {
        let _ = self
            .events
            .send((conn.id(), Event::PostLoop(result.into())));
    }
}

/// How a server serves its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A thread per connection (`Server::set_conn_handler`, [`Recorder`]).
    Threads,
    /// The event threads (`Server::set_event_handler`, [`EventRecorder`]).
    Events,
}

/// Counts the connection hooks and forwards `conn_shutdown`.
#[derive(Clone)]
pub struct Recording {
    pub inits: Arc<AtomicUsize>,
    pub events: Sender<(ConnId, Event)>,
}

impl Hooks for Recording {
    fn conn_init(&mut self, _: &Context, _: ConnId, _: SocketAddr) {
        self.inits.fetch_add(1, Ordering::SeqCst);
    }

    fn conn_shutdown(&mut self, _: &Context, id: ConnId, _: SocketAddr, r: &Result<(), Error>) {
        let _ = self.events.send((id, Event::Shutdown(r.into())));
    }
}

/// A running server and what it records.
pub struct Harness {
    pub addr: SocketAddr,
    pub events: Receiver<(ConnId, Event)>,
    pub inits: Arc<AtomicUsize>,
    pub connections: Connections,
    stop: StopHandle,
    thread: Mutex<Option<JoinHandle<std::io::Result<()>>>>,
}

impl Harness {
    /// Starts a server on 127.0.0.1:0 with a thread per connection
    /// ([`Recorder`]) after `configure`.
    pub fn start(configure: impl FnOnce(&mut Server)) -> Self {
        Self::start_in(Mode::Threads, configure)
    }

    /// Starts a server on 127.0.0.1:0 on the event threads
    /// ([`EventRecorder`]) after `configure`.
    pub fn start_events(configure: impl FnOnce(&mut Server)) -> Self {
        Self::start_in(Mode::Events, configure)
    }

    /// Starts a server on 127.0.0.1:0 serving in `mode` after `configure`.
    pub fn start_in(mode: Mode, configure: impl FnOnce(&mut Server)) -> Self {
        let (tx, events) = mpsc::channel();
        let inits = Arc::new(AtomicUsize::new(0));
        let mut server = Server::new();
        let addr = server.add_addr("127.0.0.1:0").expect("bind");
        let handler_tx = tx.clone();
        match mode {
            Mode::Threads => server.set_conn_handler(move || Recorder {
                events: handler_tx.clone(),
            }),
            Mode::Events => server.set_event_handler(move || EventRecorder {
                events: handler_tx.clone(),
            }),
        }
        server.set_hooks(Recording {
            inits: inits.clone(),
            events: tx,
        });
        configure(&mut server);
        let stop = server.stop_handle();
        let connections = server.active_connections();
        let thread = thread::spawn(move || server.start());
        Self {
            addr,
            events,
            inits,
            connections,
            stop,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// The next event matching `pred`, within `timeout` (others are skipped).
    pub fn wait_event(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&ConnId, &Event) -> bool,
    ) -> (ConnId, Event) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok((id, e)) if pred(&id, &e) => return (id, e),
                Ok(_) => {}
                Err(e) => panic!("no matching event within {timeout:?}: {e}"),
            }
        }
    }

    /// The outcome of the next connection to end (its `post_loop`).
    pub fn next_post_loop(&self) -> (ConnId, Outcome) {
        match self.wait_event(LONG, |_, e| matches!(e, Event::PostLoop(_))) {
            (id, Event::PostLoop(o)) => (id, o),
            _ => unreachable!(),
        }
    }

    /// All events so far, without waiting.
    pub fn drain_events(&self) -> Vec<(ConnId, Event)> {
        self.events.try_iter().collect()
    }

    /// Waits until no connection is active.
    pub fn wait_no_connections(&self) {
        assert!(
            wait_until(LONG, || self.connections.is_empty()),
            "{} connection(s) still active",
            self.connections.len()
        );
    }

    /// Asks the server to stop, without waiting.
    pub fn request_stop(&self) {
        self.stop.stop();
    }

    /// Stops the server and waits (bounded) for `start` to return.
    pub fn stop(&self) {
        self.stop.stop();
        let thread = self.thread.lock().unwrap().take();
        if let Some(thread) = thread {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !thread.is_finished() {
                assert!(Instant::now() < deadline, "server did not stop");
                thread::sleep(Duration::from_millis(10));
            }
            thread
                .join()
                .expect("server panicked")
                .expect("server failed");
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

/// A raw TCP peer with generous timeouts.
pub fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(LONG)).unwrap();
    s.set_write_timeout(Some(LONG)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads exactly `n` bytes.
pub fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).expect("read");
    buf
}

/// Greets as a well-behaved peer.
pub fn greet(s: &mut TcpStream) {
    s.write_all(&[0xFF]).unwrap();
    assert_eq!(read_n(s, 1), [0xFF], "server greeting");
}

/// Sends one message as a well-behaved peer; returns the status byte.
pub fn send_msg(s: &mut TcpStream, msg: &[u8]) -> u8 {
    s.write_all(&(msg.len() as u32).to_be_bytes()).unwrap();
    let status = read_n(s, 1)[0];
    if status == 0xFF {
        s.write_all(msg).unwrap();
    }
    status
}

/// Receives one message as a well-behaved peer.
pub fn recv_msg(s: &mut TcpStream) -> Vec<u8> {
    let len = u32::from_be_bytes(read_n(s, 4).try_into().unwrap()) as usize;
    s.write_all(&[0xFF]).unwrap();
    read_n(s, len)
}

/// Everything the peer sends until it closes (bounded by the read timeout).
pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("read failed before close: {e} (got {all:02x?})"),
        }
    }
}

/// `len` bytes of `i % 251`, produced on the fly.
pub struct Pattern {
    pos: u64,
    len: u64,
    /// Calls to `read` so far.
    pub reads: usize,
}

impl Pattern {
    pub fn new(len: u64) -> Self {
        Self {
            pos: 0,
            len,
            reads: 0,
        }
    }
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reads += 1;
        let n = buf.len().min((self.len - self.pos) as usize);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = ((self.pos + i as u64) % 251) as u8;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Where chunks of a message stand against the pattern (`i % 251`), for
/// chunked handlers of either kind.
#[derive(Default)]
pub struct PatternChunks {
    /// Bytes of the message so far.
    pub offset: u64,
    chunks: usize,
    mismatch: Option<u64>,
}

impl PatternChunks {
    /// Checks the next chunk (at most 64 KiB).
    pub fn take(&mut self, chunk: &[u8]) {
        assert!(chunk.len() <= 64 * 1024, "chunks are bounded");
        for (i, b) in chunk.iter().enumerate() {
            let at = self.offset + i as u64;
            if *b != (at % 251) as u8 && self.mismatch.is_none() {
                self.mismatch = Some(at);
            }
        }
        self.offset += chunk.len() as u64;
        self.chunks += 1;
    }

    /// The verdict on the whole message of `len` bytes, "<len> <chunks>"
    /// when it is right, and a fresh start for the next.
    pub fn finish(&mut self, len: u32) -> String {
        let verdict = match self.mismatch {
            Some(at) => format!("mismatch at {at}"),
            None if u64::from(len) != self.offset => format!("{} bytes came", self.offset),
            None => format!("{len} {}", self.chunks),
        };
        *self = Self::default();
        verdict
    }
}

/// Checks chunks against the pattern; replies "<len> <chunks>" or
/// "mismatch at <offset>".
pub struct Checker {
    limit: u32,
    check: PatternChunks,
    events: mpsc::Sender<String>,
}

impl Handler for Checker {
    fn message_announced(&mut self, _conn: &Conn, len: u32) -> Take {
        if len <= self.limit {
            Take::Chunks
        } else {
            Take::Reject
        }
    }

    fn transmission_chunk(&mut self, chunk: &[u8]) -> Result<(), Error> {
        self.check.take(chunk);
        Ok(())
    }

    fn transmission_complete(&mut self, conn: &mut Conn, len: u32) -> Result<(), Error> {
        assert_eq!(u64::from(len), self.check.offset);
        let reply = self.check.finish(len);
        conn.transmit(reply.as_bytes())
    }

    fn post_loop(&mut self, _: &mut Conn, result: &Result<(), Error>) {
        let _ = self.events.send(format!(
            "post_loop {:?} after {} bytes",
            Outcome::from(result),
            self.check.offset
        ));
    }
}

/// A server whose handler is a [`Checker`] taking chunks up to `limit`.
pub fn checker_server(
    limit: u32,
) -> (
    std::net::SocketAddr,
    mpsc::Receiver<String>,
    tinyproto_std::StopHandle,
) {
    let (tx, rx) = mpsc::channel();
    let mut server = Server::new();
    let addr = server.add_addr("127.0.0.1:0").unwrap();
    server.set_max_message_len(tinyproto::MAX_MESSAGE_LEN);
    server.set_conn_handler(move || Checker {
        limit,
        check: PatternChunks::default(),
        events: tx.clone(),
    });
    let stop = server.stop_handle();
    thread::spawn(move || server.start());
    (addr, rx, stop)
}

/// After each misbehaviour: a well-behaved client still gets its echo.
pub fn assert_serves(h: &Harness) {
    let mut s = raw(h.addr);
    greet(&mut s);
    assert_eq!(send_msg(&mut s, b"still here"), 0xFF);
    assert_eq!(recv_msg(&mut s), b"still here");
}

/// Each case as two tests, one per way of serving: `threads::<case>` and
/// `events::<case>`; `events: #[attr]` marks the second only.
#[allow(unused_macros)] // not every test file has cases for both
macro_rules! in_both_modes {
    ($($case:ident $(, events: #[$attr:meta])?;)*) => {
        mod threads {
            $(#[test]
            fn $case() {
                super::$case(super::Mode::Threads)
            })*
        }
        mod events {
            $($(#[$attr])?
            #[test]
            fn $case() {
                super::$case(super::Mode::Events)
            })*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use in_both_modes;

/// Against a server with a memory budget of 1,000 bytes: a first peer's
/// 1,000-byte message is accepted (its payload not sent yet) and holds the
/// whole budget; a second peer's 10-byte message waits, no status byte
/// after 300 ms. Returns both peers, the second's read timeout `LONG` again.
pub fn second_message_waiting_for_room(addr: SocketAddr) -> (TcpStream, TcpStream) {
    let mut first = raw(addr);
    greet(&mut first);
    first.write_all(&1000u32.to_be_bytes()).unwrap();
    assert_eq!(read_n(&mut first, 1), [0xFF], "the first fits");
    let mut second = raw(addr);
    greet(&mut second);
    second.write_all(&10u32.to_be_bytes()).unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut status = [0u8; 1];
    let waited = second.read(&mut status);
    assert!(
        waited.is_err(),
        "no status while the budget is full: {waited:?} {status:?}"
    );
    second.set_read_timeout(Some(LONG)).unwrap();
    (first, second)
}

/// Against a handler that refuses a 101-byte message with a recoverable
/// reason, a 13-byte one with "thirteen is unlucky" (which its `post_loop`
/// reports on `ends`), and echoes the rest: after the first the connection
/// goes on, the second ends it with its reason.
pub fn refusals_with_a_reason(conn: &mut Conn, ends: &Receiver<String>) {
    match conn.transmit(&[0; 101]) {
        Err(Error::Protocol(tinyproto::Error::Rejected { len: 101 })) => {}
        other => panic!("expected a rejection, got {other:?}"),
    }
    conn.transmit(b"fine").unwrap();
    assert_eq!(
        conn.receive().unwrap(),
        b"fine",
        "a recoverable reason: goes on"
    );
    match conn.transmit(&[0; 13]) {
        Err(Error::Protocol(tinyproto::Error::Rejected { len: 13 })) => {}
        other => panic!("expected a rejection, got {other:?}"),
    }
    let end = ends.recv_timeout(LONG).expect("the connection ended");
    assert_eq!(end, "thirteen is unlucky", "post_loop sees the reason");
}
