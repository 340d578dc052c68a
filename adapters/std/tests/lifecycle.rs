//! Server and client lifecycle: several addresses, graceful stop, the
//! connection registry, the client loop and plain synchronous use.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use common::*;
use tinyproto_std::{Client, Conn, Context, Deadline, Error, Handler, Hooks, Server, Timeouts};

#[test]
fn test_several_addresses_ipv4_and_ipv6_port_zero() {
    let mut server = Server::new();
    let v4 = server.add_addr("127.0.0.1:0").unwrap();
    assert_ne!(v4.port(), 0, "the bound port is reported");
    let v4b = server.add_addr(("127.0.0.1", 0)).unwrap();
    let v6 = match server.add_addr("[::1]:0") {
        Ok(addr) => Some(addr),
        Err(e) => {
            eprintln!("no IPv6 loopback here ({e}); testing IPv4 only");
            None
        }
    };
    assert_eq!(server.local_addrs().len(), 2 + v6.is_some() as usize);
    server.set_conn_handler(|| EchoOnce);
    let stop = server.stop_handle();
    let thread = thread::spawn(move || server.start());
    for addr in [Some(v4), Some(v4b), v6].into_iter().flatten() {
        let mut conn = Client::new().connect(addr).unwrap();
        assert_eq!(conn.peer_addr(), addr);
        conn.transmit(b"hi").unwrap();
        assert_eq!(conn.receive().unwrap(), b"hi");
    }
    stop.stop();
    thread.join().unwrap().unwrap();
}

struct EchoOnce;
impl Handler for EchoOnce {
    fn transmission_received(&mut self, conn: &mut Conn, msg: &[u8]) -> Result<(), Error> {
        conn.transmit(msg)
    }
}

#[test]
fn test_start_without_address_fails() {
    assert!(Server::new().start().is_err());
}

in_both_modes! {
    test_graceful_stop_runs_post_loop_and_conn_shutdown_for_everyone;
    test_registry_broadcast_and_send_to;
}

fn test_graceful_stop_runs_post_loop_and_conn_shutdown_for_everyone(mode: Mode) {
    let h = Harness::start_in(mode, |_| {});
    let mut peers: Vec<_> = (0..3)
        .map(|_| {
            let mut s = raw(h.addr);
            greet(&mut s);
            s
        })
        .collect();
    // One peer is in the middle of a message when the stop comes.
    let mut busy = raw(h.addr);
    greet(&mut busy);
    busy.write_all(&5u32.to_be_bytes()).unwrap();
    assert_eq!(read_n(&mut busy, 1), [0xFF]);
    busy.write_all(b"he").unwrap();
    assert!(wait_until(LONG, || h.connections.len() == 4));

    h.request_stop();
    // The message in flight is finished and answered.
    busy.write_all(b"llo").unwrap();
    assert_eq!(recv_msg(&mut busy), b"hello");
    h.stop();
    let events = h.drain_events();
    let posts = events
        .iter()
        .filter(|(_, e)| *e == Event::PostLoop(Outcome::Ok))
        .count();
    let shutdowns = events
        .iter()
        .filter(|(_, e)| *e == Event::Shutdown(Outcome::Ok))
        .count();
    assert_eq!((posts, shutdowns), (4, 4), "{events:?}");
    // Every peer sees the close.
    for p in &mut peers {
        assert_eq!(read_to_close(p), b"");
    }
    assert_eq!(read_to_close(&mut busy), b"");
}

#[test]
fn test_stop_closes_a_stuck_connection_after_the_drain_timeout() {
    let h = Harness::start(|s| s.set_drain_timeout(Duration::from_millis(300)));
    let mut s = raw(h.addr);
    greet(&mut s);
    assert_eq!(send_msg(&mut s, b"sleep"), 0xFF);
    h.wait_event(LONG, |_, e| *e == Event::Received(b"sleep".to_vec()));
    h.stop();
    // The handler sleeps far longer than the drain timeout plus the grace
    // period: start() returns anyway, reporting the connection as drained.
    let (_, e) = h.wait_event(LONG, |_, e| matches!(e, Event::Shutdown(_)));
    assert_eq!(e, Event::Shutdown(Outcome::Timeout(Deadline::Drain)));
    assert_eq!(read_to_close(&mut s), b"", "the socket was closed");
}

