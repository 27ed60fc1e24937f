// The abuse suite (issue 11, hardening): one test per attack, run by tests/abuse.rs, which
// starts one server per configuration and selects the tests of that configuration with PHASE
// (the part of a test's name before the colon).
//
// Every attack ends the same way (see `survived`): the attacker got an error or was
// disconnected; a bystander (a speaker and a listener in a room of their own, or in the
// attacked room) kept receiving live events during the attack and receives one after it;
// GET /readyz answers 200; the server's RSS (/proc/SERVER_PID/status VmRSS) is under RSS_BOUND,
// which tests/abuse.rs computes from the configuration with the README's formula.
//
// The configuration key each attack is bounded by is named at the top of its test.
import { test } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import { io } from "socket.io-client";
import { URL, Client, connect, rawSocket, eventually, sleep } from "./helpers.mjs";

const PHASE = process.env.PHASE;
const phase = (name, fn) =>
  test(name, { skip: PHASE !== name.split(":")[0], timeout: 120_000 }, async (t) => {
    await fn(t);
    // tests/abuse.rs counts these: a phase whose tests were all skipped cannot pass.
    console.log(`RESULT ${JSON.stringify({ ran: name, rss: rss() })}`);
  });

const PID = Number(process.env.SERVER_PID);
const RSS_BOUND = Number(process.env.RSS_BOUND);
const PORT = Number(new globalThis.URL(URL).port);
const API_KEY = "abuse-key";
const MiB = 1024 * 1024;

