"use strict";
// bagou.d.ts: support/types-check.ts (CommonJS) and
// support/types-check-esm.mts (ES module) must compile with `tsc --strict`.
// Skipped when the typescript dev dependency is not installed.
const {it} = require("node:test");
const assert = require("node:assert/strict");
const {execFileSync} = require("node:child_process");
const path = require("node:path");

let tsc = null;
try {
  tsc = require.resolve("typescript/bin/tsc");
} catch (e) { /* not installed */ }

it("bagou.d.ts type-checks the documented uses",
   {skip: !tsc && "no typescript"}, function () {
  const root = path.join(__dirname, "..");
  try {
    execFileSync(process.execPath, [
      tsc, "--noEmit", "--strict", "--module", "nodenext",
      "--moduleResolution", "nodenext", "--target", "es2022",
      "--lib", "es2022,dom", "support/types-check.ts",
      "support/types-check-esm.mts",
    ], {cwd: root, encoding: "utf8", timeout: 120000});
  } catch (e) {
    assert.fail("tsc failed:\n" + (e.stdout || "") + (e.stderr || ""));
  }
});
