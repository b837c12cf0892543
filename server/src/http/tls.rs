//! HTTPS: the rustls acceptor for `http.tls_cert` and `http.tls_key`, loaded by the
//! shared [`crate::tls`], with HTTP/2 and HTTP/1.1 offered by ALPN.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::config::HttpSettings;

/// The acceptor the settings ask for: `None` for plain HTTP (neither file set), an
/// error when only one is set or a file cannot be used.
pub fn acceptor(http: &HttpSettings) -> anyhow::Result<Option<TlsAcceptor>> {
    let Some((cert, key)) = crate::tls::pair("http", "HTTPS", &http.tls_cert, &http.tls_key)?
    else {
        return Ok(None);
    };
    let mut config = crate::tls::server_config("http", &cert, &key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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
