// Types of Herald's browser client, `herald.js` (served beside it as /herald.d.ts).

export interface HeraldSourceInit {
  /** Request headers, or a function giving them, called again for every connection attempt. */
  headers?: HeadersInit | (() => HeadersInit | Promise<HeadersInit>);
  /** Where the first connection resumes from; wins over the position stored under `resumeKey`. */
  lastEventId?: string;
  /** Keeps the last event id in sessionStorage, so a new source with this key resumes there. */
  resumeKey?: string;
  /** Sends cookies to other origins too (fetch's `credentials: "include"`). */
  withCredentials?: boolean;
}

/** An `error` event: EventSource's, plus the HTTP status that caused it. */
export interface HeraldErrorEvent extends Event {
  /** The status of a refused or failed answer (401, 503…); 0 when the connection was lost. */
  readonly status: number;
}

export interface HeraldSourceEventMap {
  open: Event;
  message: MessageEvent<string>;
  error: HeraldErrorEvent;
}

/** `EventSource`'s shape over fetch: headers, resume after a reload, retry rules. */
export declare class HeraldSource extends EventTarget {
  constructor(url: string | URL, init?: HeraldSourceInit);

  static readonly CONNECTING: 0;
  static readonly OPEN: 1;
  static readonly CLOSED: 2;
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSED: 2;

  /** The URL, resolved against the page's. */
  readonly url: string;
  /** 0 connecting (or waiting to reconnect), 1 open, 2 closed for good. */
  readonly readyState: 0 | 1 | 2;
  /** The id the next connection sends as `Last-Event-ID`. */
  readonly lastEventId: string;
  readonly withCredentials: boolean;

  onopen: ((this: HeraldSource, ev: Event) => unknown) | null;
  onmessage: ((this: HeraldSource, ev: MessageEvent<string>) => unknown) | null;
  onerror: ((this: HeraldSource, ev: HeraldErrorEvent) => unknown) | null;

  /** Stops for good: the connection is cancelled and no event follows. */
  close(): void;

  addEventListener<K extends keyof HeraldSourceEventMap>(
    type: K,
    listener: (this: HeraldSource, ev: HeraldSourceEventMap[K]) => unknown,
    options?: boolean | AddEventListenerOptions,
  ): void;
  /** Any other type is an SSE `event:` name. */
  addEventListener(
    type: string,
    listener: (this: HeraldSource, ev: MessageEvent<string>) => unknown,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof HeraldSourceEventMap>(
    type: K,
    listener: (this: HeraldSource, ev: HeraldSourceEventMap[K]) => unknown,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: (this: HeraldSource, ev: MessageEvent<string>) => unknown,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

/** One event of the stream, as `EventSource` would dispatch it. */
export interface ParsedEvent {
  type: string;
  data: string;
  lastEventId: string;
}

/** The WHATWG event-stream parser, fed the bytes of one connection as they arrive. */
export declare class SSEParser {
  /** `lastEventId`: the id in force before this connection (browsers carry it over). */
  constructor(lastEventId?: string);
  /** The id after the blocks parsed so far; an `id:` block without data moves it too. */
  lastEventId: string;
  /** The last valid `retry:` field, in milliseconds, or null. */
  retry: number | null;
  /** The events these bytes complete. */
  feed(bytes: Uint8Array): ParsedEvent[];
}
