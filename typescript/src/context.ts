// The current verified token of a chain of async calls, carried by AsyncLocalStorage: the
// inbound middleware (or the code that minted) sets it once, and every await, timer or
// promise below sees it, so outbound helpers can downscope it without plumbing.

import { AsyncLocalStorage } from "node:async_hooks";
import { inspect } from "node:util";
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
