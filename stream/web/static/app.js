// swim-stream's page: live picture with arenas, trials, arena editor, results. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let state = null;          // the latest /api/state snapshot
let frameSeq = -1;         // the frame the picture shows
let resultsSeq = -1;       // the results version the table shows
let cardsKey = "";         // the arena ids the cards were built for

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

async function post(url, body) {
  const r = await fetch(url, {method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-Swim-Stream": "1"}, body: JSON.stringify(body)});
  let reply = {};
  try { reply = await r.json(); } catch (e) { reply = {ok: false, error: `HTTP ${r.status}`}; }
  if (!r.ok && reply.ok === undefined) reply.ok = false;
  return reply;
}

function fmt(x, digits = 1) { return (x === null || x === undefined) ? "-" : Number(x).toFixed(digits); }

function showMsg(node, reply, okText) {
  node.textContent = reply.ok ? okText : (reply.error || "refused");
  node.className = "msg " + (reply.ok ? "ok" : "err");
}

// ---- tabs ---------------------------------------------------------------------------------------
for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
    for (const p of document.querySelectorAll(".panel")) p.classList.toggle("active", p.id === tab.dataset.tab);
    if (tab.dataset.tab === "results") loadResults();
    if (tab.dataset.tab === "arenas") loadArenas();
  });
}

// ---- live picture -----------------------------------------------------------------------------
function refreshPicture() {
  if (!state || !state.frame || state.frame.seq === frameSeq) return;
  frameSeq = state.frame.seq;
  const url = `/api/frame.jpg?seq=${frameSeq}`;
  const img = new Image();
  img.onload = () => {
    $("live-img").src = img.src; $("edit-img").src = img.src; $("live-nopic").style.display = "none";
    // the picture fits the window's height, whatever its aspect (one tall arena or a wide rig)
    const width = `${Math.round(Math.min(760, 0.72 * window.innerHeight * img.naturalWidth / img.naturalHeight))}px`;
    $("live-stage").style.maxWidth = width; $("edit-stage").style.maxWidth = width;
    drawEditor();
  };
  img.src = url;
}

function drawOverlay() {
  const svg = $("live-svg");
  const size = state.frame && state.frame.size;
  if (!size) return;
  svg.setAttribute("viewBox", `0 0 ${size[0]} ${size[1]}`);
  svg.replaceChildren();
  const scale = size[0] / Math.max(1, svg.getBoundingClientRect().width);  // frame px per screen px: text stays legible
  for (const a of state.arenas) {
    if (!a.roi) continue;
    const cls = a.state === "running" ? (a.immobile ? "immobile" : "mobile") : "waiting";
    const colour = {immobile: "#ff6b35", mobile: "#51cf66", waiting: "#adb5bd"}[cls];
    const r = document.createElementNS(SVG, "rect");
    for (const [k, v] of Object.entries({x: a.roi[0], y: a.roi[1], width: a.roi[2], height: a.roi[3], fill: "none",
                                          stroke: colour, "stroke-width": 2.5 * scale})) r.setAttribute(k, v);
    svg.appendChild(r);
    if (a.window) {  // a mouse-crop model: the window around the mouse that the model sees
      const w = document.createElementNS(SVG, "rect");
      for (const [k, v] of Object.entries({x: a.window[0], y: a.window[1], width: a.window[2], height: a.window[3], fill: "none",
                                            stroke: "#00c8ff", "stroke-width": 1.5 * scale, "stroke-dasharray": `${4 * scale}`}))
        w.setAttribute(k, v);
      svg.appendChild(w);
    }
    const label = `${a.id}` + (a.behaviour && a.state === "running" ? `: ${a.behaviour}` : a.state ? ` (${a.state})` : "");
    const lines = [label];
    if (a.state === "running" && a.counters) lines.push(`immobile ${fmt(a.counters.immobile_s)} s, bouts ${a.counters.immobility_bouts}`);
    lines.forEach((line, i) => {
      const t = document.createElementNS(SVG, "text");
      const fs = 13 * scale;
      for (const [k, v] of Object.entries({x: a.roi[0] + 5 * scale, y: a.roi[1] + (i + 1) * fs * 1.3,
                                            fill: colour, "font-size": fs, "font-weight": i ? 400 : 700,
                                            "paint-order": "stroke", stroke: "#000", "stroke-width": 3 * scale}))
        t.setAttribute(k, v);
      t.textContent = line;
      svg.appendChild(t);
    });
  }
}

