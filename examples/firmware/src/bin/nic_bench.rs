//! Throughput over the network, tinyproto beside raw TCP in one image, with
//! the echo server's buffers (2 KiB socket buffers, a 1 KiB message
//! buffer). Driven from the host by tinyproto-std's `device` example
//! (`device bench`).
//!
//! - tinyproto on port 7000. Upload: a message over 1 KiB streams through
//!   the message buffer and is answered with the echo server's 8-byte
//!   receipt (length, FNV-1a). Download: a 4-byte message N (big-endian) is answered with
//!   N bytes, streamed from a 1 KiB buffer.
//! - raw TCP on port 7001, the least framing that works, over one
//!   connection as tinyproto's: a command byte and N (4 bytes, big-endian).
//!   `U`: read N bytes, answer the same 8-byte receipt. `D`: send N bytes.
//!
//! Both sides do the same work on an upload (the checksum of every byte),
//! so the ratio is tinyproto's own cost.
//!
//! Board-neutral: see `board.rs`.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

#[cfg(feature = "defmt")]
use defmt_rtt as _;
use embassy_executor::Spawner;
use embassy_futures::join::join;
use embassy_net::tcp::TcpSocket;
use embassy_net::Stack;
use embedded_io_async::{Read, Write};
use tinyproto_embassy::{
    serve, ConnInfo, Error, Flow, Handler, ReserveStorage, ServerConfig, Session, SlotStorage, Take,
};
use tinyproto_embassy_firmware::receipt::Checksum;
use tinyproto_embassy_firmware::{board, lan_address, log};

/// Byte `i` of a download.
fn pattern(i: usize) -> u8 {
    (i as u32).wrapping_mul(31) as u8
}

/// The tinyproto side: uploads in, downloads out.
#[derive(Default)]
struct Bench {
    checksum: Checksum,
}

impl Handler for Bench {
    async fn message_announced(&mut self, _info: &ConnInfo, len: u32, capacity: u32) -> Take {
        self.checksum = Checksum::new();
        if len <= capacity {
            Take::Whole
        } else {
            Take::Chunks
        }
    }

    async fn transmission_chunk(&mut self, _info: &ConnInfo, chunk: &[u8]) -> Flow {
        self.checksum.update(chunk);
        Flow::Continue
    }

    async fn transmission_complete(&mut self, session: &mut Session<'_, '_>, len: u32) -> Flow {
        Flow::after(session.transmit(&self.checksum.receipt(len)).await)
    }

    async fn transmission_received(&mut self, session: &mut Session<'_, '_>, msg: &[u8]) -> Flow {
        match <[u8; 4]>::try_from(msg) {
            Ok(n) => Flow::after(download(session, u32::from_be_bytes(n)).await),
            Err(_) => Flow::after(session.transmit(msg).await),
        }
    }
}

async fn download(session: &mut Session<'_, '_>, len: u32) -> Result<(), Error> {
    let mut chunk = [0u8; 1024];
    for (i, b) in chunk.iter_mut().enumerate() {
        *b = pattern(i);
    }
    let mut out = session.begin_transmit(len).await?;
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(chunk.len());
        out.write_all(&chunk[..n]).await?;
        left -= n;
    }
    out.finish().await
}

/// The raw TCP side, on the same socket buffer sizes and settings.
async fn raw(stack: Stack<'_>, rx: &mut [u8], tx: &mut [u8]) -> ! {
    loop {
        let mut socket = TcpSocket::new(stack, &mut *rx, &mut *tx);
        // As tinyproto-embassy's sockets: with Nagle on, the tail of each
        // send waits for the peer's delayed ACK (40 ms on Linux).
        socket.set_nagle_enabled(false);
        if socket.accept(7001).await.is_err() {
            continue;
        }
        // Commands until the peer closes or one fails.
        let mut command = [0u8; 5];
        while socket.read_exact(&mut command).await.is_ok() {
            let len = u32::from_be_bytes([command[1], command[2], command[3], command[4]]);
            let done = match command[0] {
                b'U' => raw_upload(&mut socket, len).await,
                b'D' => raw_download(&mut socket, len).await,
                _ => false,
            };
            if !done {
                break;
            }
        }
        socket.close();
        let _ = socket.flush().await;
    }
}

/// Reads `len` bytes and answers the same receipt as the tinyproto side.
async fn raw_upload(socket: &mut TcpSocket<'_>, len: u32) -> bool {
    let (mut left, mut checksum) = (len as usize, Checksum::new());
    let mut sink = [0u8; 1024];
    while left > 0 {
        let want = left.min(sink.len());
        match socket.read(&mut sink[..want]).await {
            Ok(n @ 1..) => {
                checksum.update(&sink[..n]);
                left -= n;
            }
            _ => return false,
        }
    }
    socket.write_all(&checksum.receipt(len)).await.is_ok()
}

/// Sends `len` bytes.
async fn raw_download(socket: &mut TcpSocket<'_>, len: u32) -> bool {
    let mut chunk = [0u8; 1024];
    for (i, b) in chunk.iter_mut().enumerate() {
        *b = pattern(i);
    }
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(chunk.len());
        if socket.write_all(&chunk[..n]).await.is_err() {
            return false;
        }
        left -= n;
    }
    true
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let core = cortex_m::Peripherals::take().unwrap();
    board::init_time(core.SYST);
    let stack = board::network(spawner, lan_address(10), 0xBE7C);
    stack.wait_config_up().await;

    let config = ServerConfig::new(7000);
    let mut slot = SlotStorage::<2048, 2048, 1024>::new();
    let mut reserve = ReserveStorage::new();
    let (mut raw_rx, mut raw_tx) = ([0u8; 2048], [0u8; 2048]);
    log!("benchmark: tinyproto on :7000, raw TCP on :7001");
    join(
        serve(
            stack,
            &config,
            [slot.slot()],
            [reserve.reserve()],
            [Bench::default()],
        ),
        raw(stack, &mut raw_rx, &mut raw_tx),
    )
    .await;
}
