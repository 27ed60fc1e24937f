// A small live area chart as inline SVG: one series, zero-based, with its current value and
// the axis maximum labelled.

import { h } from "../dom.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 300;
const HEIGHT = 80;

function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  return el;
}

/** A "nice" axis maximum at or above `max`: 1, 2 or 5 times a power of ten. */
export function niceMax(max) {
  if (!(max > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  for (const step of [1, 2, 5, 10]) if (step * power >= max) return step * power;
  return 10 * power;
}

/** Points of the series scaled into the drawing box (a missing value is drawn as 0). */
function points(values, max) {
  const n = values.length;
  return values.map((v, i) => {
    const x = n === 1 ? WIDTH : (i / (n - 1)) * WIDTH;
    const y = HEIGHT - (Math.max(0, v ?? 0) / max) * (HEIGHT - 2);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
}

/**
 * A chart figure for a series (oldest first).
 * @param title what it shows, e.g. "Events / s"
 * @param values numbers (or nulls)
 * @param format formats a value for the labels
 * @param span text for the time the series covers, e.g. "last 10 min"
 */
export function areaChart({ title, values, format, span }) {
  const numbers = values.map((v) => (typeof v === "number" && Number.isFinite(v) ? v : null));
  const present = numbers.filter((v) => v !== null);
  const current = present.length ? present[present.length - 1] : null;
  const max = niceMax(Math.max(0, ...present));
  const drawing = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    preserveAspectRatio: "none",
    role: "img",
    "aria-label": `${title}, ${span}: now ${current === null ? "unknown" : format(current)}, axis up to ${format(max)}`,
  });
  drawing.append(
    svg("line", { x1: 0, y1: 1, x2: WIDTH, y2: 1, stroke: "#e3e6ee", "vector-effect": "non-scaling-stroke" }),
    svg("line", { x1: 0, y1: HEIGHT - 0.5, x2: WIDTH, y2: HEIGHT - 0.5, stroke: "#cfd4df", "vector-effect": "non-scaling-stroke" }),
  );
  if (numbers.length > 0) {
    const line = points(numbers, max);
    drawing.append(
      svg("polygon", { points: `0,${HEIGHT} ${line.join(" ")} ${WIDTH},${HEIGHT}`, fill: "#4f5bd5", "fill-opacity": 0.12 }),
      svg("polyline", {
        points: line.join(" "),
        fill: "none",
        stroke: "#4f5bd5",
        "stroke-width": 2,
        "stroke-linejoin": "round",
        "vector-effect": "non-scaling-stroke",
      }),
    );
  }
  return h(
    "figure",
    { class: "card chart" },
    h(
      "figcaption",
      {},
      h("span", {}, title, h("br"), h("span", { class: "chart-value" }, current === null ? "–" : format(current))),
      h("span", { class: "axis-note" }, `max ${format(max)}`, h("br"), span),
    ),
    drawing,
  );
}
