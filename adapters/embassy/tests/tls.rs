//! The TLS client (feature `tls`, embedded-tls) against a rustls server, on
//! two embassy-net stacks linked in memory: whole, chunked and rejected
//! messages inside TLS, the session tickets rustls sends after the
//! handshake (they must not look like a message of the peer's), a receive
//! that times out and goes on, the refusals (an untrusted CA, a wrong
//! server name, a missing client certificate), and the record size: a read
//! buffer smaller than a full record works only against a server that caps
//! its records.
//!
//! The server is the core's async driver over rustls over an embassy-net
//! socket (a small adapter below). Certificates come from rcgen at test
//! time (`tinyproto_tests::pki`).

mod common;

use std::io::{Read as _, Write as _};
use std::sync::Arc;

use common::{pattern, run_pair, server_endpoint, Faults};
use embassy_futures::join::join;
use embassy_futures::select::{select, Either};
use embassy_net::tcp::TcpSocket;
use embassy_net::Stack;
use embassy_time::{Duration, Timer};
use rand_core::OsRng;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::WebPkiClientVerifier;
use tinyproto::embedded_io_async::{ErrorType, Read, Write};
use tinyproto_embassy::tls::embedded_tls::{TlsConfig, TlsError};
use tinyproto_embassy::tls::{Provider, TlsStorage, MAX_RECORD_LEN};
use tinyproto_embassy::{Client, Deadline, Error, NetError, Timeouts};
use tinyproto_tests::pki::{Issued, TestCa};

const PORT: u16 = 8443;
const NAME: &str = "server.test";
/// The server refuses longer messages (0x00).
const SERVER_MAX: u32 = 300_000;

fn limit() -> Duration {
    Duration::from_secs(30)
}

/// rustls' server side over an embassy-net socket, as the embedded-io
/// stream of the core's async driver.
struct RustlsStream<'a> {
    tls: rustls::ServerConnection,
    tcp: TcpSocket<'a>,
}

impl RustlsStream<'_> {
    /// Writes what rustls has to send (handshake messages, records).
    async fn send_records(&mut self) -> std::io::Result<()> {
        while self.tls.wants_write() {
            let mut out = Vec::new();
            self.tls.write_tls(&mut out)?;
            let mut sent = 0;
            while sent < out.len() {
                sent += self.tcp.write(&out[sent..]).await.map_err(io_error)?;
            }
        }
        self.tcp.flush().await.map_err(io_error)
    }
}

fn io_error(e: embassy_net::tcp::Error) -> std::io::Error {
    std::io::Error::other(format!("{e:?}"))
}

impl ErrorType for RustlsStream<'_> {
    type Error = std::io::Error;
}

impl Read for RustlsStream<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            self.send_records().await?;
            let mut tcp_bytes = [0u8; 4096];
            let n = self.tcp.read(&mut tcp_bytes).await.map_err(io_error)?;
            if n == 0 {
                return Ok(0);
            }
            let mut rest = &tcp_bytes[..n];
            while !rest.is_empty() {
                self.tls.read_tls(&mut rest)?;
                let processed = self.tls.process_new_packets();
                if let Err(e) = processed {
                    // The alert goes out before the error does.
                    let _ = self.send_records().await;
                    return Err(std::io::Error::other(e));
                }
            }
        }
    }
}

impl Write for RustlsStream<'_> {
    async fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.tls.writer().write(buf)?;
        self.send_records().await?;
        Ok(n)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.send_records().await
    }
}

/// How the rustls server is set up.
struct ServerSetup {
    config: Arc<rustls::ServerConfig>,
}

impl ServerSetup {
    fn new(server: &Issued, client_ca: Option<&TestCa>, max_fragment: Option<usize>) -> Self {
        let builder = rustls::ServerConfig::builder();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.cert_der()).expect("the client CA");
                let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .expect("a client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(server.chain(), server.key_der())
            .expect("the server certificate");
        config.max_fragment_size = max_fragment;
        Self {
            config: Arc::new(config),
        }
    }

