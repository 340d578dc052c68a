//! `tinyproto send`: messages over one connection, on `tinyproto-std`'s
//! client, and with `--reply` each message's reply on stdout, whole.
//!
//! - `send ADDR [FILE|-]`: one message, a file or stdin;
//! - `send ADDR FILE...`: one message per file, in order;
//! - `send ADDR --lines`: each line of stdin is a message, without its newline.
//!
//! Memory stays bounded whatever the size: a file (or stdin redirected from a
//! file) is read in chunks as it is sent; a pipe on stdin, whose length is only
//! known at its end, is held in a [`Spool`] (memory up to
//! [`IN_MEMORY`](crate::spool::IN_MEMORY), an unlinked temporary file beyond).
//! A reply is held the same way and reaches stdout only once all of it has
//! arrived: a reply that breaks off writes nothing.

use std::fs::File;
use std::io::{self, BufRead, IsTerminal, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tinyproto::MAX_MESSAGE_LEN;
use tinyproto_std::{Client, Conn, Timeouts};

use crate::exit::{self, Failure};
use crate::spool::Spool;
use crate::tls::{self, TlsFiles};

/// Without `--reply`, how long `send` waits after its first message to learn
/// whether the peer answers each message.
const FIRST_ANSWER_WAIT: Duration = Duration::from_millis(200);

/// Without `--reply`, once the peer answered, how long `send` waits for its
/// answer to each next message (a loaded peer may be slow; one that stops
/// answering costs this once, then `send` streams again).
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// Messages from this size on get a progress bar (when stderr is a terminal).
const PROGRESS_FROM: u64 = 16 * 1024 * 1024;

/// What `send` was asked to do.
#[derive(Debug)]
pub struct SendArgs {
    /// `host:port` of the peer.
    pub addr: String,
    /// One message per file, in order; stdin when empty (or `-`).
    pub files: Vec<PathBuf>,
    /// Each line of stdin is a message.
    pub lines: bool,
    /// Receive one message back after each, and write it to stdout.
    pub reply: bool,
    /// The deadlines of the connection.
    pub timeouts: Timeouts,
    /// `--tls-*`: connect over TLS (and present a certificate).
    pub tls: TlsFiles,
    /// The name the server's certificate must carry, if not the host's.
    pub tls_server_name: Option<String>,
}

/// Where a message comes from, with its length known up front.
struct Source {
    reader: Box<dyn Read>,
    len: u64,
    name: String,
}

/// What went, for the summary.
struct Totals {
    messages: u64,
    bytes: u64,
    /// Messages the peer sent without `--reply` (taken and dropped).
    dropped: u64,
    /// The peer answered our last message: wait for its answer to the next.
    answering: bool,
    start: Instant,
}

/// Runs `send`.
pub fn run(args: &SendArgs) -> Result<(), Failure> {
    // Every file is checked before anything is sent.
    let mut sources = Vec::new();
    if !args.lines {
        let files = if args.files.is_empty() {
            vec![PathBuf::from("-")]
        } else {
            args.files.clone()
        };
        for path in &files {
            let source = if path == Path::new("-") {
                open_stdin()?
            } else {
                open_file(path)?
            };
            if source.len > u64::from(MAX_MESSAGE_LEN) {
                return Err(Failure::new(
                    exit::OTHER,
                    format!(
                        "{}: {} bytes is over the protocol's largest message ({MAX_MESSAGE_LEN} bytes)",
                        source.name, source.len
                    ),
                ));
            }
            sources.push(source);
        }
    }
    let mut conn = connect(args)?;
    let mut totals = Totals {
        messages: 0,
        bytes: 0,
        dropped: 0,
        answering: false,
        start: Instant::now(),
    };
    let mut spool = Spool::new();
    let result = if args.lines {
        send_lines(&mut conn, args.reply, &mut spool, &mut totals)
    } else {
        sources.into_iter().try_for_each(|mut source| {
            transmit(&mut conn, &mut source)?;
            totals.messages += 1;
            totals.bytes += source.len;
            if args.reply {
                reply_to_stdout(&mut conn, &mut spool, false)?;
            } else {
                drop_arrived(&mut conn, &mut totals)?;
            }
            Ok(())
        })
    };
    conn.close();
    if totals.dropped > 0 {
        eprintln!(
            "tinyproto: the peer sent {} message(s) back; dropped (use --reply to see them)",
            totals.dropped
        );
    }
    if args.lines || args.files.len() > 1 {
        eprintln!(
            "tinyproto: sent {} message(s), {} byte(s) in {:.3} s",
            totals.messages,
            totals.bytes,
            totals.start.elapsed().as_secs_f64()
        );
    }
    result
}

/// Connects and greets (over TLS if asked), on the std adapter's client.
fn connect(args: &SendArgs) -> Result<Conn, Failure> {
    let addr = args.addr.as_str();
    let mut client = Client::new();
    client.set_timeouts(args.timeouts);
    if let Some((config, name)) =
        tls::client_config(&args.tls, addr, args.tls_server_name.as_deref())?
    {
        client.set_tls(config, name);
    }
    client.connect(addr).map_err(|e| match e {
        tinyproto_std::Error::Io(e) => {
            Failure::new(exit::CONNECT, format!("cannot connect to {addr}: {e}"))
        }
        e => Failure::std(e),
    })
}

/// Sends each line of stdin as a message (without its newline).
fn send_lines(
    conn: &mut Conn,
    reply: bool,
    spool: &mut Spool,
    totals: &mut Totals,
) -> Result<(), Failure> {
    for line in io::stdin().lock().split(b'\n') {
        let line = line.map_err(|e| Failure::io("stdin", e))?;
        conn.transmit(&line).map_err(Failure::std)?;
        totals.messages += 1;
        totals.bytes += line.len() as u64;
        if reply {
            reply_to_stdout(conn, spool, true)?;
        } else {
            drop_arrived(conn, totals)?;
        }
    }
    Ok(())
}

/// Without `--reply`: takes the messages the peer sent back (a server that
/// answers each message), drops and counts them. The protocol is
/// half-duplex, and a message of ours that crosses one of the peer's ends
/// the connection: so after the first message this waits up to
/// [`FIRST_ANSWER_WAIT`] to learn whether the peer answers, and while it
/// does, up to [`ANSWER_WAIT`] for each answer before the next message. A
/// peer that never answers costs the first wait only.
fn drop_arrived(conn: &mut Conn, totals: &mut Totals) -> Result<(), Failure> {
    let wait = if totals.answering {
        Some(ANSWER_WAIT)
    } else {
        (totals.messages == 1).then_some(FIRST_ANSWER_WAIT)
    };
    if let Some(wait) = wait {
        let answer = conn.try_receive(wait).map_err(Failure::std)?;
        totals.answering = answer.is_some();
        totals.dropped += u64::from(totals.answering);
    }
    while conn
        .try_receive(Duration::ZERO)
        .map_err(Failure::std)?
        .is_some()
    {
        totals.dropped += 1;
    }
    Ok(())
}

fn open_file(path: &Path) -> Result<Source, Failure> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| Failure::io(&name, e))?;
    let meta = file.metadata().map_err(|e| Failure::io(&name, e))?;
    if meta.is_file() {
        return Ok(Source {
            reader: Box::new(file),
            len: meta.len(),
            name,
        });
    }
    // A FIFO or a character device: its length is only known at its end.
    buffer_stream(Box::new(file), name)
}

