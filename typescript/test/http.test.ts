// The Txn-Token helpers over real HTTP: the inbound middleware refuses missing, forged,
// expired, revoked and wrong-audience tokens before the handler runs; the fetch wrapper
// sends each declared downstream a fresh child in exactly one header and never the
// parent (checked on the wire by a recording server); a three-hop chain propagates the
// context through async handlers.

import assert from "node:assert/strict";
import { createServer, request as httpRequest, type IncomingHttpHeaders, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import express from "express";
import {
  action,
  agent,
  current,
  max,
  MAX_REDIRECTS,
  NoCurrentTokenError,
  run,
  txnTokenMiddleware,
  withTxnToken,
  workload,
  writFetch,
  WritError,
  type Minted,
  type WritClient,
} from "../src/index.js";
import { BOOKING, PAYMENTS, PLANNER, WritServer } from "./server.js";

let srv: WritServer;
let minter: WritClient;
let planner: WritClient;
let booking: WritClient;
let payments: WritClient;
const servers: Server[] = [];

before(async () => {
  srv = await WritServer.start();
  minter = await srv.with("minter");
  planner = await srv.as("planner");
  booking = await srv.as("booking");
  payments = await srv.as("payments");
});

after(async () => {
  for (const s of servers) s.close();
  await srv?.stop();
});

async function listen(s: Server): Promise<string> {
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
}

/** What a server received: every request's method, raw header lines and body. */
interface Recorded {
  method: string;
  path: string;
  raw: string[];
  headers: IncomingHttpHeaders;
  body: string;
}

/** A server that records every request and answers `answer` (default: 200 "ok"). */
async function recorder(answer?: (path: string, res: ServerResponse) => void): Promise<{ url: string; seen: Recorded[] }> {
  const seen: Recorded[] = [];
  const url = await listen(
    createServer((req, res) => {
      let body = "";
      req.on("data", (c: Buffer) => (body += c.toString()));
      req.on("end", () => {
        seen.push({ method: req.method ?? "", path: req.url ?? "", raw: req.rawHeaders, headers: req.headers, body });
        if (answer) answer(req.url ?? "", res);
        else res.end("ok");
      });
    }),
  );
  return { url, seen };
}

/** Answers a redirect to `location`. */
function redirect(res: ServerResponse, status: number, location: string): void {
  res.writeHead(status, { location });
  res.end();
}

/** The values of every `txn-token` header line, as sent on the wire. */
function txnTokenLines(r: Recorded): string[] {
  const out: string[] = [];
  for (let i = 0; i < r.raw.length; i += 2) if (r.raw[i]!.toLowerCase() === "txn-token") out.push(r.raw[i + 1]!);
  return out;
}

/** A GET with the given `txn-token` header lines (several lines for several values). */
async function get(url: string, tokens: string[] = []): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, (res) => {
      let data = "";
      res.on("data", (c: Buffer) => (data += c.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: data ? (JSON.parse(data) as Record<string, unknown>) : {} }));
    });
    if (tokens.length) req.setHeader("txn-token", tokens);
    req.on("error", reject);
    req.end();
  });
}

async function root(scopes = ["trips:book", "payments:refund"], ttl = 600): Promise<Minted> {
  return minter.mint({
    subject: "alice",
    audience: agent(PLANNER),
    targets: [BOOKING, PAYMENTS],
    scopes,
    claims: { amount: max(1000, { appliesTo: ["payments:refund"] }) },
    ttl,
  });
}

/** A payments API behind `withTxnToken`: it answers the context it ran in. */
async function paymentsApi(): Promise<{ url: string; ran: { count: number } }> {
  const ran = { count: 0 };
  const url = await listen(
    createServer(
      withTxnToken(
        payments,
        async (req, res) => {
          ran.count++;
          await sleep(1); // the context survives an await
          const ctx = current();
          res.setHeader("content-type", "application/json");
          res.end(
            JSON.stringify({
              tokenId: ctx?.info.tokenId,
              audience: ctx?.info.audience?.id,
              depth: ctx?.info.depth,
              sameAsReq: ctx === req.writ,
              headerLeft: req.headers["txn-token"] !== undefined,
              distinctLeft: req.headersDistinct["txn-token"] !== undefined,
              rawLeft: req.rawHeaders.some((v) => v.toLowerCase() === "txn-token" || v.includes("writ_")),
              rawOthers: req.rawHeaders.length,
            }),
          );
        },
        {
          action: (req) => {
            const amount = new URL(req.url ?? "/", "http://x").searchParams.get("amount");
            return amount === null ? undefined : action("payments:refund", { amount: Number(amount) });
          },
        },
      ),
    ),
  );
  return { url, ran };
}

