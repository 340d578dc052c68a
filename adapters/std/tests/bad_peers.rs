//! Raw-socket peers, scripted byte by byte, misbehaving against a real
//! server on 127.0.0.1. Each asserts what the misbehaving peer sees, what
//! the handler's `post_loop` gets, and that the server serves on; each
//! against a server of each kind: a thread per connection (`threads::`)
//! and the event threads (`events::`).

mod common;

use std::io::Write;
use std::thread;
use std::time::Duration;

use common::*;
use tinyproto::Phase;
use tinyproto_std::{Client, ConnId, Deadline, Error, Timeouts};

in_both_modes! {
    test_wrong_greeting_byte_is_a_typed_error_and_post_loop_runs;
    test_unexpected_status_byte_breaks_only_that_connection;
    test_close_mid_message_delivers_nothing;
    test_length_over_limit_answered_zero_and_connection_stays_usable;
    test_connection_limit_answers_exactly_fe;
    test_slowloris_is_cut_by_the_message_deadline;
    test_peer_that_stops_reading_is_cut_by_the_write_timeout;
    test_idle_timeout_closes_a_silent_connection;
    test_flood_of_garbage_connections_then_normal_service;
    test_panicking_hook_frees_the_slot;
    test_rejected_echo_is_not_a_failure;
    test_reconnect_storm_every_peer_is_served;
    test_a_peer_that_splits_every_field_anywhere_gets_every_echo_whole;
    test_a_half_closed_peer_gets_its_reply_and_the_end_is_reported;
    test_a_slow_but_steady_reader_is_not_cut_by_the_write_timeout;
}

fn test_wrong_greeting_byte_is_a_typed_error_and_post_loop_runs(mode: Mode) {
    let h = Harness::start_in(mode, |_| {});
    let mut s = raw(h.addr);
    s.write_all(&[0x42]).unwrap();
    // The server greets, then closes on our bad byte.
    assert_eq!(read_to_close(&mut s), [0xFF]);
    let (_, outcome) = h.next_post_loop();
    assert_eq!(outcome, Outcome::UnexpectedByte(Phase::Greeting, 0x42));
    // pre_loop never ran: the greeting is its precondition.
    assert!(!h.drain_events().iter().any(|(_, e)| *e == Event::PreLoop));
    assert_serves(&h);
}

fn test_unexpected_status_byte_breaks_only_that_connection(mode: Mode) {
    let h = Harness::start_in(mode, |_| {});
    let mut s = raw(h.addr);
    greet(&mut s);
    assert_eq!(send_msg(&mut s, b"ping"), 0xFF);
    // The server echoes: it announces 4 bytes, and we answer 0xFD.
    assert_eq!(read_n(&mut s, 4), 4u32.to_be_bytes());
    s.write_all(&[0xFD]).unwrap();
    assert_eq!(read_to_close(&mut s), b"", "no payload after a bad status");
    let (_, outcome) = h.next_post_loop();
    assert_eq!(outcome, Outcome::UnexpectedByte(Phase::Status, 0xFD));
    assert_serves(&h);
}

fn test_close_mid_message_delivers_nothing(mode: Mode) {
    let h = Harness::start_in(mode, |_| {});
    let mut s = raw(h.addr);
    greet(&mut s);
    s.write_all(&10u32.to_be_bytes()).unwrap();
    assert_eq!(read_n(&mut s, 1), [0xFF]);
    s.write_all(b"abc").unwrap();
    drop(s);
    let (id, outcome) = h.next_post_loop();
    assert_eq!(outcome, Outcome::Eof(Phase::Payload));
    let delivered = h
        .drain_events()
        .into_iter()
        .any(|(i, e)| i == id && matches!(e, Event::Received(_)));
    assert!(!delivered, "a partial message was delivered");

    // Mid-length, too.
    let mut s = raw(h.addr);
    greet(&mut s);
    s.write_all(&[0, 0]).unwrap();
    drop(s);
    assert_eq!(h.next_post_loop().1, Outcome::Eof(Phase::Length));
    assert_serves(&h);
}

