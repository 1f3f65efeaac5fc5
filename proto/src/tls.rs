//! TLS for every Millrace listener and client (rustls, ring). Off unless asked for: a process whose listeners have
//! `--tls-cert` and `--tls-key` serves TLS only, and with `--tls-client-ca` asks every client for a certificate
//! that CA signed (mTLS). Clients speak TLS to `https://` addresses, verifying the server against `--tls-ca` (else
//! the system's roots) and presenting `--tls-client-cert` when given.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} {path}: {error}")]
    Read { flag: &'static str, path: PathBuf, error: std::io::Error },
    #[error("{flag} {path} holds no {what} in PEM form: give a PEM file (-----BEGIN ...)")]
    Empty { flag: &'static str, path: PathBuf, what: &'static str },
    #[error("{flag} {path} is not usable: {error}")]
    Invalid { flag: &'static str, path: PathBuf, error: String },
    #[error("the TLS settings are not usable: {0}")]
    Config(String),
}

/// The TLS of a process's listeners.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTls {
    /// PEM certificate (chain) the listeners present; with --tls-key they serve TLS only.
    #[arg(long, env = "MILLRACE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "MILLRACE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): when set, the listeners take only clients presenting a certificate it signed (mTLS).
    #[arg(long, env = "MILLRACE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// The TLS of a process's calls to `https://` addresses.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTls {
    /// PEM CA certificate(s) that verify the servers called at https:// addresses (default: the system's roots).
    #[arg(long, global = true, env = "MILLRACE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate presented to servers that ask for one (mTLS); with --tls-client-key.
    #[arg(long, global = true, env = "MILLRACE_TLS_CLIENT_CERT", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,
    /// PEM private key of --tls-client-cert.
    #[arg(long, global = true, env = "MILLRACE_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read { flag, path: path.to_path_buf(), error })
}

fn certs(flag: &'static str, path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let pem = read(flag, path)?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid { flag, path: path.to_path_buf(), error: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { flag, path: path.to_path_buf(), what: "certificate" });
    }
    Ok(certs)
}

fn key(flag: &'static str, path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let pem = read(flag, path)?;
    // The error says which file, never what it holds.
    rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Empty { flag, path: path.to_path_buf(), what: "private key" })
}

fn roots(flag: &'static str, path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs(flag, path)? {
        store.add(c).map_err(|e| TlsError::Invalid { flag, path: path.to_path_buf(), error: e.to_string() })?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

impl ServerTls {
    /// The settings in the environment (`MILLRACE_TLS_CERT`, `MILLRACE_TLS_KEY`, `MILLRACE_TLS_CLIENT_CA`).
    pub fn from_env() -> Self {
        Self { tls_cert: env_path("MILLRACE_TLS_CERT"), tls_key: env_path("MILLRACE_TLS_KEY"), tls_client_ca: env_path("MILLRACE_TLS_CLIENT_CA") }
    }

    pub fn enabled(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// The URL scheme of this process's listeners.
    pub fn scheme(&self) -> &'static str {
        if self.enabled() {
            "https"
        } else {
            "http"
        }
    }

    /// For a tonic server; `None` when TLS is off. The files are checked here, so a bad one stops the process at
    /// start with a clear error rather than at the first handshake.
    pub fn tonic(&self) -> Result<Option<ServerTlsConfig>, TlsError> {
        if self.rustls(Vec::new())?.is_none() {
            return Ok(None);
        }
        let (cert, key) = (self.tls_cert.as_deref().expect("enabled"), self.tls_key.as_deref().expect("enabled"));
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read("--tls-cert", cert)?, read("--tls-key", key)?));
        if let Some(ca) = &self.tls_client_ca {
            config = config.client_ca_root(Certificate::from_pem(read("--tls-client-ca", ca)?));
        }
        Ok(Some(config))
    }

    /// For an HTTP server (rustls); `None` when TLS is off. `alpn`: the protocols offered (`b"http/1.1"`).
    pub fn rustls(&self, alpn: Vec<Vec<u8>>) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
        // Half a setting never means plaintext (settings from the environment are not checked by clap).
        match (&self.tls_cert, &self.tls_key, &self.tls_client_ca) {
            (Some(_), None, _) | (None, Some(_), _) => {
                return Err(TlsError::Config("MILLRACE_TLS_CERT and MILLRACE_TLS_KEY (--tls-cert, --tls-key) go together: give both or neither".into()))
            }
            (None, None, Some(_)) => {
                return Err(TlsError::Config("MILLRACE_TLS_CLIENT_CA (--tls-client-ca) needs MILLRACE_TLS_CERT and MILLRACE_TLS_KEY".into()))
            }
            _ => {}
        }
        let (Some(cert), Some(key_path)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.tls_client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots("--tls-client-ca", ca)?), provider())
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?,
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs("--tls-cert", cert)?, key("--tls-key", key_path)?)
            .map_err(|e| TlsError::Invalid { flag: "--tls-key", path: key_path.clone(), error: e.to_string() })?;
        config.alpn_protocols = alpn;
        Ok(Some(Arc::new(config)))
    }
}

