'use strict';
/*
 * One load-generator worker of `python -m bench` (the harness starts several, each its own process,
 * so no load is generated inside the server's event loop or inside one another's).
 *
 *   node bench/node/loadgen.cjs JOB.json
 *
 * Talks to the harness in JSON lines. stdout: {"event": "ready" | "connected" | "result" | "error", ...};
 * stdin: {"cmd": "go", "atUs": T, "durationUs": D, "warmupUs": W} and, for the crowd, {"cmd": "stop"}.
 * Times are CLOCK_MONOTONIC microseconds (process.hrtime in Node, time.monotonic_ns in Python): one
 * clock for every process on the machine, so a stamp taken in one worker can be compared in another.
 *
 * Modes (job.mode):
 *   ingest   K charge points, each sending MeterValues back-to-back (the next CALL after the CALLRESULT);
 *            with job.appUrl, each CP's transaction is started by its owner through the app API first
 *            and the owner keeps reading the meter_values_update pushes.
 *   fanout   charge points sending one MeterValues every job.periodMs on a shared schedule, their owners
 *            and admin watchers subscribed to "*", reading; per charge point counts for lost updates.
 *   crowd    a reconnect storm: every app client (auth) and charge point (BootNotification) at once,
 *            then idle with OCPP heartbeats until told to stop.
 *   command  users starting and stopping charges in a loop against quick charge points.
 *
 * Sampled values carry what the receiving side needs: the energy register (Wh) is the charge point's
 * MeterValues sequence number, the Voltage value is the send time (CLOCK_MONOTONIC seconds, 6 decimals),
 * which the server forwards as meterValue.energyImportKWh (seq / 1000) and meterValue.voltage.
 *
 * Frames are sent with an all-zero masking key (ws skips the XOR then): legal on the wire, the server
 * unmasks as usual, and it keeps the generator's per-message cost well below the server's.
 */

const fs = require('fs');
const readline = require('readline');
const { monitorEventLoopDelay } = require('perf_hooks');

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

let WebSocket;
try {
  WebSocket = require('ws');
} catch (err) {
  emit({ event: 'error', message: `cannot load the 'ws' package (${err.message}); run npm install` });
  process.exit(2);
}

const nowUs = () => Number(process.hrtime.bigint() / 1000n);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
const sleepUntilUs = (us) => sleep((us - nowUs()) / 1000);
const isoNow = () => new Date().toISOString();

/* ------------------------------------------------------------------ histograms */

/** Counts per value rounded to 3 significant digits (<= 0.5 % error); merged by the harness. */
class Hist {
  constructor() {
    this.buckets = new Map();
    this.count = 0;
  }
  add(us) {
    let key;
    if (us < 1000) key = Math.max(0, Math.round(us));
    else {
      const scale = 10 ** (Math.floor(Math.log10(us)) - 2);
      key = Math.round(us / scale) * scale;
    }
    this.buckets.set(key, (this.buckets.get(key) || 0) + 1);
    this.count++;
  }
  toJSON() {
    return Object.fromEntries(this.buckets);
  }
}

/* ------------------------------------------------------------------- sockets */

const zeroMask = (mask) => mask.fill(0);
const WS_OPTIONS = {
  perMessageDeflate: false,
  generateMask: zeroMask,
  skipUTF8Validation: true,
  maxPayload: 4 << 20,
};

const counters = { connectFailures: 0, lastConnectError: null };
let handshakeTimeoutMs = 15000; // job.handshakeTimeoutMs: a client gives up and retries after it

function openSocket(url, protocol, timeoutMs) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocol ? [protocol] : [], {
      ...WS_OPTIONS,
      handshakeTimeout: timeoutMs,
    });
    const cleanup = () => {
      ws.off('open', onOpen);
      ws.off('error', onError);
      ws.off('unexpected-response', onResponse);
    };
    const onOpen = () => {
      cleanup();
      ws.on('error', () => {});
      resolve(ws);
    };
    const onError = (err) => {
      cleanup();
      ws.on('error', () => {});
      try {
        ws.terminate();
      } catch (_) {
        /* already gone */
      }
      reject(err);
    };
    const onResponse = (req, res) => {
      onError(new Error(`HTTP ${res.statusCode} at upgrade`));
    };
    ws.on('open', onOpen);
    ws.on('error', onError);
    ws.on('unexpected-response', onResponse);
  });
}

