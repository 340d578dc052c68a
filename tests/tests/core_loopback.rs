//! The core's blocking driver over real `std::net::TcpStream`s on loopback.

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use tinyproto::blocking::Connection;
use tinyproto::Error;

fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    for s in [&client, &server] {
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    }
    (client, server)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 253) as u8).collect()
}

#[test]
fn test_echo_over_tcp_loopback() {
    let (client, server) = pair();
    let echo = thread::spawn(move || {
        let mut conn = Connection::from_std(server);
        let mut buf = vec![0u8; 2 << 20];
        let mut echoed = 0;
        loop {
            match conn.receive(&mut buf) {
                Ok(msg) => {
                    let msg = msg.to_vec();
                    conn.transmit(&msg).unwrap();
                    echoed += 1;
                }
                Err(Error::Closed) => return echoed,
                Err(e) => panic!("server: {e}"),
            }
        }
    });
    let mut conn = Connection::from_std(client);
    conn.greet().unwrap();
    let mut buf = vec![0u8; 2 << 20];
    let sizes = [0usize, 1, 5, 65_536, 1 << 20];
    for &len in &sizes {
        let msg = pattern(len);
        conn.transmit(&msg).unwrap();
        assert_eq!(
            conn.receive(&mut buf).unwrap(),
            &msg[..],
            "echo of {len} bytes"
        );
    }
    drop(conn);
    assert_eq!(echo.join().unwrap(), sizes.len());
}

#[test]
fn test_oversized_is_refused_over_tcp_and_connection_goes_on() {
    let (client, server) = pair();
    let receiver = thread::spawn(move || {
        let mut conn = Connection::from_std(server);
        let mut buf = [0u8; 1024];
        let first = conn.receive(&mut buf).map(|m| m.len());
        let second = conn.receive(&mut buf).map(|m| m.to_vec());
        (first, second)
    });
    let mut conn = Connection::from_std(client);
    assert_eq!(
        conn.transmit(&[1u8; 1025]).map_err(|e| e.map_io(|_| ())),
        Err(Error::Rejected { len: 1025 })
    );
    conn.transmit(b"fits").unwrap();
    let (first, second) = receiver.join().unwrap();
    assert_eq!(
        first.unwrap_err().map_io(|_| ()),
        Error::TooLarge {
            len: 1025,
            capacity: 1024
        }
    );
    assert_eq!(second.unwrap(), b"fits");
}

fn would_block<T>(r: &Result<T, Error<std::io::Error>>) -> bool {
    matches!(r, Err(Error::Io(e)) if e.kind() == ErrorKind::WouldBlock)
}

/// A bare-metal style superloop: one thread, non-blocking sockets, both ends
/// advanced in turn; every `WouldBlock` just means "call it again later".
#[test]
fn test_superloop_over_nonblocking_sockets() {
    let (client, server) = pair();
    client.set_nonblocking(true).unwrap();
    server.set_nonblocking(true).unwrap();
    // Small kernel buffers force many partial writes.
    let mut a = Connection::from_std(client);
    let mut b = Connection::from_std(server);
    let messages: Vec<Vec<u8>> = [0usize, 3, 100_000, 1, 700_000]
        .iter()
        .map(|&n| pattern(n))
        .collect();
    let mut buf = vec![0u8; 1 << 20];
    let mut sent = 0;
    let mut received = Vec::new();
    let mut stalls = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.len() < messages.len() {
        assert!(Instant::now() < deadline, "superloop made no progress");
        if sent < messages.len() {
            let r = a.transmit(&messages[sent]);
            if would_block(&r) {
                stalls += 1;
            } else {
                r.unwrap();
                sent += 1;
            }
        }
        let r = b.receive(&mut buf).map(|m| m.to_vec());
        if would_block(&r) {
            stalls += 1;
        } else {
            received.push(r.unwrap());
        }
    }
    assert_eq!(received, messages);
    assert!(
        stalls > 0,
        "the sockets never blocked: the test proved nothing"
    );
}
