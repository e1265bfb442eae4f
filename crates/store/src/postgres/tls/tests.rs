//! The verifier against certificates made by the `openssl` command (as operators make
//! them, PostgreSQL's recipes among them), and whole handshakes in memory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::{client_config, name_matches, verifier, Tls};

/// Certificates made in a temporary directory: a CA; `v1.crt`, an X.509 v1 certificate
/// it signs with the host in its CN only (`openssl x509 -req` without extensions, as
/// PostgreSQL's documentation makes one); `san.crt`, a v3 one it signs for
/// `DNS:localhost` with CN `other`; `self.crt`, self-signed with CN `localhost` only;
/// and `other-ca.crt`, a CA that signed none of them.
struct Pki {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the `openssl` command (scripts/with-postgres needs it too)");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Self-signed (and so a CA's, by openssl's defaults): `name.crt`, `name.key`.
        let self_signed = |name: &str, cn: &str| {
            let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
            let args = [
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ];
            let mut args: Vec<&str> = args.to_vec();
            args.extend(["-subj", cn, "-keyout", &key, "-out", &crt]);
            openssl(d, &args);
        };
        let ca = |name: &str| self_signed(name, &format!("/CN={name}"));
        ca("ca");
        ca("other-ca");
        let signed = |name: &str, cn: &str, ext: Option<&str>| {
            let (key, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            openssl(
                d,
                &[
                    "req", "-newkey", "rsa:2048", "-nodes", "-subj", cn, "-keyout", &key, "-out",
                    &csr,
                ],
            );
            let mut args = vec![
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &crt,
            ];
            if let Some(ext) = ext {
                std::fs::write(d.join("ext"), ext).unwrap();
                args.extend(["-extfile", "ext"]);
            }
            openssl(d, &args);
        };
        signed("v1", "/CN=localhost", None);
        signed(
            "san",
            "/CN=other",
            Some("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n"),
        );
        self_signed("self", "/CN=localhost");
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cert(&self, name: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(self.path(name)).unwrap()
    }

    fn key(&self, name: &str) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_file(self.path(name)).unwrap()
    }

    /// `mode`'s verifier with `root` as `sslrootcert`.
    fn verifier(
        &self,
        full: bool,
        root: &str,
    ) -> Arc<dyn rustls::client::danger::ServerCertVerifier> {
        let root = Some(self.path(root).to_string_lossy().into_owned());
        let tls = if full {
            Tls::VerifyFull(root)
        } else {
            Tls::VerifyCa(root)
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        verifier(&tls, &provider).unwrap()
    }
}

fn host(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_string()).unwrap()
}

fn days_from_now(days: u64) -> UnixTime {
    let now = UnixTime::now().as_secs();
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(now + days * 86_400))
}