/** The server's resident set size, in bytes. */
function rss() {
  const status = fs.readFileSync(`/proc/${PID}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)[1]) * 1024;
}
const mib = (n) => `${(n / MiB).toFixed(1)} MiB`;

function assertRss(what) {
  const now = rss();
  assert.ok(now < RSS_BOUND, `${what}: RSS ${mib(now)} is over the bound ${mib(RSS_BOUND)} computed from the configuration`);
  return now;
}

async function assertReady(what) {
  const res = await fetch(`${URL}/readyz`);
  assert.equal(res.status, 200, `${what}: /readyz answered ${res.status} ${await res.text()}`);
}

/** Emits with an ack and a generous timeout (big payloads, a busy debug build). */
const ask = (client, event, payload, ms = 30_000) => client.socket.timeout(ms).emitWithAck(event, payload);

async function join(client, roomId) {
  const joined = await ask(client, "dialogue:join", { roomId });
  assert.equal(joined.ok, true, `join ${roomId}: ${JSON.stringify(joined)}`);
}

/** Connects, or resolves `{ error }` when the server refuses (or does not answer in 5 s; the
 * socket is closed then). */
function tryConnect(userId) {
  const socket = io(URL, { transports: ["websocket"], auth: { userId }, reconnection: false, forceNew: true });
  const client = new Client(socket);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      socket.close();
      resolve({ error: "no answer within 5 s" });
    }, 5000);
    socket.once("connect", () => {
      clearTimeout(timer);
      resolve({ client });
    });
    socket.once("connect_error", (e) => {
      clearTimeout(timer);
      socket.close();
      resolve({ error: e.message });
    });
  });
}

/**
 * A bystander: a speaker and a listener joined to `room`. `check()` triggers one `event` and
 * waits until the listener received it. `start()` does that every 200 ms in the background
 * while the attack runs; `stop()` ends it and returns how many arrived (and throws the first
 * failure).
 */
async function bystander({ room = "watch", event = "chat", prefix = "bystander", connectAs = connect } = {}) {
  const speaker = await connectAs(`${prefix}-speaker`);
  const listener = await connectAs(`${prefix}-listener`);
  await join(speaker, room);
  await join(listener, room);
  let n = 0;
  const check = async () => {
    const text = `${prefix}-live-${++n}`;
    const ack = await ask(speaker, "dialogue:trigger", { roomId: room, event, data: { text } }, 10_000);
    assert.equal(ack.ok, true, `bystander trigger: ${JSON.stringify(ack)}`);
    await listener.waitFor("dialogue:event", (e) => e.roomId === room && e.data?.text === text, 10_000);
  };
  let running = false;
  let loop = null;
  let received = 0;
  return {
    speaker,
    listener,
    check,
    start() {
      running = true;
      loop = (async () => {
        while (running) {
          await check();
          received++;
          await sleep(200);
        }
      })();
      loop.catch(() => {}); // reported by stop()
    },
    async stop() {
      running = false;
      await loop;
      return received;
    },
    close() {
      speaker.close();
      listener.close();
    },
  };
}

/** How every attack ends: live events reached the bystander during the attack and after it,
 * /readyz is 200 and the RSS is under the configured bound. */
async function survived(by, what) {
  const during = await by.stop();
  assert.ok(during >= 1, `${what}: the bystander received nothing during the attack`);
  await by.check();
  await assertReady(what);
  assertRss(what);
  by.close();
}

/** A room's member count, as dialogue:listRooms reports it. */
async function roomSize(client, roomId) {
  const list = await ask(client, "dialogue:listRooms", undefined, 10_000);
  assert.equal(list.ok, true, JSON.stringify(list));
  return list.rooms.find((r) => r.id === roomId)?.size;
}

/** A raw Engine.IO WebSocket through the Socket.IO CONNECT; `ask(id, text)` sends
 * `42<id><text>` and returns the ack's first argument. */
async function rawClient(userId) {
  const raw = rawSocket();
  await raw.opened;
  await eventually(() => raw.frames.some((f) => f.startsWith("0{")), 5000, "the open packet");
  raw.ws.send(`40${JSON.stringify({ userId })}`);
  await eventually(() => raw.frames.some((f) => f.startsWith("40{")), 5000, "the CONNECT answer");
  raw.ask = async (id, text) => {
    raw.ws.send(`42${id}${text}`);
    let answer;
    await eventually(() => (answer = raw.frames.find((f) => f.startsWith(`43${id}[`))), 10_000, `ack ${id}`);
    return JSON.parse(answer.slice(`43${id}`.length))[0];
  };
  return raw;
}

// --------------------------------------------------------------------------- limits
// Configuration keys main has today (tests/abuse.rs LIMITS): limits.maxRoomDescriptionBytes
// (default 1000), maxRoomNameBytes (default 100), roomsPerMinute 5, maxRuntimeRooms 8,
// maxEventTypesPerRoom 20; the API key "abuse-key"; rooms `watch` [chat, note] and `star`
// ["*"] with access rules refusing the events forbidden-1 and forbidden-2.

const ROOMS_PER_MINUTE = 5;
const MAX_RUNTIME_ROOMS = 8;
const MAX_EVENT_TYPES = 20;

phase("limits: room creation flood (900 KB descriptions, a rate per user, a global cap)", async () => {
  const by = await bystander({ prefix: "rooms" });
  by.start();
  const watcher = by.listener; // dialogue:roomCreated goes to every client
  const create = (c, id, extra = {}) => ask(c, "dialogue:createRoom", { id, name: `Room ${id}`, ...extra });
  const a = await connect("room-flooder");

  // 20 rooms with 900 KB descriptions, pipelined: refused at the door, nothing announced.
  const huge = "d".repeat(900_000);
  const refused = await Promise.all(Array.from({ length: 20 }, (_, i) => create(a, `huge-${i}`, { description: huge })));
  for (const r of refused) {
    assert.deepEqual([r.ok, r.code], [false, "INVALID_REQUEST"], JSON.stringify(r).slice(0, 300));
    assert.match(r.message, /maxRoomDescriptionBytes/);
  }
  const bigName = await create(a, "huge-name", { name: "n".repeat(900_000) });
  assert.deepEqual([bigName.ok, bigName.code], [false, "INVALID_REQUEST"]);
  assert.match(bigName.message, /maxRoomNameBytes/);
  await watcher.expectNone("dialogue:roomCreated", () => true, 300);

  // Refusals used none of the per-user budget: 5 rooms a minute, then RATE_LIMITED.
  for (let i = 0; i < ROOMS_PER_MINUTE; i++) {
    const r = await create(a, `a-${i}`);
    assert.equal(r.ok, true, JSON.stringify(r));
  }
  const over = await create(a, "a-over");
  assert.deepEqual([over.ok, over.code], [false, "RATE_LIMITED"]);
  assert.match(over.message, /roomsPerMinute/);

  // Fresh user ids (open mode: anyone may claim one) reach the global cap of 8, then every
  // one of them is refused.
  const b = await connect("room-flooder-2");
  for (let i = 0; i < MAX_RUNTIME_ROOMS - ROOMS_PER_MINUTE; i++) {
    assert.equal((await create(b, `b-${i}`)).ok, true);
  }
  for (let u = 0; u < 20; u++) {
    const sybil = await connect(`sybil-${u}`);
    const r = await create(sybil, `s-${u}`);
    assert.deepEqual([r.ok, r.code], [false, "RATE_LIMITED"], JSON.stringify(r));
    assert.match(r.message, /maxRuntimeRooms/);
    sybil.close();
  }

  // Bystanders were told of exactly the 8 small rooms.
  await eventually(() => watcher.all("dialogue:roomCreated").length >= MAX_RUNTIME_ROOMS, 5000, "8 announcements");
  await sleep(200);
  const announced = watcher.all("dialogue:roomCreated");
  assert.equal(announced.length, MAX_RUNTIME_ROOMS, JSON.stringify(announced.map((r) => r.id)));
  assert.ok(announced.every((r) => JSON.stringify(r).length < 1000), "announcements are small");

  // listRooms stays small and works.
  const list = await ask(watcher, "dialogue:listRooms", undefined);
  assert.equal(list.ok, true);
  assert.equal(list.rooms.filter((r) => r.createdBy).length, MAX_RUNTIME_ROOMS);
  assert.ok(JSON.stringify(list).length < 10_000, `listRooms is ${JSON.stringify(list).length} bytes`);
  a.close();
  b.close();
  await survived(by, "room flood");
});

phase('limits: junk event names in a "*" room (refused ones take no place; a cap for new names)', async () => {
  // The bystander is in the attacked room; its event name `known` takes a place first.
  const by = await bystander({ room: "star", event: "known", prefix: "star" });
  await by.check();
  by.start();
  const a = await connect("namer");
  await join(a, "star");
  const send = (event, data = {}) => ask(a, "dialogue:trigger", { roomId: "star", event, data });

  // Refused at the door (src/protocol/storable.rs): over 100 bytes, control characters,
  // leading or trailing whitespace, empty.
  const atTheDoor = ["x".repeat(101), "y".repeat(100_000), "bad\u0001name", "tab\tname", "nul\u0000name", "new\nline", " lead", "trail ", ""];
  for (let i = 0; i < 100; i++) atTheDoor.push(`${i}-`.padEnd(101 + i, "z"));
  const door = await Promise.all(atTheDoor.map((name) => send(name)));
  door.forEach((r, i) => assert.deepEqual([r.ok, r.code], [false, "INVALID_REQUEST"], `${JSON.stringify(atTheDoor[i].slice(0, 20))}: ${JSON.stringify(r)}`));
  // Refused by the hooks (access rules) and by validation (the declared event `strict`).
  for (let i = 0; i < 20; i++) {
    const r = await send(`forbidden-${1 + (i % 2)}`);
    assert.deepEqual([r.ok, r.code], [false, "PERMISSION_DENIED"]);
    const v = await send("strict", { y: i });
    assert.deepEqual([v.ok, v.code], [false, "VALIDATION_FAILED"]);
  }

  // 200 distinct valid names: exactly the free places are taken. Two are used: the declared
  // history event `note` (known from the start) and the bystander's `known`; none by the
  // refused names above.
  const results = [];
  for (let i = 0; i < 200; i++) results.push(await send(`junk-${i}`));
  const accepted = results.filter((r) => r.ok).length;
  assert.equal(accepted, MAX_EVENT_TYPES - 2, "refused names took no place, the cap holds");
  for (const r of results.filter((r) => !r.ok)) {
    assert.deepEqual([r.ok, r.code], [false, "EVENT_NOT_ALLOWED"]);
    assert.match(r.message, /maxEventTypesPerRoom/);
  }
  // Names already known go on, the attacker's and everyone else's; only new ones are refused.
  assert.equal((await send("junk-0")).ok, true);
  await by.check();
  const other = await connect("late-comer");
  await join(other, "star");
  assert.equal((await ask(other, "dialogue:trigger", { roomId: "star", event: "known", data: { text: "hi" } })).ok, true);
  const fresh = await ask(other, "dialogue:trigger", { roomId: "star", event: "brand-new", data: {} });
  assert.deepEqual([fresh.ok, fresh.code], [false, "EVENT_NOT_ALLOWED"]);
  other.close();
  a.close();
  await survived(by, "junk names");
});

phase('limits: dialogue:unsubscribe with 20 names of 500 KB in a "*" room', async () => {
  const by = await bystander({ prefix: "unsub" });
  by.start();
  const a = await connect("unsubscriber");
  await join(a, "star");
  // A few to warm the allocator, so that the growth measured is what the names would keep.
  for (let i = 0; i < 3; i++) await ask(a, "dialogue:unsubscribe", { roomId: "star", eventName: "w".repeat(500_000) });
  const before = rss();
  for (let i = 0; i < 20; i++) {
    const eventName = `${i}-`.padEnd(500_000, "u");
    const r = await ask(a, i % 2 ? "dialogue:unsubscribe" : "dialogue:subscribe", { roomId: "star", eventName });
    assert.deepEqual([r.ok, r.code], [false, "INVALID_REQUEST"], JSON.stringify(r).slice(0, 300));
  }
  const growth = rss() - before;
  assert.ok(growth < 8 * MiB, `RSS grew by ${mib(growth)} for 10 MB of refused names`);
  // The connection still works.
  assert.equal((await ask(a, "dialogue:unsubscribe", { roomId: "star", eventName: "short" })).ok, true);
  a.close();
  await survived(by, "huge unsubscribe names");
});

phase("limits: HTTP API bodies over limits.maxPayloadBytes + 4 KiB get 413 with the JSON error", async () => {
  const by = await bystander({ prefix: "api" });
  by.start();
  const post = (path, body, key = API_KEY) =>
    fetch(`${URL}${path}`, {
      method: "POST",
      headers: { ...(key ? { Authorization: `Bearer ${key}` } : {}), "Content-Type": "application/json" },
      body,
    });
  // One byte over the bound (1,000,000 + 4096): 413 {code: PAYLOAD_TOO_LARGE, message}.
  const prefix = '{"data":{"text":"';
  const suffix = '"}}';
  const over = prefix + "t".repeat(1_000_000 + 4096 + 1 - prefix.length - suffix.length) + suffix;
  assert.equal(over.length, 1_004_097);
  const r = await post("/api/rooms/watch/events/chat", over);
  assert.equal(r.status, 413);
  const err = await r.json();
  assert.equal(err.code, "PAYLOAD_TOO_LARGE");
  assert.equal(typeof err.message, "string");
  // A room body over 64 KiB.
  const room = await post("/api/rooms", JSON.stringify({ id: "big-body", name: "n".repeat(70_000) }));
  assert.equal(room.status, 413);
  assert.equal((await room.json()).code, "PAYLOAD_TOO_LARGE");
  // Without a key, a big body is not even read: 401.
  const anonymous = await post("/api/rooms/watch/events/chat", over, null);
  assert.equal(anonymous.status, 401);

  // 50 MB declared and streamed over a raw socket: answered 413 (or the connection closed)
  // long before it is all sent; the server did not buffer it.
  const before = rss();
  const outcome = await rawPost("/api/rooms/watch/events/chat", 50_000_000);
  assert.ok(outcome.status === 413 || outcome.written < 50_000_000, JSON.stringify(outcome));
  if (outcome.status) assert.equal(outcome.status, 413, outcome.response.slice(0, 300));
  const growth = rss() - before;
  assert.ok(growth < 32 * MiB, `RSS grew by ${mib(growth)} for a 50 MB body`);
  console.log(`RESULT ${JSON.stringify({ bigBody: { status: outcome.status, written: outcome.written, growth } })}`);
  // Still serving the API.
  const ok = await post("/api/rooms/watch/events/chat", JSON.stringify({ data: { text: "fine" } }));
  assert.equal(ok.status, 201);
  await survived(by, "oversized API bodies");
});

/** POSTs `size` bytes of a JSON string body over a raw socket, 64 KiB at a time, until the
 * server answers or closes: {status, written, response}. */
function rawPost(path, size) {
  return new Promise((resolve) => {
    const sock = net.connect(PORT, "127.0.0.1");
    let response = "";
    let written = 0;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(response)?.[1] ?? 0);
      resolve({ status, written, response });
    };
    const timer = setTimeout(finish, 30_000);
    sock.on("data", (d) => {
      response += d.toString("latin1");
      if (response.includes("\r\n\r\n")) setTimeout(finish, 100);
    });
    sock.on("error", finish);
    sock.on("close", finish);
    sock.on("connect", () => {
      sock.write(
        `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${API_KEY}\r\n` +
          `Content-Type: application/json\r\nContent-Length: ${size}\r\n\r\n`,
      );
      const chunk = Buffer.alloc(64 * 1024, "a");
      const pump = () => {
        while (!done && written < size) {
          const n = Math.min(chunk.length, size - written);
          written += n;
          if (!sock.write(chunk.subarray(0, n))) return sock.once("drain", pump);
        }
      };
      pump();
    });
  });
}

phase("limits: history start near 2^64 is INVALID_REQUEST; the server goes on", async () => {
  const by = await bystander({ prefix: "hist" });
  by.start();
  for (let i = 0; i < 3; i++) {
    assert.equal((await ask(by.speaker, "dialogue:trigger", { roomId: "watch", event: "note", data: { i } })).ok, true);
  }
  // Exact digits need a raw frame (a JS number cannot hold 2^64 - 1).
  const raw = await rawClient("raw-history");
  assert.equal((await raw.ask(1, '["dialogue:join",{"roomId":"watch"}]')).ok, true);
  const page = (id, fields) => raw.ask(id, `["dialogue:getHistory",{"roomId":"watch","eventName":"note",${fields}}]`);
  const invalid = [
    '"start":18446744073709551615',
    '"start":18446744073709551605',
    '"start":18446744073709551616',
    '"start":1e30',
    '"start":-1',
    '"start":18446744073709551615,"end":18446744073709551614',
    '"before":18446744073709551616',
  ];
  for (const [i, fields] of invalid.entries()) {
    const r = await page(10 + i, fields);
    assert.deepEqual([r.ok, r.code], [false, "INVALID_REQUEST"], `${fields}: ${JSON.stringify(r)}`);
  }
  // Valid requests at the edge: an empty page, and the newest by cursor.
  const edge = await page(30, '"start":18446744073709551605,"end":18446744073709551615');
  assert.equal(edge.ok, true, JSON.stringify(edge));
  assert.deepEqual(edge.events, []);
  const cursor = await page(31, '"before":18446744073709551615,"limit":2');
  assert.equal(cursor.ok, true, JSON.stringify(cursor));
  assert.equal(cursor.events.length, 2);
  // Through socket.io-client (2^64 - 1 becomes 2^64) and the HTTP API.
  const viaClient = await ask(by.listener, "dialogue:getHistory", { roomId: "watch", eventName: "note", start: 2 ** 64 - 1 });
  assert.deepEqual([viaClient.ok, viaClient.code], [false, "INVALID_REQUEST"]);
  const api = await fetch(`${URL}/api/rooms/watch/history/note?start=18446744073709551615`, { headers: { Authorization: `Bearer ${API_KEY}` } });
  assert.equal(api.status, 400);
  assert.equal((await api.json()).code, "INVALID_REQUEST");
  // Alive and answering normally.
  const normal = await page(40, '"start":0,"end":10');
  assert.equal(normal.ok, true);
  assert.equal(normal.events.length, 3);
  raw.ws.close();
  await survived(by, "history start near 2^64");
});

// --------------------------------------------------------------------------- jwt
// auth.mode jwt with an HS256 secret (tests/abuse.rs JWT). An HS256 secret shorter than 32
// bytes refusing to start is tested in tests/config_errors.rs
// (serve_refuses_a_short_jwt_secret).

const SECRET = "abuse-secret-0123456789abcdef0123456789";
const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
function sign(claims) {
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ exp: now + 3600, ...claims })}`;
  return `${body}.${crypto.createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}
async function connectToken(token) {
  const socket = io(URL, { auth: { token }, transports: ["websocket"], reconnection: false, forceNew: true });
  const client = new Client(socket);
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.close();
      reject(new Error("no answer to the CONNECT within 5 s"));
    }, 5000);
    socket.once("connect", () => {
      clearTimeout(timer);
      resolve();
    });
    socket.once("connect_error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
  return client;
}
const refused = (token) =>
  connectToken(token).then(
    (c) => {
      c.close();
      throw new Error("connected with a token that should be refused");
    },
    (e) => e.message,
  );

phase("jwt: a token expiring mid-session ends it; not-yet-valid, endless and reused tokens are refused", async () => {
  const by = await bystander({ prefix: "jwt", connectAs: (sub) => connectToken(sign({ sub })) });
  by.start();
  const now = Math.floor(Date.now() / 1000);
  const token = sign({ sub: "short-lived", exp: now + 1 });
  const a = await connectToken(token);
  await join(a, "watch");
  assert.equal(await roomSize(by.listener, "watch"), 3);
  const disconnected = new Promise((resolve) => a.socket.once("disconnect", resolve));
  // The attacker keeps triggering until the server ends the session (exp + 5 s of leeway).
  let expired = false;
  const denied = a.waitFor("dialogue:error", (e) => e.code === "PERMISSION_DENIED", 15_000).then((e) => {
    expired = true;
    return e;
  });
  let accepted = 0;
  for (let i = 0; i < 150 && !expired; i++) {
    const r = await a.socket.timeout(1000).emitWithAck("dialogue:trigger", { roomId: "watch", event: "chat", data: { i } }).catch(() => null);
    if (r?.ok) accepted++;
    await sleep(100);
  }
  const err = await denied;
  assert.match(err.message, /token expired/);
  assert.equal(await disconnected, "io server disconnect");
  assert.ok(accepted > 0, "the attacker was served while its token was valid");
  // It is no longer a member anywhere.
  await eventually(async () => (await roomSize(by.listener, "watch")) === 2, 5000, "the expired member left the room");
  a.close();

  // The same token again, a token not valid yet, a token without exp, a forged one: refused.
  // (The session ends at exp + 5 s; the CONNECT check refuses from exp + 6 s, whole seconds.)
  await sleep(1500);
  assert.match(await refused(token), /invalid token.*xpired/i);
  assert.match(await refused(sign({ sub: "early", nbf: now + 3600 })), /invalid token/);
  assert.match(await refused(sign({ sub: "forever", exp: undefined })), /invalid token/);
  const [h, , s] = sign({ sub: "mallory" }).split(".");
  assert.match(await refused(`${h}.${b64({ sub: "admin", exp: now + 3600 })}.${s}`), /invalid token/);

  await survived(by, "jwt");
});

phase("jwt: an exp beyond any clock is refused or honoured, never a crash", async () => {
  const by = await bystander({ prefix: "far", connectAs: (sub) => connectToken(sign({ sub })) });
  by.start();
  const outcomes = [];
  for (const exp of [2 ** 63, 1e300, 1e16]) {
    outcomes.push([exp, await connectToken(sign({ sub: "far-future", exp })).then((c) => c, (e) => e.message)]);
  }
  // Others first: the bystander's connections are unharmed.
  await survived(by, "far exp");
  for (const [exp, outcome] of outcomes) {
    console.log(`RESULT ${JSON.stringify({ farExp: { exp, outcome: typeof outcome === "string" ? outcome : "connected" } })}`);
    if (typeof outcome === "string") {
      assert.match(outcome, /invalid token/, `exp ${exp}: ${outcome}`);
    } else {
      // Connected: the session lasts (the expiry did not wrap around to "now").
      await sleep(300);
      assert.equal(outcome.socket.connected, true, `exp ${exp}: the session ended at once`);
      assert.equal((await ask(outcome, "dialogue:join", { roomId: "watch" })).ok, true);
      outcome.close();
    }
  }
});

// --------------------------------------------------------------------------- history-bytes
// history.maxBytes (per room and event window, default 1 MiB); stored events keep their
// JSON text only (no parsed copy). Configuration (tests/abuse.rs HISTORY_BYTES): `big`
// {limit: 100, maxBytes: 2000000} in rooms r1, r2, r3; `keep` {limit: 100, maxBytes:
// 100000000} in room vault; `warm` without history in r1.

phase("history-bytes: three rooms x 100 events of 900 KB stay within history.maxBytes; no double copy", async () => {
  const by = await bystander({ prefix: "hb" });
  by.start();
  const a = await connect("hoarder");
  for (const room of ["r1", "r2", "r3", "vault"]) await join(a, room);
  // Its own events do not come back to it (they would fill its outbound queue).
  for (const [roomId, eventName] of [["r1", "big"], ["r1", "warm"], ["r2", "big"], ["r3", "big"], ["vault", "keep"]]) {
    assert.equal((await ask(a, "dialogue:unsubscribe", { roomId, eventName })).ok, true);
  }
  const text = "h".repeat(900_000);
  // Warm-up: the buffers every 900 KB event passes through (frame, parse, JSON, SQL) exist
  // before the first measurement.
  for (let i = 0; i < 10; i++) assert.equal((await ask(a, "dialogue:trigger", { roomId: "r1", event: "warm", data: { i, text } })).ok, true);
  const base = rss();

  // 100 events a window holds whole: the growth is their JSON text, not twice it (a parsed
  // Value beside the text doubles it).
  let kept = 0;
  for (let i = 0; i < 100; i++) {
    const r = await ask(a, "dialogue:trigger", { roomId: "vault", event: "keep", data: { i, text } });
    assert.equal(r.ok, true, JSON.stringify(r));
    kept += JSON.stringify({ i, text }).length + 150; // + the EventMessage around data
  }
  const afterKeep = rss();
  assert.ok(afterKeep - base < 1.5 * kept, `holding ${mib(kept)} of events grew RSS by ${mib(afterKeep - base)} (limit 1.5x)`);

  // Three rooms x 100 events: each window keeps at most 2,000,000 bytes; the rest is in the
  // database only.
  for (const room of ["r1", "r2", "r3"]) {
    for (let i = 0; i < 100; i++) {
      const r = await ask(a, "dialogue:trigger", { roomId: room, event: "big", data: { i, text } });
      assert.equal(r.ok, true, JSON.stringify(r));
    }
  }
  const afterFlood = rss();
  const windows = 3 * 2_000_000;
  // 1.5x what the windows may hold plus 32 MiB for the allocator's working set; 100-event
  // windows would hold 270 MB.
  assert.ok(
    afterFlood - afterKeep < 1.5 * windows + 32 * MiB,
    `300 events of 900 KB in 2 MB windows grew RSS by ${mib(afterFlood - afterKeep)}`,
  );
  // Nothing is lost: the newest events come from memory and the database, one per page (a
  // page goes out twice, as dialogue:historyResponse and as the ack, within the 4 MiB
  // outbound bound).
  const one = async (roomId, eventName, start) => {
    const page = await ask(a, "dialogue:getHistory", { roomId, eventName, start, end: start + 1 }, 60_000);
    assert.equal(page.ok, true, JSON.stringify(page).slice(0, 300));
    assert.equal(page.events.length, 1);
    assert.equal(page.events[0].data.text.length, 900_000);
    return page.events[0];
  };
  for (let start = 0; start < 5; start++) assert.equal((await one("r2", "big", start)).seq, 100 - start);
  for (let start = 95; start < 100; start++) assert.equal((await one("vault", "keep", start)).data.i, 99 - start);
  a.close();
  await survived(by, "big events");
});

// --------------------------------------------------------------------------- subscriptions
// Configuration (tests/abuse.rs SUBSCRIPTIONS_BOUND): no new key; limits.maxEventTypesPerRoom
// 50; rooms `star` ["*"] and `picky` ["*"] with defaultSubscriptions [known].

const SUBSCRIPTION_CAP = 50;

phase('subscriptions-bound: 5,000 distinct names in one connection\'s subscriptions of a "*" room', async () => {
  // a connection's set of names in a "*" room is bounded by
  // limits.maxEventTypesPerRoom (beyond: ok:false); limits.subscriptionsPerMinute (default
  // 120) may refuse them earlier with RATE_LIMITED.
  const by = await bystander({ prefix: "subs" });
  by.start();
  const a = await connect("set-grower");
  await join(a, "star");
  await join(a, "picky");
  const before = rss();
  const flood = async (event, roomId, prefix) => {
    const answers = [];
    for (let i = 0; i < 5000; i += 100) {
      const batch = [];
      for (let j = i; j < i + 100; j++) batch.push(ask(a, event, { roomId, eventName: `${prefix}-${j}-${"n".repeat(60)}` }, 60_000));
      answers.push(...(await Promise.all(batch)));
    }
    return answers;
  };
  // Unsubscribing from a "*" room keeps the names excluded; subscribing in a room with
  // defaultSubscriptions keeps the names included.
  // The bound holds over all of the connection's rooms together.
  let keptTotal = 0;
  const codes = new Set();
  for (const [event, roomId] of [["dialogue:unsubscribe", "star"], ["dialogue:subscribe", "picky"]]) {
    const answers = await flood(event, roomId, event.slice(9));
    const kept = answers.filter((r) => r.ok).length;
    keptTotal += kept;
    assert.ok(kept <= SUBSCRIPTION_CAP, `${event}: ${kept} of 5000 distinct names were kept (limits.maxEventTypesPerRoom: ${SUBSCRIPTION_CAP})`);
    for (const r of answers.filter((r) => !r.ok)) {
      assert.ok(["EVENT_NOT_ALLOWED", "INVALID_REQUEST", "RATE_LIMITED"].includes(r.code), JSON.stringify(r));
      codes.add(r.code);
    }
  }
  assert.ok(keptTotal <= SUBSCRIPTION_CAP, `${keptTotal} names kept over two rooms (limits.maxEventTypesPerRoom: ${SUBSCRIPTION_CAP})`);
  assert.ok(codes.has("EVENT_NOT_ALLOWED"), `the cap refused nothing: ${[...codes]}`);
  const growth = rss() - before;
  assert.ok(growth < 8 * MiB, `RSS grew by ${mib(growth)}`);
  a.close();
  await survived(by, "subscription set");
});

phase("subscriptions-rate: dialogue:subscribe/unsubscribe beyond limits.subscriptionsPerMinute get RATE_LIMITED", async () => {
  // limits.subscriptionsPerMinute (10 in this configuration; default 120, 0 = unlimited).
  const by = await bystander({ prefix: "rate" });
  by.start();
  const a = await connect("toggler");
  await join(a, "watch");
  const answers = [];
  for (let i = 0; i < 40; i++) {
    answers.push(await ask(a, i % 2 ? "dialogue:subscribe" : "dialogue:unsubscribe", { roomId: "watch", eventName: "chat" }));
  }
  const ok = answers.filter((r) => r.ok).length;
  const limited = answers.filter((r) => !r.ok && r.code === "RATE_LIMITED").length;
  // 10 a minute (one more may refill meanwhile; the join may or may not count as one).
  assert.ok(ok >= 9 && ok <= 11, `${ok} of 40 accepted`);
  assert.equal(ok + limited, 40);
  await a.waitFor("dialogue:error", (e) => e.code === "RATE_LIMITED");
  // Another connection has its own budget.
  const b = await connect("calm");
  await join(b, "watch");
  assert.equal((await ask(b, "dialogue:unsubscribe", { roomId: "watch", eventName: "chat" })).ok, true);
  a.close();
  b.close();
  await survived(by, "subscription rate");
});

// --------------------------------------------------------------------------- slowloris
// server.headerTimeout (1000 here; default 5000) and server.bodyTimeout (1500 here;
// default 10000).

const HEADER_TIMEOUT = 1000;
const BODY_TIMEOUT = 1500;
const SLACK = 3000;

/** A raw TCP client that writes `head`, then `drip` every 250 ms (if given), and never
 * finishes; `closed` resolves with {ms, response} when the server closes it. */
function slowClient(head, drip) {
  const sock = net.connect(PORT, "127.0.0.1");
  const started = Date.now();
  let response = "";
  let timer = null;
  sock.setNoDelay(true);
  const closed = new Promise((resolve) => {
    sock.on("data", (d) => (response += d.toString("latin1")));
    sock.on("error", () => {});
    sock.on("close", () => {
      clearInterval(timer);
      resolve({ ms: Date.now() - started, response });
    });
  });
  sock.on("connect", () => {
    sock.write(head);
    if (drip) timer = setInterval(() => sock.destroyed || sock.write(drip), 250);
  });
  return { closed, destroy: () => sock.destroy() };
}

/** Waits until `client` is closed, at most `limit` ms after it started. */
async function closedWithin(client, limit, what) {
  const outcome = await Promise.race([client.closed, sleep(limit + 1000).then(() => null)]);
  client.destroy();
  assert.ok(outcome, `${what}: still open after ${limit + 1000} ms`);
  assert.ok(outcome.ms <= limit, `${what}: closed after ${outcome.ms} ms (limit ${limit})`);
  if (outcome.response) assert.match(outcome.response, /^HTTP\/1\.1 (408|400)/, `${what}: ${outcome.response.slice(0, 200)}`);
  return outcome;
}

async function pollingSid() {
  const res = await fetch(`${URL}/socket.io/?EIO=4&transport=polling`);
  const text = await res.text();
  return JSON.parse(text.slice(1)).sid;
}

const slowHeaders = () => slowClient("GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", "a");
const slowPollingBody = (sid, drip) =>
  slowClient(
    `POST /socket.io/?EIO=4&transport=polling&sid=${sid} HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
      "Content-Type: text/plain;charset=UTF-8\r\nContent-Length: 100000\r\n\r\n42[\"dialo",
    drip,
  );
const slowApiBody = (drip) =>
  slowClient(
    `POST /api/rooms/watch/events/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${API_KEY}\r\n` +
      'Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"data":{"',
    drip,
  );

phase("slowloris: unfinished headers and bodies are closed in time; 200 of them do not stop a bystander", async () => {
  const by = await bystander({ prefix: "slow" });
  by.start();
  // One of each, measured alone.
  await closedWithin(slowHeaders(), HEADER_TIMEOUT + SLACK, "headers sent a byte at a time");
  await closedWithin(slowPollingBody(await pollingSid()), BODY_TIMEOUT + SLACK, "polling POST with 10 of 100000 bytes");
  await closedWithin(slowPollingBody(await pollingSid(), "x"), BODY_TIMEOUT + SLACK, "polling POST body sent a byte at a time");
  await closedWithin(slowApiBody(), BODY_TIMEOUT + SLACK, "API POST with 10 of 100000 bytes");
  await closedWithin(slowApiBody("x"), BODY_TIMEOUT + SLACK, "API POST body sent a byte at a time");

  // 200 at once: a new client still connects, joins and chats meanwhile.
  const sids = [];
  for (let i = 0; i < 50; i++) sids.push(await pollingSid());
  const crowd = [];
  for (let i = 0; i < 100; i++) crowd.push(["headers", slowHeaders(), HEADER_TIMEOUT]);
  for (const sid of sids) crowd.push(["polling body", slowPollingBody(sid, "x"), BODY_TIMEOUT]);
  for (let i = 0; i < 50; i++) crowd.push(["api body", slowApiBody(i % 2 ? "x" : undefined), BODY_TIMEOUT]);
  await sleep(200);
  const fresh = await bystander({ prefix: "slow-fresh" });
  await fresh.check();
  fresh.close();
  await Promise.all(crowd.map(([what, client, timeout]) => closedWithin(client, timeout + SLACK, `one of 200: ${what}`)));
  await survived(by, "slowloris");
});

// --------------------------------------------------------------------------- stalled
// server.writeTimeout (2000 here; default 30000): a connection whose socket takes no
// bytes for that long is disconnected, though it is under server.maxOutboundBytes (64 MiB
// here, so only the timeout can act). Rooms `busy` [blob] and `watch` [chat].

phase("stalled: a WebSocket client that stops reading is disconnected after server.writeTimeout", async () => {
  const by = await bystander({ room: "busy", event: "blob", prefix: "busy" });
  by.start();
  const pusher = await connect("pusher");
  await join(pusher, "busy");
  const attacker = await rawClient("stalled");
  assert.equal((await attacker.ask(1, '["dialogue:join",{"roomId":"busy"}]')).ok, true);
  const closed = new Promise((resolve) => attacker.ws.on("close", resolve));
  const members = await roomSize(by.listener, "busy");
  assert.equal(members, 4);
  attacker.ws._socket.pause();

  // 100 KB events, at most 40 MB in all (well under the 64 MiB outbound bound), until the
  // attacker is no longer a member; at most 30 s (the heartbeat needs 45 s to act).
  const blob = "b".repeat(100_000);
  const started = Date.now();
  let sent = 0;
  let gone = false;
  while (!gone && Date.now() - started < 30_000) {
    if (sent < 400) {
      const r = await ask(pusher, "dialogue:trigger", { roomId: "busy", event: "blob", data: { blob } });
      assert.equal(r.ok, true, JSON.stringify(r));
      sent++;
    } else {
      await sleep(200);
    }
    if (sent % 10 === 0) gone = (await roomSize(by.listener, "busy")) === members - 1;
  }
  assert.ok(gone, `the stalled reader is still a member after ${Date.now() - started} ms and ${sent} events of 100 KB`);
  // Its socket is closed: once it reads again it finds the end.
  attacker.ws._socket.resume();
  const closedInTime = await Promise.race([closed.then(() => true), sleep(15_000).then(() => false)]);
  assert.ok(closedInTime, "the stalled reader's socket was not closed");
  // The bystander in the same room received every event.
  const blobs = () => by.listener.all("dialogue:event").filter((e) => e.data?.blob).length;
  await eventually(() => blobs() === sent, 10_000, `the bystander's ${sent} blobs (got ${blobs()})`);
  pusher.close();
  await survived(by, "stalled reader");
  console.log(`RESULT ${JSON.stringify({ stalled: { sent, ms: Date.now() - started } })}`);
});

// --------------------------------------------------------------------------- per-ip
// server.maxConnectionsPerIp (20 here; default 0 = unlimited), counted in Engine.IO
// sessions (the handshake is refused), not in plain HTTP requests such as /readyz.

const PER_IP = 20;

phase("per-ip: the 21st concurrent connection from 127.0.0.1 is refused, and accepted once one closes", async () => {
  const by = await bystander({ prefix: "ip" }); // 2 of the 20
  by.start();
  const attackers = [];
  let refusal = null;
  for (let i = 0; i < 40 && !refusal; i++) {
    const { client, error } = await tryConnect(`ip-${i}`);
    if (client) attackers.push(client);
    else refusal = error;
  }
  assert.ok(refusal, "40 more connections were accepted");
  assert.equal(attackers.length + 2, PER_IP, `refused after ${attackers.length + 2} connections: ${refusal}`);
  // The handshake itself: an HTTP error with a JSON body.
  const res = await fetch(`${URL}/socket.io/?EIO=4&transport=polling`);
  const body = await res.text();
  assert.ok(res.status === 429 || res.status === 400, `handshake answered ${res.status} ${body}`);
  assert.equal(typeof JSON.parse(body).message, "string", body);
  await assertReady("per-ip, at the cap");
  // One closes: a new one is accepted again.
  attackers.pop().close();
  let again = null;
  await eventually(async () => (again = (await tryConnect("ip-again")).client), 5000, "a connection once one closed");
  attackers.push(again);
  const extra = await tryConnect("ip-extra");
  assert.ok(extra.error, "the cap holds again");
  for (const a of attackers) a.close();
  await survived(by, "per-ip");
});

// --------------------------------------------------------------------------- metrics
// metrics.key (a bearer key for /metrics) and metrics.maxRoomSeries (5 here): rooms
// beyond it are counted under room="_other".

const METRICS_KEY = "metrics-key-0123456789";

phase("metrics: /metrics needs its key; per-room series are capped with an _other aggregate", async () => {
  const by = await bystander({ prefix: "m" });
  by.start();
  const a = await connect("room-maker");
  for (let i = 0; i < 10; i++) {
    const id = `m-room-${i}`;
    const created = await ask(a, "dialogue:createRoom", { id, name: id });
    assert.equal(created.ok, true, JSON.stringify(created));
    await join(a, id);
    assert.equal((await ask(a, "dialogue:trigger", { roomId: id, event: "chat", data: { i } })).ok, true);
  }
  assert.equal((await fetch(`${URL}/metrics`)).status, 401);
  assert.equal((await fetch(`${URL}/metrics`, { headers: { Authorization: "Bearer wrong-key" } })).status, 401);
  const res = await fetch(`${URL}/metrics`, { headers: { Authorization: `Bearer ${METRICS_KEY}` } });
  assert.equal(res.status, 200);
  const text = await res.text();
  const labels = new Set([...text.matchAll(/room="([^"]*)"/g)].map((m) => m[1]));
  const named = [...labels].filter((r) => r !== "_other");
  assert.ok(named.length <= 5, `room series: ${[...labels].join(", ")}`);
  assert.ok(labels.has("_other"), `no _other aggregate: ${[...labels].join(", ")}`);
  // Every trigger is still counted, under its room or under _other.
  const triggered = text
    .split("\n")
    .filter((l) => l.startsWith("dialogue_events_triggered_total{") && l.includes('event="chat"'))
    .reduce((sum, l) => sum + Number(l.split(" ").at(-1)), 0);
  assert.ok(triggered >= 10, `events triggered: ${triggered}`);
  a.close();
  await survived(by, "metrics");
});

// --------------------------------------------------------------------------- queued-bytes
// limits.maxQueuedRequestBytes (4 MiB): the bytes of a connection's requests waiting for
// their turn; beyond, RATE_LIMITED "too many requests waiting". server.maxOutboundBytes is
// 2 MiB here, so a quarter of it (the pipelining bound) is below one 900 KB trigger and every
// trigger waits for the one before.

phase("queued-bytes: 100 pipelined 900 KB triggers: the queue is bounded in bytes", async () => {
  const by = await bystander({ prefix: "q" });
  by.start();
  const a = await connect("pipeliner");
  await join(a, "dump");
  // Its own events do not come back to it (they would fill its 2 MiB outbound queue).
  assert.equal((await ask(a, "dialogue:unsubscribe", { roomId: "dump", eventName: "big" })).ok, true);
  const text = "q".repeat(900_000);
  // Warm-up, then sample the RSS while the burst is handled.
  for (let i = 0; i < 3; i++) assert.equal((await ask(a, "dialogue:trigger", { roomId: "dump", event: "big", data: { i, text } })).ok, true);
  const base = rss();
  let peak = base;
  const sampler = setInterval(() => (peak = Math.max(peak, rss())), 20);
  const answers = await Promise.all(
    Array.from({ length: 100 }, (_, i) => ask(a, "dialogue:trigger", { roomId: "dump", event: "big", data: { i, text } }, 120_000)),
  );
  clearInterval(sampler);
  const ok = answers.filter((r) => r.ok).length;
  const limited = answers.filter((r) => !r.ok && r.code === "RATE_LIMITED");
  assert.equal(ok + limited.length, 100, JSON.stringify(answers.filter((r) => !r.ok && r.code !== "RATE_LIMITED")[0]));
  assert.ok(limited.length > 0, `all ${ok} pipelined 900 KB triggers were queued`);
  assert.ok(ok > 0);
  assert.match(limited[0].message, /waiting/);
  // 4 MiB may wait; 100 x 900 KB queued would be 90 MB (twice that parsed).
  assert.ok(peak - base < 64 * MiB, `RSS grew by ${mib(peak - base)} during the burst`);
  // The connection works on.
  assert.equal((await ask(a, "dialogue:trigger", { roomId: "dump", event: "big", data: { text: "small" } })).ok, true);
  a.close();
  await survived(by, "queued bytes");
  console.log(`RESULT ${JSON.stringify({ queued: { ok, limited: limited.length, growth: peak - base } })}`);
});

// --------------------------------------------------------------------------- backlog
// database.maxBacklogBytes (8 MiB here; default 64 MiB). tests/abuse.rs locks the SQLite
// file between backlog-warm and backlog-fill, and releases it before backlog-recovered.
// database.durability: accepted, database.maxBacklog 100000 (the count bound cannot act).

const BACKLOG_BYTES = 8 * MiB;
const BACKLOG_EVENT = 200_000;

phase("backlog-warm: every stream has its counter before the database is locked", async () => {
  const c = await connect("warm");
  await join(c, "vault");
  await join(c, "watch");
  assert.equal((await ask(c, "dialogue:trigger", { roomId: "vault", event: "big", data: { i: 0, text: "first" } })).ok, true);
  assert.equal((await ask(c, "dialogue:trigger", { roomId: "watch", event: "chat", data: { text: "first" } })).ok, true);
  c.close();
});

phase("backlog-fill: with the database locked, history triggers are refused once the backlog holds maxBacklogBytes", async () => {
  const by = await bystander({ prefix: "bl" });
  by.start();
  const a = await connect("filler");
  await join(a, "vault");
  const text = "v".repeat(BACKLOG_EVENT);
  const acked = [];
  let refusal = null;
  for (let i = 1; i <= 400 && !refusal; i++) {
    const r = await ask(a, "dialogue:trigger", { roomId: "vault", event: "big", data: { i, text } });
    if (r.ok) acked.push(r.seq);
    else refusal = r;
  }
  assert.ok(refusal, `all ${acked.length} triggers of 200 KB were accepted with the database locked`);
  assert.equal(refusal.code, "STORAGE_UNAVAILABLE", JSON.stringify(refusal));
  const limit = Math.ceil(BACKLOG_BYTES / BACKLOG_EVENT);
  assert.ok(acked.length <= limit + 4, `${acked.length} events of 200 KB accepted for an 8 MiB backlog`);
  assert.ok(acked.length >= limit / 2, `only ${acked.length} events of 200 KB accepted for an 8 MiB backlog`);
  // The server answers; not ready while the database is down is expected.
  const ready = await fetch(`${URL}/readyz`);
  assert.ok([200, 503].includes(ready.status));
  assert.equal(typeof (await ready.json()).ready, "boolean");
  a.close();
  const during = await by.stop();
  assert.ok(during >= 1, "the bystander received nothing during the attack");
  await by.check();
  assertRss("backlog fill");
  by.close();
  console.log(`RESULT ${JSON.stringify({ acked })}`);
});

phase("backlog-recovered: after the lock, every acknowledged event is in the history", async () => {
  const acked = JSON.parse(process.env.ACKED);
  const c = await connect("reader");
  await join(c, "vault");
  const seqs = [];
  let before = acked.at(-1) + 1;
  // A page holds at most limits.maxPageBytes (a quarter of the 4 MiB outbound queue): four
  // 200 KB events fit, ten do not (that page is refused with PAYLOAD_TOO_LARGE).
  const tooBig = await ask(c, "dialogue:getHistory", { roomId: "vault", eventName: "big", before, limit: 10 });
  assert.deepEqual([tooBig.ok, tooBig.code], [false, "PAYLOAD_TOO_LARGE"], JSON.stringify(tooBig).slice(0, 300));
  for (let i = 0; i < 60 && before > 1; i++) {
    const page = await ask(c, "dialogue:getHistory", { roomId: "vault", eventName: "big", before, limit: 4 }, 60_000);
    assert.equal(page.ok, true, JSON.stringify(page).slice(0, 300));
    if (!page.events.length) break;
    seqs.push(...page.events.map((e) => e.seq));
    before = page.events.at(-1).seq;
  }
  for (const seq of acked) assert.ok(seqs.includes(seq), `acknowledged seq ${seq} is missing`);
  // Accepted again.
  let r;
  for (let i = 0; i < 100; i++) {
    r = await ask(c, "dialogue:trigger", { roomId: "vault", event: "big", data: { text: "after" } });
    if (r.ok) break;
    await sleep(100);
  }
  assert.equal(r.ok, true, JSON.stringify(r));
  await eventually(async () => (await fetch(`${URL}/readyz`)).status === 200, 20_000, "/readyz 200");
  assertRss("backlog recovered");
  c.close();
});
