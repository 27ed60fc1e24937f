// Connection-state recovery edge cases (tests/recovery.rs), each a bug found in review:
// a room whose events keep no history is restored too; a recovered JWT session still ends
// when its token expires; a restored room that refuses the member says so (dialogue:left).
import { test } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { rconnect, post, sleep } from "./recovery-helpers.mjs";

const MODE = process.env.EDGE_MODE ?? "open";

if (MODE === "open") {
  test("a room without history events is restored: live events reach the recovered session", async () => {
    const writer = await rconnect("typing-writer");
    assert.equal((await writer.request("dialogue:join", { roomId: "r4" })).ok, true);
    const reader = await rconnect("typing-reader");
    assert.equal((await reader.request("dialogue:join", { roomId: "r4" })).ok, true);
    const next = reader.nextConnect();
    reader.socket.io.engine.close();
    const c = await next;
    assert.equal(c.recovered, true, JSON.stringify(reader.connects));
    // Requests are answered once the rooms are restored.
    assert.equal((await reader.request("dialogue:listRooms", {})).ok, true);
    await post(writer, "r4", "typing", { who: "w" });
    const got = await reader.waitFor("dialogue:event", (e) => e.roomId === "r4" && e.event === "typing");
    assert.equal(got.data.who, "w");
    // Still a member: its own trigger is accepted.
    assert.equal((await reader.request("dialogue:trigger", { roomId: "r4", event: "typing", data: {} })).ok, true);
    writer.close();
    reader.close();
  });

  test("a restored room that refuses the member (full now) is left with dialogue:left and the error", async () => {
    const a = await rconnect("full-a");
    assert.equal((await a.request("dialogue:join", { roomId: "small" })).ok, true);
    await a.cut({ reconnect: false });
    // While a is away, its place is taken (the server has not seen the cut yet, or it has:
    // either way the room is full of others once a comes back).
    await sleep(300);
    const b = await rconnect("full-b");
    assert.equal((await b.request("dialogue:join", { roomId: "small" })).ok, true);
    const back = await a.comeBack();
    assert.equal(back.recovered, true);
    const left = await a.waitFor("dialogue:left", (e) => e.roomId === "small");
    assert.equal(left.roomId, "small");
    const error = await a.waitFor("dialogue:error", (e) => e.code === "ROOM_FULL");
    assert.match(error.message, /full/);
    const r = await a.request("dialogue:trigger", { roomId: "small", event: "message", data: {} });
    assert.equal(r.code, "NOT_IN_ROOM", JSON.stringify(r));
    a.close();
    b.close();
  });
}

if (MODE === "open") {
  test("a client that disconnects on purpose (socket.disconnect()) ends its session: connecting again is a new one", async () => {
    const c = await rconnect("leaver");
    assert.equal((await c.request("dialogue:join", { roomId: "r2" })).ok, true);
    const pid = c.pid;
    c.socket.disconnect(); // sends 41: the client left
    await sleep(300);
    assert.equal(c.socket._pid, pid, "the client still presents its pid");
    const back = await c.comeBack();
    assert.equal(back.recovered, false, JSON.stringify(c.connects));
    assert.notEqual(c.pid, pid);
    const r = await c.request("dialogue:trigger", { roomId: "r2", event: "message", data: {} });
    assert.equal(r.code, "NOT_IN_ROOM", "the old session's room is not joined");
    c.close();
  });
}

if (MODE === "streams") {
  test("a session sent more than recovery.maxStreams streams stops carrying offsets and is not recovered", async () => {
    const writer = await rconnect("streams-writer");
    const reader = await rconnect("streams-reader");
    for (const c of [writer, reader]) {
      for (const room of ["r1", "r2"]) assert.equal((await c.request("dialogue:join", { roomId: room })).ok, true);
    }
    // maxStreams is 2: r1/message and r1/note fit, r2/message is one too many.
    for (const [room, event] of [["r1", "message"], ["r1", "note"]]) {
      const seq = await post(writer, room, event, {});
      await reader.waitFor("dialogue:event", (e) => e.roomId === room && e.event === event && e.seq === seq);
    }
    assert.equal(typeof reader.raw.at(-1).args.at(-1), "string", "offsets while within the bound");
    const seq = await post(writer, "r2", "message", {});
    await reader.waitFor("dialogue:event", (e) => e.roomId === "r2" && e.seq === seq);
    const last = reader.raw.filter((r) => r.event === "dialogue:event").at(-1);
    assert.equal(last.args.length, 1, "no offset beyond maxStreams");
    await sleep(300);
    const next = reader.nextConnect();
    reader.socket.io.engine.close();
    assert.equal((await next).recovered, false, JSON.stringify(reader.connects));
    writer.close();
    reader.close();
  });
}

if (MODE === "jwt") {
  const SECRET = "recovery-secret-0123456789abcdef0123456789";
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const sign = (claims) => {
    const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
    return `${body}.${crypto.createHmac("sha256", SECRET).update(body).digest("base64url")}`;
  };

  test("a recovered JWT session still ends when its token expires", async () => {
    const exp = Math.floor(Date.now() / 1000) + 3;
    const reader = await rconnect(undefined, { auth: { token: sign({ sub: "jwt-reader", exp }) } });
    assert.equal((await reader.request("dialogue:join", { roomId: "r2" })).ok, true);
    const next = reader.nextConnect();
    reader.socket.io.engine.close();
    const c = await next;
    assert.equal(c.recovered, true, JSON.stringify(reader.connects));
    const gone = new Promise((resolve) => reader.socket.once("disconnect", resolve));
    const why = await Promise.race([gone, sleep(8000).then(() => "still connected 5 s after exp")]);
    assert.equal(why, "io server disconnect");
    const error = reader.all("dialogue:error").find((e) => e.code === "PERMISSION_DENIED");
    assert.ok(error, "told why");
    reader.close();
  });
}
