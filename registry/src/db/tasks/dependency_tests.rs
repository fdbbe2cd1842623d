//! Tests of task dependencies across the queue: held at submit, released by
//! the last parent's success (with a fresh rid past the dispatch cursor and
//! the parents' results spliced in), failed or cancelled with a parent,
//! references checked, chains and fan-ins of 10,000.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use hpfaas_protocol::failure::SystemFailure;
use hpfaas_protocol::payload::{pack, unpack};
use hpfaas_protocol::task::{ExceptionInfo, Outcome, TaskResult, TaskState};
use uuid::Uuid;

use super::dispatch_page::{dispatch_page, tests::limits, Frame, QueueCursor};
use super::read::get_task;
use super::results::{store_results, StoredResult};
use super::submit::{submit, NewTask, Submission, Submitted};
use super::test_fixture::{fixture, submit_n, Fixture};
use crate::db::cancel::cancel_task;
use crate::db::catalog::{ensure_user, register_endpoint, EndpointRegistration, StoredToken};
use crate::db::writer::WriteCtx;
use crate::error::ApiResult;

fn args() -> String {
    pack(&["11\n[1]", "11\n{}"])
}

/// Submits one task of `owner` to `endpoint` depending on `parents`.
fn submit_dep(fx: &Fixture, owner: i64, endpoint: Uuid, parents: &[Uuid]) -> ApiResult<Uuid> {
    let id = Uuid::new_v4();
    let s = Submission {
        owner,
        endpoint,
        group: Uuid::new_v4(),
        state: TaskState::Received,
        functions: vec![(fx.function.to_string(), fx.function)],
        tasks: vec![NewTask {
            id,
            function: fx.function,
            payload: args(),
            in_file: false,
            blob: None,
        }],
        result_serializers: "[]".into(),
        resource_spec: None,
        idempotency: None,
        quota: Default::default(),
        depends_on: vec![(0, parents.to_vec())],
    };
    let mut ctx = WriteCtx {
        next_result_seq: 1 << 40,
    };
    assert_eq!(submit(&fx.conn, &mut ctx, &s)?, Submitted::Created);
    Ok(id)
}

fn succeed(
    fx: &Fixture,
    ctx: &mut WriteCtx,
    endpoint: Uuid,
    id: Uuid,
    r: &str,
) -> Vec<StoredResult> {
    let ok = TaskResult {
        task_id: id,
        outcome: Outcome::Success { result: r.into() },
        output: None,
        completed_at: 5.0,
        placement: None,
    };
    store_results(&fx.conn, ctx, endpoint, &[ok]).unwrap()
}

fn state(fx: &Fixture, id: Uuid) -> TaskState {
    get_task(&fx.conn, fx.owner, id).unwrap().unwrap().state
}

/// The ids (and payloads) of the tasks the next dispatch page past `cursor`
/// holds; `cursor` moves past them.
fn page(fx: &Fixture, endpoint: Uuid, cursor: &mut QueueCursor) -> Vec<(Uuid, String)> {
    let page = dispatch_page(
        &fx.conn,
        &fx.files,
        endpoint,
        std::mem::take(cursor),
        HashSet::new(),
        limits(100, 1 << 20),
    )
    .unwrap();
    *cursor = page.cursor;
    let Some(Frame::Text(text)) = page.frame else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                Uuid::parse_str(t["task_id"].as_str().unwrap()).unwrap(),
                t["payload"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_dependent_is_held_then_released_past_the_cursor_with_the_results_in_place() {
    let fx = fixture();
    let parents = submit_n(&fx, Uuid::new_v4(), 2, 10);
    let child = submit_dep(&fx, fx.owner, fx.endpoint, &parents).unwrap();
    assert_eq!(state(&fx, child), TaskState::WaitingForDependencies);
    // The link reads both parents, never the held child, and keeps its cursor.
    let mut cursor = QueueCursor::start();
    let first = page(&fx, fx.endpoint, &mut cursor);
    assert_eq!(first.iter().map(|t| t.0).collect::<Vec<_>>(), parents);
    let mut ctx = WriteCtx { next_result_seq: 1 };
    let stored = succeed(&fx, &mut ctx, fx.endpoint, parents[1], "11\n2");
    assert!(stored[0].released.is_empty(), "one parent still runs");
    assert!(page(&fx, fx.endpoint, &mut cursor).is_empty());
    let stored = succeed(&fx, &mut ctx, fx.endpoint, parents[0], "11\n1");
    assert_eq!(stored[0].released, vec![fx.endpoint]);
    assert_eq!(state(&fx, child), TaskState::Received);
    // Released after the cursor, with the results in depends_on order.
    let next = page(&fx, fx.endpoint, &mut cursor);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].0, child);
    let buffers = unpack(&next[0].1).unwrap();
    assert_eq!(buffers.len(), 3);
    assert_eq!(buffers[2], format!("dr\n{}", pack(&["11\n1", "11\n2"])));
}

