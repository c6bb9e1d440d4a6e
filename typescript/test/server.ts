// Starts a real `writ serve` (from WRIT_BIN) for a test file: a temp data dir, free ports,
// a policy with a high-privilege scope and an approver app, client certificates from
// `writ certs issue`, and the minter and operator credentials the server wrote.

import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, type ConnectOptions, type WritClient } from "../src/index.js";

export const SPIFFE = "spiffe://writ.local";
export const PLANNER = `${SPIFFE}/agent/planner`;
export const BOOKING = `${SPIFFE}/agent/booking`;
export const MALLORY = `${SPIFFE}/agent/mallory`;
export const PAYMENTS = `${SPIFFE}/workload/payments`;
export const WALLET = `${SPIFFE}/workload/wallet`;

const POLICY = `
trust_domain = "writ.local"
open_trust_domain = true
open_scopes = true

[scopes."payments:charge"]
description = "Charge your card"
high_privilege = true

[parties."${WALLET}"]
name = "Wallet app"
kind = "workload"
client_type = "confidential"
roles = ["approver"]
`;

function writBin(): string {
  const bin = process.env["WRIT_BIN"];
  if (!bin) throw new Error("WRIT_BIN is not set: point it at the writ binary (e.g. WRIT_BIN=target/debug/writ)");
  if (!existsSync(bin)) throw new Error(`WRIT_BIN=${bin} does not exist`);
  return bin;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export type Name = "planner" | "booking" | "mallory" | "payments" | "wallet";

export class WritServer {
  readonly addr: string;
  readonly dir: string;
  readonly dataDir: string;
  readonly #child: ChildProcess;
  readonly #log: string;
  readonly #clients: WritClient[] = [];

  private constructor(addr: string, dir: string, child: ChildProcess, log: string) {
    this.addr = addr;
    this.dir = dir;
    this.dataDir = join(dir, "data");
    this.#child = child;
    this.#log = log;
  }

  /** `writ serve` on a free port (the test policy plus `opts.policy`); resolves once it logs `writ listening`, certificates issued. */
  static async start(opts: { policy?: string } = {}): Promise<WritServer> {
    const bin = writBin();
    const dir = mkdtempSync(join(tmpdir(), "writ-ts-"));
    const policy = join(dir, "policy.toml");
    writeFileSync(policy, POLICY + (opts.policy ?? ""));
    const port = await freePort();
    const listen = `127.0.0.1:${port}`;
    // By name: the development certificate names localhost, and grpc-js warns on an IP as TLS server name.
    const addr = `localhost:${port}`;
    const log = join(dir, "serve.log");
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("WRIT_")) env[k] = v;
    Object.assign(env, {
      WRIT_HTTP_LISTEN: "127.0.0.1:0",
      WRIT_OPS_LISTEN: "127.0.0.1:0",
      WRIT_LOG_FORMAT: "text",
      RUST_LOG: "info",
    });
    const out = openSync(log, "w");
    const child = spawn(bin, ["serve", "--listen", listen, "--data-dir", join(dir, "data"), "--policy", policy], {
      env,
      stdio: ["ignore", "ignore", out],
    });
    // Never leave a server behind, even when the test process dies early.
    const reap = (): void => void (child.exitCode === null && child.kill("SIGKILL"));
    process.once("exit", reap);
    for (const sig of ["SIGTERM", "SIGINT"] as const) {
      process.once(sig, () => {
        reap();
        process.exit(1);
      });
    }
    const srv = new WritServer(addr, dir, child, log);
    await srv.#waitListening();
    execFileSync(bin, ["certs", "issue", "--kind", "agent", "--data-dir", srv.dataDir, "planner", "booking", "mallory"], {
      env,
      stdio: "ignore",
    });
    execFileSync(bin, ["certs", "issue", "--kind", "workload", "--data-dir", srv.dataDir, "payments", "wallet"], {
      env,
      stdio: "ignore",
    });
    return srv;
  }

  async #waitListening(): Promise<void> {
    for (let i = 0; i < 300; i++) {
      if (this.#child.exitCode !== null) throw new Error(`writ serve exited early:\n${this.log()}`);
      if (this.log().includes("writ listening")) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`no "writ listening" within 15 s:\n${this.log()}`);
  }

  log(): string {
    try {
      return readFileSync(this.#log, "utf8");
    } catch {
      return "";
    }
  }

  get ca(): string {
    return join(this.dataDir, "tls", "ca.pem");
  }

  cert(name: Name): { ca: string; cert: string; key: string } {
    return { ca: this.ca, cert: join(this.dataDir, "certs", `${name}.pem`), key: join(this.dataDir, "certs", `${name}-key.pem`) };
  }

  credential(kind: "minter" | "operator"): string {
    return readFileSync(join(this.dataDir, `${kind}.credential`), "utf8").trim();
  }

  /** A client proving `name`'s identity with its certificate. */
  async as(name: Name, extra: ConnectOptions = {}): Promise<WritClient> {
    return this.#keep(await connect(this.addr, { ...extra, tls: this.cert(name) }));
  }

  /** A client with the minter's or operator's credential. */
  async with(kind: "minter" | "operator", extra: ConnectOptions = {}): Promise<WritClient> {
    return this.#keep(await connect(this.addr, { ...extra, tls: { ca: this.ca }, credential: this.credential(kind) }));
  }

  #keep(c: WritClient): WritClient {
    this.#clients.push(c);
    return c;
  }

  async stop(): Promise<void> {
    for (const c of this.#clients) c.close();
    if (this.#child.exitCode === null) {
      const exited = new Promise((r) => this.#child.once("exit", r));
      this.#child.kill("SIGKILL");
      await exited;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
