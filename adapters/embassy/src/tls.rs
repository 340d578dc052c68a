//! TLS 1.3 under the protocol, for a device that talks to a server it must
//! trust (feature `tls`, on [embedded-tls](https://crates.io/crates/embedded-tls)):
//! [`Client::connect_tls`], the stream it runs over ([`TlsSocket`]), the
//! caller's storage for it ([`TlsStorage`]) and a ready crypto provider that
//! verifies the server against a CA the firmware carries and can present a
//! client certificate ([`Provider`]).
//!
//! The wire protocol inside TLS is unchanged. The deadlines of
//! [`Timeouts`] stay in the [`Socket`] under the TLS records: the TLS
//! handshake runs within [`Timeouts::greeting`], keep-alive and the TCP
//! timeout apply as without TLS.
//!
//! What embedded-tls 0.19 can and cannot do shapes this module:
//! - TLS 1.3 and client only: a device that must *serve* over TLS cannot
//!   with it (see the crate README).
//! - A cut record cannot be resumed: after a deadline in the middle of a
//!   message, or a future dropped in the middle of a record (any dropped
//!   write: its record's nonce must never be used again), the connection
//!   is reset at the next call. A `receive` that timed out or was dropped
//!   while waiting for its message to begin cut nothing.
//! - embedded-tls 0.19 parses plaintext handshake records after the
//!   handshake, and one of them makes it panic: this module refuses any
//!   record but application_data once the handshake is over
//!   (`TlsError::InvalidRecord`), before embedded-tls sees it.
//! - Certificates are checked against one CA, with ECDSA P-256 signatures
//!   (embedded-tls' `rustpki`); validity dates are not checked, as a device
//!   without a clock cannot ([`Provider`] uses `NoClock`).
//!
//! Buffers: besides the socket's own, the caller gives two record buffers
//! ([`TlsStorage::new`]). The read one must hold the largest record the
//! server sends: 16,640 B ([`MAX_RECORD_LEN`]) for any server, or less when
//! the server caps its records (rustls' `ServerConfig::max_fragment_size`;
//! embedded-tls does not negotiate smaller records itself). The write one
//! must hold the handshake messages we send (the client certificate's
//! chain included): a few KiB.

use core::fmt;
use core::pin::pin;
use core::task::Poll;

use embassy_futures::poll_once;
use embassy_net::tcp::TcpSocket;
use embassy_net::{IpEndpoint, Stack};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::mutex::Mutex;
use embassy_time::Instant;
use embedded_tls::pki::CertVerifier;
use embedded_tls::{
    Aes128GcmSha256, Certificate, CryptoProvider, CryptoRngCore, FlushPolicy, NoClock,
    SignatureScheme, TlsConfig, TlsConnection, TlsContext, TlsError, TlsVerifier,
};
use p256::ecdsa::{DerSignature, SigningKey};
use tinyproto::asynch::Connection;
use tinyproto::embedded_io_async::{BufRead, ErrorType, Read, ReadReady, Write};

use crate::client::{connect_tcp, Client};
use crate::error::{Deadline, Error, NetError};
use crate::out_of_line::OutOfLine;
use crate::session::{ConnInfo, Session};
use crate::socket::{Socket, Timeouts};
use crate::transport::{Sealed, Transport};

pub use embedded_tls;

/// The largest TLS record a server may send (16 KiB of plaintext plus the
/// record's overhead): the read record buffer that works with any server.
pub const MAX_RECORD_LEN: usize = 16_640;

/// The cipher suite this module speaks (TLS_AES_128_GCM_SHA256, which every
/// TLS 1.3 server offers).
pub type CipherSuite = Aes128GcmSha256;

/// Most bytes of the server's certificate that [`Provider`] keeps between
/// the certificate and its signature check (part of the provider's RAM).
pub const SERVER_CERT_MAX: usize = 2048;

