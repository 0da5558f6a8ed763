// pier dashboard: a client of the same registry API as the CLI (no private endpoints).
// Every string from the API goes into the page as text (textContent), never as HTML.
"use strict";

const TOKEN_KEY = "pier-token";
const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 3000;   // live chart, instances, runners, balancers
const TAIL_KEEP = 500;     // log lines kept on the page
const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem(TOKEN_KEY); }

// el("td", {class: "x"}, "text", childNode, ...): strings become text nodes.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  return fill(e, attrs, children);
}

function svg(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG, tag), attrs, children);
}

function fill(e, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function status(text, isError) {
  const s = $("status");
  s.textContent = text || "";
  s.className = isError ? "error" : "";
}

class ApiError extends Error {
  constructor(message, code) { super(message); this.code = code; }
}

// One page at a time: leaving it stops its timers and its streams.
let page = new AbortController();

function headers(extra) {
  return Object.assign({ "Authorization": "Bearer " + token(), "Accept": "application/json" }, extra || {});
}

async function api(method, path, body) {
  const init = { method, headers: headers(), credentials: "omit", cache: "no-store", signal: page.signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let v = null;
  try { v = text ? JSON.parse(text) : null; } catch (_) { v = null; }
  if (r.status === 401) { logout("The token was refused: log in again."); throw new ApiError("unauthorized", 401); }
  if (!r.ok) throw new ApiError((v && v.reason) || ("HTTP " + r.status), r.status);
  return v;
}

// Runs an action; shows the API's reason when it is refused, then redraws.
async function act(what, fn) {
  try {
    await fn();
    await route();
    status(what + ": done");
  } catch (e) {
    status(what + " refused: " + e.message, true);
  }
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem("pier-operator");
  location.hash = "#/";
  status(message || "");
  route();
}

// Calls fn every REFRESH_MS while the page is shown (not while the tab is hidden).
function every(fn) {
  const signal = page.signal;
  const tick = async () => {
    if (signal.aborted) return;
    if (!document.hidden) {
      try { await fn(); } catch (e) { if (!signal.aborted && e.code !== 401) status(e.message, true); }
    }
    if (!signal.aborted) setTimeout(tick, REFRESH_MS);
  };
  setTimeout(tick, REFRESH_MS);
}

function time(ms) { return ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + "Z" : ""; }
function ago(ms) {
  const s = Math.round(ms / 1000);
  return s < 120 ? s + " s ago" : s < 7200 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
}
function mib(bytes) { return (bytes / 1048576).toFixed(1) + " MiB"; }
function num(v, digits) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }

// A table that becomes one card per row on narrow screens (each cell labelled by its column).
function table(head, rows, label) {
  const body = el("tbody", {}, rows);
  for (const tr of body.rows) {
    [...tr.cells].forEach((td, i) => { if (head[i]) td.setAttribute("data-label", head[i]); });
  }
  return el("div", { class: "scroll" }, el("table", { class: "cards", "aria-label": label },
    el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))), body));
}

function form(label, fields, submit, onsubmit) {
  const inputs = fields.map((f) => f.multiline
    ? el("textarea", { id: f.id, name: f.id, rows: 4, required: f.required, placeholder: f.placeholder, spellcheck: "false" })
    : el("input", { id: f.id, name: f.id, type: f.type || "text", value: f.value, min: f.min, max: f.max,
      required: f.required, placeholder: f.placeholder, autocomplete: "off" }));
  return el("form", { class: fields.some((f) => f.multiline) ? "stack" : "inline", "aria-label": label,
    onsubmit: (ev) => { ev.preventDefault(); onsubmit(inputs.map((i) => i.value)); } },
  fields.map((f, i) => el("div", {}, el("label", { for: f.id }, f.label), inputs[i])),
  el("button", { type: "submit" }, submit));
}

