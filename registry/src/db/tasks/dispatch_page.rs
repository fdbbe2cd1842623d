//! The dispatch page: one frame's worth of an endpoint's queue for an
//! endpoint link, highest priority first (`hpfaas_protocol::priority`: by
//! the stored `queue_key`, then `rid`), read behind the link's
//! [`QueueCursor`], with the code of functions not yet sent on that
//! connection.

use std::collections::HashSet;

use hpfaas_protocol::endpoint::{EncodedTask, TasksFrame, TasksJson};
use hpfaas_protocol::task::{FunctionCode, TaskSpec};
use rusqlite::{params, Connection, Row};
use uuid::Uuid;

use crate::db::catalog;
use crate::db::columns::uuid_col;
use crate::db::payload_files::PayloadFiles;
use crate::error::{ApiError, ApiResult};

/// A frame of tasks for the agent.
#[derive(Debug)]
pub enum Frame {
    /// A `ServiceMessage::Tasks` as JSON text.
    Text(String),
    /// A [`TasksFrame`] of tasks with blobs, as MessagePack.
    Binary(Vec<u8>),
}

/// Which of an endpoint's tasks one link has sent. The queue is read in
/// `(queue_key, rid)` order behind a cursor; a task that arrives later
/// but orders before the cursor (a higher priority) is a late arrival:
/// every task with a `rid` above `mark` is looked at again, and those of
/// them already sent are in `early` until all of them are, when `mark`
/// moves up to the newest task and `early` empties.
#[derive(Debug, Clone, Default)]
pub struct QueueCursor {
    /// `(queue_key, rid)` of the last task sent in queue order.
    key: f64,
    rid: i64,
    /// Every task up to this `rid` ordered before the cursor has been sent.
    mark: i64,
    /// Late arrivals (`rid` above `mark`, before the cursor) already sent.
    early: HashSet<i64>,
}

impl QueueCursor {
    /// Before the first task: a new link sends every non-final task.
    pub fn start() -> Self {
        QueueCursor {
            key: f64::NEG_INFINITY,
            ..QueueCursor::default()
        }
    }
}

/// One frame's worth of an endpoint's queue. A page holds tasks with blobs
/// or tasks without, not both: the first task of the other kind starts the
/// next page.
#[derive(Debug)]
pub struct DispatchPage {
    /// The frame, `None` when nothing is queued past the cursor.
    pub frame: Option<Frame>,
    /// Cursor to continue from.
    pub cursor: QueueCursor,
    /// The highest `rid` in the page (0 if none).
    pub max_rid: i64,
    /// Tasks in the frame.
    pub count: usize,
    /// Functions whose code this connection has now been sent.
    pub sent_functions: HashSet<Uuid>,
    /// Tasks left out because their payload file is gone (with the error);
    /// the caller fails them.
    pub lost: Vec<(Uuid, String)>,
    /// The page ended at a payload file it was not to read: more is queued.
    pub more: bool,
}

/// How much one [`dispatch_page`] may take.
#[derive(Debug, Clone, Copy)]
pub struct PageLimits {
    /// Most tasks.
    pub tasks: usize,
    /// About this many bytes of frame at most (a single larger task still goes, alone).
    pub bytes: usize,
    /// Read payload files ([`crate::db::payload_files`]); if not, the page ends
    /// before the first task whose payload is in a file.
    pub read_files: bool,
}

/// A query of the queue: the columns [`Page::add`] takes, in its order.
macro_rules! select_tasks {
    ($where:literal) => {
        concat!(
            "SELECT t.rid, t.id, t.function_id, p.payload, t.result_serializers,
                    t.resource_spec, p.in_file, t.queue_key
             FROM tasks t JOIN task_payloads p ON p.rid = t.rid WHERE ",
            $where
        )
    };
}

/// Late arrivals: tasks submitted since `mark` (by rid, up to the newest
/// seen) that order before the cursor; read by rid (the `+` keeps the
/// planner off the endpoint's whole queue).
const LATE: &str = select_tasks!(
    "t.rid > ?2 AND t.rid <= ?3 AND +t.endpoint_id = ?1 AND t.done = 0
     AND (t.queue_key, t.rid) < (?4, ?5) ORDER BY t.queue_key, t.rid"
);

