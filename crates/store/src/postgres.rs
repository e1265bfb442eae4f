//! [`PostgresStore`]: the [`JobStore`] in a PostgreSQL database, one queue shared by
//! supervisors on several hosts; [`Listener`]: their doorbell.
//!
//! The schema mirrors [`SqliteStore`](crate::SqliteStore)'s (tags, env and command are
//! JSONB) and so do the semantics, operation by operation. What differs is how claimers
//! keep out of each other's way: SQLite has one writer at a time, PostgreSQL many.
//!
//! - A claim selects candidates with `SELECT ... ORDER BY id LIMIT n FOR UPDATE SKIP
//!   LOCKED`: two claimers never wait for each other and never see the same job, and a
//!   job another claimer has locked is simply passed over (it is that claimer's). Routing
//!   is the same SQL filter as SQLite's (a job's first matching route decides its group;
//!   a group without credit does not make a later group take the job), and every
//!   candidate is checked against [`route`] again before it is claimed.
//! - Everything else that changes a job changes one row with a conditional `UPDATE`
//!   (`... WHERE state = 'running' AND attempts = $2 AND owner = $3`), which PostgreSQL
//!   re-evaluates against the row's latest version, or locks the row first.
//! - Due retries are queued again (`failed` → `queued`) with `FOR UPDATE SKIP LOCKED` too,
//!   so that two sessions doing it at once neither wait for nor deadlock each other.
//! - Idempotency keys are backed by a unique partial index. A submit first takes an
//!   advisory lock per key (in one global order, so that batches never deadlock), so two
//!   submits of one key queue behind each other and the second returns the first's job;
//!   `ON CONFLICT DO NOTHING` at the index covers anything else.
//! - `submit` and `cancel` send `NOTIFY supervisor_jobs` inside their transaction, so a
//!   [`Listener`] on any host wakes once they commit.
//!
//! Schema versions live in the table `supervisor_schema`; migrations run in one
//! transaction under `pg_advisory_xact_lock`, so that supervisors starting at once migrate
//! once. Tables go to the first schema of the connection's `search_path` (`options=-c
//! search_path=NAME` in the URL picks another).
//!
//! Connections are plain TCP or unix sockets: TLS is not supported by this build.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::{Json, ToSql};
use postgres::{Client, Config, GenericClient, NoTls, Row, Statement};

use supervisor_config::redact_password;

use crate::claim::{self, Candidate, ClaimSql, ToRoute};
use crate::error::Context;
use crate::outcome_state;
use crate::{
    CancelResult, ClaimResult, Claimed, Instance, InstanceId, Job, JobId, JobState, JobStore,
    NewJob, Next, Outcome, Result, Route, StoreError, StoredRun, FINISHED,
};

/// The channel that `submit` and `cancel` notify and a [`Listener`] listens on.
pub const NOTIFY_CHANNEL: &str = "supervisor_jobs";

/// The advisory lock key that migrations hold (`pg_advisory_xact_lock`): "supervis" in
/// ASCII.
const MIGRATION_LOCK: i64 = 0x7375_7065_7276_6973;

/// The advisory lock class of idempotency keys (`pg_advisory_xact_lock(class, hash)`):
/// "sv" in ASCII.
const KEY_LOCK_CLASS: i32 = 0x7376;

/// How long a connection waits for a server that does not answer: to connect, when the
/// URL sets no `connect_timeout`, and for data sent to be acknowledged (TCP's user
/// timeout; a slow query is not that: the server's kernel acknowledges at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patience {
    /// 10 s: verbs, the grabber, the doorbell's listener.
    Normal,
    /// 3 s: the supervisor's own loop and its lease, which must never stall long
    /// behind a server gone silent (a partition): its children's heartbeats, and the
    /// events that say it fenced itself, wait for it.
    Short,
}

impl Patience {
    fn timeout(self) -> Duration {
        match self {
            Patience::Normal => Duration::from_secs(10),
            Patience::Short => Duration::from_secs(3),
        }
    }
}

/// How many times `submit` is tried when PostgreSQL aborts it to break a deadlock (which
/// the key locks should rule out), and how many times a key is looked up and inserted
/// when another submit of it wins the race.
const SUBMIT_TRIES: u32 = 5;

/// Prepared statements kept per connection (beyond it, the cache starts afresh).
const STATEMENT_CACHE: usize = 128;

/// Schema migrations, applied in order: migration `i` takes the schema from version `i`
/// to version `i + 1` (`supervisor_schema.version`). Never edit one that has shipped:
/// append.
const MIGRATIONS: &[&str] = &[
    // Version 1: the same tables as SQLite's version 3, and partial indexes that hold live
    // jobs only (queued, running, waiting for a retry): finished jobs, the bulk of a
    // long-lived store, are in no index but the primary key's, so that the history's size
    // costs claims nothing.
    r#"
    CREATE TABLE instances (
        id          BIGINT           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        host        TEXT             NOT NULL,
        pid         BIGINT           NOT NULL,
        token       TEXT             NOT NULL,
        started_at  DOUBLE PRECISION NOT NULL,
        last_seen   DOUBLE PRECISION NOT NULL
    );

    CREATE TABLE jobs (
        id               BIGINT           GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        state            TEXT             NOT NULL CHECK (state IN ('queued', 'running',
                                          'succeeded', 'failed', 'timed_out', 'dead',
                                          'canceled')),
        -- The group the job names (routing input), and the group it was last routed to.
        named_group      TEXT,
        run_group        TEXT,
        command          JSONB            NOT NULL,  -- array of strings
        tags             JSONB            NOT NULL,  -- object of strings
        env              JSONB            NOT NULL,  -- object of strings
        cwd              TEXT,
        timeout_s        DOUBLE PRECISION,
        max_attempts     BIGINT,
        idem_key         TEXT,
        attempts         BIGINT           NOT NULL DEFAULT 0,
        exit_code        INTEGER,
        signal           INTEGER,
        last_outcome     TEXT,
        created_at       DOUBLE PRECISION NOT NULL,
        started_at       DOUBLE PRECISION,
        finished_at      DOUBLE PRECISION,
        -- queued: not claimable before; failed/timed_out: retry time (NULL: finished).
        not_before       DOUBLE PRECISION,
        owner            BIGINT           REFERENCES instances (id),
        cancel_requested BOOLEAN          NOT NULL DEFAULT FALSE,
        CHECK ((state = 'running') = (owner IS NOT NULL))
    );

    -- Claims: queued jobs in id order.
    CREATE INDEX jobs_queued ON jobs (id) WHERE state = 'queued';
    -- Each instance's running jobs (releases, cancels, orphans). The predicate holds for
    -- running jobs only (the CHECK above) and is implied by `owner = $1`, so the foreign
    -- key's check when an instance is deleted uses this index too.
    CREATE INDEX jobs_running ON jobs (owner) WHERE owner IS NOT NULL;
    -- Jobs waiting for a retry time: due retries, and the earliest one.
    CREATE INDEX jobs_waiting ON jobs (not_before) WHERE not_before IS NOT NULL;
    -- At most one unfinished job per idempotency key.
    CREATE UNIQUE INDEX jobs_live_key ON jobs (idem_key)
        WHERE idem_key IS NOT NULL
          AND (state IN ('queued', 'running')
               OR (state IN ('failed', 'timed_out') AND not_before IS NOT NULL));
    "#,
    // Version 2 (SQLite's version 4): why a job ended as it did, why its last attempt
    // could not start, and how many of its supervisors died while it ran.
    r#"
    ALTER TABLE jobs ADD COLUMN reason TEXT;
    ALTER TABLE jobs ADD COLUMN start_error TEXT;
    ALTER TABLE jobs ADD COLUMN supervisor_deaths BIGINT NOT NULL DEFAULT 0;
    "#,
    // Version 3 (SQLite's version 5): a job's group is decided once (`route`, NULL when
    // none takes it; `routed` once decided), so that claims and the backlog are index
    // range scans on (route, id) whatever the queue's depth.
    r#"
    ALTER TABLE jobs ADD COLUMN route TEXT;
    ALTER TABLE jobs ADD COLUMN routed BOOLEAN NOT NULL DEFAULT FALSE;
    UPDATE jobs SET route = named_group, routed = TRUE WHERE named_group IS NOT NULL;
    DROP INDEX jobs_queued;
    CREATE INDEX jobs_claimable ON jobs (route, id) WHERE state = 'queued';
    CREATE INDEX jobs_unrouted ON jobs (id) WHERE NOT routed;
    "#,
];

