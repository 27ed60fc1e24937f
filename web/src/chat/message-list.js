// The message list of the open room: renders events, inserts them in display order and
// keeps the scroll position steady (stick to the bottom, or keep what the user looks at).

import { h, timeElement } from "../dom.js";
import { eventKey } from "./room-model.js";

const NEAR_BOTTOM_PX = 48;
const NEAR_TOP_PX = 300;
const MAX_JSON_CHARS = 2000;
const GROUP_MS = 5 * 60 * 1000; // chat lines of one sender this close share one header

/** The seed's chat message: `{text: string, username: string}`. */
function isChatLine(data) {
  return (
    data !== null &&
    typeof data === "object" &&
    typeof data.text === "string" &&
    typeof data.username === "string"
  );
}

function compactJson(data) {
  const text = JSON.stringify(data) ?? String(data);
  return text.length > MAX_JSON_CHARS ? `${text.slice(0, MAX_JSON_CHARS)}…` : text;
}

/** One event as a `.msg` element. */
export function renderEvent(e, myUserId) {
  const attrs = {
    class: "msg",
    dataset: { key: eventKey(e), event: e.event, seq: String(e.seq) },
  };
  if (!isChatLine(e.data)) {
    attrs.class += " msg-other";
    return h(
      "div",
      attrs,
      h("span", { class: "msg-event" }, e.event),
      h("code", { class: "msg-data" }, compactJson(e.data)),
      h("span", { class: "msg-from" }, e.from ?? ""),
      timeElement(e.timestamp, "msg-time"),
    );
  }
  const { text, username } = e.data;
  if (e.from === myUserId) attrs.class += " msg-mine";
  // The user name is the sender's own claim: say who really sent it when they differ.
  const via = e.from && e.from !== username ? h("span", { class: "msg-via" }, `via ${e.from}`) : null;
  return h(
    "div",
    attrs,
    h("div", { class: "msg-meta" }, h("span", { class: "msg-user" }, username), via, timeElement(e.timestamp, "msg-time")),
    h("div", { class: "msg-text" }, text),
  );
}

/** True when `e` follows `prev` from the same sender closely enough to skip its header. */
function continues(prev, e) {
  return (
    prev !== undefined &&
    isChatLine(prev.data) &&
    isChatLine(e.data) &&
    prev.from === e.from &&
    prev.data.username === e.data.username &&
    e.timestamp - prev.timestamp < GROUP_MS
  );
}

export class MessageList {
  /**
   * @param box the scroll container (#messages)
   * @param status the history indicator at its top (#history-status)
   * @param newHint the "new messages" button, shown when live ones arrive out of view
   * @param onLoadMore called by the indicator's "Load older" button
   */
  constructor(box, status, newHint, onLoadMore) {
    this.box = box;
    this.status = status;
    this.newHint = newHint;
    // Kept across updates so that keyboard focus stays on it while pages load.
    this.statusText = h("span");
    this.loadButton = h("button", { type: "button", class: "link" }, "Load older");
    this.loadButton.addEventListener("click", () => {
      if (this.status.dataset.state === "more") onLoadMore();
    });
    this.elements = new Map(); // event key -> element, for the room shown
    this.room = null;
    box.addEventListener("scroll", () => {
      if (this.nearBottom()) this.newHint.hidden = true;
    }, { passive: true });
    newHint.addEventListener("click", () => {
      this.scrollToBottom();
      this.box.focus();
    });
  }

  nearTop() {
    return this.box.scrollTop < NEAR_TOP_PX;
  }

  nearBottom() {
    const { scrollHeight, scrollTop, clientHeight } = this.box;
    return scrollHeight - scrollTop - clientHeight < NEAR_BOTTOM_PX;
  }

  scrollToBottom() {
    this.box.scrollTop = this.box.scrollHeight;
    this.newHint.hidden = true;
  }

