// The chat page: sign in, rooms, messages with infinite scroll back, composer, presence,
// and resume after reconnects (see README "Resume after a reconnect").

import { io } from "socket.io-client";
import { byId, h, show, errorText } from "./dom.js";
import { RoomModel, MAX_EVENTS, TRIM_TO } from "./chat/room-model.js";
import { MessageList } from "./chat/message-list.js";

const ACK_TIMEOUT_MS = 10_000;
const RETRY_MS = 5_000; // after RATE_LIMITED and other failed history reads
const SETTLE_MS = 400; // wait for a join history after a join the page did not ask for
const MAX_SINCE_POSITIONS = 1000; // what the server takes in auth.since
const REFRESH_MS = 15_000; // rooms without presence notices: re-read members and sizes
const PRESENCE_QUIET_MS = 1_000; // after presence notices, re-read the open room's members once quiet…
const PRESENCE_MAX_WAIT_MS = 5_000; // …or this long after the first of a steady stream
// A room not shown that the user left scrolled up keeps what it holds, up to this many events.
const HARD_MAX_EVENTS = 4 * MAX_EVENTS;

const authMode = document.querySelector('meta[name="dialogue-auth"]')?.content === "jwt" ? "jwt" : "open";

// ---------------------------------------------------------------------------------------
// Per-tab storage

const store = {
  get(key) {
    try {
      return JSON.parse(sessionStorage.getItem(`dialogue.${key}`));
    } catch {
      return null;
    }
  },
  set(key, value) {
    try {
      if (value === null) sessionStorage.removeItem(`dialogue.${key}`);
      else sessionStorage.setItem(`dialogue.${key}`, JSON.stringify(value));
    } catch {
      // Storage may be unavailable (private mode): the page still works, without reload memory.
    }
  },
};

// ---------------------------------------------------------------------------------------
// Elements and state

const ui = {
  signin: byId("signin"),
  login: byId("login"),
  loginName: byId("login-name"),
  loginToken: byId("login-token"),
  loginError: byId("login-error"),
  app: byId("app"),
  status: byId("status"),
  whoami: byId("whoami"),
  signOut: byId("sign-out"),
  sidebar: byId("sidebar"),
  sidebarToggle: byId("sidebar-toggle"),
  rooms: byId("rooms"),
  createRoom: byId("create-room"),
  createRoomId: byId("create-room-id"),
  createRoomName: byId("create-room-name"),
  createRoomError: byId("create-room-error"),
  members: byId("members"),
  membersCount: byId("members-count"),
  roomTitle: byId("room-title"),
  roomInfo: byId("room-info"),
  leaveRoom: byId("leave-room"),
  notice: byId("notice"),
  messages: byId("messages"),
  composer: byId("composer"),
  composerEvent: byId("composer-event"),
  composerEventField: byId("composer-event-field"),
  composerText: byId("composer-text"),
  composerSend: byId("composer-send"),
  composerError: byId("composer-error"),
};

const list = new MessageList(ui.messages, byId("history-status"), byId("new-messages"), () => {
  const room = activeModel();
  if (room) loadOlder(room, { force: true });
});

const state = {
  socket: null,
  userId: null, // as the server knows us (dialogue:connected)
  connected: false,
  everConnected: false, // a later connect is a reconnect
  rooms: new Map(), // id -> RoomInfo, in the server's order
  joined: new Map(), // id -> RoomModel
  active: null, // id of the room shown
  sending: false,
  lastError: null, // the last dialogue:error, to explain a disconnect or a forced leave
};

/** The dialogue:error that came just now, if any: the reason for what follows it. */
const recentError = () => (state.lastError && Date.now() - state.lastError.at < 3000 ? state.lastError : null);

const activeModel = () => (state.active ? state.joined.get(state.active) : undefined);

// ---------------------------------------------------------------------------------------
// Sign in and out

function setupLogin() {
  show(byId("login-name-field"), authMode === "open");
  show(byId("login-token-field"), authMode === "jwt");
  ui.loginName.required = authMode === "open";
  ui.loginToken.required = authMode === "jwt";
  ui.login.addEventListener("submit", (event) => {
    event.preventDefault();
    const credentials =
      authMode === "jwt" ? { token: ui.loginToken.value.trim() } : { userId: ui.loginName.value.trim() };
    if (!credentials.token && !credentials.userId) {
      ui.loginError.textContent = authMode === "jwt" ? "Paste a token first." : "Choose a user name first.";
      return;
    }
    store.set("credentials", credentials);
    start(credentials);
  });
  ui.signOut.addEventListener("click", () => signOut());
}

