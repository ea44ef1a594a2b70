// cutover console: vanilla JS, no build step, no third-party code.
//
// Reads /healthz (no token; /admin/health once unlocked) and /admin/overview (bearer
// token) and renders them; path segments are sent through encodeURIComponent; the
// actions post to the admin API, which applies the same gate as the CLI. The token is
// kept in sessionStorage (this tab only), sent only in the Authorization header, and
// never written into the page. Every value from the server is inserted as text
// (textContent), never as HTML.
"use strict";

const TOKEN_KEY = "cutover.adminToken";
const NAME_KEY = "cutover.operator";
const REFRESH_MS = 5000;
const HEALTH_MS = 15000;
const DEPENDENCY_LABELS = { pubsub: "Pub/Sub", sql: "SQL store", rethinkdb: "RethinkDB", unleash: "Unleash" };
const STAGE_HELP = {
  old: "reads RethinkDB",
  shadow: "reads RethinkDB, compares the SQL store in the background",
  new: "reads the SQL store",
};

const $ = (id) => document.getElementById(id);

// -- small DOM helpers ----------------------------------------------------------------
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "data") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmtInt(n) {
  return n === null || n === undefined ? "-" : Number(n).toLocaleString("en-US");
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "unknown";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function ago(iso) {
  if (!iso) return "-";
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  if (Number.isNaN(seconds)) return iso;
  return seconds < 5 ? "just now" : `${fmtDuration(seconds)} ago`;
}

function timeCell(iso) {
  return el("time", { datetime: iso || "", title: iso || "", text: ago(iso) });
}

function badge(text, kind, title) {
  return el("span", { class: `badge ${kind || ""}`, text, title });
}

// -- the API --------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, error, reason) {
    super(reason || `HTTP ${status}`);
    this.status = status;
    this.error = error;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
  });
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, data && data.error, data && data.reason);
  }
  return data;
}

function operator() {
  return sessionStorage.getItem(NAME_KEY) || "console";
}

// -- banner ---------------------------------------------------------------------------
let bannerTimer = null;

function notify(message, kind) {
  const banner = $("banner");
  banner.replaceChildren(el("span", { text: message }),
    el("button", { type: "button", class: "ghost close", "aria-label": "dismiss", text: "\u00d7",
      onclick: () => { banner.hidden = true; } }));
  banner.className = `banner ${kind || "info"}`;
  banner.hidden = false;
  clearTimeout(bannerTimer);
  if (kind !== "error") bannerTimer = setTimeout(() => { banner.hidden = true; }, 8000);
}

// -- confirmation dialog --------------------------------------------------------------
function confirmAction({ title, text, typed, okLabel, danger }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-reason").value = "";
  $("confirm-typed").value = "";
  $("confirm-typed-label").hidden = !typed;
  $("confirm-typed-hint").textContent = typed ? `Type ${typed} to confirm` : "";
  const ok = $("confirm-ok");
  ok.textContent = okLabel || "Confirm";
  ok.className = danger ? "danger" : "primary";
  return new Promise((resolve) => {
    const cleanup = (result) => {
      $("confirm-form").removeEventListener("submit", onSubmit);
      $("confirm-cancel").removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      if (dialog.open) dialog.close();
      resolve(result);
    };
    const onSubmit = (event) => {
      event.preventDefault();
      if (typed && $("confirm-typed").value !== typed) {
        $("confirm-typed").setCustomValidity(`Type ${typed} exactly`);
        $("confirm-typed").reportValidity();
        return;
      }
      cleanup({ reason: $("confirm-reason").value.trim() || null });
    };
    const onCancel = (event) => {
      if (event) event.preventDefault();
      cleanup(null);
    };
    $("confirm-typed").oninput = () => $("confirm-typed").setCustomValidity("");
    $("confirm-form").addEventListener("submit", onSubmit);
    $("confirm-cancel").addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    (typed ? $("confirm-typed") : $("confirm-reason")).focus();
  });
}

async function act(confirmation, method, path, body, success) {
  const answer = await confirmAction(confirmation);
  if (!answer) return;
  try {
    const result = await api(method, path, { ...body, reason: answer.reason, actor: operator() });
    notify(success(result), "ok");
  } catch (err) {
    if (err.status === 401) return lock("The admin token was refused; enter it again.");
    notify(`${confirmation.title}: refused. ${err.message}`, "error");
  }
  await refresh();
}