/** Connect, retrying with jittered backoff (as a real client would) until the deadline. */
async function connect(url, protocol, deadlineUs, tally = null) {
  let delay = 200;
  for (;;) {
    try {
      return await openSocket(url, protocol, handshakeTimeoutMs);
    } catch (err) {
      counters.connectFailures++;
      counters.lastConnectError = String((err && err.message) || err);
      if (tally) tally.retries++;
      if (nowUs() + delay * 1000 > deadlineUs) throw err;
      await sleep(delay * (0.5 + Math.random()));
      delay = Math.min(delay * 2, 2000);
    }
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function pool(items, limit, fn) {
  let next = 0;
  const runners = [];
  for (let r = 0; r < Math.min(limit, items.length); r++) {
    runners.push(
      (async () => {
        while (next < items.length) {
          const index = next++;
          await fn(items[index], index);
        }
      })(),
    );
  }
  await Promise.all(runners);
}

/* -------------------------------------------------------------- charge point */

class OcppError extends Error {
  constructor(code, description) {
    super(`${code}: ${description}`);
    this.code = code;
  }
}

/**
 * An OCPP 1.6-J charge point: one outstanding CALL of its own at a time (later ones queue, as
 * OCPP-J requires), answers the central system's CALLs through `onServerCall`.
 */
class ChargePoint {
  constructor(id, baseUrl) {
    this.id = id;
    this.url = `${baseUrl}/${encodeURIComponent(id)}`;
    this.ws = null;
    this.nextId = 0;
    this.pending = null;
    this.queue = [];
    this.onServerCall = null;
    this.closedUnexpectedly = false;
    this.stopping = false;
    this.transactionId = null;
    this.meterSeq = 0;
    this.heartbeatInterval = 60;
  }

  async connect(deadlineUs, tally = null) {
    this.ws = await connect(this.url, 'ocpp1.6', deadlineUs, tally);
    this.ws.on('message', (data) => this._onMessage(data));
    this.ws.on('close', () => {
      if (!this.stopping) this.closedUnexpectedly = true;
      const pending = this.pending;
      this.pending = null;
      if (pending) pending.reject(new Error('connection closed'));
      for (const queued of this.queue.splice(0)) queued.reject(new Error('connection closed'));
    });
  }

  _onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (_) {
      return;
    }
    const kind = msg[0];
    if (kind === 3 || kind === 4) {
      const pending = this.pending;
      if (pending === null || pending.id !== msg[1]) return;
      this.pending = null;
      if (this.queue.length) this._send(this.queue.shift());
      if (kind === 3) pending.resolve(msg[2]);
      else pending.reject(new OcppError(msg[2], msg[3]));
      return;
    }
    if (kind === 2) {
      const receivedUs = nowUs();
      if (this.onServerCall) this.onServerCall(this, msg[1], msg[2], msg[3], receivedUs);
      else this.reply(msg[1], '{}');
    }
  }

  reply(uniqueId, payloadJson) {
    this.ws.send(`[3,"${uniqueId}",${payloadJson}]`);
  }

  replyError(uniqueId, code) {
    this.ws.send(`[4,"${uniqueId}","${code}","",{}]`);
  }

  /**
   * Send a CALL; `build()` makes the payload JSON at the moment it is sent (so stamps in it are
   * send times even when the CALL waited in the queue); `onSent(us)` is told that moment.
   */
  call(action, build, onSent) {
    return new Promise((resolve, reject) => {
      const entry = { id: null, action, build, onSent, resolve, reject };
      if (this.pending === null) this._send(entry);
      else this.queue.push(entry);
    });
  }

  _send(entry) {
    entry.id = 'c' + ++this.nextId;
    this.pending = entry;
    const payload = typeof entry.build === 'function' ? entry.build() : entry.build;
    if (entry.onSent) entry.onSent(nowUs());
    try {
      this.ws.send(`[2,"${entry.id}","${entry.action}",${payload}]`);
    } catch (err) {
      this.pending = null;
      entry.reject(err);
    }
  }

  boot() {
    return this.call(
      'BootNotification',
      '{"chargePointVendor":"BenchVendor","chargePointModel":"BenchModel","firmwareVersion":"1.0"}',
    ).then((reply) => {
      if (reply && Number.isInteger(reply.interval) && reply.interval > 0) {
        this.heartbeatInterval = reply.interval;
      }
      return reply;
    });
  }

  status(status) {
    return this.call(
      'StatusNotification',
      () => `{"connectorId":1,"errorCode":"NoError","status":"${status}","timestamp":"${isoNow()}"}`,
    );
  }

  close() {
    this.stopping = true;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
  }
}

function meterValuesPayload(cp, seq, stampUs) {
  const stamp = (stampUs / 1e6).toFixed(6);
  return (
    `{"connectorId":1,"transactionId":${cp.transactionId},"meterValue":[{"timestamp":"${isoNow()}",` +
    `"sampledValue":[{"value":"${seq}","context":"Sample.Periodic",` +
    `"measurand":"Energy.Active.Import.Register","unit":"Wh"},` +
    `{"value":"7400","measurand":"Power.Active.Import","unit":"W"},` +
    `{"value":"${stamp}","measurand":"Voltage","unit":"V"},` +
    `{"value":"32","measurand":"Current.Import","unit":"A"},` +
    `{"value":"55","measurand":"SoC","unit":"Percent","location":"EV"}]}]}`
  );
}

/**
 * How a bench charge point answers the central system: RemoteStart -> Accepted, then its
 * StartTransaction with the tag it was given; RemoteStop -> Accepted, then StopTransaction and
 * Available. `timing` records the charge point's own share of a command's latency.
 */
function quickChargePoint(cp, uniqueId, action, payload, receivedUs) {
  if (action === 'RemoteStartTransaction') {
    cp.reply(uniqueId, '{"status":"Accepted"}');
    const idTag = payload.idTag;
    const connectorId = payload.connectorId || 1;
    const started = cp.call(
      'StartTransaction',
      () =>
        `{"connectorId":${connectorId},"idTag":${JSON.stringify(idTag)},"meterStart":0,` +
        `"timestamp":"${isoNow()}"}`,
      (sentUs) => {
        cp.startCpUs = sentUs - receivedUs;
      },
    );
    cp.started = started.then((reply) => {
      cp.transactionId = reply.transactionId;
      cp.status('Charging').catch(() => {});
      return reply.transactionId;
    });
    cp.started.catch(() => {});
    return;
  }
  if (action === 'RemoteStopTransaction') {
    cp.reply(uniqueId, '{"status":"Accepted"}');
    cp.stopCpUs = nowUs() - receivedUs;
    const transactionId = payload.transactionId;
    const stopped = cp.call(
      'StopTransaction',
      () =>
        `{"transactionId":${transactionId},"meterStop":1000,"timestamp":"${isoNow()}",` +
        `"reason":"Remote"}`,
    );
    cp.stopped = Promise.all([stopped, cp.status('Available')]).then(() => {
      cp.transactionId = null;
    });
    cp.stopped.catch(() => {});
    return;
  }
  cp.replyError(uniqueId, 'NotImplemented');
}

/* ---------------------------------------------------------------- app client */

class AppClient {
  constructor(url, token, user) {
    this.url = url;
    this.token = token;
    this.user = user;
    this.ws = null;
    this.nextId = 0;
    this.waiting = new Map();
    this.onPush = null;
    this.lastSeq = 0;
    this.seqGaps = 0;
    this.closedUnexpectedly = false;
    this.stopping = false;
  }

  async connect(deadlineUs, tally = null) {
    this.ws = await connect(this.url, null, deadlineUs, tally);
    this.ws.on('message', (data) => this._onMessage(data));
    this.ws.on('close', () => {
      if (!this.stopping) this.closedUnexpectedly = true;
      for (const [, waiter] of this.waiting) waiter.reject(new Error('connection closed'));
      this.waiting.clear();
    });
  }

  _onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (_) {
      return;
    }
    if (typeof msg.seq === 'number' && msg.seq > 0) {
      if (msg.seq > this.lastSeq + 1) this.seqGaps += msg.seq - this.lastSeq - 1;
      if (msg.seq > this.lastSeq) this.lastSeq = msg.seq;
      if (this.onPush) this.onPush(msg, this);
      return;
    }
    const waiter = this.waiting.get(msg.id);
    if (waiter) {
      this.waiting.delete(msg.id);
      waiter.resolve(msg);
    }
  }

  request(type, data, timeoutMs = 30000) {
    const id = 'r' + ++this.nextId;
    const answer = new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
    });
    this.ws.send(JSON.stringify({ id, type, timestamp: isoNow(), data }));
    return withTimeout(answer, timeoutMs, type).finally(() => this.waiting.delete(id));
  }

  async auth() {
    const reply = await this.request('auth_request', { token: this.token });
    if (!reply.data || reply.data.success !== true) {
      throw new Error(`auth failed for ${this.user}: ${JSON.stringify(reply.error || reply.data)}`);
    }
    this.lastSeq = reply.data.seq || 0;
  }

  close() {
    this.stopping = true;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
  }
}

