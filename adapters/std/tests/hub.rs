//! A hub on `broadcast`, the first thing a user builds with it: clients
//! send whenever they like and receive everyone else's messages. On the
//! built-in pattern (a `Duplex` link per client) nothing can cross; on one
//! connection per client the library takes what has arrived before it
//! sends, and a crossing that remains is a `Conflict` that ends at once.
//! Each test runs twice: the hub on a thread per connection, and on the
//! event threads (`set_event_handler`). Loopback only; every wait bounded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tinyproto_std::{
    events, on_message, Client, ConnId, Connections, Context, Error, Hooks, Server,
};
use tinyproto_tests::RunningServer;

const CLIENTS: usize = 8;
const MESSAGES: usize = 1000;
const LONG: Duration = Duration::from_secs(60);

/// Every connection's end, as `conn_shutdown` saw it.
#[derive(Clone, Default)]
struct Ends(Arc<Mutex<Vec<String>>>);

impl Hooks for Ends {
    fn conn_shutdown(
        &mut self,
        _: &Context,
        _: ConnId,
        _: std::net::SocketAddr,
        r: &Result<(), Error>,
    ) {
        self.0.lock().unwrap().push(format!("{r:?}"));
    }
}

/// How the hub serves its connections.
#[derive(Clone, Copy)]
enum Serving {
    Threads,
    Events,
}

/// A hub server: each message goes to every other client; `short` counts
/// deliveries a full queue skipped.
fn hub(
    serving: Serving,
    duplex: bool,
    short: Arc<AtomicUsize>,
    ends: Ends,
) -> (RunningServer, Connections) {
    let mut server = Server::new();
    let connections = server.active_connections();
    server.set_duplex(duplex);
    // Room for everything the others send while a client is busy.
    server.set_queue_len(CLIENTS * MESSAGES);
    server.set_hooks(ends);
    // The one thing a hub does with a message, whoever serves it.
    let forward = move |short: &AtomicUsize, all: Connections, id: ConnId, msg: &[u8]| {
        let taken = all.broadcast(msg, Some(id));
        let others = if duplex { CLIENTS - 1 } else { all.len() - 1 };
        short.fetch_add(others.saturating_sub(taken), Ordering::SeqCst);
        Ok(())
    };
    match serving {
        Serving::Threads => server.set_conn_handler(move || {
            let short = short.clone();
            on_message(move |conn, msg| forward(&short, conn.active_connections(), conn.id(), msg))
        }),
        Serving::Events => server.set_event_handler(move || {
            let short = short.clone();
            events::on_message(move |conn, msg| {
                forward(&short, conn.active_connections(), conn.id(), msg)
            })
        }),
    }
    (RunningServer::start(server), connections)
}

fn message(client: usize, k: usize) -> Vec<u8> {
    format!("{client}:{k}").into_bytes()
}

fn parse(msg: &[u8]) -> (usize, usize) {
    let text = std::str::from_utf8(msg).expect("utf-8");
    let (client, k) = text.split_once(':').expect("client:k");
    (client.parse().unwrap(), k.parse().unwrap())
}

/// Checks what one client received: every other client's messages, each
/// once, in order per sender.
fn check_received(me: usize, received: &[Vec<u8>]) {
    let mut next: HashMap<usize, usize> = HashMap::new();
    for msg in received {
        let (from, k) = parse(msg);
        assert_ne!(from, me, "client {me} got its own message back");
        let want = next.entry(from).or_insert(0);
        assert_eq!(k, *want, "client {me}: from {from} out of order or twice");
        *want += 1;
    }
    assert_eq!(next.len(), CLIENTS - 1, "client {me} heard from everyone");
    assert!(
        next.values().all(|&n| n == MESSAGES),
        "client {me}: {next:?}"
    );
}

#[test]
fn test_hub_on_duplex_links_delivers_everything_with_no_conflict() {
    hub_on_duplex_links_delivers_everything_with_no_conflict(Serving::Threads);
}

#[test]
fn test_hub_on_event_threads_on_duplex_links_delivers_everything_with_no_conflict() {
    hub_on_duplex_links_delivers_everything_with_no_conflict(Serving::Events);
}

fn hub_on_duplex_links_delivers_everything_with_no_conflict(serving: Serving) {
    let short = Arc::new(AtomicUsize::new(0));
    let ends = Ends::default();
    let (mut server, _) = hub(serving, true, short.clone(), ends.clone());
    let addr = server.addr;
    // Every link is registered before anyone sends (connect_duplex returns
    // then), so every client hears every message.
    let links: Vec<_> = (0..CLIENTS)
        .map(|_| Client::new().connect_duplex(addr).expect("connect_duplex"))
        .collect();
    let start = Instant::now();
    let clients: Vec<_> = links
        .into_iter()
        .enumerate()
        .map(|(me, link)| {
            thread::spawn(move || {
                let (mut up, mut down) = link.split();
                let sender = thread::spawn(move || {
                    for k in 0..MESSAGES {
                        up.transmit(&message(me, k))
                            .expect("transmit on the up half");
                    }
                    up
                });
                let mut received = Vec::new();
                let deadline = Instant::now() + LONG;
                while received.len() < (CLIENTS - 1) * MESSAGES && Instant::now() < deadline {
                    if let Some(msg) = down
                        .try_receive(Duration::from_millis(100))
                        .expect("receive on the down half")
                    {
                        received.push(msg);
                    }
                }
                let up = sender.join().expect("sender");
                check_received(me, &received);
                (up, down)
            })
        })
        .collect();
    let halves: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let took = start.elapsed();
    assert_eq!(short.load(Ordering::SeqCst), 0, "no delivery skipped");
    eprintln!(
        "hub on duplex links: {CLIENTS} clients x {MESSAGES} messages, {} deliveries, 0 conflicts, {took:?}",
        CLIENTS * (CLIENTS - 1) * MESSAGES
    );
    for (up, down) in halves {
        up.close();
        down.close();
    }
    server.stop();
    let ends = ends.0.lock().unwrap().clone();
    assert!(
        ends.iter()
            .all(|e| !e.contains("Conflict") && !e.contains("Rejected")),
        "{ends:?}"
    );
}

