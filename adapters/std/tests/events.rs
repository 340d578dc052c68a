//! What is particular to the event threads (`Server::set_event_handler`,
//! `Client::set_event_handler`): whole messages of every size, a thousand
//! connections at once, the outcome of each message sent, who may send
//! when, chunks, the memory budget behind a queued echo, the deadlines,
//! panics, the stop, plugins, up halves, a client's connections, and the
//! Python reference client. The cases shared with a thread per connection
//! run both ways where they are (`bad_peers.rs`, `both_send.rs`,
//! `lifecycle.rs`, `memory.rs`, `hub.rs`, `tls.rs`).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tinyproto::Phase;
use tinyproto_std::{
    events, Client, Deadline, Error, EventConn, EventHandler, Server, StopHandle, Take, Timeouts,
};
use tinyproto_tests::pattern;

/// Around the 64 KiB of a receive chunk, and well past it.
const SIZES: [usize; 6] = [0, 1, 64 * 1024 - 1, 64 * 1024 + 1, 1 << 20, 8 << 20];

/// What `Outcome::from` makes of `e`.
fn other(e: Error) -> Outcome {
    Outcome::from(&Err(e))
}

/// The next `Event::Sent` of the harness: the message and its outcome.
fn next_sent(h: &Harness) -> (Vec<u8>, Outcome) {
    match h.wait_event(LONG, |_, e| matches!(e, Event::Sent(..))) {
        (_, Event::Sent(msg, outcome)) => (msg, outcome),
        _ => unreachable!(),
    }
}

// ---- whole messages ----

#[test]
fn test_echo_of_every_size_with_our_client_and_a_raw_blocking_connection() {
    let h = Harness::start_events(|_| {});
    let mut conn = Client::new().connect(h.addr).unwrap();
    for size in SIZES {
        let msg = pattern(size);
        conn.transmit(&msg).unwrap();
        let echo = conn.receive().unwrap();
        assert_eq!(echo.len(), size);
        assert!(echo == msg, "the echo of {size} bytes differs");
    }
    conn.close();
    assert_eq!(h.next_post_loop().1, Outcome::Ok);

    // The core's blocking driver, straight over a TcpStream.
    let mut conn = tinyproto::blocking::Connection::from_std(raw(h.addr));
    conn.set_max_message_len(8 << 20);
    let mut buf = vec![0u8; 8 << 20];
    for size in SIZES {
        let msg = pattern(size);
        conn.transmit(&msg).unwrap();
        let echo = conn.receive(&mut buf).unwrap();
        assert_eq!(echo.len(), size);
        assert!(echo == msg, "the echo of {size} bytes differs");
    }
    drop(conn);
    assert_eq!(h.next_post_loop().1, Outcome::Ok);
}

/// 1,000 connections open at once on a few client threads, each echoing
/// several messages of its own; every reply is its own message.
#[test]
fn test_a_thousand_concurrent_connections_each_echo_their_own_messages() {
    const CONNS: usize = 1_000;
    const THREADS: usize = 8;
    const ROUNDS: usize = 5;
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let h = Harness::start_events(|_| {});
    let addr = h.addr;
    // All connected, then (once the server counts them all) all echo.
    let connected = Arc::new(Barrier::new(THREADS + 1));
    let counted = Arc::new(Barrier::new(THREADS + 1));
    let message = |i: usize, round: usize| {
        let mut msg = format!("{i}/{round}:").into_bytes();
        msg.extend(pattern((i * 37 + round * 101) % 3000));
        msg
    };
    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            let (connected, counted) = (connected.clone(), counted.clone());
            thread::spawn(move || -> Result<usize, String> {
                let mut client = Client::new();
                client.set_timeout(Duration::from_secs(60));
                let mine: Vec<usize> = (t..CONNS).step_by(THREADS).collect();
                let conns: Result<Vec<_>, _> = mine.iter().map(|_| client.connect(addr)).collect();
                connected.wait();
                counted.wait();
                let mut conns = conns.map_err(|e| format!("thread {t}: connect: {e}"))?;
                let mut echoed = 0;
                for round in 0..ROUNDS {
                    // A message in flight on every connection of the thread.
                    for (conn, &i) in conns.iter_mut().zip(&mine) {
                        conn.transmit(&message(i, round))
                            .map_err(|e| format!("{i}/{round}: transmit: {e}"))?;
                    }
                    for (conn, &i) in conns.iter_mut().zip(&mine) {
                        let reply = conn
                            .receive()
                            .map_err(|e| format!("{i}/{round}: receive: {e}"))?;
                        if reply != message(i, round) {
                            return Err(format!(
                                "{i}/{round}: a wrong reply of {} bytes",
                                reply.len()
                            ));
                        }
                        echoed += 1;
                    }
                }
                Ok(echoed)
            })
        })
        .collect();
    connected.wait();
    let all_counted = wait_until(LONG, || h.connections.len() == CONNS);
    counted.wait();
    assert!(all_counted, "{} connections counted", h.connections.len());
    let mut echoed = 0;
    for client in clients {
        echoed += client.join().unwrap().unwrap();
    }
    assert_eq!(echoed, CONNS * ROUNDS);
    h.wait_no_connections();
    assert_eq!(h.inits.load(Ordering::SeqCst), CONNS);
}

// ---- the outcome of each message sent ----