/** The error code of a failed reply; the first message seen for each code is kept. */
const errorSamples = {};
function errorCode(reply) {
  const code = (reply && reply.error && reply.error.code) || 'UNEXPECTED_REPLY';
  if (!(code in errorSamples)) {
    errorSamples[code] = String((reply && reply.error && reply.error.message) || JSON.stringify(reply))
      .slice(0, 300);
  }
  return code;
}

/* ------------------------------------------------------------ harness link */

const commands = [];
let commandWaiter = null;
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (_) {
    return;
  }
  if (commandWaiter) {
    const waiter = commandWaiter;
    commandWaiter = null;
    waiter(cmd);
  } else commands.push(cmd);
});
process.stdin.on('end', () => process.exit(3)); // the harness is gone

function nextCommand() {
  if (commands.length) return Promise.resolve(commands.shift());
  return new Promise((resolve) => {
    commandWaiter = resolve;
  });
}

function machineFacts(cpuStart, wallStartUs, loopDelay) {
  const cpu = process.cpuUsage(cpuStart);
  const wall = Math.max(1, nowUs() - wallStartUs);
  return {
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    cpuFraction: (cpu.user + cpu.system) / wall,
    loopDelayP99Ms: loopDelay.percentile(99) / 1e6,
    loopDelayMaxMs: loopDelay.max / 1e6,
  };
}

