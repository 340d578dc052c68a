//! Host tests, no privileges: a tinyproto-embassy client on stack A and
//! server on stack B, linked in memory (see `common`).

mod common;

use std::cell::{Cell, RefCell};

use common::{pattern, run_pair, server_endpoint, Faults, LinkStats};
use embassy_futures::select::{select, Either};
use embassy_net::tcp::TcpSocket;
use embassy_net::Stack;
use embassy_time::{Duration, Instant, Timer};
use tinyproto_embassy::{
    serve, Client, ConnInfo, Deadline, Ended, Error, Flow, Handler, NetError, ReserveStorage,
    ServerConfig, Session, Slot, SlotStorage, Timeouts,
};

const PORT: u16 = 7000;

/// Echoes every message; "send N" answers N pattern bytes sent in chunks.
#[derive(Default)]
struct Echo {
    /// Messages received, in order.
    received: Cell<usize>,
    /// Errors of the handler's own sends.
    send_errors: RefCell<Vec<Error>>,
    /// How each connection ended.
    ended: RefCell<Vec<Ended>>,
}

impl Echo {
    fn ended(&self) -> Vec<Ended> {
        self.ended.borrow().clone()
    }
}

impl Handler for &Echo {
    async fn transmission_received(&mut self, session: &mut Session<'_, '_>, msg: &[u8]) -> Flow {
        self.received.set(self.received.get() + 1);
        let result = if let Some(n) = msg.strip_prefix(b"send ") {
            let len: usize = std::str::from_utf8(n).unwrap().parse().unwrap();
            send_chunked(session, len).await
        } else {
            session.transmit(msg).await
        };
        if let Err(e) = result {
            self.send_errors.borrow_mut().push(e);
        }
        Flow::Continue
    }

    async fn conn_shutdown(&mut self, _info: &ConnInfo, ended: &Ended) {
        self.ended.borrow_mut().push(*ended);
    }
}

async fn send_chunked(session: &mut Session<'_, '_>, len: usize) -> Result<(), Error> {
    let data = pattern(len, 9);
    let mut out = session.begin_transmit(len as u32).await?;
    for chunk in data.chunks(700) {
        out.write_all(chunk).await?;
    }
    out.finish().await
}

/// Waits (bounded) until `cond` holds, letting the server run.
async fn settle(cond: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(3);
    while !cond() && Instant::now() < until {
        Timer::after(Duration::from_millis(5)).await;
    }
}

fn quick_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(5),
        greeting: Duration::from_secs(5),
        message: Duration::from_secs(20),
        receive: None,
        idle: None,
        close: Duration::from_millis(500),
        tcp: None,
        keep_alive: None,
    }
}

/// One test against a one-slot server (an echo unless said otherwise) on
/// stack B: the link, the server's timeouts and message buffer, and the test
/// client's timeouts. [`EchoTest::new`] has the usual ones.
struct EchoTest<'h, H = Echo> {
    handler: &'h H,
    server_timeouts: Timeouts,
    /// The server slot's message buffer: the largest message it takes.
    message_buffer: usize,
    client_timeouts: Timeouts,
    faults: Faults,
    /// The bound on the whole test.
    limit: Duration,
}

impl<'h, H> EchoTest<'h, H>
where
    &'h H: Handler,
{
    /// A clean link, [`quick_timeouts`] on both sides, 60 s for the test.
    fn new(handler: &'h H, message_buffer: usize) -> Self {
        Self {
            handler,
            server_timeouts: quick_timeouts(),
            message_buffer,
            client_timeouts: quick_timeouts(),
            faults: Faults::default(),
            limit: Duration::from_secs(60),
        }
    }

    /// Runs `test` with stack A while the server serves on stack B.
    fn serve<R>(&self, test: impl for<'s> AsyncFnOnce(Stack<'s>, &'s LinkStats) -> R) -> R {
        let mut config = ServerConfig::new(PORT);
        config.timeouts = self.server_timeouts;
        run_pair(self.faults, self.limit, async |a, b, link| {
            // The message buffer's size is the test's: not a `SlotStorage`.
            let (mut rx, mut tx) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
            let mut msg = vec![0u8; self.message_buffer];
            let slots = [Slot::new(&mut rx, &mut tx, &mut msg)];
            match select(serve(b, &config, slots, [], [self.handler]), test(a, link)).await {
                Either::First(never) => match never {},
                Either::Second(r) => r,
            }
        })
    }

    /// Runs `test` with a client on stack A connected to the server, with
    /// socket buffers of `socket_buffer` bytes each way.
    fn connect<R>(
        &self,
        socket_buffer: usize,
        test: impl for<'s> AsyncFnOnce(Client<'s>, &'s LinkStats) -> R,
    ) -> R {
        self.serve(async |a, link| {
            let (mut rx, mut tx) = (vec![0u8; socket_buffer], vec![0u8; socket_buffer]);
            let client = Client::connect(
                a,
                &mut rx,
                &mut tx,
                server_endpoint(PORT),
                self.client_timeouts,
            )
            .await
            .unwrap();
            test(client, link).await
        })
    }
}

#[test]
fn test_round_trips_0_bytes_to_1_mib() {
    let handler = Echo::default();
    let sizes = [
        0usize,
        1,
        2,
        3,
        4,
        5,
        100,
        1459,
        1460,
        1461,
        4096,
        65_535,
        65_536,
        100_000,
        1 << 20,
    ];
    EchoTest::new(&handler, 1 << 20).connect(32 * 1024, async |mut client, _| {
        let mut buf = vec![0u8; 1 << 20];
        for (i, &size) in sizes.iter().enumerate() {
            let msg = pattern(size, i as u8);
            client.transmit(&msg).await.unwrap();
            let echo = client.receive(&mut buf).await.unwrap();
            assert_eq!(echo.len(), size);
            assert!(echo == &msg[..], "echo of {size} bytes differs");
        }
        client.close().await.unwrap();
        settle(|| !handler.ended.borrow().is_empty()).await;
    });
    assert_eq!(handler.received.get(), sizes.len());
    assert!(handler.send_errors.borrow().is_empty());
    assert_eq!(handler.ended(), vec![Ended::PeerClosed]);
}

