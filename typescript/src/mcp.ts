// Writ for MCP servers built on the official TypeScript SDK (`@modelcontextprotocol/sdk`,
// an optional peer dependency): a token verifier for the SDK's `requireBearerAuth` that
// introspects the incoming token at Writ as this server, and a per-tool requirement
// (scope + attributes taken from the tool's arguments) checked at Writ on every call.
// The tool body runs inside the verified context, so `writFetch` / `downstreamToken`
// narrow the token for each upstream call. A latent high-privilege scope can ask the user
// through a URL-mode elicitation carrying Writ's consent link, then hold the redeemed
// single-use token for the tool's first request to the upstream that checks it
// (`writFetch` sends it; `consentToken()` shows it).

import { setTimeout as sleep } from "node:timers/promises";
import { status } from "@grpc/grpc-js";
import { InvalidTokenError, ServerError } from "@modelcontextprotocol/sdk/server/auth/errors.js";
import type { OAuthTokenVerifier } from "@modelcontextprotocol/sdk/server/auth/provider.js";
import type { AuthInfo } from "@modelcontextprotocol/sdk/server/auth/types.js";
import type { RequestHandlerExtra } from "@modelcontextprotocol/sdk/shared/protocol.js";
import {
  ElicitResultSchema,
  type CallToolResult,
  type ServerNotification,
  type ServerRequest,
} from "@modelcontextprotocol/sdk/types.js";
import { action as makeAction, type AttributeValue } from "./builders.js";
import { Minted, type Verdict, type WritClient } from "./client.js";
import { heldConsent, run, runWithConsent, WritContext } from "./context.js";
import { WritError } from "./errors.js";

export type ToolExtra = RequestHandlerExtra<ServerRequest, ServerNotification>;

export interface VerifierOptions {
  /**
   * This MCP server's identity at Writ (its SPIFFE ID): the client's own, the audience every
   * token presented here must name. Checked on each answer, beside Writ's own check.
   */
  audience: string;
  /**
   * This MCP server's resource identifier (RFC 8707: its URL), reported in
   * `AuthInfo.resource` for `requireBearerAuth({ expectedResource })`. It stands for the
   * party `audience`: a token is for this resource exactly when its audience is that party.
   */
  resource: string | URL;
}

/**
 * A verifier for `requireBearerAuth({ verifier, expectedResource })`: the bearer token is
 * validated at Writ with this server's identity, so only a token whose audience is this
 * server is active, and its audience must be `opts.audience` (that binding is what
 * `resource` stands for: the SDK's own resource check only compares it with the
 * configuration). Inactive, refused or other-audience tokens are `invalid_token` (401).
 * Writ unreachable is a `ServerError`, which the SDK answers 500 `server_error` (it has no
 * way to answer 503); nothing runs either way.
 */
export function writTokenVerifier(client: WritClient, opts: VerifierOptions): OAuthTokenVerifier {
  const resource = new URL(opts.resource);
  const audience = opts.audience;
  if (!audience) throw new TypeError("writTokenVerifier: `audience` (this server's identity) is required");
  return {
    async verifyAccessToken(token: string): Promise<AuthInfo> {
      let v: Verdict;
      try {
        v = await client.validate(token);
      } catch (e) {
        if (e instanceof WritError && e.code === status.INVALID_ARGUMENT) {
          throw new InvalidTokenError("the token was refused");
        }
        throw new ServerError("the token could not be checked");
      }
      if (!v.active || !v.info) {
        throw new InvalidTokenError(`the token is not active for this server (${v.inactiveReason ?? "inactive"})`);
      }
      if (v.info.audience?.id !== audience) {
        throw new InvalidTokenError("the token is not for this server (wrong_audience)");
      }
      return {
        token,
        clientId: v.info.act?.id ?? "",
        scopes: [...v.info.scopes],
        expiresAt: Math.floor(v.info.expiresAtUnixMs / 1000),
        resource,
        extra: { writ: v.info },
      };
    },
  };
}

