//! Device-side tinyproto client. Once, at start-up, it checks the link
//! with an echo server: messages of 0 B, 1 B, 1 KiB, 64 KiB and 1 MiB, each
//! streamed out and its echo streamed back through 1 KiB socket buffers and
//! compared. Then, every 10 s, it connects, sends a reading, waits for the
//! reply, and closes (flushing, so nothing is lost). Board-neutral: see
//! `board.rs`.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

#[cfg(feature = "defmt")]
use defmt_rtt as _;
use embassy_executor::Spawner;
use embassy_net::{IpEndpoint, Ipv4Address};
use embassy_time::{Duration, Instant, Timer};
use tinyproto_embassy::embassy_net::tcp::TcpSocket;
use tinyproto_embassy::{Client, Error, Socket, Timeouts};
use tinyproto_embassy_firmware::{board, lan_address, log};

/// The link check's message sizes.
const CHECK_SIZES: [u32; 5] = [0, 1, 1024, 64 * 1024, 1024 * 1024];

/// Byte `i` of check message `n`: varies with both, so a shifted, stale or
/// swapped echo cannot pass.
fn pattern(n: usize, i: u32) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)).wrapping_add(n as u32 * 7) as u8
}

/// Why the link check failed.
#[derive(Debug)]
#[allow(dead_code)] // the fields are read through Debug, by the log line
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
enum CheckFailed {
    /// The connection failed.
    Link(Error),
    /// The echo of message `n` differed at `offset` (or in length).
    Echo { n: usize, offset: u32 },
}

impl From<Error> for CheckFailed {
    fn from(e: Error) -> Self {
        CheckFailed::Link(e)
    }
}

/// Sends each check message and compares its echo, a chunk at a time.
async fn link_check(client: &mut Client<'_>) -> Result<(), CheckFailed> {
    let mut chunk = [0u8; 512];
    for (n, &size) in CHECK_SIZES.iter().enumerate() {
        let started = Instant::now();
        let mut out = client.begin_transmit(size).await?;
        let mut sent = 0;
        while sent < size {
            let part = &mut chunk[..(size - sent).min(512) as usize];
            for (k, b) in part.iter_mut().enumerate() {
                *b = pattern(n, sent + k as u32);
            }
            out.write_all(part).await?;
            sent += part.len() as u32;
        }
        out.finish().await?;
        let mut echo = client.begin_receive(size).await?;
        if echo.len() != size {
            return Err(CheckFailed::Echo {
                n,
                offset: echo.len().min(size),
            });
        }
        let mut offset = 0;
        while echo.remaining() > 0 {
            let got = echo.read(&mut chunk).await?;
            if let Some(k) = (0..got).find(|&k| chunk[k] != pattern(n, offset + k as u32)) {
                return Err(CheckFailed::Echo {
                    n,
                    offset: offset + k as u32,
                });
            }
            offset += got as u32;
        }
        log!(
            "link check: {} B echoed in {} ms",
            size,
            started.elapsed().as_millis()
        );
    }
    Ok(())
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let core = cortex_m::Peripherals::take().unwrap();
    board::init_time(core.SYST);
    let stack = board::network(spawner, lan_address(20), 0xC11E);
    stack.wait_config_up().await;

    let server = IpEndpoint::new(Ipv4Address::new(192, 168, 1, 10).into(), 7000);
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        greeting: Duration::from_secs(2),
        message: Duration::from_secs(30),
        ..Timeouts::DEFAULT
    };
    let (mut rx, mut tx) = ([0u8; 1024], [0u8; 1024]);
    let mut reply = [0u8; 256];
    let mut reading: u32 = 0;
    let mut checked = false;
    loop {
        // The socket comes back on failure, so the buffers are reused.
        let socket = Socket::new(TcpSocket::new(stack, &mut rx, &mut tx), timeouts);
        match Client::connect_socket(socket, server).await {
            Ok(mut client) if !checked => {
                match link_check(&mut client).await {
                    Ok(()) => log!("link check: passed"),
                    Err(e) => log!("link check: FAILED: {:?}", e),
                }
                checked = true;
                let _ = client.close().await;
            }
            Ok(mut client) => {
                let msg = reading.to_be_bytes();
                match client.transmit(&msg).await {
                    Ok(()) => match client.receive(&mut reply).await {
                        Ok(r) => log!("reply of {} bytes", r.len()),
                        Err(e) => log!("receive failed: {:?}", e),
                    },
                    Err(e) => log!("transmit failed: {:?}", e),
                }
                let _ = client.close().await;
                reading = reading.wrapping_add(1);
            }
            Err((e, _socket)) => {
                log!("connect failed: {:?}", e);
            }
        }
        Timer::after(Duration::from_secs(if checked { 10 } else { 1 })).await;
    }
}
