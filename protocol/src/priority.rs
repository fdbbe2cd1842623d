//! Task priority: its range, where it is read from (`"priority"` in a
//! task's `resource_specification`), and the ordering rule every queue of
//! hpfaas applies (the service's backlog of an endpoint and the broker's
//! queue), so that the rule holds end to end.
//!
//! The rule: a task is served as if it had arrived `priority *
//! AGING_SECONDS` seconds earlier than it did ([`queue_key`], smallest
//! first; equal keys in arrival order). That is the same as serving the
//! highest effective priority `priority + waited / AGING_SECONDS` first,
//! but the key never changes while the task waits, so queues stay sorted
//! without re-sorting. A waiting task ages: it goes before every task that
//! arrives more than `(MAX_PRIORITY - priority) * AGING_SECONDS` seconds
//! after it, so none starves.

use serde_json::{Map, Value};

/// The lowest priority a task may have.
pub const MIN_PRIORITY: i64 = -1000;
/// The highest priority a task may have.
pub const MAX_PRIORITY: i64 = 1000;
/// Seconds of waiting worth one level of priority.
pub const AGING_SECONDS: f64 = 60.0;

/// The key a queue orders by (smallest first) for a task that arrived at
/// `arrived` (seconds on the queue's clock) with `priority`.
pub fn queue_key(arrived: f64, priority: i64) -> f64 {
    arrived - priority as f64 * AGING_SECONDS
}

/// The priority a `resource_specification` object sets (0 if none), or
/// why its `"priority"` is unusable.
pub fn priority_of(spec: &Map<String, Value>) -> Result<i64, String> {
    match spec.get("priority") {
        None | Some(Value::Null) => Ok(0),
        Some(p) => match p.as_i64() {
            Some(n) if (MIN_PRIORITY..=MAX_PRIORITY).contains(&n) => Ok(n),
            _ => Err(format!(
                "resource_specification priority must be an integer from {MIN_PRIORITY} to \
                 {MAX_PRIORITY}, not {}",
                excerpt(p)
            )),
        },
    }
}

/// The priority in a `resource_specification` as JSON text; 0 when there
/// is none or it is unusable (the service refuses those at submit).
pub fn priority_in(spec: Option<&str>) -> i64 {
    // Most tasks carry no specification, or an empty one: nothing to parse.
    match spec {
        Some(text) if text.contains("\"priority\"") => {
            serde_json::from_str::<Map<String, Value>>(text)
                .ok()
                .and_then(|m| priority_of(&m).ok())
                .unwrap_or(0)
        }
        _ => 0,
    }
}

/// A value as JSON, cut short, for an error message.
fn excerpt(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn priorities_are_integers_in_range() {
        assert_eq!(priority_of(&spec(json!({}))), Ok(0));
        assert_eq!(priority_of(&spec(json!({"priority": null}))), Ok(0));
        assert_eq!(priority_of(&spec(json!({"priority": -3}))), Ok(-3));
        assert_eq!(priority_of(&spec(json!({"priority": 1000}))), Ok(1000));
        for bad in [json!(1001), json!(1.5), json!("5"), json!(true), json!([1])] {
            let why = priority_of(&spec(json!({ "priority": bad }))).unwrap_err();
            assert!(why.contains("priority") && why.contains("1000"), "{why}");
        }
        let long = "x".repeat(10_000);
        let why = priority_of(&spec(json!({ "priority": long }))).unwrap_err();
        assert!(why.len() < 200, "a long value is cut short: {why}");
    }

    #[test]
    fn text_specifications_default_to_zero() {
        assert_eq!(priority_in(None), 0);
        assert_eq!(priority_in(Some("{}")), 0);
        assert_eq!(priority_in(Some(r#"{"priority": 7}"#)), 7);
        assert_eq!(priority_in(Some(r#"{"priority": "high"}"#)), 0);
        assert_eq!(priority_in(Some("not json \"priority\"")), 0);
    }

    #[test]
    fn a_higher_priority_goes_first_until_the_lower_one_has_aged() {
        // Priority 2 arriving 119 s after priority 0 still goes first; at
        // 121 s the older task has aged past it.
        assert!(queue_key(119.0, 2) < queue_key(0.0, 0));
        assert!(queue_key(121.0, 2) > queue_key(0.0, 0));
    }
}
