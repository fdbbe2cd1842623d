//! The one route table.
//!
//! [`ROUTES`] lists every route with its method, path, summary, auth and
//! body schemas. The router is built from it, `/openapi.json` is generated
//! from it, and a test checks it against the table in `docs/api.md`, so the
//! three cannot drift apart.

pub mod cache;
pub mod cancel;
pub mod endpoints;
pub mod functions;
pub mod metrics;
pub mod openapi;
pub mod route;
pub mod service;
pub mod shares;
pub mod sse;
pub mod stream;
pub mod submit;
pub mod task_list;
pub mod tasks;
pub mod version;
pub mod watch;

use std::sync::OnceLock;

use axum::extract::DefaultBodyLimit;
use axum::http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use axum::http::{HeaderValue, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::on;
use axum::Router;
use serde_json::Value;

use crate::endpoint_link;
use crate::error::ApiError;
use crate::state::AppState;
use crate::ui;
use openapi::schemas;
pub use route::{Auth, Route};

const JSON: &str = "application/json";
const HTML: &str = "text/html";

/// Every route the service answers.
pub static ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/v2/version",
        summary: "Service version; `?service=all` for every component's",
        auth: Auth::None,
        request: None,
        response: schemas::version,
        produces: JSON,
        handler: |m| on(m, version::version),
    },
    Route {
        method: "GET",
        path: "/v3/service/status",
        summary: "Whether the service accepts writes, and audit lines it lost",
        auth: Auth::User,
        request: None,
        response: schemas::service_status,
        produces: JSON,
        handler: |m| on(m, service::status),
    },
    Route {
        method: "POST",
        path: "/v3/functions",
        summary: "Register a function",
        auth: Auth::User,
        request: Some(schemas::register_function),
        response: schemas::function_id,
        produces: JSON,
        handler: |m| on(m, functions::register),
    },
    Route {
        method: "GET",
        path: "/v2/functions/{id}",
        summary: "Read a function",
        auth: Auth::User,
        request: None,
        response: schemas::function,
        produces: JSON,
        handler: |m| on(m, functions::get),
    },
    Route {
        method: "DELETE",
        path: "/v2/functions/{id}",
        summary: "Delete a function",
        auth: Auth::User,
        request: None,
        response: schemas::function_deleted,
        produces: JSON,
        handler: |m| on(m, functions::delete),
    },
    Route {
        method: "DELETE",
        path: "/v3/functions/{id}/cache",
        summary: "Clear the cached results of one of your functions",
        auth: Auth::User,
        request: None,
        response: schemas::function_cache_cleared,
        produces: JSON,
        handler: |m| on(m, cache::clear_function),
    },
    Route {
        method: "DELETE",
        path: "/v3/cache",
        summary: "Clear all your cached results",
        auth: Auth::User,
        request: None,
        response: schemas::cache_cleared,
        produces: JSON,
        handler: |m| on(m, cache::clear_all),
    },
    Route {
        method: "POST",
        path: "/v3/endpoints",
        summary: "Register (or re-register) an endpoint and get its credential",
        auth: Auth::User,
        request: Some(schemas::register_endpoint),
        response: schemas::endpoint_registered,
        produces: JSON,
        handler: |m| on(m, endpoints::register),
    },
    Route {
        method: "GET",
        path: "/v2/endpoints",
        summary: "List your endpoints",
        auth: Auth::User,
        request: None,
        response: schemas::endpoint_list,
        produces: JSON,
        handler: |m| on(m, endpoints::list),
    },
    Route {
        method: "GET",
        path: "/v2/endpoints/{id}",
        summary: "Read an endpoint",
        auth: Auth::User,
        request: None,
        response: schemas::endpoint,
        produces: JSON,
        handler: |m| on(m, endpoints::get),
    },
    Route {
        method: "DELETE",
        path: "/v2/endpoints/{id}",
        summary: "Delete an endpoint and revoke its credentials",
        auth: Auth::User,
        request: None,
        response: schemas::endpoint_deleted,
        produces: JSON,
        handler: |m| on(m, endpoints::delete),
    },
    Route {
        method: "GET",
        path: "/v2/endpoints/{id}/status",
        summary: "Whether the endpoint's agent is connected, and its last report",
        auth: Auth::UserOrEndpoint,
        request: None,
        response: schemas::endpoint_status,
        produces: JSON,
        handler: |m| on(m, endpoints::status),
    },
    Route {
        method: "GET",
        path: "/v3/endpoints/{id}/events",
        summary: "The endpoint's recent events: blocks submitted, running, failed (with the \
                  scheduler's message), cancelled; managers lost; the agent's link",
        auth: Auth::UserOrEndpoint,
        request: None,
        response: schemas::endpoint_events,
        produces: JSON,
        handler: |m| on(m, endpoints::events),
    },
    Route {
        method: "GET",
        path: "/v3/endpoints/{id}/events/stream",
        summary: "Server-sent events: the endpoint's status each time it changes and its \
                  events as they are recorded, resumable with Last-Event-ID",
        auth: Auth::UserOrEndpoint,
        request: None,
        response: schemas::endpoint_view,
        produces: "text/event-stream",
        handler: |m| on(m, watch::endpoint),
    },
    Route {
        method: "POST",
        path: "/v3/endpoints/{id}/share",
        summary: "Share your endpoint with named users (they may submit to it)",
        auth: Auth::User,
        request: Some(schemas::share),
        response: schemas::shared,
        produces: JSON,
        handler: |m| on(m, shares::share),
    },
    Route {
        method: "DELETE",
        path: "/v3/endpoints/{id}/share",
        summary: "Stop sharing your endpoint with named users",
        auth: Auth::User,
        request: Some(schemas::share),
        response: schemas::shared,
        produces: JSON,
        handler: |m| on(m, shares::unshare),
    },
    Route {
        method: "POST",
        path: "/v3/endpoints/{id}/submit",
        summary:
            "Submit tasks; answered once they are durable; `Idempotency-Key` makes retries safe",
        auth: Auth::User,
        request: Some(schemas::submit),
        response: schemas::submitted,
        produces: JSON,
        handler: |m| on(m, submit::submit),
    },
    Route {
        method: "GET",
        path: "/v2/tasks/{id}",
        summary: "Read a task",
        auth: Auth::User,
        request: None,
        response: schemas::task_ref,
        produces: JSON,
        handler: |m| on(m, tasks::get),
    },
    Route {
        method: "GET",
        path: "/v3/tasks",
        summary: "List your tasks, newest first: filters, and pages joined by a cursor",
        auth: Auth::User,
        request: None,
        response: schemas::task_list,
        produces: JSON,
        handler: |m| on(m, task_list::list),
    },
    Route {
        method: "POST",
        path: "/v3/tasks/{id}/cancel",
        summary: "Cancel a task that has not finished",
        auth: Auth::User,
        request: None,
        response: schemas::task_cancelled,
        produces: JSON,
        handler: |m| on(m, cancel::cancel_task),
    },
    Route {
        method: "POST",
        path: "/v2/batch_status",
        summary: "Read many tasks at once",
        auth: Auth::User,
        request: Some(schemas::batch_status),
        response: schemas::batch_result,
        produces: JSON,
        handler: |m| on(m, tasks::batch_status),
    },
    Route {
        method: "GET",
        path: "/v2/taskgroup/{id}",
        summary: "List a task group's tasks in submission order",
        auth: Auth::User,
        request: None,
        response: schemas::taskgroup,
        produces: JSON,
        handler: |m| on(m, tasks::taskgroup),
    },
    Route {
        method: "GET",
        path: "/v3/taskgroup/{id}/stream",
        summary: "Server-sent events: the group's results, resumable with Last-Event-ID",
        auth: Auth::User,
        request: None,
        response: schemas::event_stream,
        produces: "text/event-stream",
        handler: |m| on(m, stream::stream),
    },
    Route {
        method: "POST",
        path: "/v3/taskgroup/{id}/cancel",
        summary: "Cancel every task of a task group that has not finished",
        auth: Auth::User,
        request: None,
        response: schemas::group_cancelled,
        produces: JSON,
        handler: |m| on(m, cancel::cancel_group),
    },
    Route {
        method: "GET",
        path: "/v3/endpoints/{id}/connect",
        summary: "WebSocket for the endpoint agent (protocol crate, endpoint.rs)",
        auth: Auth::Endpoint,
        request: None,
        response: schemas::websocket,
        produces: JSON,
        handler: |m| on(m, endpoint_link::connect),
    },
    Route {
        method: "GET",
        path: "/v3/activity",
        summary:
            "How fast the caller's tasks finish: per second now, per minute over the last hour",
        auth: Auth::User,
        request: None,
        response: schemas::activity,
        produces: JSON,
        handler: |m| on(m, task_list::activity),
    },
    Route {
        method: "GET",
        path: "/v3/activity/stream",
        summary: "Server-sent events: your throughput (as /v3/activity) and your endpoints' \
                  status, each time either changes",
        auth: Auth::User,
        request: None,
        response: schemas::overview_view,
        produces: "text/event-stream",
        handler: |m| on(m, watch::overview),
    },
    Route {
        method: "POST",
        path: "/v3/ui/login_link",
        summary: "A one-time login link for the web dashboard (valid `ttl` seconds, default 600)",
        auth: Auth::User,
        request: Some(schemas::login_link),
        response: schemas::login_link_made,
        produces: JSON,
        handler: |m| on(m, ui::login_link),
    },
    Route {
        method: "GET",
        path: "/ui/login",
        summary: "Spend a login link's key: sets the session cookie, redirects to /ui/",
        auth: Auth::None,
        request: None,
        response: schemas::text,
        produces: HTML,
        handler: |m| on(m, ui::login),
    },
    Route {
        method: "POST",
        path: "/ui/logout",
        summary: "End the dashboard session of the cookie",
        auth: Auth::None,
        request: None,
        response: schemas::text,
        produces: HTML,
        handler: |m| on(m, ui::logout),
    },
    Route {
        method: "GET",
        path: "/ui/",
        summary: "The web dashboard",
        auth: Auth::None,
        request: None,
        response: schemas::text,
        produces: HTML,
        handler: |m| on(m, ui::index),
    },
    Route {
        method: "GET",
        path: "/ui/app.js",
        summary: "The dashboard's script",
        auth: Auth::None,
        request: None,
        response: schemas::text,
        produces: "text/javascript",
        handler: |m| on(m, ui::script),
    },
    Route {
        method: "GET",
        path: "/ui/style.css",
        summary: "The dashboard's style",
        auth: Auth::None,
        request: None,
        response: schemas::text,
        produces: "text/css",
        handler: |m| on(m, ui::style),
    },
    Route {
        method: "GET",
        path: "/openapi.json",
        summary: "This document",
        auth: Auth::None,
        request: None,
        response: schemas::any_object,
        produces: JSON,
        handler: |m| on(m, serve_openapi),
    },
];

