// Wires the page: each lesson's form runs its batch and draws it as the events arrive.

import { streamBatch } from "./batch.js";
import { drawTimeline } from "./timeline.js";
import { readBatch } from "./reading.js";
import { startLagMeter } from "./lag.js";
import { runBrowserTest } from "./limits.js";

/** The /batch query for one form: its routes, then every parameter it shows. */
function queryOf(form) {
  const query = new URLSearchParams();
  for (const route of form.dataset.routes.split(" ")) query.append("route", route);
  for (const input of form.querySelectorAll("input")) {
    if (input.name === "country") {
      // One text box, several countries: the API takes ?country= once per country.
      for (const country of input.value.split(",").map((c) => c.trim()).filter(Boolean)) query.append("country", country);
    } else {
      query.set(input.name, input.value);
    }
  }
  return query;
}

function runLesson(form) {
  const button = form.querySelector("button");
  const status = form.querySelector("[role=status]");
  const timeline = form.querySelector(".timeline");
  const calls = [];
  let plan = null;
  const redraw = () => plan && drawTimeline(timeline, plan, calls);
  // aria-disabled, not disabled: a disabled button drops the keyboard focus.
  button.setAttribute("aria-disabled", "true");
  status.textContent = `running ${form.dataset.routes.split(" ").join(" and ")}…`;
  streamBatch(queryOf(form), {
    onPlan(received) {
      plan = received;
      redraw();
    },
    onCall(call) {
      calls.push(call);
      redraw();
    },
    onDone(done) {
      redraw();
      status.textContent = readBatch(plan, calls, done);
      button.removeAttribute("aria-disabled");
    },
    onError(message) {
      status.textContent = `${form.dataset.routes}: ${message}`;
      button.removeAttribute("aria-disabled");
    },
  });
  form.redraw = redraw; // for window resizes
}

for (const form of document.querySelectorAll("form.lesson[data-routes]")) {
  form.addEventListener("submit", (event) => {
    event.preventDefault(); // the form is for the keyboard (Enter runs it) and validation, not for navigation
    if (form.querySelector("button").getAttribute("aria-disabled") !== "true") runLesson(form);
  });
}

const browserTest = document.querySelector("#browser-limits");
browserTest.addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = browserTest.querySelector("button");
  if (button.getAttribute("aria-disabled") === "true") return;
  button.setAttribute("aria-disabled", "true");
  await runBrowserTest(browserTest.querySelector("[role=status]"));
  button.removeAttribute("aria-disabled");
});

let resizeTimer = 0;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => document.querySelectorAll("form.lesson").forEach((f) => f.redraw?.()), 100);
});

startLagMeter(document.querySelector("#lag-plot"), document.querySelector("#lag-text"), document.querySelector("#lag-detail"));
