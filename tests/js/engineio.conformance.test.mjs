// Engine.IO v4 conformance, packet by packet, with a raw client: plain `node:http` requests
// for the polling transport and the `ws` package for WebSocket (no socket.io-client).
//
// Source: the Engine.IO protocol, 4th revision (socketio/engine.io-protocol, README "Transports",
// "Protocol", "Packet encoding", "History"), and where the document leaves a detail open (error
// bodies, what answers a pending GET) the reference server socketio/engine.io (lib/server.ts
// `verify`/`handshake`, lib/socket.ts, lib/transports/polling.ts) is the reference.
//
// The server under test runs with pingInterval 300, pingTimeout 200, connectTimeout 1000,
// maxPayload at its default (1000000); see tests/conformance.rs.
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import WebSocket from "ws";

const URL_ = process.env.DIALOGUE_URL;
if (!URL_) throw new Error("DIALOGUE_URL is not set (run through cargo test)");
const { hostname: HOST, port: PORT } = new URL(URL_);

const PING_INTERVAL = 300;
const PING_TIMEOUT = 200;
const MAX_PAYLOAD = 1000000;
const SEP = "\x1e";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------------------ raw HTTP

/** One HTTP request on its own connection: `{status, headers, body}` (body as a string). */
function request(method, query, body, timeoutMs = 3000) {
  return new Promise((resolve, reject) => {
    const headers = {};
    if (body !== undefined) {
      headers["content-type"] = "text/plain;charset=UTF-8";
      headers["content-length"] = Buffer.byteLength(body);
    }
    const req = http.request(
      { host: HOST, port: PORT, method, path: `/socket.io/?${query}`, headers, agent: false },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => {
          clearTimeout(timer);
          resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") });
        });
        res.on("error", (e) => {
          clearTimeout(timer);
          reject(e);
        });
      },
    );
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error(`${method} ?${query} got no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    req.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    if (body !== undefined) req.write(body);
    req.end();
  });
}

const pollQuery = (sid) => `EIO=4&transport=polling&sid=${encodeURIComponent(sid)}`;
const get = (sid, timeoutMs) => request("GET", pollQuery(sid), undefined, timeoutMs);
const post = (sid, body, timeoutMs) => request("POST", pollQuery(sid), body, timeoutMs);

/** The reference server's error answer: HTTP 400, `application/json`, `{"code":…,"message":…}`. */
function assertEioError(res, code, message, what) {
  assert.equal(res.status, 400, `${what}: status (body ${JSON.stringify(res.body)})`);
  assert.match(String(res.headers["content-type"]), /^application\/json/, `${what}: content-type`);
  assert.equal(res.body, JSON.stringify({ code, message }), `${what}: body`);
}

const OPEN_POLLING = new RegExp(
  `^0\\{"sid":"([^"]+)","upgrades":\\["websocket"\\],"pingInterval":${PING_INTERVAL},"pingTimeout":${PING_TIMEOUT},"maxPayload":${MAX_PAYLOAD}\\}$`,
);
const OPEN_WEBSOCKET = new RegExp(
  `^0\\{"sid":"([^"]+)","upgrades":\\[\\],"pingInterval":${PING_INTERVAL},"pingTimeout":${PING_TIMEOUT},"maxPayload":${MAX_PAYLOAD}\\}$`,
);

/** A polling handshake: the sid. */
async function handshake() {
  const res = await request("GET", "EIO=4&transport=polling");
  assert.equal(res.status, 200, res.body);
  const m = OPEN_POLLING.exec(res.body);
  assert.ok(m, `open packet: ${JSON.stringify(res.body)}`);
  return m[1];
}

/**
 * GETs until `pred(packets)` holds (every packet received so far, in order), answering each
 * ping with a pong (unless `pong` is false). Returns the packets.
 */
