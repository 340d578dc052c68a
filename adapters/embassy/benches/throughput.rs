//! 1 MiB messages over the in-memory link (release): tinyproto-embassy
//! versus raw embassy-net `TcpSocket` writes of the same bytes, side by side
//! in one run. `cargo bench -p tinyproto-embassy --bench throughput`
//!
//! Each sample is the time from the first byte written to the sender's
//! flush completing (every byte acknowledged by the receiving stack);
//! tinyproto's also includes the length exchange, and its server delivers
//! each message whole (counted). The raw path is measured with embassy-net's
//! default (Nagle on) and with Nagle off, which is what `tinyproto_embassy::
//! Socket` sets; the ratio is against the faster raw figure. Samples of the
//! three paths alternate.

#[path = "../tests/common/mod.rs"]
mod common;

use std::cell::Cell;

use common::{pattern, run_pair, server_endpoint, Faults};
use embassy_futures::join::join;
use embassy_futures::select::{select, Either};
use embassy_net::tcp::TcpSocket;
use embassy_net::Stack;
use embassy_time::{Duration, Instant};
use tinyproto_embassy::{serve, Client, Flow, Handler, ServerConfig, Session, Slot, Timeouts};

const MIB: usize = 1 << 20;
const SOCKET_BUFFER: usize = 32 * 1024;
const EMPTY: usize = 200;

/// Rounds under `cargo bench`; `cargo test --all-targets` runs the same
/// code (unoptimised) for 2 rounds as a smoke test.
fn rounds() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        50
    } else {
        2
    }
}

/// Counts the messages that arrived whole.
struct Sink {
    received: Cell<usize>,
}

impl Handler for &Sink {
    async fn transmission_received(&mut self, _: &mut Session<'_, '_>, msg: &[u8]) -> Flow {
        assert!(msg.len() == MIB || msg.is_empty());
        self.received.set(self.received.get() + 1);
        Flow::Continue
    }
}

/// Reads everything arriving on `port` into a 1 MiB buffer, as a receiver
/// collecting whole messages does (tinyproto's server copies into its 1 MiB
/// message buffer: a smaller, cache-hot scratch buffer here would favour raw).
async fn raw_sink(stack: Stack<'_>, port: u16) {
    let (mut rx, mut tx) = (vec![0u8; SOCKET_BUFFER], vec![0u8; SOCKET_BUFFER]);
    let mut sock = TcpSocket::new(stack, &mut rx, &mut tx);
    sock.accept(port).await.unwrap();
    let mut message = vec![0u8; MIB];
    let mut at = 0;
    loop {
        match sock.read(&mut message[at..]).await.unwrap() {
            0 => break,
            n => at = (at + n) % MIB,
        }
    }
}

async fn raw_send(sock: &mut TcpSocket<'_>, payload: &[u8]) -> Duration {
    let t = Instant::now();
    let mut rest = payload;
    while !rest.is_empty() {
        let n = sock.write(rest).await.unwrap();
        rest = &rest[n..];
    }
    sock.flush().await.unwrap();
    t.elapsed()
}

struct Stats {
    median: Duration,
    median_mbps: f64,
    best_mbps: f64,
}

fn stats(v: &mut [Duration]) -> Stats {
    v.sort();
    let mbps = |d: Duration| MIB as f64 / 1e6 / (d.as_micros().max(1) as f64 / 1e6);
    Stats {
        median: v[v.len() / 2],
        median_mbps: mbps(v[v.len() / 2]),
        best_mbps: mbps(v[0]),
    }
}

