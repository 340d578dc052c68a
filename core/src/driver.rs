//! The drivers' logic, written once for both of them.
//!
//! [`driver_ops!`] holds every loop around the sans-IO machines as free
//! functions over an `asynch::Connection` (a transport and a [`State`]). It is
//! expanded twice: in [`crate::asynch`] with `async fn` and `.await` over
//! `embedded_io_async::{Read, Write}`, and in [`crate::blocking`] with plain
//! `fn` and nothing over `embedded_io::{Read, Write}` (the well-known
//! "maybe-async" trick). So the blocking driver is ordinary synchronous code,
//! with no futures on its stack, and yet both drivers run the same lines and
//! keep the same cancellation and resumption contract (see `asynch`).

use crate::error::Error;
use crate::greeting::Greeting;
use crate::receive::{Receiver, RecvStep};
use crate::send::{SendStep, Sender};
use crate::wire::MAX_MESSAGE_LEN;

/// The message in flight, if any.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Idle,
    Send { tx: Sender, chunked: bool },
    Receive { rx: Receiver, chunked: bool },
}

/// Everything of a connection but its transport, so both borrow apart.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) greeting: Greeting,
    pub(crate) op: Op,
    pub(crate) max_message_len: u32,
    /// Bytes were written since the last flush: flush before waiting to read.
    pub(crate) needs_flush: bool,
    pub(crate) broken: bool,
}

impl State {
    pub(crate) const fn new() -> Self {
        Self {
            greeting: Greeting::new(),
            op: Op::Idle,
            max_message_len: MAX_MESSAGE_LEN,
            needs_flush: false,
            broken: false,
        }
    }

    pub(crate) fn usable<E>(&self) -> Result<(), Error<E>> {
        if self.broken {
            Err(Error::Broken)
        } else {
            Ok(())
        }
    }

    /// Turns a protocol error into the caller's error type, marking the
    /// connection broken when the error leaves it out of step.
    pub(crate) fn fail<E>(&mut self, e: Error) -> Error<E> {
        if !e.is_recoverable() {
            self.broken = true;
            self.op = Op::Idle;
        }
        e.into_io()
    }

    /// True when the message slot may be taken by a new operation.
    pub(crate) fn op_is_replaceable(&self) -> bool {
        match &self.op {
            Op::Idle => true,
            Op::Send { tx, .. } => tx.is_untouched() || tx.is_finished(),
            Op::Receive { rx, .. } => rx.is_untouched(),
        }
    }

    /// Resumes the send of a message of `len` bytes, or starts one.
    pub(crate) fn start_send<E>(&mut self, len: usize, chunked: bool) -> Result<(), Error<E>> {
        self.usable()?;
        if let Op::Send { tx, chunked: c } = &self.op {
            if *c == chunked && tx.len() as usize == len {
                return Ok(());
            }
        }
        if !self.op_is_replaceable() {
            return Err(Error::InProgress);
        }
        let tx = Sender::new(len).map_err(Error::into_io)?;
        self.op = Op::Send { tx, chunked };
        Ok(())
    }

    /// Resumes a receive of the same kind, or starts one.
    pub(crate) fn start_receive<E>(&mut self, chunked: bool) -> Result<(), Error<E>> {
        self.usable()?;
        if let Op::Receive { chunked: c, .. } = &self.op {
            if *c == chunked {
                return Ok(());
            }
        }
        if !self.op_is_replaceable() {
            return Err(Error::InProgress);
        }
        self.op = Op::Receive {
            rx: Receiver::new(),
            chunked,
        };
        Ok(())
    }

    /// Where the payload of the message being received stands, while bytes
    /// of it are owed.
    pub(crate) fn payload_offset(&self) -> Option<usize> {
        match &self.op {
            Op::Receive { rx, .. } => match rx.step() {
                RecvStep::ReadPayload { offset, .. } => Some(offset as usize),
                _ => None,
            },
            _ => None,
        }
    }

    /// Payload bytes still owed by the message in flight.
    pub(crate) fn payload_remaining(&self) -> u32 {
        match &self.op {
            Op::Send { tx, .. } => match tx.step() {
                SendStep::WritePayload { remaining, .. } => remaining,
                _ => 0,
            },
            Op::Receive { rx, .. } => match rx.step() {
                RecvStep::ReadPayload { remaining, .. } => remaining,
                _ => 0,
            },
            Op::Idle => 0,
        }
    }
}