async function pollUntil(sid, pred, { timeoutMs = 3000, pong = true, packets = [] } = {}) {
  const end = Date.now() + timeoutMs;
  while (!pred(packets)) {
    const left = end - Date.now();
    if (left <= 0) throw new Error(`timed out polling; packets so far: ${JSON.stringify(packets)}`);
    const res = await get(sid, left + 500);
    assert.equal(res.status, 200, `GET during the session: ${res.body}`);
    const got = res.body.split(SEP);
    packets.push(...got);
    if (pong && got.includes("2")) {
      const p = await post(sid, "3");
      assert.equal(p.status, 200, `POST 3: ${p.body}`);
    }
  }
  return packets;
}

/** Polling session that sent the Socket.IO CONNECT (so connectTimeout does not end it). */
async function connectedPolling() {
  const sid = await handshake();
  const res = await post(sid, "40");
  assert.equal(res.status, 200, res.body);
  await pollUntil(sid, (p) => p.some((x) => x.startsWith("40{")));
  return sid;
}

// ------------------------------------------------------------------------------ raw WebSocket

/** A raw WebSocket on /socket.io/ with `query`; frames are queued as {text} or {binary}. */
function openSocket(query = "EIO=4&transport=websocket") {
  const ws = new WebSocket(`${URL_.replace(/^http/, "ws")}/socket.io/?${query}`);
  const frames = [];
  let wake = null;
  const self = { autoPong: false };
  ws.on("message", (data, isBinary) => {
    // Keeps the session alive while a test waits on something else.
    if (self.autoPong && !isBinary && data.toString("utf8") === "2") ws.send("3");
    frames.push(isBinary ? { binary: Buffer.from(data) } : { text: data.toString("utf8") });
    if (wake) wake();
  });
  ws.on("error", () => {});
  const closed = new Promise((resolve) => ws.on("close", (code) => resolve({ code, at: Date.now() })));
  const opened = new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("unexpected-response", (req, res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        reject(Object.assign(new Error(`HTTP ${res.statusCode}`), {
          status: res.statusCode,
          headers: res.headers,
          body: Buffer.concat(chunks).toString("utf8"),
        }));
        req.destroy();
      });
    });
    ws.once("error", reject);
  });
  let isClosed = false;
  closed.then(() => {
    isClosed = true;
    if (wake) wake();
  });
  /** The next frame (consumed), or a rejection after `ms`. */
  async function next(ms = 2000) {
    const end = Date.now() + ms;
    while (frames.length === 0) {
      if (isClosed) throw new Error("socket closed while waiting for a frame");
      const left = end - Date.now();
      if (left <= 0) throw new Error(`no frame within ${ms} ms`);
      await new Promise((r) => {
        wake = r;
        setTimeout(r, Math.min(left, 50));
      });
      wake = null;
    }
    return frames.shift();
  }
  /** The next text frame satisfying `pred` (earlier ones are dropped; pings answered if asked). */
  async function nextText(pred, ms = 2000, { pong = true } = {}) {
    const end = Date.now() + ms;
    for (;;) {
      const f = await next(Math.max(1, end - Date.now()));
      if (f.text === "2" && pong && !pred(f.text)) ws.send("3");
      if (f.text !== undefined && pred(f.text)) return f.text;
    }
  }
  return Object.assign(self, { ws, frames, next, nextText, closed, opened, isClosed: () => isClosed });
}

/** Resolves with true if `promise` settles within `ms`, else false. */
async function within(promise, ms) {
  let timer;
  const t = new Promise((r) => (timer = setTimeout(() => r(false), ms)));
  const r = await Promise.race([promise.then(() => true, () => true), t]);
  clearTimeout(timer);
  return r;
}

// =============================================================================== tests

