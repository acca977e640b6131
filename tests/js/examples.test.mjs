// The examples under examples/, each started as its README says (`python3 examples/<name>/run.py`, here with
// `--port 0 --page-port 0`: herald and the page each bind a free port and run.py prints them in its READY line),
// with the real socket.io-client 4.x in the browser's place: the late joiner gets the retained click count, the
// clock ticks, an unchanged sensor reading answers `changed: false` and sends nothing, a bid the auction's
// webhook takes moves the price for every bidder and a low one gets an error ack.
//
// Each example runs in its own process group (run.py, herald, the example's scripts), which is ended after its
// tests, also when they fail, and when this process exits. A new example is one more folder under examples/
// and one more `describe` here: the first test fails until both exist.
//
// NEEDS python3 (3.9+, standard library only; PYTHON to pick another) and, for click-counter, RabbitMQ on
// 127.0.0.1:5672 (guest/guest): `bash scripts/services.sh` starts it. Without them these FAIL.

import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { io } from "socket.io-client";
import { gatewayBin } from "./gateway-helpers.mjs";
import { Clients, QUIET_MS, STEP_TIMEOUT_MS, emitAck, record, sleep, until, waitConnected, withTimeout } from "./util.mjs";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const EXAMPLES = path.join(REPO, "examples");
const PYTHON = process.env.PYTHON || "python3";
const START_TIMEOUT_MS = 30_000; // run.py: herald up (and, for click-counter, its AMQP bridge)
const STOP_TIMEOUT_MS = 15_000; // herald drains for drain_delay_ms (2 s) on SIGTERM
const TEST_TIMEOUT_MS = 45_000;
const TESTED = ["auction", "click-counter", "iot-sensor", "python-clock"];

// Process groups still running, killed if this process exits before their `stop()`. Being groups of their own,
// they do not get the Ctrl-C of the terminal: this process passes it on.
const groups = new Map(); // pgid -> its temporary directory
process.on("exit", () => {
  for (const [pgid, dir] of groups) {
    try {
      process.kill(-pgid, "SIGKILL");
    } catch {}
    rmSync(dir, { recursive: true, force: true });
  }
});
for (const signal of ["SIGINT", "SIGTERM"]) process.once(signal, () => process.exit(130));

/**
 * Starts `examples/<name>/run.py` with `args` in a process group of its own and waits for its `READY {json}`
 * line. Returns { info (page, herald, site), lines, waitLine(regex), write(text), output(), stop() }.
 */