#[test]
fn test_duplex_server_refuses_a_plain_client_and_up_halves_take_no_messages() {
    duplex_server_refuses_a_plain_client(Serving::Threads);
}

#[test]
fn test_duplex_server_on_event_threads_refuses_a_plain_client() {
    duplex_server_refuses_a_plain_client(Serving::Events);
}

fn duplex_server_refuses_a_plain_client(serving: Serving) {
    let ends = Ends::default();
    let (mut server, _) = hub(serving, true, Arc::new(AtomicUsize::new(0)), ends.clone());
    // A plain client's first message is no hello: that connection ends.
    let mut plain = Client::new().connect(server.addr).unwrap();
    plain.transmit(b"hello").unwrap();
    assert!(
        tinyproto_tests::wait_until(LONG, || ends.0.lock().unwrap().len() == 1),
        "the plain connection ended"
    );
    assert_eq!(
        ends.0.lock().unwrap()[0],
        format!("{:?}", Err::<(), _>(Error::NotDuplex))
    );
    // A duplex client against a plain server is told so.
    let (mut plain_server, _) = hub(
        serving,
        false,
        Arc::new(AtomicUsize::new(0)),
        Ends::default(),
    );
    let mut client = Client::new();
    client.set_timeouts(tinyproto_std::Timeouts::default().with_receive(Duration::from_secs(2)));
    match client.connect_duplex(plain_server.addr) {
        Err(Error::Timeout(_)) | Err(Error::NotDuplex) => {}
        other => panic!("expected a failed pairing, got {other:?}"),
    }
    plain_server.stop();
    server.stop();
}

#[test]
fn test_hub_on_one_connection_per_client_never_rejects_and_never_hangs() {
    hub_on_one_connection_per_client_never_rejects_and_never_hangs(Serving::Threads);
}

#[test]
fn test_hub_on_event_threads_on_one_connection_per_client_never_rejects_and_never_hangs() {
    hub_on_one_connection_per_client_never_rejects_and_never_hangs(Serving::Events);
}

fn hub_on_one_connection_per_client_never_rejects_and_never_hangs(serving: Serving) {
    let short = Arc::new(AtomicUsize::new(0));
    let ends = Ends::default();
    let (mut server, connections) = hub(serving, false, short, ends.clone());
    let addr = server.addr;
    let conns: Vec<_> = (0..CLIENTS)
        .map(|_| Client::new().connect(addr).expect("connect"))
        .collect();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let start = Instant::now();
    let clients: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(me, mut conn)| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                let mut received = 0usize;
                let mut sent = 0usize;
                let end = loop {
                    if sent == MESSAGES {
                        break Ok(());
                    }
                    if let Err(e) = conn.transmit(&message(me, sent)) {
                        break Err(e);
                    }
                    sent += 1;
                    match conn.try_receive(Duration::ZERO) {
                        Ok(Some(_)) => received += 1,
                        Ok(None) => {}
                        Err(e) => break Err(e),
                    }
                };
                // Then listen until the others go quiet (or the link is gone).
                let mut end = end;
                while end.is_ok() {
                    match conn.try_receive(Duration::from_millis(500)) {
                        Ok(Some(_)) => received += 1,
                        Ok(None) => break,
                        Err(e) => end = Err(e),
                    }
                }
                (sent, received, end, Instant::now())
            })
        })
        .collect();
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let took = start.elapsed();
    let mut conflicts = 0;
    for (me, (sent, received, end, _)) in results.iter().enumerate() {
        match end {
            Ok(()) => {}
            Err(Error::Protocol(tinyproto::Error::Conflict)) => conflicts += 1,
            // The hub closed this connection after a conflict it saw: the
            // end of the stream, or a conflict, but never a rejection.
            Err(Error::Protocol(
                tinyproto::Error::Closed | tinyproto::Error::UnexpectedEof { .. },
            )) => conflicts += 1,
            Err(e) => panic!("client {me}: {e:?} after {sent} sent, {received} received"),
        }
    }
    eprintln!(
        "hub on one connection per client: {CLIENTS} clients x {MESSAGES} messages: \
         {conflicts} connection(s) ended by a conflict, {took:?}; \
         sent/received {:?}",
        results
            .iter()
            .map(|r| (r.0, r.1, format!("{:?}", r.2)))
            .collect::<Vec<_>>()
    );
    // Nobody waited for a deadline (the message deadline is 60 s).
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let ends = ends.0.lock().unwrap().clone();
    assert!(ends.iter().all(|e| !e.contains("Rejected")), "{ends:?}");
    // The hub goes on serving.
    assert!(tinyproto_tests::wait_until(LONG, || connections.is_empty()));
    let mut a = Client::new().connect(addr).unwrap();
    let mut b = Client::new().connect(addr).unwrap();
    assert!(tinyproto_tests::wait_until(LONG, || connections.len() == 2));
    a.transmit(b"still here").unwrap();
    assert_eq!(b.receive().unwrap(), b"still here");
    server.stop();
}