/**
 * Back to the sign-in form, with an explanation when there is one. Every way there (sign
 * out, the server ending the session or refusing it) forgets the user: the next one to
 * sign in in this tab finds nothing of theirs.
 */
function showLogin(message = "") {
  stop();
  store.set("credentials", null);
  store.set("rooms", null);
  store.set("active", null);
  ui.loginName.value = "";
  ui.loginToken.value = "";
  ui.loginError.textContent = message;
  show(ui.app, false);
  show(ui.signin, true);
  (authMode === "jwt" ? ui.loginToken : ui.loginName).focus();
}

function signOut() {
  showLogin();
}

/** Closes the socket and forgets everything the session knew, on the page too. */
function stop() {
  if (state.socket) {
    state.socket.removeAllListeners();
    state.socket.io.removeAllListeners();
    state.socket.disconnect(); // answers still due are dropped (request)
  }
  for (const room of state.joined.values()) {
    clearTimeout(room.settle);
    clearTimeout(room.retryTimer);
  }
  clearTimeout(roomsRefresh);
  roomsRefresh = null;
  cancelPresenceCheck();
  clearTimeout(noticeTimer);
  Object.assign(state, {
    socket: null,
    userId: null,
    connected: false,
    everConnected: false,
    active: null,
    sending: false,
    lastError: null,
  });
  state.rooms.clear();
  state.joined.clear(); // with each room's events, members and draft
  window.dialogueReady = false;
  window.dialogueSocket = undefined;
  list.show(null);
  list.setHistoryState("start", "");
  ui.composerText.value = "";
  ui.composerError.textContent = "";
  ui.composerEvent.replaceChildren();
  ui.notice.textContent = "";
  ui.createRoom.reset();
  ui.createRoomError.textContent = "";
  ui.whoami.textContent = "";
  setStatus("disconnected", "Disconnected");
  toggleSidebar(false);
  renderRooms();
  renderRoom();
}

// ---------------------------------------------------------------------------------------
// The socket

function start(credentials) {
  show(ui.signin, false);
  show(ui.app, true);
  ui.loginError.textContent = "";
  ui.whoami.textContent = credentials.userId ?? "";
  setStatus("reconnecting", "Connecting…");
  renderRoom();
  const socket = io({
    // A function: every (re)connect sends the current positions.
    auth: (cb) => cb(authPayload(credentials)),
  });
  state.socket = socket;
  window.dialogueSocket = socket;
  bindConnection(socket);
  bindRooms(socket);
  bindEvents(socket);
}

/**
 * CONNECT payload: who we are, and where each joined room stands with the epoch those seqs
 * came with (resume of autoJoin rooms).
 */
function authPayload(credentials) {
  const payload = { ...credentials };
  const since = {};
  const epochs = {};
  let positions = 0;
  for (const room of state.joined.values()) {
    const roomSince = room.since();
    if (!roomSince) continue;
    positions += Object.keys(roomSince).length;
    if (positions > MAX_SINCE_POSITIONS) break;
    since[room.id] = roomSince;
    epochs[room.id] = room.sinceEpoch();
  }
  if (Object.keys(since).length) Object.assign(payload, { since, epochs });
  return payload;
}

/**
 * Emits a request and answers its ack, or `{ok: false, code: "TIMEOUT"}`. The answer to a
 * session that has ended since (signed out) never comes: nothing of it reaches the page.
 */
async function request(event, payload) {
  const socket = state.socket;
  let answer;
  try {
    answer = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, payload);
  } catch {
    answer = { ok: false, code: "TIMEOUT", message: "the server did not answer in time" };
  }
  return socket === state.socket ? answer : new Promise(() => {});
}

function setStatus(stateName, text) {
  ui.status.dataset.state = stateName;
  ui.status.textContent = text;
}

