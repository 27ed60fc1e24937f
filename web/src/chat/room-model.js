// What the page knows of one joined room: its events, each once and in display order, and
// per event type what is loaded (for paging back) and the newest seq seen (for resuming).

export const PAGE_SIZE = 50;
/** Events a room keeps at most: beyond it the oldest go (see trim), and paging brings them back. */
export const MAX_EVENTS = 1000;
/** A trim goes this far below MAX_EVENTS, so that a burst of events is not trimmed one by one. */
export const TRIM_TO = MAX_EVENTS - MAX_EVENTS / 10;

/** `event:epoch:seq`: names one event for good (a seq is reused only under a new epoch). */
export const eventKey = (e) => `${e.event}:${e.epoch ?? 0}:${e.seq}`;

/** Display order: by time, then event name, then seq. */
export function compareEvents(a, b) {
  return (
    a.timestamp - b.timestamp ||
    (a.event < b.event ? -1 : a.event > b.event ? 1 : 0) ||
    a.seq - b.seq ||
    (a.epoch ?? 0) - (b.epoch ?? 0)
  );
}

/** First index whose event does not sort before `e`: where `e` is, or would go. */
function lowerBound(events, e) {
  let lo = 0;
  let hi = events.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (compareEvents(events[mid], e) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** One event type of the room. */
function newStream() {
  return {
    oldest: null, // lowest seq loaded: the cursor of the next older page
    oldestAt: null, // its timestamp
    last: null, // newest seq known at `epoch` (0 = known to be empty); null = unknown
    epoch: 0,
    hasMore: null, // older events exist: true, false, or null = not asked yet
    limit: PAGE_SIZE, // halved when a page is too large for the server
  };
}

export class RoomModel {
  constructor(id, name) {
    this.id = id;
    this.name = name;
    this.declared = null; // RoomInfo.events, once the room list names them
    this.members = new Map(); // userId -> connections
    this.generation = 0;
    this.resets = 0;
    this.reset();
  }

  /** Forgets every event (the room is reloaded from its history). */
  reset() {
    this.events = [];
    this.keys = new Set();
    this.streams = new Map();
    this.epoch = 0; // the highest epoch of any event seen (sent with a join's `since`)
    this.synced = false; // a join history arrived
    this.generation += 1; // answers to requests of an earlier generation are dropped
    this.resets += 1;
  }

  stream(name) {
    let s = this.streams.get(name);
    if (!s) {
      s = newStream();
      this.streams.set(name, s);
    }
    return s;
  }

  /** The room's event names (RoomInfo.events), once the room list gives them. */
  setDeclared(events) {
    this.declared = Array.isArray(events) ? events : null;
    if (this.synced) this.joinHistoryDone();
  }

  /** Event types to page: the declared ones, and for "*" rooms those seen so far. */
  eventNames() {
    const names = new Set((this.declared ?? []).filter((n) => n !== "*"));
    if (!this.declared || this.declared.includes("*")) {
      for (const name of this.streams.keys()) names.add(name);
    }
    return [...names];
  }

  /**
   * Adds an event unless it is known already; answers its display index, or -1. An event
   * that shows the room's numbering started again below what the page holds (see collides)
   * resets the room instead (`resets` grows; the event is not kept): the caller reloads it.
   */
  add(e) {
    if (this.collides(e)) {
      this.reset();
      return -1;
    }
    this.track(e);
    const key = eventKey(e);
    if (this.keys.has(key)) return -1;
    this.keys.add(key);
    const i = lowerBound(this.events, e);
    this.events.splice(i, 0, e);
    return i;
  }

  /** Display index of an event the room holds. */
  indexOf(e) {
    return lowerBound(this.events, e);
  }

  /**
   * True when `e` comes from a later epoch than the page's position in its type, at or
   * below that position's seq: after an unclean stop with `durability: accepted` the room
   * gave those seqs out again, so what the page holds from that seq on names lost events,
   * and its resume position is wrong. (A seq above it continues the numbering: nothing
   * the page holds is renamed.)
   */
  collides(e) {
    const s = this.streams.get(e.event);
    return s !== undefined && s.last !== null && (e.epoch ?? 0) > s.epoch && e.seq <= s.last;
  }

  /** Updates the paging cursor and the resume position of the event's type. */
  track(e) {
    const s = this.stream(e.event);
    const epoch = e.epoch ?? 0;
    if (s.oldest === null || e.seq < s.oldest) {
      s.oldest = e.seq;
      s.oldestAt = e.timestamp;
    }
    if (e.seq === 1) s.hasMore = false; // seqs count from 1 without gaps
    if (s.last === null || epoch > s.epoch) {
      s.last = e.seq;
      s.epoch = epoch;
    } else if (epoch === s.epoch && e.seq > s.last) {
      s.last = e.seq;
    }
    if (epoch > this.epoch) this.epoch = epoch;
  }

  /**
   * After a join history: a declared type it did not include had no events then, so the
   * room is known up to seq 0 of it (a resume then replays its first events).
   */
  joinHistoryDone() {
    this.synced = true;
    for (const name of this.eventNames()) {
      const s = this.stream(name);
      if (s.last === null) s.last = 0;
    }
  }

  /** `{eventName: lastSeq}` of every type whose position is known; null if none is. */
  since() {
    const since = {};
    for (const [name, s] of this.streams) if (s.last !== null) since[name] = s.last;
    return Object.keys(since).length ? since : null;
  }

  /**
   * The epoch the `since` positions belong to: the highest seen on any of the room's events.
   * A type with no event since a takeover keeps a position of an earlier epoch; one from
   * a numbering given out again would have reset the room when the new epoch's events came
   * (collides), so sending the highest epoch does not make every resume UNKNOWN_POSITION.
   */
  sinceEpoch() {
    return this.epoch;
  }

  /** True when every type is loaded back to its first event. */
  atStart() {
    return this.eventNames().every((name) => this.stream(name).hasMore === false);
  }

  /**
   * The next older page to ask for, as a dialogue:getHistory payload, or null. Types never
   * loaded come first (their newest page); then the type whose oldest loaded event is the
   * most recent, so the merged timeline grows back evenly.
   */
  nextPage() {
    let best = null;
    for (const name of this.eventNames()) {
      const s = this.stream(name);
      if (s.hasMore === false) continue;
      const rank = s.oldest === null ? Infinity : s.oldestAt;
      if (!best || rank > best.rank) best = { name, s, rank };
    }
    if (!best) return null;
    const { name, s } = best;
    return s.oldest === null
      ? { roomId: this.id, eventName: name, start: 0, end: s.limit }
      : { roomId: this.id, eventName: name, before: s.oldest, limit: s.limit };
  }

  /**
   * Drops the oldest events beyond `max` (and any other of their types at or below a dropped
   * seq, so that each type keeps an unbroken run up to its newest); their types page back
   * from the dropped seqs again. Answers the dropped events.
   */
  trim(max = MAX_EVENTS) {
    const excess = this.events.length - max;
    if (excess <= 0) return [];
    const top = new Map(); // type -> its dropped event with the highest seq
    for (const e of this.events.slice(0, excess)) {
      const t = top.get(e.event);
      if (!t || e.seq > t.seq) top.set(e.event, e);
    }
    const dropped = [];
    const kept = [];
    this.events.forEach((e, i) => {
      const t = top.get(e.event);
      (i < excess || (t && e.seq <= t.seq) ? dropped : kept).push(e);
    });
    this.events = kept;
    for (const e of dropped) this.keys.delete(eventKey(e));
    for (const [name, t] of top) {
      const s = this.stream(name);
      s.oldest = t.seq + 1; // `before` it: the dropped ones come back
      s.oldestAt = t.timestamp;
      s.hasMore = true;
    }
    this.generation += 1; // a page asked before the trim would leave a hole: dropped
    return dropped;
  }

  /**
   * Takes a page answer; answers the events that were new, in display order, or null when
   * one of them reset the room (add).
   */
  applyPage(request, answer) {
    const s = this.stream(request.eventName);
    const events = Array.isArray(answer.events) ? answer.events : [];
    const resets = this.resets;
    const added = [];
    for (const e of events) {
      if (this.add(e) >= 0) added.push(e);
      if (this.resets !== resets) return null;
    }
    if (events.length === 0) {
      s.hasMore = false;
      if (s.last === null) s.last = 0; // the type has no events at all
    } else if (s.hasMore !== false) {
      s.hasMore = answer.hasMore === true;
    }
    return added.sort(compareEvents);
  }
}
