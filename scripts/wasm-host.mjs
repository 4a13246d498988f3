// The filter's .wasm driven outside Envoy, on Node's V8 (the engine Envoy runs filters
// on), by a small proxy-wasm host written here: one root context configured with the demo
// policy, then `tools/call get_repository` requests, each through the hooks Envoy calls
// (context create, request headers, request body, response headers, log, done, delete).
// It prints the time per request in the VM and what the filter asked of its host, so the
// cost of our code can be measured and profiled (`node --cpu-prof`) without Envoy's.
//
// Usage: node scripts/wasm-host.mjs FILTER.wasm REQUESTS
// Environment: MCPGW_DEMO_JWK (the public key), MCPGW_TOKEN (a token it verifies).
import { readFileSync } from 'node:fs';

const [wasmPath, requestsArg] = process.argv.slice(2);
const requests = Number(requestsArg ?? 20000);
const jwk = process.env.MCPGW_DEMO_JWK;
const token = process.env.MCPGW_TOKEN;
if (!wasmPath || !jwk || !token) {
  console.error('usage: MCPGW_DEMO_JWK=... MCPGW_TOKEN=... node scripts/wasm-host.mjs FILTER.wasm [REQUESTS]');
  process.exit(2);
}

// The plugin configuration: the JSON block under `value: |` in envoy/demo.yaml.
function pluginConfiguration() {
  const lines = readFileSync(new URL('../envoy/demo.yaml', import.meta.url), 'utf8').split('\n');
  const at = lines.findIndex((l) => /^\s*value: \|\s*$/.test(l));
  const indent = (l) => l.length - l.trimStart().length;
  const base = indent(lines[at]);
  const block = [];
  for (const l of lines.slice(at + 1)) {
    if (l.trim() !== '' && indent(l) <= base) break;
    block.push(l);
  }
  // Without the audit sidecar: this host sends no HTTP calls.
  const config = JSON.parse(block.join('\n'));
  delete config.audit;
  config.servers = config.servers.filter((s) => s.kind !== 'sidecar');
  for (const role of Object.values(config.rbac.roles)) {
    role.servers = role.servers.filter((s) => config.servers.some((t) => t.name === s) || s.includes('*'));
  }
  return JSON.stringify(config);
}

const enc = new TextEncoder();
const dec = new TextDecoder();
let instance;
const mem = () => new Uint8Array(instance.exports.memory.buffer);
const view = () => new DataView(instance.exports.memory.buffer);
const str = (ptr, len) => dec.decode(mem().subarray(ptr, ptr + len));
const bytes = (ptr, len) => mem().slice(ptr, ptr + len);

// Copies `data` into the VM (memory the filter allocates) and writes its address and size.
function give(data, ptrPtr, lenPtr) {
  const ptr = data.length === 0 ? 0 : instance.exports.proxy_on_memory_allocate(data.length);
  mem().set(data, ptr);
  view().setUint32(ptrPtr, ptr, true);
  view().setUint32(lenPtr, data.length, true);
  return 0;
}

function serializeMap(pairs) {
  const parts = pairs.map(([k, v]) => [enc.encode(k), enc.encode(v)]);
  let size = 4 + parts.length * 8;
  for (const [k, v] of parts) size += k.length + v.length + 2;
  const out = new Uint8Array(size);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, parts.length, true);
  let at = 4;
  for (const [k, v] of parts) {
    dv.setUint32(at, k.length, true);
    dv.setUint32(at + 4, v.length, true);
    at += 8;
  }
  for (const [k, v] of parts) {
    out.set(k, at);
    at += k.length + 1;
    out.set(v, at);
    at += v.length + 1;
  }
  return out;
}

// What the host holds for the current context.
const maps = new Map(); // map type -> [[name, value]]
// The request's and response's header maps, serialized once: what Envoy does to produce
// them is Envoy's cost, not the filter's.
const serialized = new Map();
let body = new Uint8Array();
let configuration = new Uint8Array();
const shared = new Map(); // key -> { value, cas }
let nextCas = 1;
const calls = {};
const count = (name) => { calls[name] = (calls[name] ?? 0) + 1; };
const logs = [];
let keepLogs = true;
const properties = {
  'response\0code': (() => { const b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, 200n, true); return b; })(),
  'source\0address': enc.encode('127.0.0.1:40000'),
};