/// Whether `verifier` takes `cert` for `name` at `now`.
fn takes(
    v: &Arc<dyn rustls::client::danger::ServerCertVerifier>,
    cert: &CertificateDer<'_>,
    name: &str,
    now: UnixTime,
) -> Result<(), String> {
    v.verify_server_cert(cert, &[], &host(name), &[], now)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn certificates_webpki_refuses_are_taken_as_libpq_takes_them() {
    let pki = Pki::new();
    let now = UnixTime::now();
    let (v1, san, selfsigned) = (
        pki.cert("v1.crt"),
        pki.cert("san.crt"),
        pki.cert("self.crt"),
    );
    // A v1 certificate signed by the CA, naming the host in its CN only.
    let full = pki.verifier(true, "ca.crt");
    takes(&full, &v1, "localhost", now).unwrap();
    takes(&full, &v1, "LOCALHOST", now).unwrap();
    let err = takes(&full, &v1, "db.invalid", now).unwrap_err();
    assert!(err.contains("not valid for name \"db.invalid\""), "{err}");
    assert!(err.contains("localhost"), "{err}");
    takes(&pki.verifier(false, "ca.crt"), &v1, "db.invalid", now).unwrap();
    // Signed by another CA than the roots': refused, whatever the name.
    for full in [true, false] {
        let err = takes(&pki.verifier(full, "other-ca.crt"), &v1, "localhost", now).unwrap_err();
        assert!(err.contains("certificate"), "{err}");
    }
    // Out of its dates: refused.
    let err = takes(&full, &v1, "localhost", days_from_now(10)).unwrap_err();
    assert!(err.contains("Expired"), "{err}");
    // A subjectAltName with a DNS name: the CN is not looked at.
    takes(&full, &san, "localhost", now).unwrap();
    assert!(takes(&full, &san, "other", now).is_err());
    // A self-signed certificate with the host in its CN, given as sslrootcert itself.
    let pinned = pki.verifier(true, "self.crt");
    takes(&pinned, &selfsigned, "localhost", now).unwrap();
    assert!(takes(&pinned, &selfsigned, "db.invalid", now).is_err());
    assert!(takes(&pinned, &selfsigned, "localhost", days_from_now(10)).is_err());
    takes(
        &pki.verifier(false, "self.crt"),
        &selfsigned,
        "db.invalid",
        now,
    )
    .unwrap();
    // Not the one given, nor signed by it.
    assert!(takes(&pinned, &v1, "localhost", now).is_err());
}

/// A whole handshake in memory: our client settings for `tls` against a server with
/// `cert` and `key`, TLS 1.3 or 1.2 only.
fn handshake(
    tls: &Tls,
    name: &str,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    tls12: bool,
) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    // A key of its own, unchecked against the certificate (rustls's own check parses
    // the certificate with webpki, which refuses a v1 one).
    let signing = provider.key_provider.load_private_key(key).unwrap();
    let certified = Arc::new(rustls::sign::CertifiedKey::new(vec![cert], signing));
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Always(certified)));
    let mut server = rustls::ServerConnection::new(Arc::new(server)).unwrap();
    let config = Arc::new(client_config(tls)?);
    let mut client = rustls::ClientConnection::new(config, host(name)).unwrap();
    for _ in 0..20 {
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
        let mut buf = Vec::new();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut buf.as_slice()).unwrap();
        server
            .process_new_packets()
            .map_err(|e| format!("server: {e}"))?;
        let mut buf = Vec::new();
        server.write_tls(&mut buf).unwrap();
        client.read_tls(&mut buf.as_slice()).unwrap();
        client.process_new_packets().map_err(|e| e.to_string())?;
    }
    Err("the handshake never ended".into())
}

#[test]
fn handshakes_with_v1_and_self_signed_certificates_check_their_signatures() {
    let pki = Pki::new();
    let root = |name: &str| Some(pki.path(name).to_string_lossy().into_owned());
    for tls12 in [false, true] {
        for (mode, name) in [
            (Tls::VerifyFull(root("ca.crt")), "localhost"),
            (Tls::VerifyCa(root("ca.crt")), "db.invalid"),
            (Tls::Require, "db.invalid"),
            (Tls::Prefer, "localhost"),
        ] {
            handshake(&mode, name, pki.cert("v1.crt"), pki.key("v1.key"), tls12)
                .unwrap_or_else(|e| panic!("{mode:?} {name} tls12={tls12}: {e}"));
        }
        handshake(
            &Tls::VerifyFull(root("self.crt")),
            "localhost",
            pki.cert("self.crt"),
            pki.key("self.key"),
            tls12,
        )
        .unwrap();
        // A server presenting the certificate without its key (another key signs): refused.
        let err = handshake(
            &Tls::VerifyFull(root("ca.crt")),
            "localhost",
            pki.cert("v1.crt"),
            pki.key("san.key"),
            tls12,
        );
        assert!(err.is_err(), "tls12={tls12}");
        assert!(handshake(
            &Tls::VerifyFull(root("other-ca.crt")),
            "localhost",
            pki.cert("v1.crt"),
            pki.key("v1.key"),
            tls12
        )
        .is_err());
    }
}

#[test]
fn names_match_as_libpq_matches_them() {
    assert!(name_matches("db.example.org", "DB.Example.org"));
    assert!(name_matches("*.example.org", "db.example.org"));
    assert!(!name_matches("*.example.org", "a.db.example.org"));
    assert!(!name_matches("*.example.org", "example.org"));
    assert!(!name_matches("*.example.org", ".example.org"));
    assert!(!name_matches("db.example.org", "db.example.org.evil"));
    assert!(!name_matches("db*.example.org", "db1.example.org"));
}

/// The server's one certificate, for every client.
#[derive(Debug)]
struct Always(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Always {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}
