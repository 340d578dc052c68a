//! TLS under the protocol (feature `tls`, rustls with the `ring` provider):
//! a [`Stream`] that carries tinyproto inside a TLS session, unchanged, and
//! the peer's identity from its certificate.
//!
//! The handshake runs inside the connection's first exchange (the
//! greeting), so the greeting deadline bounds it; a server does it on the
//! connection's own thread, never on the loop that accepts. Plaintext that
//! rustls has decrypted already is input the socket's readiness cannot
//! report: [`Stream::has_buffered_input`] says so, and the thread does not
//! sleep on it.

use std::io;
use std::net::TcpStream;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection};

use crate::transport::{Stream, Tcp};

/// The TLS side of a server's or client's connections.
#[derive(Debug, Clone)]
pub(crate) enum TlsSide {
    /// A server's: its configuration (certificate, key, client verifier).
    Server(Arc<ServerConfig>),
    /// A client's: its configuration (trusted roots, its own certificate)
    /// and the name the server's certificate must carry.
    Client(Arc<ClientConfig>, ServerName<'static>),
}

impl TlsSide {
    /// A TLS stream over `socket`; fails only for a configuration rustls
    /// refuses.
    pub(crate) fn wrap(&self, socket: Tcp) -> Result<Box<dyn Stream>, rustls::Error> {
        Ok(match self {
            TlsSide::Server(config) => Box::new(Tls(rustls::StreamOwned::new(
                ServerConnection::new(config.clone())?,
                socket,
            ))),
            TlsSide::Client(config, name) => Box::new(Tls(rustls::StreamOwned::new(
                ClientConnection::new(config.clone(), name.clone())?,
                socket,
            ))),
        })
    }
}

/// A rustls session over a TCP connection.
struct Tls<C>(rustls::StreamOwned<C, Tcp>);

impl<C, S> io::Read for Tls<C>
where
    C: std::ops::DerefMut + std::ops::Deref<Target = ConnectionCommon<S>>,
    S: rustls::SideData + 'static,
{
    /// A peer that closes without TLS's close_notify reads as a close: the
    /// protocol's framing tells a close mid-message from one between
    /// messages, so a truncation is still an error where it matters.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => self.closed(e).map(|()| 0),
            other => other,
        }
    }
}

impl<C, S> Tls<C>
where
    C: std::ops::DerefMut + std::ops::Deref<Target = ConnectionCommon<S>>,
    S: rustls::SideData + 'static,
{
    /// The peer closed: during the handshake a TLS failure (it gave up on
    /// us, without an alert), after it a close.
    fn closed(&self, e: io::Error) -> io::Result<()> {
        if self.0.conn.is_handshaking() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                rustls::Error::General(format!("the peer closed during the handshake ({e})")),
            ));
        }
        Ok(())
    }
}

impl<C, S> io::Write for Tls<C>
where
    C: std::ops::DerefMut + std::ops::Deref<Target = ConnectionCommon<S>>,
    S: rustls::SideData + 'static,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.write(buf) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => self.closed(e).map(|()| 0),
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.0.flush() {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => self.closed(e),
            other => other,
        }
    }
}

