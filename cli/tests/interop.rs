//! The CLI against the reference Python package (`tinyproto` 3.0), both ways:
//! `tinyproto send` to a Python echo server, and a Python client to
//! `tinyproto serve`.
//!
//! Python is `$TINYPROTO_PYTHON`, else `<workspace>/.venv/bin/python`;
//! without it these tests print a skip line and pass, unless `$CI` is set.

mod common;

use common::{pattern, run, status, Serve, WAIT};
use tinyproto_tests::{python, PyProcess};

/// The reference server with an echo handler on 127.0.0.1, on a free port
/// (the reference refuses port 0 in its address check, so it is set after).
const PY_ECHO_SERVER: &str = r#"
import sys, threading
from tinyproto import TinyProtoServer, TinyProtoConnection, TinyProtoConnectionDetails

class Echo(TinyProtoConnection):
    def transmission_received(self, msg):
        self.transmit(msg)

class Server(TinyProtoServer):
    def pre_loop(self):
        host, port = self.listen_socks[0].getsockname()[:2]
        print(f"listening on {host}:{port}", flush=True)

# The reference ends each connection thread with an exception when its peer
# closes; one line instead of a traceback.
threading.excepthook = lambda a: print(f"[py server] {a.exc_type.__name__}: {a.exc_value}", file=sys.stderr)
details = TinyProtoConnectionDetails("127.0.0.1", 1)
details.socket_connect_details = ("127.0.0.1", 0)
Server(listen_addresses=[details], connection_handler=Echo).start()
"#;

/// The reference client: echo round trips, then a message over the server's
/// limit, then one more message on the same connection.
const PY_CLIENT: &str = r#"
import socket, sys
from tinyproto import TinyProtoConnection, TinyProtoConnectionDetails, TinyProtoError

host, port, over = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.settimeout(20)
conn = TinyProtoConnection(socket_object=sock, socket_already_up=False,
                           remote_details=TinyProtoConnectionDetails(host, port))
conn._initialise_connection()
for msg in [b"hello from python", b"", bytes(i % 251 for i in range(300000))]:
    conn._transmit(msg)
    reply = bytes(conn._receive())
    print("echo", len(msg), "ok" if reply == msg else f"BAD {len(reply)}", flush=True)
try:
    conn._transmit(b"x" * over)
    print("over accepted", flush=True)
except TinyProtoError:
    print("over rejected", flush=True)
conn._transmit(b"again")
print("after", bytes(conn._receive()).decode(), flush=True)
sock.close()
"#;

#[test]
fn test_cli_send_to_python_echo_server() {
    let Some(python) = python() else { return };
    let mut server = PyProcess::spawn_code(&python, "python echo server", PY_ECHO_SERVER, &[]);
    let line = server.next_line(WAIT);
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_owned();
    for msg in [b"hello from rust".to_vec(), Vec::new(), pattern(1 << 20)] {
        let out = run(&["send", &addr, "--reply", "--timeout", "20"], &msg);
        assert_eq!(out.code, status::OK, "{}", out.stderr);
        assert!(out.stdout == msg, "echo of {} bytes differs", msg.len());
    }
}

#[test]
fn test_python_client_to_cli_serve() {
    let Some(python) = python() else { return };
    let serve = Serve::start(&["--echo", "--max-message", "400000"]);
    let (ip, port) = (serve.addr.ip().to_string(), serve.addr.port().to_string());
    let mut client =
        PyProcess::spawn_code(&python, "python client", PY_CLIENT, &[&ip, &port, "400001"]);
    for len in [17, 0, 300_000] {
        assert_eq!(client.next_line(WAIT), format!("echo {len} ok"));
    }
    // Over --max-message: our 0x00 is the reference's "Transmission rejected".
    assert_eq!(client.next_line(WAIT), "over rejected");
    // And the connection is still in step for the next message.
    assert_eq!(client.next_line(WAIT), "after again");
    let code = client.wait(WAIT);
    assert_eq!(code, 0, "python client: {}", client.stderr());
}

/// The reference client sends three messages and closes.
const PY_SENDER: &str = r#"
import socket, sys
from tinyproto import TinyProtoConnection, TinyProtoConnectionDetails

sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.settimeout(20)
conn = TinyProtoConnection(socket_object=sock, socket_already_up=False,
                           remote_details=TinyProtoConnectionDetails(sys.argv[1], int(sys.argv[2])))
conn._initialise_connection()
for msg in [b"one ", b"", b"two " * 50000, b"three\n"]:
    conn._transmit(msg)
print("sent", flush=True)
sock.close()
"#;

#[test]
fn test_python_client_to_cli_serve_print_streams_every_message() {
    let Some(python) = python() else { return };
    let serve = Serve::start(&["--print"]);
    let (ip, port) = (serve.addr.ip().to_string(), serve.addr.port().to_string());
    let mut client = PyProcess::spawn_code(&python, "python client", PY_SENDER, &[&ip, &port]);
    assert_eq!(client.next_line(WAIT), "sent");
    let code = client.wait(WAIT);
    assert_eq!(code, 0, "python client: {}", client.stderr());
    let mut want = b"one ".to_vec();
    want.extend(b"two ".repeat(50000));
    want.extend(b"three\n");
    assert!(
        serve.read_stdout(want.len()) == want,
        "printed bytes differ"
    );
}