function bindConnection(socket) {
  socket.on("connect", () => {
    state.connected = true;
    setStatus("connected", "Connected");
    const reconnect = state.everConnected;
    state.everConnected = true;
    if (!reconnect) restoreRooms();
    else if (!socket.recovered) rejoinAll();
    // A recovered session missed nothing; rooms and members may have changed all the same.
    socket.emit("dialogue:listRooms");
    const room = activeModel();
    if (room) refreshPresence(room);
    updateComposer();
  });
  socket.on("disconnect", (reason) => {
    state.connected = false;
    window.dialogueReady = false;
    updateComposer();
    if (reason === "io server disconnect") {
      // The server ended the session (e.g. the token expired): it will not reconnect.
      setStatus("disconnected", "Disconnected");
      const why = recentError();
      showLogin(`Disconnected by the server${why ? ` — ${errorText(why)}` : ""}`);
    } else {
      setStatus("reconnecting", "Reconnecting…");
    }
  });
  socket.on("connect_error", (err) => {
    if (socket.active) {
      setStatus("reconnecting", "Reconnecting…");
      return;
    }
    // The server refused the CONNECT (unknown user, invalid token…): back to the form.
    setStatus("disconnected", "Disconnected");
    showLogin(`Could not connect: ${err.message || "refused by the server"}`);
  });
  socket.io.on("reconnect_attempt", (attempt) => setStatus("reconnecting", `Reconnecting… (attempt ${attempt})`));
  socket.io.on("reconnect_failed", () => setStatus("disconnected", "Disconnected"));
  socket.on("dialogue:connected", ({ userId }) => {
    state.userId = userId;
    ui.whoami.textContent = userId;
  });
  socket.on("dialogue:error", (err) => {
    state.lastError = { ...err, at: Date.now() };
  });
}

/** First connect of this tab: rejoin the rooms it was in before a reload. */
function restoreRooms() {
  const rooms = store.get("rooms") ?? [];
  for (const roomId of rooms) join({ roomId });
  const active = store.get("active");
  if (rooms.includes(active)) state.active = active;
}

/** A reconnect the server did not recover: join every room again, from where we are. */
function rejoinAll() {
  for (const room of state.joined.values()) {
    const since = room.since();
    join(since ? { roomId: room.id, since, epoch: room.sinceEpoch() } : { roomId: room.id });
  }
}

async function join(payload) {
  const { roomId } = payload;
  const ack = await request("dialogue:join", payload);
  const room = state.joined.get(roomId);
  if (ack.ok) {
    if (room) markReady(room);
    return;
  }
  if (room && ["ROOM_NOT_FOUND", "JOIN_DENIED", "ROOM_FULL"].includes(ack.code)) dropRoom(roomId);
  else if (!room && state.active === roomId) openRoom(firstJoined());
  notify(`Could not join ${roomId}: ${errorText(ack)}`);
}

// ---------------------------------------------------------------------------------------
// Rooms

function bindRooms(socket) {
  socket.on("dialogue:rooms", (rooms) => {
    state.rooms = new Map((Array.isArray(rooms) ? rooms : []).map((r) => [r.id, r]));
    for (const room of state.joined.values()) room.setDeclared(state.rooms.get(room.id)?.events);
    renderRooms();
    renderRoom();
    if (state.connected) window.dialogueReady = true;
  });
  socket.on("dialogue:roomCreated", (info) => {
    state.rooms.set(info.id, info);
    renderRooms();
  });
  socket.on("dialogue:roomDeleted", ({ roomId }) => {
    state.rooms.delete(roomId);
    if (state.joined.has(roomId)) dropRoom(roomId);
    if (state.active === roomId) openRoom(firstJoined());
    renderRooms();
  });
  socket.on("dialogue:joined", ({ roomId, roomName, resume }) => {
    let room = state.joined.get(roomId);
    if (!room) {
      room = new RoomModel(roomId, roomName);
      room.setDeclared(state.rooms.get(roomId)?.events);
      state.joined.set(roomId, room);
      saveRooms();
      if (!state.active) state.active = roomId;
      renderRooms();
      if (state.active === roomId) openRoom(roomId);
      scheduleRoomsRefresh();
    } else if (resume?.resumed === false) {
      // No replay: start over from the history, so nothing is missing.
      room.reset();
      if (state.active === roomId) list.show(room, state.userId);
    }
    room.ready = false;
    clearTimeout(room.settle);
    room.settle = setTimeout(() => markReady(room), SETTLE_MS);
  });
  socket.on("dialogue:left", ({ roomId }) => {
    const room = state.joined.get(roomId);
    if (!room) return;
    dropRoom(roomId);
    scheduleRoomsRefresh();
    const why = recentError();
    if (!room.leaving) notify(`You are no longer in ${room.name || roomId}${why ? ` (${errorText(why)})` : ""}.`);
  });
  socket.on("dialogue:memberJoined", ({ roomId, userIds }) => changeMembers(roomId, userIds, true));
  socket.on("dialogue:memberLeft", ({ roomId, userIds }) => changeMembers(roomId, userIds, false));
}

