//! `tinyproto serve` and `tinyproto send` against each other (and against
//! hand-made misbehaving peers), through the built binary, on loopback.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{pattern, run, scratch, status, Serve, WAIT};
use tinyproto_std::{Timeouts, DEFAULT_DRAIN_TIMEOUT};

#[test]
fn test_send_reply_echo_round_trip() {
    let serve = Serve::start(&["--echo"]);
    let msg = pattern(100_000);
    let out = run(&["send", &serve.addr(), "--reply"], &msg);
    assert_eq!(out.code, status::OK, "{}", out.stderr);
    assert!(out.stdout == msg, "echo differs from what was sent");
    assert!(out.stderr.is_empty(), "{}", out.stderr);
}

#[test]
fn test_send_lines_without_reply_against_an_echo_server_takes_and_counts_the_echoes() {
    // The first program a user writes: no false rejection, no hang, every
    // message through, the echoes dropped and counted.
    let serve = Serve::start(&["--echo"]);
    let lines: Vec<u8> = (1..=1000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let (mut ok, mut conflicts) = (0, 0);
    for run_no in 0..20 {
        let out = run(&["send", &serve.addr(), "--lines"], &lines);
        match out.code {
            status::OK => {
                ok += 1;
                assert!(
                    out.stderr.contains("sent 1000 message(s)"),
                    "run {run_no}: {}",
                    out.stderr
                );
                assert!(
                    out.stderr
                        .contains("the peer sent 1000 message(s) back; dropped"),
                    "run {run_no}: {}",
                    out.stderr
                );
            }
            status::CONFLICT => {
                conflicts += 1;
                assert!(out.stderr.contains("use --reply"), "{}", out.stderr);
            }
            other => panic!("run {run_no}: exit {other}: {}", out.stderr),
        }
        assert!(out.stdout.is_empty(), "nothing on stdout without --reply");
    }
    eprintln!("seq 1 1000 | send --lines against serve --echo: {ok} ok, {conflicts} conflict(s) in 20 runs");
    assert_eq!(ok, 20, "every run goes through: the answers are waited for");
    // A server that never answers: no waiting per message.
    let sink = Serve::start(&["--sink"]);
    let out = run(&["send", &sink.addr(), "--lines"], &lines);
    assert_eq!(out.code, status::OK, "{}", out.stderr);
    assert!(!out.stderr.contains("back; dropped"), "{}", out.stderr);
}

#[test]
fn test_send_empty_message_round_trip() {
    let serve = Serve::start(&["--echo"]);
    let out = run(&["send", &serve.addr(), "--reply"], b"");
    assert_eq!(out.code, status::OK, "{}", out.stderr);
    assert!(out.stdout.is_empty());
    // Also from an empty file rather than stdin.
    let path = scratch("empty.bin");
    std::fs::write(&path, b"").unwrap();
    let out = run(
        &["send", &serve.addr(), path.to_str().unwrap(), "--reply"],
        b"",
    );
    assert_eq!(out.code, status::OK, "{}", out.stderr);
    assert!(out.stdout.is_empty());
}

#[test]
fn test_send_over_max_message_is_rejected_and_server_serves_on() {
    let serve = Serve::start(&["--echo", "--max-message", "10"]);
    let out = run(&["send", &serve.addr(), "--reply"], &pattern(11));
    assert_eq!(out.code, status::REJECTED, "{}", out.stderr);
    assert!(out.stderr.contains("rejected"), "{}", out.stderr);
    assert!(out.stdout.is_empty());
    // Exactly at the limit is fine, and the server is still there.
    let out = run(&["send", &serve.addr(), "--reply"], &pattern(10));
    assert_eq!(out.code, status::OK, "{}", out.stderr);
    assert_eq!(out.stdout, pattern(10));
}

#[test]
fn test_send_streams_a_file_and_a_piped_stdin_beyond_the_memory_buffer() {
    let serve = Serve::start(&["--echo", "--max-message", "16777216"]);
    // A file, read in chunks.
    let big = pattern(5 * 1024 * 1024 + 7);
    let path = scratch("five-mib.bin");
    std::fs::write(&path, &big).unwrap();
    let out = run(
        &["send", &serve.addr(), path.to_str().unwrap(), "--reply"],
        b"",
    );
    assert_eq!(out.code, status::OK, "{}", out.stderr);
    assert!(out.stdout == big, "file echo differs");
    // A pipe longer than what `send` keeps in memory (8 MiB): spilled to disk.
    let bigger = pattern(9 * 1024 * 1024 + 3);
    let out = run(&["send", &serve.addr(), "-", "--reply"], &bigger);
    assert_eq!(out.code, status::OK, "{}", out.stderr);
    assert!(out.stdout == bigger, "piped echo differs");
}

#[test]
fn test_serve_print_writes_each_message_raw_and_sink_counts() {
    let serve = Serve::start(&["--print"]);
    for part in [&b"hello "[..], b"", b"world\n"] {
        let out = run(&["send", &serve.addr()], part);
        assert_eq!(out.code, status::OK, "{}", out.stderr);
    }
    assert_eq!(serve.read_stdout(12), b"hello world\n");

    let sink = Serve::start(&["--sink"]);
    for part in [&b"abc"[..], b"", b"defgh"] {
        let out = run(&["send", &sink.addr()], part);
        assert_eq!(out.code, status::OK, "{}", out.stderr);
    }
    let (code, stderr) = sink.terminate();
    assert_eq!(code, status::OK, "{stderr}");
    assert!(
        stderr.contains("received 3 message(s), 8 byte(s)"),
        "{stderr}"
    );
}

#[test]
fn test_serve_listens_on_several_addresses_and_stops_on_sigterm() {
    let serve = Serve::start_on(&["127.0.0.1:0", "127.0.0.1:0"], &["--echo"]);
    assert_eq!(serve.addrs.len(), 2);
    assert_ne!(serve.addrs[0], serve.addrs[1]);
    for addr in serve.addrs.clone() {
        let out = run(&["send", &addr.to_string(), "--reply"], b"ping");
        assert_eq!(out.code, status::OK, "{}", out.stderr);
        assert_eq!(out.stdout, b"ping");
    }
    let addr = serve.addr;
    let started = Instant::now();
    let (code, stderr) = serve.terminate();
    assert_eq!(code, status::OK, "{stderr}");
    assert!(
        started.elapsed() < DEFAULT_DRAIN_TIMEOUT,
        "nothing to drain: the stop did not wait out the drain timeout"
    );
    // Stopped means no longer listening.
    let out = run(&["send", &addr.to_string()], b"x");
    assert_eq!(out.code, status::CONNECT, "{}", out.stderr);
}

/// Opens a connection and completes the greeting, so the server counts it.
/// True when a `read_to_end` ended because the peer closed (or reset) the
/// connection, not because our own read timeout ran out.
fn closed_by_peer(read: &std::io::Result<usize>) -> bool {
    match read {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn greeted(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&[0xFF]).unwrap();
    let mut b = [0u8];
    s.read_exact(&mut b).unwrap();
    assert_eq!(b[0], 0xFF);
    s
}

#[test]
fn test_connection_limit_gets_0xfe_and_a_distinct_status() {
    let serve = Serve::start(&["--echo", "--max-connections", "1"]);
    let held = greeted(&serve.addr());
    let out = run(&["send", &serve.addr(), "--reply"], b"over the limit");
    assert_eq!(out.code, status::CONNECTION_LIMIT, "{}", out.stderr);
    assert!(out.stderr.contains("connection limit"), "{}", out.stderr);
    // The refused peer sees exactly the byte 0xFE and then the end.
    let mut raw = TcpStream::connect(serve.addr()).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    raw.write_all(&[0xFF]).unwrap();
    let mut got = Vec::new();
    let _ = raw.read_to_end(&mut got);
    assert_eq!(got, [0xFE]);
    // Once the held connection ends, there is room again.
    drop(held);
    let deadline = Instant::now() + WAIT;
    loop {
        let out = run(&["send", &serve.addr(), "--reply"], b"room");
        if out.code == status::OK {
            assert_eq!(out.stdout, b"room");
            break;
        }
        assert_eq!(out.code, status::CONNECTION_LIMIT, "{}", out.stderr);
        assert!(Instant::now() < deadline, "the slot was never freed");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn test_bad_addresses_exit_with_could_not_connect() {
    // A port nobody listens on (just freed).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for addr in [
        format!("127.0.0.1:{port}"),
        "no-such-host.invalid:7000".to_owned(),
        "not an address".to_owned(),
    ] {
        let out = run(&["send", &addr], b"x");
        assert_eq!(out.code, status::CONNECT, "{addr}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
    }
    let out = run(&["serve", "--listen", "256.1.1.1:0"], b"");
    assert_eq!(out.code, status::CONNECT, "{}", out.stderr);
    let out = run(&["send"], b"");
    assert_eq!(out.code, status::USAGE, "{}", out.stderr);
    let out = run(&["send", "127.0.0.1:1", "/no/such/file"], b"");
    assert_eq!(out.code, status::OTHER, "{}", out.stderr);
}

/// A listener whose every connection gets `answer` (if any) and is then
/// left open until the test ends.
fn fake_peer(answer: Option<u8>) -> (String, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        if let Some(byte) = answer {
            let _ = s.write_all(&[byte]);
        }
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    (addr, handle)
}

#[test]
fn test_timeout_when_the_peer_never_answers() {
    let (addr, peer) = fake_peer(None);
    let started = Instant::now();
    let out = run(&["send", &addr, "--timeout", "0.5"], b"anyone?");
    assert_eq!(out.code, status::TIMEOUT, "{}", out.stderr);
    assert!(
        started.elapsed() < Timeouts::default().greeting,
        "the given timeout ran out, not the default one"
    );
    peer.join().unwrap();
}

#[test]
fn test_protocol_error_on_a_wrong_greeting_byte() {
    let (addr, peer) = fake_peer(Some(0x42));
    let out = run(&["send", &addr, "--timeout", "10"], b"hello");
    assert_eq!(out.code, status::PROTOCOL, "{}", out.stderr);
    assert!(out.stderr.contains("0x42"), "{}", out.stderr);
    peer.join().unwrap();
}

#[test]
fn test_reply_that_never_comes_times_out() {
    // The sink takes the message and never replies.
    let serve = Serve::start(&["--sink"]);
    let started = Instant::now();
    let out = run(&["send", &serve.addr(), "--reply", "--timeout", "1"], b"x");
    assert_eq!(out.code, status::TIMEOUT, "{}", out.stderr);
    assert!(
        started.elapsed() < Timeouts::default().receive,
        "the given timeout ran out, not the default one"
    );
}

#[test]
fn test_protocol_error_when_the_peer_closes_instead_of_answering() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let peer = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&[0xFF]).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        // The greeting and the length, then a close instead of the status.
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
        assert_eq!(b, [0xFF, 0, 0, 0, 5]);
    });
    let out = run(&["send", &addr, "--timeout", "10"], b"hello");
    assert_eq!(out.code, status::PROTOCOL, "{}", out.stderr);
    peer.join().unwrap();
}

