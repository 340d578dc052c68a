//! The memory budget as a peer sees it: a message larger than the whole
//! budget is answered 0x00 at once, one that does not fit yet waits for
//! its status byte until room comes, and chunked handlers take only their
//! chunk buffer from it; on a thread per connection and on the event
//! threads. (What the server's memory does is measured in a process of its
//! own, in the CLI's `tests/memory.rs`.)

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use tinyproto_std::{Client, Error};

/// No wait of these tests is longer.
const WAIT: Duration = Duration::from_secs(30);

in_both_modes! {
    test_message_larger_than_the_budget_is_refused_at_once;
    test_message_that_does_not_fit_waits_for_room;
}

fn test_message_larger_than_the_budget_is_refused_at_once(mode: Mode) {
    let h = Harness::start_in(mode, |s| {
        s.set_max_message_len(tinyproto::MAX_MESSAGE_LEN);
        s.set_memory_budget(1 << 20);
    });
    let mut s = raw(h.addr);
    greet(&mut s);
    s.write_all(&tinyproto::MAX_MESSAGE_LEN.to_be_bytes())
        .unwrap();
    assert_eq!(read_n(&mut s, 1), [0x00], "refused");
    s.write_all(&((1u32 << 20) + 1).to_be_bytes()).unwrap();
    assert_eq!(read_n(&mut s, 1), [0x00], "one byte over: refused");
    assert_eq!(
        send_msg(&mut s, &[7; 1 << 20]),
        0xFF,
        "the whole budget fits"
    );
    assert_eq!(recv_msg(&mut s), [7; 1 << 20]);
    assert_serves(&h);
}

/// While one message holds the whole budget, the next waits for its 0xFF,
/// and gets it once the first is done; a client's `receive` has a budget
/// too and says why it refused.
fn test_message_that_does_not_fit_waits_for_room(mode: Mode) {
    let h = Harness::start_in(mode, |s| s.set_memory_budget(1000));
    let (mut first, mut second) = second_message_waiting_for_room(h.addr);
    // The first message completes (and is echoed): its room comes back.
    first.write_all(&[1; 1000]).unwrap();
    assert_eq!(recv_msg(&mut first), [1; 1000]);
    assert_eq!(read_n(&mut second, 1), [0xFF], "accepted once room came");
    second.write_all(&[2; 10]).unwrap();
    assert_eq!(recv_msg(&mut second), [2; 10]);

    let mut client = Client::new();
    client.set_memory_budget(4);
    let mut conn = client.connect(h.addr).unwrap();
    conn.transmit(b"12345").unwrap();
    let started = Instant::now();
    match conn.receive() {
        Err(e @ Error::MemoryBudget { len: 5, budget: 4 }) => {
            assert!(e.is_recoverable());
            assert!(started.elapsed() < WAIT, "at once, not after a wait");
        }
        other => panic!("expected MemoryBudget, got {other:?}"),
    }
    conn.transmit(b"1234").unwrap();
    assert_eq!(conn.receive().unwrap(), b"1234", "the connection goes on");
}

/// A chunked handler takes only its chunk buffer from the budget: a
/// message far larger than the budget streams through it.
#[test]
fn test_chunked_messages_take_only_their_chunk_buffer() {
    let mut server = tinyproto_std::Server::new();
    let addr = server.add_addr("127.0.0.1:0").unwrap();
    server.set_memory_budget(64 * 1024);
    server.set_conn_handler(|| Counter(0));
    let stop = server.stop_handle();
    let thread = std::thread::spawn(move || server.start());
    let mut conn = Client::new().connect(addr).unwrap();
    const LEN: u32 = 16 << 20;
    conn.transmit_from(LEN, &mut Pattern::new(LEN.into()))
        .unwrap();
    assert_eq!(conn.receive().unwrap(), LEN.to_string().as_bytes());
    stop.stop();
    thread.join().unwrap().unwrap();
}

/// Counts each chunked message's bytes and answers with the count.
struct Counter(u64);

impl tinyproto_std::Handler for Counter {
    fn message_announced(&mut self, _conn: &tinyproto_std::Conn, _len: u32) -> tinyproto_std::Take {
        tinyproto_std::Take::Chunks
    }

    fn transmission_chunk(&mut self, chunk: &[u8]) -> Result<(), Error> {
        self.0 += chunk.len() as u64;
        Ok(())
    }

    fn transmission_complete(
        &mut self,
        conn: &mut tinyproto_std::Conn,
        _len: u32,
    ) -> Result<(), Error> {
        let count = std::mem::take(&mut self.0);
        conn.transmit(count.to_string().as_bytes())
    }
}