// ---- trial cards ----------------------------------------------------------------------------------
function buildCards() {
  const box = $("cards");
  box.replaceChildren();
  for (const a of state.arenas) {
    const card = el("div", {class: "card", id: `card-${a.id}`});
    const h = el("h2", {}, a.id);
    h.append(el("span", {class: "badge", "data-k": "state"}), el("span", {class: "chip", "data-k": "behaviour"}));
    card.append(h);
    const grid = el("div", {class: "grid"});
    for (const [k, label] of [["elapsed", "elapsed s"], ["immobile", "immobile s"], ["bouts", "bouts"],
                              ["latency", "1st bout s"], ["window", "window immobile s"], ["animal", "animal / group"]]) {
      const d = el("div");
      d.append(el("b", {"data-k": k}, "-"), el("span", {}, label));
      grid.append(d);
    }
    card.append(grid, el("div", {class: "bars", "data-k": "bars"}), el("div", {class: "barlabel", "data-k": "barlabel"}));
    const row = el("div", {class: "row"});
    const animal = el("input", {type: "text", placeholder: "animal ID", maxlength: "64", "data-k": "in-animal",
                                id: `animal-${a.id}`});
    const group = el("input", {type: "text", placeholder: "group", maxlength: "64", "data-k": "in-group",
                               id: `group-${a.id}`});
    const start = el("button", {class: "primary", id: `start-${a.id}`}, "Start");
    const stop = el("button", {class: "stop", id: `stop-${a.id}`}, "Stop");
    const msg = el("p", {class: "msg", id: `msg-${a.id}`});
    start.addEventListener("click", async () => {
      const reply = await post("/api/trials", {cmd: "start", arena: a.id, animal: animal.value.trim(), group: group.value.trim()});
      showMsg(msg, reply, `started ${reply.trial_id || ""}`);
    });
    stop.addEventListener("click", async () => {
      const reply = await post("/api/trials", {cmd: "stop", arena: a.id});
      showMsg(msg, reply, `stopped ${reply.trial_id || ""}`);
    });
    row.append(animal, group, start, stop);
    card.append(row, msg);
    box.append(card);
  }
}

function updateCards() {
  const key = state.arenas.map((a) => a.id).join(",");
  if (key !== cardsKey) { buildCards(); cardsKey = key; }
  for (const a of state.arenas) {
    const card = $(`card-${a.id}`);
    const q = (k) => card.querySelector(`[data-k="${k}"]`);
    const running = a.state === "running" || a.state === "starting";
    q("state").textContent = a.state || "no trials";
    q("state").className = `badge ${a.state || ""}`;
    q("behaviour").textContent = running && a.behaviour ? a.behaviour : "-";
    q("behaviour").className = "chip " + (running && a.behaviour ? (a.immobile ? "immobile" : "mobile") : "");
    const c = a.counters;
    q("elapsed").textContent = fmt(a.elapsed_s);
    q("immobile").textContent = c ? fmt(c.immobile_s) : "-";
    q("bouts").textContent = c ? c.immobility_bouts : "-";
    q("latency").textContent = c ? fmt(c.latency_to_first_bout_s) : "-";
    q("window").textContent = c ? fmt(c.scoring_window.immobile_s) : "-";
    const t = a.trial || {};
    q("animal").textContent = running ? `${t.animal || "-"} / ${t.group || "-"}` : "-";
    const bars = q("bars");
    bars.replaceChildren();
    const bins = (c && c.bins) || [];
    for (const b of bins) {
      const d = el("div");
      const len = Math.max(1e-9, b.end_s - b.start_s);
      const future = a.elapsed_s === null || a.elapsed_s === undefined || b.start_s > a.elapsed_s;
      d.className = future ? "future" : "";
      d.style.height = future ? "100%" : `${Math.min(100, 100 * b.immobile_s / len)}%`;
      d.title = `${fmt(b.start_s, 0)}-${fmt(b.end_s, 0)} s: immobile ${fmt(b.immobile_s)} s, ${b.immobility_bouts} bouts`;
      bars.append(d);
    }
    q("barlabel").textContent = bins.length ? `immobile share per bin (${fmt(bins[0].end_s - bins[0].start_s, 0)} s each)` : "";
    $(`start-${a.id}`).disabled = !state.trials_open || running;
    $(`stop-${a.id}`).disabled = !state.trials_open || !running;
  }
}

let firstRender = true;

function render() {
  if (firstRender && state.mode === "arenas") $("tab-arenas").click();  // stream-arenas --web: the editor first
  firstRender = false;
  $("source").textContent = state.source || "";
  const s = state.status || {};
  const pill = $("status");
  pill.textContent = state.mode === "arenas" ? "arena set-up" :
    (s.fps !== undefined ? `${fmt(s.fps)} fps · ${s.frames_processed} frames` : "starting...") +
    (s.frames_dropped ? ` · ${s.frames_dropped} dropped` : "");
  pill.className = "pill ok";
  refreshPicture();
  drawOverlay();
  updateCards();
  if (state.results_seq !== resultsSeq && $("results").classList.contains("active")) loadResults();
}

