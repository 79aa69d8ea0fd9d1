"use strict";
// The packaged and served forms of the client: dist/ (what the server
// embeds as /bagou.js) is what `npm run dist` makes from bagou.js now,
// the version the server serves at /bagou.<version>.js is this package's,
// and `npm pack` ships the licence and both type entry points.
const {describe, it} = require("node:test");
const assert = require("node:assert/strict");
const {execFileSync} = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

const ROOT = path.join(__dirname, "..");
const read = function (p) { return fs.readFileSync(path.join(ROOT, p)); };

describe("dist", function () {
  it("dist/bagou.min.js and its map are up to date with bagou.js",
     async function () {
    // terser is a pinned dev dependency: `npm ci` installs it.
    const {build} = require("../scripts/dist.js");
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "bagou-dist-"));
    try {
      await build(tmp);
      for (const f of ["bagou.min.js", "bagou.min.js.map"]) {
        assert.ok(fs.readFileSync(path.join(tmp, f))
                    .equals(read("dist/" + f)),
                  "js/dist/" + f + " is stale: run `make js-dist` and " +
                  "commit it");
      }
    } finally {
      fs.rmSync(tmp, {recursive: true, force: true});
    }
  });

  it("is minified, names its map and carries the source in it",
     function () {
    const min = read("dist/bagou.min.js").toString("utf8");
    const src = read("bagou.js").toString("utf8");
    assert.ok(min.length < src.length * 0.6,
              "minified " + min.length + " bytes of " + src.length);
    assert.match(min, /\n\/\/# sourceMappingURL=bagou\.js\.map\n$/);
    const map = JSON.parse(read("dist/bagou.min.js.map"));
    assert.equal(map.version, 3);
    assert.equal(map.file, "bagou.js");
    assert.deepEqual(map.sources, ["bagou.src.js"]);
    assert.equal(map.sourcesContent[0], src);
  });

  it("has the server's version (BG_VERSION), which names the " +
     "immutable URL", function () {
    const h = fs.readFileSync(path.join(ROOT, "..", "common", "bg.h"),
                              "utf8");
    const m = /#define BG_VERSION "([^"]+)"/.exec(h);
    assert.ok(m, "BG_VERSION in common/bg.h");
    assert.equal(JSON.parse(read("package.json")).version, m[1],
                 "js/package.json and common/bg.h disagree on the version");
  });
});

describe("npm package", function () {
  const pkg = JSON.parse(read("package.json"));

  it("ships LICENSE (the project's), both type entry points and dist",
     function () {
    assert.ok(read("LICENSE").equals(
      fs.readFileSync(path.join(ROOT, "..", "LICENSE"))),
              "js/LICENSE differs from the top-level LICENSE");
    const out = execFileSync("npm", ["pack", "--dry-run", "--json",
                                     "--loglevel=error"],
                             {cwd: ROOT, encoding: "utf8", timeout: 60000});
    const files = JSON.parse(out)[0].files.map(function (f) {
      return f.path;
    }).sort();
    assert.deepEqual(files, [
      "LICENSE", "README.md", "bagou.d.mts", "bagou.d.ts", "bagou.js",
      "bagou.mjs", "dist/bagou.min.js", "dist/bagou.min.js.map",
      "package.json",
    ]);
  });

  it("declares repository, keywords and types for import and require",
     function () {
    assert.equal(pkg.license, "MIT");
    assert.equal(pkg.repository.type, "git");
    assert.match(pkg.repository.url, /^git\+https:\/\//);
    assert.ok(pkg.keywords.includes("websocket"));
    const dot = pkg.exports["."];
    assert.deepEqual(Object.keys(dot.import), ["types", "default"]);
    assert.deepEqual(dot.import, {types: "./bagou.d.mts",
                                  default: "./bagou.mjs"});
    assert.deepEqual(Object.keys(dot.require), ["types", "default"]);
    assert.deepEqual(dot.require, {types: "./bagou.d.ts",
                                   default: "./bagou.js"});
  });
});