#[test]
fn test_chunked_receive_larger_than_buffer() {
    let handler = Echo::default();
    EchoTest::new(&handler, 64).connect(4096, async |mut client, _| {
        for len in [0usize, 255, 256, 257, 300_000] {
            client
                .transmit(format!("send {len}").as_bytes())
                .await
                .unwrap();
            let expected = pattern(len, 9);
            let mut incoming = client.begin_receive(1 << 20).await.unwrap();
            assert_eq!(incoming.len() as usize, len);
            let mut chunk = [0u8; 256];
            let mut got = 0;
            loop {
                let n = incoming.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                assert_eq!(&chunk[..n], &expected[got..got + n], "chunk at {got}");
                got += n;
            }
            assert_eq!(got, len);
            assert!(!client.connection().is_in_progress());
        }
        // Still in step: a plain round trip follows.
        client.transmit(b"after").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(client.receive(&mut buf).await.unwrap(), b"after");
        client.close().await.unwrap();
    });
    assert!(handler.send_errors.borrow().is_empty());
}

#[test]
fn test_oversized_message_rejected_connection_still_usable() {
    let handler = Echo::default();
    // The server takes at most 1024 bytes (its message buffer).
    EchoTest::new(&handler, 1024).connect(4096, async |mut client, _| {
        let big = pattern(2000, 1);
        assert_eq!(
            client.transmit(&big).await,
            Err(Error::Rejected { len: 2000 })
        );
        let fits = pattern(1024, 2);
        client.transmit(&fits).await.unwrap();
        let mut buf = vec![0u8; 1024];
        assert_eq!(client.receive(&mut buf).await.unwrap(), &fits[..]);

        // The other way: the client's buffer of 16 refuses 100 bytes.
        client.transmit(b"send 100").await.unwrap();
        let mut small = [0u8; 16];
        assert_eq!(
            client.receive(&mut small).await,
            Err(Error::TooLarge {
                len: 100,
                capacity: 16
            })
        );
        client.transmit(b"ping").await.unwrap();
        assert_eq!(client.receive(&mut small).await.unwrap(), b"ping");
        client.close().await.unwrap();
        settle(|| !handler.ended.borrow().is_empty()).await;
    });
    // The server's send of 100 bytes was rejected, and it carried on.
    assert_eq!(
        *handler.send_errors.borrow(),
        vec![Error::Rejected { len: 100 }]
    );
    assert_eq!(handler.received.get(), 3);
    assert_eq!(handler.ended(), vec![Ended::PeerClosed]);
}

#[test]
fn test_connection_limit_answered_0xfe() {
    let handler = Echo::default();
    let mut config = ServerConfig::new(PORT);
    config.timeouts = quick_timeouts();
    run_pair(
        Faults::default(),
        Duration::from_secs(60),
        async |a, b, _| {
            let mut storage = [SlotStorage::<4096, 4096, 256>::new(), SlotStorage::new()];
            let slots = storage.each_mut().map(SlotStorage::slot);
            let mut reserve_storage = ReserveStorage::new();
            let reserve = reserve_storage.reserve();
            let server = serve(b, &config, slots, [reserve], [&handler, &handler]);
            let clients = async {
                let to = server_endpoint(PORT);
                let mut bufs = [[0u8; 2048]; 8];
                let [b0, b1, b2, b3, b4, b5, b6, b7] = &mut bufs;
                let mut c1 = Client::connect(a, b0, b1, to, quick_timeouts())
                    .await
                    .unwrap();
                let mut c2 = Client::connect(a, b2, b3, to, quick_timeouts())
                    .await
                    .unwrap();
                // A third peer: refused with ConnectionLimit, not reset.
                let third = Client::connect(a, b4, b5, to, quick_timeouts()).await;
                assert_eq!(third.err(), Some(Error::ConnectionLimit));
                // On the wire: exactly the byte 0xFE, then the end of the stream.
                {
                    let mut raw = TcpSocket::new(a, b6, b7);
                    raw.connect(to).await.unwrap();
                    let mut got = Vec::new();
                    let mut byte = [0u8; 8];
                    loop {
                        match raw.read(&mut byte).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got.extend_from_slice(&byte[..n]),
                        }
                    }
                    assert_eq!(got, [0xFE]);
                    raw.close();
                    let _ = raw.flush().await;
                }
                // The two admitted clients still work.
                let mut buf = [0u8; 16];
                c1.transmit(b"one").await.unwrap();
                assert_eq!(c1.receive(&mut buf).await.unwrap(), b"one");
                c2.transmit(b"two").await.unwrap();
                assert_eq!(c2.receive(&mut buf).await.unwrap(), b"two");
                // Once one leaves, a newcomer is served (the slot re-listens
                // right after the close; retry briefly).
                c1.close().await.unwrap();
                let mut served = false;
                for _ in 0..50 {
                    let (x, y) = (&mut *b4, &mut *b5);
                    match Client::connect(a, x, y, to, quick_timeouts()).await {
                        Ok(mut c3) => {
                            c3.transmit(b"three").await.unwrap();
                            assert_eq!(c3.receive(&mut buf).await.unwrap(), b"three");
                            c3.close().await.unwrap();
                            served = true;
                            break;
                        }
                        Err(Error::ConnectionLimit) => {
                            Timer::after(Duration::from_millis(20)).await
                        }
                        Err(e) => panic!("newcomer failed: {e:?}"),
                    }
                }
                assert!(served, "a freed slot never served a newcomer");
                c2.close().await.unwrap();
            };
            match select(server, clients).await {
                Either::First(never) => match never {},
                Either::Second(()) => {}
            }
        },
    );
    assert_eq!(handler.received.get(), 3);
}

#[test]
fn test_dripping_peer_timed_out() {
    let handler = Echo::default();
    EchoTest {
        server_timeouts: Timeouts {
            message: Duration::from_millis(300),
            close: Duration::from_millis(200),
            ..quick_timeouts()
        },
        limit: Duration::from_secs(30),
        ..EchoTest::new(&handler, 1024)
    }
    .serve(async |a, _| {
        let (mut rx, mut tx) = ([0u8; 1024], [0u8; 1024]);
        let mut raw = TcpSocket::new(a, &mut rx, &mut tx);
        raw.connect(server_endpoint(PORT)).await.unwrap();
        let mut byte = [0u8; 1];
        raw.write(&[0xFF]).await.unwrap();
        raw.read(&mut byte).await.unwrap();
        assert_eq!(byte, [0xFF]);
        raw.write(&30u32.to_be_bytes()).await.unwrap();
        raw.flush().await.unwrap();
        raw.read(&mut byte).await.unwrap();
        assert_eq!(byte, [0xFF], "length accepted");
        // Drip one payload byte every 100 ms: 30 bytes would take 3 s.
        let started = Instant::now();
        let mut cut_off = None;
        for _ in 0..30 {
            if raw.write(&[0x42]).await.is_err() || raw.flush().await.is_err() {
                cut_off = Some(started.elapsed());
                break;
            }
            // The server closing shows up as EOF on our side.
            if let Either::First(r) = select(
                raw.read(&mut byte),
                Timer::after(Duration::from_millis(100)),
            )
            .await
            {
                assert!(matches!(r, Ok(0) | Err(_)), "no data expected, got {r:?}");
                cut_off = Some(started.elapsed());
                break;
            }
        }
        // Cut off before the drip could end (30 bytes at 100 ms: 3 s), and
        // not before the message deadline.
        let cut_off = cut_off.expect("the dripping peer was never cut off");
        assert!(
            cut_off >= Duration::from_millis(250),
            "cut off after {} ms",
            cut_off.as_millis()
        );
        raw.abort();
        let _ = raw.flush().await;
        // The server finishes its close and reports.
        settle(|| !handler.ended.borrow().is_empty()).await;
    });
    assert_eq!(
        handler.received.get(),
        0,
        "nothing of the partial message is delivered"
    );
    assert_eq!(
        handler.ended(),
        vec![Ended::Failed(Error::Io(NetError::TimedOut(
            Deadline::Message
        )))]
    );
}

