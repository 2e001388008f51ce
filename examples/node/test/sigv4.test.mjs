// The client's SigV4 against AWS's published test suite (aws-sig-v4-test-suite, 2015-08-30): the
// same vectors as tests/adapter/test_sigv4.py checks the Python adapter's signer with.

import assert from "node:assert/strict";
import { test } from "node:test";

import { IamAuthorization, signV4 } from "../idemgate.mjs";

const credentials = {
  accessKeyId: "AKIDEXAMPLE",
  secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
};
const now = new Date(Date.UTC(2015, 7, 30, 12, 36, 0));
const suite = {
  "get-vanilla": [
    "GET",
    "https://example.amazonaws.com/",
    {},
    "",
    "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
  ],
  "get-vanilla-query-order-key-case": [
    "GET",
    "https://example.amazonaws.com/?Param2=value2&Param1=value1",
    {},
    "",
    "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
  ],
  "post-vanilla": [
    "POST",
    "https://example.amazonaws.com/",
    {},
    "",
    "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
  ],
  "post-x-www-form-urlencoded": [
    "POST",
    "https://example.amazonaws.com/",
    { "Content-Type": "application/x-www-form-urlencoded" },
    "Param1=value1",
    "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
  ],
};

for (const [name, [method, url, headers, body, signature]] of Object.entries(suite)) {
  test(`matches the published test suite: ${name}`, () => {
    const signed = signV4({
      method,
      url,
      headers,
      body,
      credentials,
      region: "us-east-1",
      service: "service",
      now,
    });
    assert.equal(signed["x-amz-date"], "20150830T123600Z");
    assert.ok(signed.authorization.endsWith(`Signature=${signature}`), signed.authorization);
    assert.match(
      signed.authorization,
      /^AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE\/20150830\/us-east-1\/service\/aws4_request, SignedHeaders=/,
    );
  });
}

test("signs the session token of temporary credentials", () => {
  const temporary = { ...credentials, sessionToken: "token/with+chars" };
  const signed = signV4({
    method: "POST",
    url: "https://sqs.eu-west-3.amazonaws.com/",
    body: "{}",
    credentials: temporary,
    region: "eu-west-3",
    service: "sqs",
    now,
  });
  assert.equal(signed["x-amz-security-token"], "token/with+chars");
  assert.match(signed.authorization, /SignedHeaders=host;x-amz-date;x-amz-security-token,/);
  const without = signV4({
    method: "POST",
    url: "https://sqs.eu-west-3.amazonaws.com/",
    body: "{}",
    credentials,
    region: "eu-west-3",
    service: "sqs",
    now,
  });
  assert.notEqual(signed.authorization, without.authorization);
});

test("an IAM proof is a signed GetCallerIdentity with the server id, reused until it ages", () => {
  let clock = 1_700_000_000_000;
  const iam = new IamAuthorization({
    serverId: "gw-1", region: "eu-west-1", stsUrl: undefined,
    credentials: () => credentials, clock: () => clock,
  });
  const first = iam.header();
  const proof = JSON.parse(Buffer.from(first.replace(/^AWS4-IAM /, ""), "base64").toString());
  assert.equal(proof.url, "https://sts.eu-west-1.amazonaws.com/");
  assert.equal(proof.body, "Action=GetCallerIdentity&Version=2011-06-15");
  assert.equal(proof.headers["x-idemgate-server-id"], "gw-1");
  const signedHeaders = "SignedHeaders=content-type;host;x-amz-date;x-idemgate-server-id,";
  assert.ok(proof.headers.authorization.includes(signedHeaders));
  clock += 239_000;
  assert.equal(iam.header(), first);
  clock += 1_000;
  assert.notEqual(iam.header(), first);
});

test("IAM auth without a server id or credentials fails at construction, clearly", () => {
  const withCredentials = () => credentials;
  const make = (serverId, found) => () =>
    new IamAuthorization({ serverId, region: "x", credentials: found });
  assert.throws(make("", withCredentials), /server id/);
  assert.throws(make("s", () => undefined), /AWS_ACCESS_KEY_ID/);
});
