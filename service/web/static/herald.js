// Herald's browser client: EventSource's shape over fetch, so that a page can send an
// Authorization header and pick a streamed answer up again after a drop or a reload.
// One ES module, no dependencies, no build step; it runs as is in browsers and Node 18+.
//
//   import { HeraldSource } from "/herald.js";
//   const src = new HeraldSource("/events?topic=chat.42", {
//     headers: async () => ({ Authorization: `Bearer ${await getToken()}` }),
//     resumeKey: "chat.42",
//   });
//   src.addEventListener("token", (e) => output.append(e.data));
//   src.addEventListener("done", () => src.close());
//
// Retry rules. A network error or an ended stream fires `error` (readyState 0) and
// reconnects after the stream's `retry`, sending `Last-Event-ID`. While attempts keep
// failing, the wait doubles at each one, with jitter, up to 30 s. A 429 or 5xx answer is
// retried the same way, waiting at least its `Retry-After`. Any other answer that is not
// a 200 event stream (401, 403, 400, a 200 HTML page…) fires `error` and closes
// (readyState 2): it would fail the same way again.

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 2;

const DEFAULT_RETRY_MS = 2000; // Herald's default HERALD_RETRY_MS, until the stream sends one
const MIN_BACKOFF_MS = 100; // so that a `retry: 0` does not hammer a failing server
const MAX_BACKOFF_MS = 30_000;
const MAX_WAIT_MS = 300_000; // whatever retry or Retry-After says (setTimeout overflows past 2^31)

export class HeraldSource extends EventTarget {
  static CONNECTING = CONNECTING;
  static OPEN = OPEN;
  static CLOSED = CLOSED;

  #url;
  #headers;
  #credentials;
  #storageKey;
  #lastEventId;
  #readyState = CONNECTING;
  #retryMs = DEFAULT_RETRY_MS;
  #failures = 0; // attempts in a row that opened no stream
  #abort = new AbortController(); // the current attempt's, so that close() cancels it
  #handlers = {};

