// trickles_kit live view: one small ES module for every streamed panel (see viz/stream.py).
//
// Why this shape: the kernel sends only NEW points (custom messages with float64 buffers), the
// page keeps every point in a per-model store, and drawing runs on its own schedule — frames may
// be dropped, points never. plotly.js is not shipped with this module: in "send" mode one
// PlotlyRuntime widget per kernel brings it (the 1.2 MB basic bundle when installed), in "page"
// mode it is JupyterLab's plotly renderer's copy, loaded over HTTP. A view created later (a re-render, a second display) draws the whole store.

const STORES = new Map(); // uid -> store: initialize and render get different model proxies
// While the transfer runs a marker trace is drawn with at most this many markers (every k-th
// point and the last one): SVG costs one DOM node per marker, and a frame must stay short
// enough to keep up. The store keeps every point; the final frame draws them all.
const MAX_LIVE_MARKERS = 1500;
const MAX_LIVE_LINE = 4000; // a line keeps its shape (per-bucket extremes), segments every k-th
// The final frame draws every point; a trace longer than this draws with WebGL there when the
// page's plotly.js has it (the basic bundle has not: SVG then, about 0.7 s for 30k markers).
const GL_FINAL_POINTS = 5000;
const MIN_FRAME_GAP_MS = 60;
const FINAL_DELAY_MS = 500;

function registry() {
  const g = globalThis;
  if (!g.__tricklesLive) g.__tricklesLive = { frames: [], marks: [], views: {} };
  return g.__tricklesLive;
}

function logFrame(rec) {
  const r = registry();
  r.frames.push(rec);
  if (r.frames.length > 20000) r.frames.splice(0, r.frames.length - 20000);
}

function waitForPlotly(timeoutMs) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const poll = () => {
      const P = globalThis.Plotly;
      if (P && typeof P.react === "function") return resolve(P);
      if (Date.now() - t0 > timeoutMs) return reject(new Error("plotly.js is not loaded in this page"));
      setTimeout(poll, 25);
    };
    poll();
  });
}

function f64(view) {
  // ipywidgets hands buffers as DataViews at any offset: copy to an aligned array
  const buf = view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength);
  return new Float64Array(buf);
}

function newStore(model) {
  return { model, panels: {}, specKey: null, seq: 0, tHi: null, phase: "waiting",
           final: null, views: new Set(), events: 0 };
}

function syncSpec(store) {
  const spec = store.model.get("spec") || { panels: [] };
  const key = JSON.stringify(spec);
  if (key === store.specKey) return;
  store.specKey = key;
  const panels = {};
  for (const p of spec.panels) {
    const old = store.panels[p.kind];
    panels[p.kind] = {
      spec: p,
      traces: p.traces.map((t, i) => (old && old.traces[i]) ? old.traces[i] : { x: [], y: [], text: null }),
      version: 1, // bumped by every change; each view draws a panel when its copy is older
    };
  }
  store.panels = panels;
}

function applyData(store, msg, buffers) {
  for (const u of msg.updates) {
    const panel = store.panels[u.p];
    if (!panel) continue;
    const tr = panel.traces[u.i];
    const xs = f64(buffers[u.xb]);
    const ys = f64(buffers[u.yb]);
    tr.x.length = u.from;
    tr.y.length = u.from;
    for (let k = 0; k < xs.length; k++) {
      tr.x.push(Number.isNaN(xs[k]) ? null : xs[k]);
      tr.y.push(Number.isNaN(ys[k]) ? null : ys[k]);
    }
    if (u.text) {
      if (!tr.text) tr.text = [];
      tr.text.length = u.from;
      for (const s of u.text) tr.text.push(s);
    }
    panel.version++;
  }
  if (msg.t_hi !== null && msg.t_hi !== undefined) store.tHi = msg.t_hi;
  store.events = msg.events ?? store.events;
  store.seq = msg.seq;
}

function panelHeight(spec) {
  return spec.layout.height || 400; // explicit: a height-less div lets the plot spill over
}

function sums(arr) {
  let n = 0, s = 0;
  for (const v of arr) { if (v !== null && v !== undefined && !Number.isNaN(v)) { n++; s += v; } }
  return [n, s];
}

function close(a, b) {
  return Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(a), Math.abs(b));
}

function checkDigest(store, digest) {
  // digest: {kind: {traceName: [length, non-null x, sum x, non-null y, sum y]}} (static builder)
  const problems = [];
  for (const [kind, want] of Object.entries(digest)) {
    const panel = store.panels[kind];
    if (!panel) { problems.push(`${kind}: no panel`); continue; }
    panel.spec.traces.forEach((t, i) => {
      const tr = panel.traces[i];
      const w = want[t.name];
      if (!w) {
        if (tr.x.length) problems.push(`${kind}/${t.name}: ${tr.x.length} points, builder has none`);
        return;
      }
      const [nx, sx] = sums(tr.x), [ny, sy] = sums(tr.y);
      if (tr.x.length !== w[0] || nx !== w[1] || !close(sx, w[2]) || ny !== w[3] || !close(sy, w[4]))
        problems.push(`${kind}/${t.name}: have ${tr.x.length}/${nx}/${sx}/${sy}, want ${w}`);
    });
  }
  return problems;
}

