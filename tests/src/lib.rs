//! Shared helpers of the cross-crate and interop tests.
//!
//! The interop tests run the reference Python package (`tinyproto==3.0`)
//! as real processes. The interpreter is `$TINYPROTO_PYTHON`, else
//! `<workspace root>/.venv/bin/python`; without one the tests print a skip
//! message and pass, unless `$CI` is set, where they fail.

pub mod pki;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tinyproto_std::{
    Conn, ConnId, Context, Error, Handler, Hooks, Plugin, PluginError, Server, StopHandle,
};

/// `n` bytes of `i % 251`, the same as `pattern()` in `python/common.py`.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The Python interpreter with `tinyproto` 3.0, or `None` (after printing
/// why) when there is none and `$CI` is not set. Panics under `$CI`.
///
/// `$TINYPROTO_PYTHON`, else `<workspace root>/.venv/bin/python`; it counts
/// only if it can `import tinyproto`.
pub fn python() -> Option<PathBuf> {
    let path = std::env::var_os("TINYPROTO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let usable = Command::new(&path)
        .args(["-c", "import tinyproto"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if usable {
        return Some(path);
    }
    let msg = format!(
        "no Python reference peer (tinyproto==3.0) at {}: run `bash .ci/python-peer.sh` \
         in the workspace root (or set TINYPROTO_PYTHON)",
        path.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set: the reference is required)");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// A Python process (a script from `tests/python/`, or code given inline),
/// killed when dropped.
pub struct PyProcess {
    child: Child,
    lines: Receiver<String>,
    /// Everything the process wrote to stderr so far (shown on failure only:
    /// the reference prints a traceback whenever a peer hangs up).
    stderr: Arc<Mutex<String>>,
    name: String,
}

impl PyProcess {
    /// Runs `tests/python/<script>` with `args`; stdout is read line by line.
    pub fn spawn(python: &Path, script: &str, args: &[&str]) -> Self {
        let dir = workspace_root().join("tests/python");
        let mut cmd = Command::new(python);
        cmd.arg("-u")
            .arg(dir.join(script))
            .args(args)
            .current_dir(&dir);
        Self::start(cmd, script)
    }

    /// Runs the Python `code` (`python -c`) with `args`, called `name` in
    /// messages; stdout is read line by line.
    pub fn spawn_code(python: &Path, name: &str, code: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new(python);
        cmd.arg("-u").arg("-c").arg(code).args(args);
        Self::start(cmd, name)
    }

    fn start(mut cmd: Command, name: &str) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                let python = cmd.get_program().to_string_lossy();
                panic!("cannot run {python} {name}: {e}")
            });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut pipe, &mut buf) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            stderr,
            name: name.to_owned(),
        }
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next stdout line, whatever it is, within `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(e) => panic!(
                "{}: no line: {e}\n--- stderr ---\n{}",
                self.name,
                self.stderr()
            ),
        }
    }

    /// The next stdout line starting with `prefix` (others are skipped),
    /// within `timeout`.
    pub fn expect_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(line) => eprintln!("[{}] {line}", self.name),
                Err(e) => panic!(
                    "{}: no line starting with {prefix:?}: {e}\n--- stderr ---\n{}",
                    self.name,
                    self.stderr()
                ),
            }
        }
    }

    /// Waits up to `timeout` for the process to exit; its exit code.
    pub fn wait(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not exit within {timeout:?}\n--- stderr ---\n{}",
                    self.name,
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a `py_client.py` run: asserts exit code 0 and returns its
    /// `PYCLIENT OK <n>` count.
    pub fn client_ok(&mut self, timeout: Duration) -> usize {
        let line = self.expect_line("PYCLIENT", timeout);
        let code = self.wait(Duration::from_secs(30));
        let stderr = self.stderr();
        assert!(
            line.starts_with("PYCLIENT OK "),
            "{line}\n--- stderr ---\n{stderr}"
        );
        assert_eq!(code, 0, "{line}\n--- stderr ---\n{stderr}");
        line["PYCLIENT OK ".len()..].trim().parse().expect("count")
    }

    /// For `py_server.py`: the address it listens on.
    pub fn server_addr(&mut self) -> SocketAddr {
        let line = self.expect_line("PORT ", Duration::from_secs(60));
        let port: u16 = line["PORT ".len()..].trim().parse().expect("port");
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

impl Drop for PyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server side of the interop scripts: echoes every message; on
/// b"req" asks the peer b"question" from inside `transmission_received`,
/// waits for the answer, and replies b"got:" + answer. Answers a
/// b"question" with b"answer".
#[derive(Debug, Default)]
pub struct EchoHandler;

impl Handler for EchoHandler {
    fn transmission_received(&mut self, conn: &mut Conn, msg: &[u8]) -> Result<(), Error> {
        match msg {
            b"req" => {
                conn.transmit(b"question")?;
                let answer = conn.receive()?;
                conn.transmit(&[b"got:".as_slice(), &answer].concat())
            }
            b"question" => conn.transmit(b"answer"),
            _ => conn.transmit(msg),
        }
    }
}

/// Counts the server's connection hooks.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// `conn_init` calls.
    pub inits: Arc<AtomicUsize>,
    /// `conn_shutdown` calls.
    pub shutdowns: Arc<AtomicUsize>,
    /// Results passed to `conn_shutdown`, rendered.
    pub results: Arc<Mutex<Vec<String>>>,
}

impl Hooks for Counts {
    fn conn_init(&mut self, _: &Context, _: ConnId, _: SocketAddr) {
        self.inits.fetch_add(1, Ordering::SeqCst);
    }

    fn conn_shutdown(&mut self, _: &Context, _: ConnId, _: SocketAddr, r: &Result<(), Error>) {
        self.results.lock().unwrap().push(format!("{r:?}"));
        self.shutdowns.fetch_add(1, Ordering::SeqCst);
    }
}

impl Counts {
    /// Waits up to `timeout` until `conn_shutdown` ran `n` times.
    pub fn wait_shutdowns(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.shutdowns.load(Ordering::SeqCst) >= n)
    }
}

/// Polls `cond` every 10 ms for up to `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Records the length of every message as it is on the wire (register it
/// after the plugins whose output it should see).
#[derive(Debug, Clone, Default)]
pub struct WireTap {
    /// Wire lengths of sent messages.
    pub sent: Arc<Mutex<Vec<usize>>>,
    /// Wire lengths of received messages.
    pub received: Arc<Mutex<Vec<usize>>>,
}

impl Plugin for WireTap {
    fn msg_transmit(&self, msg: Vec<u8>) -> Result<Vec<u8>, PluginError> {
        self.sent.lock().unwrap().push(msg.len());
        Ok(msg)
    }

    fn msg_receive(&self, msg: Vec<u8>) -> Result<Vec<u8>, PluginError> {
        self.received.lock().unwrap().push(msg.len());
        Ok(msg)
    }
}

/// A server running on its own thread; stopped and joined when dropped.
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: StopHandle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningServer {
    /// Binds `server` to 127.0.0.1:0 and starts it.
    pub fn start(mut server: Server) -> Self {
        let addr = server.add_addr("127.0.0.1:0").expect("bind");
        let stop = server.stop_handle();
        let thread = thread::spawn(move || server.start());
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the server and waits for `start` to return.
    pub fn stop(&mut self) {
        self.stop.stop();
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .expect("server thread panicked")
                .expect("server failed");
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The code blocks of the workspace README, compiled as doctests so the
/// first examples a user copies keep building.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