describe("handshake (protocol: Transports > HTTP long-polling / WebSocket; Protocol > Handshake)", () => {
  test("polling handshake answers exactly 0{sid,upgrades:[websocket],pingInterval,pingTimeout,maxPayload} as text/plain", async () => {
    const res = await request("GET", "EIO=4&transport=polling");
    assert.equal(res.status, 200);
    assert.match(String(res.headers["content-type"]), /^text\/plain; ?charset=UTF-8$/i);
    assert.match(res.body, OPEN_POLLING);
    // Each handshake is a new session with its own sid.
    const other = await request("GET", "EIO=4&transport=polling");
    assert.notEqual(OPEN_POLLING.exec(other.body)[1], OPEN_POLLING.exec(res.body)[1]);
  });

  test("WebSocket handshake: the first frame is the text frame 0{…,upgrades:[],…}", async () => {
    const s = openSocket();
    await s.opened;
    const f = await s.next();
    assert.equal(f.binary, undefined, "the open packet is a text frame");
    assert.match(f.text, OPEN_WEBSOCKET);
    s.ws.close();
  });

  test("missing EIO → 400 {code:5,message:Unsupported protocol version}", async () => {
    assertEioError(await request("GET", "transport=polling"), 5, "Unsupported protocol version", "no EIO");
  });

  test("EIO=3 → 400 {code:5,message:Unsupported protocol version}", async () => {
    assertEioError(await request("GET", "EIO=3&transport=polling"), 5, "Unsupported protocol version", "EIO=3");
  });

  test("EIO=abc → 400 {code:5,message:Unsupported protocol version}", async () => {
    assertEioError(await request("GET", "EIO=abc&transport=polling"), 5, "Unsupported protocol version", "EIO=abc");
  });

  test("unknown transport → 400 {code:0,message:Transport unknown}", async () => {
    assertEioError(await request("GET", "EIO=4&transport=flashsocket"), 0, "Transport unknown", "transport=flashsocket");
  });

  test("missing transport → 400 {code:0,message:Transport unknown}", async () => {
    assertEioError(await request("GET", "EIO=4"), 0, "Transport unknown", "no transport");
  });

  test("unknown sid (GET and POST) → 400 {code:1,message:Session ID unknown}", async () => {
    assertEioError(await get("no-such-sid"), 1, "Session ID unknown", "GET unknown sid");
    assertEioError(await post("no-such-sid", "3"), 1, "Session ID unknown", "POST unknown sid");
  });

  test("WebSocket with an unknown sid → HTTP 400 {code:1,message:Session ID unknown}", async () => {
    const s = openSocket("EIO=4&transport=websocket&sid=no-such-sid");
    const err = await s.opened.then(() => null, (e) => e);
    assert.ok(err && err.status, `the upgrade must be refused with an HTTP answer, got ${err}`);
    assertEioError(err, 1, "Session ID unknown", "WebSocket unknown sid");
  });

  test("WebSocket with EIO=3 → HTTP 400 {code:5,message:Unsupported protocol version}", async () => {
    const s = openSocket("EIO=3&transport=websocket");
    const err = await s.opened.then(() => null, (e) => e);
    assert.ok(err && err.status, `the upgrade must be refused with an HTTP answer, got ${err}`);
    assertEioError(err, 5, "Unsupported protocol version", "WebSocket EIO=3");
  });

  test("transport=websocket without an Upgrade (plain GET) → 400 {code:3,message:Bad request}", async () => {
    assertEioError(await request("GET", "EIO=4&transport=websocket"), 3, "Bad request", "plain GET transport=websocket");
  });

  test("a polling GET with the sid of a WebSocket session → 400 {code:3,message:Bad request} (transport mismatch)", async () => {
    const s = openSocket();
    await s.opened;
    const sid = OPEN_WEBSOCKET.exec((await s.next()).text)[1];
    assertEioError(await get(sid), 3, "Bad request", "GET polling with a WebSocket sid");
    s.ws.close();
  });

  test("PUT without sid → 400 {code:2,message:Bad handshake method}", async () => {
    assertEioError(await request("PUT", "EIO=4&transport=polling", "x"), 2, "Bad handshake method", "PUT");
  });

  test("DELETE without sid → 400 {code:2,message:Bad handshake method}", async () => {
    assertEioError(await request("DELETE", "EIO=4&transport=polling"), 2, "Bad handshake method", "DELETE");
  });

  test("POST without sid → 400 {code:2,message:Bad handshake method}", async () => {
    assertEioError(await request("POST", "EIO=4&transport=polling", "40"), 2, "Bad handshake method", "POST");
  });
});

