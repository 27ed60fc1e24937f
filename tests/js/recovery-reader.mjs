// A reader for the connection-state recovery runs (recovery-chaos.test.mjs,
// recovery-restart.mjs): a stock socket.io-client that relies on the server to recover its
// session on every automatic reconnection — no `since`, no join again. When a reconnection is
// NOT recovered (a new session), it does what a real application does: it rejoins each room
// with the native `since` (after leaving it first, so that an autoJoin room's live events
// cannot jump its gap); these fallbacks are counted. It records every dialogue:event per
// "room/event" in arrival order, with its data, and checks that each carries an offset.
import { io } from "socket.io-client";

/**
 * `rooms`: {roomId: [event names]} the reader wants (autoJoin ones included).
 * Returns the reader's state: got["room/event"] = [seq…], data["room/event/seq"] = data.
 */
export function recoveryReader(url, userId, rooms, { onConnect } = {}) {
  const socket = io(url, {
    transports: ["websocket"],
    auth: { userId },
    forceNew: true,
    reconnectionDelay: 50,
    reconnectionDelayMax: 300,
  });
  const state = {
    socket,
    userId,
    got: {},
    data: {},
    connects: 0,
    recovered: 0, // reconnections answered as recovered
    fresh: 0, // reconnections that got a new session
    repairs: 0, // rooms rejoined with since (after a new session, or a lost join ack)
    refused: 0, // a join with since that did not resume
    noOffset: 0, // dialogue:events without a string offset
    resent: [], // dialogue:joined / dialogue:history on a recovered connection, unasked
    history: [], // {connect, recovered} per connect, in order
    comebacks: [], // for the caller's onConnect(state, recovered): e.g. after a restart
  };
  state.joinedAll = () => socket.connected && Object.keys(rooms).every((r) => confirmed.has(r));
  const ask = (event, payload) => socket.timeout(4000).emitWithAck(event, payload);
  const muted = new Set(); // rooms whose events are dropped until a rejoin with since
  let confirmed = new Set(); // rooms known to be joined in the current server session
  let gen = 0;
  let current = { recovered: false, asked: new Set() };

  socket.on("dialogue:event", (e, ...rest) => {
    if (muted.has(e.roomId)) return;
    if (typeof rest.at(-1) !== "string") state.noOffset++;
    const key = `${e.roomId}/${e.event}`;
    (state.got[key] ??= []).push(e.seq);
    state.data[`${key}/${e.seq}`] = canonical(e.data);
  });
  for (const name of ["dialogue:joined", "dialogue:history"]) {
    socket.on(name, (p) => {
      if (current.recovered && !current.asked.has(p.roomId)) state.resent.push({ name, roomId: p.roomId, connect: state.connects });
    });
  }

  // Leaves `room` (dropping its events until the leave is answered: nothing of it can arrive
  // after that but what the new join sends), then joins it with since = the last seqs held.
  async function rejoin(room, myGen) {
    const live = () => gen === myGen && socket.connected;
    if (!live()) return;
    current.asked.add(room);
    await ask("dialogue:leave", { roomId: room }); // ok, or NOT_IN_ROOM: not a member now
    if (!live()) return;
    muted.delete(room);
    const since = Object.fromEntries(rooms[room].map((ev) => [ev, (state.got[`${room}/${ev}`] ?? []).at(-1) ?? 0]));
    const ack = await ask("dialogue:join", { roomId: room, since });
    if (!ack.ok) throw new Error(`join ${room}: ${JSON.stringify(ack)}`);
    if (!ack.resume?.resumed) state.refused++;
    if (gen === myGen) confirmed.add(room);
  }

  socket.on("connect", () => {
    state.connects++;
    gen++;
    const myGen = gen;
    const recovered = socket.recovered === true;
    current = { recovered, asked: new Set() };
    state.history.push({ connect: state.connects, recovered });
    if (state.connects > 1) {
      if (recovered) state.recovered++;
      else state.fresh++;
    }
    onConnect?.(state, recovered);
    if (!recovered) confirmed = new Set();
    // The first connection, a new session, or rooms whose join was cut before its answer.
    const todo = Object.keys(rooms).filter((r) => !confirmed.has(r));
    if (state.connects > 1) state.repairs += todo.length;
    for (const r of todo) muted.add(r);
    (async () => {
      for (const r of todo) await rejoin(r, myGen);
    })().catch(() => {}); // cut meanwhile: the next connect repairs what is left
  });
  return state;
}

/** JSON with object keys sorted (the server need not keep the writer's key order). */
export function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value && typeof value === "object") {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

/** "room/event" → [seq…] must be exactly 1..hi for each entry of `newest`. */
export function checkExactlyOnce(state, newest) {
  const problems = [];
  for (const [key, hi] of Object.entries(newest)) {
    const seqs = state.got[key] ?? [];
    const ok = seqs.length === hi && seqs.every((s, i) => s === i + 1);
    if (!ok) {
      const seen = new Set();
      const dups = seqs.filter((s) => seen.has(s) || !seen.add(s));
      const missing = [];
      for (let s = 1; s <= hi && missing.length < 20; s++) if (!seen.has(s)) missing.push(s);
      const disorder = seqs.findIndex((s, i) => i > 0 && s <= seqs[i - 1]);
      problems.push(
        `${state.userId} ${key}: ${seqs.length} events for 1..${hi}; duplicates ${JSON.stringify(dups.slice(0, 20))}, missing ${JSON.stringify(missing)}, first out of order at ${disorder}`,
      );
    }
  }
  return problems;
}

/** What the readers went through, summed: connects, recoveries, fallbacks, resent frames. */
export function readerStats(readers) {
  const sum = (f) => readers.reduce((a, r) => a + f(r), 0);
  return {
    connects: sum((r) => r.connects),
    reconnects: sum((r) => r.connects - 1),
    recovered: sum((r) => r.recovered),
    fresh: sum((r) => r.fresh),
    repairs: sum((r) => r.repairs),
    refused: sum((r) => r.refused),
    noOffset: sum((r) => r.noOffset),
    resent: readers.flatMap((r) => r.resent).slice(0, 10),
  };
}
