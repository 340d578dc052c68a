//! Memory of `tinyproto serve`, measured in the server's own process (a
//! child, so that no test sees another's memory): what an idle connection
//! keeps, what an announced length costs, and what the memory budget holds
//! at once. Each test prints its figure. Linux only (`/proc`): elsewhere
//! each says why it measured nothing.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// A field of `/proc/<pid>/status`, in KiB; `None` where there is no `/proc`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The server's resident memory now, and its peak so far (KiB).
fn rss(serve: &Serve) -> Option<(u64, u64)> {
    let pid = serve.child.id();
    Some((status_kib(pid, "VmRSS:")?, status_kib(pid, "VmHWM:")?))
}

/// True (after printing why) when this machine cannot measure a process's
/// memory.
fn cannot_measure(serve: &Serve) -> bool {
    if rss(serve).is_none() {
        eprintln!("SKIPPED: no /proc/<pid>/status on this system: nothing measured");
        return true;
    }
    false
}

/// Bytes waiting unread in the receive queues of the server's sockets on
/// `port` (Linux's `/proc/net/tcp*`): zero once the server has read
/// everything its peers sent.
fn unread_by_server(port: u16) -> u64 {
    let mut unread = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(queues)) = (fields.get(1), fields.get(4)) else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port != Some(port) {
                continue;
            }
            if let Some(rx) = queues.split(':').nth(1) {
                unread += u64::from_str_radix(rx, 16).unwrap_or(0);
            }
        }
    }
    unread
}

