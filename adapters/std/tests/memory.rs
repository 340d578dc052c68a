//! Memory never follows a length the peer merely announced, and chunked
//! messages are never held whole. These tests read the process's peak RSS,
//! so they live alone in this binary and run one at a time.

mod common;

use std::io::Write;
use std::sync::Mutex;

use common::*;
use tinyproto::Phase;
use tinyproto_std::Client;

static SERIAL: Mutex<()> = Mutex::new(());

/// Peak resident memory of this process, in KiB (Linux).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn test_memory_does_not_follow_an_announced_length() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Accept anything up to the protocol maximum (almost 4 GiB).
    let h = Harness::start(|s| s.set_max_message_len(tinyproto::MAX_MESSAGE_LEN));
    let before = peak_rss_kib();
    let mut s = raw(h.addr);
    greet(&mut s);
    s.write_all(&tinyproto::MAX_MESSAGE_LEN.to_be_bytes())
        .unwrap();
    assert_eq!(read_n(&mut s, 1), [0xFF], "accepted");
    s.write_all(&[1; 1000]).unwrap();
    drop(s);
    assert_eq!(h.next_post_loop().1, Outcome::Eof(Phase::Payload));
    if let (Some(before), Some(after)) = (before, peak_rss_kib()) {
        eprintln!("peak RSS grew by {} KiB", after.saturating_sub(before));
        assert!(
            after.saturating_sub(before) < 256 * 1024,
            "peak RSS grew by {} KiB",
            after - before
        );
    }
    assert_serves(&h);
}

#[test]
fn test_64_mib_streams_through_without_being_held() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const LEN: u32 = 64 << 20;
    let (addr, _events, stop) = checker_server(tinyproto::MAX_MESSAGE_LEN);
    let before = peak_rss_kib();
    let mut conn = Client::new().connect(addr).unwrap();
    let mut src = Pattern::new(LEN.into());
    conn.transmit_from(LEN, &mut src).unwrap();
    let reply = String::from_utf8(conn.receive().unwrap()).unwrap();
    let (len, chunks) = reply.split_once(' ').expect(&reply);
    assert_eq!(len, LEN.to_string(), "{reply}");
    assert!(chunks.parse::<usize>().unwrap() >= (LEN as usize) / (64 << 10));
    if let (Some(before), Some(after)) = (before, peak_rss_kib()) {
        eprintln!("peak RSS grew by {} KiB", after.saturating_sub(before));
        assert!(
            after.saturating_sub(before) < 32 * 1024,
            "peak RSS grew by {} KiB for a 64 MiB message",
            after - before
        );
    }
    // Whole messages go through the chunked handler too, 0 bytes included.
    for size in [0usize, 1, 100_000] {
        let msg: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        conn.transmit(&msg).unwrap();
        let reply = conn.receive().unwrap();
        assert!(
            reply.starts_with(format!("{size} ").as_bytes()),
            "{reply:?}"
        );
    }
    stop.stop();
}
