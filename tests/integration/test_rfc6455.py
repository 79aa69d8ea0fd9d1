"""RFC 6455 to the letter, on raw sockets (docs/RFC6455.md lists the cases).

The cases of the Autobahn test suite's sections 1-7 that apply to a server
that does not echo (framing, pings and pongs, reserved bits, opcodes,
fragmentation, UTF-8, close handling), the HTTP side of the upgrade (426,
400, h2c, the HTTP/2 preface, pipelining), the bounds on fragmented
messages, and the close handshake of a slow consumer.

Instead of an echo, a message that is processed answers: {"event":"ping"}
gets {"event":"pong"}. A must-fail case passes when the server's first
frame after the bad one is a close frame with the prescribed code, and no
text frame (a processed message) came before it.
"""

import json
import re
import socket
import struct
import time

import pytest

from rawws import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
                   Closed, RawWS, build_frame, parse_frames)
from support import HOST, Server, metric_sum

PING = b'{"event":"ping"}'
PONG = {"event": "pong"}

CONFIG = {"limits": {"close_timeout": 2, "max_fragments": 100,
                     "fragment_timeout": 30}}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """One server for the many short cases of this module."""
    s = Server(str(tmp_path_factory.mktemp("rfc6455")), config=CONFIG,
               workers=2)
    s.start()
    yield s
    s.stop()


def connect(srv, **kw):
    ws = RawWS(HOST, srv.port, **kw)
    op, payload = ws.recv_message()
    assert op == OP_TEXT and json.loads(payload)["event"] == "connect"
    return ws


def close_payload(code, reason=b""):
    return struct.pack("!H", code) + reason


def expect_close(ws, code, timeout=5.0):
    """The server's next frames: pings/pongs at most, then a close frame
    with code (None: an empty close payload). No processed message."""
    while True:
        fin, op, payload = ws.recv_frame(timeout)
        if op in (OP_PING, OP_PONG):
            continue
        assert op == OP_CLOSE, "frame op=%d before the close: %r" % (
            op, payload[:80])
        break
    got = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
    assert got == code, "closed with %r, expected %r (%r)" % (
        got, code, payload)
    return payload


def expect_reply_then_close(ws, code):
    """A valid message, then a bad frame in the same write: the reply may
    be lost, as the failure drops what was not sent yet (Autobahn counts
    that as NON-STRICT); never anything but the reply, then the close."""
    while True:
        fin, op, payload = ws.recv_frame()
        if op in (OP_PING, OP_PONG):
            continue
        if op == OP_TEXT:
            assert json.loads(payload) == PONG, payload
            continue
        assert op == OP_CLOSE, op
        assert struct.unpack("!H", payload[:2])[0] == code, payload
        return


def expect_pong_reply(ws, timeout=5.0):
    """The next data frame answers {"event":"ping"}: the connection lives
    and processed what came before in order."""
    op, payload = ws.recv_message(timeout)
    assert op == OP_TEXT, (op, payload)
    assert json.loads(payload) == PONG, payload


