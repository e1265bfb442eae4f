//! The TLS connector a connection string asks for (`supervisor_config::postgres_url`
//! reads what it asks): rustls over ring, with the checks of libpq's `sslmode`.
//!
//! webpki, rustls's certificate verifier, is stricter than libpq (OpenSSL): it takes
//! X.509 v3 certificates only, a host name from the subjectAltName only, and no CA's
//! certificate as a server's. PostgreSQL's own recipes make certificates it refuses (a
//! self-signed one with the host in its CN; a CA-signed v1 one). So what webpki refuses
//! is looked at again here as libpq would ([`by_hand`]): a server certificate that
//! `sslrootcert` holds itself, or one signed directly by a certificate there, within
//! its dates, and for `verify-full` naming the host in a subjectAltName or, when it
//! has no DNS name there, in its CN. `prefer` and `require` check nothing of the
//! certificate, as libpq: the handshake's signature is not checked either (it proves
//! nothing without a trusted certificate), so that any key type and version connects.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls13_signature_with_raw_key, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use x509_cert::der::oid::AssociatedOid;
use x509_cert::der::{Decode, Encode, Tagged};

use postgres::tls::MakeTlsConnect;
use postgres::Socket;
use supervisor_config::postgres_url::Tls;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The TLS connector for `tls` (not `Disable`): unverified for `prefer` and `require`,
/// verified against `sslrootcert` (or the system's roots) for `verify-ca`, and also
/// against the host name for `verify-full`.
pub(super) fn connector(tls: &Tls) -> std::result::Result<Connector, String> {
    Ok(Connector(MakeRustlsConnect::new(client_config(tls)?)))
}

/// rustls's settings for `tls`: see [`connector`].
fn client_config(tls: &Tls) -> std::result::Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = verifier(tls, &provider)?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(config)
}

/// What checks the server's certificate for `tls`.
fn verifier(
    tls: &Tls,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> std::result::Result<Arc<dyn ServerCertVerifier>, String> {
    Ok(match tls {
        Tls::Disable | Tls::Prefer | Tls::Require => Arc::new(Unverified),
        Tls::VerifyCa(root) | Tls::VerifyFull(root) => {
            let (roots, given) = roots(root.as_deref())?;
            let chains =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
                    .build()
                    .map_err(|e| format!("TLS: cannot verify the server's certificate: {e}"))?;
            Arc::new(Verified {
                chains,
                given,
                algorithms: provider.signature_verification_algorithms,
                check_name: matches!(tls, Tls::VerifyFull(_)),
            })
        }
    })
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
        if x509_cert::Certificate::from_der(cert.as_ref()).is_err() {
            return Err(unreadable(&"a certificate in it cannot be parsed"));
        }
        // webpki takes v3 roots only; a v1 root is still used by hand.
        let _ = store.add(cert.clone());
    }
    Ok((store, certs))
}