/// 1,000 connections open at once on one `serve --echo`, each echoing a
/// message of its own: zero errors.
#[test]
fn test_thousand_concurrent_connections_echo_without_errors() {
    const CONNS: usize = 1000;
    let serve = Serve::start(&["--echo"]);
    let addr = serve.addr();
    // Connect one after the other (a thousand connects at once overflow the
    // listen backlog and wait out SYN retransmissions), then talk at once.
    let streams: Vec<TcpStream> = (0..CONNS)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    let barrier = Arc::new(Barrier::new(CONNS));
    let mut threads = Vec::new();
    for (i, stream) in streams.into_iter().enumerate() {
        let barrier = Arc::clone(&barrier);
        let t = thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || -> Result<(), String> {
                let run = || -> Result<(), tinyproto::Error<std::io::Error>> {
                    stream.set_read_timeout(Some(WAIT))?;
                    stream.set_write_timeout(Some(WAIT))?;
                    let mut conn = tinyproto::blocking::Connection::from_std(stream);
                    let greeted = conn.greet();
                    // Every connection is up before any message moves.
                    barrier.wait();
                    greeted?;
                    let mut buf = [0u8; 64];
                    for round in 0..3u8 {
                        let msg = format!("conn {i} round {round}");
                        conn.transmit(msg.as_bytes())?;
                        let reply = conn.receive(&mut buf)?;
                        if reply != msg.as_bytes() {
                            return Err(tinyproto::Error::Broken);
                        }
                    }
                    Ok(())
                };
                run().map_err(|e| format!("conn {i}: {e}"))
            })
            .unwrap();
        threads.push(t);
    }
    let errors: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap().err())
        .collect();
    assert!(
        errors.is_empty(),
        "{} errors, first: {}",
        errors.len(),
        errors[0]
    );
}

