//! `DELETE /v3/cache` and `DELETE /v3/functions/{id}/cache`: the caller
//! clears their own cached results ([`crate::db::memo`]), all of them or
//! those of one function's current code, in bounded writer jobs.

use axum::extract::State;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::auth::User;
use crate::db::memo;
use crate::error::{ApiError, ApiResult};
use crate::extract::{parse_id, IdPath};
use crate::state::AppState;

/// Deletes the caller's entries (of `function` if given), a batch per
/// writer job; `None` when `function` is not theirs.
async fn clear(state: &AppState, owner: i64, function: Option<Uuid>) -> ApiResult<Option<usize>> {
    let mut total = 0;
    loop {
        let n = state
            .db
            .write(move |c, _| memo::clear(c, owner, function, memo::BATCH))
            .await?;
        let Some(n) = n else { return Ok(None) };
        total += n;
        if n < memo::BATCH || *state.shutdown.borrow() {
            return Ok(Some(total));
        }
    }
}

/// `DELETE /v3/cache`: every cached result of the caller.
pub async fn clear_all(State(state): State<AppState>, user: User) -> ApiResult<axum::Json<Value>> {
    let cleared = clear(&state, user.id, None).await?.unwrap_or(0);
    Ok(axum::Json(json!({ "cleared": cleared })))
}

/// `DELETE /v3/functions/{id}/cache`: the cached results of one function.
pub async fn clear_function(
    State(state): State<AppState>,
    user: User,
    IdPath(raw): IdPath,
) -> ApiResult<axum::Json<Value>> {
    let id = parse_id("function", &raw)?;
    let cleared = clear(&state, user.id, Some(id))
        .await?
        .ok_or_else(|| ApiError::not_found_id("function", &raw))?;
    Ok(axum::Json(
        json!({ "function_uuid": id, "cleared": cleared }),
    ))
}
