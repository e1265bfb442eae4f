//! Test support: throwaway PostgreSQL databases on a test server (the one
//! `scripts/with-postgres` starts and names in [`PG_URL_VAR`]), for this crate's tests
//! and the binary's alike. Not for production use.

use std::sync::atomic::{AtomicU32, Ordering};

/// The variable that names the test server (set by `scripts/with-postgres`).
pub const PG_URL_VAR: &str = "SUPERVISOR_TEST_POSTGRES_URL";

/// The test server's URL, from [`PG_URL_VAR`].
pub fn pg_server_url() -> String {
    std::env::var(PG_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{PG_URL_VAR} is not set: run PostgreSQL tests through scripts/with-postgres, \
             e.g. scripts/with-postgres cargo nextest run -p supervisor-store --run-ignored only"
        )
    })
}

/// `url` (URL or key=value form) with its database replaced by `db`.
pub fn pg_url_with_db(url: &str, db: &str) -> String {
    match url.find("://") {
        Some(scheme_end) => {
            let rest = &url[scheme_end + 3..];
            let path_start = rest.find('/').map(|i| scheme_end + 3 + i);
            let query_start = url.find('?');
            match (path_start, query_start) {
                (Some(p), Some(q)) if p < q => format!("{}/{db}{}", &url[..p], &url[q..]),
                (Some(p), None) => format!("{}/{db}", &url[..p]),
                (_, Some(q)) => format!("{}/{db}{}", &url[..q], &url[q..]),
                (None, None) => format!("{url}/{db}"),
            }
        }
        // Of repeated keys, the last one counts.
        None => format!("{url} dbname={db}"),
    }
}

/// A database of its own on the test server, dropped when this is.
#[derive(Debug)]
pub struct PgDatabase {
    /// Its name.
    pub name: String,
    /// A URL that connects to it.
    pub url: String,
    server: String,
}

impl PgDatabase {
    /// Creates a fresh, empty database.
    pub fn new() -> PgDatabase {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let server = pg_server_url();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "supervisor_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = postgres::Client::connect(&server, postgres::NoTls).unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let url = pg_url_with_db(&server, &name);
        PgDatabase { name, url, server }
    }

    /// A plain client connection to the database, for looking behind the store's back.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).unwrap()
    }
}

impl Default for PgDatabase {
    fn default() -> Self {
        PgDatabase::new()
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let dropped = postgres::Client::connect(&self.server, postgres::NoTls).and_then(|mut c| {
            c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
        });
        if let Err(e) = dropped {
            eprintln!("cannot drop test database {}: {e:?}", self.name);
        }
    }
}