fn open_stdin() -> Result<Source, Failure> {
    let name = "stdin".to_owned();
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        // Stdin redirected from a file: stream it like a file, from where it
        // stands.
        if let Ok(fd) = io::stdin().as_fd().try_clone_to_owned() {
            let mut file = File::from(fd);
            if let Ok(meta) = file.metadata() {
                if meta.is_file() {
                    let pos = file.stream_position().unwrap_or(0);
                    return Ok(Source {
                        reader: Box::new(file),
                        len: meta.len().saturating_sub(pos),
                        name,
                    });
                }
            }
        }
    }
    buffer_stream(Box::new(io::stdin()), name)
}

/// Reads a stream of unknown length to its end into a [`Spool`] (in memory
/// while small, in an unlinked temporary file beyond).
fn buffer_stream(mut input: Box<dyn Read>, name: String) -> Result<Source, Failure> {
    let spill_failed = |e| Failure::io("temporary file", e);
    let mut spool = Spool::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::io(&name, e)),
        };
        spool.write(&chunk[..n]).map_err(spill_failed)?;
    }
    let (reader, len) = spool.into_reader().map_err(spill_failed)?;
    Ok(Source { reader, len, name })
}

/// Sends one message from `source`, streamed, with a progress bar for a
/// large one on a terminal.
fn transmit(conn: &mut Conn, source: &mut Source) -> Result<(), Failure> {
    // Checked against MAX_MESSAGE_LEN before connecting.
    let len = u32::try_from(source.len).unwrap_or(u32::MAX);
    let progress = (source.len >= PROGRESS_FROM && io::stderr().is_terminal()).then(|| {
        ProgressBar::new(source.len).with_style(
            ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    });
    let name = source.name.clone();
    let mut reader: Box<dyn Read> = match &progress {
        Some(bar) => Box::new(bar.wrap_read(&mut source.reader)),
        None => Box::new(&mut source.reader),
    };
    let result = conn.transmit_from(len, &mut reader).map_err(|e| match e {
        tinyproto_std::Error::Handler(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::UnexpectedEof) =>
        {
            Failure::new(
                exit::OTHER,
                format!("{name} ended before its {len} bytes (did it shrink?)"),
            )
        }
        e => Failure::std(e),
    });
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    result
}

/// Receives one message and writes it to stdout once all of it is in.
fn reply_to_stdout(conn: &mut Conn, spool: &mut Spool, newline: bool) -> Result<(), Failure> {
    let received = conn.receive_chunked(MAX_MESSAGE_LEN, |chunk| {
        spool.write(chunk).map_err(|e| {
            tinyproto_std::Error::handler(io::Error::new(e.kind(), format!("temporary file: {e}")))
        })
    });
    if let Err(e) = received {
        spool.clear();
        return Err(Failure::std(e));
    }
    let mut out = io::stdout().lock();
    spool
        .copy_to(&mut out)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush())
        .map_err(|e| Failure::io("stdout", e))
}