    /// Accepts one connection on [`PORT`] and wraps it in TLS: the core's
    /// connection over it.
    async fn accept<'a>(
        &self,
        stack: Stack<'a>,
        rx: &'a mut [u8],
        tx: &'a mut [u8],
    ) -> Result<tinyproto::asynch::Connection<RustlsStream<'a>>, String> {
        let mut tcp = TcpSocket::new(stack, rx, tx);
        tcp.accept(PORT).await.map_err(|e| format!("{e:?}"))?;
        let tls = rustls::ServerConnection::new(self.config.clone()).map_err(|e| e.to_string())?;
        Ok(tinyproto::asynch::Connection::new(RustlsStream {
            tls,
            tcp,
        }))
    }

    /// Accepts one connection, sends `first` if given, and echoes its
    /// messages (refusing those over [`SERVER_MAX`]) until the client
    /// closes; returns how many it echoed, or why it failed.
    async fn echo_one(&self, stack: Stack<'_>, first: Option<&[u8]>) -> Result<usize, String> {
        let (mut rx, mut tx) = ([0u8; 8192], [0u8; 8192]);
        let mut conn = self.accept(stack, &mut rx, &mut tx).await?;
        conn.set_max_message_len(SERVER_MAX);
        if let Some(first) = first {
            conn.transmit(first).await.map_err(|e| format!("{e:?}"))?;
        }
        let mut buf = vec![0u8; SERVER_MAX as usize];
        let mut echoed = 0;
        loop {
            match conn.receive(&mut buf).await {
                Ok(msg) => {
                    let len = msg.len();
                    conn.transmit(&buf[..len])
                        .await
                        .map_err(|e| format!("{e:?}"))?;
                    echoed += 1;
                }
                Err(tinyproto::Error::TooLarge { .. }) => {}
                Err(tinyproto::Error::Closed) => return Ok(echoed),
                Err(e) => return Err(format!("{e}")),
            }
        }
    }
}

/// The device's buffers for one connection.
struct DeviceBuffers {
    rx: Vec<u8>,
    tx: Vec<u8>,
    read_record: Vec<u8>,
    write_record: Vec<u8>,
}

impl DeviceBuffers {
    fn new(read_record: usize) -> Self {
        Self {
            rx: vec![0; 4096],
            tx: vec![0; 4096],
            read_record: vec![0; read_record],
            write_record: vec![0; 4096],
        }
    }
}

fn timeouts() -> Timeouts {
    Timeouts {
        greeting: Duration::from_secs(10),
        message: Duration::from_secs(10),
        receive: Some(Duration::from_secs(10)),
        ..Timeouts::DEFAULT
    }
}

/// The device takes its key in SEC1 DER; rcgen writes PKCS#8.
fn sec1(key: PrivateKeyDer<'static>) -> Vec<u8> {
    use p256::pkcs8::DecodePrivateKey;
    let PrivateKeyDer::Pkcs8(key) = key else {
        panic!("rcgen keys are PKCS#8")
    };
    let key = p256::SecretKey::from_pkcs8_der(key.secret_pkcs8_der()).expect("a P-256 key");
    key.to_sec1_der().expect("SEC1").to_vec()
}

