//! A PostgreSQL connection string, read as the store reads it: what it asks of TLS (as
//! libpq reads `sslmode` and `sslrootcert`), and the rest, which the client library must
//! accept. Here so that `check` and every verb refuse a URL that no connection could
//! use, at its key path, before anything tries it.

use std::str::FromStr;

/// What a connection string asks of TLS, as libpq reads `sslmode` and `sslrootcert`
/// (the client library itself knows `disable`, `prefer` and `require` only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tls {
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
pub fn tls_settings(url: &str) -> std::result::Result<(String, Tls), String> {
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
        // As libpq: `require` with a root certificate given verifies against it.
        Some("require") if root.is_some() => Tls::VerifyCa(root),
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

/// Why `url` cannot be used to connect, if it cannot: its TLS settings, or the rest as
/// the client library reads it (a host, a port, the known keys).
pub fn problem(url: &str) -> Option<String> {
    let (rest, _) = match tls_settings(url) {
        Ok(x) => x,
        Err(e) => return Some(e),
    };
    postgres::Config::from_str(&rest)
        .err()
        .map(|e| format!("not a connection string the client can use: {e}"))
}
