// The typed async client for Writ's gRPC API: one method per call an agent, an API, a
// minter or an operator makes, with the caller's identity (mTLS, JWT client assertion or
// bearer credential) attached to every attempt, a deadline on every attempt, and retries
// only where a repeat cannot do harm twice (Mint and Downscope always carry an
// idempotency key, reused by their retries).

import { randomUUID } from "node:crypto";
import { readFile } from "node:fs/promises";
import { inspect } from "node:util";
import {
  Client,
  credentials as grpcCredentials,
  Metadata,
  status,
  type ChannelCredentials,
  type Interceptor,
  type ServiceError,
} from "@grpc/grpc-js";
import {
  ChainServiceService,
  ConsentStatus,
  InactiveReason,
  TokenServiceService,
  type ActionDecision,
  type ConsentRequestInfo,
  type Constraint,
  type Party,
  type TokenInfo,
  type TokenNode,
  type Transaction,
} from "./gen/writ/v1/writ.js";
import { toValue, type Action } from "./builders.js";
import { fromServiceError, WritError } from "./errors.js";

export type { ActionDecision, ConsentRequestInfo, TokenInfo, TokenNode, Transaction };
export { ConsentStatus };

/** PEM contents (a string starting with `-----BEGIN`, or a Buffer) or a file path. */
export type PemSource = string | Buffer;

export interface TlsOptions {
  /** The CA that signed the server's certificate (dev: `<data_dir>/tls/ca.pem`); default: the system roots. */
  ca?: PemSource;
  /** This party's client certificate (an X.509-SVID naming its SPIFFE ID), for mTLS. */
  cert?: PemSource;
  /** Its private key. */
  key?: PemSource;
  /** Verify the server's certificate for this name instead of the address's host. */
  serverName?: string;
}

export interface ConnectOptions {
  /** TLS settings (TLS is on unless `plaintext`); `cert` and `key` prove this party's identity. */
  tls?: TlsOptions;
  /** A minter's or operator's credential, sent as `authorization: Bearer …` on every call. */
  credential?: string;
  /** Returns a fresh JWT client assertion; called once per attempt (an assertion is single-use). */
  assertion?: () => string | Promise<string>;
  /** Plaintext gRPC: refused unless the address is loopback or `allowPlaintextRemote` is set. */
  plaintext?: boolean;
  allowPlaintextRemote?: boolean;
  /** The deadline of each attempt, in ms (default 10 000). */
  timeoutMs?: number;
  /** Attempts of a call that is safe to retry, on UNAVAILABLE / DEADLINE_EXCEEDED (default 3). */
  maxAttempts?: number;
  /** grpc-js interceptors (observability, tests). */
  interceptors?: Interceptor[];
}

/** Per-call options. */
export interface CallOptions {
  timeoutMs?: number;
}

export interface MintOptions {
  subject: string;
  audience: Party;
  targets?: readonly string[];
  scopes?: readonly string[];
  claims?: Readonly<Record<string, Constraint>>;
  purpose?: string;
  tctx?: Readonly<Record<string, string>>;
  rctx?: Readonly<Record<string, string>>;
  /** Seconds; 0 or unset: the server's default. */
  ttl?: number;
  /** 0 or unset: unlimited. */
  maxUses?: number;
  requireActionCheck?: boolean;
  /** Default: a fresh random key (reused by this call's retries). */
  idempotencyKey?: string;
}

export interface DownscopeOptions {
  audience: Party;
  targets?: readonly string[];
  scopes?: readonly string[];
  claims?: Readonly<Record<string, Constraint>>;
  /** Seconds; 0 or unset: the parent's expiry. */
  ttl?: number;
  purpose?: string;
  maxUses?: number;
  requireActionCheck?: boolean;
  dropRctx?: readonly string[];
  idempotencyKey?: string;
}

export interface ValidateOptions {
  /** Check one action (spends a use of a use-limited token when allowed; never retried). */
  action?: Action;
  /** Answer only the verdict, without the token's context. */
  decisionOnly?: boolean;
  /** Also ask for a Txn-Token JWT (callers the policy allows only). */
  txnTokenJwt?: boolean;
}

