// An idemgate client for Node.js 20+, without dependencies: built-in fetch, node:crypto.
//
// It does what the Python Lambda adapter does (docs/lambda-adapter.md), and computes the same
// keys and fingerprints from the same data, so a Node and a Python function can share records:
//
//   import { IdemgateClient, idempotent } from "./idemgate.mjs";
//   const client = new IdemgateClient(); // IDEMGATE_URL, IDEMGATE_NAMESPACE
//   export const handler = idempotent(async (event) => charge(event), { client });
//
// A handler's key is `{function name}.{handler name}:{sha256 of the canonical JSON of the event}`
// where the handler name is Lambda's handler setting (`_HANDLER`, e.g. `index.handler`), just as
// the Python adapter uses `{module}.{qualname}`.

import { createHash, createHmac } from "node:crypto";

const KEY_UNSAFE = /[^A-Za-z0-9._~@=+-]/gu;
const MAX_PREFIX = 190; // a key is at most 255: less ":" and 64 hex digits
const MAX_LEASE_MS = 900_000;
const RETRYABLE_STATUSES = new Set([429, 502, 503, 504]);
const BACKOFF_BASE_MS = 50;
const BACKOFF_CAP_MS = 1000;

export class IdempotencyError extends Error {
  constructor(message, { code = "IDEMPOTENCY_ERROR", requestId, gatewayRequestId, cause } = {}) {
    super(message, { cause });
    this.name = new.target.name;
    this.code = code;
    this.requestId = requestId;
    this.gatewayRequestId = gatewayRequestId;
  }
}

/** No data to make the key from, or data that is not JSON. */
export class IdempotencyKeyError extends IdempotencyError {}

/** Another invocation holds the key; `retryAfter` is the seconds until its lease expires. */
export class IdempotencyAlreadyInProgressError extends IdempotencyError {
  constructor(message, { retryAfter, ...details }) {
    super(message, { code: "IN_PROGRESS", ...details });
    this.retryAfter = retryAfter;
  }
}

/** The key was first used with a different payload. */
export class IdempotencyValidationError extends IdempotencyError {}

/** The gateway did not answer within the invocation's time. */
export class IdempotencyUnavailableError extends IdempotencyError {}

/**
 * The canonical JSON text of a value (RFC 8785, JCS): sorted keys, no spaces, ECMAScript number
 * formatting. A BigInt keeps every digit, as Python keeps big integers.
 */
export function canonicalJson(value) {
  switch (typeof value) {
    case "string":
      return JSON.stringify(value);
    case "boolean":
      return String(value);
    case "bigint":
      return value.toString();
    case "number":
      if (!Number.isFinite(value)) throw new TypeError(`${value} is not a JSON number`);
      return JSON.stringify(value); // Number::toString, and -0 as "0"
    case "object": {
      if (value === null) return "null";
      if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
      const prototype = Object.getPrototypeOf(value);
      if (prototype !== Object.prototype && prototype !== null) {
        throw new TypeError(`a ${prototype.constructor?.name} is not a JSON value`);
      }
      // Default string order is by UTF-16 code units, the order JCS asks for.
      const members = Object.keys(value)
        .sort()
        .map((name) => `${JSON.stringify(name)}:${canonicalJson(value[name])}`);
      return `{${members.join(",")}}`;
    }
    default:
      throw new TypeError(`${typeof value} is not a JSON value (use null)`);
  }
}

export function sha256Hex(value) {
  return createHash("sha256").update(canonicalJson(value), "utf8").digest("hex");
}

/** What a key starts with: names made safe for the gateway's key syntax, long ones shortened. */
export function keyPrefix(functionName, handlerName) {
  const prefix = `${functionName}.${handlerName}`.replace(KEY_UNSAFE, "_");
  if (prefix.length <= MAX_PREFIX) return prefix;
  // Long names keep their start and a digest of the whole, so they stay distinct.
  const digest = createHash("sha256").update(prefix).digest("hex").slice(0, 16);
  return `${prefix.slice(0, MAX_PREFIX - 17)}~${digest}`;
}