function button(text, label, onclick) {
  return el("button", { type: "button", class: "quiet", "aria-label": label, onclick }, text);
}

function card(id, title, ...children) {
  return el("section", { class: "card", "aria-labelledby": "h-" + id, id: "s-" + id },
    el("h2", { id: "h-" + id }, title), children);
}

function heading(text) {
  return el("h1", { tabindex: "-1", id: "page-title" }, text);
}

// ------------------------------------------------------------------ live chart

// Requests/s (bars) and p99 latency (line) over the last two minutes, from stats.series. The
// drawing stretches to the card's width (its labels are text beside it, so they stay readable
// on a phone).
function chart(series) {
  const W = 600, H = 100;
  const n = Math.max(series.length, 1);
  const step = W / n;
  const maxRps = Math.max(1, ...series.map((p) => p.requests_per_second));
  const p99s = series.map((p) => p.p99_ms).filter((v) => v !== null && v !== undefined);
  const maxP99 = Math.max(1, ...p99s);
  const y = (v, max) => H * (1 - v / max);
  const bars = series.map((p, i) => svg("rect", { class: "bar", x: (i * step + 1).toFixed(1),
    y: y(p.requests_per_second, maxRps).toFixed(1), width: Math.max(step - 2, 1).toFixed(1),
    height: (H * p.requests_per_second / maxRps).toFixed(1) }));
  const points = series.map((p, i) => p.p99_ms === null || p.p99_ms === undefined ? null
    : (i * step + step / 2).toFixed(1) + "," + y(p.p99_ms, maxP99).toFixed(1)).filter(Boolean);
  const last = series.length > 1 ? series[series.length - 2] : series[series.length - 1];
  const summary = last
    ? "Last 10 s: " + num(last.requests_per_second, 1) + " requests/s, p99 " + num(last.p99_ms, 1) + " ms, " + last.errors_5xx + " 5xx"
    : "No requests yet.";
  return el("figure", { class: "chart" },
    el("div", { class: "legend" }, el("span", { class: "rps" }, "bars: requests/s, up to " + num(maxRps, 1)),
      el("span", { class: "p99l" }, "line: p99, up to " + num(maxP99, 1) + " ms")),
    svg("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", role: "img",
      "aria-label": "Requests per second and p99 latency, last two minutes. " + summary },
    bars,
    points.length > 1 ? svg("polyline", { class: "p99", points: points.join(" ") }) : null),
    el("div", { class: "legend axis" }, el("span", {}, "2 min ago"), el("span", {}, "now")),
    el("figcaption", { id: "chart-summary" }, summary));
}

// ------------------------------------------------------------------ pages

async function appsPage(view) {
  const list = await api("GET", "/v1/apps");
  view.append(heading("Apps"));
  if (list.apps.length === 0) view.append(el("p", { class: "muted" }, "No apps yet."));
  view.append(el("ul", { class: "apps" }, list.apps.map((a) =>
    el("li", {}, el("a", { href: "#/apps/" + encodeURIComponent(a.name) }, a.name)))));
  if (isOperator()) {
    view.append(card("create", "Create an app",
      form("Create an app", [{ id: "new-app", label: "Name", required: true, placeholder: "blog" }], "Create",
        ([name]) => act("Create " + name, () => api("POST", "/v1/apps", { name })))));
  }
}

