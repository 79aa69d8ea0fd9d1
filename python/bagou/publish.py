"""Publishing broadcasts (PROTOCOL.md §4, §5): one broker connection per
process, opened on first use and reused, guarded by a lock so threads may
share it, dropped in a child after fork() (os.register_at_fork) and
reopened when the broker closed it. Every publish waits for the broker's
confirm, bounded by CONFIRM_TIMEOUT; anything short of a confirm raises
BroadcastError. When the settings name HTTP_URL and no broker, the
broadcast goes to POST /broadcast instead."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Dict, Iterable, List, Optional, Union

import pika
import pika.exceptions

from . import conf
from .exceptions import BroadcastError

log = logging.getLogger("bagou")

Names = Union[str, Iterable[str], None]

# A connection unused for longer than this (seconds) is checked before a
# publish (heartbeats serviced, a close by the broker noticed); one in
# steady use is not, as a publish would notice it failing anyway.
IDLE_CHECK = 1.0


class _ConfirmTimeout(Exception):
    """Raised out of pika's I/O loop by the confirm timer."""


def _encoder() -> Optional[type]:
    """Django's JSON encoder (dates, decimals, UUIDs, lazy strings) when
    Django is installed, else the standard one."""
    try:
        from django.core.serializers.json import DjangoJSONEncoder
    except ImportError:
        return None
    encoder: type = DjangoJSONEncoder
    return encoder


