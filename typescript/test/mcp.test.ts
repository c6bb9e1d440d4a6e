// The MCP integration with the real SDK, client and server in this process over streamable
// HTTP: the bearer token verified at Writ (missing, forged, wrong audience refused), each
// tool's scope and claims checked on every call, an upstream call narrowed from inside a
// tool, and consent through a URL-mode elicitation approved by the wallet app.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { requireBearerAuth } from "@modelcontextprotocol/sdk/server/auth/middleware/bearerAuth.js";
import { createMcpExpressApp } from "@modelcontextprotocol/sdk/server/express.js";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { ElicitRequestSchema, isInitializeRequest, type CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { z } from "zod";
import {
  action,
  agent,
  allow,
  current,
  max,
  withTxnToken,
  workload,
  writFetch,
  type Minted,
  type WritClient,
} from "../src/index.js";
import { consentToken, requires, writTokenVerifier } from "../src/mcp.js";
import { BOOKING, PAYMENTS, PLANNER, WritServer } from "./server.js";

let srv: WritServer;
let minter: WritClient;
let planner: WritClient;
let booking: WritClient;
let wallet: WritClient;
let mcpUrl: string;
let paymentsUrl: string;
const ran = { book: 0, charge: 0 };
const upstream: { path: string; status: number }[] = [];
const servers: Server[] = [];

async function listen(s: Server): Promise<string> {
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
}

/** Booking as an MCP server: Writ verifies its bearer tokens, each tool declares what it needs. */
function bookingServer(): McpServer {
  const server = new McpServer({ name: "booking", version: "1.0.0" });
  const toPayments = writFetch(booking, [
    { url: paymentsUrl, audience: workload(PAYMENTS), scopes: ["trips:book"], claims: { amount: max(300) } },
  ]);
  server.registerTool(
    "book",
    { description: "Book a trip", inputSchema: { category: z.string(), amount: z.number().int() } },
    requires(
      booking,
      { scope: "trips:book", attributes: (a) => ({ category: a.category, amount: a.amount }) },
      async (a): Promise<CallToolResult> => {
        ran.book++;
        // One line per upstream call: the current token, narrowed for payments.
        const res = await toPayments(`${paymentsUrl}/book?amount=${a.amount}&category=${a.category}`);
        const body = (await res.json()) as Record<string, unknown>;
        return { content: [{ type: "text", text: JSON.stringify({ mine: current()?.info.tokenId, upstream: body }) }] };
      },
    ),
  );
  server.registerTool(
    "charge",
    { description: "Charge the card", inputSchema: { amount: z.number().int() } },
    requires(
      booking,
      {
        scope: "payments:charge",
        attributes: (a) => ({ amount: a.amount }),
        consent: { resource: PAYMENTS, reason: (a) => `charge ${a.amount} EUR for the Lisbon flight`, pollMs: 100, waitMs: 10_000 },
      },
      async (a): Promise<CallToolResult> => {
        ran.charge++;
        const once = consentToken();
        assert.ok(once, "the redeemed token is there");
        const res = await fetch(`${paymentsUrl}/charge?amount=${a.amount}`, { headers: { "txn-token": once.token } });
        return { content: [{ type: "text", text: JSON.stringify({ status: res.status, redeemed: once.info.tokenId }) }] };
      },
    ),
  );
  // The same charge through writFetch: the first request to payments carries the redeemed
  // token by itself, the next one an ordinary child (which payments answers consent_required).
  const toCharge = writFetch(booking, [{ url: `${paymentsUrl}/charge`, audience: workload(PAYMENTS), scopes: ["payments:charge"] }]);
  server.registerTool(
    "charge-fetch",
    { description: "Charge the card (writFetch)", inputSchema: { amount: z.number().int() } },
    requires(
      booking,
      {
        scope: "payments:charge",
        attributes: (a) => ({ amount: a.amount }),
        consent: { resource: PAYMENTS, reason: (a) => `charge ${a.amount} EUR`, pollMs: 100, waitMs: 10_000 },
      },
      async (a): Promise<CallToolResult> => {
        const redeemed = consentToken()?.info.tokenId;
        const first = await toCharge(`${paymentsUrl}/charge?amount=${a.amount}`);
        const heldAfter = consentToken() !== undefined;
        const second = await toCharge(`${paymentsUrl}/charge?amount=${a.amount}`);
        const answer = async (res: Response) => ({ status: res.status, ...((await res.json()) as object) });
        const out = { redeemed, heldAfter, first: await answer(first), second: await answer(second) };
        return { content: [{ type: "text", text: JSON.stringify(out) }] };
      },
    ),
  );
  return server;
}

before(async () => {
  srv = await WritServer.start();
  minter = await srv.with("minter");
  planner = await srv.as("planner");
  booking = await srv.as("booking");
  wallet = await srv.as("wallet");
  const payments = await srv.as("payments");

  // The payments API: checks the action each request states.
  paymentsUrl = await listen(
    createServer(
      withTxnToken(
        payments,
        (req, res) => {
          upstream.push({ path: req.url ?? "", status: 200 });
          const ctx = current();
          res.end(JSON.stringify({ depth: ctx?.info.depth, audience: ctx?.info.audience?.id, tokenId: ctx?.info.tokenId }));
        },
        {
          action: (req) => {
            const u = new URL(req.url ?? "/", "http://x");
            const amount = Number(u.searchParams.get("amount"));
            if (u.pathname === "/charge") return action("payments:charge", { amount });
            return action("trips:book", { amount, category: u.searchParams.get("category") ?? "" });
          },
        },
      ),
    ),
  );

  // Booking's MCP endpoint: stateful streamable HTTP (elicitation needs the session).
  const app = createMcpExpressApp();
  const httpServer = createServer(app);
  mcpUrl = `${await listen(httpServer)}/mcp`;
  const auth = requireBearerAuth({
    verifier: writTokenVerifier(booking, { audience: BOOKING, resource: mcpUrl }),
    expectedResource: new URL(mcpUrl),
  });
  const sessions = new Map<string, StreamableHTTPServerTransport>();
  app.all("/mcp", auth, async (req, res) => {
    const id = req.headers["mcp-session-id"];
    let transport = typeof id === "string" ? sessions.get(id) : undefined;
    if (!transport && req.method === "POST" && isInitializeRequest(req.body)) {
      const t: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        onsessioninitialized: (sid) => void sessions.set(sid, t),
      });
      await bookingServer().connect(t);
      transport = t;
    }
    if (!transport) {
      res.status(400).json({ jsonrpc: "2.0", error: { code: -32000, message: "no session" }, id: null });
      return;
    }
    await transport.handleRequest(req, res, req.body);
  });
});

