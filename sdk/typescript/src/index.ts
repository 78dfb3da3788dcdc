// The Flock SDK: a typed client for every operation of the Flock API. The
// types in schema.d.ts are generated from the OpenAPI document by
// openapi-typescript; openapi-fetch does the requests.
import createClient, { type ClientOptions } from "openapi-fetch";
import type { components, paths } from "./schema.js";

export type { components, paths };
export * from "./streams.js";
export type Problem = components["schemas"]["Problem"];
export type Version = components["schemas"]["Version"];

/** Creates a client for the Flock API at baseUrl (for example http://127.0.0.1:8080). */
export function createFlockClient(baseUrl: string, options: Omit<ClientOptions, "baseUrl"> = {}) {
  return createClient<paths>({ ...options, baseUrl });
}

export type FlockClient = ReturnType<typeof createFlockClient>;
