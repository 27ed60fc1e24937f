// Socket.IO compatibility: the seed's client flow with the official socket.io-client using
// default options (HTTP long-polling, then the upgrade to WebSocket), WebSocket only and
// polling only; the polling transport's HTTP rules; CORS.
import { test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { URL, Client, sleep, eventually } from "./helpers.mjs";

async function connectWith(userId, opts) {
  const socket = io(URL, { auth: { userId }, reconnection: false, forceNew: true, ...opts });
  const client = new Client(socket);
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
  return client;
}

const transports = {
  "default options (polling, then upgrade)": {},
  "websocket only": { transports: ["websocket"] },
  "polling only": { transports: ["polling"] },
};

for (const [name, opts] of Object.entries(transports)) {
  test(`seed client flow: ${name}`, async () => {
    const tag = name.split(" ")[0];
    const other = await connectWith(`other-${tag}`, { transports: ["websocket"] });
    await other.waitFor("dialogue:joined");
    await other.request("dialogue:trigger", { roomId: "general", event: "message", data: { text: `before ${tag}`, username: "o" } });

    const me = await connectWith(`me-${tag}`, opts);
    // autoJoin + syncHistoryOnJoin: joined, then recent history including the message above.
    const connected = await me.waitFor("dialogue:connected");
    assert.equal(connected.userId, `me-${tag}`);
    await me.waitFor("dialogue:joined", (j) => j.roomId === "general");
    const h = await me.waitFor("dialogue:history", (h) => h.roomId === "general");
    assert.ok(h.events.some((e) => e.data.text === `before ${tag}`));

    if (name.startsWith("default")) {
      await eventually(() => me.socket.io.engine.transport.name === "websocket", 5000, "upgrade");
    }
    // Receive from another client, trigger, page back, errors, leave.
    await other.request("dialogue:trigger", { roomId: "general", event: "message", data: { text: `hello ${tag}`, username: "o" } });
    const e = await me.waitFor("dialogue:event", (e) => e.data.text === `hello ${tag}`);
    assert.equal(e.from, `other-${tag}`);
    const mine = await me.request("dialogue:trigger", { roomId: "general", event: "message", data: { text: `mine ${tag}`, username: "m" } });
    assert.equal(mine.ok, true);
    await other.waitFor("dialogue:event", (e) => e.data.text === `mine ${tag}`);
    const page = await me.request("dialogue:getHistory", { roomId: "general", eventName: "message", start: 0, end: 3 });
    assert.deepEqual(page.events.map((e) => e.data.text).slice(0, 2), [`mine ${tag}`, `hello ${tag}`]);
    const unknown = await me.request("dialogue:join", { roomId: "no-such-room" });
    assert.equal(unknown.code, "ROOM_NOT_FOUND");
    const invalid = await me.request("dialogue:trigger", { roomId: "general", event: "message", data: { text: "" } });
    assert.equal(invalid.code, "VALIDATION_FAILED");
    assert.equal((await me.request("dialogue:leave", { roomId: "general" })).ok, true);
    await me.waitFor("dialogue:left");
    me.close();
    other.close();
  });
}

test("socket.io-client: events stay contiguous through connect and upgrade", async () => {
  const sender = await connectWith("burst-sender", { transports: ["websocket"] });
  await sender.waitFor("dialogue:joined");
  // A steady stream of events; the receiver connects (polling) and upgrades in the middle.
  let sending = true;
  let lastSeq = 0;
  const stream = (async () => {
    for (let i = 0; sending && i < 2000; i++) {
      const r = await sender.request("dialogue:trigger", { roomId: "general", event: "message", data: { text: `burst ${i}`, username: "s" } });
      lastSeq = r.seq;
      await sleep(1);
    }
  })();
  await sleep(100);
  const me = await connectWith("burst-receiver", {}); // default options: polling, then upgrade
  // (The raw test below places the switch mid-stream deterministically; here the client
  // decides when to upgrade, often before its first event.)
  await eventually(() => me.socket.io.engine.transport.name === "websocket", 5000, "upgrade");
  await sleep(300); // more events after the switch
  sending = false;
  await stream;
  await eventually(() => me.all("dialogue:event").some((e) => e.seq === lastSeq), 5000, "last event");
  const seqs = me.all("dialogue:event").filter((e) => e.data.text.startsWith("burst ")).map((e) => e.seq);
  const expected = Array.from({ length: lastSeq - seqs[0] + 1 }, (_, i) => seqs[0] + i);
  assert.deepEqual(seqs, expected, "contiguous: nothing lost, duplicated or reordered");
  me.close();
  sender.close();
});

test("every client event with an ack id gets exactly one ack", async () => {
  const c = await connectWith("acker", { transports: ["polling"] });
  await c.waitFor("dialogue:joined");
  const acks = await Promise.all(
    Array.from({ length: 30 }, (_, i) =>
      c.request(i % 3 === 0 ? "dialogue:listRooms" : i % 3 === 1 ? "dialogue:join" : "dialogue:getHistory",
        i % 3 === 1 ? { roomId: "nope" } : { roomId: "general", eventName: "message" })),
  );
  assert.equal(acks.length, 30);
  assert.ok(acks.every((a) => typeof a.ok === "boolean"));
  c.close();
});

// ---------------------------------------------------------------- raw HTTP polling

const poll = (query, init) => fetch(`${URL}/socket.io/?${query}`, init);

async function handshake() {
  const res = await poll("EIO=4&transport=polling");
  assert.equal(res.status, 200);
  const body = await res.text();
  assert.equal(body[0], "0");
  const open = JSON.parse(body.slice(1));
  assert.deepEqual(open.upgrades, ["websocket"]);
  return open.sid;
}

test("polling: bad EIO, transport, sid or method get HTTP 400", async () => {
  for (const q of ["EIO=3&transport=polling", "transport=polling", "EIO=4&transport=carrier-pigeon", "EIO=4"]) {
    const res = await poll(q);
    assert.equal(res.status, 400, q);
    assert.equal(typeof (await res.json()).message, "string");
  }
  const unknown = await poll("EIO=4&transport=polling&sid=nope");
  assert.equal(unknown.status, 400);
  assert.deepEqual(await unknown.json(), { code: 1, message: "Session ID unknown" });
  assert.equal((await poll("EIO=4&transport=polling&sid=nope", { method: "POST", body: "40" })).status, 400);
  // As the reference server: any method but GET/POST is a bad handshake (400, not 405).
  const put = await poll("EIO=4&transport=polling", { method: "PUT", body: "x" });
  assert.equal(put.status, 400);
  assert.deepEqual(await put.json(), { code: 2, message: "Bad handshake method" });
  assert.equal((await poll("EIO=4&transport=polling", { method: "POST", body: "40" })).status, 400);
});

test("polling: packets joined by \\x1e, ok for POST, one session end to end", async () => {
  const sid = await handshake();
  const res = await poll(`EIO=4&transport=polling&sid=${sid}`, { method: "POST", body: '40{"userId":"raw"}\x1e42["dialogue:listRooms"]' });
  assert.equal(res.status, 200);
  assert.equal(await res.text(), "ok");
  const packets = [];
  while (!packets.some((p) => p.startsWith('42["dialogue:rooms"'))) {
    const body = await (await poll(`EIO=4&transport=polling&sid=${sid}`)).text();
    packets.push(...body.split("\x1e"));
  }
  assert.match(packets[0], /^40\{"sid":"/);
  assert.ok(packets.some((p) => p.startsWith('42["dialogue:connected",{"clientId":')));
  // Base64 binary packets are refused with an error, and the session stays.
  await poll(`EIO=4&transport=polling&sid=${sid}`, { method: "POST", body: '451-["dialogue:trigger",{"_placeholder":true,"num":0}]\x1ebAQID' });
  const body = await (await poll(`EIO=4&transport=polling&sid=${sid}`)).text();
  assert.match(body, /"INVALID_REQUEST"/);
  assert.match(body, /binary/);
  await poll(`EIO=4&transport=polling&sid=${sid}`, { method: "POST", body: "1" });
});

test("polling: a second concurrent GET is refused and closes the session", async () => {
  const sid = await handshake();
  await poll(`EIO=4&transport=polling&sid=${sid}`, { method: "POST", body: "40" });
  await (await poll(`EIO=4&transport=polling&sid=${sid}`)).text(); // 40 + connected
  for (let attempt = 0; attempt < 5; attempt++) {
    const first = poll(`EIO=4&transport=polling&sid=${sid}`); // waits: nothing queued
    await sleep(30);
    const second = await poll(`EIO=4&transport=polling&sid=${sid}`);
    if (second.status === 200) {
      // A heartbeat ping ended the first GET before the second came: not concurrent.
      await (await first).text();
      await poll(`EIO=4&transport=polling&sid=${sid}`, { method: "POST", body: "3" });
      continue;
    }
    assert.equal(second.status, 400);
    const firstBody = await (await first).text();
    assert.match(firstBody, /(^|\x1e)1$/, "the waiting GET ends with a close packet");
    await eventually(async () => (await poll(`EIO=4&transport=polling&sid=${sid}`)).status === 400, 3000, "session closed");
    return;
  }
  assert.fail("never managed two concurrent GETs");
});

test("raw upgrade in the middle of a stream: no packet lost, duplicated or reordered", async () => {
  const sender = await connectWith("raw-up-sender", { transports: ["websocket"] });
  await sender.waitFor("dialogue:joined");
  const sid = await handshake();
  const url = `EIO=4&transport=polling&sid=${sid}`;
  await poll(url, { method: "POST", body: '40{"userId":"raw-up"}' });
  const viaPolling = [];
  let polling = true;
  const pollLoop = (async () => {
    while (polling) {
      const body = await (await poll(url)).text();
      for (const p of body.split("\x1e")) {
        if (p === "2") await poll(url, { method: "POST", body: "3" });
        else viaPolling.push(p);
      }
    }
  })();
  let sending = true;
  let lastSeq = 0;
  const stream = (async () => {
    for (let i = 0; sending && i < 3000; i++) {
      lastSeq = (await sender.request("dialogue:trigger", { roomId: "general", event: "message", data: { text: `raw ${i}`, username: "s" } })).seq;
      await sleep(1);
    }
  })();
  await eventually(() => viaPolling.some((p) => p.startsWith('42["dialogue:event"')), 5000, "events over polling");

  const { default: WebSocket } = await import("ws");
  const ws = new WebSocket(URL.replace(/^http/, "ws") + `/socket.io/?EIO=4&transport=websocket&sid=${sid}`);
  const viaWs = [];
  ws.on("message", (data) => {
    const p = data.toString();
    if (p === "2") ws.send("3");
    else viaWs.push(p);
  });
  await new Promise((resolve, reject) => { ws.once("open", resolve); ws.once("error", reject); });
  ws.send("2probe");
  await eventually(() => viaWs.includes("3probe"), 3000, "3probe");
  polling = false; // pause polling: the pending GET is ended by the server with a noop
  await pollLoop;
  ws.send("5");
  await sleep(300);
  sending = false;
  await stream;
  const seqOf = (p) => (p.startsWith('42["dialogue:event"') ? JSON.parse(p.slice(2))[1].seq : null);
  await eventually(() => viaWs.some((p) => seqOf(p) === lastSeq), 5000, "last event over websocket");
  const before = viaPolling.map(seqOf).filter((s) => s !== null);
  const after = viaWs.map(seqOf).filter((s) => s !== null);
  assert.ok(before.length > 0 && after.length > 0, `${before.length} via polling, ${after.length} via websocket`);
  const all = [...before, ...after];
  assert.deepEqual(all, Array.from({ length: all.length }, (_, i) => all[0] + i), "contiguous across the switch");
  assert.ok(viaPolling.includes("6"), "the paused GET was ended with a noop");
  // After the upgrade the session no longer polls.
  assert.equal((await poll(url)).status, 400);
  ws.close();
  sender.close();
});

test("polling: garbage and oversized POST bodies close that session only", async () => {
  const bystander = await connectWith("bystander", { transports: ["polling"] });
  await bystander.waitFor("dialogue:joined");
  for (const body of ["garbage", '42{"not":"array"}', "4", "\x1e\x1e"]) {
    const sid = await handshake();
    await poll(`EIO=4&transport=polling&sid=${sid}`, { method: "POST", body: "40" });
    const res = await poll(`EIO=4&transport=polling&sid=${sid}`, { method: "POST", body });
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.equal((await poll(`EIO=4&transport=polling&sid=${sid}`)).status, 400);
  }
  const sid = await handshake();
  const huge = await poll(`EIO=4&transport=polling&sid=${sid}`, { method: "POST", body: "4" + "x".repeat(200_000) });
  assert.equal(huge.status, 413);
  await eventually(async () => (await poll(`EIO=4&transport=polling&sid=${sid}`)).status === 400, 3000, "closed");
  // A flood of handshakes and polls: each answered, the server carries on.
  const flood = await Promise.all(Array.from({ length: 100 }, () => poll("EIO=4&transport=polling").then((r) => r.status)));
  assert.ok(flood.every((s) => s === 200));
  const r = await bystander.request("dialogue:trigger", { roomId: "general", event: "message", data: { text: "still here", username: "b" } });
  assert.equal(r.ok, true);
  bystander.close();
});

test("polling: abandoned sessions are reaped after the ping timeout", async () => {
  const sid = await handshake();
  await poll(`EIO=4&transport=polling&sid=${sid}`, { method: "POST", body: "40" });
  // No more polls, no pongs: pingInterval 300 + pingTimeout 1000 in this server's config (a
  // tighter timeout drops live sessions of a busy test machine).
  await sleep(2500);
  assert.equal((await poll(`EIO=4&transport=polling&sid=${sid}`)).status, 400);
});

test("CORS: preflight and credentials for browsers", async () => {
  const pre = await poll("EIO=4&transport=polling", {
    method: "OPTIONS",
    headers: { Origin: "http://app.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type" },
  });
  assert.ok(pre.status === 200 || pre.status === 204, `preflight ${pre.status}`);
  assert.equal(pre.headers.get("access-control-allow-origin"), "http://app.example");
  assert.equal(pre.headers.get("access-control-allow-credentials"), "true");
  const get = await poll("EIO=4&transport=polling", { headers: { Origin: "http://app.example" } });
  assert.equal(get.headers.get("access-control-allow-origin"), "http://app.example");
  assert.equal(get.headers.get("access-control-allow-credentials"), "true");
});