// -- actions --------------------------------------------------------------------------
function moveStage(entity, client, current, stage) {
  if (stage === current) return notify(`${client} already reads ${entity} at ${stage}.`, "info");
  const gate = stage === "new" ? " The cutover gate checks the backfill and the latest verification first." : "";
  return act(
    { title: `Move ${client} to ${stage}`, okLabel: `Move to ${stage}`,
      text: `${client}'s ${entity} reads go from ${current} to ${stage} (${STAGE_HELP[stage]}).${gate}` },
    "POST", `/admin/flags/${encodeURIComponent(entity)}/stage`, { client, stage },
    (r) => (r.changed ? `${entity}/${client}: ${r.change.from_stage} \u2192 ${r.change.to_stage}` : `${entity}/${client} already at ${stage}`),
  );
}

function rollback(entity, client, current) {
  return act(
    { title: `Roll back ${client}`, okLabel: "Roll back", danger: true,
      text: `${client}'s ${entity} reads go from ${current} back to old (RethinkDB) now. No gate and no store is needed.` },
    "POST", `/admin/flags/${encodeURIComponent(entity)}/rollback`, { client },
    (r) => (r.changed ? `${entity}/${client}: rolled back to old` : `${entity}/${client} was already at old`),
  );
}

function killSwitch(entity) {
  return act(
    { title: `Kill switch: ${entity}`, okLabel: "Send every client back to old", danger: true, typed: entity,
      text: `EVERY client's ${entity} reads go back to RethinkDB at once.` },
    "POST", `/admin/flags/${encodeURIComponent(entity)}/kill`, { confirm: entity },
    (r) => `${entity}: kill switch applied; ${r.clients.length} client(s) back to old`,
  );
}

function pauseBackfill(entity, paused) {
  const verb = paused ? "resume" : "pause";
  return act(
    { title: `${paused ? "Resume" : "Pause"} the ${entity} backfill`, okLabel: paused ? "Resume" : "Pause",
      text: paused ? `Paused workers of ${entity} go on copying.` : `Every worker of ${entity} stops after its current batch and keeps its place.` },
    "POST", `/admin/backfill/${encodeURIComponent(entity)}/${verb}`, {},
    (r) => `backfill ${r.entity}: ${r.paused ? "paused" : "resumed"}`,
  );
}

function replay(name, size) {
  return act(
    { title: `Replay failures of ${name}`, okLabel: "Replay",
      text: `The ${fmtInt(size)} logged failure(s) of ${name} go through its sink again; the version rules keep newer data.` },
    "POST", `/admin/subscriptions/${encodeURIComponent(name)}/replay`, {},
    (r) => `${name}: replay done (${r.summary}); ${fmtInt(r.open)} still open`,
  );
}

// -- rendering ------------------------------------------------------------------------
function stageBadge(stage, changedOutside) {
  if (!stage) return badge("unknown", "stage-unknown", "the flag backend could not be read");
  const node = badge(stage, `stage stage-${stage}`, STAGE_HELP[stage]);
  node.dataset.testid = "stage";
  return changedOutside
    ? el("span", {}, node, badge("changed outside cutover", "warn", "the flags differ from the last audited change"))
    : node;
}

function verificationCell(v) {
  if (!v) return el("span", { class: "muted", text: "never verified" });
  const verdict = v.clean
    ? badge("clean", "good")
    : badge(`${fmtInt(v.differences)} difference${v.differences === 1 ? "" : "s"}`, "bad");
  return el("span", { class: "stack" }, verdict,
    el("small", { class: "muted" }, `${v.mode || ""} \u00b7 `, timeCell(v.at)));
}

function backfillCell(b) {
  const kind = { verified: "good", copied: "info", copying: "warn", not_started: "muted-badge" }[b.state] || "";
  const rows = b.rows_source ? `${fmtInt(b.rows_copied)} / ${fmtInt(b.rows_source)} rows` : `${fmtInt(b.rows_copied)} rows`;
  return el("span", { class: "stack" }, badge(b.state.replace("_", " "), kind), el("small", { class: "muted", text: rows }));
}