  /** Shows a room (or none): every event it holds, at its saved scroll position. */
  show(room, myUserId) {
    if (this.room) this.room.scroll = this.savedScroll();
    this.room = room;
    this.elements.clear();
    this.box.replaceChildren(this.status);
    this.newHint.hidden = true;
    if (!room) return;
    const fragment = document.createDocumentFragment();
    room.events.forEach((e, i) => {
      const el = this.element(e, myUserId);
      el.classList.toggle("msg-cont", continues(room.events[i - 1], e));
      fragment.append(el);
    });
    this.box.append(fragment);
    const saved = room.scroll;
    if (!saved || saved.atBottom) this.scrollToBottom();
    else this.box.scrollTop = saved.top;
  }

  savedScroll() {
    return { atBottom: this.nearBottom(), top: this.box.scrollTop };
  }

  element(e, myUserId) {
    const el = renderEvent(e, myUserId);
    this.elements.set(eventKey(e), el);
    return el;
  }

  /**
   * Inserts events the room model has just taken (in any order) at their display place.
   * Live ones stick to the bottom when the user is there; otherwise nothing the user sees
   * moves (the first visible element stays where it is).
   */
  insert(events, myUserId, { live = false } = {}) {
    if (!this.room || events.length === 0) return;
    const stuck = this.keepScroll(() => {
      const all = this.room.events;
      // Newest first: each event's successor then has its element already.
      const sorted = [...events].sort((a, b) => this.room.indexOf(b) - this.room.indexOf(a));
      for (const e of sorted) {
        const i = this.room.indexOf(e);
        const next = all[i + 1];
        const nextEl = next ? this.elements.get(eventKey(next)) : null;
        const el = this.element(e, myUserId);
        el.classList.toggle("msg-cont", continues(all[i - 1], e));
        nextEl?.classList.toggle("msg-cont", continues(e, next));
        this.box.insertBefore(el, nextEl ?? null);
      }
    });
    if (live && !stuck) this.newHint.hidden = false;
  }

  /**
   * Removes the elements of events the room model has just dropped (RoomModel.trim); what
   * the user sees does not move.
   */
  remove(events) {
    if (!this.room || events.length === 0) return;
    this.keepScroll(() => {
      for (const e of events) {
        const key = eventKey(e);
        this.elements.get(key)?.remove();
        this.elements.delete(key);
      }
      // The event now after each gap lost the one it continued.
      const all = this.room.events;
      for (const e of events) {
        const i = this.room.indexOf(e);
        const el = all[i] ? this.elements.get(eventKey(all[i])) : null;
        el?.classList.toggle("msg-cont", continues(all[i - 1], all[i]));
      }
    });
  }

  /** Runs a DOM change; answers whether the list stuck to the bottom. */
  keepScroll(change) {
    const stick = this.nearBottom();
    const anchor = stick ? null : this.firstVisible();
    const anchorTop = anchor?.getBoundingClientRect().top;
    change();
    if (stick) this.scrollToBottom();
    else if (anchor) this.box.scrollTop += anchor.getBoundingClientRect().top - anchorTop;
    return stick;
  }

  /** The first message at least partly in view (children are in layout order; the first is the indicator). */
  firstVisible() {
    const items = this.box.children;
    const top = this.box.scrollTop;
    let lo = 1;
    let hi = items.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const el = items[mid];
      if (el.offsetTop + el.offsetHeight <= top) lo = mid + 1;
      else hi = mid;
    }
    return items[lo] ?? null;
  }

  /** The indicator at the top: loading, more to scroll to, or the beginning of the room. */
  setHistoryState(state, text) {
    this.status.dataset.state = state;
    this.statusText.textContent = text;
    this.loadButton.setAttribute("aria-disabled", String(state !== "more"));
    if (!text) this.status.replaceChildren();
    else if (this.status.firstChild !== this.statusText) this.status.replaceChildren(this.statusText, this.loadButton);
    // While a page loads the button stays only if it has the focus (so that focus is kept).
    const focused = document.activeElement === this.loadButton;
    this.loadButton.hidden = !(state === "more" || (state === "loading" && focused));
  }
}
