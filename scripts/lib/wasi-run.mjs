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
// A program that links the filters' wasm entry crate (sluice-chain-profile does) imports
// proxy-wasm's host calls from `env` though it never makes them (it runs the filters on a
// mock host): each is given a function that fails loudly if it ever is called.
const imports = wasi.getImportObject();
for (const { module: from, name, kind } of WebAssembly.Module.imports(module)) {
  if (from === 'env' && kind === 'function') {
    imports.env ??= {};
    imports.env[name] = () => {
      throw new Error(`wasi-run: host call ${name} has no host here`);
    };
  }
}
const instance = await WebAssembly.instantiate(module, imports);
process.exitCode = wasi.start(instance);
