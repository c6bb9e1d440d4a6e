// Propagation of the current token through async calls (AsyncLocalStorage): awaits,
// timers, promise fan-out, nesting, and isolation between concurrent chains. No server.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { inspect } from "node:util";
import { current, downstreamToken, Minted, NoCurrentTokenError, requireCurrent, run, workload, WritContext, type WritClient } from "../src/index.js";
import { runWithConsent } from "../src/context.js";
import { TokenInfo } from "../src/gen/writ/v1/writ.js";

function ctx(id: string): WritContext {
  return new WritContext(`writ_secret_${id}`, TokenInfo.fromPartial({ tokenId: `tid_${id}` }));
}

describe("context", () => {
  test("outside any run there is none, and requireCurrent fails closed", () => {
    assert.equal(current(), undefined);
    assert.throws(() => requireCurrent("a downstream call"), NoCurrentTokenError);
  });

  test("survives awaits, timers, immediates and fan-out", async () => {
    const a = ctx("a");
    await run(a, async () => {
      await sleep(2);
      assert.equal(current(), a);
      await new Promise<void>((r) => setImmediate(() => (assert.equal(current(), a), r())));
      await new Promise<void>((r) => setTimeout(() => (assert.equal(current(), a), r()), 1));
      const seen = await Promise.all([1, 2, 3].map(async (i) => (await sleep(i), current()?.info.tokenId)));
      assert.deepEqual(seen, ["tid_a", "tid_a", "tid_a"]);
    });
    assert.equal(current(), undefined);
  });

  test("concurrent chains stay apart; nested runs restore the outer one", async () => {
    const [x, y] = await Promise.all(
      ["x", "y"].map((id) =>
        run(ctx(id), async () => {
          await sleep(id === "x" ? 5 : 1);
          const inner = await run(ctx(`${id}-child`), async () => (await sleep(1), current()?.info.tokenId));
          return [current()?.info.tokenId, inner];
        }),
      ),
    );
    assert.deepEqual(x, ["tid_x", "tid_x-child"]);
    assert.deepEqual(y, ["tid_y", "tid_y-child"]);
  });

  test("the secret is not in inspect or JSON", () => {
    const a = ctx("a");
    assert.ok(!inspect(a, { depth: 5 }).includes("writ_secret_a"));
    assert.ok(!JSON.stringify(a).includes("writ_secret_a"));
    assert.equal(a.token, "writ_secret_a");
  });

  test("downstreamToken: a held consent token goes to its audience once, then children", async () => {
    const PAYMENTS = "spiffe://writ.local/workload/payments";
    const redeemed = new Minted("writ_redeemed", TokenInfo.fromPartial({ tokenId: "tid_r", audience: { id: PAYMENTS } }));
    let derived = 0;
    const client = { downscope: async () => new Minted(`writ_child_${++derived}`, TokenInfo.fromPartial({})) } as unknown as WritClient;
    const got = await run(ctx("a"), () =>
      runWithConsent(redeemed, async () => [
        await downstreamToken(client, { audience: workload("spiffe://writ.local/workload/other") }),
        await downstreamToken(client, { audience: workload(PAYMENTS) }),
        await downstreamToken(client, { audience: workload(PAYMENTS) }),
      ]),
    );
    assert.deepEqual(got, ["writ_child_1", "writ_redeemed", "writ_child_2"]);
  });
});