function lastChangeCell(change) {
  if (!change) return el("span", { class: "muted", text: "-" });
  return el("span", { class: "stack" },
    el("span", {}, timeCell(change.at), ` by ${change.actor}`),
    change.reason ? el("small", { class: "muted", text: change.reason }) : null);
}

function actionsCell(entity, row) {
  const select = el("select", { "aria-label": `stage for ${row.client}`, class: "stage-select" },
    ["old", "shadow", "new"].map((s) => el("option", { value: s, text: s, selected: s === row.stage })));
  const move = el("button", { type: "button", class: "small", text: "Move",
    onclick: () => moveStage(entity, row.client, row.stage, select.value) });
  const back = el("button", { type: "button", class: "small danger-outline", text: "Roll back",
    disabled: row.stage === "old" || !row.stage,
    onclick: () => rollback(entity, row.client, row.stage) });
  return el("span", { class: "actions" }, select, move, back);
}

function progressBlock(entity, backfill) {
  const run = backfill.latest_run;
  const paused = !!backfill.paused;
  const toggle = el("button", { type: "button", class: "small", text: paused ? "Resume" : "Pause",
    "data-action": paused ? "resume" : "pause", onclick: () => pauseBackfill(entity, paused) });
  if (!run) {
    return el("div", { class: "metric" },
      el("div", { class: "metric-head" }, el("h4", { text: "Backfill" }), paused ? badge("paused", "warn") : null, toggle),
      el("p", { class: "muted", text: "no run yet" }));
  }
  const state = paused && run.state !== "done" ? "paused" : run.state;
  const kind = { done: "good", running: "info", paused: "warn", stalled: "bad", pending: "muted-badge" }[state];
  const fill = el("span", {});
  fill.style.width = `${Math.min(100, run.percent)}%`; // CSSOM: allowed by the CSP, unlike style=""
  const bar = el("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
    "aria-valuenow": run.percent }, fill);
  const rate = run.rate_rows_s === null ? "rate unknown" : `${fmtInt(Math.round(run.rate_rows_s))} rows/s`;
  const eta = state === "done" ? "complete" : `ETA ${fmtDuration(run.eta_s)}`;
  return el("div", { class: "metric" },
    el("div", { class: "metric-head" }, el("h4", { text: "Backfill" }), badge(state, kind), toggle),
    bar,
    el("p", { class: "figures" },
      el("strong", { text: `${run.percent}%` }),
      ` \u00b7 ${fmtInt(run.rows_done)} / ${fmtInt(run.rows_total)} rows \u00b7 ${rate} \u00b7 ${eta}`),
    el("p", { class: "muted small-text" },
      `run ${run.run_id} \u00b7 ${run.partitions_done}/${run.partitions} partitions` +
      (state === "done" ? "" : ` \u00b7 ${run.workers} worker(s)`) +
      (run.bad_docs ? ` \u00b7 ${fmtInt(run.bad_docs)} bad documents` : "")));
}

function fmtRate(rate) {
  return rate === null || rate === undefined ? "-" : `${(rate * 100).toFixed(2)}%`;
}

function fmtWindow(seconds) {
  if (!seconds) return "";
  return seconds % 86400 === 0 ? `${seconds / 86400} d` : seconds % 3600 === 0 ? `${seconds / 3600} h` : fmtDuration(seconds);
}

// The entity's dark reads over the gate's window, from every API process (SQL store).
function shadowBlock(shadow, clients) {
  const none = shadow.rate === null || shadow.rate === undefined;
  const blocked = clients.filter((row) => row.shadow_evidence && !row.shadow_evidence.ok).length;
  const verdict = clients.length
    ? badge(blocked ? `${fmtInt(blocked)} of ${fmtInt(clients.length)} clients short of the gate` : "every client passes the gate",
      blocked ? "warn" : "good", "the gate for new needs enough comparisons and a low mismatch rate per client")
    : null;
  return el("div", { class: "metric", data: { testid: "shadow-block" } },
    el("div", { class: "metric-head" }, el("h4", { text: "Dark reads" }), verdict),
    none
      ? el("p", { class: "figures" }, el("strong", { text: "no comparisons yet" }))
      : el("p", { class: "figures" }, el("strong", { text: fmtRate(shadow.rate) }), " mismatch rate"),
    el("p", { class: "muted small-text",
      text: `${fmtInt(shadow.mismatched_comparisons)} of ${fmtInt(shadow.comparisons)} comparisons mismatched` +
        `${shadow.errors ? `, ${fmtInt(shadow.errors)} errors` : ""} (${shadow.scope || "unavailable"})` }));
}

