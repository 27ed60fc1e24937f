// Connection-state recovery through a chaos proxy (tests/common/proxy.rs) that cuts every
// connection after 0.3–1.5 s. Readers are stock socket.io-clients behind it that rely on the
// server's recovery (recovery-reader.mjs: no since, no join again — unless a reconnection is
// not recovered, which is counted). Writers, connected straight to the server, trigger two
// history event types into two rooms and one into the autoJoin lobby. Each reader must end
// with every event exactly once, in seq order per (room, event), with the writers' data.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, sleep, eventually } from "./helpers.mjs";
import { recoveryReader, checkExactlyOnce, canonical, readerStats } from "./recovery-reader.mjs";

const PROXY_URL = process.env.PROXY_URL;
const ROOMS = { r1: ["message", "note"], r2: ["message", "note"], lobby: ["message"] };
const STREAMS = Object.entries(ROOMS).flatMap(([room, events]) => events.map((event) => [room, event]));
const READERS = 6;
const SECONDS = Number(process.env.CHAOS_SECONDS ?? 8);

test("every event exactly once, in order, through connections cut every 0.3–1.5 s, recovered by the server", async () => {
  const readers = Array.from({ length: READERS }, (_, i) => recoveryReader(PROXY_URL, `chaos-reader-${i}`, ROOMS));
  // Every reader's first session holds its rooms before anything is written.
  await eventually(() => readers.every((r) => r.joinedAll()), 15_000, "readers joined");
  const writers = await Promise.all([0, 1].map((i) => connect(`chaos-writer-${i}`)));
  for (const w of writers) for (const room of ["r1", "r2"]) assert.equal((await w.request("dialogue:join", { roomId: room })).ok, true);

  const sent = {}; // "room/event" -> highest seq acked
  const payloads = {}; // "room/event/seq" -> data
  const end = Date.now() + SECONDS * 1000;
  let n = 0;
  while (Date.now() < end) {
    await Promise.all(
      writers.map(async (w, i) => {
        const [room, event] = STREAMS[(n * 2 + i) % STREAMS.length];
        const data = { n, i };
        const r = await w.request("dialogue:trigger", { roomId: room, event, data });
        assert.equal(r.ok, true, JSON.stringify(r));
        const key = `${room}/${event}`;
        sent[key] = Math.max(sent[key] ?? 0, r.seq);
        payloads[`${key}/${r.seq}`] = canonical(data);
      }),
    );
    n++;
    await sleep(5);
  }
  // Every reader catches up (reconnecting as needed).
  try {
    await eventually(
      () => readers.every((r) => Object.entries(sent).every(([key, hi]) => (r.got[key] ?? []).length >= hi && r.got[key].includes(hi))),
      30_000,
      "readers caught up",
    );
  } catch {
    // Reported precisely below.
  }
  await sleep(500); // a duplicate arriving late would show
  const problems = readers.flatMap((r) => checkExactlyOnce(r, sent));
  for (const r of readers) {
    for (const [k, d] of Object.entries(payloads)) {
      if (r.data[k] !== undefined && r.data[k] !== d) problems.push(`${r.userId} ${k}: data ${r.data[k]}, written ${d}`);
    }
  }
  const stats = {
    triggered: n * 2,
    ...readerStats(readers),
    problems: problems.length,
    perReader: readers.map((r) => r.history.map((h) => (h.recovered ? "R" : "N")).join("")),
  };
  console.log(`RESULT ${JSON.stringify(stats)}`);
  for (const r of readers) r.socket.close();
  for (const w of writers) w.close();
  assert.ok(problems.length === 0, `exactly once, in order:\n${problems.slice(0, 30).join("\n")}`);
  assert.ok(stats.reconnects >= READERS * 3, `the proxy cut connections: ${stats.reconnects} reconnects`);
  assert.ok(stats.recovered >= 0.8 * stats.reconnects, `most reconnections recovered: ${JSON.stringify(stats)}`);
  assert.equal(stats.noOffset, 0, "every event of a history type carries an offset");
  assert.ok(stats.resent.length === 0, `no dialogue:joined/history for rooms a recovered session holds: ${JSON.stringify(stats.resent)}`);
});
