// SVG charts drawn by hand: a time chart (stacked areas or lines, with axes and a hover read-out) and
// sparklines. No library: the page loads nothing from anywhere else.

const NS = "http://www.w3.org/2000/svg";
const MARGIN = { top: 10, right: 12, bottom: 24, left: 42 };

export const COLORS = {
  polling: "#f59e0b",
  websocket: "#3b82f6",
  "plain-websocket": "#8b5cf6",
  sse: "#10b981",
  publishes: "#0ea5e9",
  deliveries: "#6366f1",
};

function svgEl(name, attrs = {}, parent) {
  const el = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

/** A round upper bound for an axis that reaches `max`, and its tick step; whole steps for counts. */
export function niceScale(max, { ticks = 4, integer = false } = {}) {
  if (!(max > 0) || (integer && max <= ticks)) return { max: ticks, step: 1 };
  const rough = max / ticks;
  const power = 10 ** Math.floor(Math.log10(rough));
  let step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= rough);
  if (integer) step = Math.max(1, Math.ceil(step));
  return { max: Math.ceil(max / step) * step, step };
}

const TIME_STEPS = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800].map((s) => s * 1000);

function timeTicks(t0, t1, width) {
  const most = Math.max(2, Math.floor(width / 90));
  const step = TIME_STEPS.find((s) => (t1 - t0) / s <= most) ?? 3_600_000;
  const ticks = [];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) ticks.push(t);
  return { ticks, seconds: step < 60_000 };
}

export function clock(ms, seconds = false) {
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, "0");
  return `${two(d.getHours())}:${two(d.getMinutes())}${seconds ? ":" + two(d.getSeconds()) : ""}`;
}

export function compact(n) {
  if (n >= 1e6) return (n / 1e6).toFixed(n >= 1e7 ? 0 : 1) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(0) + "k";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + "k";
  if (Number.isInteger(n)) return String(n);
  return n >= 10 ? n.toFixed(0) : n.toFixed(1);
}

/**
 * Draws a time chart into `container`. `data`: { times: [ms], series: [{ key, label, values: [n] }],
 * stacked, integer (counts: whole ticks), domain: [t0, t1], empty: "text when there is nothing yet", format(n) }.
 */
export function timeChart(container, data) {
  const width = container.clientWidth || 600;
  const height = container.clientHeight || 210;
  const inner = { w: width - MARGIN.left - MARGIN.right, h: height - MARGIN.top - MARGIN.bottom };
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  const { times, series } = data;
  const [t0, t1] = data.domain;
  const x = (t) => MARGIN.left + ((t - t0) / Math.max(1, t1 - t0)) * inner.w;
  const totals = times.map((_, i) => series.reduce((sum, s) => sum + (data.stacked ? s.values[i] : 0), 0));
  const peak = data.stacked ? Math.max(0, ...totals) : Math.max(0, ...series.flatMap((s) => s.values));
  const scale = niceScale(peak, { integer: data.integer });
  const y = (v) => MARGIN.top + inner.h - (v / scale.max) * inner.h;
  const format = data.format ?? compact;

  for (let v = 0; v <= scale.max + 1e-9; v += scale.step) {
    svgEl("line", { class: "grid-line", x1: MARGIN.left, x2: width - MARGIN.right, y1: y(v), y2: y(v) }, svg);
    const label = svgEl("text", { class: "axis-label", x: MARGIN.left - 8, y: y(v) + 4, "text-anchor": "end" }, svg);
    label.textContent = format(v);
  }
  const { ticks, seconds } = timeTicks(t0, t1, inner.w);
  for (const t of ticks) {
    const label = svgEl("text", { class: "axis-label", x: x(t), y: height - 6, "text-anchor": "middle" }, svg);
    label.textContent = clock(t, seconds);
  }

  if (times.length < 2) {
    const note = svgEl("text", { class: "empty-note", x: MARGIN.left + inner.w / 2, y: MARGIN.top + inner.h / 2, "text-anchor": "middle" }, svg);
    note.textContent = data.empty ?? "Collecting samples…";
  } else if (data.stacked) {
    const below = times.map(() => 0);
    for (const s of series) {
      const above = below.map((b, i) => b + s.values[i]);
      const top = times.map((t, i) => `${x(t).toFixed(1)},${y(above[i]).toFixed(1)}`);
      const bottom = times.map((t, i) => `${x(t).toFixed(1)},${y(below[i]).toFixed(1)}`).reverse();
      svgEl("path", { d: `M${top.join("L")}L${bottom.join("L")}Z`, fill: COLORS[s.key], "fill-opacity": "0.78" }, svg);
      svgEl("path", { d: `M${top.join("L")}`, fill: "none", stroke: COLORS[s.key], "stroke-width": "1.5" }, svg);
      above.forEach((v, i) => (below[i] = v));
    }
  } else {
    for (const s of series) {
      const points = times.map((t, i) => `${x(t).toFixed(1)},${y(s.values[i]).toFixed(1)}`);
      const base = `L${x(times.at(-1)).toFixed(1)},${y(0)}L${x(times[0]).toFixed(1)},${y(0)}Z`;
      svgEl("path", { d: `M${points.join("L")}${base}`, fill: COLORS[s.key], "fill-opacity": "0.08" }, svg);
      svgEl("path", { d: `M${points.join("L")}`, fill: "none", stroke: COLORS[s.key], "stroke-width": "2", "stroke-linejoin": "round" }, svg);
    }
  }
  if (times.length >= 2) hover(svg, { times, series, x, y, data, inner, format, totals });
  container.replaceChildren(svg);
}