/// The quiet-connection tick (`loop_pass_interval`, 20 ms here) that fires
/// while a length is half in does not restart the message deadline: a peer
/// that goes silent after the first byte of a length is cut off by that
/// deadline (300 ms), ticks or not, and nothing is delivered.
#[test]
fn test_ticks_while_a_length_is_half_in_keep_its_deadline() {
    let handler = Echo::default();
    let mut config = ServerConfig::new(PORT);
    config.timeouts = Timeouts {
        message: Duration::from_millis(300),
        close: Duration::from_millis(200),
        ..quick_timeouts()
    };
    config.loop_pass_interval = Some(Duration::from_millis(20));
    run_pair(
        Faults::default(),
        Duration::from_secs(30),
        async |a, b, _| {
            let mut storage = SlotStorage::<4096, 4096, 1024>::new();
            let server = serve(b, &config, [storage.slot()], [], [&handler]);
            let peer = async {
                let (mut rx, mut tx) = ([0u8; 1024], [0u8; 1024]);
                let mut raw = TcpSocket::new(a, &mut rx, &mut tx);
                raw.connect(server_endpoint(PORT)).await.unwrap();
                let mut byte = [0u8; 1];
                raw.write(&[0xFF]).await.unwrap();
                raw.read(&mut byte).await.unwrap();
                assert_eq!(byte, [0xFF], "greeted");
                // The first byte of a length, then silence for 2 s: the
                // deadline must cut in long before that.
                raw.write(&[0x00]).await.unwrap();
                raw.flush().await.unwrap();
                let started = Instant::now();
                match select(raw.read(&mut byte), Timer::after(Duration::from_secs(2))).await {
                    // The server's close shows as EOF or a reset.
                    Either::First(r) => assert!(matches!(r, Ok(0) | Err(_)), "got {r:?}"),
                    Either::Second(()) => panic!("the half length was never cut off"),
                }
                let cut_off = started.elapsed();
                assert!(
                    cut_off >= Duration::from_millis(250),
                    "cut off after {} ms",
                    cut_off.as_millis()
                );
                raw.abort();
                let _ = raw.flush().await;
                settle(|| !handler.ended.borrow().is_empty()).await;
            };
            match select(server, peer).await {
                Either::First(never) => match never {},
                Either::Second(()) => {}
            }
        },
    );
    assert_eq!(handler.received.get(), 0);
    assert_eq!(
        handler.ended(),
        vec![Ended::Failed(Error::Io(NetError::TimedOut(
            Deadline::Message
        )))]
    );
}

#[test]
fn test_silent_peers_timed_out_at_greeting_and_idle() {
    let handler = Echo::default();
    EchoTest {
        server_timeouts: Timeouts {
            greeting: Duration::from_millis(200),
            receive: None,
            idle: Some(Duration::from_millis(300)),
            close: Duration::from_millis(200),
            ..quick_timeouts()
        },
        limit: Duration::from_secs(30),
        ..EchoTest::new(&handler, 1024)
    }
    .serve(async |a, _| {
        // 1. Connects and never greets.
        {
            let (mut rx, mut tx) = ([0u8; 256], [0u8; 256]);
            let mut raw = TcpSocket::new(a, &mut rx, &mut tx);
            raw.connect(server_endpoint(PORT)).await.unwrap();
            let started = Instant::now();
            let mut byte = [0u8; 4];
            // The server's greeting byte, then its close.
            assert_eq!(raw.read(&mut byte).await, Ok(1));
            assert_eq!(byte[0], 0xFF);
            assert!(matches!(raw.read(&mut byte).await, Ok(0) | Err(_)));
            let waited = started.elapsed();
            assert!(
                waited >= Duration::from_millis(150),
                "{} ms",
                waited.as_millis()
            );
            raw.close();
            let _ = raw.flush().await;
        }
        // 2. Greets, then stays quiet: closed for idleness.
        let (mut rx, mut tx) = ([0u8; 256], [0u8; 256]);
        let mut client =
            Client::connect(a, &mut rx, &mut tx, server_endpoint(PORT), quick_timeouts())
                .await
                .unwrap();
        // The client waits without a limit of its own: only the server's
        // idle deadline ends the wait (or the test's limit fails it).
        let started = Instant::now();
        let mut buf = [0u8; 16];
        assert_eq!(client.receive(&mut buf).await, Err(Error::Closed));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250),
            "idle close after {} ms, before the idle deadline",
            waited.as_millis()
        );
        settle(|| handler.ended.borrow().len() == 2).await;
    });
    assert_eq!(
        handler.ended(),
        vec![
            Ended::Failed(Error::Io(NetError::TimedOut(Deadline::Greeting))),
            Ended::Failed(Error::Io(NetError::TimedOut(Deadline::Idle))),
        ]
    );
}

/// Records the order of the hooks; closes after a message "bye".
#[derive(Default)]
struct Recorder {
    events: RefCell<Vec<String>>,
}

impl Recorder {
    fn push(&self, e: impl Into<String>) {
        self.events.borrow_mut().push(e.into());
    }
}

impl Handler for &Recorder {
    async fn conn_init(&mut self, info: &ConnInfo) -> Flow {
        self.push(format!("conn_init {}", info.slot));
        Flow::Continue
    }

