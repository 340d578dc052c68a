//! Device-side tinyproto client over TLS 1.3 (feature `tls`, MPS2 board).
//! It verifies the server against the CA it carries, presents its own
//! certificate, and runs the link check of `client.rs` inside TLS. Then it
//! checks that TLS keeps out whom it should:
//!
//! - a server whose certificate another CA signed (port 7444) is refused
//!   by the firmware;
//! - without a client certificate, or with one from another CA, the server
//!   (port 7443) refuses the firmware.
//!
//! Every line it logs starts with `tls`; the last is `tls checks: done`.
//! The CA, the certificates and the keys are made at test time and baked
//! in by `build.rs` (see `.ci/firmware-pki.sh`).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use embassy_executor::Spawner;
use embassy_net::{IpEndpoint, Ipv4Address, Stack};
use embassy_time::{Duration, Instant, Timer};
use tinyproto_embassy::tls::{embedded_tls::TlsConfig, Provider, TlsStorage, MAX_RECORD_LEN};
use tinyproto_embassy::{Client, Error, Timeouts};
use tinyproto_embassy_firmware::host_entropy::HostEntropy;
use tinyproto_embassy_firmware::link_check::link_check;
use tinyproto_embassy_firmware::{board, lan_address, log};

/// The CA that signs the servers this device trusts (DER).
static CA: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ca.der"));
/// This device's certificate, signed by that CA, and its P-256 key (SEC1).
static DEVICE_CERT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/device.der"));
static DEVICE_KEY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/device-key.der"));
/// A certificate and key from another CA, which the server must refuse.
static STRANGER_CERT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/stranger.der"));
static STRANGER_KEY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/stranger-key.der"));

/// The name on the server's certificate.
const SERVER_NAME: &str = "tinyproto.test";
/// The server that holds a certificate from our CA, and one that does not.
const TRUSTED_PORT: u16 = 7443;
const IMPOSTOR_PORT: u16 = 7444;

/// Which certificate the device presents.
#[derive(Clone, Copy)]
enum Identity {
    Device,
    Stranger,
    Nothing,
}

/// Everything a connection borrows, reused from one attempt to the next.
struct Buffers {
    rx: [u8; 1024],
    tx: [u8; 1024],
    read_record: [u8; MAX_RECORD_LEN],
    write_record: [u8; 4096],
}

/// Connects to `port` over TLS presenting `identity`, then runs `then` on
/// the client and closes it. `Err` if the connection was refused.
async fn with_tls_client(
    stack: Stack<'_>,
    buffers: &mut Buffers,
    port: u16,
    identity: Identity,
    then: impl AsyncFnOnce(&mut Client<'_, tinyproto_embassy::tls::TlsSocket<'_, '_>>),
) -> Result<(), Error> {
    let server = IpEndpoint::new(Ipv4Address::new(192, 168, 1, 10).into(), port);
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        greeting: Duration::from_secs(10),
        message: Duration::from_secs(60),
        ..Timeouts::DEFAULT
    };
    let config = TlsConfig::new().with_server_name(SERVER_NAME);
    let provider = Provider::new(HostEntropy, CA);
    let provider = match identity {
        Identity::Device => provider.with_client_cert(DEVICE_CERT, DEVICE_KEY),
        Identity::Stranger => provider.with_client_cert(STRANGER_CERT, STRANGER_KEY),
        Identity::Nothing => provider,
    };
    let Buffers {
        rx,
        tx,
        read_record,
        write_record,
    } = buffers;
    let mut storage = TlsStorage::new(read_record, write_record);
    let started = Instant::now();
    let mut client = Client::connect_tls(
        stack,
        rx,
        tx,
        server,
        timeouts,
        &mut storage,
        &config,
        provider,
    )
    .await?;
    log!(
        "tls: TCP, TLS 1.3 handshake and greeting in {} ms",
        started.elapsed().as_millis()
    );
    then(&mut client).await;
    client.close().await
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let core = cortex_m::Peripherals::take().unwrap();
    board::init_time(core.SYST);
    let mut seed = [0u8; 8];
    HostEntropy.fill(&mut seed);
    let stack = board::network(spawner, lan_address(20), u64::from_le_bytes(seed));
    stack.wait_config_up().await;
    let mut buffers = Buffers {
        rx: [0; 1024],
        tx: [0; 1024],
        read_record: [0; MAX_RECORD_LEN],
        write_record: [0; 4096],
    };

    let checked = with_tls_client(
        stack,
        &mut buffers,
        TRUSTED_PORT,
        Identity::Device,
        async |client| match link_check(client).await {
            Ok(()) => log!("tls link check: passed"),
            Err(e) => log!("tls link check: FAILED: {:?}", e),
        },
    )
    .await;
    if let Err(e) = checked {
        log!("tls link check: FAILED to connect: {:?}", e);
    }

    let refusals = [
        ("an impostor server", IMPOSTOR_PORT, Identity::Device),
        ("no client certificate", TRUSTED_PORT, Identity::Nothing),
        (
            "a client certificate from another CA",
            TRUSTED_PORT,
            Identity::Stranger,
        ),
    ];
    for (what, port, identity) in refusals {
        // The server must not take a message from a device it refused.
        let attempt = with_tls_client(stack, &mut buffers, port, identity, async |client| {
            if client.transmit(b"refused?").await.is_ok() {
                log!("tls refusal check: a message crossed");
            }
        })
        .await;
        match attempt {
            Err(e) => log!("tls refused: {}: {:?}", what, e),
            Ok(()) => log!("tls refusal check: ACCEPTED: {}", what),
        }
    }
    log!("tls checks: done");
    loop {
        Timer::after(Duration::from_secs(60)).await;
    }
}
