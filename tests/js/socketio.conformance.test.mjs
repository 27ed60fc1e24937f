// Socket.IO protocol v5 conformance, packet by packet, with a raw WebSocket client (no
// socket.io-client). Run by tests/socketio_conformance.rs, which starts the server with
// pingInterval 300, pingTimeout 200, connectTimeout 1000, an event `message` with history and
// a room `general` (name "General", events [message], autoJoin).
//
// Sources: the Socket.IO protocol document (github.com/socketio/socket.io-protocol, Readme.md:
// "Connection to a namespace", "Sending and receiving data", "Acknowledgement",
// "Disconnection from a namespace", "Packet encoding") and its test suite
// (test-suite/test-suite.js); where the document is silent, the reference server
// (socket.io lib/client.ts, socket.io-parser lib/index.ts) decides, and the test says so.
// Every frame below is an Engine.IO frame: `4` (message) + the Socket.IO packet.
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";

const URL = process.env.DIALOGUE_URL;
if (!URL) throw new Error("DIALOGUE_URL is not set (run through cargo test)");
const WS_URL = URL.replace(/^http/, "ws") + "/socket.io/?EIO=4&transport=websocket";

const PING_INTERVAL = 300;
const PING_TIMEOUT = 200;
const CONNECT_TIMEOUT = 1000;
const BINARY_REFUSED = "binary payloads are not supported; send JSON";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A raw Engine.IO WebSocket. Every frame received is queued (text as string, binary as
 * Buffer); pings (`2`) are answered with `3` and kept out of the queue unless `keepPings`.
 */
class Raw {
  constructor({ keepPings = false, autoPong = true } = {}) {
    this.queue = [];
    this.waiters = [];
    this.pings = 0;
    this.closeInfo = null;
    this.openedAt = Date.now();
    this.ws = new WebSocket(WS_URL);
    this.ws.on("error", () => {});
    this.closed = new Promise((resolve) =>
      this.ws.on("close", (code, reason) => {
        this.closeInfo = { code, reason: reason.toString(), at: Date.now() };
        resolve(this.closeInfo);
        this.wake();
      }),
    );
    this.ws.on("message", (data, isBinary) => {
      const frame = isBinary ? Buffer.from(data) : data.toString();
      if (frame === "2") {
        this.pings++;
        if (autoPong && this.ws.readyState === WebSocket.OPEN) this.ws.send("3");
        if (!keepPings) return;
      }
      this.queue.push(frame);
      this.wake();
    });
  }

  wake() {
    for (const w of [...this.waiters]) w();
  }

  /** Opens and consumes the Engine.IO open packet; returns the handshake. */
  async open() {
    await new Promise((resolve, reject) => {
      if (this.ws.readyState === WebSocket.OPEN) return resolve();
      this.ws.once("open", resolve);
      this.ws.once("error", reject);
    });
    const open = await this.next();
    assert.equal(typeof open, "string");
    assert.ok(open.startsWith("0"), `first frame is the open packet, got ${open}`);
    this.handshake = JSON.parse(open.slice(1));
    return this.handshake;
  }

  send(frame) {
    this.ws.send(frame);
  }

