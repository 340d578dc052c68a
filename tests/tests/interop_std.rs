//! Interoperability of `tinyproto-std` with the reference Python package
//! (`tinyproto==3.0`), both directions, as real processes over loopback.
//!
//! Skipped with a message when no interpreter is found (see
//! `tinyproto_tests::python`), failed instead when `$CI` is set.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tinyproto_std::{Client, Conn, Error, Handler, Server, ZlibPlugin};
use tinyproto_tests::{pattern, python, Counts, EchoHandler, PyProcess, RunningServer, WireTap};

const SIZES: [usize; 5] = [0, 1, 5, 64 * 1024, 8 * 1024 * 1024];
const LONG: Duration = Duration::from_secs(120);

fn rust_server(plugins: bool, counts: &Counts, tap: &WireTap) -> RunningServer {
    let mut server = Server::new();
    server.set_conn_handler(|| EchoHandler);
    server.set_hooks(counts.clone());
    if plugins {
        server.register_plugin(ZlibPlugin::default());
        server.register_plugin(tap.clone());
    }
    RunningServer::start(server)
}

#[test]
fn rust_client_to_python_server_all_sizes() {
    let Some(py) = python() else { return };
    let mut server = PyProcess::spawn(&py, "py_server.py", &[]);
    let addr = server.server_addr();
    let mut client = Client::new();
    client.set_timeout(Duration::from_secs(60));
    let mut conn = client.connect(addr).expect("connect to the Python server");
    for size in SIZES {
        let msg = pattern(size);
        conn.transmit(&msg).expect("transmit");
        let echo = conn.receive().expect("receive the echo");
        assert_eq!(echo.len(), size);
        assert!(echo == msg, "echo of {size} bytes differs");
    }
    conn.close();
}

/// The Rust client answers the Python server's question from inside its
/// `transmission_received`, and the Python server's reply arrives.
#[test]
fn rust_client_handler_request_reply_with_python_server() {
    let Some(py) = python() else { return };
    let mut server = PyProcess::spawn(&py, "py_server.py", &[]);
    let addr = server.server_addr();

    struct Asker(std::sync::mpsc::Sender<Vec<u8>>);
    impl Handler for Asker {
        fn pre_loop(&mut self, conn: &mut Conn) -> Result<(), Error> {
            conn.transmit(b"req")
        }
        fn transmission_received(&mut self, conn: &mut Conn, msg: &[u8]) -> Result<(), Error> {
            if msg == b"question" {
                conn.transmit(b"answer")
            } else {
                let _ = self.0.send(msg.to_vec());
                conn.stop();
                Ok(())
            }
        }
    }

    let (tx, rx) = std::sync::mpsc::channel();
    let mut client = Client::new();
    client.set_conn_handler(move || Asker(tx.clone()));
    let id = client.connect_to(addr).expect("connect_to");
    let reply = rx.recv_timeout(LONG).expect("a reply");
    assert_eq!(reply, b"got:answer");
    let result = client.join(id, LONG).expect("connection ended");
    assert!(result.is_ok(), "{result:?}");
}

#[test]
fn python_client_to_rust_server_all_sizes_and_request_reply() {
    let Some(py) = python() else { return };
    let counts = Counts::default();
    let mut server = rust_server(false, &counts, &WireTap::default());
    let port = server.addr.port().to_string();
    let sizes = "0,1,5,65536,8388608";
    let mut client = PyProcess::spawn(
        &py,
        "py_client.py",
        &["--port", &port, "--sizes", sizes, "--req"],
    );
    assert_eq!(client.client_ok(LONG), SIZES.len() + 1);
    assert!(counts.wait_shutdowns(1, LONG), "conn_shutdown did not run");
    assert_eq!(counts.inits.load(Ordering::SeqCst), 1);
    server.stop();
}

