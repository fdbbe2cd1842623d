//! What a route is: its method, path, summary, who may call it, and its
//! body schemas. The table of every route is [`super::ROUTES`].

use axum::routing::{MethodFilter, MethodRouter};
use serde_json::Value;

use crate::state::AppState;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Anyone.
    None,
    /// A user token.
    User,
    /// A user token, or the endpoint's own credential.
    UserOrEndpoint,
    /// The endpoint's own credential.
    Endpoint,
}

/// One route: what it is, for the router and for the OpenAPI document.
pub struct Route {
    /// `GET`, `POST` or `DELETE`.
    pub method: &'static str,
    /// Path in axum/OpenAPI syntax, e.g. `/v2/tasks/{id}`.
    pub path: &'static str,
    /// One line for people.
    pub summary: &'static str,
    /// Who may call it.
    pub auth: Auth,
    /// JSON schema of the request body, if it takes one.
    pub request: Option<fn() -> Value>,
    /// JSON schema of the success answer.
    pub response: fn() -> Value,
    /// Media type of the success answer.
    pub produces: &'static str,
    /// The handler, on the route's method.
    pub handler: fn(MethodFilter) -> MethodRouter<AppState>,
}

impl Route {
    /// The route's method as axum's filter.
    pub fn filter(&self) -> MethodFilter {
        match self.method {
            "POST" => MethodFilter::POST,
            "DELETE" => MethodFilter::DELETE,
            _ => MethodFilter::GET,
        }
    }
}