/// Waits (bounded) until the server has read everything sent to it.
fn wait_until_read(port: u16) {
    let deadline = Instant::now() + WAIT;
    while unread_by_server(port) > 0 {
        assert!(
            Instant::now() < deadline,
            "the server did not read what came"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn greet(s: &mut TcpStream) {
    s.write_all(&[0xFF]).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(b, [0xFF], "greeting");
}

/// Sends `msg` as one message, and reads the echo back in pieces, checking
/// it against `msg` without holding it.
fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(&(msg.len() as u32).to_be_bytes()).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(b, [0xFF], "accepted");
    s.write_all(msg).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    assert_eq!(u32::from_be_bytes(len) as usize, msg.len(), "echo length");
    s.write_all(&[0xFF]).unwrap();
    let mut piece = vec![0u8; 64 * 1024];
    let mut at = 0;
    while at < msg.len() {
        let n = s
            .read(&mut piece[..(msg.len() - at).min(64 * 1024)])
            .unwrap();
        assert!(n > 0, "the echo broke off at {at}");
        assert_eq!(&piece[..n], &msg[at..at + n], "echo bytes at {at}");
        at += n;
    }
}

/// 64 connections each echo one 8 MiB message, then stay open and idle:
/// the server keeps at most 64 KiB of buffers for each of them.
#[test]
fn test_idle_connections_keep_no_message_buffers() {
    const CONNS: usize = 64;
    const LEN: usize = 8 << 20;
    let serve = Serve::start(&["--echo"]);
    if cannot_measure(&serve) {
        return;
    }
    let (before, _) = rss(&serve).unwrap();
    let msg = Arc::new(pattern(LEN));
    let mut conns: Vec<TcpStream> = (0..CONNS).map(|_| connect(serve.addr)).collect();
    // Eight at a time, so that the messages overlap as a busy server's do.
    for batch in conns.chunks_mut(8) {
        thread::scope(|scope| {
            for s in batch.iter_mut() {
                let msg = msg.clone();
                scope.spawn(move || {
                    greet(s);
                    echo(s, &msg);
                    // A connection takes its next message only once it has
                    // released the last one's buffer: after this echo the
                    // server has let go of the large one.
                    echo(s, b"ping");
                });
            }
        });
    }
    let (idle, peak) = rss(&serve).unwrap();
    let per_conn = idle.saturating_sub(before) / CONNS as u64;
    eprintln!(
        "{CONNS} idle connections after one {} MiB echo each: server RSS {} -> {} MiB \
         ({per_conn} KiB per connection; peak {} MiB)",
        LEN >> 20,
        before / KIB,
        idle / KIB,
        peak / KIB
    );
    assert!(
        per_conn <= 64 + 48,
        "an idle connection holds {per_conn} KiB (at most 64 KiB of buffers, plus its thread's stack)"
    );
    drop(conns);
}

/// 1,000 connections each announce 16 MiB and send 1 KiB of it: the
/// server's memory follows the kilobyte, not the announced length. (The
/// memory budget promises the announced lengths, so it is set to hold all
/// of them here: this measures what arrives, not what the budget admits.)
#[test]
fn test_memory_follows_the_bytes_that_arrived() {
    const CONNS: usize = 1_000;
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the open-file limit");
    let budget = (CONNS as u64 * 16 * MIB).to_string();
    let serve = Serve::start(&["--echo", "--memory-budget", &budget]);
    if cannot_measure(&serve) {
        return;
    }
    let mut conns: Vec<TcpStream> = (0..CONNS).map(|_| connect(serve.addr)).collect();
    for s in &mut conns {
        greet(s);
    }
    wait_until_read(serve.addr.port());
    let (before, _) = rss(&serve).unwrap();
    for s in &mut conns {
        s.write_all(&(16u32 << 20).to_be_bytes()).unwrap();
    }
    for s in &mut conns {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(b, [0xFF], "accepted");
        s.write_all(&pattern(1024)).unwrap();
    }
    wait_until_read(serve.addr.port());
    let (after, _) = rss(&serve).unwrap();
    let per_conn = after.saturating_sub(before) / CONNS as u64;
    eprintln!(
        "{CONNS} connections, each 1 KiB into an announced 16 MiB: server RSS +{} MiB \
         ({per_conn} KiB per connection)",
        after.saturating_sub(before) / KIB
    );
    assert!(
        per_conn <= 16,
        "{per_conn} KiB per connection for 1 KiB received"
    );
    drop(conns);
}

/// 48 connections each send a 16 MiB message at the same moment: the
/// server holds at most its (default) memory budget of whole messages at
/// once; the messages that do not fit wait for their status byte, and
/// every one is echoed whole.
#[test]
fn test_memory_budget_bounds_messages_in_flight() {
    const CONNS: usize = 48;
    const LEN: usize = 16 << 20;
    const BUDGET: u64 = tinyproto_std::DEFAULT_MEMORY_BUDGET;
    let serve = Serve::start(&["--echo"]);
    if cannot_measure(&serve) {
        return;
    }
    let (before, _) = rss(&serve).unwrap();
    let msg = Arc::new(pattern(LEN));
    let start = Arc::new(Barrier::new(CONNS));
    thread::scope(|scope| {
        for _ in 0..CONNS {
            let (msg, start) = (msg.clone(), start.clone());
            let addr = serve.addr;
            scope.spawn(move || {
                let mut s = connect(addr);
                greet(&mut s);
                start.wait();
                echo(&mut s, &msg);
            });
        }
    });
    let (_, peak) = rss(&serve).unwrap();
    let grew = peak.saturating_sub(before);
    eprintln!(
        "{CONNS} connections each sending {} MiB at once, budget {} MiB: \
         server peak RSS +{} MiB (all {} MiB without a budget)",
        LEN >> 20,
        BUDGET / MIB,
        grew / KIB,
        (CONNS * LEN) >> 20
    );
    assert!(
        grew <= (BUDGET + 64 * MIB) / KIB,
        "peak RSS grew by {} MiB with a budget of {} MiB",
        grew / KIB,
        BUDGET / MIB
    );
}

/// A message larger than the whole budget is refused at once (0x00), and
/// the connection goes on.
#[test]
fn test_message_over_the_budget_is_refused_at_once() {
    let serve = Serve::start(&["--echo", "--memory-budget", "65536"]);
    let mut s = connect(serve.addr);
    greet(&mut s);
    let started = Instant::now();
    s.write_all(&(65537u32).to_be_bytes()).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(b, [0x00], "refused");
    assert!(
        started.elapsed() < WAIT / 2,
        "refused at once, not after a wait"
    );
    echo(&mut s, &pattern(65536));
}

/// A 64 MiB message to a chunked handler (`serve --sink`) streams through:
/// the server's peak memory grows by its chunk buffer, not the message.
#[test]
fn test_chunked_messages_are_never_held_whole() {
    const LEN: usize = 64 << 20;
    let serve = Serve::start(&["--sink"]);
    if cannot_measure(&serve) {
        return;
    }
    let (_, peak_before) = rss(&serve).unwrap();
    let mut s = connect(serve.addr);
    greet(&mut s);
    s.write_all(&(LEN as u32).to_be_bytes()).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(b, [0xFF], "accepted");
    let piece = pattern(64 * 1024);
    for _ in 0..LEN / piece.len() {
        s.write_all(&piece).unwrap();
    }
    wait_until_read(serve.addr.port());
    let (_, peak) = rss(&serve).unwrap();
    let grew = peak.saturating_sub(peak_before);
    eprintln!(
        "one {} MiB message to a chunked handler: server peak RSS +{grew} KiB",
        LEN >> 20
    );
    assert!(grew < 16 * KIB, "peak RSS grew by {grew} KiB");
    drop(s);
    let (code, err) = serve.terminate();
    assert_eq!(code, status::OK, "{err}");
    assert!(
        err.contains("received 1 message(s), 67108864 byte(s)"),
        "the sink counted the whole message: {err}"
    );
}
