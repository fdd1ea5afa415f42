// Nacelle operator console: the pages over the JSON API (/api). Plain DOM, no framework, no build step.
// Pages poll the API: every 2 s while a rollout runs, every 10 s otherwise.
"use strict";

const BASE = document.querySelector('meta[name="nacelle-base"]').content;
const FAST_MS = 2000, SLOW_MS = 10000;
let timer = null, rolloutActive = false, currentPage = null;

// -- DOM helpers (text only: data never becomes markup) ------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const badge = (text, cls) => h("span", {class: `badge ${cls || text}`}, text);
const fmtTime = (iso) => iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "Z") : "-";
const fmtNum = (v, d = 3) => (v === null || v === undefined) ? "-" : (Number.isInteger(v) ? String(v) : Number(v).toFixed(d));
function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 120) return `${s.toFixed(0)} s ago`;
  if (s < 7200) return `${(s / 60).toFixed(0)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}
function table(headers, rows, opts = {}) {
  const head = h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x))));
  if (!rows.length) {
    return h("table", {"data-testid": opts.testid}, head,
      h("tbody", {}, h("tr", {}, h("td", {colspan: headers.length, class: "muted"}, opts.empty || "nothing yet"))));
  }
  return h("table", {"data-testid": opts.testid}, head,
    h("tbody", {}, rows.map((r, i) => {
      const tr = h("tr", {class: opts.onclick ? "clickable" : null, "data-key": opts.keys ? opts.keys[i] : null},
        r.map((c) => h("td", {class: typeof c === "number" ? "num" : null}, c)));
      if (opts.onclick) tr.addEventListener("click", () => opts.onclick(i));
      return tr;
    })));
}
const link = (path, text) => h("a", {href: BASE + path, onclick: (e) => { e.preventDefault(); go(path); }}, text);
const turbineLink = (t) => t ? link(`/turbines/${encodeURIComponent(t)}`, t) : "-";

// -- API ---------------------------------------------------------------------------------------------
async function api(path, body) {
  const init = {credentials: "same-origin", headers: {"Accept": "application/json"}};
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.headers["X-Nacelle-Console"] = "1";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(BASE + path, init);
  const doc = await resp.json().catch(() => ({error: {message: `HTTP ${resp.status}`}}));
  if (!resp.ok) {
    throw new Error((doc.error && doc.error.message) || `HTTP ${resp.status}`);
  }
  return doc;
}
function setStatus(text, bad) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = "status" + (bad ? " error" : "");
}

// -- routing and polling -----------------------------------------------------------------------------
const PAGES = {models: modelsPage, fleet: fleetPage, alerts: alertsPage, data: dataPage, turbines: turbinePage};
function route() {
  const path = location.pathname.slice(BASE.length) || "/";
  const parts = path.split("/").filter(Boolean);
  try {
    return {name: parts[0] || "models", arg: parts[1] ? decodeURIComponent(parts[1]) : null};
  } catch (err) {  // URIError: broken percent-encoding in the address
    return {name: parts[0], arg: null, bad: parts[1]};
  }
}
function go(path) { history.pushState({}, "", BASE + path); start(); }
window.addEventListener("popstate", start);

function start() {
  const r = route();
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === r.name));
  document.querySelectorAll("nav a").forEach((a) => { a.onclick = (e) => { e.preventDefault(); go("/" + a.dataset.page); }; });
  const page = PAGES[r.name] || modelsPage;
  const main = document.getElementById("main");
  main.replaceChildren();
  if (r.bad !== undefined) {
    clearTimeout(timer);
    currentPage = null;
    main.append(h("p", {class: "error", role: "alert", "data-testid": "bad-address"},
      `"${r.bad}" in the address is not valid percent-encoding: nothing to show`));
    setStatus("bad address", true);
    return;
  }
  currentPage = page(main, r.arg);
  refresh();
}
async function refresh() {
  clearTimeout(timer);
  const page = currentPage;
  try {
    // the rollout state (it sets the polling pace) and the page's own data, fetched side by side
    const deployments = api("/api/fleet/deployments");
    deployments.catch(() => {});
    await page.refresh(deployments);
    rolloutActive = (await deployments).rollout_active;
    const every = rolloutActive ? FAST_MS : SLOW_MS;
    setStatus(`updated ${new Date().toLocaleTimeString()} · ${rolloutActive ? "rollout running: " : ""}refresh every ${every / 1000} s`);
  } catch (err) {
    setStatus(`refresh failed: ${err.message}`, true);
  }
  if (page === currentPage) timer = setTimeout(refresh, rolloutActive ? FAST_MS : SLOW_MS);
}
function region(parent, testid) { const el = h("div", {"data-testid": testid}); parent.append(el); return el; }
function actionForm(fields, label, onsubmit, cls) {
  const msg = h("div", {class: "error", role: "alert"});
  const button = h("button", {type: "submit", class: cls || "primary"}, label);
  const form = h("form", {class: "inline"}, fields, button, msg);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    msg.textContent = "";
    button.disabled = true;
    try { await onsubmit(); await refresh(); } catch (err) { msg.textContent = err.message; } finally { button.disabled = false; }
  });
  return form;
}

// -- Models ------------------------------------------------------------------------------------------
function modelsPage(main) {
  main.append(h("h1", {}, "Models"));
  const filter = h("select", {"data-testid": "model-status-filter", onchange: () => refresh()},
    ["", "PendingManualApproval", "Approved", "Rejected"].map((s) => h("option", {value: s}, s || "every status")));
  main.append(h("div", {class: "filters"}, "Show ", filter));
  const list = region(main, "models-table");
  const detail = region(main, "model-detail");
  let selected = null, shown = 0;
  async function showDetail(version) {
    const mine = ++shown;  // a slower, older render must not replace a newer one
    selected = version;
    const m = await api(`/api/models/${version}`);
    const reason = h("textarea", {name: "reason", placeholder: "reason (recorded in the approval history)", "data-testid": "reason"});
    const override = h("input", {type: "checkbox", name: "override_gate", "data-testid": "override-gate"});
    const decide = (what) => async () => {
      const r = await api(`/api/models/${version}/${what}`, {reason: reason.value, override_gate: override.checked});
      await showDetail(r.model.version);
    };
    const others = h("select", {"data-testid": "compare-with"}, h("option", {value: ""}, "compare with…"));
    const compareOut = h("div", {});
    others.addEventListener("change", async () => {
      if (!others.value) return compareOut.replaceChildren();
      const c = await api(`/api/models/${version}/compare/${others.value}`);
      compareOut.replaceChildren(table(["metric", `v${c.a.version}`, `v${c.b.version}`, "b − a"],
        c.metrics.map((r) => [r.metric, r.a, r.b, r.delta === null ? "-" : Number(r.delta.toFixed(4))])));
    });
    (await api("/api/models?limit=500")).items.filter((x) => x.version !== version)
      .forEach((x) => others.append(h("option", {value: x.version}, `v${x.version}`)));
    if (mine !== shown) return;
    const gate = m.gate || {};
    detail.replaceChildren(h("section", {class: "card"},
      h("h2", {}, `v${m.version} `, badge(m.status), m.champion ? badge("champion", "ok") : null, m.failed ? badge("failed", "bad") : null),
      h("div", {class: "grid"},
        h("div", {}, h("h2", {}, "Held-out metrics"), table(["metric", "this version", "champion on the same data"],
          Object.keys(m.metrics).map((k) => [k, m.metrics[k], m.champion_metrics[k] ?? "-"]))),
        h("div", {}, h("h2", {}, "Quality gate"), h("dl", {class: "kv"},
          h("dt", {}, "verdict"), h("dd", {"data-testid": "gate-verdict"}, gate.verdict || "-"),
          h("dt", {}, "reasons"), h("dd", {}, gate.reasons.length ? h("ul", {}, gate.reasons.map((r) => h("li", {}, r))) : "-"),
          h("dt", {}, "override"), h("dd", {}, gate.override || "-"),
          h("dt", {}, "deployed"), h("dd", {"data-testid": "deployed"}, m.where),
          h("dt", {}, "chosen family"), h("dd", {}, m.family.chosen || "-"),
          h("dt", {}, "candidates"), h("dd", {}, m.family.candidates.join(" · ") || "-"),
          ...Object.entries(m.lineage).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v || "-")])))),
      h("h2", {}, "Decision"),
      reason,
      actionForm([gate.refused ? h("label", {}, override, " override the quality gate (recorded)") : null],
        "Approve", decide("approve")),
      actionForm([], "Reject", decide("reject"), "danger"),
      h("h2", {}, "Compare"), others, compareOut,
      h("h2", {}, "Approval history"),
      table(["at", "status", "by", "reason"], (m.history || []).map((x) => [fmtTime(x.at), x.status, x.actor, x.reason]),
        {testid: "history"})));
  }
  return {
    async refresh() {
      const q = filter.value ? `?status=${filter.value}` : "";
      const doc = await api(`/api/models${q}`);
      list.replaceChildren(table(["version", "status", "gate", "deployed", "champion", "event F1", "false alarms/day", "family", "created"],
        doc.items.map((m) => [`v${m.version}`, badge(m.status), m.gate.verdict || "-", m.where, m.champion ? "★" : "",
          m.metrics.event_f1 ?? "-", m.metrics.false_alarms_per_turbine_day ?? "-", m.family.chosen || "-", fmtTime(m.created_at)]),
        {onclick: (i) => showDetail(doc.items[i].version), keys: doc.items.map((m) => `v${m.version}`), empty: "no model versions yet"}));
      if (selected === null && doc.items.length) {
        const pending = doc.items.find((m) => m.status === "PendingManualApproval");
        await showDetail((pending || doc.items[0]).version);
      } else if (selected !== null && !detail.contains(document.activeElement)) {
        await showDetail(selected);
      }
    },
  };
}

// -- Fleet -------------------------------------------------------------------------------------------
// The signal source as the device's health last reported it (shared/source_status.py): ok, down or stale since when.
function sourceCell(s) {
  if (!s) return "-";
  const cls = {ok: "ok", finished: "ok", down: "bad", stale: "warn"}[s.status] || "";
  const since = s.status === "down" || s.status === "stale" ? (s.since ? ` since ${fmtTime(s.since)}` : " (no value yet)") : "";
  return h("span", {"data-testid": "source", title: [s.source, s.state, s.last_error].filter(Boolean).join(" · ")},
    badge(s.status, cls), since);
}

function fleetPage(main) {
  main.append(h("h1", {}, "Fleet"));
  const summary = region(main, "fleet-summary");
  const devices = region(main, "devices");
  main.append(h("h2", {}, "Rollouts"));
  const rollouts = region(main, "rollouts");
  main.append(h("h2", {}, "Deployments"));
  const deployments = region(main, "deployments");
  const version = h("input", {name: "version", placeholder: "version, e.g. 1", size: 10, "data-testid": "rollback-version"});
  main.append(h("h2", {}, "Roll back"), h("p", {class: "muted"},
    "Deploys an earlier approved version to both thing groups at once."),
  actionForm([version], "Roll back", () => api("/api/fleet/rollback", {version: version.value}), "danger"));
  const cancelMsg = h("div", {class: "error", role: "alert"});
  // Cancelling an active deployment stops the rollout waiting on it (its version is not marked failed).
  const cancelButton = (d) => h("button", {type: "button", class: "danger", "data-testid": "cancel-deployment",
    onclick: async (e) => {
      cancelMsg.textContent = "";
      e.target.disabled = true;
      try { await api("/api/fleet/cancel", {deployment_id: d.deployment_id}); await refresh(); }
      catch (err) { cancelMsg.textContent = err.message; e.target.disabled = false; }
    }}, "Cancel");
  return {
    async refresh(pending) {
      const [doc, dep] = await Promise.all([api("/api/fleet?limit=500"), pending]);
      summary.replaceChildren(h("p", {}, `${doc.total} devices: ${doc.counts.ONLINE} online, ${doc.counts.OFFLINE} offline `,
        h("span", {class: "muted"}, `(OFFLINE: no health for over ${doc.offline_after_s} s)`)));
      devices.replaceChildren(table(["device", "role", "model", "detector", "components", "state", "source", "inference Hz", "last seen", "episodes", "last deployment"],
        doc.items.map((d) => [turbineLink(d.thing), d.role || "-", d.model_version ? `v${d.model_version}` : "-", d.detector_version || "-",
          Object.entries(d.components).sort().map(([k, v]) => `${k} ${v}`).join(", ") || "-", badge(d.state), sourceCell(d.source),
          d.inference_rate_hz === null ? "-" : Number(d.inference_rate_hz.toFixed(2)), ago(d.last_seen),
          `${d.episodes.total} (${d.episodes.open} open)`, d.deployment ? `${d.deployment.status}${d.deployment.reason ? ": " + d.deployment.reason : ""}` : "-"]),
        {keys: doc.items.map((d) => d.thing), testid: "device-table", empty: "no devices yet"}));
      rollouts.replaceChildren(table(["version", "stage", "canary", "fleet", "done", "failure"],
        dep.rollouts.map((r) => [`v${r.version}`, badge(r.stage), r.canary_things.join(", ") || "-", r.fleet_things.join(", ") || "-",
          fmtTime(r.done_at), r.failure_reason || "-"]), {keys: dep.rollouts.map((r) => `v${r.version}`), testid: "rollout-table"}));
      deployments.replaceChildren(table(["deployment", "model", "stage", "group", "status", "devices ok", "failed", "created", ""],
        dep.deployments.map((d) => [d.deployment_id.slice(0, 8), `v${d.model_version}`, d.stage, d.target_group, badge(d.status),
          `${d.succeeded}/${d.executions.length}`, d.failed, fmtTime(d.created_at), d.status === "ACTIVE" ? cancelButton(d) : ""]),
        {keys: dep.deployments.map((d) => d.deployment_id), testid: "deployment-table"}), cancelMsg);
    },
  };
}

// -- Alerts ------------------------------------------------------------------------------------------
function alertsPage(main) {
  main.append(h("h1", {}, "Alerts"));
  const turbine = h("input", {placeholder: "turbine", size: 12, "data-testid": "filter-turbine"});
  const severity = h("select", {"data-testid": "filter-severity"}, ["", "low", "medium", "high", "critical"].map((s) => h("option", {value: s}, s || "any severity")));
  const state = h("select", {"data-testid": "filter-state"}, ["", "open", "closed", "pending", "sent", "acknowledged", "unacknowledged"].map((s) => h("option", {value: s}, s || "any state")));
  let offset = 0;
  const PAGE = 100;
  [turbine, severity, state].forEach((el) => el.addEventListener("change", () => { offset = 0; refresh(); }));
  const older = h("button", {type: "button", "data-testid": "older", onclick: () => { offset += PAGE; refresh(); }}, "older →");
  const newer = h("button", {type: "button", "data-testid": "newer", onclick: () => { offset = Math.max(0, offset - PAGE); refresh(); }}, "← newer");
  main.append(h("div", {class: "filters"}, turbine, severity, state, newer, older));
  const list = region(main, "alerts-table");
  const detail = region(main, "alert-detail");
  let selected = null, shown = 0;
  async function showDetail(id) {
    const mine = ++shown;
    selected = id;
    const a = await api(`/api/alerts/${encodeURIComponent(id)}`);
    if (mine !== shown) return;
    const verdict = h("select", {name: "verdict", "data-testid": "verdict"}, h("option", {value: ""}, "no verdict"),
      h("option", {value: "fault"}, "fault"), h("option", {value: "false_alarm"}, "false alarm"));
    const note = h("input", {name: "note", placeholder: "note", size: 40, "data-testid": "note"});
    detail.replaceChildren(h("section", {class: "card"},
      h("h2", {}, a.alert_id, " ", badge(a.severity), " ", badge(a.status)),
      h("dl", {class: "kv"}, h("dt", {}, "turbine"), h("dd", {}, turbineLink(a.turbine_id)), h("dt", {}, "kind"), h("dd", {}, a.kind || "-"),
        h("dt", {}, "started"), h("dd", {}, fmtTime(a.started_at || a.first_seen_at)), h("dt", {}, "ended"), h("dd", {}, fmtTime(a.ended_at)),
        h("dt", {}, "score"), h("dd", {}, a.score ? `${fmtNum(a.score, 2)}× the threshold` : "-"),
        h("dt", {}, "model"), h("dd", {}, a.model_version ? `v${a.model_version}` : "-"),
        h("dt", {}, "features"), h("dd", {}, (a.features || []).join(", ") || "-")),
      h("h2", {}, "Notifications"),
      ...(a.notifications.length ? a.notifications.map((n) => h("div", {},
        h("div", {}, badge(n.kind, "warn"), ` ${n.state} ${fmtTime(n.at)}`), n.subject ? h("pre", {class: "text"}, `${n.subject}\n\n${n.message || ""}`) : null))
        : [h("p", {class: "muted"}, "none sent")]),
      h("h2", {}, "Acknowledgements"),
      table(["at", "by", "verdict", "note"], a.acks.map((k) => [fmtTime(k.at), k.by, k.verdict || "-", k.note || ""]), {testid: "ack-history", empty: "not acknowledged"}),
      actionForm([verdict, note], "Acknowledge", async () => {
        await api(`/api/alerts/${encodeURIComponent(id)}/ack`, {verdict: verdict.value || null, note: note.value});
      })));
  }
  return {
    async refresh() {
      const q = new URLSearchParams();
      if (turbine.value) q.set("turbine", turbine.value);
      if (severity.value) q.set("severity", severity.value);
      if (state.value) q.set("state", state.value);
      q.set("offset", String(offset));
      q.set("limit", String(PAGE));
      const doc = await api(`/api/alerts?${q}`);
      newer.disabled = offset === 0;
      older.disabled = doc.next_offset === null;
      const shown = doc.items.length ? `, ${offset + 1}–${offset + doc.items.length} shown` : "";
      list.replaceChildren(h("p", {class: "muted"}, `${doc.total} alert(s)${shown}`),
        table(["alert", "turbine", "kind", "severity", "status", "since", "score", "acknowledged"],
          doc.items.map((a) => [a.alert_id, turbineLink(a.turbine_id), a.kind, badge(a.severity), badge(a.status), fmtTime(a.since),
            a.score === null ? "-" : Number(a.score.toFixed(2)), a.acknowledged ? `${a.acked_by}${a.verdict ? ` (${a.verdict})` : ""}` : "-"]),
          {onclick: (i) => showDetail(doc.items[i].alert_id), keys: doc.items.map((a) => a.alert_id), empty: "no alerts"}));
      if (selected !== null && !detail.contains(document.activeElement)) await showDetail(selected);
    },
  };
}

// -- Data --------------------------------------------------------------------------------------------
function dataPage(main) {
  main.append(h("h1", {}, "Data"));
  const status = region(main, "retraining");
  main.append(h("h2", {}, "Recent uploads"));
  const recent = region(main, "uploads");
  main.append(h("h2", {}, "Quarantined"));
  const quarantined = region(main, "quarantined");
  main.append(h("h2", {}, "Jobs"));
  const jobs = region(main, "jobs");
  const jobDetail = region(main, "job-detail");
  async function showJob(name) {
    const j = await api(`/api/jobs/${encodeURIComponent(name)}?lines=40`);
    jobDetail.replaceChildren(h("section", {class: "card"}, h("h2", {}, j.name, " ", badge(j.status)),
      h("p", {}, j.progress || j.failure_reason || ""),
      j.status === "Failed" ? actionForm([], "Retry", () => api(`/api/jobs/${encodeURIComponent(name)}/retry`, {})) : null,
      j.log_tail ? h("pre", {}, j.log_tail.join("\n")) : h("p", {class: "muted"}, "no log here")));
  }
  return {
    async refresh() {
      const d = await api("/api/data?recent=20");
      const r = d.retraining;
      status.replaceChildren(h("section", {class: "card"}, h("dl", {class: "kv"},
        h("dt", {}, "new data"), h("dd", {"data-testid": "new-hours"}, `${fmtNum(r.new_turbine_hours, 2)} of the ${r.min_new_turbine_hours} turbine-hours that start a training (${r.new_files} new file(s))`),
        h("dt", {}, "accepted"), h("dd", {}, `${r.accepted_files} file(s), ${r.rows} rows (a training needs ${r.min_rows})`),
        h("dt", {}, "last arrival"), h("dd", {}, fmtTime(r.last_arrival_at)),
        h("dt", {}, "quiet period"), h("dd", {}, r.quiet_left_s > 0 ? `${r.quiet_left_s.toFixed(0)} s of ${r.quiet_period_s} s left` : `${r.quiet_period_s} s, over`),
        h("dt", {}, "running job"), h("dd", {}, r.active_job || "none"),
        h("dt", {}, "retraining"), h("dd", {}, r.would_start ? "a check now would start a training job" : `waits: ${r.blocker}`))));
      recent.replaceChildren(table(["key", "status", "rows", "turbines", "checked", "warnings"],
        d.recent.map((f) => [f.key, badge(f.status), f.rows ?? "-", (f.turbines || []).join(", ") || "-", fmtTime(f.checked_at), f.warnings ?? 0]),
        {empty: "no uploads yet"}));
      quarantined.replaceChildren(...(d.quarantined.length ? d.quarantined.map((q) => h("section", {class: "card"},
        h("strong", {}, q.key), ` → ${q.quarantine_key}`,
        q.report ? h("ul", {}, q.report.errors.map((e) => h("li", {}, typeof e === "string" ? e : `${e.field || e.code || ""} ${e.message || JSON.stringify(e)}`)))
          : h("p", {class: "muted"}, "no report")))
        : [h("p", {class: "muted"}, "nothing quarantined")]));
      const j = await api("/api/jobs?limit=50");
      jobs.replaceChildren(table(["job", "kind", "status", "model", "created", "ended", "failure"],
        j.items.map((x) => [x.name, x.kind, badge(x.status), x.model_version ? `v${x.model_version}` : "-", fmtTime(x.created_at), fmtTime(x.ended_at), x.failure_reason || ""]),
        {onclick: (i) => showJob(j.items[i].name), empty: "no jobs yet"}));
    },
  };
}

// -- Turbine timeline --------------------------------------------------------------------------------
function turbinePage(main, turbine) {
  main.append(h("h1", {}, `Turbine ${turbine}`));
  const facts = region(main, "turbine-facts");
  const legend = h("div", {class: "legend"}, ...[["band", "score / threshold per period (p05–p95, p25–p75, median)"],
    ["episode", "episode (open to close)"], ["score", "peak score"], ["threshold", "threshold (1.0)"], ["swap", "model swap"],
    ["alert", "alert"], ["capture", "captured samples"]].map(([c, t]) => h("span", {}, h("span", {class: `swatch ${c}`}), t)));
  const holder = h("div", {class: "chart", "data-testid": "timeline-chart"});
  main.append(legend, holder, h("p", {class: "muted"}, "Wheel or +/− to zoom, drag to pan, double-click to reset; hover for details."));
  main.append(h("h2", {}, "Signals"), h("p", {class: "muted"}, "Per feature: each period's p05–p95 band and median; " +
    "the captured raw samples where the range shown has them."));
  const signalsHolder = h("div", {class: "signals", "data-testid": "signal-charts"});
  main.append(signalsHolder);
  const lists = region(main, "turbine-lists");
  const signals = window.NacelleSignals.create(signalsHolder, (start, end) => api(
    `/api/turbines/${encodeURIComponent(turbine)}/signals?start=${encodeURIComponent(start)}&end=${encodeURIComponent(end)}`));
  const chart = window.NacelleChart.create(holder, {onView: (v) => signals.setView(v)});
  return {
    async refresh() {
      const t = await api(`/api/turbines/${encodeURIComponent(turbine)}/timeline`);
      facts.replaceChildren(h("p", {}, `model ${t.model_version ? "v" + t.model_version : "-"} · last health ${ago(t.last_health_at)} · `,
        `${t.episodes.length} episode(s), ${t.alerts.length} alert(s), ${t.model_swaps.length} deployment event(s), ` +
        `${t.periods.length} period(s), ${t.captures.length} captured file(s)`));
      signals.update(t);
      chart.update(t);
      lists.replaceChildren(h("h2", {}, "Model swaps"), table(["at", "model", "status", "deployment"],
        t.model_swaps.map((s) => [fmtTime(s.at), s.model_version ? `v${s.model_version}` : "-", s.status, s.deployment_id.slice(0, 8)]), {empty: "none"}),
      h("h2", {}, "Alerts"), table(["at", "alert", "severity", "status", "verdict"],
        t.alerts.map((a) => [fmtTime(a.at), link("/alerts", a.alert_id), badge(a.severity), a.status, a.verdict || "-"]), {empty: "none"}));
    },
  };
}

document.addEventListener("DOMContentLoaded", start);
