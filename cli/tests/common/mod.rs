//! Helpers of the CLI tests: run the built `tinyproto` binary with every wait
//! bounded, on loopback only.

#![allow(dead_code)] // Each test file uses its own part of the helpers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// `n` bytes of `i % 251` (never a run of one byte, never all zeros), as
/// the workspace's other tests and the Python scripts make them.
pub use tinyproto_tests::pattern;

/// No single wait of a test is longer than this.
pub const WAIT: Duration = Duration::from_secs(30);

/// Exit statuses of the binary (see `tinyproto --help`).
pub mod status {
    pub const OK: i32 = 0;
    pub const OTHER: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const CONNECT: i32 = 3;
    pub const REJECTED: i32 = 4;
    pub const CONNECTION_LIMIT: i32 = 5;
    pub const TIMEOUT: i32 = 6;
    pub const PROTOCOL: i32 = 7;
    pub const CONFLICT: i32 = 8;
    pub const TLS: i32 = 9;
}

/// The binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tinyproto"))
}

/// Waits for `child` to exit, killing it (and failing) after `timeout`.
pub fn wait_exit(child: &mut Child, what: &str, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// What a finished `tinyproto send` did.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// Runs the binary with `args`, feeding `stdin`, bounded by [`WAIT`].
pub fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tinyproto");
    let mut input = child.stdin.take().expect("piped stdin");
    let data = stdin.to_vec();
    let writer = thread::spawn(move || {
        // The binary may fail before reading all of it.
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().expect("piped stdout");
    let reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let mut err = child.stderr.take().expect("piped stderr");
    let err_reader = thread::spawn(move || {
        let mut buf = String::new();
        let _ = err.read_to_string(&mut buf);
        buf
    });
    let status = wait_exit(&mut child, &format!("tinyproto {args:?}"), WAIT);
    let _ = writer.join();
    let output = Output {
        code: status.code().expect("exited, not killed by a signal"),
        stdout: reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    };
    eprintln!(
        "tinyproto {args:?} -> {} {:?} ({} bytes out)",
        output.code,
        output.stderr.trim(),
        output.stdout.len()
    );
    output
}

/// A running `tinyproto serve`, killed when dropped.
pub struct Serve {
    pub child: Child,
    /// The first listener's address, from its `listening on` line.
    pub addr: SocketAddr,
    /// Every address printed.
    pub addrs: Vec<SocketAddr>,
    /// Further stdout, chunk by chunk.
    pub stdout: Receiver<Vec<u8>>,
}

impl Serve {
    /// Starts `tinyproto serve --listen 127.0.0.1:0 ARGS...`.
    pub fn start(args: &[&str]) -> Self {
        Self::start_on(&["127.0.0.1:0"], args)
    }

    /// Starts `tinyproto serve --listen L1 --listen L2 ... ARGS...` and reads
    /// one `listening on` line per listener.
    pub fn start_on(listen: &[&str], args: &[&str]) -> Self {
        let mut cmd = bin();
        cmd.arg("serve");
        for l in listen {
            cmd.args(["--listen", l]);
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tinyproto serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines) = mpsc::channel();
        let (rest_tx, rest) = mpsc::channel();
        let expected = listen.len();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            for _ in 0..expected {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let _ = lines_tx.send(line);
            }
            let mut buf = [0u8; 64 * 1024];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if rest_tx.send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut addrs = Vec::new();
        for _ in 0..expected {
            let line = match lines.recv_timeout(WAIT) {
                Ok(line) => line,
                Err(e) => {
                    let _ = child.kill();
                    let mut err = String::new();
                    let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut err));
                    panic!("serve printed no `listening on` line ({e}); stderr: {err}");
                }
            };
            let addr = line
                .trim_end()
                .strip_prefix("listening on ")
                .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
            addrs.push(addr.parse().expect("a socket address"));
        }
        Self {
            child,
            addr: addrs[0],
            addrs,
            stdout: rest,
        }
    }

    /// `host:port` of the first listener.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Reads stdout after the `listening on` lines until it holds `want`
    /// bytes (bounded by [`WAIT`]).
    pub fn read_stdout(&self, want: usize) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        while got.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(chunk) => got.extend_from_slice(&chunk),
                Err(e) => panic!("serve stdout: {} of {want} bytes: {e}", got.len()),
            }
        }
        got
    }

    /// Sends SIGTERM (to this child, by its id) and waits for the exit.
    pub fn terminate(self) -> (i32, String) {
        self.signal("-TERM")
    }

    /// Sends `signal` (`-TERM`, `-INT`) to this child, by its id, and waits
    /// for the exit; its status and stderr.
    pub fn signal(mut self, signal: &str) -> (i32, String) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("run kill");
        assert!(killed.success());
        let status = wait_exit(&mut self.child, "serve after SIGTERM", WAIT);
        let mut err = String::new();
        let _ = self
            .child
            .stderr
            .take()
            .map(|mut s| s.read_to_string(&mut err));
        (status.code().unwrap_or(-1), err)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory for this test binary.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-tests");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}