fn test_length_over_limit_answered_zero_and_connection_stays_usable(mode: Mode) {
    let h = Harness::start_in(mode, |s| s.set_max_message_len(1024));
    let mut s = raw(h.addr);
    greet(&mut s);
    assert_eq!(send_msg(&mut s, &[7; 1025]), 0x00);
    s.write_all(&0xFFFF_FFFFu32.to_be_bytes()).unwrap();
    assert_eq!(read_n(&mut s, 1), [0x00]);
    s.write_all(&tinyproto::MAX_MESSAGE_LEN.to_be_bytes())
        .unwrap();
    assert_eq!(read_n(&mut s, 1), [0x00]);
    // Same connection, next message: served.
    assert_eq!(send_msg(&mut s, &[7; 1024]), 0xFF);
    assert_eq!(recv_msg(&mut s), [7; 1024]);
    drop(s);
    assert_eq!(h.next_post_loop().1, Outcome::Ok);

    // The client API reports the refusal as Rejected and goes on.
    let mut conn = Client::new().connect(h.addr).unwrap();
    match conn.transmit(&[1; 2000]) {
        Err(Error::Protocol(tinyproto::Error::Rejected { len: 2000 })) => {}
        other => panic!("expected Rejected, got {other:?}"),
    }
    conn.transmit(b"after").unwrap();
    assert_eq!(conn.receive().unwrap(), b"after");
}

fn test_connection_limit_answers_exactly_fe(mode: Mode) {
    let h = Harness::start_in(mode, |s| s.set_connection_limit(Some(2)));
    let mut a = raw(h.addr);
    greet(&mut a);
    let mut b = raw(h.addr);
    greet(&mut b);
    assert!(wait_until(LONG, || h.connections.len() == 2));

    // A silent peer gets exactly one byte, 0xFE, then the close.
    let mut c = raw(h.addr);
    assert_eq!(read_to_close(&mut c), [0xFE]);
    // So does a peer that greets first.
    let mut d = raw(h.addr);
    d.write_all(&[0xFF]).unwrap();
    assert_eq!(read_to_close(&mut d), [0xFE]);
    // The client API reports it typed.
    match Client::new().connect(h.addr) {
        Err(Error::Protocol(tinyproto::Error::ConnectionLimit)) => {}
        other => panic!("expected ConnectionLimit, got {other:?}"),
    }
    assert_eq!(h.inits.load(std::sync::atomic::Ordering::SeqCst), 2);

    // A slot frees when a connection ends.
    drop(a);
    assert!(wait_until(LONG, || h.connections.len() < 2));
    let mut e = raw(h.addr);
    greet(&mut e);
    assert_eq!(send_msg(&mut e, b"in"), 0xFF);
    assert_eq!(recv_msg(&mut e), b"in");
    drop(b);
}

fn test_slowloris_is_cut_by_the_message_deadline(mode: Mode) {
    let h = Harness::start_in(mode, |s| {
        s.set_timeouts(
            Timeouts::default()
                .with_message(Duration::from_secs(1))
                .with_greeting(Duration::from_secs(1)),
        )
    });
    let mut s = raw(h.addr);
    greet(&mut s);
    s.write_all(&100u32.to_be_bytes()).unwrap();
    assert_eq!(read_n(&mut s, 1), [0xFF]);
    // Drip one byte every 100 ms: far slower than 100 bytes per second.
    let mut cut = false;
    for _ in 0..300 {
        if s.write_all(&[1]).is_err() {
            cut = true;
            break;
        }
        thread::sleep(Duration::from_millis(100));
        if h.connections.is_empty() {
            cut = true;
            break;
        }
    }
    assert!(cut, "the dripping peer was never cut off");
    assert_eq!(h.next_post_loop().1, Outcome::Timeout(Deadline::Message));

    // A peer that never greets is cut by the greeting deadline.
    let mut g = raw(h.addr);
    assert_eq!(read_to_close(&mut g), [0xFF]);
    assert_eq!(h.next_post_loop().1, Outcome::Timeout(Deadline::Greeting));

    // A peer stuck inside a length is cut too.
    let mut l = raw(h.addr);
    greet(&mut l);
    l.write_all(&[0]).unwrap();
    assert_eq!(read_to_close(&mut l), b"");
    assert_eq!(h.next_post_loop().1, Outcome::Timeout(Deadline::Message));

    // ... also when the start of the length came with its greeting, in one
    // segment (read ahead with the greeting, never seen by the socket's
    // readiness): those bytes start the message deadline.
    let mut a = raw(h.addr);
    a.write_all(&[0xFF, 0, 0]).unwrap();
    assert_eq!(read_to_close(&mut a), [0xFF]);
    assert_eq!(h.next_post_loop().1, Outcome::Timeout(Deadline::Message));
    assert_serves(&h);
}

