// The Node side of `make soak` (tools/soak.py): Lambda-style invocations through the example
// client (examples/node/idemgate.mjs), any number at once, as the driver asks.
//
// stdin: one JSON object per line, {id, url, namespace, handlerName, event, remainingMs, kill,
// workMs, ledger}. stdout: one JSON line per invocation, {id, outcome, ran, result?, code?}.
// The work appends one line to the ledger (O_APPEND) as its side effect. With `kill`, the
// invocation "times out" there: it never completes nor releases, as if Lambda had ended it.
// An invocation whose work ran but whose complete failed reports "complete_failed".

import { appendFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";

import { IdemgateClient, idempotent } from "../examples/node/idemgate.mjs";

const handlers = new Map();
// The client only logs a failed complete; the driver must know, to deliver the event again.
const failedCompletes = new Set();

function handlerFor(url, namespace, handlerName) {
  const name = `${url} ${namespace} ${handlerName}`;
  if (!handlers.has(name)) {
    const client = new IdemgateClient({ url, namespace });
    const complete = client.complete.bind(client);
    client.complete = (key, held) =>
      complete(key, held).catch((error) => {
        failedCompletes.add(held.requestId);
        throw error;
      });
    handlers.set(
      name,
      idempotent(async (event, context) => context.work(event), { client, handlerName }),
    );
  }
  return handlers.get(name);
}

async function invoke(request) {
  const started = Date.now();
  const deadline = started + request.remainingMs;
  let ran = false;
  let killed;
  const wasKilled = new Promise((resolve) => {
    killed = resolve;
  });
  const context = {
    functionName: "soak",
    awsRequestId: request.id,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    async work(event) {
      ran = true;
      const line = { event: event.event, run: request.id, start_ms: Date.now(), lease_floor_ms: deadline };
      appendFileSync(request.ledger, `${JSON.stringify(line)}\n`, { flag: "a" });
      await sleep(request.workMs);
      if (request.kill) {
        killed();
        return new Promise(() => {}); // never settles: no complete, no release
      }
      return { event: event.event, run: request.id };
    },
  };
  const handler = handlerFor(request.url, request.namespace, request.handlerName);
  const answered = handler(request.event, context).then(
    (result) =>
      failedCompletes.delete(request.id) ? { outcome: "complete_failed" } : { outcome: "ok", result },
    (error) => ({ outcome: outcomeOf(error), code: error.code ?? error.name }),
  );
  const report = await Promise.race([answered, wasKilled.then(() => ({ outcome: "timed_out" }))]);
  process.stdout.write(`${JSON.stringify({ id: request.id, ran, ...report })}\n`);
}

function outcomeOf(error) {
  if (error.code === "IN_PROGRESS") return "in_progress";
  if (error.code === "IDEMPOTENCY_UNAVAILABLE") return "unavailable";
  return "error";
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (line.trim()) invoke(JSON.parse(line));
}
