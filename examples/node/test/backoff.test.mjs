// The SQS backoff function, offline: the same bounds as the Python adapter's SqsBackoff.

import assert from "node:assert/strict";
import { test } from "node:test";

import { processSqsBatch, sqsVisibilityTimeoutS } from "../idemgate.mjs";

test("doubles with each receive until the cap, without overflow", () => {
  const backoff = { baseS: 1, capS: 60, jitterS: 0 };
  const timeouts = [1, 2, 3, 4, 5, 6, 7].map((n) => sqsVisibilityTimeoutS(n, backoff));
  assert.deepEqual(timeouts, [2, 4, 8, 16, 32, 60, 60]);
  assert.equal(sqsVisibilityTimeoutS(1e9, backoff), 60);
});

test("never exceeds SQS's twelve hours, jitter included", () => {
  const backoff = { baseS: 3600, capS: 43_200, jitterS: 900 };
  assert.equal(
    sqsVisibilityTimeoutS(20, backoff, () => 0.999),
    43_200,
  );
});

test("adds a jitter spread over [0, jitterS], rounded up to whole seconds", () => {
  const backoff = { baseS: 1, capS: 900, jitterS: 10 };
  assert.equal(
    sqsVisibilityTimeoutS(3, backoff, () => 0),
    8,
  );
  assert.equal(
    sqsVisibilityTimeoutS(3, backoff, () => 0.999999),
    18,
  );
  const draws = new Set(Array.from({ length: 2000 }, () => sqsVisibilityTimeoutS(3, backoff)));
  for (let seconds = 9; seconds <= 18; seconds += 1) assert.ok(draws.has(seconds), `${seconds}`);
  assert.ok([...draws].every((seconds) => seconds >= 8 && seconds <= 18));
});

test("asks for its client up front", async () => {
  await assert.rejects(
    processSqsBatch({ Records: [] }, undefined, () => {}, {}),
    /pass client/,
  );
});

test("refuses an event that is not an SQS batch, whole", async () => {
  for (const event of [{}, { Records: "x" }, { Records: [{ body: "no id" }] }]) {
    await assert.rejects(
      processSqsBatch(event, undefined, () => {}, { client: {} }),
      /not an SQS event/,
    );
  }
});
