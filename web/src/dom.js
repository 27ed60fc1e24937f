// Small DOM helpers shared by the chat page and the admin dashboard.

/** The element with this id (throws early when the HTML and the code disagree). */
export function byId(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from the page`);
  return el;
}

/**
 * Creates an element: h("li", { class: "x", dataset: { roomId: "a" } }, "text", child).
 * Strings become text nodes, so user data never goes through innerHTML.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

/** Shows or hides an element (the `hidden` attribute). */
export function show(el, visible) {
  el.hidden = !visible;
}

/** An error (or a plain message) as text, with its code first when it has one. */
export function errorText(err) {
  if (!err) return "";
  if (err.code) return `${err.code}: ${err.message ?? ""}`.trim();
  return err.message ?? String(err);
}

const sameDay = (a, b) => a.toDateString() === b.toDateString();
const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayClock = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
});

/** A <time> for a millisecond timestamp: the clock today, the date too on other days. */
export function timeElement(ms, className) {
  const date = new Date(ms);
  const valid = Number.isFinite(date.getTime());
  const text = !valid ? "" : sameDay(date, new Date()) ? clock.format(date) : dayClock.format(date);
  return h(
    "time",
    { class: className, datetime: valid ? date.toISOString() : null, title: valid ? date.toLocaleString() : null },
    text,
  );
}