/// The TCP socket under the TLS records, shared by the records (which read
/// and write it) and the deadlines (which the operations arm between
/// records), with what the last read or write reported.
struct Shared<'a> {
    socket: Socket<'a>,
    /// The transport error behind embedded-tls' `TlsError::Io`.
    last_error: Option<NetError>,
    /// The peer closed the TCP stream (embedded-tls reports it as an error).
    peer_closed: bool,
    /// Where the peer's bytes stand in their TLS records.
    framing: Framing,
    /// A look ([`TlsSocket::decrypted_waiting`]): reads go straight to the
    /// TCP socket, without the deadline's timer, which only an embassy
    /// task's waker may arm, and without starting a message deadline.
    looking: bool,
}

type SharedCell<'a> = Mutex<NoopRawMutex, Option<Shared<'a>>>;

/// What a TLS client borrows for as long as it lives: the cell that holds
/// its socket, and the two record buffers (see the module docs for their
/// sizes).
pub struct TlsStorage<'a> {
    shared: SharedCell<'a>,
    read_record: &'a mut [u8],
    write_record: &'a mut [u8],
}

impl<'a> TlsStorage<'a> {
    /// Storage over the caller's record buffers: `read_record` at most
    /// [`MAX_RECORD_LEN`] (less only if the server caps its records),
    /// `write_record` a few KiB.
    pub fn new(read_record: &'a mut [u8], write_record: &'a mut [u8]) -> Self {
        Self {
            shared: Mutex::new(None),
            read_record,
            write_record,
        }
    }
}

/// The first byte of every TLS record: its content type (RFC 8446 §5.1:
/// change_cipher_spec, alert, handshake, application_data, heartbeat).
const TLS_CONTENT_TYPES: core::ops::RangeInclusive<u8> = 20..=24;

/// The content type of every record after the handshake in TLS 1.3: alerts,
/// tickets and data all travel encrypted inside it.
const APPLICATION_DATA: u8 = 23;

/// A record's header: content type, version, 16-bit length.
const RECORD_HEADER_LEN: usize = 5;

/// Follows the peer's bytes through their TLS records, so that this crate
/// knows where a record begins (a cut read must not go unnoticed) and can
/// refuse a record that may not come (embedded-tls 0.19 parses plaintext
/// handshake records after the handshake, and one of them makes it panic).
#[derive(Debug, Default)]
struct Framing {
    header: [u8; RECORD_HEADER_LEN],
    header_len: usize,
    body_left: usize,
    /// The handshake is over: only application_data records may come.
    encrypted_only: bool,
}

impl Framing {
    /// No record has begun to arrive.
    fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.body_left == 0
    }

    /// Follows `bytes`, which the peer sent next; `Err` for a record whose
    /// content type may not come now (a plaintext peer's 0xFF greeting, say).
    fn follow(&mut self, mut bytes: &[u8]) -> Result<(), NetError> {
        while let Some((&first, rest)) = bytes.split_first() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let allowed = if self.encrypted_only {
                first == APPLICATION_DATA || self.header_len > 0
            } else {
                TLS_CONTENT_TYPES.contains(&first) || self.header_len > 0
            };
            if !allowed {
                return Err(NetError::Tls(TlsError::InvalidRecord));
            }
            self.header[self.header_len] = first;
            self.header_len += 1;
            if self.header_len == RECORD_HEADER_LEN {
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.header_len = 0;
            }
            bytes = rest;
        }
        Ok(())
    }
}

/// The byte stream embedded-tls reads and writes: the shared socket, with
/// its deadlines.
struct Records<'s, 'a>(&'s SharedCell<'a>);

impl ErrorType for Records<'_, '_> {
    type Error = NetError;
}

impl Read for Records<'_, '_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, NetError> {
        let mut guard = self.0.lock().await;
        let shared = guard.as_mut().ok_or(NetError::ConnectionReset)?;
        let r = if shared.looking {
            shared
                .socket
                .tcp_mut()
                .read(buf)
                .await
                .map_err(NetError::from)
        } else {
            shared.socket.read(buf).await
        };
        match r {
            Ok(0) => shared.peer_closed = true,
            Err(e) => shared.last_error = Some(e),
            Ok(n) => {
                // A plaintext tinyproto server greets with 0xFF (or refuses
                // with 0xFE) and then waits: this says so at once, not when
                // the handshake's deadline passes.
                if let Err(e) = shared.framing.follow(&buf[..n]) {
                    shared.last_error = Some(e);
                    return Err(e);
                }
            }
        }
        r
    }
}

