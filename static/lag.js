// Plots the server's event-loop lag live, from the samples /healthz reports, and names each block.
//
// The server measures (a task that sleeps 50 ms and records how late it woke) and
// finds the line that held the loop (loop_health.py); this only polls and draws.
// While a route blocks the loop, /healthz cannot answer either: the poll waits,
// and the late wake-up arrives with the next answer, the block's name with it.

import { node } from "./timeline.js";

const POLL_MS = 250; // one request in flight at a time: each poll waits for the last
const WINDOW_S = 20; // seconds of history on screen
const SLACK_S = 0.002; // the block's end and its wake-up are one instant, each rounded to a millisecond
const samples = new Map(); // server Unix time -> seconds late
const blocks = new Map(); // server Unix time it ended -> the block /healthz reported

const CHAR_PX = 6.5; // about one character of an 11 px label
const ms = (seconds) => `${Math.round(seconds * 1000)} ms`;
const where = (block) => `${block.path ?? "a task outside any request"} at ${block.file}:${block.line}`;

async function poll() {
  const response = await fetch("/healthz", { headers: { Accept: "application/json" }, cache: "no-store" });
  const lag = (await response.json()).loop_lag;
  for (const [at, late] of lag.samples) samples.set(at, late);
  for (const block of lag.blocks ?? []) blocks.set(block.ended, block);
  return lag;
}

/** Each sample's blocks: a block belongs to the first wake-up after it ended (the same instant, mostly). */
function blocksBySample(times) {
  const bySample = new Map();
  for (const block of blocks.values()) {
    const at = times.find((t) => t >= block.ended - SLACK_S);
    if (at !== undefined) bySample.set(at, [...(bySample.get(at) ?? []), block]);
  }
  return bySample;
}

/** "loop held 2994 ms by 3 blocks (0.99 s, 1.00 s, 1.00 s): GET /ping/blocking at asgi_app.py:61 in ...". */
function describe(late, named) {
  const places = new Map(); // one entry per place, with the seconds of each block there
  for (const b of named) {
    const place = `${b.method ?? ""} ${where(b)} in ${b.function}: ${b.source}`.trim();
    places.set(place, [...(places.get(place) ?? []), `${b.seconds.toFixed(2)} s`]);
  }
  const parts = [...places].map(([place, seconds]) => `${seconds.length > 1 ? `${seconds.length} blocks` : "a block"} (${seconds.join(", ")}): ${place}`);
  return `loop held ${ms(late)} by ${parts.join("; and ")}`;
}

function draw(svg, text, detail, lag) {
  const times = [...samples.keys()];
  const newest = Math.max(...times);
  for (const at of times) if (at < newest - WINDOW_S) samples.delete(at);
  for (const ended of blocks.keys()) if (ended < newest - WINDOW_S) blocks.delete(ended);
  const recent = [...samples.entries()].sort((a, b) => a[0] - b[0]);
  const named = blocksBySample(recent.map(([at]) => at));
  const worst = recent.reduce((best, sample) => (sample[1] > best[1] ? sample : best), [newest, 0]);
  const width = Math.max(260, svg.parentElement.clientWidth);
  const height = 64;
  const top = Math.max(0.1, worst[1]); // at least 100 ms tall, so idle noise stays flat
  const focused = document.activeElement?.closest?.("#lag-plot") ? document.activeElement.dataset.at : null;
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const x = (at) => ((at - (newest - WINDOW_S)) / WINDOW_S) * (width - 2) + 1;
  let [labelsFrom, labelsTo] = [Infinity, -Infinity]; // the stretch the spike labels take so far
  const labels = []; // drawn after every bar, so no bar covers one
  for (const [at, late] of recent) {
    // A sample that woke `late` seconds late means the loop was held from at - late to at:
    // draw that span, as tall as it was long.
    const h = Math.max(1, (late / top) * (height - 14));
    const bar = node("rect", {
      x: Math.max(0, x(at - late)).toFixed(1), width: Math.max(1.5, x(at) - x(at - late)).toFixed(1),
      y: (height - 1 - h).toFixed(1), height: h.toFixed(1), class: "lag-bar",
    }, svg);
    if (!named.has(at)) continue;
    // A block the server named: its route and line on hover, on keyboard focus, and for screen readers.
    const label = describe(late, named.get(at));
    bar.setAttribute("class", "lag-bar named");
    bar.setAttribute("tabindex", "0");
    bar.setAttribute("role", "img");
    bar.setAttribute("aria-label", label);
    bar.dataset.at = String(at);
    node("title", {}, bar).textContent = label;
    // And in the plot itself, beside the spike, so the culprit shows without a hover: right of it,
    // else left of it, else shorter, else not at all (hover, focus and the text below still name it).
    const block = named.get(at)[0];
    for (const words of [where(block), `${block.file}:${block.line}`]) {
      const wide = words.length * CHAR_PX;
      const place = [[x(at) + 4, "start", x(at) + 4 + wide], [x(at - late) - 4, "end", x(at - late) - 4 - wide]]
        .find(([from, , edge]) => {
          const [lo, hi] = [Math.min(from, edge), Math.max(from, edge)];
          return lo > 0 && hi < width && (hi < labelsFrom || lo > labelsTo); // on screen, clear of the others
        });
      if (!place) continue;
      const [from, anchor, edge] = place;
      labels.push([{ x: from, y: 24, "text-anchor": anchor, class: "spike-label" }, words]);
      [labelsFrom, labelsTo] = [Math.min(labelsFrom, from, edge), Math.max(labelsTo, from, edge)];
      break;
    }
    const show = () => { detail.textContent = label; };
    bar.addEventListener("mouseenter", show);
    bar.addEventListener("focus", show);
    if (focused === String(at)) bar.focus(); // redrawn every poll: keep the reader's place
  }
  for (const [attributes, words] of labels) node("text", attributes, svg).textContent = words;
  node("text", { x: 4, y: 10, class: "tick" }, svg).textContent = `${ms(top)} ↑, last ${WINDOW_S} s →`;
  const culprit = named.get(worst[0])?.[0];
  const worstWhere = culprit ? `, ${where(culprit)}` : "";
  text.textContent = `loop lag now ${ms(lag.last)}; worst in the last ${WINDOW_S} s: ${ms(worst[1])}${worstWhere}`;
}

/** Starts polling; pauses while the tab is hidden. */
export function startLagMeter(svg, text, detail) {
  async function tick() {
    if (!document.hidden) {
      try {
        draw(svg, text, detail, await poll());
      } catch {
        text.textContent = "loop lag: the server does not answer";
      }
    }
    setTimeout(tick, POLL_MS);
  }
  tick();
}
