// Type definitions for bagou.js, the Bagou client (protocol 1).
// Reference: docs/client.md.

declare namespace BagouWebSocket {
  /** Connection states; `ws.state`. */
  type State = "connecting" | "open" | "reconnecting" | "closed";

  /** Error codes: the client's own, then the server's (PROTOCOL.md §3). */
  type ErrorCode =
    | "timeout" | "queue_full" | "disconnected" | "closed"
    | "connect_failed"
    | "invalid_channel" | "forbidden" | "channel_full"
    | "too_many_subscriptions" | "not_allowed" | "unavailable"
    | "auth_failed" | "bad_message" | "rate_limited" | "unknown_event"
    | (string & {});

  interface ErrorInfo {
    code: ErrorCode;
    message: string;
    /** The event that failed, when known. */
    event?: string;
    /** The channel, for a re-subscription that failed. */
    channel?: string;
  }

  /** The data of the server's callback event, or of a local failure in
   *  the same shape: what a Promise resolves with. An application's
   *  answer may have no success field (e.g. {user: ...}). */
  interface Answer {
    success: boolean;
    error?: ErrorInfo;
    [key: string]: any;
  }

  /** The Error a Promise rejects with. */
  interface BagouError extends Error {
    code: ErrorCode;
    /** The event of the failed call ("subscribe", "chat", ...). */
    event: string;
    channel?: string;
    /** The whole answer: {success: false, error: {code, message}}. */
    data: Answer;
  }

  /** A message from the server, e.g. a broadcast. A reply the
   *  application sent to this client keeps every field it was published
   *  with (and may even have no event: see the message option). */
  interface Message<D = any> {
    event: string;
    channel?: string;
    data?: D;
    /** The sender's client id, for client publishes. */
    from?: string;
    callbackId?: string;
    [field: string]: any;
  }

  /** What a callback receives: the whole callback message, as the
   *  original client gave it (msg.data.success, msg.data.user). `data`
   *  is absent when the server sent none. A failure the client detected
   *  (timeout, queue_full, ...) comes in the same shape. */
  interface CallbackMessage {
    event: "callback";
    /** The UUID the call was sent with. */
    callbackId: string;
    data?: Answer;
    [field: string]: any;
  }

  type Callback = (this: BagouWebSocket, msg: CallbackMessage) => void;
  /** on() and onChannel() handlers: data first. */
  type Handler<D = any> =
    (this: BagouWebSocket, data: D, msg: Message<D>) => void;
  /** options.events handlers (the original form): the whole message; a
   *  state event (open, close, connecting, reconnecting) passes its
   *  argument instead, and the client's own errors come as
   *  {event: "error", data: {code, message, ...}}. */
  type EventHandler =
    (this: BagouWebSocket, msg: Message & {[field: string]: any}) => void;

  interface CloseInfo {
    code: number;
    reason: string;
    wasClean: boolean;
  }

  interface ConnectData {
    id: string;
    protocol: number;
  }

  /** The part of the WebSocket API the client uses. */
  interface WebSocketLike {
    readonly readyState: number;
    onopen: ((ev: any) => void) | null;
    onclose: ((ev: any) => void) | null;
    onmessage: ((ev: {data: any}) => void) | null;
    onerror: ((ev: any) => void) | null;
    send(data: string): void;
    close(code?: number, reason?: string): void;
    terminate?(): void;
  }

  type WebSocketConstructor =
    new (url: string, protocols?: string | string[]) => WebSocketLike;

