"use strict";
// dist.js - builds dist/bagou.min.js and its source map from bagou.js with
// terser (the pinned dev dependency). The server embeds both (see
// server/bagou_js.S), so the outputs are committed: building the server
// needs no node. `npm run dist` (or `make js-dist`) writes them;
// test/dist.test.js fails when the committed files are stale.
//
//   node scripts/dist.js [OUTDIR]      (default: dist/ next to bagou.js)
//
// Names as served: the minified file is /bagou.js (and /bagou.VERSION.js),
// its map /bagou.js.map, the readable source /bagou.src.js; the map holds
// the source text too, so browsers need no other request to show it.
const fs = require("node:fs");
const path = require("node:path");
const {minify} = require("terser");

const ROOT = path.join(__dirname, "..");

async function build(outdir) {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"),
                                         "utf8"));
  const src = fs.readFileSync(path.join(ROOT, "bagou.js"), "utf8");
  const out = await minify({"bagou.src.js": src}, {
    ecma: 2018,
    compress: {passes: 2},
    mangle: true,
    format: {
      preamble: "/*! bagou " + pkg.version + " | MIT | " +
                "readable source: bagou.src.js */",
    },
    sourceMap: {
      filename: "bagou.js",
      url: "bagou.js.map",
      includeSources: true,
    },
  });
  fs.mkdirSync(outdir, {recursive: true});
  fs.writeFileSync(path.join(outdir, "bagou.min.js"), out.code + "\n");
  fs.writeFileSync(path.join(outdir, "bagou.min.js.map"), out.map + "\n");
}

module.exports = {build};

if (require.main === module) {
  build(process.argv[2] || path.join(ROOT, "dist")).catch(function (e) {
    console.error("dist.js: " + (e && e.stack || e));
    process.exit(1);
  });
}