function saveRooms() {
  store.set("rooms", [...state.joined.keys()]);
}

/** The page is no longer in a room. */
function dropRoom(roomId) {
  const room = state.joined.get(roomId);
  if (!room) return;
  clearTimeout(room.settle);
  clearTimeout(room.retryTimer);
  state.joined.delete(roomId);
  saveRooms();
  if (state.active === roomId) openRoom(firstJoined());
  else renderRooms();
}

const firstJoined = () => state.joined.keys().next().value ?? null;

/** Shows a room, joining it first when the page is not in it. */
function openRoom(roomId) {
  const previous = activeModel();
  if (previous) previous.draft = ui.composerText.value;
  state.active = roomId;
  store.set("active", roomId);
  const room = activeModel();
  list.show(room ?? null, state.userId);
  ui.composerText.value = room?.draft ?? "";
  ui.composerError.textContent = "";
  ui.notice.textContent = "";
  toggleSidebar(false);
  renderRooms();
  renderRoom();
  if (!roomId) {
    list.setHistoryState("start", "");
    return;
  }
  if (!room) {
    list.setHistoryState("loading", "Joining…");
    join({ roomId });
    return;
  }
  refreshPresence(room);
  updateHistoryStatus(room);
  loadOlder(room);
}

/** The room list, updated in place (a focused room button keeps its focus). */
function renderRooms() {
  const current = new Map([...ui.rooms.children].map((li) => [li.dataset.roomId, li]));
  const items = [...state.rooms.values()].map((info) => {
    const li = current.get(info.id) ?? roomItem(info.id);
    updateRoomItem(li, info);
    return li;
  });
  const same = items.length === ui.rooms.children.length && items.every((li, i) => ui.rooms.children[i] === li);
  if (!same) ui.rooms.replaceChildren(...items);
}

function roomItem(roomId) {
  return h(
    "li",
    { dataset: { roomId } },
    h(
      "button",
      { type: "button", class: "room-button", onclick: () => openRoom(roomId) },
      h("span", { class: "room-dot", "aria-hidden": "true" }),
      h("span", { class: "room-name" }),
      h("span", { class: "room-size", "aria-hidden": "true" }),
    ),
  );
}

function updateRoomItem(li, info) {
  const joined = state.joined.has(info.id);
  const active = state.active === info.id;
  const size = Number(info.size) || 0;
  const name = info.name || info.id;
  li.dataset.joined = String(joined);
  if (active) li.dataset.active = "true";
  else delete li.dataset.active;
  const button = li.firstChild;
  if (active) button.setAttribute("aria-current", "true");
  else button.removeAttribute("aria-current");
  button.setAttribute("aria-label", `${name}, ${size} ${size === 1 ? "member" : "members"}${joined ? ", joined" : ""}`);
  button.querySelector(".room-name").textContent = name;
  button.querySelector(".room-size").textContent = String(size);
}

/** The header, members and composer of the open room. */
function renderRoom() {
  const info = state.active ? state.rooms.get(state.active) : null;
  const room = activeModel();
  ui.roomTitle.textContent = room?.name ?? info?.name ?? (state.active || "No room open");
  ui.roomInfo.textContent = state.active
    ? `#${state.active}${info?.description ? ` — ${info.description}` : ""}`
    : "Pick a room on the left, or create one.";
  show(ui.leaveRoom, Boolean(room));
  renderMembers();
  updateComposer();
}

let roomsRefresh = null;
/** Member counts change with joins and leaves: ask for the list again (batched). */
function scheduleRoomsRefresh() {
  if (roomsRefresh) return;
  roomsRefresh = setTimeout(() => {
    roomsRefresh = null;
    if (state.connected) state.socket.emit("dialogue:listRooms");
  }, 300);
}