async function closeAll(clients, graceMs = 3000) {
  const closed = clients
    .filter((c) => c && c.ws && c.ws.readyState !== WebSocket.CLOSED)
    .map((c) => new Promise((resolve) => {
      c.ws.once('close', resolve);
      c.close();
    }));
  await Promise.race([Promise.all(closed), sleep(graceMs)]);
  for (const c of clients) {
    if (c && c.ws && c.ws.readyState !== WebSocket.CLOSED) c.ws.terminate();
  }
}

/* -------------------------------------------------------------- common setup */

/** Connect and boot every charge point; with owners, start each one's charge through the app API. */
async function setupSessions(job, deadlineUs) {
  const cps = job.pairs.map((p) => new ChargePoint(p.cp, job.ocppUrl));
  const concurrency = job.connectConcurrency || 32;
  const cpStarts = job.appUrl && job.startBy === 'cp';
  await pool(cps, concurrency, async (cp, i) => {
    cp.onServerCall = quickChargePoint;
    await cp.connect(deadlineUs);
    await withTimeout(cp.boot(), 60000, 'BootNotification');
    if (!cpStarts) {
      await withTimeout(cp.status('Available'), 60000, 'StatusNotification');
      return;
    }
    // The charge point starts on its own with the owner's (registered) id tag.
    const tag = job.pairs[i].tag;
    const reply = await withTimeout(
      cp.call(
        'StartTransaction',
        () => `{"connectorId":1,"idTag":"${tag}","meterStart":0,"timestamp":"${isoNow()}"}`,
      ),
      60000,
      'StartTransaction',
    );
    if (!reply.idTagInfo || reply.idTagInfo.status !== 'Accepted') {
      throw new Error(`${cp.id}: StartTransaction with ${tag}: ${JSON.stringify(reply)}`);
    }
    cp.transactionId = reply.transactionId;
  });
  if (!job.appUrl) {
    cps.forEach((cp, i) => {
      cp.transactionId = job.pairs[i].fakeTransactionId || i + 1;
    });
    return { cps, apps: [] };
  }
  const apps = job.pairs.map((p) => new AppClient(job.appUrl, p.token, p.user));
  await pool(apps, concurrency, async (app, i) => {
    const cp = cps[i];
    await app.connect(deadlineUs);
    await app.auth();
    if (cpStarts) return;
    const reply = await app.request(
      'start_charging_request',
      { chargePointId: cp.id, connectorId: 1 },
      60000,
    );
    if (!reply.data || reply.data.success !== true) {
      throw new Error(`start on ${cp.id} failed: ${JSON.stringify(reply.error || reply.data)}`);
    }
    await withTimeout(cp.started, 30000, 'StartTransaction');
    if (cp.transactionId !== reply.data.transactionId) {
      throw new Error(`${cp.id}: transaction ${reply.data.transactionId} != ${cp.transactionId}`);
    }
  });
  return { cps, apps };
}