/// `Connections::send_to` and `broadcast` reach connections, from a hook
/// and from outside. No loop pass interval is set and the connections are
/// idle: only the wake of the queue moves them.
fn test_registry_broadcast_and_send_to(mode: Mode) {
    let h = Harness::start_in(mode, |_| {});
    let client = Client::new();
    let mut a = client.connect(h.addr).unwrap();
    let mut b = client.connect(h.addr).unwrap();
    let mut c = client.connect(h.addr).unwrap();
    assert!(wait_until(LONG, || h.connections.len() == 3));

    a.transmit(b"all:news").unwrap();
    assert_eq!(a.receive().unwrap(), b"sent");
    assert_eq!(b.receive().unwrap(), b"news");
    assert_eq!(c.receive().unwrap(), b"news");

    let ids = h.connections.ids();
    assert_eq!(ids.len(), 3);
    for id in &ids {
        h.connections.send_to(*id, b"direct").unwrap();
    }
    for conn in [&mut a, &mut b, &mut c] {
        assert_eq!(conn.receive().unwrap(), b"direct");
    }
    assert_eq!(h.connections.broadcast(b"all", None), 3);
    for conn in [&mut a, &mut b, &mut c] {
        assert_eq!(conn.receive().unwrap(), b"all");
    }
    // Many at once, each connection's in order.
    for i in 0..100u32 {
        for id in &ids {
            h.connections.send_to(*id, &i.to_be_bytes()).unwrap();
        }
    }
    for conn in [&mut a, &mut b, &mut c] {
        for i in 0..100u32 {
            assert_eq!(conn.receive().unwrap(), i.to_be_bytes());
        }
    }

    let gone = ids[0];
    drop((a, b, c));
    h.wait_no_connections();
    match h.connections.send_to(gone, b"late") {
        Err(Error::UnknownConnection(id)) => assert_eq!(id, gone),
        other => panic!("expected UnknownConnection, got {other:?}"),
    }
}

/// Server hooks run in order: pre_loop, loop_pass, conn_init before the
/// connection's pre_loop, conn_shutdown after its post_loop, post_loop last.
#[test]
fn test_server_hook_order() {
    #[derive(Clone)]
    struct Log(mpsc::Sender<String>);
    impl Hooks for Log {
        fn pre_loop(&mut self, _: &Context) {
            let _ = self.0.send("server pre_loop".into());
        }
        fn loop_pass(&mut self, ctx: &Context) {
            let what = if ctx.local_addrs().is_empty() {
                "server loop_pass without addresses"
            } else {
                "server loop_pass"
            };
            let _ = self.0.send(what.into());
        }
        fn conn_init(&mut self, ctx: &Context, id: tinyproto_std::ConnId, _: SocketAddr) {
            assert!(
                ctx.active_connections().contains(id),
                "registered before conn_init"
            );
            let _ = self.0.send("conn_init".into());
        }
        fn conn_shutdown(
            &mut self,
            _: &Context,
            _: tinyproto_std::ConnId,
            _: SocketAddr,
            _: &Result<(), Error>,
        ) {
            let _ = self.0.send("conn_shutdown".into());
        }
        fn post_loop(&mut self, _: &Context) {
            let _ = self.0.send("server post_loop".into());
        }
    }
    struct ConnLog(mpsc::Sender<String>);
    impl Handler for ConnLog {
        fn pre_loop(&mut self, _: &mut Conn) -> Result<(), Error> {
            let _ = self.0.send("conn pre_loop".into());
            Ok(())
        }
        fn post_loop(&mut self, _: &mut Conn, _: &Result<(), Error>) {
            let _ = self.0.send("conn post_loop".into());
        }
    }
    let (tx, rx) = mpsc::channel();
    let mut server = Server::new();
    let addr = server.add_addr("127.0.0.1:0").unwrap();
    server.set_hooks(Log(tx.clone()));
    server.set_conn_handler(move || ConnLog(tx.clone()));
    let stop = server.stop_handle();
    let thread = thread::spawn(move || server.start());
    let conn = Client::new().connect(addr).unwrap();
    conn.close();
    let mut seen = Vec::new();
    while !seen.contains(&"conn_shutdown".to_string()) {
        seen.push(rx.recv_timeout(LONG).expect("hook calls"));
    }
    stop.stop();
    thread.join().unwrap().unwrap();
    seen.extend(rx.try_iter());
    seen.retain(|s| s != "server loop_pass");
    assert_eq!(
        seen,
        [
            "server pre_loop",
            "conn_init",
            "conn pre_loop",
            "conn post_loop",
            "conn_shutdown",
            "server post_loop"
        ]
    );
}