/// `verify-ca` and `verify-full` (see the module's comment).
#[derive(Debug)]
struct Verified {
    chains: Arc<WebPkiServerVerifier>,
    /// The certificates of `sslrootcert`, as given (none: the system's roots).
    given: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
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
        let webpki = (self.chains).verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match webpki {
            Ok(verified) => Ok(verified),
            // The chain is checked first: a name that does not match is the only error
            // that can follow a chain found good. libpq also looks at the CN.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name || names_host(&parse(end_entity)?, server_name) => {
                Ok(ServerCertVerified::assertion())
            }
            Err(refused) => {
                let cert = parse(end_entity)?;
                match by_hand(&cert, end_entity, &self.given, &self.algorithms, now) {
                    Some(Ok(())) if !self.check_name || names_host(&cert, server_name) => {
                        Ok(ServerCertVerified::assertion())
                    }
                    Some(Ok(())) => Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForNameContext {
                            expected: server_name.to_owned(),
                            presented: presented_names(&cert),
                        },
                    )),
                    Some(Err(why)) => Err(why),
                    None => Err(refused),
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signed(message, cert, dss, &self.algorithms, false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signed(message, cert, dss, &self.algorithms, true)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn bad_encoding() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
}

fn parse(cert: &CertificateDer<'_>) -> Result<x509_cert::Certificate, rustls::Error> {
    x509_cert::Certificate::from_der(cert.as_ref()).map_err(|_| bad_encoding())
}

/// What webpki refused, as libpq would take it: `None` if `cert` is neither one of
/// `given` nor signed directly by one of them (then webpki's reason stands), else
/// whether it (and the one of `given` that signed it) is within its dates.
fn by_hand(
    cert: &x509_cert::Certificate,
    der: &CertificateDer<'_>,
    given: &[CertificateDer<'static>],
    algorithms: &WebPkiSupportedAlgorithms,
    now: UnixTime,
) -> Option<Result<(), rustls::Error>> {
    if given.iter().any(|g| g.as_ref() == der.as_ref()) {
        return Some(within_dates(cert, now));
    }
    let issuer = given
        .iter()
        .filter_map(|g| x509_cert::Certificate::from_der(g.as_ref()).ok())
        .find(|issuer| issued_by(cert, issuer, algorithms))?;
    // The issuer must be within its own dates too, as OpenSSL checks a chain.
    Some(within_dates(cert, now).and_then(|()| within_dates(&issuer, now)))
}

/// `issuer` can issue certificates (a v1 certificate, or one a CA) and its key signed
/// `cert`, whose issuer it names.
fn issued_by(
    cert: &x509_cert::Certificate,
    issuer: &x509_cert::Certificate,
    algorithms: &WebPkiSupportedAlgorithms,
) -> bool {
    if cert.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return false;
    }
    let basic = issuer
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == x509_cert::ext::pkix::BasicConstraints::OID);
    if let Some(ext) = basic {
        match x509_cert::ext::pkix::BasicConstraints::from_der(ext.extn_value.as_bytes()) {
            Ok(b) if b.ca => {}
            _ => return false,
        }
    }
    let (Ok(tbs), Ok(alg), Ok(key)) = (
        cert.tbs_certificate.to_der(),
        contents(&cert.signature_algorithm),
        issuer.tbs_certificate.subject_public_key_info.to_der(),
    ) else {
        return false;
    };
    let Some(signature) = cert.signature.as_bytes() else {
        return false;
    };
    let key = SubjectPublicKeyInfoDer::from(key.as_slice());
    let Ok(key) = webpki::RawPublicKeyEntity::try_from(&key) else {
        return false;
    };
    (algorithms.all.iter())
        .filter(|a| a.signature_alg_id().as_ref() == alg.as_slice())
        .any(|a| key.verify_signature(*a, &tbs, signature).is_ok())
}

/// The contents of a DER AlgorithmIdentifier (without its SEQUENCE's tag and length),
/// as webpki's algorithms name theirs.
fn contents(alg: &x509_cert::spki::AlgorithmIdentifierOwned) -> Result<Vec<u8>, ()> {
    let mut out = alg.oid.to_der().map_err(|_| ())?;
    if let Some(params) = &alg.parameters {
        out.extend(params.to_der().map_err(|_| ())?);
    }
    Ok(out)
}

