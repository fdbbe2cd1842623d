//! MPI functions on the wire: how a function says it is one (`sh\n` JSON with
//! `"mpi": true`), the client's `resource_specification` resolved to whole
//! nodes, and the nodes the broker hands the manager that launches the task.
//!
//! The broker (placement) and the launching manager (the launcher's command
//! line) read a specification through the same [`MpiRequest::parse`], so they
//! can never disagree about how many nodes and ranks a task has.

use serde::{Deserialize, Serialize};

use crate::payload::{self, STRATEGY_SHELL_FUNCTION};

/// Keys a resource specification may hold, as Globus Compute and Parsl name them.
pub const RESOURCE_KEYS: [&str; 5] = [
    "num_nodes",
    "ranks_per_node",
    "num_ranks",
    "launcher_options",
    "walltime",
];

/// Largest node or rank count accepted; anything above is a typo, not a machine.
const MAX_COUNT: u64 = 1 << 20;

/// One node of an MPI task's placement: a manager's host and its ranks there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MpiNode {
    /// Host name the manager registered with.
    pub host: String,
    /// Ranks to start on this node.
    pub ranks: u32,
}

/// What an MPI task asks for, resolved to whole nodes.
///
/// * `num_nodes` (with `ranks_per_node`, default 1, or `num_ranks` spread over
///   the nodes): that many nodes; `num_ranks` defaults to
///   `num_nodes * ranks_per_node` and must leave no reserved node without a rank.
/// * `num_ranks` alone: one node running every rank (Globus Compute and Parsl
///   do the same); with `ranks_per_node`, `ceil(num_ranks / ranks_per_node)` nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpiRequest {
    /// Nodes (managers) to reserve, all in one block.
    pub num_nodes: u32,
    /// Most ranks on one node; every node but the last has exactly this many.
    pub ranks_per_node: u32,
    /// Ranks in all.
    pub num_ranks: u32,
    /// Extra launcher arguments for this task (after the endpoint's own).
    pub launcher_options: String,
}

impl MpiRequest {
    /// Reads a task's `resource_specification` (JSON text), or says what is wrong with it.
    pub fn parse(spec: Option<&str>) -> Result<MpiRequest, String> {
        const EXAMPLE: &str = r#"{"num_nodes": 2, "ranks_per_node": 2} or {"num_ranks": 4}"#;
        let value: serde_json::Value = match spec {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| format!("resource_specification is not valid JSON: {e}"))?,
            None => serde_json::Value::Null,
        };
        let map = match value {
            serde_json::Value::Object(map) if !map.is_empty() => map,
            serde_json::Value::Object(_) | serde_json::Value::Null => {
                return Err(format!(
                    "an MPIFunction needs a resource_specification, e.g. {EXAMPLE}"
                ))
            }
            other => {
                return Err(format!(
                    "resource_specification must be a JSON object, not {other}"
                ))
            }
        };
        if let Some(key) = map.keys().find(|k| !RESOURCE_KEYS.contains(&k.as_str())) {
            return Err(format!(
                "resource_specification has unknown key {key:?}; MPI tasks take {}",
                RESOURCE_KEYS.join(", ")
            ));
        }
        let count = |key: &str| -> Result<Option<u64>, String> {
            match map.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(n) if (1..=MAX_COUNT).contains(&n) => Ok(Some(n)),
                    _ => Err(format!(
                        "resource_specification {key} must be a whole number from 1 to {MAX_COUNT}, not {v}"
                    )),
                },
            }
        };
        let (nodes, per_node, ranks) = (
            count("num_nodes")?,
            count("ranks_per_node")?,
            count("num_ranks")?,
        );
        let launcher_options = match map.get("launcher_options") {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => {
                return Err(format!(
                    "resource_specification launcher_options must be a string, not {v}"
                ))
            }
        };
        let (num_nodes, ranks_per_node, num_ranks) = match (nodes, per_node, ranks) {
            (Some(n), per_node, ranks) => {
                let r = per_node.unwrap_or_else(|| ranks.map_or(1, |t| t.div_ceil(n)));
                let total = ranks.unwrap_or(n * r);
                // Every reserved node must get a rank, or it is held for nothing.
                if total > n * r || total <= (n - 1) * r {
                    return Err(format!(
                        "resource_specification num_ranks = {total} does not fit num_nodes = {n} \
                         with ranks_per_node = {r}: it must be more than {} and at most {}",
                        (n - 1) * r,
                        n * r
                    ));
                }
                (n, r, total)
            }
            (None, per_node, Some(total)) => {
                let r = per_node.unwrap_or(total).min(total);
                (total.div_ceil(r), r, total)
            }
            (None, _, None) => {
                return Err(format!(
                    "resource_specification needs num_nodes or num_ranks, e.g. {EXAMPLE}"
                ))
            }
        };
        if num_ranks > MAX_COUNT {
            return Err(format!(
                "resource_specification asks for {num_ranks} ranks; at most {MAX_COUNT}"
            ));
        }
        Ok(MpiRequest {
            num_nodes: num_nodes as u32,
            ranks_per_node: ranks_per_node as u32,
            num_ranks: num_ranks as u32,
            launcher_options,
        })
    }

    /// Ranks on the `node`-th reserved node (0-based): nodes fill in order.
    pub fn ranks_on(&self, node: u32) -> u32 {
        let before = node.saturating_mul(self.ranks_per_node);
        self.num_ranks
            .saturating_sub(before)
            .min(self.ranks_per_node)
    }
}