/* ------------------------------------------------------------------ ingest */

async function runIngest(job) {
  const deadlineUs = nowUs() + job.setupTimeoutMs * 1000;
  const { cps, apps } = await setupSessions(job, deadlineUs);
  const pushLatency = new Hist();
  let pushes = 0;
  let pushesInWindow = 0;
  let windowStart = Infinity;
  let windowEnd = Infinity;
  for (const app of apps) {
    app.onPush = (msg) => {
      if (msg.type !== 'meter_values_update') return;
      const t = nowUs();
      pushes++;
      if (t >= windowStart && t < windowEnd) {
        pushesInWindow++;
        pushLatency.add(t - Math.round(msg.data.meterValue.voltage * 1e6));
      }
    };
  }
  emit({ event: 'ready', cps: cps.length, apps: apps.length });

  const go = await nextCommand();
  windowStart = go.atUs + go.warmupUs;
  windowEnd = windowStart + go.durationUs;
  const rtt = new Hist();
  let sent = 0;
  let answered = 0;
  let answeredInWindow = 0;
  let errors = 0;
  let lastError = null;
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  await sleepUntilUs(go.atUs);
  let cpuStart = null;
  let measureStartUs = 0;
  const startMeasure = setTimeout(() => {
    cpuStart = process.cpuUsage();
    measureStartUs = nowUs();
    loopDelay.enable();
  }, (windowStart - nowUs()) / 1000);
  let facts = null;
  const stopMeasure = new Promise((resolve) => {
    setTimeout(() => {
      facts = machineFacts(cpuStart || process.cpuUsage(), measureStartUs || nowUs(), loopDelay);
      resolve();
    }, (windowEnd - nowUs()) / 1000);
  });

  const loops = cps.map(
    (cp) =>
      new Promise((resolve) => {
        const next = () => {
          if (nowUs() >= windowEnd) {
            resolve();
            return;
          }
          let sentUs = 0;
          const seq = ++cp.meterSeq;
          sent++;
          cp.call(
            'MeterValues',
            () => meterValuesPayload(cp, seq, nowUs()),
            (t) => {
              sentUs = t;
            },
          ).then(
            () => {
              const t = nowUs();
              answered++;
              if (t >= windowStart && t < windowEnd) {
                answeredInWindow++;
                rtt.add(t - sentUs);
              }
              next();
            },
            (err) => {
              errors++;
              lastError = String(err.message || err);
              if (cp.ws.readyState === WebSocket.OPEN) setTimeout(next, 10);
              else resolve();
            },
          );
        };
        next();
      }),
  );
  await Promise.race([Promise.all(loops), sleep((windowEnd - nowUs()) / 1000 + 10000)]);
  await stopMeasure;
  clearTimeout(startMeasure);
  // Let the pushes of the last samples arrive.
  let seen = -1;
  for (let i = 0; i < 20 && apps.length && seen !== pushes; i++) {
    seen = pushes;
    await sleep(250);
  }
  // Every sample stored? Ask the server for a few transactions' samples (it flushes first).
  let storedSent = 0;
  let storedFound = 0;
  for (let i = 0; i < Math.min(3, apps.length); i++) {
    try {
      const reply = await apps[i].request('get_meter_values', {
        transactionId: cps[i].transactionId,
      });
      storedSent += cps[i].meterSeq;
      storedFound += reply.data && Array.isArray(reply.data.meterValues)
        ? reply.data.meterValues.length
        : 0;
    } catch (err) {
      lastError = `get_meter_values: ${err.message}`;
    }
  }
  emit({
    storedSent,
    storedFound,
    event: 'result',
    sent,
    answered,
    answeredInWindow,
    errors,
    lastError,
    rtt: rtt.toJSON(),
    pushes,
    pushesInWindow,
    pushLatency: pushLatency.toJSON(),
    seqGaps: apps.reduce((n, a) => n + a.seqGaps, 0),
    unexpectedCloses:
      cps.filter((c) => c.closedUnexpectedly).length + apps.filter((a) => a.closedUnexpectedly).length,
    connectFailures: counters.connectFailures,
    ...facts,
  });
  await closeAll([...cps, ...apps]);
}

/* ------------------------------------------------------------------ fan-out */

