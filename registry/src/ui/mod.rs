//! The web dashboard at `/ui/`: a page and its script and style, embedded in
//! the binary (nothing is fetched from elsewhere when it loads), the login
//! link that turns into a session cookie ([`session`]), and logging out.
//! The page reads the same REST routes as the SDK, authenticated by the
//! cookie, which the service accepts on GET requests only: the dashboard
//! looks, it does not act (auth.rs).

pub mod session;

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, REFERRER_POLICY, SET_COOKIE,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::User;
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::state::AppState;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// Only this origin's own script, style and requests; no frames around it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// An embedded file, with headers that keep it from being framed, sniffed,
/// cached stale, or leaking the page's URL to other sites.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    security_headers(h);
    resp
}

fn security_headers(h: &mut HeaderMap) {
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// `GET /ui/`: the page.
pub async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

/// `GET /ui/app.js`.
pub async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// `GET /ui/style.css`.
pub async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

/// Body of `POST /v3/ui/login_link`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// Seconds the link stays valid (default 600, at most a day).
    #[serde(default)]
    pub ttl: Option<f64>,
}

/// Default life of a login link.
const DEFAULT_LINK_TTL: Duration = Duration::from_secs(600);

/// `POST /v3/ui/login_link`: a one-time login link for the caller.
pub async fn login_link(
    State(state): State<AppState>,
    user: User,
    Json(body): Json<LinkRequest>,
) -> ApiResult<axum::Json<Value>> {
    let ttl = match body.ttl {
        None => DEFAULT_LINK_TTL,
        Some(t) if t.is_finite() && t > 0.0 && t <= session::MAX_LINK_TTL.as_secs_f64() => {
            Duration::from_secs_f64(t)
        }
        Some(t) => {
            return Err(ApiError::bad_request(format!(
                "ttl must be a positive number of seconds up to {}, not {t}",
                session::MAX_LINK_TTL.as_secs()
            )))
        }
    };
    let key = state
        .sessions
        .new_link(&user.token_hash, ttl)
        .map_err(|_| too_many())?;
    Ok(axum::Json(json!({
        "path": format!("/ui/login?key={key}"),
        "expires_in": ttl.as_secs_f64(),
    })))
}

fn too_many() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_sessions",
        format!(
            "the service holds {} dashboard logins already; try again later",
            session::MAX_LIVE
        ),
    )
}

/// Query of `GET /ui/login`.
#[derive(Debug, Deserialize)]
pub struct Login {
    key: Option<String>,
    /// Where to go after logging in: a page of the dashboard (`#/...`).
    next: Option<String>,
}

/// `GET /ui/login?key=...`: spends the key, sets the session cookie, and
/// redirects to the dashboard (the key leaves the address bar).
pub async fn login(
    State(state): State<AppState>,
    query: Result<Query<Login>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let login = query.map(|q| q.0).ok();
    let key = login.as_ref().and_then(|l| l.key.as_deref()).unwrap_or("");
    let session = match state.sessions.log_in(key) {
        Ok(Some(session)) => session,
        Ok(None) => {
            return refused("This login link was used already, has expired, or is not one.")
        }
        Err(_) => return refused("The service holds too many dashboard logins; try again later."),
    };
    let next = login
        .and_then(|l| l.next)
        .filter(|n| n.starts_with("#/") && !n.contains(['\r', '\n']))
        .unwrap_or_default();
    let secure = if state.config.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        session::COOKIE,
        session::SESSION_TTL.as_secs()
    );
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    security_headers(h);
    if let (Ok(cookie), Ok(location)) = (
        HeaderValue::from_str(&cookie),
        HeaderValue::from_str(&format!("/ui/{next}")),
    ) {
        h.insert(SET_COOKIE, cookie);
        h.insert(LOCATION, location);
    }
    resp
}

/// `POST /ui/logout`: ends the session of the cookie, and clears it.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(session) = session::from_cookies(&headers) {
        state.sessions.log_out(&session);
    }
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    security_headers(h);
    h.insert(
        SET_COOKIE,
        HeaderValue::from_static("hpfaas_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    h.insert(LOCATION, HeaderValue::from_static("/ui/"));
    resp
}

/// A page saying why the login failed and how to get a new link.
fn refused(why: &str) -> Response {
    let page = format!(
        "<!doctype html><meta charset=utf-8><title>hpfaas: not logged in</title>\
         <p>{why}</p><p>Run <code>hpfaas dashboard</code> for a new link.</p>"
    );
    let mut resp = (StatusCode::UNAUTHORIZED, page).into_response();
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    security_headers(h);
    resp
}
