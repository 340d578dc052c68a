//! `--tls-*`: rustls configurations from PEM files, for `serve` and `send`.
//!
//! The TLS itself is tinyproto-std's (feature `tls`); this module only
//! reads certificates and keys and says what a bad file is.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tinyproto_std::rustls::pki_types::pem::PemObject;
use tinyproto_std::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tinyproto_std::rustls::server::WebPkiClientVerifier;
use tinyproto_std::rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::exit::{self, Failure};

/// The `--tls-*` files of a command.
#[derive(Debug, Default, Clone)]
pub struct TlsFiles {
    /// Our certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Our private key (PEM).
    pub key: Option<PathBuf>,
    /// The CA that signs the peer's certificate (PEM).
    pub ca: Option<PathBuf>,
}

fn bad(path: &Path, e: impl std::fmt::Display) -> Failure {
    Failure::new(exit::TLS, format!("{}: {e}", path.display()))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Failure> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(path, e))?;
    if certs.is_empty() {
        return Err(bad(path, "no certificate in it"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, Failure> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| bad(path, e))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, Failure> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots.add(cert).map_err(|e| bad(path, e))?;
    }
    Ok(Arc::new(roots))
}

/// `serve`'s configuration: our certificate and key; with a CA, client
/// certificates signed by it are required. `None` without `--tls-cert`.
pub fn server_config(files: &TlsFiles) -> Result<Option<Arc<ServerConfig>>, Failure> {
    let (Some(cert), Some(key_file)) = (&files.cert, &files.key) else {
        return Ok(None);
    };
    let builder = ServerConfig::builder();
    let builder = match &files.ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder(roots(ca)?)
                .build()
                .map_err(|e| bad(ca, e))?,
        ),
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs(cert)?, key(key_file)?)
        .map_err(|e| bad(key_file, e))?;
    Ok(Some(Arc::new(config)))
}

/// `send`'s configuration: the CA that signs the server's certificate, and
/// ours if given; the name the server's certificate must carry (the host
/// of `addr` unless given). `None` without `--tls-ca`.
pub fn client_config(
    files: &TlsFiles,
    addr: &str,
    server_name: Option<&str>,
) -> Result<Option<(Arc<ClientConfig>, ServerName<'static>)>, Failure> {
    let Some(ca) = &files.ca else {
        return Ok(None);
    };
    let builder = ClientConfig::builder().with_root_certificates(roots(ca)?);
    let config = match (&files.cert, &files.key) {
        (Some(cert), Some(key_file)) => builder
            .with_client_auth_cert(certs(cert)?, key(key_file)?)
            .map_err(|e| bad(key_file, e))?,
        _ => builder.with_no_client_auth(),
    };
    let host = server_name.unwrap_or_else(|| host_of(addr));
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| Failure::new(exit::USAGE, format!("{host:?} is not a server name: {e}")))?;
    Ok(Some((Arc::new(config), name)))
}

/// The host part of `host:port` (`[v6]:port` too).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_host_of_an_address() {
        assert_eq!(host_of("localhost:7000"), "localhost");
        assert_eq!(host_of("[::1]:7000"), "::1");
        assert_eq!(host_of("10.0.0.1:1"), "10.0.0.1");
    }

    #[test]
    fn test_a_missing_file_is_a_tls_failure_naming_it() {
        let files = TlsFiles {
            ca: Some("/no/such/ca.pem".into()),
            ..TlsFiles::default()
        };
        let e = client_config(&files, "localhost:1", None).unwrap_err();
        assert_eq!(e.status, exit::TLS);
        assert!(e.message.contains("/no/such/ca.pem"), "{}", e.message);
    }
}