impl Write for Records<'_, '_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, NetError> {
        let mut guard = self.0.lock().await;
        let shared = guard.as_mut().ok_or(NetError::ConnectionReset)?;
        let r = shared.socket.write(buf).await;
        if let Err(e) = r {
            shared.last_error = Some(e);
        }
        r
    }

    async fn flush(&mut self) -> Result<(), NetError> {
        let mut guard = self.0.lock().await;
        let shared = guard.as_mut().ok_or(NetError::ConnectionReset)?;
        let r = shared.socket.flush().await;
        if let Err(e) = r {
            shared.last_error = Some(e);
        }
        r
    }
}

/// Whether the TLS stream can go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Open,
    /// The peer closed (TLS close_notify or TCP FIN): reads give 0.
    PeerClosed,
    /// A record was cut, or TLS failed: every operation gives this error.
    Failed(NetError),
}

/// How the socket's received bytes split into TLS records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// Nothing, or only whole records: reading them cannot stop halfway.
    WholeRecords,
    /// A record has begun and not all of it is in.
    PartRecord,
}

/// Walks the record headers (type, version, 16-bit length) of what the
/// socket holds; `queued` is all it holds, `contiguous` the part that can
/// be looked at without reading.
fn waiting(contiguous: &[u8], queued: usize) -> Waiting {
    const HEADER_LEN: usize = 5;
    let mut at = 0;
    while at < contiguous.len() {
        let Some(len) = contiguous.get(at + 3..at + HEADER_LEN) else {
            return Waiting::PartRecord;
        };
        at += HEADER_LEN + usize::from(u16::from_be_bytes([len[0], len[1]]));
    }
    if at == queued {
        Waiting::WholeRecords
    } else {
        Waiting::PartRecord
    }
}

/// TLS records over a [`Socket`]: the byte stream of a [`Client`] made by
/// [`Client::connect_tls`].
pub struct TlsSocket<'s, 'a> {
    tls: TlsConnection<'s, Records<'s, 'a>, CipherSuite>,
    shared: &'s SharedCell<'a>,
    timeouts: Timeouts,
    remote: Option<IpEndpoint>,
    stream: Stream,
    /// An operation of `tls` under way; a call that finds one left over
    /// knows that its future was dropped.
    in_flight: InFlight,
}

/// Which operation of the TLS layer is under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InFlight {
    Nothing,
    Reading,
    Writing,
}