#[test]
fn parents_finished_before_the_submit_release_it_at_once() {
    let fx = fixture();
    let parents = submit_n(&fx, Uuid::new_v4(), 1, 10);
    let mut ctx = WriteCtx { next_result_seq: 1 };
    succeed(&fx, &mut ctx, fx.endpoint, parents[0], "11\n5");
    let child = submit_dep(&fx, fx.owner, fx.endpoint, &parents).unwrap();
    assert_eq!(state(&fx, child), TaskState::Received);
    let tasks = page(&fx, fx.endpoint, &mut QueueCursor::start());
    assert_eq!(tasks.len(), 1);
    assert_eq!(unpack(&tasks[0].1).unwrap()[2], "dr\n4\n11\n5");
    succeed(&fx, &mut ctx, fx.endpoint, child, "11\n1");
    // What the owner is charged for: the two results, no argument left over.
    assert_eq!(usage(&fx), (0, 8));
}

#[test]
fn a_released_dependent_leaves_no_usage_behind() {
    let fx = fixture();
    let parent = submit_n(&fx, Uuid::new_v4(), 1, 10)[0];
    let child = submit_dep(&fx, fx.owner, fx.endpoint, &[parent]).unwrap();
    let mut ctx = WriteCtx { next_result_seq: 1 };
    succeed(&fx, &mut ctx, fx.endpoint, parent, "11\n5");
    succeed(&fx, &mut ctx, fx.endpoint, child, "11\n1");
    assert_eq!(usage(&fx), (0, 8));
}

/// The owner's (queued tasks, bytes) as counted.
fn usage(fx: &Fixture) -> (i64, i64) {
    fx.conn
        .query_row(
            "SELECT queued, bytes FROM user_usage WHERE user_id = ?1",
            [fx.owner],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

#[test]
fn a_failed_parent_fails_its_dependents_recursively_naming_it() {
    let fx = fixture();
    let parent = submit_n(&fx, Uuid::new_v4(), 1, 10)[0];
    let child = submit_dep(&fx, fx.owner, fx.endpoint, &[parent]).unwrap();
    let grandchild = submit_dep(&fx, fx.owner, fx.endpoint, &[child]).unwrap();
    let mut ctx = WriteCtx { next_result_seq: 1 };
    let failed = TaskResult::failed(
        parent,
        ExceptionInfo {
            exc_type: "ZeroDivisionError".into(),
            message: "division by zero".into(),
            traceback: String::new(),
        },
    );
    let stored = store_results(&fx.conn, &mut ctx, fx.endpoint, &[failed]).unwrap();
    let ended: Vec<Uuid> = stored.iter().map(|r| r.task).collect();
    assert_eq!(ended, vec![parent, child, grandchild]);
    assert_eq!(
        ctx.next_result_seq, 4,
        "each failed dependent has its result_seq"
    );
    for (id, names) in [(child, parent), (grandchild, child)] {
        let row = get_task(&fx.conn, fx.owner, id).unwrap().unwrap();
        assert_eq!(row.state, TaskState::Failed);
        assert_eq!(
            row.exc_type.as_deref(),
            Some(SystemFailure::DependencyFailed.name())
        );
        let message = row.exc_message.unwrap();
        assert!(message.contains(&names.to_string()), "{message}");
        assert!(
            message.contains("ZeroDivisionError: division by zero"),
            "{message}"
        );
    }
    let left: i64 = fx
        .conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM held_tasks) + (SELECT COUNT(*) FROM held_parents) \
             + (SELECT COUNT(*) FROM task_dependents)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "nothing of the dependencies is left behind");
}

#[test]
fn cancelling_a_parent_cancels_its_dependents() {
    let fx = fixture();
    let parent = submit_n(&fx, Uuid::new_v4(), 1, 10)[0];
    let child = submit_dep(&fx, fx.owner, fx.endpoint, &[parent]).unwrap();
    let grandchild = submit_dep(&fx, fx.owner, fx.endpoint, &[child]).unwrap();
    let mut ctx = WriteCtx { next_result_seq: 1 };
    let cancelled = cancel_task(&fx.conn, &mut ctx, fx.owner, "alice", parent).unwrap();
    let ids: Vec<Uuid> = cancelled.iter().map(|c| c.task).collect();
    assert_eq!(ids, vec![parent, child, grandchild]);
    assert_eq!(state(&fx, grandchild), TaskState::Cancelled);
    let row = get_task(&fx.conn, fx.owner, child).unwrap().unwrap();
    assert!(row.exc_message.unwrap().contains(&parent.to_string()));
}