/// The newest PostgreSQL schema version this code knows (`supervisor_schema.version` of
/// a current database).
pub const PG_SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The predicate of `jobs_live_key`: a job that is not finished.
const LIVE: &str = "(state IN ('queued', 'running') \
     OR (state IN ('failed', 'timed_out') AND not_before IS NOT NULL))";

/// The columns [`read_job`] expects, in order.
const JOB_COLUMNS: &str = "id, state, COALESCE(run_group, named_group), command, tags, env, \
     cwd, timeout_s, max_attempts, idem_key, attempts, exit_code, signal, last_outcome, \
     created_at, started_at, finished_at, not_before, owner, cancel_requested, reason, \
     start_error";

/// Jobs whose retry time has come are queued again; rows another session has locked are
/// left to it (parameter: now).
const MATERIALISE_RETRIES: &str = "UPDATE jobs SET state = 'queued' WHERE id IN (\
     SELECT id FROM jobs WHERE state IN ('failed', 'timed_out') AND not_before <= $1 \
     FOR UPDATE SKIP LOCKED)";

/// Whether some retry is due (parameter: now).
const RETRY_DUE: &str = "SELECT EXISTS (SELECT 1 FROM jobs \
     WHERE state IN ('failed', 'timed_out') AND not_before <= $1)";

/// Planner methods a claim turns off (`SET LOCAL`, for its transaction only), leaving it
/// the partial indexes: statistics that are missing (a new table) or stale (gathered
/// when few jobs were queued) would otherwise make it sort every queued job, or scan the
/// whole history, at each claim.
///
/// Hash and merge joins are off too: a generic plan cannot know how many rows a claim
/// asks for (`LIMIT want.n`), guesses a tenth of the queue, and then joins the picked
/// rows to `jobs` by hashing the whole table (25 ms a claim at 100,000 jobs, measured),
/// where a nested loop on the primary key touches only the rows picked.
const CLAIM_PLANNER: &str = "SET LOCAL enable_seqscan = off; \
     SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off; \
     SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

/// Gives back the running jobs of owner `$1` at time `$2`: queued without using up an
/// attempt (`finished_at` left unset, as the claim left it), or canceled at `$2` if a
/// cancel was requested. Every way of taking a job back narrows this down.
const TAKE_BACK: &str = "UPDATE jobs SET \
     state = CASE WHEN cancel_requested THEN 'canceled' ELSE 'queued' END, \
     attempts = CASE WHEN cancel_requested THEN attempts ELSE attempts - 1 END, \
     last_outcome = CASE WHEN cancel_requested THEN 'canceled' ELSE last_outcome END, \
     finished_at = CASE WHEN cancel_requested THEN $2::float8 ELSE finished_at END, \
     owner = NULL \
     WHERE owner = $1 AND state = 'running'";

/// Takes back the running jobs of dead owner `$1` at time `$2` as [`TAKE_BACK`] does,
/// counting one more death of their supervisor; a job at its
/// [`SUPERVISOR_DEATHS`](crate::SUPERVISOR_DEATHS)th ends `dead` with reason `$3` (`$4`:
/// the limit).
const TAKE_BACK_ORPHANS: &str = "UPDATE jobs SET \
     state = CASE WHEN cancel_requested THEN 'canceled' \
                  WHEN supervisor_deaths + 1 >= $4 THEN 'dead' ELSE 'queued' END, \
     attempts = CASE WHEN cancel_requested OR supervisor_deaths + 1 >= $4 THEN attempts \
                     ELSE attempts - 1 END, \
     last_outcome = CASE WHEN cancel_requested THEN 'canceled' \
                         WHEN supervisor_deaths + 1 >= $4 THEN 'lost' ELSE last_outcome END, \
     finished_at = CASE WHEN cancel_requested OR supervisor_deaths + 1 >= $4 THEN $2::float8 \
                        ELSE finished_at END, \
     reason = CASE WHEN NOT cancel_requested AND supervisor_deaths + 1 >= $4 THEN $3::text \
                   ELSE reason END, \
     supervisor_deaths = supervisor_deaths + 1, \
     owner = NULL \
     WHERE owner = $1 AND state = 'running' RETURNING id";

/// Opens a connection with our defaults: a connect timeout and an application name, when
/// the URL sets none.
fn open_client(url: &str, shown: &str, patience: Patience) -> Result<Client> {
    let connect_err = |source| StoreError::Connect {
        url: shown.to_owned(),
        source,
    };
    let tls_err = |message: String| StoreError::Tls {
        url: shown.to_owned(),
        message,
    };
    let (url, tls) = tls_settings(url).map_err(tls_err)?;
    let mut config = Config::from_str(&url).map_err(connect_err)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(patience.timeout());
    }
    if config.get_application_name().is_none() {
        config.application_name("supervisor");
    }
    // A server that vanished without closing the connection (a partition dropping
    // packets, a host gone) must turn into an error in seconds, not in TCP's quarter of
    // an hour: unacknowledged data fails the connection after its patience, and an
    // idle one is probed.
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(patience.timeout());
    }
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5));
        config.keepalives_interval(Duration::from_secs(2));
        config.keepalives_retries(3);
    }
    // And the server's side of it: a partition that falls in the middle of one of our
    // transactions must not leave its row locks (our instance's among them, which
    // another supervisor's takeover waits for) held until the server's TCP gives up,
    // two hours by default. The server ends such a session after 10 s idle in its
    // transaction, and probes an idle connection as we do.
    let server_side = "-c idle_in_transaction_session_timeout=10000 \
                       -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 \
                       -c tcp_keepalives_count=3 -c tcp_user_timeout=10000";
    let options = match config.get_options() {
        Some(theirs) if !theirs.trim().is_empty() => format!("{server_side} {theirs}"),
        _ => server_side.to_owned(),
    };
    config.options(&options);
    match tls {
        Tls::Disable => config
            .ssl_mode(postgres::config::SslMode::Disable)
            .connect(NoTls)
            .map_err(connect_err),
        tls => {
            config.ssl_mode(match tls {
                Tls::Prefer => postgres::config::SslMode::Prefer,
                _ => postgres::config::SslMode::Require,
            });
            config
                .connect(connector(&tls).map_err(tls_err)?)
                .map_err(connect_err)
        }
    }
}