/// A certificate's validity dates hold `now`.
fn within_dates(cert: &x509_cert::Certificate, now: UnixTime) -> Result<(), rustls::Error> {
    let validity = &cert.tbs_certificate.validity;
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

/// `cert` names the host as libpq checks it: a DNS name (with one leading `*.`
/// wildcard label) or an IP address of its subjectAltName; when that has no DNS name,
/// its CN (for an IP address too, as text).
fn names_host(cert: &x509_cert::Certificate, host: &ServerName<'_>) -> bool {
    use x509_cert::ext::pkix::name::GeneralName;
    let sans: Vec<GeneralName> = (cert.tbs_certificate.extensions.iter().flatten())
        .filter(|e| e.extn_id == x509_cert::ext::pkix::SubjectAltName::OID)
        .filter_map(|e| {
            x509_cert::ext::pkix::SubjectAltName::from_der(e.extn_value.as_bytes()).ok()
        })
        .flat_map(|s| s.0)
        .collect();
    let (text, ip) = match host {
        ServerName::DnsName(d) => (d.as_ref().to_string(), None),
        ServerName::IpAddress(a) => {
            let ip = IpAddr::from(*a);
            (ip.to_string(), Some(ip))
        }
        _ => return false,
    };
    let mut dns_names = false;
    for san in &sans {
        match san {
            GeneralName::DnsName(name) => {
                dns_names = true;
                if ip.is_none() && name_matches(name.as_str(), &text) {
                    return true;
                }
            }
            GeneralName::IpAddress(bytes) => {
                let theirs = match bytes.as_bytes() {
                    b if b.len() == 4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
                    b if b.len() == 16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
                    _ => None,
                };
                if ip.is_some() && theirs == ip {
                    return true;
                }
            }
            _ => {}
        }
    }
    !dns_names && common_names(cert).iter().any(|cn| name_matches(cn, &text))
}

/// The names a certificate gives (its subjectAltName's DNS names, else its CNs), for
/// an error.
fn presented_names(cert: &x509_cert::Certificate) -> Vec<String> {
    use x509_cert::ext::pkix::name::GeneralName;
    let dns: Vec<String> = (cert.tbs_certificate.extensions.iter().flatten())
        .filter(|e| e.extn_id == x509_cert::ext::pkix::SubjectAltName::OID)
        .filter_map(|e| {
            x509_cert::ext::pkix::SubjectAltName::from_der(e.extn_value.as_bytes()).ok()
        })
        .flat_map(|s| s.0)
        .filter_map(|n| match n {
            GeneralName::DnsName(d) => Some(format!("DnsName({:?})", d.as_str())),
            _ => None,
        })
        .collect();
    if dns.is_empty() {
        common_names(cert)
            .into_iter()
            .map(|cn| format!("CN {cn:?}"))
            .collect()
    } else {
        dns
    }
}

/// The subject's CNs, as text.
fn common_names(cert: &x509_cert::Certificate) -> Vec<String> {
    use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef};
    use x509_cert::der::Tag;
    const CN: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    let mut out = Vec::new();
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter().filter(|a| a.oid == CN) {
            let v = &atv.value;
            let text = match v.tag() {
                Tag::Utf8String => v.decode_as::<Utf8StringRef<'_>>().map(|s| s.to_string()),
                Tag::PrintableString => v
                    .decode_as::<PrintableStringRef<'_>>()
                    .map(|s| s.to_string()),
                Tag::Ia5String => v.decode_as::<Ia5StringRef<'_>>().map(|s| s.to_string()),
                Tag::TeletexString => v.decode_as::<TeletexStringRef<'_>>().map(|s| s.to_string()),
                _ => continue,
            };
            if let Ok(text) = text {
                out.push(text);
            }
        }
    }
    out
}

/// libpq's match of a certificate's name against the host: equal ignoring case, or a
/// leading `*.` standing for exactly one label.
fn name_matches(pattern: &str, host: &str) -> bool {
    if pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    match host.split_once('.') {
        Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
        None => false,
    }
}

/// A handshake's signature, checked against the server certificate's key (read here,
/// so that a v1 certificate's key serves too).
fn verify_signed(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
    tls13: bool,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let key = parse(cert)?
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|_| bad_encoding())?;
    let key = SubjectPublicKeyInfoDer::from(key.as_slice());
    if tls13 {
        return verify_tls13_signature_with_raw_key(message, &key, dss, algorithms);
    }
    let key = webpki::RawPublicKeyEntity::try_from(&key).map_err(|_| bad_encoding())?;
    let candidates = (algorithms.mapping.iter())
        .filter(|(scheme, _)| *scheme == dss.scheme)
        .flat_map(|(_, algs)| algs.iter());
    for alg in candidates {
        if key.verify_signature(*alg, message, dss.signature()).is_ok() {
            return Ok(HandshakeSignatureValid::assertion());
        }
    }
    Err(rustls::Error::InvalidCertificate(
        CertificateError::BadSignature,
    ))
}

/// `prefer` and `require`: encrypted, with no check of who the server is, as libpq.
#[derive(Debug)]
struct Unverified;

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
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        use SignatureScheme::*;
        vec![
            ECDSA_NISTP256_SHA256,
            ECDSA_NISTP384_SHA384,
            ECDSA_NISTP521_SHA512,
            ED25519,
            ED448,
            RSA_PSS_SHA256,
            RSA_PSS_SHA384,
            RSA_PSS_SHA512,
            RSA_PKCS1_SHA256,
            RSA_PKCS1_SHA384,
            RSA_PKCS1_SHA512,
            RSA_PKCS1_SHA1,
            ECDSA_SHA1_Legacy,
        ]
    }
}

#[cfg(test)]
mod tests;
