// Copies the onnxruntime-web files the viewer needs (the WASM backend only) from node_modules into dist/.
// Run `npm ci && npm run build` in web/; dist/ is committed so that `onnx-rcam web` needs no npm.
import { copyFileSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const source = join(here, "node_modules", "onnxruntime-web", "dist");
const target = join(here, "dist");
const files = ["ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"];
const version = JSON.parse(readFileSync(join(here, "node_modules", "onnxruntime-web", "package.json"))).version;

rmSync(target, { recursive: true, force: true });
mkdirSync(target);
let total = 0;
for (const name of files) {
  copyFileSync(join(source, name), join(target, name));
  const size = statSync(join(target, name)).size;
  total += size;
  console.log(`${name}\t${size}`);
}
writeFileSync(join(target, "NOTICE"),
  `onnxruntime-web ${version} (https://www.npmjs.com/package/onnxruntime-web), files ${files.join(", ")} copied ` +
  `unchanged from its dist/ folder.\nCopyright (c) Microsoft Corporation. Licensed under the MIT License ` +
  `(https://github.com/microsoft/onnxruntime/blob/main/LICENSE).\n`);
console.log(`total\t${total} bytes (onnxruntime-web ${version})`);