  constructor(url, { headers = {}, lastEventId, resumeKey, withCredentials = false } = {}) {
    super();
    this.#url = new URL(url, globalThis.document?.baseURI ?? globalThis.location?.href).href;
    this.#headers = headers;
    this.#credentials = withCredentials ? "include" : "same-origin";
    this.#storageKey = resumeKey == null ? null : `herald:${resumeKey}`;
    // An explicit lastEventId says what this page already shows: it wins over the stored one.
    this.#lastEventId = lastEventId ?? this.#stored() ?? "";
    // After the constructor returns, like EventSource: listeners can still be added, and a
    // headers function may refer to the source.
    queueMicrotask(() => this.#run());
  }

  get url() {
    return this.#url;
  }

  get readyState() {
    return this.#readyState;
  }

  get lastEventId() {
    return this.#lastEventId;
  }

  get withCredentials() {
    return this.#credentials === "include";
  }

  get onopen() {
    return this.#handlers.open ?? null;
  }

  set onopen(handler) {
    this.#setHandler("open", handler);
  }

  get onmessage() {
    return this.#handlers.message ?? null;
  }

  set onmessage(handler) {
    this.#setHandler("message", handler);
  }

  get onerror() {
    return this.#handlers.error ?? null;
  }

  set onerror(handler) {
    this.#setHandler("error", handler);
  }

  close() {
    this.#readyState = CLOSED;
    this.#abort.abort();
  }

  async #run() {
    while (this.#readyState !== CLOSED) {
      this.#abort = new AbortController();
      const { signal } = this.#abort;
      // Network errors, cut streams and a headers function that throws all end up here.
      const { status = 0, retryAfterMs = 0 } = await this.#connect(signal).catch(() => ({}));
      if (this.#readyState === CLOSED) return;
      this.#readyState = CONNECTING;
      this.#fireError(status);
      await sleep(this.#delay(retryAfterMs), signal);
    }
  }

  // One connection, until its stream ends. Resolves with what the next attempt must know;
  // a refusal closes the source.
  async #connect(signal) {
    this.#failures += 1;
    const given = typeof this.#headers === "function" ? await this.#headers() : this.#headers;
    const headers = new Headers(given);
    headers.set("Accept", "text/event-stream");
    if (this.#lastEventId) headers.set("Last-Event-ID", this.#lastEventId);
    const response = await fetch(this.#url, {
      headers,
      credentials: this.#credentials,
      cache: "no-store",
      signal,
    });
    const { status } = response;
    if (status === 200 && isEventStream(response)) return this.#read(response, signal);
    // The answer is not read; a failure while dropping it changes nothing.
    response.body?.cancel().catch(() => {});
    if (status === 429 || status >= 500) {
      return { status, retryAfterMs: retryAfterMs(response.headers.get("Retry-After")) };
    }
    this.#readyState = CLOSED;
    this.#fireError(status);
    return {};
  }

  async #read(response, signal) {
    this.#failures = 0;
    this.#readyState = OPEN;
    this.dispatchEvent(new Event("open"));
    const origin = new URL(response.url || this.#url).origin;
    const parser = new SSEParser(this.#lastEventId);
    const reader = response.body.getReader();
    while (!signal.aborted) {
      const { done, value } = await reader.read();
      if (done) break;
      for (const { type, data, lastEventId } of parser.feed(value)) {
        // A listener may have closed the source: nothing more reaches the page then.
        if (signal.aborted) return {};
        this.#setLastEventId(lastEventId);
        this.dispatchEvent(new MessageEvent(type, { data, lastEventId, origin }));
      }
      if (signal.aborted) break;
      // An `id:` block without data moves the position too: Herald opens a stream with one.
      this.#setLastEventId(parser.lastEventId);
      this.#retryMs = parser.retry ?? this.#retryMs;
    }
    return {};
  }

  // The stream's retry; while attempts keep failing, a doubling wait with jitter, so that
  // the clients a failure hit together do not come back together.
  #delay(retryAfterMs) {
    let delay = this.#retryMs;
    if (this.#failures > 0) {
      const base = Math.max(delay, MIN_BACKOFF_MS);
      const ceiling = Math.min(base * 2 ** this.#failures, MAX_BACKOFF_MS);
      delay = Math.max(delay, ceiling / 2 + (Math.random() * ceiling) / 2);
    }
    return Math.min(Math.max(delay, retryAfterMs), MAX_WAIT_MS);
  }

  #fireError(status) {
    // EventSource's error event says nothing; `status` tells a refusal (401…) from a drop (0).
    this.dispatchEvent(Object.assign(new Event("error"), { status }));
  }

  #setHandler(type, handler) {
    // Like EventSource's event handler attributes: one listener, added when first set,
    // calls whichever handler is current.
    if (!(type in this.#handlers)) {
      this.addEventListener(type, (event) => this.#handlers[type]?.call(this, event));
    }
    this.#handlers[type] = typeof handler === "function" ? handler : null;
  }

  #setLastEventId(id) {
    if (id === this.#lastEventId) return;
    this.#lastEventId = id;
    if (this.#storageKey === null) return;
    try {
      storage()?.setItem(this.#storageKey, id);
    } catch {
      // A full storage: this source still resumes from memory, only a reload starts over.
    }
  }

  #stored() {
    return this.#storageKey === null ? null : (storage()?.getItem(this.#storageKey) ?? null);
  }
}

// EventSource's instance constants too: `source.readyState === source.CLOSED`.
for (const [name, value] of Object.entries({ CONNECTING, OPEN, CLOSED })) {
  Object.defineProperty(HeraldSource.prototype, name, { value, enumerable: true });
}

// The WHATWG HTML "event stream interpretation", fed the bytes of one connection as they
// arrive. `lastEventId` is the id the source holds after the blocks parsed so far (an
// `id:` block without data moves it too); `retry` the last valid `retry:` field, or null.
export class SSEParser {
  #decoder = new TextDecoder(); // UTF-8; drops one BOM at the start, U+FFFD for bad bytes
  #line = ""; // the current line, not ended yet
  #afterCR = false; // the last chunk ended in CR: an LF opening the next one belongs to it
  #data = "";
  #type = "";
  #idBuffer;

  constructor(lastEventId = "") {
    // Browsers carry the id over into a reconnection's parser, so a block without `id:`
    // keeps it rather than resetting it to "".
    this.#idBuffer = lastEventId;
    this.lastEventId = lastEventId;
    this.retry = null;
  }

  // The events that the bytes complete: [{type, data, lastEventId}].
  feed(bytes) {
    let text = this.#decoder.decode(bytes, { stream: true });
    if (text === "") return [];
    if (this.#afterCR && text.startsWith("\n")) text = text.slice(1);
    this.#afterCR = text.endsWith("\r");
    const events = [];
    const lineEnd = /\r\n|\r|\n/g;
    let start = 0;
    for (let end = lineEnd.exec(text); end !== null; end = lineEnd.exec(text)) {
      this.#processLine(this.#line + text.slice(start, end.index), events);
      this.#line = "";
      start = lineEnd.lastIndex;
    }
    this.#line += text.slice(start);
    return events;
  }

  #processLine(line, events) {
    if (line === "") {
      this.#dispatch(events);
      return;
    }
    if (line.startsWith(":")) return; // a comment: Herald's heartbeats
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.#type = value;
    else if (field === "data") this.#data += `${value}\n`;
    else if (field === "id" && !value.includes("\0")) this.#idBuffer = value;
    else if (field === "retry" && /^[0-9]+$/.test(value)) this.retry = Number(value);
  }

  #dispatch(events) {
    this.lastEventId = this.#idBuffer;
    const data = this.#data;
    const type = this.#type || "message";
    this.#data = "";
    this.#type = "";
    if (data === "") return;
    events.push({ type, data: data.slice(0, -1), lastEventId: this.lastEventId });
  }
}

function isEventStream(response) {
  const type = response.headers.get("Content-Type") ?? "";
  return type.split(";")[0].trim().toLowerCase() === "text/event-stream";
}

// Retry-After in milliseconds: a number of seconds or an HTTP date; 0 when absent or neither.
function retryAfterMs(value) {
  if (value === null) return 0;
  if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? 0 : Math.max(at - Date.now(), 0);
}

// sessionStorage where there is one: Node has none, and where a page may not store
// (a sandboxed frame, some private modes) reading the property throws.
function storage() {
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null;
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        resolve();
      },
      { once: true },
    );
  });
}