async function appPage(view, app) {
  const base = "/v1/apps/" + encodeURIComponent(app);
  const quiet = (p, empty) => p.catch((e) => { if (e.code === 401) throw e; return empty; });
  const [shown, domains, releases, config, formation, instances, stats, usage] = await Promise.all([
    api("GET", base),
    api("GET", base + "/domains"),
    quiet(api("GET", base + "/releases"), { releases: [] }),
    quiet(api("GET", base + "/config"), { config: {} }),
    quiet(api("GET", base + "/formation"), { formation: {} }),
    quiet(api("GET", base + "/instances"), { instances: [] }),
    quiet(api("GET", base + "/stats"), null),
    quiet(api("GET", base + "/usage"), null),
  ]);
  view.append(heading(app));
  const certs = new Map((shown.domains || []).filter((d) => d.certificate).map((d) => [d.domain, d.certificate]));

  // Requests: the live chart, then the minute, hour and day.
  const requests = card("requests", "Requests");
  view.append(requests);
  const drawStats = (s) => {
    requests.replaceChildren(requests.firstChild);
    if (!s) { requests.append(el("p", { class: "muted" }, "Request stats need the platform (pier up).")); return; }
    requests.append(chart(s.series || []),
      table(["Window", "Requests/s", "p50 ms", "p99 ms", "5xx"], s.requests.map((w) => el("tr", {},
        el("td", {}, w.window), el("td", {}, num(w.requests_per_second, 2)),
        el("td", {}, num(w.p50_ms, 1)), el("td", {}, num(w.p99_ms, 1)), el("td", {}, String(w.errors_5xx)))), "Requests by window"));
  };
  drawStats(stats);

  // Usage: the month so far, priced when the operator has a price sheet.
  view.append(card("usage", "Usage this month",
    !usage ? el("p", { class: "muted" }, "Usage needs the platform database (pier api --platform-db).")
      : !usage.apps.length ? el("p", { class: "muted" }, "No usage in " + usage.month + " yet.")
      : table(["Item", "Quantity", "Unit", "Cost"], usage.apps[0].items.map((i) => el("tr", {},
          el("td", {}, i.item), el("td", {}, num(i.quantity, 4)), el("td", {}, i.unit),
          el("td", {}, i.cost == null ? "-" : num(i.cost, 4) + " " + (usage.currency || ""))))
        .concat(usage.apps[0].cost == null ? [] : [el("tr", {}, el("td", {}, "total"), el("td", {}), el("td", {}),
          el("td", {}, num(usage.apps[0].cost, 4) + " " + (usage.currency || "")))]), "Usage in " + usage.month),
    usage && usage.gaps.length ? el("p", { class: "note" }, "Some usage may be missing: " + usage.gaps.map((g) => g.text).join("; ")) : null));

  // Domains: verification state, the exact record to publish, certificates.
  const target = domains.domains.map((d) => d.dns_target).find(Boolean);
  view.append(card("domains", "Domains",
    target ? el("p", { class: "note" }, "Point domains at ", el("code", {}, target), " (a CNAME; at a zone apex, the same addresses).") : null,
    table(["Domain", "State", "Proof or certificate", ""], domains.domains.map((d) => {
      const path = base + "/domains/" + encodeURIComponent(d.domain);
      const cert = certs.get(d.domain);
      return el("tr", {},
        el("td", {}, d.domain),
        el("td", { class: d.verified ? "ok nowrap" : "nowrap" }, d.verified ? "verified" : "pending"),
        el("td", {}, d.verified
          ? (cert ? expiry(cert.not_after) : el("span", { class: "muted" }, d.cert_state && d.cert_state !== "off" ? "certificate: " + d.cert_state : "no certificate"))
          : (d.challenge ? el("code", { class: "mono" }, d.challenge.name + ". 300 IN " + d.challenge.type + " \"" + d.challenge.value + "\"") : ""),
        d.dns ? el("div", { class: "note" }, d.dns.points_at_target ? "points at " + d.dns.target : "not pointed at " + d.dns.target + " yet") : null,
        cert && d.cert_state && d.cert_state !== "off" ? el("div", { class: "note" }, "platform certificate: " + d.cert_state) : null),
        el("td", { class: "actions" },
          d.verified ? null : button("Verify", "Verify " + d.domain, () => act("Verify " + d.domain, () => api("POST", path + "/verify"))),
          cert ? button("Remove certificate", "Remove the certificate of " + d.domain,
            () => act("Remove the certificate of " + d.domain, () => api("DELETE", path + "/cert"))) : null,
          button("Remove", "Remove " + d.domain, () => act("Remove " + d.domain, () => api("DELETE", path)))));
    }), "Domains"),
    form("Add a domain", [{ id: "new-domain", label: "Domain", required: true, placeholder: "www.example.com" }], "Add",
      ([domain]) => act("Add " + domain, () => api("POST", base + "/domains", { domain }))),
    domains.domains.some((d) => d.verified) ? el("details", {}, el("summary", {}, "Upload a certificate"),
      form("Upload a certificate", [
        { id: "cert-domain", label: "Verified domain", required: true, placeholder: "www.example.com" },
        { id: "cert-pem", label: "Certificate chain (PEM)", required: true, multiline: true, placeholder: "-----BEGIN CERTIFICATE-----" },
        { id: "key-pem", label: "Private key (PEM)", required: true, multiline: true, placeholder: "-----BEGIN PRIVATE KEY-----" }], "Upload",
      ([domain, cert, key]) => act("Certificate for " + domain, () =>
        api("PUT", base + "/domains/" + encodeURIComponent(domain.trim()) + "/cert", { cert, key })))) : null));

  // Formation, with scale controls; instances with their use.
  const formationCard = card("formation", "Formation and instances",
    Object.entries(formation.formation || {}).map(([t, n]) =>
      form("Scale " + t, [{ id: "scale-" + t, label: t + " instances", type: "number", min: 0, max: 100, value: n }], "Scale",
        ([count]) => act("Scale " + t, () => api("PATCH", base + "/formation", { [t]: Number(count) })))),
    Object.keys(formation.formation || {}).length ? null : el("p", { class: "muted" }, "Nothing to scale before the first deploy."));
  const instancesBox = el("div", { id: "instances" });
  formationCard.append(instancesBox);
  view.append(formationCard);
  const drawInstances = (list, s) => {
    const use = new Map();
    for (const i of (s && s.instances) || []) {
      const w = i.windows.find((x) => x.window === "1m");
      if (w) use.set(i.instance, w);
    }
    instancesBox.replaceChildren(table(["Instance", "State", "Runner", "Address", "CPU (1 min)", "Memory", "Restarts"],
      list.instances.map((i) => {
        const u = use.get(i.ptype + "." + i.index + "@" + i.runner);
        return el("tr", {},
          el("td", {}, i.ptype + "." + i.index),
          el("td", { class: i.state === "up" ? "ok" : (i.state === "crashed" || i.state === "failed") ? "bad" : "" },
            String(i.state) + (i.last_exit ? " (" + i.last_exit + ")" : "")),
          el("td", {}, i.runner || ""),
          el("td", { class: "mono" }, i.address || ""),
          el("td", {}, u ? num(u.cpu_percent, 1) + " %" : num(i.cpu_s, 1) + " s"),
          el("td", {}, i.rss_kib ? mib(i.rss_kib * 1024) : u ? mib(u.memory_bytes) : ""),
          el("td", {}, String(i.restarts || 0)));
      }), "Instances"));
  };
  drawInstances(instances, stats);

  // Releases, with a rollback to any earlier one.
  view.append(card("releases", "Releases",
    table(["Version", "Created", "Description", "Status", ""], releases.releases.map((r) => el("tr", {},
      el("td", {}, "v" + r.version + (r.version === releases.current ? " (current)" : "")),
      el("td", {}, time(r.created_ms)),
      el("td", {}, r.description || ""),
      el("td", {}, r.status + (r.reason ? ": " + r.reason : "")),
      el("td", { class: "actions" }, r.version === releases.current ? null : button("Roll back", "Roll back to v" + r.version,
        () => act("Roll back to v" + r.version, () => api("POST", base + "/rollback", { version: r.version })))))), "Releases")));

  // Config vars: names shown, values hidden until asked.
  view.append(card("config", "Config vars",
    table(["Name", "Value"], Object.entries(config.config || {}).map(([k, v]) => {
      const cell = el("td", {});
      cell.append(button("Show", "Show the value of " + k, () => { cell.replaceChildren(el("code", { class: "mono" }, v)); }));
      return el("tr", {}, el("td", {}, el("code", {}, k)), cell);
    }), "Config vars"),
    form("Set a config var", [{ id: "cfg-key", label: "Name", required: true, placeholder: "GREETING" },
      { id: "cfg-value", label: "Value", placeholder: "hello" }], "Set",
    ([k, v]) => act("Set " + k, () => api("PATCH", base + "/config", { [k]: v })))));

  // The live log tail, as text.
  const pre = el("pre", { id: "log-lines", tabindex: "0", "aria-label": "Log lines, newest last" });
  const state = el("span", { id: "tail-state", class: "note" }, "connecting…");
  let paused = false;
  const pause = el("button", { type: "button", class: "quiet", "aria-pressed": "false",
    onclick: () => { paused = !paused; pause.setAttribute("aria-pressed", String(paused)); pause.textContent = paused ? "Resume" : "Pause"; } }, "Pause");
  view.append(card("logs", "Logs", el("div", { class: "row" }, pause, " ", state), pre));
  tail(base, pre, state, () => paused);

  performance.mark("pier-app-rendered");
  every(async () => {
    const [s, list] = await Promise.all([quiet(api("GET", base + "/stats"), null), quiet(api("GET", base + "/instances"), instances)]);
    drawStats(s);
    drawInstances(list, s);
  });
}