  interface Options {
    /** The original callbacks. */
    open?: (this: BagouWebSocket, ev: any) => void;
    close?: (this: BagouWebSocket, ev: CloseInfo) => void;
    /** Every message from the server except answered callbacks, replies
     *  without an event included (the only place those go). */
    message?: (this: BagouWebSocket, msg: {[field: string]: any}) => void;
    /** Handlers by event name, called with the whole message (the
     *  original form); also the state events. "callback" is reserved
     *  (ignored, with a console warning). */
    events?: {[event: string]: EventHandler};
    /** WebSocket implementation (node: require("ws")). */
    WebSocket?: WebSocketConstructor | (new (...args: any[]) => any);
    /** ms before a callback/Promise fails with "timeout"; 0 = never.
     *  Default 10000. */
    timeout?: number;
    /** Reconnect after a lost connection. Default true. */
    reconnect?: boolean;
    /** Base of the backoff, ms. Default 500. */
    reconnectDelay?: number;
    /** Cap of the backoff, ms. Default 10000. */
    reconnectDelayMax?: number;
    /** Failed attempts in a row before giving up. Default Infinity. */
    reconnectAttempts?: number;
    /** Messages kept while disconnected. Default 100. */
    queueSize?: number;
    /** ms between application pings; 0 = off. Default 25000. */
    heartbeat?: number;
    /** ms to wait for a ping's answer before reconnecting. Default 10000. */
    heartbeatTimeout?: number;
    /** ms for one connection attempt; 0 = no limit. Default 10000. */
    connectTimeout?: number;
    /** JWT to authenticate with on every connection, or a function
     *  called before each connection attempt. */
    token?: string | ((this: BagouWebSocket) => string | Promise<string>);
  }

  interface SubscribeOptions {
    /** Channel handler, removed by unsubscribe() or a failed subscribe. */
    onMessage?: Handler;
    /** presence_join / presence_leave handlers, removed likewise. */
    onJoin?: MemberHandler;
    onLeave?: MemberHandler;
    /** Resume from this position: "recovered" or "gap" follows. */
    recover?: Position;
    callback?: Callback;
  }

  interface ConnectingInfo { attempt: number; }
  interface ReconnectingInfo { attempt: number; delay: number; }

  /** A position in a channel with history (PROTOCOL.md §9). */
  interface Position {
    epoch: string;
    offset: number;
  }

  /** One publication of a history answer. */
  interface Publication<D = any> {
    event: string;
    channel: string;
    data: D;
    offset: number;
    [field: string]: any;
  }

  interface HistoryOptions {
    /** How many (server default 50, at most its [history] size). */
    limit?: number;
    /** Only those after this position. */
    since?: Position;
  }

  /** What history() resolves with. */
  interface HistoryAnswer extends Answer {
    channel: string;
    epoch: string;
    /** The channel's latest offset (0: nothing yet). */
    offset: number;
    /** Oldest first. */
    publications: Publication[];
    /** since named another epoch: these are the latest, not a sequel. */
    gap?: boolean;
  }

  /** A member of a presence channel: one per user. */
  interface Member {
    user: string;
    info?: {[key: string]: any};
  }

  interface PresenceAnswer extends Answer {
    members: Member[];
  }

  interface PresenceStatsAnswer extends Answer {
    /** Connections subscribed. */
    clients: number;
    /** Distinct users among them. */
    users: number;
  }

  /** The "recovered" event: every message missed on channel since
   *  `since` was delivered (count of them), once, in order. */
  interface RecoveredInfo {
    channel: string;
    epoch: string;
    offset: number;
    since: Position;
    count: number;
  }

  /** The "gap" event: what followed `since` on channel could not be
   *  recovered; delivery goes on from (epoch, offset), both null when
   *  the channel has no history any more. */
  interface GapInfo {
    channel: string;
    epoch: string | null;
    offset: number | null;
    since: Position;
  }

  /** The "resubscribed" event: the re-sync's subscribe was answered
   *  (data: the answer, with members on a presence channel). */
  interface ResubscribedInfo {
    channel: string;
    data: Answer;
  }

  /** The "disconnected" event: the server closed with a code of its own
   *  (4000-4999); reconnect false for 4500-4999. */
  interface DisconnectedInfo {
    code: number;
    reason: string;
    reconnect: boolean;
  }

  /** The data of the server's "subscribed" and "unsubscribed" notices
   *  (POST /api/subscribe, /api/unsubscribe). */
  interface SubscriptionNotice {
    channel: string;
    [key: string]: any;
  }

  type MemberHandler =
    (this: BagouWebSocket, member: Member, msg: Message<Member>) => void;
}

declare class BagouWebSocket {
  constructor(url: string, options?: BagouWebSocket.Options,
              protocols?: string | string[]);

  /** The same class, for `const {BagouWebSocket} = require("bagou")`. */
  static BagouWebSocket: typeof BagouWebSocket;
  static readonly DEFAULTS: Readonly<Required<Omit<BagouWebSocket.Options,
    "open" | "close" | "message" | "events" | "WebSocket" | "token">> & {
      token: null;
    }>;

