// cubeless web map: catalog, time slider, presets, click for a pixel's time series.
// Talks only to the server that served it (see cubeless/serve.py for the routes).
"use strict";

// ?time=N&preset=P&cube=ID open the page on that view (links, and the browser tests).
const params = new URLSearchParams(location.search);
const state = { cube: null, info: null, time: Number(params.get("time") || 0), preset: params.get("preset"), point: null };
const $ = (id) => document.getElementById(id);
const COLORS = { red: "#d62728", green: "#2ca02c", blue: "#1f77b4", nir: "#9467bd", count: "#555555" };

const map = new maplibregl.Map({
  container: "map",
  style: { version: 8, sources: {}, layers: [{ id: "bg", type: "background", paint: { "background-color": "#000000" } }] },
  center: [0, 0],
  zoom: 1,
  fadeDuration: 0,
  attributionControl: false,
});
map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-right");

function tileUrl() {
  const q = new URLSearchParams({ time: String(state.time), preset: state.preset });
  return `${location.origin}/cubes/${encodeURIComponent(state.cube)}/tiles/{z}/{x}/{y}.png?${q}`;
}

function showLayer() {
  const url = tileUrl();
  const src = map.getSource("cube");
  if (src) {
    src.setTiles([url]);
    return;
  }
  const [w, s, e, n] = state.info.bounds;
  map.addSource("cube", { type: "raster", tiles: [url], tileSize: 256, bounds: [w, s, e, n],
                          minzoom: Math.max(0, state.info.minzoom - 3), maxzoom: state.info.maxzoom });
  map.addLayer({ id: "cube", type: "raster", source: "cube",
                 paint: { "raster-resampling": "nearest", "raster-fade-duration": 0 } });
}

function setTime(i) {
  state.time = Number(i);
  $("time").value = String(state.time);
  $("timelabel").textContent = state.info.times[state.time] || "";
  showLayer();
}

function setPreset(p) {
  state.preset = p;
  $("preset").value = p;
  showLayer();
}

async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || `${r.status} ${url}`);
  return body;
}

async function selectCube(id) {
  state.cube = id;
  document.querySelectorAll(".cube").forEach((el) => el.classList.toggle("active", el.dataset.id === id));
  state.info = await getJSON(`/cubes/${encodeURIComponent(id)}/info`);
  const presets = state.info.presets;
  $("preset").innerHTML = presets.map((p) => `<option value="${p}">${p}</option>`).join("");
  state.preset = presets.includes(state.preset) ? state.preset : presets[0];
  $("preset").value = state.preset;
  $("time").max = String(Math.max(0, state.info.times.length - 1));
  const [w, s, e, n] = state.info.bounds;
  map.fitBounds([[w, s], [e, n]], { padding: 20, animate: false });
  setTime(Math.min(state.time, state.info.times.length - 1));
}

function renderCatalog(listing) {
  const el = $("catalog");
  el.innerHTML = "";
  for (const c of listing.cubes) {
    const m = c.manifest;
    const div = document.createElement("div");
    div.className = "cube";
    div.dataset.id = c.id;
    let meta = "no manifest yet";
    if (m && !m.error) {
      const extent = m.bbox ? m.bbox.map((v) => v.toFixed(3)).join(", ") : (m.aoi || "");
      meta = `<span class="${m.complete ? "ok" : "bad"}">${m.complete ? "complete" : "incomplete"}</span>` +
        ` &middot; ${m.bins.length} bins (${m.bins[0] || ""} .. ${m.bins[m.bins.length - 1] || ""})` +
        `<br>${m.bands.join(", ")} &middot; ${m.crs} @ ${m.resolution}` +
        `<br>extent ${extent}<br>run ${m.run_id}: ${m.tasks.done}/${m.tasks.planned} tasks, ${m.tasks.failed} failed`;
    } else if (m && m.error) {
      meta = m.error;
    }
    div.innerHTML = `<b>${c.id}</b><div class="meta">${meta}</div>`;
    div.onclick = () => selectCube(c.id);
    el.appendChild(div);
  }
}

