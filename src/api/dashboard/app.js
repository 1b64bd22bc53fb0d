// Stepstone dashboard: plain JS, no build step. Data is only ever set as text (never HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { filters: { status: "", workflow: "" }, cursor: null, rows: new Map(), source: null, runSource: null, runId: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "style") Object.assign(node.style, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

// The token lives in this tab's sessionStorage, which no other origin (another port of the
// same host included) can read, and goes out as a header: never as a cookie, which every
// server on this host would be sent.
const TOKEN_KEY = "stepstone.token";
function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: "Bearer " + token } : {};
}
function askToken() {
  closeStreams();
  $("list-view").hidden = true; $("run-view").hidden = true; $("login-view").hidden = false;
  setLive(false, "token required");
  $("token").focus();
}

async function getJSON(path) {
  const r = await fetch(path, { headers: { Accept: "application/json", ...authHeaders() }, credentials: "omit" });
  if (r.status === 401) { askToken(); throw new Error("token required"); }
  if (!r.ok) throw new Error((await r.json().catch(() => ({}))).detail || r.statusText);
  return r.json();
}

// Server-Sent Events over fetch: EventSource cannot send an Authorization header.
class EventStream {
  constructor(path, handlers) {
    this.path = path; this.handlers = handlers;
    this.abort = new AbortController(); this.closed = false;
    this.run();
  }
  close() { this.closed = true; this.abort.abort(); }
  emit(type, data) { const h = this.handlers[type]; if (h) h(data); }
  async run() {
    let delay = 1000;
    while (!this.closed) {
      try {
        const r = await fetch(this.path, { headers: { Accept: "text/event-stream", ...authHeaders() },
          credentials: "omit", cache: "no-store", signal: this.abort.signal });
        if (r.status === 401) { askToken(); return; }
        if (!r.ok || !r.body) throw new Error(r.statusText);
        this.emit("open"); delay = 1000;
        await this.read(r.body.pipeThrough(new TextDecoderStream()).getReader());
      } catch (e) { if (this.closed) return; }
      if (this.closed) return;
      this.emit("error");
      await new Promise((ok) => setTimeout(ok, delay));
      delay = Math.min(delay * 2, 15000);
    }
  }
  async read(reader) {
    let buffer = "", type = "message", data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl).replace(/\r$/, "");
        buffer = buffer.slice(nl + 1);
        if (line === "") {
          if (data.length) this.emit(type, data.join("\n"));
          type = "message"; data = [];
          if (this.closed) return;
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") type = val;
          else if (field === "data") data.push(val);
        }
      }
    }
  }
}

