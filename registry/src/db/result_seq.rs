//! The result sequence: every result stored (or task cancelled) takes the
//! next `result_seq`, the position the result streams resume from. The
//! writer holds the next one ([`WriteCtx`]); the `counters` table keeps the
//! last one handed out, in the job that handed it out.

use rusqlite::Connection;

use super::writer::WriteCtx;
use crate::error::ApiResult;

/// Highest `result_seq` stored (0 when none), to continue the sequence.
pub fn max_result_seq(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT value FROM counters WHERE name = 'result_seq'",
        [],
        |r| r.get(0),
    )
}

/// Records the last `result_seq` handed out, in the job that handed it out.
pub fn save_result_seq(conn: &Connection, ctx: &WriteCtx) -> ApiResult<()> {
    conn.prepare_cached("UPDATE counters SET value = ?1 WHERE name = 'result_seq'")?
        .execute([ctx.next_result_seq - 1])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_saved_sequence_is_the_last_one_handed_out() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        assert_eq!(max_result_seq(&conn).unwrap(), 0);
        save_result_seq(&conn, &WriteCtx { next_result_seq: 8 }).unwrap();
        assert_eq!(max_result_seq(&conn).unwrap(), 7);
    }
}