/// The loaded client settings: cheap to clone, applied to each `https://` endpoint.
#[derive(Clone, Default)]
pub struct Client {
    ca: Option<Vec<u8>>,
    /// The system has CA certificates (without any, and without --tls-ca, no https:// server can be verified).
    native_roots: bool,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// For HTTP clients (rustls); built once.
    rustls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("tls::Client").field("ca", &self.ca.is_some()).field("client_certificate", &self.identity.is_some()).finish()
    }
}

impl ClientTls {
    /// The settings in the environment (`MILLRACE_TLS_CA`, `MILLRACE_TLS_CLIENT_CERT`, `MILLRACE_TLS_CLIENT_KEY`).
    pub fn from_env() -> Self {
        Self {
            tls_ca: env_path("MILLRACE_TLS_CA"),
            tls_client_cert: env_path("MILLRACE_TLS_CLIENT_CERT"),
            tls_client_key: env_path("MILLRACE_TLS_CLIENT_KEY"),
        }
    }

    /// Reads the files (a bad one is an error now, not at the first call).
    pub fn load(&self) -> Result<Client, TlsError> {
        let ca = self.tls_ca.as_deref().map(|p| certs("--tls-ca", p).and(read("--tls-ca", p))).transpose()?;
        let identity = match (&self.tls_client_cert, &self.tls_client_key) {
            (Some(c), Some(k)) => {
                certs("--tls-client-cert", c)?;
                key("--tls-client-key", k)?;
                Some((read("--tls-client-cert", c)?, read("--tls-client-key", k)?))
            }
            _ => None,
        };
        let root_store = match &self.tls_ca {
            Some(p) => roots("--tls-ca", p)?,
            None => {
                let mut store = rustls::RootCertStore::empty();
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = store.add(c);
                }
                store
            }
        };
        let native_roots = self.tls_ca.is_some() || !root_store.is_empty();
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(root_store);
        let config = match (&self.tls_client_cert, &self.tls_client_key) {
            (Some(c), Some(k)) => builder
                .with_client_auth_cert(certs("--tls-client-cert", c)?, key("--tls-client-key", k)?)
                .map_err(|e| TlsError::Invalid { flag: "--tls-client-key", path: k.clone(), error: e.to_string() })?,
            _ => builder.with_no_client_auth(),
        };
        // No ALPN here: HTTP clients (hyper-rustls) set their own.
        Ok(Client { ca, native_roots, identity, rustls: Some(Arc::new(config)) })
    }
}

impl Client {
    /// A tonic endpoint for `url`, speaking TLS when it is `https://`.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(url.to_string())?;
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        endpoint.tls_config(self.tonic())
    }

    fn tonic(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None if self.native_roots => config.with_native_roots(),
            // No roots at all: every handshake fails ("unknown issuer"), as it should, rather than the process.
            None => config,
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }

    /// For HTTP clients over rustls (HTTP/1.1), verifying servers like the gRPC clients do.
    pub fn rustls(&self) -> Arc<rustls::ClientConfig> {
        self.rustls.clone().unwrap_or_else(|| ClientTls::default().load().expect("no files to read").rustls.expect("built"))
    }
}