export type RevokeTarget =
  | { token: string; tokenId?: never; txn?: never }
  | { tokenId: string; token?: never; txn?: never }
  | { txn: string; token?: never; tokenId?: never };

export type RevokeOptions = RevokeTarget & { reason: string };

export interface RequestConsentOptions {
  action: Action;
  /** The party that will check the redeemed token (its SPIFFE ID). */
  resource: string;
  /** Why, in the user's words. */
  reason: string;
}

export interface DecideConsentOptions {
  approve: boolean;
  /** The user the caller authenticated; must be the request's subject. */
  subject: string;
}

/** Hides secrets from `console.log`, `util.inspect` and `JSON.stringify`: they are getters on private fields. */
abstract class Redacted {
  [inspect.custom](): string {
    return `${this.constructor.name} ${inspect(this.toJSON())}`;
  }
  abstract toJSON(): Record<string, unknown>;
}

/** A new token (Mint, Downscope, RedeemConsent): its secret and what it records. */
export class Minted extends Redacted {
  readonly #token: string;
  readonly info: TokenInfo;
  constructor(token: string, info: TokenInfo | undefined) {
    super();
    this.#token = token;
    this.info = info ?? missing("info");
  }
  /** The secret (`writ_…`): give it to the audience only, never log it. */
  get token(): string {
    return this.#token;
  }
  toJSON(): Record<string, unknown> {
    return { token: "writ_…", info: this.info };
  }
}

export type InactiveReasonName =
  | "expired"
  | "revoked"
  | "unknown"
  | "wrong_audience"
  | "malformed"
  | "exhausted"
  | "action_required"
  | "unspecified";

function reasonName(r: InactiveReason): InactiveReasonName {
  const name = InactiveReason[r];
  // A reason newer than these stubs reads as unspecified (still inactive).
  if (!name?.startsWith("INACTIVE_REASON_")) return "unspecified";
  return name.slice("INACTIVE_REASON_".length).toLowerCase() as InactiveReasonName;
}

/** Validate's answer. Inactive tokens are an answer, not an error. */
export class Verdict extends Redacted {
  readonly active: boolean;
  /** Why the token is inactive (`wrong_audience`, `revoked`, …); undefined when active. */
  readonly inactiveReason: InactiveReasonName | undefined;
  /** The token's context (unless decisionOnly). */
  readonly info: TokenInfo | undefined;
  /** The action check's decision, when an action was asked. */
  readonly decision: ActionDecision | undefined;
  readonly #jwt: string;
  readonly #actionAsked: boolean;
  constructor(
    active: boolean,
    reason: InactiveReason,
    info?: TokenInfo,
    decision?: ActionDecision,
    jwt = "",
    actionAsked = decision !== undefined,
  ) {
    super();
    this.active = active;
    this.inactiveReason = active ? undefined : reasonName(reason);
    this.info = info;
    this.decision = decision;
    this.#jwt = jwt;
    this.#actionAsked = actionAsked;
  }
  /** Active, and the action (if one was asked) allowed: an asked action without a decision is not (fail closed). */
  get allowed(): boolean {
    if (!this.active) return false;
    return this.#actionAsked ? this.decision?.allowed === true : this.decision === undefined || this.decision.allowed;
  }
  /** The action waits for the user's consent (RequestConsent). */
  get consentRequired(): boolean {
    return this.decision?.consentRequired ?? false;
  }
  /** The Txn-Token JWT, when asked for and granted. */
  get txnTokenJwt(): string | undefined {
    return this.#jwt || undefined;
  }
  toJSON(): Record<string, unknown> {
    return { active: this.active, inactiveReason: this.inactiveReason, info: this.info, decision: this.decision };
  }
}

