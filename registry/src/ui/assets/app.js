// The hpfaas dashboard: pages drawn from the service's REST routes, read with
// the session cookie (GET only). Every value from the service is put into the
// page as text, never as markup: task output and tracebacks are the user's code's.
"use strict";

const page = () => document.getElementById("page");
const statusLine = () => document.getElementById("status");
let openStream = null;

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** GET a JSON route; `null` for 404 when `optional` (a route this service may lack). */
async function get(path, optional) {
  const resp = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (resp.status === 401) {
    throw new Error("Not logged in, or the session ended: run `hpfaas dashboard` for a new login link.");
  }
  if (optional && (resp.status === 404 || resp.status === 405)) return null;
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(`${path}: ${resp.status} ${body.error || ""}`);
  return body;
}

/** A time as the service gives it (Unix seconds, as a number or a string, or RFC 3339). */
function when(t) {
  if (t === undefined || t === null || t === "") return "";
  const seconds = typeof t === "number" ? t : /^\d+(\.\d+)?$/.test(String(t)) ? Number(t) : null;
  const d = seconds !== null ? new Date(seconds * 1000) : new Date(t);
  return isNaN(d) ? String(t) : d.toLocaleString();
}

function state(s) {
  return el("span", { class: `state state-${String(s).replace(/[^a-z-]/g, "")}` }, s);
}

/** A table; without `headers`, a list of facts (name, value). */
function table(headers, rows) {
  return el("table", {},
    headers ? el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))) : null,
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))));
}

function link(href, text) {
  return el("a", { href }, text);
}

function show(...nodes) {
  page().replaceChildren(...nodes);
  statusLine().textContent = `updated ${new Date().toLocaleTimeString()}`;
}

function fail(err) {
  page().replaceChildren(el("p", { class: "error" }, err.message || String(err)));
}

/**
 * Follows a live view (server-sent events): `handlers` maps each event name to
 * a function of its parsed data. The service's own `error` event (a revoked
 * token, an endpoint no longer visible) ends the view with its message; a
 * dropped connection is retried by the browser, and one it gives up on (the
 * session ended) says how to log in again.
 */
function follow(path, handlers) {
  const source = new EventSource(path);
  openStream = source;
  for (const [name, handle] of Object.entries(handlers)) {
    source.addEventListener(name, (ev) => {
      let data;
      try { data = JSON.parse(ev.data); } catch (_) { return; }
      Promise.resolve(handle(data)).catch(fail);
    });
  }
  source.addEventListener("error", (ev) => {
    if (ev.data) {
      source.close();
      let why = ev.data;
      try { why = JSON.parse(ev.data).error || why; } catch (_) { /* shown as sent */ }
      fail(new Error(`The live view ended: ${why}`));
    } else if (source.readyState === EventSource.CLOSED) {
      fail(new Error("The live view closed. If the session ended, run `hpfaas dashboard` for a new login link."));
    }
  });
}

/** Endpoints with their status, throughput, and the most recent tasks; kept live. */
async function overview() {
  // The recent tasks are re-read when the counts move, at most every 2 s.
  let recent;
  let readAt = 0;
  let seen = -1;
  follow("/v3/activity/stream", {
    overview: async (frame) => {
      const hour = frame.activity.last_hour || [];
      const finished = hour.reduce((n, m) => n + m.finished, 0);
      if (recent === undefined || (finished !== seen && Date.now() - readAt > 2000)) {
        readAt = Date.now();
        seen = finished;
        recent = await get("/v3/tasks?limit=20", true);
      }
      drawOverview(frame, recent);
    },
  });
}

