//! Checks a device running the firmware echo server of `examples/firmware`
//! (under QEMU in CI, see `examples/firmware/README.md`): echoes of 0 B,
//! 1 B and 1 KiB; receipts (length and FNV-1a) for 64 KiB, 1 MiB and a
//! 3 MB image, which the device takes in chunks through its 1 KiB buffer;
//! a message over its 4 MiB limit refused with the connection going on;
//! and 0xFE for a third connection while its two slots are busy.
//!
//! ```text
//! cargo run -p tinyproto-std --example device_check -- 127.0.0.1:17000
//! ```
//!
//! Prints one line per check and `device-check: N passed, F failed`; exits
//! 1 if any failed. Waits up to 30 s for the device to come up.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tinyproto_std::{Client, Conn, Error, Timeouts};

/// The device's 1 KiB message buffer: the largest echo.
const WHOLE: usize = 1024;
/// The device refuses messages over this.
const LARGEST: usize = 4 << 20;

/// The same FNV-1a as the firmware's receipts.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811C_9DC5, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// `len` bytes varying with `seed`.
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31) ^ (i >> 8)) as u8 ^ seed)
        .collect()
}

/// What the device answers to `msg`: the message itself, or its receipt.
fn expected_reply(msg: &[u8]) -> Vec<u8> {
    if msg.len() <= WHOLE {
        msg.to_vec()
    } else {
        let mut receipt = (msg.len() as u32).to_be_bytes().to_vec();
        receipt.extend_from_slice(&fnv1a(msg).to_be_bytes());
        receipt
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

fn main() {
    let addr: SocketAddr = match std::env::args().nth(1).map(|a| a.parse()) {
        Some(Ok(addr)) => addr,
        _ => {
            eprintln!("usage: device_check HOST:PORT");
            std::process::exit(2);
        }
    };
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
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
