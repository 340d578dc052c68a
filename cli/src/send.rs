//! `tinyproto send`: one message from a file or stdin, streamed, and with
//! `--reply` one message back to stdout.
//!
//! Memory stays bounded whatever the size: a file (or stdin redirected from a
//! file) is read in chunks as it is sent; a pipe on stdin, whose length is only
//! known at its end, is kept in memory up to [`SPILL_AT`] and spilled to an
//! unlinked temporary file beyond that.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use embedded_io_adapters::std::FromStd;
use tinyproto::blocking::Connection;
use tinyproto::MAX_MESSAGE_LEN;

use crate::exit::{self, Failure};
use crate::progress::Progress;

/// Size of the chunks read from the source and written to the connection.
const CHUNK: usize = 256 * 1024;
/// Stdin from a pipe is held in memory up to this many bytes.
const SPILL_AT: usize = 8 * 1024 * 1024;
/// Messages from this size on get a progress bar (when stderr is a terminal).
const PROGRESS_FROM: u64 = 16 * 1024 * 1024;

/// A tinyproto connection over a TCP stream.
pub type Conn = Connection<FromStd<TcpStream>>;

/// What `send` was asked to do.
#[derive(Debug)]
pub struct SendArgs {
    /// `host:port` of the peer.
    pub addr: String,
    /// The message; stdin when `None` or `-`.
    pub file: Option<PathBuf>,
    /// Receive one message back and write it to stdout.
    pub reply: bool,
    /// Limit on connecting and on each wait for the peer.
    pub timeout: Option<Duration>,
}

/// Where the message comes from, with its length known up front.
struct Source {
    reader: Box<dyn Read>,
    len: u64,
    name: String,
}

/// Runs `send`.
pub fn run(args: &SendArgs) -> Result<(), Failure> {
    let mut source = match &args.file {
        Some(path) if path != Path::new("-") => open_file(path)?,
        _ => open_stdin()?,
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
    let stream = connect(&args.addr, args.timeout)?;
    let mut conn = Connection::from_std(stream);
    conn.greet().map_err(Failure::protocol)?;
    transmit(&mut conn, &mut source)?;
    if args.reply {
        receive_to_stdout(&mut conn)?;
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

/// Reads a stream of unknown length to its end: in memory while small, in an
/// unlinked temporary file beyond [`SPILL_AT`].
fn buffer_stream(mut input: Box<dyn Read>, name: String) -> Result<Source, Failure> {
    let mut head = Vec::new();
    (&mut input)
        .take(SPILL_AT as u64 + 1)
        .read_to_end(&mut head)
        .map_err(|e| Failure::io(&name, e))?;
    if head.len() <= SPILL_AT {
        return Ok(Source {
            len: head.len() as u64,
            reader: Box::new(io::Cursor::new(head)),
            name,
        });
    }
    let mut spill = temp_file().map_err(|e| Failure::io("temporary file", e))?;
    spill
        .write_all(&head)
        .map_err(|e| Failure::io("temporary file", e))?;
    drop(head);
    let rest = io::copy(&mut input, &mut spill).map_err(|e| Failure::io(&name, e))?;
    let len = spill
        .seek(SeekFrom::Start(0))
        .and_then(|_| spill.metadata())
        .map_err(|e| Failure::io("temporary file", e))?
        .len();
    debug_assert!(len >= rest);
    Ok(Source {
        reader: Box::new(spill),
        len,
        name,
    })
}

/// A new read-write file that is already unlinked (on unix), so it vanishes
/// with the process.
fn temp_file() -> io::Result<File> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let path =
        std::env::temp_dir().join(format!("tinyproto-send-{}-{nanos}.tmp", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    // On unix the open file lives on without its name.
    let _ = std::fs::remove_file(&path);
    Ok(file)
}

/// Resolves `addr` and connects to the first address that answers, with the
/// socket options every part of the tool uses.
pub fn connect(addr: &str, timeout: Option<Duration>) -> Result<TcpStream, Failure> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| Failure::new(exit::CONNECT, format!("cannot resolve {addr}: {e}")))?
        .collect();
    let mut last = None;
    for a in &addrs {
        let attempt = match timeout {
            Some(t) => TcpStream::connect_timeout(a, t),
            None => TcpStream::connect(a),
        };
        match attempt {
            Ok(stream) => {
                configure(&stream, timeout)
                    .map_err(|e| Failure::io(format!("socket options on {a}"), e))?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) if exit::is_timeout(&e) => Failure::new(
            exit::TIMEOUT,
            format!("timed out connecting to {addr}: {e}"),
        ),
        Some(e) => Failure::new(exit::CONNECT, format!("cannot connect to {addr}: {e}")),
        None => Failure::new(exit::CONNECT, format!("{addr} resolves to no address")),
    })
}

/// The socket options of every connection of the tool: no Nagle delay (the
/// protocol waits for a status byte after each length), and the timeout on
/// every read and write.
pub fn configure(stream: &TcpStream, timeout: Option<Duration>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)
}

fn transmit(conn: &mut Conn, source: &mut Source) -> Result<(), Failure> {
    // Checked against MAX_MESSAGE_LEN before connecting; a larger length
    // saturates, and the core refuses it without sending anything.
    let len = u32::try_from(source.len).unwrap_or(u32::MAX);
    let mut msg = conn.begin_transmit(len).map_err(Failure::protocol)?;
    let mut progress = (source.len >= PROGRESS_FROM && io::stderr().is_terminal())
        .then(|| Progress::new(source.len));
    let mut buf = vec![0u8; CHUNK.min(len.max(1) as usize)];
    let mut sent = 0u64;
    while sent < source.len {
        let want = (source.len - sent).min(buf.len() as u64) as usize;
        let n = match source.reader.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(Failure::new(
                    exit::OTHER,
                    format!(
                        "{} ended after {sent} of {} bytes (did it shrink?)",
                        source.name, source.len
                    ),
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::io(&source.name, e)),
        };
        msg.write_all(&buf[..n]).map_err(Failure::protocol)?;
        sent += n as u64;
        if let Some(p) = progress.as_mut() {
            p.update(sent);
        }
    }
    msg.finish().map_err(Failure::protocol)?;
    if let Some(p) = progress {
        p.done();
    }
    Ok(())
}

fn receive_to_stdout(conn: &mut Conn) -> Result<(), Failure> {
    let mut msg = conn
        .begin_receive(MAX_MESSAGE_LEN)
        .map_err(Failure::protocol)?;
    let mut buf = vec![0u8; CHUNK.min((msg.len() as usize).max(1))];
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(CHUNK, stdout.lock());
    loop {
        let n = msg.read(&mut buf).map_err(Failure::protocol)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .map_err(|e| Failure::io("stdout", e))?;
    }
    out.flush().map_err(|e| Failure::io("stdout", e))
}