// One client's shadow evidence: mismatched / compared, the rate, and the gate's verdict.
function evidenceCell(ev) {
  if (!ev) return el("span", { class: "muted", text: "-" });
  const figures = `${fmtInt(ev.mismatches)} / ${fmtInt(ev.comparisons)}`;
  return el("span", { class: "stack", data: { testid: "evidence" } },
    el("span", {}, badge(ev.ok ? "passes" : "short", ev.ok ? "good" : "warn", ev.reason), ` ${figures}`),
    el("small", { class: "muted", text: `rate ${fmtRate(ev.rate)}${ev.errors ? ` \u00b7 ${fmtInt(ev.errors)} errors` : ""}` }));
}

function renderEntity(entity) {
  const name = entity.entity;
  const kill = el("button", { type: "button", class: "danger small", text: "Kill switch",
    title: "send every client back to old", onclick: () => killSwitch(name) });
  const header = el("div", { class: "card-head" },
    el("h3", { text: name }),
    el("span", { class: "muted backend", text: entity.flags_backend ? `flags: ${entity.flags_backend}` : "", title: entity.flags_backend }),
    el("span", { class: "spacer" }), kill);
  const problems = [
    ...entity.warnings.map((w) => el("p", { class: "error", text: `WARNING: ${w}` })),
    ...Object.entries(entity.errors || {}).map(([part, reason]) => el("p", { class: "error", text: `${part} unavailable: ${reason}` })),
  ];
  const metrics = el("div", { class: "metrics" }, progressBlock(name, entity.backfill), shadowBlock(entity.shadow, entity.clients));
  const span = fmtWindow(entity.shadow.window_s);
  const rows = entity.clients.map((row) => el("tr", { data: { entity: name, client: row.client } },
    el("td", { class: "client", text: row.client }),
    el("td", {}, stageBadge(row.stage, row.changed_outside)),
    el("td", {}, backfillCell(row.backfill)),
    el("td", {}, verificationCell(row.verification)),
    el("td", { class: "num" }, row.shadow_mismatches
      ? badge(fmtInt(row.shadow_mismatches), "bad", `recorded mismatches, last ${span}`)
      : el("span", { class: "muted", text: "0" })),
    el("td", { class: "evidence" }, evidenceCell(row.shadow_evidence)),
    el("td", {}, lastChangeCell(row.last_change)),
    el("td", {}, actionsCell(name, row))));
  const table = rows.length
    ? el("table", { class: "clients" },
      el("thead", {}, el("tr", {}, ["Client", "Stage", "Backfill", "Last verification", `Mismatches (${span})`,
        `Shadow evidence (${span})`, "Last change", "Actions"]
        .map((h) => el("th", { text: h, class: h.startsWith("Mismatches") ? "num" : null })))),
      el("tbody", {}, rows))
    : el("p", { class: "muted", text: "no clients in either store yet" });
  return el("article", { class: "card entity", data: { entity: name } }, header, problems, metrics, table);
}

const SUB_STATES = {
  ok: ["good", "exists on the server as declared"],
  drift: ["warn", "exists, but the server's settings differ from the declaration"],
  missing: ["bad", "declared but not on the server: cutover subs add NAME"],
  undeclared: ["warn", "on the server but not declared in cutover.toml"],
  unknown: ["muted-badge", "Pub/Sub could not be asked"],
};

function lagCell(s) {
  if (s.lag_s === null || s.lag_s === undefined) return el("span", { class: "muted", text: "-" });
  return el("span", { class: "stack" },
    el("span", { text: fmtDuration(s.lag_s), title: "newest event's age when its batch was committed" }),
    el("small", { class: "muted", text: `last batch ${ago(s.last_batch_at)}` }));
}

function retentionText(days) {
  if (!days) return "retention not declared";
  const one = (d) => (d ? `${d} d` : "forever");
  return `kept: replayed ${one(days.replayed)}, open ${one(days.open)} (cutover subs failures purge)`;
}