  static readonly CONNECTING: 0;
  static readonly OPEN: 1;
  static readonly CLOSING: 2;
  static readonly CLOSED: 3;
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSING: 2;
  readonly CLOSED: 3;

  readonly url: string;
  readonly protocols: string | string[] | undefined;
  readonly options: BagouWebSocket.Options;
  /** The same object as options (the original's name). */
  readonly settings: BagouWebSocket.Options;
  /** This connection is authenticated (the last authenticate succeeded;
   *  false again after a disconnection until the re-sync succeeds). */
  readonly authenticated: boolean;
  /** The current socket's readyState; between connections CONNECTING
   *  (a reconnection is on its way) or CLOSED (the client stopped). */
  readonly readyState: number;
  /** The sub-protocol the server chose ("bagou"), "" if none. */
  readonly protocol: string;
  readonly extensions: string;
  readonly bufferedAmount: number;
  readonly binaryType: string;
  /** Client id from the server's connect event (null before the first). */
  readonly id: string | null;
  readonly state: BagouWebSocket.State;
  /** The current WebSocket, or null between connections. */
  readonly socket: BagouWebSocket.WebSocketLike | null;
  /** Channels the server confirmed, re-subscribed after a reconnect. */
  readonly channels: string[];
  /** The store the server confirmed, re-sent after a reconnect. */
  readonly storeData: {[key: string]: any};

  on(event: "connecting",
     fn: (this: BagouWebSocket, info: BagouWebSocket.ConnectingInfo) => void):
    this;
  on(event: "reconnecting",
     fn: (this: BagouWebSocket, info: BagouWebSocket.ReconnectingInfo) =>
       void): this;
  on(event: "open", fn: (this: BagouWebSocket, ev: any) => void): this;
  on(event: "close",
     fn: (this: BagouWebSocket, ev: BagouWebSocket.CloseInfo) => void): this;
  on(event: "error", fn: BagouWebSocket.Handler<BagouWebSocket.ErrorInfo>):
    this;
  on(event: "connect",
     fn: BagouWebSocket.Handler<BagouWebSocket.ConnectData>): this;
  on(event: "recovered",
     fn: (this: BagouWebSocket, info: BagouWebSocket.RecoveredInfo) => void):
    this;
  on(event: "gap",
     fn: (this: BagouWebSocket, info: BagouWebSocket.GapInfo) => void): this;
  on(event: "resubscribed",
     fn: (this: BagouWebSocket, info: BagouWebSocket.ResubscribedInfo) =>
       void): this;
  on(event: "disconnected",
     fn: (this: BagouWebSocket, info: BagouWebSocket.DisconnectedInfo) =>
       void): this;
  on(event: "presence_join" | "presence_leave",
     fn: BagouWebSocket.MemberHandler): this;
  on(event: "subscribed" | "unsubscribed",
     fn: BagouWebSocket.Handler<BagouWebSocket.SubscriptionNotice>): this;
  on<D = any>(event: string, fn: BagouWebSocket.Handler<D>): this;

  once(event: "connecting",
       fn: (this: BagouWebSocket, info: BagouWebSocket.ConnectingInfo) =>
         void): this;
  once(event: "reconnecting",
       fn: (this: BagouWebSocket, info: BagouWebSocket.ReconnectingInfo) =>
         void): this;
  once(event: "open", fn: (this: BagouWebSocket, ev: any) => void): this;
  once(event: "close",
       fn: (this: BagouWebSocket, ev: BagouWebSocket.CloseInfo) => void):
    this;
  once(event: "error", fn: BagouWebSocket.Handler<BagouWebSocket.ErrorInfo>):
    this;
  once<D = any>(event: string, fn: BagouWebSocket.Handler<D>): this;
  /** Without a handler: a Promise of the next event's first argument. */
  once(event: "close"): Promise<BagouWebSocket.CloseInfo>;
  once(event: "reconnecting"): Promise<BagouWebSocket.ReconnectingInfo>;
  once(event: "connecting"): Promise<BagouWebSocket.ConnectingInfo>;
  once(event: "error"): Promise<BagouWebSocket.ErrorInfo>;
  once(event: "connect"): Promise<BagouWebSocket.ConnectData>;
  once(event: "recovered"): Promise<BagouWebSocket.RecoveredInfo>;
  once(event: "gap"): Promise<BagouWebSocket.GapInfo>;
  once(event: "resubscribed"): Promise<BagouWebSocket.ResubscribedInfo>;
  once(event: "disconnected"): Promise<BagouWebSocket.DisconnectedInfo>;
  once<D = any>(event: string): Promise<D>;