after(async () => {
  for (const s of servers) s.closeAllConnections?.(), s.close();
  await srv?.stop();
});

/** A root for the planner, and the planner's child for booking (the MCP server). */
async function tokenForBooking(scopes: string[], claims = {}): Promise<Minted> {
  const root = await minter.mint({
    subject: "alice",
    audience: agent(PLANNER),
    targets: [BOOKING, PAYMENTS],
    scopes,
    claims: {
      amount: max(1000),
      ...(scopes.includes("trips:book") ? { category: allow(["travel", "hotel"], { appliesTo: ["trips:book"] }) } : {}),
    },
  });
  return planner.downscope(root.token, { audience: agent(BOOKING), targets: [PAYMENTS], scopes, claims });
}

/** The planner as an MCP client presenting `token`; `onUrl` answers URL-mode elicitations. */
async function mcpClient(token: string, onUrl?: (url: string, id: string) => Promise<void>): Promise<Client> {
  const client = new Client({ name: "planner", version: "1.0.0" }, { capabilities: { elicitation: { url: {} } } });
  client.setRequestHandler(ElicitRequestSchema, async (req) => {
    const p = req.params;
    if (p.mode !== "url" || !onUrl) return { action: "decline" };
    await onUrl(p.url, p.elicitationId);
    return { action: "accept" };
  });
  await client.connect(
    new StreamableHTTPClientTransport(new URL(mcpUrl), { requestInit: { headers: { authorization: `Bearer ${token}` } } }),
  );
  return client;
}

function text(r: unknown): string {
  const c = (r as CallToolResult).content[0];
  return c && c.type === "text" ? c.text : "";
}