/// The queue past the cursor, from its index, up to the newest task the
/// page began with: each statement reads its own snapshot, and a task
/// committed after `newest` was read but sent from here would be above the
/// `mark` the page sets, so the next page's late arrivals would send it
/// again (its submit wakes the link for the next page anyway). Held
/// dependents have negative rids (`db::dependencies`) and wait outside the
/// queue until released with a fresh rid, which the late-arrivals query finds.
const QUEUE: &str = select_tasks!(
    "t.endpoint_id = ?1 AND t.done = 0 AND (t.queue_key, t.rid) > (?2, ?3)
     AND t.rid > 0 AND t.rid <= ?5
     ORDER BY t.queue_key, t.rid LIMIT ?4"
);

/// Reads the endpoint's non-final tasks not yet sent behind `cursor`
/// (within `limits`), in queue order, with the code of functions not in
/// `sent_functions`, as one frame.
pub fn dispatch_page(
    conn: &Connection,
    files: &PayloadFiles,
    endpoint: Uuid,
    mut cursor: QueueCursor,
    sent_functions: HashSet<Uuid>,
    limits: PageLimits,
) -> ApiResult<DispatchPage> {
    let mut page = Page::new(files, sent_functions, limits);
    let endpoint = endpoint.to_string();
    let newest: i64 = conn
        .prepare_cached("SELECT ifnull(max(rid), 0) FROM tasks")?
        .query_row([], |r| r.get(0))?;
    // Late arrivals first: they order before everything past the cursor.
    // Only tasks submitted since `mark` are looked at (by rid).
    let mut st = conn.prepare_cached(LATE)?;
    let mut rows = st.query(params![
        endpoint,
        cursor.mark,
        newest,
        cursor.key,
        cursor.rid
    ])?;
    let mut late_done = true;
    while let Some(r) = rows.next()? {
        let rid: i64 = r.get(0)?;
        if cursor.early.contains(&rid) {
            continue;
        }
        if !page.add(conn, r)? {
            late_done = false;
            break;
        }
        cursor.early.insert(rid);
    }
    if late_done {
        #[cfg(test)]
        tests::between_reads(conn);
        cursor.mark = newest;
        cursor.early.clear();
        let mut st = conn.prepare_cached(QUEUE)?;
        let room = limits.tasks.saturating_sub(page.count + page.lost.len());
        let mut rows = st.query(params![
            endpoint,
            cursor.key,
            cursor.rid,
            room as i64,
            newest
        ])?;
        while let Some(r) = rows.next()? {
            let (rid, key): (i64, f64) = (r.get(0)?, r.get(7)?);
            if !page.add(conn, r)? {
                break;
            }
            (cursor.key, cursor.rid) = (key, rid);
        }
    }
    Ok(page.finish(cursor))
}

/// A page being filled.
struct Page<'a> {
    files: &'a PayloadFiles,
    limits: PageLimits,
    sent_functions: HashSet<Uuid>,
    text: TasksJson,
    /// A page of tasks with blobs keeps them whole, for one MessagePack frame.
    binary: Option<TasksFrame>,
    count: usize,
    bytes: usize,
    max_rid: i64,
    lost: Vec<(Uuid, String)>,
    more: bool,
}

impl<'a> Page<'a> {
    fn new(files: &'a PayloadFiles, sent_functions: HashSet<Uuid>, limits: PageLimits) -> Self {
        Page {
            files,
            limits,
            sent_functions,
            text: TasksJson::default(),
            binary: None,
            count: 0,
            bytes: 0,
            max_rid: 0,
            lost: Vec::new(),
            more: false,
        }
    }

