// Small builders for what requests are made of (parties, typed claims, action attributes),
// so callers write `max(500)` or `agent(id)` instead of the wire's oneof shapes.

import {
  ActorKind,
  ClientType,
  type Constraint,
  type Party,
  type Value,
} from "./gen/writ/v1/writ.js";

export type { Constraint, Party, Value };

export type ClientTypeName = "confidential" | "public";

function clientType(t: ClientTypeName | undefined): ClientType {
  return t === "public" ? ClientType.CLIENT_TYPE_PUBLIC : ClientType.CLIENT_TYPE_CONFIDENTIAL;
}

/** An AI agent (by SPIFFE ID), confidential unless said otherwise. */
export function agent(id: string, opts: { clientType?: ClientTypeName } = {}): Party {
  return { id, kind: ActorKind.ACTOR_KIND_AGENT, clientType: clientType(opts.clientType) };
}

/** A workload: an API or a service (by SPIFFE ID), confidential unless said otherwise. */
export function workload(id: string, opts: { clientType?: ClientTypeName } = {}): Party {
  return { id, kind: ActorKind.ACTOR_KIND_WORKLOAD, clientType: clientType(opts.clientType) };
}

/** A point in time (what a `window` claim checks), distinct from a plain integer on the wire. */
export class Time {
  readonly unixSeconds: number;
  constructor(at: Date | number) {
    this.unixSeconds = at instanceof Date ? Math.floor(at.getTime() / 1000) : at;
    integer(this.unixSeconds, "time");
  }
}

/** `time(new Date())` or `time(unixSeconds)`. */
export function time(at: Date | number): Time {
  return new Time(at);
}

/** An action attribute: an integer, a string, a time, or a list of them (every item must pass). */
export type AttributeValue = number | string | Time | readonly (number | string | Time)[];

/** One action to check: a scope and the attributes the claims on that scope constrain. */
export interface Action {
  scope: string;
  attributes?: Readonly<Record<string, AttributeValue>>;
}

/** `action("payments:charge", { amount: 420, category: "travel" })`. */
export function action(scope: string, attributes: Record<string, AttributeValue> = {}): Action {
  return { scope, attributes };
}

export interface ClaimOptions {
  /** The scopes whose actions this claim constrains (empty: every scope, or the parent's claim's). */
  appliesTo?: readonly string[];
}

export interface SetOptions extends ClaimOptions {
  /** Compare case-folded (GAMBLING, Gambling and fullwidth forms are one value). */
  caseInsensitive?: boolean;
}

function integer(n: number, what: string): number {
  if (!Number.isSafeInteger(n)) throw new TypeError(`${what}: ${n} is not a safe integer`);
  return n;
}

function claim(kind: Constraint["kind"], opts: ClaimOptions | undefined): Constraint {
  return { kind, appliesTo: [...(opts?.appliesTo ?? [])] };
}

function strings(values: string | readonly string[]): string[] {
  return typeof values === "string" ? [values] : [...values];
}

/** An integer ≤ `n`. */
export function max(n: number, opts?: ClaimOptions): Constraint {
  return claim({ $case: "max", value: integer(n, "max") }, opts);
}

/** An integer ≥ `n`. */
export function min(n: number, opts?: ClaimOptions): Constraint {
  return claim({ $case: "min", value: integer(n, "min") }, opts);
}

/** An integer within `[lo, hi]`. */
export function range(lo: number, hi: number, opts?: ClaimOptions): Constraint {
  return claim({ $case: "range", value: { min: integer(lo, "range"), max: integer(hi, "range") } }, opts);
}

/** A time within `[notBefore, notAfter]` (Dates or Unix seconds). */
export function window(notBefore: Date | number, notAfter: Date | number, opts?: ClaimOptions): Constraint {
  return claim(
    { $case: "window", value: { notBefore: time(notBefore).unixSeconds, notAfter: time(notAfter).unixSeconds } },
    opts,
  );
}

/** A string in the set. */
export function allow(values: string | readonly string[], opts?: SetOptions): Constraint {
  return claim({ $case: "allow", value: { values: strings(values), caseInsensitive: opts?.caseInsensitive ?? false } }, opts);
}

/** A string not in the set. */
export function deny(values: string | readonly string[], opts?: SetOptions): Constraint {
  return claim({ $case: "deny", value: { values: strings(values), caseInsensitive: opts?.caseInsensitive ?? false } }, opts);
}

/** A canonical resource path under `path`, by whole segments. */
export function prefix(path: string, opts?: ClaimOptions): Constraint {
  return claim({ $case: "prefix", value: path }, opts);
}

/** Exactly one value (an integer, a string or a `time(...)`). */
export function exact(value: number | string | Time, opts?: ClaimOptions): Constraint {
  return claim({ $case: "exact", value: toValue(value) }, opts);
}

/** An attribute value on the wire. */
export function toValue(v: AttributeValue): Value {
  if (typeof v === "number") return { kind: { $case: "int", value: integer(v, "attribute") } };
  if (typeof v === "string") return { kind: { $case: "str", value: v } };
  if (v instanceof Time) return { kind: { $case: "time", value: v.unixSeconds } };
  if (Array.isArray(v)) {
    return { kind: { $case: "list", value: { values: v.map((x: number | string | Time) => toValue(x)) } } };
  }
  throw new TypeError(`unsupported attribute value: ${typeof v}`);
}
