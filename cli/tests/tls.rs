//! The CLI over TLS: `serve --tls-*` and `send --tls-*` against each other
//! (plain and mutual TLS, and each way a handshake fails: exit 9), and
//! against another TLS stack, Python's `ssl` module (OpenSSL), both ways.
//! Certificates are made at test time.

mod common;

use std::path::PathBuf;

use common::{pattern, run, scratch, status, Serve, WAIT};
use tinyproto_tests::pki::TestCa;
use tinyproto_tests::{python, PyProcess};

/// PEM files of a test CA and of what it signs, in this test's scratch
/// directory.
struct Pki {
    dir: String,
    ca: TestCa,
}

impl Pki {
    fn new(name: &str) -> Self {
        let pki = Self {
            dir: name.to_owned(),
            ca: TestCa::new(&format!("{name} CA")),
        };
        std::fs::write(pki.path("ca.pem"), pki.ca.cert_pem()).unwrap();
        pki
    }

    fn path(&self, file: &str) -> PathBuf {
        scratch(&format!("{}-{file}", self.dir))
    }

    fn ca(&self) -> String {
        self.path("ca.pem").to_string_lossy().into_owned()
    }

    /// A certificate for `localhost` (and 127.0.0.1) named `who`: its cert
    /// and key files.
    fn issue(&self, who: &str) -> (String, String) {
        let issued = self.ca.issue(&["localhost", "127.0.0.1"], who, false);
        let (cert, key) = (
            self.path(&format!("{who}.pem")),
            self.path(&format!("{who}.key")),
        );
        std::fs::write(&cert, issued.cert_pem()).unwrap();
        std::fs::write(&key, issued.key_pem()).unwrap();
        (
            cert.to_string_lossy().into_owned(),
            key.to_string_lossy().into_owned(),
        )
    }
}

/// `send ADDR --reply --tls-ca CA [--tls-cert C --tls-key K]` of `msg`.
fn send_tls(addr: &str, ca: &str, client: Option<&(String, String)>, msg: &[u8]) -> common::Output {
    let mut args = vec!["send", addr, "--reply", "--tls-ca", ca];
    if let Some((cert, key)) = client {
        args.extend(["--tls-cert", cert, "--tls-key", key]);
    }
    run(&args, msg)
}

/// `host:port` under the name the certificates carry.
fn localhost(serve: &Serve) -> String {
    format!("localhost:{}", serve.addr.port())
}

#[test]
fn test_send_and_serve_over_tls_and_mutual_tls() {
    let servers = Pki::new("servers");
    let devices = Pki::new("devices");
    let (cert, key) = servers.issue("server");
    let serve = Serve::start(&["--echo", "--tls-cert", &cert, "--tls-key", &key]);
    let addr = localhost(&serve);
    let ca = servers.ca();
    for msg in [b"over tls".to_vec(), Vec::new(), pattern(1 << 20)] {
        let out = send_tls(&addr, &ca, None, &msg);
        assert_eq!(out.code, status::OK, "{}", out.stderr);
        assert!(out.stdout == msg, "echo of {} bytes differs", msg.len());
    }
    // Without TLS on a TLS port: a protocol error, nothing delivered.
    let out = run(&["send", &addr, "--reply"], b"plain");
    assert_eq!(out.code, status::PROTOCOL, "{}", out.stderr);
    assert!(out.stdout.is_empty());
    // A CA that did not sign the server's certificate, a wrong name.
    let out = run(&["send", &addr, "--tls-ca", &devices.ca()], b"x");
    assert_eq!(out.code, status::TLS, "{}", out.stderr);
    let out = run(
        &[
            "send",
            &addr,
            "--tls-ca",
            &ca,
            "--tls-server-name",
            "other.example",
        ],
        b"x",
    );
    assert_eq!(out.code, status::TLS, "{}", out.stderr);
    drop(serve);

    // Mutual TLS: only a device certificate signed by the device CA gets in.
    let serve = Serve::start(&[
        "--echo",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-ca",
        &devices.ca(),
    ]);
    let addr = localhost(&serve);
    let device = devices.issue("device-1");
    let out = send_tls(&addr, &ca, Some(&device), b"hello");
    assert_eq!(out.code, status::OK, "{}", out.stderr);
    assert_eq!(out.stdout, b"hello");
    let out = send_tls(&addr, &ca, None, b"no certificate");
    assert_eq!(out.code, status::TLS, "{}", out.stderr);
    let stranger = servers.issue("stranger");
    let out = send_tls(&addr, &ca, Some(&stranger), b"wrong certificate");
    assert_eq!(out.code, status::TLS, "{}", out.stderr);
    // And the server goes on.
    let out = send_tls(&addr, &ca, Some(&device), b"again");
    assert_eq!(out.code, status::OK, "{}", out.stderr);
    let (code, stderr) = serve.terminate();
    assert_eq!(code, status::OK, "{stderr}");
}

