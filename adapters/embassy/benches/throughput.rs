//! 1 MiB messages over the in-memory link (release): tinyproto-embassy
//! versus raw embassy-net `TcpSocket` writes of the same bytes, side by side
//! in one run. `cargo bench -p tinyproto-embassy --bench throughput`
//!
//! Each sample is the time from the first byte written to the sender's
//! flush completing (every byte acknowledged by the receiver); tinyproto's
//! also includes the length exchange. Samples alternate between the two.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{pattern, run_pair, server_endpoint, Faults};
use embassy_futures::select::{select, Either};
use embassy_net::tcp::TcpSocket;
use embassy_time::{Duration, Instant};
use tinyproto_embassy::{serve, Client, Flow, Handler, ServerConfig, Session, Slot, Timeouts};

const MIB: usize = 1 << 20;
const SOCKET_BUFFER: usize = 32 * 1024;
/// Rounds under `cargo bench`; `cargo test --all-targets` runs the same
/// code (unoptimised) for 2 rounds as a smoke test.
fn rounds() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        20
    } else {
        2
    }
}

struct Sink;

impl Handler for Sink {
    async fn transmission_received(&self, _: &mut Session<'_, '_>, msg: &[u8]) -> Flow {
        assert_eq!(msg.len(), MIB);
        Flow::Continue
    }
}

fn main() {
    let payload = pattern(MIB, 3);
    let (mut tp, mut raw) = (Vec::new(), Vec::new());
    run_pair(
        Faults::default(),
        Duration::from_secs(300),
        async |a, b, _| {
            // Server side on B: a tinyproto slot on 7000 and a raw sink on 7001.
            let mut config = ServerConfig::new(7000);
            config.timeouts = Timeouts {
                idle: None,
                ..Timeouts::DEFAULT
            };
            let (mut srx, mut stx, mut smsg) = (
                vec![0u8; SOCKET_BUFFER],
                vec![0u8; SOCKET_BUFFER],
                vec![0u8; MIB],
            );
            let server = serve(
                b,
                &config,
                [Slot::new(&mut srx, &mut stx, &mut smsg)],
                None,
                &Sink,
            );
            let (mut rrx, mut rtx) = (vec![0u8; SOCKET_BUFFER], vec![0u8; SOCKET_BUFFER]);
            let raw_sink = async {
                let mut sock = TcpSocket::new(b, &mut rrx, &mut rtx);
                sock.accept(7001).await.unwrap();
                let mut scratch = vec![0u8; SOCKET_BUFFER];
                loop {
                    if sock.read(&mut scratch).await.unwrap() == 0 {
                        break;
                    }
                }
                core::future::pending::<()>().await;
            };
            let clients = async {
                let (mut crx, mut ctx) = (vec![0u8; SOCKET_BUFFER], vec![0u8; SOCKET_BUFFER]);
                let mut client = Client::connect(
                    a,
                    &mut crx,
                    &mut ctx,
                    server_endpoint(7000),
                    Timeouts::DEFAULT,
                )
                .await
                .unwrap();
                let (mut rrx2, mut rtx2) = (vec![0u8; SOCKET_BUFFER], vec![0u8; SOCKET_BUFFER]);
                let mut sock = TcpSocket::new(a, &mut rrx2, &mut rtx2);
                sock.connect(server_endpoint(7001)).await.unwrap();
                for _ in 0..rounds() {
                    let t = Instant::now();
                    client.transmit(&payload).await.unwrap();
                    tp.push(t.elapsed());
                    let t = Instant::now();
                    let mut rest = &payload[..];
                    while !rest.is_empty() {
                        let n = sock.write(rest).await.unwrap();
                        rest = &rest[n..];
                    }
                    sock.flush().await.unwrap();
                    raw.push(t.elapsed());
                }
                client.close().await.unwrap();
            };
            match select(select(server, raw_sink), clients).await {
                Either::First(_) => unreachable!(),
                Either::Second(()) => {}
            }
        },
    );
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        let median = v[v.len() / 2];
        let best = v[0];
        let mbps = |d: Duration| MIB as f64 / 1e6 / (d.as_micros() as f64 / 1e6);
        (mbps(median), mbps(best), median)
    };
    let (tp_med, tp_best, tp_t) = stats(&mut tp);
    let (raw_med, raw_best, raw_t) = stats(&mut raw);
    println!(
        "1 MiB messages over the in-memory embassy-net link, {} rounds each, {} KiB socket buffers",
        tp.len(),
        SOCKET_BUFFER / 1024
    );
    println!("| path                         | median ms | median MB/s | best MB/s |");
    println!("|------------------------------|-----------|-------------|-----------|");
    println!(
        "| raw TcpSocket write + flush  | {:>9.2} | {:>11.1} | {:>9.1} |",
        raw_t.as_micros() as f64 / 1e3,
        raw_med,
        raw_best
    );
    println!(
        "| tinyproto-embassy transmit   | {:>9.2} | {:>11.1} | {:>9.1} |",
        tp_t.as_micros() as f64 / 1e3,
        tp_med,
        tp_best
    );
    println!(
        "ratio tinyproto / raw (median MB/s): {:.3}",
        tp_med / raw_med
    );
}
