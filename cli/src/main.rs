//! `tinyproto`: talk tinyproto over TCP from the command line.
//!
//! - `tinyproto serve --listen ADDR [--listen ADDR]... [--echo | --sink | --print]
//!   [--max-connections N] [--max-message BYTES] [--memory-budget BYTES]
//!   [--timeout SECS] [--tls-cert FILE --tls-key FILE [--tls-ca FILE]]`
//! - `tinyproto send ADDR [FILE]... [--lines] [--reply] [--timeout SECS] [--message-timeout SECS]
//!   [--tls-ca FILE [--tls-cert FILE --tls-key FILE] [--tls-server-name NAME]]`
//! - `tinyproto bench [--size BYTES] [--count N] [--connections C] [--json]`
//!
//! The exit statuses are listed in [`exit`] and in `tinyproto --help`. Logs
//! go to stderr (`-v`, `-vv`, or `RUST_LOG`).

#![forbid(unsafe_code)]

mod bench;
mod exit;
mod send;
mod serve;
mod spool;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Talk tinyproto (whole messages over TCP, wire-compatible with the Python
/// `tinyproto` package) from the command line.
#[derive(Debug, Parser)]
#[command(name = "tinyproto", version, after_help = exit::HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log more to stderr: -v connections and messages, -vv every byte
    /// count [default: serve logs refused, rejected and failed
    /// connections; send only warnings]. `RUST_LOG` overrides both.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

/// Logs to stderr through `env_logger`: `RUST_LOG` if set, else by `-v`.
fn init_logging(command: &Command, verbose: u8) {
    let quiet = match command {
        // A server's log is its record of who was refused and what failed.
        Command::Serve(_) => "warn,tinyproto_std=info",
        Command::Send(_) | Command::Bench(_) => "warn",
    };
    let filter = match verbose {
        0 => quiet,
        1 => "info,tinyproto_std=debug,tinyproto=debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter))
        .format_timestamp_millis()
        .init();
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accept connections and handle every message they carry.
    #[command(after_help = exit::HELP)]
    Serve(ServeCli),
    /// Send messages over one connection (files, stdin, or stdin's lines),
    /// streaming them; optionally receive a reply to each.
    #[command(after_help = exit::HELP)]
    Send(SendCli),
    /// Measure tinyproto against raw TCP over loopback, in this one process.
    Bench(BenchCli),
}

#[derive(Debug, Args)]
#[group(id = "mode", multiple = false)]
struct ModeCli {
    /// Send every message back to its sender (the default).
    #[arg(long, group = "mode")]
    echo: bool,
    /// Count and discard every message.
    #[arg(long, group = "mode")]
    sink: bool,
    /// Write every message, raw, to stdout.
    #[arg(long, group = "mode")]
    print: bool,
}

#[derive(Debug, Args)]
struct ServeCli {
    /// Address to listen on (repeatable); port 0 picks a free port. Each
    /// listener prints `listening on <address>` on stdout.
    #[arg(long, value_name = "ADDR", required = true)]
    listen: Vec<String>,
    #[command(flatten)]
    mode: ModeCli,
    /// Serve at most N connections at once; connection N+1 gets the single
    /// byte 0xFE and is closed.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Answer 0x00 to messages longer than BYTES [default: 16777216 for
    /// --echo, which holds whole messages; the protocol's 4043309055 for
    /// --sink and --print, which stream them].
    #[arg(long, value_name = "BYTES", value_parser = parse_message_len)]
    max_message: Option<u32>,
    /// Hold at most BYTES of incoming messages at once, over all
    /// connections; a message that does not fit waits for room before it is
    /// accepted, one larger than BYTES is answered 0x00 [default: 268435456,
    /// the std adapter's].
    #[arg(long, value_name = "BYTES")]
    memory_budget: Option<u64>,
    /// Close a connection idle this long between messages, or whose greeting,
    /// any single write, or any whole message takes longer [default: the std
    /// adapter's: greeting 10 s, write 10 s, message 60 s, never idle].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    timeout: Option<Duration>,
    /// Serve over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require a client certificate signed by this CA (PEM): mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tinyproto send 127.0.0.1:7000 firmware.bin --reply > answer.bin
  tinyproto send 127.0.0.1:7000 a.json b.json c.json --reply
  printf 'status\\nreboot\\n' | tinyproto send 127.0.0.1:7000 --lines --reply")]
struct SendCli {
    /// Peer address, host:port.
    addr: String,
    /// The messages, one per file, sent in order over one connection; stdin
    /// when none is given (or `-`).
    #[arg(conflicts_with = "lines")]
    files: Vec<PathBuf>,
    /// Each line of stdin is one message, without its newline.
    #[arg(long)]
    lines: bool,
    /// After each message receive one back and write it, raw and only once
    /// whole, to stdout (under --lines followed by a newline).
    #[arg(long)]
    reply: bool,
    /// Give up when connecting, the greeting, or a wait for a reply to begin
    /// takes longer [default: connect 5 s, greeting 10 s, wait 30 s].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    timeout: Option<Duration>,
    /// Give up when one whole message, either way, takes longer from its
    /// first byte to its last (a peer dripping its reply) [default: 60 s].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    message_timeout: Option<Duration>,
    /// Connect over TLS, trusting this CA (PEM) for the server's certificate.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Present this certificate chain (PEM) to a server that asks; needs
    /// --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key", requires = "tls_ca")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The name the server's certificate must carry [default: the host of ADDR].
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,
}

impl SendCli {
    fn timeouts(&self) -> tinyproto_std::Timeouts {
        let mut t = tinyproto_std::Timeouts::default();
        if let Some(d) = self.timeout {
            t = t.with_connect(d).with_greeting(d).with_receive(d);
        }
        if let Some(d) = self.message_timeout {
            t = t.with_message(d);
        }
        t
    }
}

#[derive(Debug, Args)]
struct BenchCli {
    /// Message size in bytes [default: two runs, 64 and 1048576].
    #[arg(long, value_name = "BYTES", value_parser = parse_message_len)]
    size: Option<u32>,
    /// Messages per case, in total over all connections [default: 20000 for
    /// small messages, 1 GiB worth for large ones].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Concurrent connections, each on its own thread pair.
    #[arg(long, value_name = "C", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,
    /// One JSON object per line per case instead of the table.
    #[arg(long)]
    json: bool,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if secs.is_finite() && secs > 0.0 && secs < 1e9 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err("expected a positive number of seconds".to_owned())
    }
}

fn parse_message_len(s: &str) -> Result<u32, String> {
    let n: u64 = s.parse().map_err(|e| format!("{e}"))?;
    if n <= u64::from(tinyproto::MAX_MESSAGE_LEN) {
        Ok(n as u32)
    } else {
        Err(format!(
            "at most {} (the protocol's largest message)",
            tinyproto::MAX_MESSAGE_LEN
        ))
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version land here too, on stdout.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    init_logging(&cli.command, cli.verbose);
    let result = match cli.command {
        Command::Serve(s) => serve::run(&serve::ServeArgs {
            listen: s.listen,
            mode: if s.mode.sink {
                serve::Mode::Sink
            } else if s.mode.print {
                serve::Mode::Print
            } else {
                serve::Mode::Echo
            },
            max_connections: s.max_connections,
            max_message: s.max_message,
            memory_budget: s.memory_budget,
            timeout: s.timeout,
            tls: tls::TlsFiles {
                cert: s.tls_cert,
                key: s.tls_key,
                ca: s.tls_ca,
            },
        }),
        Command::Send(s) => send::run(&send::SendArgs {
            timeouts: s.timeouts(),
            addr: s.addr,
            files: s.files,
            lines: s.lines,
            reply: s.reply,
            tls: tls::TlsFiles {
                cert: s.tls_cert,
                key: s.tls_key,
                ca: s.tls_ca,
            },
            tls_server_name: s.tls_server_name,
        }),
        Command::Bench(b) => bench::run(&bench::BenchArgs {
            size: b.size,
            count: b.count,
            connections: b.connections,
            json: b.json,
        }),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(failure) => {
            eprintln!("tinyproto: {failure}");
            failure.code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn test_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_parse_secs_rejects_nonsense() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("nan").is_err());
    }

    #[test]
    fn test_parse_message_len_caps_at_protocol_max() {
        assert_eq!(parse_message_len("4043309055"), Ok(0xF0FF_FFFF));
        assert!(parse_message_len("4043309056").is_err());
    }

    #[test]
    fn test_serve_modes_are_exclusive() {
        let err = Cli::try_parse_from(["tinyproto", "serve", "--listen", "x", "--echo", "--sink"]);
        assert!(err.is_err());
        let ok = Cli::try_parse_from(["tinyproto", "serve", "--listen", "a", "--listen", "b"]);
        let Command::Serve(s) = ok.unwrap().command else {
            panic!("not serve")
        };
        assert_eq!(s.listen, ["a", "b"]);
    }
}
