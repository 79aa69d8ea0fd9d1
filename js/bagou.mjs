// bagou.mjs - ES module entry point: the same client as bagou.js (which
// stays the one file browsers load with a <script> tag).
//
//   import BagouWebSocket from "bagou";          // or { BagouWebSocket }
import BagouWebSocket from "./bagou.js";

export { BagouWebSocket };
export default BagouWebSocket;
