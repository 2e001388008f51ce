// A claim's own lease token, against a scripted gateway on loopback: every try of one claim
// sends the same token, so a try answered 503 whose write landed is found again as its own.

import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer } from "node:http";
import { test } from "node:test";

import { IdemgateClient } from "../idemgate.mjs";

const PROPOSED_TOKEN = /^[A-Za-z0-9_-]{22,128}$/;

/** A gateway that answers each claim from `script` ([status, body]) and keeps what it got. */
async function scriptedGateway(script) {
  const bodies = [];
  const server = createServer(async (request, response) => {
    let text = "";
    for await (const chunk of request) text += chunk;
    const body = JSON.parse(text);
    bodies.push(body);
    const [status, answer] = script.shift();
    const type = status >= 400 ? "application/problem+json" : "application/json";
    response.writeHead(status, { "content-type": type, "retry-after": "1" });
    response.end(JSON.stringify(typeof answer === "function" ? answer(body) : answer));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const url = `http://127.0.0.1:${server.address().port}`;
  return { url, bodies, close: () => server.close() };
}

const unavailable = [503, { status: 503, code: "STORAGE_UNAVAILABLE" }];
const claimed = [201, (body) => ({ outcome: "claimed", lease_token: body.lease_token })];

test("resends the same token on every try of one claim, after a 503", async () => {
  const gateway = await scriptedGateway([unavailable, unavailable, claimed]);
  try {
    const client = new IdemgateClient({ url: gateway.url, namespace: "orders" });
    const claim = await client.claim("order-1", { leaseMs: 1000 });
    assert.equal(gateway.bodies.length, 3);
    const [token] = gateway.bodies.map((body) => body.lease_token);
    assert.match(token, PROPOSED_TOKEN);
    assert.deepEqual(
      gateway.bodies.map((body) => body.lease_token),
      [token, token, token],
    );
    assert.deepEqual(claim, { outcome: "claimed", leaseToken: token });
  } finally {
    gateway.close();
  }
});

test("makes a new token for each claim, and sends the one it is given", async () => {
  const gateway = await scriptedGateway([claimed, claimed, claimed]);
  try {
    const client = new IdemgateClient({ url: gateway.url, namespace: "orders" });
    await client.claim("order-1", { leaseMs: 1000 });
    await client.claim("order-2", { leaseMs: 1000 });
    const mine = "m".repeat(24);
    await client.claim("order-3", { leaseMs: 1000, leaseToken: mine });
    const [first, second, third] = gateway.bodies.map((body) => body.lease_token);
    assert.notEqual(first, second);
    assert.equal(third, mine);
  } finally {
    gateway.close();
  }
});
