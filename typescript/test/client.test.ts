// The client against a real server: every call, typed errors whose reason and dimension
// survive, secrets kept out of logs, and consent end to end.

import assert from "node:assert/strict";
import { generateKeyPairSync, randomUUID, sign } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { inspect } from "node:util";
import { InterceptingCall, status, type Interceptor } from "@grpc/grpc-js";
import {
  action,
  agent,
  allow,
  connect,
  ConsentStatus,
  deny,
  max,
  workload,
  WritError,
  type WritClient,
} from "../src/index.js";
import { BOOKING, MALLORY, PAYMENTS, PLANNER, WritServer } from "./server.js";

// A party that proves itself with JWT client assertions signed by a registered Ed25519 key.
const ASSERTER = "spiffe://writ.local/agent/asserter";
const keys = generateKeyPairSync("ed25519");
const ASSERTER_POLICY = `
[parties."${ASSERTER}"]
kind = "agent"
client_type = "confidential"
roles = ["agent"]
scopes = ["trips:book"]
keys = [{ kid = "k1", public_key = """
${keys.publicKey.export({ type: "spki", format: "pem" }).toString().trim()}
""" }]
`;

/** A fresh client assertion (RFC 7523) for ASSERTER, addressed to this Writ. */
function assertion(): string {
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const input = `${b64({ alg: "EdDSA", typ: "JWT", kid: "k1" })}.${b64({
    iss: ASSERTER,
    sub: ASSERTER,
    aud: "spiffe://writ.local/writ",
    iat: now,
    exp: now + 60,
    jti: randomUUID(),
  })}`;
  return `${input}.${sign(null, Buffer.from(input), keys.privateKey).toString("base64url")}`;
}

let srv: WritServer;
let minter: WritClient;
let operator: WritClient;
let planner: WritClient;
let booking: WritClient;
let payments: WritClient;

before(async () => {
  srv = await WritServer.start({ policy: ASSERTER_POLICY });
  minter = await srv.with("minter");
  operator = await srv.with("operator");
  planner = await srv.as("planner");
  booking = await srv.as("booking");
  payments = await srv.as("payments");
});

after(async () => {
  await srv?.stop();
});

async function root(extra: { scopes?: string[]; maxUses?: number } = {}) {
  return minter.mint({
    subject: "alice",
    audience: agent(PLANNER),
    targets: [BOOKING, PAYMENTS],
    scopes: extra.scopes ?? ["trips:book", "payments:charge"],
    claims: { amount: max(1000, { appliesTo: ["payments:charge"] }), category: deny("gambling", { caseInsensitive: true, appliesTo: ["trips:book"] }) },
    purpose: "book a trip to Lisbon",
    rctx: { req_ip: "203.0.113.7" },
    ttl: 600,
    maxUses: extra.maxUses ?? 0,
  });
}

async function refused(p: Promise<unknown>): Promise<WritError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof WritError, `expected a WritError, got ${String(e)}`);
    return e;
  }
  assert.fail("expected a refusal");
}