/// The OpenAPI document of [`ROUTES`], built once.
pub fn openapi_document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| openapi::build(ROUTES))
}

/// `GET /openapi.json`.
async fn serve_openapi() -> impl IntoResponse {
    axum::Json(openapi_document().clone())
}

/// The service's router: every route of [`ROUTES`], JSON fallbacks, and the
/// body size limit.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        router = router.route(route.path, (route.handler)(route.filter()));
    }
    router
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(state.config.max_request_bytes))
        .layer(axum::middleware::from_fn(close_after_refused_body))
        .with_state(state)
}

/// A request refused before its body was read (413 over the size limit, a
/// bad id in the path, a bad token) leaves the body unread, so hyper closes
/// the connection after the answer: say so with `Connection: close` instead
/// of leaving the client to reuse a connection that is about to die.
async fn close_after_refused_body(request: axum::extract::Request, next: Next) -> Response {
    let has_body = request
        .headers()
        .get(CONTENT_LENGTH)
        .is_some_and(|len| len.as_bytes() != b"0")
        || request.headers().contains_key(TRANSFER_ENCODING);
    let mut resp = next.run(request).await;
    let refused = resp.status().is_client_error() || resp.status().is_server_error();
    if has_body && refused {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route for {method} {}; the routes are listed at /openapi.json",
        uri.path()
    ))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|r| path_matches(r.path, uri.path()))
        .map(|r| r.method)
        .collect();
    ApiError::method_not_allowed(format!(
        "{} does not accept {method}; allowed: {}",
        uri.path(),
        allowed.join(", ")
    ))
}

