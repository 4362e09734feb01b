/**
 * TypeScript client for Dispatch (gRPC transport for Node), generated from proto/dispatch/v1
 * with buf + protoc-gen-es, plus a small wrapper (`DispatchClient`).
 */
export {
  DispatchClient,
  TERMINAL,
  dispatchTransport,
  fieldViolations,
  jobOptions,
  payloadOf,
  resultOf,
  type ConnectOptions,
  type JobOptionsInit,
} from "./client.js";
export * from "./gen/dispatch/v1/job_pb.js";
export * from "./gen/dispatch/v1/job_service_pb.js";
export * from "./gen/dispatch/v1/worker_service_pb.js";
export { Code, ConnectError } from "@connectrpc/connect";