export function idempotencyKey(data, { functionName, handlerName }) {
  return `${keyPrefix(functionName, handlerName)}:${sha256Hex(data)}`;
}

export function fingerprint(payload) {
  return `sha256:${sha256Hex(payload)}`;
}

/** The time an invocation may spend on the gateway; unbounded without a deadline. */
export class Budget {
  constructor(ms) {
    this.end = ms === undefined ? Infinity : performance.now() + ms;
  }

  left() {
    return this.end - performance.now();
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// Full jitter: uniform over [0, min(cap, base * 2**attempt)].
const backoff = (attempt) =>
  Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);

/** The gateway's records API for one namespace. Create one per process, outside the handler. */
export class IdemgateClient {
  constructor({
    url = process.env.IDEMGATE_URL,
    namespace = process.env.IDEMGATE_NAMESPACE ?? process.env.AWS_LAMBDA_FUNCTION_NAME,
    token = process.env.IDEMGATE_TOKEN,
    auth = process.env.IDEMGATE_AUTH ?? "token",
    serverId = process.env.IDEMGATE_AUTH_SERVER_ID,
    maxCallMs = 3000,
    maxAttempts = 3,
  } = {}) {
    if (!url) throw new TypeError("the gateway URL is missing: pass url or set IDEMGATE_URL");
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(namespace ?? "")) {
      const hint = "pass namespace or set IDEMGATE_NAMESPACE";
      throw new TypeError(`namespace ${namespace} is invalid: ${hint}`);
    }
    this.recordsUrl = `${url.replace(/\/+$/, "")}/v1/records/${namespace}/`;
    this.headers = { "content-type": "application/json", accept: "application/json" };
    if (auth === "iam") this.iam = new IamAuthorization({ serverId });
    else if (auth !== "token") throw new TypeError(`auth must be "token" or "iam", not ${auth}`);
    else if (token) this.headers.authorization = `Bearer ${token}`;
    this.maxCallMs = maxCallMs;
    this.maxAttempts = maxAttempts;
  }

  /**
   * Own the key: `{outcome: "claimed", leaseToken}`, or get the result of the work done before:
   * `{outcome: "completed", result}`.
   */
  async claim(key, { fingerprint = null, leaseMs, ttlS, budget = new Budget(), requestId } = {}) {
    const body = { fingerprint, lease_ms: leaseMs, ttl_s: ttlS };
    const answer = await this.#post(key, "claim", body, budget, requestId);
    if (answer.status === 201) return { outcome: "claimed", leaseToken: answer.body.lease_token };
    if (answer.status === 200) return { outcome: "completed", result: answer.body.result };
    const details = { requestId, gatewayRequestId: answer.gatewayRequestId };
    if (answer.status === 409 && answer.body.code === "IN_PROGRESS") {
      const retryAfter = Number(answer.headers.get("retry-after") ?? 1);
      throw new IdempotencyAlreadyInProgressError(
        `${key} is being processed by another invocation`,
        { retryAfter, ...details },
      );
    }
    if (answer.status === 422) {
      throw new IdempotencyValidationError(`${key} was first seen with a different payload`, {
        code: "FINGERPRINT_MISMATCH",
        ...details,
      });
    }
    throw refused(key, "claim", answer, requestId);
  }

  async complete(key, { leaseToken, result, budget = new Budget(), requestId }) {
    const body = { lease_token: leaseToken, result };
    const answer = await this.#post(key, "complete", body, budget, requestId);
    if (answer.status !== 200) throw refused(key, "complete", answer, requestId);
  }

  async release(key, { leaseToken, budget = new Budget(), requestId }) {
    const answer = await this.#post(key, "release", { lease_token: leaseToken }, budget, requestId);
    if (answer.status !== 204) throw refused(key, "release", answer, requestId);
  }