/// What a connection string asks of TLS, as libpq reads `sslmode` and `sslrootcert`
/// (the client library itself knows `disable`, `prefer` and `require` only).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tls {
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
fn tls_settings(url: &str) -> std::result::Result<(String, Tls), String> {
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
fn connector(tls: &Tls) -> std::result::Result<postgres_openssl::MakeTlsConnector, String> {
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

/// Prepared statements of one connection, by their text.
#[derive(Default)]
struct Statements(HashMap<String, Statement>);

impl Statements {
    /// The statement for `sql`, prepared on `client` the first time.
    fn get(
        &mut self,
        client: &mut impl GenericClient,
        sql: &str,
        op: &'static str,
    ) -> Result<Statement> {
        if let Some(stmt) = self.0.get(sql) {
            return Ok(stmt.clone());
        }
        if self.0.len() >= STATEMENT_CACHE {
            self.0.clear();
        }
        let stmt = client.prepare(sql).ctx(op)?;
        self.0.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }
}

/// Runs `sql` (cached) and returns its rows.
fn query(
    stmts: &mut Statements,
    client: &mut impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    op: &'static str,
) -> Result<Vec<Row>> {
    let stmt = stmts.get(client, sql, op)?;
    client.query(&stmt, params).ctx(op)
}

/// Runs `sql` (cached) and returns the number of rows it changed.
fn execute(
    stmts: &mut Statements,
    client: &mut impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    op: &'static str,
) -> Result<u64> {
    let stmt = stmts.get(client, sql, op)?;
    client.execute(&stmt, params).ctx(op)
}

/// The job store in a PostgreSQL database, shared by every supervisor that connects to it.
pub struct PostgresStore {
    client: Client,
    stmts: Statements,
    url: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.url)
            .field("closed", &self.client.is_closed())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`, or
    /// `host=... dbname=...`; a `host` that is a path is a unix socket's directory) and
    /// brings its schema up to date.
    ///
    /// Waits 10 s at most for the connection unless the URL sets `connect_timeout`. Errors
    /// name the URL without its password. Fails with [`StoreError::PgSchemaTooNew`] if the
    /// database was set up by a newer version.
    pub fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, Patience::Normal)
    }

    /// As [`connect`](Self::connect), with the given patience for a silent server.
    pub fn connect_with(url: &str, patience: Patience) -> Result<Self> {
        let shown = redact_password(url);
        let client = open_client(url, &shown, patience)?;
        let mut store = PostgresStore {
            client,
            stmts: Statements::default(),
            url: shown,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Connects a [`Listener`] to the database at `url`: it wakes when a job is submitted
    /// or canceled through any [`PostgresStore`] on that database, from any host.
    pub fn listen(url: &str) -> Result<Listener> {
        let shown = redact_password(url);
        let mut client = open_client(url, &shown, Patience::Normal)?;
        client
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .map_err(|source| StoreError::Connect {
                url: shown.clone(),
                source,
            })?;
        Ok(Listener { client, url: shown })
    }

    /// Whether this connection is encrypted (TLS), as the server sees it.
    pub fn is_encrypted(&mut self) -> Result<bool> {
        self.client
            .query_one(
                "SELECT COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), \
                 false)",
                &[],
            )
            .and_then(|row| row.try_get(0))
            .ctx("look at the connection")
    }

    /// The connection string, its password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// True once the connection is known to be lost (every operation then fails): the
    /// caller should connect again.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The schema version of the database (0 if it has none yet).
    pub fn schema_version(&mut self) -> Result<u32> {
        read_schema_version(&mut self.client)
            .ctx("read the schema version")
            .map(|v| v.unwrap_or(0))
    }

    /// Applies the migrations the database lacks, all in one transaction, under an
    /// advisory lock: of several supervisors starting at once, one migrates and the others
    /// wait for it, then find nothing to do.
    fn migrate(&mut self) -> Result<()> {
        let url = self.url.clone();
        let open_err = |source| StoreError::Connect {
            url: url.clone(),
            source,
        };
        let too_new = |found| StoreError::PgSchemaTooNew {
            url: url.clone(),
            found,
            supported: PG_SCHEMA_VERSION,
        };
        match read_schema_version(&mut self.client).map_err(open_err)? {
            Some(found) if found > PG_SCHEMA_VERSION => return Err(too_new(found)),
            Some(found) if found == PG_SCHEMA_VERSION => return Ok(()),
            _ => {}
        }
        let mut tx = self.client.transaction().map_err(open_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(open_err)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS supervisor_schema (\
                 only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row), \
                 version  INTEGER NOT NULL)",
        )
        .map_err(open_err)?;
        // Another supervisor may have migrated while we waited for the lock.
        let found = tx
            .query_opt("SELECT version FROM supervisor_schema", &[])
            .map_err(open_err)?
            .map(|row| row.try_get::<_, i32>(0))
            .transpose()
            .map_err(open_err)?;
        let found = match found {
            Some(found) => u32::try_from(found).map_err(|_| {
                StoreError::Corrupt(format!("supervisor_schema.version is {found}"))
            })?,
            None => {
                tx.execute("INSERT INTO supervisor_schema (version) VALUES (0)", &[])
                    .map_err(open_err)?;
                0
            }
        };
        if found > PG_SCHEMA_VERSION {
            return Err(too_new(found));
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = index as u32 + 1;
            let migration_err = |source| StoreError::PgMigration {
                url: url.clone(),
                version,
                source,
            };
            tx.batch_execute(sql).map_err(migration_err)?;
            tx.execute(
                "UPDATE supervisor_schema SET version = $1",
                &[&(version as i32)],
            )
            .map_err(migration_err)?;
            log::info!("job store {url}: migrated to schema version {version}");
        }
        tx.commit().map_err(open_err)
    }
}

/// `supervisor_schema.version`, or `None` if the table does not exist yet.
fn read_schema_version(client: &mut Client) -> Result<Option<u32>, postgres::Error> {
    let exists: bool = client
        .query_one("SELECT to_regclass('supervisor_schema') IS NOT NULL", &[])?
        .try_get(0)?;
    if !exists {
        return Ok(None);
    }
    let version: Option<i32> = client
        .query_opt("SELECT version FROM supervisor_schema", &[])?
        .map(|row| row.try_get(0))
        .transpose()?;
    Ok(version.map(|v| u32::try_from(v).unwrap_or(u32::MAX)))
}

/// A connection that waits for `submit` and `cancel` on a [`PostgresStore`]'s database
/// (`LISTEN supervisor_jobs`): the doorbell of a grabber whose jobs may come from any host,
/// and of a supervisor whose running job may be canceled from any host (it then looks at
/// [`JobStore::cancel_requests`]).
///
/// Only what may give a claimer work or a supervisor a cancel rings: a submit that queued
/// a new job (not one whose keys all named live jobs), a cancel of a queued, waiting or
/// running job. Anyone may also ring with `NOTIFY supervisor_jobs`.
///
/// Notifications that arrive while nobody waits are kept until the next
/// [`wait`](Listener::wait). A listener whose connection broke fails every `wait`: make a
/// new one (and poll the store once, since notifications sent meanwhile are lost).
pub struct Listener {
    client: Client,
    url: String,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("url", &self.url)
            .field("closed", &self.client.is_closed())
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Waits up to `timeout` for a notification. Returns true when at least one came (all
    /// that have come are consumed, so that a burst of submits wakes once), false when
    /// the time ran out. Fails if the connection is lost.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool> {
        let op = "wait for a notification";
        use postgres::fallible_iterator::FallibleIterator;
        let first = self
            .client
            .notifications()
            .timeout_iter(timeout)
            .next()
            .ctx(op)?;
        if first.is_some() {
            // One round trip (LISTEN again, which changes nothing): the server sends
            // every notification committed before it ahead of the answer, so a burst
            // that has already committed wakes once.
            self.client
                .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
                .ctx(op)?;
            let mut notifications = self.client.notifications();
            while notifications.iter().next().ctx(op)?.is_some() {}
        }
        if first.is_none() && self.client.is_closed() {
            // The iterator ends quietly when the server goes away: say so.
            self.client.check_connection().ctx(op)?;
        }
        Ok(first.is_some())
    }

    /// The connection string, its password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Queues the jobs whose retry time has come (inside a transaction).
fn materialise(stmts: &mut Statements, client: &mut impl GenericClient, now: f64) -> Result<()> {
    execute(
        stmts,
        client,
        MATERIALISE_RETRIES,
        &[&now],
        "queue due retries",
    )
    .map(|_| ())
}

/// Like [`materialise`], but writes only if some retry is due, so that read-only commands
/// stay read-only most of the time.
fn materialise_if_due(
    stmts: &mut Statements,
    client: &mut impl GenericClient,
    now: f64,
) -> Result<()> {
    let rows = query(stmts, client, RETRY_DUE, &[&now], "look for due retries")?;
    let due: bool = rows[0].try_get(0).ctx("look for due retries")?;
    if due {
        materialise(stmts, client, now)?;
    }
    Ok(())
}

/// Column `index` of a row of job `id`; a value of the wrong type is reported as damage.
fn column<'a, T: postgres::types::FromSql<'a>>(row: &'a Row, id: JobId, index: usize) -> Result<T> {
    row.try_get(index).map_err(|e| {
        StoreError::Corrupt(format!(
            "job {id}: column {index}: {e}{}",
            std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default()
        ))
    })
}

/// A BIGINT column of job `id` that holds a `u32`.
fn count(row: &Row, id: JobId, index: usize) -> Result<u32> {
    let value: i64 = column(row, id, index)?;
    u32::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("job {id}: column {index} is {value}")))
}

/// Parses the state column of job `id`.
fn parse_state(id: JobId, text: &str) -> Result<JobState> {
    text.parse()
        .map_err(|e| StoreError::Corrupt(format!("job {id}: {e}")))
}

/// Reads a row selected with [`JOB_COLUMNS`].
///
/// Only the id and the state must be sound (the schema's CHECK keeps the state so): a
/// JSON column of the wrong shape or a number out of range (damage by hand or by another
/// version) reads as empty, so that one bad row never hides the others from `jobs` and
/// `status`. Claims check the columns they run strictly ([`StoredRun`]).
fn read_job(row: &Row) -> Result<Job> {
    let id: JobId = row.try_get(0).ctx("read a job")?;
    let state: String = column(row, id, 1)?;
    fn lenient<'a, T: postgres::types::FromSql<'a>>(row: &'a Row, index: usize) -> Option<T> {
        row.try_get::<_, Option<T>>(index).ok().flatten()
    }
    fn json<T: serde::de::DeserializeOwned + Default>(row: &Row, index: usize) -> T {
        lenient::<Json<T>>(row, index)
            .map(|Json(v)| v)
            .unwrap_or_default()
    }
    let small = |index| lenient::<i64>(row, index).and_then(|n| u32::try_from(n).ok());
    Ok(Job {
        id,
        state: parse_state(id, &state)?,
        group: lenient(row, 2),
        command: json(row, 3),
        tags: json(row, 4),
        env: json(row, 5),
        cwd: lenient(row, 6),
        timeout_s: lenient(row, 7),
        max_attempts: small(8),
        key: lenient(row, 9),
        attempts: small(10).unwrap_or(0),
        exit_code: lenient(row, 11),
        signal: lenient(row, 12),
        last_outcome: lenient(row, 13),
        created_at: lenient(row, 14).unwrap_or(0.0),
        started_at: lenient(row, 15),
        finished_at: lenient(row, 16),
        not_before: lenient(row, 17),
        owner: lenient(row, 18),
        cancel_requested: lenient(row, 19).unwrap_or(false),
        reason: lenient(row, 20),
        start_error: lenient(row, 21),
    })
}

/// The fields a claim runs, from a row of [`candidates_sql`] (columns 3 to 8), each as
/// stored or with what is wrong with it.
fn stored_run(row: &Row) -> StoredRun {
    fn get<'a, T: postgres::types::FromSql<'a>>(
        row: &'a Row,
        index: usize,
    ) -> std::result::Result<T, String> {
        row.try_get(index).map_err(|e| {
            let why = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string());
            format!("not the expected value ({why})")
        })
    }
    StoredRun {
        command: get::<Json<Vec<String>>>(row, 3).map(|Json(v)| v),
        env: get::<Json<BTreeMap<String, String>>>(row, 4).map(|Json(v)| v),
        cwd: get(row, 5),
        timeout_s: get(row, 6),
        max_attempts: get(row, 7),
        attempts: get(row, 8),
    }
}

/// Reads a row of `instances` (id, host, pid, token, started_at, last_seen).
fn read_instance(row: &Row) -> Result<Instance> {
    let id: InstanceId = row.try_get(0).ctx("list instances")?;
    let bad = |what: String| StoreError::Corrupt(format!("instance {id}: {what}"));
    let pid: i64 = row.try_get(2).map_err(|e| bad(e.to_string()))?;
    Ok(Instance {
        id,
        host: row.try_get(1).map_err(|e| bad(e.to_string()))?,
        // A pid no process can have (damage by hand) reads as 0: an instance whose
        // process is gone, so that its jobs are taken back rather than stuck.
        pid: u32::try_from(pid).unwrap_or_else(|_| {
            log::warn!("instance {id}: pid {pid} is out of range; taken for dead");
            0
        }),
        token: row.try_get(3).map_err(|e| bad(e.to_string()))?,
        started_at: row.try_get(4).map_err(|e| bad(e.to_string()))?,
        last_seen: row.try_get(5).map_err(|e| bad(e.to_string()))?,
    })
}

/// Jobs whose group is not decided yet, oldest first, at most `$1`; rows another claimer
/// holds are left to it.
const UNROUTED: &str = "SELECT id, named_group, tags FROM jobs WHERE NOT routed \
     ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED";

/// Sets the route of the jobs `$1` to the groups `$2` (NULL: none).
const SET_ROUTES: &str = "UPDATE jobs SET route = u.route, routed = TRUE \
     FROM unnest($1::bigint[], $2::text[]) AS u (id, route) WHERE jobs.id = u.id";

/// The claim, in one statement: for each group `$3[i]`, its first `$4[i]` runnable
/// queued jobs in id order (an index range scan on (route, id) per group, skipping rows
/// another claimer holds), marked running under owner `$1` at `$2`. Returns, per job,
/// its id, group, and the columns [`stored_run`] reads (attempts as before the claim).
const CLAIM: &str = "WITH want AS (\
         SELECT g, n FROM unnest($3::text[], $4::bigint[]) AS w (g, n)), \
     picked AS (\
         SELECT j.id, want.g FROM want CROSS JOIN LATERAL (\
             SELECT id FROM jobs WHERE state = 'queued' AND route = want.g \
             AND (not_before IS NULL OR not_before <= $2) \
             ORDER BY id LIMIT want.n FOR UPDATE SKIP LOCKED) j) \
     UPDATE jobs SET state = 'running', owner = $1, attempts = attempts + 1, \
         started_at = $2, finished_at = NULL, exit_code = NULL, signal = NULL, \
         not_before = NULL, run_group = picked.g, start_error = NULL \
     FROM picked WHERE jobs.id = picked.id \
     RETURNING jobs.id, picked.g, NULL::text, jobs.command, jobs.env, jobs.cwd, \
         jobs.timeout_s, jobs.max_attempts, jobs.attempts - 1";

/// What is left for the groups `$2`: a runnable job (at `$1`), and the earliest time a
/// waiting one becomes runnable.
const BACKLOG: &str = "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'queued' \
         AND route = ANY($2::text[]) AND (not_before IS NULL OR not_before <= $1)), \
     (SELECT MIN(not_before) FROM jobs WHERE not_before IS NOT NULL \
         AND ((state = 'queued' AND not_before > $1) OR state IN ('failed', 'timed_out')) \
         AND route = ANY($2::text[]))";

/// The jobs queued or waiting for a retry, with their group now, locked.
const LIVE_ROUTES: &str = "SELECT id, named_group, tags, route FROM jobs WHERE state = 'queued' \
     OR (not_before IS NOT NULL AND state IN ('failed', 'timed_out')) FOR UPDATE";

/// A job as routing reads it, from a row of `id, named_group, tags`, routed to `route`.
fn to_route(row: &Row, route: Option<String>, op: &'static str) -> Result<ToRoute> {
    Ok(ToRoute {
        id: row.try_get(0).ctx(op)?,
        named: row.try_get(1).ok().flatten(),
        // Damaged tags are no tags.
        tags: row
            .try_get::<_, Json<BTreeMap<String, String>>>(2)
            .map(|Json(t)| t)
            .unwrap_or_default(),
        route,
    })
}

/// A claim's (or a reroute's) SQL, inside its transaction: the candidates of every group
/// are picked and marked running in one statement ([`CLAIM`]).
struct ClaimTx<'a, 'b> {
    stmts: &'a mut Statements,
    tx: &'a mut postgres::Transaction<'b>,
}

impl ClaimSql for ClaimTx<'_, '_> {
    fn unrouted(&mut self, limit: i64) -> Result<Vec<ToRoute>> {
        let op = "route new jobs";
        let rows = query(self.stmts, self.tx, UNROUTED, &[&limit], op)?;
        rows.iter().map(|row| to_route(row, None, op)).collect()
    }

    fn live(&mut self) -> Result<Vec<ToRoute>> {
        let op = "reroute";
        let rows = query(self.stmts, self.tx, LIVE_ROUTES, &[], op)?;
        rows.iter()
            .map(|row| to_route(row, row.try_get(3).ok().flatten(), op))
            .collect()
    }

    fn set_routes(&mut self, routes: &[(JobId, Option<String>)], op: &'static str) -> Result<()> {
        let (ids, groups): (Vec<JobId>, Vec<Option<String>>) = routes.iter().cloned().unzip();
        execute(self.stmts, self.tx, SET_ROUTES, &[&ids, &groups], op).map(|_| ())
    }

    fn pick(&mut self, me: InstanceId, want: &[(&str, u32)], now: f64) -> Result<Vec<Candidate>> {
        let (groups, limits): (Vec<&str>, Vec<i64>) =
            want.iter().map(|(g, n)| (*g, i64::from(*n))).unzip();
        let rows = query(
            self.stmts,
            self.tx,
            CLAIM,
            &[&me, &now, &groups, &limits],
            "claim",
        )?;
        rows.iter()
            .map(|row| {
                Ok(Candidate {
                    id: row.try_get(0).ctx("claim: read a job")?,
                    group: row.try_get(1).ctx("claim: read a job")?,
                    run: stored_run(row),
                })
            })
            .collect()
    }

    fn start(&mut self, _me: InstanceId, _job: &Claimed, _now: f64) -> Result<bool> {
        Ok(true) // CLAIM did
    }

    fn refuse(&mut self, id: JobId, reason: &str, now: f64) -> Result<()> {
        execute(
            self.stmts,
            self.tx,
            "UPDATE jobs SET state = 'dead', reason = $2, finished_at = $3, \
             not_before = NULL, owner = NULL, attempts = attempts - 1 \
             WHERE id = $1 AND state = 'running'",
            &[&id, &reason, &now],
            "end a job that cannot be run",
        )
        .map(|_| ())
    }

    fn backlog(&mut self, groups: &[&str], now: f64) -> Result<(bool, Option<f64>)> {
        let rows = query(
            self.stmts,
            self.tx,
            BACKLOG,
            &[&now, &groups],
            "claim: look for the backlog",
        )?;
        let runnable: bool = rows[0].try_get(0).ctx("claim: look for runnable jobs")?;
        let waiting: Option<f64> = rows[0].try_get(1).ctx("claim: look for waiting jobs")?;
        Ok((runnable, waiting))
    }
}

/// Takes back the running jobs of `instance` at `now`. Returns their ids, in order.
fn take_back(
    stmts: &mut Statements,
    client: &mut impl GenericClient,
    instance: InstanceId,
    now: f64,
) -> Result<Vec<JobId>> {
    let op = "take back an instance's jobs";
    let rows = query(
        stmts,
        client,
        &format!("{TAKE_BACK} RETURNING id"),
        &[&instance, &now],
        op,
    )?;
    ids_of(rows, op)
}

/// The first column of `rows`, as job ids in order.
fn ids_of(rows: Vec<Row>, op: &'static str) -> Result<Vec<JobId>> {
    let mut ids = rows
        .iter()
        .map(|row| row.try_get::<_, JobId>(0))
        .collect::<Result<Vec<_>, _>>()
        .ctx(op)?;
    ids.sort_unstable();
    Ok(ids)
}

/// Whether PostgreSQL aborted a transaction that may simply be tried again.
fn is_transient(error: &StoreError) -> bool {
    let source = match error {
        StoreError::Postgres { source, .. } => source,
        _ => return false,
    };
    matches!(
        source.code(),
        Some(code) if *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// Inserts `jobs` (no keys among them) in one statement, with ids taken in order from the
/// sequence. Returns their ids, in order.
fn insert_unkeyed(
    stmts: &mut Statements,
    client: &mut impl GenericClient,
    jobs: &[&NewJob],
    now: f64,
) -> Result<Vec<JobId>> {
    let op = "submit";
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let n = jobs.len() as i64;
    let rows = query(
        stmts,
        client,
        "SELECT nextval(pg_get_serial_sequence('jobs', 'id')) FROM generate_series(1, $1::bigint)",
        &[&n],
        op,
    )?;
    let ids = ids_of(rows, op)?;
    let groups: Vec<Option<&str>> = jobs.iter().map(|j| j.group.as_deref()).collect();
    let commands: Vec<Json<&Vec<String>>> = jobs.iter().map(|j| Json(&j.command)).collect();
    let tags: Vec<Json<&BTreeMap<String, String>>> = jobs.iter().map(|j| Json(&j.tags)).collect();
    let envs: Vec<Json<&BTreeMap<String, String>>> = jobs.iter().map(|j| Json(&j.env)).collect();
    let cwds: Vec<Option<&str>> = jobs.iter().map(|j| j.cwd.as_deref()).collect();
    let timeouts: Vec<Option<f64>> = jobs.iter().map(|j| j.timeout_s).collect();
    let max_attempts: Vec<Option<i64>> =
        jobs.iter().map(|j| j.max_attempts.map(i64::from)).collect();
    let inserted = execute(
        stmts,
        client,
        "INSERT INTO jobs (id, state, named_group, command, tags, env, cwd, timeout_s, \
             max_attempts, created_at, route, routed) \
         SELECT u.id, 'queued', u.named_group, u.command, u.tags, u.env, u.cwd, u.timeout_s, \
             u.max_attempts, $9, u.named_group, u.named_group IS NOT NULL \
         FROM unnest($1::bigint[], $2::text[], $3::jsonb[], $4::jsonb[], $5::jsonb[], \
             $6::text[], $7::float8[], $8::bigint[]) \
             AS u (id, named_group, command, tags, env, cwd, timeout_s, max_attempts)",
        &[
            &ids,
            &groups,
            &commands,
            &tags,
            &envs,
            &cwds,
            &timeouts,
            &max_attempts,
            &now,
        ],
        op,
    )?;
    if inserted != n as u64 {
        return Err(StoreError::Corrupt(format!(
            "submit inserted {inserted} of {n} jobs"
        )));
    }
    Ok(ids)
}

/// Queues one job with an idempotency key, or finds the live job that has it.
fn submit_keyed(
    stmts: &mut Statements,
    client: &mut impl GenericClient,
    job: &NewJob,
    key: &str,
    now: f64,
) -> Result<(JobId, bool)> {
    let op = "submit";
    let find = format!("SELECT id FROM jobs WHERE idem_key = $1 AND {LIVE} LIMIT 1");
    let insert = format!(
        "INSERT INTO jobs (state, named_group, command, tags, env, cwd, timeout_s, \
             max_attempts, idem_key, created_at, route, routed) \
         VALUES ('queued', $1, $2, $3, $4, $5, $6, $7, $8, $9, $1, $1::text IS NOT NULL) \
         ON CONFLICT (idem_key) WHERE idem_key IS NOT NULL AND {LIVE} DO NOTHING \
         RETURNING id"
    );
    // A concurrent submit of the same key may win the insert; its job is then found by
    // the next look-up (or, if it finished meanwhile, the key is free again).
    for _ in 0..SUBMIT_TRIES {
        if let Some(row) = query(stmts, client, &find, &[&key], op)?.first() {
            return Ok((row.try_get(0).ctx(op)?, false));
        }
        let rows = query(
            stmts,
            client,
            &insert,
            &[
                &job.group,
                &Json(&job.command),
                &Json(&job.tags),
                &Json(&job.env),
                &job.cwd,
                &job.timeout_s,
                &job.max_attempts.map(i64::from),
                &key,
                &now,
            ],
            op,
        )?;
        if let Some(row) = rows.first() {
            return Ok((row.try_get(0).ctx(op)?, true));
        }
    }
    Err(StoreError::InvalidArgument(format!(
        "submit: the idempotency key {key:?} is contended: try again"
    )))
}

/// The advisory lock of an idempotency key: its FNV-1a hash, the same on every host and
/// in every version (a change would only let two versions' submits deadlock, which the
/// retry handles).
fn key_lock(key: &str) -> i32 {
    let hash = key.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    hash as i32
}

/// One try of [`JobStore::submit`], inside a transaction. Returns the ids and whether a
/// job was queued.
fn submit_in(
    stmts: &mut Statements,
    tx: &mut postgres::Transaction<'_>,
    jobs: &[NewJob],
    now: f64,
) -> Result<(Vec<JobId>, bool)> {
    // Submits of the same keys take them in one order (of their hashes), so that two
    // batches holding keys in opposite orders queue behind each other rather than
    // deadlock at the unique index.
    let mut locks: Vec<i32> = jobs
        .iter()
        .filter_map(|job| job.key.as_deref())
        .map(key_lock)
        .collect();
    locks.sort_unstable();
    locks.dedup();
    if !locks.is_empty() {
        execute(
            stmts,
            tx,
            "SELECT pg_advisory_xact_lock($1, k) FROM unnest($2::int4[]) AS k",
            &[&KEY_LOCK_CLASS, &locks],
            "submit: lock keys",
        )?;
    }
    let mut ids = Vec::with_capacity(jobs.len());
    let mut queued = false;
    let mut pending: Vec<&NewJob> = Vec::new();
    for job in jobs {
        let Some(key) = &job.key else {
            pending.push(job);
            continue;
        };
        // Unkeyed jobs before this one first, so that ids follow the batch's order.
        queued |= !pending.is_empty();
        ids.extend(insert_unkeyed(stmts, tx, &pending, now)?);
        pending.clear();
        let (id, new) = submit_keyed(stmts, tx, job, key, now)?;
        queued |= new;
        ids.push(id);
    }
    queued |= !pending.is_empty();
    ids.extend(insert_unkeyed(stmts, tx, &pending, now)?);
    Ok((ids, queued))
}

impl JobStore for PostgresStore {
    fn submit(&mut self, jobs: &[NewJob], now: f64) -> Result<Vec<JobId>> {
        for (index, job) in jobs.iter().enumerate() {
            job.validate()
                .map_err(|message| StoreError::InvalidJob { index, message })?;
        }
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut tries = 0;
        loop {
            tries += 1;
            let attempt = (|| {
                let mut tx = self.client.transaction().ctx("submit")?;
                let (ids, queued) = submit_in(&mut self.stmts, &mut tx, jobs, now)?;
                if queued {
                    tx.batch_execute(&format!("NOTIFY {NOTIFY_CHANNEL}, 'submit'"))
                        .ctx("submit: notify")?;
                }
                tx.commit().ctx("submit")?;
                Ok(ids)
            })();
            match attempt {
                Err(e) if tries < SUBMIT_TRIES && is_transient(&e) => {
                    log::info!("submit: {e}; trying again");
                }
                result => return result,
            }
        }
    }

    fn register_instance(
        &mut self,
        host: &str,
        pid: u32,
        token: &str,
        now: f64,
    ) -> Result<InstanceId> {
        let op = "register an instance";
        let rows = query(
            &mut self.stmts,
            &mut self.client,
            "INSERT INTO instances (host, pid, token, started_at, last_seen) \
             VALUES ($1, $2, $3, $4, $4) RETURNING id",
            &[&host, &i64::from(pid), &token, &now],
            op,
        )?;
        rows[0].try_get(0).ctx(op)
    }

    fn unregister_instance(&mut self, id: InstanceId, now: f64) -> Result<Vec<JobId>> {
        let op = "unregister an instance";
        let mut tx = self.client.transaction().ctx(op)?;
        let ids = take_back(&mut self.stmts, &mut tx, id, now)?;
        execute(
            &mut self.stmts,
            &mut tx,
            "DELETE FROM instances WHERE id = $1",
            &[&id],
            op,
        )?;
        tx.commit().ctx(op)?;
        Ok(ids)
    }

    fn instances(&mut self) -> Result<Vec<Instance>> {
        query(
            &mut self.stmts,
            &mut self.client,
            "SELECT id, host, pid, token, started_at, last_seen FROM instances ORDER BY id",
            &[],
            "list instances",
        )?
        .iter()
        .map(read_instance)
        .collect()
    }

    fn touch_instance(&mut self, id: InstanceId, now: f64) -> Result<bool> {
        execute(
            &mut self.stmts,
            &mut self.client,
            "UPDATE instances SET last_seen = $2 WHERE id = $1",
            &[&id, &now],
            "touch an instance",
        )
        .map(|changed| changed == 1)
    }

    fn requeue_orphans(
        &mut self,
        me: InstanceId,
        is_dead: &dyn Fn(&Instance) -> bool,
        now: f64,
    ) -> Result<Vec<JobId>> {
        let op = "requeue orphans";
        let dead: Vec<Instance> = self
            .instances()?
            .into_iter()
            .filter(|instance| instance.id != me && is_dead(instance))
            .collect();
        if dead.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.client.transaction().ctx(op)?;
        let mut ids = Vec::new();
        for instance in dead {
            // Only as it was judged: one that was touched since is alive, and one that is
            // gone was taken care of by another supervisor.
            let unchanged = query(
                &mut self.stmts,
                &mut tx,
                "SELECT 1 FROM instances WHERE id = $1 AND last_seen = $2 FOR UPDATE",
                &[&instance.id, &instance.last_seen],
                op,
            )?;
            if unchanged.is_empty() {
                continue;
            }
            let rows = query(
                &mut self.stmts,
                &mut tx,
                TAKE_BACK_ORPHANS,
                &[
                    &instance.id,
                    &now,
                    &crate::quarantine_reason(),
                    &i64::from(crate::SUPERVISOR_DEATHS),
                ],
                op,
            )?;
            ids.extend(ids_of(rows, op)?);
            execute(
                &mut self.stmts,
                &mut tx,
                "DELETE FROM instances WHERE id = $1",
                &[&instance.id],
                op,
            )?;
        }
        tx.commit().ctx(op)?;
        ids.sort_unstable();
        Ok(ids)
    }

    fn claim(
        &mut self,
        me: InstanceId,
        routes: &[Route],
        credits: &mut BTreeMap<String, u32>,
        now: f64,
    ) -> Result<ClaimResult> {
        let mut tx = self.client.transaction().ctx("claim")?;
        tx.batch_execute(CLAIM_PLANNER).ctx("claim")?;
        materialise(&mut self.stmts, &mut tx, now)?;
        let mut sql = ClaimTx {
            stmts: &mut self.stmts,
            tx: &mut tx,
        };
        let result = claim::claim(&mut sql, me, routes, credits, now)?;
        tx.commit().ctx("claim")?;
        Ok(result)
    }

    fn purge_finished(
        &mut self,
        finished_before: Option<f64>,
        keep: Option<u64>,
        limit: u32,
    ) -> Result<Vec<JobId>> {
        let op = "delete finished jobs";
        let mut tx = self.client.transaction().ctx(op)?;
        let mut ids = Vec::new();
        let limit = i64::from(limit);
        if let Some(before) = finished_before {
            let rows = query(
                &mut self.stmts,
                &mut tx,
                &format!(
                    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE {FINISHED} \
                     AND finished_at < $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) \
                     RETURNING id"
                ),
                &[&before, &limit],
                op,
            )?;
            ids.extend(ids_of(rows, op)?);
        }
        let left = limit - ids.len() as i64;
        if let (Some(keep), true) = (keep, left > 0) {
            let keep = i64::try_from(keep).unwrap_or(i64::MAX);
            let rows = query(
                &mut self.stmts,
                &mut tx,
                &format!(
                    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE {FINISHED} \
                     AND id <= (SELECT id FROM jobs WHERE {FINISHED} ORDER BY id DESC \
                     LIMIT 1 OFFSET $1) ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) \
                     RETURNING id"
                ),
                &[&keep, &left],
                op,
            )?;
            ids.extend(ids_of(rows, op)?);
        }
        tx.commit().ctx(op)?;
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    fn reroute(&mut self, routes: &[Route]) -> Result<usize> {
        let op = "reroute";
        let mut tx = self.client.transaction().ctx(op)?;
        // The update joins the new routes to the jobs by id: by the primary key, never
        // by a nested loop over a table without statistics yet (100,000 queued jobs
        // took minutes that way).
        tx.batch_execute(CLAIM_PLANNER).ctx(op)?;
        let mut sql = ClaimTx {
            stmts: &mut self.stmts,
            tx: &mut tx,
        };
        let changed = claim::reroute(&mut sql, routes)?;
        tx.commit().ctx(op)?;
        Ok(changed)
    }

    fn record_outcome(
        &mut self,
        id: JobId,
        attempt: u32,
        owner: InstanceId,
        outcome: &Outcome,
        next: Next,
        now: f64,
    ) -> Result<bool> {
        // A retry turns into `canceled` if a cancel was requested, which the UPDATE
        // decides on the row's latest version.
        let (state, not_before) = outcome_state(id, outcome, next)?;
        execute(
            &mut self.stmts,
            &mut self.client,
            "UPDATE jobs SET \
                 state = CASE WHEN cancel_requested AND $2::float8 IS NOT NULL \
                         THEN 'canceled' ELSE $1::text END, \
                 not_before = CASE WHEN cancel_requested THEN NULL ELSE $2 END, \
                 owner = NULL, exit_code = $3, signal = $4, last_outcome = $5, \
                 finished_at = $6, start_error = $10, reason = $11 \
             WHERE id = $7 AND state = 'running' AND attempts = $8 AND owner = $9",
            &[
                &state.as_str(),
                &not_before,
                &outcome.exit_code,
                &outcome.signal,
                &outcome.kind.as_str(),
                &now,
                &id,
                &i64::from(attempt),
                &owner,
                &outcome.start_error,
                &outcome.reason,
            ],
            "record an outcome",
        )
        .map(|changed| changed == 1)
    }

    fn release(&mut self, id: JobId, attempt: u32, owner: InstanceId, now: f64) -> Result<bool> {
        execute(
            &mut self.stmts,
            &mut self.client,
            &format!("{TAKE_BACK} AND id = $3 AND attempts = $4"),
            &[&owner, &now, &id, &i64::from(attempt)],
            "release a job",
        )
        .map(|changed| changed == 1)
    }

    fn release_strays(
        &mut self,
        owner: InstanceId,
        known: &[JobId],
        claimed_before: Option<f64>,
        now: f64,
    ) -> Result<Vec<JobId>> {
        let op = "release strays";
        let rows = query(
            &mut self.stmts,
            &mut self.client,
            &format!(
                "{TAKE_BACK} AND NOT (id = ANY($3::bigint[])) \
                 AND ($4::float8 IS NULL OR started_at <= $4) RETURNING id"
            ),
            &[&owner, &now, &known, &claimed_before],
            op,
        )?;
        ids_of(rows, op)
    }

    fn cancel(&mut self, id: JobId, now: f64) -> Result<CancelResult> {
        let op = "cancel";
        let stmts = &mut self.stmts;
        let mut tx = self.client.transaction().ctx(op)?;
        let rows = query(
            stmts,
            &mut tx,
            "SELECT state, not_before FROM jobs WHERE id = $1 FOR UPDATE",
            &[&id],
            op,
        )?;
        let Some(row) = rows.first() else {
            return Ok(CancelResult::Unknown);
        };
        let state: String = column(row, id, 0)?;
        let not_before: Option<f64> = column(row, id, 1)?;
        let state = parse_state(id, &state)?;
        let result = match state {
            JobState::Running => {
                execute(
                    stmts,
                    &mut tx,
                    "UPDATE jobs SET cancel_requested = TRUE WHERE id = $1 AND state = 'running'",
                    &[&id],
                    op,
                )?;
                CancelResult::Requested
            }
            JobState::Queued | JobState::Failed | JobState::TimedOut
                if state == JobState::Queued || not_before.is_some() =>
            {
                execute(
                    stmts,
                    &mut tx,
                    "UPDATE jobs SET state = 'canceled', finished_at = $2, not_before = NULL \
                     WHERE id = $1 AND (state = 'queued' OR (state IN ('failed', 'timed_out') \
                     AND not_before IS NOT NULL))",
                    &[&id, &now],
                    op,
                )?;
                CancelResult::Canceled
            }
            finished => return Ok(CancelResult::AlreadyFinished(finished)),
        };
        tx.batch_execute(&format!("NOTIFY {NOTIFY_CHANNEL}, 'cancel'"))
            .ctx("cancel: notify")?;
        tx.commit().ctx(op)?;
        Ok(result)
    }

    fn cancel_requests(&mut self, owner: InstanceId) -> Result<Vec<(JobId, u32)>> {
        let op = "list cancel requests";
        query(
            &mut self.stmts,
            &mut self.client,
            "SELECT id, attempts FROM jobs \
             WHERE owner = $1 AND state = 'running' AND cancel_requested ORDER BY id",
            &[&owner],
            op,
        )?
        .iter()
        .map(|row| {
            let id: JobId = row.try_get(0).ctx(op)?;
            Ok((id, count(row, id, 1)?))
        })
        .collect()
    }

    fn get(&mut self, id: JobId, now: f64) -> Result<Option<Job>> {
        materialise_if_due(&mut self.stmts, &mut self.client, now)?;
        query(
            &mut self.stmts,
            &mut self.client,
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"),
            &[&id],
            "get a job",
        )?
        .first()
        .map(read_job)
        .transpose()
    }

    fn list(&mut self, state: Option<JobState>, now: f64) -> Result<Vec<Job>> {
        materialise_if_due(&mut self.stmts, &mut self.client, now)?;
        let rows = match state {
            Some(state) => query(
                &mut self.stmts,
                &mut self.client,
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE state = $1 ORDER BY id"),
                &[&state.as_str()],
                "list jobs",
            )?,
            None => query(
                &mut self.stmts,
                &mut self.client,
                &format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY id"),
                &[],
                "list jobs",
            )?,
        };
        rows.iter().map(read_job).collect()
    }

    fn counts(&mut self, now: f64) -> Result<BTreeMap<JobState, u64>> {
        let op = "count jobs";
        materialise_if_due(&mut self.stmts, &mut self.client, now)?;
        let mut counts: BTreeMap<JobState, u64> =
            JobState::ALL.into_iter().map(|state| (state, 0)).collect();
        let rows = query(
            &mut self.stmts,
            &mut self.client,
            "SELECT state, COUNT(*) FROM jobs GROUP BY state",
            &[],
            op,
        )?;
        for row in rows {
            let state: String = row.try_get(0).ctx(op)?;
            let n: i64 = row.try_get(1).ctx(op)?;
            let state = state
                .parse::<JobState>()
                .map_err(|e| StoreError::Corrupt(format!("a job has an {e}")))?;
            counts.insert(state, n.try_into().unwrap_or(0));
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        for (url, shown) in [
            (
                "postgres://app:s3cret@db:5432/jobs",
                "postgres://app:***@db:5432/jobs",
            ),
            ("postgres://app@db/jobs", "postgres://app@db/jobs"),
            (
                "postgresql://app:p@ss@db/jobs",
                "postgresql://app:***@db/jobs",
            ),
            (
                "postgres://db/jobs?user=a&password=x&sslmode=require",
                "postgres://db/jobs?user=a&password=***&sslmode=require",
            ),
            (
                "host=db user=app password=secret dbname=jobs",
                "host=db user=app password=*** dbname=jobs",
            ),
            (
                "host=db password='a b\\' c' dbname=jobs",
                "host=db password=*** dbname=jobs",
            ),
            ("host=/tmp/pg user=postgres", "host=/tmp/pg user=postgres"),
        ] {
            assert_eq!(redact_password(url), shown, "{url}");
        }
    }

    #[test]
    fn tls_settings_are_taken_out_of_both_forms_of_url() {
        let (rest, tls) =
            tls_settings("host=db user=app sslmode=verify-full sslrootcert='/etc/a b.pem'")
                .unwrap();
        assert_eq!(rest, "host=db user=app");
        assert_eq!(tls, Tls::VerifyFull(Some("/etc/a b.pem".into())));
        let (rest, tls) =
            tls_settings("postgres://app@db/jobs?sslmode=require&application_name=x").unwrap();
        assert_eq!(rest, "postgres://app@db/jobs?application_name=x");
        assert_eq!(tls, Tls::Require);
        let (rest, tls) = tls_settings("postgres://db/jobs?sslmode=verify-ca").unwrap();
        assert_eq!(
            (rest.as_str(), tls),
            ("postgres://db/jobs", Tls::VerifyCa(None))
        );
        assert_eq!(tls_settings("host=db").unwrap().1, Tls::Prefer);
        assert_eq!(
            tls_settings("host=db sslmode=disable").unwrap().1,
            Tls::Disable
        );
        let e = tls_settings("host=db sslmode=always").unwrap_err();
        assert!(e.contains("\"always\""), "{e}");
        assert!(tls_settings("host=db password='x").is_err());
        // Other quoted values are kept as written.
        assert_eq!(
            tls_settings("host=db password='a b' sslmode=require")
                .unwrap()
                .0,
            "host=db password='a b'"
        );
    }

    #[test]
    fn the_schema_versions_are_counted() {
        assert_eq!(PG_SCHEMA_VERSION as usize, MIGRATIONS.len());
    }

    #[test]
    fn connect_errors_name_the_url_without_its_password() {
        // Nothing listens on port 1: refused at once.
        let url = "postgres://app:s3cret@127.0.0.1:1/jobs";
        for err in [
            PostgresStore::connect(url).unwrap_err(),
            PostgresStore::listen(url).unwrap_err(),
        ] {
            assert!(matches!(err, StoreError::Connect { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains("postgres://app:***@127.0.0.1:1/jobs"), "{msg}");
            assert!(!msg.contains("s3cret"), "{msg}");
        }
        let err = PostgresStore::connect("host=db port=notanumber password=s3cret")
            .unwrap_err()
            .to_string();
        assert!(err.contains("password=***"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    /// The plan of `sql` with `params` as a prepared statement (so that `plan_cache_mode`
    /// applies), one step a line.
    fn plan(client: &mut Client, sql: &str, args: &[String]) -> String {
        client
            .batch_execute(&format!("DEALLOCATE ALL; PREPARE p AS {sql}"))
            .unwrap();
        let execute = if args.is_empty() {
            "EXPLAIN EXECUTE p".to_string()
        } else {
            format!("EXPLAIN EXECUTE p({})", args.join(", "))
        };
        client
            .query(&execute, &[])
            .unwrap()
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// With a long history of finished jobs, the hot queries read live jobs through their
    /// partial indexes, whether PostgreSQL plans them for the parameters at hand or once
    /// for all (as it may for a prepared statement used often).
    #[test]
    #[ignore = "needs PostgreSQL: scripts/with-postgres cargo nextest run -p supervisor-store --run-ignored only"]
    fn hot_queries_use_the_live_indexes() {
        let server = std::env::var("SUPERVISOR_TEST_POSTGRES_URL")
            .expect("SUPERVISOR_TEST_POSTGRES_URL is not set: run through scripts/with-postgres");
        let name = format!("supervisor_unit_{}", std::process::id());
        let mut admin = Client::connect(&server, NoTls).unwrap();
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let url = format!("{server} dbname={name}");
        let result = std::panic::catch_unwind(|| {
            let mut store = PostgresStore::connect(&url).unwrap();
            let me = store.register_instance("h", 1, "t", 0.0).unwrap();
            // 50,000 finished jobs, a few live ones.
            store
                .client
                .batch_execute(
                    "INSERT INTO jobs (state, command, tags, env, created_at, attempts, \
                         last_outcome, finished_at, run_group) \
                     SELECT 'succeeded', '[\"true\"]', '{\"k\": \"v\"}', '{}', 1, 1, \
                         'succeeded', 2, 'g' FROM generate_series(1, 50000)",
                )
                .unwrap();
            let routes = [
                Route {
                    group: "g".into(),
                    matches: None,
                },
                Route {
                    group: "t".into(),
                    matches: Some([("k".to_string(), vec!["v".to_string()])].into()),
                },
            ];
            let mut jobs = vec![NewJob::new(["true"]); 20];
            jobs[0].group = Some("g".into());
            store.submit(&jobs, 3.0).unwrap();
            let mut credits = BTreeMap::from([("g".to_string(), 1), ("t".to_string(), 1)]);
            store.claim(me, &routes, &mut credits, 4.0).unwrap();
            let groups = "ARRAY['g', 't']::text[]".to_string();
            let claim_planner = CLAIM_PLANNER.replace("SET LOCAL", "SET");
            let default_planner = "RESET enable_seqscan; RESET enable_bitmapscan; \
                                   RESET enable_sort; RESET enable_hashjoin; \
                                   RESET enable_mergejoin";
            // Without statistics (a new table), then with them, then with those of a
            // deep queue (where a generic plan once hashed the whole table per claim).
            for stats in ["none", "analyzed", "deep"] {
                if stats == "analyzed" {
                    store.client.batch_execute("ANALYZE jobs").unwrap();
                }
                if stats == "deep" {
                    store
                        .client
                        .batch_execute(
                            "INSERT INTO jobs (state, named_group, command, tags, env, \
                             created_at, route, routed) \
                             SELECT 'queued', 'g', '[\"true\"]', '{}', '{}', 1.0, 'g', TRUE \
                             FROM generate_series(1, 100000); ANALYZE jobs",
                        )
                        .unwrap();
                }
                for mode in ["force_custom_plan", "force_generic_plan"] {
                    let mode = format!("{stats}, {mode}");
                    let client = &mut store.client;
                    client
                        .batch_execute(&format!(
                            "SET plan_cache_mode = {}",
                            mode.rsplit(' ').next().unwrap()
                        ))
                        .unwrap();

                    // A claim's queries, planned as a claim's transaction sets the planner.
                    client.batch_execute(&claim_planner).unwrap();
                    let p = plan(
                        client,
                        CLAIM,
                        &[
                            me.to_string(),
                            "5.0".into(),
                            groups.clone(),
                            "ARRAY[5, 5]::bigint[]".into(),
                        ],
                    );
                    assert!(p.contains("Index Scan using jobs_claimable"), "{mode}: {p}");
                    assert!(
                        !p.contains("Seq Scan on jobs") && !p.contains("Sort"),
                        "{mode}: {p}"
                    );
                    // The picked rows are updated through the primary key, one by one.
                    assert!(
                        !p.contains("Hash Join") && !p.contains("Merge Join"),
                        "{mode}: {p}"
                    );
                    let p = plan(client, BACKLOG, &["5.0".into(), groups.clone()]);
                    assert!(
                        p.contains("using jobs_claimable") && p.contains("using jobs_waiting"),
                        "{mode}: {p}"
                    );
                    assert!(!p.contains("Seq Scan"), "{mode}: {p}");
                    let p = plan(client, UNROUTED, &["5".into()]);
                    assert!(p.contains("jobs_unrouted"), "{mode}: {p}");
                    assert!(!p.contains("Seq Scan"), "{mode}: {p}");
                    // Routing jobs (the claim's new ones, a reroute's whole queue): by
                    // the primary key.
                    let p = plan(
                        client,
                        SET_ROUTES,
                        &["ARRAY[1, 2]::bigint[]".into(), groups.clone()],
                    );
                    assert!(p.contains("jobs_pkey"), "{mode}: {p}");
                    assert!(!p.contains("Seq Scan on jobs"), "{mode}: {p}");
                    let p = plan(client, MATERIALISE_RETRIES, &["5.0".into()]);
                    assert!(p.contains("jobs_waiting"), "{mode}: {p}");
                    assert!(!p.contains("Seq Scan"), "{mode}: {p}");

                    // The others', as they are planned.
                    client.batch_execute(default_planner).unwrap();
                    if stats == "analyzed" {
                        let p = plan(client, RETRY_DUE, &["5.0".into()]);
                        assert!(!p.contains("Seq Scan"), "{mode}: {p}");
                    }
                    let owner = me.to_string();
                    for (sql, args) in [
                        (
                            format!("{TAKE_BACK} RETURNING id"),
                            vec![owner.clone(), "5.0".into()],
                        ),
                        (
                            "SELECT id, attempts FROM jobs WHERE owner = $1 \
                             AND state = 'running' AND cancel_requested ORDER BY id"
                                .to_string(),
                            vec![owner.clone()],
                        ),
                        // The foreign key's check when an instance goes.
                        (
                            "SELECT 1 FROM ONLY jobs x WHERE owner = $1 FOR KEY SHARE OF x"
                                .to_string(),
                            vec![owner.clone()],
                        ),
                    ] {
                        let p = plan(client, &sql, &args);
                        assert!(p.contains("jobs_running"), "{mode}: {sql}: {p}");
                    }
                }
            }
        });
        drop(admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")));
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
