//! TLS trust for the client: the public roots, plus what `ca_file` holds. A certificate
//! in `ca_file` is also *pinned*: when the server presents exactly that certificate it
//! is accepted as it is. That is what makes the usual self-signed certificate work
//! (`openssl req -x509` marks it as a CA, and the standard checks then refuse it as a
//! server certificate, `CaUsedAsEndEntity`). The handshake signatures are still checked
//! against the pinned certificate's key, so only the holder of its private key passes.

use std::sync::Arc;

use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};

use crate::config::Endpoint;

/// The rustls settings for `endpoint` (HTTPS, FTPS and the connection test share them).
pub fn client_config(endpoint: &Endpoint) -> Result<ClientConfig, String> {
    let provider = Arc::new(crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut pinned = Vec::new();
    if let Some(ca) = &endpoint.ca_file {
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read ca_file {}: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "ca_file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                ca.display()
            ));
        }
        for cert in certs {
            // A certificate that cannot be a trust anchor can still be pinned.
            let _ = roots.add(cert.clone());
            pinned.push(cert);
        }
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("TLS settings: {e}"))?;
    let verifier = Pinned {
        pinned,
        webpki,
        provider: provider.clone(),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(config)
}

#[derive(Debug)]
struct Pinned {
    pinned: Vec<CertificateDer<'static>>,
    webpki: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS failure in words, with what to do about it. `text` is the library's message
/// (rustls and webpki name the certificate problem in it by its variant name).
pub fn explain(text: &str) -> String {
    let why = [
        (
            "UnknownIssuer",
            "the server's certificate is not signed by anyone this client trusts (a \
             self-signed certificate?): give the server's certificate file with \
             `ctdata init --ca-file cert.pem`",
        ),
        (
            "CaUsedAsEndEntity",
            "the server presents a CA certificate as its own, and it is not one given with \
             --ca-file: give exactly the server's certificate file with `ctdata init \
             --ca-file cert.pem`",
        ),
        (
            "NotValidForName",
            "the server's certificate is made out for another name than the one in the \
             URL: use the name it was made for, or make a certificate for this name",
        ),
        (
            "Expired",
            "the server's certificate has expired: the administrator must renew it",
        ),
        (
            "NotValidYet",
            "the server's certificate is not valid yet: check this device's clock",
        ),
    ];
    for (marker, words) in why {
        if text.contains(marker) {
            return format!("{words} ({text})");
        }
    }
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_problems_are_said_in_words() {
        let ca = "invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))";
        assert!(explain(ca).starts_with("the server presents a CA certificate"));
        let unknown = "invalid peer certificate: UnknownIssuer";
        assert!(explain(unknown).contains("--ca-file cert.pem"));
        assert!(
            explain("invalid peer certificate: NotValidForNameContext { .. }")
                .contains("another name")
        );
        assert_eq!(explain("connection reset"), "connection reset");
    }
}
