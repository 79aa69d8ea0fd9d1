// ES module use of bagou.d.ts (compiled, not run, by test/types.test.js).
import BagouWebSocket from "bagou";
import {BagouWebSocket as Named} from "bagou";

const ws = new BagouWebSocket("ws://localhost:9000/websocket");
const answer: BagouWebSocket.Answer = await ws.subscribe("news");
const other: BagouWebSocket = new Named("ws://localhost:9000/websocket");
const h: BagouWebSocket.HistoryAnswer = await ws.history("h-news");
const p: BagouWebSocket.Position | null = ws.position("h-news");
ws.on("gap", (g: BagouWebSocket.GapInfo) => console.log(g.channel));
console.log(answer.success, ws.state, other.id, h.offset, p);