export interface ConsentOptions<Args> {
  /** The party that will check the redeemed token (the upstream API's SPIFFE ID). */
  resource: string;
  /** Why, for the user. */
  reason: (args: Args) => string;
  /** How long to wait for the decision after the client accepted the elicitation (default 60 s). */
  waitMs?: number;
  /** How often to try redeeming meanwhile (default 500 ms). */
  pollMs?: number;
}

export interface ToolRequirement<Args> {
  /** The scope the tool needs. */
  scope: string;
  /** The action's attributes, from the tool's arguments (what the token's claims constrain). */
  attributes?: (args: Args) => Record<string, AttributeValue>;
  /** Ask the user when the scope is high-privilege (CONSENT_REQUIRED); without it, refused. */
  consent?: ConsentOptions<Args>;
}

type Tool<Args> = (args: Args, extra: ToolExtra) => CallToolResult | Promise<CallToolResult>;

/**
 * Inside a tool that went through consent: the redeemed single-use token (audience the
 * consent's resource), until a request took it. `writFetch` and `downstreamToken` send it
 * by themselves with the first request to that resource; read it here only to send it by
 * other means, and then do not also call that resource through them.
 */
export function consentToken(): Minted | undefined {
  return heldConsent();
}

function refused(text: string): CallToolResult {
  return { isError: true, content: [{ type: "text", text: `refused by Writ: ${text}` }] };
}

/**
 * Wraps a tool callback (one with an input schema): every call checks the action at Writ
 * with the caller's token (`extra.authInfo`, from `requireBearerAuth` + `writTokenVerifier`);
 * a refusal is a tool error naming the reason and the body never runs. The body runs
 * inside the token's context.
 */
export function requires<Args>(client: WritClient, req: ToolRequirement<Args>, tool: Tool<Args>): Tool<Args> {
  return async (args, extra) => {
    const token = extra.authInfo?.token;
    if (!token) return refused("no token: put the server behind requireBearerAuth with writTokenVerifier");
    const act = makeAction(req.scope, req.attributes?.(args) ?? {});
    let v: Verdict;
    try {
      v = await client.validate(token, { action: act });
    } catch (e) {
      return refused(e instanceof WritError ? e.reason || e.codeName : "the token could not be checked");
    }
    if (!v.active || !v.info) return refused(`the token is not active (${v.inactiveReason ?? "inactive"})`);
    const ctx = new WritContext(token, v.info);
    // The action was asked: only an explicit allowed decision runs the body (fail closed).
    if (v.decision === undefined) return refused("Writ answered no decision for the action");
    if (!v.decision.allowed) {
      if (!(v.decision.consentRequired && req.consent)) {
        return refused(`${v.decision.deniedBy}: ${v.decision.reason}`);
      }
      const redeemed = await askUser(client, token, act, req.consent, args, extra);
      if (!(redeemed instanceof Minted)) return redeemed;
      return run(ctx, () => runWithConsent(redeemed, () => tool(args, extra)));
    }
    return run(ctx, () => tool(args, extra));
  };
}

/** RequestConsent, a URL-mode elicitation with the link, then RedeemConsent once decided. */
async function askUser<Args>(
  client: WritClient,
  token: string,
  act: ReturnType<typeof makeAction>,
  consent: ConsentOptions<Args>,
  args: Args,
  extra: ToolExtra,
): Promise<Minted | CallToolResult> {
  try {
    const req = await client.requestConsent(token, { action: act, resource: consent.resource, reason: consent.reason(args) });
    const answer = await extra.sendRequest(
      {
        method: "elicitation/create",
        params: { mode: "url", elicitationId: req.id, url: req.url, message: req.info.description },
      },
      ElicitResultSchema,
    );
    if (answer.action !== "accept") return refused(`the user did not approve (${answer.action})`);
    const deadline = Date.now() + (consent.waitMs ?? 60_000);
    for (;;) {
      try {
        return await client.redeemConsent(req.id, token);
      } catch (e) {
        const pending = e instanceof WritError && e.reason === "CONSENT_PENDING";
        if (!pending || Date.now() >= deadline) throw e;
        await sleep(consent.pollMs ?? 500);
      }
    }
  } catch (e) {
    return refused(e instanceof WritError ? e.reason || e.codeName : "consent could not be obtained");
  }
}
