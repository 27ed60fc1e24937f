// Poison cannot stop persistence: input the database cannot store (NUL characters, over-long
// ids) is refused at the door with INVALID_REQUEST, while good events sent between the poison
// ones are acked and stored. Run by tests/poison.rs against a server with room "poison"
// (event "message", small history window), room "anything" (events: ["*"]) and API key
// "poison-key". PHASE=socket runs the socket part only; PHASE=all adds the HTTP API.
// The texts of every good event go back as `RESULT {"good": [...]}`; the Rust side then
// finds them all in the `messages` table.
import { test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { URL, connect, sleep } from "./helpers.mjs";

const ROOM = "poison";
const KEY = "poison-key";
const PHASE = process.env.PHASE ?? "all";
const NUL = "\u0000";
const result = (value) => console.log(`RESULT ${JSON.stringify(value)}`);

/** Texts of the good events, in the order sent; seqs acked for them. */
const good = [];
const seqs = [];

async function readyz() {
  const res = await fetch(`${URL}/readyz`);
  const body = await res.text();
  assert.equal(res.status, 200, `/readyz: ${res.status} ${body}`);
}

async function goodTrigger(c, label) {
  const text = `good ${good.length + 1} (${label})`;
  const r = await c.request("dialogue:trigger", { roomId: ROOM, event: "message", data: { text, username: "alice" } });
  assert.equal(r.ok, true, `${label}: ${JSON.stringify(r)}`);
  good.push(text);
  seqs.push(r.seq);
}

/** Expects INVALID_REQUEST on the ack and on dialogue:error, with a message matching `re`. */
async function poison(c, event, payload, re) {
  const ack = await c.expectError(event, payload, "INVALID_REQUEST");
  assert.match(ack.message, re);
  assert.ok(!ack.message.includes(NUL), `the message shows the value escaped: ${JSON.stringify(ack.message)}`);
  return ack;
}

const api = (path, body, method = "POST") =>
  fetch(`${URL}${path}`, {
    method,
    headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });

async function apiPoison(path, body, re, method = "POST") {
  const res = await api(path, body, method);
  const answer = await res.json();
  assert.equal(res.status, 400, `${path}: ${JSON.stringify(answer)}`);
  assert.equal(answer.code, "INVALID_REQUEST", JSON.stringify(answer));
  assert.match(answer.message, re);
  assert.ok(!answer.message.includes(NUL), JSON.stringify(answer.message));
}

async function apiGood(from) {
  const text = `good ${good.length + 1} (api from ${from})`;
  const res = await api(`/api/rooms/${ROOM}/events/message`, { data: { text, username: "api" }, from });
  const answer = await res.json();
  assert.equal(res.status, 201, JSON.stringify(answer));
  assert.equal(answer.from, from);
  good.push(text);
  seqs.push(answer.seq);
}

/** CONNECT with `auth`; resolves to the connect_error message (fails if it connects). */
function refusedConnect(auth) {
  const socket = io(URL, { transports: ["websocket"], auth, reconnection: false, forceNew: true });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => {
      socket.close();
      reject(new Error(`connected with ${JSON.stringify(auth).slice(0, 80)}`));
    });
    socket.once("connect_error", (e) => {
      socket.close();
      resolve(e.message);
    });
  });
}