fn main() {
    let payload = pattern(MIB, 3);
    let (mut tp, mut raw_nagle, mut raw_no_nagle) = (Vec::new(), Vec::new(), Vec::new());
    let sink = Sink {
        received: Cell::new(0),
    };
    let rounds = rounds();
    let mut empty: Option<Duration> = None;
    run_pair(
        Faults::default(),
        Duration::from_secs(300),
        async |a, b, _| {
            // Server side on B: a tinyproto slot on 7000, raw sinks on 7001/7002.
            let mut config = ServerConfig::new(7000);
            config.timeouts.idle = None;
            let (mut srx, mut stx, mut smsg) = (
                vec![0u8; SOCKET_BUFFER],
                vec![0u8; SOCKET_BUFFER],
                vec![0u8; MIB],
            );
            let slots = [Slot::new(&mut srx, &mut stx, &mut smsg)];
            let server = serve(b, &config, slots, [], [&sink]);
            let sinks = join(raw_sink(b, 7001), raw_sink(b, 7002));
            let clients = async {
                let (mut crx, mut ctx) = (vec![0u8; SOCKET_BUFFER], vec![0u8; SOCKET_BUFFER]);
                let to = server_endpoint(7000);
                let mut client = Client::connect(a, &mut crx, &mut ctx, to, Timeouts::DEFAULT)
                    .await
                    .unwrap();
                let (mut r1, mut t1) = (vec![0u8; SOCKET_BUFFER], vec![0u8; SOCKET_BUFFER]);
                let (mut r2, mut t2) = (vec![0u8; SOCKET_BUFFER], vec![0u8; SOCKET_BUFFER]);
                let mut nagle = TcpSocket::new(a, &mut r1, &mut t1);
                nagle.connect(server_endpoint(7001)).await.unwrap();
                let mut no_nagle = TcpSocket::new(a, &mut r2, &mut t2);
                no_nagle.set_nagle_enabled(false);
                no_nagle.connect(server_endpoint(7002)).await.unwrap();
                for round in 0..rounds {
                    // Alternate which of the two fast paths goes first, so
                    // neither always follows the slow Nagle transfer.
                    if round % 2 == 1 {
                        raw_no_nagle.push(raw_send(&mut no_nagle, &payload).await);
                    }
                    let t = Instant::now();
                    client.transmit(&payload).await.unwrap();
                    tp.push(t.elapsed());
                    if round % 2 == 0 {
                        raw_no_nagle.push(raw_send(&mut no_nagle, &payload).await);
                    }
                    raw_nagle.push(raw_send(&mut nagle, &payload).await);
                }
                // The fixed cost of a message: empty ones, back to back.
                let t = Instant::now();
                for _ in 0..EMPTY {
                    client.transmit(&[]).await.unwrap();
                }
                empty = Some(t.elapsed() / EMPTY as u32);
                client.close().await.unwrap();
                // Let the server deliver the last message.
                let until = Instant::now() + Duration::from_secs(5);
                while sink.received.get() < rounds + EMPTY && Instant::now() < until {
                    embassy_time::Timer::after(Duration::from_millis(1)).await;
                }
            };
            match select(select(server, sinks), clients).await {
                Either::First(_) => unreachable!("servers never end"),
                Either::Second(()) => {}
            }
        },
    );
    assert_eq!(
        sink.received.get(),
        rounds + EMPTY,
        "every message delivered whole"
    );
    let tp = stats(&mut tp);
    let nagle = stats(&mut raw_nagle);
    let no_nagle = stats(&mut raw_no_nagle);
    println!(
        "1 MiB messages over the in-memory embassy-net link ({}), {rounds} rounds each, {} KiB socket buffers",
        if cfg!(debug_assertions) { "unoptimised smoke run" } else { "release" },
        SOCKET_BUFFER / 1024
    );
    println!("| path                                  | median ms | median MB/s | best MB/s |");
    println!("|---------------------------------------|-----------|-------------|-----------|");
    for (name, s) in [
        ("raw TcpSocket write+flush (Nagle on)", &nagle),
        ("raw TcpSocket write+flush (Nagle off)", &no_nagle),
        ("tinyproto-embassy transmit", &tp),
    ] {
        println!(
            "| {name:<37} | {:>9.3} | {:>11.1} | {:>9.1} |",
            s.median.as_micros() as f64 / 1e3,
            s.median_mbps,
            s.best_mbps
        );
    }
    let best_raw = nagle.median_mbps.max(no_nagle.median_mbps);
    let empty = empty.unwrap();
    println!(
        "tinyproto-embassy empty message (length, status, flush): {:.1} us each",
        empty.as_micros() as f64
    );
    println!(
        "ratio tinyproto / fastest raw (median MB/s): {:.3}",
        tp.median_mbps / best_raw
    );
}
