//! The OpenAPI 3.0 document of a route table (`GET /openapi.json` serves the
//! one of [`super::ROUTES`]), with short hand-written body schemas.

use hpfaas_protocol::HPFAAS_VERSION;
use serde_json::{json, Map, Value};

use super::route::{Auth, Route};

/// The OpenAPI document for every route of `routes`.
pub fn build(routes: &[Route]) -> Value {
    let mut paths = Map::new();
    for route in routes {
        let mut op = json!({
            "summary": route.summary,
            "operationId": format!("{} {}", route.method, route.path),
            "responses": {
                "200": {
                    "description": "success",
                    "content": {route.produces: {"schema": (route.response)()}},
                },
                "default": {
                    "description": "error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
        });
        if route.produces == "text/html" {
            // A page's own errors are pages too (a spent login link).
            op["responses"]["default"]["content"]["text/html"] =
                json!({"schema": {"type": "string"}});
        }
        let mut parameters = Vec::new();
        if route.path.contains("{id}") {
            parameters.push(json!({
                "name": "id", "in": "path", "required": true,
                "schema": {"type": "string", "format": "uuid"},
            }));
        }
        if route.path.ends_with("/submit") {
            parameters.push(json!({
                "name": "Idempotency-Key", "in": "header", "required": false,
                "description": "A retry with the same key gets the first answer; nothing is created twice.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }));
        }
        if route.path.ends_with("/events") {
            parameters.push(json!({
                "name": "since", "in": "query", "required": false,
                "description": "Only events after this `seq` (the `last_seq` of the previous answer).",
                "schema": {"type": "integer", "minimum": 0},
            }));
            parameters.push(json!({
                "name": "limit", "in": "query", "required": false,
                "schema": {"type": "integer", "minimum": 0,
                           "maximum": super::endpoints::MAX_EVENTS_LIMIT},
            }));
        }
        if route.path == "/v3/tasks" {
            parameters.extend(super::task_list::query_parameters());
        }
        if !parameters.is_empty() {
            op["parameters"] = Value::Array(parameters);
        }
        op["security"] = match route.auth {
            Auth::None => json!([]),
            _ => json!([{"bearer": []}]),
        };
        if route.auth == Auth::Endpoint {
            op["description"] =
                json!("Needs the endpoint's own credential (from POST /v3/endpoints).");
        }
        if let Some(request) = route.request {
            op["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": request()}},
            });
        }
        if route.path.ends_with("/submit") {
            op["requestBody"]["content"][super::submit::BLOBS_CONTENT_TYPE] = json!({"schema": {
                "type": "string", "format": "binary",
                "description": "The JSON document's length in bytes, a newline, the document, \
                    then the blobs its `pb\\n<length>` args buffers name, in order \
                    (docs/api.md, Binary arguments).",
            }});
        }
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        entry[route.method.to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "hpfaas",
            "version": HPFAAS_VERSION,
            "description": "Function-as-a-service for HPC; routes follow Globus Compute's v2/v3 API.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": schemas::object(&["code", "error"], json!({
                    "code": {"type": "string"}, "error": {"type": "string"},
                })),
                "Task": schemas::task(),
            },
        },
    })
}

/// Hand-written JSON schemas for bodies and answers; short on purpose.
pub mod schemas {
    use serde_json::{json, Value};

    fn s() -> Value {
        json!({"type": "string"})
    }

    fn nullable_s() -> Value {
        json!({"type": "string", "nullable": true})
    }

    fn id() -> Value {
        json!({"type": "string", "format": "uuid"})
    }

    /// An object with these required keys and properties.
    pub fn object(required: &[&str], properties: Value) -> Value {
        json!({"type": "object", "required": required, "properties": properties})
    }

    /// Text that is not JSON (a page, a script).
    pub fn text() -> Value {
        s()
    }

