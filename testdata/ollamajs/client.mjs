// client.mjs drives the real ollama-js client (Node) against a gateway:
//   node client.mjs <gateway URL> <key>
// It prints one JSON object with what each call saw; the Go test judges it.
import { Ollama } from "ollama";

const [host, key] = process.argv.slice(2);
const out = {};
const call = async (name, f) => {
  try {
    out[name] = await f();
  } catch (e) {
    out[name] = { error: String(e.error ?? e.message ?? e), status: e.status_code ?? 0 };
  }
};

// The key as X-API-Key, and as Authorization: Bearer.
const withKey = new Ollama({ host, headers: { "X-API-Key": key } });
const withBearer = new Ollama({ host, headers: { Authorization: `Bearer ${key}` } });
const withoutKey = new Ollama({ host });

await call("list", async () => ({ models: (await withKey.list()).models.length }));
await call("chat_stream", async () => {
  const stream = await withBearer.chat({ model: "llama3.2", messages: [{ role: "user", content: "hi" }], stream: true });
  let parts = 0, done = false;
  for await (const part of stream) {
    parts++;
    done = done || part.done;
  }
  return { parts, done };
});
await call("no_key", async () => ({ models: (await withoutKey.list()).models.length }));
console.log(JSON.stringify(out));
