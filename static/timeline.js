// Draws a batch as an SVG timeline: one row per call, all on the server's clock.
//
// A row's solid bar runs from when the server started the route's body to when
// it finished; the thin line behind it from when the call was sent to when the
// answer came back. The universities routes add one row per upstream call.

const SVG = "http://www.w3.org/2000/svg";
// Okabe-Ito colours stay apart for every common colour-vision deficiency; the
// second series is also hatched and every row is labelled, so colour is never the only cue.
const SERIES = [
  { colour: "#0072B2", pattern: null },
  { colour: "#D55E00", pattern: "hatch" },
];
const ROW = 20; // px per row
const BAR = 12; // px bar height
const AXIS = 22; // px for the tick labels on top
const STEPS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60];
let patternIds = 0;

/** An SVG element with these attributes, appended to `parent` if given. */
export function node(name, attributes = {}, parent = null) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (parent) parent.append(element);
  return element;
}

/** Rows in a stable order: by route, then by call number, each call followed by its upstream calls. */
function rowsOf(plan, calls) {
  const rows = [];
  plan.routes.forEach((route, series) => {
    const short = route.split("/").pop();
    const mine = calls.filter((c) => c.route === route).sort((a, b) => a.index - b.index);
    for (const call of mine) {
      rows.push({ label: `${short} #${call.index + 1}`, call, series });
      for (const part of call.upstream ?? []) rows.push({ label: `  ${part.country}`, call: part, series, part: true });
    }
  });
  return rows;
}

function tickStep(span, widthPx) {
  const most = Math.max(2, Math.floor(widthPx / 56)); // a tick label every 56 px at the closest
  return STEPS.find((step) => span / step <= most) ?? STEPS[STEPS.length - 1];
}

function legend(container, plan) {
  const key = document.createElement("p");
  key.className = "legend";
  plan.routes.forEach((route, series) => {
    const item = document.createElement("span");
    item.className = `swatch series-${series}`;
    item.textContent = route;
    key.append(item);
  });
  const hint = document.createElement("span");
  hint.className = "hint";
  hint.textContent = "bar: the body ran · line: sent → answered";
  key.append(hint);
  container.append(key);
}

/** Replaces `container`'s drawing with `calls` (the events so far) of the batch `plan`. */
export function drawTimeline(container, plan, calls) {
  container.replaceChildren();
  legend(container, plan);
  const rows = rowsOf(plan, calls.filter((c) => c.status === 200));
  const width = Math.max(260, container.clientWidth);
  const gutter = Math.min(96, Math.round(width * 0.28)); // row labels
  const plotWidth = width - gutter - 8;
  const span = Math.max(0.1, ...calls.filter((c) => c.received !== undefined).map((c) => c.received));
  const x = (t) => gutter + (t / span) * plotWidth;
  const height = AXIS + Math.max(1, rows.length) * ROW + 4;
  const svg = node("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", class: "timeline-plot" });
  node("title", {}, svg).textContent = `${rows.length} rows on a time axis of ${span.toFixed(2)} s`;

  const hatchId = `hatch-${++patternIds}`;
  const defs = node("defs", {}, svg);
  const hatch = node("pattern", { id: hatchId, width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" }, defs);
  node("rect", { width: 6, height: 6, fill: SERIES[1].colour }, hatch);
  node("line", { x1: 0, y1: 0, x2: 0, y2: 6, stroke: "#fff", "stroke-width": 2.5 }, hatch);

  const step = tickStep(span, plotWidth);
  for (let t = 0; t <= span + 1e-9; t += step) {
    node("line", { x1: x(t), x2: x(t), y1: AXIS - 4, y2: height, class: "grid" }, svg);
    const label = node("text", { x: x(t), y: AXIS - 8, class: "tick", "text-anchor": t === 0 ? "start" : "middle" }, svg);
    label.textContent = `${+t.toFixed(2)} s`;
  }

  rows.forEach((row, i) => {
    const y = AXIS + i * ROW + (ROW - BAR) / 2;
    const mid = y + BAR / 2;
    node("text", { x: 4, y: mid + 4, class: row.part ? "label part" : "label" }, svg).textContent = row.label.trim();
    const { call } = row;
    if (!row.part) {
      // Sent -> answered: time the call spent outside the route's body (queued, or its answer held up).
      node("line", { x1: x(call.sent), x2: x(call.received), y1: mid, y2: mid, class: "wait" }, svg);
    }
    const series = SERIES[row.series];
    const fill = series.pattern ? `url(#${hatchId})` : series.colour;
    const bar = node("rect", {
      class: row.part ? "bar upstream" : "bar",
      x: x(call.started), y: row.part ? y + 2 : y, height: row.part ? BAR - 4 : BAR, rx: 2,
      width: Math.max(2, x(call.finished) - x(call.started)), fill, stroke: series.colour,
    }, svg);
    node("title", {}, bar).textContent =
      `${row.label.trim()}: started ${call.started.toFixed(3)} s, finished ${call.finished.toFixed(3)} s` +
      (row.part ? "" : `, sent ${call.sent.toFixed(3)} s, answered ${call.received.toFixed(3)} s`);
  });
  container.append(svg);
}
