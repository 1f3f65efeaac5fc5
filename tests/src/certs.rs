//! Certificates made at test time (rcgen): a CA, a server certificate for 127.0.0.1 and localhost, and a client
//! certificate, as PEM files in a temporary directory.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use std::path::PathBuf;

pub struct Certs {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing here: clients trusting only it must refuse the servers.
    pub other_ca: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA certificate")
}

impl Certs {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("millrace-certs-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("certs dir");
        let issuer = ca("millrace test CA");
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, cn: &str| {
            let mut params = CertificateParams::new(names).expect("params");
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &issuer).expect("certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()], ExtendedKeyUsagePurpose::ServerAuth, "millrace");
        let (client, client_key) = leaf(vec!["client.millrace".into()], ExtendedKeyUsagePurpose::ClientAuth, "a millrace client");
        let write = |name: &str, body: &str| {
            let p = dir.join(name);
            std::fs::write(&p, body).expect("write a PEM file");
            p
        };
        Self {
            ca: write("ca.pem", &issuer.pem()),
            server_cert: write("server.pem", &server),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client),
            client_key: write("client.key", &client_key),
            other_ca: write("other-ca.pem", &ca("another CA").pem()),
            dir,
        }
    }

    /// Flags of a listener serving TLS and asking clients for certificates of this CA (mTLS).
    pub fn server_flags(&self) -> Vec<String> {
        let s = |p: &PathBuf| p.display().to_string();
        vec!["--tls-cert".into(), s(&self.server_cert), "--tls-key".into(), s(&self.server_key), "--tls-client-ca".into(), s(&self.ca)]
    }

    /// Flags of a client verifying servers with this CA and presenting its client certificate.
    pub fn client_flags(&self) -> Vec<String> {
        let s = |p: &PathBuf| p.display().to_string();
        vec!["--tls-ca".into(), s(&self.ca), "--tls-client-cert".into(), s(&self.client_cert), "--tls-client-key".into(), s(&self.client_key)]
    }

    pub fn client(&self, with_certificate: bool) -> millrace_proto::tls::Client {
        millrace_proto::tls::ClientTls {
            tls_ca: Some(self.ca.clone()),
            tls_client_cert: with_certificate.then(|| self.client_cert.clone()),
            tls_client_key: with_certificate.then(|| self.client_key.clone()),
        }
        .load()
        .expect("client TLS")
    }
}

impl Default for Certs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