def expect_eof(ws, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            ws.recv_frame(max(0.01, deadline - time.monotonic()))
        except Closed:
            return
        except TimeoutError:
            raise AssertionError("the server kept the TCP connection open")


def fail_case(srv, data, code):
    """Sends data (raw bytes) on a fresh connection, then expects the close
    with code."""
    ws = connect(srv)
    try:
        ws.send_raw(data)
        expect_close(ws, code)
    finally:
        ws.close()


# ------------------------------------------------ section 1: framing

@pytest.mark.parametrize("size", [26, 125, 126, 127, 128, 65535, 65536])
def test_text_lengths_7_16_64_bit(srv, size):
    """1.1: payload lengths around the 7-bit / 16-bit / 64-bit encodings
    (max_message_size is 65536)."""
    base = len(b'{"event":"ping","data":""}')
    msg = b'{"event":"ping","data":"' + b"x" * (size - base) + b'"}'
    assert len(msg) == size
    ws = connect(srv)
    try:
        ws.send_frame(OP_TEXT, msg)
        expect_pong_reply(ws)
    finally:
        ws.close()


def test_text_in_many_small_writes(srv):
    """1.1.8-like: one frame written a few bytes at a time."""
    ws = connect(srv)
    try:
        data = build_frame(OP_TEXT, PING)
        for i in range(0, len(data), 3):
            ws.send_raw(data[i:i + 3])
            time.sleep(0.005)
        expect_pong_reply(ws)
    finally:
        ws.close()


def test_binary_closes_1003(srv):
    """1.2: binary messages are not part of the protocol (PROTOCOL.md §2)."""
    fail_case(srv, build_frame(OP_BINARY, b"\x00\x01"), 1003)


def test_unmasked_client_frame_closes_1002(srv):
    """RFC 6455 §5.1: a server must fail on an unmasked client frame."""
    fail_case(srv, build_frame(OP_TEXT, PING, mask=False), 1002)


def test_unmasked_ping_closes_1002(srv):
    fail_case(srv, build_frame(OP_PING, b"x", mask=False), 1002)


def test_64_bit_length_top_bit_closes_1002(srv):
    head = struct.pack("!BB", 0x81, 0x80 | 127) + b"\x80" + b"\x00" * 7
    fail_case(srv, head + b"\x00" * 4, 1002)


# ---------------------------------------------- section 2: pings, pongs

@pytest.mark.parametrize("payload", [b"", b"Hello, world!",
                                     bytes(range(256))[:125],
                                     b"\x00\xff\xfe\xfd"])
def test_ping_answered_with_same_payload(srv, payload):
    """2.1-2.4: empty, text, 125 bytes, binary payloads."""
    ws = connect(srv)
    try:
        ws.send_frame(OP_PING, payload)
        fin, op, got = ws.recv_frame()
        assert (fin, op, got) == (True, OP_PONG, payload)
    finally:
        ws.close()


def test_ping_126_bytes_closes_1002(srv):
    """2.5: a control frame payload over 125 bytes."""
    fail_case(srv, build_frame(OP_PING, b"x" * 126), 1002)


def test_close_126_bytes_closes_1002(srv):
    fail_case(srv, build_frame(OP_CLOSE, close_payload(1000, b"x" * 124)),
              1002)


def test_unsolicited_pong_ignored(srv):
    """2.6-2.7: pongs nobody asked for are ignored."""
    ws = connect(srv)
    try:
        ws.send_frame(OP_PONG, b"")
        ws.send_frame(OP_PONG, b"unsolicited")
        ws.send_frame(OP_TEXT, PING)
        expect_pong_reply(ws)
    finally:
        ws.close()


def test_ten_pings_get_pongs(srv):
    """2.10-2.11: pings sent back to back. RFC 6455 §5.5.3 allows
    answering only some; each pong carries one ping's payload, and the
    connection goes on."""
    ws = connect(srv)
    try:
        sent = [b"ping-%d" % i for i in range(10)]
        ws.send_raw(b"".join(build_frame(OP_PING, p) for p in sent))
        ws.send_frame(OP_TEXT, PING)
        pongs = []
        while True:
            fin, op, payload = ws.recv_frame()
            if op == OP_PONG:
                pongs.append(payload)
                continue
            assert op == OP_TEXT and json.loads(payload) == PONG
            break
        assert pongs and set(pongs) <= set(sent), pongs
    finally:
        ws.close()


# ---------------------------------------------- section 3: reserved bits

@pytest.mark.parametrize("rsv", [1, 2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_PING, OP_CLOSE])
def test_reserved_bits_close_1002(srv, rsv, opcode):
    """3.1-3.7: RSV1-3 set without a negotiated extension."""
    payload = PING if opcode == OP_TEXT else b""
    fail_case(srv, build_frame(opcode, payload, rsv=rsv), 1002)


def test_reserved_bits_after_valid_message(srv):
    """3.2: the valid message before the bad frame is processed."""
    ws = connect(srv)
    try:
        ws.send_raw(build_frame(OP_TEXT, PING) +
                    build_frame(OP_TEXT, PING, rsv=2))
        expect_reply_then_close(ws, 1002)
    finally:
        ws.close()


# ---------------------------------------------------- section 4: opcodes

@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcodes_close_1002(srv, opcode):
    """4.1.x (data) and 4.2.x (control) reserved opcodes."""
    fail_case(srv, build_frame(opcode, b""), 1002)


@pytest.mark.parametrize("opcode", [3, 0xB])
def test_reserved_opcode_after_valid_message(srv, opcode):
    ws = connect(srv)
    try:
        ws.send_raw(build_frame(OP_TEXT, PING) +
                    build_frame(opcode, b"reserved"))
        expect_reply_then_close(ws, 1002)
    finally:
        ws.close()


# ---------------------------------------------- section 5: fragmentation

@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG])
def test_fragmented_control_closes_1002(srv, opcode):
    """5.1-5.2: control frames must not be fragmented."""
    fail_case(srv, build_frame(opcode, b"frag", fin=False) +
              build_frame(OP_CONT, b"ment"), 1002)


