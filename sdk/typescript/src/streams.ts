// Live streams of the Flock API: Server-Sent Events through fetch, with the
// EventSource interface and its reconnect-with-Last-Event-ID behaviour, and
// WebSocket streams on any WHATWG-compatible WebSocket constructor. fetch is
// used instead of the platform's EventSource because EventSource cannot send
// an Authorization header, and Node has none.
import type { components } from "./schema.js";

export type StreamEvent = components["schemas"]["StreamEvent"];
export type StreamEventType = components["schemas"]["StreamEventType"];

/** What a stream is about: exactly one of these. */
export type StreamScope =
  | { orgId: string }
  | { fleetId: string }
  | { deviceGroupId: string }
  | { deviceId: string }
  | { rolloutId: string }
  | { deviceLogsOf: string };

export interface StreamOptions {
  /** Only these event types (gap and error always come). */
  types?: StreamEventType[];
  /** Resume after this event id. */
  lastEventId?: string;
  /** Device log streams only: filters and how much history comes first. */
  logs?: { service?: string; q?: string; since?: string; tail?: number };
}

/** The path and query of a stream; ws selects the WebSocket variant. */
export function streamPath(scope: StreamScope, options: StreamOptions = {}, ws = false): string {
  const e = encodeURIComponent;
  let path: string;
  if ("orgId" in scope) path = `/v1/orgs/${e(scope.orgId)}/events`;
  else if ("fleetId" in scope) path = `/v1/fleets/${e(scope.fleetId)}/events`;
  else if ("deviceGroupId" in scope) path = `/v1/device-groups/${e(scope.deviceGroupId)}/events`;
  else if ("deviceId" in scope) path = `/v1/devices/${e(scope.deviceId)}/events`;
  else if ("rolloutId" in scope) path = `/v1/rollouts/${e(scope.rolloutId)}/events`;
  else path = `/v1/devices/${e(scope.deviceLogsOf)}/logs/${ws ? "ws" : "stream"}`;
  if (ws && !("deviceLogsOf" in scope)) path += "/ws";
  const q = new URLSearchParams();
  if (options.types?.length) q.set("types", options.types.join(","));
  if (options.lastEventId) q.set("last_event_id", options.lastEventId);
  for (const [k, v] of Object.entries(options.logs ?? {})) {
    if (v !== undefined) q.set(k, String(v));
  }
  const qs = q.toString();
  return qs ? `${path}?${qs}` : path;
}

export interface EventSourceOptions {
  /** Headers for every request, e.g. Authorization. */
  headers?: Record<string, string>;
  /** Sent as Last-Event-ID on the first request; later ones send the last id received. */
  lastEventId?: string;
  /** Wait before reconnecting, unless the server sets another with `retry:`. Default 1000 ms. */
  reconnectMs?: number;
  fetch?: typeof fetch;
}

/**
 * FlockEventSource behaves like the browser's EventSource (readyState,
 * onopen/onmessage/onerror, addEventListener per event type, close, and
 * reconnecting with Last-Event-ID when the stream ends), over fetch, so it
 * can authenticate. Like EventSource it gives up on a response that is not
 * a 200 event stream: `error` is dispatched with `status` and `problem` set
 * and readyState becomes CLOSED.
 */
export class FlockEventSource extends EventTarget {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSED = 2;
  readonly CONNECTING = 0;
  readonly OPEN = 1;
  readonly CLOSED = 2;

  readyState = 0;
  lastEventId: string;
  /** Set when the server refused the stream: its status and problem document. */
  status?: number;
  problem?: components["schemas"]["Problem"];

  onopen: ((ev: Event) => void) | null = null;
  onmessage: ((ev: MessageEvent<string>) => void) | null = null;
  onerror: ((ev: Event) => void) | null = null;

  readonly url: string;
  private readonly opts: EventSourceOptions;
  private readonly abort = new AbortController();
  private reconnectMs: number;

  constructor(url: string | URL, options: EventSourceOptions = {}) {
    super();
    this.url = String(url);
    this.opts = options;
    this.lastEventId = options.lastEventId ?? "";
    this.reconnectMs = options.reconnectMs ?? 1000;
    void this.run();
  }

  close(): void {
    this.readyState = FlockEventSource.CLOSED;
    this.abort.abort();
  }

  private emit(ev: Event): void {
    this.dispatchEvent(ev);
    if (ev.type === "open") this.onopen?.(ev);
    else if (ev.type === "error") this.onerror?.(ev);
    else if (ev.type === "message") this.onmessage?.(ev as MessageEvent<string>);
  }

  private async run(): Promise<void> {
    const doFetch = this.opts.fetch ?? fetch;
    while (this.readyState !== FlockEventSource.CLOSED) {
      this.readyState = FlockEventSource.CONNECTING;
      try {
        const headers: Record<string, string> = { Accept: "text/event-stream", ...this.opts.headers };
        if (this.lastEventId) headers["Last-Event-ID"] = this.lastEventId;
        const res = await doFetch(this.url, { headers, signal: this.abort.signal, cache: "no-store" });
        const type = res.headers.get("content-type") ?? "";
        if (res.status !== 200 || !type.startsWith("text/event-stream") || !res.body) {
          this.status = res.status;
          this.problem = type.includes("json") ? await res.json().catch(() => undefined) : undefined;
          this.readyState = FlockEventSource.CLOSED;
          this.emit(new Event("error"));
          return;
        }
        this.readyState = FlockEventSource.OPEN;
        this.emit(new Event("open"));
        await this.read(res.body);
      } catch (err) {
        if (this.abort.signal.aborted) return;
      }
      if (this.readyState === FlockEventSource.CLOSED) return;
      // The stream ended (the server dropped a slow client, restarted, or
      // the network broke): say so, wait, and resume from the last id.
      this.readyState = FlockEventSource.CONNECTING;
      this.emit(new Event("error"));
      await new Promise((r) => setTimeout(r, this.reconnectMs));
    }
  }

