//! What a connection string asks of TLS, as libpq reads `sslmode` and `sslrootcert`, and
//! the connector that does it.

/// What a connection string asks of TLS, as libpq reads `sslmode` and `sslrootcert`
/// (the client library itself knows `disable`, `prefer` and `require` only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Tls {
    /// Plain.
    Disable,
    /// TLS if the server offers it, unverified (libpq's default).
    Prefer,
    /// TLS, the server's certificate unverified.
    Require,
    /// TLS, the certificate verified against these roots (or the system's).
    VerifyCa(Option<String>),
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull(Option<String>),
}

/// The connection string without `sslmode` and `sslrootcert`, and what they ask. Takes
/// both forms: `key=value ...` (values may be single-quoted) and `postgres://...?k=v&...`.
pub(super) fn tls_settings(url: &str) -> std::result::Result<(String, Tls), String> {
    let mut mode = None;
    let mut root = None;
    let mut take = |key: &str, value: &str| -> bool {
        match key {
            "sslmode" => {
                mode = Some(value.to_owned());
                true
            }
            "sslrootcert" => {
                root = Some(value.to_owned());
                true
            }
            _ => false,
        }
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        !take(k, v)
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for (key, value, text) in key_values(url)? {
            if !take(&key, &value) {
                kept.push(text);
            }
        }
        kept.join(" ")
    };
    let tls = match mode.as_deref() {
        None | Some("prefer") | Some("allow") => Tls::Prefer,
        Some("disable") => Tls::Disable,
        Some("require") => Tls::Require,
        Some("verify-ca") => Tls::VerifyCa(root),
        Some("verify-full") => Tls::VerifyFull(root),
        Some(other) => {
            return Err(format!(
                "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, \
                 verify-full"
            ))
        }
    };
    Ok((rest, tls))
}

/// The `key=value` pairs of a connection string, each with its text as written.
fn key_values(text: &str) -> std::result::Result<Vec<(String, String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let Some(&(start, _)) = chars.peek() else {
            return Ok(out);
        };
        let mut key = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        if chars.next().map(|(_, c)| c) != Some('=') {
            return Err(format!("{key:?} has no value in the connection string"));
        }
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        let mut end = text.len();
        if chars.peek().is_some_and(|(_, c)| *c == '\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("the value of {key:?} has no closing quote")),
                    Some((_, '\\')) => value.extend(chars.next().map(|(_, c)| c)),
                    Some((i, '\'')) => {
                        end = i + 1;
                        break;
                    }
                    Some((_, c)) => value.push(c),
                }
            }
        } else {
            while let Some(&(i, c)) = chars.peek() {
                if c.is_whitespace() {
                    end = i;
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key, value, text[start..end].to_owned()));
    }
}

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