@pytest.mark.parametrize("pieces", [2, 3, len(PING)])
def test_fragmented_text(srv, pieces):
    """5.3-5.5: a message in fragments, down to one byte each."""
    size = -(-len(PING) // pieces)
    parts = [PING[i:i + size] for i in range(0, len(PING), size)]
    frames = [build_frame(OP_TEXT if i == 0 else OP_CONT, p,
                          fin=i == len(parts) - 1)
              for i, p in enumerate(parts)]
    ws = connect(srv)
    try:
        ws.send_raw(b"".join(frames))
        expect_pong_reply(ws)
    finally:
        ws.close()


def test_empty_fragments(srv):
    """Empty first, middle and last fragments."""
    ws = connect(srv)
    try:
        ws.send_raw(build_frame(OP_TEXT, b"", fin=False) +
                    build_frame(OP_CONT, PING[:5], fin=False) +
                    build_frame(OP_CONT, b"", fin=False) +
                    build_frame(OP_CONT, PING[5:], fin=False) +
                    build_frame(OP_CONT, b"", fin=True))
        expect_pong_reply(ws)
    finally:
        ws.close()


def test_pings_between_fragments(srv):
    """5.6-5.9: control frames in the middle of a fragmented message."""
    ws = connect(srv)
    try:
        ws.send_raw(build_frame(OP_TEXT, PING[:4], fin=False) +
                    build_frame(OP_PING, b"a") +
                    build_frame(OP_CONT, PING[4:9], fin=False) +
                    build_frame(OP_PONG, b"unsolicited") +
                    build_frame(OP_CONT, PING[9:], fin=True))
        fin, op, payload = ws.recv_frame()
        assert (op, payload) == (OP_PONG, b"a")
        expect_pong_reply(ws)
    finally:
        ws.close()


@pytest.mark.parametrize("fin", [True, False])
def test_continuation_without_start_closes_1002(srv, fin):
    """5.9-5.12: a continuation with nothing to continue."""
    fail_case(srv, build_frame(OP_CONT, PING, fin=fin), 1002)


def test_continuation_after_final_closes_1002(srv):
    """5.13-5.16: a complete message, then a continuation."""
    ws = connect(srv)
    try:
        ws.send_raw(build_frame(OP_TEXT, PING) +
                    build_frame(OP_CONT, PING))
        expect_reply_then_close(ws, 1002)
    finally:
        ws.close()


def test_new_message_during_fragmented_closes_1002(srv):
    """5.17-5.20: a text frame while a fragmented one is unfinished."""
    fail_case(srv, build_frame(OP_TEXT, PING[:5], fin=False) +
              build_frame(OP_TEXT, PING), 1002)


def test_close_between_fragments(srv):
    """A close in the middle of a message ends it normally."""
    ws = connect(srv)
    try:
        ws.send_raw(build_frame(OP_TEXT, PING[:5], fin=False) +
                    build_frame(OP_CLOSE, close_payload(1000)))
        expect_close(ws, 1000)
        expect_eof(ws)
    finally:
        ws.close()


def test_endless_empty_fragments_closed_1009(srv):
    """An endless fragmented message of empty frames is closed after
    [limits] max_fragments frames (100 here) with 1009."""
    ws = connect(srv)
    try:
        frames = build_frame(OP_TEXT, b"", fin=False) + \
            build_frame(OP_CONT, b"", fin=False) * 200
        try:
            ws.send_raw(frames)
        except (BrokenPipeError, ConnectionResetError):
            pass
        expect_close(ws, 1009)
    finally:
        ws.close()


def test_slow_fragmented_message_closed_1008(server):
    """A fragmented message unfinished after [limits] fragment_timeout is
    closed with 1008, even if the client then sends nothing."""
    s = server({"limits": {"fragment_timeout": 1, "close_timeout": 2}})
    ws = connect(s)
    try:
        ws.send_frame(OP_TEXT, PING[:5], fin=False)
        start = time.monotonic()
        expect_close(ws, 1008, timeout=5)
        assert 0.8 <= time.monotonic() - start < 4
    finally:
        ws.close()


def test_fragments_under_the_limits_pass(server):
    s = server({"limits": {"max_fragments": 10, "fragment_timeout": 5}})
    ws = connect(s)
    try:
        for _ in range(3):   # the count starts again for each message
            ws.send_raw(build_frame(OP_TEXT, PING[:1], fin=False) +
                        b"".join(build_frame(OP_CONT, PING[i:i + 1],
                                             fin=False)
                                 for i in range(1, 8)) +
                        build_frame(OP_CONT, PING[8:], fin=True))
            expect_pong_reply(ws)
    finally:
        ws.close()


# ------------------------------------------------------ section 6: UTF-8

def ping_with(data):
    return b'{"event":"ping","data":"' + data + b'"}'


VALID_UTF8 = [
    "Hello-µ@ßöäüàá-UTF-8!!".encode(),
    "κόσμε".encode(),
    b"\xf0\x9f\x98\x80",                # U+1F600, 4 bytes
    b"\xef\xbf\xbf",                    # U+FFFF
    b"\xf4\x8f\xbf\xbf",                # U+10FFFF
]

INVALID_UTF8 = [
    b"\xff",                            # never valid
    b"\xc0\xaf",                        # overlong '/'
    b"\xe0\x80\xaf",                    # overlong
    b"\xed\xa0\x80",                    # surrogate U+D800
    b"\xf4\x90\x80\x80",                # > U+10FFFF
    b"\x80",                            # lone continuation
    b"\xce\xba\xe1\xbd",                # truncated in the middle
]


@pytest.mark.parametrize("text", VALID_UTF8)
@pytest.mark.parametrize("split", [None, 1, "bytes"])
def test_valid_utf8_in_fragments(srv, text, split):
    """6.2-6.5: valid UTF-8, whole, split once inside a code point, and
    one byte per frame."""
    msg = ping_with(text)
    start = msg.index(text)
    if split is None:
        cuts = []
    elif split == 1:
        cuts = [start + 1]
    else:
        cuts = list(range(start + 1, start + len(text)))
    bounds = [0] + cuts + [len(msg)]
    parts = [msg[a:b] for a, b in zip(bounds, bounds[1:])]
    ws = connect(srv)
    try:
        ws.send_raw(b"".join(
            build_frame(OP_TEXT if i == 0 else OP_CONT, p,
                        fin=i == len(parts) - 1)
            for i, p in enumerate(parts)))
        expect_pong_reply(ws)
    finally:
        ws.close()


@pytest.mark.parametrize("bad", INVALID_UTF8)
def test_invalid_utf8_closes_1007(srv, bad):
    """6.3-6.22: invalid sequences in one frame."""
    fail_case(srv, build_frame(OP_TEXT, ping_with(bad)), 1007)


@pytest.mark.parametrize("bad", INVALID_UTF8[:5])
def test_invalid_utf8_fails_fast_across_fragments(srv, bad):
    """6.4: the invalid fragment fails the connection at once, before the
    message is complete (the rest is never sent)."""
    ws = connect(srv)
    try:
        ws.send_frame(OP_TEXT, b'{"event":"ping","data":"', fin=False)
        ws.send_frame(OP_CONT, bad, fin=False)
        expect_close(ws, 1007)
    finally:
        ws.close()


def utf8_cut_at_message_end(srv, first, last):
    ws = connect(srv)
    try:
        ws.send_frame(OP_TEXT, first, fin=False)
        ws.send_frame(OP_CONT, last, fin=True)
        expect_close(ws, 1007)
    finally:
        ws.close()


def test_truncated_utf8_at_message_end_closes_1007(srv):
    utf8_cut_at_message_end(srv, b'{"event":"ping","data":"',
                            b"\xf0\x9f\x98")


def test_utf8_cut_before_an_empty_final_fragment_closes_1007(srv):
    """8.1: the message ends inside a UTF-8 sequence even when its last
    fragment is empty."""
    utf8_cut_at_message_end(srv, b'{"event":"ping","data":"\xe2\x82', b"")


# ------------------------------------------------ section 7: close frames

def test_close_empty_payload(srv):
    """7.3.1: an empty close is answered by a close, then TCP ends."""
    ws = connect(srv)
    try:
        ws.send_frame(OP_CLOSE, b"")
        expect_close(ws, None)
        expect_eof(ws)
    finally:
        ws.close()


def test_close_one_byte_payload_closes_1002(srv):
    """7.3.2: a 1-byte close payload is a protocol error, not echoed."""
    fail_case(srv, build_frame(OP_CLOSE, b"\x03"), 1002)


def test_close_with_reason_answered(srv):
    """7.3.3-7.3.5: code with a reason, up to 123 bytes."""
    for reason in (b"", b"bye", b"x" * 123):
        ws = connect(srv)
        try:
            ws.send_frame(OP_CLOSE, close_payload(1000, reason))
            expect_close(ws, 1000)
            expect_eof(ws)
        finally:
            ws.close()


def test_close_invalid_utf8_reason_closes_1007(srv):
    """7.5.1: a close reason that is not UTF-8."""
    fail_case(srv, build_frame(OP_CLOSE, close_payload(1000, b"\xce\xba"
                                                       b"\xe1\xbd")), 1007)


def test_data_after_close_ignored(srv):
    """7.1.x: nothing the client sends after its close is processed."""
    ws = connect(srv)
    try:
        ws.send_raw(build_frame(OP_CLOSE, close_payload(1000)) +
                    build_frame(OP_TEXT, PING) +
                    build_frame(OP_PING, b"after"))
        expect_close(ws, 1000)
        expect_eof(ws)
    finally:
        ws.close()


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009,
                                  1010, 1011, 1012, 1013, 1014, 3000, 3999,
                                  4000, 4999])
