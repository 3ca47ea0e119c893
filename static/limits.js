// Lets this browser fire the calls itself, to show its own queue.
//
// Same URL: Chromium holds each request until the one before it has answered
// (its cache lock), so six calls of 0.5 s take about 3 s. Different URLs: it
// runs them at once, but over at most six HTTP/1.1 connections to one host, so
// eight calls go in two waves (the lag meter's poll takes a connection too).

const DELAY = 0.5;

async function wallTime(urls) {
  const began = performance.now();
  await Promise.all(urls.map((url) => fetch(url, { headers: { Accept: "application/json" } }).then((r) => r.json())));
  return (performance.now() - began) / 1000;
}

export async function runBrowserTest(status) {
  status.textContent = "running: six fetch()es of one URL…";
  const same = await wallTime(Array.from({ length: 6 }, () => `/ping/async?delay=${DELAY}`));
  status.textContent = "running: eight fetch()es of eight URLs…";
  const distinct = await wallTime(Array.from({ length: 8 }, (_, i) => `/ping/async?delay=${DELAY}&call=${i}`));
  status.textContent =
    `6 calls of ${DELAY} s to one URL took ${same.toFixed(2)} s in this browser ` +
    `(${(same / DELAY).toFixed(1)} x the delay: it sends them one at a time); ` +
    `8 calls to 8 URLs took ${distinct.toFixed(2)} s (${Math.ceil(distinct / DELAY - 0.2)} waves: six connections per host). ` +
    `The server overlaps all of them, as the batches above show.`;
}
