//! Test certificates, made at test time with rcgen (ECDSA P-256): a CA and
//! the certificates it signs. No key here is committed or worth trusting.

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate authority for one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A certificate and its key, signed by a [`TestCa`].
pub struct Issued {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    /// A self-signed CA with this common name.
    pub fn new(common_name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("CA parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate().expect("a P-256 key");
        let cert = params.self_signed(&key).expect("the CA certificate");
        Self { cert, key }
    }

    /// The CA's certificate (DER), to trust.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// The CA's certificate (PEM).
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's own key (PEM): for a test that serves the CA's certificate
    /// as if it were a server's.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate for `names` (DNS names or IP addresses) with common
    /// name `cn`, valid now, or long expired (2020 to 2021) if `expired`.
    pub fn issue(&self, names: &[&str], cn: &str, expired: bool) -> Issued {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("names");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = rcgen::KeyPair::generate().expect("a P-256 key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("a signed certificate");
        Issued { cert, key }
    }
}

impl Issued {
    /// The certificate chain (DER): the certificate alone.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.der().clone()]
    }

    /// The private key (DER, PKCS#8).
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::try_from(self.key.serialize_der()).expect("a PKCS#8 key")
    }

    /// The certificate (PEM).
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The private key (PEM).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}