def test_valid_close_codes_answered(srv, code):
    """7.7.x: codes a peer may send are answered with the same code."""
    ws = connect(srv)
    try:
        ws.send_frame(OP_CLOSE, close_payload(code))
        expect_close(ws, code)
        expect_eof(ws)
    finally:
        ws.close()


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016,
                                  1100, 2000, 2999, 5000, 65535])
def test_invalid_close_codes_close_1002(srv, code):
    """7.9.x: codes that may not be sent fail with 1002 (never echoed)."""
    fail_case(srv, build_frame(OP_CLOSE, close_payload(code)), 1002)


def test_server_close_waits_for_client_close(server):
    """A close the server starts: the client that answers is let go at
    once; one that does not is cut after [limits] close_timeout."""
    s = server({"limits": {"close_timeout": 1}})
    ws = connect(s)
    try:
        ws.send_frame(OP_BINARY, b"x")
        expect_close(ws, 1003)
        ws.send_frame(OP_CLOSE, close_payload(1000))
        start = time.monotonic()
        expect_eof(ws, timeout=3)
        assert time.monotonic() - start < 0.8
    finally:
        ws.close()
    ws = connect(s)
    try:
        ws.send_frame(OP_BINARY, b"x")
        expect_close(ws, 1003)
        start = time.monotonic()
        expect_eof(ws, timeout=4)
        took = time.monotonic() - start
        assert 0.7 <= took < 3, took
    finally:
        ws.close()


