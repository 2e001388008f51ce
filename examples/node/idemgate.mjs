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

import { createHash, createHmac, randomBytes } from "node:crypto";

/**
 * AWS Signature Version 4 for the SQS calls of `processSqsBatch`: the headers to send, with
 * `host`, `x-amz-date`, the session token and `authorization` (names lower-case). Every header
 * passed in is signed; `body` is a string or bytes, hashed in full. Tested against AWS's
 * published test-suite vectors (test/sigv4.test.mjs) and a signature-checking SQS server.
 */
export function signV4({
  method,
  url,
  headers = {},
  body = "",
  credentials,
  region,
  service,
  now,
}) {
  const target = new URL(url);
  const amzDate = (now ?? new Date())
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d{3}/, "");
  const date = amzDate.slice(0, 8);
  const signed = Object.fromEntries(
    Object.entries(headers).map(([name, value]) => [name.toLowerCase(), String(value)]),
  );
  signed.host = target.host;
  signed["x-amz-date"] = amzDate;
  if (credentials.sessionToken) signed["x-amz-security-token"] = credentials.sessionToken;
  const names = Object.keys(signed).sort();
  const canonicalHeaders = names
    .map((name) => `${name}:${signed[name].trim().replace(/\s+/g, " ")}\n`)
    .join("");
  const query = [...target.searchParams]
    .map(([name, value]) => [awsEncode(name), awsEncode(value)])
    .sort(([a, x], [b, y]) => (a === b ? compare(x, y) : compare(a, b)))
    .map(([name, value]) => `${name}=${value}`)
    .join("&");
  // The path as sent, encoded once more: AWS's rule for every service but S3.
  const path = target.pathname.split("/").map(awsEncode);
  const canonicalRequest = [
    method.toUpperCase(),
    path.join("/") || "/",
    query,
    canonicalHeaders,
    names.join(";"),
    createHash("sha256").update(body).digest("hex"),
  ].join("\n");
  const scope = `${date}/${region}/${service}/aws4_request`;
  const stringToSign = [
    "AWS4-HMAC-SHA256",
    amzDate,
    scope,
    createHash("sha256").update(canonicalRequest).digest("hex"),
  ].join("\n");
  const hmac = (key, text) => createHmac("sha256", key).update(text).digest();
  let key = `AWS4${credentials.secretAccessKey}`;
  for (const part of [date, region, service, "aws4_request"]) key = hmac(key, part);
  const signature = createHmac("sha256", key).update(stringToSign).digest("hex");
  signed.authorization =
    `AWS4-HMAC-SHA256 Credential=${credentials.accessKeyId}/${scope}, ` +
    `SignedHeaders=${names.join(";")}, Signature=${signature}`;
  return signed;
}

// Percent-encoding per SigV4: everything but A-Z a-z 0-9 - _ . ~
const awsEncode = (text) =>
  encodeURIComponent(text).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
