//! `/v3/functions` and `/v2/functions/{id}`: registering, reading and
//! deleting a user's functions.

use axum::extract::State;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::auth::User;
use crate::db::catalog::{self, FunctionRow};
use crate::db::function_defaults;
use crate::error::{ApiError, ApiResult};
use crate::extract::{parse_id, IdPath, Json};
use crate::resource_spec;
use crate::state::AppState;

/// Body of `POST /v3/functions`; Globus Compute sends more keys, ignored.
#[derive(Debug, Deserialize)]
pub struct RegisterFunction {
    function_name: String,
    function_code: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    /// Defaults for its tasks' `resource_specification` (a submit's own
    /// values override them key by key).
    #[serde(default)]
    resource_specification: Option<Map<String, Value>>,
    /// Reuse results of identical calls ([`crate::db::memo`]).
    #[serde(default)]
    cache: Option<bool>,
}

/// `POST /v3/functions`.
pub async fn register(
    State(state): State<AppState>,
    user: User,
    Json(body): Json<RegisterFunction>,
) -> ApiResult<axum::Json<Value>> {
    if body.function_code.is_empty() {
        return Err(ApiError::bad_request("function_code must not be empty"));
    }
    if let Some(spec) = &body.resource_specification {
        resource_spec::check(spec).map_err(ApiError::bad_request)?;
    }
    let defaults = body
        .resource_specification
        .map(|m| Value::Object(m).to_string());
    let row = FunctionRow {
        id: Uuid::new_v4(),
        name: body.function_name,
        code: body.function_code,
        description: body.description.unwrap_or_default(),
        metadata: Value::Object(body.metadata.unwrap_or_default()),
    };
    let id = row.id;
    let cache = body.cache.unwrap_or(false);
    state
        .db
        .write(move |c, _| {
            catalog::insert_function(c, user.id, &row)?;
            if cache {
                crate::db::memo::enable(c, row.id, &row.code)?;
            }
            match &defaults {
                Some(d) => function_defaults::store(c, row.id, d),
                None => Ok(()),
            }
        })
        .await?;
    Ok(axum::Json(json!({"function_uuid": id})))
}

/// `GET /v2/functions/{id}`.
pub async fn get(
    State(state): State<AppState>,
    user: User,
    IdPath(raw): IdPath,
) -> ApiResult<axum::Json<Value>> {
    let id = parse_id("function", &raw)?;
    let (f, defaults, cache) = state
        .db
        .read(move |c| {
            let defaults = function_defaults::owned(c, user.id, id)?.flatten();
            let cache = crate::db::memo::is_cached(c, id)?;
            Ok((catalog::get_function(c, user.id, id)?, defaults, cache))
        })
        .await?;
    let f = f.ok_or_else(|| ApiError::not_found_id("function", &raw))?;
    let defaults = defaults.and_then(|d| serde_json::from_str::<Value>(&d).ok());
    Ok(axum::Json(json!({
        "function_uuid": f.id,
        "function_name": f.name,
        "function_code": f.code,
        "description": f.description,
        "metadata": f.metadata,
        "resource_specification": defaults,
        "cache": cache,
    })))
}

/// `DELETE /v2/functions/{id}`.
pub async fn delete(
    State(state): State<AppState>,
    user: User,
    IdPath(raw): IdPath,
) -> ApiResult<axum::Json<Value>> {
    let id = parse_id("function", &raw)?;
    let deleted = state
        .db
        .write(move |c, _| catalog::delete_function(c, user.id, id))
        .await?;
    if !deleted {
        return Err(ApiError::not_found_id("function", &raw));
    }
    Ok(axum::Json(json!({"function_uuid": id, "deleted": true})))
}