function strided(n, cap) {
  // indices 0, k, 2k, ... and the last one: at most about `cap` of n
  const step = Math.ceil(n / cap);
  const idx = [];
  for (let k = 0; k < n; k += step) idx.push(k);
  if (idx[idx.length - 1] !== n - 1) idx.push(n - 1);
  return idx;
}

function envelope(y, cap) {
  // a line's shape with about `cap` points: per bucket its first, lowest, highest and last
  const n = y.length, size = Math.ceil(n / (cap / 4)), idx = [];
  for (let a = 0; a < n; a += size) {
    const b = Math.min(n, a + size);
    let lo = a, hi = a;
    for (let k = a; k < b; k++) { if (y[k] < y[lo]) lo = k; if (y[k] > y[hi]) hi = k; }
    for (const k of [a, lo, hi, b - 1].sort((p, q) => p - q)) {
      if (idx[idx.length - 1] !== k) idx.push(k);
    }
  }
  return idx;
}

function segments(x, cap) {
  // a trace of separate segments (x0, x1, null)...: every k-th whole segment
  const n = Math.floor(x.length / 3), step = Math.ceil(n / (cap / 3)), idx = [];
  for (let s = 0; s < n; s += step) idx.push(3 * s, 3 * s + 1, 3 * s + 2);
  return idx;
}

let GL = null; // does this page's plotly.js have WebGL traces? (the basic bundle has not)
function hasGL(P) {
  if (GL === null) {
    try { GL = Boolean(P.PlotSchema.get().traces.scattergl); } catch (e) { GL = false; }
  }
  return GL;
}

function traceFor(t, tr, live, gl) {
  // live: a frame while the transfer runs, drawn lighter; otherwise every point
  const out = Object.assign({}, t.style);
  let x = tr.x, y = tr.y, text = tr.text;
  const mode = t.style.mode || "";
  const markers = mode.includes("markers") || t.style.type === "bar";
  let idx = null;
  if (live && markers && x.length > MAX_LIVE_MARKERS) idx = strided(x.length, MAX_LIVE_MARKERS);
  else if (live && mode === "lines" && x.length > MAX_LIVE_LINE) {
    idx = x.length >= 3 && x[2] === null ? segments(x, MAX_LIVE_LINE) : envelope(y, MAX_LIVE_LINE);
  }
  if (idx) {
    const pick = (a) => idx.map((k) => a[k]);
    x = pick(x); y = pick(y); if (text) text = pick(text);
  }
  if (!live && gl && t.style.type === "scatter" && x.length > GL_FINAL_POINTS) out.type = "scattergl";
  out.x = x.slice(); out.y = y.slice();
  if (text) out.text = text.slice();
  out.visible = (t.always || tr.x.length) ? true : false;
  return out;
}

