// HeraldSource's reconnect rules, against real `herald serve` processes on a real Redis.
// tests/web/test_herald_js.py starts them and runs this file with, in the environment:
//   HERALDJS_URL          a Herald with auth on (HERALDJS_JWT_KEY) and HERALD_RETRY_MS=100
//   HERALDJS_LIMITED_URL  the same with HERALD_MAX_STREAMS=1
// A plain `node --test tests/js/` skips them.

import assert from "node:assert/strict";
import { createHmac, randomUUID } from "node:crypto";
import { createServer } from "node:net";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { HeraldSource } from "../../service/web/static/herald.js";

const { HERALDJS_URL: HERALD, HERALDJS_LIMITED_URL: LIMITED, HERALDJS_JWT_KEY } = process.env;
const skip = HERALD ? false : "needs the Heralds that tests/web/test_herald_js.py starts";

// Longer than any first retry may wait: the backoff's ceiling for a source that never opened
// a stream is twice the default retry (2 s).
const LONGER_THAN_A_RETRY_MS = 4500;
// setTimeout may fire a little before its time by the wall clock.
const TIMER_SLACK_MS = 50;

function token(grant, seconds = 60) {
  const part = (json) => Buffer.from(JSON.stringify(json)).toString("base64url");
  const claims = { herald: grant, exp: Math.floor(Date.now() / 1000) + seconds, jti: randomUUID() };
  const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  const signature = createHmac("sha256", HERALDJS_JWT_KEY).update(unsigned).digest("base64url");
  return `${unsigned}.${signature}`;
}

const bearer = (value) => ({ Authorization: `Bearer ${value}` });
const newTopic = () => `js.${randomUUID().slice(0, 8)}`;

async function publish(base, topic, data) {
  const answer = await fetch(`${base}/publish`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...bearer(token({ publish: ["*"] })) },
    body: JSON.stringify({ topic, data }),
  });
  const body = await answer.text();
  assert.equal(answer.status, 200, body);
  return { data, id: JSON.parse(body).id };
}

async function waitFor(condition, what, ms = 15_000) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail(`${what}: not within ${ms} ms`);
    await sleep(20);
  }
}

// A source closed when the test ends, even a failed one, so that Node can exit.
function open(t, url, init) {
  const source = new HeraldSource(url, init);
  t.after(() => source.close());
  return source;
}

// What a page would notice, through the handler attributes.
function watch(source) {
  const seen = { opens: 0, errors: [], messages: [] };
  source.onopen = () => {
    seen.opens += 1;
  };
  source.onerror = (event) => {
    seen.errors.push({ status: event.status, readyState: source.readyState });
  };
  source.onmessage = (event) => {
    seen.messages.push({ data: event.data, id: event.lastEventId });
  };
  return seen;
}

test("an ended stream resumes after its last id, headers asked again", { skip }, async (t) => {
  const topic = newTopic();
  const published = [];
  let calls = 0;
  const headers = async () => {
    calls += 1;
    if (calls === 2) {
      // Published after the first stream ended and before the second attempt: only a
      // Last-Event-ID brings them. The first stream had no event, only its opening `id:`.
      published.push(await publish(HERALD, topic, "b1"), await publish(HERALD, topic, "b2"));
    }
    // Herald ends the first stream when its 2-second token expires; the old token would
    // get a 401 now, so the second stream opens only with a token asked for again.
    return bearer(token({ subscribe: [topic] }, calls === 1 ? 2 : 60));
  };
  const source = open(t, `${HERALD}/events?topic=${topic}`, { headers });
  const seen = watch(source);
  await waitFor(() => seen.opens === 2, "a second stream after the first one ended");
  published.push(await publish(HERALD, topic, "c1"));
  await waitFor(() => seen.messages.length === 3, "three events");
  source.close();

  assert.deepEqual(seen.messages, published);
  assert.equal(source.lastEventId, published.at(-1).id);
  assert.equal(calls, 2);
  assert.deepEqual(seen.errors, [{ status: 0, readyState: HeraldSource.CONNECTING }]);
});

test("401, 403, 400 and a 200 that is not SSE close after one attempt", { skip }, async (t) => {
  const topic = newTopic();
  const refusals = {
    401: { url: `${HERALD}/events?topic=${topic}`, headers: {} },
    403: {
      url: `${HERALD}/events?topic=${topic}`,
      headers: bearer(token({ subscribe: ["other"] })),
    },
    400: {
      url: `${HERALD}/events?topic=${topic}`,
      headers: bearer(token({ subscribe: [topic] })),
      lastEventId: "not-a-position",
    },
    200: { url: `${HERALD}/healthz`, headers: {} },
  };
  const sources = Object.entries(refusals).map(([status, { url, headers, lastEventId }]) => {
    const attempt = { status: Number(status), calls: 0 };
    attempt.source = open(t, url, {
      headers: () => {
        attempt.calls += 1;
        return headers;
      },
      lastEventId,
    });
    attempt.seen = watch(attempt.source);
    return attempt;
  });
  await sleep(LONGER_THAN_A_RETRY_MS);

  for (const { status, calls, source, seen } of sources) {
    assert.equal(source.readyState, HeraldSource.CLOSED, `${status}`);
    assert.equal(calls, 1, `${status}: attempts`);
    assert.deepEqual(seen.errors, [{ status, readyState: HeraldSource.CLOSED }], `${status}`);
    assert.equal(seen.opens, 0, `${status}`);
  }
});