  /** POST, retrying transient failures; every call and every pause ends within the budget. */
  async #post(key, action, body, budget, requestId) {
    const headers = { ...this.headers };
    if (requestId) headers["x-request-id"] = requestId;
    if (this.iam) headers.authorization = this.iam.header();
    let failure = "no time was left in the invocation's budget";
    let cause;
    for (let attempt = 0; attempt < this.maxAttempts; attempt += 1) {
      if (attempt) {
        const pause = backoff(attempt - 1);
        if (pause >= budget.left()) break;
        await sleep(pause);
      }
      const timeoutMs = Math.min(this.maxCallMs, budget.left());
      if (timeoutMs <= 0) break;
      try {
        const response = await fetch(`${this.recordsUrl}${key}/${action}`, {
          method: "POST",
          headers,
          body: JSON.stringify(body),
          signal: AbortSignal.timeout(Math.ceil(timeoutMs)),
        });
        const text = await response.text();
        const answer = {
          status: response.status,
          body: jsonObject(text),
          headers: response.headers,
          gatewayRequestId: response.headers.get("x-request-id") ?? undefined,
        };
        if (!RETRYABLE_STATUSES.has(answer.status) && answer.status < 500) return answer;
        [failure, cause] = [`HTTP ${answer.status} ${answer.body.code ?? ""}`.trim(), undefined];
        if (!RETRYABLE_STATUSES.has(answer.status)) break;
      } catch (error) {
        // A TimeoutError from the signal, or a network error (TypeError: fetch failed).
        [failure, cause] = [`${error.name}: ${error.message}`, error];
      }
    }
    throw new IdempotencyUnavailableError(
      `the gateway did not answer ${action} in time: ${failure}`,
      { code: "IDEMPOTENCY_UNAVAILABLE", requestId, cause },
    );
  }
}

function jsonObject(text) {
  try {
    const value = JSON.parse(text);
    return value !== null && typeof value === "object" && !Array.isArray(value) ? value : {};
  } catch {
    return {}; // e.g. a load balancer's HTML error page
  }
}

function refused(key, action, answer, requestId) {
  const code = answer.body.code ?? `HTTP_${answer.status}`;
  const detail = answer.body.detail ? ` (${answer.body.detail})` : "";
  return new IdempotencyError(`the gateway refused ${action} of ${key}: ${code}${detail}`, {
    code,
    requestId,
    gatewayRequestId: answer.gatewayRequestId,
  });
}

function isMissing(data) {
  if (data === null || data === undefined || data === "") return true;
  if (Array.isArray(data)) return data.every((item) => item === null);
  if (typeof data === "object") return Object.values(data).every((item) => item === null);
  return false;
}

/**
 * Make a Lambda handler `(event, context)` idempotent: claim, run, then complete (or release
 * when it throws, so a retry can run at once).
 *
 * - `eventKey(event)` picks the data the key is made from (default: the whole event).
 * - `payloadValidation(event)` picks the data whose fingerprint must match on a replay.
 * - The lease lasts as long as Lambda lets the invocation run; every gateway call ends
 *   `reserveMs` before that deadline.
 */
