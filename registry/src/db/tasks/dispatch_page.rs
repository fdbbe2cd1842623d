//! The dispatch page: one frame's worth of an endpoint's queue, read from
//! a cursor (`rid`) for an endpoint link, with the code of functions not
//! yet sent on that connection.

use std::collections::HashSet;

use hpfaas_protocol::endpoint::{EncodedTask, TasksFrame, TasksJson};
use hpfaas_protocol::task::{FunctionCode, TaskSpec};
use rusqlite::{params, Connection};
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

/// One frame's worth of an endpoint's queue. A page holds tasks with blobs
/// or tasks without, not both: the first task of the other kind starts the
/// next page.
#[derive(Debug)]
pub struct DispatchPage {
    /// The frame, `None` when nothing is queued past the cursor.
    pub frame: Option<Frame>,
    /// Cursor to continue from.
    pub last_rid: i64,
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

/// Reads the endpoint's non-final tasks after `after` (within `limits`),
/// with the code of functions not in `sent_functions`, as the text of one
/// `ServiceMessage::Tasks` frame.
pub fn dispatch_page(
    conn: &Connection,
    files: &PayloadFiles,
    endpoint: Uuid,
    after: i64,
    mut sent_functions: HashSet<Uuid>,
    limits: PageLimits,
) -> ApiResult<DispatchPage> {
    let mut st = conn.prepare_cached(
        "SELECT t.rid, t.id, t.function_id, p.payload, t.result_serializers, t.resource_spec,
                p.in_file
         FROM tasks t JOIN task_payloads p ON p.rid = t.rid
         WHERE t.endpoint_id = ?1 AND t.done = 0 AND t.rid > ?2 ORDER BY t.rid LIMIT ?3",
    )?;
    let mut rows = st.query(params![endpoint.to_string(), after, limits.tasks as i64])?;
    let mut text = TasksJson::default();
    // A page of tasks with blobs keeps them whole, for one MessagePack frame.
    let mut binary: Option<TasksFrame> = None;
    let (mut count, mut bytes, mut last_rid) = (0usize, 0usize, after);
    let (mut lost, mut more) = (Vec::new(), false);
    while let Some(r) = rows.next()? {
        let rid: i64 = r.get(0)?;
        let serializers: String = r.get(4)?;
        let task_id = uuid_col(r, 1)?;
        let inline: String = r.get(3)?;
        let in_file: bool = r.get(6)?;
        // A row with a file and a payload of its own: the file is the blob.
        let has_blob = in_file && !inline.is_empty();
        if count > 0 && has_blob != binary.is_some() {
            break;
        }
        let (payload, blob) = if in_file {
            if !limits.read_files {
                more = true;
                break;
            }
            // A file that would not fit the page is not read (and then
            // dropped): the next page starts with it.
            let size = files.size(task_id).unwrap_or(0) as usize;
            if count > 0 && bytes + size > limits.bytes {
                break;
            }
            let read = if has_blob {
                files
                    .read_blob(task_id)
                    .map(|blob| (inline, Some(blob.into())))
            } else {
                files.read(task_id).map(|text| (text, None))
            };
            match read {
                Ok(both) => both,
                Err(e) => {
                    lost.push((
                        task_id,
                        format!("the task's argument file is unreadable: {e}"),
                    ));
                    last_rid = rid;
                    continue;
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
        if !sent_functions.contains(&spec.function_id) {
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
            if count > 0 && bytes + item > limits.bytes {
                break;
            }
            let page = binary.get_or_insert_with(|| TasksFrame {
                functions: Vec::new(),
                tasks: Vec::new(),
            });
            if let Some(code) = code {
                sent_functions.insert(code.function_id);
                page.functions.push(code);
            }
            page.tasks.push(spec);
            bytes += item;
        } else {
            let item = EncodedTask::new(&spec, code.as_ref()).map_err(|e| {
                ApiError::internal(format!("could not encode task {}: {e}", spec.task_id))
            })?;
            let item_bytes = item.frame_bytes();
            // The byte cap keeps frames far below the WebSocket message limit;
            // a single oversized task still goes, alone.
            if count > 0 && bytes + item_bytes > limits.bytes {
                break;
            }
            if code.is_some() {
                sent_functions.insert(spec.function_id);
            }
            text.push(item);
            bytes += item_bytes;
        }
        count += 1;
        last_rid = rid;
    }
    let frame = match binary {
        Some(page) => Some(Frame::Binary(page.encode())),
        None => (!text.is_empty()).then(|| Frame::Text(text.finish())),
    };
    Ok(DispatchPage {
        frame,
        last_rid,
        count,
        sent_functions,
        lost,
        more,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::db::tasks::submit::NewTask;
    use crate::db::tasks::test_fixture::{fixture, submit_n, submit_tasks};
    use hpfaas_protocol::endpoint::{from_json, ServiceMessage};

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
        let first = page(0, HashSet::new());
        assert_eq!(first.count, 1, "the blob task starts the next page");
        let Ok(ServiceMessage::Tasks { functions, .. }) = from_json(text(&first)) else {
            panic!("not a tasks frame")
        };
        assert_eq!(functions.len(), 1);
        let second = page(first.last_rid, first.sent_functions);
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
        let third = page(second.last_rid, second.sent_functions);
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
            first.last_rid,
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
        let page =
            dispatch_page(&fx.conn, &fx.files, fx.endpoint, 0, HashSet::new(), quick).unwrap();
        assert_eq!(
            (page.count, page.more),
            (0, true),
            "left to a page that reads files"
        );
        let page = dispatch_page(
            &fx.conn,
            &fx.files,
            fx.endpoint,
            0,
            HashSet::new(),
            limits(10, 150_000),
        )
        .unwrap();
        assert_eq!(page.count, 1, "the second file does not fit");
        let page = dispatch_page(
            &fx.conn,
            &fx.files,
            fx.endpoint,
            page.last_rid,
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

    #[test]
    fn pages_respect_counts_bytes_and_send_code_once() {
        let fx = fixture();
        let ids = submit_n(&fx, Uuid::new_v4(), 5, 1000);
        let page = dispatch_page(
            &fx.conn,
            &fx.files,
            fx.endpoint,
            0,
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
            page.last_rid,
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
