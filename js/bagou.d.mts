// Type definitions for bagou.mjs, the ES module entry point: the same
// class and namespace as bagou.d.ts (CommonJS), as a default and a named
// export. Reference: docs/client.md.
//
//   import BagouWebSocket from "bagou";          // or { BagouWebSocket }
//   const answer: BagouWebSocket.Answer = await ws.subscribe("news");
import BagouWebSocket from "./bagou.js";

export { BagouWebSocket };
export default BagouWebSocket;