impl fmt::Debug for TlsSocket<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSocket")
            .field("remote", &self.remote)
            .field("timeouts", &self.timeouts)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl<'s, 'a> TlsSocket<'s, 'a> {
    /// Runs `f` on the socket between records. The lock is always free
    /// here: the records hold it only inside a read or write of `tls`, which
    /// `&mut self` rules out.
    fn with_socket<R>(&self, f: impl FnOnce(&mut Shared<'a>) -> R) -> Option<R> {
        let mut guard = self.shared.try_lock().ok()?;
        guard.as_mut().map(f)
    }

    /// What an error of embedded-tls means for the stream. Its `Io` errors
    /// stand for the socket's own, which the records kept.
    fn failed(&mut self, e: TlsError) -> Stream {
        let stream = match e {
            TlsError::ConnectionClosed => Stream::PeerClosed,
            TlsError::Io(_) | TlsError::IoError => {
                let (last_error, peer_closed, at_boundary) = self
                    .with_socket(|s| (s.last_error.take(), s.peer_closed, s.framing.at_boundary()))
                    .unwrap_or((None, false, false));
                match last_error {
                    // A receive that waited for a message that never began
                    // cut no record: the stream is whole and stays open.
                    Some(e @ NetError::TimedOut(Deadline::Receive | Deadline::Idle))
                        if at_boundary =>
                    {
                        return Stream::Failed(e);
                    }
                    Some(e) => Stream::Failed(e),
                    None if peer_closed => Stream::PeerClosed,
                    None => Stream::Failed(NetError::ConnectionReset),
                }
            }
            e => Stream::Failed(NetError::Tls(e)),
        };
        self.stream = stream;
        stream
    }

    /// Whether an operation's future was dropped in the middle of a record:
    /// a write (its record, closed and encrypted, went out in part or not
    /// at all, and its bytes were not counted), or a read after a record
    /// began to arrive. A read dropped while it waited for a record cut
    /// nothing.
    fn was_cut(&self) -> bool {
        match self.in_flight {
            InFlight::Nothing => false,
            InFlight::Writing => true,
            InFlight::Reading => !self
                .with_socket(|s| s.framing.at_boundary())
                .unwrap_or(false),
        }
    }

    /// Starts an operation of the TLS layer, unless the stream has ended
    /// (`Some`: what the operation returns instead). A stream cut by a
    /// dropped future cannot go on: it is reset, never resumed (a record
    /// written again would reuse its nonce).
    fn begin(&mut self, op: InFlight) -> Option<Result<usize, NetError>> {
        if self.was_cut() {
            warn!("a dropped future cut a TLS record: the connection is reset");
            self.reset();
        }
        self.in_flight = op;
        self.ended()
    }

    /// Whether the stream has ended, as a read sees it.
    fn ended(&self) -> Option<Result<usize, NetError>> {
        match self.stream {
            Stream::Open => None,
            Stream::PeerClosed => Some(Ok(0)),
            Stream::Failed(e) => Some(Err(e)),
        }
    }

    /// Decrypted bytes waiting, looked at without waiting and without
    /// cutting a record: `None` when a record is still arriving.
    fn decrypted_waiting(&mut self) -> Result<Option<usize>, NetError> {
        match self.begin(InFlight::Nothing) {
            Some(Err(e)) => return Err(e),
            Some(Ok(_)) => return Ok(Some(0)),
            None => {}
        }
        let waiting = self
            .with_socket(|s| {
                let tcp = s.socket.tcp_mut();
                let queued = tcp.recv_queue();
                match poll_once(tcp.read_with(|bytes| (0, waiting(bytes, queued)))) {
                    Poll::Ready(Ok(w)) => w,
                    // Nothing in the socket.
                    Poll::Ready(Err(_)) | Poll::Pending => Waiting::WholeRecords,
                }
            })
            .unwrap_or(Waiting::PartRecord);
        if waiting == Waiting::PartRecord {
            return Ok(None);
        }
        // Only whole records (a session ticket, say) or nothing wait in the
        // socket: this reads all of them, then stops before the next
        // record's first byte.
        self.with_socket(|s| s.looking = true);
        let polled = poll_once(self.tls.fill_buf()).map(|r| r.map(|bytes| bytes.len()));
        self.with_socket(|s| s.looking = false);
        match polled {
            Poll::Ready(Ok(n)) => Ok(Some(n)),
            Poll::Pending => Ok(Some(0)),
            Poll::Ready(Err(e)) => match self.failed(e) {
                Stream::Failed(e) => Err(e),
                _ => Ok(Some(0)),
            },
        }
    }
}

impl ErrorType for TlsSocket<'_, '_> {
    type Error = NetError;
}

impl Read for TlsSocket<'_, '_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, NetError> {
        if let Some(ended) = self.begin(InFlight::Reading) {
            return ended;
        }
        let r = match self.tls.read(buf).await {
            Ok(n) => Ok(n),
            Err(e) => match self.failed(e) {
                Stream::Failed(e) => Err(e),
                _ => Ok(0),
            },
        };
        self.in_flight = InFlight::Nothing;
        r
    }
}

impl ReadReady for TlsSocket<'_, '_> {
    /// True when bytes of the peer's wait: decrypted, or a record that has
    /// begun to arrive. Whole records that carry no data (session tickets)
    /// are read and do not count.
    fn read_ready(&mut self) -> Result<bool, NetError> {
        Ok(self.decrypted_waiting()?.is_none_or(|n| n > 0))
    }
}

impl TlsSocket<'_, '_> {
    /// What a failed write or flush of the TLS layer returns.
    fn write_failed(&mut self, e: TlsError) -> NetError {
        match self.failed(e) {
            Stream::Failed(e) => e,
            _ => NetError::ConnectionReset,
        }
    }
}

