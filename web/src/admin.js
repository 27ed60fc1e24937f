// The admin dashboard: polls GET /api/stats with the API key, shows the numbers, rooms,
// recent errors and live charts, and sends events through POST /api/rooms/{id}/events/{e}.

import { byId, h, show, errorText } from "./dom.js";
import { areaChart } from "./admin/chart.js";

const POLL_MS = 2000;
const FAILING_POLL_MS = 10_000; // while the server does not answer: longest wait between tries
const TIMEOUT_MS = 5000; // a request without a (complete) answer by then has failed
const KEY_STORE = "dialogue.apiKey";

const ui = {
  keyPanel: byId("key-panel"),
  keyForm: byId("key-form"),
  apiKey: byId("api-key"),
  forgetKey: byId("forget-key"),
  error: byId("admin-error"),
  pollStatus: byId("poll-status"),
  dashboard: byId("dashboard"),
  connections: byId("stat-connections"),
  database: byId("stat-database"),
  backlog: byId("stat-backlog"),
  failures: byId("stat-failures"),
  uptime: byId("stat-uptime"),
  charts: byId("charts"),
  roomsBody: byId("rooms-table").tBodies[0],
  errors: byId("errors"),
  errorsEmpty: byId("errors-empty"),
  sendForm: byId("send-form"),
  sendRoom: byId("send-room"),
  sendEvent: byId("send-event"),
  sendData: byId("send-data"),
  sendFrom: byId("send-from"),
  sendResult: byId("send-result"),
  roomOptions: byId("room-options"),
  eventOptions: byId("event-options"),
};

let apiKey = null;
let pollTimer = null;
let failures = 0; // polls failed in a row
let lastUpdate = null; // when the statistics shown were read
const inFlight = new Set(); // AbortControllers of requests under way (signing out aborts them)
let roomEvents = new Map(); // room id -> event names (GET /api/rooms), for the send form

// ---------------------------------------------------------------------------------------
// Key and requests

function readKey() {
  try {
    return sessionStorage.getItem(KEY_STORE);
  } catch {
    return null;
  }
}

function saveKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
  } catch {
    // No storage: the key lasts as long as the page.
  }
}

/** Thrown when the server refuses the key. */
class Refused extends Error {}

/** No (complete) answer within TIMEOUT_MS. */
class NoAnswer extends Error {}

/**
 * fetch with the bearer key; answers {status, body} (body parsed when it is JSON). Throws
 * NoAnswer when the answer has not fully arrived within TIMEOUT_MS.
 */
async function api(path, options = {}) {
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, TIMEOUT_MS);
  inFlight.add(controller);
  let response;
  let text;
  try {
    response = await fetch(path, {
      ...options,
      headers: { ...options.headers, Authorization: `Bearer ${apiKey}` },
      cache: "no-store",
      signal: controller.signal,
    });
    text = await response.text();
  } catch (err) {
    if (timedOut) throw new NoAnswer(`no answer from the server within ${TIMEOUT_MS / 1000} s`);
    throw err;
  } finally {
    clearTimeout(timer);
    inFlight.delete(controller);
  }
  let body = text;
  try {
    body = JSON.parse(text);
  } catch {
    // Not JSON: keep the text.
  }
  // 401: a wrong key. 404 on the stats: the API is off (no keys configured).
  if (response.status === 401 || (response.status === 404 && path === "/api/stats")) {
    throw new Refused(`HTTP ${response.status}${body?.message ? `: ${body.message}` : ""}`);
  }
  return { status: response.status, body };
}

function signIn(key) {
  apiKey = key;
  saveKey(key);
  ui.error.textContent = "";
  show(ui.keyPanel, false);
  show(ui.dashboard, true);
  show(ui.forgetKey, true);
  failures = 0;
  lastUpdate = null;
  setPollStatus("reconnecting", "Loading…");
  poll();
  loadRooms();
}

/** Back to the key form, e.g. because the server refused the key. */
function signOut(message = "") {
  clearTimeout(pollTimer);
  for (const controller of inFlight) controller.abort();
  inFlight.clear();
  apiKey = null;
  ui.roomsBody.replaceChildren();
  ui.errors.replaceChildren();
  ui.charts.replaceChildren();
  for (const el of [ui.connections, ui.database, ui.backlog, ui.failures, ui.uptime]) el.textContent = "–";
  ui.sendResult.textContent = "";
  ui.sendForm.reset();
  saveKey(null);
  ui.error.textContent = message;
  show(ui.dashboard, false);
  show(ui.forgetKey, false);
  show(ui.keyPanel, true);
  setPollStatus("disconnected", "Not signed in");
  ui.apiKey.value = "";
  ui.apiKey.focus();
}