/// The client loop with hooks and a handler-driven connection.
#[test]
fn test_client_loop_with_handler_and_hooks() {
    let h = Harness::start(|_| {});

    struct Counter(Arc<AtomicUsize>);
    impl Handler for Counter {
        fn pre_loop(&mut self, conn: &mut Conn) -> Result<(), Error> {
            conn.transmit(b"0")
        }
        fn transmission_received(&mut self, conn: &mut Conn, msg: &[u8]) -> Result<(), Error> {
            let n: usize = String::from_utf8(msg.to_vec()).unwrap().parse().unwrap();
            self.0.store(n, Ordering::SeqCst);
            if n == 20 {
                conn.loop_stop_handle().stop();
                conn.stop();
                return Ok(());
            }
            // Request/reply from inside the hook, without the loop.
            conn.transmit((n + 1).to_string().as_bytes())?;
            let echo = conn.receive()?;
            conn.transmit(&echo)
        }
    }
    struct Counting(Arc<AtomicUsize>);
    impl Hooks for Counting {
        fn pre_loop(&mut self, _: &Context) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn loop_pass(&mut self, ctx: &Context) {
            if !ctx.local_addrs().is_empty() {
                self.0.fetch_add(10_000, Ordering::SeqCst);
            }
        }
        fn post_loop(&mut self, _: &Context) {
            self.0.fetch_add(100, Ordering::SeqCst);
        }
        fn conn_shutdown(
            &mut self,
            _: &Context,
            _: tinyproto_std::ConnId,
            _: SocketAddr,
            r: &Result<(), Error>,
        ) {
            // 10 for a clean end, something else shows up in the sum.
            let n = if r.is_ok() { 10 } else { 1_000 };
            self.0.fetch_add(n, Ordering::SeqCst);
        }
    }
    let count = Arc::new(AtomicUsize::new(0));
    let hooks = Arc::new(AtomicUsize::new(0));
    let mut client = Client::new();
    let c = count.clone();
    client.set_conn_handler(move || Counter(c.clone()));
    client.set_hooks(Counting(hooks.clone()));
    let id = client.connect_to(h.addr).unwrap();
    assert!(client.active_connections().contains(id));
    let watchdog = client.stop_handle();
    let guard = thread::spawn(move || {
        thread::sleep(LONG);
        watchdog.stop();
    });
    client.start();
    assert_eq!(count.load(Ordering::SeqCst), 20);
    assert_eq!(hooks.load(Ordering::SeqCst), 111);
    drop(guard);
}

#[test]
fn test_plain_client_receive_timeout_is_recoverable() {
    let h = Harness::start(|_| {});
    let mut client = Client::new();
    client.set_timeouts(Timeouts::default().with_receive(Duration::from_millis(200)));
    let mut conn = client.connect(h.addr).unwrap();
    match conn.receive() {
        Err(Error::Timeout(Deadline::Receive)) => {}
        other => panic!("expected a receive timeout, got {other:?}"),
    }
    assert_eq!(conn.try_receive(Duration::from_millis(10)).unwrap(), None);
    conn.transmit(b"still usable").unwrap();
    assert_eq!(conn.receive().unwrap(), b"still usable");
}

