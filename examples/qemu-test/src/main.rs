//! tinyproto-embassy on an emulated Cortex-M3 (QEMU `lm3s6965evb`): an
//! embassy executor runs a tinyproto server (2 slots + a 0xFE reserve) on
//! stack B and clients on stack A, the stacks linked in memory. Every check
//! that fails panics, and panic-semihosting exits QEMU with status 1; all
//! checks passing exit with status 0.
#![no_std]
#![no_main]

mod link;
mod receipt;

use core::cell::Cell;

use cortex_m_semihosting::{debug, hprintln};
use embassy_executor::Spawner;
use embassy_futures::select::{select, Either};
use embassy_net::driver::HardwareAddress;
use embassy_net::{IpEndpoint, Ipv4Address, Ipv4Cidr, Stack, StackResources, StaticConfigV4};
use embassy_net_driver_channel as ch;
use embassy_time::{Duration, Instant};
use link::MTU;
use panic_semihosting as _;
use receipt::Checksum;
use static_cell::StaticCell;
use tinyproto_embassy::{
    serve, Client, ConnInfo, Error, Flow, Handler, Reserve, ServerConfig, Session, Slot, Take,
    Timeouts,
};

/// The LM3S6965's core clock as QEMU models it.
const CORE_HZ: u32 = 12_000_000;
const PORT: u16 = 7000;
const SERVER: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);
const CLIENT: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
/// Size of the chunked message: far larger than the 64 KiB of RAM.
const BIG: usize = 1 << 20;
/// A firmware image the server streams through its 2 KiB message buffer.
const IMAGE: usize = 3_000_000;

type Device = ch::Device<'static, MTU>;

#[embassy_executor::task(pool_size = 2)]
async fn net_task(mut runner: embassy_net::Runner<'static, Device>) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn link_task(a: ch::Runner<'static, MTU>, b: ch::Runner<'static, MTU>) -> ! {
    link::run(a, b).await
}

fn pattern_byte(i: usize) -> u8 {
    (i as u32).wrapping_mul(31).wrapping_add(7) as u8
}

/// Echoes messages; "big" answers `BIG` pattern bytes sent in chunks.
/// Messages over 64 KiB (a firmware image) are taken in chunks through the
/// slot's buffer into a checksum, answered with their length and checksum.
struct Echo {
    received: Cell<u32>,
    checksum: Cell<Checksum>,
    largest_chunk: Cell<usize>,
}

impl Handler for &Echo {
    async fn message_announced(&mut self, _info: &ConnInfo, len: u32, capacity: u32) -> Take {
        if len > 64 * 1024 {
            self.checksum.set(Checksum::new());
            Take::Chunks
        } else if len <= capacity {
            Take::Whole
        } else {
            Take::Reject
        }
    }

    async fn transmission_chunk(&mut self, _info: &ConnInfo, chunk: &[u8]) -> Flow {
        self.largest_chunk
            .set(self.largest_chunk.get().max(chunk.len()));
        let mut checksum = self.checksum.get();
        checksum.update(chunk);
        self.checksum.set(checksum);
        Flow::Continue
    }

    async fn transmission_complete(&mut self, session: &mut Session<'_, '_>, len: u32) -> Flow {
        self.received.set(self.received.get() + 1);
        match session.transmit(&self.checksum.get().receipt(len)).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    async fn transmission_received(&mut self, session: &mut Session<'_, '_>, msg: &[u8]) -> Flow {
        self.received.set(self.received.get() + 1);
        let sent = if msg == b"big" {
            send_big(session).await
        } else {
            session.transmit(msg).await
        };
        match sent {
            Ok(()) => Flow::Continue,
            Err(e) => {
                hprintln!("server: send failed: {:?}", e);
                Flow::Close
            }
        }
    }
}

async fn send_big(session: &mut Session<'_, '_>) -> Result<(), Error> {
    let mut out = session.begin_transmit(BIG as u32).await?;
    let mut chunk = [0u8; 512];
    let mut at = 0;
    while at < BIG {
        for (k, b) in chunk.iter_mut().enumerate() {
            *b = pattern_byte(at + k);
        }
        out.write_all(&chunk).await?;
        at += chunk.len();
    }
    out.finish().await
}

fn config(addr: Ipv4Address) -> embassy_net::Config {
    embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(addr, 24),
        gateway: None,
        dns_servers: Default::default(),
    })
}

fn check(ok: bool, what: &str) {
    if !ok {
        panic!("check failed: {}", what);
    }
}