describe("MCP", () => {
  test("missing, forged and wrong-audience bearer tokens are refused with 401", async () => {
    const init = {
      jsonrpc: "2.0",
      id: 1,
      method: "initialize",
      params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "x", version: "1" } },
    };
    const post = (auth?: string) =>
      fetch(mcpUrl, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json, text/event-stream", ...(auth ? { authorization: auth } : {}) },
        body: JSON.stringify(init),
      });
    assert.equal((await post()).status, 401);
    assert.equal((await post("Bearer writ_forgedforgedforgedforgedforged")).status, 401);
    const root = await minter.mint({ subject: "alice", audience: agent(PLANNER), targets: [BOOKING], scopes: ["trips:book"] });
    const wrong = await post(`Bearer ${root.token}`);
    assert.equal(wrong.status, 401, "the planner's own token is not for booking");
    assert.ok(!(await wrong.text()).includes(root.token));
    await assert.rejects(mcpClient(root.token));
  });

  test("a tool the token allows runs in its context and narrows for upstream", async () => {
    const t = await tokenForBooking(["trips:book"]);
    const client = await mcpClient(t.token);
    const before = ran.book;
    const r = await client.callTool({ name: "book", arguments: { category: "travel", amount: 250 } });
    assert.equal(r.isError, undefined, text(r));
    const body = JSON.parse(text(r)) as { mine: string; upstream: { depth: number; audience: string } };
    assert.equal(body.mine, t.info.tokenId);
    assert.equal(body.upstream.depth, 2, "payments got a child of booking's token");
    assert.equal(body.upstream.audience, PAYMENTS);
    assert.equal(ran.book, before + 1);
    await client.close();
  });

  test("a claim or a scope the token lacks refuses the tool; its body never runs", async () => {
    const t = await tokenForBooking(["trips:book"]);
    const client = await mcpClient(t.token);
    const before = ran.book;
    const claim = await client.callTool({ name: "book", arguments: { category: "gambling", amount: 10 } });
    assert.equal(claim.isError, true);
    assert.match(text(claim), /category/);
    const amount = await client.callTool({ name: "book", arguments: { category: "travel", amount: 5000 } });
    assert.equal(amount.isError, true);
    assert.match(text(amount), /amount/);
    const scope = await client.callTool({ name: "charge", arguments: { amount: 10 } });
    assert.equal(scope.isError, true);
    assert.match(text(scope), /scope/);
    assert.equal(ran.book, before);
    await client.close();
  });

  test("consent: a URL-mode elicitation with Writ's link, the wallet approves, the tool runs with the redeemed token", async () => {
    const t = await tokenForBooking(["payments:charge"]);
    let elicited: string | undefined;
    const client = await mcpClient(t.token, async (url, id) => {
      elicited = url;
      assert.match(id, /^cns_/);
      // The user approves in their wallet app (the back-channel).
      await wallet.decideConsent(id, { approve: true, subject: "alice" });
    });
    const before = ran.charge;
    const r = await client.callTool({ name: "charge", arguments: { amount: 420 } });
    assert.equal(r.isError, undefined, text(r));
    assert.match(elicited ?? "", /\/consent\//);
    const body = JSON.parse(text(r)) as { status: number; redeemed: string };
    assert.equal(body.status, 200, "payments allowed the redeemed token's charge");
    assert.equal(ran.charge, before + 1);

    // Declined: the tool never runs.
    const declining = await mcpClient((await tokenForBooking(["payments:charge"])).token);
    const no = await declining.callTool({ name: "charge", arguments: { amount: 420 } });
    assert.equal(no.isError, true);
    assert.match(text(no), /did not approve/);
    assert.equal(ran.charge, before + 1);
    await client.close();
    await declining.close();
  });

  test("consent: writFetch sends the redeemed token with the first request to the resource, once", async () => {
    const t = await tokenForBooking(["payments:charge"]);
    const client = await mcpClient(t.token, (_url, id) => wallet.decideConsent(id, { approve: true, subject: "alice" }).then(() => undefined));
    const r = await client.callTool({ name: "charge-fetch", arguments: { amount: 420 } });
    assert.equal(r.isError, undefined, text(r));
    const body = JSON.parse(text(r)) as {
      redeemed: string;
      heldAfter: boolean;
      first: { status: number; tokenId: string };
      second: { status: number; consent_required: boolean };
    };
    assert.match(body.redeemed, /^tid_/);
    assert.equal(body.first.status, 200, "payments allowed the charge");
    assert.equal(body.first.tokenId, body.redeemed, "with the redeemed token");
    assert.equal(body.heldAfter, false, "taken by that request");
    assert.equal(body.second.status, 403, "a later request carries an ordinary child");
    assert.equal(body.second.consent_required, true);
    await client.close();
  });
});