// ---- updates: server-sent events, with a poll as the fallback ------------------------------------
function connect() {
  const es = new EventSource("/api/events");
  es.onmessage = (ev) => { state = JSON.parse(ev.data); render(); };
  es.onerror = () => { $("status").textContent = "disconnected"; $("status").className = "pill bad"; };
}

// ---- arena editor ------------------------------------------------------------------------------------
let edit = [];        // [{id, roi: [x, y, w, h]}] in frame pixels
let drag = null;      // {mode: "new"|"move"|"resize", i, x0, y0, roi0}
const HANDLE_PX = 12;

function canvasPoint(ev) {
  const cv = $("edit-canvas");
  const rect = cv.getBoundingClientRect();
  const size = (state && state.frame && state.frame.size) || [cv.width, cv.height];
  return [Math.round((ev.clientX - rect.left) * size[0] / rect.width), Math.round((ev.clientY - rect.top) * size[1] / rect.height)];
}

function drawEditor() {
  const cv = $("edit-canvas");
  const size = state && state.frame && state.frame.size;
  if (!size) return;
  if (cv.width !== size[0]) { cv.width = size[0]; cv.height = size[1]; }
  const g = cv.getContext("2d");
  g.clearRect(0, 0, cv.width, cv.height);
  const lw = Math.max(2, size[0] / 320);
  edit.forEach((a, i) => {
    const [x, y, w, h] = a.roi;
    g.strokeStyle = "#ffd43b"; g.lineWidth = lw; g.strokeRect(x, y, w, h);
    g.fillStyle = "rgba(255, 212, 59, 0.12)"; g.fillRect(x, y, w, h);
    g.fillStyle = "#ffd43b"; g.fillRect(x + w - HANDLE_PX, y + h - HANDLE_PX, HANDLE_PX, HANDLE_PX);
    g.font = `bold ${Math.max(12, size[0] / 45)}px system-ui`; g.fillText(a.id, x + 5, y + Math.max(14, size[0] / 38));
  });
}

function listArenas() {
  const box = $("arena-list");
  box.replaceChildren();
  edit.forEach((a, i) => {
    const item = el("div", {class: "arena-item"});
    const id = el("input", {type: "text", value: a.id, maxlength: "64", id: `arena-id-${i}`});
    id.addEventListener("input", () => { a.id = id.value.trim(); drawEditor(); });
    const del = el("button", {}, "Remove");
    del.addEventListener("click", () => { edit.splice(i, 1); listArenas(); drawEditor(); });
    item.append(id, el("span", {class: "roi"}, a.roi.join(", ")), del);
    box.append(item);
  });
  drawEditor();
}

async function loadArenas() {
  const r = await fetch("/api/arenas", {credentials: "same-origin"});
  const data = await r.json();
  edit = data.arenas.filter((a) => a.roi).map((a) => ({id: a.id, roi: a.roi.slice()}));
  $("arena-file").textContent = data.arena_file || "(none)";
  listArenas();
}

function nextId() {
  for (let k = 1; ; k++) if (!edit.some((a) => a.id === `A${k}`)) return `A${k}`;
}

$("edit-canvas").addEventListener("pointerdown", (ev) => {
  if (!state || !state.frame) return;  // nothing to draw on yet
  const [x, y] = canvasPoint(ev);
  $("edit-canvas").setPointerCapture(ev.pointerId);
  for (let i = edit.length - 1; i >= 0; i--) {
    const [rx, ry, rw, rh] = edit[i].roi;
    if (x >= rx + rw - HANDLE_PX * 1.5 && x <= rx + rw + 2 && y >= ry + rh - HANDLE_PX * 1.5 && y <= ry + rh + 2) {
      drag = {mode: "resize", i, x0: x, y0: y, roi0: edit[i].roi.slice()}; return;
    }
    if (x >= rx && x <= rx + rw && y >= ry && y <= ry + rh) {
      drag = {mode: "move", i, x0: x, y0: y, roi0: edit[i].roi.slice()}; return;
    }
  }
  edit.push({id: nextId(), roi: [x, y, 1, 1]});
  drag = {mode: "new", i: edit.length - 1, x0: x, y0: y, roi0: [x, y, 1, 1]};
});

