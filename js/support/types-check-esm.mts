// ES module use of bagou.d.ts (compiled, not run, by test/types.test.js).
import BagouWebSocket from "bagou";
import {BagouWebSocket as Named} from "bagou";

const ws = new BagouWebSocket("ws://localhost:9000/websocket");
const answer: BagouWebSocket.Answer = await ws.subscribe("news");
const other: BagouWebSocket = new Named("ws://localhost:9000/websocket");
console.log(answer.success, ws.state, other.id);