    async fn pre_loop(&mut self, session: &mut Session<'_, '_>) -> Flow {
        self.push("pre_loop");
        // The server may speak first.
        session.transmit(b"welcome").await.unwrap();
        Flow::Continue
    }

    async fn transmission_received(&mut self, session: &mut Session<'_, '_>, msg: &[u8]) -> Flow {
        self.push(format!("received {}", String::from_utf8_lossy(msg)));
        if msg == b"bye" {
            return Flow::Close;
        }
        session.transmit(msg).await.unwrap();
        Flow::Continue
    }

    async fn loop_pass(&mut self, _session: &mut Session<'_, '_>) -> Flow {
        let mut events = self.events.borrow_mut();
        // Collapse the periodic passes of a quiet connection into one entry.
        if events.last().map(String::as_str) != Some("loop_pass") {
            events.push("loop_pass".into());
        }
        Flow::Continue
    }

    async fn post_loop(&mut self, session: &mut Session<'_, '_>, ended: &Ended) {
        self.push(format!("post_loop {ended:?}"));
        // A last word is still possible here.
        session.transmit(b"farewell").await.unwrap();
    }

    async fn conn_shutdown(&mut self, _info: &ConnInfo, ended: &Ended) {
        self.push(format!("conn_shutdown {ended:?}"));
    }
}

#[test]
fn test_handler_hooks_in_order_and_flow_close() {
    let handler = Recorder::default();
    let mut config = ServerConfig::new(PORT);
    config.timeouts = quick_timeouts();
    config.loop_pass_interval = Some(Duration::from_millis(20));
    run_pair(
        Faults::default(),
        Duration::from_secs(30),
        async |a, b, _| {
            let mut storage = SlotStorage::<4096, 4096, 1024>::new();
            let slots = [storage.slot()];
            let server = serve(b, &config, slots, [], [&handler]);
            let client = async {
                let (mut rx, mut tx) = ([0u8; 2048], [0u8; 2048]);
                let mut client =
                    Client::connect(a, &mut rx, &mut tx, server_endpoint(PORT), quick_timeouts())
                        .await
                        .unwrap();
                let mut buf = [0u8; 64];
                assert_eq!(client.receive(&mut buf).await.unwrap(), b"welcome");
                // Quiet for a while: loop_pass runs on its interval.
                Timer::after(Duration::from_millis(100)).await;
                client.transmit(b"hello").await.unwrap();
                assert_eq!(client.receive(&mut buf).await.unwrap(), b"hello");
                client.transmit(b"bye").await.unwrap();
                assert_eq!(client.receive(&mut buf).await.unwrap(), b"farewell");
                // The server closed after its handler said so.
                assert_eq!(client.receive(&mut buf).await, Err(Error::Closed));
                settle(|| {
                    handler
                        .events
                        .borrow()
                        .iter()
                        .any(|e| e.starts_with("conn_shutdown"))
                })
                .await;
            };
            match select(server, client).await {
                Either::First(never) => match never {},
                Either::Second(()) => {}
            }
        },
    );
    assert_eq!(
        *handler.events.borrow(),
        [
            "conn_init 0",
            "pre_loop",
            "loop_pass",
            "received hello",
            "loop_pass",
            "received bye",
            "post_loop HandlerClosed",
            "conn_shutdown HandlerClosed",
        ]
    );
}

#[test]
fn test_cancelled_and_timed_out_transmit_resumes_exactly_once() {
    let handler = Echo::default();
    // Small socket buffers: a 1 MiB message takes many writes.
    EchoTest::new(&handler, 1 << 20).connect(2048, async |mut client, _| {
        let msg = pattern(1 << 20, 5);
        let mut buf = vec![0u8; 1 << 20];

        // 1. The future is dropped part way (select against a timer).
        let cancelled =
            embassy_time::with_timeout(Duration::from_millis(2), client.transmit(&msg)).await;
        assert!(
            cancelled.is_err(),
            "1 MiB through 2 KiB buffers took under 2 ms"
        );
        assert!(client.connection().is_in_progress(), "stopped mid-message");
        // Another operation is refused while the message is half sent.
        assert_eq!(client.transmit(b"other").await, Err(Error::InProgress));
        // The same call again carries on where the bytes stopped.
        client.transmit(&msg).await.unwrap();
        assert!(client.receive(&mut buf).await.unwrap() == &msg[..]);

        // 2. The whole-message deadline passes: the error says so, and
        //    the message resumes (with a fresh deadline) on the next call.
        let mut tight = quick_timeouts();
        tight.message = Duration::from_millis(2);
        client.connection().get_mut().set_timeouts(tight);
        assert_eq!(
            client.transmit(&msg).await,
            Err(Error::Io(NetError::TimedOut(Deadline::Message)))
        );
        assert!(client.connection().is_in_progress());
        client.connection().get_mut().set_timeouts(quick_timeouts());
        client.transmit(&msg).await.unwrap();
        assert!(client.receive(&mut buf).await.unwrap() == &msg[..]);
        client.close().await.unwrap();
        settle(|| !handler.ended.borrow().is_empty()).await;
    });
    // Each message arrived exactly once, whole.
    assert_eq!(handler.received.get(), 2);
    assert_eq!(handler.ended(), vec![Ended::PeerClosed]);
}

#[test]
fn test_keep_alive_holds_a_live_peer_and_finds_a_vanished_one() {
    let handler = Echo::default();
    // No idle timeout: only TCP keep-alive can notice the peer is gone.
    EchoTest {
        server_timeouts: Timeouts {
            receive: None,
            idle: None,
            keep_alive: Some(Duration::from_millis(200)),
            tcp: Some(Duration::from_millis(1500)),
            close: Duration::from_millis(200),
            ..quick_timeouts()
        },
        limit: Duration::from_secs(30),
        ..EchoTest::new(&handler, 1024)
    }
    .connect(1024, async |mut client, link| {
        client.transmit(b"hi").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(client.receive(&mut buf).await.unwrap(), b"hi");
        // Quiet but alive for 3 s, twice the 1.5 s socket timeout: the
        // keep-alives (answered by the client's stack) keep it up.
        Timer::after(Duration::from_secs(3)).await;
        assert!(
            handler.ended.borrow().is_empty(),
            "a live idle peer was dropped: {:?}",
            handler.ended()
        );
        client.transmit(b"still").await.unwrap();
        assert_eq!(client.receive(&mut buf).await.unwrap(), b"still");
        // The cable is pulled: the client goes silent without a FIN.
        link.cut.set(true);
        let started = Instant::now();
        settle(|| !handler.ended.borrow().is_empty()).await;
        let noticed = started.elapsed();
        assert!(
            !handler.ended.borrow().is_empty(),
            "the dead peer was never noticed"
        );
        assert!(
            noticed >= Duration::from_millis(1000),
            "noticed after {} ms, before the keep-alives could miss",
            noticed.as_millis()
        );
        drop(client);
    });
    assert_eq!(
        handler.ended(),
        vec![Ended::Failed(Error::Io(NetError::ConnectionReset))]
    );
}