const env = {
  proxy_log(level, ptr, len) {
    count('log');
    if (keepLogs) logs.push([level, str(ptr, len)]);
    return 0;
  },
  proxy_get_buffer_bytes(type, start, max, ptrPtr, lenPtr) {
    count('get_buffer');
    const source = type === 0 ? body : type === 7 ? configuration : new Uint8Array();
    return give(source.subarray(start >>> 0, (start >>> 0) + (max >>> 0)), ptrPtr, lenPtr);
  },
  proxy_set_buffer_bytes() { count('set_buffer'); return 0; },
  proxy_get_property(pathPtr, pathLen, ptrPtr, lenPtr) {
    count('property');
    const path = str(pathPtr, pathLen).replace(/\0$/, '');
    const value = properties[path];
    if (!value) return 1;
    return give(value, ptrPtr, lenPtr);
  },
  proxy_set_property() { count('set_property'); return 0; },
  proxy_get_header_map_pairs(type, ptrPtr, lenPtr) {
    count('map_pairs');
    return give(serialized.get(type) ?? serializeMap(maps.get(type) ?? []), ptrPtr, lenPtr);
  },
  proxy_set_header_map_pairs() { count('set_map_pairs'); return 0; },
  proxy_get_header_map_value(type, kPtr, kLen, ptrPtr, lenPtr) {
    count('map_value');
    const name = str(kPtr, kLen);
    const pair = (maps.get(type) ?? []).find(([k]) => k === name);
    if (!pair) return 1;
    return give(enc.encode(pair[1]), ptrPtr, lenPtr);
  },
  // Header edits are counted, not applied: no hook reads them back in this run.
  proxy_add_header_map_value() { count('add_map_value'); return 0; },
  proxy_replace_header_map_value() { count('replace_map_value'); return 0; },
  proxy_remove_header_map_value() { count('remove_map_value'); return 0; },
  proxy_get_shared_data(kPtr, kLen, ptrPtr, lenPtr, casPtr) {
    count('get_shared');
    const entry = shared.get(str(kPtr, kLen));
    if (!entry) return 1;
    give(entry.value, ptrPtr, lenPtr);
    view().setUint32(casPtr, entry.cas, true);
    return 0;
  },
  proxy_set_shared_data(kPtr, kLen, vPtr, vLen, cas) {
    count('set_shared');
    const key = str(kPtr, kLen);
    const entry = shared.get(key);
    if (cas !== 0 && entry && entry.cas !== cas) return 8;
    shared.set(key, { value: bytes(vPtr, vLen), cas: nextCas++ });
    return 0;
  },
  proxy_get_current_time_nanoseconds(ptr) {
    count('now');
    view().setBigUint64(ptr, BigInt(Date.now()) * 1000000n, true);
    return 0;
  },
  proxy_define_metric(type, namePtr, nameLen, idPtr) { view().setUint32(idPtr, 1, true); return 0; },
  proxy_increment_metric() { count('increment'); return 0; },
  proxy_record_metric() { count('record_metric'); return 0; },
  proxy_set_tick_period_milliseconds() { return 0; },
  proxy_continue_stream() { count('continue'); return 0; },
  proxy_close_stream() { count('close'); return 0; },
  proxy_send_local_response(status) { count('local_response'); logs.push([9, `local response ${status}`]); return 0; },
  proxy_set_effective_context() { count('effective_context'); return 0; },
  proxy_done() { return 0; },
  proxy_register_shared_queue(namePtr, nameLen, idPtr) { view().setUint32(idPtr, 1, true); return 0; },
  proxy_resolve_shared_queue(vmPtr, vmLen, namePtr, nameLen, idPtr) { view().setUint32(idPtr, 1, true); return 0; },
  proxy_enqueue_shared_queue() { return 0; },
  proxy_dequeue_shared_queue() { return 7; },
};
for (const name of ['proxy_get_status', 'proxy_grpc_cancel', 'proxy_grpc_stream', 'proxy_grpc_close', 'proxy_grpc_call',
  'proxy_http_call', 'proxy_call_foreign_function', 'proxy_grpc_send']) {
  env[name] = () => { count(name); return 10; };
}