/// `transmission_sent` gets `Ok` for a message taken and `Rejected` for a
/// 0x00, and the connection goes on after the rejection.
#[test]
fn test_transmission_sent_sees_ok_and_rejected_and_the_connection_goes_on() {
    let h = Harness::start_events(|_| {});
    let mut s = raw(h.addr);
    greet(&mut s);
    assert_eq!(send_msg(&mut s, b"taken"), 0xFF);
    assert_eq!(recv_msg(&mut s), b"taken");
    assert_eq!(next_sent(&h), (b"taken".to_vec(), Outcome::Ok));

    assert_eq!(send_msg(&mut s, b"refused"), 0xFF);
    assert_eq!(read_n(&mut s, 4), 7u32.to_be_bytes(), "the echo's length");
    s.write_all(&[0x00]).unwrap();
    let rejected = other(Error::Protocol(tinyproto::Error::Rejected { len: 7 }));
    // (Our next length only once the 0x00 was read alone: right behind it,
    // it would be a crossing.)
    assert_eq!(next_sent(&h), (b"refused".to_vec(), rejected));

    assert_eq!(send_msg(&mut s, b"after"), 0xFF);
    assert_eq!(recv_msg(&mut s), b"after", "the connection went on");
    assert_eq!(next_sent(&h), (b"after".to_vec(), Outcome::Ok));
    drop(s);
    assert_eq!(h.next_post_loop().1, Outcome::Ok);
}

// ---- who may send when ----

/// The end of the peer's message and the length of its next come in one
/// segment: when the echo is due, the peer's next message has begun, and is
/// taken first (0xFF, not our length); then both echoes, in order.
#[test]
fn test_a_peer_message_that_began_when_our_echo_is_due_is_taken_first() {
    let h = Harness::start_events(|_| {});
    let mut s = raw(h.addr);
    greet(&mut s);
    s.write_all(&1u32.to_be_bytes()).unwrap();
    assert_eq!(read_n(&mut s, 1), [0xFF]);
    for i in 0..20u8 {
        // The last byte of message i and the length of message i + 1.
        s.write_all(&[i, 0, 0, 0, 1]).unwrap();
        assert_eq!(
            read_n(&mut s, 1),
            [0xFF],
            "message {} was taken before the echo of {i}",
            i + 1
        );
    }
    s.write_all(&[20]).unwrap();
    for i in 0..=20u8 {
        assert_eq!(recv_msg(&mut s), [i]);
    }
    for i in 0..=20u8 {
        assert_eq!(next_sent(&h), (vec![i], Outcome::Ok));
    }

    // A message queued from another thread while the peer's is arriving
    // goes out after it (and after its echo), never across it.
    let id = h.connections.ids()[0];
    s.write_all(&5u32.to_be_bytes()).unwrap();
    assert_eq!(read_n(&mut s, 1), [0xFF]);
    h.connections.send_to(id, b"from outside").unwrap();
    s.write_all(b"hello").unwrap();
    assert_eq!(recv_msg(&mut s), b"hello");
    assert_eq!(recv_msg(&mut s), b"from outside");
    drop(s);
    assert_eq!(h.next_post_loop().1, Outcome::Ok);
}

// ---- chunks ----

/// Takes messages up to `limit` in chunks and checks them against the
/// pattern; reports each chunk's size, each completion and its end.
struct ChunkChecker {
    limit: u32,
    check: PatternChunks,
    events: mpsc::Sender<String>,
}

impl EventHandler for ChunkChecker {
    fn message_announced(&mut self, _: &EventConn, len: u32) -> Take {
        if len <= self.limit {
            Take::Chunks
        } else {
            Take::Reject
        }
    }

    fn transmission_chunk(&mut self, chunk: &[u8]) -> Result<(), Error> {
        self.check.take(chunk);
        let _ = self.events.send(format!("chunk {}", chunk.len()));
        Ok(())
    }

    fn transmission_complete(&mut self, conn: &mut EventConn, len: u32) -> Result<(), Error> {
        let reply = self.check.finish(len);
        let _ = self.events.send(format!("complete {reply}"));
        conn.send(reply.as_bytes())
    }

    fn post_loop(&mut self, _: &mut EventConn, result: &Result<(), Error>) {
        let _ = self.events.send(format!(
            "post_loop {:?} after {} bytes",
            Outcome::from(result),
            self.check.offset
        ));
    }
}

/// A server on the event threads, started on a thread of its own; stopped
/// and joined (bounded) by `stop`.
struct Running {
    addr: SocketAddr,
    stop: StopHandle,
    thread: Option<thread::JoinHandle<std::io::Result<()>>>,
}

impl Running {
    fn start(mut server: Server) -> Self {
        let addr = server.add_addr("127.0.0.1:0").unwrap();
        let stop = server.stop_handle();
        let thread = Some(thread::spawn(move || server.start()));
        Self { addr, stop, thread }
    }