async function runFanout(job) {
  const deadlineUs = nowUs() + job.setupTimeoutMs * 1000;
  const { cps, apps } = await setupSessions(job, deadlineUs);
  const admins = job.admins.map((a) => new AppClient(job.appUrl, a.token, a.user));
  await pool(admins, 8, async (admin) => {
    await admin.connect(deadlineUs);
    await admin.auth();
    const reply = await admin.request('subscribe', { chargePointIds: '*' });
    if (!reply.data || reply.data.success !== true) {
      throw new Error(`subscribe failed: ${JSON.stringify(reply.error || reply.data)}`);
    }
  });

  const ownerLatency = new Hist();
  const adminLatency = new Hist();
  const ownerCounts = {};
  const adminCounts = admins.map(() => ({}));
  let received = 0;
  let receivedInWindow = 0;
  let windowStart = Infinity;
  let windowEnd = Infinity;
  let lastPushUs = 0;
  const onMeter = (counts, latency) => (msg) => {
    if (msg.type !== 'meter_values_update') return;
    const t = nowUs();
    const mv = msg.data.meterValue;
    latency.add(t - Math.round(mv.voltage * 1e6));
    const cp = msg.data.chargePointId;
    counts[cp] = (counts[cp] || 0) + 1;
    received++;
    lastPushUs = t;
    if (t >= windowStart && t < windowEnd) receivedInWindow++;
  };
  for (const app of apps) app.onPush = onMeter(ownerCounts, ownerLatency);
  admins.forEach((admin, i) => {
    admin.onPush = onMeter(adminCounts[i], adminLatency);
  });
  emit({ event: 'ready', cps: cps.length, apps: apps.length, admins: admins.length });

  const go = await nextCommand();
  windowStart = go.atUs;
  windowEnd = go.atUs + go.durationUs;
  const period = job.periodMs * 1000;
  const rtt = new Hist();
  const sentCounts = {};
  let late = 0;
  let errors = 0;
  let lastError = null;
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  await sleepUntilUs(go.atUs);
  loopDelay.enable();
  const cpuStart = process.cpuUsage();
  const measureStartUs = nowUs();

  const loops = cps.map((cp, i) => {
    const offset = Math.floor((job.pairs[i].index * period) / job.total);
    sentCounts[cp.id] = 0;
    return new Promise((resolve) => {
      let k = 0;
      let inFlight = false;
      let owed = false;
      let done = false;
      const send = () => {
        inFlight = true;
        const seq = ++cp.meterSeq;
        sentCounts[cp.id] = seq;
        let sentUs = 0;
        cp.call(
          'MeterValues',
          () => meterValuesPayload(cp, seq, nowUs()),
          (t) => {
            sentUs = t;
          },
        ).then(
          () => {
            rtt.add(nowUs() - sentUs);
            inFlight = false;
            if (owed) {
              owed = false;
              send();
            } else if (done) resolve();
          },
          (err) => {
            errors++;
            lastError = String(err.message || err);
            inFlight = false;
            owed = false;
            if (done) resolve();
          },
        );
      };
      const tick = () => {
        const due = go.atUs + offset + k * period;
        if (due >= windowEnd) {
          done = true;
          if (!inFlight) resolve();
          return;
        }
        k++;
        if (inFlight) {
          late++;
          owed = true;
        } else send();
        setTimeout(tick, (go.atUs + offset + k * period - nowUs()) / 1000);
      };
      setTimeout(tick, (go.atUs + offset - nowUs()) / 1000);
    });
  });
  await Promise.race([Promise.all(loops), sleep((windowEnd - nowUs()) / 1000 + 15000)]);
  const facts = machineFacts(cpuStart, measureStartUs, loopDelay);
  // Drain: wait until no update has arrived for 1.5 s (other workers' samples included), <= 15 s.
  const drainEnd = nowUs() + 15e6;
  while (nowUs() < drainEnd && nowUs() - Math.max(lastPushUs, windowEnd) < 1.5e6) await sleep(100);
  emit({
    event: 'result',
    sentCounts,
    late,
    errors,
    lastError,
    rtt: rtt.toJSON(),
    ownerCounts,
    adminCounts,
    ownerLatency: ownerLatency.toJSON(),
    adminLatency: adminLatency.toJSON(),
    received,
    receivedInWindow,
    seqGaps: [...apps, ...admins].reduce((n, a) => n + a.seqGaps, 0),
    unexpectedCloses: [...cps, ...apps, ...admins].filter((c) => c.closedUnexpectedly).length,
    connectFailures: counters.connectFailures,
    ...facts,
  });
  await closeAll([...cps, ...apps, ...admins]);
}

/* -------------------------------------------------------------------- crowd */

