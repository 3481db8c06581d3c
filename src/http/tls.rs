//! HTTPS served by Berth itself: a certificate chain and key from PEM files, reloaded when the
//! files change, HTTP/2 offered by ALPN, TLS 1.2 and 1.3 only, and optionally client
//! certificates required from a CA.
//!
//! Certificates are rotated in place (cert-manager rewrites a Secret's files; an operator
//! copies new ones over the old), so the files are read again every `reload_interval` and a
//! changed set replaces the TLS settings for connections accepted from then on. Connections
//! already open keep the settings they were accepted with and finish undisturbed. A set that
//! does not load (the key written before the certificate, a truncated file) is reported once
//! and the previous settings stay until a later read loads.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use crate::instruments;

/// Where the server's certificate chain, its key and the CA of accepted client certificates
/// are kept.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificates: the server's first, then the intermediates that lead to a root.
    pub cert: PathBuf,
    /// The PEM private key of the first certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM certificates of the CAs whose client certificates are accepted; with it, clients
    /// without such a certificate are refused during the handshake.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS settings could not be loaded. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate file without any certificate.
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A file that is not PEM.
    #[error("{}: not valid PEM: {detail}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        detail: String,
    },
    /// A key file without any private key.
    #[error("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A key that cannot be used, or that is not the certificate's.
    #[error("the key in {} is not usable as the key of the certificate in {}: {detail}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What TLS said.
        detail: String,
    },
    /// A client CA file whose certificates cannot be trust anchors.
    #[error("client CA {}: {detail}", path.display())]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// What TLS said.
        detail: String,
    },
    /// Settings TLS refused.
    #[error("TLS settings: {0}")]
    Settings(#[from] rustls::Error),
}

/// HTTP/2 first, then HTTP/1.1: what clients are offered by ALPN.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The TLS settings new connections are accepted with, and the files they came from.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Loaded>,
    /// The file contents that last failed to load, so that one bad set is reported once.
    last_failed: Mutex<Option<Vec<Vec<u8>>>>,
}

struct Loaded {
    settings: Arc<ServerConfig>,
    contents: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the files, refusing a set that does not make working TLS settings.
    pub fn load(files: TlsFiles) -> Result<Arc<ServerTls>, TlsError> {
        let contents = read_all(&files)?;
        let settings = Arc::new(settings_from(&files, &contents)?);
        Ok(Arc::new(ServerTls {
            files,
            current: RwLock::new(Loaded { settings, contents }),
            last_failed: Mutex::new(None),
        }))
    }

    /// The settings a connection accepted now uses.
    pub fn settings(&self) -> Arc<ServerConfig> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&current.settings)
    }

    /// Reads the files again and, if they changed and load, uses them for new connections.
    /// Returns whether the settings were replaced.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let contents = read_all(&self.files)?;
        {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            if current.contents == contents {
                return Ok(false);
            }
        }
        let settings = Arc::new(settings_from(&self.files, &contents)?);
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *current = Loaded { settings, contents };
        Ok(true)
    }

    /// Reloads every `interval` until `stop` resolves.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = &mut stop => return,
            }
            let tls = Arc::clone(&self);
            // File reads and key parsing block: off the async workers.
            let outcome = tokio::task::spawn_blocking(move || tls.reload()).await;
            match outcome {
                Ok(Ok(true)) => {
                    *self.last_failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    metrics::counter!(instruments::TLS_RELOADS, "outcome" => "loaded").increment(1);
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded; new connections use it");
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => self.report_failure(&e),
                Err(e) => tracing::warn!(error = %e, "TLS reload task failed"),
            }
        }
    }

    fn report_failure(&self, error: &TlsError) {
        let contents = read_all(&self.files).ok();
        let mut last = self.last_failed.lock().unwrap_or_else(|p| p.into_inner());
        if contents.is_some() && *last == contents {
            return;
        }
        *last = contents;
        metrics::counter!(instruments::TLS_RELOADS, "outcome" => "failed").increment(1);
        tracing::warn!(
            error = %error,
            "the TLS files changed but do not load; new connections keep the previous certificate"
        );
    }
}

fn read_all(files: &TlsFiles) -> Result<Vec<Vec<u8>>, TlsError> {
    let paths = [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ];
    paths
        .into_iter()
        .flatten()
        .map(|path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.clone(),
                source,
            })
        })
        .collect()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Settings from the files' contents, in [`read_all`]'s order.
fn settings_from(files: &TlsFiles, contents: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
    let chain = certificates(&files.cert, &contents[0])?;
    let key = PrivateKeyDer::from_pem_slice(&contents[1]).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: files.key.clone(),
        },
        other => TlsError::Pem {
            path: files.key.clone(),
            detail: other.to_string(),
        },
    })?;
    let provider = provider();
    let certified =
        CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
            detail: e.to_string(),
        })?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match (&files.client_ca, contents.get(2)) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates(path, pem)? {
                roots.add(ca).map_err(|e| TlsError::ClientCa {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut settings = builder.with_cert_resolver(Arc::new(OneCertificate(Arc::new(certified))));
    settings.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(settings)
}

/// Every client is answered with the one configured chain (no SNI selection).
#[derive(Debug)]
struct OneCertificate(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}
