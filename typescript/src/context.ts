// The current verified token of a chain of async calls, carried by AsyncLocalStorage: the
// inbound middleware (or the code that minted) sets it once, and every await, timer or
// promise below sees it, so outbound helpers can downscope it without plumbing. Beside
// it, inside an MCP tool that went through consent, the redeemed single-use token, held
// for the first outbound request to its audience.

import { AsyncLocalStorage } from "node:async_hooks";
import { inspect } from "node:util";
import type { Minted } from "./client.js";
import type { TokenInfo } from "./gen/writ/v1/writ.js";
import { NoCurrentTokenError } from "./errors.js";

/** A token this service holds (it is the audience) and what it records. */
export class WritContext {
  readonly #token: string;
  readonly info: TokenInfo;
  constructor(token: string, info: TokenInfo) {
    this.#token = token;
    this.info = info;
  }
  /** From anything with a token and its info (a `Minted`, a verdict's info and the token checked). */
  static from(t: { readonly token: string; readonly info: TokenInfo }): WritContext {
    return t instanceof WritContext ? t : new WritContext(t.token, t.info);
  }
  /** The secret: downscope it for each downstream call, never forward it. */
  get token(): string {
    return this.#token;
  }
  toJSON(): Record<string, unknown> {
    return { token: "writ_…", info: this.info };
  }
  [inspect.custom](): string {
    return `WritContext ${inspect(this.toJSON())}`;
  }
}

const storage = new AsyncLocalStorage<WritContext>();

/** The current context, or undefined outside any `run()`. */
export function current(): WritContext | undefined {
  return storage.getStore();
}

/** The current context; throws `NoCurrentTokenError` (fail closed) when there is none. */
export function requireCurrent(what = "this call"): WritContext {
  const ctx = storage.getStore();
  if (!ctx) throw new NoCurrentTokenError(what);
  return ctx;
}

/** Runs `fn` with `ctx` as the current context (and everything it awaits or schedules). */
export function run<T>(ctx: WritContext | { readonly token: string; readonly info: TokenInfo }, fn: () => T): T {
  return storage.run(WritContext.from(ctx), fn);
}

// ---------------------------------------------------------------------------------------
// A redeemed consent (internal: `requires` holds it, writFetch and downstreamToken take it)

const consent = new AsyncLocalStorage<{ held: Minted | undefined }>();

/** Runs `fn` holding `redeemed` (a consent's single-use token) for the first request to its audience. */
export function runWithConsent<T>(redeemed: Minted, fn: () => T): T {
  return consent.run({ held: redeemed }, fn);
}

/** The held consent token, until a request took it. */
export function heldConsent(): Minted | undefined {
  return consent.getStore()?.held;
}

/** Takes the held consent token when `audience` is its audience: once, later calls answer undefined. */
export function takeConsent(audience: string): Minted | undefined {
  const store = consent.getStore();
  const held = store?.held;
  if (!store || !held || held.info.audience?.id !== audience) return undefined;
  store.held = undefined;
  return held;
}
