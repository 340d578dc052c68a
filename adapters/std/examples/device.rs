//! The host side of the firmware examples (`examples/firmware`, under QEMU
//! in CI, see its README), with tinyproto-std's `Client`.
//!
//! ```text
//! cargo run --release -p tinyproto-std --example device -- check 127.0.0.1:17000
//! cargo run --release -p tinyproto-std --example device -- bench 127.0.0.1:17000 127.0.0.1:17001
//! ```
//!
//! - `check ADDR`, against the firmware echo server: echoes of 0 B, 1 B and
//!   1 KiB; receipts (length and FNV-1a) for 64 KiB, 1 MiB and a 3 MB
//!   image, which the device takes in chunks through its 1 KiB buffer; a
//!   message over its 4 MiB limit refused with the connection going on; and
//!   0xFE for a third connection while its two slots are busy. Prints one
//!   line per check and `device-check: N passed, F failed`.
//! - `bench TINYPROTO RAW`, against the firmware `nic_bench`: throughput,
//!   tinyproto on the device's port 7000 beside raw TCP on its port 7001,
//!   same firmware, same buffers, one connection each, both directions. A
//!   table of MB/s (medians) and the ratio to raw TCP; informational, an
//!   emulated device's speed is not a real one's.
//!
//! Exits 1 if anything failed. Waits up to 30 s for the device to come up.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tinyproto_std::{Client, Conn, Error, Timeouts};

/// The device's 1 KiB message buffer: the largest echo.
const WHOLE: usize = 1024;
/// The device refuses messages over this.
const LARGEST: usize = 4 << 20;
/// Bytes per benchmark transfer, and transfers per figure.
const SIZE: usize = 3_000_000;
const RUNS: usize = 7;

/// The firmware's receipt for `msg`: its length and FNV-1a, big-endian.
fn receipt(msg: &[u8]) -> Vec<u8> {
    let hash = msg.iter().fold(0x811C_9DC5u32, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let mut receipt = (msg.len() as u32).to_be_bytes().to_vec();
    receipt.extend_from_slice(&hash.to_be_bytes());
    receipt
}

/// `len` bytes varying with `seed`.
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31) ^ (i >> 8)) as u8 ^ seed)
        .collect()
}

/// What the echo server answers to `msg`: the message itself, or its
/// receipt.
fn expected_reply(msg: &[u8]) -> Vec<u8> {
    if msg.len() <= WHOLE {
        msg.to_vec()
    } else {
        receipt(msg)
    }
}

fn client() -> Client {
    let mut client = Client::new();
    // An emulated device behind an emulated NIC: generous limits.
    client.set_timeouts(
        Timeouts::default()
            .with_message(Duration::from_secs(120))
            .with_receive(Duration::from_secs(60)),
    );
    client
}

