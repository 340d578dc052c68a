//! What a connection's loop does with its messages: the [`Handler`] hooks
//! (the reference's `TinyProtoConnection` methods), the per-message
//! decision [`Take`], and closures as handlers ([`on_message`]).

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::conn::Conn;
use crate::error::Error;

/// How the loop takes a message whose length was announced, decided by
/// [`Handler::message_announced`] before any of its payload moves.
#[derive(Debug)]
pub enum Take {
    /// Whole, into the loop's buffer, then to
    /// [`transmission_received`](Handler::transmission_received).
    Whole,
    /// In chunks of at most 64 KiB to
    /// [`transmission_chunk`](Handler::transmission_chunk): for messages
    /// larger than memory.
    Chunks,
    /// Answer 0x00: the peer keeps its message and the connection goes on.
    Reject,
    /// Answer 0x00, and say why: the loop hands `reason` on as if a hook
    /// had returned it. A recoverable one (an [`Error::Handler`] is not;
    /// [`Error::Plugin`] is) is logged and the connection goes on; any other
    /// ends the connection with it, and [`post_loop`](Handler::post_loop)
    /// sees it.
    Refuse(Error),
}

/// The hooks of a connection loop, mirroring the reference's
/// `TinyProtoConnection` subclass methods. Every method has a default body.
///
/// Inside a hook the handler may use its connection directly:
/// [`Conn::transmit`], [`Conn::receive`] (wait for a reply without going
/// back to the loop), [`Conn::stop`], and through [`Conn::active_connections`]
/// send to other connections.
///
/// An error a hook returns ends the connection with that error
/// ([`post_loop`](Handler::post_loop) still runs) — unless the connection is
/// still in step after it ([`Error::is_recoverable`]: the peer rejected a
/// message, a plugin refused one, a `receive` wait ran out): then it is
/// logged and the loop goes on. A peer answering 0x00 is a normal outcome of
/// the protocol, not a failure. To end the connection anyway, call
/// [`Conn::stop`].
///
/// A panicking hook ends its connection with [`Error::Panicked`]; the
/// server and everyone else go on.
pub trait Handler: Send + 'static {
    /// Runs once, after the greeting, before the first message.
    fn pre_loop(&mut self, conn: &mut Conn) -> Result<(), Error> {
        let _ = conn;
        Ok(())
    }

    /// Runs after each message, and when the loop is woken for nothing else
    /// every [`loop_pass_interval`](crate::Server::set_loop_pass_interval)
    /// if one is set (by default none: an idle connection sleeps).
    fn loop_pass(&mut self, conn: &mut Conn) -> Result<(), Error> {
        let _ = conn;
        Ok(())
    }

    /// Decides how to take the next message, from its announced `len`,
    /// before any of its payload moves: [`Take::Whole`] into a buffer the
    /// loop reuses from message to message (it grows only as bytes arrive),
    /// then `transmission_received`; [`Take::Chunks`] of at most 64 KiB to
    /// `transmission_chunk`, then `transmission_complete` (not with plugins,
    /// which transform whole messages: with any registered the message is
    /// rejected); [`Take::Reject`]: 0x00, the connection goes on;
    /// [`Take::Refuse`]: 0x00 with a reason for the loop. By default:
    /// whole up to the connection's [`max_message_len`](Conn::max_message_len),
    /// rejected beyond.
    fn message_announced(&mut self, conn: &Conn, len: u32) -> Take {
        if len <= conn.max_message_len() {
            Take::Whole
        } else {
            Take::Reject
        }
    }

    /// Runs for each message taken [`Take::Whole`] (after the plugins).
    fn transmission_received(&mut self, conn: &mut Conn, msg: &[u8]) -> Result<(), Error> {
        let _ = (conn, msg);
        Ok(())
    }

    /// Receives each chunk of a message taken [`Take::Chunks`], in order. If
    /// the message breaks off, `post_loop` gets the error and
    /// `transmission_complete` never runs: discard what came.
    fn transmission_chunk(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let _ = chunk;
        Ok(())
    }

    /// Runs when the whole of a message taken [`Take::Chunks`] (`len` bytes)
    /// has arrived.
    fn transmission_complete(&mut self, conn: &mut Conn, len: u32) -> Result<(), Error> {
        let _ = (conn, len);
        Ok(())
    }

    /// Runs once when the connection ends, however it ends (the greeting
    /// failed, the peer closed, an error, a panic, a stop). `result` is
    /// `Ok(())` for a normal end: the peer closed between messages, or the
    /// loop was asked to stop.
    fn post_loop(&mut self, conn: &mut Conn, result: &Result<(), Error>) {
        let _ = (conn, result);
    }
}

/// Does nothing: messages are received and dropped.
impl Handler for () {}

/// A handler made of one closure, called for each whole message: see
/// [`on_message`].
#[derive(Debug, Clone)]
pub struct OnMessage<F>(F);

/// Makes a closure the handler, for the common cases (echo,
/// request/reply): it runs for each whole message, as
/// [`Handler::transmission_received`] would.
///
/// ```no_run
/// use tinyproto_std::{on_message, Server};
///
/// let mut server = Server::new();
/// server.add_addr("127.0.0.1:7000")?;
/// server.set_conn_handler(|| on_message(|conn, msg| conn.transmit(msg))); // echo
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn on_message<F>(f: F) -> OnMessage<F>
where
    F: FnMut(&mut Conn, &[u8]) -> Result<(), Error> + Send + 'static,
{
    OnMessage(f)
}

impl<F> Handler for OnMessage<F>
where
    F: FnMut(&mut Conn, &[u8]) -> Result<(), Error> + Send + 'static,
{
    fn transmission_received(&mut self, conn: &mut Conn, msg: &[u8]) -> Result<(), Error> {
        (self.0)(conn, msg)
    }
}

/// Runs a server or client hook; a panic is logged, not propagated.
pub(crate) fn call_hook(name: &str, hook: impl FnOnce()) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(hook)) {
        log::error!("{name} hook panicked: {}", panic_message(&*p));
    }
}

/// The message of a panic payload, when it is a string.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
