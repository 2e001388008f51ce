// Keys and fingerprints, offline: the shared canonical JSON vectors and the key rules.
// The live tests against a gateway are in tests/stack/test_node_client.py.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { canonicalJson, fingerprint, idempotencyKey, keyPrefix, sha256Hex } from "../idemgate.mjs";

const vectorsFile = new URL("../../../docs/canonical-json-vectors.json", import.meta.url);
const GATEWAY_KEY = /^[A-Za-z0-9._~:@=+-]{1,255}$/;

test("matches every shared canonical JSON vector, text and digest", () => {
  const vectors = JSON.parse(readFileSync(vectorsFile, "utf8"));
  assert.ok(vectors.length > 0);
  for (const { input, canonical, sha256 } of vectors) {
    assert.equal(canonicalJson(input), canonical);
    assert.equal(sha256Hex(input), sha256);
  }
});

test("sorts keys by UTF-16 code units and formats numbers as ECMAScript does", () => {
  const value = { "\u{1F600}": 1, "\uFB33": 2, b: [1e21, 1e-7, -0, 0.1, 100], a: "é\n" };
  const expected = '{"a":"é\\n","b":[1e+21,1e-7,0,0.1,100],"\u{1F600}":1,"\uFB33":2}';
  assert.equal(canonicalJson(value), expected);
});

test("keeps every digit of a BigInt, as Python keeps big integers", () => {
  assert.equal(canonicalJson({ order: 12345678901234567890n }), '{"order":12345678901234567890}');
});

test("refuses what is not JSON rather than guessing", () => {
  for (const value of [NaN, Infinity, undefined, new Date(0), () => 1, { nested: new Map() }]) {
    assert.throws(() => canonicalJson(value), TypeError);
  }
});

test("makes keys the gateway accepts from any function and handler name", () => {
  const names = { functionName: "orders/prod", handlerName: "src/index.handler" };
  const key = idempotencyKey({ id: 1 }, names);
  assert.equal(key, `orders_prod.src_index.handler:${sha256Hex({ id: 1 })}`);
  assert.match(key, GATEWAY_KEY);
  // One underscore per character, astral ones included, as Python counts code points.
  assert.equal(keyPrefix("café", "h\u{1F600}.x"), "caf_.h_.x");
});

test("shortens long names to 190 characters that still tell them apart", () => {
  const long = "f".repeat(300);
  const [first, second] = [keyPrefix(long, "a.handler"), keyPrefix(long, "b.handler")];
  assert.equal(first.length, 190);
  assert.notEqual(first, second);
  assert.match(first, /^f{173}~[0-9a-f]{16}$/);
  assert.match(idempotencyKey("x", { functionName: long, handlerName: "a.handler" }), GATEWAY_KEY);
});

test("fingerprints are the sha256 of the canonical payload, tagged", () => {
  assert.equal(fingerprint({ b: 1, a: 2 }), `sha256:${sha256Hex({ a: 2, b: 1 })}`);
});
