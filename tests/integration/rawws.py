"""A minimal blocking WebSocket client on a raw socket.

The websockets library refuses to send what a broken or hostile client
sends (invalid UTF-8, oversized fragments) and always reads its socket.
This client writes exactly the frames a test asks for, can shrink its
receive buffer and stop reading (a slow consumer), and parses frames fast
enough to follow thousands of messages (the scale test).
"""

import base64
import json
import os
import socket
import struct
import time

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


class Closed(Exception):
    """The TCP connection ended (EOF or reset) before what was awaited."""


class HandshakeError(Exception):
    def __init__(self, status, head):
        super().__init__("upgrade answered %s: %r" % (status, head[:200]))
        self.status = status
        self.head = head


def build_frame(opcode, payload, fin=True, mask=True, rsv=0):
    """Returns the bytes of one frame, masked as a client must."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + mask_bytes(payload, key)


def mask_bytes(payload, key):
    if not payload:
        return b""
    n = len(payload)
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ k).to_bytes(n, "big")


def parse_frames(buf, limit=None):
    """Parses complete frames at the start of buf (at most limit of them).

    Returns (frames, consumed) with frames a list of (fin, opcode, payload).
    Server frames are unmasked; a masked one is unmasked anyway."""
    frames = []
    pos = 0
    end = len(buf)
    while end - pos >= 2 and (limit is None or len(frames) < limit):
        b0 = buf[pos]
        b1 = buf[pos + 1]
        n = b1 & 0x7F
        hlen = 2
        if n == 126:
            if end - pos < 4:
                break
            n = struct.unpack_from("!H", buf, pos + 2)[0]
            hlen = 4
        elif n == 127:
            if end - pos < 10:
                break
            n = struct.unpack_from("!Q", buf, pos + 2)[0]
            hlen = 10
        key = None
        if b1 & 0x80:
            if end - pos < hlen + 4:
                break
            key = bytes(buf[pos + hlen:pos + hlen + 4])
            hlen += 4
        if end - pos < hlen + n:
            break
        payload = bytes(buf[pos + hlen:pos + hlen + n])
        if key is not None:
            payload = mask_bytes(payload, key)
        frames.append((bool(b0 & 0x80), b0 & 0x0F, payload))
        pos += hlen + n
    return frames, pos


def handshake_request(host, port, path, extra_headers=()):
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET %s HTTP/1.1" % path,
        "Host: %s:%d" % (host, port),
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: " + key,
        "Sec-WebSocket-Version: 13",
    ]
    lines.extend(extra_headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_handshake_response(head):
    """Returns the status code of an HTTP response head (bytes)."""
    first = head.split(b"\r\n", 1)[0].split()
    if len(first) < 2 or not first[0].startswith(b"HTTP/1."):
        raise HandshakeError(None, head)
    return int(first[1])


class RawWS:
    """One blocking client connection; every wait takes a timeout."""

    def __init__(self, host, port, path="/websocket", rcvbuf=None,
                 timeout=5.0, extra_headers=()):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect(), so the advertised window stays small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = bytearray()
        self.eof = False
        self.close_code = None
        self.close_reason = b""
        self.sock.sendall(handshake_request(host, port, path, extra_headers))
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        status = parse_handshake_response(head)
        if status != 101:
            self.sock.close()
            raise HandshakeError(status, head)

    # ------------------------------------------------------------ sending
    def send_raw(self, data):
        self.sock.sendall(data)

    def send_frame(self, opcode, payload, fin=True, mask=True):
        self.sock.sendall(build_frame(opcode, payload, fin=fin, mask=mask))

    def send_text(self, text):
        self.send_frame(OP_TEXT, text)

    def send_close(self, code=1000):
        self.send_frame(OP_CLOSE, struct.pack("!H", code))

    # ------------------------------------------------------------ receiving
    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no data from the server in time")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(262144)
        except socket.timeout:
            raise TimeoutError("no data from the server in time")
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            raise Closed("connection ended by the server")
        self.buf += data

    def recv_frame(self, timeout=5.0):
        """Returns (fin, opcode, payload) of the next frame, as sent."""
        deadline = time.monotonic() + timeout
        while True:
            frames, used = parse_frames(self.buf, limit=1)
            if frames:
                del self.buf[:used]
                return frames[0]
            self._fill(deadline)

    def recv_message(self, timeout=5.0):
        """Returns (opcode, payload) of the next data or close frame.

        Pings are answered; fragments are joined. A close frame returns
        (OP_CLOSE, payload) and records close_code."""
        deadline = time.monotonic() + timeout
        parts = []
        first_op = None
        while True:
            fin, op, payload = self.recv_frame(max(0.0, deadline -
                                                   time.monotonic()))
            if op == OP_PING:
                self.send_frame(OP_PONG, payload)
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                self._record_close(payload)
                return OP_CLOSE, payload
            if op != OP_CONT:
                first_op = op
            parts.append(payload)
            if fin:
                return first_op, b"".join(parts)

    def _record_close(self, payload):
        if len(payload) >= 2:
            self.close_code = struct.unpack("!H", payload[:2])[0]
            self.close_reason = payload[2:]
        else:
            self.close_code = 1005

    def wait_close(self, timeout=5.0):
        """Reads until a close frame or the end of the connection.

        Returns the close code, or None when the TCP connection ended
        without a close frame. Data frames met on the way are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                op, _ = self.recv_message(max(0.0, deadline -
                                              time.monotonic()))
            except Closed:
                return None
            if op == OP_CLOSE:
                return self.close_code

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class SeqReceiver:
    """One non-blocking raw connection, fed by a poller, that expects the
    messages want(0), want(1), ... in that order; answers pings, and
    records (at most max_errors) what went wrong."""

    def __init__(self, ws, want, max_errors=5):
        self.ws = ws
        self.want = want
        self.max_errors = max_errors
        self.next = 0
        self.errors = []

    def _error(self, text):
        if len(self.errors) < self.max_errors:
            self.errors.append(text)

    def feed(self, data):
        self.ws.buf += data
        frames, used = parse_frames(self.ws.buf)
        del self.ws.buf[:used]
        for fin, op, payload in frames:
            if op == OP_PING:
                self.ws.sock.setblocking(True)
                self.ws.sock.sendall(build_frame(OP_PONG, payload))
                self.ws.sock.setblocking(False)
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                self._error("closed by server: %r" % payload)
                continue
            if op != OP_TEXT or not fin:
                self._error("unexpected frame op=%d fin=%s" % (op, fin))
                continue
            msg = json.loads(payload)
            if msg != self.want(self.next):
                self._error("got %r, expected %r"
                            % (msg, self.want(self.next)))
            self.next += 1


def pump(sel, expected, deadline, stop):
    """Feeds the SeqReceivers registered in selector sel (as key.data)
    until each has seen `expected` messages (then 0.5 s more, so extras and
    duplicates show up), stop() is true, or the deadline passes. Connection
    ends and errors are recorded on the receiver."""
    pending = len(sel.get_map())
    settle_until = None
    while time.monotonic() < deadline and not stop():
        if pending == 0 and settle_until is None:
            settle_until = time.monotonic() + 0.5
        if settle_until is not None and time.monotonic() > settle_until:
            break
        for key, _ in sel.select(timeout=0.2):
            r = key.data
            try:
                data = key.fileobj.recv(1 << 20)
            except BlockingIOError:
                continue
            except ConnectionError as e:
                data = b""
                r.errors.append("connection error %r" % e)
            if not data:
                r.errors.append("connection ended after %d messages"
                                % r.next)
                sel.unregister(key.fileobj)
                continue
            before = r.next
            r.feed(data)
            if before < expected <= r.next:
                pending -= 1
