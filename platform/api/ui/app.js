// pier dashboard: a client of the same registry API as the CLI (no private endpoints).
// Every string from the API goes into the page as text (textContent), never as HTML.
"use strict";

const TOKEN_KEY = "pier-token";
const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem(TOKEN_KEY); }

// el("td", {class: "x"}, "text", childNode, ...): strings become text nodes.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
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

class ApiError extends Error {}

async function api(method, path, body) {
  const headers = { "Authorization": "Bearer " + token(), "Accept": "application/json" };
  const init = { method, headers, credentials: "omit", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let v = null;
  try { v = text ? JSON.parse(text) : null; } catch (_) { v = null; }
  if (r.status === 401) { logout("The token was refused: log in again."); throw new ApiError("unauthorized"); }
  if (!r.ok) throw new ApiError((v && v.reason) || ("HTTP " + r.status));
  return v;
}

// Runs an action; shows the API's reason when it is refused, then redraws.
async function act(what, fn) {
  try {
    await fn();
    status(what + ": done");
    await route();
  } catch (e) {
    status(what + " refused: " + e.message, true);
  }
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  location.hash = "#/";
  status(message || "");
  route();
}

function time(ms) { return ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + "Z" : ""; }

function table(head, rows) {
  return el("div", { class: "scroll" }, el("table", {},
    el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows)));
}

function form(label, fields, submit, onsubmit) {
  const inputs = fields.map((f) => el("input", { id: f.id, name: f.id, type: f.type || "text", value: f.value,
    min: f.min, max: f.max, required: f.required, placeholder: f.placeholder, "aria-label": f.label }));
  return el("form", { class: "inline", "aria-label": label, onsubmit: (ev) => { ev.preventDefault(); onsubmit(inputs.map((i) => i.value)); } },
    fields.map((f, i) => el("div", {}, el("label", { for: f.id }, f.label), inputs[i])),
    el("button", { type: "submit" }, submit));
}

// ------------------------------------------------------------------ pages

async function appsPage(view) {
  const list = await api("GET", "/v1/apps");
  view.append(el("h1", {}, "Apps"));
  if (list.apps.length === 0) view.append(el("p", { class: "muted" }, "No apps yet."));
  view.append(el("ul", { class: "apps" }, list.apps.map((a) =>
    el("li", {}, el("a", { href: "#/apps/" + encodeURIComponent(a.name) }, a.name)))));
  view.append(el("h2", {}, "Create an app"),
    el("p", { class: "note" }, "Only the operator may create apps."),
    form("Create an app", [{ id: "new-app", label: "Name", required: true, placeholder: "blog" }], "Create",
      ([name]) => act("Create " + name, () => api("POST", "/v1/apps", { name }))));
}

