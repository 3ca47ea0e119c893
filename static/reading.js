// Turns a finished batch into one sentence a reader can check against the bars.

const fmt = (seconds) => seconds.toFixed(seconds < 10 ? 2 : 1);

// Two bodies that share less than this ran one after the other: right after a blocking call frees the
// loop, the next call can start a few microseconds before the one it freed has sent its end. The tests
// allow the same 5 ms (ran_alone in tests/test_batch.py).
const TOUCHING_S = 0.005;

/** The most calls whose bodies ran at the same moment, counting no overlap shorter than TOUCHING_S. */
export function peakOverlap(spans) {
  // Each span ends TOUCHING_S early (never before it starts), and a finish sorts before a start at the same instant.
  const edges = spans.flatMap((s) => [[s.started, 1], [Math.max(s.started, s.finished - TOUCHING_S), -1]]);
  edges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let running = 0;
  let peak = 0;
  for (const [, step] of edges) {
    running += step;
    peak = Math.max(peak, running);
  }
  return spans.length ? Math.max(1, peak) : 0; // a span shorter than TOUCHING_S still ran
}

function manner(peak, count, oneByOne) {
  if (count === 1) return "";
  if (peak === 1) return `: ${oneByOne}`;
  if (peak === count) return ": all at once";
  return `: at most ${peak} at a time`;
}

/** One route's sentence, e.g. "/ping/blocking: 10 calls of 1 s took 10.03 s: one at a time". */
function readRoute(route, calls, params) {
  const ok = calls.filter((c) => c.status === 200);
  const failed = calls.length - ok.length;
  const failures = failed ? ` (${failed} failed: ${calls.find((c) => c.status !== 200).detail})` : "";
  if (ok.length === 0) return `${route}: no call succeeded${failures}`;
  const wall = Math.max(...ok.map((c) => c.received)) - Math.min(...ok.map((c) => c.sent));
  if (route.startsWith("/universities/")) {
    const parts = ok.flatMap((c) => c.upstream);
    const how = manner(peakOverlap(parts), parts.length, "one after another");
    return `${route}: ${parts.length} countries took ${fmt(wall)} s${how}${failures}`;
  }
  const what = route.startsWith("/ping/")
    ? `of ${Number(params.delay[0])} s`
    : route.startsWith("/db/")
      ? `counting ${Number(params.rows[0]).toLocaleString("en")} rows`
      : `of ${Number(params.n[0]).toLocaleString("en")} rounds`;
  let sentence = `${route}: ${ok.length} calls ${what} took ${fmt(wall)} s${manner(peakOverlap(ok), ok.length, "one at a time")}`;
  if (route.startsWith("/cpu/")) {
    const each = ok.reduce((sum, c) => sum + c.finished - c.started, 0) / ok.length;
    sentence += `, ${fmt(each)} s each`;
  }
  // A call that waited long before its body started was queued behind the loop or the thread pool.
  const waited = Math.max(...ok.map((c) => c.started - c.sent));
  if (waited > 0.1) sentence += `; sent together, one started ${fmt(waited)} s late`;
  return sentence + failures;
}

/** The whole batch: one sentence per route, then the wall time if there were two routes. */
export function readBatch(plan, calls, done) {
  const sentences = plan.routes.map((route) => readRoute(route, calls.filter((c) => c.route === route), plan.params));
  if (done.timed_out) sentences.push(`cut off after ${fmt(done.wall)} s, ${done.unfinished} calls unfinished`);
  else if (plan.routes.length > 1) sentences.push(`The whole batch took ${fmt(done.wall)} s`);
  return sentences.join(". ") + ".";
}
