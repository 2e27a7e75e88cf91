// Steward's console: one page, plain JavaScript, no build step and nothing vendored. Every
// figure comes from the management API (/api/v1) with the token given at sign-in, kept for
// this tab only (sessionStorage). Text from runs, tools and agents is shown with textContent,
// never parsed as HTML.
"use strict";

const TOKEN_KEY = "steward.token";
const REFRESH_MS = 2000;
const main = document.getElementById("main");
let refresh = null;
let shown = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function show(...nodes) {
  main.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined));
}

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

function state(s) {
  return el("span", { class: "state " + s }, s);
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) opts.headers.authorization = "Bearer " + token;
  if (opts.json !== undefined) {
    opts.method = opts.method || "POST";
    opts.headers["content-type"] = "application/json";
    opts.body = JSON.stringify(opts.json);
  }
  const r = await fetch("/api/v1" + path, opts);
  const body = await r.json().catch(() => null);
  if (!r.ok) {
    const msg = (body && body.error && body.error.message) || r.status + " " + r.statusText;
    throw new ApiError(r.status, msg);
  }
  return body;
}

function signIn(reason) {
  document.getElementById("nav").hidden = true;
  document.getElementById("sign-out").hidden = true;
  const input = el("input", { id: "token", type: "password", placeholder: "admin or viewer token",
    autocomplete: "current-password", size: 40 });
  show(
    el("h1", {}, "Sign in"),
    reason ? el("p", { class: "error" }, reason) : null,
    el("p", { class: "muted" },
      "The server's admin token (server.admin_token), or its viewer token to read only."),
    el("form", { class: "inline", id: "sign-in", onsubmit: (e) => {
      e.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value);
      route();
    } }, input, el("button", { class: "primary", type: "submit" }, "Sign in")),
  );
  input.focus();
}

function failed(e) {
  if (e instanceof ApiError && e.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    signIn("That token was refused.");
    return;
  }
  show(el("p", { class: "error", id: "failure" }, String(e.message || e)));
}

// Pages: each renders once, and again every REFRESH_MS while it is shown.
async function overview() {
  const [runs, approvals, spend] = await Promise.all([
    api("/runs?limit=1000"),
    api("/approvals?state=pending&limit=1000"),
    api("/costs?by=hour&days=1"),
  ]);
  const counts = {};
  for (const r of runs.runs) counts[r.state] = (counts[r.state] || 0) + 1;
  const card = (n, what, href) => el("a", { class: "card", href }, el("div", { class: "n" }, n),
    el("div", { class: "what" }, what));
  show(
    el("h1", {}, "Overview"),
    el("div", { class: "cards", id: "states" },
      ["running", "waiting", "queued", "succeeded", "failed", "cancelled"].map((s) =>
        card(counts[s] || 0, s, "#/runs?state=" + s)),
      card(approvals.approvals.length, "approvals open", "#/approvals")),
    el("p", { class: "muted" }, "Of the latest " + runs.runs.length + " runs" +
      errorRate(counts) + "."),
    el("h2", {}, "Spend per hour, last 24 hours (UTC)"),
    hourly(spend.lines),
  );
}

function errorRate(counts) {
  const ended = (counts.succeeded || 0) + (counts.failed || 0);
  return ended ? "; " + ((counts.failed || 0) / ended * 100).toFixed(1) +
    "% of those that ended failed" : "";
}

// One bar per hour, from 23 hours ago to this one; an hour with no spend has none.
function hourly(lines) {
  const byHour = Object.fromEntries(lines.map((l) => [l.key, l.cost_usd]));
  const now = Date.now();
  const hours = [];
  for (let i = 23; i >= 0; i--) {
    const t = new Date(now - i * 3600000).toISOString();
    hours.push([t.slice(11, 13) + ":00", byHour[t.slice(0, 10) + " " + t.slice(11, 13) + ":00"] || 0]);
  }
  const most = Math.max(...hours.map((h) => h[1]), 1e-12);
  return el("div", { class: "chart", id: "spend-chart" }, hours.map(([label, usd]) => {
    const bar = el("div", { class: "column" });
    bar.style.height = (usd / most * 100).toFixed(1) + "%";
    return el("div", { class: "slot", title: label + " $" + usd.toFixed(6) },
      el("div", { class: "column-track" }, bar), el("div", { class: "label" }, label.slice(0, 2)));
  }));
}

async function runsPage(params) {
  const filter = new URLSearchParams();
  filter.set("limit", "200");
  for (const k of ["state", "agent", "parent"]) if (params.get(k)) filter.set(k, params.get(k));
  const { runs } = await api("/runs?" + filter);
  const pick = el("select", { id: "state-filter", onchange: (e) => {
    location.hash = "#/runs" + (e.target.value ? "?state=" + e.target.value : "");
  } }, ["", "queued", "running", "waiting", "succeeded", "failed", "cancelled"].map((s) =>
    el("option", { value: s, selected: s === (params.get("state") || "") }, s || "any state")));
  show(
    el("h1", {}, "Runs"),
    el("form", { class: "inline" }, pick),
    runTable(runs, "runs"),
  );
}

function runTable(runs, id) {
  if (!runs.length) return el("p", { class: "muted", id }, "No runs.");
  return el("table", { id },
    el("tr", {}, ["run", "agent", "state", "started", "updated"].map((h) => el("th", {}, h))),
    runs.map((r) => el("tr", { class: "run" },
      el("td", {}, el("a", { href: "#/runs/" + r.id }, r.id)),
      el("td", {}, r.agent),
      el("td", {}, state(r.state), r.wait_kind ? " (" + r.wait_kind + ")" : ""),
      el("td", {}, when(r.created_at)),
      el("td", {}, when(r.updated_at)))));
}

function pretty(body) {
  const text = typeof body === "string" ? body : JSON.stringify(body, null, 2);
  return text.length > 4000 ? text.slice(0, 4000) + "\n…" : text;
}

