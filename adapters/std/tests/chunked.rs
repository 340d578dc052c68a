//! Messages larger than memory: chunked receive (a `Handler` that takes
//! messages in chunks, `Conn::receive_chunked`) and chunked transmit
//! (`Conn::transmit_from`).

mod common;

use std::io::Write;

use common::*;
use tinyproto_std::{Client, Error, Plugin};

#[test]
fn test_chunk_limit_refuses_and_goes_on() {
    let (addr, _events, stop) = checker_server(1000);
    let mut conn = Client::new().connect(addr).unwrap();
    let mut src = Pattern::new(1001);
    match conn.transmit_from(1001, &mut src) {
        Err(Error::Protocol(tinyproto::Error::Rejected { len: 1001 })) => {}
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(
        src.reads, 0,
        "nothing read from the source of a refused message"
    );
    conn.transmit_from(1000, &mut Pattern::new(1000)).unwrap();
    assert_eq!(
        conn.receive()
            .unwrap()
            .split(|b| *b == b' ')
            .next()
            .unwrap(),
        b"1000"
    );
    stop.stop();
}

#[test]
fn test_message_breaking_off_never_completes() {
    let (addr, events, stop) = checker_server(1000);
    let mut s = raw(addr);
    greet(&mut s);
    s.write_all(&100u32.to_be_bytes()).unwrap();
    assert_eq!(read_n(&mut s, 1), [0xFF]);
    s.write_all(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
    drop(s);
    let event = events.recv_timeout(LONG).unwrap();
    // transmission_complete never ran (it would have reset the count).
    assert!(
        event.starts_with("post_loop Eof(Payload) after ") && !event.ends_with(" 0 bytes"),
        "{event}"
    );
    stop.stop();
}

#[test]
fn test_source_ending_early_breaks_the_connection() {
    let (addr, _events, stop) = checker_server(1000);
    let mut conn = Client::new().connect(addr).unwrap();
    match conn.transmit_from(500, &mut Pattern::new(100)) {
        Err(Error::Handler(e)) => {
            let e = e
                .downcast_ref::<std::io::Error>()
                .expect("the source's io::Error");
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof)
        }
        other => panic!("expected UnexpectedEof, got {other:?}"),
    }
    match conn.transmit(b"more") {
        Err(Error::Protocol(tinyproto::Error::Broken)) => {}
        other => panic!("expected Broken, got {other:?}"),
    }
    stop.stop();
}

#[test]
fn test_chunked_calls_refuse_plugins() {
    struct Nop;
    impl Plugin for Nop {}
    let (addr, _events, stop) = checker_server(1000);
    let mut client = Client::new();
    client.register_plugin(Nop);
    let mut conn = client.connect(addr).unwrap();
    assert!(matches!(
        conn.transmit_from(3, &mut Pattern::new(3)),
        Err(Error::Plugin(_))
    ));
    assert!(matches!(
        conn.receive_chunked(10, |_| Ok(())),
        Err(Error::Plugin(_))
    ));
    // Nothing moved: the connection is fine.
    conn.transmit(b"ok").unwrap();
    stop.stop();
}

#[test]
fn test_client_receives_32_mib_in_chunks() {
    let h = Harness::start(|_| {});
    let mut conn = Client::new().connect(h.addr).unwrap();
    conn.transmit(b"big").unwrap();
    let mut total = 0usize;
    let mut all_5a = true;
    let len = conn
        .receive_chunked(u32::MAX, |chunk| {
            total += chunk.len();
            all_5a &= chunk.iter().all(|b| *b == 0x5A);
            Ok(())
        })
        .unwrap();
    assert_eq!(len, 32 << 20);
    assert_eq!(total, 32 << 20);
    assert!(all_5a);
    // A consumer that gives up mid-message breaks the connection.
    conn.transmit(b"big").unwrap();
    let result = conn.receive_chunked(u32::MAX, |_| Err(Error::Panicked("stop".into())));
    assert!(matches!(result, Err(Error::Panicked(_))), "{result:?}");
    assert!(matches!(
        conn.transmit(b"x"),
        Err(Error::Protocol(tinyproto::Error::Broken))
    ));
}
