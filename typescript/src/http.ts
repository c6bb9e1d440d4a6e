// Txn-Token over HTTP. Inbound: a middleware (Node `http` handlers and Express-style
// `(req, res, next)`) that accepts exactly one `Txn-Token` header, validates it as this
// service, answers 401/403 JSON before the handler on anything else, and runs the handler
// inside the verified context. Outbound: a `fetch` wrapper that gives each request to a
// declared downstream a freshly downscoped child in exactly one `Txn-Token` header, and
// follows redirects itself so that no other origin receives one. No path forwards the
// token it received; every failure stops the request.

import type { IncomingMessage, ServerResponse } from "node:http";
import { status } from "@grpc/grpc-js";
import type { Action } from "./builders.js";
import type { DownscopeOptions, Verdict, WritClient } from "./client.js";
import { requireCurrent, run, takeConsent, WritContext } from "./context.js";
import { WritError } from "./errors.js";

/** The header a token travels in between hops (never `Authorization`). */
export const TXN_TOKEN_HEADER = "txn-token";

// ---------------------------------------------------------------------------------------
// Outbound

/** A downstream this service calls, and what its token may do. */
export interface Downstream extends Omit<DownscopeOptions, "idempotencyKey"> {
  /** The base URL it covers: same origin, and a path under the base's by whole segments. */
  url: string | URL;
}

export interface WritFetchOptions {
  /** The fetch to wrap (default: the global one). */
  fetch?: typeof fetch;
}

function covers(base: URL, url: URL): boolean {
  if (base.origin !== url.origin) return false;
  const p = base.pathname;
  if (p === "/" || p === "") return true;
  if (p.endsWith("/")) return url.pathname.startsWith(p);
  return url.pathname === p || url.pathname.startsWith(`${p}/`);
}

/** The redirects `writFetch` follows itself for a request that carried a token. */
export const MAX_REDIRECTS = 5;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);
// What fetch drops when a redirect turns the request into a GET, and when it changes origin.
const BODY_HEADERS = ["content-encoding", "content-language", "content-location", "content-type", "content-length"];
const CROSS_ORIGIN_DROPPED = ["authorization", "proxy-authorization", "cookie", "host"];

/** A body fetch can send again on a 307/308 (not a stream, nor a Request's consumed body). */
function replayable(body: RequestInit["body"]): boolean {
  return (
    body == null ||
    typeof body === "string" ||
    body instanceof ArrayBuffer ||
    ArrayBuffer.isView(body) ||
    body instanceof Blob ||
    body instanceof URLSearchParams ||
    body instanceof FormData
  );
}

/**
 * A `fetch` that, for each request to a declared downstream, downscopes the current token
 * (see `run()` and the middleware) to that downstream's declaration and sends the child in
 * exactly one `Txn-Token` header. Without a current token it throws before sending
 * (`NoCurrentTokenError`); a refused downscope throws the `WritError`. Requests to
 * anything undeclared go out without any `Txn-Token` header. Inside a `requires` tool that
 * redeemed a consent, the first request to the consent's resource carries the redeemed
 * single-use token instead of a child (once: later ones get ordinary children).
 *
 * Redirects: fetch would follow them with the header on, to any origin. So a request that
 * carries a token follows them here instead (at most `MAX_REDIRECTS`, with fetch's rules
 * for methods, bodies and cross-origin headers), matching each hop again: a hop to a declared downstream gets a fresh child
 * for that downstream, any other hop none. With `redirect: "manual"` or `"error"` the
 * caller's choice stands. The answer is the last hop's (`redirected` stays false).
 */
