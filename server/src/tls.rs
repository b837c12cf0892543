//! TLS for every protocol (rustls with ring, no OpenSSL): the server configuration HTTPS
//! and FTPS load from `<section>.tls_cert` / `<section>.tls_key`, and the client
//! configuration FTPS sources connect with. Every failure names the setting and the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The certificate and key files `<section>` asks for: `None` when neither is set (an
/// empty value, as in `CTDATA__HTTP__TLS_CERT=`, counts as unset), an error when only
/// one is. `protocol` names what needs them ("HTTPS", "FTPS").
pub fn pair(
    section: &str,
    protocol: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
    let set = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
    match (set(cert), set(key)) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some((cert, key))),
        (Some(_), None) => bail!(
            "{section}.tls_cert is set but {section}.tls_key is not: {protocol} needs both (or neither)"
        ),
        (None, Some(_)) => bail!(
            "{section}.tls_key is set but {section}.tls_cert is not: {protocol} needs both (or neither)"
        ),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration from the chain and key; errors name `<section>.tls_cert` /
/// `tls_key` and the file.
pub fn server_config(
    section: &str,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<rustls::ServerConfig> {
    let chain = load_certs(&format!("{section}.tls_cert"), cert)?;
    let key_der = load_key(&format!("{section}.tls_key"), key)?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            let why = match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    "the key is not the certificate's".to_string()
                }
                e => e.to_string(),
            };
            anyhow!(
                "{section}.tls_cert {} and {section}.tls_key {} cannot be used together: {why}",
                cert.display(),
                key.display()
            )
        })
}

/// A client configuration trusting the public roots plus the certificates in
/// `extra_ca` (a private CA or a self-signed server certificate), read from `setting`.
pub fn client_config(
    setting: &str,
    extra_ca: Option<&Path>,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = extra_ca {
        for cert in load_certs(setting, ca)? {
            roots
                .add(cert)
                .map_err(|e| anyhow!("{setting} {}: {e}", ca.display()))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn read(setting: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow!("cannot read {setting} {}: {e}", path.display()))
}

fn load_certs(setting: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read(setting, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| anyhow!("{setting} {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{setting} {} holds no certificate (expected a PEM \"BEGIN CERTIFICATE\" block)",
            path.display()
        );
    }
    Ok(certs)
}

fn load_key(setting: &str, path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = read(setting, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => anyhow!(
            "{setting} {} holds no private key (expected a PEM \"BEGIN PRIVATE KEY\", \
             \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" block)",
            path.display()
        ),
        e => anyhow!("{setting} {} is not valid PEM: {e}", path.display()),
    })
}
