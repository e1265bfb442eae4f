//! The SQLite store's schema: its migrations, and how a file is brought up to date.

use rusqlite::{Connection, TransactionBehavior};

use super::SqliteStore;
use crate::{Result, StoreError};

/// Schema migrations, applied in order: migration `i` takes the schema from version `i`
/// to version `i + 1` (`PRAGMA user_version`). Never edit one that has shipped: append.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    r#"
    CREATE TABLE instances (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        host        TEXT    NOT NULL,
        pid         INTEGER NOT NULL,
        token       TEXT    NOT NULL,
        started_at  REAL    NOT NULL
    );

    CREATE TABLE jobs (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        state            TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'succeeded',
                                 'failed', 'timed_out', 'dead', 'canceled')),
        -- The group the job names (routing input), and the group it was last routed to.
        named_group      TEXT,
        run_group        TEXT,
        command          TEXT    NOT NULL,  -- JSON array of strings
        tags             TEXT    NOT NULL,  -- JSON object of strings
        env              TEXT    NOT NULL,  -- JSON object of strings
        cwd              TEXT,
        timeout_s        REAL,
        max_attempts     INTEGER,
        idem_key         TEXT,
        attempts         INTEGER NOT NULL DEFAULT 0,
        exit_code        INTEGER,
        signal           INTEGER,
        last_outcome     TEXT,
        created_at       REAL    NOT NULL,
        started_at       REAL,
        finished_at      REAL,
        -- queued: not claimable before; failed/timed_out: retry time (NULL: finished).
        not_before       REAL,
        owner            INTEGER REFERENCES instances (id),
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        CHECK ((state = 'running') = (owner IS NOT NULL))
    );

    -- Claims: queued jobs in id order (an index on state is ordered by (state, id)).
    CREATE INDEX jobs_by_state ON jobs (state);
    -- Retries falling due, and the earliest waiting job.
    CREATE INDEX jobs_by_state_time ON jobs (state, not_before, id);
    CREATE INDEX jobs_by_owner ON jobs (owner);
    -- At most one unfinished job per idempotency key.
    CREATE UNIQUE INDEX jobs_live_key ON jobs (idem_key)
        WHERE idem_key IS NOT NULL
          AND (state IN ('queued', 'running')
               OR (state IN ('failed', 'timed_out') AND not_before IS NOT NULL));
    "#,
    // Version 2: partial indexes that hold live jobs only. Each index entry a claim or
    // an outcome moves is a page written to the log: with the three full indexes of
    // version 1 a claim wrote about seven pages and an outcome as many; now three and
    // two. Finished jobs, the bulk of a long-lived store, are in no index but the key's.
    r#"
    DROP INDEX jobs_by_state;
    DROP INDEX jobs_by_state_time;
    DROP INDEX jobs_by_owner;
    -- Claims: queued jobs in id order.
    CREATE INDEX jobs_queued ON jobs (id) WHERE state = 'queued';
    -- Each instance's running jobs (releases, cancels, orphans).
    CREATE INDEX jobs_running ON jobs (owner) WHERE state = 'running';
    -- Jobs waiting for a retry time: due retries, and the earliest one.
    CREATE INDEX jobs_waiting ON jobs (not_before) WHERE not_before IS NOT NULL;
    "#,
    // Version 3: when each instance last said it was alive, so that a supervisor can
    // tell a dead instance on a host whose processes it cannot see.
    r#"
    ALTER TABLE instances ADD COLUMN last_seen REAL NOT NULL DEFAULT 0;
    UPDATE instances SET last_seen = started_at;
    "#,
    // Version 4: why a job ended as it did (a row that cannot be run, a supervisor that
    // died under it too often), why its last attempt could not start, and how many of
    // its supervisors died while it ran.
    r#"
    ALTER TABLE jobs ADD COLUMN reason TEXT;
    ALTER TABLE jobs ADD COLUMN start_error TEXT;
    ALTER TABLE jobs ADD COLUMN supervisor_deaths INTEGER NOT NULL DEFAULT 0;
    "#,
    // Version 5: a job's group is decided once, not at every claim. `route` is the group
    // it goes to (NULL: none takes it); `routed` is 0 until that is decided (jobs that
    // name their group are routed at submit, tagged ones by the next claim). Claims and
    // the backlog are then index range scans on (route, id) whatever the queue's depth.
    r#"
    ALTER TABLE jobs ADD COLUMN route TEXT;
    ALTER TABLE jobs ADD COLUMN routed INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET route = named_group, routed = 1 WHERE named_group IS NOT NULL;
    DROP INDEX jobs_queued;
    CREATE INDEX jobs_claimable ON jobs (route, id) WHERE state = 'queued';
    CREATE INDEX jobs_unrouted ON jobs (id) WHERE routed = 0;
    "#,
    // Version 6: job control. A job's `priority` (higher first, then first come first
    // served: the claimable index follows that order); the groups an operator paused (no
    // claim for them, on every supervisor of the store, until resumed); and the jobs a job
    // runs `after`: `job_deps` has a row per (job, dependency), `waiting_on` counts the
    // dependencies not succeeded yet (a job waiting on any is not claimable). Triggers keep
    // them right whichever way a job ends: succeeded, each dependent waits on one fewer;
    // ended otherwise for good, each queued dependent is canceled (and so on down). A job
    // delayed to a time to come (`not_before`) is out of the claimable index until a
    // claim finds it due and clears it.
    r#"
    ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN after_ids TEXT;
    ALTER TABLE jobs ADD COLUMN waiting_on INTEGER NOT NULL DEFAULT 0;
    DROP INDEX jobs_claimable;
    CREATE INDEX jobs_claimable ON jobs (route, priority DESC, id)
        WHERE state = 'queued' AND waiting_on = 0 AND not_before IS NULL;
    CREATE TABLE paused_groups (name TEXT PRIMARY KEY, since REAL NOT NULL);
    CREATE TABLE job_deps (job INTEGER NOT NULL, dep INTEGER NOT NULL, PRIMARY KEY (dep, job));
    CREATE TRIGGER dependency_succeeded AFTER UPDATE OF state ON jobs
        WHEN NEW.state = 'succeeded' AND OLD.state <> 'succeeded'
    BEGIN
        UPDATE jobs SET waiting_on = waiting_on - 1
            WHERE id IN (SELECT job FROM job_deps WHERE dep = NEW.id) AND waiting_on > 0;
    END;
    CREATE TRIGGER dependency_failed AFTER UPDATE OF state, not_before ON jobs
        WHEN (NEW.state IN ('dead', 'canceled')
              OR (NEW.state IN ('failed', 'timed_out') AND NEW.not_before IS NULL))
         AND NOT (OLD.state = NEW.state AND OLD.not_before IS NEW.not_before)
    BEGIN
        UPDATE jobs SET state = 'canceled', last_outcome = 'canceled',
            finished_at = COALESCE(NEW.finished_at, NEW.created_at),
            reason = 'dependency ' || NEW.id || ' ended ' || NEW.state
            WHERE id IN (SELECT job FROM job_deps WHERE dep = NEW.id) AND state = 'queued';
    END;
    "#,
];