describe("message framing (protocol: Packet encoding > HTTP long-polling / WebSocket)", () => {
  test("POST is answered 200 'ok'; a POST body of several packets joined by \\x1e is split", async () => {
    const sid = await handshake();
    // noop, then the Socket.IO CONNECT: only a correct split lets the CONNECT through.
    const res = await post(sid, `6${SEP}40`);
    assert.equal(res.status, 200, res.body);
    assert.equal(res.body, "ok");
    const packets = await pollUntil(sid, (p) => p.some((x) => x.startsWith("40{")));
    assert.match(packets.find((x) => x.startsWith("40")), /^40\{"sid":"[^"]+"(,"pid":"[0-9a-f]{64}")?\}$/);
  });

  test("a GET payload carries several packets joined by \\x1e, each a whole packet", async () => {
    const sid = await handshake();
    assert.equal((await post(sid, "40")).status, 200);
    // The CONNECT reply and the dialogue:connected event: wait until both were sent, then
    // collect them in one GET.
    await sleep(100);
    const res = await get(sid);
    assert.equal(res.status, 200);
    const packets = res.body.split(SEP);
    assert.ok(packets.length >= 2, `several packets in one payload: ${JSON.stringify(res.body)}`);
    for (const p of packets) assert.match(p, /^[0-6]/, `each packet starts with its type: ${JSON.stringify(p)}`);
    assert.match(packets[0], /^40\{"sid":"[^"]+"(,"pid":"[0-9a-f]{64}")?\}$/);
    assert.ok(packets.some((p) => p.startsWith('42["dialogue:connected",')), JSON.stringify(packets));
    await post(sid, "1");
  });

  test("a binary packet over polling is b<base64> (taken as one binary attachment)", async () => {
    const sid = await connectedPolling();
    // A BINARY_EVENT with one attachment, the attachment as `b` + base64 of [1,2,3], in one POST.
    const body = `451-7["dialogue:trigger",{"_placeholder":true,"num":0}]${SEP}bAQID`;
    const res = await post(sid, body);
    assert.equal(res.status, 200, res.body);
    assert.equal(res.body, "ok");
    const packets = await pollUntil(sid, (p) => p.some((x) => x.startsWith("437[")));
    assert.match(packets.find((x) => x.startsWith("437[")), /^437\[\{"ok":false,"code":"INVALID_REQUEST",/);
    // The session is still there.
    const alive = await post(sid, "6");
    assert.equal(alive.status, 200, alive.body);
    await post(sid, "1");
  });

  test("over WebSocket every text frame is one packet; a binary frame is a binary message packet", async () => {
    const s = openSocket();
    await s.opened;
    assert.match((await s.next()).text, OPEN_WEBSOCKET);
    s.ws.send("40");
    const connect = await s.nextText((t) => t.startsWith("40"));
    assert.match(connect, /^40\{"sid":"[^"]+"(,"pid":"[0-9a-f]{64}")?\}$/, "the CONNECT reply alone in its frame");
    const connected = await s.nextText((t) => t.startsWith("42"));
    assert.ok(!connected.includes(SEP), "no \\x1e payloads over WebSocket");
    assert.match(connected, /^42\["dialogue:connected",/);
    s.ws.send('451-7["dialogue:trigger",{"_placeholder":true,"num":0}]');
    s.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    const ack = await s.nextText((t) => t.startsWith("437"));
    assert.match(ack, /^437\[\{"ok":false,"code":"INVALID_REQUEST",/);
    assert.equal(s.isClosed(), false);
    s.ws.close();
  });
});

describe("heartbeat (protocol: Protocol > Heartbeat)", () => {
  test("polling: the server sends 2 every pingInterval; answering 3 keeps the session alive", async () => {
    const sid = await connectedPolling();
    const pings = [];
    const started = Date.now();
    await pollUntil(
      sid,
      (p) => {
        const n = p.filter((x) => x === "2").length;
        while (pings.length < n) pings.push(Date.now());
        return Date.now() - started > 6 * PING_INTERVAL;
      },
      { timeoutMs: 10 * PING_INTERVAL },
    );
    assert.ok(pings.length >= 4, `pings in ${6 * PING_INTERVAL} ms: ${pings.length}`);
    for (let i = 1; i < pings.length; i++) {
      const gap = pings[i] - pings[i - 1];
      assert.ok(gap >= PING_INTERVAL / 2 && gap <= PING_INTERVAL * 3, `gap between pings: ${gap} ms`);
    }
    // Alive well past pingInterval + pingTimeout.
    const res = await post(sid, "6");
    assert.equal(res.status, 200, res.body);
    await post(sid, "1");
  });

  test("polling: without a 3 the session is closed after pingInterval + pingTimeout; the sid then gets 400", async () => {
    const sid = await connectedPolling();
    // Take the next ping without answering it.
    await pollUntil(sid, (p) => p.includes("2"), { pong: false, packets: [] });
    await sleep(PING_TIMEOUT + 300);
    assertEioError(await get(sid, 1000), 1, "Session ID unknown", "GET after a ping timeout");
    assertEioError(await post(sid, "3"), 1, "Session ID unknown", "POST after a ping timeout");
  });

  test("WebSocket: 2 every pingInterval, 3 keeps it open past several intervals", async () => {
    const s = openSocket();
    await s.opened;
    assert.match((await s.next()).text, OPEN_WEBSOCKET);
    s.ws.send("40");
    let pings = 0;
    const end = Date.now() + 6 * PING_INTERVAL;
    while (Date.now() < end) {
      const f = await s.next(3 * PING_INTERVAL).catch(() => null);
      if (!f) break;
      if (f.text === "2") {
        pings++;
        s.ws.send("3");
      }
    }
    assert.equal(s.isClosed(), false, "still open");
    assert.ok(pings >= 4, `pings: ${pings}`);
    s.ws.close();
  });

  test("WebSocket: without a 3 the socket is closed within pingTimeout of the ping", async () => {
    const s = openSocket();
    await s.opened;
    assert.match((await s.next()).text, OPEN_WEBSOCKET);
    s.ws.send("40");
    await s.nextText((t) => t === "2", 3 * PING_INTERVAL, { pong: false });
    const pingAt = Date.now();
    assert.ok(await within(s.closed, PING_TIMEOUT + 700), "closed after the missed pong");
    const { at } = await s.closed;
    assert.ok(at - pingAt >= PING_TIMEOUT - 50, `closed ${at - pingAt} ms after the ping, not before pingTimeout`);
  });
});

describe("close (protocol: Protocol > Disconnection)", () => {
  test("polling: POST 1 is answered 200 'ok'", async () => {
    const sid = await handshake();
    const res = await post(sid, "1");
    assert.equal(res.status, 200, res.body);
    assert.equal(res.body, "ok");
  });

  test("polling: after POST 1, GET and POST with the sid → 400 {code:1,message:Session ID unknown}", async () => {
    const sid = await handshake();
    await post(sid, "1");
    await sleep(100);
    assertEioError(await get(sid, 1000), 1, "Session ID unknown", "GET after close");
    assertEioError(await post(sid, "3"), 1, "Session ID unknown", "POST after close");
  });

  test("polling: a GET pending when POST 1 arrives is answered with the noop 6", async () => {
    const sid = await handshake();
    const pending = get(sid);
    await sleep(50); // the GET is waiting (the first ping is due only after pingInterval)
    await post(sid, "1");
    const res = await pending;
    assert.equal(res.status, 200, res.body);
    assert.equal(res.body, "6");
  });

  test("WebSocket: a 1 frame closes the socket", async () => {
    const s = openSocket();
    await s.opened;
    assert.match((await s.next()).text, OPEN_WEBSOCKET);
    s.ws.send("1");
    assert.ok(await within(s.closed, 1000), "the server closed the socket");
  });
});

describe("upgrade (protocol: Protocol > Upgrade)", () => {
  /** A polling session upgraded to WebSocket: {sid, s}. */
  async function upgraded() {
    const sid = await connectedPolling();
    const pending = get(sid);
    await sleep(20);
    const s = openSocket(`EIO=4&transport=websocket&sid=${sid}`);
    await s.opened;
    s.ws.send("2probe");
    const probe = await s.next();
    assert.equal(probe.text, "3probe", "the probe answer");
    // The GET pending during the probe ends with a noop (a ping may come first if one was due).
    const packets = (await pending).body.split(SEP);
    if (packets.includes("2")) await post(sid, "3");
    if (!packets.includes("6")) await pollUntil(sid, (p) => p.includes("6"), { timeoutMs: 1500, packets });
    s.ws.send("5");
    s.autoPong = true;
    await sleep(50);
    return { sid, s, packets };
  }

  test("2probe → 3probe, the pending GET is answered 6, then 5 upgrades: pings come over WebSocket", async () => {
    const { sid, s, packets } = await upgraded();
    assert.ok(packets.includes("6"), `noop during the upgrade: ${JSON.stringify(packets)}`);
    await s.nextText((t) => t === "2", 3 * PING_INTERVAL, { pong: false });
    s.ws.send("3");
    await s.nextText((t) => t === "2", 3 * PING_INTERVAL, { pong: false });
    s.ws.send("3");
    assert.equal(s.isClosed(), false);
    s.ws.send("1");
    await within(s.closed, 1000);
    void sid;
  });

  test("the GET pending when 2probe arrives is answered with exactly 6", async () => {
    const sid = await connectedPolling();
    // Start the GET right after a ping, so no other packet is due while probing.
    await pollUntil(sid, (p) => p.includes("2"), { packets: [] });
    const pending = get(sid);
    await sleep(20);
    const s = openSocket(`EIO=4&transport=websocket&sid=${sid}`);
    await s.opened;
    s.ws.send("2probe");
    assert.equal((await s.next()).text, "3probe");
    const res = await pending;
    assert.equal(res.status, 200);
    assert.equal(res.body, "6");
    s.ws.send("5");
    s.ws.send("1");
  });

  test("after the upgrade, polling GET and POST with the sid → 400", async () => {
    const { sid, s } = await upgraded();
    const g = await get(sid, 1000);
    assert.equal(g.status, 400, `GET after upgrade: ${g.body}`);
    const p = await post(sid, "3");
    assert.equal(p.status, 400, `POST after upgrade: ${p.body}`);
    s.ws.send("1");
  });

  test("after the upgrade, polling GET and POST with the sid → reference body {code:3,message:Bad request}", async () => {
    const { sid, s } = await upgraded();
    assertEioError(await get(sid, 1000), 3, "Bad request", "GET after upgrade");
    assertEioError(await post(sid, "3"), 3, "Bad request", "POST after upgrade");
    s.ws.send("1");
  });

  test("a second WebSocket with the upgraded sid: handshake accepted then closed; the first keeps working", async () => {
    const { sid, s } = await upgraded();
    const second = openSocket(`EIO=4&transport=websocket&sid=${sid}`);
    const err = await second.opened.then(() => null, (e) => e);
    assert.equal(err, null, `the handshake is accepted (101), got ${err && `${err.message} ${err.body}`}`);
    assert.ok(await within(second.closed, 1000), "the second socket is closed by the server");
    assert.deepEqual(second.frames.filter((f) => f.text && f.text.startsWith("0")), [], "no open packet on it");
    // The upgraded session still works: ping/pong over the first socket.
    await s.nextText((t) => t === "2", 3 * PING_INTERVAL, { pong: false });
    s.ws.send("3");
    await s.nextText((t) => t === "2", 3 * PING_INTERVAL, { pong: false });
    s.ws.send("3");
    assert.equal(s.isClosed(), false);
    s.ws.send("1");
  });

  test("a second WebSocket with the upgraded sid, refused or not, leaves the first working", async () => {
    const { sid, s } = await upgraded();
    const second = openSocket(`EIO=4&transport=websocket&sid=${sid}`);
    await second.opened.catch(() => {});
    await within(second.closed, 1000);
    await s.nextText((t) => t === "2", 3 * PING_INTERVAL, { pong: false });
    s.ws.send("3");
    await s.nextText((t) => t === "2", 3 * PING_INTERVAL, { pong: false });
    s.ws.send("3");
    assert.equal(s.isClosed(), false);
    s.ws.send("1");
  });
});
