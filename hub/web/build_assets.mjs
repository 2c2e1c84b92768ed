// Copies the browser builds the hub serves from hub/web/node_modules (installed by
// `npm ci --prefix hub/web`) into hub/web/static/vendor/, where /static/vendor/... finds them.
// No bundler: every file is the package's own UMD/minified dist build, copied as published,
// with its licence beside it. Run by `make assets`; the hub never fetches anything from a CDN.

import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const modules = join(here, "node_modules");
const vendor = join(here, "static", "vendor");

// [package, file inside the package, name under static/vendor]
const FILES = [
  ["cornerstone-core", "dist/cornerstone.min.js", "cornerstone.min.js"],
  ["cornerstone-math", "dist/cornerstoneMath.min.js", "cornerstoneMath.min.js"],
  ["cornerstone-tools", "dist/cornerstoneTools.min.js", "cornerstoneTools.min.js"],
  ["hammerjs", "hammer.min.js", "hammer.min.js"],
  ["htmx.org", "dist/htmx.min.js", "htmx.min.js"],
];

const LICENCES = ["LICENSE", "LICENSE.md", "LICENSE.txt", "license", "license.md"];

function fail(message) {
  console.error(`build_assets: ${message}`);
  process.exit(1);
}

if (!existsSync(modules)) {
  fail(`${modules} is missing: run 'npm ci --prefix hub/web' first (or 'make assets')`);
}

rmSync(vendor, { recursive: true, force: true });
mkdirSync(vendor, { recursive: true });

const manifest = {};
for (const [name, file, target] of FILES) {
  const root = join(modules, name);
  const source = join(root, file);
  if (!existsSync(source)) fail(`${name}: ${file} not found (is package-lock.json installed?)`);
  copyFileSync(source, join(vendor, target));
  const version = JSON.parse(readFileSync(join(root, "package.json"), "utf8")).version;
  const licence = LICENCES.find((candidate) => existsSync(join(root, candidate)));
  if (licence) copyFileSync(join(root, licence), join(vendor, `${target}.LICENSE.txt`));
  manifest[target] = { package: name, version };
}
// What was copied, from which version: the hub reads nothing from it; people and tests may.
writeFileSync(join(vendor, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
console.log(`build_assets: ${FILES.length} files in ${vendor}`);