function refused(err) {
  const why = err.message.startsWith("HTTP 404")
    ? "the server API is off: configure api.keys or DIALOGUE_API_KEYS"
    : "the API key is not valid";
  signOut(`Refused: ${why} (${err.message}).`);
}

function setPollStatus(state, text) {
  ui.pollStatus.dataset.state = state;
  ui.pollStatus.textContent = text;
}

// ---------------------------------------------------------------------------------------
// Polling

async function poll() {
  clearTimeout(pollTimer);
  const key = apiKey;
  try {
    const { status, body } = await api("/api/stats");
    if (key !== apiKey) return; // signed out meanwhile
    if (status !== 200 || typeof body !== "object" || body === null) {
      throw new Error(`HTTP ${status}${body?.message ? `: ${body.message}` : ""}`);
    }
    failures = 0;
    lastUpdate = new Date();
    ui.error.textContent = "";
    setPollStatus("connected", `Live · updated ${lastUpdate.toLocaleTimeString()}`);
    render(body);
  } catch (err) {
    if (key !== apiKey) return;
    if (err instanceof Refused) {
      refused(err);
      return;
    }
    // Not live: what is shown is as old as the last update. Tries less often while failing.
    failures += 1;
    const wait = Math.min(FAILING_POLL_MS, POLL_MS * 2 ** failures);
    const why = err instanceof NoAnswer ? "no answer from the server" : err.message;
    const since = lastUpdate ? ` · last update ${lastUpdate.toLocaleTimeString()}` : "";
    ui.error.textContent = `Cannot read the statistics: ${why}. Retrying in ${wait / 1000} s…`;
    setPollStatus("reconnecting", `Not live — ${why}${since}`);
    pollTimer = setTimeout(poll, wait);
    return;
  }
  pollTimer = setTimeout(poll, POLL_MS);
}

/** GET /api/rooms: room ids and their events, for the send form's suggestions. */
async function loadRooms() {
  const key = apiKey;
  try {
    const { status, body } = await api("/api/rooms");
    if (key !== apiKey) return;
    const rooms = Array.isArray(body) ? body : Array.isArray(body?.rooms) ? body.rooms : [];
    if (status !== 200) return;
    roomEvents = new Map(rooms.map((r) => [r.id, Array.isArray(r.events) ? r.events : []]));
    ui.roomOptions.replaceChildren(...rooms.map((r) => h("option", { value: r.id }, r.name ?? r.id)));
    if (!ui.sendRoom.value && rooms.length) ui.sendRoom.value = rooms[0].id;
    suggestEvents();
  } catch (err) {
    if (key === apiKey && err instanceof Refused) refused(err);
  }
}

function suggestEvents() {
  const events = (roomEvents.get(ui.sendRoom.value) ?? []).filter((e) => e !== "*");
  ui.eventOptions.replaceChildren(...events.map((e) => h("option", { value: e })));
}

// ---------------------------------------------------------------------------------------
// Rendering (every field may be missing)

const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
const count = (v) => (num(v) === null ? "–" : num(v).toLocaleString());
const rate = (v) => (num(v) === null ? "–" : num(v) < 10 ? num(v).toFixed(2) : num(v).toFixed(1));