async fn clients(a: Stack<'_>) {
    let to = IpEndpoint::new(SERVER.into(), PORT);
    let timeouts = Timeouts::DEFAULT;
    let (mut rx1, mut tx1) = ([0u8; 2048], [0u8; 2048]);
    let mut c1 = Client::connect(a, &mut rx1, &mut tx1, to, timeouts)
        .await
        .expect("client 1 connects");
    hprintln!("client 1 greeted");

    // Whole messages, echoed.
    let mut msg = [0u8; 2048];
    let mut buf = [0u8; 2048];
    for (round, len) in [0usize, 1, 4, 100, 1459, 1460, 1461, 2048]
        .into_iter()
        .enumerate()
    {
        for (i, b) in msg[..len].iter_mut().enumerate() {
            *b = (i + round) as u8;
        }
        c1.transmit(&msg[..len]).await.expect("transmit");
        let echo = c1.receive(&mut buf).await.expect("receive");
        check(echo == &msg[..len], "echo matches");
    }
    hprintln!("round trips 0..2048 B ok");

    // Larger than the server's 2 KiB message buffer: refused, still usable.
    check(
        c1.transmit(&[0u8; 3000][..]).await == Err(Error::Rejected { len: 3000 }),
        "oversized message rejected",
    );
    c1.transmit(b"still here")
        .await
        .expect("transmit after reject");
    check(
        c1.receive(&mut buf).await.expect("receive") == b"still here",
        "usable after reject",
    );
    hprintln!("oversized message rejected, connection still usable");

    // 1 MiB, received in 256-byte chunks and checked byte by byte.
    let started = Instant::now();
    c1.transmit(b"big").await.expect("ask for big");
    {
        let mut incoming = c1.begin_receive(BIG as u32).await.expect("begin_receive");
        check(incoming.len() as usize == BIG, "announced length");
        let mut chunk = [0u8; 256];
        let mut at = 0;
        loop {
            let n = incoming.read(&mut chunk).await.expect("chunk");
            if n == 0 {
                break;
            }
            for (k, b) in chunk[..n].iter().enumerate() {
                if *b != pattern_byte(at + k) {
                    panic!("byte {} differs", at + k);
                }
            }
            at += n;
        }
        check(at == BIG, "whole message read");
    }
    hprintln!(
        "1 MiB chunked receive ok in {} ms of emulated time",
        started.elapsed().as_millis()
    );

    // A 3 MB firmware image up, streamed by the server through its 2 KiB
    // buffer into a checksum; then the connection carries on.
    let started = Instant::now();
    {
        let mut out = c1
            .begin_transmit(IMAGE as u32)
            .await
            .expect("begin the image");
        let mut chunk = [0u8; 1000];
        let mut checksum = Checksum::new();
        let mut at = 0;
        while at < IMAGE {
            let n = chunk.len().min(IMAGE - at);
            for (k, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern_byte(at + k);
            }
            checksum.update(&chunk[..n]);
            out.write_all(&chunk[..n]).await.expect("image chunk");
            at += n;
        }
        out.finish().await.expect("finish the image");
        let answer = c1.receive(&mut buf).await.expect("image answer");
        check(
            answer == checksum.receipt(IMAGE as u32),
            "image length and checksum",
        );
    }
    c1.transmit(b"after the image")
        .await
        .expect("transmit after image");
    check(
        c1.receive(&mut buf).await.expect("receive") == b"after the image",
        "usable after the image",
    );
    hprintln!(
        "3 MB image streamed through a 2 KiB buffer ok in {} ms of emulated time",
        started.elapsed().as_millis()
    );

    // Two slots: a second client fits, a third gets 0xFE.
    let (mut rx2, mut tx2) = ([0u8; 1024], [0u8; 1024]);
    let mut c2 = Client::connect(a, &mut rx2, &mut tx2, to, timeouts)
        .await
        .expect("client 2 connects");
    {
        let (mut rx3, mut tx3) = ([0u8; 256], [0u8; 256]);
        let third = Client::connect(a, &mut rx3, &mut tx3, to, timeouts).await;
        check(
            matches!(third, Err(Error::ConnectionLimit)),
            "third client refused with 0xFE",
        );
    }
    hprintln!("third client refused with ConnectionLimit (0xFE)");
    c2.transmit(b"two").await.expect("client 2 transmit");
    check(
        c2.receive(&mut buf).await.expect("receive") == b"two",
        "client 2 echo",
    );
    c2.close().await.expect("client 2 close");

    // A peer that drips its payload is cut off at the message deadline.
    {
        let (mut rx, mut tx) = ([0u8; 256], [0u8; 256]);
        let mut raw = embassy_net::tcp::TcpSocket::new(a, &mut rx, &mut tx);
        raw.connect(to).await.expect("raw connect");
        let mut byte = [0u8; 1];
        raw.write(&[0xFF]).await.expect("greet");
        check(
            raw.read(&mut byte).await == Ok(1) && byte[0] == 0xFF,
            "greeting",
        );
        raw.write(&100u32.to_be_bytes()).await.expect("length");
        check(
            raw.read(&mut byte).await == Ok(1) && byte[0] == 0xFF,
            "length accepted",
        );
        let started = Instant::now();
        let mut cut_off = None;
        for _ in 0..100 {
            if raw.write(&[0x42]).await.is_err() {
                cut_off = Some(started.elapsed());
                break;
            }
            let tick = embassy_time::Timer::after(Duration::from_millis(100));
            if let Either::First(r) = select(raw.read(&mut byte), tick).await {
                check(matches!(r, Ok(0) | Err(_)), "no data from the server");
                cut_off = Some(started.elapsed());
                break;
            }
        }
        let cut_off = cut_off.expect("dripping peer never cut off");
        check(
            cut_off >= Duration::from_millis(900) && cut_off < Duration::from_secs(5),
            "cut off near the 1 s message deadline",
        );
        hprintln!("dripping peer cut off after {} ms", cut_off.as_millis());
        raw.abort();
        let _ = raw.flush().await;
    }
    c1.close().await.expect("client 1 close");
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let core = cortex_m::Peripherals::take().unwrap();
    systick_time_driver::init(core.SYST, CORE_HZ);
    hprintln!("tinyproto-embassy QEMU test: starting");

    static STATE_A: StaticCell<ch::State<MTU, 2, 2>> = StaticCell::new();
    static STATE_B: StaticCell<ch::State<MTU, 2, 2>> = StaticCell::new();
    static RES_A: StaticCell<StackResources<6>> = StaticCell::new();
    static RES_B: StaticCell<StackResources<6>> = StaticCell::new();
    let (link_a, dev_a) = ch::new(STATE_A.init(ch::State::new()), HardwareAddress::Ip);
    let (link_b, dev_b) = ch::new(STATE_B.init(ch::State::new()), HardwareAddress::Ip);
    let (a, runner_a) =
        embassy_net::new(dev_a, config(CLIENT), RES_A.init(StackResources::new()), 1);
    let (b, runner_b) =
        embassy_net::new(dev_b, config(SERVER), RES_B.init(StackResources::new()), 2);
    // The stack runners in tasks of their own: embassy-net wakes its runner
    // on every socket call, so sharing a task with sockets would spin.
    spawner.spawn(net_task(runner_a).unwrap());
    spawner.spawn(net_task(runner_b).unwrap());
    spawner.spawn(link_task(link_a, link_b).unwrap());
    a.wait_config_up().await;
    b.wait_config_up().await;

    let handler = Echo {
        received: Cell::new(0),
        checksum: Cell::new(Checksum::new()),
        largest_chunk: Cell::new(0),
    };
    let mut server_config = ServerConfig::new(PORT);
    // Whole-message deadline: a dripping peer is cut off after 1 s.
    server_config.timeouts.message = Duration::from_secs(1);
    let (mut s0rx, mut s0tx, mut s0msg) = ([0u8; 2048], [0u8; 2048], [0u8; 2048]);
    let (mut s1rx, mut s1tx, mut s1msg) = ([0u8; 1024], [0u8; 1024], [0u8; 256]);
    let (mut rrx, mut rtx) = ([0u8; 64], [0u8; 64]);
    let slots = [
        Slot::new(&mut s0rx, &mut s0tx, &mut s0msg),
        Slot::new(&mut s1rx, &mut s1tx, &mut s1msg),
    ];
    let server = serve(
        b,
        &server_config,
        slots,
        [Reserve::new(&mut rrx, &mut rtx)],
        [&handler, &handler],
    );
    let started = Instant::now();
    let verdict =
        embassy_time::with_timeout(Duration::from_secs(60), select(server, clients(a))).await;
    match verdict {
        Ok(Either::Second(())) => {
            check(handler.received.get() == 13, "server saw every message");
            check(
                handler.largest_chunk.get() <= 2048,
                "image chunks bounded by the slot's buffer",
            );
            hprintln!(
                "PASS: {} messages served, {} ms emulated",
                handler.received.get(),
                started.elapsed().as_millis()
            );
            debug::exit(debug::EXIT_SUCCESS);
        }
        Ok(Either::First(never)) => match never {},
        Err(_) => {
            hprintln!("FAIL: timed out");
            debug::exit(debug::EXIT_FAILURE);
        }
    }
    loop {
        cortex_m::asm::wfi();
    }
}
