//! The TLS connector a connection string asks for (`supervisor_config::postgres_url`
//! reads what it asks).

use supervisor_config::postgres_url::Tls;

/// The TLS connector for `tls` (not `Disable`): unverified for `prefer` and `require`,
/// verified against `sslrootcert` (or the system's roots) for `verify-ca`, and also
/// against the host name for `verify-full`.
pub(super) fn connector(
    tls: &Tls,
) -> std::result::Result<postgres_openssl::MakeTlsConnector, String> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut builder =
        SslConnector::builder(SslMethod::tls_client()).map_err(|e| format!("TLS: {e}"))?;
    let verify_host = match tls {
        Tls::Disable | Tls::Prefer | Tls::Require => {
            builder.set_verify(SslVerifyMode::NONE);
            false
        }
        Tls::VerifyCa(root) | Tls::VerifyFull(root) => {
            if let Some(root) = root {
                builder
                    .set_ca_file(root)
                    .map_err(|e| format!("sslrootcert {root}: cannot be read as PEM: {e}"))?;
            }
            builder.set_verify(SslVerifyMode::PEER);
            matches!(tls, Tls::VerifyFull(_))
        }
    };
    let mut connector = postgres_openssl::MakeTlsConnector::new(builder.build());
    if !verify_host {
        connector.set_callback(|config, _| {
            config.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(connector)
}