function drawOverview(frame, recent) {
  const endpoints = frame.endpoints || [];
  const online = endpoints.filter((e) => e.status === "online").length;
  const tasks = recent ? (recent.tasks || []) : [];
  const hour = frame.activity.last_hour || [];
  const finished = hour.reduce((n, m) => n + m.finished, 0);
  const failed = hour.reduce((n, m) => n + m.failed, 0);
  const rate = frame.activity.finished_per_second || 0;
  const card = (n, what) => el("div", { class: "card" }, el("div", { class: "n" }, n), what);
  const cards = el("div", { class: "cards" },
    card(`${online}/${endpoints.length}`, "endpoints online"),
    card(rate < 10 ? rate.toFixed(1) : Math.round(rate), "tasks/s now"),
    card(finished, "tasks finished in the last hour"),
    card(failed, "of them failed"));
  const rows = endpoints.map((e) => {
    const d = e.details || {};
    return [
      link(`#/endpoint/${e.endpoint_id}`, e.display_name || e.name),
      el("span", { class: "mono" }, e.endpoint_id),
      state(e.status),
      `${d.idle_workers ?? "-"} / ${d.total_workers ?? "-"}`,
      d.outstanding_tasks ?? "-",
      d.active_blocks ?? "-",
    ];
  });
  const parts = [el("h1", {}, "Overview"), cards];
  if (finished) parts.push(el("h2", {}, "Tasks per minute, last hour"), chart(hour));
  parts.push(el("h2", {}, "Endpoints"),
    table(["name", "id", "status", "idle / workers", "outstanding", "blocks"], rows));
  if (recent) parts.push(el("h2", {}, "Recent tasks"), taskTable(tasks));
  show(...parts);
}

/** Bars of finished (and, darker, failed) tasks per minute, drawn with elements only. */
function chart(minutes) {
  const top = Math.max(1, ...minutes.map((m) => m.finished));
  return el("div", { class: "chart" }, minutes.map((m) => {
    const bar = el("div", { class: "bar", title: `${new Date(m.minute * 1000).toLocaleTimeString()}: ${m.finished} finished, ${m.failed} failed` });
    bar.style.height = `${(100 * m.finished) / top}%`;
    const bad = el("div", { class: "failed" });
    bad.style.height = m.finished ? `${(100 * m.failed) / m.finished}%` : "0";
    bar.append(bad);
    return bar;
  }));
}

function taskTable(tasks) {
  return table(["task", "status", "function", "endpoint", "submitted", "completed"],
    tasks.map((t) => [
      link(`#/task/${t.task_id || t.id}`, el("span", { class: "mono" }, t.task_id || t.id)),
      state(t.status),
      el("span", { class: "mono" }, t.function_id || ""),
      t.endpoint_id ? link(`#/endpoint/${t.endpoint_id}`, el("span", { class: "mono" }, t.endpoint_id)) : "",
      when(t.submitted_at || t.created_t || t.submitted),
      when(t.completion_t || t.completed_at || ""),
    ]));
}

/** One endpoint: its status, blocks and recent events, kept live. */
async function endpoint(id) {
  let status = null;
  const events = [];
  const draw = () => {
    if (!status) return;
    const d = status.details || {};
    const facts = Object.entries(d).filter(([k]) => k !== "blocks")
      .map(([k, v]) => [k, k === "connected_since" || k === "last_heartbeat" ? when(v)
        : typeof v === "object" ? JSON.stringify(v) : String(v)]);
    const parts = [el("h1", {}, "Endpoint ", el("span", { class: "mono" }, id), " ", state(status.status)),
      table(null, facts)];
    if (Array.isArray(d.blocks)) {
      parts.push(el("h2", {}, "Blocks"), table(["block", "job id", "state", "nodes", "managers", "workers", "started"],
        d.blocks.map((b) => [b.block_id, el("span", { class: "mono" }, b.job_id || ""), state(b.state || ""),
          b.nodes ?? "", b.managers ?? "", b.workers ?? "", when(b.started_at || b.submitted_at)])));
    }
    parts.push(el("h2", {}, "Recent events"), table(["time", "kind", "block", "job", "message"],
      [...events].reverse().map((e) => [when(e.time), e.kind || "", e.block_id ?? "",
        el("span", { class: "mono" }, e.job_id ?? ""), el("span", { class: "mono" }, e.message || "")])));
    show(...parts);
  };
  follow(`/v3/endpoints/${id}/events/stream`, {
    status: (doc) => { status = doc; draw(); },
    endpoint_event: (e) => {
      events.push(e);
      if (events.length > 100) events.shift();
      draw();
    },
  });
}