fn test_peer_that_stops_reading_is_cut_by_the_write_timeout(mode: Mode) {
    let h = Harness::start_in(mode, |s| {
        s.set_timeouts(Timeouts::default().with_write(Duration::from_millis(500)))
    });
    let mut s = raw(h.addr);
    greet(&mut s);
    assert_eq!(send_msg(&mut s, b"big"), 0xFF);
    // Accept the 32 MiB answer, then never read it.
    assert_eq!(read_n(&mut s, 4), (32u32 << 20).to_be_bytes());
    s.write_all(&[0xFF]).unwrap();
    assert_eq!(h.next_post_loop().1, Outcome::Timeout(Deadline::Write));
    drop(s);
    assert_serves(&h);
}

fn test_idle_timeout_closes_a_silent_connection(mode: Mode) {
    let h = Harness::start_in(mode, |s| {
        s.set_timeouts(Timeouts::default().with_idle(Some(Duration::from_millis(500))))
    });
    let mut conn = Client::new().connect(h.addr).unwrap();
    // Greeted, then silent: the server ends the connection.
    match conn.receive() {
        Err(e) if e.is_closed() => {}
        other => panic!("expected the server to close, got {other:?}"),
    }
    assert_eq!(h.next_post_loop().1, Outcome::Timeout(Deadline::Idle));
}

fn test_flood_of_garbage_connections_then_normal_service(mode: Mode) {
    const FLOOD: usize = 300;
    let h = Harness::start_in(mode, |s| {
        s.set_timeouts(Timeouts::default().with_greeting(Duration::from_secs(5)))
    });
    let addr = h.addr;
    let workers: Vec<_> = (0..2)
        .map(|w| {
            thread::spawn(move || {
                let mut connected = 0;
                for i in (w..FLOOD).step_by(2) {
                    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
                        continue;
                    };
                    connected += 1;
                    let _ = match i % 5 {
                        0 => Ok(()),                                       // connect, close
                        1 => s.write_all(&[0x13, 0x37, 0x00]),             // bad greeting
                        2 => s.write_all(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF]), // over the maximum
                        3 => s.write_all(&[0xFF, 0, 0, 3, 0xE8, 1, 2, 3]), // close mid-message
                        _ => s.write_all(&[0xFF, 0, 0]),                   // close mid-length
                    };
                }
                connected
            })
        })
        .collect();
    let connected: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(
        connected > FLOOD / 2,
        "only {connected} flood connections were made"
    );
    assert_serves(&h);
    let mut conn = Client::new().connect(h.addr).unwrap();
    conn.transmit(&[9; 100_000]).unwrap();
    assert_eq!(conn.receive().unwrap(), vec![9; 100_000]);
    conn.close();
    h.wait_no_connections();
    // Every connection (garbage or not) ended through post_loop and
    // conn_shutdown. A connection leaves the registry just before its
    // conn_shutdown hook runs, so collect events until they add up (bounded).
    let inits = h.inits.load(std::sync::atomic::Ordering::SeqCst);
    let mut events = Vec::new();
    let count = |events: &[(ConnId, Event)], f: fn(&Event) -> bool| {
        events.iter().filter(|(_, e)| f(e)).count()
    };
    let is_post = |e: &Event| matches!(e, Event::PostLoop(_));
    let is_shutdown = |e: &Event| matches!(e, Event::Shutdown(_));
    wait_until(LONG, || {
        events.extend(h.drain_events());
        count(&events, is_post) >= inits && count(&events, is_shutdown) >= inits
    });
    let posts = count(&events, is_post);
    let shutdowns = count(&events, is_shutdown);
    assert!(
        inits >= connected + 2,
        "{inits} conn_init calls for {connected} + 2 connections"
    );
    assert_eq!(shutdowns, inits, "every conn_init has its conn_shutdown");
    assert_eq!(posts, inits, "every connection ran post_loop");
}