#[test]
fn several_concurrent_python_clients() {
    let Some(py) = python() else { return };
    const CLIENTS: usize = 4;
    let counts = Counts::default();
    let mut server = rust_server(false, &counts, &WireTap::default());
    let port = server.addr.port().to_string();
    let mut clients: Vec<PyProcess> = (0..CLIENTS)
        .map(|_| {
            PyProcess::spawn(
                &py,
                "py_client.py",
                &["--port", &port, "--sizes", "0,1,5,65536", "--req"],
            )
        })
        .collect();
    for client in &mut clients {
        assert_eq!(client.client_ok(LONG), 5);
    }
    assert!(
        counts.wait_shutdowns(CLIENTS, LONG),
        "conn_shutdown did not run for all"
    );
    assert_eq!(counts.inits.load(Ordering::SeqCst), CLIENTS);
    server.stop();
}

/// zlib on both sides, Python client against a Rust server: the Python
/// side decompresses what Rust compressed and the other way round; the
/// wire tap proves the 64 KiB messages crossed compressed both ways.
#[test]
fn zlib_plugin_python_client_rust_server() {
    let Some(py) = python() else { return };
    let counts = Counts::default();
    let tap = WireTap::default();
    let mut server = rust_server(true, &counts, &tap);
    let port = server.addr.port().to_string();
    let mut client = PyProcess::spawn(
        &py,
        "py_client.py",
        &["--port", &port, "--zlib", "--sizes", "0,5,65536", "--req"],
    );
    assert_eq!(client.client_ok(LONG), 4);
    let received = tap.received.lock().unwrap().clone();
    let sent = tap.sent.lock().unwrap().clone();
    // 64 KiB of the 251-byte cycle compresses to well under 2 KiB.
    assert!(received.iter().any(|&n| n > 0 && n < 2048), "{received:?}");
    assert!(received.iter().all(|&n| n < 2048), "{received:?}");
    assert!(sent.iter().all(|&n| n < 2048), "{sent:?}");
    assert_eq!(
        received.len(),
        5,
        "3 messages, req and answer: {received:?}"
    );
    server.stop();
}

/// zlib on both sides, Rust client against a Python server.
#[test]
fn zlib_plugin_rust_client_python_server() {
    let Some(py) = python() else { return };
    let mut server = PyProcess::spawn(&py, "py_server.py", &["--zlib"]);
    let addr = server.server_addr();
    let tap = WireTap::default();
    let mut client = Client::new();
    client.set_timeout(Duration::from_secs(60));
    client.register_plugin(ZlibPlugin::default());
    client.register_plugin(tap.clone());
    let mut conn = client.connect(addr).expect("connect");
    for size in [0, 5, 64 * 1024, 8 * 1024 * 1024] {
        let msg = pattern(size);
        conn.transmit(&msg).expect("transmit");
        assert!(
            conn.receive().expect("receive") == msg,
            "echo of {size} differs"
        );
    }
    let sent = tap.sent.lock().unwrap().clone();
    let received = tap.received.lock().unwrap().clone();
    assert_eq!(sent.len(), 4);
    // 8 MiB of the cycle compresses to far less than 1 MiB, both ways.
    assert!(
        sent[3] < 1 << 20 && received[3] < 1 << 20,
        "{sent:?} {received:?}"
    );
    conn.close();
}

/// The reference client meets the Rust server's connection limit: it reads
/// exactly the one byte 0xFE instead of the greeting, then the close.
#[test]
fn python_client_at_the_rust_server_connection_limit() {
    let Some(py) = python() else { return };
    let mut server = Server::new();
    server.set_conn_handler(|| EchoHandler);
    server.set_connection_limit(Some(1));
    let mut server = RunningServer::start(server);
    let mut holder = Client::new()
        .connect(server.addr)
        .expect("first connection");
    let port = server.addr.port().to_string();
    let mut refused = PyProcess::spawn(&py, "py_client.py", &["--port", &port, "--expect-refusal"]);
    let line = refused.expect_line("PYCLIENT", LONG);
    assert_eq!(refused.wait(LONG), 0, "{line}");
    assert!(line.contains(r"bytearray(b'\xfe')"), "{line}");
    assert!(line.ends_with("| rest="), "nothing after 0xFE: {line}");
    // The slot holder is served all along.
    holder.transmit(b"still mine").unwrap();
    assert_eq!(holder.receive().unwrap(), b"still mine");
    holder.close();
    server.stop();
}

