// Retries only where safe: a Mint or Downscope whose response is lost is retried with the
// same idempotency key and returns the same token, spending nothing twice; an action check
// or a consent decision is never repeated.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { InterceptingCall, Metadata, status, type Interceptor } from "@grpc/grpc-js";
import { action, agent, max, workload, WritError, type WritClient } from "../src/index.js";
import type { DownscopeResponse, MintResponse } from "../src/gen/writ/v1/writ.js";
import { BOOKING, PAYMENTS, PLANNER, WritServer } from "./server.js";

let srv: WritServer;
let minter: WritClient;
let operator: WritClient;

/**
 * Lets each call of `method` reach the server, then loses the first `lose` answers: the
 * server did the work, the client sees UNAVAILABLE. Counts what it saw.
 */
function losing(
  method: string,
  lose = 1,
): { interceptor: Interceptor; sent: number; lost: number; lostAnswers: unknown[] } {
  const seen = { interceptor: undefined as unknown as Interceptor, sent: 0, lost: 0, lostAnswers: [] as unknown[] };
  seen.interceptor = (options, nextCall) => {
    const mine = options.method_definition.path.endsWith(`/${method}`);
    return new InterceptingCall(nextCall(options), {
      start(metadata, _listener, next) {
        if (mine) seen.sent++;
        // The answer arrives, but the call ends UNAVAILABLE: grpc-js's unary callback
        // then reports only the error, as if the response had been lost on the way.
        let answer: unknown;
        next(metadata, {
          onReceiveMessage(message, nextMessage) {
            answer = message;
            nextMessage(message);
          },
          onReceiveStatus(st, nextStatus) {
            if (mine && st.code === status.OK && seen.lost < lose) {
              seen.lost++;
              seen.lostAnswers.push(answer);
              nextStatus({ code: status.UNAVAILABLE, details: "the answer was lost", metadata: new Metadata() });
              return;
            }
            nextStatus(st);
          },
        });
      },
    });
  };
  return seen;
}

before(async () => {
  srv = await WritServer.start();
  minter = await srv.with("minter");
  operator = await srv.with("operator");
});

after(async () => {
  await srv?.stop();
});

