// One Lambda invocation of a Node SQS batch handler, for tests/stack/test_node_sqs_batch.py.
//
// Stdin: the SQS event. Environment: IDEMGATE_URL and IDEMGATE_NAMESPACE (read by the client),
// the AWS credentials the SQS calls are signed with, SQS_ENDPOINT_URL, REMAINING_MS (the fake
// context's time), BACKOFF (JSON, {baseS, capS, jitterS}), LEDGER (a file each record's order
// is appended to: the side effect that must happen once), FAIL (comma-separated orders whose
// handler throws), SLOW (an order whose handler first waits SLOW_MS), KEY ("order": key on
// the body's order instead of the messageId) and DEAD_LETTER (JSON, {queueArn, afterReceives}).
// Prints the handler's response as one JSON line.

import { appendFileSync, readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";

import { IdemgateClient, processSqsBatch } from "../../../examples/node/idemgate.mjs";

const {
  REMAINING_MS = "10000",
  BACKOFF,
  DEAD_LETTER,
  LEDGER,
  FAIL = "",
  SLOW,
  SLOW_MS = "0",
  KEY,
} = process.env;
const event = JSON.parse(readFileSync(0, "utf8"));
const failing = new Set(FAIL.split(",").filter(Boolean));
const started = performance.now();
const context = {
  functionName: "orders-fn",
  awsRequestId: `node-${process.pid}`,
  // Whole milliseconds, as Lambda gives them.
  getRemainingTimeInMillis: () =>
    Math.max(0, Math.floor(Number(REMAINING_MS) - (performance.now() - started))),
};

const response = await processSqsBatch(
  event,
  context,
  async (record) => {
    const { order } = JSON.parse(record.body);
    if (order === SLOW) await sleep(Number(SLOW_MS));
    if (failing.has(order)) throw new Error(`the payment service refused ${order}`);
    appendFileSync(LEDGER, `${order}\n`);
    return { charged: order };
  },
  {
    client: new IdemgateClient(),
    handlerName: "index.handler",
    eventKey: KEY === "order" ? (record) => JSON.parse(record.body).order : undefined,
    reserveMs: 100,
    backoff: BACKOFF ? JSON.parse(BACKOFF) : undefined,
    deadLetter: DEAD_LETTER ? JSON.parse(DEAD_LETTER) : undefined,
    sqsEndpointUrl: process.env.SQS_ENDPOINT_URL,
  },
);
console.log(JSON.stringify(response));