export function idempotent(
  handler,
  {
    client,
    handlerName = process.env._HANDLER,
    eventKey = (event) => event,
    payloadValidation,
    expiresAfterSeconds = 86_400,
    defaultLeaseMs = 60_000,
    reserveMs = 500,
    raiseOnNoIdempotencyKey = false,
  },
) {
  if (!handlerName) throw new TypeError("pass handlerName, or run on Lambda where _HANDLER is set");
  return async (event, context) => {
    const requestId = context?.awsRequestId;
    const functionName = context?.functionName ?? process.env.AWS_LAMBDA_FUNCTION_NAME ?? "local";
    const remainingMs = context?.getRemainingTimeInMillis();
    const budget = new Budget(remainingMs === undefined ? undefined : remainingMs - reserveMs);
    // The lease ends when Lambda would end the invocation, so a retry after a crash can take over.
    const leaseMs =
      remainingMs === undefined ? defaultLeaseMs : Math.min(Math.max(remainingMs, 1), MAX_LEASE_MS);

    const data = eventKey(event);
    if (isMissing(data)) {
      if (raiseOnNoIdempotencyKey) {
        throw new IdempotencyKeyError("no data found to make the idempotency key from", {
          code: "IDEMPOTENCY_KEY_MISSING",
          requestId,
        });
      }
      console.warn("idemgate: no idempotency key value found: running without idempotency");
      return handler(event, context);
    }
    let key;
    let payloadFingerprint = null;
    try {
      key = idempotencyKey(data, { functionName, handlerName });
      if (payloadValidation) payloadFingerprint = fingerprint(payloadValidation(event));
    } catch (error) {
      throw new IdempotencyKeyError(`the idempotency data is not JSON: ${error.message}`, {
        code: "IDEMPOTENCY_KEY_INVALID",
        requestId,
        cause: error,
      });
    }

    const claim = await client.claim(key, {
      fingerprint: payloadFingerprint,
      leaseMs,
      ttlS: expiresAfterSeconds,
      budget,
      requestId,
    });
    if (claim.outcome === "completed") return claim.result;

    const held = { leaseToken: claim.leaseToken, budget, requestId };
    let result;
    try {
      result = await handler(event, context);
    } catch (error) {
      await client.release(key, held).catch((failure) => {
        console.warn(`idemgate: release of ${key} failed (retries wait for the lease): ${failure.message}`);
      });
      throw error;
    }
    // Failing here would make the caller retry work that is already done: log and go on.
    try {
      // Lambda returns null for undefined.
      await client.complete(key, { ...held, result: result === undefined ? null : result });
    } catch (error) {
      console.error(`idemgate: the result of ${key} was returned but not stored: ${error.message}`);
    }
    return result;
  };
}

// --- AWS IAM identities: the function's execution role as its credentials -------------------
//
// As the Python adapter does (docs/lambda-adapter.md): sign, but never send, an
// sts:GetCallerIdentity request with the role's credentials and a signed
// x-idemgate-server-id header, and send it to the gateway as `Authorization: AWS4-IAM
// <base64 JSON>`. The gateway has STS check it. Signed once, reused for a few minutes.

const GET_CALLER_IDENTITY = "Action=GetCallerIdentity&Version=2011-06-15";
const IAM_REUSE_MS = 240_000; // the gateway accepts a proof for 300 s by default