function failureLogCell(log) {
  if (!log || !log.entries) {
    return el("span", { class: "muted", text: "empty", title: retentionText(log && log.retention_days) });
  }
  return el("span", { class: "stack", title: retentionText(log.retention_days) },
    el("span", { text: `${fmtInt(log.entries)} ${log.entries === 1 ? "entry" : "entries"}`,
      title: `${fmtInt(log.open)} open, ${fmtInt(log.replayed)} replayed` }),
    el("small", { class: "muted", text: `oldest ${ago(log.oldest_at)}`, title: log.oldest_at || "" }));
}

async function toggleFailures(name, row) {
  const next = row.nextElementSibling;
  if (next && next.classList.contains("failures-row")) {
    next.remove();
    return;
  }
  const cell = el("td", { colspan: 11 }, el("span", { class: "muted", text: "loading\u2026" }));
  row.after(el("tr", { class: "failures-row" }, cell));
  try {
    const data = await api("GET", `/admin/subscriptions/${encodeURIComponent(name)}/failures?limit=20`);
    cell.replaceChildren(data.failures.length
      ? el("table", { class: "inner" },
        el("thead", {}, el("tr", {}, ["Message", "Attempts", "Last seen", "Error", "Body"].map((h) => el("th", { text: h })))),
        el("tbody", {}, data.failures.map((f) => el("tr", {},
          el("td", { class: "client", text: f.message_id }),
          el("td", { class: "num", text: fmtInt(f.attempts) }),
          el("td", {}, timeCell(f.last_seen)),
          el("td", { class: "detail", text: f.error }),
          el("td", {}, el("code", { class: "body", text: f.data }))))))
      : el("span", { class: "muted", text: "no open failures" }));
  } catch (err) {
    cell.replaceChildren(el("span", { class: "error", text: err.message }));
  }
}

function renderSubscriptions(subs) {
  const box = $("subscriptions");
  if (!subs || !subs.subscriptions) return box.replaceChildren(el("p", { class: "muted", text: "unavailable" }));
  const notes = [
    subs.server_error && el("p", { class: "error", text: `Pub/Sub not reachable (counts are from the SQL store): ${subs.server_error}` }),
    subs.counts_error && el("p", { class: "error", text: `SQL store not reachable (no counts): ${subs.counts_error}` }),
  ];
  const rows = subs.subscriptions.map((s) => {
    const size = s.failure_log_size || 0;
    const [kind, help] = SUB_STATES[s.status] || ["muted-badge", ""];
    const title = s.drift && s.drift.length ? s.drift.join("\n") : help;
    const row = el("tr", { data: { subscription: s.name } },
      el("td", { class: "client", text: s.name }),
      el("td", { text: s.entity || "-" }),
      el("td", { text: s.sink || "-" }),
      el("td", {}, badge(s.status, kind, title)),
      el("td", { class: "num", text: fmtInt(s.applied) }),
      el("td", { class: "num", text: fmtInt(s.stale) }),
      el("td", { class: "num" }, s.failed ? badge(fmtInt(s.failed), "bad") : el("span", { class: "muted", text: "0" })),
      el("td", {}, lagCell(s)),
      el("td", { class: "num", text: s.backlog === null || s.backlog === undefined ? "-" : fmtInt(s.backlog) }),
      el("td", { data: { testid: "failure-log" } }, failureLogCell(s.failure_log)),
      el("td", { class: "actions-cell" }));
    const actions = row.lastChild;
    actions.append(
      el("button", { type: "button", class: "small ghost", text: `Failures (${fmtInt(size)})`,
        disabled: !size, onclick: () => toggleFailures(s.name, row) }),
      el("button", { type: "button", class: "small", text: "Replay",
        disabled: !size, onclick: () => replay(s.name, size) }));
    return row;
  });
  const heads = [["Subscription"], ["Entity"], ["Sink"], ["Status"], ["Applied", "num"], ["Stale", "num"],
    ["Failed", "num"], ["Lag"], ["Backlog", "num"], ["Failure log"], ["Open failures"]];
  box.replaceChildren(...[...notes, el("table", {},
    el("thead", {}, el("tr", {}, heads.map(([h, cls]) => el("th", { text: h, class: cls })))),
    el("tbody", {}, rows))].filter(Boolean));
}

