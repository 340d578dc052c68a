//! The drivers against the reference model, under every split of the stream.

mod support;

use proptest::prelude::*;
use support::*;
use tinyproto::{Error, Misuse, Phase, MAX_MESSAGE_LEN};

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (proptest::collection::vec(any::<u8>(), 0..64), any::<bool>())
            .prop_map(|(msg, accept)| Op::Transmit { msg, accept }),
        (proptest::collection::vec(any::<u8>(), 0..64), 0usize..80)
            .prop_map(|(msg, capacity)| Op::Receive { msg, capacity }),
    ]
}

fn shape() -> impl Strategy<Value = Shape> {
    (1usize..9, 0u8..160, any::<u64>()).prop_map(|(max_chunk, disturb, seed)| Shape {
        max_chunk,
        disturb,
        seed,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Split invariance, blocking: any split plus injected WouldBlock and
    /// Interrupted gives the bytes and results of a whole-buffer run, and
    /// both match the model.
    #[test]
    fn prop_blocking_split_invariance(ops in proptest::collection::vec(op(), 0..12), shape in shape()) {
        let (peer, ours, expected) = model(&ops);
        let (whole, whole_io) = run_blocking(&ops, ScriptIo::new(peer.clone(), Shape::WHOLE));
        let (split, split_io) = run_blocking(&ops, ScriptIo::new(peer, shape));
        prop_assert_eq!(&whole, &expected);
        prop_assert_eq!(&split, &expected);
        prop_assert_eq!(&whole_io.output, &ours);
        prop_assert_eq!(&split_io.output, &ours);
        prop_assert!(split_io.unread().is_empty(), "read past the script");
    }

    /// Split invariance, async with cancellation: every call is dropped
    /// after a few polls and called again; nothing is lost or sent twice.
    #[test]
    fn prop_async_cancel_resumes(ops in proptest::collection::vec(op(), 0..12), shape in shape(), polls in 1usize..4) {
        let (peer, ours, expected) = model(&ops);
        let (outcomes, io) = run_async_cancelling(&ops, ScriptIo::new(peer, shape), polls);
        prop_assert_eq!(&outcomes, &expected);
        prop_assert_eq!(&io.output, &ours);
    }

    /// Round trip: what our sender writes, our receiver reads back intact,
    /// whatever the splits on either side.
    #[test]
    fn prop_roundtrip(msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..10), a in shape(), b in shape()) {
        let sends: Vec<Op> = msgs.iter().map(|m| Op::Transmit { msg: m.clone(), accept: true }).collect();
        let statuses = vec![0xFF; msgs.len() + 1];
        let (sent, sender_io) = run_blocking(&sends, ScriptIo::new(statuses.clone(), a));
        prop_assert!(sent.iter().all(|o| *o == Outcome::Sent));
        let mut wire = sender_io.output;
        wire[0] = 0xFF; // the sender's greeting is the receiver's peer greeting
        let recvs: Vec<Op> = msgs.iter().map(|m| Op::Receive { msg: m.clone(), capacity: 200 }).collect();
        let (received, receiver_io) = run_blocking(&recvs, ScriptIo::new(wire, b));
        let expected: Vec<Outcome> = msgs.iter().map(|m| Outcome::Received(m.clone())).collect();
        prop_assert_eq!(received, expected);
        prop_assert_eq!(receiver_io.output, statuses);
    }

    /// The peer closing at every byte offset: each step before the cut
    /// behaves as in the model, the step that meets the cut fails cleanly
    /// (never a partial message), and the connection is then broken.
    #[test]
    fn prop_peer_close_at_every_offset(ops in proptest::collection::vec(op(), 1..6), shape in shape()) {
        let (peer, _, expected) = model(&ops);
        for cut in 0..peer.len() {
            let (outcomes, _) = run_blocking(&ops, ScriptIo::new(peer[..cut].to_vec(), shape));
            let last = outcomes.len() - 1;
            prop_assert_eq!(&outcomes[..last], &expected[..last], "cut {}", cut);
            match &outcomes[last] {
                Outcome::Failed(Error::Closed) | Outcome::Failed(Error::UnexpectedEof { .. }) => {}
                other => prop_assert!(false, "cut {}: step {} gave {:?}", cut, last, other),
            }
        }
    }
}

#[test]
fn test_error_after_eof_is_broken() {
    let (peer, _, _) = model(&[Op::Receive {
        msg: b"abc".to_vec(),
        capacity: 8,
    }]);
    let mut conn =
        tinyproto::blocking::Connection::new(ScriptIo::new(peer[..3].to_vec(), Shape::WHOLE));
    let mut buf = [0u8; 8];
    assert_eq!(
        conn.receive(&mut buf),
        Err(Error::UnexpectedEof {
            phase: Phase::Length
        })
    );
    assert!(conn.is_broken());
    assert_eq!(conn.transmit(b"x"), Err(Error::Broken));
    assert_eq!(conn.receive(&mut buf), Err(Error::Broken));
}

#[test]
fn test_clean_close_between_messages() {
    let (peer, _, _) = model(&[Op::Receive {
        msg: b"abc".to_vec(),
        capacity: 8,
    }]);
    let mut conn = tinyproto::blocking::Connection::new(ScriptIo::new(peer, Shape::WHOLE));
    let mut buf = [0u8; 8];
    assert_eq!(conn.receive(&mut buf), Ok(&b"abc"[..]));
    assert_eq!(conn.receive(&mut buf), Err(Error::Closed));
}

#[test]
fn test_greeting_connection_limit_and_garbage() {
    let mut conn = tinyproto::blocking::Connection::new(ScriptIo::new(vec![0xFE], Shape::WHOLE));
    assert_eq!(conn.greet(), Err(Error::ConnectionLimit));
    assert_eq!(conn.get_ref().output, [0xFF]);
    let mut conn = tinyproto::blocking::Connection::new(ScriptIo::new(vec![0x42], Shape::WHOLE));
    assert_eq!(
        conn.transmit(b"x"),
        Err(Error::UnexpectedByte {
            phase: Phase::Greeting,
            byte: 0x42
        })
    );
    assert_eq!(
        conn.get_ref().output,
        [0xFF],
        "nothing after a bad greeting"
    );
}

#[test]
fn test_status_conflict_is_protocol_error() {
    // The peer answers our length with the first byte of its own length.
    for byte in [0xFE, 0xFD, 0x05] {
        let mut conn =
            tinyproto::blocking::Connection::new(ScriptIo::new(vec![0xFF, byte], Shape::WHOLE));
        let expected = if byte <= tinyproto::MAX_LENGTH_FIRST_BYTE {
            Error::Conflict
        } else {
            Error::UnexpectedByte {
                phase: Phase::Status,
                byte,
            }
        };
        assert_eq!(conn.transmit(b"hello"), Err(expected));
        assert!(conn.is_broken());
        assert_eq!(
            conn.get_ref().output,
            [0xFF, 0, 0, 0, 5],
            "no payload after a bad status"
        );
    }
}

/// The boundary table of announced lengths against the receive side, with
/// a 16-byte buffer: refused ones are answered 0x00 and the next message
/// still arrives.
#[test]
fn test_receive_length_boundaries() {
    for (len, accepted) in [
        (0u32, true),
        (1, true),
        (16, true),
        (17, false),
        (MAX_MESSAGE_LEN, false),
        (MAX_MESSAGE_LEN + 1, false),
        (0xFFFF_FFFF, false),
    ] {
        let mut peer = vec![0xFF];
        peer.extend_from_slice(&len.to_be_bytes());
        if accepted {
            peer.extend(std::iter::repeat_n(7u8, len as usize));
        }
        peer.extend_from_slice(&[0, 0, 0, 2, b'o', b'k']);
        let mut conn = tinyproto::blocking::Connection::new(ScriptIo::new(peer, Shape::WHOLE));
        let mut buf = [0u8; 16];
        match conn.receive(&mut buf) {
            Ok(msg) => {
                assert!(accepted, "len {len}");
                assert_eq!(msg.len(), len as usize);
            }
            Err(e) => {
                assert!(!accepted, "len {len}: {e:?}");
                assert_eq!(e, Error::TooLarge { len, capacity: 16 });
            }
        }
        assert_eq!(
            conn.receive(&mut buf),
            Ok(&b"ok"[..]),
            "in step after len {len}"
        );
        let status = if accepted { 0xFF } else { 0x00 };
        assert_eq!(conn.get_ref().output, [0xFF, status, 0xFF]);
    }
}

#[test]
fn test_configured_limit_below_buffer() {
    let mut peer = vec![0xFF, 0, 0, 0, 9];
    peer.extend_from_slice(&[0, 0, 0, 8]);
    peer.extend_from_slice(b"12345678");
    let mut conn = tinyproto::blocking::Connection::new(ScriptIo::new(peer, Shape::WHOLE));
    conn.set_max_message_len(8);
    let mut buf = [0u8; 64];
    assert_eq!(
        conn.receive(&mut buf),
        Err(Error::TooLarge {
            len: 9,
            capacity: 8
        })
    );
    assert_eq!(conn.receive(&mut buf), Ok(&b"12345678"[..]));
}

/// A 3 MB "firmware image" received through a 1 KiB buffer and sent from
/// 1 KiB chunks: never held whole on our side.
#[test]
fn test_chunked_receive_and_transmit_large_message() {
    let image: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut peer = vec![0xFF];
    peer.extend_from_slice(&(image.len() as u32).to_be_bytes());
    peer.extend_from_slice(&image);
    let shape = Shape {
        max_chunk: 1500,
        disturb: 20,
        seed: 7,
    };
    let mut conn = tinyproto::blocking::Connection::new(ScriptIo::new(peer, shape));
    let mut flash = Vec::new();
    let mut chunk = [0u8; 1024];
    let mut msg = loop {
        match conn.begin_receive(4_000_000) {
            Err(Error::Io(_)) => continue,
            r => break r.unwrap(),
        }
    };
    assert_eq!(msg.len() as usize, image.len());
    loop {
        match msg.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => flash.extend_from_slice(&chunk[..n]),
            Err(Error::Io(_)) => continue,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(msg.remaining(), 0);
    assert_eq!(flash, image);
    assert!(!conn.is_in_progress());

    // And back out, 1 KiB at a time, into a peer that accepts.
    let mut conn = tinyproto::blocking::Connection::new(ScriptIo::new(vec![0xFF, 0xFF], shape));
    let mut out = loop {
        match conn.begin_transmit(image.len() as u32) {
            Err(Error::Io(_)) => continue,
            r => break r.unwrap(),
        }
    };
    for piece in image.chunks(1024) {
        let mut piece = piece;
        while !piece.is_empty() {
            match out.write(piece) {
                Ok(n) => piece = &piece[n..],
                Err(Error::Io(_)) => continue,
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    assert_eq!(
        out.write(b"x"),
        Err(Error::Misuse(Misuse::PastEnd)),
        "past the announced length"
    );
    while let Err(e) = conn
        .begin_transmit(image.len() as u32)
        .and_then(|o| o.finish())
    {
        assert!(matches!(e, Error::Io(_)), "{e:?}");
    }
    let wire = &conn.get_ref().output;
    assert_eq!(&wire[..5], &[0xFF, 0x00, 0x2D, 0xC6, 0xC0]);
    assert_eq!(&wire[5..], &image[..]);
}

#[test]
fn test_chunked_receive_refuses_over_limit_and_stays_in_step() {
    let mut peer = vec![0xFF, 0, 0, 4, 0];
    peer.extend_from_slice(&[0, 0, 0, 1, b'z']);
    let mut conn = tinyproto::blocking::Connection::new(ScriptIo::new(peer, Shape::WHOLE));
    assert_eq!(
        conn.begin_receive(1023).map(|m| m.len()),
        Err(Error::TooLarge {
            len: 1024,
            capacity: 1023
        })
    );
    let mut m = conn.begin_receive(1023).unwrap();
    let mut b = [0u8; 4];
    assert_eq!(m.read(&mut b), Ok(1));
    assert_eq!(m.read(&mut b), Ok(0));
    assert_eq!(b[0], b'z');
}

#[test]
fn test_other_operation_while_half_done_is_in_progress() {
    // Half a message arrives, then the transport stalls.
    let peer = vec![0xFF, 0, 0, 0, 4, b'a', b'b'];
    let mut io = ScriptIo::new(peer, Shape::WHOLE);
    io.stall_at_end = true;
    let mut conn = tinyproto::asynch::Connection::new(io);
    let mut buf = [0u8; 8];
    assert!(poll_at_most(conn.receive(&mut buf), 10).is_none());
    assert!(conn.is_in_progress());
    assert_eq!(
        poll_at_most(conn.transmit(b"no"), 10),
        Some(Err(Error::InProgress))
    );
    assert_eq!(
        poll_at_most(conn.begin_receive(8), 10).map(|r| r.map(|m| m.len())),
        Some(Err(Error::InProgress))
    );
    conn.get_mut().feed(b"cd");
    assert_eq!(
        poll_at_most(conn.receive(&mut buf), 10),
        Some(Ok(&b"abcd"[..]))
    );
    assert!(!conn.is_in_progress());
    assert_eq!(
        conn.get_ref().output,
        [0xFF, 0xFF],
        "the refused calls wrote nothing"
    );
}

#[test]
fn test_abandoned_wait_for_message_is_not_in_progress() {
    // Waiting for a message with nothing arrived, then sending instead.
    let mut io = ScriptIo::new(vec![0xFF], Shape::WHOLE);
    io.stall_at_end = true;
    let mut conn = tinyproto::asynch::Connection::new(io);
    let mut buf = [0u8; 8];
    assert_eq!(poll_at_most(conn.greet(), 10), Some(Ok(())));
    assert!(poll_at_most(conn.receive(&mut buf), 10).is_none());
    assert!(!conn.is_in_progress());
    conn.get_mut().feed(&[0xFF]);
    assert_eq!(poll_at_most(conn.transmit(b"hi"), 1000), Some(Ok(())));
    assert_eq!(conn.get_ref().output, [0xFF, 0, 0, 0, 2, b'h', b'i']);
}

#[test]
fn test_refuse_connection_limit_writes_one_byte() {
    let mut io = ScriptIo::new(vec![], Shape::WHOLE);
    tinyproto::blocking::refuse_connection_limit(&mut io).unwrap();
    assert_eq!(io.output, [0xFE]);
}

#[test]
fn test_transmit_too_large_sends_nothing() {
    let mut conn = tinyproto::blocking::Connection::new(ScriptIo::new(vec![0xFF], Shape::WHOLE));
    assert_eq!(
        conn.begin_transmit(MAX_MESSAGE_LEN + 1).map(|_| ()),
        Err(Error::TooLarge {
            len: MAX_MESSAGE_LEN + 1,
            capacity: MAX_MESSAGE_LEN
        })
    );
    assert_eq!(conn.get_ref().output, [0xFF], "only the greeting");
    assert!(!conn.is_broken());
}

/// Every call returns with what it wrote flushed, so a peer waiting on a
/// buffered transport is never left hanging: a refusal, an empty message,
/// a delivered message, a sent one.
#[test]
fn test_every_call_returns_flushed() {
    let mut peer = vec![0xFF, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, b'x'];
    peer.push(0xFF); // accepts our message
    let mut conn = tinyproto::blocking::Connection::new(ScriptIo::new(peer, Shape::WHOLE));
    let mut buf = [0u8; 4];
    let flushed = |c: &tinyproto::blocking::Connection<ScriptIo>| {
        c.get_ref().flushed == c.get_ref().output.len()
    };
    assert_eq!(
        conn.receive(&mut buf).map(|m| m.len()),
        Err(Error::TooLarge {
            len: 9,
            capacity: 4
        })
    );
    assert!(flushed(&conn), "0x00 left unflushed");
    assert_eq!(conn.receive(&mut buf), Ok(&b""[..]));
    assert!(flushed(&conn), "0xFF of an empty message left unflushed");
    assert_eq!(conn.receive(&mut buf), Ok(&b"x"[..]));
    assert!(flushed(&conn));
    conn.transmit(b"hey").unwrap();
    assert!(flushed(&conn));
    assert_eq!(
        conn.get_ref().output,
        [0xFF, 0x00, 0xFF, 0xFF, 0, 0, 0, 3, b'h', b'e', b'y']
    );
}