    /// Answer of `GET /v3/activity`.
    pub fn activity() -> Value {
        let n = json!({"type": "number"});
        object(
            &["finished_per_second", "failed_per_second", "last_hour"],
            json!({
                "finished_per_second": n, "failed_per_second": n,
                "last_hour": {"type": "array", "items": object(
                    &["minute", "finished", "failed"],
                    json!({"minute": n, "finished": n, "failed": n}),
                )},
            }),
        )
    }

    /// Body of `POST /v3/ui/login_link`.
    pub fn login_link() -> Value {
        json!({"type": "object", "additionalProperties": false, "properties": {
            "ttl": {"type": "number", "minimum": 0, "exclusiveMinimum": true, "maximum": 86400},
        }})
    }

    /// Answer of `POST /v3/ui/login_link`.
    pub fn login_link_made() -> Value {
        object(
            &["path", "expires_in"],
            json!({"path": s(), "expires_in": {"type": "number"}}),
        )
    }

    /// Any JSON object.
    pub fn any_object() -> Value {
        json!({"type": "object"})
    }

    /// The task document.
    pub fn task() -> Value {
        object(
            &["task_id", "status", "pending"],
            json!({
                "task_id": id(), "status": s(), "pending": {"type": "boolean"},
                "output": task_output(),
                "result": s(), "exception": s(), "exception_type": s(), "exception_message": s(),
                "completion_t": s(), "task_group_id": id(), "function_id": id(),
                "endpoint_id": id(), "created_t": s(),
                "cached": {"type": "boolean"}, "cached_from": id(),
                "timeline": object(&["submitted"], json!({
                    "submitted": s(), "dispatched": nullable_s(), "started": nullable_s(),
                    "finished": nullable_s(), "result_fetched": nullable_s(),
                })),
                "placement": json!({"type": "object", "properties": {
                    "block_id": s(), "manager_id": s(), "worker": {"type": "integer"}, "host": s(),
                }}),
            }),
        )
    }

    /// What a Python task printed (docs/api.md, "Task output").
    fn task_output() -> Value {
        let count = json!({"type": "integer", "minimum": 0});
        object(
            &[],
            json!({"stdout": s(), "stderr": s(), "stdout_dropped": count, "stderr_dropped": count}),
        )
    }

    /// Reference to the task document.
    pub fn task_ref() -> Value {
        json!({"$ref": "#/components/schemas/Task"})
    }

    /// `GET /v2/version`.
    pub fn version() -> Value {
        json!({"oneOf": [s(), any_object()]})
    }

    /// `POST /v3/functions` body.
    pub fn register_function() -> Value {
        object(
            &["function_name", "function_code"],
            json!({"function_name": s(), "function_code": s(), "description": s(),
                   "metadata": any_object(), "resource_specification": any_object(),
                   "cache": {"type": "boolean"}}),
        )
    }

    /// `POST /v3/functions` answer.
    pub fn function_id() -> Value {
        object(&["function_uuid"], json!({"function_uuid": id()}))
    }

    /// `GET /v2/functions/{id}` answer.
    pub fn function() -> Value {
        object(
            &["function_uuid", "function_name", "function_code"],
            json!({"function_uuid": id(), "function_name": s(), "function_code": s(),
                   "description": s(), "metadata": any_object(),
                   "resource_specification": {"type": "object", "nullable": true},
                   "cache": {"type": "boolean"}}),
        )
    }

    /// `DELETE /v3/cache` answer.
    pub fn cache_cleared() -> Value {
        object(&["cleared"], json!({"cleared": {"type": "integer"}}))
    }

    /// `DELETE /v3/functions/{id}/cache` answer.
    pub fn function_cache_cleared() -> Value {
        object(
            &["function_uuid", "cleared"],
            json!({"function_uuid": id(), "cleared": {"type": "integer"}}),
        )
    }

    /// `DELETE /v2/functions/{id}` answer.
    pub fn function_deleted() -> Value {
        object(
            &["function_uuid", "deleted"],
            json!({"function_uuid": id(), "deleted": {"type": "boolean"}}),
        )
    }