async function startExample(name, args = [], { stdin = false } = {}) {
  const script = path.join(EXAMPLES, name, "run.py");
  // run.py's temporary files (herald's config copy and data) go here, removed after, even after a kill -9.
  const tmp = mkdtempSync(path.join(os.tmpdir(), `herald-example-${name}-`));
  const child = spawn(PYTHON, [script, "--port", "0", "--page-port", "0", ...args], {
    cwd: REPO,
    detached: true, // its own process group: run.py, herald and the example's scripts end together
    stdio: [stdin ? "pipe" : "ignore", "pipe", "pipe"],
    env: { ...process.env, HERALD_GATEWAY_BIN: gatewayBin(), PYTHONUNBUFFERED: "1", TMPDIR: tmp },
  });
  groups.set(child.pid, tmp);
  const lines = [];
  let output = "";
  const waiters = new Set();
  let pending = "";
  child.stdout.on("data", (chunk) => {
    output = (output + chunk).slice(-20_000);
    pending += chunk;
    let at;
    while ((at = pending.indexOf("\n")) >= 0) {
      lines.push(pending.slice(0, at));
      pending = pending.slice(at + 1);
    }
    for (const check of waiters) check();
  });
  child.stderr.on("data", (chunk) => {
    output = (output + chunk).slice(-20_000);
  });
  let exited = null;
  const exit = new Promise((resolve) => {
    const ended = (how) => {
      exited ??= how;
      for (const check of waiters) check();
      resolve(exited);
    };
    child.once("exit", (code, signal) => ended({ code, signal }));
    child.once("error", (err) => ended({ error: `${PYTHON}: ${err.message}` })); // no python3: spawn failed
  });
  const describeOutput = () => `\n--- ${name}/run.py output ---\n${output}`;

  /** The first line from `from` on matching `regex`: [match, index]. */
  function waitLine(regex, { from = 0, ms = STEP_TIMEOUT_MS } = {}) {
    let check;
    const found = new Promise((resolve, reject) => {
      check = () => {
        for (let i = from; i < lines.length; i++) {
          const match = lines[i].match(regex);
          if (match) return resolve([match, i]);
        }
        if (exited) reject(new Error(`${name}/run.py exited (${JSON.stringify(exited)}) before printing ${regex}`));
      };
      waiters.add(check);
      check();
    });
    return withTimeout(found, ms, `${regex} from ${name}/run.py`)
      .catch((err) => {
        err.message += describeOutput(); // its output now, not when the wait began
        throw err;
      })
      .finally(() => waiters.delete(check));
  }

  const stop = async () => {
    if (!groups.has(child.pid)) return;
    if (!exited) {
      try {
        process.kill(-child.pid, "SIGTERM");
      } catch {} // it ended meanwhile
      const timer = setTimeout(() => {
        try {
          process.kill(-child.pid, "SIGKILL");
        } catch {}
      }, STOP_TIMEOUT_MS);
      await exit;
      clearTimeout(timer);
    }
    try {
      process.kill(-child.pid, "SIGKILL"); // anything of the group still there (nothing, when run.py cleaned up)
    } catch {}
    groups.delete(child.pid);
    rmSync(tmp, { recursive: true, force: true });
  };

  let info;
  try {
    const [[, json]] = await waitLine(/^READY (\{.*\})$/, { ms: START_TIMEOUT_MS });
    info = JSON.parse(json);
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    info,
    lines,
    waitLine,
    write: (text) => child.stdin.write(text),
    output: () => output,
    /** Ends the group; fails when run.py had died on its own during the tests. */
    async stop() {
      const died = exited;
      await stop();
      if (died) throw new Error(`${name}/run.py died during the tests (${JSON.stringify(died)})${describeOutput()}`);
    },
  };
}

const clients = new Clients();
afterEach(() => clients.closeAll());

/** A socket.io client where the example's page would be: its site on herald, its Origin, polling then WebSocket. */
function openPage(example) {
  const { herald, site, page } = example.info;
  return clients.add(io(`${herald}/${site}`, { forceNew: true, reconnection: false, extraHeaders: { Origin: page } }));
}

async function fetchText(url, init) {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(STEP_TIMEOUT_MS) });
  return { status: res.status, text: await res.text() };
}

/** The page, its socket.io client and its /config.js (where herald is) are served. */
async function assertPageServed(example) {
  const { page, herald, site } = example.info;
  const index = await fetchText(`${page}/`);
  assert.equal(index.status, 200);
  assert.match(index.text, /<script src="\/socket\.io\.min\.js"><\/script>/);
  assert.match(index.text, /<script src="\/config\.js"><\/script>/);
  const client = await fetchText(`${page}/socket.io.min.js`);
  assert.equal(client.status, 200, client.text.slice(0, 200));
  const config = await fetchText(`${page}/config.js`);
  const [, json] = config.text.match(/^window\.HERALD = (\{.*\});\n$/) ?? [];
  assert.deepEqual(JSON.parse(json ?? "null"), { url: herald, site }, config.text);
}

describe("examples", () => {
  it("has one test per example, and each example's herald.yml passes `herald check-config`", async () => {
    const found = readdirSync(EXAMPLES, { withFileTypes: true })
      .filter((d) => d.isDirectory() && existsSync(path.join(EXAMPLES, d.name, "run.py")))
      .map((d) => d.name)
      .sort();
    assert.deepEqual(found, TESTED, "every examples/<name>/run.py has its describe() in examples.test.mjs");
    for (const name of found) {
      for (const file of ["README.md", "herald.yml", "web/index.html"]) {
        assert.ok(existsSync(path.join(EXAMPLES, name, file)), `examples/${name}/${file} exists`);
      }
      const config = path.join(EXAMPLES, name, "herald.yml");
      const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HERALD_")));
      await promisify(execFile)(gatewayBin(), ["check-config", "--config", config], { env }).catch((err) => {
        throw new Error(`herald check-config --config examples/${name}/herald.yml failed: ${err.stderr || err.message}`);
      });
    }
  });
});

