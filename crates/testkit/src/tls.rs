//! Certificates for TLS tests: a throw-away certificate authority that issues server and client
//! certificates into a directory, as cert-manager would mount them.
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate (PEM), to trust.
    pub cert_pem: String,
}

/// A certificate and its key, written as PEM files.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate file.
    pub cert_file: PathBuf,
    /// The private key file.
    pub key_file: PathBuf,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        Self { cert_pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// Writes the CA certificate to `path` and returns it.
    pub fn write_cert(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.cert_pem).expect("writing the CA certificate");
        path.to_owned()
    }

    /// Issues a certificate for `names` (DNS names or IP addresses), usable by servers and
    /// clients alike, and writes it to `dir/<file>.crt` and `dir/<file>.key`.
    pub fn issue(&self, dir: &Path, file: &str, names: &[&str]) -> IssuedCert {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or(file));
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        let issued =
            IssuedCert { cert_file: dir.join(format!("{file}.crt")), key_file: dir.join(format!("{file}.key")) };
        // The key first: a server that reloads between the two writes sees a mismatched pair,
        // refuses it and keeps the old one, then picks the whole new pair up at its next check.
        std::fs::write(&issued.key_file, key.serialize_pem()).expect("writing the key");
        std::fs::write(&issued.cert_file, cert.pem()).expect("writing the certificate");
        issued
    }
}