# ------------------------------------------------------- HTTP upgrade

def raw_http(port, request, timeout=5.0, want_close=True):
    """Sends request bytes; returns everything received until EOF (or the
    timeout when want_close is False)."""
    s = socket.create_connection((HOST, port), timeout=timeout)
    out = b""
    try:
        s.sendall(request)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not data:
                return out, True
            out += data
        return out, False
    finally:
        s.close()


def upgrade(port, version="13", key=None, extra=(), path="/websocket",
            drop=()):
    key = key if key is not None else "dGhlIHNhbXBsZSBub25jZQ=="
    lines = ["GET %s HTTP/1.1" % path, "Host: %s:%d" % (HOST, port),
             "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: " + key]
    if version is not None:
        lines.append("Sec-WebSocket-Version: " + version)
    lines = [ln for ln in lines if ln.split(":")[0] not in drop]
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_and_headers(head):
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    headers = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers[k.strip().lower()] = v.strip()
    return parts[0], int(parts[1]), headers


@pytest.mark.parametrize("version", ["8", "12", "14", "13, 8", ""])
def test_wrong_version_gets_426(srv, version):
    out, closed = raw_http(srv.port, upgrade(srv.port, version=version))
    proto, status, headers = status_and_headers(out)
    assert (proto, status) == ("HTTP/1.1", 426), out[:200]
    assert headers.get("sec-websocket-version") == "13", headers
    assert closed