/** The caller's tasks, newest first, with filters and a "more" page. */
async function tasks(query) {
  const params = new URLSearchParams(query);
  if (!params.has("limit")) params.set("limit", "100");
  const answer = await get(`/v3/tasks?${params}`, true);
  if (!answer) {
    show(el("h1", {}, "Tasks"), el("p", { class: "muted" }, "This service does not list tasks."));
    return;
  }
  const list = answer.tasks || answer.items || [];
  const filters = el("form", { class: "filters" },
    ...["status", "endpoint_id", "function_id", "task_group_id"].map((name) =>
      el("input", { name, placeholder: name, value: params.get(name) || "" })),
    el("button", { type: "submit" }, "Filter"));
  filters.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const input of filters.querySelectorAll("input")) if (input.value) q.set(input.name, input.value);
    location.hash = `#/tasks?${q}`;
  });
  const parts = [el("h1", {}, "Tasks"), filters, taskTable(list)];
  const cursor = answer.next_cursor || answer.cursor;
  if (cursor) {
    params.set("cursor", cursor);
    parts.push(el("p", {}, link(`#/tasks?${params}`, "older tasks →")));
  }
  show(...parts);
}

/** One task: its state, timeline, output, and its result or remote traceback. */
async function task(id) {
  const t = await get(`/v2/tasks/${id}`);
  const facts = [["status", state(t.status)], ["function", el("span", { class: "mono" }, t.function_id || "")],
    ["endpoint", t.endpoint_id ? link(`#/endpoint/${t.endpoint_id}`, el("span", { class: "mono" }, t.endpoint_id)) : ""],
    ["task group", t.task_group_id ? link(`#/group/${t.task_group_id}`, el("span", { class: "mono" }, t.task_group_id)) : ""],
    ["completed", when(t.completion_t)]];
  const parts = [el("h1", {}, "Task ", el("span", { class: "mono" }, id)), table(null, facts)];
  if (t.timeline && typeof t.timeline === "object") {
    parts.push(el("h2", {}, "Timeline"), table(["step", "when"],
      Object.entries(t.timeline).map(([k, v]) => [k, v === null ? "—" : when(v)])));
  }
  if (t.placement && typeof t.placement === "object") {
    const p = t.placement;
    parts.push(el("h2", {}, "Ran on"), table(null, [["host", p.host ?? ""], ["block", p.block_id ?? ""],
      ["manager", el("span", { class: "mono" }, p.manager_id ?? "")], ["worker", p.worker ?? ""]]));
  }
  if (t.exception || t.exception_type) {
    parts.push(el("h2", {}, "Error: ", t.exception_type || ""), el("pre", { id: "traceback" }, t.exception || t.exception_message || ""));
  } else if (typeof t.result === "string") {
    const shown = t.result.length > 20000 ? `${t.result.slice(0, 20000)}… (${t.result.length} characters)` : t.result;
    parts.push(el("h2", {}, "Result"), el("pre", {}, shown));
  }
  const output = t.output || {};
  for (const stream of ["stdout", "stderr"]) {
    const text = output[stream] ?? t[stream];
    if (typeof text === "string" && text) parts.push(el("h2", {}, stream), el("pre", {}, text));
  }
  show(...parts);
}

/** A task group, kept current by its result stream. */
async function group(id) {
  const g = await get(`/v2/taskgroup/${id}`);
  const byId = new Map(g.tasks.map((t) => [t.id, t]));
  const draw = () => {
    const counts = {};
    for (const t of byId.values()) counts[t.status] = (counts[t.status] || 0) + 1;
    show(el("h1", {}, "Task group ", el("span", { class: "mono" }, id)),
      el("p", {}, Object.entries(counts).map(([s, n]) => el("span", {}, state(s), ` ${n}  `))),
      table(["task", "status", "function"], [...byId.values()].map((t) => [
        link(`#/task/${t.id}`, el("span", { class: "mono" }, t.id)), state(t.status),
        el("span", { class: "mono" }, t.function_id)])));
  };
  draw();
  follow(`/v3/taskgroup/${id}/stream`, {
    result: (doc) => {
      const known = byId.get(doc.task_id);
      if (known) { known.status = doc.status; draw(); }
    },
  });
}

/** Draws the page the address names; overview, endpoint and group pages stay live. */
async function route() {
  if (openStream) { openStream.close(); openStream = null; }
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const parts = path.split("/").filter(Boolean);
  let draw;
  if (parts.length === 0) draw = () => overview();
  else if (parts[0] === "endpoint" && parts[1]) draw = () => endpoint(parts[1]);
  else if (parts[0] === "tasks") draw = () => tasks(query || "");
  else if (parts[0] === "task" && parts[1]) draw = () => task(parts[1]);
  else if (parts[0] === "group" && parts[1]) draw = () => group(parts[1]);
  else draw = async () => show(el("p", {}, "No such page. ", link("#/", "Overview")));
  try { await draw(); } catch (err) { fail(err); }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);
