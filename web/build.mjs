// Builds the browser front end: node build.mjs [outDir]   (default: web/dist)
//
// chat.js and admin.js are bundled and minified (socket.io-client included: the licence of
// every bundled npm package is appended as a legal comment, since its ESM build carries
// none), style.css is minified, the HTML pages are copied, and each script and style sheet
// gets a .gz beside it. The same input gives the same bytes.

import { build } from "esbuild";
import { copyFile, mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { constants, gzipSync } from "node:zlib";

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, "src");
const outDir = resolve(process.argv[2] ?? join(here, "dist"));

const common = {
  bundle: true,
  minify: true,
  write: false,
  sourcemap: false,
  legalComments: "eof",
  logLevel: "warning",
  absWorkingDir: here,
};

/** Runs esbuild on one entry point and answers its single output, with the licences it needs. */
async function bundle(entry, options) {
  const result = await build({ ...common, ...options, metafile: true, entryPoints: [join(src, entry)] });
  if (result.outputFiles.length !== 1) throw new Error(`${entry}: expected one output file`);
  const notice = await licences(result.metafile);
  return Buffer.concat([result.outputFiles[0].contents, Buffer.from(notice)]);
}

/** The directories of the npm packages among a bundle's inputs (relative to web/), sorted. */
function packagesOf(metafile) {
  const dirs = new Set();
  for (const input of Object.keys(metafile.inputs)) {
    const parts = input.split("/");
    const at = parts.lastIndexOf("node_modules");
    if (at < 0) continue;
    const scoped = parts[at + 1].startsWith("@");
    dirs.add(parts.slice(0, at + (scoped ? 3 : 2)).join("/"));
  }
  return [...dirs].sort();
}

/** One legal comment holding each bundled package's name, version and licence text. */
async function licences(metafile) {
  const parts = [];
  for (const path of packagesOf(metafile)) {
    const dir = join(here, path);
    const { name, version, license } = JSON.parse(await readFile(join(dir, "package.json"), "utf8"));
    const file = (await readdir(dir)).sort().find((f) => /^licen[cs]e/i.test(f));
    const text = file ? (await readFile(join(dir, file), "utf8")).trim() : `${license} licence`;
    parts.push(`${name} ${version}\n\n${text}`);
  }
  if (parts.length === 0) return "";
  const body = parts.join("\n\n----\n\n").replaceAll("*/", "*\\/");
  return `/*! Bundled npm packages and their licences:\n\n${body}\n*/\n`;
}

async function emit(name, contents) {
  await writeFile(join(outDir, name), contents);
  // Node writes no file name and a zero time into the gzip header: deterministic.
  const gz = gzipSync(contents, { level: constants.Z_BEST_COMPRESSION });
  await writeFile(join(outDir, `${name}.gz`), gz);
  return { name, bytes: contents.length, gzipped: gz.length };
}

await mkdir(outDir, { recursive: true });
const script = { format: "iife", target: "es2020", platform: "browser" };
const sizes = [
  await emit("chat.js", await bundle("chat.js", script)),
  await emit("admin.js", await bundle("admin.js", script)),
  await emit("style.css", await bundle("style.css", { loader: { ".css": "css" } })),
];
for (const page of ["chat.html", "admin.html"]) await copyFile(join(src, page), join(outDir, page));

for (const { name, bytes, gzipped } of sizes) {
  console.log(`${name.padEnd(10)} ${String(bytes).padStart(7)} B  ${String(gzipped).padStart(6)} B gzipped`);
}