function expiry(notAfter) {
  const days = Math.floor((Date.parse(notAfter) - Date.now()) / 86400000);
  const text = "certificate until " + notAfter + (Number.isFinite(days) ? " (" + (days < 0 ? "expired" : days + " days") + ")" : "");
  return el("span", { class: days < 14 ? "bad" : "" }, text);
}

// Streams the app's log (NDJSON from /logs?tail=1) into `pre`, keeping the last TAIL_KEEP lines.
async function tail(base, pre, state, paused) {
  const signal = page.signal;
  const seen = new Set();
  let backoff = 1000;
  while (!signal.aborted) {
    try {
      const r = await fetch(base + "/logs?n=100&tail=1", { headers: headers({ "Accept": "application/x-ndjson" }), credentials: "omit", cache: "no-store", signal });
      if (r.status === 401) { logout("The token was refused: log in again."); return; }
      if (!r.ok || !r.body) { state.textContent = "no live log (HTTP " + r.status + ")"; return; }
      state.textContent = "live";
      backoff = 1000;
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let nl;
        const lines = [];
        while ((nl = buf.indexOf("\n")) >= 0) {
          const text = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (!text.trim()) continue;
          try {
            const l = JSON.parse(text);
            if (l.id && seen.has(l.id)) continue;
            if (l.id) seen.add(l.id);
            lines.push(time(l.at_ms) + " " + l.source + "[" + l.process + "]: " + l.line + "\n");
          } catch (_) { /* a partial or foreign line: skipped */ }
        }
        if (lines.length && !paused()) append(pre, lines);
      }
      state.textContent = "reconnecting…";
    } catch (e) {
      if (signal.aborted) return;
      state.textContent = "reconnecting…";
    }
    await new Promise((res) => setTimeout(res, backoff));
    backoff = Math.min(backoff * 2, 15000);
  }
}

