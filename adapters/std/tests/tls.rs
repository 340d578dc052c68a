//! tinyproto over TLS (feature `tls`), std to std on loopback: whole and
//! chunked messages, a rejection, the connection limit's 0xFE and the
//! peer's identity, with and without client certificates; and each way a
//! handshake can fail, a typed error on both ends while the server goes on.
//! Certificates are made here, at test time. Each server test runs twice:
//! on a thread per connection, and on the event threads.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use tinyproto_std::rustls::pki_types::ServerName;
use tinyproto_std::rustls::server::WebPkiClientVerifier;
use tinyproto_std::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tinyproto_std::{Client, Conn, Error, EventConn, EventHandler, Handler, Server, StopHandle};
use tinyproto_tests::pki::TestCa;

const LONG: Duration = Duration::from_secs(30);

/// The roots that trust `ca`.
fn roots(ca: &TestCa) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    Arc::new(roots)
}

/// A server config for `localhost` signed by `ca`; client certificates
/// signed by `client_ca` required if given.
fn server_config(ca: &TestCa, client_ca: Option<&TestCa>, expired: bool) -> Arc<ServerConfig> {
    let cert = ca.issue(&["localhost"], "test server", expired);
    let builder = ServerConfig::builder();
    let builder = match client_ca {
        Some(client_ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder(roots(client_ca))
                .build()
                .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    Arc::new(
        builder
            .with_single_cert(cert.chain(), cert.key_der())
            .unwrap(),
    )
}

/// A client config trusting `ca`, presenting a certificate of `client`'s
/// (common name `cn`) if given.
fn client_config(ca: &TestCa, client: Option<(&TestCa, &str)>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder().with_root_certificates(roots(ca));
    Arc::new(match client {
        Some((issuer, cn)) => {
            let device = issuer.issue(&["device.example"], cn, false);
            builder
                .with_client_auth_cert(device.chain(), device.key_der())
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    })
}

fn tls_client(config: Arc<ClientConfig>, name: &str) -> Client {
    let mut client = Client::new();
    client.set_timeout(LONG);
    client.set_tls(config, ServerName::try_from(name.to_owned()).unwrap());
    client
}

/// Echoes; `whoami` answers the client's common name; `big` answers 1 MiB.
/// Each connection's end goes to `ends`.
struct Tester(mpsc::Sender<String>);

impl Tester {
    /// The reply to `msg`; `identity` is the peer's.
    fn reply(msg: &[u8], identity: Option<tinyproto_std::PeerIdentity>) -> Vec<u8> {
        match msg {
            b"whoami" => identity
                .and_then(|i| i.common_name)
                .unwrap_or_default()
                .into_bytes(),
            b"big" => vec![0x5A; 1 << 20],
            other => other.to_vec(),
        }
    }

    fn ended(&self, result: &Result<(), Error>) {
        let _ = self.0.send(match result {
            Ok(()) => "ok".to_owned(),
            Err(e @ Error::Tls(_)) => format!("tls: {e}"),
            Err(e) => format!("other: {e}"),
        });
    }
}

impl Handler for Tester {
    fn transmission_received(&mut self, conn: &mut Conn, msg: &[u8]) -> Result<(), Error> {
        conn.transmit(&Self::reply(msg, conn.peer_identity()))
    }

    fn post_loop(&mut self, _conn: &mut Conn, result: &Result<(), Error>) {
        self.ended(result);
    }
}

impl EventHandler for Tester {
    fn transmission_received(&mut self, conn: &mut EventConn, msg: &[u8]) -> Result<(), Error> {
        conn.send(&Self::reply(msg, conn.peer_identity()))
    }

    fn post_loop(&mut self, _conn: &mut EventConn, result: &Result<(), Error>) {
        self.ended(result);
    }
}

/// How the server serves its connections.
#[derive(Clone, Copy)]
enum Serving {
    Threads,
    Events,
}

/// A TLS server running [`Tester`], and how each of its connections ended.
struct TlsServer {
    addr: SocketAddr,
    ends: mpsc::Receiver<String>,
    stop: StopHandle,
    thread: thread::JoinHandle<std::io::Result<()>>,
}

impl TlsServer {
    /// The next connection's end, as `Tester::post_loop` put it.
    fn end(&self) -> String {
        self.ends.recv_timeout(LONG).expect("a connection ended")
    }

    /// The next connection ended with a TLS error.
    fn assert_tls_end(&self) {
        let end = self.end();
        assert!(
            end.starts_with("tls: "),
            "the server saw a TLS error: {end}"
        );
    }

    /// Stops the server and waits for it.
    fn finish(self) {
        self.stop.stop();
        self.thread.join().unwrap().unwrap();
    }
}

/// Starts a TLS server with `config` (and `configure` for more).
fn start(
    serving: Serving,
    config: Arc<ServerConfig>,
    configure: impl FnOnce(&mut Server),
) -> TlsServer {
    let (tx, ends) = mpsc::channel();
    let mut server = Server::new();
    let addr = server.add_addr("127.0.0.1:0").unwrap();
    server.set_tls(config);
    server.set_max_message_len(2 << 20);
    match serving {
        Serving::Threads => server.set_conn_handler(move || Tester(tx.clone())),
        Serving::Events => server.set_event_handler(move || Tester(tx.clone())),
    }
    configure(&mut server);
    let stop = server.stop_handle();
    let thread = thread::spawn(move || server.start());
    TlsServer {
        addr,
        ends,
        stop,
        thread,
    }
}

/// A well-behaved TLS client still gets its echo.
fn assert_serves(addr: SocketAddr, client: &Client) {
    let mut conn = client.connect(addr).expect("served");
    conn.transmit(b"still here").unwrap();
    assert_eq!(conn.receive().unwrap(), b"still here");
    conn.close();
}

#[test]
fn test_messages_rejection_and_connection_limit_over_tls() {
    messages_rejection_and_connection_limit_over_tls(Serving::Threads);
}

#[test]
fn test_messages_rejection_and_connection_limit_over_tls_on_event_threads() {
    messages_rejection_and_connection_limit_over_tls(Serving::Events);
}

fn messages_rejection_and_connection_limit_over_tls(serving: Serving) {
    let ca = TestCa::new("test CA");
    let server = start(serving, server_config(&ca, None, false), |s| {
        s.set_connection_limit(Some(1))
    });
    let addr = server.addr;
    let client = tls_client(client_config(&ca, None), "localhost");
    let mut conn = client.connect(addr).unwrap();
    assert!(conn.is_tls());
    for size in [0usize, 1, 1000, 100_000] {
        let msg: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        conn.transmit(&msg).unwrap();
        assert_eq!(conn.receive().unwrap(), msg, "{size} bytes");
    }
    conn.transmit(b"big").unwrap();
    let mut total = 0;
    let len = conn
        .receive_chunked(u32::MAX, |chunk| {
            assert!(chunk.iter().all(|b| *b == 0x5A));
            total += chunk.len();
            Ok(())
        })
        .unwrap();
    assert_eq!((len, total), (1 << 20, 1 << 20), "chunked, whole");
    match conn.transmit(&vec![0; (2 << 20) + 1]) {
        Err(Error::Protocol(tinyproto::Error::Rejected { .. })) => {}
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(
        conn.peer_identity().and_then(|i| i.common_name).as_deref(),
        Some("test server")
    );
    // The one slot is taken: the next client reads 0xFE inside TLS.
    match client.connect(addr) {
        Err(Error::Protocol(tinyproto::Error::ConnectionLimit)) => {}
        other => panic!("expected the connection limit, got {other:?}"),
    }
    conn.transmit(b"after").unwrap();
    assert_eq!(conn.receive().unwrap(), b"after");
    conn.close();
    assert_eq!(server.end(), "ok");
    server.finish();
}

#[test]
fn test_mutual_tls_shows_the_client_identity_to_handlers() {
    mutual_tls_shows_the_client_identity_to_handlers(Serving::Threads);
}

#[test]
fn test_mutual_tls_shows_the_client_identity_to_handlers_on_event_threads() {
    mutual_tls_shows_the_client_identity_to_handlers(Serving::Events);
}

fn mutual_tls_shows_the_client_identity_to_handlers(serving: Serving) {
    let ca = TestCa::new("server CA");
    let devices = TestCa::new("device CA");
    let server = start(serving, server_config(&ca, Some(&devices), false), |_| {});
    let addr = server.addr;
    let client = tls_client(
        client_config(&ca, Some((&devices, "device 7"))),
        "localhost",
    );
    let mut conn = client.connect(addr).unwrap();
    conn.transmit(b"whoami").unwrap();
    assert_eq!(conn.receive().unwrap(), b"device 7");
    conn.close();
    assert_eq!(server.end(), "ok");

    // No client certificate, or one from another CA: refused, on both ends.
    let strangers = TestCa::new("stranger CA");
    for config in [
        client_config(&ca, None),
        client_config(&ca, Some((&strangers, "intruder"))),
    ] {
        let result = tls_client(config, "localhost")
            .connect(addr)
            .and_then(|mut conn| {
                // TLS 1.3: the server's verdict on our certificate comes with
                // its first record after the handshake.
                conn.transmit(b"x")?;
                conn.receive()
            });
        assert!(
            matches!(
                result,
                Err(Error::Tls(_)) | Err(Error::Io(_)) | Err(Error::Protocol(_))
            ),
            "refused: {result:?}"
        );
        server.assert_tls_end();
    }
    assert_serves(
        addr,
        &tls_client(
            client_config(&ca, Some((&devices, "device 8"))),
            "localhost",
        ),
    );
    server.finish();
}

#[test]
fn test_handshake_failures_are_typed_on_both_ends() {
    handshake_failures_are_typed_on_both_ends(Serving::Threads);
}

#[test]
fn test_handshake_failures_are_typed_on_both_ends_on_event_threads() {
    handshake_failures_are_typed_on_both_ends(Serving::Events);
}

fn handshake_failures_are_typed_on_both_ends(serving: Serving) {
    let ca = TestCa::new("test CA");
    let other = TestCa::new("other CA");
    let server = start(serving, server_config(&ca, None, false), |_| {});
    let addr = server.addr;
    // An untrusted CA, and a wrong server name.
    for client in [
        tls_client(client_config(&other, None), "localhost"),
        tls_client(client_config(&ca, None), "not-this-server.example"),
    ] {
        match client.connect(addr) {
            Err(Error::Tls(_)) => {}
            other => panic!("expected a TLS error, got {other:?}"),
        }
        server.assert_tls_end();
    }
    server.finish();

    // An expired server certificate.
    let server = start(serving, server_config(&ca, None, true), |_| {});
    let addr = server.addr;
    match tls_client(client_config(&ca, None), "localhost").connect(addr) {
        Err(Error::Tls(e)) => assert!(e.to_string().contains("expired"), "{e}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    server.assert_tls_end();
    server.finish();
}

#[test]
fn test_plaintext_and_tls_peers_do_not_mix() {
    plaintext_and_tls_peers_do_not_mix(Serving::Threads);
}

#[test]
fn test_plaintext_and_tls_peers_do_not_mix_on_event_threads() {
    plaintext_and_tls_peers_do_not_mix(Serving::Events);
}

fn plaintext_and_tls_peers_do_not_mix(serving: Serving) {
    let ca = TestCa::new("test CA");
    let server = start(serving, server_config(&ca, None, false), |_| {});
    let addr = server.addr;
    // A plaintext client on the TLS port: nothing of tinyproto comes back.
    let mut raw = common::raw(addr);
    raw.write_all(&[0xFF, 0, 0, 0, 1, b'x']).unwrap();
    let answer = common::read_to_close(&mut raw);
    assert!(
        !answer.starts_with(&[0xFF]),
        "no greeting in the clear: {answer:?}"
    );
    server.assert_tls_end();
    match Client::new().connect(addr) {
        Err(Error::Protocol(tinyproto::Error::UnexpectedByte { .. }))
        | Err(Error::Protocol(tinyproto::Error::Closed)) => {}
        other => panic!("a plaintext client gets a clear error, got {other:?}"),
    }
    let _ = server.end();
    assert_serves(addr, &tls_client(client_config(&ca, None), "localhost"));
    server.finish();

    // A TLS client against a plaintext server.
    let h = common::Harness::start(|_| {});
    match tls_client(client_config(&ca, None), "localhost").connect(h.addr) {
        Err(Error::Tls(_)) => {}
        other => panic!("expected a TLS error, got {other:?}"),
    }
    common::assert_serves(&h);
}

/// rustls' own errors name what failed.
#[test]
fn test_tls_error_is_not_recoverable() {
    let e = Error::Tls(rustls::Error::HandshakeNotComplete);
    assert!(!e.is_recoverable());
    assert!(e.to_string().starts_with("TLS: "));
}

/// A peer that connects to a TLS port and never starts a handshake is cut
/// by the greeting deadline, which covers the handshake.
#[test]
fn test_a_silent_peer_is_cut_by_the_greeting_deadline() {
    a_silent_peer_is_cut_by_the_greeting_deadline(Serving::Threads);
}

#[test]
fn test_a_silent_peer_is_cut_by_the_greeting_deadline_on_event_threads() {
    a_silent_peer_is_cut_by_the_greeting_deadline(Serving::Events);
}

fn a_silent_peer_is_cut_by_the_greeting_deadline(serving: Serving) {
    let ca = TestCa::new("test CA");
    let server = start(serving, server_config(&ca, None, false), |s| {
        s.set_timeouts(tinyproto_std::Timeouts::default().with_greeting(Duration::from_millis(500)))
    });
    let addr = server.addr;
    let mut silent = common::raw(addr);
    assert_eq!(
        common::read_to_close(&mut silent),
        b"",
        "closed, nothing sent"
    );
    assert_eq!(server.end(), "other: greeting deadline ran out");
    assert_serves(addr, &tls_client(client_config(&ca, None), "localhost"));
    server.finish();
}

/// Records the server's name once greeted, and its echo of `hello`.
struct TlsCaller(mpsc::Sender<(Option<String>, Vec<u8>)>, Option<String>);

impl EventHandler for TlsCaller {
    fn pre_loop(&mut self, conn: &mut EventConn) -> Result<(), Error> {
        self.1 = conn.peer_identity().and_then(|i| i.common_name);
        conn.send(b"hello")
    }

    fn transmission_received(&mut self, conn: &mut EventConn, msg: &[u8]) -> Result<(), Error> {
        let _ = self.0.send((self.1.take(), msg.to_vec()));
        conn.stop();
        Ok(())
    }
}

/// A client's connections on the event threads run TLS too: the handshake
/// within the greeting, the server's identity in the hooks; a server whose
/// certificate the client does not trust is `connect_to`'s TLS error.
#[test]
fn test_a_client_on_event_threads_speaks_tls() {
    let ca = TestCa::new("test CA");
    let server = start(Serving::Events, server_config(&ca, None, false), |_| {});
    let (tx, rx) = mpsc::channel();
    let mut client = tls_client(client_config(&ca, None), "localhost");
    client.set_event_handler(move || TlsCaller(tx.clone(), None));
    let id = client.connect_to(server.addr).expect("greeted over TLS");
    let (name, echo) = rx.recv_timeout(LONG).expect("an echo");
    assert_eq!(name.as_deref(), Some("test server"));
    assert_eq!(echo, b"hello");
    assert!(matches!(client.join(id, LONG), Some(Ok(()))));
    assert_eq!(server.end(), "ok");

    let other = TestCa::new("other CA");
    let mut stranger = tls_client(client_config(&other, None), "localhost");
    stranger.set_event_handler(|| ());
    match stranger.connect_to(server.addr) {
        Err(Error::Tls(_)) => {}
        other => panic!("expected a TLS error, got {other:?}"),
    }
    server.assert_tls_end();
    server.finish();
}

/// Answers every message with 32 MiB, and reports its end.
struct Big(mpsc::Sender<String>);

impl EventHandler for Big {
    fn transmission_received(&mut self, conn: &mut EventConn, _: &[u8]) -> Result<(), Error> {
        conn.send(&vec![0x5A; 32 << 20])
    }

    fn post_loop(&mut self, _: &mut EventConn, result: &Result<(), Error>) {
        let _ = self.0.send(format!("{result:?}"));
    }
}

/// A TLS event-thread server of [`Big`] with write timeout `write`; a
/// plain rustls client on it, greeted, with the 32 MiB reply's length read
/// and accepted.
fn big_reply_over_tls(
    write: Duration,
) -> (
    rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    mpsc::Receiver<String>,
    StopHandle,
) {
    let ca = TestCa::new("test CA");
    let (tx, ends) = mpsc::channel();
    let mut server = Server::new();
    let addr = server.add_addr("127.0.0.1:0").unwrap();
    server.set_tls(server_config(&ca, None, false));
    server.set_timeouts(tinyproto_std::Timeouts::default().with_write(write));
    server.set_event_handler(move || Big(tx.clone()));
    let stop = server.stop_handle();
    thread::spawn(move || server.start());
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(LONG)).unwrap();
    let session = rustls::ClientConnection::new(
        client_config(&ca, None),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut s = rustls::StreamOwned::new(session, tcp);
    let read = |s: &mut rustls::StreamOwned<_, _>, n: usize| {
        let mut buf = vec![0u8; n];
        std::io::Read::read_exact(s, &mut buf).unwrap();
        buf
    };
    s.write_all(&[0xFF]).unwrap();
    assert_eq!(read(&mut s, 1), [0xFF]);
    s.write_all(&1u32.to_be_bytes()).unwrap();
    assert_eq!(read(&mut s, 1), [0xFF]);
    s.write_all(b"x").unwrap();
    assert_eq!(read(&mut s, 4), (32u32 << 20).to_be_bytes());
    s.write_all(&[0xFF]).unwrap();
    (s, ends, stop)
}

/// Over TLS on the event threads, a peer that stops reading is cut by the
/// write timeout; one that reads slowly but steadily is not.
#[test]
fn test_tls_write_timeout_on_event_threads_cuts_a_stalled_peer_only() {
    let (_stalled, ends, stop) = big_reply_over_tls(Duration::from_millis(500));
    let end = ends.recv_timeout(LONG).expect("the stalled peer is cut");
    assert!(end.contains("Timeout(Write)"), "{end}");
    stop.stop();

    let (mut slow, ends, stop) = big_reply_over_tls(Duration::from_secs(2));
    for round in 0..40 {
        thread::sleep(Duration::from_millis(100));
        let mut buf = vec![0u8; 128 * 1024];
        std::io::Read::read_exact(&mut slow, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 0x5A), "round {round}");
        assert!(ends.try_recv().is_err(), "round {round}: cut while reading");
    }
    stop.stop();
}