    /// Waits (bounded) for `start` to return, and asserts it returned `Ok`.
    fn join(&mut self) {
        let thread = self.thread.take().expect("joined once");
        assert!(
            wait_until(LONG, || thread.is_finished()),
            "start() did not return"
        );
        thread.join().unwrap().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

/// The next event starting with `prefix` (chunk sizes are skipped unless
/// asked for).
fn next_starting(events: &mpsc::Receiver<String>, prefix: &str) -> String {
    let deadline = Instant::now() + LONG;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = events
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no {prefix:?}: {e}"));
        if event.starts_with(prefix) {
            return event;
        }
    }
}

/// Every chunk in order and one `transmission_complete` per message; a
/// message refused over the limit moves nothing; a break-off mid message
/// completes nothing and ends in `post_loop` with the error.
#[test]
fn test_chunks_come_in_order_and_complete_once_and_a_break_off_never_completes() {
    let (tx, events) = mpsc::channel();
    let mut server = Server::new();
    server.set_max_message_len(tinyproto::MAX_MESSAGE_LEN);
    server.set_event_handler(move || ChunkChecker {
        limit: 32 << 20,
        check: PatternChunks::default(),
        events: tx.clone(),
    });
    let mut running = Running::start(server);
    let mut conn = Client::new().connect(running.addr).unwrap();
    for len in [20u32 << 20, 100, 0, 64 * 1024 + 1] {
        conn.transmit_from(len, &mut Pattern::new(len.into()))
            .unwrap();
        let reply = String::from_utf8(conn.receive().unwrap()).unwrap();
        let (got, chunks) = reply.split_once(' ').expect(&reply);
        assert_eq!(got, len.to_string(), "{reply}");
        let chunks: u64 = chunks.parse().expect(&reply);
        assert!(chunks >= u64::from(len).div_ceil(64 * 1024), "{reply}");
        assert_eq!(
            next_starting(&events, "complete"),
            format!("complete {reply}")
        );
    }
    match conn.transmit_from(33 << 20, &mut Pattern::new(33 << 20)) {
        Err(Error::Protocol(tinyproto::Error::Rejected { .. })) => {}
        other => panic!("expected Rejected, got {other:?}"),
    }
    conn.close();
    assert_eq!(
        next_starting(&events, "post_loop"),
        "post_loop Ok after 0 bytes"
    );
    assert!(
        events.try_iter().all(|e| !e.starts_with("complete")),
        "one completion per message"
    );

    // A break-off: 10 bytes of 100, then the close (once they were taken).
    let mut s = raw(running.addr);
    greet(&mut s);
    s.write_all(&100u32.to_be_bytes()).unwrap();
    assert_eq!(read_n(&mut s, 1), [0xFF]);
    s.write_all(&pattern(10)).unwrap();
    let mut came = 0;
    while came < 10 {
        let chunk = next_starting(&events, "chunk ");
        came += chunk["chunk ".len()..].parse::<usize>().unwrap();
    }
    drop(s);
    assert_eq!(
        next_starting(&events, "post_loop"),
        format!(
            "post_loop {:?} after 10 bytes",
            Outcome::Eof(Phase::Payload)
        )
    );
    running.stop.stop();
    running.join();
    assert!(
        events.try_iter().all(|e| !e.starts_with("complete")),
        "a break-off completed"
    );
}

// ---- the memory budget ----

/// An echo keeps its message's room until it is sent, and it is sent only
/// after a message of the peer's that has begun: such a message, finding no
/// room, is refused at once (waiting would wait for the message deadline),
/// the echo goes, and with its room back the same message is taken.
#[test]
fn test_a_message_behind_an_echo_holding_the_room_is_refused_at_once() {
    let h = Harness::start_events(|s| s.set_memory_budget(1000));
    let mut s = raw(h.addr);
    greet(&mut s);
    s.write_all(&600u32.to_be_bytes()).unwrap();
    assert_eq!(read_n(&mut s, 1), [0xFF]);
    // Its payload and the next length in one write: the next message has
    // begun when the echo is due.
    let mut bytes = vec![7u8; 600];
    bytes.extend(600u32.to_be_bytes());
    s.write_all(&bytes).unwrap();
    let asked = Instant::now();
    assert_eq!(read_n(&mut s, 1), [0x00], "no room: its own echo holds it");
    assert!(
        asked.elapsed() < Timeouts::default().message / 2,
        "refused at once, not at the message deadline: {:?}",
        asked.elapsed()
    );
    assert_eq!(recv_msg(&mut s), [7u8; 600]);
    assert_eq!(send_msg(&mut s, &[8u8; 600]), 0xFF, "the room is back");
    assert_eq!(recv_msg(&mut s), [8u8; 600]);
}

// ---- deadlines ----

/// The greeting, message and idle deadlines end their connections, not
/// before their time, with the deadline in `post_loop`.
#[test]
fn test_greeting_message_and_idle_deadlines() {
    const SHORT: Duration = Duration::from_millis(300);
    const IDLE: Duration = Duration::from_millis(600);
    let h = Harness::start_events(|s| {
        s.set_timeouts(
            Timeouts::default()
                .with_greeting(SHORT)
                .with_message(SHORT)
                .with_idle(Some(IDLE)),
        )
    });
    // A peer that never greets.
    let start = Instant::now();
    let mut g = raw(h.addr);
    assert_eq!(read_to_close(&mut g), [0xFF]);
    assert!(start.elapsed() >= SHORT, "{:?}", start.elapsed());
    assert_eq!(h.next_post_loop().1, Outcome::Timeout(Deadline::Greeting));

    // A peer that stops mid-payload.
    let mut m = raw(h.addr);
    greet(&mut m);
    let start = Instant::now();
    m.write_all(&10u32.to_be_bytes()).unwrap();
    assert_eq!(read_n(&mut m, 1), [0xFF]);
    m.write_all(b"abc").unwrap();
    assert_eq!(read_to_close(&mut m), b"");
    assert!(start.elapsed() >= SHORT, "{:?}", start.elapsed());
    let (id, outcome) = h.next_post_loop();
    assert_eq!(outcome, Outcome::Timeout(Deadline::Message));
    let delivered = h
        .drain_events()
        .into_iter()
        .any(|(i, e)| i == id && matches!(e, Event::Received(_)));
    assert!(!delivered, "a partial message was delivered");

    // A peer that goes quiet after a message (the idle time counts from it).
    let mut conn = Client::new().connect(h.addr).unwrap();
    conn.transmit(b"one").unwrap();
    assert_eq!(conn.receive().unwrap(), b"one");
    let start = Instant::now();
    match conn.receive() {
        Err(e) if e.is_closed() => {}
        other => panic!("expected the server to close, got {other:?}"),
    }
    assert!(
        start.elapsed() >= IDLE - Duration::from_millis(50),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(h.next_post_loop().1, Outcome::Timeout(Deadline::Idle));
}

// ---- panics ----

/// A hook that panics ends its own connection only: the others, on the
/// same event threads, serve on.
#[test]
fn test_a_panicking_hook_ends_only_its_connection() {
    let h = Harness::start_events(|_| {});
    let client = Client::new();
    let mut others: Vec<_> = (0..6).map(|_| client.connect(h.addr).unwrap()).collect();
    let mut s = raw(h.addr);
    greet(&mut s);
    assert_eq!(send_msg(&mut s, b"panic"), 0xFF);
    assert_eq!(read_to_close(&mut s), b"");
    assert_eq!(h.next_post_loop().1, Outcome::Panicked);
    h.wait_event(LONG, |_, e| *e == Event::Shutdown(Outcome::Panicked));
    for (i, conn) in others.iter_mut().enumerate() {
        conn.transmit(format!("still {i}").as_bytes()).unwrap();
        assert_eq!(conn.receive().unwrap(), format!("still {i}").as_bytes());
    }
    assert_serves(&h);
}

/// A factory that panics costs its connection (closed unanswered, with no
/// `conn_init`), not the server.
#[test]
fn test_a_panicking_factory_costs_only_its_connection() {
    let made = Arc::new(AtomicUsize::new(0));
    let h = Harness::start_events(|s| {
        let made = made.clone();
        s.set_event_handler(move || {
            if made.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("a factory panicked on purpose");
            }
            events::on_message(|conn, msg| conn.send(msg))
        })
    });
    let mut s = raw(h.addr);
    assert_eq!(read_to_close(&mut s), b"", "closed without a greeting");
    assert_serves(&h);
    assert_eq!(made.load(Ordering::SeqCst), 2);
    assert_eq!(
        h.inits.load(Ordering::SeqCst),
        1,
        "conn_init for the served one only"
    );
}

// ---- the graceful stop ----

/// On b"stop" queues three messages (one of 1 MiB) and stops the server;
/// on b"bye" queues b"bye" and ends its own connection. Reports each end.
struct Farewell(mpsc::Sender<Outcome>);

impl EventHandler for Farewell {
    fn transmission_received(&mut self, conn: &mut EventConn, msg: &[u8]) -> Result<(), Error> {
        match msg {
            b"stop" => {
                conn.send(b"one")?;
                conn.send(b"two")?;
                conn.send(&pattern(1 << 20))?;
                assert_eq!(conn.queued(), 3);
                conn.loop_stop_handle().stop();
            }
            b"bye" => {
                conn.send(b"bye")?;
                assert!(!conn.is_stopping());
                conn.stop();
                assert!(conn.is_stopping());
            }
            _ => {}
        }
        Ok(())
    }