#[test]
fn test_connect_to_nothing_fails_typed() {
    // Bind then drop: the port is (almost certainly) closed now.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    match Client::new().connect(addr) {
        Err(Error::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused)
        }
        other => panic!("expected a refused connection, got {other:?}"),
    }
}

/// A closure as the handler: `on_message` for the common request/reply case.
#[test]
fn test_closure_handler_answers() {
    let mut server = Server::new();
    let addr = server.add_addr("127.0.0.1:0").unwrap();
    server.set_conn_handler(|| {
        tinyproto_std::on_message(|conn, msg| conn.transmit(&[b"re:".as_slice(), msg].concat()))
    });
    let stop = server.stop_handle();
    let thread = thread::spawn(move || server.start());
    let mut conn = Client::new().connect(addr).unwrap();
    conn.transmit(b"ping").unwrap();
    assert_eq!(conn.receive().unwrap(), b"re:ping");
    conn.transmit(b"again").unwrap();
    assert_eq!(conn.receive().unwrap(), b"re:again");
    conn.close();
    stop.stop();
    thread.join().unwrap().unwrap();
}

/// Counts `loop_pass` calls.
struct Passes(Arc<AtomicUsize>);

impl Handler for Passes {
    fn loop_pass(&mut self, _conn: &mut Conn) -> Result<(), Error> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// An idle connection sleeps: no `loop_pass` without a message unless an
/// interval was asked for; with one, it comes round.
#[test]
fn test_loop_pass_runs_on_messages_and_on_the_interval_only() {
    for interval in [None, Some(Duration::from_millis(50))] {
        let passes = Arc::new(AtomicUsize::new(0));
        let mut server = Server::new();
        let addr = server.add_addr("127.0.0.1:0").unwrap();
        let counter = passes.clone();
        server.set_conn_handler(move || Passes(counter.clone()));
        server.set_loop_pass_interval(interval);
        let stop = server.stop_handle();
        let thread = thread::spawn(move || server.start());
        let mut conn = Client::new().connect(addr).unwrap();
        conn.transmit(b"one").unwrap();
        assert!(
            wait_until(LONG, || passes.load(Ordering::SeqCst) >= 1),
            "after a message"
        );
        let after_message = passes.load(Ordering::SeqCst);
        thread::sleep(Duration::from_millis(400));
        let idle = passes.load(Ordering::SeqCst) - after_message;
        match interval {
            None => assert_eq!(idle, 0, "an idle connection was woken {idle} time(s)"),
            Some(_) => assert!(
                wait_until(LONG, || passes.load(Ordering::SeqCst) >= after_message + 2),
                "the interval never came round"
            ),
        }
        conn.close();
        stop.stop();
        thread.join().unwrap().unwrap();
    }
}

/// Decides each message on its announced length: whole under 5 bytes, in
/// chunks up to 100, rejected beyond; answers what it did.
struct Decider {
    chunks: Vec<u8>,
}

impl Handler for Decider {
    fn message_announced(&mut self, _conn: &Conn, len: u32) -> tinyproto_std::Take {
        match len {
            0..5 => tinyproto_std::Take::Whole,
            5..=100 => tinyproto_std::Take::Chunks,
            _ => tinyproto_std::Take::Reject,
        }
    }

    fn transmission_received(&mut self, conn: &mut Conn, msg: &[u8]) -> Result<(), Error> {
        conn.transmit(&[b"whole:".as_slice(), msg].concat())
    }

    fn transmission_chunk(&mut self, chunk: &[u8]) -> Result<(), Error> {
        self.chunks.extend_from_slice(chunk);
        Ok(())
    }

