// Plots the server's event-loop lag live, from the samples /healthz reports.
//
// The server measures (a task that sleeps 50 ms and records how late it woke);
// this only polls and draws. While a route blocks the loop, /healthz cannot
// answer either: the poll waits, and the late wake-up arrives with the next answer.

const SVG = "http://www.w3.org/2000/svg";
const POLL_MS = 250; // one request in flight at a time: each poll waits for the last
const WINDOW_S = 20; // seconds of history on screen
const samples = new Map(); // server Unix time -> seconds late

const ms = (seconds) => `${Math.round(seconds * 1000)} ms`;

async function poll() {
  const response = await fetch("/healthz", { headers: { Accept: "application/json" }, cache: "no-store" });
  const lag = (await response.json()).loop_lag;
  for (const [at, late] of lag.samples) samples.set(at, late);
  return lag;
}

function draw(svg, text, lag) {
  const times = [...samples.keys()];
  const newest = Math.max(...times);
  for (const at of times) if (at < newest - WINDOW_S) samples.delete(at);
  const recent = [...samples.entries()].sort((a, b) => a[0] - b[0]);
  const worst = Math.max(0, ...recent.map(([, late]) => late));
  const width = Math.max(260, svg.parentElement.clientWidth);
  const height = 64;
  const top = Math.max(0.1, worst); // at least 100 ms tall, so idle noise stays flat
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const x = (at) => ((at - (newest - WINDOW_S)) / WINDOW_S) * (width - 2) + 1;
  for (const [at, late] of recent) {
    // A sample that woke `late` seconds late means the loop was held from at - late to at:
    // draw that span, as tall as it was long.
    const bar = document.createElementNS(SVG, "rect");
    const h = Math.max(1, (late / top) * (height - 14));
    bar.setAttribute("x", Math.max(0, x(at - late)).toFixed(1));
    bar.setAttribute("width", Math.max(1.5, x(at) - x(at - late)).toFixed(1));
    bar.setAttribute("y", (height - 1 - h).toFixed(1));
    bar.setAttribute("height", h.toFixed(1));
    bar.setAttribute("class", "lag-bar");
    svg.append(bar);
  }
  const scale = document.createElementNS(SVG, "text");
  scale.setAttribute("x", 4);
  scale.setAttribute("y", 10);
  scale.setAttribute("class", "tick");
  scale.textContent = `${ms(top)} ↑, last ${WINDOW_S} s →`;
  svg.append(scale);
  text.textContent = `loop lag now ${ms(lag.last)}; worst in the last ${WINDOW_S} s: ${ms(worst)}`;
}

/** Starts polling; pauses while the tab is hidden. */
export function startLagMeter(svg, text) {
  async function tick() {
    if (!document.hidden) {
      try {
        draw(svg, text, await poll());
      } catch {
        text.textContent = "loop lag: the server does not answer";
      }
    }
    setTimeout(tick, POLL_MS);
  }
  tick();
}