    /// Adds the task of row `r` (or notes it lost); false if the page is
    /// full before it, which then starts the next page.
    fn add(&mut self, conn: &Connection, r: &Row) -> ApiResult<bool> {
        if self.count + self.lost.len() >= self.limits.tasks {
            return Ok(false);
        }
        let rid: i64 = r.get(0)?;
        let serializers: String = r.get(4)?;
        let task_id = uuid_col(r, 1)?;
        let inline: String = r.get(3)?;
        let in_file: bool = r.get(6)?;
        let count = self.count;
        // A row with a file and a payload of its own: the file is the blob.
        let has_blob = in_file && !inline.is_empty();
        if count > 0 && has_blob != self.binary.is_some() {
            return Ok(false);
        }
        let (payload, blob) = if in_file {
            if !self.limits.read_files {
                self.more = true;
                return Ok(false);
            }
            // A file that would not fit the page is not read (and then
            // dropped): the next page starts with it.
            let size = self.files.size(task_id).unwrap_or(0) as usize;
            if count > 0 && self.bytes + size > self.limits.bytes {
                return Ok(false);
            }
            let read = if has_blob {
                self.files
                    .read_blob(task_id)
                    .map(|blob| (inline, Some(blob.into())))
            } else {
                self.files.read(task_id).map(|text| (text, None))
            };
            match read {
                Ok(both) => both,
                Err(e) => {
                    self.lost.push((
                        task_id,
                        format!("the task's argument file is unreadable: {e}"),
                    ));
                    return Ok(true);
                }
            }
        } else {
            (inline, None)
        };
        let spec = TaskSpec {
            task_id,
            function_id: uuid_col(r, 2)?,
            payload,
            blob,
            result_serializers: serde_json::from_str(&serializers).unwrap_or_default(),
            resource_spec: r.get(5)?,
        };
        let mut code = None;
        if !self.sent_functions.contains(&spec.function_id) {
            match catalog::function_code(conn, spec.function_id)? {
                Some(text) => {
                    code = Some(FunctionCode {
                        function_id: spec.function_id,
                        code: text,
                    })
                }
                None => tracing::warn!(task = %spec.task_id, function = %spec.function_id,
                    "queued task names a function with no stored code"),
            }
        }
        if has_blob {
            // Raw bytes in MessagePack: the sizes are about what goes out.
            let item = spec.payload.len()
                + spec.blob.as_ref().map_or(0, |b| b.len())
                + code.as_ref().map_or(0, |c| c.code.len())
                + 256;
            if count > 0 && self.bytes + item > self.limits.bytes {
                return Ok(false);
            }
            let page = self.binary.get_or_insert_with(|| TasksFrame {
                functions: Vec::new(),
                tasks: Vec::new(),
            });
            if let Some(code) = code {
                self.sent_functions.insert(code.function_id);
                page.functions.push(code);
            }
            page.tasks.push(spec);
            self.bytes += item;
        } else {
            let item = EncodedTask::new(&spec, code.as_ref()).map_err(|e| {
                ApiError::internal(format!("could not encode task {}: {e}", spec.task_id))
            })?;
            let item_bytes = item.frame_bytes();
            // The byte cap keeps frames far below the WebSocket message limit;
            // a single oversized task still goes, alone.
            if count > 0 && self.bytes + item_bytes > self.limits.bytes {
                return Ok(false);
            }
            if code.is_some() {
                self.sent_functions.insert(spec.function_id);
            }
            self.text.push(item);
            self.bytes += item_bytes;
        }
        self.count += 1;
        self.max_rid = self.max_rid.max(rid);
        Ok(true)
    }

