/*
 * chat.js: the browser side of the Bagou chat example.
 *
 * The page talks only to bagou-server (same origin: /bagou.js and
 * /websocket). Everything a room shows comes from the application
 * (examples/app/app.py), which bagou-server forwards events to:
 *
 *   ws.store("name", N)              the name the others see
 *   ws.subscribe("room-X")           the app sends {"event":"join"} to room-X
 *   ws.unsubscribe("room-X")         ... and {"event":"leave"}
 *   ws.emit("chat", {room, text})    the app relays {"event":"chat"} to the
 *                                    room, then answers the callback
 *
 * When the server keeps history for rooms ([history] channels = ^room-),
 * a late joiner also sees the room's last messages (the history event),
 * marked as earlier ones, above what comes after its join.
 *
 * Closing the page (or losing the connection) also makes the app send a
 * leave notice. bagou.js reconnects by itself and restores the store and
 * the subscription, so the page only shows the connection state.
 *
 * With history on the server ([history] channels = ^room-, PROTOCOL.md
 * §9), a late joiner also sees the room's last messages (ws.history), and
 * a reconnection, even across a server restart, misses no line: bagou.js
 * resumes the room by itself, and the page says so when it could not
 * ("gap").
 */
(function () {
  "use strict";

  const $ = function (id) { return document.getElementById(id); };
  const ui = {
    status: $("status"),
    nameForm: $("name-form"), name: $("name"),
    roomForm: $("room-form"), room: $("room"), leave: $("leave"),
    roomTitle: $("room-title"), log: $("log"),
    sendForm: $("send-form"), text: $("text"), send: $("send"),
  };

  const url = (location.protocol === "https:" ? "wss://" : "ws://") +
    location.host + "/websocket";
  const ws = new BagouWebSocket(url);

  let name = "";     // the name the server confirmed
  let room = null;   // the channel we are in ("room-lobby"), or null
  let busy = false;  // a name/join/leave request is in flight
  let lost = false;  // the connection dropped; say so when it is back

  /* ------------------------------------------------------------ view */

  // One line at the end of the log, or before the node `before`.
  function line(kind, text, who, before) {
    const li = document.createElement("li");
    li.className = kind;
    li.dataset.kind = kind;
    if (who !== undefined) {
      const b = document.createElement("span");
      b.className = "who";
      b.textContent = who;
      li.appendChild(b);
      li.appendChild(document.createTextNode(" "));
    }
    const t = document.createElement("span");
    t.className = "text";
    t.textContent = text;
    li.appendChild(t);
    const atBottom = ui.log.scrollHeight - ui.log.scrollTop -
      ui.log.clientHeight < 40;
    ui.log.insertBefore(li, before || null);
    if (atBottom) ui.log.scrollTop = ui.log.scrollHeight;
  }

  function label(channel) { return channel.slice("room-".length); }

  function render() {
    ui.roomTitle.textContent = room ? "#" + label(room) : "Not in a room";
    ui.leave.disabled = busy || !room;
    ui.text.disabled = !room;
    ui.send.disabled = !room;
    ui.text.placeholder = room ? "Message #" + label(room) :
      "Join a room to chat";
    for (const b of ui.nameForm.querySelectorAll("button")) b.disabled = busy;
    ui.roomForm.querySelector("#join").disabled = busy;
  }

  function setStatus(state, text) {
    ui.status.dataset.state = state;
    ui.status.textContent = text;
  }

  /* Runs one request at a time; failures become an error line. */
  async function run(fn) {
    if (busy) return;
    busy = true;
    render();
    try {
      await fn();
    } catch (err) {
      line("error", err.message || String(err));
    } finally {
      busy = false;
      render();
    }
  }

  /* ------------------------------------------------------------ room */

  // "My Room!" -> "room-my-room": a valid channel name (no spaces, no
  // "*", "#", quotes or backslashes).
  function channelFor(input) {
    const slug = input.trim().toLowerCase()
      .replace(/[^a-z0-9_-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40);
    return slug ? "room-" + slug : null;
  }

  function onRoomMessage(data, msg) {
    if (msg.channel !== room) return;  // a late message of a room we left
    const d = data || {};
    if (msg.event === "join") {
      line("join", d.id === ws.id ? "You joined #" + label(room) :
        d.name + " joined");
    } else if (msg.event === "leave") {
      line("leave", d.name + " left");
    } else if (msg.event === "chat") {
      line(d.from === ws.id ? "chat mine" : "chat", d.text, d.name);
    }
  }

  async function setName(value) {
    value = value.trim().slice(0, 40);
    if (!value) {
      ui.name.focus();
      throw new Error("Pick a name first.");
    }
    if (value === name) return;
    await ws.store("name", value);
    name = value;
    line("info", "You are " + value + ".");
  }

  // How many earlier messages a late joiner is shown.
  const EARLIER = 20;

  /* The room's last messages up to the position the subscribe answered
   * (later ones arrive live), inserted before mark. Nothing when the
   * server keeps no history for rooms. */
  async function showEarlier(channel, answer, mark) {
    if (!answer || typeof answer.offset !== "number" || !answer.offset) {
      return;
    }
    let res;
    try {
      res = await ws.history(channel, {limit: EARLIER});
    } catch (err) {
      return;  // not kept here: the room starts empty, as before
    }
    if (channel !== room) return;
    const earlier = (res.publications || []).filter(function (p) {
      return p.event === "chat" && p.offset <= answer.offset;
    });
    if (!earlier.length) return;
    line("info", "Earlier in #" + label(channel) + ":", undefined, mark);
    for (const p of earlier) {
      const d = p.data || {};
      line("chat earlier", d.text, d.name, mark);
    }
  }

  async function join(channel) {
    await setName(ui.name.value);
    if (channel === room) return;
    if (room) await leave();
    room = channel;  // before the answer: the join notice may come first
    render();
    // Where the room's earlier messages go, above what comes live.
    const earlier = document.createElement("li");
    earlier.hidden = true;
    ui.log.appendChild(earlier);
    let answer;
    try {
      answer = await ws.subscribe(channel, {onMessage: onRoomMessage});
    } catch (err) {
      room = null;
      earlier.remove();
      throw err;
    }
    ui.text.disabled = false;
    ui.text.focus();
    showEarlier(channel, answer, earlier).catch(function (err) {
      line("error", "No earlier messages: " + err.message);
    }).finally(function () { earlier.remove(); });
  }

  async function leave() {
    const old = room;
    room = null;
    render();
    line("info", "You left #" + label(old) + ".");
    await ws.unsubscribe(old);
  }

  /* ------------------------------------------------------------ forms */

  ui.nameForm.addEventListener("submit", function (ev) {
    ev.preventDefault();
    run(function () { return setName(ui.name.value); });
  });

  ui.roomForm.addEventListener("submit", function (ev) {
    ev.preventDefault();
    const channel = channelFor(ui.room.value);
    if (!channel) {
      line("error", "Room names use letters, digits, - and _.");
      return;
    }
    run(function () { return join(channel); });
  });

  ui.leave.addEventListener("click", function () {
    if (room) run(leave);
  });

  ui.sendForm.addEventListener("submit", function (ev) {
    ev.preventDefault();
    const text = ui.text.value.trim();
    if (!text || !room) return;
    ui.text.value = "";
    // The original callback form: the whole callback message.
    ws.emit("chat", {room: room, text: text}, function (msg) {
      const res = msg.data || {};
      if (res.success === false) {
        line("error", "Not sent (" + res.error.code + "): " +
             res.error.message);
        if (!ui.text.value) ui.text.value = text;
      }
    });
  });

  /* ------------------------------------------------------------ connection */

  ws.on("open", function () {
    setStatus("online", "connected");
    if (lost) line("info", "Reconnected.");
    lost = false;
  });
  ws.on("close", function () {
    if (ws.state === "closed") {
      setStatus("offline", "disconnected");
    } else if (!lost) {
      lost = true;
      line("info", "Connection lost, reconnecting\u2026");
    }
  });
  ws.on("reconnecting", function (ev) {
    setStatus("reconnecting", "reconnecting (attempt " + ev.attempt + ")");
  });
  ws.on("gap", function (g) {
    if (g.channel === room) {
      line("info", "Some messages of #" + label(room) +
           " may be missing (the server could not replay them).");
    }
  });
  ws.on("error", function (err) {
    line("error", err.message + (err.code ? " (" + err.code + ")" : ""));
  });

  render();
  ui.name.focus();

  // For the browser console (and tests): the client itself.
  window.bagouChat = {ws: ws};
})();
