//! Against the Linux kernel's TCP: an embassy-net stack on a TAP device in a
//! network namespace this test creates, talking tinyproto both ways with the
//! std blocking driver (`tinyproto::blocking::Connection::from_std`) and with
//! the Python reference (tinyproto 3.0).
//!
//! Needs root (it creates a namespace and a TAP device); skips with a message
//! otherwise. The outer test sets the namespace up and re-runs this test
//! binary inside it (`ip netns exec`) for the inner test, which does the work.
//! Python: `$TINYPROTO_PYTHON`, else `.venv/bin/python` at the workspace root.

mod common;

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;

use common::{block_on_with, pattern};
use embassy_futures::select::{select, Either};
use embassy_net::tcp::TcpSocket;
use embassy_net::{
    Config, IpEndpoint, Ipv4Address, Ipv4Cidr, Stack, StackResources, StaticConfigV4,
};
use embassy_net_tuntap::TunTapDevice;
use embassy_time::{Duration, Instant, Timer};
use tinyproto_embassy::{
    serve, Client, Flow, Handler, Reserve, ServerConfig, Session, Slot, Socket, Timeouts,
};

const CHILD_ENV: &str = "TINYPROTO_TAP_CHILD";
const KERNEL: Ipv4Address = Ipv4Address::new(10, 77, 0, 1);
const EMBASSY: Ipv4Address = Ipv4Address::new(10, 77, 0, 2);
const SIZES: [usize; 9] = [0, 1, 4, 5, 1460, 1461, 65_536, 100_000, 262_144];

fn sh(args: &[&str]) -> io::Result<()> {
    let status = Command::new(args[0]).args(&args[1..]).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("{args:?} failed: {status}")))
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Outer test: set up the namespace, run the inner test inside it.
#[test]
fn test_tap_kernel_std_and_python_peers() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return; // we are the inner run
    }
    if !is_root() {
        eprintln!("SKIPPED test_tap_kernel_std_and_python_peers: needs root to create a network namespace and a TAP device (CI runs it as root via .ci/embassy-tap.sh)");
        return;
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("SKIPPED test_tap_kernel_std_and_python_peers: /dev/net/tun is missing");
        return;
    }
    // Skips with one line saying how to get the reference (fails under CI).
    let Some(python) = tinyproto_tests::python() else {
        return;
    };
    let ns = format!("tp-emb-{}", std::process::id());
    let setup = || -> io::Result<()> {
        sh(&["ip", "netns", "add", &ns])?;
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        sh(&[
            "ip", "netns", "exec", &ns, "ip", "tuntap", "add", "name", "tap0", "mode", "tap",
        ])?;
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "ip",
            "addr",
            "add",
            "10.77.0.1/24",
            "dev",
            "tap0",
        ])?;
        sh(&[
            "ip", "netns", "exec", &ns, "ip", "link", "set", "tap0", "up",
        ])
    };
    let set_up = setup();
    let outcome = set_up.and_then(|()| {
        let exe = std::env::current_exe()?;
        Command::new("timeout")
            .args(["180", "ip", "netns", "exec", &ns])
            .arg(exe)
            .args([
                "--exact",
                "inner_tap_run",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .env("TINYPROTO_PYTHON", python)
            .status()
    });
    let _ = sh(&["ip", "netns", "del", &ns]);
    let status = outcome.expect("namespace set-up or inner run failed");
    assert!(status.success(), "inner TAP run failed: {status}");
}

fn python_peer(args: &[&str]) -> Child {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tap_peer.py");
    // The outer run found it (and passed it down).
    let python = tinyproto_tests::python().expect("the outer run checked the Python peer");
    Command::new(python)
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the Python reference peer")
}

/// Waits for a child process without blocking the executor.
async fn wait_child(mut child: Child, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        Timer::after(Duration::from_millis(20)).await;
    }
}

/// Waits for a thread without blocking the executor.
async fn join_thread<T>(handle: thread::JoinHandle<T>, limit: Duration) -> T {
    let until = Instant::now() + limit;
    while !handle.is_finished() {
        assert!(Instant::now() < until, "peer thread did not finish in time");
        Timer::after(Duration::from_millis(10)).await;
    }
    handle.join().expect("peer thread panicked")
}

struct Echo;

impl Handler for Echo {
    async fn transmission_received(&mut self, session: &mut Session<'_, '_>, msg: &[u8]) -> Flow {
        match session.transmit(msg).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }
}

fn timeouts() -> Timeouts {
    // TAP drops a frame now and then (1 s retransmit): generous limits.
    Timeouts {
        message: Duration::from_secs(30),
        receive: None,
        idle: Some(Duration::from_secs(30)),
        ..Timeouts::DEFAULT
    }
}

