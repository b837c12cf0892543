//! HTTPS: a rustls server configuration (ring, no OpenSSL) from the PEM files named by
//! `http.tls_cert` and `http.tls_key`. Every failure is a startup error that names the
//! setting and the file.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::HttpSettings;

/// The acceptor the settings ask for: `None` for plain HTTP (neither file set), an
/// error when only one is set or a file cannot be used.
pub fn acceptor(http: &HttpSettings) -> anyhow::Result<Option<TlsAcceptor>> {
    // An empty value (`CTDATA__HTTP__TLS_CERT=`) counts as unset.
    let set = |p: &Option<std::path::PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
    let (cert, key) = match (set(&http.tls_cert), set(&http.tls_key)) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => {
            bail!("http.tls_cert is set but http.tls_key is not: HTTPS needs both (or neither)")
        }
        (None, Some(_)) => {
            bail!("http.tls_key is set but http.tls_cert is not: HTTPS needs both (or neither)")
        }
    };
    let mut config = server_config("http", &cert, &key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// Checks that `<section>.tls_cert` and `<section>.tls_key` load and belong together,
/// for servers that load the files themselves (FTPS).
pub fn check_pair(section: &str, cert: &Path, key: &Path) -> anyhow::Result<()> {
    server_config(section, cert, key).map(drop)
}

/// Loads the chain and key; errors name `<section>.tls_cert` / `tls_key` and the file.
fn server_config(section: &str, cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let chain = load_certs(&format!("{section}.tls_cert"), cert)?;
    let key_der = load_key(&format!("{section}.tls_key"), key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
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
        })?;
    Ok(config)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(cert: Option<&Path>, key: Option<&Path>) -> HttpSettings {
        HttpSettings {
            tls_cert: cert.map(Path::to_path_buf),
            tls_key: key.map(Path::to_path_buf),
            ..HttpSettings::default()
        }
    }

    fn err(cert: Option<&Path>, key: Option<&Path>) -> String {
        match acceptor(&settings(cert, key)) {
            Ok(_) => panic!("expected an error"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn neither_file_means_plain_http() {
        assert!(acceptor(&settings(None, None)).unwrap().is_none());
        let empty = Path::new("");
        assert!(acceptor(&settings(Some(empty), Some(empty)))
            .unwrap()
            .is_none());
    }

    #[test]
    fn one_without_the_other_names_the_missing_key() {
        let p = Path::new("/nonexistent/x.pem");
        let e = err(Some(p), None);
        assert!(e.contains("http.tls_key is not"), "{e}");
        let e = err(None, Some(p));
        assert!(e.contains("http.tls_cert is not"), "{e}");
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let broken = dir.path().join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\n!!!!\n").unwrap();

        let e = err(Some(&missing), Some(&junk));
        assert!(
            e.contains("cannot read http.tls_cert") && e.contains("missing.pem"),
            "{e}"
        );
        let e = err(Some(&junk), Some(&junk));
        assert!(
            e.contains("http.tls_cert") && e.contains("junk.pem") && e.contains("no certificate"),
            "{e}"
        );
        let e = err(Some(&broken), Some(&junk));
        assert!(
            e.contains("http.tls_cert") && e.contains("broken.pem") && e.contains("PEM"),
            "{e}"
        );
    }
}