/** A cursor that follows the mouse to the nearest sample and a read-out of its values. */
function hover(svg, { times, series, x, data, inner, format, totals }) {
  const tooltip = document.getElementById("tooltip");
  const cursor = svgEl("line", { class: "cursor hidden", y1: MARGIN.top, y2: MARGIN.top + inner.h }, svg);
  const overlay = svgEl("rect", { x: MARGIN.left, y: MARGIN.top, width: inner.w, height: inner.h, fill: "transparent" }, svg);
  overlay.addEventListener("mousemove", (event) => {
    const box = svg.getBoundingClientRect();
    const scale = box.width / svg.viewBox.baseVal.width;
    const at = (event.clientX - box.left) / scale;
    let nearest = 0;
    times.forEach((t, i) => {
      if (Math.abs(x(t) - at) < Math.abs(x(times[nearest]) - at)) nearest = i;
    });
    cursor.setAttribute("x1", x(times[nearest]));
    cursor.setAttribute("x2", x(times[nearest]));
    cursor.classList.remove("hidden");
    const rows = series.map((s) => {
      const swatch = `<span class="swatch" data-key="${s.key}"></span>`;
      return `<div>${swatch}${s.label}<b>${format(s.values[nearest])}</b></div>`;
    });
    if (data.stacked) rows.push(`<div>total<b>${format(totals[nearest])}</b></div>`);
    tooltip.innerHTML = `<div class="muted">${clock(times[nearest], true)}</div>${rows.join("")}`;
    for (const swatch of tooltip.querySelectorAll(".swatch")) swatch.style.background = COLORS[swatch.dataset.key];
    tooltip.classList.remove("hidden");
    tooltip.style.left = `${event.clientX + 14}px`;
    tooltip.style.top = `${event.clientY + 14}px`;
  });
  overlay.addEventListener("mouseleave", () => {
    cursor.classList.add("hidden");
    tooltip.classList.add("hidden");
  });
}

/** A small line of `values` in `svg`, with its area lightly filled. */
export function sparkline(svg, values, color) {
  const width = 120;
  const height = 34;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.replaceChildren();
  if (values.length < 2) return;
  const peak = Math.max(1, ...values);
  const px = (i) => (i / (values.length - 1)) * width;
  const py = (v) => height - 2 - (v / peak) * (height - 4);
  const points = values.map((v, i) => `${px(i).toFixed(1)},${py(v).toFixed(1)}`).join("L");
  svgEl("path", { d: `M${points}L${width},${height}L0,${height}Z`, fill: color, "fill-opacity": "0.12" }, svg);
  svgEl("path", { d: `M${points}`, fill: "none", stroke: color, "stroke-width": "1.5", "vector-effect": "non-scaling-stroke" }, svg);
}