    /// `POST /v3/endpoints` body.
    pub fn register_endpoint() -> Value {
        object(
            &["endpoint_name"],
            json!({"endpoint_name": s(), "display_name": s(), "endpoint_id": id(), "metadata": any_object()}),
        )
    }

    /// `POST /v3/endpoints` answer.
    pub fn endpoint_registered() -> Value {
        object(
            &["endpoint_id", "name", "credential"],
            json!({"endpoint_id": id(), "name": s(), "credential": s()}),
        )
    }

    /// One endpoint.
    pub fn endpoint() -> Value {
        object(
            &["endpoint_id", "name", "status"],
            json!({"endpoint_id": id(), "uuid": id(), "name": s(), "display_name": s(),
                   "status": {"type": "string", "enum": ["online", "offline"]}, "created_t": s(),
                   "shared_with": {"type": "array", "items": s()}}),
        )
    }

    /// `GET /v2/endpoints` answer.
    pub fn endpoint_list() -> Value {
        json!({"type": "array", "items": endpoint()})
    }

    /// `DELETE /v2/endpoints/{id}` answer.
    pub fn endpoint_deleted() -> Value {
        object(
            &["endpoint_id", "deleted"],
            json!({"endpoint_id": id(), "deleted": {"type": "boolean"}}),
        )
    }

    /// `GET /v3/service/status` answer.
    pub fn service_status() -> Value {
        object(
            &["status", "writes_refused", "audit_lines_lost"],
            json!({
                "status": {"type": "string", "enum": ["ok", "degraded"]},
                "writes_refused": {"type": ["string", "null"]},
                "audit_lines_lost": {"type": "integer"},
            }),
        )
    }

    /// `GET /v2/endpoints/{id}/status` answer.
    pub fn endpoint_status() -> Value {
        object(
            &["status", "details"],
            json!({"status": {"type": "string", "enum": ["online", "offline"]}, "details": any_object()}),
        )
    }

    /// `GET /v3/endpoints/{id}/events`.
    pub fn endpoint_events() -> Value {
        let n = || json!({"type": "number"});
        let opt = || json!({"type": "string", "nullable": true});
        let event = object(
            &["seq", "time", "kind", "message"],
            json!({"seq": {"type": "integer"}, "time": n(), "kind": s(), "block_id": opt(),
                   "job_id": opt(), "message": s()}),
        );
        object(
            &["endpoint_id", "events", "last_seq"],
            json!({"endpoint_id": id(), "events": {"type": "array", "items": event},
                   "last_seq": {"type": "integer", "nullable": true}}),
        )
    }

    /// `POST /v3/endpoints/{id}/submit` body.
    pub fn submit() -> Value {
        object(
            &["tasks"],
            json!({
                "tasks": {"type": "object", "additionalProperties": {"type": "array", "items": s()}},
                "task_group_id": id(), "create_queue": {"type": "boolean"},
                "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 255},
                "result_serializers": {"type": "array", "items": s()},
                "resource_specification": any_object(), "user_endpoint_config": any_object(),
                // hpfaas: per task of `tasks` (same key, same position), its parents.
                "depends_on": {"type": "object", "additionalProperties": {"type": "array",
                    "items": {"type": "array", "nullable": true, "items": id()}}},
            }),
        )
    }

    /// `POST /v3/endpoints/{id}/submit` answer.
    pub fn submitted() -> Value {
        object(
            &["request_id", "task_group_id", "endpoint_id", "tasks"],
            json!({"request_id": id(), "task_group_id": id(), "endpoint_id": id(),
                   "tasks": {"type": "object", "additionalProperties": {"type": "array", "items": id()}}}),
        )
    }

    /// `POST`/`DELETE /v3/endpoints/{id}/share` body.
    pub fn share() -> Value {
        object(
            &["users"],
            json!({"users": {"type": "array", "items": s()}}),
        )
    }

    /// `POST`/`DELETE /v3/endpoints/{id}/share` answer.
    pub fn shared() -> Value {
        object(
            &["endpoint_id", "shared_with"],
            json!({"endpoint_id": id(), "shared_with": {"type": "array", "items": s()}}),
        )
    }

