// The examples under examples/, each started as its README says (`python3 examples/<name>/run.py`, here with
// `--port 0 --page-port 0`: herald and the page each bind a free port and run.py prints them in its READY line),
// with the real socket.io-client 4.x in the browser's place: the late joiner gets the retained click count, the
// clock ticks, an unchanged sensor reading answers `changed: false` and sends nothing, a bid the auction's
// webhook takes moves the price for every bidder and a low one gets an error ack, the pomodoro device's states
// reach the page (retained) and the page's commands reach the device over MQTT. For plain-clients, a plain
// WebSocket (the `ws` package) and an event stream read with fetch are in the browser's place, with its Origin:
// ticks on both, the stream's CORS answer for that origin, a chat relayed between two WebSockets, and an event
// stream resumed by Last-Event-ID.
//
// Each example runs in its own process group (run.py, herald, the example's scripts), which is ended after its
// tests, also when they fail, and when this process exits. A new example is one more folder under examples/
// and one more `describe` here: the first test fails until both exist.
//
// NEEDS Python 3.9+ with examples/requirements.txt (pika, paho-mqtt) installed: PYTHON, else the repo's .venv
// (scripts/test.sh's py-install stage puts them there), else python3. click-counter needs RabbitMQ on
// 127.0.0.1:5672 (guest/guest), pomodoro Mosquitto on 127.0.0.1:1883: `bash scripts/services.sh` starts them.
// Without them these FAIL, naming what is missing.

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
import { EventStream, PlainSocket } from "./plain-helpers.mjs";
import { Clients, QUIET_MS, STEP_TIMEOUT_MS, emitAck, record, sleep, until, waitConnected, withTimeout } from "./util.mjs";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const EXAMPLES = path.join(REPO, "examples");
// The interpreter run.py runs with (and the example's scripts, which run.py starts with its own interpreter).
const VENV_PYTHON = path.join(REPO, ".venv", "bin", "python");
const PYTHON = process.env.PYTHON || (existsSync(VENV_PYTHON) ? VENV_PYTHON : "python3");
const START_TIMEOUT_MS = 30_000; // run.py: herald up (and, for click-counter, its AMQP bridge)
const STOP_TIMEOUT_MS = 15_000; // herald drains for drain_delay_ms (2 s) on SIGTERM
const TEST_TIMEOUT_MS = 45_000;
const TESTED = ["auction", "click-counter", "iot-sensor", "plain-clients", "pomodoro", "python-clock"];

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

/** Fails, naming the module and the interpreter, when PYTHON cannot import one of `modules`. */
async function requirePython(modules) {
  for (const module of modules) {
    await promisify(execFile)(PYTHON, ["-c", `import ${module}`]).catch((err) => {
      const why = (err.stderr || err.message).trim().split("\n").at(-1);
      throw new Error(
        `${PYTHON} cannot import ${module} (${why}): install examples/requirements.txt into it ` +
          "(python3 -m venv .venv && .venv/bin/pip install -r examples/requirements.txt; scripts/test.sh's " +
          "py-install stage does it), or set PYTHON to an interpreter that has it",
      );
    });
  }
}

const clients = new Clients();
afterEach(() => clients.closeAll());

/**
 * A socket.io client where the example's page would be: its site on herald, its Origin, polling then WebSocket;
 * `options` adds to the client's (`auth` for a token).
 */
function openPage(example, options = {}) {
  const { herald, site, page } = example.info;
  return clients.add(io(`${herald}/${site}`, { forceNew: true, reconnection: false, extraHeaders: { Origin: page }, ...options }));
}

async function fetchText(url, init) {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(STEP_TIMEOUT_MS) });
  return { status: res.status, text: await res.text() };
}

/** The page's window.HERALD, as its /config.js says. */
async function pageConfig(example) {
  const config = await fetchText(`${example.info.page}/config.js`);
  const [, json] = config.text.match(/^window\.HERALD = (\{.*\});\n$/) ?? [];
  assert.ok(json, `/config.js: ${config.text}`);
  return JSON.parse(json);
}

