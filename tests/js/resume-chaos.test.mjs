// Native resume through a chaos proxy (tests/common/proxy.rs) that cuts every connection after
// 0.3–1.5 s. Readers (stock socket.io-client, automatic reconnection) join two rooms and, on
// every reconnect, join again with `since` = the last seq they hold of each event. Writers,
// connected straight to the server, trigger two event types into both rooms meanwhile. Each
// reader must end with every event exactly once, in seq order per (room, event).
import { test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { URL, connect, sleep, eventually } from "./helpers.mjs";

const PROXY_URL = process.env.PROXY_URL;
const ROOMS = ["r1", "r2"];
const EVENTS = ["message", "note"];
const READERS = 6;
const SECONDS = Number(process.env.CHAOS_SECONDS ?? 8);

function reader(id) {
  const socket = io(PROXY_URL, {
    transports: ["websocket"],
    // Native resume is what this tests: connection-state recovery would restore the session
    // before the join with `since` (tests/recovery.rs covers that path).
    auth: { userId: `reader-${id}`, recovery: false },
    forceNew: true,
    reconnectionDelay: 50,
    reconnectionDelayMax: 300,
  });
  const got = {}; // "room/event" -> [seq…] in arrival order
  const last = (room, event) => (got[`${room}/${event}`] ?? []).at(-1) ?? 0;
  const state = { socket, got, connects: 0, resumed: 0, refused: 0 };
  socket.on("dialogue:event", (e) => {
    (got[`${e.roomId}/${e.event}`] ??= []).push(e.seq);
  });
  socket.on("connect", async () => {
    state.connects++;
    for (const room of ROOMS) {
      const since = state.connects === 1 ? undefined : Object.fromEntries(EVENTS.map((ev) => [ev, last(room, ev)]));
      try {
        const ack = await socket.timeout(5000).emitWithAck("dialogue:join", since ? { roomId: room, since } : { roomId: room });
        if (ack.resume?.resumed) state.resumed++;
        else if (ack.resume) state.refused++;
      } catch {
        // Cut mid-join: the next connect joins again from the positions held.
      }
    }
  });
  return state;
}

test("every event exactly once, in order, through connections cut every 0.3–1.5 s", async () => {
  const readers = Array.from({ length: READERS }, (_, i) => reader(i));
  await eventually(() => readers.every((r) => r.connects > 0), 10_000, "readers connected");
  await sleep(500); // first joins done
  const writers = await Promise.all([0, 1].map((i) => connect(`writer-${i}`)));
  for (const w of writers) for (const room of ROOMS) assert.equal((await w.request("dialogue:join", { roomId: room })).ok, true);
  const sent = {}; // "room/event" -> highest seq acked
  const end = Date.now() + SECONDS * 1000;
  let n = 0;
  while (Date.now() < end) {
    await Promise.all(
      writers.map(async (w, i) => {
        const room = ROOMS[(n + i) % 2];
        const event = EVENTS[(n >> 1) % 2];
        const r = await w.request("dialogue:trigger", { roomId: room, event, data: { n, i } });
        assert.equal(r.ok, true, JSON.stringify(r));
        const key = `${room}/${event}`;
        sent[key] = Math.max(sent[key] ?? 0, r.seq);
      }),
    );
    n++;
    await sleep(5);
  }
  // Every reader catches up (reconnecting as needed), then holds 1..last of each stream once.
  await eventually(
    () => readers.every((r) => Object.entries(sent).every(([key, hi]) => (r.got[key] ?? []).at(-1) === hi)),
    30_000,
    "readers caught up",
  );
  for (const r of readers) {
    for (const [key, hi] of Object.entries(sent)) {
      const seqs = r.got[key];
      const expected = Array.from({ length: hi }, (_, i) => i + 1);
      assert.deepEqual(seqs, expected, `${key} of a reader that connected ${r.connects} times`);
    }
  }
  const connects = readers.reduce((a, r) => a + r.connects, 0);
  const resumed = readers.reduce((a, r) => a + r.resumed, 0);
  assert.ok(connects >= READERS * 3, `the proxy cut connections: ${connects} connects`);
  assert.ok(resumed > 0, "resumes happened");
  console.log(`RESULT ${JSON.stringify({ triggered: n * 2, connects, resumed, refused: readers.reduce((a, r) => a + r.refused, 0) })}`);
  for (const r of readers) r.socket.close();
  for (const w of writers) w.close();
});
