//! A task's `resource_specification` on the service: what is checked at
//! submit and at function registration (`priority`), how a function's
//! defaults and a submit's own values combine (key by key, the submit's
//! winning), and the queue key the task is stored with
//! (`hpfaas_protocol::priority`).

use hpfaas_protocol::priority::{self, priority_of};
use serde_json::{Map, Value};

/// Refuses a `resource_specification` whose `priority` is unusable,
/// saying why (for a 400).
pub fn check(spec: &Map<String, Value>) -> Result<(), String> {
    priority_of(spec).map(drop)
}

/// The specification a task runs with: the function's `defaults` with the
/// submit's `own` values over them, key by key (both JSON objects as text).
pub fn merge(defaults: Option<&str>, own: Option<&str>) -> Option<String> {
    let Some(defaults) = defaults else {
        return own.map(str::to_string);
    };
    let Some(own) = own else {
        return Some(defaults.to_string());
    };
    let object = |text: &str| serde_json::from_str::<Map<String, Value>>(text).ok();
    match (object(defaults), object(own)) {
        (Some(mut merged), Some(own)) => {
            merged.extend(own);
            Some(Value::Object(merged).to_string())
        }
        // Both are stored only after they parsed as objects; never reached.
        _ => Some(own.to_string()),
    }
}

/// The key a task submitted at `created` (Unix seconds) with this
/// specification is queued by.
pub fn queue_key(created: f64, spec: Option<&str>) -> f64 {
    priority::queue_key(created, priority::priority_in(spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_submit_overrides_defaults_key_by_key() {
        let defaults = r#"{"priority": 3, "walltime": 60, "num_ranks": 4}"#;
        let merged = merge(Some(defaults), Some(r#"{"walltime": 5, "x": 1}"#)).unwrap();
        let merged: Value = serde_json::from_str(&merged).unwrap();
        assert_eq!(
            merged,
            json!({"priority": 3, "walltime": 5, "num_ranks": 4, "x": 1})
        );
        assert_eq!(merge(Some(defaults), None).as_deref(), Some(defaults));
        assert_eq!(merge(None, Some("{}")).as_deref(), Some("{}"));
        assert_eq!(merge(None, None), None);
    }

    #[test]
    fn priorities_are_checked_and_keyed() {
        let bad = json!({"priority": 99999});
        assert!(check(bad.as_object().unwrap())
            .unwrap_err()
            .contains("priority"));
        assert!(check(&Map::new()).is_ok());
        assert_eq!(queue_key(1000.0, Some(r#"{"priority": 2}"#)), 880.0);
        assert_eq!(queue_key(1000.0, None), 1000.0);
    }
}
