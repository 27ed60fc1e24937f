// Redis stopped and started again under traffic (tests/cluster.rs
// `redis_outage_stops_writes_and_recovers`, plain `node`).
//
// Two clients per node, all members of lobby, ops and chat; each sends into one room
// back-to-back (every GAP_MS, retrying STORAGE_UNAVAILABLE after 200 ms with the same
// payload), so every room gets senders on two nodes. Then:
// 1. prints `STOP_REDIS`; the Rust side kills redis-server, writes `redis-down` to
//    PHASE_FILE and checks that every node's /readyz turns 503;
// 2. from QUIET_MS after that, every node must refuse triggers (STORAGE_UNAVAILABLE) or hold
//    them: one probe per node and room is sent then, and no trigger sent from then on may be
//    acked before Redis is back;
// 3. after OUTAGE_MS prints `START_REDIS`; the Rust side starts redis-server again and writes
//    `redis-up`;
// 4. within RECOVER_MS every node takes triggers into every room again, and a marker sent
//    from each node into each room reaches every client on every node;
// 5. the load stops, every client catches up, and: history 1..N without gap in each room,
//    the same on every node, every acked payload at its seq, duplicates only of retried
//    payloads, every client's stream equal to the history (exactly once, in order).
// Prints `RESULT {…}` and exits 0, or `FAIL …` lines and exits 1.
import {
  NODES,
  Load,
  Member,
  checkAcked,
  checkHistory,
  catchUp,
  checkStream,
  compareHistories,
  describe,
  names,
  note,
  out,
  ownershipReport,
  phase,
  readHistory,
  readHistoryAny,
  report,
  sleep,
  waitOwner,
  watchdog,
} from "./cluster.mjs";

const ROOMS = ["lobby", "ops", "chat"];
const GAP_MS = Number(process.env.GAP_MS ?? 50);
const QUIET_MS = Number(process.env.QUIET_MS ?? 3000); // ~leaseTimeout (1 s) and slack
const OUTAGE_MS = Number(process.env.OUTAGE_MS ?? 3000);
const RECOVER_MS = Number(process.env.RECOVER_MS ?? 15000); // "~10 s", and slack
let state = () => "not started";
watchdog(170_000, "cluster-redis", () => state());