/// The reference client sends a stream of messages while the Rust server
/// pushes messages of its own from `loop_pass`: the server never reads the
/// client's length as a rejection. It takes a message that is arriving
/// before it sends, and where two lengths do cross it reports a `Conflict`
/// and closes (the reference then reads the close as a rejection: it
/// cannot tell).
#[test]
fn python_client_sending_while_the_rust_server_pushes_gets_no_false_rejection_from_us() {
    let Some(py) = python() else { return };
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Seen {
        received: usize,
        pushed: usize,
        errors: Vec<String>,
    }
    struct Pusher(Arc<Mutex<Seen>>);
    impl Handler for Pusher {
        fn transmission_received(&mut self, _: &mut Conn, _: &[u8]) -> Result<(), Error> {
            self.0.lock().unwrap().received += 1;
            Ok(())
        }
        fn loop_pass(&mut self, conn: &mut Conn) -> Result<(), Error> {
            if self.0.lock().unwrap().pushed >= 200 {
                return Ok(());
            }
            let result = conn.transmit(b"push");
            let mut seen = self.0.lock().unwrap();
            match &result {
                Ok(()) => seen.pushed += 1,
                Err(e) => seen.errors.push(format!("{e:?}")),
            }
            result
        }
    }

    const CODE: &str = r#"
import selectors, socket, sys, tinyproto
port, n = int(sys.argv[1]), int(sys.argv[2])
sock = socket.create_connection(("127.0.0.1", port), timeout=30)
conn = tinyproto.TinyProtoConnection(sock, socket_already_up=True)
conn._initialise_connection()
sel = selectors.DefaultSelector()
sel.register(sock, selectors.EVENT_READ)
sent = got = 0
try:
    for i in range(n):
        while sel.select(0):
            conn._receive()
            got += 1
        conn._transmit(b"py%d" % i)
        sent += 1
except (tinyproto.TinyProtoError, OSError) as e:
    print("PYCLIENT CROSSED sent=%d got=%d (%s)" % (sent, got, e), flush=True)
    sys.exit(0)
print("PYCLIENT DONE sent=%d got=%d" % (sent, got), flush=True)
"#;
    let mut crossed = 0;
    for _ in 0..5 {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let counts = Counts::default();
        let mut server = Server::new();
        let handler_seen = seen.clone();
        server.set_conn_handler(move || Pusher(handler_seen.clone()));
        server.set_loop_pass_interval(Some(Duration::from_millis(1)));
        server.set_hooks(counts.clone());
        let mut server = RunningServer::start(server);
        let port = server.addr.port().to_string();
        let mut client = PyProcess::spawn_code(&py, "pusher-client", CODE, &[&port, "500"]);
        let line = client.expect_line("PYCLIENT", LONG);
        assert_eq!(client.wait(LONG), 0, "{line}");
        assert!(counts.wait_shutdowns(1, LONG), "{line}");
        let results = counts.results.lock().unwrap().clone();
        let seen = seen.lock().unwrap();
        eprintln!(
            "{line} | server: received {} pushed {} errors {:?} end {results:?}",
            seen.received, seen.pushed, seen.errors
        );
        for e in seen.errors.iter().chain(&results) {
            assert!(
                !e.contains("Rejected"),
                "a false rejection on our side: {e}"
            );
        }
        if line.contains("CROSSED") {
            crossed += 1;
        } else {
            assert!(line.contains("sent=500"), "{line}");
            assert_eq!(seen.received, 500, "{line}");
        }
        server.stop();
    }
    eprintln!("reference client vs pushing server: {crossed} of 5 runs crossed");
}