export function writFetch(
  client: WritClient,
  downstreams: readonly Downstream[],
  opts: WritFetchOptions = {},
): typeof fetch {
  const inner = opts.fetch ?? globalThis.fetch;
  const declared = downstreams.map((d) => ({ ...d, base: new URL(d.url) }));
  /** Sets the Txn-Token for `url` in `headers`: a fresh child for a declared downstream, none otherwise. */
  const attach = async (url: URL, headers: Headers): Promise<boolean> => {
    headers.delete(TXN_TOKEN_HEADER);
    const target = declared.find((d) => covers(d.base, url));
    if (!target) return false;
    const { url: _u, base: _b, ...narrowing } = target;
    headers.set(TXN_TOKEN_HEADER, await childFor(client, narrowing, `a request to ${url.origin}`));
    return true;
  };
  const wrapped = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const req = input instanceof Request ? input : undefined;
    let url = new URL(req ? req.url : (input as string | URL));
    // As fetch itself: init.headers, when given, replaces a Request's headers.
    const headers = new Headers(init?.headers ?? req?.headers);
    const mode = init?.redirect ?? req?.redirect ?? "follow";
    if (!(await attach(url, headers)) || mode !== "follow") return inner(input, { ...init, headers });

    let res = await inner(input, { ...init, headers, redirect: "manual" });
    let method = (init?.method ?? req?.method ?? "GET").toUpperCase();
    let body: RequestInit["body"] = init?.body !== undefined ? init.body : req?.body;
    const { headers: _h, body: _b, method: _m, redirect: _r, ...rest } = init ?? {};
    const later: RequestInit = { ...rest, signal: init?.signal ?? req?.signal ?? null };
    for (let hops = 0; ; hops++) {
      const location = res.headers.get("location");
      if (!REDIRECTS.has(res.status) || location === null) return res;
      await res.body?.cancel().catch(() => undefined);
      if (hops === MAX_REDIRECTS) throw new TypeError(`writFetch: more than ${MAX_REDIRECTS} redirects`);
      const next = new URL(location, url);
      if (next.protocol !== "http:" && next.protocol !== "https:") {
        throw new TypeError(`writFetch: a redirect to a ${next.protocol} URL`);
      }
      if ((res.status === 303 && method !== "GET" && method !== "HEAD") || (res.status <= 302 && method === "POST")) {
        method = "GET";
        body = null;
        for (const h of BODY_HEADERS) headers.delete(h);
      } else if (!replayable(body)) {
        throw new TypeError(`writFetch: a ${res.status} redirect would send again a body that cannot be replayed (a stream)`);
      }
      if (next.origin !== url.origin) for (const h of CROSS_ORIGIN_DROPPED) headers.delete(h);
      url = next;
      await attach(url, headers);
      res = await inner(url, { ...later, method, headers, body: body ?? null, redirect: "manual" });
    }
  };
  return wrapped as typeof fetch;
}

/**
 * The token for one call to `narrowing.audience`: inside a `requires` tool that redeemed a
 * consent, the redeemed single-use token for its audience, once; otherwise (and after
 * that) a fresh child of the current token.
 */
async function childFor(client: WritClient, narrowing: Omit<DownscopeOptions, "idempotencyKey">, what: string): Promise<string> {
  const ctx = requireCurrent(what);
  const redeemed = takeConsent(narrowing.audience.id);
  if (redeemed) return redeemed.token;
  return (await client.downscope(ctx.token, narrowing)).token;
}

/**
 * The current token downscoped for one call (for clients other than fetch: set the result
 * as the `txn-token` header or metadata). The first call to a consent's resource inside a
 * `requires` tool answers the redeemed single-use token instead, as `writFetch` does.
 */
export async function downstreamToken(client: WritClient, narrowing: Omit<DownscopeOptions, "idempotencyKey">): Promise<string> {
  return childFor(client, narrowing, "downstreamToken");
}

// ---------------------------------------------------------------------------------------
// Inbound

export interface MiddlewareOptions {
  /** The action a request needs, checked at Writ with the token (undefined: the token alone). */
  action?: (req: IncomingMessage) => Action | undefined;
}

/** The request as the handler sees it: the verified context, and the verdict it came from. */
export interface WritRequest extends IncomingMessage {
  writ?: WritContext;
  writVerdict?: Verdict;
}

type Refusal = { status: number; body: Record<string, unknown> };

function refuse(res: ServerResponse, r: Refusal): void {
  const body = JSON.stringify(r.body);
  res.writeHead(r.status, {
    "content-type": "application/json",
    "cache-control": "no-store",
    "content-length": Buffer.byteLength(body),
  });
  res.end(body);
}