test("poison over the socket is refused; good events between are acked", async () => {
  await readyz();
  const c = await connect("alice");
  assert.equal((await c.request("dialogue:join", { roomId: ROOM })).ok, true);
  assert.equal((await c.request("dialogue:join", { roomId: "anything" })).ok, true);
  await goodTrigger(c, "first");

  const trigger = (extra) => ({ roomId: ROOM, event: "message", data: { text: "x", username: "alice" }, ...extra });
  await poison(c, "dialogue:trigger", trigger({ data: { text: `a${NUL}b`, username: "alice" } }), /^data\/text contains a NUL character/);
  await goodTrigger(c, "after NUL in a data string");
  await poison(c, "dialogue:trigger", trigger({ data: { text: "x", username: "alice", [`k${NUL}`]: 1 } }), /^data: the object key "k\\u0000" contains a NUL character/);
  await goodTrigger(c, "after NUL in a data key");
  await poison(c, "dialogue:trigger", trigger({ data: { text: "x", username: "alice", deep: [1, { [`k${NUL}`]: 1 }] } }), /^data\/deep\/1: the object key/);
  await poison(c, "dialogue:trigger", trigger({ meta: { trace: [`t${NUL}`] } }), /^meta\/trace\/0 contains a NUL character/);
  await goodTrigger(c, "after NUL in meta");
  await poison(c, "dialogue:trigger", { roomId: "anything", event: `mess${NUL}age`, data: 1 }, /^event "mess\\u0000age" contains the control character U\+0000/);
  await poison(c, "dialogue:trigger", { roomId: "anything", event: "e".repeat(101), data: 1 }, /^event is 101 bytes/);
  await poison(c, "dialogue:trigger", { roomId: `poi${NUL}son`, event: "message", data: { text: "x", username: "a" } }, /^roomId "poi\\u0000son" contains the control character/);
  await goodTrigger(c, "after a bad event name and room id");
  await poison(c, "dialogue:join", { roomId: `x${NUL}` }, /^roomId /);
  await poison(c, "dialogue:leave", { roomId: "r".repeat(256) }, /^roomId is 256 bytes/);
  await poison(c, "dialogue:subscribe", { roomId: ROOM, eventName: `m${NUL}` }, /^eventName /);
  await poison(c, "dialogue:unsubscribe", { roomId: ` ${ROOM}`, eventName: "message" }, /whitespace/);
  await poison(c, "dialogue:subscribeAll", { roomId: "" }, /must not be empty/);
  await poison(c, "dialogue:getHistory", { roomId: ROOM, eventName: `message${NUL}` }, /^eventName /);
  await poison(c, "dialogue:deleteRoom", { roomId: `x${NUL}` }, /^roomId /);
  await poison(c, "dialogue:createRoom", { id: `x${NUL}`, name: "X" }, /^id "x\\u0000" contains the control character U\+0000/);
  await poison(c, "dialogue:createRoom", { id: "named", name: `N${NUL}` }, /^name "N\\u0000" contains a NUL character/);
  await poison(c, "dialogue:createRoom", { id: "described", name: "D", description: `${NUL}` }, /^description /);
  await c.expectNone("dialogue:roomCreated", () => true, 100);
  await readyz();

  // Six bytes `\u0000` in the frame that are not a NUL (an escaped backslash): stored as sent.
  const text = String.raw`C:\u0000 is a path, not a NUL`;
  const r = await c.request("dialogue:trigger", { roomId: ROOM, event: "message", data: { text, username: "alice" }, meta: { note: String.raw`\u0000` } });
  assert.equal(r.ok, true, JSON.stringify(r));
  good.push(text);
  seqs.push(r.seq);

  // A pipelined burst, poison in the middle: every ack comes, in order.
  const burst = [];
  for (let i = 0; i < 20; i++) {
    const data = { text: i % 5 === 2 ? `burst ${i}${NUL}` : `good (burst ${i})`, username: "alice" };
    burst.push({ good: i % 5 !== 2, text: data.text, ack: c.request("dialogue:trigger", { roomId: ROOM, event: "message", data }) });
  }
  for (const b of burst) {
    const ack = await b.ack;
    if (b.good) {
      assert.equal(ack.ok, true, JSON.stringify(ack));
      good.push(b.text);
      seqs.push(ack.seq);
    } else {
      assert.equal(ack.ok, false, JSON.stringify(ack));
      assert.equal(ack.code, "INVALID_REQUEST");
    }
  }

  // CONNECT identities the database cannot store.
  assert.match(await refusedConnect({ userId: "u".repeat(256) }), /auth\.userId is 256 bytes/);
  assert.match(await refusedConnect({ userId: `u${NUL}` }), /auth\.userId "u\\u0000" contains the control character U\+0000/);
  const max = await connect("u".repeat(255));
  max.close();

  // The connection stayed up through all of it.
  assert.equal(c.socket.connected, true);
  await goodTrigger(c, "last over the socket");
  await readyz();
  c.close();
});

test("poison over the HTTP API is refused with 400; good events between are stored", { skip: PHASE !== "all" }, async () => {
  const path = `/api/rooms/${ROOM}/events/message`;
  await apiGood("api-bot");
  await apiPoison(path, { data: { text: `a${NUL}`, username: "api" } }, /^data\/text contains a NUL character/);
  await apiGood("api-bot");
  await apiPoison(path, { data: { text: "x", username: "api" }, from: "f".repeat(256) }, /^from is 256 bytes/);
  await apiGood("f".repeat(255));
  await apiPoison(path, { data: { text: "x", username: "api" }, from: `bo${NUL}t` }, /^from "bo\\u0000t" contains the control character U\+0000/);
  await apiPoison(path, { data: { text: "x", username: "api" }, meta: { [`m${NUL}`]: true } }, /^meta: the object key/);
  await apiPoison(`/api/rooms/poi%00son/events/message`, { data: { text: "x", username: "api" } }, /^roomId /);
  await apiPoison(`/api/rooms/anything/events/m%00`, { data: 1 }, /^event /);
  await apiPoison(`/api/rooms/${ROOM}/history/m%00`, undefined, /^event /, "GET");
  await apiPoison(`/api/rooms/x%00`, undefined, /^roomId /, "DELETE");
  await apiPoison("/api/rooms", { id: `x${NUL}`, name: "X" }, /^id "x\\u0000"/);
  await apiPoison("/api/rooms", { id: "fine", name: `X${NUL}` }, /^name /);
  await apiPoison("/api/rooms", { id: "fine", name: "X", events: [`m${NUL}`] }, /^events /);
  await readyz();
  await apiGood("api-bot");
  await readyz();
});

test("report", async () => {
  // Acked seqs count up without a gap: no refused event took a number.
  const sorted = [...seqs].sort((a, b) => a - b);
  assert.deepEqual(sorted, Array.from({ length: sorted.length }, (_, i) => i + 1));
  await sleep(0);
  result({ good });
});