/// Expands to the driver operations as free functions over a
/// `conn: &mut asynch::Connection<T>`, where `Read + Write` are whatever
/// traits of that name the invoking module has in scope (`embedded_io_async`'s
/// or `embedded_io`'s).
///
/// `driver_ops!([async] [.await])` gives the async driver's; `driver_ops!([]
/// [])` gives the blocking one's, the same code without the futures.
/// Attributes after the brackets go on the three functions that call the
/// transport (`flush_pending`, `read_some`, `write_some`).
macro_rules! driver_ops {
    ([$($async:tt)*] [$($await:tt)*] $(#[$io_attr:meta])*) => {
        use $crate::asynch::Connection;
        use $crate::driver::Op;
        use $crate::error::Error;
        use $crate::greeting::GreetingStep;
        use $crate::receive::RecvStep;
        use $crate::send::SendStep;

        /// Flushes what was written since the last flush, if anything.
        $(#[$io_attr])*
        $($async)* fn flush_pending<T: Write>(
            io: &mut T,
            needs_flush: &mut bool,
        ) -> Result<(), T::Error> {
            if *needs_flush {
                io.flush() $($await)* ?;
                *needs_flush = false;
            }
            Ok(())
        }

        $(#[$io_attr])*
        $($async)* fn read_some<T: Read + Write>(
            io: &mut T,
            needs_flush: &mut bool,
            buf: &mut [u8],
        ) -> Result<usize, T::Error> {
            // A peer only answers what it has seen: flush before waiting on it.
            flush_pending(io, needs_flush) $($await)* ?;
            io.read(buf) $($await)*
        }

        $(#[$io_attr])*
        $($async)* fn write_some<T: Write>(
            io: &mut T,
            needs_flush: &mut bool,
            buf: &[u8],
        ) -> Result<usize, T::Error> {
            let n = io.write(buf) $($await)* ?;
            *needs_flush |= n > 0;
            Ok(n)
        }

        /// Exchanges the greeting (0xFF each way).
        pub(crate) $($async)* fn greet<T: Read + Write>(
            conn: &mut Connection<T>,
        ) -> Result<(), Error<T::Error>> {
            let Connection { io, state } = conn;
            state.usable()?;
            loop {
                match state.greeting.step() {
                    GreetingStep::Done => return Ok(()),
                    GreetingStep::Write(bytes) => {
                        let n = write_some(io, &mut state.needs_flush, bytes) $($await)* ?;
                        if n == 0 {
                            return Err(state.fail(state.greeting.eof()));
                        }
                        state.greeting.wrote(n);
                    }
                    GreetingStep::Read => {
                        let mut byte = [0u8];
                        if read_some(io, &mut state.needs_flush, &mut byte) $($await)* ? == 0 {
                            return Err(state.fail(state.greeting.eof()));
                        }
                        if let Err(e) = state.greeting.received(byte[0]) {
                            return Err(state.fail(e));
                        }
                    }
                }
            }
        }

        /// Sends one whole message, written and flushed.
        pub(crate) $($async)* fn transmit<T: Read + Write>(
            conn: &mut Connection<T>,
            msg: &[u8],
        ) -> Result<(), Error<T::Error>> {
            greet(conn) $($await)* ?;
            conn.state.start_send(msg.len(), false)?;
            loop {
                let offset = send_prelude(conn) $($await)* ?;
                match msg.get(offset..) {
                    Some(rest) if !rest.is_empty() => {
                        write_payload(conn, rest) $($await)* ?;
                    }
                    _ => return send_finish(conn) $($await)*,
                }
            }
        }

        /// Receives one whole message into `buf` and returns it.
        pub(crate) $($async)* fn receive<'b, T: Read + Write>(
            conn: &mut Connection<T>,
            buf: &'b mut [u8],
        ) -> Result<&'b [u8], Error<T::Error>> {
            greet(conn) $($await)* ?;
            conn.state.start_receive(false)?;
            let len = receive_prelude(conn, buf.len()) $($await)* ?;
            while let Some(offset) = conn.state.payload_offset() {
                // Only a resume with a smaller buffer than the first call can miss.
                let dest = buf.get_mut(offset..).ok_or(Error::InProgress)?;
                read_payload(conn, dest) $($await)* ?;
            }
            conn.state.op = Op::Idle;
            buf.get(..len as usize).ok_or(Error::InProgress)
        }

        /// Starts a chunked receive; returns the accepted length.
        pub(crate) $($async)* fn begin_receive<T: Read + Write>(
            conn: &mut Connection<T>,
            limit: u32,
        ) -> Result<u32, Error<T::Error>> {
            greet(conn) $($await)* ?;
            conn.state.start_receive(true)?;
            let capacity = usize::try_from(limit).unwrap_or(usize::MAX);
            let len = receive_prelude(conn, capacity) $($await)* ?;
            if matches!(&conn.state.op, Op::Receive { rx, .. } if matches!(rx.step(), RecvStep::Delivered { .. }))
            {
                conn.state.op = Op::Idle;
            }
            Ok(len)
        }

        /// Starts a chunked send, up to the peer's acceptance.
        pub(crate) $($async)* fn begin_transmit<T: Read + Write>(
            conn: &mut Connection<T>,
            len: usize,
        ) -> Result<(), Error<T::Error>> {
            greet(conn) $($await)* ?;
            conn.state.start_send(len, true)?;
            send_prelude(conn) $($await)* ?;
            Ok(())
        }

        /// Flushes the transport.
        pub(crate) $($async)* fn flush<T: Read + Write>(
            conn: &mut Connection<T>,
        ) -> Result<(), Error<T::Error>> {
            let Connection { io, state } = conn;
            io.flush() $($await)* ?;
            state.needs_flush = false;
            Ok(())
        }

        /// Runs the send machine up to the payload. Returns the payload offset
        /// reached; [`Error::Rejected`] when the peer refused.
        $($async)* fn send_prelude<T: Read + Write>(
            conn: &mut Connection<T>,
        ) -> Result<usize, Error<T::Error>> {
            let Connection { io, state } = conn;
            loop {
                let Op::Send { tx, .. } = &mut state.op else {
                    return Err(Error::InProgress);
                };
                match tx.step() {
                    SendStep::WriteLength(bytes) => {
                        let n = write_some(io, &mut state.needs_flush, bytes) $($await)* ?;
                        if n == 0 {
                            let e = tx.eof();
                            return Err(state.fail(e));
                        }
                        tx.wrote(n);
                    }
                    SendStep::ReadStatus => {
                        let mut byte = [0u8];
                        if read_some(io, &mut state.needs_flush, &mut byte) $($await)* ? == 0 {
                            let e = tx.eof();
                            return Err(state.fail(e));
                        }
                        if let Err(e) = tx.received_status(byte[0]) {
                            return Err(state.fail(e));
                        }
                    }
                    SendStep::WritePayload { offset, .. } => return Ok(offset as usize),
                    SendStep::Delivered => return Ok(tx.len() as usize),
                    SendStep::Rejected => {
                        let len = tx.len();
                        state.op = Op::Idle;
                        return Err(Error::Rejected { len });
                    }
                }
            }
        }

        /// Writes payload bytes from `src` (which starts at the current offset)
        /// once; returns how many went.
        $($async)* fn write_payload<T: Read + Write>(
            conn: &mut Connection<T>,
            src: &[u8],
        ) -> Result<usize, Error<T::Error>> {
            let Connection { io, state } = conn;
            let Op::Send { tx, .. } = &mut state.op else {
                return Err(Error::InProgress);
            };
            let SendStep::WritePayload { remaining, .. } = tx.step() else {
                return Ok(0);
            };
            let src = &src[..src.len().min(remaining as usize)];
            if src.is_empty() {
                return Ok(0);
            }
            let n = write_some(io, &mut state.needs_flush, src) $($await)* ?;
            if n == 0 {
                let e = tx.eof();
                return Err(state.fail(e));
            }
            tx.wrote(n);
            Ok(n)
        }

        /// Flushes a delivered message and frees the slot.
        pub(crate) $($async)* fn send_finish<T: Read + Write>(
            conn: &mut Connection<T>,
        ) -> Result<(), Error<T::Error>> {
            match &conn.state.op {
                Op::Send { tx, .. } if tx.step() == SendStep::Delivered => {}
                _ => return Err(Error::InProgress),
            }
            flush(conn) $($await)* ?;
            conn.state.op = Op::Idle;
            Ok(())
        }

        /// Runs the receive machine up to the payload, deciding by `capacity`.
        /// Returns the accepted length; [`Error::TooLarge`] after refusing.
        $($async)* fn receive_prelude<T: Read + Write>(
            conn: &mut Connection<T>,
            capacity: usize,
        ) -> Result<u32, Error<T::Error>> {
            let Connection { io, state } = conn;
            let capacity =
                capacity.min(usize::try_from(state.max_message_len).unwrap_or(usize::MAX));
            loop {
                let Op::Receive { rx, .. } = &mut state.op else {
                    return Err(Error::InProgress);
                };
                match rx.step() {
                    RecvStep::ReadLength => {
                        let n = read_some(io, &mut state.needs_flush, rx.length_buf()) $($await)* ?;
                        if n == 0 {
                            let e = rx.eof();
                            return Err(state.fail(e));
                        }
                        rx.read(n);
                    }
                    RecvStep::Decide { .. } => {
                        rx.decide(capacity);
                    }
                    RecvStep::WriteStatus(status) => {
                        let n = write_some(io, &mut state.needs_flush, &[status.to_byte()])
                            $($await)* ?;
                        if n == 0 {
                            let e = rx.eof();
                            return Err(state.fail(e));
                        }
                        rx.wrote(n);
                    }
                    RecvStep::ReadPayload { offset, remaining } => return Ok(offset + remaining),
                    // No payload read follows an empty message or a refusal, so
                    // the status must not wait in a buffer for one.
                    RecvStep::Delivered { len } => {
                        flush_pending(io, &mut state.needs_flush) $($await)* ?;
                        return Ok(len);
                    }
                    RecvStep::Refused { len } => {
                        flush_pending(io, &mut state.needs_flush) $($await)* ?;
                        state.op = Op::Idle;
                        return Err(Error::TooLarge {
                            len: len.into(),
                            capacity: capacity as u64,
                        });
                    }
                }
            }
        }

        /// Reads payload bytes into `dest` (which stands for the current offset)
        /// once; returns how many came (0 once the message is complete).
        $($async)* fn read_payload<T: Read + Write>(
            conn: &mut Connection<T>,
            dest: &mut [u8],
        ) -> Result<usize, Error<T::Error>> {
            let Connection { io, state } = conn;
            let Op::Receive { rx, .. } = &mut state.op else {
                return Ok(0);
            };
            let RecvStep::ReadPayload { remaining, .. } = rx.step() else {
                return Ok(0);
            };
            let len = dest
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            if len == 0 {
                return Ok(0);
            }
            let n = read_some(io, &mut state.needs_flush, &mut dest[..len]) $($await)* ?;
            if n == 0 {
                let e = rx.eof();
                return Err(state.fail(e));
            }
            rx.read(n);
            Ok(n)
        }

        /// Reads the next chunk of a chunked receive; `Ok(0)` once the whole
        /// message has been read.
        pub(crate) $($async)* fn chunk_read<T: Read + Write>(
            conn: &mut Connection<T>,
            buf: &mut [u8],
        ) -> Result<usize, Error<T::Error>> {
            let n = read_payload(conn, buf) $($await)* ?;
            if conn.state.payload_remaining() == 0 {
                if let Op::Receive { chunked: true, .. } = conn.state.op {
                    conn.state.op = Op::Idle;
                }
            }
            Ok(n)
        }

        /// Reads chunks until `buf` is full.
        pub(crate) $($async)* fn chunk_read_exact<T: Read + Write>(
            conn: &mut Connection<T>,
            mut buf: &mut [u8],
        ) -> Result<(), Error<T::Error>> {
            while !buf.is_empty() {
                let n = chunk_read(conn, buf) $($await)* ?;
                if n == 0 {
                    return Err(Error::UnexpectedEof {
                        phase: $crate::Phase::Payload,
                    });
                }
                buf = &mut buf[n..];
            }
            Ok(())
        }

        /// Writes some of `chunk` of a chunked send, never past the announced
        /// length.
        pub(crate) $($async)* fn chunk_write<T: Read + Write>(
            conn: &mut Connection<T>,
            chunk: &[u8],
        ) -> Result<usize, Error<T::Error>> {
            if chunk.is_empty() {
                return Ok(0);
            }
            match write_payload(conn, chunk) $($await)* ? {
                0 => Err(Error::TooLarge {
                    len: chunk.len() as u64,
                    capacity: 0,
                }),
                n => Ok(n),
            }
        }

        /// Writes all of `chunk` of a chunked send.
        pub(crate) $($async)* fn chunk_write_all<T: Read + Write>(
            conn: &mut Connection<T>,
            mut chunk: &[u8],
        ) -> Result<(), Error<T::Error>> {
            while !chunk.is_empty() {
                let n = chunk_write(conn, chunk) $($await)* ?;
                chunk = &chunk[n..];
            }
            Ok(())
        }
    };
}
pub(crate) use driver_ops;
