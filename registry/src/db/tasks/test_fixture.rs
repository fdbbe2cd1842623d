//! A database in memory with one user, one endpoint and one function, and
//! submits into it: what the queue's unit tests start from.

use rusqlite::Connection;
use uuid::Uuid;

use super::submit::{submit, NewTask, Submission, Submitted};
use crate::db::catalog::{
    ensure_user, insert_function, register_endpoint, EndpointRegistration, FunctionRow,
};
use crate::db::payload_files::PayloadFiles;
use hpfaas_protocol::task::TaskState;

pub(crate) struct Fixture {
    /// Holds the payload files' directory; removed on drop.
    _dir: tempfile::TempDir,
    pub(crate) conn: Connection,
    pub(crate) files: PayloadFiles,
    pub(crate) owner: i64,
    pub(crate) endpoint: Uuid,
    pub(crate) function: Uuid,
}

pub(crate) fn fixture() -> Fixture {
    let mut conn = Connection::open_in_memory().unwrap();
    crate::db::schema::migrate(&mut conn).unwrap();
    let owner = ensure_user(&conn, "alice").unwrap();
    let reg = EndpointRegistration {
        id: None,
        name: "ep".into(),
        display_name: "ep".into(),
        metadata: serde_json::json!({}),
    };
    let cred = crate::db::catalog::StoredToken {
        hash: "cred".into(),
        prefix: "cred".into(),
    };
    let endpoint = register_endpoint(&conn, owner, &reg, &cred).unwrap();
    let function = Uuid::new_v4();
    let f = FunctionRow {
        id: function,
        name: "f".into(),
        code: "10\nst\nf:code".into(),
        description: String::new(),
        metadata: serde_json::json!({}),
    };
    insert_function(&conn, owner, &f).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("hpfaas-tasks-")
        .tempdir()
        .unwrap();
    let files = PayloadFiles::beside(&dir.path().join("registry.db")).unwrap();
    Fixture {
        _dir: dir,
        conn,
        files,
        owner,
        endpoint,
        function,
    }
}

pub(crate) fn submit_n(fx: &Fixture, group: Uuid, n: usize, payload_len: usize) -> Vec<Uuid> {
    let tasks: Vec<NewTask> = (0..n)
        .map(|_| NewTask {
            id: Uuid::new_v4(),
            function: fx.function,
            payload: "x".repeat(payload_len),
            in_file: false,
            blob: None,
        })
        .collect();
    submit_tasks(fx, group, &tasks);
    tasks.into_iter().map(|t| t.id).collect()
}

/// Stores `tasks` of the fixture's function as one submit to group
/// `group`, writing the files of those `in_file` first (their blob, or
/// else their payload), as the submit route does.
pub(crate) fn submit_tasks(fx: &Fixture, group: Uuid, tasks: &[NewTask]) {
    let files: Vec<(Uuid, &[u8])> = tasks
        .iter()
        .filter_map(|t| Some((t.id, t.file_content()?)))
        .collect();
    fx.files.write(&files).unwrap();
    let s = Submission {
        owner: fx.owner,
        endpoint: fx.endpoint,
        group,
        state: TaskState::Received,
        functions: vec![(fx.function.to_string(), fx.function)],
        tasks: tasks.to_vec(),
        result_serializers: "[]".into(),
        resource_spec: None,
        idempotency: None,
        quota: Default::default(),
        depends_on: Vec::new(),
    };
    // Result sequence numbers far above the tests' own.
    let mut ctx = crate::db::writer::WriteCtx {
        next_result_seq: 1 << 40,
    };
    assert_eq!(submit(&fx.conn, &mut ctx, &s).unwrap(), Submitted::Created);
}