async function appPage(view, app) {
  const base = "/v1/apps/" + encodeURIComponent(app);
  const [domains, releases, config, formation, instances, stats, logs] = await Promise.all([
    api("GET", base + "/domains"),
    api("GET", base + "/releases").catch(() => ({ releases: [] })),
    api("GET", base + "/config").catch(() => ({ config: {} })),
    api("GET", base + "/formation").catch(() => ({ formation: {} })),
    api("GET", base + "/instances").catch(() => ({ instances: [] })),
    api("GET", base + "/stats").catch(() => null),
    api("GET", base + "/logs?n=100").catch(() => ({ lines: [] })),
  ]);
  view.append(el("h1", {}, app));

  // Domains: verification state and the exact record to publish.
  const target = domains.domains.map((d) => d.dns_target).find(Boolean);
  view.append(el("section", { class: "card", "aria-labelledby": "h-domains" },
    el("h2", { id: "h-domains" }, "Domains"),
    target ? el("p", { class: "note" }, "Point domains at ", el("code", {}, target), " (a CNAME; at a zone apex, the same addresses).") : null,
    table(["Domain", "State", "Proof or certificate", ""], domains.domains.map((d) => el("tr", {},
      el("td", {}, d.domain),
      el("td", { class: d.verified ? "ok nowrap" : "nowrap" }, d.verified ? "verified" : "pending"),
      el("td", {}, d.verified
        ? (d.certificate ? "certificate until " + d.certificate.not_after : el("span", { class: "muted" }, "no certificate"))
        : (d.challenge ? el("code", { class: "mono" }, d.challenge.name + ". 300 IN " + d.challenge.type + " \"" + d.challenge.value + "\"") : ""),
        d.dns ? el("div", { class: "note" }, d.dns.points_at_target ? "points at " + d.dns.target : "not pointed at " + d.dns.target + " yet") : null),
      el("td", {},
        d.verified ? null : el("button", { type: "button", class: "quiet",
          onclick: () => act("Verify " + d.domain, () => api("POST", base + "/domains/" + encodeURIComponent(d.domain) + "/verify")) }, "Verify"),
        " ",
        el("button", { type: "button", class: "quiet",
          onclick: () => act("Remove " + d.domain, () => api("DELETE", base + "/domains/" + encodeURIComponent(d.domain))) }, "Remove"))))),
    form("Add a domain", [{ id: "new-domain", label: "Domain", required: true, placeholder: "www.example.com" }], "Add",
      ([domain]) => act("Add " + domain, () => api("POST", base + "/domains", { domain })))));

  // Releases, with a rollback to any earlier one.
  view.append(el("section", { class: "card", "aria-labelledby": "h-releases" },
    el("h2", { id: "h-releases" }, "Releases"),
    table(["Version", "Created", "Description", "Status", ""], releases.releases.map((r) => el("tr", {},
      el("td", {}, "v" + r.version + (r.version === releases.current ? " (current)" : "")),
      el("td", { class: "opt" }, time(r.created_ms)),
      el("td", {}, r.description || ""),
      el("td", {}, r.status + (r.reason ? ": " + r.reason : "")),
      el("td", {}, r.version === releases.current ? null : el("button", { type: "button", class: "quiet",
        onclick: () => act("Roll back to v" + r.version, () => api("POST", base + "/rollback", { version: r.version })) }, "Roll back")))))));

  // Config vars: names shown, values hidden until asked.
  view.append(el("section", { class: "card", "aria-labelledby": "h-config" },
    el("h2", { id: "h-config" }, "Config vars"),
    table(["Name", "Value"], Object.entries(config.config || {}).map(([k, v]) => {
      const cell = el("td", {});
      const show = el("button", { type: "button", class: "quiet", "aria-label": "Show the value of " + k,
        onclick: () => { cell.replaceChildren(el("code", { class: "mono" }, v)); } }, "Show");
      cell.append(show);
      return el("tr", {}, el("td", {}, el("code", {}, k)), cell);
    })),
    form("Set a config var", [{ id: "cfg-key", label: "Name", required: true, placeholder: "GREETING" },
      { id: "cfg-value", label: "Value", placeholder: "hello" }], "Set",
      ([k, v]) => act("Set " + k, () => api("PATCH", base + "/config", { [k]: v })))));

  // Formation, with scale controls.
  view.append(el("section", { class: "card", "aria-labelledby": "h-formation" },
    el("h2", { id: "h-formation" }, "Formation"),
    Object.entries(formation.formation || {}).map(([t, n]) =>
      form("Scale " + t, [{ id: "scale-" + t, label: t, type: "number", min: 0, max: 100, value: n }], "Scale",
        ([count]) => act("Scale " + t, () => api("PATCH", base + "/formation", { [t]: Number(count) })))),
    Object.keys(formation.formation || {}).length ? null : el("p", { class: "muted" }, "Nothing to scale before the first deploy.")));

  // Instances.
  view.append(el("section", { class: "card", "aria-labelledby": "h-instances" },
    el("h2", { id: "h-instances" }, "Instances"),
    table(["Instance", "State", "Runner", "CPU s", "Memory"], instances.instances.map((i) => el("tr", {},
      el("td", {}, i.ptype + "." + i.index),
      el("td", {}, String(i.state)),
      el("td", {}, i.runner || ""),
      el("td", {}, i.cpu_s !== undefined ? Number(i.cpu_s).toFixed(1) : ""),
      el("td", {}, i.rss_kib ? (i.rss_kib / 1024).toFixed(1) + " MiB" : ""))))));

  // Requests over the last minute, hour and day.
  if (stats && stats.requests) {
    view.append(el("section", { class: "card", "aria-labelledby": "h-stats" },
      el("h2", { id: "h-stats" }, "Requests"),
      table(["Window", "Requests/s", "p99 ms", "5xx"], stats.requests.map((s) => el("tr", {},
        el("td", {}, s.window),
        el("td", {}, Number(s.requests_per_second).toFixed(2)),
        el("td", {}, s.p99_ms === null || s.p99_ms === undefined ? "" : Number(s.p99_ms).toFixed(1)),
        el("td", {}, String(s.errors_5xx)))))));
  }

  // The newest log lines, as text.
  view.append(el("section", { class: "card", "aria-labelledby": "h-logs" },
    el("h2", { id: "h-logs" }, "Logs"),
    el("pre", { id: "log-lines", tabindex: "0" }, logs.lines.map((l) =>
      time(l.at_ms) + " " + l.source + "[" + l.process + "]: " + l.line + "\n"))));
}

// ------------------------------------------------------------------ routing

async function route() {
  const view = $("view");
  const logged = Boolean(token());
  $("login").hidden = logged;
  $("nav").hidden = !logged;
  view.replaceChildren();
  if (!logged) return;
  const m = location.hash.match(/^#\/apps\/([^/]+)$/);
  try {
    if (m) await appPage(view, decodeURIComponent(m[1]));
    else await appsPage(view);
  } catch (e) {
    if (!(e instanceof ApiError && e.message === "unauthorized")) status(e.message, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    $("token").value = "";
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    status("");
    route();
  });
  $("logout").addEventListener("click", () => logout("Logged out."));
  window.addEventListener("hashchange", () => { status(""); route(); });
  route();
});