describe("client", () => {
  test("mint, downscope, validate along a chain", async () => {
    const r = await root();
    assert.match(r.token, /^writ_/);
    assert.equal(r.info.subject, "alice");
    assert.equal(r.info.depth, 0);
    assert.deepEqual([...r.info.scopes].sort(), ["payments:charge", "trips:book"]);

    const b = await planner.downscope(r.token, {
      audience: agent(BOOKING),
      targets: [PAYMENTS],
      scopes: ["trips:book", "payments:charge"],
      claims: { amount: max(500) },
      ttl: 300,
    });
    assert.equal(b.info.depth, 1);
    assert.equal(b.info.parentTokenId, r.info.tokenId);
    assert.equal(b.info.txn, r.info.txn);

    const v = await booking.validate(b.token, { action: action("trips:book", { category: "travel" }) });
    assert.equal(v.active, true);
    assert.equal(v.allowed, true);
    assert.equal(v.info?.audience?.id, BOOKING);

    const denied = await booking.validate(b.token, { action: action("trips:book", { category: "Gambling" }) });
    assert.equal(denied.active, true);
    assert.equal(denied.allowed, false);
    assert.equal(denied.decision?.deniedBy, "category");

    const p = await booking.downscope(b.token, {
      audience: workload(PAYMENTS),
      scopes: ["payments:charge"],
      claims: { amount: max(450), merchant: allow(["tap", "ryanair"]) },
      dropRctx: ["req_ip"],
    });
    assert.equal(p.info.depth, 2);
    assert.deepEqual(p.info.rctx, {});
    // payments:charge is high-privilege: latent until the user consents.
    const charge = await payments.validate(p.token, { action: action("payments:charge", { amount: 420, merchant: "tap" }) });
    assert.equal(charge.allowed, false);
    assert.equal(charge.consentRequired, true);
  });

  test("an action check answered without a decision is not allowed (fail closed)", async () => {
    // The answer is tampered with on the way in: Validate's decision is dropped.
    const dropDecision: Interceptor = (options, nextCall) =>
      new InterceptingCall(nextCall(options), {
        start(metadata, _listener, next) {
          next(metadata, {
            onReceiveMessage(message: { decision?: unknown }, nextMessage) {
              if (options.method_definition.path.endsWith("/Validate")) message.decision = undefined;
              nextMessage(message);
            },
          });
        },
      });
    const tampered = await srv.as("booking", { interceptors: [dropDecision] });
    const r = await root();
    const b = await planner.downscope(r.token, { audience: agent(BOOKING), scopes: ["trips:book"] });
    const v = await tampered.validate(b.token, { action: action("trips:book", { category: "travel" }) });
    assert.equal(v.active, true);
    assert.equal(v.decision, undefined);
    assert.equal(v.allowed, false);
    assert.equal((await tampered.validate(b.token)).allowed, true, "without an action, active is enough");
  });

  test("a wrong audience is an inactive answer, not an error", async () => {
    const r = await root();
    const v = await booking.validate(r.token);
    assert.equal(v.active, false);
    assert.equal(v.inactiveReason, "wrong_audience");
    assert.equal(v.info, undefined);
  });

  test("refusals keep their reason and dimension", async () => {
    const r = await root();
    const b = await planner.downscope(r.token, { audience: agent(BOOKING), targets: [PAYMENTS], scopes: ["trips:book", "payments:charge"], claims: { amount: max(500) } });

    const wider = await refused(
      booking.downscope(b.token, { audience: workload(PAYMENTS), scopes: ["payments:charge"], claims: { amount: max(900) } }),
    );
    assert.equal(wider.code, status.PERMISSION_DENIED);
    assert.equal(wider.reason, "NARROWING_REFUSED");
    assert.equal(wider.dimension, "claims");

    const scope = await refused(booking.downscope(b.token, { audience: workload(PAYMENTS), scopes: ["admin:all"] }));
    assert.equal(scope.reason, "NARROWING_REFUSED");
    assert.equal(scope.dimension, "scopes");

    // Not the holder: mallory cannot derive from booking's token.
    const mallory = await srv.as("mallory");
    const holder = await refused(mallory.downscope(b.token, { audience: workload(PAYMENTS), scopes: ["payments:charge"] }));
    assert.equal(holder.dimension, "holder");
    assert.ok(!holder.message.includes(b.token), "the token never appears in a message");
    assert.ok(!inspect(holder).includes(b.token));

    // A bad credential.
    const wrong = await connect(srv.addr, { tls: { ca: srv.ca }, credential: "wmc_wrong" });
    const bad = await refused(wrong.mint({ subject: "alice", audience: agent(PLANNER), scopes: ["trips:book"] }));
    wrong.close();
    assert.equal(bad.code, status.UNAUTHENTICATED);
    assert.equal(bad.reason, "BAD_CREDENTIAL");

    // An invalid field, refused while the request is decoded: its reason names the field.
    const field = await refused(minter.mint({ subject: "", audience: agent(PLANNER), scopes: ["trips:book"] }));
    assert.equal(field.code, status.INVALID_ARGUMENT);
    assert.equal(field.reason, "INVALID_FIELD");
    assert.equal(field.field, "subject");

    // An agent is not a minter.
    const notMinter = await refused(planner.mint({ subject: "alice", audience: agent(PLANNER), scopes: ["trips:book"] }));
    assert.ok(notMinter.reason.length > 0, notMinter.message);
  });

  test("secrets stay out of inspect and JSON", async () => {
    const r = await root();
    assert.ok(!inspect(r, { depth: 10 }).includes(r.token));
    assert.ok(!JSON.stringify(r).includes(r.token));
    assert.ok(!inspect(planner).includes(srv.credential("minter")));
    assert.ok(!inspect(minter, { depth: 10 }).includes(srv.credential("minter")));
  });

  test("revoke by holder, by id and by transaction", async () => {
    const r = await root();
    const b = await planner.downscope(r.token, { audience: agent(BOOKING), scopes: ["trips:book"] });
    const ids = await booking.revoke({ token: b.token, reason: "done" });
    assert.deepEqual(ids, [b.info.tokenId]);
    assert.equal((await booking.validate(b.token)).inactiveReason, "revoked");
    assert.equal((await planner.validate(r.token)).active, true, "the parent is untouched");

    const again = await operator.revoke({ txn: r.info.txn, reason: "incident" });
    assert.deepEqual(again, [r.info.tokenId]);
    assert.equal((await planner.validate(r.token)).inactiveReason, "revoked");

    const byMinter = await refused(minter.revoke({ tokenId: r.info.tokenId, reason: "x" }));
    assert.ok(byMinter.code === status.PERMISSION_DENIED || byMinter.code === status.UNAUTHENTICATED, byMinter.message);
  });

  test("getTransaction lists the tree", async () => {
    const r = await root();
    const b = await planner.downscope(r.token, { audience: agent(BOOKING), scopes: ["trips:book"] });
    const tree = await operator.getTransaction(r.info.txn);
    assert.deepEqual(
      tree.tokens.map((n) => n.info?.tokenId),
      [r.info.tokenId, b.info.tokenId],
    );
    assert.equal(tree.subject, "alice");
    const missing = await refused(operator.getTransaction("txn_00000000000000000000000000000000"));
    assert.equal(missing.code, status.NOT_FOUND);
  });

  test("consent: request, decide as the approver app, redeem once", async () => {
    const r = await root();
    const b = await planner.downscope(r.token, { audience: agent(BOOKING), targets: [PAYMENTS], scopes: ["payments:charge"], claims: { amount: max(500) } });
    const charge = action("payments:charge", { amount: 420 });

    const req = await booking.requestConsent(b.token, { action: charge, resource: PAYMENTS, reason: "the Lisbon flight" });
    assert.match(req.id, /^cns_/);
    assert.match(req.url, /\/consent\//);
    assert.ok(!inspect(req).includes(req.url), "the consent link is a capability: not in inspect");
    assert.equal(req.existing, false);
    const same = await booking.requestConsent(b.token, { action: charge, resource: PAYMENTS, reason: "the Lisbon flight" });
    assert.equal(same.id, req.id);
    assert.equal(same.existing, true);

    // Before the decision: redeeming is refused, naming the request.
    const pending = await refused(booking.redeemConsent(req.id, b.token));
    assert.equal(pending.reason, "CONSENT_PENDING");
    assert.equal(pending.consentRequestId, req.id);

    const wallet = await srv.as("wallet");
    const wrongUser = await refused(wallet.decideConsent(req.id, { approve: true, subject: "bob" }));
    assert.equal(wrongUser.reason, "CONSENT_WRONG_SUBJECT");
    const decided = await wallet.decideConsent(req.id, { approve: true, subject: "alice" });
    assert.equal(decided.status, ConsentStatus.CONSENT_STATUS_APPROVED);

    const one = await booking.redeemConsent(req.id, b.token);
    assert.equal(one.info.maxUses, 1);
    assert.equal(one.info.consentRequestId, req.id);
    const ok = await payments.validate(one.token, { action: charge });
    assert.equal(ok.allowed, true);
    const twice = await payments.validate(one.token, { action: charge });
    assert.equal(twice.inactiveReason, "exhausted");

    const again = await refused(booking.redeemConsent(req.id, b.token));
    assert.equal(again.reason, "CONSENT_REDEEMED");
    assert.equal(again.code, status.FAILED_PRECONDITION);
  });

  test("a JWT client assertion proves the caller, fresh for every call", async () => {
    const r = await minter.mint({ subject: "alice", audience: agent(ASSERTER), scopes: ["trips:book"] });
    let made = 0;
    const asserter = await connect(srv.addr, { tls: { ca: srv.ca }, assertion: () => (made++, assertion()) });
    assert.equal((await asserter.validate(r.token)).active, true);
    assert.equal((await asserter.validate(r.token)).active, true);
    assert.equal(made, 2, "one assertion per call");
    asserter.close();

    // A replayed assertion is refused, with Writ's reason.
    const once = assertion();
    const replaying = await connect(srv.addr, { tls: { ca: srv.ca }, assertion: () => once });
    assert.equal((await replaying.validate(r.token)).active, true);
    const replay = await refused(replaying.validate(r.token));
    replaying.close();
    assert.equal(replay.code, status.UNAUTHENTICATED);
    assert.ok(replay.reason.length > 0, replay.message);
  });

  test("plaintext is refused to anything but loopback", async () => {
    await assert.rejects(connect("writ.example.com:7433", { plaintext: true }), /only loopback/);
    await assert.rejects(connect("http://10.1.2.3:7433"), /only loopback/);
  });

  test("mallory cannot validate or revoke another's token", async () => {
    const r = await root();
    const mallory = await srv.as("mallory");
    assert.equal((await mallory.validate(r.token)).inactiveReason, "wrong_audience");
    const e = await refused(mallory.revoke({ token: r.token, reason: "not mine" }));
    assert.equal(e.code, status.UNAUTHENTICATED);
    assert.equal(MALLORY.endsWith("mallory"), true);
  });
});
