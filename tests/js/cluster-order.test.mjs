// Clients on every node of a cluster get every event once, in order (tests/cluster.rs
// `clients_on_every_node_get_every_event_once_in_order`): two clients per node, all members
// of lobby, ops and chat (owned by whichever nodes the rendezvous hash picks); each client
// triggers PER_ROOM messages into each room, pipelined (not waiting for acks); every client
// must end with every event of each room exactly once, seq 1..N in arrival order, the same
// sequence on every client, and the history read through the API of every node must be the
// same sequence.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  NODES,
  Member,
  catchUp,
  checkAcked,
  checkHistory,
  checkStream,
  names,
  note,
  out,
  ownershipReport,
  readHistoryAny,
  compareHistories,
  sleep,
  waitOwner,
} from "./cluster.mjs";

const ROOMS = ["lobby", "ops", "chat"];
const PER_NODE = 2;
const PER_ROOM = Number(process.env.PER_ROOM ?? 20);

test("clients on every node get every event of every room once, in order", async () => {
  assert.equal(NODES.length, 3, `three nodes: ${NODES}`);
  note("nodes", await names());
  const members = [];
  for (const [i, url] of NODES.entries()) {
    for (let j = 0; j < PER_NODE; j++) members.push(await Member.open(`n${i}c${j}`, url, ROOMS));
  }
  // Wait until each room has one owner every node agrees on: from then on, no trigger may
  // fail. (Should the nodes claim rooms only on their first trigger, the triggers below wait
  // for it: the run goes on, and the owners are reported.)
  const owners = {};
  for (const room of ROOMS) {
    owners[room] = await waitOwner(room, { timeoutMs: 20000 }).then(
      (o) => o.name,
      (e) => (note(`no settled owner of ${room} before the traffic: ${e.message}`), null),
    );
  }
  note("owners", owners);

  // Every client sends PER_ROOM into each room, all at once; the acks are awaited together.
  const records = [];
  const sends = [];
  for (const m of members) {
    for (const room of ROOMS) {
      for (let n = 1; n <= PER_ROOM; n++) {
        const text = `${m.label}-${room}-${n}`;
        const rec = { text, room, member: m.label, url: m.url, seq: null, attempts: [] };
        records.push(rec);
        sends.push(
          m.trigger(room, { text, username: m.label }, 30000).then((ack) => {
            if (ack.ok) rec.seq = ack.seq;
            else rec.attempts.push(ack);
          }),
        );
      }
    }
  }
  await Promise.all(sends);
  const failed = records.filter((r) => r.seq === null);
  assert.deepEqual(
    failed.map((r) => [r.text, r.url, r.attempts]),
    [],
    `every trigger is acked; owners ${JSON.stringify(owners)}`,
  );
  // Not part of the contract, only reported: one client's pipelined triggers into one room
  // numbered in the order sent (as on one node).
  for (const m of members) {
    for (const room of ROOMS) {
      const seqs = records.filter((r) => r.member === m.label && r.room === room).map((r) => r.seq);
      if (seqs.some((s, i) => i > 0 && s <= seqs[i - 1])) note(`note: ${m.label}'s triggers into ${room} were numbered out of order`, seqs);
    }
  }

  const total = members.length * PER_ROOM;
  const problems = await catchUp(members, Object.fromEntries(ROOMS.map((r) => [r, total])), 20000);
  await sleep(300); // an event delivered twice would show now

  for (const room of ROOMS) {
    // The history through the API of every node: the same N events.
    const { url: from, history } = await readHistoryAny(NODES, room);
    problems.push(...checkHistory(room, history));
    if (history.length !== total) problems.push(`${room}: the history on ${from} has ${history.length} events, ${total} were acked`);
    problems.push(...(await compareHistories(room, history, from, NODES)));
    problems.push(...checkAcked(room, history, records));
    for (const m of members) problems.push(...checkStream(m, room, history, 1), ...m.problems);
    // Identical sequences on every client (implied by the above; said plainly when not).
    const ref = JSON.stringify(members[0].streams[room].map((e) => [e.seq, e.text, e.epoch]));
    for (const m of members.slice(1)) {
      if (JSON.stringify(m.streams[room].map((e) => [e.seq, e.text, e.epoch])) !== ref) {
        problems.push(`${room}: ${m.label} did not receive the same sequence as ${members[0].label}`);
      }
    }
  }
  for (const m of members) {
    if (m.drops.length > 0) problems.push(`${m.label} lost its connection: ${JSON.stringify(m.drops)}`);
    if (m.others.length > 0) problems.push(`${m.label} got events of other rooms or names: ${JSON.stringify(m.others.slice(0, 3))}`);
  }
  note("ownership", await ownershipReport(ROOMS));
  for (const p of problems.slice(0, 60)) out(`# FAIL ${p}`);
  out(`RESULT ${JSON.stringify({ owners, perRoom: total, problems: problems.length })}`);
  for (const m of members) m.close();
  assert.deepEqual(problems, [], `${problems.length} problem(s); owners ${JSON.stringify(owners)}`);
});