async function runPage(id) {
  const [run, journal, children, approvals, scores] = await Promise.all([
    api("/runs/" + encodeURIComponent(id)),
    api("/runs/" + encodeURIComponent(id) + "/journal?limit=1000"),
    api("/runs?parent=" + encodeURIComponent(id) + "&limit=200"),
    api("/approvals?state=pending&limit=1000"),
    api("/scores?run=" + encodeURIComponent(id)),
  ]);
  const open = approvals.approvals.filter((a) => a.run_id === run.id);
  const terminal = ["succeeded", "failed", "cancelled"].includes(run.state);
  const facts = el("dl", { class: "facts" },
    el("dt", {}, "agent"), el("dd", {}, run.agent + " v" + run.agent_version),
    el("dt", {}, "state"), el("dd", { id: "run-state" }, state(run.state)),
    el("dt", {}, "input"), el("dd", {}, el("pre", {}, run.input)),
    run.result !== null && run.result !== undefined ? [el("dt", {}, "result"),
      el("dd", {}, el("pre", { id: "run-result" }, run.result))] : null,
    run.error ? [el("dt", {}, "error"), el("dd", {}, el("pre", {}, pretty(run.error)))] : null,
    run.parent_id ? [el("dt", {}, "parent"),
      el("dd", {}, el("a", { href: "#/runs/" + run.parent_id }, run.parent_id))] : null,
    run.fork ? [el("dt", {}, "forked from"),
      el("dd", { id: "forked-from" },
        el("a", { href: "#/runs/" + run.fork.source }, run.fork.source),
        " at step " + run.fork.at + " · ",
        el("a", { href: "#/compare/" + run.fork.source + "/" + run.id }, "compare"))] : null,
    run.fork ? forkEdits(run.fork) : null);
  const cancel = terminal ? null : el("button", { id: "cancel", type: "button", onclick: async () => {
    const reason = prompt("Why cancel this run?");
    if (!reason) return;
    await api("/runs/" + encodeURIComponent(run.id) + "/cancel", { json: { reason } }).catch(failed);
    route();
  } }, "Cancel run");
  show(
    el("h1", {}, "Run ", run.id),
    facts,
    cancel,
    open.length ? [el("h2", {}, "Waiting for approval"), approvalTable(open)] : null,
    el("h2", {}, "Timeline"),
    forkForm(run),
    timeline(journal.entries, true),
    children.runs.length ? [el("h2", {}, "Children"), runTable(children.runs, "children")] : null,
    scores.scores.length ? [el("h2", {}, "Scores"), scoreTable(scores.scores, "run-scores")] : null,
    el("h2", {}, "Audit"),
    auditButton(run.id),
  );
  return !terminal;
}

// Reading the run's audit records takes the whole log's tree (and signs a checkpoint first):
// done when asked, not on every refresh of the page.
function auditButton(id) {
  const place = el("div", { id: "run-audit" });
  place.append(el("button", { id: "verify-run-audit", type: "button", onclick: async () => {
    place.replaceChildren(el("p", { class: "muted" }, "Checking…"));
    try {
      place.replaceChildren(await runAudit(id));
    } catch (e) {
      place.replaceChildren(el("p", { class: "error" }, e.message));
    }
  } }, "Show and verify its audit records"));
  return place;
}

// The run's audit records, each checked here, in the browser: its leaf hash recomputed from
// its body, and its inclusion proof followed up to the signed checkpoint's root (RFC 9162).
async function runAudit(id) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const r = await fetch("/api/v1/audit/export?run=" + encodeURIComponent(id),
    { headers: token ? { authorization: "Bearer " + token } : {} });
  if (!r.ok) throw new ApiError(r.status, "the audit export was refused: " + r.status);
  const lines = (await r.text()).split("\n").filter(Boolean).map((l) => JSON.parse(l));
  const rows = await Promise.all(lines.map(async (l) => {
    const verdict = await checkRecord(l);
    return el("tr", { class: "audit-record " + (verdict.ok ? "verified" : "unverified") },
      el("td", { class: "num" }, l.seq),
      el("td", {}, when(l.at)),
      el("td", {}, l.record.action || ""),
      el("td", {}, l.record.resource || ""),
      el("td", {}, l.record.decision || l.record.outcome || ""),
      el("td", {}, state(verdict.ok ? "ok" : "error"), " " + verdict.why));
  }));
  return table("audit-records", ["#", "at", "action", "resource", "decision", "proof"], rows,
    "No audit records.");
}

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

function unhex(h) {
  return new Uint8Array((h.match(/../g) || []).map((b) => parseInt(b, 16)));
}