async function runCrowd(job) {
  const apps = job.apps.map((a) => new AppClient(job.appUrl, a.token, a.user));
  const cps = job.cps.map((id) => new ChargePoint(id, job.ocppUrl));
  emit({ event: 'ready', cps: cps.length, apps: apps.length });
  const go = await nextCommand();
  await sleepUntilUs(go.atUs);
  const deadlineUs = go.atUs + job.connectDeadlineMs * 1000;
  const tally = () => ({ done: 0, failed: 0, retries: 0, lastDoneUs: 0, lastError: null, doneAtUs: [] });
  const kinds = { app: tally(), cp: tally() };
  let heartbeatsSent = 0;
  let heartbeatsAnswered = 0;
  let heartbeatErrors = 0;
  let holding = true;
  const timers = [];
  const finish = (kind) => {
    const t = nowUs();
    kind.done++;
    if (t > kind.lastDoneUs) kind.lastDoneUs = t;
    kind.doneAtUs.push(t - go.atUs);
  };
  const onFailure = (kind, err) => {
    kind.failed++;
    kind.lastError = String((err && err.message) || err);
  };
  const appTasks = apps.map(async (app) => {
    try {
      await app.connect(deadlineUs, kinds.app);
      await app.auth();
      finish(kinds.app);
    } catch (err) {
      onFailure(kinds.app, err);
    }
  });
  const heartbeat = (cp) => {
    if (!holding || cp.ws.readyState !== WebSocket.OPEN) return;
    heartbeatsSent++;
    cp.call('Heartbeat', '{}').then(
      () => {
        heartbeatsAnswered++;
      },
      () => {
        heartbeatErrors++;
      },
    );
    timers.push(setTimeout(() => heartbeat(cp), cp.heartbeatInterval * 1000));
  };
  const cpTasks = cps.map(async (cp) => {
    try {
      await cp.connect(deadlineUs, kinds.cp);
      await withTimeout(cp.boot(), 60000, 'BootNotification');
      finish(kinds.cp);
      // Heartbeats at the interval the central system gave, from a random phase.
      timers.push(setTimeout(() => heartbeat(cp), Math.random() * cp.heartbeatInterval * 1000));
    } catch (err) {
      onFailure(kinds.cp, err);
    }
  });
  await Promise.all([...appTasks, ...cpTasks]);
  const failed = kinds.app.failed + kinds.cp.failed;
  // Completion times in whole seconds after go -> count, for the accept curve.
  for (const kind of Object.values(kinds)) {
    const curve = {};
    for (const us of kind.doneAtUs) {
      const second = Math.floor(us / 1e6);
      curve[second] = (curve[second] || 0) + 1;
    }
    kind.doneAtUs = undefined;
    kind.curve = curve;
  }
  emit({
    event: 'connected',
    lastDoneUs: Math.max(kinds.app.lastDoneUs, kinds.cp.lastDoneUs),
    ok: apps.length + cps.length - failed,
    failed,
    lastError: kinds.cp.lastError || kinds.app.lastError,
    kinds,
    connectFailures: counters.connectFailures,
    lastConnectError: counters.lastConnectError,
  });
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  loopDelay.enable();
  const cpuStart = process.cpuUsage();
  const holdStartUs = nowUs();
  const answeredBeforeHold = heartbeatsAnswered;
  await nextCommand(); // stop
  holding = false;
  timers.forEach(clearTimeout);
  const facts = machineFacts(cpuStart, holdStartUs, loopDelay);
  emit({
    event: 'result',
    heartbeatsSent,
    heartbeatsAnswered,
    heartbeatsAnsweredIdle: heartbeatsAnswered - answeredBeforeHold,
    heartbeatErrors,
    unexpectedCloses: [...cps, ...apps].filter((c) => c.closedUnexpectedly).length,
    ...facts,
  });
  await closeAll([...cps, ...apps], 5000);
}

/* ------------------------------------------------------------------ command */

