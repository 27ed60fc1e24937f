// Connection-state recovery across a graceful restart and a kill -9 (driven by
// tests/recovery.rs): stock-client readers (recovery-reader.mjs: they rely on the server's
// recovery) — two behind a chaos proxy (cuts every 0.3–1.5 s), two behind a steady one — and
// writers behind the steady proxy; the harness retargets both proxies to the restarted server
// and, after each stop, writes the restart's number to PHASE_FILE before starting it again, so
// that a reader's first connection after the number changed is its comeback. Prints "READY"
// once everyone has joined, writes for SECONDS_TO_WRITE, waits for the readers to hold every
// stored event, then prints RESULT {…}: stats, the comebacks' recovered flags and every
// exactly-once problem found (the Rust side asserts on them).
import { io } from "socket.io-client";
import { readFileSync } from "node:fs";
import { recoveryReader, checkExactlyOnce, canonical, readerStats } from "./recovery-reader.mjs";
import { newestSeqs } from "./helpers.mjs";

const CHAOS_URL = process.env.CHAOS_URL;
const STEADY_URL = process.env.STEADY_URL;
const PHASE_FILE = process.env.PHASE_FILE;
const SECONDS = Number(process.env.SECONDS_TO_WRITE ?? 9);
const ROOMS = { r1: ["message", "note"], r2: ["message", "note"], lobby: ["message"] };
const STREAMS = Object.entries(ROOMS).flatMap(([room, events]) => events.map((event) => [room, event]));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const fail = (why) => {
  console.log(`FAIL ${why}`);
  process.exit(1);
};
setTimeout(() => fail("took longer than 100 s"), 100_000).unref();

const phase = () => {
  try {
    return Number(readFileSync(PHASE_FILE, "utf8").trim()) || 0;
  } catch {
    return 0;
  }
};
// The first connection after the harness bumped the phase is a comeback to a new server.
const onConnect = (state, recovered) => {
  const p = phase();
  if (p > (state.phase ?? 0)) {
    state.phase = p;
    state.comebacks.push({ phase: p, recovered, connect: state.connects });
  }
};
const reader = (url, via, i) => Object.assign(recoveryReader(url, `rs-${via}-${i}`, ROOMS, { onConnect }), { via });
const readers = [reader(CHAOS_URL, "chaos", 0), reader(CHAOS_URL, "chaos", 1), reader(STEADY_URL, "steady", 0), reader(STEADY_URL, "steady", 1)];

function writer(i) {
  const socket = io(STEADY_URL, {
    transports: ["websocket"],
    auth: { userId: `rs-writer-${i}` },
    forceNew: true,
    reconnectionDelay: 50,
    reconnectionDelayMax: 300,
  });
  const w = { socket, joined: false, connects: 0, recovered: 0 };
  socket.on("connect", async () => {
    w.connects++;
    if (socket.recovered) w.recovered++;
    else w.joined = false;
    if (w.joined) return; // its rooms came back with the session
    try {
      for (const room of ["r1", "r2"]) await socket.timeout(3000).emitWithAck("dialogue:join", { roomId: room });
      w.joined = true;
    } catch {
      // cut meanwhile: the next connect joins again
    }
  });
  return w;
}
const writers = [0, 1].map(writer);
const ask = (socket, event, payload) => socket.timeout(3000).emitWithAck(event, payload);
const until = async (what, fn, ms) => {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) fail(`timed out: ${what}`);
    await sleep(20);
  }
};
await until("joined", () => readers.every((r) => r.joinedAll()) && writers.every((w) => w.joined), 20_000);
console.log("READY");

let n = 0;
let unanswered = 0;
const acked = {}; // "room/event/seq" -> data
const end = Date.now() + SECONDS * 1000;
while (Date.now() < end) {
  await Promise.all(
    writers.map(async (w, i) => {
      if (!w.socket.connected) return;
      const [room, event] = STREAMS[(n * 2 + i) % STREAMS.length];
      const data = { n, i };
      try {
        const r = await ask(w.socket, "dialogue:trigger", { roomId: room, event, data });
        if (r.ok) acked[`${room}/${event}/${r.seq}`] = canonical(data);
        else unanswered++; // refused while the room restarts (STORAGE_UNAVAILABLE, NOT_IN_ROOM …)
      } catch {
        unanswered++; // cut by the stop: stored or not, the readers must agree with the server
      }
    }),
  );
  n++;
  await sleep(5);
}

// The newest seq the server holds of each stream.
await until("a writer connected", () => writers[0].socket.connected, 20_000);
const newest = await newestSeqs(writers[0].socket, STREAMS).catch((e) => fail(e.message));
const caughtUp = () =>
  readers.every((r) => Object.entries(newest).every(([k, hi]) => (r.got[k] ?? []).length >= hi && r.got[k].includes(hi)));
const deadline = Date.now() + 30_000;
while (!caughtUp() && Date.now() < deadline) await sleep(50);
await sleep(500); // a duplicate arriving late would show

const problems = readers.flatMap((r) => checkExactlyOnce(r, newest));
for (const [k, d] of Object.entries(acked)) {
  const [room, event, seq] = k.split("/");
  if (Number(seq) > (newest[`${room}/${event}`] ?? 0)) problems.push(`acked ${k} is not in the server's history (newest ${newest[`${room}/${event}`]})`);
  for (const r of readers) {
    if (r.data[k] === undefined) problems.push(`${r.userId} lacks acked ${k}`);
    else if (r.data[k] !== d) problems.push(`${r.userId} ${k}: data ${r.data[k]}, written ${d}`);
  }
}
console.log(
  `RESULT ${JSON.stringify({
    acked: Object.keys(acked).length,
    unanswered,
    newest,
    ...readerStats(readers),
    comebacks: Object.fromEntries(readers.map((r) => [r.userId, r.comebacks])),
    writers: writers.map((w) => ({ connects: w.connects, recovered: w.recovered })),
    perReader: Object.fromEntries(readers.map((r) => [r.userId, r.history.map((h) => (h.recovered ? "R" : "N")).join("")])),
    problems: problems.slice(0, 40),
  })}`,
);
process.exit(0);
