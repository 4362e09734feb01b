// The TypeScript client against a live stack (tools/with-stack.sh: Redis, NATS, dispatch and
// two Rust workers on queue "default"); STACK_GRPC is its gRPC address.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Code, ConnectError, DispatchClient, JobState, fieldViolations, payloadOf, resultOf } from "../src/index.js";

const target = process.env.STACK_GRPC;
if (!target) throw new Error("STACK_GRPC is not set: run through tools/test-clients.sh");
const client = new DispatchClient(`http://${target}`);

async function rejects(p: Promise<unknown>, code: Code): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    const err = ConnectError.from(e);
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail(`expected ${Code[code]}`);
}

test("a TypeScript producer: create, get, wait and watch to completion on the Rust workers", async () => {
  const job = await client.create("default", "sleep", { durationMs: 50, from: "typescript" });
  assert.equal(job.state, JobState.QUEUED);
  assert.deepEqual(payloadOf(await client.get(job.id)), { durationMs: 50, from: "typescript" });
  const done = await client.wait(job.id, 20_000);
  assert.equal(done.state, JobState.SUCCEEDED);
  assert.deepEqual(resultOf(done), { sleptMs: 50 });
  const states: JobState[] = [];
  for await (const e of client.watch(job.id)) states.push(e.state);
  assert.deepEqual(states, [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]);
  // int64 arrives as bigint.
  const queue = (await client.queues()).find((q) => q.name === "default");
  assert.ok(queue && typeof queue.succeeded === "bigint" && queue.succeeded >= 1n);
});

test("cancel, retry, options, batch listing", async () => {
  const job = await client.create("default", "noop", null, { delayMs: 60_000, labels: { team: "ts" } });
  assert.equal(job.state, JobState.SCHEDULED);
  assert.deepEqual(job.labels, { team: "ts" });
  assert.equal((await client.cancel(job.id, "not needed")).state, JobState.CANCELLED);
  assert.equal((await client.wait(job.id, 5_000)).state, JobState.CANCELLED);
  await client.retry(job.id);
  assert.equal((await client.wait(job.id, 20_000)).state, JobState.SUCCEEDED);

  const first = await client.createJob("default", "noop", null, { idempotencyKey: "ts-order-1" });
  const again = await client.createJob("default", "noop", null, { idempotencyKey: "ts-order-1" });
  assert.ok(first.created && !again.created);
  assert.equal(first.job!.id, again.job!.id);

  const queue = `ts-${Date.now()}`;
  for (let i = 0; i < 3; i++) await client.create(queue, "noop", { i }, { delayMs: 60_000 });
  const listed = [];
  for await (const j of client.list({ queue, pageSize: 2 })) listed.push(payloadOf(j));
  assert.deepEqual(listed, [{ i: 0 }, { i: 1 }, { i: 2 }]);
});

test("errors carry the gRPC code and field violations", async () => {
  await rejects(client.get("0190a000-0000-7000-8000-000000000000"), Code.NotFound);
  const bad = await rejects(client.create("", "", {}), Code.InvalidArgument);
  const fields = fieldViolations(bad).map(([f]) => f);
  assert.ok(fields.includes("queue") && fields.includes("type"), fields.join(","));
  const done = await client.create("default", "noop");
  await client.wait(done.id, 20_000);
  await rejects(client.cancel(done.id), Code.FailedPrecondition);
  const idle = await client.create("ts-nobody", "noop");
  await rejects(client.wait(idle.id, 300), Code.DeadlineExceeded);
});

test("a token and a CA against dispatch with TLS and keys on", async () => {
  const tlsTarget = process.env.STACK_TLS_GRPC;
  const caFile = process.env.STACK_CA;
  const token = process.env.STACK_TOKEN;
  const viewerToken = process.env.STACK_VIEWER_TOKEN;
  if (!tlsTarget || !caFile || !token || !viewerToken) throw new Error("STACK_TLS_GRPC, STACK_CA, STACK_TOKEN, STACK_VIEWER_TOKEN: run through tools/test-clients.sh");
  const { readFileSync } = await import("node:fs");
  const caCert = readFileSync(caFile);
  const producer = new DispatchClient(`https://${tlsTarget}`, { token, caCert });
  const job = await producer.create("default", "noop", { from: "typescript over TLS" });
  assert.equal((await producer.wait(job.id, 20_000)).state, JobState.SUCCEEDED);
  await rejects(new DispatchClient(`https://${tlsTarget}`, { caCert }).get(job.id), Code.Unauthenticated);
  const viewer = new DispatchClient(`https://${tlsTarget}`, { token: viewerToken, caCert });
  assert.equal((await viewer.get(job.id)).id, job.id);
  await rejects(viewer.create("default", "noop"), Code.PermissionDenied);
});
