//! Task groups and tasks: the queue endpoints drain and the results clients
//! read. The `tasks` table is the queue: an endpoint link keeps a cursor
//! (`rid`) and pages through its endpoint's non-final tasks
//! ([`dispatch_page()`]); acknowledgements, state updates and results come
//! back through the writer ([`ack`], [`update_states`], [`store_results`]).
//!
//! One concept per file: `submit.rs` checks and stores a submission,
//! `read.rs` is what owners read (task rows, groups, results in order),
//! `list.rs` an owner's tasks listed with filters, page by page,
//! `timeline.rs` the moments of one task,
//! `dispatch_page.rs` an endpoint link's next frame of tasks, `results.rs`
//! what the agent reports back. This file only names them: they import
//! each other one way (`submit` and `results` use `read`), never this file.

#[cfg(test)]
mod dependency_tests;
mod dispatch_page;
mod list;
mod read;
mod results;
mod submit;
#[cfg(test)]
pub(crate) mod test_fixture;
mod timeline;

pub use dispatch_page::{dispatch_page, DispatchPage, Frame, PageLimits, QueueCursor};
pub use list::{list_tasks, Cursor, ListFilter, ListedTask, TaskPage};
pub use read::{
    get_task, group_owner, group_tasks, mark_fetched, results_after, TaskRow, FATE_EXPIRED,
    FATE_FETCHED, FATE_UNFETCHED, STREAMED_ROW_BYTES,
};
pub use results::{ack, store_results, update_states, StoredResult};
pub use submit::{check_submit_access, ensure_group, submit, NewTask, Submission, Submitted};
pub use timeline::{timeline, Timeline};
