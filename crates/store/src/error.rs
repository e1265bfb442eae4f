//! Errors of the job store.

use std::path::PathBuf;

/// Everything that can go wrong in a [`JobStore`](crate::JobStore) operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file could not be opened or set up.
    #[error("cannot open job store {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },

    /// The database file or its folder cannot be reached (permissions, a missing
    /// folder): what the OS said, which SQLite's "unable to open database file" hides.
    #[error("cannot open job store {}: {error}", path.display())]
    Access {
        /// The database file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },

    /// The database was written by a newer version of `supervisor`.
    #[error(
        "job store {} has schema version {found}, but this supervisor knows versions up to \
         {supported}: upgrade supervisor (or use another store)",
        path.display()
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The schema version found in the file.
        found: u32,
        /// The newest schema version this code knows.
        supported: u32,
    },

    /// Applying a schema migration failed.
    #[error("job store {}: migration to schema version {version} failed: {source}", path.display())]
    Migration {
        /// The database file.
        path: PathBuf,
        /// The version being migrated to.
        version: u32,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },

    /// A database operation failed.
    #[error("job store: {op} failed: {source}")]
    Sqlite {
        /// The operation, e.g. `claim`.
        op: &'static str,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },

    /// The TLS settings of a PostgreSQL connection string cannot be used (a CA file
    /// that cannot be read, an unknown `sslmode`).
    #[error("cannot connect to job store {url}: {message}")]
    Tls {
        /// The connection string, its password hidden.
        url: String,
        /// What is wrong with its TLS settings.
        message: String,
    },

    /// The PostgreSQL server could not be reached, or the connection set up.
    #[error("cannot connect to job store {url}: {}", chain(source))]
    Connect {
        /// The connection string, its password hidden.
        url: String,
        /// What the client library said.
        #[source]
        source: postgres::Error,
    },

    /// The PostgreSQL database was set up by a newer version of `supervisor`.
    #[error(
        "job store {url} has schema version {found}, but this supervisor knows versions up to \
         {supported}: upgrade supervisor (or use another database)"
    )]
    PgSchemaTooNew {
        /// The connection string, its password hidden.
        url: String,
        /// The schema version found in the database.
        found: u32,
        /// The newest schema version this code knows.
        supported: u32,
    },

    /// Applying a schema migration to a PostgreSQL database failed.
    #[error(
        "job store {url}: migration to schema version {version} failed: {}",
        chain(source)
    )]
    PgMigration {
        /// The connection string, its password hidden.
        url: String,
        /// The version being migrated to.
        version: u32,
        /// What the server said.
        #[source]
        source: postgres::Error,
    },

    /// A PostgreSQL operation failed.
    #[error("job store: {op} failed: {}", chain(source))]
    Postgres {
        /// The operation, e.g. `claim`.
        op: &'static str,
        /// What the server or the client library said.
        #[source]
        source: postgres::Error,
    },

    /// A submitted job is invalid; nothing was queued.
    #[error("job {index} of the batch is invalid: {message}")]
    InvalidJob {
        /// 0-based position of the job in the submitted batch.
        index: usize,
        /// What is wrong, naming the field.
        message: String,
    },

    /// Stored data cannot be read back (a damaged or foreign database).
    #[error("job store is damaged: {0}")]
    Corrupt(String),

    /// The caller passed a value the store cannot apply.
    #[error("job store: {0}")]
    InvalidArgument(String),
}

/// A job state name that is not one of the known states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown job state `{0}` (expected one of: queued, running, succeeded, failed, timed_out, \
     dead, canceled)"
)]
pub struct UnknownState(pub String);

/// Adds the name of the operation to a SQLite or PostgreSQL error.
pub(crate) trait Context<T> {
    /// Wraps the error as [`StoreError::Sqlite`] or [`StoreError::Postgres`] with `op`.
    fn ctx(self, op: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, postgres::Error> {
    fn ctx(self, op: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Postgres { op, source })
    }
}

/// A PostgreSQL error with its causes: the client library's own message is only its
/// kind (`db error`), the server's words are in the chain.
fn chain(error: &postgres::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

impl<T> Context<T> for Result<T, rusqlite::Error> {
    fn ctx(self, op: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite { op, source })
    }
}
