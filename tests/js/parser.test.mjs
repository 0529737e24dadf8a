// herald.js's SSEParser: the WHATWG event stream interpretation, whatever the chunking.
// Run: node --test tests/js/

import assert from "node:assert/strict";
import { test } from "node:test";

import { SSEParser } from "../../service/web/static/herald.js";

const encoder = new TextEncoder();

// Everything a stream's bytes, cut into `chunks`, dispatch; and the parser at the end.
function parse(chunks, lastEventId) {
  const parser = new SSEParser(lastEventId);
  const events = chunks.flatMap((chunk) => parser.feed(chunk));
  return { events, lastEventId: parser.lastEventId, retry: parser.retry };
}

// The same stream cut at every byte, and into single bytes, parses like the whole.
function assertAnyChunking(text, expected) {
  const bytes = encoder.encode(text);
  assert.deepEqual(parse([bytes]), expected, "in one chunk");
  for (let cut = 1; cut < bytes.length; cut += 1) {
    const halves = [bytes.subarray(0, cut), bytes.subarray(cut)];
    assert.deepEqual(parse(halves), expected, `cut after byte ${cut}`);
  }
  const single = Array.from(bytes, (byte) => Uint8Array.of(byte));
  assert.deepEqual(parse(single), expected, "byte by byte");
}

const event = (data, lastEventId = "", type = "message") => ({ type, data, lastEventId });

test("the stream Herald opens with: retry, an id-only block, events, a heartbeat", () => {
  const stream =
    "retry: 2000\n\nid: 1-0\n\nid: 2-0\nevent: token\ndata: Hel\n\n: heartbeat\n\n" +
    "id: 3-0\nevent: token\ndata: lo\n\n";
  assertAnyChunking(stream, {
    events: [event("Hel", "2-0", "token"), event("lo", "3-0", "token")],
    lastEventId: "3-0",
    retry: 2000,
  });
});

test("an id-only block sets the last event id and dispatches nothing", () => {
  assertAnyChunking("id: 5-0\n\n", { events: [], lastEventId: "5-0", retry: null });
});

test("CRLF, CR and LF all end lines, mixed in one stream", () => {
  const stream = "data: a\r\ndata: b\rdata: c\n\r\nid: 9\revent: e\r\ndata: d\r\r";
  assertAnyChunking(stream, {
    events: [event("a\nb\nc"), event("d", "9", "e")],
    lastEventId: "9",
    retry: null,
  });
});

test("a CR ending one chunk and an LF starting the next are one line end", () => {
  const chunks = ["data: x\r", "\ndata: y\r", "\n\r", "\n"].map((text) => encoder.encode(text));
  assert.deepEqual(parse(chunks).events, [event("x\ny")]);
});

test("several data lines are joined with LF; an empty data line counts", () => {
  assertAnyChunking("data: one\ndata:\ndata:  two\ndata\n\ndata:\n\n", {
    events: [event("one\n\n two\n"), event("")],
    lastEventId: "",
    retry: null,
  });
});

test("one BOM at the start is dropped, a second one is not", () => {
  // A BOM that is not first is part of the field name, so the line is an unknown field.
  assertAnyChunking("\ufeff\ufeffdata: x\n\ndata: y\n\n", {
    events: [event("y")],
    lastEventId: "",
    retry: null,
  });
  assertAnyChunking("\ufeffdata: x\n\n", { events: [event("x")], lastEventId: "", retry: null });
});

test("comments and unknown fields are ignored", () => {
  assertAnyChunking(": hello\n:\nfoo: bar\ndata: x\n: between\n\n", {
    events: [event("x")],
    lastEventId: "",
    retry: null,
  });
});

test("an id containing NUL is ignored; an empty id clears the last event id", () => {
  assertAnyChunking("id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\nid\ndata: c\n\n", {
    events: [event("a", "1"), event("b", "1"), event("c", "")],
    lastEventId: "",
    retry: null,
  });
});

test("retry is taken only when it is all ASCII digits", () => {
  const stream = "retry: 1500\n\nretry: 12a\nretry: -1\nretry: 1.5\nretry:  7\nretry\n\n";
  assertAnyChunking(stream, { events: [], lastEventId: "", retry: 1500 });
  assertAnyChunking("retry: 0\n", { events: [], lastEventId: "", retry: 0 });
});

test("the event type applies to one event only, and defaults to message", () => {
  assertAnyChunking("event: tick\ndata: 1\n\ndata: 2\n\nevent: only-type\n\ndata: 3\n\n", {
    events: [event("1", "", "tick"), event("2"), event("3")],
    lastEventId: "",
    retry: null,
  });
});

test("a field without a colon has an empty value; only one leading space is dropped", () => {
  assertAnyChunking("event\ndata:no space\ndata:   three\n\n", {
    events: [event("no space\n  three")],
    lastEventId: "",
    retry: null,
  });
});

test("multi-byte UTF-8 cut anywhere arrives whole; bad bytes become U+FFFD", () => {
  assertAnyChunking("data: héllo — 😀 ok\n\n", {
    events: [event("héllo — 😀 ok")],
    lastEventId: "",
    retry: null,
  });
  const bad = Uint8Array.of(...encoder.encode("data: a"), 0xff, ...encoder.encode("b\n\n"));
  assert.deepEqual(parse([bad]).events, [event("a\ufffdb")]);
});

test("an event not ended by a blank line is not dispatched", () => {
  assertAnyChunking("data: done\n\nid: 7\ndata: cut", {
    events: [event("done")],
    lastEventId: "",
    retry: null,
  });
});

test("a reconnection's parser keeps the id it starts from until a block sets another", () => {
  const { events, lastEventId } = parse([encoder.encode("retry: 10\n\ndata: x\n\n")], "4-0");
  assert.deepEqual(events, [event("x", "4-0")]);
  assert.equal(lastEventId, "4-0");
});