describe("inbound middleware", () => {
  let api: { url: string; ran: { count: number } };
  let good: Minted;

  before(async () => {
    api = await paymentsApi();
    const r = await root();
    const b = await planner.downscope(r.token, { audience: agent(BOOKING), targets: [PAYMENTS], scopes: ["payments:refund"] });
    good = await booking.downscope(b.token, { audience: workload(PAYMENTS), scopes: ["payments:refund"], claims: { amount: max(100) } });
  });

  test("a valid token reaches the handler inside its context", async () => {
    const before = api.ran.count;
    const res = await get(`${api.url}/refund`, [good.token]);
    assert.equal(res.status, 200);
    assert.equal(res.body["tokenId"], good.info.tokenId);
    assert.equal(res.body["audience"], PAYMENTS);
    assert.equal(res.body["depth"], 2);
    assert.equal(res.body["sameAsReq"], true);
    assert.equal(res.body["headerLeft"], false, "the token is in current(), not left in the headers");
    assert.equal(res.body["distinctLeft"], false, "nor in headersDistinct");
    assert.equal(res.body["rawLeft"], false, "nor in rawHeaders");
    assert.ok((res.body["rawOthers"] as number) >= 2, "the other raw headers stay");
    assert.equal(api.ran.count, before + 1);
  });

  test("an action the claims allow passes; one they deny is 403 before the handler", async () => {
    const ok = await get(`${api.url}/refund?amount=50`, [good.token]);
    assert.equal(ok.status, 200);
    const before = api.ran.count;
    const denied = await get(`${api.url}/refund?amount=500`, [good.token]);
    assert.equal(denied.status, 403);
    assert.equal(denied.body["error"], "insufficient_scope");
    assert.equal(denied.body["denied_by"], "amount");
    assert.equal(api.ran.count, before);
  });

  const refusals: [string, () => Promise<string[]>, string][] = [
    ["missing", async () => [], "missing"],
    ["forged", async () => ["writ_AQAAAAGZwstW_s3YforgedforgedforgedforgedforgedforgedXYZ"], "malformed"],
    ["not a token", async () => ["hello"], "malformed"],
    ["two headers", async () => [good.token, good.token], "multiple"],
    ["two tokens joined by a comma in one header", async () => [`${good.token},${good.token}`], "malformed"],
    [
      "wrong audience (booking's token presented to payments)",
      async () => {
        const r = await root();
        return [(await planner.downscope(r.token, { audience: agent(BOOKING), scopes: ["trips:book"] })).token];
      },
      "wrong_audience",
    ],
    [
      "revoked",
      async () => {
        const r = await root();
        const b = await planner.downscope(r.token, { audience: agent(BOOKING), targets: [PAYMENTS], scopes: ["payments:refund"] });
        const p = await booking.downscope(b.token, { audience: workload(PAYMENTS), scopes: ["payments:refund"] });
        await planner.revoke({ token: r.token, reason: "compromised" });
        return [p.token];
      },
      "revoked",
    ],
    [
      "expired",
      async () => {
        const r = await root(["payments:refund"], 1);
        const p = await planner.downscope(r.token, { audience: workload(PAYMENTS), scopes: ["payments:refund"] });
        // Bounded wait for the one-second lifetime to pass (not a timing assertion).
        for (let i = 0; i < 100 && (await payments.validate(p.token)).active; i++) await sleep(100);
        return [p.token];
      },
      "expired",
    ],
  ];
  for (const [name, token, reason] of refusals) {
    test(`refused before the handler: ${name}`, async () => {
      const tokens = await token();
      const before = api.ran.count;
      const res = await get(`${api.url}/refund`, tokens);
      assert.equal(res.status, 401);
      assert.equal(res.body["error"], "invalid_token");
      assert.equal(res.body["reason"], reason);
      assert.equal(api.ran.count, before, "the handler never ran");
      for (const t of tokens) assert.ok(!JSON.stringify(res.body).includes(t), "no token echoed");
    });
  }

  test("Writ unreachable: 503, the handler never runs", async () => {
    const { connect } = await import("../src/index.js");
    const dead = await connect("127.0.0.1:1", { tls: srv.cert("payments"), maxAttempts: 1, timeoutMs: 1000 });
    let ran = 0;
    const url = await listen(createServer(withTxnToken(dead, (_req, res) => void (ran++, res.end()))));
    const res = await get(url, [good.token]);
    dead.close();
    assert.equal(res.status, 503);
    assert.equal(ran, 0);
  });
});

