// The sluice dashboard: reads the broker's public API (the same calls curl and the `sluice`
// CLI make) and redraws; changes go through the same API with the token typed in the page.
"use strict";

const PHASE_STEP = { pending: 0, starting: 1, following: 2, switching: 3, switched: 4, committed: 5, cleaning: 6, done: 7, failed: 7, aborted: 7 };
const FINAL = new Set(["done", "failed", "aborted"]);
const PALETTE = ["#3f6fd8", "#e0803b", "#2e9d6a", "#b04fc0", "#d14a5c", "#2aa3b8", "#8a9a2c", "#7b5cd6", "#c98f1e", "#4c8c3f", "#d1609b", "#5b7288"];
const $ = (id) => document.getElementById(id);
const tokenInput = $("token");
tokenInput.value = sessionStorage.getItem("sluice-token") || "";
tokenInput.addEventListener("change", () => sessionStorage.setItem("sluice-token", tokenInput.value));

let epoch = 0;
let colors = new Map(); // proxy address -> colour, stable across redraws

function colorOf(proxy) {
  if (!colors.has(proxy)) colors.set(proxy, PALETTE[colors.size % PALETTE.length]);
  return colors.get(proxy);
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

async function api(path, options) {
  const resp = await fetch("/api/v1" + path, options);
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!resp.ok) {
    const why = body && body.error ? body.error.message : text;
    throw new Error(`${resp.status}: ${why}`);
  }
  return body;
}

async function change(path, body) {
  const headers = { "content-type": "application/json" };
  if (tokenInput.value) headers.authorization = "Bearer " + tokenInput.value;
  return api(path, { method: "POST", headers, body: JSON.stringify(body) });
}

function say(text, ok) {
  const m = $("message");
  m.textContent = text;
  m.className = ok ? "ok" : "error";
}

function rangesText(ranges) {
  return ranges.map((r) => (Array.isArray(r) ? (r[0] === r[1] ? `${r[0]}` : `${r[0]}-${r[1]}`) : `${r.start}-${r.end}`)).join(",");
}

function parseSlots(text) {
  return text.split(",").map((part) => {
    const [a, b] = part.trim().split("-").map((x) => Number(x.trim()));
    const end = b === undefined ? a : b;
    if (!Number.isInteger(a) || !Number.isInteger(end) || a < 0 || end > 16383 || a > end) {
      throw new Error(`bad slot range "${part.trim()}": slots are 0..16383, start ≤ end`);
    }
    return [a, end];
  });
}