/// Connects the device to the test's server and runs `then` on the client.
async fn device<R>(
    stack: Stack<'_>,
    buffers: &mut DeviceBuffers,
    trusted: &TestCa,
    identity: Option<&Issued>,
    server_name: &str,
    timeouts: Timeouts,
    then: impl AsyncFnOnce(&mut Client<'_, tinyproto_embassy::tls::TlsSocket<'_, '_>>) -> R,
) -> Result<R, Error> {
    let ca = trusted.cert_der();
    let chain = identity.map(|i| (i.chain()[0].clone(), sec1(i.key_der())));
    let mut provider = Provider::new(OsRng, &ca);
    if let Some((cert, key)) = &chain {
        provider = provider.with_client_cert(cert, key);
    }
    let config = TlsConfig::new().with_server_name(server_name);
    let mut storage = TlsStorage::new(&mut buffers.read_record, &mut buffers.write_record);
    let mut client = Client::connect_tls(
        stack,
        &mut buffers.rx,
        &mut buffers.tx,
        server_endpoint(PORT),
        timeouts,
        &mut storage,
        &config,
        provider,
    )
    .await?;
    let r = then(&mut client).await;
    client.close().await?;
    Ok(r)
}

/// A client certificate (and the server's) from the same CA, and one from
/// another.
struct Pki {
    ca: TestCa,
    server: Issued,
    device: Issued,
    other_ca: TestCa,
    stranger: Issued,
}

fn pki() -> Pki {
    let ca = TestCa::new("test CA");
    let server = ca.issue(&[NAME], NAME, false);
    let device = ca.issue(&[], "device-1", false);
    let other_ca = TestCa::new("another CA");
    let stranger = other_ca.issue(&[], "device-1", false);
    Pki {
        ca,
        server,
        device,
        other_ca,
        stranger,
    }
}

/// Echoes `msg` whole, and compares.
async fn echo_whole(client: &mut Client<'_, impl tinyproto_embassy::Transport>, msg: &[u8]) {
    client.transmit(msg).await.expect("transmit");
    let mut buf = vec![0u8; msg.len().max(1)];
    let echo = client.receive(&mut buf).await.expect("receive");
    assert_eq!(echo, msg, "the echo of {} B", msg.len());
}

/// Echoes `msg` through the chunked readers and writers, and compares.
async fn echo_chunked(client: &mut Client<'_, impl tinyproto_embassy::Transport>, msg: &[u8]) {
    let mut out = client
        .begin_transmit(msg.len() as u32)
        .await
        .expect("begin_transmit");
    for part in msg.chunks(700) {
        out.write_all(part).await.expect("write");
    }
    out.finish().await.expect("finish");
    let mut echo = client
        .begin_receive(msg.len() as u32)
        .await
        .expect("begin_receive");
    assert_eq!(echo.len() as usize, msg.len());
    let mut got = Vec::new();
    let mut chunk = [0u8; 1000];
    while echo.remaining() > 0 {
        let n = echo.read(&mut chunk).await.expect("read");
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got == msg, "the chunked echo of {} B differs", msg.len());
}

#[test]
fn test_tls_messages_whole_chunked_and_rejected() {
    let pki = pki();
    let server = ServerSetup::new(&pki.server, Some(&pki.ca), None);
    let echoed = run_pair(Faults::default(), limit(), async |a, b, _| {
        let mut buffers = DeviceBuffers::new(MAX_RECORD_LEN);
        let device = device(
            a,
            &mut buffers,
            &pki.ca,
            Some(&pki.device),
            NAME,
            timeouts(),
            async |client| {
                // rustls sends its session tickets after the handshake:
                // they must not look like a message of the server's.
                Timer::after(Duration::from_millis(50)).await;
                let begun = client.connection().peer_has_begun();
                assert!(
                    matches!(begun, Ok(false)),
                    "tickets read as a message: {begun:?}"
                );
                for len in [0, 1, 5, 1000, 16_384, 16_385, 100_000] {
                    echo_whole(client, &pattern(len, len as u8)).await;
                }
                echo_chunked(client, &pattern(250_000, 3)).await;
                let too_long = pattern(SERVER_MAX as usize + 1, 9);
                let refused = client.transmit(&too_long).await;
                assert!(
                    matches!(refused, Err(Error::Rejected { .. })),
                    "over the server's limit: {refused:?}"
                );
                // The connection goes on after a rejection.
                echo_whole(client, b"after the rejection").await;
            },
        );
        let (served, device) = join(server.echo_one(b, None), device).await;
        device.expect("the device's connection");
        served
    });
    // 7 whole, 1 chunked, 1 after the rejection.
    assert_eq!(echoed, Ok(9));
}

#[test]
fn test_tls_receive_timeout_leaves_the_stream_usable() {
    let pki = pki();
    let server = ServerSetup::new(&pki.server, None, None);
    run_pair(Faults::default(), limit(), async |a, b, _| {
        let mut buffers = DeviceBuffers::new(MAX_RECORD_LEN);
        let short_wait = Timeouts {
            receive: Some(Duration::from_millis(300)),
            ..timeouts()
        };
        let device = device(
            a,
            &mut buffers,
            &pki.ca,
            None,
            NAME,
            short_wait,
            async |client| {
                let mut buf = [0u8; 16];
                let waited = client.receive(&mut buf).await;
                assert_eq!(
                    waited.err(),
                    Some(Error::Io(NetError::TimedOut(Deadline::Receive)))
                );
                echo_whole(client, b"still in step").await;
                // A receive dropped while it waits (a select with another
                // event of the firmware's) cuts nothing either.
                let dropped = select(client.receive(&mut buf), Timer::after_millis(100)).await;
                assert!(matches!(dropped, Either::Second(())));
                echo_whole(client, b"still in step after a drop").await;
            },
        );
        let (served, device) = join(server.echo_one(b, None), device).await;
        device.expect("the device's connection");
        assert_eq!(served, Ok(2));
    });
}

/// Connects with these settings; the device's and the server's results.
fn refused(
    server: ServerSetup,
    trusted: &TestCa,
    identity: Option<&Issued>,
    name: &str,
) -> (Result<(), Error>, Result<usize, String>) {
    run_pair(Faults::default(), limit(), async |a, b, _| {
        let mut buffers = DeviceBuffers::new(MAX_RECORD_LEN);
        let device = device(
            a,
            &mut buffers,
            trusted,
            identity,
            name,
            timeouts(),
            async |c| {
                // A refused device must not get a message through.
                let _ = c.transmit(b"let me in").await;
            },
        );
        let (served, device) = join(server.echo_one(b, None), device).await;
        (device, served)
    })
}

#[test]
fn test_tls_untrusted_or_misnamed_server_is_refused_by_the_device() {
    let pki = pki();
    // (the CA the device trusts, the name it asks for)
    for (trusted, name) in [(&pki.other_ca, NAME), (&pki.ca, "other.test")] {
        let (device, served) = refused(
            ServerSetup::new(&pki.server, None, None),
            trusted,
            None,
            name,
        );
        assert!(
            matches!(
                device,
                Err(Error::Io(NetError::Tls(TlsError::InvalidCertificate)))
            ),
            "asking for {name}: {device:?}"
        );
        assert!(
            served.is_err(),
            "the server saw the handshake fail: {served:?}"
        );
    }
}

#[test]
fn test_tls_device_without_or_with_a_stranger_certificate_is_refused() {
    let pki = pki();
    for identity in [None, Some(&pki.stranger)] {
        let (device, served) = refused(
            ServerSetup::new(&pki.server, Some(&pki.ca), None),
            &pki.ca,
            identity,
            NAME,
        );
        assert!(device.is_err(), "the device got in: {device:?}");
        let why = served.expect_err("the server refused");
        assert!(
            why.contains("certificate") || why.contains("Certificate"),
            "the server's reason: {why}"
        );
    }
}

#[test]
fn test_tls_small_record_buffer_needs_a_server_that_caps_its_records() {
    let pki = pki();
    // 4 KiB of plaintext per record, plus the record's overhead.
    let small = 4096 + 256;
    let capped = ServerSetup::new(&pki.server, None, Some(4096));
    let echoed = run_pair(Faults::default(), limit(), async |a, b, _| {
        let mut buffers = DeviceBuffers::new(small);
        let device = device(
            a,
            &mut buffers,
            &pki.ca,
            None,
            NAME,
            timeouts(),
            async |c| {
                echo_whole(c, &pattern(100_000, 1)).await;
            },
        );
        let (served, device) = join(capped.echo_one(b, None), device).await;
        device.expect("small records fit the small buffer");
        served
    });
    assert_eq!(echoed, Ok(1));

    // Against a server that sends full records, the same buffer fails with
    // an error (never a panic or a wrong message) once a record is larger.
    let uncapped = ServerSetup::new(&pki.server, None, None);
    run_pair(Faults::default(), limit(), async |a, b, _| {
        let mut buffers = DeviceBuffers::new(small);
        let device = device(
            a,
            &mut buffers,
            &pki.ca,
            None,
            NAME,
            timeouts(),
            async |c| {
                c.transmit(&pattern(100_000, 1)).await.expect("transmit");
                let mut buf = vec![0u8; 100_000];
                c.receive(&mut buf).await.map(<[u8]>::len)
            },
        );
        let (_, device) = join(uncapped.echo_one(b, None), device).await;
        let received = match device {
            Ok(r) => r,
            Err(e) => Err(e),
        };
        assert!(
            matches!(received, Err(Error::Io(NetError::Tls(_)))),
            "a full record in a small buffer: {received:?}"
        );
    });
}

#[test]
fn test_tls_a_message_of_the_servers_is_seen_before_ours_goes() {
    let pki = pki();
    let server = ServerSetup::new(&pki.server, None, None);
    let pushed = pattern(3000, 7);
    run_pair(Faults::default(), limit(), async |a, b, _| {
        let mut buffers = DeviceBuffers::new(MAX_RECORD_LEN);
        let device = device(
            a,
            &mut buffers,
            &pki.ca,
            None,
            NAME,
            timeouts(),
            async |client| {
                // The server's message is in the socket, as whole records.
                Timer::after(Duration::from_millis(100)).await;
                assert!(matches!(client.connection().peer_has_begun(), Ok(true)));
                let ours = client.transmit(b"ours").await;
                assert_eq!(ours.err(), Some(Error::PeerSending));
                let mut buf = vec![0u8; 4096];
                let theirs = client
                    .receive(&mut buf)
                    .await
                    .expect("the server's message");
                assert!(theirs == pushed, "the server's message arrived changed");
                // Nothing waits now: ours goes.
                echo_whole(client, b"ours").await;
            },
        );
        let (served, device) = join(server.echo_one(b, Some(&pushed)), device).await;
        device.expect("the device's connection");
        assert_eq!(served, Ok(1));
    });
}

#[test]
fn test_tls_client_against_a_plaintext_server_fails_cleanly() {
    let pki = pki();
    run_pair(Faults::default(), limit(), async |a, b, _| {
        let plaintext_server = async {
            let (mut rx, mut tx) = ([0u8; 4096], [0u8; 4096]);
            let mut tcp = TcpSocket::new(b, &mut rx, &mut tx);
            tcp.accept(PORT).await.expect("accept");
            let mut conn = tinyproto::asynch::Connection::new(tcp);
            let mut buf = [0u8; 64];
            conn.receive(&mut buf).await.map(<[u8]>::len)
        };
        let mut buffers = DeviceBuffers::new(MAX_RECORD_LEN);
        let device = device(
            a,
            &mut buffers,
            &pki.ca,
            None,
            NAME,
            timeouts(),
            async |c| {
                let _ = c.transmit(b"plaintext?").await;
            },
        );
        let (served, device) = join(plaintext_server, device).await;
        // The server's 0xFF greeting is no TLS record (the device says so at
        // once, not at its greeting deadline); the ClientHello is no
        // greeting: both ends fail, and no message is delivered.
        assert!(
            matches!(
                device,
                Err(Error::Io(NetError::Tls(TlsError::InvalidRecord)))
            ),
            "the device: {device:?}"
        );
        assert!(
            served.is_err(),
            "the plaintext server got a message: {served:?}"
        );
    });
}

#[test]
fn test_tls_plaintext_record_injected_after_the_handshake_is_refused() {
    let pki = pki();
    let server = ServerSetup::new(&pki.server, None, None);
    run_pair(Faults::default(), limit(), async |a, b, _| {
        let injector = async {
            let (mut rx, mut tx) = ([0u8; 8192], [0u8; 8192]);
            let mut conn = server.accept(b, &mut rx, &mut tx).await.expect("accept");
            conn.transmit(b"first").await.expect("transmit");
            // What anyone on the path can write, without a key: a plaintext
            // handshake record (a Finished), which embedded-tls 0.19 would
            // parse after the handshake, and panic on.
            let mut stream = conn.into_inner();
            let mut record = vec![0x16, 0x03, 0x03, 0x00, 0x24, 0x14, 0x00, 0x00, 0x20];
            record.extend_from_slice(&[0u8; 32]);
            stream.tcp.write(&record).await.expect("write");
            stream.tcp.flush().await.expect("flush");
            Timer::after_secs(2).await;
        };
        let mut buffers = DeviceBuffers::new(MAX_RECORD_LEN);
        let device = device(
            a,
            &mut buffers,
            &pki.ca,
            None,
            NAME,
            timeouts(),
            async |c| {
                let mut buf = [0u8; 64];
                assert_eq!(c.receive(&mut buf).await.ok(), Some(&b"first"[..]));
                c.receive(&mut buf).await.map(<[u8]>::len)
            },
        );
        let (_, device) = join(injector, device).await;
        let second = device.unwrap_or_else(Err);
        assert_eq!(
            second.err(),
            Some(Error::Io(NetError::Tls(TlsError::InvalidRecord)))
        );
    });
}

#[test]
fn test_tls_transmit_dropped_mid_record_resets_at_once() {
    let pki = pki();
    let server = ServerSetup::new(&pki.server, None, None);
    let big = pattern(200_000, 3);
    run_pair(Faults::default(), limit(), async |a, b, _| {
        // Accepts the message's length, then reads nothing more for a while:
        // the device's records stop in its full socket.
        let stalling = async {
            let (mut rx, mut tx) = ([0u8; 8192], [0u8; 8192]);
            let mut conn = server.accept(b, &mut rx, &mut tx).await.expect("accept");
            let reader = conn.begin_receive(SERVER_MAX).await.map(|r| r.len());
            Timer::after_secs(3).await;
            reader
        };
        let mut buffers = DeviceBuffers::new(MAX_RECORD_LEN);
        let short = Timeouts {
            message: Duration::from_secs(1),
            ..timeouts()
        };
        let device = device(a, &mut buffers, &pki.ca, None, NAME, short, async |c| {
            let cut = select(c.transmit(&big), Timer::after_millis(300)).await;
            assert!(matches!(cut, Either::Second(())), "the transmit finished");
            // Going on would write the cut record's bytes again under its
            // nonce: the connection is reset at once instead (not after the
            // message deadline, as a retry stuck behind the stall would be).
            c.transmit(&big).await
        });
        let (announced, device) = join(stalling, device).await;
        assert_eq!(
            announced.ok(),
            Some(200_000),
            "the server accepted the length"
        );
        let again = device.expect("connected");
        assert_eq!(again.err(), Some(Error::Io(NetError::ConnectionReset)));
    });
}