/// True if registered function code is an `MPIFunction` (`sh\n` JSON with `"mpi": true`).
pub fn is_mpi_function(code: &str) -> bool {
    let Ok(buffers) = payload::unpack(code) else {
        return false;
    };
    buffers
        .first()
        .and_then(|b| b.strip_prefix(STRATEGY_SHELL_FUNCTION))
        .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        .is_some_and(|spec| spec.get("mpi") == Some(&serde_json::Value::Bool(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<MpiRequest, String> {
        MpiRequest::parse(Some(json))
    }

    fn shape(r: &MpiRequest) -> (u32, u32, u32) {
        (r.num_nodes, r.ranks_per_node, r.num_ranks)
    }

    #[test]
    fn nodes_and_ranks_resolve() {
        let r = req(r#"{"num_nodes": 2, "ranks_per_node": 2}"#).unwrap();
        assert_eq!(shape(&r), (2, 2, 4));
        assert_eq!((r.ranks_on(0), r.ranks_on(1)), (2, 2));
        assert_eq!(shape(&req(r#"{"num_nodes": 3}"#).unwrap()), (3, 1, 3));
        let r = req(r#"{"num_nodes": 2, "num_ranks": 3}"#).unwrap();
        assert_eq!(shape(&r), (2, 2, 3));
        assert_eq!((r.ranks_on(0), r.ranks_on(1)), (2, 1));
        assert_eq!(shape(&req(r#"{"num_ranks": 4}"#).unwrap()), (1, 4, 4));
        assert_eq!(
            shape(&req(r#"{"num_ranks": 5, "ranks_per_node": 2}"#).unwrap()),
            (3, 2, 5)
        );
        let r = req(r#"{"num_ranks": 2, "launcher_options": "--oversubscribe"}"#).unwrap();
        assert_eq!(r.launcher_options, "--oversubscribe");
    }

    #[test]
    fn bad_specifications_say_why() {
        for (spec, needle) in [
            (None, "needs a resource_specification"),
            (Some("{}"), "needs a resource_specification"),
            (Some("[1]"), "JSON object"),
            (Some("{"), "not valid JSON"),
            (Some(r#"{"num_node": 2}"#), "\"num_node\""),
            (
                Some(r#"{"ranks_per_node": 2}"#),
                "needs num_nodes or num_ranks",
            ),
            (
                Some(r#"{"num_nodes": 0}"#),
                "num_nodes must be a whole number",
            ),
            (
                Some(r#"{"num_nodes": 1.5}"#),
                "num_nodes must be a whole number",
            ),
            (
                Some(r#"{"num_nodes": "2"}"#),
                "num_nodes must be a whole number",
            ),
            (
                Some(r#"{"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 5}"#),
                "at most 4",
            ),
            (
                Some(r#"{"num_nodes": 3, "ranks_per_node": 2, "num_ranks": 4}"#),
                "more than 4",
            ),
            (
                Some(r#"{"num_ranks": 2, "launcher_options": 3}"#),
                "must be a string",
            ),
        ] {
            let err = MpiRequest::parse(spec).unwrap_err();
            assert!(err.contains(needle), "{spec:?}: {err}");
        }
    }

    #[test]
    fn mpi_functions_are_recognised() {
        let code = |json: &str| payload::pack(&[format!("sh\n{json}")]);
        assert!(is_mpi_function(&code(
            r#"{"cmd": "hostname", "mpi": true}"#
        )));
        assert!(!is_mpi_function(&code(r#"{"cmd": "hostname"}"#)));
        assert!(!is_mpi_function(&code(
            r#"{"cmd": "hostname", "mpi": false}"#
        )));
        assert!(!is_mpi_function(&payload::pack(&["st\nf:def f(): pass"])));
        assert!(!is_mpi_function("garbage"));
    }
}