async function createRoom(event) {
  event.preventDefault();
  const id = ui.createRoomId.value.trim();
  const name = ui.createRoomName.value.trim() || id;
  ui.createRoomError.textContent = "";
  if (!id) {
    ui.createRoomError.textContent = "Give the room an id.";
    return;
  }
  if (!state.connected) {
    ui.createRoomError.textContent = "Not connected.";
    return;
  }
  const ack = await request("dialogue:createRoom", { id, name, presence: true });
  if (!ack.ok) {
    ui.createRoomError.textContent = errorText(ack);
    return;
  }
  ui.createRoom.reset();
  openRoom(id);
}

async function leaveActive() {
  const room = activeModel();
  if (!room || !state.connected) return;
  room.leaving = true;
  const ack = await request("dialogue:leave", { roomId: room.id });
  if (!ack.ok) {
    room.leaving = false;
    notify(`Could not leave: ${errorText(ack)}`);
  }
  // dialogue:left does the rest.
}

// ---------------------------------------------------------------------------------------
// Presence

async function refreshPresence(room) {
  const ack = await request("dialogue:presence", { roomId: room.id });
  if (!ack.ok || state.joined.get(room.id) !== room) return;
  room.members = new Map((ack.members ?? []).map((m) => [m.userId, m.connections]));
  if (room === activeModel()) renderMembers();
}

/**
 * A presence notice: the member list follows it as it is (a room of a thousand members
 * sends many; none makes the page ask the server for the rooms again — their sizes follow
 * on the slow refresh). The open room's list is checked against the server now and then.
 */
function changeMembers(roomId, userIds, joined) {
  const room = state.joined.get(roomId);
  if (!room || !Array.isArray(userIds)) return;
  for (const userId of userIds) {
    if (typeof userId !== "string") continue;
    if (joined) room.members.set(userId, room.members.get(userId) ?? 1);
    else room.members.delete(userId);
  }
  if (room !== activeModel()) return;
  renderMembers();
  schedulePresenceCheck();
}

/** Debounced dialogue:presence of the open room: once notices pause, or every few seconds of a steady stream. */
const presenceCheck = { timer: null, first: 0 };
function schedulePresenceCheck() {
  const now = Date.now();
  if (presenceCheck.timer === null) presenceCheck.first = now;
  clearTimeout(presenceCheck.timer);
  const wait = Math.min(PRESENCE_QUIET_MS, presenceCheck.first + PRESENCE_MAX_WAIT_MS - now);
  presenceCheck.timer = setTimeout(() => {
    presenceCheck.timer = null;
    const room = activeModel();
    if (room && state.connected) refreshPresence(room);
  }, Math.max(0, wait));
}

function cancelPresenceCheck() {
  clearTimeout(presenceCheck.timer);
  presenceCheck.timer = null;
}

/** The member list of the open room, updated in place (one element per user, kept). */
function renderMembers() {
  const room = activeModel();
  const ids = room ? [...room.members.keys()].sort((a, b) => a.localeCompare(b)) : [];
  ui.membersCount.textContent = room ? `(${ids.length})` : "";
  const current = new Map([...ui.members.children].map((li) => [li.dataset.userId, li]));
  const items = ids.map((userId) => {
    const you = userId === state.userId;
    const li = current.get(userId);
    if (li && li.dataset.you === String(you)) return li;
    return h(
      "li",
      { dataset: { userId, you: String(you) } },
      h("span", { class: "presence-dot", "aria-hidden": "true" }),
      userId,
      you ? h("span", { class: "you" }, " (you)") : null,
    );
  });
  const same = items.length === ui.members.children.length && items.every((li, i) => ui.members.children[i] === li);
  if (!same) ui.members.replaceChildren(...items);
}

// ---------------------------------------------------------------------------------------
// Events and history

function bindEvents(socket) {
  socket.on("dialogue:history", ({ roomId, events }) => {
    const room = state.joined.get(roomId);
    if (!room) return;
    const added = addEvents(room, Array.isArray(events) ? events : []);
    if (!added) return; // reset: reloading
    room.joinHistoryDone();
    if (room === activeModel()) list.insert(added, state.userId);
    markReady(room);
  });
  // The second argument (the recovery offset) is socket.io-client's business.
  socket.on("dialogue:event", (e) => {
    const room = state.joined.get(e?.roomId);
    if (!room) return;
    const added = addEvents(room, [e]);
    if (!added?.length) return;
    if (room === activeModel()) list.insert(added, state.userId, { live: true });
    trimRoom(room);
  });
}