// RFC 3986 percent-encoding, as SigV4 asks: everything but A-Z a-z 0-9 - _ . ~
const percent = (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`;
const rfc3986 = (text) => encodeURIComponent(text).replace(/[!'()*]/g, percent);

const hmac = (key, text) => createHmac("sha256", key).update(text, "utf8").digest();
const hex = (data) => createHash("sha256").update(data).digest("hex");

function canonicalQuery(query) {
  const pairs = query
    ? query.split("&").map((part) => {
        const [name, value = ""] = part.split(/=(.*)/s);
        return [rfc3986(decodeURIComponent(name)), rfc3986(decodeURIComponent(value))];
      })
    : [];
  pairs.sort(([a, x], [b, y]) => (a < b ? -1 : a > b ? 1 : x < y ? -1 : x > y ? 1 : 0));
  return pairs.map(([name, value]) => `${name}=${value}`).join("&");
}

/**
 * AWS Signature Version 4 for a header-signed request: the headers given (names lower-cased)
 * plus host, x-amz-date, x-amz-security-token (for temporary credentials) and authorization.
 * Tested against AWS's published test suite and the Python adapter's signer.
 */
export function signHeaders({
  method,
  url,
  headers = {},
  body = "",
  credentials,
  region,
  service,
  now = new Date(),
}) {
  const target = new URL(url);
  const amzDate = now.toISOString().replace(/[-:]/g, "").replace(/\.\d{3}/, "");
  const date = amzDate.slice(0, 8);
  const signed = {};
  for (const [name, value] of Object.entries(headers)) signed[name.toLowerCase()] = String(value);
  signed.host = target.host;
  signed["x-amz-date"] = amzDate;
  if (credentials.sessionToken) signed["x-amz-security-token"] = credentials.sessionToken;
  const names = Object.keys(signed).sort();
  const signedNames = names.join(";");
  const path = decodeURIComponent(target.pathname || "/").split("/").map(rfc3986).join("/");
  const canonicalRequest = [
    method.toUpperCase(),
    path,
    canonicalQuery(target.search.replace(/^\?/, "")),
    names.map((name) => `${name}:${signed[name].trim().split(/\s+/).join(" ")}\n`).join(""),
    signedNames,
    hex(body),
  ].join("\n");
  const scope = `${date}/${region}/${service}/aws4_request`;
  const stringToSign = ["AWS4-HMAC-SHA256", amzDate, scope, hex(canonicalRequest)].join("\n");
  const key = [date, region, service, "aws4_request"].reduce(
    (k, part) => hmac(k, part),
    `AWS4${credentials.secretKey}`,
  );
  const signature = createHmac("sha256", key).update(stringToSign, "utf8").digest("hex");
  signed.authorization =
    `AWS4-HMAC-SHA256 Credential=${credentials.accessKey}/${scope}, ` +
    `SignedHeaders=${signedNames}, Signature=${signature}`;
  return signed;
}

/** The credentials Lambda sets for the execution role, or undefined. */
export function credentialsFromEnvironment(env = process.env) {
  const { AWS_ACCESS_KEY_ID: accessKey, AWS_SECRET_ACCESS_KEY: secretKey } = env;
  if (!accessKey || !secretKey) return undefined;
  return { accessKey, secretKey, sessionToken: env.AWS_SESSION_TOKEN || undefined };
}

/** `Authorization: AWS4-IAM ...` for this function's role, re-signed before it gets old. */
export class IamAuthorization {
  constructor({
    serverId = process.env.IDEMGATE_AUTH_SERVER_ID,
    region = process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION,
    stsUrl = process.env.IDEMGATE_STS_URL,
    credentials = () => credentialsFromEnvironment(),
    reuseMs = IAM_REUSE_MS,
    clock = () => Date.now(),
  } = {}) {
    if (!serverId) {
      throw new TypeError("IAM auth needs the gateway's server id: set IDEMGATE_AUTH_SERVER_ID");
    }
    if (!region) throw new TypeError("IAM auth needs the region: set AWS_REGION (Lambda sets it)");
    if (!credentials()) {
      throw new TypeError("IAM auth needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
    }
    Object.assign(this, { serverId, region, credentials, reuseMs, clock });
    this.stsUrl = stsUrl || `https://sts.${region}.amazonaws.com/`;
    this.signedAt = -Infinity;
  }

  header() {
    const now = this.clock();
    if (now - this.signedAt >= this.reuseMs) {
      this.value = `AWS4-IAM ${this.sign(new Date(now))}`;
      this.signedAt = now;
    }
    return this.value;
  }

  /** The proof: base64 of the signed GetCallerIdentity request, as JSON. */
  sign(now) {
    const headers = signHeaders({
      method: "POST",
      url: this.stsUrl,
      headers: {
        "content-type": "application/x-www-form-urlencoded; charset=utf-8",
        "x-idemgate-server-id": this.serverId,
      },
      body: GET_CALLER_IDENTITY,
      credentials: this.credentials(),
      region: this.region,
      service: "sts",
      now,
    });
    const request = { url: this.stsUrl, headers, body: GET_CALLER_IDENTITY };
    return Buffer.from(JSON.stringify(request)).toString("base64");
  }
}