function render({ model, el }) {
  const uid = model.get("uid");
  if (!STORES.has(uid)) initialize({ model });
  const store = STORES.get(uid);
  syncSpec(store);
  const root = document.createElement("div");
  root.className = "trickles-live";
  root.dataset.view = model.get("view_kind") || "dashboard";
  root.dataset.model = uid;
  const banner = document.createElement("div");
  const status = document.createElement("div");
  status.className = "trickles-live-status";
  status.style.cssText = "font:13px sans-serif;margin:2px 0 4px 0";
  const note = document.createElement("div");
  note.className = "trickles-live-note";
  note.style.cssText = "font:13px sans-serif;color:#555;display:none";
  const grid = document.createElement("div");
  grid.className = "trickles-live-panels";
  root.append(banner, status, note, grid);
  el.appendChild(root);
  const view = { root, grid, divs: {}, drawing: false, pending: false, last: 0, Plotly: null, dead: false };
  store.views.add(view);

  const showText = () => {
    banner.innerHTML = model.get("banner_html") || "";
    const f = store.final;
    const verdict = !f ? "" : f.match
      ? " · <b style='color:#2ca02c'>✔ every point drawn equals the event log</b>"
      : " · <b style='color:#d62728'>✘ drawn points differ from the event log</b>";
    status.innerHTML = (model.get("status_html") || "") + verdict;
  };
  view.showText = showText;
  showText();
  model.on("change:status_html", showText);
  model.on("change:banner_html", showText);

  const build = () => {
    grid.innerHTML = "";
    view.divs = {};
    for (const kind of Object.keys(store.panels)) {
      const wrap = document.createElement("div");
      wrap.className = "trickles-panel";
      wrap.dataset.kind = kind;
      const h = panelHeight(store.panels[kind].spec);
      wrap.style.cssText = "width:100%;height:" + h + "px";
      const div = document.createElement("div");
      div.style.cssText = "width:100%;height:" + h + "px";
      wrap.appendChild(div);
      grid.appendChild(wrap);
      view.divs[kind] = { wrap, div, drawn: -1 };
    }
  };
  build();

  const drawAll = async (isFinal) => {
    const P = view.Plotly;
    let first = true;
    for (const [kind, panel] of Object.entries(store.panels)) {
      const d = view.divs[kind];
      if (!d || (d.drawn === panel.version && !isFinal)) continue;
      // let the page breathe between panels: messages, input and other outputs go first
      if (!first) await new Promise((res) => setTimeout(res, 0));
      first = false;
      const tHi = store.tHi;
      const version = panel.version;
      const traces = panel.spec.traces.map((t, i) => traceFor(t, panel.traces[i], !isFinal, isFinal && hasGL(P)));
      const layout = Object.assign({}, panel.spec.layout,
                                   { autosize: true, height: panelHeight(panel.spec) });
      const t0 = performance.now();
      await P.react(d.div, traces, layout, { responsive: true, displaylogo: false });
      const ms = performance.now() - t0;
      d.drawn = version;
      const points = panel.traces.reduce((a, tr) => a + tr.x.length, 0);
      d.wrap.dataset.points = String(points);
      logFrame({ wall: Date.now(), model: uid, kind, points, tHi, seq: store.seq,
                 final: !!isFinal, phase: store.phase, ms: Math.round(ms) });
    }
  };

  const schedule = (isFinal) => {
    if (view.dead) return;
    if (view.drawing) { view.pending = true; view.pendingFinal = view.pendingFinal || isFinal; return; }
    const wait = Math.max(0, view.last + MIN_FRAME_GAP_MS - Date.now());
    view.drawing = true;
    setTimeout(async () => {
      try {
        if (!view.Plotly) view.Plotly = await waitForPlotly(60000);
        await drawAll(isFinal);
      } catch (err) {
        note.style.display = "";
        note.textContent = "live view: " + err.message +
          " — install plotly (>= 6) in the Jupyter server's environment, or pass plotly_js='send'";
        root.dataset.error = err.message;
      } finally {
        view.drawing = false;
        view.last = Date.now();
        if (view.pending && !view.dead) {
          const f = view.pendingFinal;
          view.pending = false; view.pendingFinal = false;
          schedule(f);
        } else if (view.afterDraw) {
          const cb = view.afterDraw; view.afterDraw = null; cb();
        }
      }
    }, wait);
  };
  view.schedule = schedule;
  view.rebuild = build;
  root.dataset.phase = store.phase;
  if (store.final) root.dataset.finalMatch = String(store.final.match);
  schedule(store.phase === "final");

  return () => {
    view.dead = true;
    store.views.delete(view);
  };
}

function initialize({ model }) {
  const uid = model.get("uid");
  const store = newStore(model);
  STORES.set(uid, store);
  syncSpec(store);
  model.on("change:spec", () => {
    syncSpec(store);
    for (const v of store.views) { v.rebuild(); v.schedule(false); }
  });
  model.on("msg:custom", (msg, buffers) => {
    const r = registry();
    if (msg.op === "data") {
      applyData(store, msg, buffers);
      if (store.phase === "final") {  // a replay moved on: live again
        store.phase = "live"; store.final = null;
        for (const v of store.views) v.showText();
      }
      if (store.phase === "waiting") store.phase = "live";
      for (const v of store.views) { v.root.dataset.phase = store.phase; v.schedule(false); }
    } else if (msg.op === "reset") {
      for (const panel of Object.values(store.panels)) {
        for (const tr of panel.traces) { tr.x = []; tr.y = []; tr.text = tr.text ? [] : null; }
        panel.version++;
      }
      store.tHi = null; store.final = null; store.phase = "waiting";
      for (const v of store.views) {
        delete v.root.dataset.finalMatch; v.showText(); v.schedule(false);
      }
    } else if (msg.op === "mark") {
      r.marks.push(Object.assign({}, msg, { op: undefined, wall: Date.now(), model: uid,
                                             tHiReceived: store.tHi }));
    } else if (msg.op === "final") {
      store.phase = "final";
      const problems = checkDigest(store, msg.digest || {});
      store.final = { match: problems.length === 0, problems, events: msg.events };
      r.views[uid] = { match: store.final.match, problems, events: msg.events,
                                  wall: Date.now(), t_first: msg.t_first, t_last: msg.t_last,
                                  kind: model.get("view_kind") };
      for (const v of store.views) {
        v.root.dataset.phase = "final";
        v.root.dataset.finalMatch = String(store.final.match);
        v.showText();
        if (problems.length) v.root.dataset.finalProblems = problems.slice(0, 5).join("; ");
        const done = () => {
          r.marks.push({ wall: Date.now(), model: uid, what: "final-drawn",
                         match: store.final.match });
        };
        v.afterDraw = done;
        // the full redraw can wait a moment: the kernel's next messages (the cell's end)
        // are shown first, and the last live frame already shows the last packet
        setTimeout(() => v.schedule(true), FINAL_DELAY_MS);
      }
    }
  });
}

export default { initialize, render };

// for tests (node): the pure parts of the page side
export const internals = { applyData, checkDigest, strided, envelope, segments, traceFor };
