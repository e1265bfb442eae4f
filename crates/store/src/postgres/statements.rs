//! Prepared statements, one cache per connection, and the two ways of running them.

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{GenericClient, Row, Statement};

use crate::error::Context;
use crate::Result;

/// Prepared statements kept per connection (beyond it, the cache starts afresh).
const STATEMENT_CACHE: usize = 128;

/// Prepared statements of one connection, by their text.
#[derive(Default)]
pub(super) struct Statements(HashMap<String, Statement>);

impl Statements {
    /// The statement for `sql`, prepared on `client` the first time.
    pub(super) fn get(
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
pub(super) fn query(
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
pub(super) fn execute(
    stmts: &mut Statements,
    client: &mut impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    op: &'static str,
) -> Result<u64> {
    let stmt = stmts.get(client, sql, op)?;
    client.execute(&stmt, params).ctx(op)
}