/**
 * The page, its socket.io client and its /config.js (where herald is) are served; resolves window.HERALD, whose
 * entries are `url`, `site` and the page's own (`more`, by name).
 */
async function assertPageServed(example, { more = [] } = {}) {
  const { page, herald, site } = example.info;
  const index = await fetchText(`${page}/`);
  assert.equal(index.status, 200);
  assert.match(index.text, /<script src="\/socket\.io\.min\.js"><\/script>/);
  assert.match(index.text, /<script src="\/config\.js"><\/script>/);
  const client = await fetchText(`${page}/socket.io.min.js`);
  assert.equal(client.status, 200, client.text.slice(0, 200));
  const config = await pageConfig(example);
  assert.deepEqual(Object.keys(config).sort(), ["site", "url", ...more].sort(), JSON.stringify(config));
  assert.deepEqual({ url: config.url, site: config.site }, { url: herald, site });
  return config;
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
  let withPika = false;
  before(async () => {
    await requirePython(["pika"]);
    withPika = true;
    example = await startExample("click-counter", ["--queue", queue]);
  });
  after(async () => {
    try {
      await example?.stop();
    } finally {
      if (withPika) {
        const deleteQueue = [
          "import sys, pika",
          "connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))",
          "connection.channel().queue_delete(sys.argv[2])",
          "connection.close()",
        ].join("\n");
        await promisify(execFile)(PYTHON, ["-c", deleteQueue, "amqp://guest:guest@127.0.0.1:5672/%2f", queue]);
      }
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

describe("examples/pomodoro: a device on MQTT, its state to the page and the page's commands back", { timeout: TEST_TIMEOUT_MS * 2 }, () => {
  // A device of this run's own (topics pomodoro/<device>/…, room pomodoro_<device>), so runs at the same time
  // on one Mosquitto never share states or commands. device.py's default phase lengths.
  const device = `test-${process.pid}-${Date.now()}`;
  const WORK_SECS = 1500;
  const BREAK_SECS = 300;
  const IDLE = [{ phase: "idle", remaining: 0 }];
  // Longer than two of the device's ticks (one a second): what has not come by then was not sent.
  const TWO_TICKS_MS = 2500;
  let example;
  before(async () => {
    await requirePython(["paho.mqtt.client"]);
    example = await startExample("pomodoro", ["--device", device]);
  });
  after(async () => {
    await example?.stop();
  });

  /** The page's token: the one run.py put in its /config.js. */
  const pageToken = async () => (await pageConfig(example)).token;

  /** A token for another user, minted as run.py mints the page's, with the device's room. */
  async function tokenFor(user, room) {
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HERALD_")));
    const config = path.join(EXAMPLES, "pomodoro", "herald.yml");
    const { stdout } = await promisify(execFile)(
      gatewayBin(),
      ["token", "--config", config, "--site", "pomodoro", "--user", user, "--room", room],
      { env },
    );
    return stdout.trim();
  }

  /** The device's lines (printed through run.py) from `from` on that say it obeyed a command. */
  const obeyed = (from) => example.lines.slice(from).filter((line) => line.startsWith(`${device}: `) && / from user /.test(line));

  it("serves its page, with a token whose user is the device and whose room is the device's", async () => {
    const config = await assertPageServed(example, { more: ["device", "token"] });
    assert.equal(config.device, device);
    const claims = JSON.parse(Buffer.from(config.token.split(".")[1], "base64url").toString());
    assert.equal(claims.sub, device);
    assert.deepEqual(claims.rooms, [`pomodoro_${device}`]);
  });

  it("refuses a page without a token", async () => {
    await assert.rejects(waitConnected(openPage(example)), /a token is required/);
  });

  it("pushes the device's states (retained, unchanged ones skipped) and takes a page's commands to its device", { timeout: TEST_TIMEOUT_MS }, async () => {
    const token = await pageToken();
    const page = openPage(example, { auth: { token } });
    const states = record(page, "state");
    await waitConnected(page);
    await until(() => states.length === 1, STEP_TIMEOUT_MS, "the retained state");
    assert.deepEqual(states, [IDLE]);
    // The device publishes every second; the bridge (if_changed) skips a state equal to the retained one.
    await sleep(TWO_TICKS_MS);
    assert.deepEqual(states, [IDLE], "an idle device's unchanged states reach no page");

    let from = example.lines.length;
    assert.deepEqual(await emitAck(page, "command", device, { action: "start" }), [{ queued: true }]);
    await example.waitLine(new RegExp(`^${device}: start from user ${device}: work ${WORK_SECS} s$`), { from });
    await until(() => states.length >= 4, 3 * STEP_TIMEOUT_MS, "three states of the work phase");
    const work = (remaining) => [{ phase: "work", remaining }];
    assert.deepEqual(states.slice(1, 4), [work(WORK_SECS), work(WORK_SECS - 1), work(WORK_SECS - 2)], "a tick a second");

    from = example.lines.length;
    assert.deepEqual(await emitAck(page, "command", device, { action: "skip" }), [{ queued: true }]);
    await example.waitLine(new RegExp(`^${device}: skip from user ${device}: break ${BREAK_SECS} s$`), { from });
    await until(() => states.some(([state]) => state.phase === "break"), STEP_TIMEOUT_MS, "the break");
    const breakAt = states.findIndex(([state]) => state.phase === "break");
    assert.deepEqual(states[breakAt], [{ phase: "break", remaining: BREAK_SECS }]);
    assert.ok(states.slice(1, breakAt).every(([state]) => state.phase === "work"), JSON.stringify(states));

    assert.deepEqual(await emitAck(page, "command", device, { action: "stop" }), [{ queued: true }]);
    await until(() => states.at(-1)[0].phase === "idle", STEP_TIMEOUT_MS, "idle again");
    assert.deepEqual(states.at(-1), IDLE);
    const seen = states.length;

    // Idle: the device's states are all equal, so the bridge sends none. A page opened now gets the state only
    // if herald retained it, and gets it at once.
    const late = openPage(example, { auth: { token } });
    const lateStates = record(late, "state");
    // A page whose token is for another user, in the device's room: it sees the state, but its command goes to
    // pomodoro/<its user>/command ({user} in the route comes from the token), which the device does not read.
    const intruder = `other-${device}`;
    const other = openPage(example, { auth: { token: await tokenFor(intruder, `pomodoro_${device}`) } });
    const otherStates = record(other, "state");
    await Promise.all([waitConnected(late), waitConnected(other)]);
    await until(() => lateStates.length === 1 && otherStates.length === 1, STEP_TIMEOUT_MS, "the retained state");
    from = example.lines.length;
    assert.deepEqual(await emitAck(other, "command", device, { action: "start" }), [{ queued: true }]);
    await sleep(TWO_TICKS_MS);
    assert.deepEqual(lateStates, [IDLE], "the late page gets the current state at once, and nothing while it stays");
    assert.deepEqual(otherStates, [IDLE], "another user's command did not start the device");
    assert.equal(states.length, seen, "the first page got nothing more");
    assert.deepEqual(obeyed(from), [], "the device got no command from the other user");
  });
});

describe("examples/plain-clients: a plain WebSocket and an EventSource, no socket.io", { timeout: TEST_TIMEOUT_MS * 2 }, () => {
  const plain = new Clients();
  afterEach(() => plain.closeAll());
  let example;
  before(async () => {
    example = await startExample("plain-clients");
  });
  after(async () => {
    await example?.stop();
  });

  // Where the pages connect, with the Origin a browser sends for them (herald checks it: allowed_origins).
  const origin = () => ({ Origin: example.info.page });
  const wsUrl = () => `${example.info.herald.replace(/^http/, "ws")}/ws/${example.info.site}`;
  const sseUrl = () => `${example.info.herald}/sse/${example.info.site}`;

  const openSocket = async () => {
    const socket = plain.add(new PlainSocket(wsUrl(), { headers: origin() }));
    await socket.opened;
    return socket;
  };
  const openStream = async (url, headers = {}) => {
    const stream = plain.add(await EventStream.open(url, { headers: { ...origin(), ...headers } }));
    assert.equal(stream.status, 200, JSON.stringify(stream.body));
    assert.equal(stream.contentType, "text/event-stream");
    return stream;
  };
  // sse.html's EventSource is on herald's origin, not the page's: the browser reads the stream only when herald
  // answers the page's origin with credentialed CORS (see examples/plain-clients/README.md).
  const assertCors = (stream, what) => {
    assert.equal(stream.headers.get("access-control-allow-origin"), example.info.page, `${what}: the page's origin may read it`);
    assert.equal(stream.headers.get("access-control-allow-credentials"), "true", what);
  };
  const tickNumbers = (events) => events.map((e) => e.data[0].n);
  const consecutive = (numbers) => numbers.every((n, i) => i === 0 || n === numbers[i - 1] + 1);

  it("serves its pages: no socket.io, the browser's WebSocket and EventSource", async () => {
    const { page, herald, site } = example.info;
    const index = await fetchText(`${page}/`);
    assert.equal(index.status, 200);
    assert.match(index.text, /href="ws\.html"/);
    assert.match(index.text, /href="sse\.html"/);
    for (const [file, api] of [["ws.html", /new WebSocket\(/], ["sse.html", /new EventSource\(/]]) {
      const res = await fetchText(`${page}/${file}`);
      assert.equal(res.status, 200, file);
      assert.match(res.text, /<script src="\/config\.js"><\/script>/, file);
      assert.doesNotMatch(res.text, /<script src="[^"]*socket\.io/, `${file} loads no socket.io`);
      assert.match(res.text, api, file);
    }
    // sse.html opens its stream on herald itself (window.HERALD.url), not on the page's server.
    const ssePage = await fetchText(`${page}/sse.html`);
    assert.match(ssePage.text, /`\$\{HERALD\.url\}\/sse\/\$\{HERALD\.site\}`/, "sse.html's stream is on herald");
    assert.deepEqual(await pageConfig(example), { url: herald, site });
  });

  it("welcomes a plain WebSocket and an event stream into the lobby and ticks on both; another origin is refused", { timeout: TEST_TIMEOUT_MS }, async () => {
    const socket = await openSocket();
    const stream = await openStream(sseUrl());
    assertCors(stream, "the stream");
    const welcome = await socket.welcome();
    assert.deepEqual(welcome.rooms, ["lobby"]);
    assert.equal(typeof welcome.socket, "string");
    const { data } = await stream.next((e) => e.event === "welcome", "the stream's welcome");
    assert.deepEqual([data.type, data.rooms], ["welcome", ["lobby"]]);
    assert.equal(stream.events[0].event, "welcome", "the welcome comes first");

    await until(
      () => socket.events("tick").length >= 2 && stream.named("tick").length >= 2,
      3 * STEP_TIMEOUT_MS,
      "two ticks on each",
    );
    const frames = socket.events("tick");
    assert.ok(consecutive(frames.map((f) => f.args[0].n)), JSON.stringify(frames));
    for (const frame of frames) {
      assert.deepEqual(Object.keys(frame.args[0]).sort(), ["iso", "n"]);
      assert.match(frame.offset, /^\d+-\d+$/, "a logged publish carries its recovery offset");
    }
    const ticks = stream.named("tick");
    assert.ok(consecutive(tickNumbers(ticks)), JSON.stringify(ticks));
    for (const tick of ticks) assert.match(tick.id, /^\d+-\d+$/, "each event's id is its recovery offset");
    // The same publish reaches both kinds of client with the same arguments, and the stream's id is the offset.
    const shared = stream.named("tick").find((e) => frames.some((f) => f.args[0].n === e.data[0].n));
    assert.ok(shared, "a tick both got");
    const frame = frames.find((f) => f.args[0].n === shared.data[0].n);
    assert.deepEqual([frame.args, frame.offset], [shared.data, shared.id]);

    const evil = { Origin: "http://evil.example" };
    const refused = plain.add(await EventStream.open(sseUrl(), { headers: evil }));
    assert.deepEqual([refused.status, refused.body], [403, { error: "this origin may not connect" }]);
    assert.equal(refused.headers.get("access-control-allow-origin"), null, "no CORS answer for another origin");
    const refusedSocket = plain.add(new PlainSocket(wsUrl(), { headers: evil }));
    await assert.rejects(refusedSocket.opened, /403/);
  });

  it("relays a chat from one plain WebSocket to the other, and replies to its sender", { timeout: TEST_TIMEOUT_MS }, async () => {
    const alice = await openSocket();
    const bob = await openSocket();
    await Promise.all([alice.welcome(), bob.welcome()]);
    // What ws.html sends for a chat message: the room first, then the text.
    const reply = await alice.request("chat", ["lobby", "hello bob"], 1);
    assert.deepEqual(reply, { type: "reply", id: 1, args: [{ ok: true }] });
    const chat = await bob.next((f) => f.type === "event" && f.event === "chat", "the chat on bob's socket");
    assert.deepEqual(chat.args, ["lobby", "hello bob"]);
    assert.equal(chat.id, undefined, "a relay is live only: no mailbox entry to ack");

    const outside = await alice.request("chat", ["elsewhere", "psst"], 2);
    assert.deepEqual(outside, { type: "error", id: 2, error: "this socket is not in room 'elsewhere'" });
    const unrouted = await alice.request("shout", ["lobby", "HI"], 3);
    assert.deepEqual(unrouted, { type: "error", id: 3, error: "event 'shout' is not routed" });
    await sleep(QUIET_MS);
    assert.equal(alice.events("chat").length, 0, "a relay does not come back to its sender");
    assert.deepEqual(bob.events("chat").map((f) => f.args), [["lobby", "hello bob"]], "bob got the one chat");
  });

  it("resumes an event stream reopened with Last-Event-ID with exactly what it missed", { timeout: TEST_TIMEOUT_MS }, async () => {
    // Open all along: every tick published meanwhile, with its id.
    const watcher = await openStream(sseUrl());
    const first = await openStream(sseUrl());
    await until(() => first.named("tick").length >= 2, 3 * STEP_TIMEOUT_MS, "two ticks on the first stream");
    first.close();
    const lastId = first.lastId();
    const lastN = first.named("tick").at(-1).data[0].n;
    assert.equal(first.named("tick").at(-1).id, lastId);
    // Two more ticks published while it is away.
    await until(() => watcher.named("tick").some((e) => e.data[0].n >= lastN + 2), 3 * STEP_TIMEOUT_MS, "two ticks it misses");

    // EventSource's own reconnect sends Last-Event-ID; sse.html's "drop" reopens with ?lastEventId=, each with
    // the page's Origin. Each gets the same: what was logged after lastId, then live ticks.
    const resumed = [
      await openStream(sseUrl(), { "Last-Event-ID": lastId }),
      await openStream(`${sseUrl()}?lastEventId=${encodeURIComponent(lastId)}`),
    ];
    for (const [i, s] of resumed.entries()) assertCors(s, `resumed stream ${i}`);
    const withIds = (s) => s.events.filter((e) => e.id !== undefined);
    await until(() => resumed.every((s) => withIds(s).length >= 3), 3 * STEP_TIMEOUT_MS, "three ticks on each resumed stream");
    const watched = withIds(watcher);
    const at = watched.findIndex((e) => e.id === lastId);
    assert.ok(at >= 0, "the watcher got the last event the first stream got");
    for (const [i, s] of resumed.entries()) {
      assert.equal(s.events[0].event, "welcome", `stream ${i}: the welcome first`);
      const got = withIds(s);
      await until(() => withIds(watcher).length > at + got.length, STEP_TIMEOUT_MS, "the watcher to have as many");
      const expected = withIds(watcher).slice(at + 1, at + 1 + got.length);
      assert.deepEqual(got, expected, `stream ${i}: from the event after ${lastId} on, none missing or repeated`);
      assert.equal(got[0].data[0].n, lastN + 1, `stream ${i}`);
    }
  });
});
