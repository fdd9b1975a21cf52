#!/usr/bin/env bash
# Packs what a run on the GPU machine (the `device` tool: CUDA, CMake, Python, no Node, no
# registry) needs beyond the working tree, into the ignored folder .gpu/:
#   - node itself (../shared/tools/gpu-prep.sh),
#   - .gpu/node_modules: the few packages the build, tests and benchmarks load at run time
#     (TypeScript itself stays behind: tsx runs the .ts sources).
# Then carry [".gpu"] and run, on the device:
#   source .gpu/env.sh && bash scripts/gpu-run.sh          (build + GPU suites + benchmarks)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
bash ../shared/tools/gpu-prep.sh >/dev/null
rm -rf .gpu/node_modules && mkdir -p .gpu/node_modules
# runtime closure of tsx, uvu, node-gyp-build and the Node-API headers, from the lockfile's tree
node -e '
  const fs = require("node:fs"), path = require("node:path");
  // package folders by node_modules lookup (package.json "exports" may hide package.json)
  const locate = (name, from) => {
    for (let dir = from; ; dir = path.dirname(dir)) {
      const candidate = path.join(dir, "node_modules", name);
      if (fs.existsSync(path.join(candidate, "package.json"))) return candidate;
      if (dir === path.dirname(dir)) return null;
    }
  };
  const seen = new Set();
  const visit = (name, from) => {
    const dir = locate(name, from);
    if (!dir || seen.has(dir)) return;
    seen.add(dir);
    const pkg = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
    for (const dep of Object.keys({ ...pkg.dependencies, ...pkg.optionalDependencies })) visit(dep, dir);
  };
  for (const root of ["tsx", "uvu", "node-gyp-build", "node-addon-api", "node-api-headers"]) visit(root, process.cwd());
  console.log([...seen].map((d) => path.relative("node_modules", d)).join("\n"));
' | while read -r pkg; do
  mkdir -p ".gpu/node_modules/$(dirname "$pkg")"
  cp -r "node_modules/$pkg" ".gpu/node_modules/$pkg"
done
du -sh .gpu .gpu/node_modules