  // read parses the event stream format (WHATWG HTML, 9.2.6).
  private async read(body: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    let buf = "";
    let data: string[] = [];
    let event = "";
    let id: string | undefined;
    const reader = body.getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      let nl: number;
      while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + (buf.startsWith("\r\n", nl) ? 2 : 1));
        if (line === "") {
          if (id !== undefined) this.lastEventId = id;
          if (data.length) {
            this.emit(new MessageEvent(event || "message", { data: data.join("\n"), lastEventId: this.lastEventId, origin: new URL(this.url).origin }));
          }
          data = [];
          event = "";
          id = undefined;
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let v = colon < 0 ? "" : line.slice(colon + 1);
        if (v.startsWith(" ")) v = v.slice(1);
        if (field === "data") data.push(v);
        else if (field === "event") event = v;
        else if (field === "id" && !v.includes("\0")) id = v;
        else if (field === "retry" && /^\d+$/.test(v)) this.reconnectMs = Number(v);
      }
    }
  }
}

const streamEventTypes: StreamEventType[] = [
  "device.state", "device.connectivity", "device.update", "device.command", "device.log", "rollout", "gap", "error",
];

/**
 * A typed live stream: every StreamEvent goes to onEvent, whatever its type,
 * and the stream resumes from the last event by itself when it breaks.
 */
export interface TypedStream {
  source: FlockEventSource;
  close(): void;
}

export function openStream(baseUrl: string, scope: StreamScope, onEvent: (e: StreamEvent) => void,
  options: StreamOptions & { token?: string; headers?: Record<string, string>; reconnectMs?: number; fetch?: typeof fetch } = {}): TypedStream {
  const headers = { ...options.headers };
  if (options.token) headers["Authorization"] = `Bearer ${options.token}`;
  const source = new FlockEventSource(new URL(streamPath(scope, { ...options, lastEventId: undefined }), baseUrl), {
    headers, lastEventId: options.lastEventId, reconnectMs: options.reconnectMs, fetch: options.fetch,
  });
  for (const t of streamEventTypes) {
    source.addEventListener(t, (ev) => onEvent(JSON.parse((ev as MessageEvent<string>).data) as StreamEvent));
  }
  return { source, close: () => source.close() };
}

/** The WHATWG WebSocket interface the stream helper needs (browsers' WebSocket, or the ws package). */
export interface WebSocketLike {
  readonly protocol: string;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface EventSocketOptions extends StreamOptions {
  /** The bearer token (user token or API key); sent as the `bearer.<token>` subprotocol. */
  token: string;
  /** Defaults to the global WebSocket. */
  WebSocket?: WebSocketConstructor;
  /** Reconnect after a close that was not asked for (default true), resuming after the last event. */
  reconnect?: boolean;
  reconnectMs?: number;
  onClose?: (code: number, reason: string) => void;
}

/**
 * A WebSocket stream: each message is a StreamEvent. The token travels as a
 * subprotocol because browsers cannot set headers on a WebSocket. Unless
 * reconnect is false it resumes after the last event it delivered when an
 * open socket closes (the server closes slow clients with 1008); an upgrade
 * the server refused is not retried.
 */
export function openEventSocket(baseUrl: string, scope: StreamScope, onEvent: (e: StreamEvent) => void, options: EventSocketOptions) {
  const WS = options.WebSocket ?? (globalThis as any).WebSocket as WebSocketConstructor | undefined;
  if (!WS) throw new Error("no WebSocket constructor: pass options.WebSocket (for example the ws package)");
  let lastEventId = options.lastEventId;
  let closed = false;
  let socket: WebSocketLike;
  const connect = () => {
    const url = new URL(streamPath(scope, { ...options, lastEventId }, true), baseUrl);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    socket = new WS(url.toString(), ["flock.v1", `bearer.${options.token}`]);
    let opened = false;
    socket.onopen = () => { opened = true; };
    socket.onmessage = (m) => {
      const ev = JSON.parse(typeof m.data === "string" ? m.data : new TextDecoder().decode(m.data)) as StreamEvent;
      if (ev.type !== "error" && ev.id) lastEventId = ev.id;
      onEvent(ev);
    };
    socket.onclose = (c) => {
      options.onClose?.(c.code, c.reason);
      // A refused upgrade (404, 401) never opened: retrying cannot help.
      if (!closed && opened && options.reconnect !== false && c.code !== 1000) {
        setTimeout(() => { if (!closed) connect(); }, options.reconnectMs ?? 1000);
      }
    };
    socket.onerror = () => {};
  };
  connect();
  return {
    get lastEventId() { return lastEventId; },
    close() { closed = true; socket.close(1000, "done"); },
  };
}