def test_missing_version_gets_426(srv):
    out, closed = raw_http(srv.port, upgrade(srv.port, version=None))
    _, status, headers = status_and_headers(out)
    assert status == 426 and headers["sec-websocket-version"] == "13"


@pytest.mark.parametrize("key", ["", "short", "dGhlIHNhbXBsZSBub25jZQ",
                                 "dGhlIHNhbXBsZSBub25jZQ==x",
                                 "dGhlIHNhbXBsZSBub25jZR==",
                                 "dGhlIHNhbXBsZSBub25j!Q=="])
def test_bad_key_gets_400(srv, key):
    out, closed = raw_http(srv.port, upgrade(srv.port, key=key))
    assert status_and_headers(out)[1] == 400, out[:200]
    assert closed


def test_missing_key_or_connection_gets_400(srv):
    for drop in (("Sec-WebSocket-Key",), ("Connection",), ("Host",)):
        out, closed = raw_http(srv.port, upgrade(srv.port, drop=drop))
        assert status_and_headers(out)[1] == 400, (drop, out[:200])


def test_subprotocol_mismatch_gets_400(srv):
    out, closed = raw_http(srv.port, upgrade(
        srv.port, extra=["Sec-WebSocket-Protocol: chat, superchat"]))
    assert status_and_headers(out)[1] == 400, out[:200]
    assert closed


def test_subprotocol_bagou_accepted(srv):
    out, _ = raw_http(srv.port, upgrade(
        srv.port, extra=["Sec-WebSocket-Protocol: chat, bagou"]),
        timeout=1.0, want_close=False)
    _, status, headers = status_and_headers(out)
    assert status == 101, out[:200]
    assert headers["sec-websocket-protocol"] == "bagou"


def test_wrong_path_and_origin_still_answered(server):
    s = server({"server": {"origins": "https://ok.example"}})
    out, _ = raw_http(s.port, upgrade(s.port, path="/nope"))
    assert status_and_headers(out)[1] == 404
    out, _ = raw_http(s.port, upgrade(
        s.port, extra=["Origin: https://evil.example"]))
    assert status_and_headers(out)[1] == 403