#[test]
fn test_bench_json_lines_have_the_contract_shape() {
    let out = run(
        &[
            "bench",
            "--size",
            "64",
            "--count",
            "200",
            "--connections",
            "2",
            "--json",
        ],
        b"",
    );
    assert_eq!(out.code, status::OK, "{}", out.stderr);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (line, case) in lines.iter().zip(["raw", "tinyproto"]) {
        let prefix = format!(
            "{{\"case\": \"{case}\", \"size\": 64, \"count\": 200, \"connections\": 2, \"msgs_per_s\": "
        );
        assert!(line.starts_with(&prefix), "{line}");
        let rest = &line[prefix.len()..];
        let (msgs, rest) = rest.split_once(", \"mb_per_s\": ").expect(line);
        let mb = rest.strip_suffix('}').expect(line);
        let msgs: f64 = msgs.parse().unwrap();
        let mb: f64 = mb.parse().unwrap();
        assert!(msgs > 0.0);
        assert!((mb - msgs * 64.0 / 1e6).abs() < 0.01, "{line}");
    }
}

#[test]
fn test_bench_table_has_both_cases_and_a_ratio() {
    let out = run(&["bench", "--size", "100000", "--count", "20"], b"");
    assert_eq!(out.code, status::OK, "{}", out.stderr);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].contains("msgs/s") && lines[0].contains("MB/s"),
        "{text}"
    );
    assert!(lines[1].starts_with("raw "), "{text}");
    assert!(lines[2].starts_with("tinyproto "), "{text}");
    let ratio: f64 = lines[2].split_whitespace().last().unwrap().parse().unwrap();
    assert!(ratio > 0.0, "{text}");
}