/// Connects, retrying while the device boots.
fn connect(addr: SocketAddr, within: Duration) -> Result<Conn, Error> {
    let until = Instant::now() + within;
    loop {
        match client().connect(addr) {
            Ok(conn) => return Ok(conn),
            Err(e) if Instant::now() < until && !matches!(e, Error::Timeout(_)) => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

fn round_trip(conn: &mut Conn, msg: &[u8]) -> Result<String, String> {
    let started = Instant::now();
    conn.transmit(msg).map_err(|e| format!("transmit: {e}"))?;
    let reply = conn.receive().map_err(|e| format!("receive: {e}"))?;
    if reply != expected_reply(msg) {
        return Err(format!("wrong reply of {} bytes", reply.len()));
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(format!(
        "{} B in {:.0} ms ({:.0} KB/s)",
        msg.len(),
        secs * 1e3,
        msg.len() as f64 / secs / 1e3
    ))
}

fn checks(addr: SocketAddr, report: &mut dyn FnMut(&str, Result<String, String>)) {
    let mut conn = match connect(addr, Duration::from_secs(30)) {
        Ok(conn) => conn,
        Err(e) => return report("connect", Err(e.to_string())),
    };
    report("connect", Ok(format!("greeted by {addr}")));
    for (i, len) in [0, 1, WHOLE, 64 << 10, 1 << 20, 3_000_000]
        .into_iter()
        .enumerate()
    {
        let what = if len <= WHOLE { "echo" } else { "receipt" };
        report(what, round_trip(&mut conn, &payload(len, i as u8)));
    }

    let oversized = vec![0x5A; LARGEST + 1];
    let refused = match conn.transmit(&oversized) {
        Err(e) if e.is_recoverable() => {
            round_trip(&mut conn, b"x").map(|_| format!("{e}; the connection goes on"))
        }
        Err(e) => Err(format!("not a refusal: {e}")),
        Ok(()) => Err("sent without a refusal".into()),
    };
    report("refused over the limit", refused);

    // Two slots: `conn` holds one, a second connection the other, and a
    // third gets 0xFE from the reserve socket.
    let limit = match connect(addr, Duration::from_secs(5)) {
        Err(e) => Err(format!("second connection: {e}")),
        Ok(second) => match client().connect(addr) {
            Err(Error::Protocol(tinyproto::Error::ConnectionLimit)) => {
                second.close();
                round_trip(&mut conn, b"still here").map(|_| "third got 0xFE".to_string())
            }
            Err(e) => Err(format!("third connection: {e}")),
            Ok(_) => Err("third connection was served".into()),
        },
    };
    report("connection limit", limit);
    conn.close();
}

/// `check ADDR`: every check, one line each.
fn check(addr: SocketAddr) -> bool {
    let (mut passed, mut failed) = (0, 0);
    checks(addr, &mut |what, result| match result {
        Ok(detail) => {
            passed += 1;
            println!("device-check: {what}: ok ({detail})");
        }
        Err(why) => {
            failed += 1;
            println!("device-check: {what}: FAILED: {why}");
        }
    });
    println!("device-check: {passed} passed, {failed} failed");
    failed == 0
}

/// Byte `i` of a download (as the firmware sends it: `i % 1024` repeats).
fn pattern(i: usize) -> u8 {
    ((i % 1024) as u32).wrapping_mul(31) as u8
}

type Outcome = Result<Duration, String>;

fn tinyproto_upload(conn: &mut Conn, data: &[u8]) -> Outcome {
    let started = Instant::now();
    conn.transmit(data).map_err(|e| e.to_string())?;
    let answer = conn.receive().map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    if answer != receipt(data) {
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
    let mut answer = [0u8; 8];
    stream.read_exact(&mut answer).map_err(io)?;
    let elapsed = started.elapsed();
    if answer[..] != receipt(data) {
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

/// `bench TINYPROTO RAW`: the throughput table.
fn bench(tinyproto_addr: SocketAddr, raw_addr: SocketAddr) -> bool {
    let mut conn = match connect(tinyproto_addr, Duration::from_secs(30)) {
        Ok(conn) => conn,
        Err(e) => {
            eprintln!("device-bench: cannot connect to {tinyproto_addr}: {e}");
            return false;
        }
    };
    let mut raw = match raw_connect(raw_addr) {
        Ok(raw) => raw,
        Err(e) => {
            eprintln!("device-bench: cannot connect to {raw_addr}: {e}");
            return false;
        }
    };
    let data = payload(SIZE, 0);
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
    !failed
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addrs: Vec<SocketAddr> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let ok = match (args.first().map(String::as_str), &addrs[..]) {
        (Some("check"), &[addr]) => check(addr),
        (Some("bench"), &[tinyproto, raw]) => bench(tinyproto, raw),
        _ => {
            eprintln!(
                "usage: device check HOST:PORT | device bench TINYPROTO_HOST:PORT RAW_HOST:PORT"
            );
            std::process::exit(2);
        }
    };
    std::process::exit(if ok { 0 } else { 1 });
}