/**
 * Adds events to a room model; answers those that were new, or null when one of them showed
 * that the room's numbering started again under a new epoch (RoomModel.collides): the room
 * is then reloaded from its newest events and the rest of the batch is not used.
 */
function addEvents(room, events) {
  const resets = room.resets;
  const added = [];
  for (const e of events) {
    if (room.add(e) >= 0) added.push(e);
    if (room.resets !== resets) {
      reloadRoom(room);
      return null;
    }
  }
  return added;
}

/** After a reset by epoch: show the room empty and load its newest page of each event type. */
function reloadRoom(room) {
  clearTimeout(room.retryTimer);
  room.retryTimer = null;
  room.retryNote = null;
  room.loading = false;
  room.scroll = null;
  notify(`${room.name || room.id}: reloaded — the server restarted uncleanly and gave recent numbers out again.`);
  if (room !== activeModel()) return; // loaded when it is opened
  list.show(room, state.userId);
  updateHistoryStatus(room);
  loadOlder(room, { force: true });
}

/**
 * Keeps a room at MAX_EVENTS at most: past it the oldest go, down to TRIM_TO (paging back
 * brings them again). The room shown
 * is trimmed only while the user is at the bottom (not while reading older messages they
 * scrolled to; when they come back down). A room not shown is trimmed unless the user left
 * it scrolled up, and then only past HARD_MAX_EVENTS (it opens at the bottom afterwards).
 */
function trimRoom(room) {
  if (room.events.length <= MAX_EVENTS) return;
  if (room === activeModel()) {
    if (!list.nearBottom()) return;
    list.remove(room.trim(TRIM_TO));
    updateHistoryStatus(room);
    return;
  }
  if (room.scroll && !room.scroll.atBottom) {
    if (room.events.length <= HARD_MAX_EVENTS) return;
    room.scroll = null;
  }
  room.trim(TRIM_TO);
}

/** The room's join (and its history, if any) is through: paging may start. */
function markReady(room) {
  clearTimeout(room.settle);
  room.ready = true;
  if (room === activeModel()) {
    updateHistoryStatus(room);
    loadOlder(room);
  }
}

/**
 * Loads the next older page when the top of the list is in view (one request at a time per
 * room), and goes on while it still is.
 */
async function loadOlder(room, { force = false } = {}) {
  const busy = !room.ready || room.loading || room.retryTimer || !state.connected;
  if (busy || room !== activeModel() || (!force && !list.nearTop())) return;
  const page = room.nextPage();
  if (!page) {
    updateHistoryStatus(room);
    return;
  }
  room.loading = true;
  updateHistoryStatus(room);
  const generation = room.generation;
  const ack = await request("dialogue:getHistory", page);
  room.loading = false;
  if (room.generation === generation && state.joined.get(room.id) === room) {
    if (ack.ok) {
      const added = room.applyPage(page, ack);
      if (!added) {
        reloadRoom(room); // reset by epoch: it loads again from the newest events
        return;
      }
      if (room === activeModel()) list.insert(added, state.userId);
    } else {
      pageFailed(room, page, ack);
    }
  }
  updateHistoryStatus(room);
  requestAnimationFrame(() => loadOlder(room));
}

function pageFailed(room, page, ack) {
  const stream = room.stream(page.eventName);
  if (ack.code === "PAYLOAD_TOO_LARGE" && (page.limit ?? page.end) > 1) {
    stream.limit = Math.max(1, Math.floor(stream.limit / 2)); // ask for fewer at once
    return;
  }
  if (ack.code === "EVENT_NOT_ALLOWED") {
    stream.hasMore = false; // nothing to read of that type
    return;
  }
  room.retryNote =
    ack.code === "RATE_LIMITED"
      ? `Too many history requests — retrying in ${RETRY_MS / 1000} s…`
      : `Could not load older messages (${errorText(ack)}) — retrying in ${RETRY_MS / 1000} s…`;
  room.retryTimer = setTimeout(() => {
    room.retryTimer = null;
    room.retryNote = null;
    updateHistoryStatus(room);
    loadOlder(room);
  }, RETRY_MS);
}