function drawSlotMap(canvas, view) {
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(128, 128);
  const rgb = (hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  const paint = (slot, c) => { const o = slot * 4; img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = 255; };
  const importing = new Map(); // migration id -> importer colour
  for (const n of view.nodes) for (const s of n.slots) if (s.tag === "importing") importing.set(s.migration, rgb(colorOf(n.proxy)));
  for (const n of view.nodes) {
    const own = rgb(colorOf(n.proxy));
    for (const s of n.slots) {
      if (s.tag === "importing") continue;
      const to = s.tag === "migrating" ? importing.get(s.migration) : null;
      for (let slot = s.start; slot <= s.end; slot++) paint(slot, to && ((slot >> 7) + slot) % 2 ? to : own);
    }
  }
  ctx.putImageData(img, 0, 0);
}

function renderCluster(view, migrations) {
  const served = view.nodes.reduce((n, node) => n + node.slots.filter((s) => s.tag !== "importing").reduce((k, s) => k + s.end - s.start + 1, 0), 0);
  const canvas = el("canvas", { class: "slotmap", width: 128, height: 128, title: "the 16384 slots, one pixel each, coloured by owner (striped: moving)" });
  drawSlotMap(canvas, view);
  const running = migrations.filter((m) => !FINAL.has(m.phase)).length;
  return el("div", { class: "cluster", "data-cluster": view.name },
    el("h2", {}, `Cluster ${view.name}`),
    el("div", { class: "muted" }, `epoch ${view.epoch} · ${view.nodes.length} shards · ${served} of 16384 slots served · ${running} migrations running`),
    canvas);
}

function renderProxies(proxies, views) {
  const role = new Map();
  const slots = new Map();
  for (const v of views) for (const n of v.nodes) {
    role.set(n.proxy, n.handover ? `master → ${n.handover}` : "master");
    slots.set(n.proxy, n.slots.filter((s) => s.tag !== "importing").reduce((k, s) => k + s.end - s.start + 1, 0));
    for (const r of n.replicas || []) role.set(r.proxy, `replica of ${n.proxy}`);
  }
  const body = $("proxies").tBodies[0];
  body.replaceChildren(...proxies.map((p) => el("tr", { "data-proxy": p.address, "data-state": p.state },
    el("td", {}, el("span", { class: "swatch", style: "" })),
    el("td", {}, p.address), el("td", {}, p.node_address), el("td", {}, p.cluster || "–"),
    el("td", {}, role.get(p.address) || (p.reserved_for ? `reserved for ${p.reserved_for}` : "free")),
    el("td", { class: "state-" + p.state, title: p.failure || "" }, p.state),
    el("td", {}, slots.has(p.address) ? slots.get(p.address) : "–"))));
  for (const tr of body.rows) tr.cells[0].firstChild.style.background = slots.has(tr.dataset.proxy) ? colorOf(tr.dataset.proxy) : "transparent";
}

function progressText(m) {
  const p = m.progress || {};
  return Object.entries(p).filter(([k]) => k !== "phase_times").map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
}

function renderMigrations(list) {
  const body = $("migrations").tBodies[0];
  $("no-migrations").hidden = list.length > 0;
  body.replaceChildren(...list.map(({ cluster, m }) => {
    const step = PHASE_STEP[m.phase] ?? 0;
    const bar = el("div", { class: "bar " + (m.phase === "done" ? "done" : FINAL.has(m.phase) ? "failed" : "") }, el("div", {}));
    bar.firstChild.style.width = `${Math.round((step / 7) * 100)}%`;
    const abort = FINAL.has(m.phase) ? "" : el("button", { onclick: () => abortMigration(cluster, m.id) }, "Abort");
    return el("tr", { "data-migration": m.id, "data-phase": m.phase },
      el("td", {}, m.id), el("td", {}, `${m.src} → ${m.dst}`), el("td", {}, rangesText(m.slots)), el("td", {}, m.mode),
      el("td", { class: "phase-" + m.phase, title: m.error || "" }, m.phase + (m.error ? ` (${m.error})` : "")),
      el("td", {}, bar, " ", el("span", { class: "muted" }, progressText(m))), el("td", {}, abort));
  }));
}

function fillClusterSelects(names) {
  for (const id of ["m-cluster", "s-cluster"]) {
    const select = $(id);
    const keep = select.value;
    select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    if (names.includes(keep)) select.value = keep;
  }
}

async function refresh() {
  const [{ clusters }, { proxies }] = await Promise.all([api("/clusters"), api("/proxies")]);
  const views = await Promise.all(clusters.map((n) => api(`/clusters/${encodeURIComponent(n)}`)));
  const lists = await Promise.all(clusters.map((n) => api(`/clusters/${encodeURIComponent(n)}/migrations`)));
  for (const v of views) for (const n of v.nodes) colorOf(n.proxy);
  $("clusters").replaceChildren(...views.map((v, i) => renderCluster(v, lists[i].migrations)));
  renderProxies(proxies, views);
  const all = lists.flatMap((l, i) => l.migrations.map((m) => ({ cluster: clusters[i], m })));
  all.sort((a, b) => Number(b.m.id.slice(2)) - Number(a.m.id.slice(2)));
  renderMigrations(all);
  fillClusterSelects(clusters);
}

async function abortMigration(cluster, id) {
  try {
    await change(`/clusters/${encodeURIComponent(cluster)}/migrations/${id}/abort`, { error: "aborted from the dashboard" });
    say(`${id}: abort asked for`, true);
  } catch (e) { say(`${id}: ${e.message}`, false); }
  refresh().catch(() => {});
}

$("migrate-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const body = { src: $("m-src").value.trim(), dst: $("m-dst").value.trim(), slots: parseSlots($("m-slots").value), mode: $("m-mode").value };
    const m = await change(`/clusters/${encodeURIComponent($("m-cluster").value)}/migrations`, body);
    say(`${m.id} started (${m.mode})`, true);
  } catch (e) { say(e.message, false); }
  refresh().catch(() => {});
});

$("scale-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const plan = await change(`/clusters/${encodeURIComponent($("s-cluster").value)}/scale`, { add: Number($("s-add").value) });
    say(`scale plan ${plan.plan.id}: ${plan.plan.total} steps`, true);
  } catch (e) { say(e.message, false); }
  refresh().catch(() => {});
});

// Every second: migration progress is reported without moving the epoch, so a long poll on
// the epoch alone would miss it. A timer (not a held request) between reads also lets a
// headless browser's virtual time run.
const EVERY_MS = 1000;

async function tick() {
  try {
    const e = await api("/epoch");
    epoch = e.epoch;
    $("epoch").textContent = `epoch ${epoch}`;
    await refresh();
    $("conn").textContent = "live"; $("conn").className = "conn ok";
  } catch (e) {
    $("conn").textContent = "broker unreachable: " + e.message; $("conn").className = "conn down";
  }
  setTimeout(tick, EVERY_MS);
}
tick();
