// One Lambda-style invocation of an idempotent Node handler, for tests/stack/test_node_client.py.
//
// Environment: IDEMGATE_URL and IDEMGATE_NAMESPACE (read by the client), EVENT (JSON),
// FUNCTION_NAME, HANDLER_NAME, EFFECTS (a file the handler appends its PID to: the side effect
// that must happen once), WORK_MS (how long the work takes), FAIL ("1": the work throws),
// PROCEED_FILE (the work, once started, waits until this file exists: the test creates it when
// every other invocation has been answered) and REMAINING_MS (the invocation's time left).
// Prints one JSON line: the key, whether this process ran the work, and its result or error.

import { appendFileSync, existsSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";

import {
  IdemgateClient,
  fingerprint,
  idempotencyKey,
  idempotent,
} from "../../../examples/node/idemgate.mjs";

const {
  EVENT,
  FUNCTION_NAME,
  HANDLER_NAME,
  EFFECTS,
  WORK_MS = "0",
  FAIL,
  PROCEED_FILE,
  REMAINING_MS = "10000",
} = process.env;
const event = JSON.parse(EVENT);
let ran = false;

const handler = idempotent(
  async (order) => {
    ran = true;
    appendFileSync(EFFECTS, `${process.pid}\n`);
    await sleep(Number(WORK_MS));
    while (PROCEED_FILE && !existsSync(PROCEED_FILE)) await sleep(10);
    if (FAIL === "1") throw new Error("the work failed");
    return { processedBy: process.pid, order: order.order };
  },
  {
    client: new IdemgateClient(),
    handlerName: HANDLER_NAME,
    payloadValidation: (payload) => payload,
  },
);
const context = {
  functionName: FUNCTION_NAME,
  awsRequestId: `node-${process.pid}`,
  getRemainingTimeInMillis: () => Number(REMAINING_MS),
};

const report = {
  key: idempotencyKey(event, { functionName: FUNCTION_NAME, handlerName: HANDLER_NAME }),
  fingerprint: fingerprint(event),
};
try {
  const result = await handler(event, context);
  console.log(JSON.stringify({ ...report, ran, result }));
} catch (error) {
  console.log(JSON.stringify({ ...report, ran, error: error.name, code: error.code }));
}
