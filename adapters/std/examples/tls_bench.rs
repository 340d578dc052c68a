//! What TLS costs a tinyproto-std user: handshakes per second, the echo job
//! (64 B request and reply) and 1 MiB messages, over TLS beside plaintext
//! in the same run, both ends on this crate's public API, loopback; the
//! server on a thread per connection, then on the event threads.
//!
//! ```text
//! cargo run --release -p tinyproto-std --features tls --example tls_bench
//! ```
//!
//! The certificates (ECDSA P-256, as a device's would be) are made at
//! start-up (the test helpers' `pki`, on rcgen); TLS 1.3 with rustls' default cipher suites.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tinyproto_std::rustls::pki_types::ServerName;
use tinyproto_std::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tinyproto_std::{Client, Conn, Error, EventConn, EventHandler, Handler, Server, Take};
use tinyproto_tests::pki::TestCa;

/// Sequential connections timed for the handshake rate.
const HANDSHAKES: usize = 500;
/// Connections of the echo job, each on a thread of its own.
const ECHO_CONNECTIONS: usize = 100;
/// How long the echo job runs.
const ECHO_TIME: Duration = Duration::from_secs(2);
/// 1 MiB messages sent one way, back to back.
const BIG_MESSAGES: usize = 256;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (server_tls, client_tls) = configs()?;
    println!(
        "TLS beside plaintext: tinyproto-std on both ends, loopback, release, TLS 1.3, ECDSA P-256"
    );
    // [threads plaintext, threads TLS, events plaintext, events TLS]
    let mut rows = Vec::new();
    for events in [false, true] {
        for tls in [false, true] {
            let (addr, stop, thread) = serve(events, tls.then(|| server_tls.clone()))?;
            let mut client = Client::new();
            client.set_timeout(Duration::from_secs(30));
            if tls {
                client.set_tls(client_tls.clone(), ServerName::try_from("localhost")?);
            }
            let handshakes = handshake_rate(&client, addr)?;
            let echoes = echo_rate(&client, addr)?;
            let mb = throughput(&client, addr)?;
            rows.push([handshakes, echoes, mb]);
            stop.stop();
            thread.join().map_err(|_| "server panicked")??;
        }
    }
    println!();
    println!("| measure | threads: plaintext | threads: TLS | TLS/plaintext | event threads: plaintext | event threads: TLS | TLS/plaintext |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let measures = [
        format!(
            "connections + greetings per second ({HANDSHAKES} sequential; TLS: with the handshake)"
        ),
        format!("echo job, 64 B request and reply, {ECHO_CONNECTIONS} connections, replies/s"),
        "1 MiB messages one way, back to back, MB/s".to_owned(),
    ];
    for (i, measure) in measures.iter().enumerate() {
        let [tp, tt, ep, et] = [rows[0][i], rows[1][i], rows[2][i], rows[3][i]];
        println!(
            "| {measure} | {tp:.0} | {tt:.0} | {:.2} | {ep:.0} | {et:.0} | {:.2} |",
            tt / tp,
            et / ep
        );
    }
    Ok(())
}

/// A CA, the server's certificate for `localhost`, and the client's trust.
fn configs() -> Result<(Arc<ServerConfig>, Arc<ClientConfig>), Box<dyn std::error::Error>> {
    let ca = TestCa::new("bench CA");
    let cert = ca.issue(&["localhost"], "bench server", false);
    let server = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(cert.chain(), cert.key_der())?;
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der())?;
    let client = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((Arc::new(server), Arc::new(client)))
}

/// Echoes small messages; takes large ones in chunks and drops them.
struct Bench;

impl Bench {
    fn take(len: u32) -> Take {
        if len > 64 * 1024 {
            Take::Chunks
        } else {
            Take::Whole
        }
    }
}

impl Handler for Bench {
    fn message_announced(&mut self, _conn: &Conn, len: u32) -> Take {
        Self::take(len)
    }

    fn transmission_received(&mut self, conn: &mut Conn, msg: &[u8]) -> Result<(), Error> {
        conn.transmit(msg)
    }
}

impl EventHandler for Bench {
    fn message_announced(&mut self, _conn: &EventConn, len: u32) -> Take {
        Self::take(len)
    }

    fn transmission_received(&mut self, conn: &mut EventConn, msg: &[u8]) -> Result<(), Error> {
        conn.send(msg)
    }
}

type Serving = (
    std::net::SocketAddr,
    tinyproto_std::StopHandle,
    thread::JoinHandle<std::io::Result<()>>,
);

fn serve(
    events: bool,
    tls: Option<Arc<ServerConfig>>,
) -> Result<Serving, Box<dyn std::error::Error>> {
    let mut server = Server::new();
    let addr = server.add_addr("127.0.0.1:0")?;
    if let Some(tls) = tls {
        server.set_tls(tls);
    }
    if events {
        server.set_event_handler(|| Bench);
    } else {
        server.set_conn_handler(|| Bench);
    }
    let stop = server.stop_handle();
    Ok((addr, stop, thread::spawn(move || server.start())))
}

fn handshake_rate(client: &Client, addr: std::net::SocketAddr) -> Result<f64, Error> {
    let start = Instant::now();
    for _ in 0..HANDSHAKES {
        let mut conn = client.connect(addr)?;
        // One round trip, so the server's side of the handshake is done too.
        conn.transmit(b"x")?;
        conn.receive()?;
        conn.close();
    }
    Ok(HANDSHAKES as f64 / start.elapsed().as_secs_f64())
}

fn echo_rate(
    client: &Client,
    addr: std::net::SocketAddr,
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut conns = Vec::with_capacity(ECHO_CONNECTIONS);
    for _ in 0..ECHO_CONNECTIONS {
        conns.push(client.connect(addr)?);
    }
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let done = done.clone();
            thread::spawn(move || -> Result<u64, Error> {
                let request = [0x42u8; 64];
                let mut replies = 0;
                while !done.load(Ordering::Relaxed) {
                    conn.transmit(&request)?;
                    if conn.receive()? != request {
                        return Err(Error::handler("wrong reply"));
                    }
                    replies += 1;
                }
                conn.close();
                Ok(replies)
            })
        })
        .collect();
    thread::sleep(ECHO_TIME);
    done.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in threads {
        total += t.join().map_err(|_| "client panicked")??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

fn throughput(client: &Client, addr: std::net::SocketAddr) -> Result<f64, Error> {
    let mut conn = client.connect(addr)?;
    let msg = vec![0x5Au8; 1 << 20];
    let start = Instant::now();
    let sent = conn
        .transmit_all(std::iter::repeat_n(msg.as_slice(), BIG_MESSAGES))
        .map_err(|(_, e)| e)?;
    // One small echo: everything before it has arrived.
    conn.transmit(b"end")?;
    conn.receive()?;
    let secs = start.elapsed().as_secs_f64();
    conn.close();
    Ok((sent * msg.len()) as f64 / secs / 1e6)
}