impl<C, S> Stream for Tls<C>
where
    C: std::ops::DerefMut + std::ops::Deref<Target = ConnectionCommon<S>> + Send,
    S: rustls::SideData + 'static,
{
    fn socket(&self) -> &TcpStream {
        &self.0.sock.0
    }

    fn has_buffered_input(&mut self) -> bool {
        // Records read from the socket but not decrypted yet are decrypted
        // now; an error shows at the next read.
        self.0
            .conn
            .process_new_packets()
            .is_ok_and(|state| state.plaintext_bytes_to_read() > 0)
    }

    fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        self.0.conn.peer_certificates()?.first().cloned()
    }

    fn talks_both_ways(&self) -> bool {
        // The handshake: a write may have to read the peer's flight first,
        // and a read write ours.
        self.0.conn.is_handshaking()
    }

    fn close(&mut self) {
        self.0.conn.send_close_notify();
        // What is queued (the alert, close_notify) goes out; nothing is read:
        // a handshake that failed never completes.
        while self.0.conn.wants_write() {
            match self.0.conn.write_tls(&mut self.0.sock) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

/// Who the peer is, from the certificate it presented over TLS: what a
/// handler decides by ([`Conn::peer_identity`](crate::Conn::peer_identity)).
/// The certificate was verified by the configuration's verifier before the
/// connection carried anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject's common name (CN), if it has one.
    pub common_name: Option<String>,
    /// The DNS names of its subject alternative names.
    pub dns_names: Vec<String>,
    /// The URIs of its subject alternative names (a device id, say).
    pub uris: Vec<String>,
    /// The certificate itself (DER), for anything else.
    pub certificate: CertificateDer<'static>,
}

impl PeerIdentity {
    /// The identity in `certificate`; `None` if it does not parse.
    pub(crate) fn from_certificate(certificate: CertificateDer<'static>) -> Option<Self> {
        let cert = webpki::EndEntityCert::try_from(&certificate).ok()?;
        let dns_names = cert.valid_dns_names().map(str::to_owned).collect();
        let uris = cert.valid_uri_names().map(str::to_owned).collect();
        let common_name = common_name(cert.subject());
        Some(Self {
            common_name,
            dns_names,
            uris,
            certificate,
        })
    }
}

/// The common name in a DER subject (its `SEQUENCE` contents): the value
/// of the first attribute whose type is id-at-commonName (2.5.4.3), when it
/// is a string.
fn common_name(mut subject: &[u8]) -> Option<String> {
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    while !subject.is_empty() {
        // Each RDN: SET { SEQUENCE { OID, value } ... }.
        let (rdn, rest) = der(subject, 0x31)?;
        subject = rest;
        let mut attributes = rdn;
        while !attributes.is_empty() {
            let (attribute, rest) = der(attributes, 0x30)?;
            attributes = rest;
            let (oid, value) = der(attribute, 0x06)?;
            if oid == COMMON_NAME {
                let (&tag, _) = value.split_first()?;
                // UTF8String, PrintableString, IA5String, T61String.
                if matches!(tag, 0x0C | 0x13 | 0x16 | 0x14) {
                    let (text, _) = der(value, tag)?;
                    return String::from_utf8(text.to_vec()).ok();
                }
            }
        }
    }
    None
}

/// Splits one DER element with tag `tag` off `input`: its contents and
/// what follows. Definite lengths only (DER has no other).
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, input) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, mut input) = input.split_first()?;
    let len = match first {
        0..=0x7F => usize::from(first),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7F);
            let (bytes, rest) = input.split_at_checked(n)?;
            input = rest;
            bytes
                .iter()
                .fold(0usize, |len, b| (len << 8) | usize::from(*b))
        }
        _ => return None,
    };
    input.split_at_checked(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_identity_of_a_generated_certificate() {
        let mut params =
            rcgen::CertificateParams::new(vec!["device-7.example".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "device 7");
        params
            .subject_alt_names
            .push(rcgen::SanType::URI("urn:dev:7".try_into().unwrap()));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let identity = PeerIdentity::from_certificate(cert.der().clone()).expect("parses");
        assert_eq!(identity.common_name.as_deref(), Some("device 7"));
        assert_eq!(identity.dns_names, ["device-7.example"]);
        assert_eq!(identity.uris, ["urn:dev:7"]);
    }

    #[test]
    fn test_der_walk_refuses_what_is_not_there() {
        assert_eq!(der(&[], 0x30), None);
        assert_eq!(der(&[0x31, 0x00], 0x30), None, "another tag");
        assert_eq!(
            der(&[0x30, 0x05, 1, 2], 0x30),
            None,
            "shorter than its length"
        );
        assert_eq!(der(&[0x30, 0x80], 0x30), None, "indefinite length");
        assert_eq!(
            der(&[0x30, 0x81, 0x02, 7, 8, 9], 0x30),
            Some((&[7u8, 8][..], &[9u8][..]))
        );
        assert_eq!(common_name(&[0x31, 0x03, 0x30, 0x01]), None, "malformed");
    }
}