function updateHistoryStatus(room) {
  if (room !== activeModel()) return;
  if (room.retryNote) list.setHistoryState("loading", room.retryNote);
  else if (!room.ready || room.loading) list.setHistoryState("loading", "Loading older messages…");
  else if (room.atStart()) list.setHistoryState("start", "Beginning of the room");
  else list.setHistoryState("more", "Scroll up for more");
}

// ---------------------------------------------------------------------------------------
// Composer

/** Rooms carrying `message` get a chat box; others an event picker and JSON data. */
function chatMode(info) {
  const events = info?.events;
  return !Array.isArray(events) || events.includes("message") || events.includes("*");
}

function updateComposer() {
  const room = activeModel();
  const info = state.active ? state.rooms.get(state.active) : null;
  const chat = chatMode(info);
  const names = (info?.events ?? []).filter((n) => n !== "*");
  show(ui.composerEventField, !chat);
  if (!chat) {
    const current = ui.composerEvent.value;
    ui.composerEvent.replaceChildren(...names.map((n) => h("option", { value: n }, n)));
    if (names.includes(current)) ui.composerEvent.value = current;
  }
  const usable = Boolean(room) && (chat || names.length > 0);
  ui.composerText.disabled = !usable;
  ui.composerSend.disabled = !usable;
  ui.composerText.placeholder = !room
    ? "Join a room to write"
    : !usable
      ? "This room takes no events"
      : chat
        ? `Message ${room.name || room.id}`
        : 'JSON data, e.g. {"key": "value"}';
  ui.composerText.setAttribute("aria-label", chat ? "Message" : "Event data (JSON)");
}

async function send(event) {
  event?.preventDefault();
  const room = activeModel();
  if (!room || state.sending) return;
  const text = ui.composerText.value;
  const info = state.rooms.get(room.id);
  let name = "message";
  let data = { text, username: state.userId ?? "" };
  if (!chatMode(info)) {
    name = ui.composerEvent.value;
    try {
      data = JSON.parse(text);
    } catch (err) {
      showComposerError({ code: "INVALID_JSON", message: err.message });
      return;
    }
  }
  if (!state.connected) {
    showComposerError({ code: "DISCONNECTED", message: "not connected; send again once connected" });
    return;
  }
  state.sending = true;
  const ack = await request("dialogue:trigger", { roomId: room.id, event: name, data });
  state.sending = false;
  if (!ack.ok) {
    showComposerError(ack);
    return;
  }
  showComposerError(null);
  if (ui.composerText.value === text) ui.composerText.value = "";
  list.scrollToBottom();
}

function showComposerError(err) {
  ui.composerError.textContent = err ? errorText(err) : "";
}

function setupComposer() {
  ui.composer.addEventListener("submit", send);
  ui.composerText.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
}

// ---------------------------------------------------------------------------------------
// Layout and notices

let noticeTimer = null;
function notify(text) {
  ui.notice.textContent = text;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => (ui.notice.textContent = ""), 8000);
}

/** Narrow screens: the sidebar folds away behind the "Rooms" button. */
function toggleSidebar(open = !ui.app.classList.contains("sidebar-open")) {
  ui.app.classList.toggle("sidebar-open", open);
  ui.sidebarToggle.setAttribute("aria-expanded", String(open));
}

/** Member lists and counts of rooms without presence notices go stale: re-read them now and then. */
function refreshPeriodically() {
  setInterval(() => {
    if (!state.connected || document.hidden) return;
    state.socket.emit("dialogue:listRooms");
    const room = activeModel();
    if (room) refreshPresence(room);
  }, REFRESH_MS);
}

function setup() {
  window.dialogueReady = false;
  refreshPeriodically();
  setupLogin();
  setupComposer();
  ui.createRoom.addEventListener("submit", createRoom);
  ui.leaveRoom.addEventListener("click", leaveActive);
  ui.sidebarToggle.addEventListener("click", () => toggleSidebar());
  ui.messages.addEventListener("scroll", () => {
    const room = activeModel();
    if (!room) return;
    if (list.nearBottom()) trimRoom(room); // back at the bottom: the oldest may go again
    loadOlder(room);
  }, { passive: true });
  const credentials = store.get("credentials");
  if (credentials && (credentials.userId || credentials.token)) start(credentials);
  else showLogin();
}

setup();