async function runCommand(job) {
  const deadlineUs = nowUs() + job.setupTimeoutMs * 1000;
  const cps = job.pairs.map((p) => new ChargePoint(p.cp, job.ocppUrl));
  const apps = job.pairs.map((p) => new AppClient(job.appUrl, p.token, p.user));
  await pool(cps, 32, async (cp, i) => {
    cp.onServerCall = quickChargePoint;
    await cp.connect(deadlineUs);
    await withTimeout(cp.boot(), 30000, 'BootNotification');
    await withTimeout(cp.status('Available'), 30000, 'StatusNotification');
    await apps[i].connect(deadlineUs);
    await apps[i].auth();
  });
  emit({ event: 'ready', cps: cps.length, apps: apps.length });

  const go = await nextCommand();
  const endUs = go.atUs + go.durationUs;
  const startTotal = new Hist();
  const startOverhead = new Hist();
  const startCp = new Hist();
  const stopTotal = new Hist();
  const stopOverhead = new Hist();
  const errors = {};
  let cycles = 0;
  const [thinkMin, thinkMax] = job.thinkMs;
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  await sleepUntilUs(go.atUs);
  loopDelay.enable();
  const cpuStart = process.cpuUsage();
  const measureStartUs = nowUs();
  const fail = (code) => {
    errors[code] = (errors[code] || 0) + 1;
  };

  const users = apps.map(async (app, i) => {
    const cp = cps[i];
    await sleep(Math.random() * thinkMax); // spread the first taps
    while (nowUs() < endUs) {
      cp.startCpUs = null;
      cp.started = null;
      const t0 = nowUs();
      let reply;
      try {
        reply = await app.request('start_charging_request', { chargePointId: cp.id, connectorId: 1 });
      } catch (err) {
        fail('NO_REPLY');
        break;
      }
      const t1 = nowUs();
      let transactionId;
      if (!reply.data || reply.data.success !== true) {
        fail(errorCode(reply));
        // A transaction may have started all the same (e.g. after a timeout): stop it.
        if (cp.started) await cp.started.catch(() => {});
        if (cp.transactionId === null) {
          await sleep(thinkMin);
          continue;
        }
        transactionId = cp.transactionId;
      } else {
        // The app learns the id from the response (the charge point's copy of it may still be
        // on its way: the two sockets are not ordered with each other).
        transactionId = reply.data.transactionId;
        startTotal.add(t1 - t0);
        if (cp.startCpUs !== null) {
          startCp.add(cp.startCpUs);
          startOverhead.add(t1 - t0 - cp.startCpUs);
        }
      }
      cp.stopped = null;
      const t2 = nowUs();
      try {
        reply = await app.request('stop_charging_request', {
          chargePointId: cp.id,
          transactionId,
        });
      } catch (err) {
        fail('NO_REPLY');
        break;
      }
      const t3 = nowUs();
      if (!reply.data || reply.data.success !== true) fail(errorCode(reply));
      else {
        stopTotal.add(t3 - t2);
        stopOverhead.add(t3 - t2 - (cp.stopCpUs || 0));
      }
      if (cp.stopped) {
        try {
          await withTimeout(cp.stopped, 30000, 'StopTransaction');
        } catch (err) {
          fail('CP_STOP_FAILED');
          break;
        }
      }
      cycles++;
      await sleep(thinkMin + Math.random() * (thinkMax - thinkMin));
    }
  });
  await Promise.race([Promise.all(users), sleep((endUs - nowUs()) / 1000 + 60000)]);
  const facts = machineFacts(cpuStart, measureStartUs, loopDelay);
  emit({
    event: 'result',
    cycles,
    errors,
    errorSamples,
    startTotal: startTotal.toJSON(),
    startOverhead: startOverhead.toJSON(),
    startCp: startCp.toJSON(),
    stopTotal: stopTotal.toJSON(),
    stopOverhead: stopOverhead.toJSON(),
    unexpectedCloses: [...cps, ...apps].filter((c) => c.closedUnexpectedly).length,
    connectFailures: counters.connectFailures,
    ...facts,
  });
  await closeAll([...cps, ...apps]);
}

/* --------------------------------------------------------------------- main */

async function main() {
  const job = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  if (job.handshakeTimeoutMs) handshakeTimeoutMs = job.handshakeTimeoutMs;
  const lifetime = setTimeout(() => {
    emit({ event: 'error', message: `worker still running after ${job.maxLifetimeMs} ms` });
    process.exit(4);
  }, job.maxLifetimeMs);
  lifetime.unref();
  const modes = { ingest: runIngest, fanout: runFanout, crowd: runCrowd, command: runCommand };
  const run = modes[job.mode];
  if (!run) throw new Error(`unknown mode ${job.mode}`);
  await run(job);
}

main().then(
  () => process.exit(0),
  (err) => {
    emit({
      event: 'error',
      message: String((err && err.stack) || err),
      connectFailures: counters.connectFailures,
      lastConnectError: counters.lastConnectError,
    });
    process.exit(1);
  },
);