fn test_panicking_hook_frees_the_slot(mode: Mode) {
    let h = Harness::start_in(mode, |s| s.set_connection_limit(Some(1)));
    let mut s = raw(h.addr);
    greet(&mut s);
    assert_eq!(send_msg(&mut s, b"panic"), 0xFF);
    assert_eq!(read_to_close(&mut s), b"");
    assert_eq!(h.next_post_loop().1, Outcome::Panicked);
    h.wait_event(LONG, |_, e| *e == Event::Shutdown(Outcome::Panicked));
    h.wait_no_connections();
    // The only slot is free again.
    assert_serves(&h);
}

/// A peer answering 0x00 to the echo of its own message: a normal answer of
/// the protocol. The connection goes on and its next message is echoed.
fn test_rejected_echo_is_not_a_failure(mode: Mode) {
    let h = Harness::start_in(mode, |_| {});
    let mut s = raw(h.addr);
    greet(&mut s);
    assert_eq!(send_msg(&mut s, b"not wanted back"), 0xFF);
    assert_eq!(read_n(&mut s, 4), 15u32.to_be_bytes(), "the echo's length");
    s.write_all(&[0x00]).unwrap();
    assert_eq!(send_msg(&mut s, b"this one"), 0xFF);
    assert_eq!(recv_msg(&mut s), b"this one", "the connection went on");
    drop(s);
    let (_, outcome) = h.next_post_loop();
    assert_eq!(outcome, Outcome::Ok);
}

/// 2,000 peers connecting at once, each greeting and echoing one message:
/// all are served, none lost. Bounded: every peer gives up after 60 s.
fn test_reconnect_storm_every_peer_is_served(mode: Mode) {
    const PEERS: usize = 2_000;
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let h = Harness::start_in(mode, |_| {});
    let addr = h.addr;
    let peers: Vec<_> = (0..PEERS)
        .map(|i| {
            thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || -> Result<(), String> {
                    let mut client = Client::new();
                    client.set_timeout(Duration::from_secs(60));
                    let mut conn = client.connect(addr).map_err(|e| format!("{i}: {e}"))?;
                    let msg = (i as u32).to_be_bytes();
                    conn.transmit(&msg).map_err(|e| format!("{i}: {e}"))?;
                    match conn.receive() {
                        Ok(reply) if reply == msg => Ok(()),
                        other => Err(format!("{i}: {other:?}")),
                    }
                })
                .expect("spawn a peer")
        })
        .collect();
    let failures: Vec<String> = peers
        .into_iter()
        .filter_map(|p| p.join().expect("peer thread").err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} lost, first: {:?}",
        failures.len(),
        failures.first()
    );
    h.wait_no_connections();
    assert_eq!(h.inits.load(std::sync::atomic::Ordering::SeqCst), PEERS);
}

/// A deterministic xorshift: the same splits on every run.
struct Splits(u64);

