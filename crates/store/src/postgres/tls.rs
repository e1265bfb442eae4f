//! The TLS connector a connection string asks for (`supervisor_config::postgres_url`
//! reads what it asks): rustls over ring, with the checks of libpq's `sslmode`.

use std::sync::Arc;

use postgres::tls::MakeTlsConnect;
use postgres::Socket;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_name, WebPkiServerVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use supervisor_config::postgres_url::Tls;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The TLS connector for `tls` (not `Disable`): unverified for `prefer` and `require`,
/// verified against `sslrootcert` (or the system's roots) for `verify-ca`, and also
/// against the host name for `verify-full`.
pub(super) fn connector(tls: &Tls) -> std::result::Result<Connector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match tls {
        Tls::Disable | Tls::Prefer | Tls::Require => Arc::new(Unverified(Arc::clone(&provider))),
        Tls::VerifyCa(root) | Tls::VerifyFull(root) => {
            let (roots, pinned) = roots(root.as_deref())?;
            let chains =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| format!("TLS: cannot verify the server's certificate: {e}"))?;
            Arc::new(Verified {
                chains,
                pinned,
                check_name: matches!(tls, Tls::VerifyFull(_)),
            })
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Connector(MakeRustlsConnect::new(config)))
}

/// rustls's connector, given no host name for a unix socket (whose server never offers
/// TLS): a connector for a name of its own, which never handshakes, since the client
/// refuses TLS without a host name. rustls's own refuses to be made without a valid
/// name, which failed every connection through a socket, `prefer` (the default) too.
pub(super) struct Connector(MakeRustlsConnect);

impl MakeTlsConnect<Socket> for Connector {
    type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;
    type Error = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        let name = if domain.is_empty() {
            "localhost"
        } else {
            domain
        };
        MakeTlsConnect::<Socket>::make_tls_connect(&mut self.0, name)
    }
}

/// The roots to verify with: the certificates `sslrootcert` names (PEM), which are also
/// returned as they are, or the system's when it is not set.
fn roots(
    root: Option<&str>,
) -> std::result::Result<(RootCertStore, Vec<CertificateDer<'static>>), String> {
    let mut store = RootCertStore::empty();
    let Some(path) = root else {
        // Certificates of the system's that cannot be used are skipped, as OpenSSL's
        // default paths would; none at all fails the handshake, naming the certificate.
        let found = rustls_native_certs::load_native_certs();
        store.add_parsable_certificates(found.certs);
        return Ok((store, Vec::new()));
    };
    let unreadable =
        |e: &dyn std::fmt::Display| format!("sslrootcert {path}: cannot be read as PEM: {e}");
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))?;
    if certs.is_empty() {
        return Err(unreadable(&"it holds no certificate"));
    }
    for cert in &certs {
        store.add(cert.clone()).map_err(|e| unreadable(&e))?;
    }
    Ok((store, certs))
}

/// `verify-ca` and `verify-full`: the server's certificate must lead to a root, and
/// for `verify-full` name the host. A server presenting a certificate that the roots
/// hold themselves (a self-signed one given as `sslrootcert`, PostgreSQL's usual setup)
/// is trusted as libpq trusts it, within its validity dates: webpki refuses a CA's
/// certificate as a server's.
#[derive(Debug)]
struct Verified {
    chains: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
    check_name: bool,
}

impl ServerCertVerifier for Verified {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            within_dates(end_entity, now)?;
            if self.check_name {
                let cert = ParsedCertificate::try_from(end_entity)?;
                verify_server_name(&cert, server_name)?;
            }
            return Ok(ServerCertVerified::assertion());
        }
        // The chain is checked first: a name that does not match is the only error
        // that can follow a chain found good.
        match (self.chains).verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chains.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chains.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chains.supported_verify_schemes()
    }
}

/// A certificate's validity dates hold `now`.
fn within_dates(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let validity = &parsed.tbs_certificate.validity;
    let now = now.as_secs();
    if now < validity.not_before.to_unix_duration().as_secs() {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet,
        ));
    }
    if now > validity.not_after.to_unix_duration().as_secs() {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    }
    Ok(())
}

/// `prefer` and `require`: encrypted, with no check of who the server is (as libpq). The
/// handshake's signatures are still checked against the certificate it presents.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