test("a 503 is retried after its Retry-After until a stream is free", { skip }, async (t) => {
  const topic = newTopic();
  const attempts = []; // when each attempt started
  let holder;
  t.after(() => holder?.abort());
  const headers = async () => {
    attempts.push(performance.now());
    if (attempts.length === 2) holder = await holdTheOnlyStream(topic);
    return bearer(token({ subscribe: [topic] }, attempts.length === 1 ? 2 : 60));
  };
  // The first stream teaches the source `retry: 100`, then ends with its token; by then
  // another client holds the one stream this Herald allows.
  const source = open(t, `${LIMITED}/events?topic=${topic}`, { headers });
  const seen = watch(source);
  await waitFor(() => seen.errors.length >= 3, "two refused attempts after the first stream");
  const probe = await fetch(`${LIMITED}/events?topic=${topic}`, {
    headers: bearer(token({ subscribe: [topic] })),
  });
  assert.equal(probe.status, 503);
  const retryAfterMs = Number(probe.headers.get("Retry-After")) * 1000;
  holder.abort();
  await waitFor(() => seen.opens === 2, "the source back in once the stream is free");
  const sent = await publish(LIMITED, topic, "in");
  await waitFor(() => seen.messages.length === 1, "an event on the new stream");
  source.close();

  assert.deepEqual(seen.messages, [sent]);
  const [ended, ...refused] = seen.errors;
  assert.deepEqual(ended, { status: 0, readyState: HeraldSource.CONNECTING });
  assert.ok(refused.length >= 2);
  for (const error of refused) {
    assert.deepEqual(error, { status: 503, readyState: HeraldSource.CONNECTING });
  }
  // Backing off from a 100 ms retry alone would come back far sooner than Retry-After.
  for (let i = 1; i < attempts.length - 1; i += 1) {
    const waited = attempts[i + 1] - attempts[i];
    assert.ok(waited >= retryAfterMs - TIMER_SLACK_MS, `attempt ${i + 2} came after ${waited} ms`);
  }
});

// Opens a stream on the limited Herald and keeps it until the controller aborts. The
// stream it replaces may take a moment to be let go, so a 503 is tried again.
async function holdTheOnlyStream(topic) {
  for (;;) {
    const controller = new AbortController();
    const answer = await fetch(`${LIMITED}/events?topic=${topic}`, {
      headers: bearer(token({ subscribe: [topic] })),
      signal: controller.signal,
    });
    if (answer.status === 200) {
      // Read, as a client does; an unread response would be collected, and its stream closed.
      answer.body.pipeTo(new WritableStream()).catch(() => {});
      return controller;
    }
    assert.equal(answer.status, 503);
    await answer.body.cancel();
    await sleep(20);
  }
}

test("a server that cannot be reached is retried, never given up", { skip }, async (t) => {
  const port = await freePort();
  const source = open(t, `http://127.0.0.1:${port}/events?topic=t`);
  const seen = watch(source);
  await waitFor(() => seen.errors.length === 2, "a second failed attempt");
  source.close();
  assert.deepEqual(seen.errors, Array(2).fill({ status: 0, readyState: HeraldSource.CONNECTING }));
});

function freePort() {
  return new Promise((resolve) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

test("an explicit lastEventId replays what came after it", { skip }, async (t) => {
  const topic = newTopic();
  const [first, ...rest] = [
    await publish(HERALD, topic, "1"),
    await publish(HERALD, topic, "2"),
    await publish(HERALD, topic, "3"),
  ];
  const source = open(t, `${HERALD}/events?topic=${topic}`, {
    headers: bearer(token({ subscribe: [topic] })),
    lastEventId: first.id,
  });
  const seen = watch(source);
  await waitFor(() => seen.messages.length === 2, "the two events after the given id");
  source.close();
  assert.deepEqual(seen.messages, rest);
});

test("close() in a listener: no later event, no error, no reconnect", { skip }, async (t) => {
  const topic = newTopic();
  const source = open(t, `${HERALD}/events?topic=${topic}`, {
    headers: bearer(token({ subscribe: [topic] })),
  });
  const seen = watch(source);
  source.addEventListener("message", () => source.close());
  await waitFor(() => seen.opens === 1, "the stream opens");
  const batch = await fetch(`${HERALD}/publish`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...bearer(token({ publish: ["*"] })) },
    body: JSON.stringify(["a", "b", "c"].map((data) => ({ topic, data }))),
  });
  assert.equal(batch.status, 200);
  await waitFor(() => seen.messages.length > 0, "the first event");
  await sleep(1000); // ten times the retry the stream asked for
  assert.deepEqual(seen.messages.map(({ data }) => data), ["a"]);
  assert.deepEqual(seen.errors, []);
  assert.equal(seen.opens, 1);
  assert.equal(source.readyState, HeraldSource.CLOSED);
});