/** Exactly one non-empty `Txn-Token` header, or why not. */
function presented(req: IncomingMessage): string | Refusal {
  const values = req.headersDistinct[TXN_TOKEN_HEADER] ?? [];
  if (values.length === 0) return invalid("missing", "no Txn-Token header");
  if (values.length > 1) return invalid("multiple", "more than one Txn-Token header");
  const token = values[0]!.trim();
  if (!token || /[\s,]/.test(token)) return invalid("malformed", "the Txn-Token header is not one token");
  return token;
}

function invalid(reason: string, description: string): Refusal {
  return { status: 401, body: { error: "invalid_token", reason, error_description: description } };
}

/** Validates the request's token as this service: the verified context, or the refusal to answer. */
async function check(client: WritClient, req: IncomingMessage, opts: MiddlewareOptions): Promise<WritContext | Refusal> {
  const token = presented(req);
  if (typeof token !== "string") return token;
  let verdict: Verdict;
  let action: Action | undefined;
  try {
    action = opts.action?.(req);
    verdict = await client.validate(token, action ? { action } : {});
  } catch (e) {
    // Token problems are verdicts (inactive), so a refused call is about the request's
    // action attributes (not canonical text, say): the request is at fault.
    if (e instanceof WritError && e.code === status.INVALID_ARGUMENT) {
      return { status: 400, body: { error: "invalid_request", error_description: "the request's action was refused" } };
    }
    // Writ could not answer, or refused this service itself: nothing is verified, so nothing runs.
    return { status: 503, body: { error: "temporarily_unavailable", error_description: "the token could not be checked" } };
  }
  if (!verdict.active || !verdict.info) {
    return invalid(verdict.inactiveReason ?? "inactive", "the token is not active for this service");
  }
  const decision = verdict.decision;
  // An action was asked: only an explicit allowed decision lets the request through.
  if (action && decision === undefined) {
    return { status: 403, body: { error: "insufficient_scope", error_description: "Writ answered no decision for the action" } };
  }
  if (decision && !decision.allowed) {
    return {
      status: 403,
      body: {
        error: "insufficient_scope",
        denied_by: decision.deniedBy,
        error_description: decision.reason,
        consent_required: decision.consentRequired,
        ...(decision.consentRequestId ? { consent_request_id: decision.consentRequestId } : {}),
      },
    };
  }
  const ctx = new WritContext(token, verdict.info);
  const wr = req as WritRequest;
  wr.writ = ctx;
  wr.writVerdict = verdict;
  forget(req);
  return ctx;
}

/** Removes the token from every view of the request's headers: the handler reads it from current(), never copies it on. */
function forget(req: IncomingMessage): void {
  delete req.headers[TXN_TOKEN_HEADER];
  delete req.headersDistinct[TXN_TOKEN_HEADER]; // computed once, already holding it
  const raw = req.rawHeaders;
  for (let i = raw.length - 2; i >= 0; i -= 2) {
    if (raw[i]!.toLowerCase() === TXN_TOKEN_HEADER) raw.splice(i, 2);
  }
}

/**
 * Express/Connect-style middleware: `app.use(txnTokenMiddleware(client))`. The next
 * handlers run inside the verified context (`current()`, `req.writ`); refusals are
 * answered here and `next` is never called. The token is checked once, when the request
 * starts: a long-lived request (a stream, a websocket upgrade) is not re-validated, so a
 * revocation does not cut it; bound its lifetime, or validate again where it matters.
 */
export function txnTokenMiddleware(
  client: WritClient,
  opts: MiddlewareOptions = {},
): (req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void) => void {
  return (req, res, next) => {
    check(client, req, opts).then(
      (r) => (r instanceof WritContext ? run(r, () => next()) : refuse(res, r)),
      (e: unknown) => next(e),
    );
  };
}

/** Wraps a Node `http` request handler: `http.createServer(withTxnToken(client, handler))`. */
export function withTxnToken(
  client: WritClient,
  handler: (req: WritRequest, res: ServerResponse) => unknown,
  opts: MiddlewareOptions = {},
): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    void (async () => {
      try {
        const r = await check(client, req, opts);
        if (!(r instanceof WritContext)) return refuse(res, r);
        await run(r, () => handler(req as WritRequest, res));
      } catch {
        if (!res.headersSent) refuse(res, { status: 500, body: { error: "server_error" } });
        else res.destroy();
      }
    })();
  };
}