/// Migrations after [`damage_guard`] (version 7), from version 8 on.
const LATER: &[&str] = &[
    // Version 8: every dependency a job names is in `job_deps`. A job canceled at submit
    // for a dependency that had already ended otherwise had no row: a retry of it then
    // found nothing to wait on and ran it, and purge took the dependency.
    r#"
    INSERT OR IGNORE INTO job_deps (job, dep)
        SELECT jobs.id, d.value
        FROM jobs, json_each(CASE WHEN json_valid(jobs.after_ids)
                                   AND json_type(jobs.after_ids) = 'array'
                              THEN jobs.after_ids ELSE '[]' END) AS d
        WHERE jobs.after_ids IS NOT NULL AND d.type = 'integer';
    "#,
];

/// The newest schema version this code knows (`PRAGMA user_version` of a current file):
/// the migrations above, then [`damage_guard`], then [`LATER`].
pub const SCHEMA_VERSION: u32 = (MIGRATIONS.len() + 1 + LATER.len()) as u32;

/// The SQL of schema version `version` (1-based).
fn migration(version: u32) -> std::borrow::Cow<'static, str> {
    let first = MIGRATIONS.len() + 1;
    match version as usize {
        v if v < first => MIGRATIONS[v - 1].into(),
        v if v == first => damage_guard().into(),
        v => LATER[v - first - 1].into(),
    }
}

/// The columns a job row must hold as the store reads them (SQLite stores whatever a
/// hand writes with the `sqlite3` shell), each as an SQL condition on `{c}`, the
/// column as the row has it. A row that fails one cannot be claimed, ordered or shown:
/// a text in `not_before` failed every claim of the queue, a text in `priority` kept a
/// job queued for ever, a negative `waiting_on` kept it waiting for ever.
const SANE: &[(&str, &str)] = &[
    ("priority", "typeof({c}) = 'integer'"),
    ("waiting_on", "typeof({c}) = 'integer' AND {c} >= 0"),
    ("cancel_requested", "typeof({c}) = 'integer'"),
    (
        "not_before",
        "{c} IS NULL OR (typeof({c}) IN ('integer', 'real') AND abs({c}) < 1e15)",
    ),
    (
        "created_at",
        "typeof({c}) IN ('integer', 'real') AND abs({c}) < 1e15",
    ),
    (
        "started_at",
        "{c} IS NULL OR (typeof({c}) IN ('integer', 'real') AND abs({c}) < 1e15)",
    ),
    (
        "finished_at",
        "{c} IS NULL OR (typeof({c}) IN ('integer', 'real') AND abs({c}) < 1e15)",
    ),
    (
        "exit_code",
        "{c} IS NULL OR (typeof({c}) = 'integer' AND {c} BETWEEN -2147483648 AND 2147483647)",
    ),
    (
        "signal",
        "{c} IS NULL OR (typeof({c}) = 'integer' AND {c} BETWEEN -2147483648 AND 2147483647)",
    ),
    ("route", "typeof({c}) IN ('null', 'text')"),
    (
        "owner",
        "{c} IS NULL OR EXISTS (SELECT 1 FROM instances WHERE id = {c})",
    ),
];