#[test]
fn test_bad_tls_files_exit_9_naming_the_file() {
    let out = run(
        &["send", "localhost:1", "--tls-ca", "/no/such/ca.pem"],
        b"x",
    );
    assert_eq!(out.code, status::TLS, "{}", out.stderr);
    assert!(out.stderr.contains("/no/such/ca.pem"), "{}", out.stderr);
    let out = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/no/cert.pem",
            "--tls-key",
            "/no/key.pem",
        ],
        b"",
    );
    assert_eq!(out.code, status::TLS, "{}", out.stderr);
    // A key without its certificate is a usage error.
    let out = run(
        &["serve", "--listen", "127.0.0.1:0", "--tls-key", "k.pem"],
        b"",
    );
    assert_eq!(out.code, status::USAGE, "{}", out.stderr);
}

/// The protocol by hand over Python's `ssl` (OpenSSL): as a client (echo
/// round trips) or as an echo server (one connection).
const PY_TLS_PEER: &str = r#"
import socket, ssl, struct, sys

def exact(s, n):
    out = b""
    while len(out) < n:
        got = s.recv(n - len(out))
        if not got:
            raise EOFError("closed")
        out += got
    return out

def greet(s):
    s.sendall(b"\xff")
    assert exact(s, 1) == b"\xff", "greeting"

def send_msg(s, m):
    s.sendall(struct.pack(">I", len(m)))
    assert exact(s, 1) == b"\xff", "status"
    s.sendall(m)

def recv_msg(s):
    n = struct.unpack(">I", exact(s, 4))[0]
    s.sendall(b"\xff")
    return exact(s, n)

mode, port, ca, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
if mode == "client":
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20), server_hostname="localhost")
    greet(s)
    for m in [b"hello from openssl", b"", bytes(i % 251 for i in range(300000))]:
        send_msg(s, m)
        print("echo", len(m), "ok" if recv_msg(s) == m else "BAD", flush=True)
    print("peer", s.version(), flush=True)
    s.close()
else:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(ca)
    l = socket.socket()
    l.bind(("127.0.0.1", 0))
    l.listen(1)
    print("listening on localhost:%d" % l.getsockname()[1], flush=True)
    conn, _ = l.accept()
    conn.settimeout(20)
    s = ctx.wrap_socket(conn, server_side=True)
    greet(s)
    try:
        while True:
            send_msg(s, recv_msg(s))
    except (EOFError, ssl.SSLError, ConnectionError):
        pass
    print("done", flush=True)
"#;

#[test]
fn test_openssl_client_to_cli_serve_tls() {
    let Some(python) = python() else { return };
    let pki = Pki::new("openssl-client");
    let (cert, key) = pki.issue("server");
    let (client_cert, client_key) = pki.issue("client");
    let serve = Serve::start(&[
        "--echo",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-ca",
        &pki.ca(),
    ]);
    let port = serve.addr.port().to_string();
    let mut client = PyProcess::spawn_code(
        &python,
        "python ssl client",
        PY_TLS_PEER,
        &["client", &port, &pki.ca(), &client_cert, &client_key],
    );
    for len in [18, 0, 300_000] {
        assert_eq!(client.next_line(WAIT), format!("echo {len} ok"));
    }
    assert!(client.next_line(WAIT).starts_with("peer TLSv1."));
    assert_eq!(client.wait(WAIT), 0, "python client: {}", client.stderr());
}

#[test]
fn test_cli_send_tls_to_openssl_server() {
    let Some(python) = python() else { return };
    let pki = Pki::new("openssl-server");
    let (cert, key) = pki.issue("server");
    let (client_cert, client_key) = pki.issue("client");
    let port = "0".to_owned();
    let mut server = PyProcess::spawn_code(
        &python,
        "python ssl server",
        PY_TLS_PEER,
        &["server", &port, &pki.ca(), &cert, &key],
    );
    let line = server.next_line(WAIT);
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_owned();
    let msgs: Vec<Vec<u8>> = vec![b"hello openssl".to_vec(), pattern(1 << 20)];
    let files: Vec<String> = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let path = scratch(&format!("openssl-msg-{i}.bin"));
            std::fs::write(&path, m).unwrap();
            path.to_string_lossy().into_owned()
        })
        .collect();
    let ca = pki.ca();
    let mut args = vec![
        "send",
        &addr,
        "--reply",
        "--tls-ca",
        &ca,
        "--tls-cert",
        &client_cert,
        "--tls-key",
        &client_key,
    ];
    args.extend(files.iter().map(String::as_str));
    let out = run(&args, b"");
    assert_eq!(out.code, status::OK, "{}", out.stderr);
    assert!(out.stdout == msgs.concat(), "the echoes, in order");
    assert_eq!(server.next_line(WAIT), "done");
    assert_eq!(server.wait(WAIT), 0, "python server: {}", server.stderr());
}

/// A server certificate that is a CA's (what `openssl req -x509` makes by
/// default) is refused with a hint at the fix.
#[test]
fn test_a_ca_certificate_served_as_its_own_gets_a_hint() {
    let pki = Pki::new("ca-as-server");
    std::fs::write(pki.path("ca.key"), pki.ca.key_pem()).unwrap();
    let key = pki.path("ca.key").to_string_lossy().into_owned();
    let serve = Serve::start(&["--echo", "--tls-cert", &pki.ca(), "--tls-key", &key]);
    let out = run(&["send", &localhost(&serve), "--tls-ca", &pki.ca()], b"x");
    assert_eq!(out.code, status::TLS, "{}", out.stderr);
    assert!(out.stderr.contains("CA:FALSE"), "{}", out.stderr);
}