/** A consent request and the link for the user. */
export class ConsentRequest extends Redacted {
  readonly id: string;
  /** An identical request was pending or approved: this is that one. */
  readonly existing: boolean;
  readonly info: ConsentRequestInfo;
  readonly #url: string;
  constructor(info: ConsentRequestInfo | undefined, url: string, existing: boolean) {
    super();
    this.info = info ?? missing("request");
    this.id = this.info.id;
    this.existing = existing;
    this.#url = url;
  }
  /** The consent page's link: a capability, for the user only. */
  get url(): string {
    return this.#url;
  }
  toJSON(): Record<string, unknown> {
    return { id: this.id, existing: this.existing, url: "…", info: this.info };
  }
}

function missing(field: string): never {
  throw new WritError({ code: status.INTERNAL, message: `the server's answer lacks ${field}` });
}

const IDEMPOTENCY_KEY = /^[\x21-\x7e]{16,128}$/;

function idempotencyKey(given: string | undefined): string {
  if (given === undefined) return randomUUID().replaceAll("-", "");
  if (!IDEMPOTENCY_KEY.test(given)) {
    throw new TypeError("idempotencyKey: 16..=128 printable ASCII characters without spaces");
  }
  return given;
}

interface UnaryDef<Req, Res> {
  path: string;
  requestSerialize: (value: Req) => Buffer;
  responseDeserialize: (value: Buffer) => Res;
}

type RetryPolicy = "safe" | "never";

async function pem(src: PemSource | undefined): Promise<Buffer | null> {
  if (src === undefined) return null;
  if (Buffer.isBuffer(src)) return src;
  if (src.trimStart().startsWith("-----BEGIN")) return Buffer.from(src);
  return readFile(src);
}

const LOOPBACK = /^(localhost|127(\.\d{1,3}){3}|\[?::1\]?)$/i;

/** `host:port` out of `host:port`, `https://host:port` or `http://host:port`; plaintext for `http://`. */
function parseAddress(addr: string): { target: string; host: string; plaintext: boolean } {
  let target = addr.trim();
  let plaintext = false;
  const scheme = /^([a-z]+):\/\//i.exec(target);
  if (scheme) {
    const s = scheme[1]!.toLowerCase();
    if (s !== "http" && s !== "https") throw new TypeError(`unsupported scheme in ${addr}`);
    plaintext = s === "http";
    target = target.slice(scheme[0].length).replace(/\/+$/, "");
  }
  const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(target);
  if (!m) throw new TypeError(`address must be host:port, got ${addr}`);
  return { target, host: m[1]!, plaintext };
}

/**
 * Connects to Writ at `addr` (`host:port`). TLS unless `plaintext` (loopback only);
 * the identity is the client certificate, an assertion or a credential.
 */
export async function connect(addr: string, opts: ConnectOptions = {}): Promise<WritClient> {
  const { target, host, plaintext: httpScheme } = parseAddress(addr);
  const plaintext = opts.plaintext ?? httpScheme;
  if (plaintext && !LOOPBACK.test(host) && !opts.allowPlaintextRemote) {
    throw new TypeError(`plaintext gRPC to ${host} is refused: only loopback, unless allowPlaintextRemote`);
  }
  if (plaintext && (opts.tls?.cert || opts.tls?.key)) {
    throw new TypeError("a client certificate needs TLS: drop `plaintext`");
  }
  let creds: ChannelCredentials;
  if (plaintext) {
    creds = grpcCredentials.createInsecure();
  } else {
    const [ca, cert, key] = await Promise.all([pem(opts.tls?.ca), pem(opts.tls?.cert), pem(opts.tls?.key)]);
    if ((cert === null) !== (key === null)) throw new TypeError("tls: give both cert and key, or neither");
    creds = grpcCredentials.createSsl(ca, key, cert);
  }
  const channelOptions: Record<string, unknown> = {};
  if (opts.tls?.serverName) {
    channelOptions["grpc.ssl_target_name_override"] = opts.tls.serverName;
    channelOptions["grpc.default_authority"] = opts.tls.serverName;
  }
  if (opts.interceptors) channelOptions["interceptors"] = opts.interceptors;
  const channel = new Client(target, creds, channelOptions);
  return new WritClient(channel, opts);
}