/// The rule of `col` in [`SANE`].
fn rule_of(col: &str) -> &'static str {
    SANE.iter()
        .find(|(c, _)| *c == col)
        .expect("a column of SANE")
        .1
}

/// Version 7: a damaged job row ends `dead` with a `reason` naming what is wrong (the
/// contract: "a job record that cannot be run ends dead"), and its unusable values take
/// their defaults, so that every query can read it. Rows damaged before are found once,
/// here; rows damaged later (by hand, while a supervisor runs) by two triggers, at the
/// write that damages them: a claim, an outcome or a listing never meets one.
fn damage_guard() -> String {
    let sane = |prefix: &str| {
        SANE.iter()
            .map(|(col, rule)| format!("({})", rule.replace("{c}", &format!("{prefix}{col}"))))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let damaged = SANE
        .iter()
        .map(|(col, rule)| {
            format!(
                "CASE WHEN ({}) THEN '' ELSE ' {col}' END",
                rule.replace("{c}", col)
            )
        })
        .collect::<Vec<_>>()
        .join(" || ");
    // What a claim, a retry or a wait would still do with it: it ends here instead.
    let live = "(state IN ('queued', 'running') \
                OR (state IN ('failed', 'timed_out') AND not_before IS NOT NULL))";
    let now = "((julianday('now') - 2440587.5) * 86400.0)";
    let keep = |col: &str, default: &str| {
        let rule = rule_of(col);
        format!(
            "{col} = CASE WHEN ({}) THEN {col} ELSE {default} END",
            rule.replace("{c}", col)
        )
    };
    let fix = |which: &str| {
        format!(
            "UPDATE jobs SET \
                reason = CASE WHEN {live} \
                    THEN 'the stored job cannot be run: its row holds what the store cannot use in' || {damaged} \
                    ELSE reason END, \
                finished_at = CASE WHEN {live} THEN {now} \
                    WHEN ({finished}) THEN finished_at ELSE {now} END, \
                state = CASE WHEN {live} THEN 'dead' ELSE state END, \
                not_before = CASE WHEN {live} THEN NULL ELSE not_before END, \
                owner = NULL, \
                {priority}, {waiting_on}, {cancel}, {created}, {started}, \
                {exit_code}, {signal}, {route} \
             WHERE {which}",
            finished = rule_of("finished_at").replace("{c}", "finished_at"),
            priority = keep("priority", "0"),
            waiting_on = keep("waiting_on", "0"),
            cancel = keep("cancel_requested", "0"),
            created = keep("created_at", now),
            started = keep("started_at", "NULL"),
            exit_code = keep("exit_code", "NULL"),
            signal = keep("signal", "NULL"),
            route = keep("route", "NULL"),
        )
    };
    let columns = SANE.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ");
    format!(
        "{sweep};
        CREATE TRIGGER job_row_damaged_by_insert AFTER INSERT ON jobs
            WHEN NOT ({new_sane})
        BEGIN
            {fix_new};
        END;
        CREATE TRIGGER job_row_damaged_by_update AFTER UPDATE OF state, {columns} ON jobs
            WHEN NOT ({new_sane})
        BEGIN
            {fix_new};
        END;",
        sweep = fix(&format!("NOT ({})", sane(""))),
        new_sane = sane("NEW."),
        fix_new = fix("id = NEW.id"),
    )
}

impl SqliteStore {
    /// Applies the migrations the file lacks, all in one transaction.
    pub(super) fn migrate(&mut self) -> Result<()> {
        let too_new = |found| StoreError::SchemaTooNew {
            path: self.path.clone(),
            found,
            supported: SCHEMA_VERSION,
        };
        let open_err = |source| StoreError::Open {
            path: self.path.clone(),
            source,
        };
        let found = user_version(&self.conn).map_err(open_err)?;
        if found > SCHEMA_VERSION {
            return Err(too_new(found));
        }
        if found == SCHEMA_VERSION {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(open_err)?;
        // Another process may have migrated while we waited for the lock.
        let found = user_version(&tx).map_err(open_err)?;
        if found > SCHEMA_VERSION {
            return Err(too_new(found));
        }
        for version in found + 1..=SCHEMA_VERSION {
            let sql = migration(version);
            let migration_err = |source| StoreError::Migration {
                path: self.path.clone(),
                version,
                source,
            };
            tx.execute_batch(&sql).map_err(migration_err)?;
            tx.pragma_update(None, "user_version", version)
                .map_err(migration_err)?;
            log::info!(
                "job store {}: migrated to schema version {version}",
                self.path.display()
            );
        }
        tx.commit().map_err(open_err)
    }
}

/// `PRAGMA user_version`.
pub(super) fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
}
