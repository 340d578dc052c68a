//! Both sides may send: a message of the peer's that has begun when ours is
//! due is taken first (never read as a rejection), and two lengths that do
//! cross are a `Conflict` that closes the connection at once, on loopback;
//! the server's side on a thread per connection and on the event threads.

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tinyproto_std::{Client, Error};

/// Waits (bounded) until bytes of the peer's wait in `conn`'s socket,
/// without moving them and without touching its timeouts.
fn until_bytes_arrived(stream: &TcpStream) {
    let mut byte = [0u8; 1];
    let arrived = wait_until(LONG, || {
        stream.set_nonblocking(true).unwrap();
        let peeked = stream.peek(&mut byte);
        stream.set_nonblocking(false).unwrap();
        matches!(peeked, Ok(n) if n > 0)
    });
    assert!(arrived, "the peer's bytes never arrived");
}

in_both_modes! {
    test_echo_ahead_of_our_next_message_is_taken_first_not_a_rejection;
    test_server_side_conflict_ends_only_that_connection_fast;
}

fn test_echo_ahead_of_our_next_message_is_taken_first_not_a_rejection(mode: Mode) {
    let h = Harness::start_in(mode, |_| {});
    let mut conn = Client::new().connect(h.addr).unwrap();
    conn.transmit(b"a").unwrap();
    // The echo of "a" is in our socket before the length of "b" goes out.
    until_bytes_arrived(conn.tcp_stream());
    let start = Instant::now();
    conn.transmit(b"b").expect("no false rejection");
    assert_eq!(conn.receive().unwrap(), b"a", "the echo held first");
    assert_eq!(conn.receive().unwrap(), b"b");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "both echoes within a second, took {:?}",
        start.elapsed()
    );
    // Many in a row, each echo in our socket when the next is due: each is
    // taken first, never read as a rejection. (Without the wait, the
    // server's echo and our next length may start within the same round
    // trip: a crossing that no look can rule out, reported as a Conflict;
    // see PROTOCOL.md.)
    for i in 0..50u8 {
        conn.transmit(&[i]).unwrap();
        until_bytes_arrived(conn.tcp_stream());
    }
    for i in 0..50u8 {
        assert_eq!(conn.receive().unwrap(), [i]);
    }
    assert_serves(&h);
}

/// A raw peer that greets, reads our length, and answers it with `answer`
/// written in one piece; then reports what it read until we closed, and how
/// long that took.
fn raw_answering(answer: Vec<u8>) -> (std::net::SocketAddr, thread::JoinHandle<Duration>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(LONG)).unwrap();
        s.set_nodelay(true).unwrap();
        greet(&mut s);
        assert_eq!(read_n(&mut s, 4), 5u32.to_be_bytes(), "our length");
        s.write_all(&answer).unwrap();
        let start = Instant::now();
        assert_eq!(
            read_to_close(&mut s),
            b"",
            "no payload after a crossed length"
        );
        start.elapsed()
    });
    (addr, peer)
}

#[test]
fn test_a_length_where_our_answer_is_due_is_a_conflict_that_closes_at_once() {
    // 0x00 with the rest of a length right behind it, and a first byte that
    // can only open a length.
    for answer in [&[0, 0, 0, 9][..], &[0x41, 0, 0, 0][..]] {
        let (addr, peer) = raw_answering(answer.to_vec());
        let mut conn = Client::new().connect(addr).unwrap();
        match conn.transmit(b"hello") {
            Err(Error::Protocol(tinyproto::Error::Conflict)) => {}
            other => panic!("{answer:02x?}: expected Conflict, got {other:?}"),
        }
        assert!(conn.is_broken());
        assert!(!Error::Protocol(tinyproto::Error::Conflict).is_recoverable());
        // The peer learns it from the close, not from a deadline (its read
        // timeout is 30 s).
        let waited = peer.join().unwrap();
        assert!(waited < Duration::from_secs(5), "closed after {waited:?}");
    }
}

#[test]
fn test_a_lone_zero_is_still_a_rejection_and_the_connection_goes_on() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(LONG)).unwrap();
        greet(&mut s);
        assert_eq!(read_n(&mut s, 4), 5u32.to_be_bytes());
        s.write_all(&[0x00]).unwrap();
        // Then it takes the next one.
        assert_eq!(read_n(&mut s, 4), 2u32.to_be_bytes());
        s.write_all(&[0xFF]).unwrap();
        read_n(&mut s, 2)
    });
    let mut conn = Client::new().connect(addr).unwrap();
    match conn.transmit(b"hello") {
        Err(Error::Protocol(tinyproto::Error::Rejected { len: 5 })) => {}
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(!conn.is_broken());
    conn.transmit(b"ok").unwrap();
    assert_eq!(peer.join().unwrap(), b"ok");
}

fn test_server_side_conflict_ends_only_that_connection_fast(mode: Mode) {
    let h = Harness::start_in(mode, |_| {});
    let mut s = raw(h.addr);
    greet(&mut s);
    assert_eq!(send_msg(&mut s, b"ping"), 0xFF);
    // The server echoes: its length comes, and we send one of our own
    // instead of an answer.
    assert_eq!(read_n(&mut s, 4), 4u32.to_be_bytes());
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let start = Instant::now();
    assert_eq!(
        read_to_close(&mut s),
        b"",
        "no payload after a crossed length"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    let (_, outcome) = h.next_post_loop();
    assert_eq!(
        outcome,
        Outcome::Other(format!("{:?}", Error::Protocol(tinyproto::Error::Conflict)))
    );
    assert_serves(&h);
}