function renderAudit(entries) {
  const box = $("audit");
  if (!entries.length) return box.replaceChildren(el("p", { class: "muted", text: "no changes recorded yet" }));
  box.replaceChildren(el("table", { class: "audit" },
    el("thead", {}, el("tr", {}, ["When", "Area", "Entity", "Subject", "Action", "Actor", "Detail"].map((h) => el("th", { text: h })))),
    el("tbody", {}, entries.map((e) => el("tr", {},
      el("td", {}, timeCell(e.at)),
      el("td", { text: e.area }),
      el("td", { text: e.entity || "" }),
      el("td", { class: "client", text: e.subject || "" }),
      el("td", { text: e.action.replace(" -> ", " \u2192 ") }),
      el("td", { text: e.actor || "" }),
      el("td", { class: "detail", text: e.detail || "" }))))));
}

function render(data) {
  $("errors").replaceChildren(...Object.entries(data.errors || {}).map(([part, reason]) =>
    el("p", { class: "banner error", text: `${part} unavailable: ${reason}` })));
  $("entities").replaceChildren(...data.entities.map(renderEntity));
  renderSubscriptions(data.subscriptions);
  renderAudit(data.audit || []);
  $("refreshed").textContent = `updated ${new Date(data.generated_at).toLocaleTimeString()}`;
}

// -- health chips ---------------------------------------------------------------------
// /healthz (no token) gives each dependency's state only; with the token the console
// asks /admin/health, whose report also names what was checked and why it is down.
async function healthReport() {
  if (sessionStorage.getItem(TOKEN_KEY)) {
    try {
      return await api("GET", "/admin/health");
    } catch (_) {
      // a refused or missing token: fall back to the public states
    }
  }
  const response = await fetch("/healthz", { cache: "no-store", credentials: "omit" });
  return response.json();
}

async function refreshHealth() {
  try {
    const data = await healthReport();
    $("health").replaceChildren(...Object.entries(data.dependencies).map(([name, dep]) =>
      el("span", { class: `chip ${dep.state}`, title: dep.target ? `${dep.target}: ${dep.detail}` : dep.state,
        data: { dependency: name } },
        el("span", { class: "dot" }), `${DEPENDENCY_LABELS[name] || name}`)));
  } catch (err) {
    $("health").replaceChildren(el("span", { class: "chip down", text: "service unreachable" }));
  }
}

// -- session --------------------------------------------------------------------------
let timer = null;

function showLogin(message) {
  $("content").hidden = true;
  $("login").hidden = false;
  $("signout").hidden = true;
  $("refresh").hidden = true;
  $("refreshed").textContent = "";
  $("login-error").textContent = message || "";
  $("token").value = "";
  $("token").focus();
}

function lock(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(timer);
  timer = null;
  showLogin(message);
}

function busy() {
  const active = document.activeElement;
  return $("confirm").open || (active && active.tagName === "SELECT");
}

async function refresh() {
  try {
    render(await api("GET", "/admin/overview"));
    return true;
  } catch (err) {
    if (err.status === 401) lock("The admin token was refused; enter it again.");
    else if (err.status === 503 && err.error === "AdminDisabled") lock(err.message);
    else notify(`Could not load the overview: ${err.message}`, "error");
    return false;
  }
}

async function unlock() {
  if (!(await refresh())) return;
  refreshHealth();
  $("login").hidden = true;
  $("content").hidden = false;
  $("signout").hidden = false;
  $("refresh").hidden = false;
  clearInterval(timer);
  timer = setInterval(() => {
    if (!document.hidden && !busy()) refresh();
  }, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    $("token").value = "";
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    const name = $("operator").value.trim();
    if (name) sessionStorage.setItem(NAME_KEY, name);
    else sessionStorage.removeItem(NAME_KEY);
    await unlock();
  });
  $("signout").addEventListener("click", () => lock("Locked. Enter the token to continue."));
  $("refresh").addEventListener("click", () => refresh());
  refreshHealth();
  setInterval(refreshHealth, HEALTH_MS);
  if (sessionStorage.getItem(TOKEN_KEY)) unlock();
  else showLogin();
});