#[test]
fn test_cancelled_receive_resumes_with_the_same_buffer() {
    let handler = Echo::default();
    // A small receive buffer: 1 MiB arrives in many reads.
    EchoTest::new(&handler, 64).connect(2048, async |mut client, _| {
        let len = 1 << 20;
        client
            .transmit(format!("send {len}").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; len];
        // Wait until the message has started, then give up part way.
        let mut cancelled = 0;
        let got_len = loop {
            match embassy_time::with_timeout(Duration::from_millis(2), client.receive(&mut buf))
                .await
            {
                Ok(r) => break r.unwrap().len(),
                Err(_) => {
                    cancelled += 1;
                    assert!(cancelled < 10_000, "never completed");
                    // Any other operation is refused while half received.
                    if client.connection().is_in_progress() {
                        assert_eq!(client.transmit(b"x").await, Err(Error::InProgress));
                    }
                }
            }
        };
        assert!(cancelled > 0, "the receive was never cut short");
        assert_eq!(got_len, len);
        assert!(
            buf == pattern(len, 9),
            "resumed receive delivers the exact message"
        );
        // In step afterwards.
        client.transmit(b"after").await.unwrap();
        let mut small = [0u8; 16];
        assert_eq!(client.receive(&mut small).await.unwrap(), b"after");
        client.close().await.unwrap();
    });
    assert!(handler.send_errors.borrow().is_empty());
}

/// A firmware-update handler: messages over 64 KiB are streamed, chunk by
/// chunk through the slot's 1 KiB buffer, into a flash-like sink (4 KiB
/// pages written whole, as a flash driver would) with a running checksum;
/// when the image is complete the handler answers its length and checksum.
/// Smaller messages are echoed whole.
#[derive(Default)]
struct Flasher {
    page: RefCell<Vec<u8>>,
    flash: RefCell<Vec<u8>>,
    pages_written: Cell<usize>,
    checksum: Cell<u32>,
    largest_chunk: Cell<usize>,
    whole: Cell<usize>,
}

const PAGE: usize = 4096;