describe("examples/click-counter: counts through RabbitMQ, retained for late pages", { timeout: TEST_TIMEOUT_MS * 2 }, () => {
  // A queue of this run's own, so runs at the same time on one RabbitMQ never share counts; deleted after.
  const queue = `herald.examples.clicks.test-${process.pid}-${Date.now()}`;
  let example;
  before(async () => {
    example = await startExample("click-counter", ["--queue", queue]);
  });
  after(async () => {
    try {
      await example?.stop();
    } finally {
      const deleteQueue = "import sys, amqp091; p = amqp091.Publisher(sys.argv[1]); p.delete_queue(sys.argv[2]); p.close()";
      await promisify(execFile)(PYTHON, ["-c", deleteQueue, "amqp://guest:guest@127.0.0.1:5672/%2f", queue], {
        cwd: path.join(EXAMPLES, "click-counter"),
      });
    }
  });

  it("serves its page", async () => {
    await assertPageServed(example);
  });

  it("pushes every count to an open page, and a page opened later gets the current count at once", { timeout: TEST_TIMEOUT_MS }, async () => {
    const first = openPage(example);
    const seen = record(first, "count");
    await waitConnected(first);
    await sleep(QUIET_MS);
    assert.deepEqual(seen, [], "nothing is retained before the first click (a fresh herald, a purged queue)");
    for (let n = 1; n <= 3; n++) {
      const res = await fetchText(`${example.info.page}/click`, { method: "POST" });
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(JSON.parse(res.text), { count: n });
    }
    await until(() => seen.length === 3, STEP_TIMEOUT_MS, "three counts through the AMQP bridge");
    assert.deepEqual(seen, [[1], [2], [3]]);

    const late = openPage(example);
    const lateSeen = record(late, "count");
    await waitConnected(late);
    await until(() => lateSeen.length === 1, STEP_TIMEOUT_MS, "the retained count");
    await sleep(QUIET_MS);
    assert.deepEqual(lateSeen, [[3]], "the late page gets the current count, once, with no click");
    assert.equal(seen.length, 3, "the first page got nothing more");
  });
});

describe("examples/python-clock: a Python script publishes the time every second", { timeout: TEST_TIMEOUT_MS * 2 }, () => {
  let example;
  before(async () => {
    example = await startExample("python-clock");
  });
  after(async () => {
    await example?.stop();
  });

  it("serves its page", async () => {
    await assertPageServed(example);
  });

  it("ticks once a second on the page", { timeout: TEST_TIMEOUT_MS }, async () => {
    const page = openPage(example);
    const ticks = record(page, "time");
    await waitConnected(page);
    await until(() => ticks.length >= 3, 3 * STEP_TIMEOUT_MS, "three ticks");
    const times = ticks.slice(0, 3).map(([tick]) => {
      assert.equal(typeof tick.epoch_ms, "number");
      assert.equal(Date.parse(tick.iso), Math.floor(tick.epoch_ms / 1000) * 1000, `iso and epoch_ms agree: ${JSON.stringify(tick)}`);
      return tick.epoch_ms;
    });
    // One tick per second: each in a later second than the one before (a loaded machine may delay one).
    for (let i = 1; i < times.length; i++) {
      assert.ok(Math.floor(times[i] / 1000) > Math.floor(times[i - 1] / 1000), `ticks in later seconds: ${times}`);
    }
    assert.ok(Math.abs(Date.now() - times[2]) < STEP_TIMEOUT_MS, "the ticks are the current time");
  });
});