    fn post_loop(&mut self, _: &mut EventConn, result: &Result<(), Error>) {
        let _ = self.0.send(result.into());
    }
}

/// What a hook queued before a stop still goes out, whole and in order,
/// before its connection ends; idle connections end with `Ok`; `start`
/// returns.
#[test]
fn test_stop_still_delivers_what_was_queued() {
    let (tx, ends) = mpsc::channel();
    let mut server = Server::new();
    server.set_event_handler(move || Farewell(tx.clone()));
    let mut running = Running::start(server);
    let mut idle: Vec<_> = (0..3)
        .map(|_| {
            let mut s = raw(running.addr);
            greet(&mut s);
            s
        })
        .collect();
    let client = Client::new();

    // One connection ends itself once its last message went out.
    let mut bye = client.connect(running.addr).unwrap();
    bye.transmit(b"bye").unwrap();
    assert_eq!(bye.receive().unwrap(), b"bye");
    match bye.receive() {
        Err(e) if e.is_closed() => {}
        other => panic!("expected the close, got {other:?}"),
    }
    assert_eq!(ends.recv_timeout(LONG).unwrap(), Outcome::Ok);

    // Another stops the server.
    let mut conn = client.connect(running.addr).unwrap();
    conn.transmit(b"stop").unwrap();
    assert_eq!(conn.receive().unwrap(), b"one");
    assert_eq!(conn.receive().unwrap(), b"two");
    assert!(
        conn.receive().unwrap() == pattern(1 << 20),
        "the 1 MiB message"
    );
    match conn.receive() {
        Err(e) if e.is_closed() => {}
        other => panic!("expected the close, got {other:?}"),
    }
    running.join();
    let outcomes: Vec<Outcome> = ends.try_iter().collect();
    assert_eq!(
        outcomes,
        vec![Outcome::Ok; 4],
        "the stopping one and the idle ones"
    );
    for s in &mut idle {
        assert_eq!(read_to_close(s), b"");
    }
}

// ---- the reference client ----

/// The interop scripts' server, on an event thread: echoes; on b"req"
/// asks b"question", and answers the peer's b"answer" with b"got:answer".
struct PyEcho;

impl EventHandler for PyEcho {
    fn transmission_received(&mut self, conn: &mut EventConn, msg: &[u8]) -> Result<(), Error> {
        match msg {
            b"req" => conn.send(b"question"),
            b"answer" => conn.send(b"got:answer"),
            _ => conn.send(msg),
        }
    }
}

/// The Python reference client (`tinyproto` 3.0) through an event-thread
/// server: every size, and a request answered by a question. Skipped as the
/// interop tests skip (see `tinyproto_tests::python`).
#[test]
fn test_python_client_to_an_event_thread_server() {
    let Some(py) = tinyproto_tests::python() else {
        return;
    };
    let counts = tinyproto_tests::Counts::default();
    let mut server = Server::new();
    server.set_event_handler(|| PyEcho);
    server.set_hooks(counts.clone());
    let mut server = tinyproto_tests::RunningServer::start(server);
    let port = server.addr.port().to_string();
    let sizes = "0,1,5,65535,65537,1048576,8388608";
    let mut client = tinyproto_tests::PyProcess::spawn(
        &py,
        "py_client.py",
        &["--port", &port, "--sizes", sizes, "--req"],
    );
    let long = Duration::from_secs(120);
    assert_eq!(client.client_ok(long), 7 + 1);
    assert!(counts.wait_shutdowns(1, long), "conn_shutdown did not run");
    assert_eq!(counts.inits.load(Ordering::SeqCst), 1);
    assert_eq!(*counts.results.lock().unwrap(), ["Ok(())"]);
    server.stop();
}

// ---- the other hooks ----

/// Counts `loop_pass` calls; refuses messages by their length with a
/// reason (over 100 bytes a recoverable one, exactly 13 one that ends the
/// connection); on b"flood" sends b"flood" five times and reports which
/// sends were queued; echoes the rest. Reports its end.
struct Busy {
    passes: Arc<AtomicUsize>,
    events: mpsc::Sender<String>,
}

impl EventHandler for Busy {
    fn loop_pass(&mut self, _: &mut EventConn) -> Result<(), Error> {
        self.passes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn message_announced(&mut self, _: &EventConn, len: u32) -> Take {
        match len {
            13 => Take::Refuse(Error::handler("thirteen is unlucky")),
            101.. => Take::Refuse(Error::Plugin("over the quota".into())),
            _ => Take::Whole,
        }
    }

    fn transmission_received(&mut self, conn: &mut EventConn, msg: &[u8]) -> Result<(), Error> {
        if msg != b"flood" {
            return conn.send(msg);
        }
        let queued: Vec<String> = (0..5)
            .map(|_| match conn.send(msg) {
                Ok(()) => "queued".to_owned(),
                Err(Error::QueueFull(id)) if id == conn.id() => "full".to_owned(),
                Err(e) => format!("{e:?}"),
            })
            .collect();
        let _ = self.events.send(queued.join(" "));
        Ok(())
    }

    fn post_loop(&mut self, _: &mut EventConn, result: &Result<(), Error>) {
        let _ = self.events.send(match result {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string(),
        });
    }
}

/// `lifecycle.rs`'s, against the event threads: `loop_pass` runs after
/// each message, and on an idle connection only if an interval is set.
#[test]
fn test_loop_pass_runs_on_messages_and_on_the_interval_only() {
    for interval in [None, Some(Duration::from_millis(50))] {
        let passes = Arc::new(AtomicUsize::new(0));
        let (tx, _events) = mpsc::channel();
        let mut server = Server::new();
        let counter = passes.clone();
        server.set_event_handler(move || Busy {
            passes: counter.clone(),
            events: tx.clone(),
        });
        server.set_loop_pass_interval(interval);
        let mut running = Running::start(server);
        let mut conn = Client::new().connect(running.addr).unwrap();
        conn.transmit(b"one").unwrap();
        assert_eq!(conn.receive().unwrap(), b"one");
        assert!(
            wait_until(LONG, || passes.load(Ordering::SeqCst) >= 1),
            "after a message"
        );
        let after_message = passes.load(Ordering::SeqCst);
        match interval {
            None => {
                // Nothing can be waited on for "never": a bounded look.
                thread::sleep(Duration::from_millis(400));
                let idle = passes.load(Ordering::SeqCst) - after_message;
                assert_eq!(idle, 0, "an idle connection was woken {idle} time(s)");
            }
            Some(_) => assert!(
                wait_until(LONG, || passes.load(Ordering::SeqCst) >= after_message + 3),
                "the interval never came round"
            ),
        }
        conn.close();
        running.stop.stop();
        running.join();
    }
}

/// `lifecycle.rs`'s, against the event threads: a refusal with a
/// recoverable reason is a 0x00 and the connection goes on; with another,
/// a 0x00 and the end of the connection, whose `post_loop` sees it.
#[test]
fn test_a_refusal_with_a_reason_goes_on_or_ends_the_connection() {
    let (tx, events) = mpsc::channel();
    let mut server = Server::new();
    server.set_event_handler(move || Busy {
        passes: Arc::default(),
        events: tx.clone(),
    });
    let _running = Running::start(server);
    let mut conn = Client::new().connect(_running.addr).unwrap();
    refusals_with_a_reason(&mut conn, &events);
    match conn.receive() {
        Err(e) if e.is_closed() => {}
        other => panic!("expected the close, got {other:?}"),
    }
}

/// `EventConn::send` queues up to `queue_len` messages, then says
/// `QueueFull` (recoverable: the hook goes on); what was queued goes out.
#[test]
fn test_send_beyond_the_queue_len_is_queue_full() {
    let (tx, events) = mpsc::channel();
    let mut server = Server::new();
    server.set_queue_len(3);
    server.set_event_handler(move || Busy {
        passes: Arc::default(),
        events: tx.clone(),
    });
    let _running = Running::start(server);
    let mut conn = Client::new().connect(_running.addr).unwrap();
    conn.transmit(b"flood").unwrap();
    assert_eq!(
        events.recv_timeout(LONG).unwrap(),
        "queued queued queued full full"
    );
    for _ in 0..3 {
        assert_eq!(conn.receive().unwrap(), b"flood");
    }
    conn.transmit(b"then").unwrap();
    assert_eq!(conn.receive().unwrap(), b"then", "only the three");
    conn.close();
    assert_eq!(events.recv_timeout(LONG).unwrap(), "ok");
}

/// A stop while a peer holds our message unanswered: after the drain
/// timeout its socket is closed, its `post_loop` and `conn_shutdown` run
/// with the error, and `start` returns.
#[test]
fn test_stop_closes_a_stuck_connection_after_the_drain_timeout() {
    const DRAIN: Duration = Duration::from_millis(300);
    let h = Harness::start_events(|s| s.set_drain_timeout(DRAIN));
    let mut s = raw(h.addr);
    greet(&mut s);
    assert_eq!(send_msg(&mut s, b"stuck"), 0xFF);
    // The echo's length, never answered.
    assert_eq!(read_n(&mut s, 4), 5u32.to_be_bytes());
    let start = Instant::now();
    h.stop();
    assert!(start.elapsed() >= DRAIN, "{:?}", start.elapsed());
    let (_, outcome) = h.next_post_loop();
    assert_ne!(outcome, Outcome::Ok);
    let (_, e) = h.wait_event(LONG, |_, e| matches!(e, Event::Shutdown(_)));
    assert_eq!(e, Event::Shutdown(outcome));
    assert_eq!(read_to_close(&mut s), b"", "the socket was closed");
}

/// A peer's close that comes right behind its last bytes (in the same
/// readiness event) is seen at once: mid-length, mid-payload and between
/// messages, each ends its connection with the end of the stream, not at a
/// deadline (the default ones are far longer than the bound here). The
/// peer reads all it was sent first, so that its close is a FIN, not a
/// reset. (On a thread per connection too, which shows the test sound.)
#[test]
fn test_a_close_right_behind_the_last_bytes_is_seen_at_once() {
    close_right_behind_the_last_bytes(Mode::Events);
}

#[test]
fn test_a_close_right_behind_the_last_bytes_is_seen_at_once_on_threads() {
    close_right_behind_the_last_bytes(Mode::Threads);
}

fn close_right_behind_the_last_bytes(mode: Mode) {
    const AT_ONCE: Duration = Duration::from_secs(5);
    let h = Harness::start_in(mode, |_| {});
    for round in 0..20 {
        // Mid-length.
        let mut s = raw(h.addr);
        greet(&mut s);
        s.write_all(&[0, 0]).unwrap();
        drop(s);
        let (_, ended) = h.wait_event(AT_ONCE, |_, e| matches!(e, Event::PostLoop(_)));
        assert_eq!(
            ended,
            Event::PostLoop(Outcome::Eof(Phase::Length)),
            "round {round}"
        );
        // Mid-payload.
        let mut s = raw(h.addr);
        greet(&mut s);
        s.write_all(&9u32.to_be_bytes()).unwrap();
        assert_eq!(read_n(&mut s, 1), [0xFF]);
        s.write_all(&[1, 2]).unwrap();
        drop(s);
        let (_, ended) = h.wait_event(AT_ONCE, |_, e| matches!(e, Event::PostLoop(_)));
        assert_eq!(
            ended,
            Event::PostLoop(Outcome::Eof(Phase::Payload)),
            "round {round}"
        );
        // Between messages, right behind a message that needs no answer
        // (an echo of nothing is still a message: take the echo first).
        let mut s = raw(h.addr);
        greet(&mut s);
        assert_eq!(send_msg(&mut s, b""), 0xFF);
        assert_eq!(recv_msg(&mut s), b"");
        s.write_all(&[0, 0, 0]).unwrap();
        drop(s);
        let (_, ended) = h.wait_event(AT_ONCE, |_, e| matches!(e, Event::PostLoop(_)));
        assert_eq!(
            ended,
            Event::PostLoop(Outcome::Eof(Phase::Length)),
            "round {round}"
        );
    }
}

// ---- plugins ----

/// The plugins run on the event threads both ways: zlib on both sides, the
/// messages whole and byte-exact, compressed on the wire; a handler that
/// asks for chunks under plugins gets a refusal (0x00) and goes on.
#[cfg(feature = "zlib")]
#[test]
fn test_plugins_run_both_ways_on_the_event_threads() {
    use tinyproto_std::ZlibPlugin;
    let tap = tinyproto_tests::WireTap::default();
    let (tx, events) = mpsc::channel();
    let mut server = Server::new();
    server.register_plugin(ZlibPlugin::default());
    server.register_plugin(tap.clone());
    server.set_event_handler(move || ChunkChecker {
        limit: 100,
        check: PatternChunks::default(),
        events: tx.clone(),
    });
    let _running = Running::start(server);
    let mut client = Client::new();
    client.register_plugin(ZlibPlugin::default());
    let mut conn = client.connect(_running.addr).unwrap();
    // Up to 100 bytes the checker asks for chunks: refused under plugins,
    // and the connection goes on (to the next refusal).
    for _ in 0..2 {
        match conn.transmit(&pattern(100)) {
            Err(Error::Protocol(tinyproto::Error::Rejected { .. })) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    drop(conn);
    assert_eq!(
        next_starting(&events, "post_loop"),
        "post_loop Ok after 0 bytes"
    );

    let mut server = Server::new();
    server.register_plugin(ZlibPlugin::default());
    server.register_plugin(tap.clone());
    server.set_event_handler(|| events::on_message(|conn, msg| conn.send(msg)));
    let _running = Running::start(server);
    let mut conn = client.connect(_running.addr).unwrap();
    for size in SIZES {
        let msg = pattern(size);
        conn.transmit(&msg).unwrap();
        let echo = conn.receive().unwrap();
        assert!(echo == msg, "the echo of {size} bytes differs");
    }
    let (sent, received) = (tap.sent.lock().unwrap(), tap.received.lock().unwrap());
    assert_eq!((sent.len(), received.len()), (SIZES.len(), SIZES.len()));
    // The 8 MiB pattern crossed compressed, both ways.
    assert!(
        sent[5] < 1 << 20 && received[5] < 1 << 20,
        "{sent:?} {received:?}"
    );
}

/// A stop while a message waits for room: it is answered 0x00 (no room
/// will come in time) and its connection ends; the message in flight that
/// holds the room is finished and answered.
#[test]
fn test_a_message_waiting_for_room_is_refused_at_a_stop() {
    let h = Harness::start_events(|s| s.set_memory_budget(1000));
    // Waiting for room: it holds the message deadline, no status yet.
    let (mut first, mut second) = second_message_waiting_for_room(h.addr);

    h.request_stop();
    assert_eq!(read_to_close(&mut second), [0x00], "refused, then closed");
    first.write_all(&[1; 1000]).unwrap();
    assert_eq!(recv_msg(&mut first), [1; 1000]);
    assert_eq!(read_to_close(&mut first), b"");
    h.stop();
    let posts: Vec<_> = h
        .drain_events()
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::PostLoop(outcome) => Some(outcome),
            _ => None,
        })
        .collect();
    assert_eq!(posts, [Outcome::Ok, Outcome::Ok]);
}

/// Panics in the hook named `.0`, on the first connection only; takes
/// 3-byte messages in chunks and echoes; reports its end.
struct PanicsIn(&'static str, Arc<AtomicUsize>, mpsc::Sender<Outcome>);

impl PanicsIn {
    fn maybe_panic(&self, hook: &str) {
        if self.0 == hook && self.1.load(Ordering::SeqCst) == 1 {
            panic!("{hook} panicked on purpose");
        }
    }
}

impl EventHandler for PanicsIn {
    fn pre_loop(&mut self, _: &mut EventConn) -> Result<(), Error> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.maybe_panic("pre_loop");
        Ok(())
    }
    fn loop_pass(&mut self, _: &mut EventConn) -> Result<(), Error> {
        self.maybe_panic("loop_pass");
        Ok(())
    }
    fn message_announced(&mut self, _: &EventConn, len: u32) -> Take {
        self.maybe_panic("message_announced");
        if len == 3 {
            Take::Chunks
        } else {
            Take::Whole
        }
    }
    fn transmission_received(&mut self, conn: &mut EventConn, msg: &[u8]) -> Result<(), Error> {
        self.maybe_panic("transmission_received");
        conn.send(msg)
    }
    fn transmission_chunk(&mut self, _: &[u8]) -> Result<(), Error> {
        self.maybe_panic("transmission_chunk");
        Ok(())
    }
    fn transmission_complete(&mut self, conn: &mut EventConn, _: u32) -> Result<(), Error> {
        self.maybe_panic("transmission_complete");
        conn.send(b"chunks")
    }
    fn transmission_sent(&mut self, _: &mut EventConn, _: &[u8], _: &Result<(), Error>) {
        self.maybe_panic("transmission_sent");
    }
    fn post_loop(&mut self, _: &mut EventConn, result: &Result<(), Error>) {
        let _ = self.2.send(result.into());
        self.maybe_panic("post_loop");
    }
}

/// A panic in any hook ends that connection only, with `Panicked` (one in
/// `post_loop` is logged: `conn_shutdown` still runs), and the server
/// serves the next connection.
#[test]
fn test_a_panic_in_any_hook_ends_only_its_connection() {
    for hook in [
        "pre_loop",
        "message_announced",
        "transmission_received",
        "transmission_chunk",
        "transmission_complete",
        "transmission_sent",
        "loop_pass",
        "post_loop",
    ] {
        let (tx, ends) = mpsc::channel();
        let counts = tinyproto_tests::Counts::default();
        let made = Arc::new(AtomicUsize::new(0));
        let mut server = Server::new();
        server.set_hooks(counts.clone());
        let shared = made.clone();
        server.set_event_handler(move || PanicsIn(hook, shared.clone(), tx.clone()));
        let _running = Running::start(server);
        let mut s = raw(_running.addr);
        greet(&mut s);
        // A message taken whole, then one in chunks, each echoed.
        let _ = (|| -> Option<()> {
            for msg in [&b"whole"[..], b"abc"] {
                s.write_all(&(msg.len() as u32).to_be_bytes()).ok()?;
                let mut status = [0u8; 1];
                std::io::Read::read_exact(&mut s, &mut status).ok()?;
                if status != [0xFF] {
                    return None;
                }
                s.write_all(msg).ok()?;
                let mut len = [0u8; 4];
                std::io::Read::read_exact(&mut s, &mut len).ok()?;
                s.write_all(&[0xFF]).ok()?;
                let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
                std::io::Read::read_exact(&mut s, &mut reply).ok()?;
            }
            drop(s);
            Some(())
        })();
        let expected = if hook == "post_loop" {
            Outcome::Ok
        } else {
            Outcome::Panicked
        };
        assert_eq!(ends.recv_timeout(LONG).unwrap(), expected, "{hook}");
        assert!(
            counts.wait_shutdowns(1, LONG),
            "{hook}: conn_shutdown did not run"
        );
        // The next connection (whose hooks do not panic) is served.
        let mut conn = Client::new().connect(_running.addr).unwrap();
        conn.transmit(b"next").unwrap();
        assert_eq!(conn.receive().unwrap(), b"next", "{hook}");
        conn.transmit(b"abc").unwrap();
        assert_eq!(conn.receive().unwrap(), b"chunks", "{hook}");
    }
}

// ---- duplex links ----

/// On a duplex server the handler of an up half cannot send on it
/// (`Error::UpHalf`); `send_to` with its id reaches the client's down half.
#[test]
fn test_an_up_half_refuses_sends_and_send_to_reaches_its_down_half() {
    let (tx, sends) = mpsc::channel();
    let mut server = Server::new();
    let addr = server.add_addr("127.0.0.1:0").unwrap();
    server.set_duplex(true);
    server.set_event_handler(move || {
        let tx = tx.clone();
        events::on_message(move |conn, msg| {
            let _ = tx.send((conn.direction(), format!("{:?}", conn.send(msg))));
            conn.active_connections().send_to(conn.id(), msg)
        })
    });
    let stop = server.stop_handle();
    let thread = thread::spawn(move || server.start());
    let link = Client::new().connect_duplex(addr).expect("a duplex link");
    let (mut up, mut down) = link.split();
    up.transmit(b"ping").unwrap();
    assert_eq!(down.receive().unwrap(), b"ping", "through send_to");
    let (direction, sent) = sends.recv_timeout(LONG).expect("the hook ran");
    assert_eq!(direction, Some(tinyproto_std::Direction::Up));
    assert_eq!(sent, format!("{:?}", Err::<(), _>(Error::UpHalf)));
    up.close();
    down.close();
    stop.stop();
    thread.join().unwrap().unwrap();
}

// ---- a client's connections ----

/// Sends `hello <n>` once greeted, checks its echo, and ends.
struct Caller {
    n: usize,
    echoed: mpsc::Sender<(usize, bool)>,
    hooks: Arc<AtomicUsize>,
}

impl EventHandler for Caller {
    fn pre_loop(&mut self, conn: &mut EventConn) -> Result<(), Error> {
        self.hooks.fetch_add(1, Ordering::SeqCst);
        conn.send(format!("hello {}", self.n).as_bytes())
    }

