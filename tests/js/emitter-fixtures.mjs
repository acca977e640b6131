// Writes what the real `@socket.io/redis-emitter` publishes (channel and payload bytes) for a set of calls into
// crates/herald/src/bridges/emitter/fixtures, for the Rust decoder's unit tests. Run it again after an upgrade
// of the emitter: `node emitter-fixtures.mjs` (from tests/js). No Redis needed: the client only records.

import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Emitter } from "@socket.io/redis-emitter";

const out = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../crates/herald/src/bridges/emitter/fixtures");
mkdirSync(out, { recursive: true });

let published = [];
const recorder = { publish: (channel, message) => published.push({ channel, message }) };
const emitter = new Emitter(recorder);
const acme = emitter.of("acme");

const cases = {
  "emit-all": () => acme.emit("hello", "world", 42),
  "emit-room": () => acme.to("room1").emit("news", { title: "t", tags: ["a", "b"] }),
  "emit-rooms-except-volatile": () =>
    acme.to(["r1", "r2"]).except("r3").volatile.compress(false).emit("tick", -7, 1.5, true, null),
  "emit-binary": () => acme.to("room1").emit("file", Buffer.from([1, 2, 3]), { nested: Buffer.from("hi") }),
  "emit-exotic": () =>
    acme.emit("exotic", new Date(Date.UTC(2024, 0, 2, 3, 4, 5, 678)), [undefined, 1], new Uint8Array([9, 8]).buffer, 2 ** 40),
  "emit-root": () => emitter.emit("root", 1),
  "emit-prefix": () => new Emitter(recorder, { key: "custom" }).of("/acme").emit("hi"),
  "join": () => acme.in("room1").except("room2").socketsJoin(["a", "b"]),
  "leave": () => acme.socketsLeave("a"),
  "disconnect-close": () => acme.in("room1").disconnectSockets(true),
  "disconnect": () => acme.disconnectSockets(),
};

const index = [];
for (const [name, call] of Object.entries(cases)) {
  published = [];
  call();
  const [{ channel, message }] = published;
  const bytes = typeof message === "string" ? Buffer.from(message) : message;
  writeFileSync(path.join(out, `${name}.bin`), bytes);
  index.push(`${name}\t${channel}`);
}
writeFileSync(path.join(out, "channels.tsv"), index.join("\n") + "\n");
console.log(index.join("\n"));
