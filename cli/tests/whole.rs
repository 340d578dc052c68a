//! Whole messages only, several per connection, rejections survived: the
//! `send` forms (`FILE...`, `--lines`), replies that break off or drip, and
//! `serve` going on after a peer's 0x00. Through the built binary, on
//! loopback, against hand-made peers where a misbehaving one is needed.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::{pattern, run, scratch, status, Serve, WAIT};

/// A hand-made server: greets, takes one message, then runs `reply` on the
/// socket.
fn peer_server(
    reply: impl FnOnce(&mut TcpStream) + Send + 'static,
) -> (String, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let peer = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(&[0xFF]).unwrap();
        let mut head = [0u8; 5];
        s.read_exact(&mut head).unwrap();
        assert_eq!(head[0], 0xFF, "the client's greeting");
        let len = u32::from_be_bytes(head[1..].try_into().unwrap()) as usize;
        s.write_all(&[0xFF]).unwrap();
        let mut msg = vec![0u8; len];
        s.read_exact(&mut msg).unwrap();
        reply(&mut s);
    });
    (addr, peer)
}

/// A reply that stops after 600 of its 1,000 bytes writes nothing to stdout.
#[test]
fn test_reply_cut_short_writes_nothing_and_exits_7() {
    let (addr, peer) = peer_server(|s| {
        s.write_all(&1000u32.to_be_bytes()).unwrap();
        let mut status = [0u8];
        s.read_exact(&mut status).unwrap();
        s.write_all(&pattern(600)).unwrap();
        // Then the connection closes.
    });
    let out = run(&["send", &addr, "--reply"], b"question");
    peer.join().unwrap();
    assert_eq!(out.code, status::PROTOCOL, "{}", out.stderr);
    assert!(
        out.stdout.is_empty(),
        "{} bytes of a partial reply on stdout",
        out.stdout.len()
    );
}

/// A reply dripping one byte every 250 ms is cut by the whole-message
/// deadline: exit 6, nothing on stdout, long before the peer would finish.
#[test]
fn test_dripping_reply_is_cut_by_the_message_deadline() {
    let (addr, peer) = peer_server(|s| {
        s.write_all(&100u32.to_be_bytes()).unwrap();
        let mut status = [0u8];
        s.read_exact(&mut status).unwrap();
        for byte in pattern(100) {
            if s.write_all(&[byte]).is_err() {
                return; // the client gave up: what we want
            }
            thread::sleep(Duration::from_millis(250));
        }
    });
    let started = Instant::now();
    let out = run(
        &[
            "send",
            &addr,
            "--reply",
            "--timeout",
            "2",
            "--message-timeout",
            "2",
        ],
        b"question",
    );
    let took = started.elapsed();
    assert_eq!(out.code, status::TIMEOUT, "{}", out.stderr);
    assert!(
        out.stdout.is_empty(),
        "{} bytes of a partial reply",
        out.stdout.len()
    );
    assert!(took < Duration::from_secs(15), "held for {took:?}");
    drop(peer); // it ends on its own once the socket is closed
}

/// Several files over one connection, each reply whole and in order, and a
/// one-line summary on stderr.
#[test]
fn test_send_several_files_replies_in_order() {
    let serve = Serve::start(&["--echo"]);
    let paths: Vec<_> = [3usize, 0, 70_000]
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let path = scratch(&format!("several-{i}"));
            std::fs::write(&path, pattern(size)).unwrap();
            path
        })
        .collect();
    let mut args = vec!["send".to_owned(), serve.addr()];
    args.extend(paths.iter().map(|p| p.to_str().unwrap().to_owned()));
    args.push("--reply".to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args, b"");
    assert_eq!(out.code, status::OK, "{}", out.stderr);
    let expected: Vec<u8> = [pattern(3), pattern(0), pattern(70_000)].concat();
    assert!(out.stdout == expected, "replies not whole and in order");
    assert!(
        out.stderr.contains("sent 3 message(s), 70003 byte(s)"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}

/// `--lines`: each line a message without its newline; each reply followed
/// by a newline.
#[test]
fn test_send_lines_from_a_pipe() {
    let serve = Serve::start(&["--echo"]);
    let out = run(
        &["send", &serve.addr(), "--lines", "--reply"],
        b"status\nreboot now\n\nlast",
    );
    assert_eq!(out.code, status::OK, "{}", out.stderr);
    assert_eq!(out.stdout, b"status\nreboot now\n\nlast\n");
    assert!(
        out.stderr.contains("sent 4 message(s), 20 byte(s)"),
        "{}",
        out.stderr
    );
}

/// The exit status is the first failure's: a rejected file among others.
#[test]
fn test_several_files_exit_with_the_first_failure() {
    let serve = Serve::start(&["--echo", "--max-message", "10"]);
    let small = scratch("first-ok");
    let big = scratch("then-too-big");
    std::fs::write(&small, b"ok").unwrap();
    std::fs::write(&big, pattern(11)).unwrap();
    let out = run(
        &[
            "send",
            &serve.addr(),
            small.to_str().unwrap(),
            big.to_str().unwrap(),
            "--reply",
        ],
        b"",
    );
    assert_eq!(out.code, status::REJECTED, "{}", out.stderr);
    assert_eq!(out.stdout, b"ok", "the first reply, whole");
}

/// `serve --echo` whose echo the peer refuses (0x00): logged, and the
/// connection goes on.
#[test]
fn test_serve_echo_goes_on_after_a_rejected_echo() {
    let serve = Serve::start(&["--echo"]);
    let mut s = TcpStream::connect(serve.addr()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&[0xFF]).unwrap();
    let mut byte = [0u8];
    s.read_exact(&mut byte).unwrap();
    for (msg, accept_echo) in [(&b"refuse me"[..], false), (&b"take me"[..], true)] {
        s.write_all(&(msg.len() as u32).to_be_bytes()).unwrap();
        s.read_exact(&mut byte).unwrap();
        assert_eq!(byte, [0xFF]);
        s.write_all(msg).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        assert_eq!(u32::from_be_bytes(len) as usize, msg.len());
        if accept_echo {
            s.write_all(&[0xFF]).unwrap();
            let mut echo = vec![0u8; msg.len()];
            s.read_exact(&mut echo).unwrap();
            assert_eq!(echo, msg, "the connection went on");
        } else {
            s.write_all(&[0x00]).unwrap();
        }
    }
}

/// `serve --print` writes a message only once whole: one that breaks off
/// prints nothing, and the next one prints.
#[test]
fn test_serve_print_drops_a_message_that_breaks_off() {
    let serve = Serve::start(&["--print"]);
    let mut s = TcpStream::connect(serve.addr()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&[0xFF]).unwrap();
    let mut byte = [0u8];
    s.read_exact(&mut byte).unwrap();
    s.write_all(&10u32.to_be_bytes()).unwrap();
    s.read_exact(&mut byte).unwrap();
    s.write_all(b"PARTIAL").unwrap();
    drop(s);
    let out = run(&["send", &serve.addr()], b"whole");
    assert_eq!(out.code, status::OK, "{}", out.stderr);
    assert_eq!(
        serve.read_stdout(5),
        b"whole",
        "nothing of the broken message"
    );
}
