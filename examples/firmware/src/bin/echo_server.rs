//! Device-side tinyproto echo server: 2 concurrent connections on port 7000,
//! a reserve socket that answers a third peer with 0xFE, an idle timeout
//! and TCP keep-alive. Messages up to the slot's 1 KiB buffer come back
//! whole; larger ones up to 4 MiB (a firmware image, say) stream through
//! that buffer into a checksum and are answered with an 8-byte receipt,
//! their length and FNV-1a (both big-endian); longer ones are refused
//! (0x00) and the connection goes on. Board-neutral: see `board.rs`.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

#[cfg(feature = "defmt")]
use defmt_rtt as _;
use embassy_executor::Spawner;
use embassy_time::Duration;
use tinyproto_embassy::{
    serve, ConnInfo, Ended, Flow, Handler, ReserveStorage, ServerConfig, Session, SlotStorage, Take,
};
use tinyproto_embassy_firmware::receipt::Checksum;
use tinyproto_embassy_firmware::{board, lan_address, log};

/// The longest message taken (in chunks); longer ones are refused.
const LARGEST: u32 = 4 << 20;
/// One per slot: the checksum of the message streaming in.
#[derive(Default)]
struct Echo {
    checksum: Checksum,
}

impl Handler for Echo {
    async fn conn_init(&mut self, info: &ConnInfo) -> Flow {
        log!("slot {}: peer {:?}", info.slot, info.remote);
        Flow::Continue
    }

    async fn message_announced(&mut self, _info: &ConnInfo, len: u32, capacity: u32) -> Take {
        if len <= capacity {
            Take::Whole
        } else if len <= LARGEST {
            self.checksum = Checksum::new();
            Take::Chunks
        } else {
            log!("refused a message of {} bytes", len);
            Take::Reject
        }
    }

    async fn transmission_chunk(&mut self, _info: &ConnInfo, chunk: &[u8]) -> Flow {
        self.checksum.update(chunk);
        Flow::Continue
    }

    async fn transmission_complete(&mut self, session: &mut Session<'_, '_>, len: u32) -> Flow {
        let receipt = self.checksum.receipt(len);
        log!("received {} bytes in chunks, receipt {:?}", len, receipt);
        Flow::after(session.transmit(&receipt).await)
    }

    async fn transmission_received(&mut self, session: &mut Session<'_, '_>, msg: &[u8]) -> Flow {
        match session.transmit(msg).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    async fn conn_shutdown(&mut self, info: &ConnInfo, ended: &Ended) {
        log!("slot {}: ended {:?}", info.slot, ended);
    }
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let core = cortex_m::Peripherals::take().unwrap();
    board::init_time(core.SYST);
    let stack = board::network(spawner, lan_address(10), 0x5EED);
    stack.wait_config_up().await;

    let mut config = ServerConfig::new(7000);
    config.timeouts.idle = Some(Duration::from_secs(120));
    config.timeouts.keep_alive = Some(Duration::from_secs(30));
    config.timeouts.tcp = Some(Duration::from_secs(90));
    // The buffers live in this task's (static) future: no heap, no 'static.
    let mut slot0 = SlotStorage::<2048, 2048, 1024>::new();
    let mut slot1 = SlotStorage::<2048, 2048, 1024>::new();
    let mut reserve = ReserveStorage::new();
    log!("serving tinyproto on :7000");
    match serve(
        stack,
        &config,
        [slot0.slot(), slot1.slot()],
        [reserve.reserve()],
        [Echo::default(), Echo::default()],
    )
    .await {}
}