    fn transmission_complete(&mut self, conn: &mut Conn, len: u32) -> Result<(), Error> {
        assert_eq!(self.chunks.len(), len as usize);
        let reply = [b"chunks:".as_slice(), &self.chunks].concat();
        self.chunks.clear();
        conn.transmit(&reply)
    }
}

#[test]
fn test_handler_decides_each_message_on_its_length() {
    let mut server = Server::new();
    let addr = server.add_addr("127.0.0.1:0").unwrap();
    server.set_conn_handler(|| Decider { chunks: Vec::new() });
    let stop = server.stop_handle();
    let thread = thread::spawn(move || server.start());
    let mut conn = Client::new().connect(addr).unwrap();
    conn.transmit(b"abc").unwrap();
    assert_eq!(conn.receive().unwrap(), b"whole:abc");
    conn.transmit(b"abcdefgh").unwrap();
    assert_eq!(conn.receive().unwrap(), b"chunks:abcdefgh");
    match conn.transmit(&[7u8; 101]) {
        Err(Error::Protocol(tinyproto::Error::Rejected { len: 101 })) => {}
        other => panic!("{other:?}"),
    }
    conn.transmit(b"ok").unwrap();
    assert_eq!(
        conn.receive().unwrap(),
        b"whole:ok",
        "in step after the rejection"
    );
    conn.close();
    stop.stop();
    thread.join().unwrap().unwrap();
}

/// Broadcasts `bye` once asked, then stops the server.
struct ByeThenStop(Arc<std::sync::atomic::AtomicBool>);

impl Hooks for ByeThenStop {
    fn loop_pass(&mut self, ctx: &Context) {
        if self.0.load(Ordering::SeqCst) {
            ctx.active_connections().broadcast(b"bye", None);
            ctx.stop();
        }
    }
}

/// What was queued before a stop (and reported queued) still goes out.
#[test]
fn test_stop_still_delivers_what_was_queued() {
    let mut server = Server::new();
    let addr = server.add_addr("127.0.0.1:0").unwrap();
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    server.set_hooks(ByeThenStop(armed.clone()));
    let thread = thread::spawn(move || server.start());
    let client = Client::new();
    let mut conns: Vec<_> = (0..8).map(|_| client.connect(addr).unwrap()).collect();
    armed.store(true, Ordering::SeqCst);
    // One more connection makes the server's loop pass.
    let _trigger = std::net::TcpStream::connect(addr).unwrap();
    for (i, conn) in conns.iter_mut().enumerate() {
        assert_eq!(
            conn.receive().map_err(|e| e.to_string()),
            Ok(b"bye".to_vec()),
            "conn {i}"
        );
    }
    thread.join().unwrap().unwrap();
}

/// Holds the first connection in `pre_loop` (a thread a drain gives up on)
/// until released, saying when it entered and when it left.
struct HeldFirst {
    made: Arc<AtomicUsize>,
    release: mpsc::Receiver<()>,
    events: mpsc::Sender<&'static str>,
}

impl Handler for HeldFirst {
    fn pre_loop(&mut self, _conn: &mut Conn) -> Result<(), Error> {
        if self.made.fetch_add(1, Ordering::SeqCst) == 0 {
            let _ = self.events.send("entered");
            let _ = self.release.recv_timeout(LONG);
            let _ = self.events.send("left");
        }
        Ok(())
    }
}

/// A thread left behind by `close_all` neither lends its id to a later
/// connection nor, ending late, confuses `join`.
#[test]
fn test_left_behind_thread_keeps_its_id_to_itself() {
    let h = Harness::start(|_| {});
    let mut client = Client::new();
    client.set_drain_timeout(Duration::from_millis(100));
    let made = Arc::new(AtomicUsize::new(0));
    let (release_tx, release) = mpsc::channel();
    let release = Arc::new(std::sync::Mutex::new(Some(release)));
    let (events_tx, events) = mpsc::channel();
    client.set_conn_handler(move || HeldFirst {
        made: made.clone(),
        // Only the first handler gets the release; the others never wait.
        release: release
            .lock()
            .unwrap()
            .take()
            .unwrap_or_else(|| mpsc::channel().1),
        events: events_tx.clone(),
    });
    let first = client.connect_to(h.addr).unwrap();
    assert_eq!(events.recv_timeout(LONG), Ok("entered"));
    client.close_all(); // gives up on the held thread after 100 ms (+ grace)
    let second = client.connect_to(h.addr).unwrap();
    assert_ne!(first, second, "an id given twice");
    // The left-behind thread ends now; `join` of the second one must not
    // take its end for the second's, nor hang.
    release_tx.send(()).unwrap();
    assert_eq!(events.recv_timeout(LONG), Ok("left"));
    let started = std::time::Instant::now();
    assert!(
        client.join(second, Duration::from_millis(300)).is_none(),
        "still running"
    );
    assert!(started.elapsed() < LONG, "join hung");
    client.close_all();
}

/// A plain client's `receive` answers the length of an empty message (and
/// refuses an oversized one) before it returns: the peer is not left
/// waiting for the status byte until the client's next call.
#[test]
fn test_receive_answers_before_it_returns() {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen) = mpsc::channel();
    let peer = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&[0xFF]).unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        // An empty message, then one over the client's limit.
        s.write_all(&0u32.to_be_bytes()).unwrap();
        s.read_exact(&mut b).unwrap();
        seen_tx.send(b[0]).unwrap();
        s.write_all(&100u32.to_be_bytes()).unwrap();
        s.read_exact(&mut b).unwrap();
        seen_tx.send(b[0]).unwrap();
    });
    let mut client = Client::new();
    client.set_max_message_len(10);
    let mut conn = client.connect(addr).unwrap();
    assert_eq!(conn.receive().unwrap(), b"");
    // Nothing more from the client until the peer has its answer.
    assert_eq!(seen.recv_timeout(Duration::from_secs(5)), Ok(0xFF));
    assert!(matches!(
        conn.receive(),
        Err(Error::Protocol(tinyproto::Error::TooLarge { len: 100, .. }))
    ));
    assert_eq!(seen.recv_timeout(Duration::from_secs(5)), Ok(0x00));
    peer.join().unwrap();
}

