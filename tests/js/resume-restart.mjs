// Resume across a graceful restart and a kill -9 (driven by tests/resume.rs): readers behind a
// chaos proxy (cuts every 0.3–1.5 s) and writers behind a steady proxy, both retargeted by the
// harness to the restarted server. Readers rejoin with `since` on every reconnect. Prints
// "READY" once everyone is connected, writes for SECONDS, then checks that every reader holds
// every stored event of each (room, event) exactly once, in seq order; prints RESULT {…}.
import { io } from "socket.io-client";
import { newestSeqs } from "./helpers.mjs";

const CHAOS_URL = process.env.CHAOS_URL;
const STEADY_URL = process.env.STEADY_URL;
const SECONDS = Number(process.env.SECONDS_TO_WRITE ?? 9);
const ROOMS = ["r1", "r2"];
const EVENTS = ["message", "note"];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const fail = (why) => {
  console.log(`FAIL ${why}`);
  process.exit(1);
};
setTimeout(() => fail("took longer than 90 s"), 90_000).unref();

function client(url, userId, onConnect) {
  const socket = io(url, {
    transports: ["websocket"],
    // Native resume is what this tests (connection-state recovery: tests/recovery.rs).
    auth: { userId, recovery: false },
    forceNew: true,
    reconnectionDelay: 50,
    reconnectionDelayMax: 300,
  });
  const state = { socket, got: {}, connects: 0, resumed: 0, refused: 0 };
  socket.on("dialogue:event", (e) => (state.got[`${e.roomId}/${e.event}`] ??= []).push(e.seq));
  socket.on("connect", () => {
    state.connects++;
    onConnect(state).catch(() => {}); // cut mid-join: the next connect joins again
  });
  return state;
}

const ask = (socket, event, payload) => socket.timeout(3000).emitWithAck(event, payload);

async function joinAll(state) {
  for (const room of ROOMS) {
    const last = (ev) => (state.got[`${room}/${ev}`] ?? []).at(-1) ?? 0;
    const since = state.connects === 1 ? undefined : Object.fromEntries(EVENTS.map((ev) => [ev, last(ev)]));
    const ack = await ask(state.socket, "dialogue:join", since ? { roomId: room, since } : { roomId: room });
    if (ack.resume?.resumed) state.resumed++;
    else if (ack.resume) state.refused++;
  }
}

const readers = Array.from({ length: 4 }, (_, i) => client(CHAOS_URL, `reader-${i}`, joinAll));
const writers = [0, 1].map((i) =>
  client(STEADY_URL, `writer-${i}`, async (state) => {
    for (const room of ROOMS) await ask(state.socket, "dialogue:join", { roomId: room });
    state.joined = true;
  }),
);
const until = async (what, fn, ms) => {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) fail(`timed out: ${what}`);
    await sleep(20);
  }
};
await until("connected", () => readers.every((r) => r.connects > 0) && writers.every((w) => w.joined), 15_000);
console.log("READY");

let n = 0;
let acked = 0;
let unanswered = 0;
const end = Date.now() + SECONDS * 1000;
while (Date.now() < end) {
  await Promise.all(
    writers.map(async (w, i) => {
      if (!w.socket.connected) return;
      try {
        const r = await ask(w.socket, "dialogue:trigger", {
          roomId: ROOMS[(n + i) % 2],
          event: EVENTS[(n >> 1) % 2],
          data: { n, i },
        });
        if (r.ok) acked++;
        else unanswered++; // refused while the room restarts (STORAGE_UNAVAILABLE …)
      } catch {
        unanswered++; // cut by the restart: stored or not, the readers must agree with the server
      }
    }),
  );
  n++;
  await sleep(5);
}

// The newest seq the server holds of each stream.
await until("a writer connected", () => writers[0].socket.connected, 20_000);
const streams = ROOMS.flatMap((room) => EVENTS.map((ev) => [room, ev]));
const newest = await newestSeqs(writers[0].socket, streams).catch((e) => fail(e.message));
await until(
  "readers caught up",
  () => readers.every((r) => Object.entries(newest).every(([k, hi]) => (r.got[k] ?? []).at(-1) === hi)),
  30_000,
);
for (const [i, r] of readers.entries()) {
  for (const [k, hi] of Object.entries(newest)) {
    const seqs = r.got[k] ?? [];
    const expected = Array.from({ length: hi }, (_, j) => j + 1);
    if (JSON.stringify(seqs) !== JSON.stringify(expected)) {
      fail(`reader ${i} ${k}: ${seqs.length} events, expected 1..${hi}: ${JSON.stringify(seqs).slice(0, 400)}`);
    }
  }
}
const sum = (f) => readers.reduce((a, r) => a + f(r), 0);
console.log(
  `RESULT ${JSON.stringify({ acked, unanswered, newest, connects: sum((r) => r.connects), resumed: sum((r) => r.resumed), refused: sum((r) => r.refused) })}`,
);
process.exit(0);