@pytest.mark.parametrize("path", ["/websocket", "/health"])
def test_h2c_upgrade_is_plain_http1(srv, path):
    """No HTTP/2: "Upgrade: h2c" is answered as HTTP/1.1 (426 on the
    WebSocket path, the resource elsewhere), never 101."""
    req = ("GET %s HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, "
           "HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA"
           "\r\n\r\n" % path).encode()
    out, _ = raw_http(srv.port, req, timeout=1.0, want_close=False)
    proto, status, _ = status_and_headers(out)
    assert proto == "HTTP/1.1"
    assert status == (426 if path == "/websocket" else 200), out[:200]
    assert b"\x00\x00" not in out[:3]


def test_h2_preface_not_spoken(srv):
    """The HTTP/2 connection preface gets no HTTP/2 frames back."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    out, closed = raw_http(srv.port, preface + settings, timeout=2.0,
                           want_close=False)
    # Refused: an HTTP/1.x 4xx (libwebsockets answers 403), or a close.
    assert out == b"" or (out[:7] == b"HTTP/1." and out[9:10] == b"4"), \
        out[:100]
    assert srv.health()["status"] == "ok"


def test_pipelined_gets_all_answered(srv):
    """100 pipelined GETs: 100 answers, in order (or, for the ones not
    answered, a Connection: close on the last answer)."""
    n = 100
    req = b"".join(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                   for _ in range(n))
    out, closed = raw_http(srv.port, req, timeout=5.0, want_close=False)
    answers = out.count(b"HTTP/1.1 200")
    assert answers == n, "%d of %d answered" % (answers, n)


def test_pipelined_mixed_gets_answered_in_order(srv):
    req = b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % p
                   for p in [b"/health", b"/nope", b"/websocket",
                             b"/bagou.js", b"/health/live"] * 10)
    out, _ = raw_http(srv.port, req, timeout=5.0, want_close=False)
    statuses = [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", out)]
    assert statuses == [200, 404, 426, 200, 200] * 10, statuses


def test_pipelined_static_files_refused_explicitly(server, tmp_path):
    """Files of /static end their connection with Connection: close (lws
    4.1.6 would leave requests pipelined behind a file unanswered): the
    client is told, and the connection then ends."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "a.txt").write_text("a" * 300)
    s = server({"http": {"static_dir": str(root)}})
    req = b"GET /static/a.txt HTTP/1.1\r\nHost: x\r\n\r\n" * 5
    out, closed = raw_http(s.port, req, timeout=5.0)
    assert closed, "the connection stayed open"
    assert out.count(b"HTTP/1.1 200") == 1, out[:400]
    _, _, headers = status_and_headers(out)
    assert headers["connection"] == "close"
    assert out.endswith(b"a" * 300)


# -------------------------------------- close handshake of slow consumers