/// Refuses messages by their length, with a reason: over 100 bytes with a
/// recoverable one (the connection goes on), exactly 13 with one that ends
/// the connection; the reason reaches `post_loop`.
struct Picky(mpsc::Sender<String>);

impl Handler for Picky {
    fn message_announced(&mut self, _conn: &Conn, len: u32) -> tinyproto_std::Take {
        match len {
            13 => tinyproto_std::Take::Refuse(Error::handler("thirteen is unlucky")),
            101.. => tinyproto_std::Take::Refuse(Error::Plugin("over the quota".into())),
            _ => tinyproto_std::Take::Whole,
        }
    }

    fn transmission_received(&mut self, conn: &mut Conn, msg: &[u8]) -> Result<(), Error> {
        conn.transmit(msg)
    }

    fn post_loop(&mut self, _conn: &mut Conn, result: &Result<(), Error>) {
        let _ = self.0.send(match result {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string(),
        });
    }
}

#[test]
fn test_a_refusal_with_a_reason_goes_on_or_ends_the_connection() {
    let (tx, ends) = mpsc::channel();
    let mut server = Server::new();
    let addr = server.add_addr("127.0.0.1:0").unwrap();
    server.set_conn_handler(move || Picky(tx.clone()));
    let stop = server.stop_handle();
    let thread = thread::spawn(move || server.start());
    let mut conn = Client::new().connect(addr).unwrap();
    refusals_with_a_reason(&mut conn, &ends);
    // A plain client connection reaches its client's registry, which holds
    // only connect_to connections.
    assert!(conn.active_connections().is_empty());
    stop.stop();
    thread.join().unwrap().unwrap();
}