function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const today = new Date().toDateString() === d.toDateString();
  const t = d.toLocaleTimeString([], { hour12: false });
  return today ? t : d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + t;
}
function fmtDur(s) {
  if (s === null || s === undefined) return "";
  if (s < 1) return (s * 1000).toFixed(0) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function pill(status) { return el("span", { class: "pill " + status }, status); }

// The run statuses come from the engine (/vocabulary.json), never from a list here: the
// running ones first, then those that end a run, each in the engine's order. A status with no
// colour of its own in app.css gets the plain pill's.
const vocab = { statuses: [], leased: new Set() };
async function loadVocabulary() {
  const { run_statuses } = await getJSON("/vocabulary.json");
  vocab.leased = new Set(run_statuses.filter((s) => s.leased).map((s) => s.name));
  vocab.statuses = [...run_statuses.filter((s) => !s.terminal), ...run_statuses.filter((s) => s.terminal)]
    .map((s) => s.name);
  $("f-status").append(...vocab.statuses.map((s) => el("option", {}, s)));
}

// How far a run is: steps done over the steps the latest completed run of its workflow
// version took (steps_expected), plus the current step's own progress when it reports one.
// Without a completed run to go by there is no total: the bar shows only the current step.
function progressOf(run) {
  if (run.status === "completed") return { frac: 1, text: `${run.steps_done} steps`, title: "completed" };
  const expected = run.steps_expected ? Math.max(run.steps_expected, run.steps_done) : null;
  const current = run.status === "running" && run.progress && run.progress.total > 0
    ? Math.min(1, (run.progress.done || 0) / run.progress.total) : null;
  const title = expected
    ? `${run.steps_done} of ${expected} steps: ${expected} is how many the latest completed run of v${run.workflow_version} took`
    : `${run.steps_done} steps done, ${run.steps_started} started: no completed run of v${run.workflow_version} yet to say how many there are`;
  const steps = expected ? `${run.steps_done} of ${expected} steps` : `${run.steps_done} steps done`;
  let frac = expected ? Math.min(1, (run.steps_done + (current || 0)) / expected) : (current || 0);
  if (!expected && current === null) frac = 0;
  const text = current !== null ? `${steps} · ${run.current_step || ""} ${(current * 100).toFixed(0)}%` : steps;
  return { frac, text, title };
}
function progressBar(run, big) {
  const p = progressOf(run);
  return el("div", { class: "progress " + run.status + (big ? " big" : ""), title: p.title },
    el("div", { style: { width: (p.frac * 100).toFixed(1) + "%" } }), el("span", {}, p.text));
}

function setLive(on, text) {
  $("live").className = "dot " + (on ? "on" : "off");
  $("live-text").textContent = text;
}

async function refreshHealth() {
  try {
    const r = await fetch("/readyz", { headers: { Accept: "application/json", ...authHeaders() }, credentials: "omit" });
    const body = await r.json();
    const lag = Math.max(0, ...(body.views || []).map((v) => v.lag));
    $("lag").textContent = body.ready ? `log ${body.head} · lag ${lag}` : `not ready: ${body.store} · lag ${lag}`;
  } catch (e) { $("lag").textContent = "server unreachable"; }
}

// -- runs list --------------------------------------------------------------------------------
function runRow(run) {
  const id = String(run.run_id);
  return el("tr", { "data-run": id, "data-status": run.status },
    el("td", {}, pill(run.status)),
    el("td", {}, el("a", { href: "#/runs/" + id, class: "mono" }, id.slice(0, 8))),
    el("td", {}, run.workflow),
    el("td", { class: "mono" }, run.current_step || ""),
    el("td", {}, progressBar(run, false)),
    el("td", { class: "num" }, run.attempts),
    el("td", { class: "num" }, run.retries),
    el("td", { class: "num" }, run.interruptions),
    el("td", {}, fmtTime(run.started_at)),
    el("td", {}, fmtTime(run.updated_at)));
}

function matches(run) {
  const f = state.filters;
  return (!f.status || run.status === f.status) && (!f.workflow || run.workflow === f.workflow);
}

function upsertRun(run, live) {
  const body = $("runs").tBodies[0];
  const id = String(run.run_id);
  const old = body.querySelector(`tr[data-run="${CSS.escape(id)}"]`);
  if (!matches(run)) { if (old) old.remove(); return; }
  const row = runRow(run);
  if (live) row.classList.add("flash");
  if (old) old.replaceWith(row);
  else if (live) body.prepend(row);
  else body.append(row);
  $("runs-empty").hidden = body.rows.length > 0;
}

function listQuery() {
  const q = new URLSearchParams({ limit: "50" });
  if (state.filters.status) q.set("status", state.filters.status);
  if (state.filters.workflow) q.set("workflow", state.filters.workflow);
  if (state.cursor) q.set("cursor", state.cursor);
  return "/runs?" + q.toString();
}

async function loadRuns(reset) {
  if (reset) { state.cursor = null; $("runs").tBodies[0].replaceChildren(); }
  const page = await getJSON(listQuery());
  page.items.forEach((r) => upsertRun(r, false));
  state.cursor = page.next_cursor;
  $("more").hidden = !page.next_cursor;
  $("runs-empty").hidden = $("runs").tBodies[0].rows.length > 0;
}

async function loadWorkflows() {
  const { items } = await getJSON("/workflows");
  $("workflows").replaceChildren(...items.map((w) => el("div", { class: "card" },
    el("h3", {}, w.workflow),
    el("div", { class: "counts" },
      // Counted statuses only: `interrupted` is read off the leases, per run, not counted.
      ...vocab.statuses.filter((s) => s in w).map((s) => el("span", {}, el("b", {}, w[s]), " " + s)),
      el("span", {}, "p50 ", el("b", {}, fmtDur(w.duration_p50_s) || "–")),
      el("span", {}, "p95 ", el("b", {}, fmtDur(w.duration_p95_s) || "–"))))));
}

async function loadHotspots() {
  const { items } = await getJSON("/hotspots?limit=25");
  const rows = items.filter((h) => h.interruptions + h.failures + h.retries + h.invalidated > 0);
  $("hotspots").tBodies[0].replaceChildren(...rows.map((h) => el("tr", {},
    el("td", {}, h.workflow + " / ", el("span", { class: "mono" }, h.step_name)),
    el("td", { class: "num" }, h.attempts), el("td", { class: "num" }, h.failures),
    el("td", { class: "num" }, h.preemptions), el("td", { class: "num" }, h.crashes),
    el("td", { class: "num" }, h.invalidated))));
  $("hotspots-empty").hidden = rows.length > 0;
}

let statsTimer = null;
function refreshStatsSoon() {
  if (statsTimer) return;
  statsTimer = setTimeout(() => { statsTimer = null; loadWorkflows().catch(() => {}); loadHotspots().catch(() => {}); }, 1000);
}

function openListStream() {
  closeStreams();
  state.source = new EventStream("/stream", {
    open: () => setLive(true, "live"),
    error: () => setLive(false, "reconnecting"),
    run: (data) => { upsertRun(JSON.parse(data), true); refreshStatsSoon(); },
  });
}

async function showList() {
  $("run-view").hidden = true; $("login-view").hidden = true; $("list-view").hidden = false;
  document.title = "Stepstone · runs";
  await Promise.all([loadRuns(true), loadWorkflows(), loadHotspots()]).catch((e) => setLive(false, e.message));
  openListStream();
}

// -- one run ----------------------------------------------------------------------------------
// A run's page holds a window of its events, never the whole run: the newest page, pages
// further back on demand, new events as they come (the oldest dropped past EVENTS_KEEP).
// Each load is one request per panel, whatever the run's size.
const NEWEST = Number.MAX_SAFE_INTEGER;  // ?before= this: the run's newest page
const EVENTS_PAGE = 200, EVENTS_KEEP = 2000, CHECKPOINTS_PAGE = 100;
const runView = { events: [], cursor: null, run: null, olderLeft: false, checkpoints: [] };

function fact(label, value) { return el("div", {}, el("dt", {}, label), el("dd", {}, value ?? "")); }

function runLink(id) { return el("a", { href: "#/runs/" + id, class: "mono" }, String(id).slice(0, 8)); }

function renderRun(run) {
  runView.run = run;
  // Links (parent, children) come with the run route's first read; updates keep them.
  if (run.children !== undefined) runView.links = { parent: run.parent_run_id, children: run.children };
  const links = runView.links || { parent: null, children: [] };
  $("r-status").className = "pill " + run.status; $("r-status").textContent = run.status;
  $("r-title").textContent = run.workflow + " v" + run.workflow_version;
  $("r-id").textContent = run.run_id;
  const p = progressOf(run);
  $("r-bar").parentElement.className = "progress big " + run.status;
  $("r-bar").style.width = (p.frac * 100).toFixed(1) + "%";
  $("r-bar-text").textContent = p.text;
  $("r-bar").parentElement.title = p.title;
  $("r-facts").replaceChildren(
    fact("Current step", run.current_step ? `${run.current_step} (${run.current_step_status})` : "–"),
    fact("Steps done / started", `${run.steps_done} / ${run.steps_started}`),
    fact("Steps expected", run.steps_expected ? `${run.steps_expected} (latest completed run of v${run.workflow_version})` : "unknown (none completed yet)"),
    fact("Step progress", run.progress ? `${run.progress.done ?? 0} / ${run.progress.total}` : "–"),
    fact("Attempts", run.attempts), fact("Retries", run.retries),
    fact("Preemptions", run.preemptions), fact("Crashes", run.crashes),
    fact("Worker", run.worker), fact("Held by", run.held_by || "nobody now"),
    ...(run.last_seen_at ? [fact("Last seen alive", fmtTime(run.last_seen_at))] : []),
    fact("Started", fmtTime(run.started_at)),
    fact("Updated", fmtTime(run.updated_at)), fact("Finished", fmtTime(run.finished_at) || "–"),
    fact("Log position", run.last_position),
    ...(links.parent ? [fact("Parent run", runLink(links.parent))] : []),
    ...(links.children.length ? [fact("Child runs", el("span", {}, ...links.children.flatMap((c, i) => i ? [" ", runLink(c)] : [runLink(c)])))] : []));
  const err = run.last_error;
  $("r-error").hidden = !err;
  if (err) $("r-error").textContent = `${err.type}: ${err.message}` + (err.step ? `  (step ${err.step})` : "");
  document.title = `Stepstone · ${run.workflow} · ${run.status}`;
}

function renderTimeline(attempts) {
  const times = attempts.flatMap((a) => [a.started_at, a.ended_at]).filter(Boolean).map((t) => Date.parse(t));
  const now = Date.now();
  const t0 = Math.min(...times, now);
  // Only a running run stretches to now; any other (preempted, parked, waiting, finished)
  // ends at its last event.
  const run = runView.run;
  const live = run && run.status === "running";
  const last = run && run.updated_at ? Date.parse(run.updated_at) : 0;
  const t1 = Math.max(...times, live ? now : last, t0 + 1);
  $("t-span").textContent = `${attempts.length} attempts over ${fmtDur((t1 - t0) / 1000)}`;
  $("timeline").replaceChildren(...attempts.map((a) => {
    const s = Date.parse(a.started_at || t0);
    const end = a.ended_at ? Date.parse(a.ended_at) : (a.outcome === "running" ? (live ? now : Math.max(s, last)) : s);
    const seg = el("div", { class: "tl-seg " + (a.outcome || ""), title: `${a.step_key} attempt ${a.attempt}: ${a.outcome}` + (a.error_message ? ` – ${a.error_type}: ${a.error_message}` : "") });
    seg.style.left = ((s - t0) / (t1 - t0) * 100).toFixed(2) + "%";
    seg.style.width = (Math.max(0, end - s) / (t1 - t0) * 100).toFixed(2) + "%";
    return el("div", { class: "tl-row" },
      el("div", { class: "tl-label mono" }, `${a.step_key}`, a.attempt > 1 ? el("span", { class: "muted" }, ` #${a.attempt}`) : null),
      el("div", { class: "tl-track" }, seg),
      el("div", { class: "tl-dur" }, a.outcome === "completed" ? fmtDur(a.duration_s) : a.outcome));
  }));
}

function details(fields) {
  const text = Object.entries(fields).filter(([, v]) => v !== null).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ");
  return text.length > 200 ? text.slice(0, 197) + "..." : text;
}

// A checkpoint's version, source and effect count; a validation's outcome.
function checkpointChecks(e) {
  const f = e.fields;
  if (f.outcome) {
    const from = f.resumed_from && f.resumed_from !== f.sequence ? ` from #${f.resumed_from}` : "";
    const missing = f.missing_count ? ` · ${f.missing_count} missing` : "";
    return `resume: ${f.outcome}${from} · v${f.checkpoint_version}→v${f.step_version}${missing}`;
  }
  const parts = [`v${f.version ?? 1}`];
  if (f.source) parts.push(`source ${f.source.kind} ${f.source.value}`);
  if (f.effects && f.effects.length) parts.push(`${f.effects.length} effects`);
  return parts.join(" · ");
}

function renderEvents() {
  const evs = runView.events;
  $("events").tBodies[0].replaceChildren(...evs.slice().reverse().map((e) => el("tr", {},
    el("td", { class: "num" }, e.position), el("td", {}, fmtTime(e.timestamp)),
    el("td", {}, e.event_type), el("td", { class: "mono", title: details(e.fields) }, details(e.fields)))));
  $("older-events").hidden = !runView.olderLeft;
  // Checkpoints, and what each resume made of the last one (CheckpointValidated).
  const cps = runView.checkpoints;
  $("checkpoints").tBodies[0].replaceChildren(...cps.slice().reverse().map((e) => el("tr", {},
    el("td", { class: "num" }, e.position), el("td", {}, fmtTime(e.timestamp)),
    el("td", { class: "mono" }, e.fields.step_key), el("td", { class: "num" }, e.fields.attempt),
    el("td", { class: "num" }, e.fields.sequence),
    el("td", {}, e.fields.progress_total ? `${e.fields.progress_done ?? 0} / ${e.fields.progress_total}` : ""),
    el("td", { class: "mono" }, checkpointChecks(e)),
    el("td", { class: "mono" }, e.fields.outcome ? (e.fields.reason || e.fields.outcome) : JSON.stringify(e.fields.state)))));
  $("checkpoints-empty").hidden = cps.length > 0;
}

// The timeline from the step-attempts view (one page), the newest events and checkpoints from
// the log (one page each); then only what is new.
async function loadRunDetails(id) {
  const [steps, , cps] = await Promise.all([
    getJSON(`/runs/${id}/steps?limit=1000`),
    loadNewEvents(id),
    getJSON(`/runs/${id}/events?limit=${CHECKPOINTS_PAGE}&before=${NEWEST}&type=StepCheckpointed,CheckpointValidated`),
  ]);
  runView.checkpoints = cps.items;
  renderTimeline(steps.items);
  renderEvents();
}

async function loadNewEvents(id) {
  if (runView.cursor) {
    const page = await getJSON(`/runs/${id}/events?limit=${EVENTS_PAGE}&cursor=${encodeURIComponent(runView.cursor)}`);
    runView.cursor = page.next_cursor;
    if (!page.more) {
      runView.events.push(...page.items);
      if (runView.events.length > EVENTS_KEEP) {
        runView.events.splice(0, runView.events.length - EVENTS_KEEP);
        runView.olderLeft = true;
      }
      return;
    }
  }
  // First load, or more than a page behind: jump to the newest page (older ones on demand).
  const page = await getJSON(`/runs/${id}/events?limit=${EVENTS_PAGE}&before=${NEWEST}`);
  runView.events = page.items;
  runView.olderLeft = page.more;
  runView.cursor = page.next_cursor;
}

async function loadOlderEvents(id) {
  const first = runView.events[0];
  if (!first) return;
  const page = await getJSON(`/runs/${id}/events?limit=${EVENTS_PAGE}&before=${first.version}`);
  runView.events.unshift(...page.items);
  runView.olderLeft = page.more;
  renderEvents();
}

let detailTimer = null;
function refreshDetailsSoon(id) {
  if (detailTimer) return;
  detailTimer = setTimeout(() => {
    detailTimer = null;
    // One load at a time: two in flight would both append the same events.
    runView.busy = (runView.busy || Promise.resolve()).then(() => loadRunDetails(id)).catch(() => {});
  }, 300);
}

async function showRun(id) {
  $("list-view").hidden = true; $("login-view").hidden = true; $("run-view").hidden = false;
  Object.assign(runView, { events: [], cursor: null, run: null, olderLeft: false, checkpoints: [], links: null });
  closeStreams();
  try {
    renderRun(await getJSON(`/runs/${id}`));
    await loadRunDetails(id);
  } catch (e) { $("r-title").textContent = e.message; return; }
  const src = new EventStream(`/runs/${id}/stream`, {
    open: () => setLive(true, "live"),
    error: () => setLive(false, "reconnecting"),
    run: (data) => { renderRun(JSON.parse(data)); refreshDetailsSoon(id); },
    end: () => { src.close(); setLive(true, "run finished"); refreshDetailsSoon(id); },
  });
  state.runSource = src;
}

// Liveness (docs/controlling-runs.md): a run whose process died records nothing, so no event
// would ever move its row from running to interrupted. Rows in a status that only a live
// lease makes true (the vocabulary's `leased`) are read again every few seconds: at most one
// page's worth of requests. (An interrupted run that resumes records an event: the stream.)
async function refreshLiveness() {
  if (!$("run-view").hidden && runView.run && vocab.leased.has(runView.run.status)) {
    renderRun(await getJSON(`/runs/${runView.run.run_id}?links=false`));
    return;
  }
  if ($("list-view").hidden) return;
  const rows = [...$("runs").tBodies[0].rows].filter((r) => vocab.leased.has(r.dataset.status));
  for (const row of rows) upsertRun(await getJSON(`/runs/${row.dataset.run}?links=false`), false);
}

function closeStreams() {
  for (const key of ["source", "runSource"]) { if (state[key]) { state[key].close(); state[key] = null; } }
}

function route() {
  const m = location.hash.match(/^#\/runs\/([0-9a-fA-F-]{36})$/);
  if (m) showRun(m[1]); else showList();
}

document.addEventListener("DOMContentLoaded", () => {
  $("f-status").addEventListener("change", () => { state.filters.status = $("f-status").value; loadRuns(true); });
  $("f-workflow").addEventListener("change", () => { state.filters.workflow = $("f-workflow").value.trim(); loadRuns(true); });
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    $("token").value = "";
    route();
  });
  $("more").addEventListener("click", () => loadRuns(false));
  $("older-events").addEventListener("click", () => {
    const m = location.hash.match(/^#\/runs\/([0-9a-fA-F-]{36})$/);
    if (m) runView.busy = (runView.busy || Promise.resolve()).then(() => loadOlderEvents(m[1])).catch(() => {});
  });
  window.addEventListener("hashchange", route);
  refreshHealth(); setInterval(refreshHealth, 5000);
  setInterval(() => refreshLiveness().catch(() => {}), 5000);
  // The statuses first (the list and its filter are built from them); without them the runs
  // still show, with no status filter.
  loadVocabulary().catch((e) => setLive(false, "vocabulary: " + e.message)).then(route);
});
