//! The endpoint's own policy, applied by the agent before a task runs:
//! `allowed_functions` and `json_only` (`[endpoint]`). The service enforces
//! the same at submit time from the agent's hello; checking here as well
//! means a task that reached the endpoint some other way (an older service,
//! a config changed while tasks were queued) still cannot break the policy.

use hpfaas_protocol::failure::SystemFailure;
use hpfaas_protocol::payload::{self, STRATEGY_JSON};
use hpfaas_protocol::task::{ExceptionInfo, TaskSpec};

use crate::config::EndpointSection;

/// Why this endpoint will not run `task`, if it will not.
pub fn refusal(endpoint: &EndpointSection, task: &TaskSpec) -> Option<ExceptionInfo> {
    let allowed = &endpoint.allowed_functions;
    if !allowed.is_empty() && !allowed.contains(&task.function_id) {
        let why = format!(
            "function {} is not in this endpoint's allowed_functions",
            task.function_id
        );
        return Some(ExceptionInfo::system(
            SystemFailure::FunctionNotAllowed,
            why,
        ));
    }
    if endpoint.json_only {
        return json_refusal(&task.payload);
    }
    None
}

/// Why a payload is not JSON-only: a framing error, or the first buffer
/// whose strategy is not `11\n` (named, so the user knows what to change).
fn json_refusal(packed: &str) -> Option<ExceptionInfo> {
    let value_error = |why: String| Some(ExceptionInfo::system(SystemFailure::ValueError, why));
    let buffers = match payload::unpack(packed) {
        Ok(b) => b,
        Err(e) => return value_error(format!("bad task payload: {e}")),
    };
    let (i, buffer) = buffers
        .iter()
        .enumerate()
        .find(|(_, b)| !b.starts_with(STRATEGY_JSON))?;
    // The first characters, not bytes: a user's payload may cut a
    // multi-byte character at byte 3.
    let strategy: String = match payload::strategy_of(buffer) {
        Some(s) => s.to_string(),
        None => buffer.chars().take(3).collect(),
    };
    value_error(format!(
        "this endpoint accepts only JSON-serialized arguments (endpoint.json_only), \
         but buffer {i} of the task's payload uses strategy {strategy:?}, not \"11\\n\" (JSON)"
    ))
}

/// Adjusts an accepted task to the policy: a `json_only` endpoint asks the
/// worker for a JSON result, so no pickle leaves it either.
pub fn prepare(endpoint: &EndpointSection, task: &mut TaskSpec) {
    if endpoint.json_only {
        task.result_serializers = vec![STRATEGY_JSON.to_string()];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn task(payload: &str) -> TaskSpec {
        TaskSpec {
            task_id: Uuid::new_v4(),
            function_id: Uuid::new_v4(),
            payload: payload.into(),
            blob: None,
            result_serializers: vec![],
            resource_spec: None,
        }
    }

    #[test]
    fn allowed_functions_and_json_only_are_enforced() {
        let json = payload::pack(&["11\n[1]", "11\n{}"]);
        let pickled = payload::pack(&["11\n[1]", "00\ngASVAA=="]);
        let open = EndpointSection::default();
        assert!(refusal(&open, &task(&pickled)).is_none());
        let mut t = task(&pickled);
        prepare(&open, &mut t);
        assert!(t.result_serializers.is_empty());

        let strict = EndpointSection {
            json_only: true,
            ..Default::default()
        };
        assert!(refusal(&strict, &task(&json)).is_none());
        let e = refusal(&strict, &task(&pickled)).expect("pickle refused");
        assert_eq!(e.exc_type, "ValueError");
        assert!(
            e.message.contains("buffer 1") && e.message.contains("\"00\\n\""),
            "{}",
            e.message
        );
        let mut t = task(&json);
        prepare(&strict, &mut t);
        assert_eq!(t.result_serializers, vec!["11\n".to_string()]);

        let t = task(&json);
        let only_other = EndpointSection {
            allowed_functions: vec![Uuid::new_v4()],
            ..Default::default()
        };
        let e = refusal(&only_other, &t).expect("not allowed");
        assert_eq!(e.exc_type, SystemFailure::FunctionNotAllowed.name());
        assert!(e.message.contains(&t.function_id.to_string()));
    }

    #[test]
    fn a_strategy_cut_inside_a_character_is_named_not_a_panic() {
        let strict = EndpointSection {
            json_only: true,
            ..Default::default()
        };
        for buffer in ["aaé", "é", "a€"] {
            let e = refusal(&strict, &task(&payload::pack(&[buffer]))).expect("refused");
            assert!(e.message.contains("buffer 0"), "{}", e.message);
        }
    }
}