    fn transmission_received(&mut self, conn: &mut EventConn, msg: &[u8]) -> Result<(), Error> {
        let _ = self
            .echoed
            .send((self.n, msg == format!("hello {}", self.n).as_bytes()));
        conn.stop();
        Ok(())
    }

    fn post_loop(&mut self, _: &mut EventConn, _: &Result<(), Error>) {
        self.hooks.fetch_add(1, Ordering::SeqCst);
    }
}

/// A client's event handler: `Client::connect_to` returns once greeted,
/// every connection runs on the event threads, and each ends as it chose.
#[test]
fn test_a_client_runs_its_connections_on_the_event_threads() {
    const CONNS: usize = 50;
    let h = Harness::start_in(Mode::Threads, |_| {});
    let (echoed, echoes) = mpsc::channel();
    let hooks = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut client = Client::new();
    {
        let (echoed, hooks) = (echoed.clone(), hooks.clone());
        client.set_event_handler(move || Caller {
            n: next.fetch_add(1, Ordering::SeqCst),
            echoed: echoed.clone(),
            hooks: hooks.clone(),
        });
    }
    let ids: Vec<_> = (0..CONNS)
        .map(|_| client.connect_to(h.addr).expect("connected and greeted"))
        .collect();
    let mut seen = [false; CONNS];
    for _ in 0..CONNS {
        let (n, right) = echoes.recv_timeout(LONG).expect("an echo");
        assert!(right, "connection {n}: a wrong echo");
        seen[n] = true;
    }
    assert!(seen.iter().all(|s| *s), "every connection echoed");
    for id in ids {
        assert!(
            matches!(client.join(id, LONG), Some(Ok(()))),
            "{id} ended as it chose"
        );
    }
    assert_eq!(
        hooks.load(Ordering::SeqCst),
        2 * CONNS,
        "pre_loop and post_loop each once"
    );
    drop(echoed);
}

/// A greeting that fails (a full server's 0xFE) is `connect_to`'s error,
/// and no hook of the connection runs, as on a thread of its own.
#[test]
fn test_a_client_connect_to_a_full_server_is_an_error_and_runs_no_hook() {
    let h = Harness::start_events(|s| s.set_connection_limit(Some(1)));
    let mut first = raw(h.addr);
    greet(&mut first);
    assert!(wait_until(LONG, || h.connections.len() == 1));
    let (echoed, _echoes) = mpsc::channel();
    let hooks = Arc::new(AtomicUsize::new(0));
    let mut client = Client::new();
    {
        let hooks = hooks.clone();
        client.set_event_handler(move || Caller {
            n: 0,
            echoed: echoed.clone(),
            hooks: hooks.clone(),
        });
    }
    match client.connect_to(h.addr) {
        Err(Error::Protocol(tinyproto::Error::ConnectionLimit)) => {}
        other => panic!("expected the connection limit, got {other:?}"),
    }
    client.close_all();
    assert_eq!(hooks.load(Ordering::SeqCst), 0, "no hook ran");
    drop(first);
    // Its slot is free once the server saw the close.
    h.wait_no_connections();
    assert_serves(&h);
}

/// `connect_to` waits for the greeting, which an event thread drives: called
/// from an event hook it would wait for its own thread. It says so at once
/// (`WouldBlock`), and the thread serves on.
#[test]
fn test_connect_to_from_an_event_hook_is_refused_at_once() {
    let target = Harness::start_events(|_| {});
    let client = Arc::new(std::sync::Mutex::new(Client::new()));
    client.lock().unwrap().set_event_handler(|| ());
    let to = target.addr;
    let mut server = Server::new();
    let addr = server.add_addr("127.0.0.1:0").unwrap();
    server.set_event_handler(move || {
        let client = client.clone();
        events::on_message(move |conn, _| {
            let outcome = client.lock().unwrap().connect_to(to);
            let kind = match outcome {
                Err(Error::Io(e)) => format!("{:?}", e.kind()),
                other => format!("{other:?}"),
            };
            conn.send(kind.as_bytes())
        })
    });
    let stop = server.stop_handle();
    let thread = thread::spawn(move || server.start());
    let mut conn = Client::new().connect(addr).unwrap();
    for _ in 0..4 {
        conn.transmit(b"connect").unwrap();
        assert_eq!(conn.receive().unwrap(), b"WouldBlock");
    }
    conn.close();
    stop.stop();
    thread.join().unwrap().unwrap();
}