#[test]
fn test_sink_streams_messages_over_the_echo_limit_and_honours_max_message() {
    let sink = Serve::start(&["--sink"]);
    // Larger than the 16 MiB `--echo` holds by default: streamed, accepted.
    let path = scratch("twenty-mib.bin");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(20 << 20).unwrap();
    let out = run(&["send", &sink.addr(), path.to_str().unwrap()], b"");
    assert_eq!(out.code, status::OK, "{}", out.stderr);
    let (code, stderr) = sink.terminate();
    assert_eq!(code, status::OK, "{stderr}");
    assert!(
        stderr.contains(&format!("received 1 message(s), {} byte(s)", 20 << 20)),
        "{stderr}"
    );

    let limited = Serve::start(&["--sink", "--max-message", "10"]);
    let out = run(&["send", &limited.addr()], &pattern(11));
    assert_eq!(out.code, status::REJECTED, "{}", out.stderr);
    let out = run(&["send", &limited.addr()], &pattern(10));
    assert_eq!(out.code, status::OK, "{}", out.stderr);
    let (code, stderr) = limited.terminate();
    assert_eq!(code, status::OK, "{stderr}");
    assert!(
        stderr.contains("received 1 message(s), 10 byte(s)"),
        "{stderr}"
    );
}

#[test]
fn test_serve_timeout_closes_idle_connections_in_every_mode() {
    for mode in ["--echo", "--sink", "--print"] {
        let serve = Serve::start(&[mode, "--timeout", "1"]);
        let mut held = greeted(&serve.addr());
        let started = Instant::now();
        let mut rest = Vec::new();
        // The server closes: end of stream (or a reset), not our own wait.
        let read = held.read_to_end(&mut rest);
        let waited = started.elapsed();
        assert!(rest.is_empty(), "{mode}: {rest:?}");
        assert!(closed_by_peer(&read), "{mode}: {read:?} after {waited:?}");
        assert!(
            waited >= Duration::from_millis(500),
            "{mode}: closed after {waited:?}, before its idle timeout"
        );
    }
}

