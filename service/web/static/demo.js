// The demo page's script (a module, so strict). Whatever comes from the URL or from an
// event is shown as text (textContent, elements built with createElement): never parsed
// as HTML, never put into a CSS selector. The page's Content-Security-Policy backs this up.

import { HeraldSource } from "/herald.js";

// Topics come from the query string, with the defaults of `herald serve --demo`:
// /?symbols=AAPL,MSFT&log=demo&chat=demo
const params = new URLSearchParams(location.search);
const symbols = (params.get("symbols") || "AAPL,MSFT,NVDA,TSLA,AMZN").split(",").map((s) => s.trim().toUpperCase()).filter(Boolean);
const logTopic = "logs." + (params.get("log") || "demo");
const chatTopic = "chat." + (params.get("chat") || "demo");
// Herald refuses a subscription whole when one name is not a topic (TOPIC_PATTERN in
// service/models.py), so such names are left out and the others still followed.
const TOPIC = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
const wanted = [...symbols.map((s) => "stocks." + s), logTopic, chatTopic, "presence." + chatTopic];
const topics = wanted.filter((t) => TOPIC.test(t));
const skipped = wanted.filter((t) => !TOPIC.test(t));

// What the page received, for anyone (and the browser tests) to inspect.
const herald = window.herald = { state: "connecting", lastEventId: "", received: [], answers: [] };
const MAX_RECEIVED = 5000, MAX_LOG_LINES = 300, MAX_ANSWERS = 4;

const $ = (id) => document.getElementById(id);
$("ticker-topics").textContent = "stocks.*";
$("chat-topic").textContent = chatTopic;
$("logs-topic").textContent = logTopic;

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

const rows = new Map();
const tbody = $("ticker").tBodies[0];
for (const symbol of symbols) {
  const tr = document.createElement("tr");
  tr.dataset.symbol = symbol;
  const waiting = cell("waiting for a tick…", "waiting");
  waiting.colSpan = 5;
  tr.append(cell(symbol, "symbol"), waiting);
  tbody.append(tr);
  rows.set(symbol, tr);
}

const money = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const signed = (n) => (n > 0 ? "+" : "") + money.format(n);

function onTick(tick) {
  const tr = rows.get(tick.symbol);
  if (!tr) return;
  const previous = Number(tr.dataset.price || tick.price);
  tr.dataset.price = tick.price;
  tr.replaceChildren(
    cell(tick.symbol, "symbol"),
    cell(money.format(tick.price), "price"),
    cell(signed(tick.change), "change"),
    cell(signed(tick.change_pct) + "%", "pct"),
    cell(tick.volume.toLocaleString("en-US")),
    cell(new Date(tick.ts).toLocaleTimeString()),
  );
  tr.className = tick.change >= 0 ? "up" : "down";
  const flash = tick.price >= previous ? "flash-up" : "flash-down";
  tr.classList.remove("flash-up", "flash-down");
  void tr.offsetWidth; // restart the animation
  tr.classList.add(flash);
}

const chat = $("chat");
let bubble = null;

function onToken(token) {
  if (!bubble || bubble.dataset.answer !== token.answer) {
    chat.querySelector(".empty")?.remove();
    bubble = document.createElement("div");
    bubble.className = "bubble typing";
    bubble.dataset.answer = token.answer;
    // Joined in the middle of an answer: its start is not shown, so say so.
    bubble.dataset.complete = "false";
    bubble.dataset.fromStart = String(token.index === 0);
    bubble.append(document.createTextNode(""));
    chat.append(bubble);
    while (chat.querySelectorAll(".bubble").length > MAX_ANSWERS) chat.querySelector(".bubble").remove();
  }
  bubble.firstChild.appendData(token.text);
  chat.scrollTop = chat.scrollHeight;
}

function onDone(done) {
  const b = finish(done.answer, `${done.tokens} tokens`);
  if (b) herald.answers.push({ answer: done.answer, text: b.firstChild.data, fromStart: b.dataset.fromStart === "true" });
}

// A relayed answer the upstream model broke off (`herald worker typewriter` in relay mode).
function onFailed(failed) {
  finish(failed.answer, `stopped after ${failed.tokens} tokens: ${failed.detail}`);
}

function finish(answer, note) {
  // Compared, not written into a selector: an answer id is data like any other.
  const b = [...chat.querySelectorAll(".bubble")].find((el) => el.dataset.answer === String(answer));
  if (!b) return null;
  b.classList.remove("typing");
  b.dataset.complete = "true";
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = note + (b.dataset.fromStart === "true" ? "" : " · joined mid-answer");
  b.append(meta);
  return b;
}

const logs = $("logs");
function logLine(text, className) {
  const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
  const div = document.createElement("div");
  div.textContent = text;
  if (className) div.className = className;
  logs.append(div);
  while (logs.childElementCount > MAX_LOG_LINES) logs.firstChild.remove();
  if (atBottom) logs.scrollTop = logs.scrollHeight;
}

if (skipped.length) logLine(`Herald: not a topic name, not followed: ${skipped.join(", ")}.`, "note");

function onLog(entry) {
  const status = / (\d)\d\d \d+ /.exec(entry.line);
  logLine(entry.line, status && "s" + status[1]);
}

function onOnline(online) {
  if (online.topic === chatTopic) {
    $("online").textContent = `${online.count} online`;
    herald.online = online.count;
  }
}

function setState(state, detail) {
  herald.state = state;
  const pill = $("connection");
  pill.className = "pill " + state;
  pill.textContent = detail || state;
}

const handlers = { tick: onTick, token: onToken, done: onDone, failed: onFailed, log: onLog, online: onOnline };
// With auth on, open the page as /#token=<a JWT that may subscribe>: browsers never send
// the fragment, and HeraldSource puts the token in the Authorization header of each
// connection, never in a URL.
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const source = new HeraldSource("/events?" + topics.map((t) => "topic=" + encodeURIComponent(t)).join("&"), {
  headers: token ? { Authorization: `Bearer ${token}` } : {},
});
source.onopen = () => setState("live");
source.onerror = (event) => {
  if (source.readyState === HeraldSource.CLOSED) setState("closed", event.status ? `closed: ${event.status}` : "closed");
  else setState("reconnecting", herald.lastEventId ? `reconnecting from ${herald.lastEventId.slice(0, 24)}…` : "reconnecting");
};
for (const [type, handle] of Object.entries(handlers)) {
  source.addEventListener(type, (event) => {
    herald.lastEventId = event.lastEventId;
    const data = JSON.parse(event.data);
    herald.received.push({ type, data });
    if (herald.received.length > MAX_RECEIVED) herald.received.shift();
    handle(data);
  });
}
source.addEventListener("herald.trimmed", (event) => {
  logLine(`Herald: history was trimmed while this page was away (${event.data}); some events were missed.`, "note");
});