  /** The next queued frame (in order), or a failure after `ms`. */
  next(ms = 3000) {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.queue.length > 0) {
          done();
          resolve(this.queue.shift());
        } else if (this.closeInfo) {
          done();
          reject(new Error(`connection closed (${this.closeInfo.code} ${this.closeInfo.reason}) while waiting for a frame`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no frame within ${ms} ms`));
      }, ms);
      const done = () => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== check);
      };
      this.waiters.push(check);
      check();
    });
  }

  /** Asserts the next frame is exactly `expected`. */
  async expect(expected, ms = 3000) {
    const got = await this.next(ms);
    assert.equal(got, expected);
    return got;
  }

  /** Asserts that no frame arrives within `ms` (and the connection stays open). */
  async expectSilence(ms) {
    await sleep(ms);
    assert.deepEqual(this.queue, [], "no frame expected");
    assert.equal(this.closeInfo, null, `connection closed: ${JSON.stringify(this.closeInfo)}`);
  }

  /** Resolves with the close info, or fails if the server keeps the connection past `ms`. */
  async expectClosed(ms = 3000, what = "connection") {
    const info = await Promise.race([this.closed, sleep(ms).then(() => null)]);
    assert.ok(info, `${what}: the server did not close the connection within ${ms} ms; frames: ${JSON.stringify(this.queue)}`);
    return info;
  }

  /** `40`, or `40<auth>`: asserts `40{"sid":…}` and the dialogue:connected event; returns the sid. */
  async connect(auth) {
    this.send(auth === undefined ? "40" : `40${JSON.stringify(auth)}`);
    const frame = await this.next();
    const m = /^40\{"sid":"([^"\\]+)"(?:,"pid":"[0-9a-f]{64}")?\}$/.exec(frame);
    assert.ok(m, `expected 40{"sid":"…"} (or with the recovery "pid"), got ${frame}`);
    const sid = m[1];
    const userId = auth?.userId ?? sid;
    await this.expect(`42["dialogue:connected",${JSON.stringify({ clientId: sid, userId })}]`);
    return sid;
  }

  /** Consumes the autoJoin answer for `general`. */
  async autoJoined() {
    await this.expect('42["dialogue:joined",{"roomId":"general","roomName":"General"}]');
  }

  close() {
    this.ws.terminate();
  }
}

/** Runs `check(c)` for every case; fails once, listing every case that failed and why. */
async function eachCase(cases, check) {
  const failures = [];
  for (const c of cases) {
    try {
      await check(c);
    } catch (e) {
      failures.push(`${JSON.stringify(c)}: ${e.message}`);
    }
  }
  assert.deepEqual(failures, [], `failing cases:\n${failures.join("\n")}`);
}

async function connected(auth) {
  const raw = new Raw();
  await raw.open();
  const sid = await raw.connect(auth);
  await raw.autoJoined();
  return { raw, sid };
}

/** `42["dialogue:listRooms"]` still answers on `raw` (the connection is usable). */
async function stillServes(raw) {
  raw.send('42["dialogue:listRooms"]');
  const frame = await raw.next();
  assert.ok(frame.startsWith('42["dialogue:rooms",['), `expected dialogue:rooms, got ${frame}`);
}

// ------------------------------------------------------------------ Engine.IO baseline

test("EIO open packet: sid, upgrades [], the configured heartbeat, maxPayload", async () => {
  const raw = new Raw();
  const hs = await raw.open();
  assert.deepEqual(Object.keys(hs), ["sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"]);
  assert.equal(typeof hs.sid, "string");
  assert.deepEqual(hs.upgrades, []);
  assert.equal(hs.pingInterval, PING_INTERVAL);
  assert.equal(hs.pingTimeout, PING_TIMEOUT);
  raw.close();
});

// ------------------------------------------------------------------ connect

test("connect: 40 -> 40{sid} (a socket id, not the EIO sid), then dialogue:connected", async () => {
  const raw = new Raw();
  const hs = await raw.open();
  raw.send("40");
  const frame = await raw.next();
  const m = /^40\{"sid":"([^"\\]+)"(?:,"pid":"[0-9a-f]{64}")?\}$/.exec(frame);
  assert.ok(m, `expected exactly 40{"sid":"…"} (or with the recovery "pid"), got ${frame}`);
  const sid = m[1];
  assert.notEqual(sid, hs.sid, "v5: the Socket.IO sid differs from the Engine.IO sid");
  // Open auth mode without userId: the connection id is the user id.
  await raw.expect(`42["dialogue:connected",{"clientId":"${sid}","userId":"${sid}"}]`);
  await raw.autoJoined();
  raw.close();
});

test("connect: 40{auth} carries the auth payload -> userId", async () => {
  const raw = new Raw();
  await raw.open();
  raw.send('40{"userId":"x"}');
  const frame = await raw.next();
  const m = /^40\{"sid":"([^"\\]+)"(?:,"pid":"[0-9a-f]{64}")?\}$/.exec(frame);
  assert.ok(m, `expected exactly 40{"sid":"…"} (or with the recovery "pid"), got ${frame}`);
  await raw.expect(`42["dialogue:connected",{"clientId":"${m[1]}","userId":"x"}]`);
  await raw.autoJoined();
  raw.close();
});

test("connect: unknown namespace -> 44/admin,{\"message\":\"Invalid namespace\"}, connection stays", async () => {
  const raw = new Raw();
  await raw.open();
  raw.send("40/admin,");
  await raw.expect('44/admin,{"message":"Invalid namespace"}');
  // The protocol test suite sends the namespace without the trailing comma.
  raw.send("40/random");
  await raw.expect('44/random,{"message":"Invalid namespace"}');
  // With an auth payload too.
  raw.send('40/admin,{"token":"123"}');
  await raw.expect('44/admin,{"message":"Invalid namespace"}');
  // The Engine.IO connection is still there: the main namespace connects on it.
  await raw.connect({ userId: "after-admin" });
  await raw.autoJoined();
  raw.close();
});

test("connect: invalid handshake payloads close the connection (parser: CONNECT data must be an object)", async () => {
  // Closed at once: well before connectTimeout (1000 ms), which would close it anyway.
  await eachCase(['40"string"', "40[1]", "40null", "40{bad json", "4abc"], async (bad) => {
    const raw = new Raw();
    await raw.open();
    raw.send(bad);
    await raw.expectClosed(500, bad);
    assert.ok(
      !raw.queue.some((f) => typeof f === "string" && f.startsWith("40")),
      `${bad}: no CONNECT was accepted: ${JSON.stringify(raw.queue)}`,
    );
  });
});

test("connect: a packet other than CONNECT first closes the connection", async () => {
  // Document, "Connection to a namespace": "If the server does not receive a CONNECT packet
  // first, then it MUST close the connection immediately."
  await eachCase(['42["dialogue:listRooms"]', "41", '431["x"]', '451-["x",{"_placeholder":true,"num":0}]'], async (first) => {
    const raw = new Raw();
    await raw.open();
    raw.send(first);
    // At once: well before connectTimeout (1000 ms), which would close it anyway.
    await raw.expectClosed(500, first);
    assert.deepEqual(raw.queue, [], `${first}: nothing answered`);
  });
});

test("connect: no CONNECT within connectTimeout closes the connection (heartbeat answered)", async () => {
  const raw = new Raw();
  await raw.open();
  const started = Date.now();
  const info = await raw.expectClosed(CONNECT_TIMEOUT + 1500, "no CONNECT");
  const after = info.at - started;
  assert.ok(raw.pings >= 2, `the heartbeat went on meanwhile (${raw.pings} pings)`);
  assert.ok(after >= CONNECT_TIMEOUT - 100, `closed after ${after} ms, before connectTimeout`);
});

test("connect: a refused identity gets CONNECT_ERROR 44{\"message\"}; the connection stays", async () => {
  const raw = new Raw();
  await raw.open();
  raw.send('40{"userId":"a\\u0001b"}');
  const frame = await raw.next();
  assert.ok(frame.startsWith("44{"), `expected CONNECT_ERROR 44{…}, got ${frame}`);
  const body = JSON.parse(frame.slice(2));
  assert.deepEqual(Object.keys(body), ["message"]);
  assert.match(body.message, /userId/);
  assert.equal(frame, `44${JSON.stringify(body)}`, "compact JSON, main namespace not named");
  await raw.expectSilence(100);
  await raw.connect({ userId: "fine" });
  await raw.autoJoined();
  raw.close();
});

test("a packet for a namespace that is not connected closes the connection (reference: invalid state)", async () => {
  await eachCase(["41/admin,", '42/admin,["dialogue:listRooms"]', '43/admin,1[]'], async (bad) => {
    const { raw } = await connected({ userId: "other-nsp" });
    raw.send(bad);
    await raw.expectClosed(2000, bad);
  });
});

test("connect: a second CONNECT on an already connected namespace closes the connection (reference: invalid state)", async () => {
  // socket.io lib/client.ts ondecoded(): a CONNECT for a namespace that already has a socket
  // is an "invalid state" and the client is closed.
  const { raw } = await connected({ userId: "twice" });
  raw.send("40");
  await raw.expectClosed(2000, "second 40");
});

// ------------------------------------------------------------------ disconnect

test("disconnect: 41 keeps the Engine.IO connection (heartbeat goes on)", async () => {
  // Protocol test suite, "should disconnect from the main namespace": after 41 the next frame
  // is the ping `2`.
  const raw = new Raw({ keepPings: true });
  await raw.open();
  await raw.connect({ userId: "bye" });
  await raw.autoJoined();
  // Drop anything queued so far (a ping may have come).
  raw.queue.length = 0;
  raw.send("41");
  const frame = await raw.next(PING_INTERVAL + 700);
  assert.equal(frame, "2", "the next frame after 41 is a ping, no answer to 41");
  await sleep(PING_INTERVAL + 100);
  assert.equal(raw.closeInfo, null, `closed after 41: ${JSON.stringify(raw.closeInfo)}`);
  raw.close();
});

test("disconnect: after 41 a new 40 on the same connection connects again", async () => {
  const raw = new Raw();
  await raw.open();
  const first = await raw.connect({ userId: "again" });
  await raw.autoJoined();
  raw.send("41");
  await sleep(100);
  assert.equal(raw.closeInfo, null, `closed after 41: ${JSON.stringify(raw.closeInfo)}`);
  const second = await raw.connect({ userId: "again" });
  // Reference: every CONNECT makes a new Socket, so a new socket id (README says so too).
  assert.notEqual(second, first, "a new socket id");
  await raw.autoJoined();
  await stillServes(raw);
  raw.close();
});

test("disconnect: after 41 an EVENT without a new CONNECT closes the connection", async () => {
  // Reference (lib/client.ts ondecoded): a non-CONNECT packet for a namespace without a
  // socket is an invalid state.
  const raw = new Raw();
  await raw.open();
  await raw.connect({ userId: "gone" });
  await raw.autoJoined();
  raw.send("41");
  await sleep(PING_INTERVAL + 100);
  assert.equal(raw.closeInfo, null, `the connection must outlive 41: ${JSON.stringify(raw.closeInfo)}`);
  raw.queue.length = 0;
  raw.send('42["dialogue:listRooms"]');
  await raw.expectClosed(2000, "event after 41");
  assert.deepEqual(raw.queue, [], "the event was not served");
});

test("disconnect: after 41 the connect timeout applies again (project rule)", async () => {
  // Not in the protocol document, and the reference server does not re-arm its timer; this is
  // the project's rule: a connection without a namespace does not stay forever.
  const raw = new Raw();
  await raw.open();
  await raw.connect({ userId: "idle" });
  await raw.autoJoined();
  raw.send("41");
  const at = Date.now();
  await sleep(2 * PING_INTERVAL + 100);
  assert.equal(raw.closeInfo, null, `closed ${Date.now() - at} ms after 41 (before connectTimeout): ${JSON.stringify(raw.closeInfo)}`);
  const info = await raw.expectClosed(CONNECT_TIMEOUT + 1500, "idle after 41");
  assert.ok(info.at - at >= CONNECT_TIMEOUT - 100, `closed ${info.at - at} ms after 41`);
});

test("disconnect: 41, 40, 41: the connect timeout counts from the last 41", async () => {
  const raw = new Raw();
  await raw.open();
  await raw.connect({ userId: "twice-idle" });
  await raw.autoJoined();
  raw.send("41");
  await sleep(50);
  await raw.connect({ userId: "twice-idle" });
  await raw.autoJoined();
  await sleep(650);
  raw.send("41");
  const at = Date.now();
  // The first 41's timer (due ~300 ms from now) must not close the second idle period early.
  await sleep(CONNECT_TIMEOUT - 300);
  assert.equal(raw.closeInfo, null, `closed ${raw.closeInfo && raw.closeInfo.at - at} ms after the second 41, before connectTimeout`);
  const info = await raw.expectClosed(1500, "idle after the second 41");
  assert.ok(info.at - at >= CONNECT_TIMEOUT - 100, `closed ${info.at - at} ms after the second 41`);
});

test("disconnect over HTTP long-polling: 41 keeps the session, 40 connects again", async () => {
  const base = `${URL}/socket.io/?EIO=4&transport=polling`;
  const get = async (sid) => {
    const r = await fetch(`${base}&sid=${sid}`, { signal: AbortSignal.timeout(3000) });
    assert.equal(r.status, 200);
    return (await r.text()).split("\x1e");
  };
  const post = async (sid, body) => {
    const r = await fetch(`${base}&sid=${sid}`, { method: "POST", body, signal: AbortSignal.timeout(3000) });
    assert.equal(r.status, 200);
    assert.equal(await r.text(), "ok");
  };
  // Reads packets (answering pings) until `n` non-ping packets came.
  const read = async (sid, n) => {
    const out = [];
    while (out.length < n) {
      for (const p of await get(sid)) {
        if (p === "2") await post(sid, "3");
        else out.push(p);
      }
    }
    return out;
  };
  const open = await (await fetch(base, { signal: AbortSignal.timeout(3000) })).text();
  assert.ok(open.startsWith("0"), open);
  const { sid, upgrades } = JSON.parse(open.slice(1));
  assert.deepEqual(upgrades, ["websocket"]);
  await post(sid, '40{"userId":"poller"}');
  const [c1, conn1, joined1] = await read(sid, 3);
  const s1 = /^40\{"sid":"([^"\\]+)"(?:,"pid":"[0-9a-f]{64}")?\}$/.exec(c1)?.[1];
  assert.ok(s1, c1);
  assert.equal(conn1, `42["dialogue:connected",{"clientId":"${s1}","userId":"poller"}]`);
  assert.equal(joined1, '42["dialogue:joined",{"roomId":"general","roomName":"General"}]');
  await post(sid, "41");
  // No answer to 41; the next packet is the heartbeat.
  assert.deepEqual(await get(sid), ["2"]);
  await post(sid, "3");
  await post(sid, '40{"userId":"poller"}');
  const [c2, conn2] = await read(sid, 2);
  const s2 = /^40\{"sid":"([^"\\]+)"(?:,"pid":"[0-9a-f]{64}")?\}$/.exec(c2)?.[1];
  assert.ok(s2, c2);
  assert.equal(conn2, `42["dialogue:connected",{"clientId":"${s2}","userId":"poller"}]`);
  await post(sid, "1");
});

// ------------------------------------------------------------------ events and acks

test("event: 42[\"dialogue:listRooms\"] -> 42[\"dialogue:rooms\",[…]]", async () => {
  const { raw } = await connected({ userId: "lister" });
  raw.send('42["dialogue:listRooms"]');
  const frame = await raw.next();
  const prefix = '42["dialogue:rooms",';
  assert.ok(frame.startsWith(prefix) && frame.endsWith("]"), frame);
  const rooms = JSON.parse(frame.slice(2))[1];
  const general = rooms.find((r) => r.id === "general");
  assert.ok(general, frame);
  assert.equal(general.name, "General");
  assert.deepEqual(general.events, ["message"]);
  assert.ok(general.size >= 1, "this connection joined general");
  // Exact bytes: compact JSON, no extra frame (no ack was asked for).
  assert.equal(frame, `${prefix}${JSON.stringify(rooms)}]`);
  await raw.expectSilence(200);
  raw.close();
});

test("ack: 421[\"dialogue:listRooms\"] -> the event, then 431[{\"ok\":true,…}]", async () => {
  const { raw } = await connected({ userId: "acker" });
  raw.send('421["dialogue:listRooms"]');
  const event = await raw.next();
  assert.ok(event.startsWith('42["dialogue:rooms",'), event);
  const rooms = JSON.parse(event.slice(2))[1];
  await raw.expect(`431[${JSON.stringify({ ok: true, rooms })}]`);
  // Any ack id, echoed as is, exactly once.
  raw.send('429007199254740991["dialogue:listRooms"]');
  await raw.next();
  const ack = await raw.next();
  assert.ok(ack.startsWith('439007199254740991[{"ok":true,"rooms":['), ack);
  await raw.expectSilence(200);
  raw.close();
});

test("ack: an application error still gets exactly one ACK with the same id", async () => {
  const { raw } = await connected({ userId: "err-acker" });
  raw.send('4217["dialogue:join",{"roomId":"nope"}]');
  const err = await raw.next();
  assert.ok(err.startsWith('42["dialogue:error",{"code":"ROOM_NOT_FOUND","message":'), err);
  const message = JSON.parse(err.slice(2))[1].message;
  await raw.expect(`4317[${JSON.stringify({ ok: false, code: "ROOM_NOT_FOUND", message })}]`);
  await raw.expectSilence(200);
  raw.close();
});

test("ack from the client for an unknown id is ignored; the connection stays", async () => {
  const { raw } = await connected({ userId: "stray-ack" });
  raw.send('435[{"x":1}]');
  raw.send("4399[]");
  await raw.expectSilence(200);
  await stillServes(raw);
  raw.close();
});

test("protocol violations after CONNECT close that connection", async () => {
  // Document: an EVENT payload "MUST be a non-empty array. If that's not the case, then the
  // receiver MUST close the connection"; ACK payload "MUST be an array". Test suite:
  // "invalid format (unknown packet type)" 4abc, "(invalid payload format)" 42{}, "(invalid
  // ack id)" 42abc[…].
  const cases = [
    '42{"not":"an array"}',
    "42{}",
    '42"string"',
    "42[]",
    "42",
    "49",
    "4abc",
    '42["x"',
    '42["dialogue:listRooms",]',
    '42abc["dialogue:listRooms"]',
    '42-1["dialogue:listRooms"]',
    '431{"a":1}',
    "431",
    '41{"a":1}',
    '44{"message":"client may not send this"}',
  ];
  await eachCase(cases, async (bad) => {
    const { raw } = await connected({ userId: "violator" });
    raw.send(bad);
    const info = await raw.expectClosed(2000, bad);
    assert.ok([1000, 1002, 1005, 1006, 1008].includes(info.code), `${bad}: close code ${info.code}`);
  });
  // The server carries on.
  const { raw } = await connected({ userId: "bystander" });
  await stillServes(raw);
  raw.close();
});

test("reserved event names are invalid EVENT payloads (reference parser) and close the connection", async () => {
  // socket.io-parser isPayloadValid(): an EVENT whose name is one of connect, connect_error,
  // disconnect, disconnecting, newListener, removeListener is an invalid payload.
  await eachCase(["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"], async (name) => {
    const { raw } = await connected({ userId: "reserved" });
    raw.send(`42["${name}"]`);
    await raw.expectClosed(2000, name);
  });
});

// ------------------------------------------------------------------ binary

test("binary: a BINARY_EVENT with its attachment is refused with dialogue:error; the connection stays", async () => {
  const { raw } = await connected({ userId: "bin" });
  raw.send('451-["x",{"_placeholder":true,"num":0}]');
  await raw.expectSilence(150); // nothing until the attachment arrives
  raw.send(Buffer.from([1, 2, 3, 4]));
  await raw.expect(`42["dialogue:error",${JSON.stringify({ code: "INVALID_REQUEST", message: BINARY_REFUSED })}]`);
  await raw.expectSilence(150);
  await stillServes(raw);
  raw.close();
});

test("binary: with an ack id the refusal is also an error ACK with that id", async () => {
  const { raw } = await connected({ userId: "bin-ack" });
  raw.send('451-7["dialogue:listRooms",{"_placeholder":true,"num":0}]');
  raw.send(Buffer.from([1, 2, 3]));
  await raw.expect(`42["dialogue:error",${JSON.stringify({ code: "INVALID_REQUEST", message: BINARY_REFUSED })}]`);
  await raw.expect(`437[${JSON.stringify({ ok: false, code: "INVALID_REQUEST", message: BINARY_REFUSED })}]`);
  await raw.expectSilence(150);
  raw.close();
});

test("binary: every attachment is consumed before the single answer", async () => {
  const { raw } = await connected({ userId: "bin-two" });
  raw.send('452-8["x",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]');
  raw.send(Buffer.from([1, 2]));
  await raw.expectSilence(150); // one attachment still due
  raw.send(Buffer.from([3, 4]));
  await raw.expect(`42["dialogue:error",${JSON.stringify({ code: "INVALID_REQUEST", message: BINARY_REFUSED })}]`);
  await raw.expect(`438[${JSON.stringify({ ok: false, code: "INVALID_REQUEST", message: BINARY_REFUSED })}]`);
  await stillServes(raw);
  raw.close();
});

test("binary: an attachment count above the bound (reference maxAttachments 10) closes the connection", async () => {
  // socket.io-parser decodeString(): n > maxAttachments (default 10) -> "too many attachments".
  await eachCase([11, 4294967295], async (count) => {
    const { raw } = await connected({ userId: "bin-many" });
    const placeholders = Array.from({ length: Math.min(count, 11) }, (_, i) => `{"_placeholder":true,"num":${i}}`);
    raw.send(`45${count}-["x",${placeholders.join(",")}]`);
    await raw.expectClosed(2000, `${count} attachments`);
  });
  // Ten is within the bound: refused as binary, the connection stays.
  const { raw } = await connected({ userId: "bin-ten" });
  const ten = Array.from({ length: 10 }, (_, i) => `{"_placeholder":true,"num":${i}}`);
  raw.send(`4510-3["x",${ten.join(",")}]`);
  for (let i = 0; i < 10; i++) raw.send(Buffer.from([i]));
  await raw.expect(`42["dialogue:error",${JSON.stringify({ code: "INVALID_REQUEST", message: BINARY_REFUSED })}]`);
  await raw.expect(`433[${JSON.stringify({ ok: false, code: "INVALID_REQUEST", message: BINARY_REFUSED })}]`);
  raw.close();
});

test("binary: malformed attachment counts close the connection (reference: Illegal attachments)", async () => {
  await eachCase(['45["x"]', '45a-["x"]', '45-1-["x"]', '451["x",{"_placeholder":true,"num":0}]'], async (bad) => {
    const { raw } = await connected({ userId: "bin-bad" });
    raw.send(bad);
    await raw.expectClosed(2000, bad);
  });
});

test("binary: zero attachments is a legal count: a binary event is refused, a binary ack ignored", async () => {
  // socket.io-parser decodeString() accepts `0-` (a non-negative integer); the server refuses
  // binary events (README), and ignores acks for ids it never asked for, as it does `43…`.
  const { raw } = await connected({ userId: "bin-zero" });
  raw.send('450-7["x"]');
  await raw.expect(`42["dialogue:error",${JSON.stringify({ code: "INVALID_REQUEST", message: BINARY_REFUSED })}]`);
  await raw.expect(`437[${JSON.stringify({ ok: false, code: "INVALID_REQUEST", message: BINARY_REFUSED })}]`);
  raw.send("460-1[]");
  raw.send('421["dialogue:listRooms"]');
  const rooms = await raw.next(3000);
  assert.ok(rooms.startsWith('42["dialogue:rooms"'), `the connection stays and serves: ${rooms}`);
  raw.close();
});

test("binary: a binary frame that no BINARY packet announced closes the connection", async () => {
  const { raw } = await connected({ userId: "bin-stray" });
  raw.send(Buffer.from([1, 2, 3]));
  await raw.expectClosed(2000, "stray binary frame");
});

test("binary: a text packet while attachments are due closes the connection (reference parser)", async () => {
  // socket.io-parser Decoder.add(): "got plaintext data when reconstructing a packet".
  const { raw } = await connected({ userId: "bin-interleave" });
  raw.send('451-["x",{"_placeholder":true,"num":0}]');
  raw.send('42["dialogue:listRooms"]');
  await raw.expectClosed(2000, "text frame during attachments");
});
