//! A function's default `resource_specification` (`functions.resource_defaults`,
//! a JSON object or NULL): stored at registration, read with the
//! ownership check of each submit, shown with the function.

use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use crate::error::ApiResult;

/// Stores function `id`'s defaults.
pub fn store(conn: &Connection, id: Uuid, defaults: &str) -> ApiResult<()> {
    conn.prepare_cached("UPDATE functions SET resource_defaults = ?2 WHERE id = ?1")?
        .execute(params![id.to_string(), defaults])?;
    Ok(())
}

/// `None` unless `owner` has function `id` (not deleted); else its
/// defaults, if any.
pub fn owned(conn: &Connection, owner: i64, id: Uuid) -> ApiResult<Option<Option<String>>> {
    let mut st = conn.prepare_cached(
        "SELECT resource_defaults FROM functions WHERE id = ?1 AND owner = ?2 AND deleted = 0",
    )?;
    Ok(st
        .query_row(params![id.to_string(), owner], |r| r.get(0))
        .optional()?)
}
