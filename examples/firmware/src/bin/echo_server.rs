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
use tinyproto_embassy_firmware::{board, lan_address, log};

/// The longest message taken (in chunks); longer ones are refused.
const LARGEST: u32 = 4 << 20;
/// FNV-1a's offset basis: the checksum of nothing.
const FNV_START: u32 = 0x811C_9DC5;

/// FNV-1a over `bytes`, continuing from `hash`.
fn fnv1a(mut hash: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    hash
}

/// One per slot: the checksum of the message streaming in.
struct Echo {
    checksum: u32,
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
            self.checksum = FNV_START;
            Take::Chunks
        } else {
            log!("refused a message of {} bytes", len);
            Take::Reject
        }
    }

    async fn transmission_chunk(&mut self, _info: &ConnInfo, chunk: &[u8]) -> Flow {
        self.checksum = fnv1a(self.checksum, chunk);
        Flow::Continue
    }

    async fn transmission_complete(&mut self, session: &mut Session<'_, '_>, len: u32) -> Flow {
        let mut receipt = [0u8; 8];
        receipt[..4].copy_from_slice(&len.to_be_bytes());
        receipt[4..].copy_from_slice(&self.checksum.to_be_bytes());
        log!(
            "received {} bytes in chunks, FNV-1a {:08x}",
            len,
            self.checksum
        );
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
        [Echo { checksum: 0 }, Echo { checksum: 0 }],
    )
    .await {}
}