/// True if `path` fits the pattern `pattern` (`{x}` matches one segment).
fn path_matches(pattern: &str, path: &str) -> bool {
    let (p, q): (Vec<_>, Vec<_>) = (pattern.split('/').collect(), path.split('/').collect());
    p.len() == q.len()
        && p.iter()
            .zip(&q)
            .all(|(a, b)| a == b || (a.starts_with('{') && a.ends_with('}')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// (method, path) rows of the route table in docs/api.md.
    pub(crate) fn documented_routes() -> BTreeSet<(String, String)> {
        let doc = include_str!("../../../docs/api.md");
        doc.lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let method = *cells.get(1)?;
                let path = *cells.get(2)?;
                (["GET", "POST", "DELETE", "PUT", "PATCH"].contains(&method)
                    && path.starts_with('/'))
                .then(|| (method.to_string(), path.to_string()))
            })
            .collect()
    }

    #[test]
    fn the_table_matches_docs_api_md() {
        let routed: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        let documented = documented_routes();
        assert!(
            documented.len() >= 20,
            "parsed too few routes from docs/api.md: {documented:?}"
        );
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty(),
            "routed but not in docs/api.md: {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "in docs/api.md but not routed: {unrouted:?}"
        );
        assert_eq!(
            routed.len(),
            ROUTES.len(),
            "a route appears twice in ROUTES"
        );
    }

    #[test]
    fn patterns_match_segments() {
        assert!(path_matches("/v2/tasks/{id}", "/v2/tasks/abc"));
        assert!(!path_matches("/v2/tasks/{id}", "/v2/tasks/abc/x"));
        assert!(!path_matches("/v2/tasks/{id}", "/v2/task/abc"));
    }
}