function same(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

async function nodeHash(left, right) {
  const buf = new Uint8Array(65);
  buf[0] = 1;
  buf.set(left, 1);
  buf.set(right, 33);
  return sha256(buf);
}

// One exported record: its leaf is SHA-256(0x00 ‖ seq as 8 bytes big-endian ‖ body), and its
// audit path leads to the checkpoint's root.
async function checkRecord(l) {
  if (l.body === null || l.body === undefined) return { ok: false, why: "its body was cleared (retention)" };
  const body = new TextEncoder().encode(l.body);
  const buf = new Uint8Array(9 + body.length);
  new DataView(buf.buffer).setBigInt64(1, BigInt(l.seq));
  buf.set(body, 9);
  const leaf = await sha256(buf);
  if (!same(leaf, unhex(l.leaf_hash))) return { ok: false, why: "does not verify: its body is not what was logged" };
  if (!l.proof || !l.checkpoint) return { ok: false, why: "not yet in a signed checkpoint" };
  let fn = l.seq;
  let sn = l.checkpoint.size - 1;
  if (fn > sn) return { ok: false, why: "does not verify: past the checkpoint" };
  let r = leaf;
  for (const p of l.proof.map(unhex)) {
    if (sn === 0) return { ok: false, why: "does not verify: the proof is too long" };
    if ((fn & 1) === 1 || fn === sn) {
      r = await nodeHash(p, r);
      if ((fn & 1) === 0) {
        while ((fn & 1) === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  if (sn !== 0 || !same(r, unhex(l.checkpoint.root))) {
    return { ok: false, why: "does not verify against the checkpoint's root" };
  }
  return { ok: true, why: "verified: in the signed checkpoint of " + l.checkpoint.size + " records" };
}

// The edits a fork's model sees from its step on.
function forkEdits(fork) {
  const edits = [["input", fork.input], ["system prompt", fork.system_prompt], ["model", fork.model]]
    .filter(([, v]) => v !== undefined && v !== null);
  return edits.map(([k, v]) => [el("dt", {}, "fork's " + k), el("dd", {}, el("pre", {}, v))]);
}

// Starting a fork: the steps before the chosen one are replayed from this run's journal, and
// from it on the model sees what is filled in here (left empty: as this run had it).
function forkForm(run) {
  const at = el("input", { id: "fork-at", type: "number", min: 0, required: true });
  const input = el("textarea", { id: "fork-input", rows: 3 });
  input.value = run.input;
  const system = el("textarea", { id: "fork-system", rows: 2, placeholder: "unchanged" });
  const model = el("input", { id: "fork-model", placeholder: "unchanged (alias or provider/model)" });
  const problem = el("p", { class: "error", id: "fork-error", hidden: true });
  const form = el("form", { id: "fork-form", class: "panel", hidden: true, onsubmit: async (ev) => {
    ev.preventDefault();
    const body = { at: Number(at.value) };
    if (input.value !== run.input) body.input = input.value;
    if (system.value) body.system_prompt = system.value;
    if (model.value.trim()) body.model = model.value.trim();
    try {
      const fork = await api("/runs/" + encodeURIComponent(run.id) + "/fork", { json: body });
      location.hash = "#/compare/" + run.id + "/" + fork.id;
    } catch (e) {
      problem.textContent = e.message;
      problem.hidden = false;
    }
  } },
    el("h3", {}, "Fork this run"),
    el("p", { class: "muted" },
      "The steps before the one chosen are replayed from this run, not made or paid for again; from it on the new run is live, with what you change here."),
    el("label", {}, "from step ", at),
    el("label", {}, "input", input),
    el("label", {}, "system prompt", system),
    el("label", {}, "model ", model),
    problem,
    el("p", {}, el("button", { class: "primary", id: "fork-start", type: "submit" }, "Start the fork"),
      " ", el("button", { type: "button", onclick: () => { form.hidden = true; } }, "Close")));
  form.open = (seq) => {
    at.value = seq;
    form.hidden = false;
    input.focus();
  };
  return form;
}

function timeline(entries, forkable) {
  if (!entries.length) return el("p", { class: "muted", id: "timeline" }, "No steps yet.");
  // A fork departs at a step whose outcome is recorded, or just after the last one.
  const whole = new Set(entries.filter((e) => e.phase === "outcome").map((e) => e.seq));
  const fork = (seq) => forkable && whole.has(seq) ? el("button", {
    class: "fork", type: "button", "data-seq": seq, title: "Redo from this step in a new run",
    onclick: () => document.getElementById("fork-form").open(seq),
  }, "Fork here") : null;
  return el("table", { id: "timeline" },
    el("tr", {}, ["#", "step", "phase", "ok", "tokens in/out", "ms", "at", "body"].map((h) =>
      el("th", {}, h))),
    entries.map((e) => el("tr", { class: "step" },
      el("td", { class: "num" }, e.seq, e.phase === "intent" ? [" ", fork(e.seq)] : null),
      el("td", {}, e.kind + " ", el("strong", {}, e.name)),
      el("td", {}, e.phase),
      el("td", {}, state(e.ok ? "ok" : "error")),
      el("td", { class: "num" }, e.tokens_in || e.tokens_out ? e.tokens_in + " / " + e.tokens_out : ""),
      el("td", { class: "num" }, e.duration_us ? (e.duration_us / 1000).toFixed(1) : ""),
      el("td", {}, when(e.at)),
      el("td", {}, el("pre", {}, pretty(e.body))))));
}

function approvalTable(list) {
  return el("table", { id: "approvals" },
    el("tr", {}, ["run", "action", "resource", "approvers", "expires", "decide"].map((h) =>
      el("th", {}, h))),
    list.map((a) => {
      const reason = el("input", { class: "reason", placeholder: "reason", required: true });
      const decide = (verdict) => async () => {
        if (!reason.value.trim()) {
          reason.focus();
          return;
        }
        try {
          await api("/approvals/" + encodeURIComponent(a.id) + "/" + verdict,
            { json: { reason: reason.value } });
          route();
        } catch (e) {
          failed(e);
        }
      };
      return el("tr", { class: "approval" },
        el("td", {}, el("a", { href: "#/runs/" + a.run_id }, a.run_id)),
        el("td", {}, a.action),
        el("td", {}, a.resource),
        el("td", {}, a.approvers),
        el("td", {}, when(a.expires_at)),
        el("td", {}, reason,
          el("button", { class: "approve primary", type: "button", onclick: decide("approve") }, "Approve"),
          " ",
          el("button", { class: "deny", type: "button", onclick: decide("deny") }, "Deny")));
    }));
}

// Two runs side by side — a fork and its source, as a rule: how each ended, what it cost, and
// step by step what each did (the fork's steps before its step are the source's, replayed).
async function comparePage(a, b) {
  const load = (id) => Promise.all([
    api("/runs/" + encodeURIComponent(id)),
    api("/runs/" + encodeURIComponent(id) + "/journal?limit=10000"),
  ]);
  const [[ra, ja], [rb, jb], costs] = await Promise.all([load(a), load(b),
    api("/costs?by=run&days=36500&run=" + encodeURIComponent(a) + "," + encodeURIComponent(b))]);
  const cost = (id) => costs.lines.find((l) => l.key === id);
  const sum = (j, f) => j.entries.filter((e) => e.phase === "outcome").reduce((n, e) => n + e[f], 0);
  const steps = (j) => j.entries.filter((e) => e.phase === "outcome").length;
  const took = (r) => ["succeeded", "failed", "cancelled"].includes(r.state)
    ? ((r.updated_at - r.created_at) / 1000).toFixed(2) + " s" : "";
  const replayedBelow = (r, other) => r.fork && r.fork.source === other.id ? r.fork.at : 0;
  const row = (label, f, id) => el("tr", { id },
    el("th", {}, label), el("td", {}, f(ra, ja)), el("td", {}, f(rb, jb)));
  const summary = el("table", { id: "compare" },
    el("tr", {}, el("th", {}, ""),
      el("th", {}, el("a", { href: "#/runs/" + ra.id }, ra.id)),
      el("th", {}, el("a", { href: "#/runs/" + rb.id }, rb.id))),
    row("agent", (r) => r.agent + " v" + r.agent_version),
    row("state", (r) => state(r.state), "compare-state"),
    row("result", (r) => el("pre", {}, r.result ?? (r.error ? pretty(r.error) : "")), "compare-result"),
    row("forked", (r) => r.fork ? "from step " + r.fork.at + " of " + r.fork.source : ""),
    row("fork's edits", (r) => r.fork ? el("dl", { class: "facts" }, forkEdits(r.fork)) : ""),
    row("steps", (r, j) => String(steps(j)), "compare-steps"),
    row("tokens in / out", (r, j) => sum(j, "tokens_in") + " / " + sum(j, "tokens_out")),
    row("cost", (r) => {
      const c = cost(r.id);
      return c ? "$" + c.cost_usd.toFixed(6) + (c.unpriced_calls ? " (+" + c.unpriced_calls + " unpriced)" : "") : "$0";
    }, "compare-cost"),
    row("duration", (r) => took(r)));
  const outcomes = (j) => new Map(j.entries.filter((e) => e.phase === "outcome").map((e) => [e.seq, e]));
  const [oa, ob] = [outcomes(ja), outcomes(jb)];
  const seqs = [...new Set([...oa.keys(), ...ob.keys()])].sort((x, y) => x - y);
  const below = Math.max(replayedBelow(rb, ra), replayedBelow(ra, rb));
  const cell = (e) => e ? [e.kind + " ", el("strong", {}, e.name), " ", state(e.ok ? "ok" : "error"),
    el("pre", {}, pretty(e.body))] : "";
  const byStep = el("table", { id: "compare-steps-table" },
    el("tr", {}, ["#", ra.id, rb.id].map((h) => el("th", {}, h))),
    seqs.map((seq) => el("tr", { class: seq < below ? "replayed" : "live" },
      el("td", { class: "num" }, seq, seq < below ? el("div", { class: "muted" }, "replayed") : null),
      el("td", {}, cell(oa.get(seq))), el("td", {}, cell(ob.get(seq))))));
  show(el("h1", {}, "Compare runs"), summary, el("h2", {}, "Step by step"), byStep);
  return ![ra, rb].every((r) => ["succeeded", "failed", "cancelled"].includes(r.state));
}

async function approvalsPage() {
  const { approvals } = await api("/approvals?state=pending&limit=1000");
  show(
    el("h1", {}, "Approvals"),
    approvals.length ? approvalTable(approvals) : el("p", { class: "muted", id: "approvals" },
      "Nothing is waiting for a decision."),
  );
  return true;
}

async function tracesPage(params) {
  const q = new URLSearchParams({ limit: "100" });
  for (const k of ["session_id", "end_user"]) if (params.get(k)) q.set(k, params.get(k));
  const { traces } = await api("/traces?" + q);
  show(
    el("h1", {}, "Traces"),
    traces.length ? el("table", { id: "traces" },
      el("tr", {}, ["trace", "started", "ms", "spans", "session", "end user", "from"].map((h) =>
        el("th", {}, h))),
      traces.map((t) => el("tr", { class: "trace" },
        el("td", {}, el("a", { href: "#/traces/" + t.trace_id }, t.trace_id)),
        el("td", {}, when(t.start_ns / 1e6)),
        el("td", { class: "num" }, ((t.end_ns - t.start_ns) / 1e6).toFixed(1)),
        el("td", { class: "num" }, t.spans),
        el("td", {}, t.session_id || ""),
        el("td", {}, t.end_user || ""),
        el("td", {}, t.sent_by)))) : el("p", { class: "muted", id: "traces" }, "No traces yet."),
  );
  return true;
}

async function tracePage(id) {
  const t = await api("/traces/" + encodeURIComponent(id));
  const spans = t.spans;
  const t0 = Math.min(...spans.map((s) => s.start_ns));
  const t1 = Math.max(...spans.map((s) => s.end_ns));
  const total = Math.max(t1 - t0, 1);
  const depth = {};
  const byId = Object.fromEntries(spans.map((s) => [s.span_id, s]));
  const level = (s, seen = 0) => {
    if (depth[s.span_id] !== undefined) return depth[s.span_id];
    const parent = s.parent_span_id && byId[s.parent_span_id];
    depth[s.span_id] = parent && seen < 64 ? level(parent, seen + 1) + 1 : 0;
    return depth[s.span_id];
  };
  show(
    el("h1", {}, "Trace ", id),
    el("table", { id: "waterfall" },
      el("tr", {}, ["span", "from", "ms", "status", ""].map((h) => el("th", {}, h))),
      spans.map((s) => {
        const bar = el("div", { class: "bar" + (s.sent_by === "steward" ? "" : " external") });
        bar.style.left = ((s.start_ns - t0) / total * 100).toFixed(2) + "%";
        bar.style.width = ((s.end_ns - s.start_ns) / total * 100).toFixed(2) + "%";
        const name = el("td", {}, s.name);
        name.style.paddingLeft = 10 + 16 * level(s) + "px";
        return el("tr", { class: "span" },
          name,
          el("td", {}, s.sent_by),
          el("td", { class: "num" }, ((s.end_ns - s.start_ns) / 1e6).toFixed(1)),
          el("td", {}, state(s.status)),
          el("td", { class: "bar-cell" }, el("div", { class: "bar-track" }, bar)));
      })),
  );
  return false;
}

const COST_GROUPS = ["agent", "model", "tool", "run", "task", "outcome", "day", "hour"];

async function costsPage(params) {
  const by = COST_GROUPS.includes(params.get("by")) ? params.get("by") : "agent";
  const days = params.get("days") || "30";
  const [report, { budgets }] = await Promise.all([
    api("/costs?by=" + by + "&days=" + encodeURIComponent(days)), api("/budgets")]);
  const go = (b, d) => { location.hash = "#/costs?by=" + b + "&days=" + d; };
  const pickBy = el("select", { id: "cost-by", onchange: (e) => go(e.target.value, days) },
    COST_GROUPS.map((g) => el("option", { value: g, selected: g === by }, "by " + g)));
  const pickDays = el("select", { id: "cost-days", onchange: (e) => go(by, e.target.value) },
    ["1", "7", "30", "90", "365"].map((d) => el("option", { value: d, selected: d === days },
      "last " + d + (d === "1" ? " day" : " days"))));
  const lines = by === "day" || by === "hour" ? [...report.lines].sort((a, b) => a.key.localeCompare(b.key))
    : report.lines;
  const most = Math.max(...lines.map((l) => l.cost_usd), 1e-12);
  const usd = (x) => "$" + x.toFixed(x >= 1 ? 2 : 6);
  const o = report.outcomes;
  show(
    el("h1", {}, "Costs"),
    el("form", { class: "inline" }, pickBy, pickDays),
    el("p", { id: "cost-total" }, "Total " + usd(report.total_usd) + " — " + o.successful_runs +
      " of " + o.runs + " runs succeeded" + (o.cost_per_successful_run_usd !== null &&
      o.cost_per_successful_run_usd !== undefined ? ", " + usd(o.cost_per_successful_run_usd) +
      " per successful run" : "") + "."),
    lines.length ? el("table", { id: "costs" },
      el("tr", {}, [by, "model calls", "tool calls", "tokens in / out", "cost", ""].map((h) =>
        el("th", {}, h))),
      lines.map((l) => {
        const bar = el("div", { class: "bar" });
        bar.style.width = (l.cost_usd / most * 100).toFixed(2) + "%";
        return el("tr", { class: "cost" },
          el("td", {}, l.key + (l.outcome ? " (" + l.outcome + ")" : "")),
          el("td", { class: "num" }, l.calls),
          el("td", { class: "num" }, l.tool_calls),
          el("td", { class: "num" }, l.tokens_in + " / " + l.tokens_out),
          el("td", { class: "num" }, usd(l.cost_usd)),
          el("td", { class: "bar-cell" }, el("div", { class: "bar-track" }, bar)));
      })) : el("p", { class: "muted", id: "costs" }, "Nothing spent in this period."),
    el("h2", {}, "Budgets"),
    table("budgets", ["account", "below", "period", "spent / cap", "", "held for calls in flight"],
      budgets.map((b) => el("tr", { class: "budget" },
        el("td", {}, b.account), el("td", {}, b.parent || ""), el("td", {}, b.period),
        el("td", { class: "num" }, usd(b.spent_usd) + " / " + usd(b.cap_usd)),
        el("td", { class: "bar-cell" }, meanBar(Math.min(1, b.cap_usd > 0 ? (b.spent_usd + b.reserved_usd) / b.cap_usd : 1))),
        el("td", { class: "num" }, usd(b.reserved_usd)))), "No budget accounts."),
  );
  return true;
}

// The gateway's calls, newest first: who asked for which model, which deployment answered,
// how it went, tokens and time.
async function callsPage(params) {
  const agent = params.get("agent") || "";
  const { calls } = await api("/calls?limit=200" + (agent ? "&agent=" + encodeURIComponent(agent) : ""));
  show(
    el("h1", {}, "Gateway calls" + (agent ? " of " + agent : "")),
    table("calls", ["call", "agent", "model", "deployment", "status", "tokens in / out", "ms", "started", "run"],
      calls.map((c) => el("tr", { class: "call" },
        el("td", {}, c.id),
        el("td", {}, el("a", { href: "#/calls?agent=" + encodeURIComponent(c.agent) }, c.agent)),
        el("td", {}, c.model + (c.stream ? " (stream)" : "")),
        el("td", {}, c.deployment || ""),
        el("td", {}, state(c.status === "ok" ? "ok" : c.status === "started" ? "running" : "error"), " " + c.status,
          c.error ? el("div", { class: "muted" }, c.error) : null),
        el("td", { class: "num" }, c.tokens_in + " / " + c.tokens_out),
        el("td", { class: "num" }, (c.duration_us / 1000).toFixed(1)),
        el("td", {}, when(c.started_at)),
        el("td", {}, c.run_id ? el("a", { href: "#/runs/" + c.run_id }, c.run_id) : ""))), "No gateway calls."),
  );
  return true;
}

async function auditPage() {
  show(el("h1", {}, "Audit"), el("p", { class: "muted", id: "audit" }, "Verifying…"));
  const r = await api("/audit/verify");
  show(
    el("h1", {}, "Audit"),
    el("p", { id: "audit" }, r.ok
      ? el("span", { class: "state ok" }, "verified")
      : el("span", { class: "state error" }, "problems found"),
      " — " + r.records + " records checked against their hashes and " + r.checkpoints +
      " signed checkpoints" + (r.pruned ? "; " + r.pruned + " pruned before them" : "") + "."),
    r.problems.length ? el("table", { id: "audit-problems" },
      el("tr", {}, el("th", {}, "problem")),
      r.problems.map((p) => el("tr", {}, el("td", {}, el("pre", {}, pretty(p)))))) : null,
  );
  return false;
}

// Alert rules with how each stands, and the incidents open (alerts' and supervisors'),
// resolved in place with a resolution.
async function alertsPage() {
  const [{ alerts }, { incidents }] = await Promise.all([
    api("/alerts"), api("/incidents?state=open")]);
  const rule = (a) => a.metric + " > " + a.above +
    (a.metric === "budget_used" ? " of " + a.account : " over " + a.window_minutes + " min") +
    (a.agent ? " (" + a.agent + ")" : "");
  show(
    el("h1", {}, "Alerts"),
    el("p", { class: "muted" },
      "Rules on spend, error rate, latency, loops and budgets (PUT /api/v1/alerts/{name}); a rule above its threshold opens an incident and calls its signed webhook."),
    alerts.length ? el("table", { id: "alerts" },
      el("tr", {}, ["alert", "rule", "state", "value", "checked", "since", "webhook"].map((h) =>
        el("th", {}, h))),
      alerts.map((a) => el("tr", { class: "alert" },
        el("td", {}, a.name),
        el("td", {}, rule(a)),
        el("td", {}, state(a.state === "firing" ? "failed" : "ok"), " ", a.state),
        el("td", { class: "num" }, a.value === null || a.value === undefined ? "" : String(a.value)),
        el("td", {}, when(a.checked_at)),
        el("td", {}, when(a.changed_at)),
        el("td", {}, a.webhook ? a.webhook.url : "")))) :
      el("p", { class: "muted", id: "alerts" }, "No alert rules."),
    el("h2", {}, "Open incidents"),
    incidents.length ? el("table", { id: "incidents" },
      el("tr", {}, ["incident", "raised by", "reason", "opened", "resolve"].map((h) => el("th", {}, h))),
      incidents.map((i) => {
        const resolution = el("input", { class: "reason", placeholder: "resolution" });
        const resolve = async () => {
          if (!resolution.value.trim()) {
            resolution.focus();
            return;
          }
          try {
            await api("/incidents/" + encodeURIComponent(i.id) + "/resolve",
              { json: { resolution: resolution.value } });
            route();
          } catch (e) {
            failed(e);
          }
        };
        return el("tr", { class: "incident" },
          el("td", {}, i.id), el("td", {}, i.supervisor), el("td", {}, i.reason),
          el("td", {}, when(i.created_at)),
          el("td", {}, resolution, " ",
            el("button", { class: "resolve", type: "button", onclick: resolve }, "Resolve")));
      })) : el("p", { class: "muted", id: "incidents" }, "No open incidents."),
  );
  return true;
}

// A button that asks for a reason, then POSTs `{[field]: reason}` to `path` and reloads.
function withReason(cls, label, path, field) {
  const reason = el("input", { class: "reason", placeholder: field });
  const act = async () => {
    if (!reason.value.trim()) {
      reason.focus();
      return;
    }
    try {
      await api(path, { json: { [field]: reason.value } });
      route();
    } catch (e) {
      failed(e);
    }
  };
  return [reason, " ", el("button", { class: cls, type: "button", onclick: act }, label)];
}

function table(id, heads, rows, none) {
  if (!rows.length) return el("p", { class: "muted", id }, none);
  return el("table", { id }, el("tr", {}, heads.map((h) => el("th", {}, h))), rows);
}

// Queues with their depth by state, the dead-letter queue (each task requeued in place), and
// the latest tasks.
async function queuesPage(params) {
  const queue = params.get("queue") || "";
  const q = queue ? "&queue=" + encodeURIComponent(queue) : "";
  const [{ queues }, dead, latest] = await Promise.all([api("/queues"),
    api("/tasks?state=dead&limit=200" + q), api("/tasks?limit=100" + q)]);
  const depth = (d, s) => String(d[s] || 0);
  const taskRow = (t, requeue) => el("tr", { class: "task" },
    el("td", {}, t.id), el("td", {}, t.queue), el("td", {}, t.tenant), el("td", {}, state(t.state)),
    el("td", { class: "num" }, t.attempts + " / " + t.max_attempts),
    el("td", {}, t.run_id ? el("a", { href: "#/runs/" + t.run_id }, t.run_id) : ""),
    el("td", {}, el("pre", {}, t.error || pretty(t.payload))),
    el("td", {}, when(t.enqueued_at)),
    requeue ? el("td", {}, el("button", { class: "requeue", type: "button", onclick: async () => {
      try {
        await api("/tasks/" + encodeURIComponent(t.id) + "/requeue", { method: "POST" });
        route();
      } catch (e) {
        failed(e);
      }
    } }, "Requeue")) : null);
  const heads = ["task", "queue", "tenant", "state", "attempts", "run", "error or payload", "enqueued"];
  show(
    el("h1", {}, "Queues"),
    table("queues", ["queue", "pending", "leased", "done", "dead", "max in flight", "max attempts"],
      queues.map((x) => el("tr", { class: "queue" },
        el("td", {}, el("a", { href: "#/queues?queue=" + encodeURIComponent(x.name) }, x.name)),
        ["pending", "leased", "done", "dead"].map((s) => el("td", { class: "num" }, depth(x.depth, s))),
        el("td", { class: "num" }, x.max_in_flight ?? "∞"),
        el("td", { class: "num" }, x.max_attempts))), "No queues."),
    el("h2", {}, "Dead-letter queue" + (queue ? " of " + queue : "")),
    table("dead-letters", heads.concat(["requeue"]), dead.tasks.map((t) => taskRow(t, true)),
      "No dead tasks."),
    el("h2", {}, "Latest tasks" + (queue ? " of " + queue : "")),
    table("tasks", heads, latest.tasks.map((t) => taskRow(t, false)), "No tasks."),
  );
  return true;
}

async function schedulesPage() {
  const { schedules } = await api("/schedules");
  show(
    el("h1", {}, "Schedules"),
    table("schedules", ["schedule", "when", "what", "next", "last fired", "fired", "missed"],
      schedules.map((x) => el("tr", { class: "schedule" },
        el("td", {}, x.name),
        el("td", {}, x.cron || "once"),
        el("td", {}, x.agent ? "a run of " + x.agent : "a task on " + x.queue),
        el("td", {}, when(x.next_at)),
        el("td", {}, when(x.last_fired_at)),
        el("td", { class: "num" }, x.fired),
        el("td", {}, x.missed))), "No schedules."),
  );
  return true;
}

// Each supervisor with its children: a run of an agent (its attempts, current run, result) or
// another supervisor, linked — the tree read top down.
async function supervisorsPage() {
  const { supervisors } = await api("/supervisors");
  const nested = new Set(supervisors.flatMap((s) =>
    (s.spec.children || []).map((c) => c.supervisor).filter(Boolean)));
  const section = (sup) => {
    const states = new Map(((sup.state && sup.state.children) || []).map((c) => [c.name, c]));
    return el("section", { class: "supervisor", id: "supervisor-" + sup.name },
      el("h2", {}, sup.name, " ", state(sup.status === "running" ? "running" :
        sup.status === "completed" ? "succeeded" : "failed"), " " + sup.status),
      el("p", { class: "muted" }, (sup.spec.strategy || "") + " · at most " +
        (sup.spec.maxRestarts ?? 3) + " restarts within " + ((sup.spec.withinMs ?? 60000) / 1000) + " s" +
        (nested.has(sup.name) ? " · a child of another supervisor" : ""),
        sup.state && sup.state.reason ? el("span", { class: "error" }, " gave up: " + sup.state.reason) : null),
      table("children-" + sup.name, ["child", "is", "attempt", "run", "done", "result or feedback"],
        (sup.spec.children || []).map((c) => {
          const st = states.get(c.name) || {};
          return el("tr", { class: "child" },
            el("td", {}, c.name),
            el("td", {}, c.supervisor ? ["supervisor ",
              el("a", { href: "#/supervisors", onclick: () => {
                setTimeout(() => {
                  const target = document.getElementById("supervisor-" + c.supervisor);
                  if (target) target.scrollIntoView();
                });
              } }, c.supervisor)] : "agent " + c.agent),
            el("td", { class: "num" }, st.attempt ?? ""),
            el("td", {}, st.run_id ? el("a", { href: "#/runs/" + st.run_id }, st.run_id) : ""),
            el("td", {}, st.done ? "yes" : "no"),
            el("td", {}, el("pre", {}, st.result || st.feedback || "")));
        }), "No children."));
  };
  // Roots first, then the supervisors below them.
  const ordered = supervisors.filter((s) => !nested.has(s.name))
    .concat(supervisors.filter((s) => nested.has(s.name)));
  show(el("h1", {}, "Supervisors"),
    supervisors.length ? ordered.map(section) : el("p", { class: "muted", id: "supervisors" }, "No supervisors."));
  return true;
}

// The merge queue: each repository and its submissions in order, with how each went.
async function mergesPage() {
  const { repos } = await api("/repos");
  const subs = await Promise.all(repos.map((r) =>
    api("/repos/" + encodeURIComponent(r.name) + "/submissions")));
  show(
    el("h1", {}, "Merge queue"),
    repos.length ? repos.map((r, i) => el("section", { class: "repo" },
      el("h2", {}, r.name, el("span", { class: "muted" }, " → " + r.target + " · check: " + r.check)),
      table("submissions-" + r.name, ["submission", "branch", "by", "state", "detail", "merged", "updated"],
        subs[i].submissions.slice().reverse().map((x) => el("tr", { class: "submission" },
          el("td", {}, x.id), el("td", {}, x.branch), el("td", {}, x.submitter),
          el("td", {}, state(x.state === "merged" ? "succeeded" : x.state === "rejected" ? "failed" : "queued"), " " + x.state),
          el("td", {}, el("pre", {}, x.detail || "")), el("td", {}, x.merged || ""),
          el("td", {}, when(x.updated_at)))), "No submissions."))) :
      el("p", { class: "muted", id: "repos" }, "No repositories."),
  );
  return true;
}

// Agents' identities: who owns each, whether it is active, suspended or retired, and suspend /
// resume in place with a reason.
async function identitiesPage() {
  // Managed agents, and external ones known by their keys.
  const [managed, { keys }] = await Promise.all([api("/agents"), api("/keys")]);
  const names = [...new Set(managed.agents.map((a) => a.name).concat(keys.map((k) => k.agent)))].sort();
  const agents = names.map((name) => ({ name }));
  const ids = await Promise.all(agents.map((a) =>
    api("/agents/" + encodeURIComponent(a.name) + "/identity").catch(() => null)));
  show(
    el("h1", {}, "Identities"),
    table("identities", ["agent", "owner", "status", "reason", "changed", "act"],
      agents.map((a, i) => {
        const id = ids[i] || { status: "active" };
        const base = "/agents/" + encodeURIComponent(a.name);
        return el("tr", { class: "identity" },
          el("td", {}, a.name), el("td", {}, id.owner || ""),
          el("td", {}, state(id.status === "active" ? "active" : "revoked"), " " + id.status),
          el("td", {}, id.reason || ""), el("td", {}, when(id.updated_at)),
          el("td", {}, id.status === "active" ? withReason("suspend", "Suspend", base + "/suspend", "reason") :
            id.status === "suspended" ? withReason("resume", "Resume", base + "/resume", "reason") : ""));
      }), "No agents."),
  );
  return true;
}

// Delegations: who granted what to whom, below which link, until when; revoked in place (the
// links below a revoked one go with it).
async function delegationsPage() {
  const { delegations } = await api("/delegations");
  show(
    el("h1", {}, "Delegations"),
    table("delegations", ["link", "from", "to", "below", "scope", "expires", "state", "revoke"],
      delegations.map((d) => el("tr", { class: "delegation" },
        el("td", {}, d.id), el("td", {}, d.issuer), el("td", {}, d.holder),
        el("td", {}, d.parent_id || ""), el("td", {}, el("pre", {}, pretty(d.scope))),
        el("td", {}, when(d.expires_at)),
        el("td", {}, d.revoked_at ? [state("revoked"), " " + (d.revoke_reason || "")] : state("active")),
        el("td", {}, d.revoked_at ? "" : withReason("revoke", "Revoke",
          "/delegations/" + encodeURIComponent(d.id) + "/revoke", "reason")))), "No delegations."),
  );
  return true;
}

async function sandboxesPage() {
  const { sandboxes } = await api("/sandboxes");
  const create = el("button", { id: "new-sandbox", class: "primary", type: "button", onclick: async () => {
    try {
      const made = await api("/sandboxes", { json: {} });
      location.hash = "#/sandboxes/" + made.sandboxes[0];
    } catch (e) {
      failed(e);
    }
  } }, "New sandbox");
  show(
    el("h1", {}, "Sandboxes"),
    el("p", {}, create),
    table("sandboxes", ["sandbox", "state", "layers"], sandboxes.map((x) => el("tr", { class: "sandbox" },
      el("td", {}, el("a", { href: "#/sandboxes/" + x.id }, x.id)),
      el("td", {}, x.state), el("td", { class: "num" }, x.layers.length))), "No persistent sandboxes."),
  );
  return true;
}

// A sandbox's exec console: each command line runs in a fresh isolated process tree on the
// sandbox's workspace (`/bin/sh -c`, in /workspace), its output and exit shown below it.
async function sandboxPage(id) {
  const { sandboxes } = await api("/sandboxes");
  const sb = sandboxes.find((x) => x.id === id);
  if (!sb) throw new ApiError(404, "no sandbox " + id);
  const log = el("div", { id: "exec-log" });
  const line = el("input", { id: "exec-command", placeholder: "a command line, e.g. ls -la", autocomplete: "off" });
  const form = el("form", { id: "exec-form", class: "inline", onsubmit: async (ev) => {
    ev.preventDefault();
    const command = line.value;
    if (!command.trim()) return;
    line.value = "";
    const entry = el("div", { class: "exec" }, el("pre", { class: "command" }, "$ " + command));
    log.append(entry);
    try {
      const r = await api("/sandboxes/" + encodeURIComponent(id) + "/exec", { json: { command } });
      entry.append(
        r.stdout ? el("pre", { class: "stdout" }, r.stdout) : null,
        r.stderr ? el("pre", { class: "stderr" }, r.stderr) : null,
        el("p", { class: "muted exit" }, r.ended + (r.exit_code !== null ? " " + r.exit_code : "") +
          (r.signal ? " (signal " + r.signal + ")" : "") + " · " + r.wall_ms + " ms" +
          (r.truncated ? " · output truncated" : "")));
    } catch (e) {
      entry.append(el("p", { class: "error" }, e.message));
    }
    line.focus();
  } }, line, el("button", { class: "primary", type: "submit" }, "Run"));
  show(el("h1", {}, "Sandbox ", id), el("p", { class: "muted" }, sb.state + " · " +
    sb.layers.length + " layers"), form, log);
  line.focus();
  return false;
}

function scoreTable(scores, id) {
  return table(id, ["run", "evaluator", "score", "passed", "why", "cost", "at"], scores.map((x) =>
    el("tr", { class: "score" },
      el("td", {}, el("a", { href: "#/runs/" + x.run_id }, x.run_id)),
      el("td", {}, x.evaluator),
      el("td", { class: "num" }, x.score === null || x.score === undefined ? "—" : x.score.toFixed(2)),
      el("td", {}, x.passed === null || x.passed === undefined ? "" : state(x.passed ? "ok" : "error")),
      el("td", {}, x.reason || ""),
      el("td", { class: "num" }, x.cost_usd ? "$" + x.cost_usd.toFixed(6) : ""),
      el("td", {}, when(x.at)))), "No scores.");
}

// A bar as long as `m` (0 to 1) of its track; sized through the CSSOM, as the page's policy
// allows no inline style attributes.
function meanBar(m) {
  const bar = el("div", { class: "bar" });
  bar.style.width = (m * 100).toFixed(1) + "%";
  return el("div", { class: "bar-track" }, bar);
}

// Evaluators, each with its mean score and pass rate charted, and the latest scores.
async function evaluationPage(params) {
  const pick = params.get("evaluator");
  const { evaluators } = await api("/evaluators");
  const each = await Promise.all(evaluators.map((e) =>
    api("/scores?limit=1000&evaluator=" + encodeURIComponent(e.name))));
  const [latest, { experiments }, { datasets }] = await Promise.all([
    api("/scores?limit=100" + (pick ? "&evaluator=" + encodeURIComponent(pick) : "")),
    api("/experiments"), api("/datasets")]);
  const what = (s) => s.kind + (s.agents && s.agents.length ? " · online on " + s.agents.join(", ") +
    (s.sample < 1 ? " (" + Math.round(s.sample * 100) + "% sampled)" : "") : " · on request");
  show(
    el("h1", {}, "Evaluation"),
    el("p", { class: "muted" },
      "Evaluators score whole runs — rules, code in a sandbox, or a model as judge (PUT /api/v1/evaluators/{name})."),
    table("evaluators", ["evaluator", "what", "scored", "mean score", "pass rate"],
      evaluators.map((e, i) => {
        const m = each[i].mean;
        return el("tr", { class: "evaluator" },
          el("td", {}, el("a", { href: "#/evaluation?evaluator=" + encodeURIComponent(e.name) }, e.name)),
          el("td", {}, what(e.spec)),
          el("td", { class: "num" }, each[i].scores.length),
          el("td", { class: "bar-cell" }, m === null || m === undefined ? "—" : [meanBar(m), " " + m.toFixed(2)]),
          el("td", { class: "num" }, each[i].pass_rate === null || each[i].pass_rate === undefined ? "—" :
            Math.round(each[i].pass_rate * 100) + "%"));
      }), "No evaluators."),
    el("h2", {}, "Experiments"),
    experimentTable(experiments),
    el("h2", {}, "Datasets"),
    table("datasets", ["dataset", "items", "updated"], datasets.map((d) => el("tr", { class: "dataset" },
      el("td", {}, d.name), el("td", { class: "num" }, d.items), el("td", {}, when(d.updated_at)))),
      "No datasets."),
    el("h2", {}, "Latest scores" + (pick ? " of " + pick : "")),
    scoreTable(latest.scores, "scores"),
  );
  return true;
}

// Experiments with their summaries; two ticked are compared side by side.
function experimentTable(experiments) {
  const ticked = new Set();
  const compare = el("button", { id: "compare-experiments", type: "button", disabled: true, onclick: () => {
    const [a, b] = [...ticked];
    location.hash = "#/experiments/" + a + "/" + b;
  } }, "Compare the two ticked");
  const mean = (x) => Object.entries(x.summary.evaluators).map(([k, v]) =>
    k + " " + (v.mean === null || v.mean === undefined ? "—" : v.mean.toFixed(2))).join(", ");
  return [table("experiments", ["", "experiment", "dataset", "agent", "runs", "succeeded", "scores", "cost"],
    experiments.map((x) => el("tr", { class: "experiment" },
      el("td", {}, el("input", { type: "checkbox", class: "pick", "data-id": x.id, onchange: (ev) => {
        if (ev.target.checked) ticked.add(x.id); else ticked.delete(x.id);
        compare.disabled = ticked.size !== 2;
      } })),
      el("td", {}, el("a", { href: "#/experiments/" + x.id }, x.id)),
      el("td", {}, x.dataset), el("td", {}, x.agent + " v" + x.agent_version),
      el("td", { class: "num" }, x.summary.ended + " / " + x.summary.runs),
      el("td", { class: "num" }, x.summary.succeeded),
      el("td", {}, mean(x)),
      el("td", { class: "num" }, "$" + x.summary.cost_usd.toFixed(6)))), "No experiments."),
    experiments.length > 1 ? el("p", {}, compare) : null];
}

// One experiment, or two side by side: their summaries, then item by item each run's result
// and scores.
async function experimentsPage(ids) {
  const xs = await Promise.all(ids.map((id) => api("/experiments/" + encodeURIComponent(id))));
  const row = (label, f, id) => el("tr", { id }, el("th", {}, label), xs.map((x) => el("td", {}, f(x))));
  const names = [...new Set(xs.flatMap((x) => x.evaluators))];
  const summary = el("table", { id: "experiment-summary" },
    el("tr", {}, el("th", {}, ""), xs.map((x) => el("th", {}, el("a", { href: "#/experiments/" + x.id }, x.id)))),
    row("agent", (x) => x.agent + " v" + x.agent_version),
    row("dataset", (x) => x.dataset),
    row("runs ended", (x) => x.summary.ended + " / " + x.summary.runs),
    row("succeeded", (x) => String(x.summary.succeeded)),
    names.map((n) => row(n + " (mean, pass rate)", (x) => {
      const e = x.summary.evaluators[n];
      if (!e || e.mean === null || e.mean === undefined) return "—";
      return [meanBar(e.mean), " " + e.mean.toFixed(2) + " · " +
        (e.pass_rate === null || e.pass_rate === undefined ? "—" : Math.round(e.pass_rate * 100) + "%")];
    }, "score-" + n)),
    row("cost", (x) => "$" + x.summary.cost_usd.toFixed(6)),
    row("mean duration", (x) => x.summary.mean_duration_ms === null ? "" :
      (x.summary.mean_duration_ms / 1000).toFixed(2) + " s"));
  const items = xs[0].items.map((it, i) => el("tr", { class: "experiment-item" },
    el("td", {}, el("pre", {}, it.input), it.expected ? el("div", { class: "muted" }, "expected: " + it.expected) : null),
    xs.map((x) => {
      const r = x.items[i];
      if (!r) return el("td", {}, "");
      return el("td", {}, r.state ? state(r.state) : "", " ",
        el("a", { href: "#/runs/" + r.run_id }, "run"),
        el("pre", {}, r.result || ""),
        Object.entries(r.scores).map(([k, v]) => el("div", {}, k + ": " +
          (v.score === null || v.score === undefined ? "—" : v.score.toFixed(2)) + (v.reason ? " · " + v.reason : ""))));
    })));
  show(el("h1", {}, xs.length > 1 ? "Compare experiments" : "Experiment " + xs[0].id), summary,
    el("h2", {}, "Item by item"),
    el("table", { id: "experiment-items" }, el("tr", {}, el("th", {}, "item"), xs.map((x) => el("th", {}, x.id))), items));
  return xs.some((x) => x.summary.ended < x.summary.runs ||
    Object.values(x.summary.evaluators).some((e) => e.scored < x.summary.runs));
}

async function keysPage() {
  const { keys } = await api("/keys");
  show(
    el("h1", {}, "Keys"),
    el("p", { class: "muted" }, "Agents' API keys (their secrets are shown once, when made)."),
    keys.length ? el("table", { id: "keys" },
      el("tr", {}, ["key", "agent", "made", "expires", "state", "revoke"].map((h) =>
        el("th", {}, h))),
      keys.map((k) => {
        const reason = el("input", { class: "reason", placeholder: "reason" });
        const revoke = async () => {
          if (!reason.value.trim()) {
            reason.focus();
            return;
          }
          try {
            await api("/keys/" + encodeURIComponent(k.id) + "/revoke",
              { json: { reason: reason.value } });
            route();
          } catch (e) {
            failed(e);
          }
        };
        return el("tr", { class: "key" },
          el("td", {}, k.id),
          el("td", {}, k.agent),
          el("td", {}, when(k.created_at)),
          el("td", {}, k.expires_at ? when(k.expires_at) : "never"),
          el("td", {}, k.revoked_at ? [state("revoked"), " " + (k.revoke_reason || "")] : state("active")),
          el("td", {}, k.revoked_at ? null : [reason, " ",
            el("button", { class: "revoke", type: "button", onclick: revoke }, "Revoke")]));
      })) : el("p", { class: "muted", id: "keys" }, "No keys."),
  );
  return true;
}

async function policiesPage() {
  const p = await api("/policies");
  const text = el("textarea", { id: "policy-text", rows: 24, spellcheck: "false" });
  text.value = p.text;
  const status = el("p", { id: "policy-status", class: "muted" },
    "Version " + p.version + " is in force.");
  const problems = el("pre", { id: "policy-errors", class: "error", hidden: true });
  const save = async () => {
    problems.hidden = true;
    try {
      const r = await api("/policies", { method: "PUT", body: text.value,
        headers: { "content-type": "text/plain" } });
      status.textContent = "Version " + r.version + " saved: it is in force.";
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return failed(e);
      // Cedar's diagnostics, in place; the set in force is unchanged.
      problems.textContent = e.message;
      problems.hidden = false;
      status.textContent = "Not saved: version " + p.version + " is still in force.";
    }
  };
  show(
    el("h1", {}, "Policies"),
    el("p", { class: "muted" },
      "Cedar policies, validated against Steward's schema before they take effect."),
    status,
    text,
    el("p", {}, el("button", { class: "primary", id: "policy-save", type: "button", onclick: save },
      "Validate and save")),
    problems,
  );
  return false;
}

async function route() {
  clearTimeout(refresh);
  if (!sessionStorage.getItem(TOKEN_KEY)) {
    signIn();
    return;
  }
  document.getElementById("nav").hidden = false;
  document.getElementById("sign-out").hidden = false;
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const a of document.querySelectorAll("nav a")) {
    const target = a.getAttribute("href").slice(1);
    a.classList.toggle("here", target === "/" ? parts.length === 0 : path.startsWith(target));
  }
  let page;
  if (parts.length === 0) page = () => overview().then(() => true);
  else if (parts[0] === "runs" && parts[1]) page = () => runPage(parts[1]);
  else if (parts[0] === "compare" && parts[2]) page = () => comparePage(parts[1], parts[2]);
  else if (parts[0] === "runs") page = () => runsPage(params).then(() => true);
  else if (parts[0] === "approvals") page = () => approvalsPage();
  else if (parts[0] === "policies") page = () => policiesPage();
  else if (parts[0] === "costs") page = () => costsPage(params);
  else if (parts[0] === "calls") page = () => callsPage(params);
  else if (parts[0] === "keys") page = () => keysPage();
  else if (parts[0] === "alerts") page = () => alertsPage();
  else if (parts[0] === "evaluation") page = () => evaluationPage(params);
  else if (parts[0] === "experiments" && parts[1]) page = () => experimentsPage(parts.slice(1, 3));
  else if (parts[0] === "queues") page = () => queuesPage(params);
  else if (parts[0] === "schedules") page = () => schedulesPage();
  else if (parts[0] === "supervisors") page = () => supervisorsPage();
  else if (parts[0] === "merges") page = () => mergesPage();
  else if (parts[0] === "sandboxes" && parts[1]) page = () => sandboxPage(parts[1]);
  else if (parts[0] === "sandboxes") page = () => sandboxesPage();
  else if (parts[0] === "identities") page = () => identitiesPage();
  else if (parts[0] === "delegations") page = () => delegationsPage();
  else if (parts[0] === "audit") page = () => auditPage();
  else if (parts[0] === "traces" && parts[1]) page = () => tracePage(parts[1]);
  else if (parts[0] === "traces") page = () => tracesPage(params);
  else page = async () => show(el("p", { class: "error" }, "No such page."));
  const hash = location.hash;
  try {
    const live = await page();
    // A new page starts at its top; the same page refreshed stays where it was read.
    if (hash !== shown) window.scrollTo(0, 0);
    shown = hash;
    // Live pages follow changes; a form being filled in is left alone.
    if (live && location.hash === hash) {
      const tick = () => {
        if (main.contains(document.activeElement)) refresh = setTimeout(tick, REFRESH_MS);
        else route();
      };
      refresh = setTimeout(tick, REFRESH_MS);
    }
  } catch (e) {
    failed(e);
  }
}

document.getElementById("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.hash = "#/";
  signIn();
});
window.addEventListener("hashchange", route);
route();