impl Write for TlsSocket<'_, '_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, NetError> {
        if let Some(ended) = self.begin(InFlight::Writing) {
            return ended.and(Err(NetError::ConnectionReset));
        }
        let r = self.tls.write(buf).await;
        self.in_flight = InFlight::Nothing;
        r.map_err(|e| self.write_failed(e))
    }

    /// Closes the record under way (encrypts and writes it), then flushes
    /// the socket under its deadline, as a flush over plain TCP does.
    async fn flush(&mut self) -> Result<(), NetError> {
        if let Some(ended) = self.begin(InFlight::Writing) {
            return ended.and(Err(NetError::ConnectionReset));
        }
        let r = self.tls.flush().await;
        self.in_flight = InFlight::Nothing;
        r.map_err(|e| self.write_failed(e))?;
        // Whole records only in the socket now: a drop here cuts nothing.
        let mut guard = self.shared.lock().await;
        match guard.as_mut() {
            Some(shared) => shared.socket.flush().await,
            None => Err(NetError::ConnectionReset),
        }
    }
}

impl Sealed for TlsSocket<'_, '_> {}

impl Transport for TlsSocket<'_, '_> {
    fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    fn remote_endpoint(&self) -> Option<IpEndpoint> {
        self.remote
    }

    fn begin_exchange(&mut self, which: Deadline) {
        self.with_socket(|s| s.socket.begin_exchange(which));
    }

    fn await_exchange(&mut self, wait_until: Option<(Instant, Deadline)>) {
        self.with_socket(|s| s.socket.await_exchange(wait_until));
    }

    fn end_exchange(&mut self) {
        self.with_socket(|s| s.socket.end_exchange());
    }

    fn zero_answer_is_a_length(&mut self) -> bool {
        // The peer's length travels in one record (tinyproto-std flushes
        // after it, so it does): what is left of it after
        // the 0x00 is decrypted already.
        matches!(self.decrypted_waiting(), Ok(Some(n)) if tinyproto::zero_answer_is_a_length(n))
    }

    fn reset(&mut self) {
        self.with_socket(|s| s.socket.tcp_mut().abort());
        self.stream = Stream::Failed(NetError::ConnectionReset);
    }

    async fn shutdown(mut self) -> Result<(), NetError> {
        let shared = self.shared;
        if self.was_cut() {
            self.reset();
        }
        if self.stream == Stream::Open {
            self.begin_exchange(Deadline::Close);
            // TLS's own close first (close_notify), then TCP's.
            let _ = self.tls.close().await;
        }
        let mut guard = shared.lock().await;
        match guard.take() {
            Some(mut s) => s.socket.close().await,
            None => Err(NetError::ConnectionReset),
        }
    }
}

/// A crypto provider for [`Client::connect_tls`]: it verifies the server's
/// certificate against the one CA the firmware carries (DER, ECDSA P-256),
/// presents a client certificate if given one, and draws the handshake's
/// randomness from `rng`, which must be the board's true random number
/// generator (or a CSPRNG seeded from it), never a fixed seed.
pub struct Provider<'c, R> {
    rng: R,
    verifier: CertVerifier<'c, CipherSuite, NoClock, SERVER_CERT_MAX>,
    client: Option<(&'c [u8], &'c [u8])>,
}

impl<'c, R: CryptoRngCore> Provider<'c, R> {
    /// Trusts servers whose certificate `ca_der` (a DER X.509 CA
    /// certificate) signed; no client certificate.
    pub fn new(rng: R, ca_der: &'c [u8]) -> Self {
        Self {
            rng,
            verifier: CertVerifier::new(Certificate::X509(ca_der)),
            client: None,
        }
    }

    /// Presents `cert_der` (DER X.509) when the server asks for a client
    /// certificate, signing with `key_der`, its P-256 private key in SEC1
    /// DER (`openssl ec -in key.pem -outform DER`; from PKCS#8, `openssl
    /// pkcs8 -nocrypt -in key.pem | openssl ec -outform DER`). SEC1 only:
    /// a PKCS#8 parser would cost a device 7 KiB of flash. Another key
    /// fails the handshake with `TlsError::InvalidPrivateKey`.
    pub fn with_client_cert(mut self, cert_der: &'c [u8], key_der: &'c [u8]) -> Self {
        self.client = Some((cert_der, key_der));
        self
    }
}

