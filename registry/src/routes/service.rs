//! `GET /v3/service/status`: what a user of the service should know it
//! cannot do right now: whether it still accepts writes (a failed sync of
//! its database stops them until a restart, `db::writer`) and how many audit
//! lines it lost (a full disk, `audit`).

use axum::extract::State;
use serde_json::{json, Value};

use crate::auth::User;
use crate::error::ApiResult;
use crate::state::AppState;

/// `GET /v3/service/status` (any user token).
pub async fn status(State(state): State<AppState>, _user: User) -> ApiResult<axum::Json<Value>> {
    let refused = state.db.write_failure();
    Ok(axum::Json(json!({
        "status": if refused.is_some() { "degraded" } else { "ok" },
        "writes_refused": refused,
        "audit_lines_lost": state.audit.lines_lost(),
    })))
}
