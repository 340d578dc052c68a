//! Exit statuses of the `tinyproto` binary and the mapping of errors onto them.
//!
//! These numbers are part of the tool's interface (scripts test them); they are
//! listed in `tinyproto --help` and in the crate README. Never renumber them.

use std::fmt;
use std::io;
use std::process::ExitCode;

/// Success.
pub const OK: u8 = 0;
/// Any other failure: a local file, stdin or stdout failed, the transport
/// failed after the connection was up, or the bench itself failed.
pub const OTHER: u8 = 1;
/// Bad command line (clap's own status).
pub const USAGE: u8 = 2;
/// The address did not resolve, or no connection could be made to it (or, for
/// `serve`, a listener could not be bound).
pub const CONNECT: u8 = 3;
/// The peer answered the message length with 0x00: it will not take it.
pub const REJECTED: u8 = 4;
/// The server is at its connection limit: it sent 0xFE instead of the greeting.
pub const CONNECTION_LIMIT: u8 = 5;
/// A deadline ran out: connecting, the greeting, a whole message, or a wait
/// for the peer (`--timeout`, `--message-timeout`).
pub const TIMEOUT: u8 = 6;
/// The peer broke the protocol: a byte the protocol does not allow there, or
/// the connection ended in the middle of an exchange or before the reply.
pub const PROTOCOL: u8 = 7;
/// The peer sent a message while we were sending ours (the protocol is
/// half-duplex): both lengths crossed, and the connection was closed.
pub const CONFLICT: u8 = 8;
/// TLS failed: a certificate or key file could not be used, or the
/// handshake failed (an untrusted or expired certificate, a wrong server
/// name, a missing client certificate, a peer that does not speak TLS).
pub const TLS: u8 = 9;

/// The text for `--help`.
pub const HELP: &str = "\
Exit status:
  0  success
  1  other failure (local file, stdin/stdout, transport error after connecting)
  2  bad command line
  3  could not connect (address does not resolve, connection refused; serve: cannot bind)
  4  rejected by the peer (it answered the length with 0x00, e.g. over its --max-message)
  5  server at its connection limit (it sent 0xFE instead of the greeting)
  6  timeout (a deadline ran out: --timeout, --message-timeout)
  7  protocol error (unexpected byte, connection ended mid-exchange or before the reply)
  8  conflict: the peer sent a message while we were sending ours (if it answers each message, use --reply)
  9  TLS failed (a --tls-* file, or the handshake: untrusted or expired certificate, wrong name, no client certificate)";

/// A failure of a command: one line for stderr and the exit status.
#[derive(Debug)]
pub struct Failure {
    /// One of the constants of this module.
    pub status: u8,
    /// What went wrong, in lowercase words.
    pub message: String,
}

impl Failure {
    /// A failure with the given status.
    pub fn new(status: u8, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A local I/O failure (`what` says on what).
    pub fn io(what: impl fmt::Display, e: io::Error) -> Self {
        Self::new(OTHER, format!("{what}: {e}"))
    }

    /// Classifies an error of a `tinyproto-std` connection.
    pub fn std(e: tinyproto_std::Error) -> Self {
        match e {
            tinyproto_std::Error::Protocol(e) => Self::protocol(e),
            tinyproto_std::Error::Timeout(deadline) => Self::new(
                TIMEOUT,
                format!("timed out: the {deadline} deadline ran out"),
            ),
            e @ tinyproto_std::Error::Tls(_) => {
                let mut message = e.to_string();
                if message.contains("CaUsedAsEndEntity") {
                    // `openssl req -x509` makes a CA certificate by default.
                    message.push_str(
                        " (the server's certificate is a CA's: serve a certificate issued by a CA, \
                         or make a self-signed one with -addext basicConstraints=critical,CA:FALSE)",
                    );
                }
                Self::new(TLS, message)
            }
            other => Self::new(OTHER, other.to_string()),
        }
    }

    /// Classifies a protocol error of a tinyproto connection.
    pub fn protocol(e: tinyproto::Error<io::Error>) -> Self {
        use tinyproto::Error;
        let status = match &e {
            Error::Io(_) | Error::TooLarge { .. } => OTHER,
            Error::Rejected { .. } => REJECTED,
            Error::ConnectionLimit => CONNECTION_LIMIT,
            Error::Conflict => CONFLICT,
            Error::Closed => {
                return Self::new(PROTOCOL, "peer closed the connection without a message");
            }
            _ => PROTOCOL,
        };
        let message = match &e {
            Error::Rejected { len } => {
                format!("rejected by peer: it answered 0x00 to a message of {len} bytes")
            }
            Error::ConnectionLimit => {
                "server is at its connection limit (it answered 0xfe)".to_owned()
            }
            Error::Conflict => "conflict: the peer sent a message while we were sending ours, \
                                and both lengths crossed; if it answers each message, use --reply"
                .to_owned(),
            other => other.to_string(),
        };
        Self::new(status, message)
    }

    /// The process exit code.
    pub fn code(&self) -> ExitCode {
        ExitCode::from(self.status)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
