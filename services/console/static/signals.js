// The turbine page's signal charts: one small inline-SVG chart per feature, on the time range of the timeline chart
// above (zoom and pan there). Each detector period is a band from its p05 to its p95 with its median as a line; when
// the range is at most 6 h and holds captured raw samples, they are drawn over it (the API keeps each bucket's
// minimum and maximum, so a spike stays visible).
"use strict";

window.NacelleSignals = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const M = {left: 48, right: 16, top: 8, bottom: 8};  // the timeline chart's: the time axes line up
  const MAX_RANGE_MS = 6 * 3600e3;  // the signals API reads at most this much at once
  const COLORS = {band: "rgba(31,111,235,0.16)", median: "#1f6feb", raw: "#1d2733", grid: "#e6eaef", text: "#5b6876"};
  const s = (tag, attrs) => {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    return el;
  };
  const ms = (iso) => (iso ? Date.parse(iso) : NaN);
  const fmt = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(2));

  // load(startIso, endIso) -> the signals document (GET /api/turbines/{t}/signals)
  function create(holder, load) {
    const note = document.createElement("p");
    note.className = "muted";
    note.dataset.testid = "signals-note";
    const grid = document.createElement("div");
    grid.className = "signal-grid";
    holder.append(note, grid);
    const charts = new Map();  // feature -> svg
    let timeline = null, view = null, raw = null, fetched = null, timer = null, asked = 0;

    function features() {
      const names = new Set();
      (timeline.periods || []).forEach((p) => Object.keys(p.features || {}).forEach((n) => names.add(n)));
      (raw ? raw.features : []).forEach((n) => names.add(n));
      return [...names];
    }
    function ensure(names) {
      for (const name of names) {
        if (charts.has(name)) continue;
        const svg = s("svg", {role: "img", "aria-label": `signal ${name}`, "data-feature": name});
        const box = document.createElement("div");
        box.className = "signal";
        const title = document.createElement("div");
        title.className = "signal-title";
        title.textContent = name;
        box.append(title, svg);
        grid.append(box);
        charts.set(name, svg);
      }
    }
    function update(t) { timeline = t; ensure(features()); draw(); schedule(); }
    function setView(v) { view = v; draw(); schedule(); }
    function schedule() { clearTimeout(timer); timer = setTimeout(fetchRaw, 250); }

    // captured samples of the view: fetched when the view holds captures, is at most 6 h long and is not inside
    // what was fetched (or is much narrower: more detail)
    async function fetchRaw() {
      if (!timeline || !view) return;
      const [t0, t1] = view;
      const inView = (timeline.captures || []).filter((c) => ms(c.ended_at) >= t0 && ms(c.started_at) <= t1);
      if (!inView.length) { note.textContent = (timeline.captures || []).length ? "no captured samples in this range" : "no captured samples yet"; setRaw(null); return; }
      if (t1 - t0 > MAX_RANGE_MS) { note.textContent = `${inView.length} captured file(s) in this range: zoom in to at most 6 h to see their samples`; setRaw(null); return; }
      const key = inView.map((c) => c.key).join("|");
      if (fetched && fetched.key === key && t0 >= fetched.t0 && t1 <= fetched.t1 && (t1 - t0) * 4 > fetched.t1 - fetched.t0) return;
      const ask = ++asked;
      try {
        const doc = await load(new Date(t0).toISOString(), new Date(t1).toISOString());
        if (ask !== asked) return;  // a later view asked since
        fetched = {key, t0, t1};
        note.textContent = `captured samples: ${doc.samples} from ${doc.files.length} file(s)` +
          (doc.decimated ? ` (at most ${doc.max_points} points per signal, each bucket's min and max)` : "") +
          (doc.skipped.length ? `; ${doc.skipped.length} more file(s) not read: zoom in` : "") +
          (doc.problems.length ? `; left out: ${doc.problems.join("; ")}` : "");
        setRaw(doc);
      } catch (err) {
        if (ask === asked) note.textContent = `captured samples: ${err.message}`;
      }
    }
    function setRaw(doc) {
      if (doc === null && raw === null) return;
      if (doc === null) fetched = null;
      raw = doc;
      ensure(features());
      draw();
    }

    function draw() {
      if (!timeline || !view) return;
      const [t0, t1] = view;
      const origin = raw ? ms(raw.origin_at) : 0;
      for (const [name, svg] of charts) {
        const w = svg.clientWidth || 800, hgt = svg.clientHeight || 90;
        const periods = (timeline.periods || []).filter((p) => p.features && p.features[name] && ms(p.ended_at) >= t0 && ms(p.started_at) <= t1);
        const series = raw && raw.series[name] ? raw.series[name] : {t: [], v: []};
        const values = periods.flatMap((p) => [p.features[name].p05, p.features[name].p95]);
        series.v.forEach((v, i) => { const t = origin + series.t[i] * 1000; if (v !== null && t >= t0 && t <= t1) values.push(v); });
        svg.replaceChildren();
        svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
        if (!values.length) {
          const tx = s("text", {x: w / 2, y: hgt / 2 + 4, "text-anchor": "middle", "font-size": 11, fill: COLORS.text});
          tx.textContent = "no data in this range";
          svg.append(tx);
          continue;
        }
        let lo = Math.min(...values), hi = Math.max(...values);
        if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
        const pad = (hi - lo) * 0.08;
        lo -= pad; hi += pad;
        const x = (t) => M.left + (t - t0) / (t1 - t0) * (w - M.left - M.right);
        const y = (v) => hgt - M.bottom - (v - lo) / (hi - lo) * (hgt - M.top - M.bottom);
        for (const v of [lo + pad, hi - pad]) {
          svg.append(s("line", {x1: M.left, x2: w - M.right, y1: y(v), y2: y(v), stroke: COLORS.grid}));
          const tx = s("text", {x: M.left - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 10, fill: COLORS.text});
          tx.textContent = fmt(v);
          svg.append(tx);
        }
        const clipId = `clip-${name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
        const clip = s("clipPath", {id: clipId});
        clip.append(s("rect", {x: M.left, y: 0, width: w - M.left - M.right, height: hgt}));
        const plot = s("g", {"clip-path": `url(#${clipId})`});
        svg.append(clip, plot);
        for (const p of periods) {
          const f = p.features[name], x0 = x(ms(p.started_at)), x1 = Math.max(x(ms(p.ended_at)), x0 + 1);
          plot.append(s("rect", {x: x0, y: y(f.p95), width: x1 - x0, height: Math.max(y(f.p05) - y(f.p95), 1), fill: COLORS.band, "data-kind": "band"}));
          plot.append(s("line", {x1: x0, x2: x1, y1: y(f.p50), y2: y(f.p50), stroke: COLORS.median, "stroke-width": 1.5}));
        }
        let d = "", pen = false;
        series.v.forEach((v, i) => {
          if (v === null) { pen = false; return; }
          d += `${pen ? "L" : "M"}${x(origin + series.t[i] * 1000).toFixed(1)},${y(v).toFixed(1)}`;
          pen = true;
        });
        if (d) plot.append(s("path", {d, fill: "none", stroke: COLORS.raw, "stroke-width": 1, "data-kind": "raw"}));
      }
    }
    return {update, setView};
  }
  return {create};
})();