describe("retries", () => {
  test("a Mint whose answer is lost is retried with its key: one token", async () => {
    const lossy = losing("Mint");
    const m = await srv.with("minter", { interceptors: [lossy.interceptor] });
    const r = await m.mint({ subject: "alice", audience: agent(PLANNER), targets: [BOOKING], scopes: ["trips:book"] });
    assert.equal(lossy.sent, 2, "sent once, retried once");
    assert.equal(lossy.lost, 1);
    const lost = lossy.lostAnswers[0] as MintResponse;
    assert.equal(r.info.tokenId, lost.info?.tokenId, "the retry answered the token the lost answer carried");
    assert.equal(r.token, lost.token);
    const tree = await operator.getTransaction(r.info.txn);
    assert.deepEqual(
      tree.tokens.map((n) => n.info?.tokenId),
      [r.info.tokenId],
      "exactly one token: the retry returned the first",
    );
  });

  test("a Downscope whose answer is lost is retried with its key: one child, uses reserved once", async () => {
    const root = await minter.mint({
      subject: "alice",
      audience: agent(PLANNER),
      targets: [BOOKING, PAYMENTS],
      scopes: ["trips:book"],
      maxUses: 5,
    });
    const lossy = losing("Downscope");
    const planner = await srv.as("planner", { interceptors: [lossy.interceptor] });
    const child = await planner.downscope(root.token, { audience: agent(BOOKING), scopes: ["trips:book"], maxUses: 2 });
    assert.equal(lossy.sent, 2);
    assert.equal(lossy.lost, 1);
    const lost = lossy.lostAnswers[0] as DownscopeResponse;
    assert.equal(child.info.tokenId, lost.info?.tokenId);
    assert.equal(child.token, lost.token);

    const tree = await operator.getTransaction(root.info.txn);
    const children = tree.tokens.filter((n) => n.info?.parentTokenId === root.info.tokenId);
    assert.deepEqual(
      children.map((n) => n.info?.tokenId),
      [child.info.tokenId],
    );
    const rootNode = tree.tokens.find((n) => n.info?.tokenId === root.info.tokenId);
    assert.equal(rootNode?.uses, 2, "the child's two uses were reserved once");
    assert.equal(rootNode?.children, 1);

    // The child works: its secret is the one the server kept for the key.
    const booking = await srv.as("booking");
    assert.equal((await booking.validate(child.token)).active, true);
  });

  test("the same key with a different request is refused", async () => {
    const key = "retry-test-key-0123456789";
    await minter.mint({ subject: "alice", audience: agent(PLANNER), scopes: ["trips:book"], idempotencyKey: key });
    const again = await minter.mint({ subject: "alice", audience: agent(PLANNER), scopes: ["trips:book"], idempotencyKey: key });
    assert.ok(again.info.tokenId.length > 0);
    try {
      await minter.mint({ subject: "bob", audience: agent(PLANNER), scopes: ["trips:book"], idempotencyKey: key });
      assert.fail("expected IDEMPOTENCY_KEY_REUSED");
    } catch (e) {
      assert.ok(e instanceof WritError);
      assert.equal(e.reason, "IDEMPOTENCY_KEY_REUSED");
    }
    await assert.rejects(minter.mint({ subject: "a", audience: agent(PLANNER), idempotencyKey: "short" }), TypeError);
  });

  test("an action check is never retried (it may spend a use)", async () => {
    const root = await minter.mint({
      subject: "alice",
      audience: agent(PLANNER),
      targets: [PAYMENTS],
      scopes: ["payments:refund"],
      claims: { amount: max(100) },
    });
    const planner = await srv.as("planner");
    const child = await planner.downscope(root.token, { audience: workload(PAYMENTS), scopes: ["payments:refund"], maxUses: 2 });
    const lossy = losing("Validate");
    const payments = await srv.as("payments", { interceptors: [lossy.interceptor] });
    await assert.rejects(
      payments.validate(child.token, { action: action("payments:refund", { amount: 50 }) }),
      (e: unknown) => e instanceof WritError && e.code === status.UNAVAILABLE,
    );
    assert.equal(lossy.sent, 1, "not retried");
    // One use was spent by the lost check, one is left.
    const left = await (await srv.as("payments")).validate(child.token, { action: action("payments:refund", { amount: 50 }) });
    assert.equal(left.allowed, true);
    const none = await (await srv.as("payments")).validate(child.token, { action: action("payments:refund", { amount: 50 }) });
    assert.equal(none.inactiveReason, "exhausted");

    // A plain introspection is safe: retried.
    const lossy2 = losing("Validate");
    const booking = await srv.as("booking", { interceptors: [lossy2.interceptor] });
    const b = await planner.downscope(
      (await minter.mint({ subject: "alice", audience: agent(PLANNER), targets: [BOOKING], scopes: ["trips:book"] })).token,
      { audience: agent(BOOKING), scopes: ["trips:book"] },
    );
    assert.equal((await booking.validate(b.token)).active, true);
    assert.equal(lossy2.sent, 2);
  });

  test("a server that is down answers UNAVAILABLE after bounded attempts", async () => {
    const { connect } = await import("../src/index.js");
    const dead = await connect("127.0.0.1:1", { tls: { ca: srv.ca }, credential: "x", maxAttempts: 2, timeoutMs: 2000 });
    await assert.rejects(
      dead.mint({ subject: "alice", audience: agent(PLANNER), scopes: ["trips:book"] }),
      (e: unknown) => e instanceof WritError && e.code === status.UNAVAILABLE && e.reason === "",
    );
    dead.close();
  });
});