/// embassy client against a tinyproto peer at `to`: echo round trips.
async fn embassy_client_round_trips(stack: Stack<'_>, to: IpEndpoint, sizes: &[usize]) {
    let (mut rx, mut tx) = (vec![0u8; 16384], vec![0u8; 16384]);
    // The peer may still be starting: retry the connect for a while, on
    // the same buffers (the socket comes back on failure).
    let mut socket = Socket::new(TcpSocket::new(stack, &mut rx, &mut tx), timeouts());
    let mut attempts = 0;
    let mut client = loop {
        match Client::connect_socket(socket, to).await {
            Ok(c) => break c,
            Err((e, back)) => {
                attempts += 1;
                assert!(attempts < 100, "connect to the kernel-side peer: {e:?}");
                socket = back;
                Timer::after(Duration::from_millis(100)).await;
            }
        }
    };
    let mut buf = vec![0u8; 1 << 20];
    for (i, &size) in sizes.iter().enumerate() {
        let msg = pattern(size, i as u8);
        client.transmit(&msg).await.unwrap();
        assert!(
            client.receive(&mut buf).await.unwrap() == &msg[..],
            "echo {i} ({size} B)"
        );
    }
    client.close().await.unwrap();
}

/// Inner test, inside the namespace (run by the outer one only).
#[test]
fn inner_tap_run() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let device = TunTapDevice::new("tap0").expect("open tap0");
    let mut resources = StackResources::<8>::new();
    let config = Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(EMBASSY, 24),
        gateway: None,
        dns_servers: Default::default(),
    });
    let (stack, mut runner) = embassy_net::new(device, config, &mut resources, 0x7A9);
    let mut server_config = ServerConfig::new(7000);
    server_config.timeouts = timeouts();
    let (mut s0rx, mut s0tx, mut s0msg) = (vec![0u8; 16384], vec![0u8; 16384], vec![0u8; 1 << 20]);
    let (mut rrx, mut rtx) = ([0u8; 64], [0u8; 64]);
    let slots = [Slot::new(&mut s0rx, &mut s0tx, &mut s0msg)];
    let scenario = async {
        stack.wait_config_up().await;
        let server = serve(
            stack,
            &server_config,
            slots,
            [Reserve::new(&mut rrx, &mut rtx)],
            [Echo],
        );
        let steps = async {
            // 1. std blocking client (kernel TCP) -> embassy server.
            let std_client = thread::spawn(|| -> usize {
                let addr: SocketAddr = "10.77.0.2:7000".parse().unwrap();
                let mut stream = None;
                for _ in 0..100 {
                    match TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)) {
                        Ok(s) => {
                            stream = Some(s);
                            break;
                        }
                        Err(_) => thread::sleep(std::time::Duration::from_millis(100)),
                    }
                }
                let stream = stream.expect("connect to the embassy server");
                stream
                    .set_read_timeout(Some(std::time::Duration::from_secs(30)))
                    .unwrap();
                stream
                    .set_write_timeout(Some(std::time::Duration::from_secs(30)))
                    .unwrap();
                let mut conn = tinyproto::blocking::Connection::from_std(stream);
                let mut buf = vec![0u8; 1 << 20];
                for (i, &size) in SIZES.iter().enumerate() {
                    let msg = pattern(size, i as u8);
                    conn.transmit(&msg).unwrap();
                    assert!(conn.receive(&mut buf).unwrap() == &msg[..], "echo {i}");
                }
                SIZES.len()
            });
            assert_eq!(
                join_thread(std_client, Duration::from_secs(60)).await,
                SIZES.len()
            );
            eprintln!(
                "tap: std client -> embassy server: {} echoes ok",
                SIZES.len()
            );

            // 2. Python reference client -> embassy server.
            let py = python_peer(&["client", "10.77.0.2", "7000"]);
            assert!(
                wait_child(py, Duration::from_secs(90)).await,
                "Python client failed"
            );
            eprintln!("tap: Python client -> embassy server ok");

            // 3. embassy client -> std blocking echo server (kernel TCP).
            let listener = TcpListener::bind("10.77.0.1:7001").unwrap();
            let std_server = thread::spawn(move || -> usize {
                let (stream, _) = listener.accept().unwrap();
                stream
                    .set_read_timeout(Some(std::time::Duration::from_secs(30)))
                    .unwrap();
                let mut conn = tinyproto::blocking::Connection::from_std(stream);
                let mut buf = vec![0u8; 1 << 20];
                let mut echoed = 0;
                loop {
                    match conn.receive(&mut buf) {
                        Ok(msg) => {
                            let msg = msg.to_vec();
                            conn.transmit(&msg).unwrap();
                            echoed += 1;
                        }
                        Err(tinyproto::Error::Closed) => return echoed,
                        Err(e) => panic!("std server: {e:?}"),
                    }
                }
            });
            embassy_client_round_trips(stack, IpEndpoint::new(KERNEL.into(), 7001), &SIZES).await;
            assert_eq!(
                join_thread(std_server, Duration::from_secs(30)).await,
                SIZES.len()
            );
            eprintln!(
                "tap: embassy client -> std server: {} echoes ok",
                SIZES.len()
            );

            // 4. embassy client -> Python reference echo server.
            let py = python_peer(&["server", "10.77.0.1", "7002"]);
            embassy_client_round_trips(stack, IpEndpoint::new(KERNEL.into(), 7002), &SIZES[..8])
                .await;
            assert!(
                wait_child(py, Duration::from_secs(30)).await,
                "Python server failed"
            );
            eprintln!("tap: embassy client -> Python server ok");
        };
        match select(server, steps).await {
            Either::First(never) => match never {},
            Either::Second(()) => {}
        }
    };
    let outcome = block_on_with(
        runner.run(),
        embassy_time::with_timeout(Duration::from_secs(150), scenario),
    );
    outcome.expect("TAP scenario timed out");
}