const compare = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

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
/** A claim's own lease token: 144 random bits, base64url, as the gateway's own tokens. */
export const newLeaseToken = () => randomBytes(18).toString("base64url");
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
   *
   * Every try of one claim sends the same `leaseToken` (default: a new random one), so a try
   * answered 503 or timed out whose write landed anyway is found again as this claim's own.
   * Pass the same `leaseToken` when you retry a claim yourself.
   */
  async claim(
    key,
    {
      fingerprint = null,
      leaseMs,
      ttlS,
      budget = new Budget(),
      requestId,
      leaseToken = newLeaseToken(),
    } = {},
  ) {
    const body = { fingerprint, lease_ms: leaseMs, ttl_s: ttlS, lease_token: leaseToken };
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

/** The credentials Lambda sets for the execution role, or undefined. */
export function credentialsFromEnvironment(env = process.env) {
  const { AWS_ACCESS_KEY_ID: accessKeyId, AWS_SECRET_ACCESS_KEY: secretAccessKey } = env;
  if (!accessKeyId || !secretAccessKey) return undefined;
  return { accessKeyId, secretAccessKey, sessionToken: env.AWS_SESSION_TOKEN || undefined };
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
    const headers = signV4({
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
const MAX_VISIBILITY_S = 43_200; // SQS's limit: 12 hours
const SQS_CALLS_MS = 1000; // kept, beyond reserveMs, for the SQS calls at the end of a batch
const QUEUE_ARN = /^arn:aws[a-z-]*:sqs:([a-z0-9-]+):([0-9]{12}):([A-Za-z0-9_-]{1,80}(?:\.fifo)?)$/;

/**
 * How long a failed SQS message stays hidden, in whole seconds: `min(capS, baseS *
 * 2**receiveCount)` plus a jitter uniform over `[0, jitterS]`, at most 43,200 (as the Python
 * adapter's `SqsBackoff`).
 */
export function sqsVisibilityTimeoutS(
  receiveCount,
  { baseS = 1, capS = 900, jitterS = 5 } = {},
  random = Math.random,
) {
  const exponential = baseS * 2 ** Math.min(Math.max(receiveCount, 0), 64);
  return Math.min(MAX_VISIBILITY_S, Math.ceil(Math.min(capS, exponential) + random() * jitterS));
}

function logIncident(level, incident, message, details) {
  const line = JSON.stringify({ incident, level, message, ...details });
  if (level === "ERROR") console.error(line);
  else console.warn(line);
}

/**
 * Run `recordHandler(record)` once per message of an SQS event; return the partial batch
 * response `{batchItemFailures}` for an event source mapping with ReportBatchItemFailures.
 *
 * Each record is idempotent on its own (`eventKey(record)`, default its messageId); a completed
 * one is not run again. A record whose handler threw, that another consumer holds, or whose
 * payload does not match its key's is reported failed; in a FIFO queue, so are the later
 * messages of a group that failed, without running. Records are not started with less than
 * `stopBelowMs` left. With `backoff` ({baseS, capS, jitterS}), failed messages are hidden for
 * `sqsVisibilityTimeoutS` and unstarted ones made visible at once, by a SigV4-signed
 * ChangeMessageVisibilityBatch call (credentials from the environment, endpoint
 * `sqsEndpointUrl`, else AWS_ENDPOINT_URL_SQS, else the region's). With `deadLetter`
 * ({queueArn, afterReceives = 5}), a message that keeps failing is sent to that queue with its
 * failure's details and reported processed, as the Python adapter's DeadLetterHandoff does.
 */
export async function processSqsBatch(
  event,
  context,
  recordHandler,
  {
    client,
    handlerName = process.env._HANDLER,
    eventKey = (record) => record.messageId,
    payloadValidation,
    expiresAfterSeconds,
    reserveMs = 500,
    stopBelowMs = reserveMs + SQS_CALLS_MS,
    backoff,
    deadLetter,
    sqsEndpointUrl = process.env.AWS_ENDPOINT_URL_SQS ?? process.env.AWS_ENDPOINT_URL,
  },
) {
  if (!client) throw new TypeError("pass client: an IdemgateClient");
  const records = event?.Records;
  if (
    !Array.isArray(records) ||
    !records.every((r) => typeof r?.messageId === "string" && r.messageId)
  ) {
    throw new TypeError("not an SQS event: expected {Records: [{messageId, ...}, ...]}");
  }
  const remainingMs = context?.getRemainingTimeInMillis();
  const budget = new Budget(remainingMs === undefined ? undefined : remainingMs - reserveMs);
  const run = idempotent((record) => recordHandler(record), {
    client,
    handlerName,
    eventKey,
    payloadValidation,
    expiresAfterSeconds,
    reserveMs,
  });
  let failures = [];
  const failedGroups = new Set();
  for (const [index, record] of records.entries()) {
    if (context && context.getRemainingTimeInMillis() < stopBelowMs) {
      for (const rest of records.slice(index)) {
        failures.push({
          record: rest,
          reason: "not started: too little time left",
          started: false,
        });
      }
      break;
    }
    const group = record.attributes?.MessageGroupId;
    if (group !== undefined && failedGroups.has(group)) {
      failures.push({
        record,
        reason: "not started: an earlier message of its group failed",
        started: false,
      });
      continue;
    }
    try {
      await run(record, context);
    } catch (error) {
      failures.push({ record, reason: `${error.name}: ${error.message}`, started: true, error });
      if (group !== undefined) failedGroups.add(group);
    }
  }
  const sqs = { sqsEndpointUrl, budget, maxCallMs: client.maxCallMs };
  if (deadLetter) failures = await handOff(failures, deadLetter, sqs);
  const timeouts = new Map();
  if (backoff && failures.length) {
    for (const { record, started } of failures) {
      const receives = Number(record.attributes?.ApproximateReceiveCount ?? 1);
      timeouts.set(record.messageId, started ? sqsVisibilityTimeoutS(receives, backoff) : 0);
    }
    await changeVisibility(failures, timeouts, sqs);
  }
  for (const { record, reason, error } of failures) {
    const details = {
      message_id: record.messageId,
      visibility_timeout_s: timeouts.get(record.messageId) ?? null,
    };
    if (error instanceof IdempotencyValidationError) {
      logIncident(
        "ERROR",
        "fingerprint_mismatch",
        `a producer sent a different payload under a key already used: a client bug; ${reason}`,
        details,
      );
    } else {
      logIncident("WARNING", "record_failed", reason, details);
    }
  }
  return {
    batchItemFailures: failures.map(({ record }) => ({ itemIdentifier: record.messageId })),
  };
}

/**
 * Sends each message that failed for its own reasons (not held elsewhere, not for want of the
 * gateway) and was received `afterReceives` times to `queueArn`, with the failure's details as
 * `idemgate.*` attributes; returns the failures still to report (those not sent).
 */
async function handOff(failures, { queueArn, afterReceives = 5 }, sqs) {
  const remaining = [];
  for (const failure of failures) {
    const { record, reason, error } = failure;
    const receives = Number(record.attributes?.ApproximateReceiveCount ?? 1);
    const transient =
      error instanceof IdempotencyAlreadyInProgressError ||
      error instanceof IdempotencyUnavailableError;
    if (!error || transient || receives < afterReceives) {
      remaining.push(failure);
      continue;
    }
    const attributes = {
      "idemgate.failure": { DataType: "String", StringValue: reason.slice(0, 1024) },
      "idemgate.source-message-id": { DataType: "String", StringValue: record.messageId },
      "idemgate.source-queue-arn": { DataType: "String", StringValue: record.eventSourceARN },
      "idemgate.receive-count": { DataType: "Number", StringValue: String(receives) },
    };
    for (const [name, value] of Object.entries(record.messageAttributes ?? {})) {
      if (Object.keys(attributes).length >= 10 || name in attributes) continue;
      attributes[name] =
        value.binaryValue != null
          ? { DataType: value.dataType, BinaryValue: value.binaryValue }
          : { DataType: value.dataType, StringValue: String(value.stringValue ?? "") };
    }
    try {
      await sqsCall(
        queueArn,
        "SendMessage",
        (queueUrl) => ({
          QueueUrl: queueUrl,
          MessageBody: record.body,
          MessageAttributes: attributes,
          ...(queueArn.endsWith(".fifo")
            ? {
                MessageGroupId: record.attributes?.MessageGroupId ?? "dead-letters",
                MessageDeduplicationId: record.messageId,
              }
            : {}),
        }),
        sqs,
      );
    } catch (failed) {
      logIncident("WARNING", "sqs_call_failed", failed.message, { message_id: record.messageId });
      remaining.push(failure);
      continue;
    }
    logIncident(
      "WARNING",
      "record_dead_lettered",
      `sent to ${queueArn} after ${receives} receives: ${reason}`,
      { message_id: record.messageId },
    );
  }
  return remaining;
}

/** Sets the visibility timeouts, ten messages a call; a refusal is logged and forgotten. */
async function changeVisibility(failures, timeouts, { sqsEndpointUrl, budget, maxCallMs }) {
  const byQueue = new Map();
  for (const { record } of failures) {
    const entries = byQueue.get(record.eventSourceARN) ?? [];
    entries.push(record);
    byQueue.set(record.eventSourceARN, entries);
  }
  for (const [arn, records] of byQueue) {
    for (let start = 0; start < records.length; start += 10) {
      const chunk = records.slice(start, start + 10);
      try {
        const answer = await sqsCall(
          arn,
          "ChangeMessageVisibilityBatch",
          (queueUrl) => ({
            QueueUrl: queueUrl,
            Entries: chunk.map((record, index) => ({
              Id: String(index),
              ReceiptHandle: record.receiptHandle,
              VisibilityTimeout: timeouts.get(record.messageId),
            })),
          }),
          { sqsEndpointUrl, budget, maxCallMs },
        );
        for (const failed of answer.Failed ?? []) {
          const record = chunk[Number(failed.Id)];
          timeouts.delete(record.messageId);
          logIncident("WARNING", "sqs_call_failed", `${failed.Code}: ${failed.Message}`, {
            message_id: record.messageId,
          });
        }
      } catch (error) {
        for (const record of chunk) {
          timeouts.delete(record.messageId);
          logIncident(
            "WARNING",
            "sqs_call_failed",
            `${error.message} (the message comes back after the queue's visibility timeout)`,
            { message_id: record.messageId },
          );
        }
      }
    }
  }
}

/** One SigV4-signed call of SQS's JSON protocol, cut at the budget's end. */
async function sqsCall(queueArn, action, request, { sqsEndpointUrl, budget, maxCallMs }) {
  const match = QUEUE_ARN.exec(queueArn ?? "");
  if (!match) throw new Error(`${queueArn} is not an SQS queue ARN`);
  const [, region, account, name] = match;
  const credentials = credentialsFromEnvironment();
  if (!credentials) throw new Error("no AWS credentials in the environment to sign SQS calls with");
  const timeoutMs = Math.min(maxCallMs, budget.left());
  if (timeoutMs <= 0) throw new Error(`no time was left in the invocation's budget for ${action}`);
  const endpoint = (sqsEndpointUrl ?? `https://sqs.${region}.amazonaws.com`).replace(/\/+$/, "");
  const body = JSON.stringify(request(`${endpoint}/${account}/${name}`));
  const headers = signV4({
    method: "POST",
    url: `${endpoint}/`,
    headers: {
      "content-type": "application/x-amz-json-1.0",
      "x-amz-target": `AmazonSQS.${action}`,
    },
    body,
    credentials,
    region,
    service: "sqs",
  });
  delete headers.host; // fetch sets it, from the URL
  let response;
  try {
    response = await fetch(`${endpoint}/`, {
      method: "POST",
      headers,
      body,
      signal: AbortSignal.timeout(Math.ceil(timeoutMs)),
    });
  } catch (error) {
    throw new Error(`${action} failed: ${error.name}: ${error.message}`, { cause: error });
  }
  const text = await response.text();
  const answer = jsonObject(text);
  if (response.status !== 200) {
    const kind = String(answer.__type ?? `HTTP ${response.status}`)
      .split("#")
      .pop();
    throw new Error(`SQS refused ${action}: ${kind}: ${answer.message ?? text.slice(0, 200)}`);
  }
  return answer;
}