#[test]
fn test_sigint_and_sigterm_stop_serve_with_open_idle_connections() {
    for (mode, signal) in [
        ("--echo", "-TERM"),
        ("--sink", "-INT"),
        ("--print", "-TERM"),
    ] {
        let serve = Serve::start(&[mode, "--max-connections", "1"]);
        let _held = greeted(&serve.addr());
        // Every mode counts against the limit.
        let out = run(&["send", &serve.addr()], b"x");
        assert_eq!(out.code, status::CONNECTION_LIMIT, "{mode}: {}", out.stderr);
        let started = Instant::now();
        let (code, stderr) = serve.signal(signal);
        assert_eq!(code, status::OK, "{mode}: {stderr}");
        assert!(
            started.elapsed() < DEFAULT_DRAIN_TIMEOUT,
            "{mode}: an idle connection ends at a stop, without a wait for the drain timeout"
        );
    }
}

#[test]
fn test_serve_timeout_closes_a_peer_stalled_inside_a_length() {
    for mode in ["--echo", "--sink"] {
        let serve = Serve::start(&[mode, "--timeout", "0.5"]);
        let mut held = greeted(&serve.addr());
        // Two of the four length bytes, then nothing.
        held.write_all(&[0, 0]).unwrap();
        let mut rest = Vec::new();
        let read = held.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{mode}: {rest:?}");
        assert!(closed_by_peer(&read), "{mode}: {read:?}");
    }
}

#[test]
fn test_send_refuses_a_file_over_the_protocol_limit_before_connecting() {
    // Sparse: 4,043,309,056 bytes, one more than a message may have.
    let path = scratch("over-protocol-max.bin");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(0xF0FF_FFFF + 1).unwrap();
    // Nobody listens there: had it connected first, the status would be 3.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run(
        &["send", &format!("127.0.0.1:{port}"), path.to_str().unwrap()],
        b"",
    );
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.code, status::OTHER, "{}", out.stderr);
    assert!(out.stderr.contains("largest message"), "{}", out.stderr);
}

#[test]
fn test_print_never_interleaves_messages_of_concurrent_connections() {
    const LEN: usize = 2 * 1024 * 1024;
    let serve = Serve::start(&["--print"]);
    let senders: Vec<_> = [b'a', b'b']
        .into_iter()
        .map(|letter| {
            let addr = serve.addr();
            thread::spawn(move || run(&["send", &addr], &vec![letter; LEN]))
        })
        .collect();
    for s in senders {
        let out = s.join().unwrap();
        assert_eq!(out.code, status::OK, "{}", out.stderr);
    }
    let printed = serve.read_stdout(2 * LEN);
    assert_eq!(printed.len(), 2 * LEN);
    let (first, second) = printed.split_at(LEN);
    assert!(
        first.iter().all(|&b| b == first[0]),
        "first message interleaved"
    );
    assert!(
        second.iter().all(|&b| b == second[0]),
        "second message interleaved"
    );
    assert_ne!(first[0], second[0]);
}