function drawChart(p) {
  const cv = $("chart");
  const ctx = cv.getContext("2d");
  ctx.clearRect(0, 0, cv.width, cv.height);
  const names = Object.keys(p.values).filter((v) => v !== "count");
  const n = p.times.length;
  const all = names.flatMap((v) => p.values[v]).filter((x) => x > 0);
  if (!all.length || n === 0) {
    ctx.fillText("no data at this pixel", 10, 20);
    return;
  }
  const lo = Math.min(...all), hi = Math.max(...all);
  const pad = 24, W = cv.width - pad - 6, H = cv.height - 2 * pad;
  const xOf = (i) => pad + (n === 1 ? W / 2 : (i * W) / (n - 1));
  const yOf = (v) => pad + H - ((v - lo) / Math.max(1, hi - lo)) * H;
  ctx.strokeStyle = "#bbb";
  ctx.strokeRect(pad, pad, W, H);
  ctx.fillStyle = "#333";
  ctx.font = "10px sans-serif";
  ctx.fillText(String(hi), 2, pad + 4);
  ctx.fillText(String(lo), 2, pad + H);
  p.times.forEach((t, i) => ctx.fillText(t.slice(0, 7), Math.min(xOf(i) - 14, cv.width - 40), cv.height - 6));
  for (const v of names) {
    ctx.strokeStyle = ctx.fillStyle = COLORS[v] || "#000";
    ctx.beginPath();
    let pen = false;
    p.values[v].forEach((x, i) => {
      if (x === 0) { pen = false; return; }  // no data breaks the line
      if (pen) ctx.lineTo(xOf(i), yOf(x)); else ctx.moveTo(xOf(i), yOf(x));
      pen = true;
    });
    ctx.stroke();
    p.values[v].forEach((x, i) => { if (x > 0) ctx.fillRect(xOf(i) - 2, yOf(x) - 2, 4, 4); });
  }
}

function renderPoint(p) {
  const vars = Object.keys(p.values);
  const head = `<tr><th>time</th>${vars.map((v) => `<th>${v}</th>`).join("")}</tr>`;
  const rows = p.times.map((t, i) =>
    `<tr data-time="${t}"><td>${t}</td>${vars.map((v) => `<td data-var="${v}">${p.values[v][i]}</td>`).join("")}</tr>`);
  $("point").innerHTML = `<div class="hint">${p.lon.toFixed(5)}, ${p.lat.toFixed(5)} (row ${p.row}, col ${p.col})</div>` +
    `<table>${head}${rows.join("")}</table>`;
  drawChart(p);
}

async function queryPoint(lon, lat) {
  try {
    state.point = await getJSON(`/cubes/${encodeURIComponent(state.cube)}/point/${lon},${lat}`);
    renderPoint(state.point);
  } catch (err) {
    state.point = { error: String(err.message || err) };
    $("point").textContent = state.point.error;
  }
  return state.point;
}

map.on("click", (e) => queryPoint(e.lngLat.lng, e.lngLat.lat));
$("time").addEventListener("input", (e) => setTime(e.target.value));
$("preset").addEventListener("change", (e) => setPreset(e.target.value));

// Hooks for the browser tests (and the console): wait until every visible tile is drawn.
function whenIdle() {
  return new Promise((resolve) => {
    const done = () => resolve(true);
    if (map.loaded() && map.areTilesLoaded() && !map.isMoving()) {
      map.once("idle", done);
      map.triggerRepaint();
    } else {
      map.once("idle", done);
    }
  });
}

const ready = (async () => {
  await new Promise((r) => (map.loaded() ? r() : map.once("load", r)));
  const listing = await getJSON("/api/cubes");
  renderCatalog(listing);
  const wanted = listing.cubes.find((c) => c.id === params.get("cube")) || listing.cubes[0];
  if (wanted) await selectCube(wanted.id);
  await whenIdle();
  document.body.dataset.ready = "yes";
  return true;
})();

window.cubeless = { map, state, setTime, setPreset, selectCube, queryPoint, whenIdle, ready };