/// FNV-1a, one byte at a time (what a bootloader would check).
fn fnv1a(mut hash: u32, bytes: &[u8]) -> u32 {
    for b in bytes {
        hash = (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    hash
}

impl Handler for &Flasher {
    async fn message_announced(
        &mut self,
        _info: &ConnInfo,
        len: u32,
        capacity: u32,
    ) -> tinyproto_embassy::Take {
        if len > 64 * 1024 {
            self.checksum.set(0x811C_9DC5);
            tinyproto_embassy::Take::Chunks
        } else if len <= capacity {
            tinyproto_embassy::Take::Whole
        } else {
            tinyproto_embassy::Take::Reject
        }
    }

    async fn transmission_chunk(&mut self, _info: &ConnInfo, chunk: &[u8]) -> Flow {
        self.largest_chunk
            .set(self.largest_chunk.get().max(chunk.len()));
        self.checksum.set(fnv1a(self.checksum.get(), chunk));
        let mut page = self.page.borrow_mut();
        for &b in chunk {
            page.push(b);
            if page.len() == PAGE {
                self.flash.borrow_mut().extend_from_slice(&page);
                self.pages_written.set(self.pages_written.get() + 1);
                page.clear();
            }
        }
        Flow::Continue
    }

    async fn transmission_complete(&mut self, session: &mut Session<'_, '_>, len: u32) -> Flow {
        let tail = std::mem::take(&mut *self.page.borrow_mut());
        self.flash.borrow_mut().extend_from_slice(&tail);
        let mut answer = len.to_be_bytes().to_vec();
        answer.extend_from_slice(&self.checksum.get().to_be_bytes());
        match session.transmit(&answer).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    async fn transmission_received(&mut self, session: &mut Session<'_, '_>, msg: &[u8]) -> Flow {
        self.whole.set(self.whole.get() + 1);
        match session.transmit(msg).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }
}

/// A 3 MB image through a 1 KiB message buffer into flash pages, the
/// checksum verified; then normal messages on the same connection, and an
/// oversized one rejected with the connection going on.
#[test]
fn test_firmware_image_streamed_through_a_1_kib_buffer() {
    const IMAGE: usize = 3_000_000;
    let handler = Flasher::default();
    let image = pattern(IMAGE, 42);
    let mut test = EchoTest::new(&handler, 1024);
    test.limit = Duration::from_secs(120);
    test.connect(8192, async |mut client, _| {
        let mut out = client.begin_transmit(IMAGE as u32).await.unwrap();
        for chunk in image.chunks(1000) {
            out.write_all(chunk).await.unwrap();
        }
        out.finish().await.unwrap();
        let mut buf = [0u8; 1024];
        let answer = client.receive(&mut buf).await.unwrap();
        let mut expected = (IMAGE as u32).to_be_bytes().to_vec();
        expected.extend_from_slice(&fnv1a(0x811C_9DC5, &image).to_be_bytes());
        assert_eq!(answer, &expected[..], "length and checksum of the image");
        // Same connection: a normal message, then one over the slot's buffer
        // but under the streaming threshold (rejected), then one more.
        client.transmit(b"after the image").await.unwrap();
        assert_eq!(client.receive(&mut buf).await.unwrap(), b"after the image");
        match client.transmit(&[1u8; 2000]).await {
            Err(Error::Rejected { len: 2000 }) => {}
            other => panic!("expected a rejection, got {other:?}"),
        }
        client.transmit(b"still here").await.unwrap();
        assert_eq!(client.receive(&mut buf).await.unwrap(), b"still here");
        client.close().await.unwrap();
    });
    assert!(
        handler.flash.borrow().as_slice() == image.as_slice(),
        "flash differs from the image"
    );
    assert_eq!(handler.pages_written.get(), IMAGE / PAGE);
    assert!(
        handler.largest_chunk.get() <= 1024,
        "chunks bounded by the 1 KiB buffer"
    );
    assert_eq!(handler.whole.get(), 2);
}

/// Answers every message with 5,000 bytes and ends the connection with the
/// send's error if it fails.
#[derive(Default)]
struct Insistent {
    ended: RefCell<Vec<Ended>>,
}

impl Handler for &Insistent {
    async fn transmission_received(&mut self, session: &mut Session<'_, '_>, _msg: &[u8]) -> Flow {
        Flow::after(session.transmit(&[7u8; 5000]).await)
    }

    async fn conn_shutdown(&mut self, _info: &ConnInfo, ended: &Ended) {
        self.ended.borrow_mut().push(*ended);
    }
}

/// `Ended` says why: a handler's failed send (the peer refused the reply)
/// ends the connection with that very error.
#[test]
fn test_ended_keeps_the_handlers_own_error() {
    let handler = Insistent::default();
    EchoTest::new(&handler, 1024).connect(2048, async |mut client, _| {
        client.transmit(b"hi").await.unwrap();
        let mut small = [0u8; 64];
        assert_eq!(
            client.receive(&mut small).await,
            Err(Error::TooLarge {
                len: 5000,
                capacity: 64
            })
        );
        assert_eq!(client.receive(&mut small).await, Err(Error::Closed));
        settle(|| !handler.ended.borrow().is_empty()).await;
    });
    assert_eq!(
        *handler.ended.borrow(),
        [Ended::HandlerFailed(Error::Rejected { len: 5000 })]
    );
}

/// Records how connections ended.
#[derive(Default)]
struct EchoRecording {
    ended: RefCell<Vec<Ended>>,
    post_loops: Cell<usize>,
}

impl Handler for &EchoRecording {
    async fn transmission_received(&mut self, session: &mut Session<'_, '_>, msg: &[u8]) -> Flow {
        Flow::after(session.transmit(msg).await)
    }

    async fn post_loop(&mut self, _session: &mut Session<'_, '_>, _ended: &Ended) {
        self.post_loops.set(self.post_loops.get() + 1);
    }

    async fn conn_shutdown(&mut self, _info: &ConnInfo, ended: &Ended) {
        self.ended.borrow_mut().push(*ended);
    }
}

/// A graceful stop: the application signals; the connection ends between
/// messages with its hooks run and an orderly close (the client reads a
/// clean `Closed`), and `serve_until` returns.
#[test]
fn test_graceful_stop_closes_in_order_and_returns() {
    use embassy_sync::blocking_mutex::raw::NoopRawMutex;
    use embassy_sync::signal::Signal;
    let handler = EchoRecording::default();
    let stop = Signal::<NoopRawMutex, ()>::new();
    let mut config = ServerConfig::new(PORT);
    config.timeouts = quick_timeouts();
    let returned = run_pair(
        Faults::default(),
        Duration::from_secs(30),
        async |a, b, _| {
            let mut storage = [SlotStorage::<4096, 4096, 1024>::new(), SlotStorage::new()];
            let slots = storage.each_mut().map(SlotStorage::slot);
            let server =
                tinyproto_embassy::serve_until(b, &config, slots, [], [&handler, &handler], &stop);
            let test = async {
                let (mut rx, mut tx) = ([0u8; 2048], [0u8; 2048]);
                let mut client =
                    Client::connect(a, &mut rx, &mut tx, server_endpoint(PORT), quick_timeouts())
                        .await
                        .unwrap();
                let mut buf = [0u8; 64];
                client.transmit(b"before the stop").await.unwrap();
                assert_eq!(client.receive(&mut buf).await.unwrap(), b"before the stop");
                stop.signal(());
                client.receive(&mut buf).await.map(<[u8]>::to_vec)
            };
            // Both must finish: the server returns, the client sees the close
            // (run_pair bounds the whole at 30 s).
            embassy_futures::join::join(server, test).await.1
        },
    );
    assert_eq!(returned, Err(Error::Closed), "an orderly close");
    assert_eq!(*handler.ended.borrow(), [Ended::Stopped]);
    assert_eq!(handler.post_loops.get(), 1, "post_loop ran");
}

/// A server on port 0 can never listen: each slot and reserve stops at once
/// (it neither retries forever nor spins the executor, which would keep the
/// timer below from ever firing: the test then fails after a minute), no
/// hook runs, and the stop still returns `serve_until`.
#[test]
fn test_port_zero_stops_every_slot_and_the_stop_returns() {
    use embassy_sync::blocking_mutex::raw::NoopRawMutex;
    use embassy_sync::signal::Signal;
    let (done, outcome) = std::sync::mpsc::channel();
    // On a thread of its own, so that a spinning server fails the test
    // instead of hanging it.
    std::thread::spawn(move || {
        let handler = EchoRecording::default();
        let stop = Signal::<NoopRawMutex, ()>::new();
        let mut config = ServerConfig::new(0);
        config.timeouts = quick_timeouts();
        let returned = run_pair(
            Faults::default(),
            Duration::from_secs(30),
            async |_a, b, _| {
                let mut storage = [SlotStorage::<1024, 1024, 256>::new(), SlotStorage::new()];
                let slots = storage.each_mut().map(SlotStorage::slot);
                let mut reserve = ReserveStorage::new();
                let server = tinyproto_embassy::serve_until(
                    b,
                    &config,
                    slots,
                    [reserve.reserve()],
                    [&handler, &handler],
                    &stop,
                );
                let test = async {
                    Timer::after(Duration::from_millis(500)).await;
                    stop.signal(());
                    true
                };
                embassy_futures::join::join(server, test).await.1
            },
        );
        let _ = done.send((returned, handler.ended.take(), handler.post_loops.get()));
    });
    let (returned, ended, post_loops) = outcome
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the server neither stopped nor returned within a minute");
    assert!(returned, "the stop returned serve_until");
    assert!(ended.is_empty(), "no connection began: {ended:?}");
    assert_eq!(post_loops, 0);
}

/// A client's `receive` waits `Timeouts::receive` for a message to begin,
/// fails with `Deadline::Receive` (as tinyproto-std's does), and the
/// connection carries on.
#[test]
fn test_receive_wait_runs_out_and_the_connection_goes_on() {
    let handler = Echo::default();
    let mut test = EchoTest::new(&handler, 1024);
    test.client_timeouts.receive = Some(Duration::from_millis(300));
    test.connect(4096, async |mut client, _| {
        let mut buf = [0u8; 64];
        let started = Instant::now();
        assert_eq!(
            client.receive(&mut buf).await,
            Err(Error::Io(NetError::TimedOut(Deadline::Receive)))
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
        client.transmit(b"still here").await.unwrap();
        assert_eq!(client.receive(&mut buf).await.unwrap(), b"still here");
        client.close().await.unwrap();
    });
}

/// The reserve never resets: with the one slot busy, 20 peers arriving at
/// once are all refused with exactly 0xFE by 20 reserve sockets (64-byte
/// buffers each), none reset; the admitted client is served throughout.
#[test]
fn test_twenty_peers_beyond_the_slots_all_read_0xfe() {
    const PEERS: usize = 20;
    let handler = Echo::default();
    let mut config = ServerConfig::new(PORT);
    config.timeouts = quick_timeouts();
    run_pair(
        Faults::default(),
        Duration::from_secs(60),
        async |a, b, _| {
            let mut storage = SlotStorage::<4096, 4096, 256>::new();
            let slots = [storage.slot()];
            let mut reserve_storage = [const { ReserveStorage::new() }; PEERS];
            let reserves = reserve_storage.each_mut().map(ReserveStorage::reserve);
            let server = serve(b, &config, slots, reserves, [&handler]);
            let clients = async {
                let to = server_endpoint(PORT);
                let (mut rx, mut tx) = ([0u8; 2048], [0u8; 2048]);
                let mut admitted = Client::connect(a, &mut rx, &mut tx, to, quick_timeouts())
                    .await
                    .unwrap();
                // Let the reserves start listening (the slot just became busy).
                Timer::after(Duration::from_millis(50)).await;
                let mut bufs = [[[0u8; 256]; 2]; PEERS];
                let peers = bufs.each_mut().map(|[rx, tx]| async move {
                    let mut socket = TcpSocket::new(a, rx, tx);
                    socket
                        .connect(to)
                        .await
                        .map_err(|e| format!("connect: {e:?}"))?;
                    let mut got = Vec::new();
                    let mut byte = [0u8; 8];
                    loop {
                        match socket.read(&mut byte).await {
                            Ok(0) => break,
                            Ok(n) => got.extend_from_slice(&byte[..n]),
                            Err(e) => return Err(format!("read: {e:?} after {got:?}")),
                        }
                    }
                    socket.close();
                    let _ = socket.flush().await;
                    Ok(got)
                });
                let results = embassy_futures::join::join_array(peers).await;
                for (i, r) in results.iter().enumerate() {
                    assert_eq!(r.as_deref(), Ok(&[0xFEu8][..]), "peer {i}");
                }
                let mut buf = [0u8; 16];
                admitted.transmit(b"served").await.unwrap();
                assert_eq!(admitted.receive(&mut buf).await.unwrap(), b"served");
                admitted.close().await.unwrap();
            };
            match select(server, clients).await {
                Either::First(never) => match never {},
                Either::Second(()) => {}
            }
        },
    );
}

/// Per-connection state as a plain field: one handler per slot, `&mut self`.
struct Counting {
    seen: u32,
}

impl Handler for Counting {
    async fn conn_init(&mut self, _info: &ConnInfo) -> Flow {
        self.seen = 0;
        Flow::Continue
    }

    async fn transmission_received(&mut self, session: &mut Session<'_, '_>, _msg: &[u8]) -> Flow {
        self.seen += 1;
        Flow::after(session.transmit(&self.seen.to_be_bytes()).await)
    }
}

/// Two connections on two slots, their messages interleaved: each slot's
/// handler counts its own connection's messages, without `Cell`s.
#[test]
fn test_each_slot_has_its_own_handler_state() {
    let mut config = ServerConfig::new(PORT);
    config.timeouts = quick_timeouts();
    run_pair(
        Faults::default(),
        Duration::from_secs(30),
        async |a, b, _| {
            let mut storage = [SlotStorage::<4096, 4096, 256>::new(), SlotStorage::new()];
            let slots = storage.each_mut().map(SlotStorage::slot);
            let handlers = [Counting { seen: 0 }, Counting { seen: 0 }];
            let server = serve(b, &config, slots, [], handlers);
            let clients = async {
                let to = server_endpoint(PORT);
                let mut bufs = [[0u8; 2048]; 4];
                let [b0, b1, b2, b3] = &mut bufs;
                let mut one = Client::connect(a, b0, b1, to, quick_timeouts())
                    .await
                    .unwrap();
                let mut two = Client::connect(a, b2, b3, to, quick_timeouts())
                    .await
                    .unwrap();
                let mut buf = [0u8; 8];
                // Which client speaks (0: one, 1: two) and the count it expects.
                for (who, expected) in [(0, 1u32), (1, 1), (0, 2), (0, 3), (1, 2)] {
                    let client = if who == 0 { &mut one } else { &mut two };
                    client.transmit(b"tick").await.unwrap();
                    assert_eq!(
                        client.receive(&mut buf).await.unwrap(),
                        expected.to_be_bytes()
                    );
                }
                one.close().await.unwrap();
                two.close().await.unwrap();
            };
            match select(server, clients).await {
                Either::First(never) => match never {},
                Either::Second(()) => {}
            }
        },
    );
}

/// State shared by all slots: one value, `impl Handler for &Tally`.
#[derive(Default)]
struct Tally {
    /// Messages of every connection together.
    messages: Cell<u32>,
    /// The slot of each connection, as `conn_init` saw it.
    slots: RefCell<Vec<usize>>,
    /// Connections ended.
    ended: Cell<usize>,
}

impl Handler for &Tally {
    async fn conn_init(&mut self, info: &ConnInfo) -> Flow {
        self.slots.borrow_mut().push(info.slot);
        Flow::Continue
    }

    async fn transmission_received(&mut self, session: &mut Session<'_, '_>, _msg: &[u8]) -> Flow {
        self.messages.set(self.messages.get() + 1);
        Flow::after(session.transmit(&self.messages.get().to_be_bytes()).await)
    }

    async fn conn_shutdown(&mut self, _info: &ConnInfo, _ended: &Ended) {
        self.ended.set(self.ended.get() + 1);
    }
}

/// Two connections on two slots served by one handler value (`[&tally;
/// 2]`): each reply counts the messages of both connections, and the one
/// value saw both slots.
#[test]
fn test_one_shared_handler_serves_every_slot() {
    let tally = Tally::default();
    let mut config = ServerConfig::new(PORT);
    config.timeouts = quick_timeouts();
    run_pair(
        Faults::default(),
        Duration::from_secs(30),
        async |a, b, _| {
            let mut storage = [SlotStorage::<4096, 4096, 256>::new(), SlotStorage::new()];
            let slots = storage.each_mut().map(SlotStorage::slot);
            let server = serve(b, &config, slots, [], [&tally, &tally]);
            let clients = async {
                let to = server_endpoint(PORT);
                let mut bufs = [[0u8; 2048]; 4];
                let [b0, b1, b2, b3] = &mut bufs;
                let mut one = Client::connect(a, b0, b1, to, quick_timeouts())
                    .await
                    .unwrap();
                let mut two = Client::connect(a, b2, b3, to, quick_timeouts())
                    .await
                    .unwrap();
                let mut buf = [0u8; 8];
                // Which client speaks (0: one, 1: two) and the shared count.
                for (who, expected) in [(0, 1u32), (1, 2), (0, 3), (1, 4)] {
                    let client = if who == 0 { &mut one } else { &mut two };
                    client.transmit(b"tick").await.unwrap();
                    assert_eq!(
                        client.receive(&mut buf).await.unwrap(),
                        expected.to_be_bytes()
                    );
                }
                one.close().await.unwrap();
                two.close().await.unwrap();
                settle(|| tally.ended.get() == 2).await;
            };
            match select(server, clients).await {
                Either::First(never) => match never {},
                Either::Second(()) => {}
            }
        },
    );
    let mut slots = tally.slots.borrow().clone();
    slots.sort_unstable();
    assert_eq!(slots, [0, 1]);
    assert_eq!(tally.ended.get(), 2);
}

/// Waits (bounded) until bytes of the peer's wait in `client`'s socket.
async fn until_bytes_wait(client: &mut Client<'_>) {
    let until = Instant::now() + Duration::from_secs(3);
    while !client.connection().get_ref().tcp().can_recv() && Instant::now() < until {
        Timer::after(Duration::from_millis(5)).await;
    }
    assert!(
        client.connection().get_ref().tcp().can_recv(),
        "nothing arrived"
    );
}

#[test]
fn test_a_send_while_the_peers_message_waits_is_peer_sending_and_sends_nothing() {
    let handler = Echo::default();
    EchoTest::new(&handler, 1024).connect(4096, async |mut client, _| {
        client.transmit(b"send 5").await.unwrap();
        // The server's 5 bytes are in our socket before our next length.
        until_bytes_wait(&mut client).await;
        assert_eq!(client.transmit(b"x").await, Err(Error::PeerSending));
        assert!(!client.connection().is_broken() && !client.connection().is_in_progress());
        let mut buf = [0u8; 16];
        assert_eq!(client.receive(&mut buf).await.unwrap(), &pattern(5, 9)[..]);
        // Now nothing waits: it goes, and comes back.
        client.transmit(b"x").await.unwrap();
        assert_eq!(client.receive(&mut buf).await.unwrap(), b"x");
        client.close().await.unwrap();
        settle(|| !handler.ended.borrow().is_empty()).await;
    });
    assert_eq!(
        handler.received.get(),
        2,
        "the refused send never reached it"
    );
    assert!(handler.send_errors.borrow().is_empty());
}

#[test]
fn test_a_length_where_the_answer_is_due_is_a_conflict_that_aborts_at_once() {
    // The peer's own length, 0x00 first with exactly three bytes behind it,
    // or a first byte that can only open a length.
    for answer in [[0u8, 0, 0, 9], [0x41, 0, 0, 0]] {
        run_pair(
            Faults::default(),
            Duration::from_secs(30),
            async |a, b, _| {
                let (mut srx, mut stx) = ([0u8; 1024], [0u8; 1024]);
                let mut raw = TcpSocket::new(b, &mut srx, &mut stx);
                let peer = async {
                    raw.accept(PORT).await.unwrap();
                    let mut byte = [0u8; 1];
                    raw.write(&[0xFF]).await.unwrap();
                    raw.read(&mut byte).await.unwrap();
                    let mut len = [0u8; 4];
                    let mut got = 0;
                    while got < 4 {
                        got += raw.read(&mut len[got..]).await.unwrap();
                    }
                    assert_eq!(len, 5u32.to_be_bytes(), "our length");
                    raw.write(&answer).await.unwrap();
                    raw.flush().await.unwrap();
                    let start = Instant::now();
                    // The client aborts: a reset or the end, quickly, no payload.
                    let mut rest = [0u8; 16];
                    let r = raw.read(&mut rest).await;
                    assert!(matches!(r, Ok(0) | Err(_)), "{answer:02x?}: {r:?}");
                    start.elapsed()
                };
                let client = async {
                    let (mut rx, mut tx) = ([0u8; 1024], [0u8; 1024]);
                    let mut client = Client::connect(
                        a,
                        &mut rx,
                        &mut tx,
                        server_endpoint(PORT),
                        quick_timeouts(),
                    )
                    .await
                    .unwrap();
                    assert_eq!(
                        client.transmit(b"hello").await,
                        Err(Error::Conflict),
                        "{answer:02x?}"
                    );
                    assert!(client.connection().is_broken());
                };
                let (waited, ()) = embassy_futures::join::join(peer, client).await;
                assert!(waited < Duration::from_secs(2), "aborted after {waited:?}");
            },
        );
    }
}

/// Answers a down half's hello with the welcome, as a duplex server does.
#[derive(Default)]
struct DuplexGreeter {
    hellos: RefCell<Vec<(tinyproto::duplex::Direction, u128)>>,
}

impl Handler for &DuplexGreeter {
    async fn transmission_received(&mut self, session: &mut Session<'_, '_>, msg: &[u8]) -> Flow {
        let Some((direction, link)) = tinyproto::duplex::parse_hello(msg) else {
            return Flow::Continue;
        };
        self.hellos.borrow_mut().push((direction, link));
        if direction == tinyproto::duplex::Direction::Down {
            session.transmit(tinyproto::duplex::WELCOME).await.unwrap();
        }
        Flow::Continue
    }
}

#[test]
fn test_join_duplex_sends_the_hello_and_waits_for_the_welcome() {
    use tinyproto::duplex::Direction;
    let handler = DuplexGreeter::default();
    let link = 0x1234_5678_9abc_def0_0fed_cba9_8765_4321;
    EchoTest::new(&handler, 1024).connect(4096, async |mut client, _| {
        client.join_duplex(Direction::Down, link).await.unwrap();
        client.close().await.unwrap();
    });
    assert_eq!(*handler.hellos.borrow(), vec![(Direction::Down, link)]);
    // An echo server is no duplex server: it sends the hello back.
    let echo = Echo::default();
    EchoTest::new(&echo, 1024).connect(4096, async |mut client, _| {
        assert_eq!(
            client.join_duplex(Direction::Down, link).await,
            Err(Error::Io(NetError::NotDuplex))
        );
    });
}