    fn finish(self, cursor: QueueCursor) -> DispatchPage {
        let frame = match self.binary {
            Some(page) => Some(Frame::Binary(page.encode())),
            None => (!self.text.is_empty()).then(|| Frame::Text(self.text.finish())),
        };
        DispatchPage {
            frame,
            cursor,
            max_rid: self.max_rid,
            count: self.count,
            sent_functions: self.sent_functions,
            lost: self.lost,
            more: self.more,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::db::tasks::submit::{submit, NewTask, Submission};
    use crate::db::tasks::test_fixture::{fixture, submit_n, submit_tasks, Fixture};
    use hpfaas_protocol::endpoint::{from_json, ServiceMessage};

    /// What a test runs between a page's reads.
    type Hook = Box<dyn FnMut(&Connection)>;

    thread_local! {
        /// Run by a page between its first read and its queue read: a
        /// commit another connection makes meanwhile, in tests.
        static BETWEEN: std::cell::RefCell<Option<Hook>> = std::cell::RefCell::new(None);
    }

    pub(super) fn between_reads(conn: &Connection) {
        BETWEEN.with(|hook| {
            if let Some(f) = hook.borrow_mut().as_mut() {
                f(conn)
            }
        });
    }

    #[test]
    fn tasks_committed_while_a_page_is_read_are_sent_once() {
        let fx = fixture();
        let function = fx.function;
        let first = submit_n(&fx, Uuid::new_v4(), 2, 4);
        let endpoint = fx.endpoint;
        // Two more tasks commit after the page read the newest rid, before
        // it reads the queue.
        let owner = fx.owner;
        BETWEEN.with(|hook| {
            *hook.borrow_mut() = Some(Box::new(move |conn: &Connection| {
                let tasks: Vec<NewTask> = (0..2)
                    .map(|_| NewTask {
                        id: Uuid::new_v4(),
                        function,
                        payload: "p".into(),
                        in_file: false,
                        blob: None,
                    })
                    .collect();
                let s = Submission {
                    owner,
                    endpoint,
                    group: Uuid::new_v4(),
                    state: hpfaas_protocol::task::TaskState::Received,
                    functions: vec![(function.to_string(), function)],
                    tasks,
                    result_serializers: "[]".into(),
                    resource_spec: None,
                    idempotency: None,
                    quota: Default::default(),
                    depends_on: Vec::new(),
                };
                let mut ctx = crate::db::writer::WriteCtx { next_result_seq: 1 };
                submit(conn, &mut ctx, &s).unwrap();
            }));
        });
        let mut sent = Vec::new();
        let mut cursor = QueueCursor::start();
        let mut functions = HashSet::new();
        for round in 0..4 {
            let page = dispatch_page(
                &fx.conn,
                &fx.files,
                endpoint,
                cursor,
                functions,
                limits(100, 1 << 20),
            )
            .unwrap();
            if round == 0 {
                BETWEEN.with(|hook| *hook.borrow_mut() = None);
            }
            (cursor, functions) = (page.cursor, page.sent_functions);
            if let Some(Frame::Text(text)) = page.frame {
                let Ok(ServiceMessage::Tasks { tasks, .. }) = from_json(&text) else {
                    panic!("not a tasks frame")
                };
                sent.extend(tasks.into_iter().map(|t| t.task_id));
            }
        }
        assert!(sent.starts_with(&first), "{sent:?}");
        let mut once = sent.clone();
        once.sort();
        once.dedup();
        assert_eq!(once.len(), sent.len(), "a task went out twice: {sent:?}");
        assert_eq!(sent.len(), 4, "every task went out: {sent:?}");
    }

    pub(crate) fn limits(tasks: usize, bytes: usize) -> PageLimits {
        PageLimits {
            tasks,
            bytes,
            read_files: true,
        }
    }

    /// The page's frame as JSON text.
    fn text(page: &DispatchPage) -> &str {
        match &page.frame {
            Some(Frame::Text(text)) => text,
            other => panic!("not a text frame: {other:?}"),
        }
    }

    #[test]
    fn tasks_with_blobs_go_in_binary_pages_of_their_own() {
        let fx = fixture();
        let blob = |i: u8| bytes::Bytes::from(vec![i; 100_000]);
        let task = |blob: Option<bytes::Bytes>| NewTask {
            id: Uuid::new_v4(),
            function: fx.function,
            payload: match &blob {
                Some(b) => format!("9\npb\n{}3\n00\n", b.len()),
                None => "3\n00\n3\n00\n".into(),
            },
            in_file: blob.is_some(),
            blob,
        };
        let tasks = vec![
            task(None),
            task(Some(blob(1))),
            task(Some(blob(2))),
            task(None),
        ];
        submit_tasks(&fx, Uuid::new_v4(), &tasks);
        let page = |after, sent| {
            dispatch_page(
                &fx.conn,
                &fx.files,
                fx.endpoint,
                after,
                sent,
                limits(10, 1 << 20),
            )
            .unwrap()
        };
        let first = page(QueueCursor::start(), HashSet::new());
        assert_eq!(first.count, 1, "the blob task starts the next page");
        let Ok(ServiceMessage::Tasks { functions, .. }) = from_json(text(&first)) else {
            panic!("not a tasks frame")
        };
        assert_eq!(functions.len(), 1);
        let second = page(first.cursor.clone(), first.sent_functions);
        assert_eq!(second.count, 2);
        let Some(Frame::Binary(bytes)) = &second.frame else {
            panic!("tasks with blobs go in a binary frame")
        };
        let frame = TasksFrame::decode(bytes).unwrap();
        assert!(
            frame.functions.is_empty(),
            "code is sent once per connection"
        );
        for (sent, task) in frame.tasks.iter().zip(&tasks[1..3]) {
            assert_eq!(sent.task_id, task.id);
            assert_eq!(sent.payload, task.payload);
            assert_eq!(sent.blob.as_deref(), task.blob.as_deref());
        }
        let third = page(second.cursor, second.sent_functions);
        assert_eq!(third.count, 1);
        assert!(matches!(third.frame, Some(Frame::Text(_))));
        // The quick page reads no file, blob or payload.
        let quick = PageLimits {
            read_files: false,
            ..limits(10, 1 << 20)
        };
        let skipped = dispatch_page(
            &fx.conn,
            &fx.files,
            fx.endpoint,
            first.cursor.clone(),
            HashSet::new(),
            quick,
        )
        .unwrap();
        assert_eq!((skipped.count, skipped.more), (0, true));
    }

    #[test]
    fn a_payload_file_that_does_not_fit_the_page_waits_for_the_next() {
        let fx = fixture();
        let tasks: Vec<NewTask> = (0..2)
            .map(|_| NewTask {
                id: Uuid::new_v4(),
                function: fx.function,
                payload: "y".repeat(100_000),
                in_file: true,
                blob: None,
            })
            .collect();
        submit_tasks(&fx, Uuid::new_v4(), &tasks);
        let quick = PageLimits {
            read_files: false,
            ..limits(10, 1 << 20)
        };
        let page = dispatch_page(
            &fx.conn,
            &fx.files,
            fx.endpoint,
            QueueCursor::start(),
            HashSet::new(),
            quick,
        )
        .unwrap();
        assert_eq!(
            (page.count, page.more),
            (0, true),
            "left to a page that reads files"
        );
        let page = dispatch_page(
            &fx.conn,
            &fx.files,
            fx.endpoint,
            QueueCursor::start(),
            HashSet::new(),
            limits(10, 150_000),
        )
        .unwrap();
        assert_eq!(page.count, 1, "the second file does not fit");
        let page = dispatch_page(
            &fx.conn,
            &fx.files,
            fx.endpoint,
            page.cursor,
            page.sent_functions,
            limits(10, 150_000),
        )
        .unwrap();
        assert_eq!(page.count, 1);
        let Ok(ServiceMessage::Tasks { tasks: sent, .. }) = from_json(text(&page)) else {
            panic!("not a tasks frame")
        };
        assert_eq!(sent[0].task_id, tasks[1].id);
        assert_eq!(sent[0].payload, tasks[1].payload);
    }

    /// Submits `n` plain tasks of `function` with this `resource_specification`.
    fn submit_with(fx: &Fixture, function: Uuid, spec: Option<&str>, n: usize) -> Vec<Uuid> {
        let tasks: Vec<NewTask> = (0..n)
            .map(|_| NewTask {
                id: Uuid::new_v4(),
                function,
                payload: "3\n00\n3\n00\n".into(),
                in_file: false,
                blob: None,
            })
            .collect();
        let s = Submission {
            owner: fx.owner,
            endpoint: fx.endpoint,
            group: Uuid::new_v4(),
            state: hpfaas_protocol::task::TaskState::Received,
            functions: vec![(function.to_string(), function)],
            tasks: tasks.clone(),
            result_serializers: "[]".into(),
            resource_spec: spec.map(str::to_string),
            idempotency: None,
            quota: Default::default(),
            depends_on: Vec::new(),
        };
        let mut ctx = crate::db::writer::WriteCtx { next_result_seq: 1 };
        submit(&fx.conn, &mut ctx, &s).unwrap();
        tasks.into_iter().map(|t| t.id).collect()
    }

    /// The next page of at most `n` tasks: their ids, and the cursor after it.
    fn next(fx: &Fixture, cursor: QueueCursor, n: usize) -> (Vec<Uuid>, QueueCursor) {
        let page = dispatch_page(
            &fx.conn,
            &fx.files,
            fx.endpoint,
            cursor,
            HashSet::new(),
            limits(n, 1 << 20),
        )
        .unwrap();
        let ids = match &page.frame {
            None => Vec::new(),
            Some(_) => match from_json(text(&page)) {
                Ok(ServiceMessage::Tasks { tasks, .. }) => {
                    tasks.iter().map(|t| t.task_id).collect()
                }
                _ => panic!("not a tasks frame"),
            },
        };
        (ids, page.cursor)
    }

    #[test]
    fn a_backlog_goes_highest_priority_first_and_late_urgent_tasks_jump_it() {
        let fx = fixture();
        let f = fx.function;
        let plain = submit_with(&fx, f, None, 3);
        let high = submit_with(&fx, f, Some(r#"{"priority": 5}"#), 3);
        let low = submit_with(&fx, f, Some(r#"{"priority": -1}"#), 2);
        let (page, cursor) = next(&fx, QueueCursor::start(), 4);
        assert_eq!(page, [high[0], high[1], high[2], plain[0]]);
        // Submitted after the cursor moved past priority 5: still next.
        let urgent = submit_with(&fx, f, Some(r#"{"priority": 9}"#), 2);
        let (page, cursor) = next(&fx, cursor, 1);
        assert_eq!(page, [urgent[0]]);
        let (page, cursor) = next(&fx, cursor, 2);
        assert_eq!(page, [urgent[1], plain[1]], "the late ones, then the queue");
        let (page, cursor) = next(&fx, cursor, 10);
        assert_eq!(page, [plain[2], low[0], low[1]]);
        let (page, cursor) = next(&fx, cursor, 10);
        assert!(page.is_empty(), "each task once: {page:?}");
        let later = submit_with(&fx, f, None, 1);
        let (page, _) = next(&fx, cursor, 10);
        assert_eq!(page, later);
    }

    #[test]
    fn a_functions_default_priority_orders_its_tasks_unless_the_submit_overrides_it() {
        let fx = fixture();
        let urgent_fn = Uuid::new_v4();
        crate::db::catalog::insert_function(
            &fx.conn,
            fx.owner,
            &crate::db::catalog::FunctionRow {
                id: urgent_fn,
                name: "g".into(),
                code: "10\nst\ng:code".into(),
                description: String::new(),
                metadata: serde_json::json!({}),
            },
        )
        .unwrap();
        crate::db::function_defaults::store(
            &fx.conn,
            urgent_fn,
            r#"{"priority": 4, "walltime": 30}"#,
        )
        .unwrap();
        let plain = submit_with(&fx, fx.function, None, 1);
        let overridden = submit_with(&fx, urgent_fn, Some(r#"{"priority": -2}"#), 1);
        let defaulted = submit_with(&fx, urgent_fn, Some(r#"{"walltime": 5}"#), 1);
        let (page, _) = next(&fx, QueueCursor::start(), 10);
        assert_eq!(page, [defaulted[0], plain[0], overridden[0]]);
        let spec: String = fx
            .conn
            .query_row(
                "SELECT resource_spec FROM tasks WHERE id = ?1",
                [defaulted[0].to_string()],
                |r| r.get(0),
            )
            .unwrap();
        let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
        assert_eq!(spec, serde_json::json!({"priority": 4, "walltime": 5}));
    }

    #[test]
    fn both_queries_read_by_index_without_sorting() {
        let fx = fixture();
        let (queue, late) = (params!["e", 0.0, 0, 0, 0], params!["e", 0, 0, 0.0, 0]);
        for (name, sql, by, args) in [
            ("queue", QUEUE, "tasks_queue", queue),
            ("late arrivals", LATE, "INTEGER PRIMARY KEY", late),
        ] {
            let plan: Vec<String> = fx
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(args, |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join("; ");
            assert!(plan.contains(by), "{name}: {plan}");
            if name == "queue" {
                assert!(!plan.contains("TEMP B-TREE"), "{name} sorts: {plan}");
            }
        }
    }

    #[test]
    fn pages_respect_counts_bytes_and_send_code_once() {
        let fx = fixture();
        let ids = submit_n(&fx, Uuid::new_v4(), 5, 1000);
        let page = dispatch_page(
            &fx.conn,
            &fx.files,
            fx.endpoint,
            QueueCursor::start(),
            HashSet::new(),
            limits(2, 1 << 20),
        )
        .unwrap();
        assert_eq!(page.count, 2);
        let Ok(ServiceMessage::Tasks { functions, tasks }) = from_json(text(&page)) else {
            panic!("not a tasks frame")
        };
        assert_eq!(functions.len(), 1);
        assert_eq!(
            tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(),
            ids[..2]
        );
        // Next page: byte cap of ~1.5 tasks still sends one, and no code again.
        let page = dispatch_page(
            &fx.conn,
            &fx.files,
            fx.endpoint,
            page.cursor,
            page.sent_functions,
            limits(100, 1500),
        )
        .unwrap();
        assert_eq!(page.count, 1);
        let Ok(ServiceMessage::Tasks { functions, tasks }) = from_json(text(&page)) else {
            panic!("not a tasks frame")
        };
        assert!(functions.is_empty());
        assert_eq!(tasks[0].task_id, ids[2]);
    }
}