function append(pre, lines) {
  const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
  for (const l of lines) pre.append(document.createTextNode(l));
  while (pre.childNodes.length > TAIL_KEEP) pre.firstChild.remove();
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

async function runnersPage(view) {
  view.append(heading("Runners"));
  const box = el("div", {});
  view.append(box);
  const draw = (list) => box.replaceChildren(list.runners.length === 0 ? el("p", { class: "muted" }, "No runner has reported.") :
    table(["Runner", "Address", "State", "Heartbeat", "Instances", "Limits"], list.runners.map((r) => el("tr", {},
      el("td", {}, r.id), el("td", { class: "mono" }, r.address),
      el("td", { class: r.live ? "ok" : "bad" }, r.live ? "live" : "dead"),
      el("td", {}, ago(r.heartbeat_age_ms)),
      el("td", {}, r.instances + " of " + r.capacity),
      el("td", {}, r.limits || ""))), "Runners"));
  draw(await api("GET", "/v1/runners"));
  every(async () => draw(await api("GET", "/v1/runners")));
}

async function balancersPage(view) {
  view.append(heading("Balancers"));
  const box = el("div", {});
  view.append(box);
  const draw = (list) => box.replaceChildren(
    el("p", { class: "note" }, "Registry at version " + list.registry_version + "."),
    list.balancers.length === 0 ? el("p", { class: "muted" }, "No balancer has reported.") :
      table(["Balancer", "State", "Route table", "Domains", "Certificates", "Registry lag", "Reported"], list.balancers.map((b) => el("tr", {},
        el("td", {}, b.id),
        el("td", { class: b.live && b.connected && !b.held ? "ok" : "bad" },
          (b.live ? "live" : "silent") + (b.connected ? "" : ", registry unreachable") + (b.held ? ", resync held" : "")),
        el("td", { class: b.versions_behind ? "bad" : "" }, "v" + b.table_version + (b.versions_behind ? " (" + b.versions_behind + " behind)" : " (current)")),
        el("td", {}, String(b.domains)), el("td", {}, String(b.certificates)),
        el("td", {}, b.lag_ms + " ms"),
        el("td", {}, ago(b.report_age_ms)))), "Balancers"));
  draw(await api("GET", "/v1/balancers"));
  every(async () => draw(await api("GET", "/v1/balancers")));
}

// ------------------------------------------------------------------ routing

function isOperator() { return sessionStorage.getItem("pier-operator") === "1"; }

// Whether the token is the operator's: the operator-only list answers it, an owner gets 403.
async function probeOperator() {
  if (sessionStorage.getItem("pier-operator") !== null) return;
  try {
    await api("GET", "/v1/balancers");
    sessionStorage.setItem("pier-operator", "1");
  } catch (e) {
    if (e.code === 401) throw e;
    sessionStorage.setItem("pier-operator", e.code === 403 ? "0" : "1");
  }
}

// Draws the page the hash names; `focus` moves the keyboard focus to its heading (after a
// navigation, as a screen reader user expects).
async function route(focus) {
  page.abort();
  page = new AbortController();
  const view = $("view");
  const logged = Boolean(token());
  $("login").hidden = logged;
  $("nav").hidden = !logged;
  view.replaceChildren();
  if (!logged) return;
  const hash = location.hash;
  try {
    await probeOperator();
    for (const a of document.querySelectorAll("[data-operator]")) a.hidden = !isOperator();
    for (const a of document.querySelectorAll("nav a")) {
      if (a.getAttribute("href") === (hash || "#/")) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    }
    const m = hash.match(/^#\/apps\/([^/]+)$/);
    if (m) await appPage(view, decodeURIComponent(m[1]));
    else if (hash === "#/runners") await runnersPage(view);
    else if (hash === "#/balancers") await balancersPage(view);
    else await appsPage(view);
    const h = $("page-title");
    if (h && (focus || document.activeElement === document.body)) h.focus({ preventScroll: true });
  } catch (e) {
    if (!(e instanceof ApiError && e.code === 401) && e.name !== "AbortError") status(e.message, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    $("token").value = "";
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    sessionStorage.removeItem("pier-operator");
    status("");
    route(true);
  });
  $("logout").addEventListener("click", () => logout("Logged out."));
  window.addEventListener("hashchange", () => { status(""); route(true); });
  route();
});