impl Splits {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// Writes `bytes` in pieces of random size (1 to 3,000 bytes, each its own
/// segment: no delay), now and then after a pause of 200 µs.
fn write_in_pieces(s: &mut std::net::TcpStream, bytes: &[u8], splits: &mut Splits) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = 1 + splits.below(rest.len().min(3000));
        s.write_all(&rest[..n]).unwrap();
        if splits.below(8) == 0 {
            thread::sleep(Duration::from_micros(200));
        }
        rest = &rest[n..];
    }
}

/// Every field cut anywhere (the length between any two of its bytes, the
/// payload in pieces of any size), with pauses: the server resumes at each
/// byte, and every message of 0 B to 70 kB comes back whole, in order.
fn test_a_peer_that_splits_every_field_anywhere_gets_every_echo_whole(mode: Mode) {
    let h = Harness::start_in(mode, |_| {});
    let mut s = raw(h.addr);
    greet(&mut s);
    let mut splits = Splits(0x9E37_79B9_7F4A_7C15);
    for round in 0..150usize {
        let len = match splits.below(4) {
            0 => 0,
            1 => splits.below(16),
            2 => splits.below(5_000),
            _ => splits.below(70_000),
        };
        let msg: Vec<u8> = (0..len).map(|i| (i * 7 + round) as u8).collect();
        write_in_pieces(&mut s, &(len as u32).to_be_bytes(), &mut splits);
        assert_eq!(read_n(&mut s, 1), [0xFF], "round {round}: accepted");
        write_in_pieces(&mut s, &msg, &mut splits);
        // The echo: its length, our 0xFF, its payload.
        assert_eq!(
            read_n(&mut s, 4),
            (len as u32).to_be_bytes(),
            "round {round}"
        );
        s.write_all(&[0xFF]).unwrap();
        assert!(
            read_n(&mut s, len) == msg,
            "round {round}: the echo of {len} bytes differs"
        );
    }
    let ended: Vec<_> = h
        .drain_events()
        .into_iter()
        .filter(|(_, e)| matches!(e, Event::PostLoop(_)))
        .collect();
    assert!(ended.is_empty(), "the connection went on: {ended:?}");
    assert_serves(&h);
}

/// A peer that closes its sending side right after its message: nothing of
/// its is arriving, so the reply still goes (its length reaches the peer),
/// and the connection ends where the peer's status was due, with the end of
/// the stream.
fn test_a_half_closed_peer_gets_its_reply_and_the_end_is_reported(mode: Mode) {
    let h = Harness::start_in(mode, |_| {});
    let mut s = raw(h.addr);
    greet(&mut s);
    assert_eq!(send_msg(&mut s, b"hello"), 0xFF);
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_close(&mut s), 5u32.to_be_bytes());
    assert_eq!(h.next_post_loop().1, Outcome::Eof(Phase::Status));
    assert_serves(&h);
}

/// A peer that reads a large reply slowly but steadily (128 KiB every
/// 100 ms, over 4 s) is not cut by a 2 s write timeout: the timeout bounds a
/// write that makes no progress, not a whole reply.
fn test_a_slow_but_steady_reader_is_not_cut_by_the_write_timeout(mode: Mode) {
    let h = Harness::start_in(mode, |s| {
        s.set_timeouts(Timeouts::default().with_write(Duration::from_secs(2)))
    });
    let mut s = raw(h.addr);
    greet(&mut s);
    assert_eq!(send_msg(&mut s, b"big"), 0xFF);
    assert_eq!(read_n(&mut s, 4), (32u32 << 20).to_be_bytes());
    s.write_all(&[0xFF]).unwrap();
    for round in 0..40 {
        thread::sleep(Duration::from_millis(100));
        assert!(
            read_n(&mut s, 128 * 1024).iter().all(|b| *b == 0x5A),
            "round {round}: the reply's bytes"
        );
        let ended: Vec<_> = h
            .drain_events()
            .into_iter()
            .filter(|(_, e)| matches!(e, Event::PostLoop(_)))
            .collect();
        assert!(
            ended.is_empty(),
            "round {round}: cut while reading: {ended:?}"
        );
    }
}