impl<R: CryptoRngCore> CryptoProvider for Provider<'_, R> {
    type CipherSuite = CipherSuite;
    type Signature = DerSignature;

    fn rng(&mut self) -> impl embedded_tls::CryptoRngCore {
        &mut self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<CipherSuite>, TlsError> {
        Ok(&mut self.verifier)
    }

    fn signer(
        &mut self,
    ) -> Result<
        (
            impl p256::ecdsa::signature::SignerMut<DerSignature>,
            SignatureScheme,
        ),
        TlsError,
    > {
        let (_, key_der) = self.client.ok_or(TlsError::InvalidPrivateKey)?;
        let key =
            p256::SecretKey::from_sec1_der(key_der).map_err(|_| TlsError::InvalidPrivateKey)?;
        Ok((
            SigningKey::from(&key),
            SignatureScheme::EcdsaSecp256r1Sha256,
        ))
    }

    fn client_cert(&mut self) -> Option<Certificate<impl AsRef<[u8]>>> {
        self.client.map(|(cert, _)| Certificate::X509(cert))
    }
}

impl<'s, 'a: 's> Client<'s, TlsSocket<'s, 'a>> {
    /// Connects to `remote` within [`Timeouts::connect`], runs the TLS 1.3
    /// handshake and then the greeting within [`Timeouts::greeting`].
    ///
    /// `config` names the server (`TlsConfig::new().with_server_name(..)`:
    /// its certificate must carry that name); `provider` is usually a
    /// [`Provider`]. A failed handshake is `Error::Io(NetError::Tls(_))`,
    /// and the socket is closed. A server that refuses our certificate
    /// does so after our side of the handshake: this shows as its alert
    /// (`TlsError::HandshakeAborted`) or, when its reset overtakes the
    /// alert, as `NetError::ConnectionReset`.
    #[allow(clippy::too_many_arguments)]
    pub async fn connect_tls<P: CryptoProvider<CipherSuite = CipherSuite>>(
        stack: Stack<'a>,
        rx_buffer: &'a mut [u8],
        tx_buffer: &'a mut [u8],
        remote: impl Into<IpEndpoint>,
        timeouts: Timeouts,
        storage: &'s mut TlsStorage<'a>,
        config: &TlsConfig<'_>,
        provider: P,
    ) -> Result<Self, Error> {
        let remote = remote.into();
        let mut socket = Socket::new(TcpSocket::new(stack, rx_buffer, tx_buffer), timeouts);
        connect_tcp(&mut socket, remote).await.map_err(Error::Io)?;
        socket.begin_exchange(Deadline::Greeting);
        let TlsStorage {
            shared,
            read_record,
            write_record,
        } = storage;
        *shared.get_mut() = Some(Shared {
            socket,
            last_error: None,
            peer_closed: false,
            framing: Framing::default(),
            looking: false,
        });
        let shared = &*shared;
        let mut connection = TlsConnection::new(Records(shared), read_record, write_record);
        // Our flush waits for the peer's acknowledgement once, at the end
        // of each field, as over plain TCP; not after every full record.
        connection.set_flush_policy(FlushPolicy::Relaxed);
        let mut tls = TlsSocket {
            tls: connection,
            shared,
            timeouts,
            remote: Some(remote),
            stream: Stream::Open,
            in_flight: InFlight::Nothing,
        };
        let opened = tls.tls.open(TlsContext::new(config, provider)).await;
        // From now on every record is encrypted (application_data outside).
        tls.with_socket(|s| s.framing.encrypted_only = true);
        if let Err(e) = opened {
            let e = match tls.failed(e) {
                Stream::Failed(e) => e,
                _ => NetError::ConnectionReset,
            };
            debug!("TLS handshake with {:?} failed: {:?}", remote, e);
            tls.reset();
            let _ = tls.shutdown().await;
            return Err(Error::Io(e));
        }
        let mut conn = Connection::new(tls);
        let info = ConnInfo::client(remote);
        let greeted = OutOfLine::new(pin!(Session::new(&mut conn, info).greet_now())).await;
        if let Err(e) = greeted {
            debug!("greeting with {:?} failed: {:?}", remote, e);
            let _ = conn.into_inner().shutdown().await;
            return Err(e);
        }
        Ok(Client::greeted(conn, info))
    }
}