describe("outbound fetch", () => {
  test("each declared request carries exactly one fresh child, never the parent", async () => {
    const rec = await recorder();
    const r = await root();
    const f = writFetch(planner, [
      { url: `${rec.url}/booking`, audience: agent(BOOKING), targets: [PAYMENTS], scopes: ["trips:book"], ttl: 60 },
    ]);
    await run(r, async () => {
      // A caller that copies its own token into the header gets it replaced.
      const res = await f(`${rec.url}/booking/trips`, { headers: { "Txn-Token": r.token } });
      assert.equal(res.status, 200);
      await res.text();
      await (await f(new Request(`${rec.url}/booking/trips/2`, { headers: { "txn-token": r.token } }))).text();
    });
    assert.equal(rec.seen.length, 2);
    const children = new Set<string>();
    for (const seen of rec.seen) {
      const lines = txnTokenLines(seen);
      assert.equal(lines.length, 1, "exactly one Txn-Token header line");
      const child = lines[0]!;
      assert.notEqual(child, r.token, "never the parent");
      assert.ok(!seen.raw.some((v) => v.includes(r.token)), "the parent is nowhere in the request");
      const v = await booking.validate(child);
      assert.equal(v.active, true);
      assert.equal(v.info?.audience?.id, BOOKING);
      assert.equal(v.info?.parentTokenId, r.info.tokenId);
      assert.deepEqual(v.info?.scopes, ["trips:book"]);
      children.add(child);
    }
    assert.equal(children.size, 2, "a fresh child per request");
  });

  test("undeclared destinations get no Txn-Token at all", async () => {
    const rec = await recorder();
    const r = await root();
    const f = writFetch(planner, [{ url: `${rec.url}/booking`, audience: agent(BOOKING), scopes: ["trips:book"] }]);
    await run(r, async () => {
      await (await f(`${rec.url}/other`, { headers: { "txn-token": r.token } })).text();
      await (await f(`${rec.url}/bookingX`, { headers: { "txn-token": r.token } })).text();
    });
    assert.deepEqual(
      rec.seen.map((s) => [s.path, txnTokenLines(s).length]),
      [
        ["/other", 0],
        ["/bookingX", 0],
      ],
    );
  });

  test("a redirect to an undeclared origin carries no Txn-Token", async () => {
    const elsewhere = await recorder();
    const declared = await recorder((_path, res) => redirect(res, 302, `${elsewhere.url}/landing`));
    const r = await root();
    const f = writFetch(planner, [{ url: `${declared.url}/booking`, audience: agent(BOOKING), scopes: ["trips:book"] }]);
    const res = await run(r, () => f(`${declared.url}/booking/go`, { headers: { authorization: "Bearer mine" } }));
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "ok", "the redirect was followed");
    assert.equal(declared.seen.length, 1);
    assert.equal(txnTokenLines(declared.seen[0]!).length, 1, "the declared downstream got its child");
    assert.equal(elsewhere.seen.length, 1);
    const landed = elsewhere.seen[0]!;
    assert.equal(landed.path, "/landing");
    assert.deepEqual(txnTokenLines(landed), [], "no Txn-Token to the other origin");
    assert.ok(!landed.raw.some((v) => v.includes("writ_")), "no token anywhere in that request");
    assert.equal(landed.headers.authorization, undefined, "nor the authorization, as fetch does");
  });

  test("a redirect to another declared downstream gets a fresh child for it; a 307 keeps method and body", async () => {
    const pay = await recorder();
    const book = await recorder((_path, res) => redirect(res, 307, `${pay.url}/refund`));
    const r = await root();
    const f = writFetch(planner, [
      { url: book.url, audience: agent(BOOKING), scopes: ["trips:book"] },
      { url: pay.url, audience: workload(PAYMENTS), scopes: ["payments:refund"], claims: { amount: max(10) } },
    ]);
    const res = await run(r, () => f(`${book.url}/refund`, { method: "POST", body: "amount=5" }));
    assert.equal(await res.text(), "ok");
    const [first] = book.seen;
    const [second] = pay.seen;
    assert.ok(first && second);
    assert.equal(second.method, "POST");
    assert.equal(second.body, "amount=5");
    const [bookChild] = txnTokenLines(first);
    const payLines = txnTokenLines(second);
    assert.equal(payLines.length, 1);
    assert.notEqual(payLines[0], bookChild, "not the first hop's child");
    assert.notEqual(payLines[0], r.token);
    const v = await payments.validate(payLines[0]!);
    assert.equal(v.active, true, "a child for payments, valid at payments");
    assert.equal(v.info?.audience?.id, PAYMENTS);
    assert.deepEqual(v.info?.scopes, ["payments:refund"]);
  });

  test("a 303 turns a POST into a GET without its body; a streamed body is not resent; redirects are bounded", async () => {
    const rec = await recorder((path, res) => {
      if (path === "/api/post") redirect(res, 303, "/api/done");
      else if (path === "/api/done") res.end("done");
      else if (path === "/api/stream") redirect(res, 307, "/api/done");
      else redirect(res, 302, "/api/loop"); // forever
    });
    const r = await root();
    const f = writFetch(planner, [{ url: `${rec.url}/api`, audience: agent(BOOKING), scopes: ["trips:book"] }]);
    await run(r, async () => {
      const res = await f(`${rec.url}/api/post`, { method: "POST", body: "x=1", headers: { "content-type": "text/plain" } });
      assert.equal(await res.text(), "done");
      await assert.rejects(f(`${rec.url}/api/loop`), TypeError);
      // A streamed body cannot be sent twice: a 307 is refused, as fetch refuses it.
      const stream = new Blob(["x=1"]).stream();
      await assert.rejects(f(`${rec.url}/api/stream`, { method: "POST", body: stream, duplex: "half" } as RequestInit), /cannot be replayed/);
    });
    const done = rec.seen[1]!;
    assert.deepEqual([done.method, done.path, done.body, done.headers["content-type"]], ["GET", "/api/done", "", undefined]);
    const loop = rec.seen.filter((s) => s.path === "/api/loop");
    assert.equal(loop.length, MAX_REDIRECTS + 1, "the first request and MAX_REDIRECTS hops, no more");
    assert.equal(new Set(loop.map((s) => txnTokenLines(s)[0])).size, loop.length, "a fresh child for every hop");
    assert.equal(rec.seen.filter((s) => s.path === "/api/done").length, 1, "the stream's 307 was not followed");
  });

  test("redirect: manual is the caller's: the 3xx comes back, nothing followed", async () => {
    const elsewhere = await recorder();
    const declared = await recorder((_path, res) => redirect(res, 302, elsewhere.url));
    const r = await root();
    const f = writFetch(planner, [{ url: declared.url, audience: agent(BOOKING), scopes: ["trips:book"] }]);
    const res = await run(r, () => f(declared.url, { redirect: "manual" }));
    assert.equal(res.status, 302);
    assert.equal(elsewhere.seen.length, 0);
  });

  test("fails closed: no current token, or a refused downscope, and nothing is sent", async () => {
    const rec = await recorder();
    const f = writFetch(planner, [{ url: rec.url, audience: agent(BOOKING), scopes: ["trips:book"] }]);
    await assert.rejects(f(`${rec.url}/x`), NoCurrentTokenError);
    const r = await root();
    await run(r, async () => {
      await assert.rejects(
        writFetch(planner, [{ url: rec.url, audience: agent(BOOKING), scopes: ["admin:all"] }])(`${rec.url}/y`),
        (e: unknown) => e instanceof WritError && e.reason === "NARROWING_REFUSED" && e.dimension === "scopes",
      );
    });
    // The planner's token presented by booking: booking is not its audience.
    await run(r, async () => {
      await assert.rejects(
        writFetch(booking, [{ url: rec.url, audience: workload(PAYMENTS), scopes: ["trips:book"] }])(`${rec.url}/z`),
        WritError,
      );
    });
    assert.equal(rec.seen.length, 0, "no request reached the server");
  });
});