describe("examples/iot-sensor: readings retained, unchanged ones not sent", { timeout: TEST_TIMEOUT_MS * 2 }, () => {
  let example;
  before(async () => {
    example = await startExample("iot-sensor", ["--stdin"], { stdin: true });
  });
  after(async () => {
    await example?.stop();
  });

  /** Types one reading into sensor.py and returns herald's answer to it, as sensor.py prints it. */
  async function reading(celsius) {
    const from = example.lines.length;
    example.write(`${celsius}\n`);
    const [[, value, answer]] = await example.waitLine(/^kitchen (\S+) C: herald answered (\{.*\})$/, { from });
    assert.equal(Number(value), celsius);
    return JSON.parse(answer);
  }

  it("serves its page", async () => {
    await assertPageServed(example);
  });

  it("sends a changed reading, answers changed: false and sends nothing for the same one, and a late page gets the last", { timeout: TEST_TIMEOUT_MS }, async () => {
    const page = openPage(example);
    const readings = record(page, "reading:kitchen");
    await waitConnected(page);

    const first = await reading(21.5);
    assert.equal(first.changed, true);
    assert.equal(first.matched, 1, "the open page");
    await until(() => readings.length === 1, STEP_TIMEOUT_MS, "the first reading");
    assert.deepEqual(readings[0], [{ sensor: "kitchen", celsius: 21.5 }]);

    const same = await reading(21.5);
    assert.equal(same.changed, false, `herald's answer: ${JSON.stringify(same)}`);
    await sleep(QUIET_MS);
    assert.equal(readings.length, 1, "an unchanged reading reaches no page");

    const warmer = await reading(22);
    assert.equal(warmer.changed, true);
    await until(() => readings.length === 2, STEP_TIMEOUT_MS, "the changed reading");
    assert.deepEqual(readings[1], [{ sensor: "kitchen", celsius: 22 }]);

    const late = openPage(example);
    const lateReadings = record(late, "reading:kitchen");
    await waitConnected(late);
    await until(() => lateReadings.length === 1, STEP_TIMEOUT_MS, "the retained reading");
    await sleep(QUIET_MS);
    assert.deepEqual(lateReadings, [[{ sensor: "kitchen", celsius: 22 }]], "the late page gets the last reading, once");
  });
});

describe("examples/auction: bids through a webhook route, the price retained", { timeout: TEST_TIMEOUT_MS * 2 }, () => {
  let example;
  before(async () => {
    example = await startExample("auction");
  });
  after(async () => {
    await example?.stop();
  });

  it("serves its page", async () => {
    await assertPageServed(example);
  });

  it("moves the price for every bidder on a valid bid, and answers a low bid with an error", { timeout: TEST_TIMEOUT_MS }, async () => {
    const alice = openPage(example);
    const bob = openPage(example);
    const alicePrices = record(alice, "price");
    const bobPrices = record(bob, "price");
    await Promise.all([waitConnected(alice), waitConnected(bob)]);
    const opening = [{ price: 100, bidder: null, seq: 0 }];
    await until(() => alicePrices.length === 1 && bobPrices.length === 1, STEP_TIMEOUT_MS, "the opening price");
    assert.deepEqual([alicePrices[0], bobPrices[0]], [opening, opening]);

    assert.deepEqual(await emitAck(alice, "bid", { amount: 120, bidder: "alice" }), [{ ok: true, price: 120 }]);
    const moved = [{ price: 120, bidder: "alice", seq: 1 }];
    await until(() => alicePrices.length === 2 && bobPrices.length === 2, STEP_TIMEOUT_MS, "the new price on both pages");
    assert.deepEqual([alicePrices[1], bobPrices[1]], [moved, moved]);

    assert.deepEqual(await emitAck(bob, "bid", { amount: 110, bidder: "bob" }), [{ error: "bid 110 is too low: the price is 120" }]);
    assert.deepEqual(await emitAck(bob, "bid", { amount: "lots", bidder: "bob" }), [{ error: 'a bid is {"amount": number, "bidder": name}' }]);
    await sleep(QUIET_MS);
    assert.equal(alicePrices.length + bobPrices.length, 4, "a refused bid moves no price");

    const late = openPage(example);
    const latePrices = record(late, "price");
    await waitConnected(late);
    await until(() => latePrices.length === 1, STEP_TIMEOUT_MS, "the retained price");
    await sleep(QUIET_MS);
    assert.deepEqual(latePrices, [moved], "a page opened later gets the current price, once");
  });

  it("refuses a webhook call that herald did not sign", async () => {
    const forged = JSON.stringify({ site: "auction", event: "bid", args: [{ amount: 1e9, bidder: "mallory" }], socket: {} });
    const res = await fetchText(`${example.info.page}/events/bid`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Herald-Signature": "sha256=" + "0".repeat(64) },
      body: forged,
    });
    assert.equal(res.status, 401, res.text);
    const page = openPage(example);
    const prices = record(page, "price");
    await waitConnected(page);
    await until(() => prices.length === 1, STEP_TIMEOUT_MS, "the retained price");
    assert.notEqual(prices[0][0].bidder, "mallory", "the forged bid changed nothing");
    assert.ok(prices[0][0].price < 1e9, "the forged bid changed nothing");
  });
});
