//! Throughput to and from a device running the firmware `nic_bench` of
//! `examples/firmware` (under QEMU in CI): tinyproto on the device's port
//! 7000 beside raw TCP on its port 7001, same firmware, same buffers, one
//! connection each, both directions. Prints a table of MB/s (medians) and the ratio to raw TCP.
//!
//! ```text
//! cargo run --release -p tinyproto-std --example device_bench -- 127.0.0.1:17000 127.0.0.1:17001
//! ```
//!
//! Informational: an emulated device's speed is not a real one's.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tinyproto_std::{Client, Conn, Timeouts};

/// Bytes per transfer and transfers per figure.
const SIZE: usize = 3_000_000;
const RUNS: usize = 7;

/// Byte `i` of a download (as the firmware sends it: `i % 1024` repeats).
fn pattern(i: usize) -> u8 {
    ((i % 1024) as u32).wrapping_mul(31) as u8
}

/// What the device answers to an upload, either way: length and byte sum.
fn expected_receipt(data: &[u8]) -> Vec<u8> {
    let sum = data.iter().fold(0u32, |s, &b| s.wrapping_add(u32::from(b)));
    let mut receipt = (data.len() as u32).to_be_bytes().to_vec();
    receipt.extend_from_slice(&sum.to_be_bytes());
    receipt
}

type Outcome = Result<Duration, String>;

fn tinyproto_upload(conn: &mut Conn, data: &[u8]) -> Outcome {
    let started = Instant::now();
    conn.transmit(data).map_err(|e| e.to_string())?;
    let receipt = conn.receive().map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    if receipt != expected_receipt(data) {
        return Err("wrong receipt".into());
    }
    Ok(elapsed)
}

fn tinyproto_download(conn: &mut Conn, len: usize) -> Outcome {
    let started = Instant::now();
    conn.transmit(&(len as u32).to_be_bytes())
        .map_err(|e| e.to_string())?;
    let data = conn.receive().map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    if data.len() != len || data.iter().enumerate().any(|(i, &b)| b != pattern(i)) {
        return Err("wrong download".into());
    }
    Ok(elapsed)
}

/// Connects to the raw side (the device may still be booting).
fn raw_connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let io = |e: std::io::Error| e.to_string();
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    Ok(stream)
}

fn raw_upload(stream: &mut TcpStream, data: &[u8]) -> Outcome {
    let started = Instant::now();
    let io = |e: std::io::Error| e.to_string();
    stream.write_all(b"U").map_err(io)?;
    stream
        .write_all(&(data.len() as u32).to_be_bytes())
        .map_err(io)?;
    stream.write_all(data).map_err(io)?;
    let mut receipt = [0u8; 8];
    stream.read_exact(&mut receipt).map_err(io)?;
    let elapsed = started.elapsed();
    if receipt[..] != expected_receipt(data) {
        return Err("wrong receipt".into());
    }
    Ok(elapsed)
}

fn raw_download(stream: &mut TcpStream, len: usize) -> Outcome {
    let started = Instant::now();
    let io = |e: std::io::Error| e.to_string();
    stream.write_all(b"D").map_err(io)?;
    stream.write_all(&(len as u32).to_be_bytes()).map_err(io)?;
    let mut data = vec![0u8; len];
    stream.read_exact(&mut data).map_err(io)?;
    let elapsed = started.elapsed();
    if data.iter().enumerate().any(|(i, &b)| b != pattern(i)) {
        return Err("wrong download".into());
    }
    Ok(elapsed)
}

/// Median MB/s of tinyproto and of raw TCP over `RUNS` transfers each,
/// taken in turns so that a slow spell of the (shared, emulating) machine
/// hits both alike.
fn rates(
    mut tinyproto: impl FnMut() -> Outcome,
    mut raw: impl FnMut() -> Outcome,
) -> Result<(f64, f64), String> {
    let mb_per_s = |d: Duration| SIZE as f64 / d.as_secs_f64() / 1e6;
    let (mut t, mut r) = (Vec::with_capacity(RUNS), Vec::with_capacity(RUNS));
    for _ in 0..RUNS {
        t.push(mb_per_s(
            tinyproto().map_err(|e| format!("tinyproto: {e}"))?,
        ));
        r.push(mb_per_s(raw().map_err(|e| format!("raw TCP: {e}"))?));
    }
    t.sort_by(f64::total_cmp);
    r.sort_by(f64::total_cmp);
    Ok((t[RUNS / 2], r[RUNS / 2]))
}

fn main() {
    let args: Vec<SocketAddr> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let [tinyproto_addr, raw_addr] = args[..] else {
        eprintln!("usage: device_bench TINYPROTO_HOST:PORT RAW_HOST:PORT");
        std::process::exit(2);
    };
    let mut client = Client::new();
    client.set_timeouts(Timeouts::default().with_message(Duration::from_secs(120)));
    let mut conn = None;
    for _ in 0..150 {
        // The device may still be booting.
        match client.connect(tinyproto_addr) {
            Ok(c) => {
                conn = Some(c);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let Some(mut conn) = conn else {
        eprintln!("device-bench: cannot connect to {tinyproto_addr}");
        std::process::exit(1);
    };
    let mut raw = match raw_connect(raw_addr) {
        Ok(raw) => raw,
        Err(e) => {
            eprintln!("device-bench: cannot connect to {raw_addr}: {e}");
            std::process::exit(1);
        }
    };
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 + i / 251) as u8).collect();
    let upload = rates(
        || tinyproto_upload(&mut conn, &data),
        || raw_upload(&mut raw, &data),
    );
    let download = rates(
        || tinyproto_download(&mut conn, SIZE),
        || raw_download(&mut raw, SIZE),
    );
    let rows = [("host -> device", upload), ("device -> host", download)];
    conn.close();
    println!("device-bench: {SIZE} B per transfer, median of {RUNS}");
    println!("| direction | tinyproto MB/s | raw TCP MB/s | tinyproto / raw |");
    println!("|---|---|---|---|");
    let mut failed = false;
    for (direction, result) in rows {
        match result {
            Ok((t, r)) => println!("| {direction} | {t:.2} | {r:.2} | {:.2} |", t / r),
            Err(e) => {
                failed = true;
                println!("| {direction} | failed: {e} | | |");
            }
        }
    }
    std::process::exit(i32::from(failed));
}