describe("a three-hop chain over HTTP", () => {
  test("planner → booking (Express) → payments (node:http), each hop narrowing", async () => {
    const pay = await paymentsApi();
    // Booking: Express with the middleware; its handler awaits, then calls payments.
    const app = express();
    app.use(txnTokenMiddleware(booking));
    const toPayments = writFetch(booking, [
      { url: pay.url, audience: workload(PAYMENTS), scopes: ["payments:refund"], claims: { amount: max(100) } },
    ]);
    app.get("/book", (_req, res, next) => {
      void (async () => {
        await sleep(1);
        const mine = current();
        // Concurrent calls each see the same context and get their own child.
        const answers = await Promise.all([1, 2].map(async () => (await toPayments(`${pay.url}/refund?amount=80`)).json()));
        res.json({ mine: mine?.info.tokenId, depth: mine?.info.depth, answers });
      })().catch(next);
    });
    const bookingUrl = await listen(createServer(app));

    const r = await root();
    const toBooking = writFetch(planner, [
      { url: bookingUrl, audience: agent(BOOKING), targets: [PAYMENTS], scopes: ["payments:refund"] },
    ]);
    const body = (await run(r, async () => (await toBooking(`${bookingUrl}/book`)).json())) as {
      mine: string;
      depth: number;
      answers: { tokenId: string; depth: number; audience: string }[];
    };
    assert.equal(body.depth, 1);
    assert.equal(body.answers.length, 2);
    for (const a of body.answers) {
      assert.equal(a.depth, 2);
      assert.equal(a.audience, PAYMENTS);
      assert.notEqual(a.tokenId, body.mine);
    }
    assert.notEqual(body.answers[0]!.tokenId, body.answers[1]!.tokenId);

    // Without a token the Express handler never runs.
    const res = await get(`${bookingUrl}/book`);
    assert.equal(res.status, 401);
  });
});