/** A connection to Writ. Create it with `connect()`; `close()` it when done. */
export class WritClient {
  readonly #channel: Client;
  readonly #credential: string | undefined;
  readonly #assertion: (() => string | Promise<string>) | undefined;
  readonly #timeoutMs: number;
  readonly #maxAttempts: number;

  constructor(channel: Client, opts: ConnectOptions) {
    this.#channel = channel;
    this.#credential = opts.credential?.trim() || undefined;
    this.#assertion = opts.assertion;
    this.#timeoutMs = opts.timeoutMs ?? 10_000;
    this.#maxAttempts = Math.max(1, opts.maxAttempts ?? 3);
  }

  [inspect.custom](): string {
    return "WritClient {}";
  }

  /** Starts a transaction (minters). */
  async mint(req: MintOptions, call: CallOptions = {}): Promise<Minted> {
    const res = await this.#unary(
      TokenServiceService.mint,
      {
        subject: req.subject,
        audience: req.audience,
        targets: [...(req.targets ?? [])],
        scopes: [...(req.scopes ?? [])],
        claims: { ...(req.claims ?? {}) },
        purpose: req.purpose ?? "",
        tctx: { ...(req.tctx ?? {}) },
        rctx: { ...(req.rctx ?? {}) },
        ttlSeconds: req.ttl ?? 0,
        maxUses: req.maxUses ?? 0,
        requireActionCheck: req.requireActionCheck ?? false,
        idempotencyKey: idempotencyKey(req.idempotencyKey),
      },
      "safe",
      call,
    );
    return new Minted(res.token, res.info);
  }

  /** Derives a narrower child of `parent` for the next hop (the parent's audience only). */
  async downscope(parent: string, req: DownscopeOptions, call: CallOptions = {}): Promise<Minted> {
    const res = await this.#unary(
      TokenServiceService.downscope,
      {
        parentToken: parent,
        audience: req.audience,
        targets: [...(req.targets ?? [])],
        scopes: [...(req.scopes ?? [])],
        claims: { ...(req.claims ?? {}) },
        ttlSeconds: req.ttl ?? 0,
        purpose: req.purpose ?? "",
        maxUses: req.maxUses ?? 0,
        requireActionCheck: req.requireActionCheck ?? false,
        dropRctx: [...(req.dropRctx ?? [])],
        idempotencyKey: idempotencyKey(req.idempotencyKey),
      },
      "safe",
      call,
    );
    return new Minted(res.token, res.info);
  }

  /** Introspects `token` as this caller (its audience), optionally checking one action. */
  async validate(token: string, opts: ValidateOptions = {}, call: CallOptions = {}): Promise<Verdict> {
    const res = await this.#unary(
      TokenServiceService.validate,
      {
        token,
        action: opts.action ? wireAction(opts.action) : undefined,
        decisionOnly: opts.decisionOnly ?? false,
        txnTokenJwt: opts.txnTokenJwt ?? false,
      },
      // An action check may spend a use: never repeated.
      opts.action ? "never" : "safe",
      call,
    );
    return new Verdict(res.active, res.inactiveReason, res.info, res.decision, res.txnTokenJwt, opts.action !== undefined);
  }

  /** Revokes a token and its descendants: by `token` (its holder), or by `tokenId` / `txn` (operators). Answers the ids newly revoked. */
  async revoke(req: RevokeOptions, call: CallOptions = {}): Promise<string[]> {
    const target =
      req.token !== undefined
        ? { $case: "token" as const, value: req.token }
        : req.tokenId !== undefined
          ? { $case: "tokenId" as const, value: req.tokenId }
          : { $case: "txn" as const, value: req.txn };
    const res = await this.#unary(TokenServiceService.revoke, { target, reason: req.reason }, "safe", call);
    return res.revokedTokenIds;
  }

  /** Asks the user's consent to one high-privilege action; give `url` to the user only. */
  async requestConsent(token: string, req: RequestConsentOptions, call: CallOptions = {}): Promise<ConsentRequest> {
    const res = await this.#unary(
      TokenServiceService.requestConsent,
      { token, action: wireAction(req.action), resource: req.resource, reason: req.reason },
      "safe",
      call,
    );
    return new ConsentRequest(res.request, res.consentUrl, res.existing);
  }

  /** Records the user's decision (approver apps, operators). Never retried. */
  async decideConsent(id: string, req: DecideConsentOptions, call: CallOptions = {}): Promise<ConsentRequestInfo> {
    const res = await this.#unary(
      TokenServiceService.decideConsent,
      { id, approve: req.approve, subject: req.subject },
      "never",
      call,
    );
    return res.request ?? missing("request");
  }

  /** Redeems an approved request for a single-use token for exactly that action. Never retried. */
  async redeemConsent(id: string, token: string, opts: { ttl?: number } = {}, call: CallOptions = {}): Promise<Minted> {
    const res = await this.#unary(
      TokenServiceService.redeemConsent,
      { id, token, ttlSeconds: opts.ttl ?? 0 },
      "never",
      call,
    );
    return new Minted(res.token, res.info);
  }

  /** The whole tree of one transaction, every page (operators). */
  async getTransaction(txn: string, call: CallOptions = {}): Promise<Transaction> {
    let cursor = "";
    let first: Transaction | undefined;
    const tokens: TokenNode[] = [];
    do {
      const page = await this.#unary(ChainServiceService.getTransaction, { txn, cursor, pageSize: 0 }, "safe", call);
      first ??= page;
      tokens.push(...page.tokens);
      cursor = page.truncated ? page.nextCursor : "";
    } while (cursor);
    return { ...first, tokens, truncated: false, nextCursor: "" };
  }

  /** One consent request (operators). */
  async getConsent(id: string, call: CallOptions = {}): Promise<ConsentRequestInfo> {
    return this.#unary(ChainServiceService.getConsent, { id }, "safe", call);
  }

  /** Closes the channel. */
  close(): void {
    this.#channel.close();
  }

  async #metadata(): Promise<Metadata> {
    const md = new Metadata();
    if (this.#credential) md.set("authorization", `Bearer ${this.#credential}`);
    if (this.#assertion) md.set("writ-client-assertion", await this.#assertion());
    return md;
  }

  async #unary<Req, Res>(def: UnaryDef<Req, Res>, req: Req, policy: RetryPolicy, call: CallOptions): Promise<Res> {
    const attempts = policy === "safe" ? this.#maxAttempts : 1;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#once(def, req, call.timeoutMs ?? this.#timeoutMs);
      } catch (err) {
        // Only a status from the wire is retried; a local failure (an assertion callback's) is not.
        if (!(err instanceof WritError)) throw err;
        const transient = err.code === status.UNAVAILABLE || err.code === status.DEADLINE_EXCEEDED;
        if (!transient || attempt >= attempts) throw err;
        // Full jitter over an exponential step: 100 ms, 200 ms, 400 ms … capped at 2 s.
        const step = Math.min(2000, 100 * 2 ** (attempt - 1));
        await new Promise((r) => setTimeout(r, Math.random() * step));
      }
    }
  }

  async #once<Req, Res>(def: UnaryDef<Req, Res>, req: Req, timeoutMs: number): Promise<Res> {
    const md = await this.#metadata();
    return new Promise<Res>((resolve, reject) => {
      this.#channel.makeUnaryRequest(
        def.path,
        def.requestSerialize,
        def.responseDeserialize,
        req,
        md,
        { deadline: Date.now() + timeoutMs },
        (err: ServiceError | null, res?: Res) => {
          if (err) reject(fromServiceError(err));
          else if (res === undefined) reject(new WritError({ code: status.INTERNAL, message: "empty answer" }));
          else resolve(res);
        },
      );
    });
  }
}

function wireAction(a: Action): { scope: string; attributes: Record<string, ReturnType<typeof toValue>> } {
  const attributes: Record<string, ReturnType<typeof toValue>> = {};
  for (const [k, v] of Object.entries(a.attributes ?? {})) attributes[k] = toValue(v);
  return { scope: a.scope, attributes };
}