def encode(message: Dict[str, Any]) -> bytes:
    try:
        return json.dumps(message, cls=_encoder(),
                          separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise TypeError("broadcast: the message is not JSON-serializable: "
                        "%s" % e) from None


def _names(value: Names, what: str) -> Union[str, List[str], None]:
    if value is None or isinstance(value, str):
        return value
    try:
        names = list(value)
    except TypeError:
        raise TypeError("broadcast: %s must be a string or a list of "
                        "strings, not %s" % (what, type(value).__name__)) \
            from None
    for n in names:
        if not isinstance(n, str):
            raise TypeError("broadcast: %s must hold strings, not %r"
                            % (what, n))
    return names


def message(event: str, channels: Names = None, data: Any = None,
            clients: Names = None, exclude: Optional[str] = None,
            callback_id: Optional[str] = None,
            **extra: Any) -> Dict[str, Any]:
    """The broadcast object of PROTOCOL.md §4, without the fields left
    out (None)."""
    if not isinstance(event, str) or not event:
        raise ValueError("broadcast: event must be a non-empty string, "
                         "not %r" % (event,))
    msg: Dict[str, Any] = {"event": event}
    chans = _names(channels, "channels")
    if chans is not None:
        msg["channel"] = chans
    msg["data"] = {} if data is None else data
    targets = _names(clients, "clients")
    if targets is not None:
        msg["client"] = targets
    if exclude is not None:
        if not isinstance(exclude, str):
            raise TypeError("broadcast: exclude must be a client id (str)")
        msg["exclude"] = exclude
    if callback_id is not None:
        msg["callbackId"] = callback_id
    msg.update(extra)
    return msg


def routing_key(msg: Dict[str, Any]) -> str:
    """The channel name when the message names exactly one, else ""."""
    ch = msg.get("channel")
    if isinstance(ch, str):
        return ch
    if isinstance(ch, list) and len(ch) == 1 and isinstance(ch[0], str):
        return ch[0]
    return ""


class Publisher:
    """The process's broker connection. publish() is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: Optional[pika.BlockingConnection] = None
        self._ch: Any = None
        self._pid = os.getpid()
        self._last = 0.0           # monotonic time of the last publish
        self.connects = 0          # connections opened (tests read it)

    # ---------------------------------------------------------- state
    def forget_after_fork(self) -> None:
        """In a forked child: the parent's connection is not ours. Close
        our copy of its socket (the parent's stays open) and start anew;
        the lock is replaced, as the parent may have held it."""
        self._lock = threading.Lock()
        conn, self._conn, self._ch = self._conn, None, None
        self._pid = os.getpid()
        sock = _socket_of(conn)
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            self._drop(graceful=True)

    def _drop(self, graceful: bool) -> None:
        conn, self._conn, self._ch = self._conn, None, None
        if conn is None:
            return
        if graceful and conn.is_open:
            try:
                conn.close()
                return
            except Exception:   # closing a broken link: nothing to save
                pass
        sock = _socket_of(conn)
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _connect(self, s: conf.Settings) -> None:
        assert s.amqp_url is not None
        try:
            params = pika.URLParameters(s.amqp_url)
        except Exception as e:
            raise BroadcastError("AMQP_BROKER_URL: %s" % e, e) from None
        params.connection_attempts = 1
        params.socket_timeout = s.connect_timeout
        params.stack_timeout = s.connect_timeout + 1
        params.blocked_connection_timeout = s.confirm_timeout
        params.heartbeat = 60
        params.client_properties = {"connection_name": "bagou-publisher"}
        where = "%s:%s" % (params.host, params.port)
        try:
            conn = pika.BlockingConnection(params)
        except pika.exceptions.ProbableAuthenticationError as e:
            raise BroadcastError("login refused by %s for user %r: %s"
                                 % (where, params.credentials.username, e),
                                 e) from None
        except pika.exceptions.ProbableAccessDeniedError as e:
            raise BroadcastError("access to vhost %r refused by %s: %s"
                                 % (params.virtual_host, where, e),
                                 e) from None
        except (pika.exceptions.AMQPError, OSError) as e:
            raise BroadcastError("cannot connect to the broker at %s: %s"
                                 % (where, _describe(e)), e) from None
        try:
            ch = conn.channel()
            ch.confirm_delivery()
        except (pika.exceptions.AMQPError, OSError) as e:
            _abort(conn)
            raise BroadcastError("the broker at %s refused a channel: %s"
                                 % (where, _describe(e)), e) from None
        self._conn, self._ch = conn, ch
        self.connects += 1

    # ---------------------------------------------------------- publish
    def publish(self, msg: Dict[str, Any], s: conf.Settings) -> None:
        body = encode(msg)
        if os.getpid() != self._pid:   # forked without register_at_fork
            self.forget_after_fork()
        with self._lock:
            # A link that died while idle (broker restart, missed
            # heartbeats) is noticed here, before anything is sent.
            now = time.monotonic()
            idle = now - self._last
            self._last = now
            if self._conn is not None and idle > IDLE_CHECK:
                try:
                    self._conn.process_data_events(time_limit=0)
                    if not self._ch.is_open:
                        raise pika.exceptions.ChannelClosed(0, "closed")
                except (pika.exceptions.AMQPError, OSError):
                    self._drop(graceful=False)
            if self._conn is None:
                self._connect(s)
            try:
                self._send(body, msg, s)
            except BroadcastError:
                raise
            except Exception:
                self._drop(graceful=False)
                raise

    def _send(self, body: bytes, msg: Dict[str, Any],
              s: conf.Settings) -> None:
        if s.queue_name:
            exchange, key = "", s.queue_name
        else:
            exchange, key = s.exchange, routing_key(msg)
        props = pika.BasicProperties(content_type="application/json",
                                     delivery_mode=2)
        conn = self._conn
        assert conn is not None

        def expire() -> None:
            raise _ConfirmTimeout()
        timer = conn._impl.ioloop.call_later(s.confirm_timeout, expire)
        try:
            self._ch.basic_publish(exchange, key, body, props,
                                   mandatory=True)
        except _ConfirmTimeout:
            self._drop(graceful=False)
            raise BroadcastError(
                "the broker did not confirm the publish within %g s (it "
                "blocks publishers when low on memory or disk)"
                % s.confirm_timeout) from None
        except pika.exceptions.UnroutableError as e:
            if s.queue_name:
                raise BroadcastError(
                    "queue '%s' does not exist on the broker: run "
                    "bagou-server with [amqp] queue = %s, or remove "
                    "QUEUE_NAME (and set EXCHANGE) to publish to the "
                    "exchange" % (s.queue_name, s.queue_name), e) from None
            # No node has a subscriber on that channel (nodes bind per
            # channel), or none is connected: nobody to deliver to, which
            # is not the publisher's failure (not a mailbox).
            log.warning("no queue is bound to exchange '%s' for this "
                        "routing key: no bagou-server node has a "
                        "subscriber on that channel (or none is running)",
                        s.exchange)
        except pika.exceptions.NackError as e:
            raise BroadcastError("the broker refused the message "
                                 "(basic.nack)", e) from None
        except pika.exceptions.ChannelClosedByBroker as e:
            self._drop(graceful=True)
            if e.reply_code == 404:
                raise BroadcastError(
                    "exchange '%s' does not exist (is bagou-server running "
                    "against this broker?)" % exchange, e) from None
            raise BroadcastError("the broker closed the channel: %s"
                                 % _describe(e), e) from None
        except (pika.exceptions.AMQPError, OSError) as e:
            self._drop(graceful=False)
            raise BroadcastError("lost the broker while publishing: %s"
                                 % _describe(e), e) from None
        finally:
            try:
                conn._impl.ioloop.remove_timeout(timer)
            except Exception:   # the loop is gone with the connection
                pass


def _socket_of(conn: Any) -> Any:
    try:
        return conn._impl._transport._sock
    except AttributeError:
        return None


def _abort(conn: Any) -> None:
    sock = _socket_of(conn)
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


def _describe(e: BaseException) -> str:
    text = str(e)
    name = e.__class__.__name__
    return "%s: %s" % (name, text) if text and text != "()" else name


_publisher = Publisher()


def _after_fork_in_child() -> None:
    _publisher.forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def reset() -> None:
    """Closes the connection; the next broadcast opens a new one."""
    _publisher.close()


def publisher() -> Publisher:
    return _publisher


def _post(msg: Dict[str, Any], s: conf.Settings) -> None:
    assert s.http_url is not None
    headers = {"Content-Type": "application/json"}
    if s.api_key:
        headers["Authorization"] = "Bearer " + s.api_key
    req = urllib.request.Request(s.http_url, data=encode(msg),
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=s.confirm_timeout) as r:
            r.read()
    except urllib.error.HTTPError as e:
        try:
            detail = e.read(2000).decode("utf-8", "replace")
        except OSError:
            detail = ""
        raise BroadcastError("POST %s answered %d %s%s"
                             % (s.http_url, e.code, e.reason,
                                ": " + detail if detail else ""),
                             e) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise BroadcastError("cannot reach %s: %s" % (s.http_url, reason),
                             e) from None


def send(msg: Dict[str, Any]) -> None:
    """Publishes one broadcast object as it is."""
    s = conf.get()
    if s.amqp_url is None:
        _post(msg, s)
    else:
        _publisher.publish(msg, s)


def broadcast(event: str, channels: Names = None, data: Any = None, *,
              clients: Names = None, exclude: Optional[str] = None,
              callback_id: Optional[str] = None) -> None:
    """Sends {"event", "channel", "data"} to every client subscribed to
    one of channels (a name or a list; None: every client), on every
    bagou-server node; or to the connections named by clients. Returns
    once the broker (or POST /broadcast) accepted it; raises
    BroadcastError otherwise."""
    send(message(event, channels, data, clients=clients, exclude=exclude,
                 callback_id=callback_id))
