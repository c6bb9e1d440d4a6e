// Fail closed on answers Writ should never give: the middleware, `requires` and the MCP
// verifier are fed fabricated verdicts by a stub client (no server), so an active token
// without a decision for the action asked, or active for another audience, is refused.

import assert from "node:assert/strict";
import { createServer, request as httpRequest, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, describe, test } from "node:test";
import { InvalidTokenError, ServerError } from "@modelcontextprotocol/sdk/server/auth/errors.js";
import { status } from "@grpc/grpc-js";
import { action, InactiveReason, txnTokenMiddleware, Verdict, withTxnToken, WritError, type WritClient } from "../src/index.js";
import { TokenInfo, type ActionDecision } from "../src/gen/writ/v1/writ.js";
import { requires, writTokenVerifier, type ToolExtra } from "../src/mcp.js";

const ME = "spiffe://writ.local/workload/payments";
const OTHER = "spiffe://writ.local/agent/booking";
const TOKEN = "writ_stubstubstubstubstubstubstub";

/** An active verdict for `audience`, with `decision` (undefined: Writ answered none). */
function verdict(decision?: ActionDecision, audience = ME): Verdict {
  const info = TokenInfo.fromPartial({ tokenId: "tid_stub", audience: { id: audience }, scopes: ["payments:refund"] });
  return new Verdict(true, InactiveReason.INACTIVE_REASON_UNSPECIFIED, info, decision);
}

/** A client whose Validate answers `v` (and records what it was asked). */
function stub(v: Verdict): WritClient & { asked: unknown[] } {
  const asked: unknown[] = [];
  return { asked, validate: async (_t: string, opts: unknown) => (asked.push(opts), v) } as unknown as WritClient & {
    asked: unknown[];
  };
}

const servers: Server[] = [];
after(() => {
  for (const s of servers) s.close();
});

async function serve(handler: Parameters<typeof createServer>[1]): Promise<string> {
  const s = createServer(handler);
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
}

function get(url: string, tokens: string | string[] = TOKEN): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { headers: { "txn-token": tokens } }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    req.on("error", reject);
    req.end();
  });
}

const refund = () => action("payments:refund", { amount: 50 });

describe("fail closed on a missing decision", () => {
  test("withTxnToken: an action asked, no decision answered: 403, the handler never runs", async () => {
    const client = stub(verdict(undefined));
    let ran = 0;
    const url = await serve(withTxnToken(client, (_req, res) => void (ran++, res.end()), { action: refund }));
    assert.equal(await get(url), 403);
    assert.equal(ran, 0);
    assert.equal(client.asked.length, 1, "the action was sent");
  });

  test("txnTokenMiddleware: the same, next is never called", async () => {
    const mw = txnTokenMiddleware(stub(verdict(undefined)), { action: refund });
    let ran = 0;
    const url = await serve((req, res) => mw(req, res, () => void (ran++, res.end())));
    assert.equal(await get(url), 403);
    assert.equal(ran, 0);
  });

  test("the middleware still lets an allowed decision, or no action at all, through", async () => {
    const allowed = { allowed: true, deniedBy: "", reason: "", consentRequired: false, consentRequestId: "" };
    let ran = 0;
    const ok = await serve(withTxnToken(stub(verdict(allowed)), (_req, res) => void (ran++, res.end()), { action: refund }));
    assert.equal(await get(ok), 200);
    const plain = await serve(withTxnToken(stub(verdict(undefined)), (_req, res) => void (ran++, res.end())));
    assert.equal(await get(plain), 200);
    assert.equal(ran, 2);
  });

  test("requires: no decision is a tool error, the body never runs", async () => {
    let ran = 0;
    const tool = requires(stub(verdict(undefined)), { scope: "payments:refund", attributes: () => ({ amount: 50 }) }, async () => {
      ran++;
      return { content: [] };
    });
    const extra = { authInfo: { token: TOKEN, clientId: "", scopes: [] } } as unknown as ToolExtra;
    const r = await tool({}, extra);
    assert.equal(r.isError, true);
    assert.equal(ran, 0);
  });

  test("Verdict.allowed: a verdict for an asked action without a decision is not allowed", () => {
    const info = TokenInfo.fromPartial({ tokenId: "tid_stub" });
    const asked = new Verdict(true, InactiveReason.INACTIVE_REASON_UNSPECIFIED, info, undefined, "", true);
    assert.equal(asked.allowed, false);
    const plain = new Verdict(true, InactiveReason.INACTIVE_REASON_UNSPECIFIED, info, undefined, "", false);
    assert.equal(plain.allowed, true);
  });
});

describe("one token, checked here before Writ is asked", () => {
  test("two Txn-Token headers, or two tokens joined in one, are 401 without a Validate", async () => {
    const client = stub(verdict(undefined)); // it would answer active for anything
    let ran = 0;
    const url = await serve(withTxnToken(client, (_req, res) => void (ran++, res.end())));
    assert.equal(await get(url, [TOKEN, TOKEN]), 401);
    assert.equal(await get(url, `${TOKEN},${TOKEN}`), 401);
    assert.equal(await get(url, `${TOKEN} ${TOKEN}`), 401);
    assert.equal(client.asked.length, 0, "Writ was never asked");
    assert.equal(ran, 0);
    assert.equal(await get(url, TOKEN), 200, "one token is checked and passes");
  });
});

describe("the MCP verifier binds the token to this server", () => {
  const resource = "https://payments.internal/mcp";

  test("an active token whose audience is another party is invalid_token", async () => {
    const verifier = writTokenVerifier(stub(verdict(undefined, OTHER)), { audience: ME, resource });
    await assert.rejects(verifier.verifyAccessToken(TOKEN), InvalidTokenError);
  });

  test("this server's token passes, reporting the resource it stands for", async () => {
    const info = await writTokenVerifier(stub(verdict(undefined, ME)), { audience: ME, resource }).verifyAccessToken(TOKEN);
    assert.equal(String(info.resource), resource);
    assert.deepEqual(info.scopes, ["payments:refund"]);
  });

  test("an audience is required", () => {
    assert.throws(() => writTokenVerifier(stub(verdict()), { audience: "", resource }), TypeError);
  });

  test("Writ unreachable is a ServerError (the SDK answers 500), never a pass", async () => {
    const down = { validate: async () => Promise.reject(new WritError({ code: status.UNAVAILABLE, message: "down" })) } as unknown as WritClient;
    await assert.rejects(writTokenVerifier(down, { audience: ME, resource }).verifyAccessToken(TOKEN), ServerError);
  });
});