def test_slow_consumer_gets_complete_close_4001(server):
    """A client that stops reading is closed with 4001 when its queue
    overflows; reading again (within close_timeout), it finds complete
    frames and then a complete close frame 4001, never EOF mid-frame."""
    # Backpressure off: the publisher must be able to overflow the queue
    # (with it on, the POSTs get 503 and the stall timer closes instead).
    s = server({"limits": {"max_message_size": 300000,
                           "max_queued_bytes": 400000,
                           "close_timeout": 10, "backpressure": 0}},
               workers=1)
    ws = connect(s, rcvbuf=4096)
    try:
        ws.send_text(json.dumps({"event": "subscribe", "callbackId": "s",
                                 "data": {"channel": "big"}}))
        op, payload = ws.recv_message()
        assert json.loads(payload)["data"]["success"] is True
        # Big frames (over one 128 KiB write) and pings from the client,
        # while it does not read.
        pad = "y" * 200000
        for seq in range(40):
            s.broadcast({"event": "big", "channel": "big",
                         "data": {"seq": seq, "pad": pad}})
            try:
                ws.send_frame(OP_PING, b"p%d" % seq)
            except OSError:
                pass
            if metric_sum(s.metrics(),
                          "bagou_slow_consumer_closes_total") >= 1:
                break
        assert metric_sum(s.metrics(),
                          "bagou_slow_consumer_closes_total") >= 1
        # Now read everything: every frame must parse whole.
        buf = bytearray()
        frames = []
        deadline = time.monotonic() + 15
        ws.sock.settimeout(1.0)
        while time.monotonic() < deadline:
            try:
                data = ws.sock.recv(1 << 20)
            except socket.timeout:
                continue
            if not data:
                break
            buf += data
            got, used = parse_frames(buf)
            del buf[:used]
            frames.extend(got)
            if frames and frames[-1][1] == OP_CLOSE:
                ws.send_close(4001)
                break
        assert frames, "nothing read"
        assert frames[-1][1] == OP_CLOSE, (
            "no close frame; %d bytes of a partial frame left"
            % len(buf))
        assert struct.unpack("!H", frames[-1][2][:2])[0] == 4001
        for fin, op, payload in frames[:-1]:
            assert fin and op in (OP_TEXT, OP_PONG), op
            if op == OP_TEXT:
                json.loads(payload)
    finally:
        ws.close()


def test_large_frames_not_interleaved_with_pongs(server):
    """Frames bigger than one write go out whole: the pongs for pings that
    arrive meanwhile come between frames, never inside one."""
    s = server({"limits": {"max_message_size": 1000000,
                           "max_queued_bytes": 8000000}}, workers=1)
    ws = connect(s, rcvbuf=8192)
    try:
        ws.send_text(json.dumps({"event": "subscribe", "callbackId": "s",
                                 "data": {"channel": "big"}}))
        op, payload = ws.recv_message()
        pad = "z" * 700000
        for seq in range(4):
            s.broadcast({"event": "big", "channel": "big",
                         "data": {"seq": seq, "pad": pad}})
        for i in range(20):
            ws.send_frame(OP_PING, b"i%d" % i)
            time.sleep(0.01)
        seqs, pongs = [], 0
        deadline = time.monotonic() + 20
        while len(seqs) < 4 and time.monotonic() < deadline:
            fin, op, payload = ws.recv_frame(timeout=10)
            assert fin and op in (OP_TEXT, OP_PONG), (op, payload[:40])
            if op == OP_PONG:
                pongs += 1
            else:
                seqs.append(json.loads(payload)["data"]["seq"])
        assert seqs == [0, 1, 2, 3]
    finally:
        ws.close()


@pytest.mark.parametrize("code", [1003, 1009])
def test_protocol_close_waits_for_the_frame_in_progress(server, code):
    """A close started in the receive callback (1003: a binary frame; 1009:
    a message too big, which the client goes on sending) while a frame is
    half written: the frame is finished, then the close frame follows."""
    s = server({"limits": {"max_message_size": 1000000,
                           "max_queued_bytes": 8000000,
                           "close_timeout": 10}}, workers=1)
    ws = connect(s, rcvbuf=8192)
    try:
        ws.send_text(json.dumps({"event": "subscribe", "callbackId": "s",
                                 "data": {"channel": "big"}}))
        op, payload = ws.recv_message()
        s.broadcast({"event": "big", "channel": "big",
                     "data": {"seq": 0, "pad": "w" * 700000}})
        time.sleep(0.3)             # the frame is now half written
        if code == 1003:
            ws.send_frame(OP_BINARY, b"x")
        else:
            ws.send_frame(OP_TEXT, b"x" * 1000001)
        fin, op, payload = ws.recv_frame(timeout=10)
        assert (fin, op) == (True, OP_TEXT)
        assert json.loads(payload)["data"]["seq"] == 0
        expect_close(ws, code, timeout=10)
    finally:
        ws.close()
