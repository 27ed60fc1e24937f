// Headless Chromium for the web page tests: Debian's /usr/bin/chromium (or CHROMIUM), driven by
// playwright-core (no browser download), and helpers that read the chat page the way a user sees it.
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
/** Where screenshots go (the Rust test passes target/web-screenshots). */
export const SHOTS = process.env.SCREENSHOT_DIR ?? "/tmp/dialogue-web-screenshots";

export function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // No GPU, and nothing that reaches for the network: this machine has none.
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
}

/**
 * A new page (its own context: its own storage) recording uncaught script errors in
 * `page.problems` and console errors (failed loads and connections among them) in
 * `page.consoleErrors`.
 */
export async function openPage(browser, url, { width = 1100, height = 760 } = {}) {
  const context = await browser.newContext({ viewport: { width, height } });
  const page = await context.newPage();
  page.problems = [];
  page.consoleErrors = [];
  page.on("pageerror", (e) => page.problems.push(`page error: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") page.consoleErrors.push(`console: ${m.text()}`); });
  await page.goto(url);
  return page;
}

/** Opens the chat page and signs in as `name` (open mode); resolves once it is connected. */
export async function signIn(browser, url, name, size) {
  const page = await openPage(browser, url, size);
  await page.fill("#login-name", name);
  await page.press("#login-name", "Enter");
  await page.waitForFunction(() => window.dialogueReady === true, null, { timeout: 15000 });
  return page;
}

/** Types `text` into the composer and presses Enter. */
export async function send(page, text) {
  await page.fill("#composer-text", text);
  await page.press("#composer-text", "Enter");
}

/** The messages shown in the open room: [{key, event, seq, user, text}] in display order. */
export function shown(page) {
  return page.$$eval("#messages .msg", (els) => els.map((e) => ({
    key: e.dataset.key,
    event: e.dataset.event,
    seq: Number(e.dataset.seq),
    user: e.querySelector(".msg-user")?.textContent ?? null,
    text: e.querySelector(".msg-text")?.textContent ?? null,
  })));
}

/** Waits until a shown message has `text`. */
export function waitForText(page, text, timeout = 10000) {
  return page.waitForFunction(
    (t) => [...document.querySelectorAll("#messages .msg .msg-text")].some((e) => e.textContent === t),
    text, { timeout });
}

/** Opens (joins) a room from the room list. */
export async function openRoom(page, roomId) {
  await page.click(`#rooms [data-room-id="${roomId}"] button`);
  await page.waitForSelector(`#rooms [data-room-id="${roomId}"][data-active="true"][data-joined="true"]`);
}

/** Writes a screenshot of the whole page (not only the part scrolled into view). */
export async function screenshot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  const file = path.join(SHOTS, name);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}