  /** off(event, fn), off(event) for all its handlers, off() for all. */
  off(event?: string, fn?: (...args: any[]) => void): this;

  /** fn(data, msg) for every message on channel, whatever its event. */
  onChannel<D = any>(channel: string, fn: BagouWebSocket.Handler<D>): this;
  offChannel(channel: string, fn?: (...args: any[]) => void): this;

  /** fn(member, msg) when a user joins / leaves a presence channel. */
  onJoin(channel: string, fn: BagouWebSocket.MemberHandler): this;
  onLeave(channel: string, fn: BagouWebSocket.MemberHandler): this;
  offJoin(channel: string, fn?: (...args: any[]) => void): this;
  offLeave(channel: string, fn?: (...args: any[]) => void): this;

  emit(event: string, data: any, callback: BagouWebSocket.Callback): this;
  emit(event: string, callback: BagouWebSocket.Callback): this;
  emit(event: string, data?: any): Promise<BagouWebSocket.Answer>;

  /** Fire and forget: no callbackId, failures come as "error" events.
   *  send(text) with one JSON-object string sends it as is (the
   *  WebSocket's own send). */
  send(event: string, data?: any): this;

  subscribe(channel: string, callback: BagouWebSocket.Callback): this;
  subscribe(channel: string, options: BagouWebSocket.SubscribeOptions & {
    callback: BagouWebSocket.Callback;
  }): this;
  subscribe(channel: string,
            options?: Omit<BagouWebSocket.SubscribeOptions, "callback">):
    Promise<BagouWebSocket.Answer>;

  /** The channel's last publications (or those after since). */
  history(channel: string, options: BagouWebSocket.HistoryOptions,
          callback: BagouWebSocket.Callback): this;
  history(channel: string, callback: BagouWebSocket.Callback): this;
  history(channel: string, options?: BagouWebSocket.HistoryOptions):
    Promise<BagouWebSocket.HistoryAnswer>;

  /** The members of a presence channel, across the cluster. */
  presence(channel: string, callback: BagouWebSocket.Callback): this;
  presence(channel: string): Promise<BagouWebSocket.PresenceAnswer>;

  /** Connections and users in a presence channel. */
  presenceStats(channel: string, callback: BagouWebSocket.Callback): this;
  presenceStats(channel: string):
    Promise<BagouWebSocket.PresenceStatsAnswer>;

  /** The last position delivered on a channel with history, or null. */
  position(channel: string): BagouWebSocket.Position | null;

  unsubscribe(channel: string, callback: BagouWebSocket.Callback): this;
  unsubscribe(channel: string): Promise<BagouWebSocket.Answer>;

  store(key: string, value: any, callback: BagouWebSocket.Callback): this;
  store(values: {[key: string]: any}, callback: BagouWebSocket.Callback):
    this;
  store(key: string, value: any): Promise<BagouWebSocket.Answer>;
  store(values: {[key: string]: any}): Promise<BagouWebSocket.Answer>;

  /** token: an HS256 JWT, or the data itself, e.g. {sessionId: KEY}. */
  authenticate(token: string | {[key: string]: any},
               callback: BagouWebSocket.Callback): this;
  authenticate(token: string | {[key: string]: any}):
    Promise<BagouWebSocket.Answer>;

  /** Authenticate without a token (session cookie, checked by the app). */
  auth(callback: BagouWebSocket.Callback): this;
  auth(): Promise<BagouWebSocket.Answer>;

  publish(channel: string, event: string, data: any,
          callback: BagouWebSocket.Callback): this;
  publish(channel: string, event: string, callback: BagouWebSocket.Callback):
    this;
  publish(channel: string, event: string, data?: any):
    Promise<BagouWebSocket.Answer>;

  ping(callback: BagouWebSocket.Callback): this;
  ping(): Promise<BagouWebSocket.Answer>;

  /** Opens again after close(); channels, store and auth are kept. */
  connect(): this;
  /** Closes for good (until connect()); stops reconnecting. */
  close(code?: number, reason?: string): this;
}

export = BagouWebSocket;
