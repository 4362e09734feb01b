/**
 * A thin wrapper over the generated JobService/WorkerService clients: create, get, list,
 * wait, watch, cancel, retry. Errors are `ConnectError`s whose `code` is the gRPC status
 * (`Code.NotFound`, `Code.InvalidArgument`, ...); `fieldViolations(err)` lists the fields an
 * INVALID_ARGUMENT named.
 */
import { create, fromJson, toJson, type JsonValue, type MessageInitShape } from "@bufbuild/protobuf";
import { ValueSchema, durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { type Job, type JobEvent, JobOptionsSchema, JobState, type QueueInfo } from "./gen/dispatch/v1/job_pb.js";
import { type CreateJobResponse, JobService } from "./gen/dispatch/v1/job_service_pb.js";
import { WorkerService } from "./gen/dispatch/v1/worker_service_pb.js";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb.js";

/** Options of a job in plain terms; anything left out takes dispatch's default. */
export interface JobOptionsInit {
  maxAttempts?: number;
  /** Per-attempt timeout, in milliseconds. */
  timeoutMs?: number;
  /** Run no earlier than this many milliseconds from now. */
  delayMs?: number;
  runAt?: Date;
  idempotencyKey?: string;
  labels?: Record<string, string>;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
}

/** The states after which a job never changes on its own. */
export const TERMINAL: ReadonlySet<JobState> = new Set([JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED]);

/** How to reach a dispatch with TLS and API keys on (docs/security.md). */
export interface ConnectOptions {
  /** API key, sent as `authorization: Bearer <token>` with every call. */
  token?: string;
  /** PEM of the CA(s) to trust for dispatch's certificate (an `https://` URL); default: Node's roots. */
  caCert?: string | Buffer;
  /** PEM client certificate and key, for dispatch with mutual TLS. */
  clientCert?: string | Buffer;
  clientKey?: string | Buffer;
}

/** A gRPC transport to `baseUrl` with `options`' token and TLS settings. */
export function dispatchTransport(baseUrl: string, options: ConnectOptions = {}): Transport {
  const interceptors: Interceptor[] = [];
  const token = options.token;
  if (token) {
    interceptors.push((next) => async (req) => {
      req.header.set("authorization", `Bearer ${token}`);
      return await next(req);
    });
  }
  const tls = { ca: options.caCert, cert: options.clientCert, key: options.clientKey };
  return createGrpcTransport({ baseUrl, interceptors, nodeOptions: tls });
}

export class DispatchClient {
  /** The generated JobService client, for anything the wrapper does not cover. */
  readonly jobs: Client<typeof JobService>;
  /** The generated WorkerService client (claim, heartbeat, complete, fail). */
  readonly workers: Client<typeof WorkerService>;

  /**
   * `baseUrl` like `http://localhost:50051` (`https://` for TLS) with `options` (a token, a CA,
   * a client certificate), or a transport of your own.
   */
  constructor(baseUrl: string | Transport = "http://localhost:50051", options: ConnectOptions = {}) {
    const transport = typeof baseUrl === "string" ? dispatchTransport(baseUrl, options) : baseUrl;
    this.jobs = createClient(JobService, transport);
    this.workers = createClient(WorkerService, transport);
  }

  /** Creates a job; `payload` is any JSON value. */
  async create(queue: string, type: string, payload: JsonValue = null, options: JobOptionsInit = {}): Promise<Job> {
    const resp = await this.createJob(queue, type, payload, options);
    return resp.job!;
  }

  /** Like `create`, with the whole response: `created` is false when an idempotency key matched. */
  async createJob(queue: string, type: string, payload: JsonValue = null, options: JobOptionsInit = {}): Promise<CreateJobResponse> {
    return this.jobs.createJob({ queue, type, payload: fromJson(ValueSchema, payload), options: jobOptions(options) });
  }

  /** The job's record; rejects with `Code.NotFound` when there is none. */
  async get(id: string): Promise<Job> {
    return (await this.jobs.getJob({ id })).job!;
  }

  /** Every job matching the filters, oldest first, a page at a time. */
  async *list(filter: { queue?: string; state?: JobState; pageSize?: number } = {}): AsyncGenerator<Job> {
    let pageToken = "";
    do {
      const resp = await this.jobs.listJobs({ ...filter, pageToken });
      yield* resp.jobs;
      pageToken = resp.nextPageToken;
    } while (pageToken !== "");
  }

  /** Depth and counts per state of every queue. */
  async queues(): Promise<QueueInfo[]> {
    return (await this.jobs.listQueues({})).queues;
  }

  /** The job's events from its creation on, one per transition; ends after the terminal one. */
  async *watch(id: string, signal?: AbortSignal): AsyncGenerator<JobEvent> {
    for await (const resp of this.jobs.watchJob({ id }, { signal })) {
      if (resp.event) yield resp.event;
    }
  }

  /** Resolves with the job once it is SUCCEEDED, FAILED or CANCELLED; rejects with
   * `Code.DeadlineExceeded` after `timeoutMs`. */
  async wait(id: string, timeoutMs = 60_000): Promise<Job> {
    // The stream replays history (a retried job has older terminal events) and ends once the
    // latest event is terminal: follow it to its end.
    for await (const _ of this.jobs.watchJob({ id }, { timeoutMs })) {
      // nothing to do per event
    }
    return this.get(id);
  }

  /** Cancels at once when waiting; a running job is told through its next heartbeat.
   * Rejects with `Code.FailedPrecondition` when the job has already ended. */
  async cancel(id: string, reason = ""): Promise<Job> {
    return (await this.jobs.cancelJob({ id, reason })).job!;
  }

  /** Runs a FAILED or CANCELLED job again with a fresh budget of attempts. */
  async retry(id: string): Promise<Job> {
    return (await this.jobs.retryJob({ id })).job!;
  }
}

/** JobOptions from plain values. */
export function jobOptions(o: JobOptionsInit): MessageInitShape<typeof JobOptionsSchema> {
  return create(JobOptionsSchema, {
    maxAttempts: o.maxAttempts ?? 0,
    timeout: o.timeoutMs === undefined ? undefined : durationFromMs(o.timeoutMs),
    delay: o.delayMs === undefined ? undefined : durationFromMs(o.delayMs),
    runAt: o.runAt === undefined ? undefined : timestampFromDate(o.runAt),
    idempotencyKey: o.idempotencyKey ?? "",
    labels: o.labels ?? {},
    backoff:
      o.backoffInitialMs === undefined && o.backoffMaxMs === undefined
        ? undefined
        : {
            initial: o.backoffInitialMs === undefined ? undefined : durationFromMs(o.backoffInitialMs),
            max: o.backoffMaxMs === undefined ? undefined : durationFromMs(o.backoffMaxMs),
          },
  });
}

/** A job's payload as plain JSON. */
export function payloadOf(job: Job): JsonValue {
  return job.payload ? toJson(ValueSchema, job.payload) : null;
}

/** A job's result as plain JSON (null until it SUCCEEDED). */
export function resultOf(job: Job): JsonValue {
  return job.result ? toJson(ValueSchema, job.result) : null;
}

/** The `[field, description]` pairs of an INVALID_ARGUMENT error (empty otherwise). */
export function fieldViolations(err: unknown): Array<[string, string]> {
  const e = ConnectError.from(err);
  if (e.code !== Code.InvalidArgument) return [];
  return e.findDetails(BadRequestSchema).flatMap((b) => b.fieldViolations.map((v): [string, string] => [v.field, v.description]));
}