    /// `POST /v3/tasks/{id}/cancel` answer.
    pub fn task_cancelled() -> Value {
        object(
            &["task_id", "status"],
            json!({"task_id": id(), "status": s()}),
        )
    }

    /// `POST /v3/taskgroup/{id}/cancel` answer.
    pub fn group_cancelled() -> Value {
        object(
            &["taskgroup_id", "status", "cancelled"],
            json!({"taskgroup_id": id(), "status": s(), "cancelled": {"type": "integer"}}),
        )
    }

    /// `POST /v2/batch_status` body.
    pub fn batch_status() -> Value {
        object(
            &["task_ids"],
            json!({"task_ids": {"type": "array", "items": id()}}),
        )
    }

    /// `POST /v2/batch_status` answer.
    pub fn batch_result() -> Value {
        object(
            &["response", "results"],
            json!({"response": s(), "results": {"type": "object", "additionalProperties": task_ref()}}),
        )
    }

    /// `GET /v3/tasks` answer.
    pub fn task_list() -> Value {
        object(
            &["tasks", "next_cursor"],
            json!({"tasks": {"type": "array", "items": object(
                &["task_id", "status", "pending", "task_group_id", "function_id",
                  "endpoint_id", "created_t"],
                json!({"task_id": id(), "status": s(), "pending": {"type": "boolean"},
                       "task_group_id": id(), "function_id": id(), "endpoint_id": id(),
                       "created_t": s(), "completion_t": s(), "exception_type": s(),
                       "cached": {"type": "boolean"}, "cached_from": id()}),
            )}, "next_cursor": {"type": "string", "nullable": true}}),
        )
    }

    /// `GET /v2/taskgroup/{id}` answer.
    pub fn taskgroup() -> Value {
        object(
            &["taskgroup_id", "tasks"],
            json!({"taskgroup_id": id(), "tasks": {"type": "array", "items": object(
                &["id", "function_id", "status"],
                json!({"id": id(), "function_id": id(), "status": s()}),
            )}}),
        )
    }

    /// The result stream.
    pub fn event_stream() -> Value {
        sse_event(
            &["result", "error"],
            "`id: <seq>`, `event: result`, `data: <task document>` per finished task",
        )
    }

    /// One event of `GET /v3/endpoints/{id}/events/stream`.
    pub fn endpoint_view() -> Value {
        sse_event(
            &["status", "endpoint_event", "error"],
            "`event: status` with the status document; `id: <seq>`, `event: endpoint_event` \
             with an event",
        )
    }

    /// One event of `GET /v3/activity/stream`.
    pub fn overview_view() -> Value {
        sse_event(
            &["overview", "error"],
            "`event: overview` with `{activity, endpoints}`",
        )
    }

    /// A server-sent event as Open API 3.0 has a `text/event-stream`
    /// schema describe it: one event (its fields), `data` being JSON text.
    fn sse_event(names: &[&str], description: &str) -> Value {
        json!({
            "type": "object",
            "description": description,
            "required": ["event", "data"],
            "properties": {
                "event": {"type": "string", "enum": names},
                "data": {"type": "string", "description": "a JSON object"},
                "id": {"type": "string", "pattern": "^[0-9]+$"},
            },
        })
    }

    /// The agent WebSocket.
    pub fn websocket() -> Value {
        json!({"type": "string", "description": "101 Switching Protocols; JSON text frames of the protocol crate"})
    }
}

#[cfg(test)]
mod tests {
    use crate::routes::{openapi_document, ROUTES};

    #[test]
    fn every_route_is_in_the_document() {
        let doc = openapi_document();
        assert_eq!(doc["openapi"], "3.0.3");
        for route in ROUTES {
            let op = &doc["paths"][route.path][route.method.to_ascii_lowercase()];
            assert!(op.is_object(), "{} {} missing", route.method, route.path);
        }
    }
}
