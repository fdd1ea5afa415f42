// The turbine timeline chart: inline SVG, time on x, score / threshold on y (log-free, the threshold at 1.0).
// Each detector period is a score band (p05-p95, p25-p75 darker, the median a line), episodes are shaded spans with
// their peak as a dot, model swaps vertical lines, alerts triangles on top, captured raw-sample files bars at the foot.
// Zoom: wheel (around the pointer) or the +/- buttons; pan: drag; reset: double-click or the reset button.
"use strict";

window.NacelleChart = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const M = {left: 48, right: 16, top: 26, bottom: 28};
  const COLORS = {score: "#cf222e", episode: "rgba(207,34,46,0.18)", threshold: "#9a6700", swap: "#1f6feb", alert: "#8250df",
    grid: "#e6eaef", text: "#5b6876", band: "rgba(31,111,235,0.14)", core: "rgba(31,111,235,0.28)", median: "#1f6feb",
    capture: "#1a7f37"};
  const s = (tag, attrs) => {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    return el;
  };
  const ms = (iso) => (iso ? Date.parse(iso) : NaN);
  const label = (t, span) => {
    const d = new Date(t).toISOString();
    return span < 3 * 86400e3 ? d.slice(11, 19) : d.slice(5, 16).replace("T", " ");
  };

  // opts.onView(view): called with [t0, t1] (epoch ms) after every drawing (zoom, pan, new data)
  function create(holder, opts = {}) {
    const svg = s("svg", {role: "img", "aria-label": "turbine timeline"});
    const tip = document.createElement("div");
    tip.className = "tip";
    const tools = document.createElement("div");
    tools.className = "tools";
    for (const [text, fn] of [["+", () => zoom(0.5)], ["−", () => zoom(2)], ["reset", () => reset()]]) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = text;
      b.addEventListener("click", fn);
      tools.append(b);
    }
    holder.append(svg, tip, tools);
    let data = null, full = null, view = null, items = [], drag = null;

    function bounds(t) {
      const times = [];
      t.episodes.forEach((e) => times.push(ms(e.started_at), ms(e.ended_at)));
      t.alerts.forEach((a) => times.push(ms(a.at)));
      t.model_swaps.forEach((m) => times.push(ms(m.at)));
      (t.periods || []).forEach((p) => times.push(ms(p.started_at), ms(p.ended_at)));
      if (t.last_health_at) times.push(ms(t.last_health_at));
      const ok = times.filter((x) => !Number.isNaN(x));
      if (!ok.length) { const now = Date.now(); return [now - 3600e3, now]; }
      let lo = Math.min(...ok), hi = Math.max(...ok);
      const pad = Math.max((hi - lo) * 0.05, 30e3);
      return [lo - pad, hi + pad];
    }
    function update(t) {
      const first = data === null;
      data = t;
      const b = bounds(t);
      const zoomed = full && view && (view[0] !== full[0] || view[1] !== full[1]);
      full = b;
      if (first || !zoomed) view = b.slice();
      draw();
    }
    function reset() { if (full) { view = full.slice(); draw(); } }
    function zoom(factor, at) {
      if (!view) return;
      const center = at ?? (view[0] + view[1]) / 2;
      const span = Math.max((view[1] - view[0]) * factor, 1000);
      view = [center - (center - view[0]) * span / (view[1] - view[0]), 0];
      view[1] = view[0] + span;
      draw();
    }
    function geometry() {
      const w = svg.clientWidth || 800, hgt = svg.clientHeight || 360;
      const maxScore = Math.max(2, ...data.episodes.map((e) => e.score || 0),
        ...(data.periods || []).map((p) => (p.score ? p.score.p95 : 0))) * 1.1;
      const x = (t) => M.left + (t - view[0]) / (view[1] - view[0]) * (w - M.left - M.right);
      const y = (v) => hgt - M.bottom - v / maxScore * (hgt - M.top - M.bottom);
      const tAt = (px) => view[0] + (px - M.left) / (w - M.left - M.right) * (view[1] - view[0]);
      return {w, hgt, maxScore, x, y, tAt};
    }
    function draw() {
      if (!data) return;
      const g = geometry();
      svg.replaceChildren();
      svg.setAttribute("viewBox", `0 0 ${g.w} ${g.hgt}`);
      items = [];
      const clip = s("clipPath", {id: "plot"});
      clip.append(s("rect", {x: M.left, y: 0, width: g.w - M.left - M.right, height: g.hgt}));
      svg.append(clip);
      for (let i = 0; i <= 4; i++) {  // y grid: score / threshold
        const v = g.maxScore * i / 4, yy = g.y(v);
        svg.append(s("line", {x1: M.left, x2: g.w - M.right, y1: yy, y2: yy, stroke: COLORS.grid}));
        const tx = s("text", {x: M.left - 6, y: yy + 4, "text-anchor": "end", "font-size": 11, fill: COLORS.text});
        tx.textContent = v.toFixed(1);
        svg.append(tx);
      }
      const span = view[1] - view[0];
      for (let i = 0; i <= 5; i++) {  // x ticks
        const t = view[0] + span * i / 5, xx = g.x(t);
        const tx = s("text", {x: xx, y: g.hgt - 8, "text-anchor": "middle", "font-size": 11, fill: COLORS.text});
        tx.textContent = label(t, span);
        svg.append(tx, s("line", {x1: xx, x2: xx, y1: M.top, y2: g.hgt - M.bottom, stroke: COLORS.grid}));
      }
      const plot = s("g", {"clip-path": "url(#plot)"});
      svg.append(plot);
      for (const p of data.periods || []) {  // the score band of each period
        if (!p.score) continue;
        const x0 = g.x(ms(p.started_at)), x1 = Math.max(g.x(ms(p.ended_at)), x0 + 1), w = x1 - x0;
        plot.append(s("rect", {x: x0, y: g.y(p.score.p95), width: w, height: g.y(p.score.p05) - g.y(p.score.p95), fill: COLORS.band, "data-kind": "period"}));
        plot.append(s("rect", {x: x0, y: g.y(p.score.p75), width: w, height: g.y(p.score.p25) - g.y(p.score.p75), fill: COLORS.core}));
        plot.append(s("line", {x1: x0, x2: x1, y1: g.y(p.score.p50), y2: g.y(p.score.p50), stroke: COLORS.median, "stroke-width": 1.5}));
        items.push({x: (x0 + x1) / 2, y: g.y(p.score.p50), text: `period ${p.started_at} → ${p.ended_at} · model ${p.model_version ? "v" + p.model_version : "-"}\n` +
          `score / threshold: median ${p.score.p50.toFixed(2)}, p05–p95 ${p.score.p05.toFixed(2)}–${p.score.p95.toFixed(2)}\n` +
          `${p.operating_windows} of ${p.windows} windows in the operating regime`});
      }
      for (const c of data.captures || []) {  // captured raw samples: a bar at the foot
        const x0 = g.x(ms(c.started_at)), x1 = Math.max(g.x(ms(c.ended_at)), x0 + 2), yy = g.hgt - M.bottom - 4;
        plot.append(s("rect", {x: x0, y: yy, width: x1 - x0, height: 4, fill: COLORS.capture, "data-kind": "capture"}));
        items.push({x: (x0 + x1) / 2, y: yy, text: `captured ${c.kind} samples${c.episode_id ? " of " + c.episode_id : ""}\n${c.started_at} → ${c.ended_at}\nzoom in to see them below`});
      }
      const thr = g.y(data.threshold);
      plot.append(s("line", {x1: M.left, x2: g.w - M.right, y1: thr, y2: thr, stroke: COLORS.threshold, "stroke-dasharray": "6 4"}));
      for (const e of data.episodes) {
        const x0 = g.x(ms(e.started_at)), x1 = Math.max(g.x(ms(e.ended_at)), x0 + 2);
        plot.append(s("rect", {x: x0, y: M.top, width: x1 - x0, height: g.hgt - M.top - M.bottom, fill: COLORS.episode}));
        const cx = (x0 + x1) / 2, cy = g.y(e.score || 0);
        plot.append(s("line", {x1: x0, x2: x1, y1: cy, y2: cy, stroke: COLORS.score, "stroke-width": 2}));
        plot.append(s("circle", {cx, cy, r: 4, fill: COLORS.score, "data-kind": "episode"}));
        items.push({x: cx, y: cy, text: `episode ${e.episode_id || e.alert_id}\n${e.started_at} → ${e.ended_at}${e.open ? " (open)" : ""}\n` +
          `peak ${(e.score || 0).toFixed(2)}× threshold · ${e.severity}\nmodel ${e.model_version ? "v" + e.model_version : "-"}`});
      }
      for (const m of data.model_swaps) {
        const xx = g.x(ms(m.at));
        plot.append(s("line", {x1: xx, x2: xx, y1: M.top, y2: g.hgt - M.bottom, stroke: COLORS.swap, "stroke-width": 1.5, "data-kind": "swap"}));
        const tx = s("text", {x: xx + 3, y: M.top + 10, "font-size": 11, fill: COLORS.swap});
        tx.textContent = m.model_version ? `v${m.model_version}` : "?";
        plot.append(tx);
        items.push({x: xx, y: M.top + 10, text: `model swap to ${m.model_version ? "v" + m.model_version : "?"}: ${m.status}\n${m.at}\n${m.deployment_id}`});
      }
      for (const a of data.alerts) {
        if (!a.at) continue;
        const xx = g.x(ms(a.at)), yy = M.top - 8;
        plot.append(s("path", {d: `M${xx - 5},${yy - 6} L${xx + 5},${yy - 6} L${xx},${yy + 2} Z`, fill: COLORS.alert, "data-kind": "alert"}));
        items.push({x: xx, y: yy, text: `${a.kind} alert ${a.alert_id}\n${a.at} · ${a.severity} · ${a.status}` +
          (a.acks.length ? `\nacknowledged by ${a.acks[a.acks.length - 1].by}${a.verdict ? " (" + a.verdict + ")" : ""}` : "")});
      }
      if (!data.episodes.length && !data.model_swaps.length && !data.alerts.length && !(data.periods || []).length) {
        const tx = s("text", {x: g.w / 2, y: g.hgt / 2, "text-anchor": "middle", fill: COLORS.text});
        tx.textContent = "nothing recorded for this turbine yet";
        svg.append(tx);
      }
      if (opts.onView) opts.onView(view.slice());
    }
    function pointer(ev) {
      const r = svg.getBoundingClientRect();
      return [(ev.clientX - r.left) * (svg.viewBox.baseVal.width / r.width || 1), (ev.clientY - r.top) * (svg.viewBox.baseVal.height / r.height || 1), ev.clientX - r.left, ev.clientY - r.top];
    }
    svg.addEventListener("wheel", (ev) => {
      if (!data) return;
      ev.preventDefault();
      const [px] = pointer(ev);
      zoom(ev.deltaY < 0 ? 0.8 : 1.25, geometry().tAt(px));
    }, {passive: false});
    svg.addEventListener("mousedown", (ev) => { if (data) drag = {x: pointer(ev)[0], view: view.slice()}; });
    window.addEventListener("mouseup", () => { drag = null; });
    svg.addEventListener("dblclick", reset);
    svg.addEventListener("mouseleave", () => { tip.style.display = "none"; });
    svg.addEventListener("mousemove", (ev) => {
      if (!data) return;
      const [px, py, cx, cy] = pointer(ev);
      if (drag) {
        const g = geometry(), dt = g.tAt(drag.x) - g.tAt(px);
        view = [drag.view[0] + dt, drag.view[1] + dt];
        draw();
        return;
      }
      let best = null, bestD = 14 * 14;
      for (const it of items) {
        const d = (it.x - px) ** 2 + (it.y - py) ** 2 * 0.2;
        if (d < bestD) { best = it; bestD = d; }
      }
      if (!best) { tip.style.display = "none"; return; }
      tip.textContent = best.text;
      tip.style.display = "block";
      tip.style.left = `${Math.min(cx + 12, holder.clientWidth - 260)}px`;
      tip.style.top = `${cy + 12}px`;
    });
    return {update, zoom, reset, view: () => view && view.slice()};
  }
  return {create};
})();