const environment = [`MCPGW_DEMO_JWK=${jwk}`];
const wasi = {
  random_get(ptr, len) { crypto.getRandomValues(mem().subarray(ptr, ptr + len)); return 0; },
  environ_sizes_get(countPtr, sizePtr) {
    view().setUint32(countPtr, environment.length, true);
    view().setUint32(sizePtr, environment.reduce((n, e) => n + enc.encode(e).length + 1, 0), true);
    return 0;
  },
  environ_get(ptrsPtr, bufPtr) {
    for (const [i, e] of environment.entries()) {
      const b = enc.encode(e);
      view().setUint32(ptrsPtr + 4 * i, bufPtr, true);
      mem().set(b, bufPtr);
      mem()[bufPtr + b.length] = 0;
      bufPtr += b.length + 1;
    }
    return 0;
  },
  fd_write() { return 0; },
  proc_exit(code) { throw new Error(`proc_exit(${code})`); },
};

const module = await WebAssembly.compile(readFileSync(wasmPath));
instance = await WebAssembly.instantiate(module, { env, wasi_snapshot_preview1: wasi });
const x = instance.exports;
x._initialize();
const ROOT = 1;
x.proxy_on_context_create(ROOT, 0);
x.proxy_on_vm_start(ROOT, 0);
configuration = enc.encode(pluginConfiguration());
if (!x.proxy_on_configure(ROOT, configuration.length)) {
  console.error('configure failed:', logs.map((l) => l[1]).join('\n'));
  process.exit(1);
}

const headers = (id) => [
  [':authority', '127.0.0.1:10000'], [':path', '/mcp/github'], [':method', 'POST'], [':scheme', 'http'],
  ['user-agent', 'bench/1.0'], ['accept', 'application/json, text/event-stream'],
  ['content-type', 'application/json'], ['content-length', '120'], ['authorization', `Bearer ${token}`],
  ['mcp-protocol-version', '2025-06-18'], ['x-forwarded-proto', 'http'], ['x-request-id', `req-${id}`],
];

const requestHeaders = headers(0);
serialized.set(0, serializeMap(requestHeaders));
const responseHeaders = [[':status', '200'], ['content-type', 'application/json']];
serialized.set(2, serializeMap(responseHeaders));

function request(id) {
  const ctx = 100 + id;
  x.proxy_on_context_create(ctx, ROOT);
  maps.set(0, requestHeaders.slice());
  const h = x.proxy_on_request_headers(ctx, 12, 0);
  body = enc.encode(`{"jsonrpc":"2.0","id":${id},"method":"tools/call","params":{"name":"get_repository","arguments":{"repository":"acme/website"}}}`);
  const b = x.proxy_on_request_body(ctx, body.length, 1);
  maps.set(2, responseHeaders.slice());
  x.proxy_on_response_headers(ctx, 2, 0);
  x.proxy_on_log(ctx);
  x.proxy_on_done(ctx);
  x.proxy_on_delete(ctx);
  return [h, b];
}

// The first request checks the setup: the call must be allowed (body continues).
logs.length = 0;
const [h, b] = request(0);
if (b !== 0 || logs.some((l) => l[0] >= 9)) {
  console.error(`the call was not allowed (headers ${h}, body ${b}):`, logs.map((l) => l[1]).join('\n'));
  process.exit(1);
}
for (let i = 1; i < Math.min(2000, requests); i++) request(i);
for (const k of Object.keys(calls)) delete calls[k];
keepLogs = false;
// Five batches; the median is the figure (the machine is shared), the minimum a bound.
const batches = [];
const batch = Math.max(1, Math.floor(requests / 5));
for (let k = 0; k < 5; k++) {
  const start = process.hrtime.bigint();
  for (let i = 0; i < batch; i++) request(2000 + k * batch + i);
  batches.push(Number(process.hrtime.bigint() - start) / batch / 1000);
}
batches.sort((a, b) => a - b);
const perRequest = Object.entries(calls).map(([k, v]) => `${k} ${(v / (5 * batch)).toFixed(1)}`).join(', ');
console.log(`${batches[2].toFixed(2)} µs per request in the VM (median of 5 batches of ${batch}; min ${batches[0].toFixed(2)}); host calls per request: ${perRequest}`);