async function main() {
  note("nodes", await names());
  const members = [];
  for (const [i, url] of NODES.entries()) {
    for (let j = 0; j < 2; j++) {
      const m = await Member.open(`n${i}c${j}`, url, ROOMS);
      m.failover([url]); // should it be disconnected, it comes back to its node and resumes
      members.push(m);
    }
  }
  const byNode = (i) => members.filter((m) => m.url === NODES[i]);

  // Every client is a member before the first event: each must get every one.
  const baseline = {};
  for (const room of ROOMS) baseline[room] = (await readHistory(NODES[0], room)).length;
  note("baseline", baseline);
  const warm = new Load({ payloadMs: 30000 });
  for (const room of ROOMS) {
    const r = await warm.send(members[0], room, `warm-${room}`);
    if (r.seq === null) throw new Error(`the warm-up trigger into ${room} failed: ${JSON.stringify(r)}`);
  }
  const owners = {};
  for (const room of ROOMS) owners[room] = (await waitOwner(room, { timeoutMs: 20000 })).name;
  note("owners before", owners);

  // A payload must be acked within 30 s, retries included: the outage (QUIET_MS + OUTAGE_MS)
  // and the recovery (RECOVER_MS) fit.
  const load = new Load({ gapMs: GAP_MS, payloadMs: 30000, ackTimeoutMs: 30000 });
  state = () => ({ load: load.summary(), members: members.map(describe) });
  load.start(members.map((member, k) => ({ member, room: ROOMS[k % ROOMS.length] })));
  await sleep(1500);
  const ackedBefore = load.acked().length;
  note(`${ackedBefore} acked before the outage`);

  out("STOP_REDIS");
  await phase("redis-down", 30000);
  const tDown = Date.now();
  note("Redis is down");
  await sleep(QUIET_MS);
  const tQuiet = Date.now();
  // A probe per node and room, not retried: refused, or held until Redis is back.
  const probes = [];
  for (const [i] of NODES.entries()) {
    for (const room of ROOMS) probes.push(load.send(byNode(i)[0], room, `probe-n${i}-${room}`, { retry: false }));
  }
  await sleep(OUTAGE_MS);
  const early = load.records.filter((r) => r.seq !== null && r.okSentAt >= tQuiet);
  const tUp = Date.now();
  note(`${early.length} trigger(s) sent from ${QUIET_MS} ms into the outage were acked during it`);
  out("START_REDIS");
  await phase("redis-up", 30000);
  const tUpSeen = Date.now();
  note("Redis is back");

  // Every node takes triggers into every room again (retrying STORAGE_UNAVAILABLE).
  const recovery = new Load({ payloadMs: RECOVER_MS + 5000, ackTimeoutMs: 20000 });
  const back = await Promise.all(
    NODES.flatMap((_, i) => ROOMS.map((room) => recovery.send(byNode(i)[1], room, `back-n${i}-${room}`))),
  );
  const recoveredMs = Object.fromEntries(back.map((r) => [`${r.url} ${r.room}`, r.seq === null ? null : r.ackAt - tUpSeen]));
  note("first trigger acked after Redis came back (ms)", recoveredMs);
  // A marker from each node into each room reaches every client on every node.
  const marks = new Load({ payloadMs: 10000, ackTimeoutMs: 10000 });
  const marked = await Promise.all(
    NODES.flatMap((_, i) => ROOMS.map((room) => marks.send(byNode(i)[0], room, `mark-n${i}-${room}`))),
  );
  const markMissing = [];
  const markEnd = Date.now() + 5000;
  for (const m of members) {
    for (const rec of marked) {
      while (!m.streams[rec.room].some((e) => e.text === rec.text) && Date.now() < markEnd) await sleep(25);
      if (!m.streams[rec.room].some((e) => e.text === rec.text)) markMissing.push(`${m.label} (${m.url}): ${rec.text}`);
    }
  }

  await load.stop();
  await Promise.all(probes);
  note("load stopped", load.summary());
  for (const m of members) if (m.moving) await Promise.race([m.moving, sleep(30000)]);

  const histories = {};
  const newest = {};
  for (const room of ROOMS) newest[room] = (await readHistoryAny(NODES, room)).history.length;
  const problems = await catchUp(members, newest, 15000);
  await sleep(300);
  const all = [...load.records, ...recovery.records, ...marks.records];
  for (const room of ROOMS) {
    const { url: from, history } = await readHistoryAny(NODES, room);
    histories[room] = history.length;
    problems.push(...checkHistory(room, history));
    problems.push(...(await compareHistories(room, history, from, NODES)));
    problems.push(...checkAcked(room, history, all, new Set([`warm-${room}`])));
    for (const m of members) problems.push(...checkStream(m, room, history, baseline[room] + 1));
  }
  for (const m of members) {
    problems.push(...m.problems);
    if (m.drops.length > 0) note(`${m.label} lost its connection (and came back)`, m.drops);
    if (m.others.length > 0) problems.push(`${m.label} got unexpected events: ${JSON.stringify(m.others.slice(0, 3))}`);
  }

  // Nothing accepted once the outage had lasted QUIET_MS, until Redis was back.
  for (const r of early) {
    problems.push(
      `${r.text} sent to ${r.url} ${r.okSentAt - tDown} ms into the Redis outage was acked (seq ${r.seq}) ` +
        `${r.ackAt - tDown} ms into it, before Redis was started again`,
    );
  }
  // The probes: refused with STORAGE_UNAVAILABLE, or held and acked after Redis was back.
  for (const p of load.records.filter((r) => r.text.startsWith("probe-"))) {
    const refused = p.seq === null && p.attempts.length === 1 && p.attempts[0].code === "STORAGE_UNAVAILABLE";
    const held = p.seq !== null && p.ackAt >= tUp;
    if (!refused && !held) problems.push(`probe ${p.text} via ${p.url}: ${JSON.stringify(p)}`);
  }
  // Senders' triggers were retried on STORAGE_UNAVAILABLE only (DISCONNECTED when a client
  // was dropped and came back is noted above), and every one was acked in the end.
  for (const r of [...load.records, ...recovery.records, ...marks.records]) {
    if (r.text.startsWith("probe-")) continue;
    const odd = r.attempts.filter((a) => !["STORAGE_UNAVAILABLE", "DISCONNECTED"].includes(a.code));
    if (odd.length > 0) problems.push(`${r.text} via ${r.url} got ${JSON.stringify(odd.slice(0, 3))}`);
    if (r.seq === null) problems.push(`${r.text} via ${r.url} was never acked: ${JSON.stringify(r.attempts.slice(-3))}`);
  }
  for (const r of back) {
    if (r.seq !== null && r.ackAt - tUpSeen > RECOVER_MS) {
      problems.push(`${r.text}: ${r.url} took ${r.ackAt - tUpSeen} ms to take a trigger into ${r.room} after Redis came back`);
    }
  }
  for (const m of markMissing) problems.push(`marker not received within 5 s: ${m}`);
  if (ackedBefore === 0) problems.push("nothing was acked before the outage");

  if (problems.length > 0) note("ownership after", await ownershipReport(ROOMS));
  out(
    `RESULT ${JSON.stringify({
      ownersBefore: owners,
      ackedBefore,
      histories,
      recoveredMs,
      probes: load.records.filter((r) => r.text.startsWith("probe-")).map((p) => ({ text: p.text, seq: p.seq, attempts: p.attempts.map((a) => a.code), ackAfterUpMs: p.seq === null ? null : p.ackAt - tUp })),
      ...load.summary(),
    })}`,
  );
  for (const m of members) m.close();
  return report(problems);
}

main().then(
  (ok) => process.exit(ok ? 0 : 1),
  (e) => {
    out(`FAIL ${e?.stack ?? e}`);
    process.exit(1);
  },
);