$("edit-canvas").addEventListener("pointermove", (ev) => {
  if (!drag) return;
  const [x, y] = canvasPoint(ev);
  const size = state.frame.size;
  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
  const a = edit[drag.i];
  const [x0, y0, w0, h0] = drag.roi0;
  if (drag.mode === "new") {
    const left = clamp(Math.min(x, drag.x0), 0, size[0]), top = clamp(Math.min(y, drag.y0), 0, size[1]);
    a.roi = [left, top, clamp(Math.abs(x - drag.x0), 1, size[0] - left), clamp(Math.abs(y - drag.y0), 1, size[1] - top)];
  } else if (drag.mode === "move") {
    a.roi = [clamp(x0 + x - drag.x0, 0, size[0] - w0), clamp(y0 + y - drag.y0, 0, size[1] - h0), w0, h0];
  } else {
    a.roi = [x0, y0, clamp(w0 + x - drag.x0, 8, size[0] - x0), clamp(h0 + y - drag.y0, 8, size[1] - y0)];
  }
  drawEditor();
});

$("edit-canvas").addEventListener("pointerup", () => {
  if (drag && drag.mode === "new") {
    const a = edit[drag.i];
    if (a.roi[2] < 8 || a.roi[3] < 8) edit.splice(drag.i, 1);  // a click, not a box
  }
  drag = null;
  listArenas();
});

$("detect").addEventListener("click", async () => {
  const reply = await post("/api/arenas/detect", {view: "auto"});
  if (reply.ok) { edit = reply.arenas; listArenas(); }
  showMsg($("arena-msg"), reply, `${(reply.arenas || []).length} cylinder(s) found; check them, then save`);
});

$("save").addEventListener("click", async () => {
  const reply = await post("/api/arenas/save", {arenas: edit});
  showMsg($("arena-msg"), reply, `saved ${reply.arenas} arena(s) to ${reply.arena_file}`);
});

// ---- results --------------------------------------------------------------------------------------
let results = {columns: [], rows: [], files: {}};
let sortBy = {col: null, dir: 1};
const TEXT = new Set(["trial_id", "animal", "group", "arena", "source", "start_utc", "model", "model_sha256",
                      "swim_stream_version", "roi", "recording_start_utc"]);
const SHOWN = ["trial_id", "animal", "group", "arena", "start_utc", "duration_s", "test_complete", "immobile_s", "bouts",
               "latency_s", "window_immobile_s", "window_bouts", "video_start_s", "video_end_s"];

async function loadResults() {
  const r = await fetch("/api/results", {credentials: "same-origin"});
  results = await r.json();
  resultsSeq = state ? state.results_seq : resultsSeq;
  drawResults();
}

function drawResults() {
  const cols = [...SHOWN.filter((c) => results.columns.includes(c)),
                ...results.columns.filter((c) => !SHOWN.includes(c) && c.startsWith("immobile_s_bin")), "files"];
  const thead = document.querySelector("#results-table thead"), tbody = document.querySelector("#results-table tbody");
  const tr = el("tr");
  for (const c of cols) {
    const th = el("th", {class: TEXT.has(c) || c === "files" ? "text" : ""}, c);
    if (c === sortBy.col) th.classList.add(sortBy.dir > 0 ? "sorted-asc" : "sorted-desc");
    if (c !== "files") th.addEventListener("click", () => {
      sortBy = {col: c, dir: sortBy.col === c ? -sortBy.dir : 1}; drawResults();
    });
    tr.append(th);
  }
  thead.replaceChildren(tr);
  const rows = results.rows.slice();
  if (sortBy.col) {
    const c = sortBy.col, num = !TEXT.has(c);
    rows.sort((a, b) => {
      const x = a[c] || "", y = b[c] || "";
      const d = num ? (parseFloat(x || "NaN") || 0) - (parseFloat(y || "NaN") || 0) : x.localeCompare(y);
      return d * sortBy.dir;
    });
  }
  tbody.replaceChildren();
  for (const r of rows) {
    const row = el("tr");
    for (const c of cols) {
      const td = el("td", {class: TEXT.has(c) || c === "files" ? "text" : ""});
      if (c === "files") {
        const f = results.files[r.trial_id] || {};
        for (const [kind, url] of Object.entries(f)) {
          const a = el("a", {href: url, download: ""}, kind === "frames" ? "frames CSV" : "summary");
          td.append(a, document.createTextNode(" "));
        }
        if (results.preview) td.append(el("a", {href: results.preview, download: ""}, "overlay video"));
      } else td.textContent = r[c] || "";
      row.append(td);
    }
    tbody.append(row);
  }
  $("results-note").textContent = results.rows.length ? `${results.rows.length} trial(s); click a column to sort` :
    "no finished trials yet (a row appears when a trial ends)";
}

fetch("/api/state", {credentials: "same-origin"}).then((r) => r.json()).then((s) => { state = s; render(); loadArenas(); });
connect();
