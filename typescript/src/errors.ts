// Writ's refusals as one typed error. Every gRPC status Writ answers carries a
// google.rpc.Status in `grpc-status-details-bin` whose details hold a google.rpc.ErrorInfo
// (domain "writ": a stable reason plus dimension / field / consentRequestId) and, for rate
// limits, a google.rpc.RetryInfo. They are decoded here with the protobuf wire runtime the
// generated stubs already use: three tiny messages do not justify more generated code.

import { BinaryReader } from "@bufbuild/protobuf/wire";
import { Metadata, status, type ServiceError } from "@grpc/grpc-js";

/** The domain of every ErrorInfo Writ answers. */
export const ERROR_DOMAIN = "writ";

const ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo";
const RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo";

/** Anything shaped like a token secret is cut from messages: a token never reaches a log. */
const TOKEN_PATTERN = /writ_[A-Za-z0-9_-]+/g;

export function redact(text: string): string {
  return text.replace(TOKEN_PATTERN, "writ_…");
}

/** A refusal by Writ, or a failure to reach it. Never carries a token secret. */
export class WritError extends Error {
  override readonly name = "WritError";
  /** The gRPC status code (`status.PERMISSION_DENIED`, …). */
  readonly code: status;
  /** Writ's stable reason (`NARROWING_REFUSED`, `TOKEN_REVOKED`, …); empty when the error did not come from Writ (a transport failure). */
  readonly reason: string;
  /** The refused dimension (`scopes`, `claims`, …) for NARROWING_REFUSED and MINT_REFUSED. */
  readonly dimension: string | undefined;
  /** The invalid field for INVALID_FIELD. */
  readonly field: string | undefined;
  /** The consent request a CONSENT_* refusal is about. */
  readonly consentRequestId: string | undefined;
  /** Seconds to wait before trying again (RESOURCE_EXHAUSTED rate limits). */
  readonly retryAfter: number | undefined;
  /** Every ErrorInfo metadata entry, as sent. */
  readonly metadata: Readonly<Record<string, string>>;

  constructor(init: {
    code: status;
    message: string;
    reason?: string;
    metadata?: Record<string, string>;
    retryAfter?: number;
  }) {
    const reason = init.reason ?? "";
    const name = status[init.code] ?? String(init.code);
    super(redact(`${name}${reason ? ` ${reason}` : ""}: ${init.message}`));
    const metadata = init.metadata ?? {};
    this.code = init.code;
    this.reason = reason;
    this.metadata = Object.freeze({ ...metadata });
    this.dimension = metadata["dimension"];
    this.field = metadata["field"];
    this.consentRequestId = metadata["consentRequestId"];
    this.retryAfter = init.retryAfter;
  }

  /** The status code's name (`PERMISSION_DENIED`). */
  get codeName(): string {
    return status[this.code] ?? String(this.code);
  }
}

/** Thrown where a token is needed and there is none in the current context: fail closed. */
export class NoCurrentTokenError extends Error {
  override readonly name = "NoCurrentTokenError";
  constructor(what: string) {
    super(`no current Writ token: ${what} needs one (run it inside writ.run() or behind the middleware)`);
  }
}

/** A grpc-js ServiceError as a WritError, with Writ's ErrorInfo and RetryInfo decoded. */
export function fromServiceError(e: ServiceError): WritError {
  const code = typeof e.code === "number" ? e.code : status.UNKNOWN;
  let message = e.details || e.message || "";
  let reason: string | undefined;
  let metadata: Record<string, string> | undefined;
  let retryAfter: number | undefined;
  const bin = e.metadata instanceof Metadata ? e.metadata.get("grpc-status-details-bin")[0] : undefined;
  if (bin !== undefined && typeof bin !== "string") {
    try {
      const st = decodeStatus(bin);
      if (st.message) message = st.message;
      for (const d of st.details) {
        if (d.typeUrl === ERROR_INFO_TYPE) {
          const info = decodeErrorInfo(d.value);
          if (info.domain === ERROR_DOMAIN) {
            reason = info.reason;
            metadata = info.metadata;
          }
        } else if (d.typeUrl === RETRY_INFO_TYPE) {
          retryAfter = decodeRetryInfo(d.value);
        }
      }
    } catch {
      // Undecodable details: keep the plain status.
    }
  }
  if (retryAfter === undefined && e.metadata instanceof Metadata) {
    const ra = e.metadata.get("retry-after")[0];
    if (typeof ra === "string" && /^\d+$/.test(ra)) retryAfter = Number(ra);
  }
  return new WritError({ code, message, reason, metadata, retryAfter });
}

interface AnyMessage {
  typeUrl: string;
  value: Uint8Array;
}

// google.rpc.Status { int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3; }
function decodeStatus(bytes: Uint8Array): { message: string; details: AnyMessage[] } {
  const r = new BinaryReader(bytes);
  let message = "";
  const details: AnyMessage[] = [];
  while (r.pos < r.len) {
    const [field, wire] = r.tag();
    if (field === 2) message = r.string();
    else if (field === 3) details.push(decodeAny(r.bytes()));
    else r.skip(wire);
  }
  return { message, details };
}

// google.protobuf.Any { string type_url = 1; bytes value = 2; }
function decodeAny(bytes: Uint8Array): AnyMessage {
  const r = new BinaryReader(bytes);
  const out: AnyMessage = { typeUrl: "", value: new Uint8Array() };
  while (r.pos < r.len) {
    const [field, wire] = r.tag();
    if (field === 1) out.typeUrl = r.string();
    else if (field === 2) out.value = r.bytes();
    else r.skip(wire);
  }
  return out;
}

// google.rpc.ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
function decodeErrorInfo(bytes: Uint8Array): { reason: string; domain: string; metadata: Record<string, string> } {
  const r = new BinaryReader(bytes);
  const out = { reason: "", domain: "", metadata: {} as Record<string, string> };
  while (r.pos < r.len) {
    const [field, wire] = r.tag();
    if (field === 1) out.reason = r.string();
    else if (field === 2) out.domain = r.string();
    else if (field === 3) {
      const e = new BinaryReader(r.bytes());
      let k = "";
      let v = "";
      while (e.pos < e.len) {
        const [f, w] = e.tag();
        if (f === 1) k = e.string();
        else if (f === 2) v = e.string();
        else e.skip(w);
      }
      out.metadata[k] = v;
    } else r.skip(wire);
  }
  return out;
}

// google.rpc.RetryInfo { google.protobuf.Duration retry_delay = 1; }, Duration { int64 seconds = 1; int32 nanos = 2; }
function decodeRetryInfo(bytes: Uint8Array): number | undefined {
  const r = new BinaryReader(bytes);
  let seconds: number | undefined;
  while (r.pos < r.len) {
    const [field, wire] = r.tag();
    if (field === 1) {
      const d = new BinaryReader(r.bytes());
      let s = 0;
      let n = 0;
      while (d.pos < d.len) {
        const [f, w] = d.tag();
        if (f === 1) s = Number(d.int64());
        else if (f === 2) n = d.int32();
        else d.skip(w);
      }
      seconds = s + n / 1e9;
    } else r.skip(wire);
  }
  return seconds;
}
