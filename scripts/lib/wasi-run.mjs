// Run a wasm32-wasip1 program (a test binary, an example) under Node's WASI, i.e. in V8,
// the engine Envoy runs the filters in. Used as the cargo runner for wasm32-wasip1:
//   CARGO_TARGET_WASM32_WASIP1_RUNNER="node scripts/lib/wasi-run.mjs"
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';

const [file, ...args] = process.argv.slice(2);
const wasi = new WASI({
  version: 'preview1',
  args: [file, ...args],
  env: process.env,
  preopens: { '/': '/' },
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(file));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);