#[test]
fn references_to_unknown_foreign_or_failed_tasks_are_refused() {
    let fx = fixture();
    let parent = submit_n(&fx, Uuid::new_v4(), 1, 10)[0];
    let e = submit_dep(&fx, fx.owner, fx.endpoint, &[Uuid::new_v4()]).unwrap_err();
    assert_eq!(e.code, "not_found");
    // Bob, on his own endpoint, names Alice's task: the same answer as an unknown one.
    let bob = ensure_user(&fx.conn, "bob").unwrap();
    let reg = EndpointRegistration {
        id: None,
        name: "bob-ep".into(),
        display_name: "bob-ep".into(),
        metadata: serde_json::json!({}),
    };
    let cred = StoredToken {
        hash: "bob-cred".into(),
        prefix: "bob".into(),
    };
    let bob_ep = register_endpoint(&fx.conn, bob, &reg, &cred).unwrap();
    crate::db::catalog::insert_function(
        &fx.conn,
        bob,
        &crate::db::catalog::FunctionRow {
            id: Uuid::new_v4(),
            name: "g".into(),
            code: "x".into(),
            description: String::new(),
            metadata: serde_json::json!({}),
        },
    )
    .unwrap();
    let e = submit_dep(&fx, bob, bob_ep, &[parent]);
    // Bob does not own the fixture's function either; whichever check
    // answers, nothing says Alice's task exists.
    let e = e.unwrap_err();
    assert_eq!(e.code, "not_found");
    assert!(!e.message.contains("belongs"), "{}", e.message);
    let e = submit_dep(&fx, fx.owner, fx.endpoint, &[parent, parent]).unwrap_err();
    assert_eq!(e.code, "bad_request");
    let mut ctx = WriteCtx { next_result_seq: 1 };
    cancel_task(&fx.conn, &mut ctx, fx.owner, "alice", parent).unwrap();
}

#[test]
fn a_dependent_of_a_parent_failed_already_is_stored_failed() {
    let fx = fixture();
    let parent = submit_n(&fx, Uuid::new_v4(), 1, 10)[0];
    let mut ctx = WriteCtx { next_result_seq: 1 };
    cancel_task(&fx.conn, &mut ctx, fx.owner, "alice", parent).unwrap();
    let child = submit_dep(&fx, fx.owner, fx.endpoint, &[parent]).unwrap();
    let row = get_task(&fx.conn, fx.owner, child).unwrap().unwrap();
    assert_eq!(row.state, TaskState::Failed);
    assert_eq!(row.exc_type.as_deref(), Some("DependencyFailed"));
    assert!(row.exc_message.unwrap().contains(&parent.to_string()));
    assert!(row.result_seq.is_some(), "it reaches the result streams");
    let queued: i64 = fx
        .conn
        .query_row(
            "SELECT queued FROM user_usage WHERE user_id = ?1",
            [fx.owner],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(queued, 0, "no task is left counted as queued");
}

#[test]
fn a_parent_on_another_endpoint_releases_a_dependent_there() {
    let fx = fixture();
    let reg = EndpointRegistration {
        id: None,
        name: "ep2".into(),
        display_name: "ep2".into(),
        metadata: serde_json::json!({}),
    };
    let cred = StoredToken {
        hash: "cred2".into(),
        prefix: "cred2".into(),
    };
    let ep2 = register_endpoint(&fx.conn, fx.owner, &reg, &cred).unwrap();
    let parent = submit_n(&fx, Uuid::new_v4(), 1, 10)[0];
    let child = submit_dep(&fx, fx.owner, ep2, &[parent]).unwrap();
    assert!(page(&fx, ep2, &mut QueueCursor::start()).is_empty());
    let mut ctx = WriteCtx { next_result_seq: 1 };
    let stored = succeed(&fx, &mut ctx, fx.endpoint, parent, "11\n1");
    assert_eq!(stored[0].released, vec![ep2]);
    assert_eq!(page(&fx, ep2, &mut QueueCursor::start())[0].0, child);
}

#[test]
fn a_chain_and_a_fan_in_of_10000_complete_in_linear_time() {
    let fx = fixture();
    let started = Instant::now();
    let n = 10_000;
    // Chain: each task depends on the one before.
    let mut chain = submit_n(&fx, Uuid::new_v4(), 1, 10);
    for _ in 1..n {
        let last = *chain.last().unwrap();
        chain.push(submit_dep(&fx, fx.owner, fx.endpoint, &[last]).unwrap());
    }
    let mut ctx = WriteCtx { next_result_seq: 1 };
    let mut cursor = QueueCursor::start();
    for (i, id) in chain.iter().enumerate() {
        let tasks = page(&fx, fx.endpoint, &mut cursor);
        assert_eq!(tasks.len(), 1, "step {i}");
        assert_eq!(tasks[0].0, *id);
        succeed(&fx, &mut ctx, fx.endpoint, *id, "11\n1");
    }
    // Fan-in: one task depends on 10,000.
    let parents = submit_n(&fx, Uuid::new_v4(), n, 10);
    let child = submit_dep(&fx, fx.owner, fx.endpoint, &parents).unwrap();
    for p in &parents {
        succeed(&fx, &mut ctx, fx.endpoint, *p, "11\n1");
    }
    assert_eq!(state(&fx, child), TaskState::Received);
    let tasks = page(&fx, fx.endpoint, &mut cursor);
    let last = tasks.last().unwrap();
    assert_eq!(last.0, child);
    let results = unpack(&last.1).unwrap()[2];
    assert_eq!(
        results.matches("\n11\n1").count(),
        n,
        "every parent's result"
    );
    // Milliseconds expected; minutes would mean a scan per finished parent.
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "{:?}",
        started.elapsed()
    );
}
