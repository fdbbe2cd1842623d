//! `POST` and `DELETE /v3/endpoints/{id}/share`: the owner shares an
//! endpoint with named users, or stops sharing it. A user it is shared with
//! may submit their own functions to it and read their own tasks on it;
//! they cannot manage it, read its status, or see anyone else's tasks.

use axum::extract::State;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::User;
use crate::db::catalog;
use crate::error::{ApiError, ApiResult};
use crate::extract::{parse_id, IdPath, Json};
use crate::state::AppState;

/// Most users named in one request.
const MAX_USERS: usize = 1000;
/// Longest user name, characters.
const MAX_NAME: usize = 256;

/// Body of both routes.
#[derive(Debug, Deserialize)]
pub struct ShareBody {
    users: Vec<String>,
}

fn names(body: ShareBody) -> ApiResult<Vec<String>> {
    if body.users.len() > MAX_USERS {
        return Err(ApiError::bad_request(format!(
            "`users` names {} users; at most {MAX_USERS} per request",
            body.users.len()
        )));
    }
    body.users
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let name = name.trim().to_string();
            if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
                Err(ApiError::bad_request(format!(
                    "invalid user name at `users[{i}]`: it must be 1 to {MAX_NAME} printable characters"
                )))
            } else {
                Ok(name)
            }
        })
        .collect()
}

async fn change(
    state: AppState,
    user: User,
    raw: String,
    body: ShareBody,
    share: bool,
) -> ApiResult<axum::Json<Value>> {
    let id = parse_id("endpoint", &raw)?;
    let users = names(body)?;
    let shared = state
        .db
        .write(move |c, _| {
            let found = if share {
                catalog::share_endpoint(c, user.id, id, &users)?
            } else {
                catalog::unshare_endpoint(c, user.id, id, &users)?
            };
            if !found {
                return Ok(None);
            }
            catalog::shared_with(c, id).map(Some)
        })
        .await?
        .ok_or_else(|| ApiError::not_found_id("endpoint", &raw))?;
    Ok(axum::Json(
        json!({"endpoint_id": id, "shared_with": shared}),
    ))
}

/// `POST /v3/endpoints/{id}/share`.
pub async fn share(
    State(state): State<AppState>,
    user: User,
    IdPath(raw): IdPath,
    Json(body): Json<ShareBody>,
) -> ApiResult<axum::Json<Value>> {
    change(state, user, raw, body, true).await
}

/// `DELETE /v3/endpoints/{id}/share`.
pub async fn unshare(
    State(state): State<AppState>,
    user: User,
    IdPath(raw): IdPath,
    Json(body): Json<ShareBody>,
) -> ApiResult<axum::Json<Value>> {
    change(state, user, raw, body, false).await
}
