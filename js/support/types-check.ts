// Compiled (not run) by test/types.test.js: the declarations in bagou.d.ts
// must accept the documented uses and reject misuses (@ts-expect-error).
import BagouWebSocket = require("bagou");
declare const WS: BagouWebSocket.WebSocketConstructor;

const ws = new BagouWebSocket("ws://localhost:9000/websocket", {
  WebSocket: WS,
  open() {
    this.subscribe("news", (msg) => console.log(msg.data?.success));
  },
  close(ev) { console.log(ev.code); },
  message(msg) { console.log(msg.event, msg.channel, msg.data, msg.success); },
  events: {
    message(msg) { console.log(msg.data.name + ": " + msg.data.text); },
    chat(msg) { console.log(msg.event, msg.channel, this.readyState); },
  },
  timeout: 5000,
  reconnect: true,
  reconnectDelay: 500,
  reconnectDelayMax: 10000,
  queueSize: 100,
  heartbeat: 25000,
  heartbeatTimeout: 10000,
  token: async () => "jwt",
}, ["bagou"]);

async function demo(): Promise<void> {
  const state: BagouWebSocket.State = ws.state;
  const id: string | null = ws.id;
  const res: BagouWebSocket.Answer = await ws.subscribe("news");
  await ws.subscribe("room", {onMessage: (data, msg) => console.log(msg.from)});
  ws.subscribe("room", {onMessage() {}, callback(r) { console.log(r); }});
  ws.emit("chat", {text: "hi"}, (m) => console.log(m.data?.error?.code));
  ws.emit("chat", (m) => {
    const cb: string = m.callbackId;
    const ev: "callback" = m.event;
    console.log(cb, ev, m.data?.success);
  });
  const rs: number = ws.readyState;
  const open: boolean = ws.readyState === ws.OPEN &&
    BagouWebSocket.CLOSED === 3;
  const authed: boolean = ws.authenticated;
  const proto: string = ws.protocol;
  console.log(rs, open, authed, proto, ws.settings.timeout);
  ws.authenticate({sessionId: "abc"}, (m) => console.log(m.data?.user));
  ws.send('{"event":"raw","data":{}}');
  await ws.emit("chat", {text: "hi"});
  await ws.store("name", "Ada");
  await ws.store({a: 1});
  ws.store("name", "Ada", () => {});
  await ws.authenticate("token");
  await ws.auth();
  await ws.publish("news", "chat", {x: 1});
  await ws.ping();
  ws.send("typing", {});
  ws.on("reconnecting", ({attempt, delay}) => console.log(attempt + delay))
    .on("close", (ev) => console.log(ev.reason))
    .on("error", (err) => console.log(err.code, err.message))
    .once("open", () => {})
    .off("open")
    .onChannel("news", (data: {text: string}) => console.log(data.text))
    .offChannel("news");
  const info = await ws.once("close");
  console.log(info.wasClean, state, id, res, ws.channels, ws.storeData);
  try {
    await ws.unsubscribe("news");
  } catch (e) {
    const err = e as BagouWebSocket.BagouError;
    if (err.code === "timeout" || err.code === "invalid_channel") return;
  }
  ws.close();
  ws.connect();
  // @ts-expect-error: a token is a string or an object
  ws.authenticate(42);
  // @ts-expect-error: a callback gets the callback message
  ws.emit("chat", {}, (m) => { const e: "error" = m.event; console.log(e); });
  // @ts-expect-error: the channel handler is a function
  ws.onChannel("news", "nope");
  // @ts-expect-error: unknown state
  const bad: BagouWebSocket.State = "broken";

  // Version 2: history and recovery, presence, the server's disconnect.
  const h: BagouWebSocket.HistoryAnswer =
    await ws.history("h-news", {limit: 10});
  const first: number = h.publications[0].offset;
  await ws.history("h-news", {since: {epoch: h.epoch, offset: first}});
  ws.history("h-news", (m) => console.log(m.data?.publications));
  ws.history("h-news", {limit: 1}, (m) => console.log(m.data));
  const pos: BagouWebSocket.Position | null = ws.position("h-news");
  if (pos) await ws.subscribe("h-news", {recover: pos});
  const members: BagouWebSocket.Member[] =
    (await ws.presence("presence-room")).members;
  const stats = await ws.presenceStats("presence-room");
  const n: number = stats.clients + stats.users + members.length;
  await ws.subscribe("presence-room", {
    onJoin: (m) => console.log(m.user, m.info),
    onLeave(m, msg) { console.log(m.user, msg.channel); },
  });
  ws.onJoin("presence-room", (m) => console.log(m.user))
    .onLeave("presence-room", (m) => console.log(m.user))
    .offJoin("presence-room")
    .offLeave("presence-room")
    .on("recovered", ({channel, count, since}) =>
      console.log(channel, count, since.offset))
    .on("gap", (g) => console.log(g.channel, g.epoch ?? "none", g.offset))
    .on("resubscribed", ({channel, data}) => console.log(channel, data))
    .on("disconnected", ({code, reason, reconnect}) =>
      console.log(code, reason, reconnect))
    .on("presence_join", (m) => console.log(m.user))
    .on("unsubscribed", (d, msg) => console.log(d.channel, msg.event))
    .on("subscribed", (d) => console.log(d.channel.length));
  const g: BagouWebSocket.GapInfo = await ws.once("gap");
  console.log(n, g.since.epoch, bad);
  // @ts-expect-error: a position is {epoch, offset}
  ws.subscribe("h-news", {recover: {offset: 1}});
  // @ts-expect-error: the limit is a number
  ws.history("h-news", {limit: "10"});
  console.log(bad, BagouWebSocket.DEFAULTS.timeout,
              BagouWebSocket.BagouWebSocket);
}
demo();
