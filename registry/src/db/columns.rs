//! How values sit in columns: UUIDs and JSON objects as text. Every query
//! module reads rows through these, so they live below all of them.

use uuid::Uuid;

/// Reads a UUID stored as text.
pub(crate) fn uuid_col(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Uuid> {
    let text: String = row.get(idx)?;
    Uuid::parse_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Reads a JSON object stored as text (`{}` when unreadable).
pub(crate) fn json_col(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<serde_json::Value> {
    let text: String = row.get(idx)?;
    Ok(serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn read<T>(
        value: &str,
        f: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let conn = Connection::open_in_memory().unwrap();
        conn.query_row("SELECT ?1", [value], |r| f(r))
    }

    #[test]
    fn a_bad_uuid_is_an_error_naming_the_column() {
        let id = Uuid::new_v4();
        assert_eq!(read(&id.to_string(), |r| uuid_col(r, 0)).unwrap(), id);
        let err = read("not-a-uuid", |r| uuid_col(r, 0)).unwrap_err();
        assert!(
            matches!(err, rusqlite::Error::FromSqlConversionFailure(0, _, _)),
            "{err:?}"
        );
    }

    #[test]
    fn unreadable_json_reads_as_an_empty_object() {
        assert_eq!(
            read(r#"{"a":1}"#, |r| json_col(r, 0)).unwrap(),
            serde_json::json!({"a": 1})
        );
        assert_eq!(
            read("{nope", |r| json_col(r, 0)).unwrap(),
            serde_json::json!({})
        );
    }
}