function duration(seconds) {
  const s = num(seconds);
  if (s === null) return "–";
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function render(stats) {
  renderOverview(stats);
  renderCharts(stats.series);
  renderRooms(Array.isArray(stats.rooms) ? stats.rooms : []);
  renderErrors(Array.isArray(stats.errors) ? stats.errors : []);
}

function renderOverview(stats) {
  const db = stats.database ?? {};
  ui.connections.textContent = count(stats.connections);
  const dbState = db.state ?? "unknown";
  ui.database.replaceChildren(
    h("span", { class: dbState === "ok" ? "state-ok" : "state-down" }, dbState),
    h("small", {}, [db.backend, num(db.quarantined) ? `${count(db.quarantined)} quarantined` : null,
      num(db.stoppedRooms) ? `${count(db.stoppedRooms)} rooms stopped` : null].filter(Boolean).join(" · ")),
  );
  ui.backlog.textContent = count(db.backlog);
  ui.failures.textContent = count(db.failures);
  ui.uptime.textContent = duration(stats.uptimeSeconds);
}

const SERIES = [
  { key: "eventsPerSecond", title: "Events / s", format: rate },
  { key: "deliveriesPerSecond", title: "Deliveries / s", format: rate },
  { key: "connections", title: "Connections", format: count },
  { key: "backlog", title: "Write backlog", format: count },
];

function renderCharts(series) {
  const at = Array.isArray(series?.at) ? series.at : [];
  const minutes = at.length > 1 ? Math.round((at[at.length - 1] - at[0]) / 60000) : 0;
  const span = minutes >= 1 ? `last ${minutes} min` : "just started";
  ui.charts.replaceChildren(
    ...SERIES.map(({ key, title, format }) =>
      areaChart({ title, format, span, values: Array.isArray(series?.[key]) ? series[key] : [] }),
    ),
  );
}

/** One line per event type: "message: 100". */
function perEvent(history, field) {
  return h(
    "ul",
    { class: "cell-list" },
    history.map((entry) => h("li", {}, `${entry?.event ?? "?"}: ${count(entry?.[field])}`)),
  );
}

function renderRooms(rooms) {
  ui.roomsBody.replaceChildren(
    ...rooms.map((room) => {
      const history = Array.isArray(room.history) ? room.history : [];
      return h(
        "tr",
        { dataset: { roomId: room.id ?? "" } },
        h("td", { class: "room-id" }, h("code", {}, room.id ?? "")),
        h("td", { class: "room-name" },
          room.answering === false ? "not answering (restoring its state, or busy)" : room.name ?? ""),
        h("td", { class: "num room-members" }, count(room.members)),
        h("td", { class: "num room-users" }, count(room.users)),
        h("td", { class: "num room-published" }, count(room.published ?? room.triggered)),
        h("td", { class: "num room-delivered" }, count(room.delivered)),
        h("td", { class: "num room-rate" }, rate(room.eventsPerSecond)),
        h("td", { class: "room-memory" }, perEvent(history, "inMemory")),
        h("td", { class: "room-stored" }, perEvent(history, "stored")),
      );
    }),
  );
}

function renderErrors(errors) {
  show(ui.errorsEmpty, errors.length === 0);
  ui.errors.replaceChildren(
    ...errors.map((e) => {
      const at = num(e?.at);
      return h(
        "li",
        {},
        h("time", { datetime: at === null ? null : new Date(at).toISOString() }, at === null ? "" : new Date(at).toLocaleTimeString()),
        h("span", { class: "error-code" }, e?.code ?? "ERROR"),
        e?.roomId ? h("span", { class: "muted" }, `room ${e.roomId}`) : null,
        e?.userId ? h("span", { class: "muted" }, `user ${e.userId}`) : null,
        h("span", { class: "error-message", title: e?.message ?? null }, e?.message ?? ""),
      );
    }),
  );
}

// ---------------------------------------------------------------------------------------
// Send an event

function sendResult(ok, text) {
  ui.sendResult.dataset.ok = String(ok);
  ui.sendResult.textContent = text;
}

async function sendEvent(event) {
  event.preventDefault();
  const room = ui.sendRoom.value.trim();
  const name = ui.sendEvent.value.trim();
  const from = ui.sendFrom.value.trim();
  if (!room || !name) {
    sendResult(false, "Give a room and an event name.");
    return;
  }
  let data;
  try {
    data = JSON.parse(ui.sendData.value);
  } catch (err) {
    sendResult(false, `Invalid JSON in the data field: ${err.message}`);
    ui.sendData.focus();
    return;
  }
  const body = from ? { data, from } : { data };
  const path = `/api/rooms/${encodeURIComponent(room)}/events/${encodeURIComponent(name)}`;
  sendResult(true, "Sending…");
  const key = apiKey;
  try {
    const { status, body: answer } = await api(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (key !== apiKey) return; // signed out meanwhile
    if (status === 201) {
      sendResult(true, `201 Created — ${name} #${answer?.seq ?? "?"} in ${room}\n${JSON.stringify(answer)}`);
    } else {
      sendResult(false, `${status} ${errorText(answer) || "request failed"}`);
    }
  } catch (err) {
    if (key !== apiKey) return;
    if (err instanceof Refused) refused(err);
    else if (err instanceof NoAnswer) sendResult(false, `No answer: ${err.message} (the event may or may not have been sent).`);
    else sendResult(false, `Could not send: ${err.message}`);
  }
}

// ---------------------------------------------------------------------------------------

function setup() {
  ui.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = ui.apiKey.value.trim();
    if (!key) {
      ui.error.textContent = "Enter an API key.";
      return;
    }
    signIn(key);
  });
  ui.forgetKey.addEventListener("click", () => signOut());
  ui.sendForm.addEventListener("submit", sendEvent);
  ui.sendRoom.addEventListener("change", suggestEvents);
  const key = readKey();
  if (key) signIn(key);
  else signOut();
}

setup();
