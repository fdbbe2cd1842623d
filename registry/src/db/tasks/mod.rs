//! Task groups and tasks: the queue endpoints drain and the results clients
//! read, one concept per file:
//!
//! * [`submit`](mod@submit): checking and storing a submission;
//! * [`read`]: what owners read (task rows, groups, results in order);
//! * [`dispatch_page`](mod@dispatch_page): an endpoint link's next frame of
//!   tasks, from its cursor (`rid`);
//! * [`results`]: acknowledgements, state updates and results coming back
//!   from the agent through the writer.
//!
//! This file only names them; the modules import each other one way
//! (`submit` and `results` read `read`'s types), never this file.

mod dispatch_page;
mod read;
mod results;
mod submit;
#[cfg(test)]
mod test_fixture;

pub use dispatch_page::{dispatch_page, DispatchPage, Frame, PageLimits};
pub use read::{
    get_task, group_owner, group_tasks, mark_fetched, results_after, TaskRow, FATE_EXPIRED,
    FATE_FETCHED, FATE_UNFETCHED,
};
pub use results::{ack, store_results, update_states, StoredResult, STREAMED_ROW_BYTES};
pub use submit::{check_submit_access, ensure_group, submit, NewTask, Submission, Submitted};
