// Opens one batch on the server and hands each Server-Sent Event to the caller as it lands.
//
// The server fires the calls (see the live-page section of asgi_app.py): if this page fired them, the
// browser's own queue (one request at a time per URL, six connections per
// host) would be drawn as if it were the server's.

/**
 * Streams `/batch?{query}`: onPlan(plan) first, onCall(call) for each call as it
 * finishes, then onDone(summary). onError(message) if the server refuses or the stream breaks.
 * Returns a function that stops the batch (closing the stream cancels the calls still in flight).
 */
export function streamBatch(query, { onPlan, onCall, onDone, onError }) {
  const url = `/batch?${query}`;
  const source = new EventSource(url);
  let started = false;

  source.addEventListener("batch", (event) => {
    started = true;
    onPlan(JSON.parse(event.data));
  });
  source.addEventListener("call", (event) => onCall(JSON.parse(event.data)));
  source.addEventListener("done", (event) => {
    // Close before the server ends the stream: an EventSource whose stream
    // ends reconnects by itself, and that would run the whole batch again.
    source.close();
    onDone(JSON.parse(event.data));
  });
  source.addEventListener("error", async () => {
    source.close();
    if (started) {
      onError("the stream broke off before the batch finished");
      return;
    }
    // EventSource does not expose a refused request's body; ask once more to
    // read the JSON error. A refusal is checked before anything runs, so this is cheap.
    onError(await refusalDetail(url));
  });
  return () => source.close();
}

async function refusalDetail(url) {
  const abort = new AbortController();
  try {
    const response = await fetch(url, { headers: { Accept: "application/json" }, signal: abort.signal });
    if (response.ok) {
      abort.abort(); // it was accepted this time: do not run the batch twice
      return "the stream could not be opened";
    }
    const body = await response.json();
    return `the server refused it (${response.status}): ${body.detail}`;
  } catch {
    return "the server could not be reached";
  }
}
