"""The server API of bagou-server (docs/PROTOCOL.md "Server API"), from
Python and from a shell (`bagou-api`): disconnect connections, subscribe
and unsubscribe them server-side, list channels, list the nodes, read a
channel's history (bagou.history(), in bagou.history); every call
cluster-wide.

With a broker in the settings (AMQP_BROKER_URL, the default), a call is a
request on RabbitMQ's default exchange to the queue "<EXCHANGE>.api",
which some node takes and answers on RabbitMQ's direct reply-to; with
HTTP_URL and no broker, it goes to the API listener (/api/<command>).
Either way the answer is the same JSON, and an error status raises
ApiError with the server's code and message.

Each call opens its own connection: the API is for administration, not
for the hot path (broadcast() is)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Dict, List, Optional, Union

from . import conf
from .exceptions import ApiError

DEFAULT_TIMEOUT = 10.0

# Commands answered to GET (query parameters); the others are POSTs.
GET_COMMANDS = frozenset({"channels", "info", "presence", "presence_stats",
                          "history"})

UserId = Union[str, int]


def _api_base(s: conf.Settings) -> str:
    """The API listener's base URL from HTTP_URL (which names its POST
    /broadcast endpoint once loaded)."""
    assert s.http_url is not None
    url = s.http_url
    if url.endswith("/broadcast"):
        url = url[:-len("/broadcast")]
    return url.rstrip("/")


def _raise_for(status: int, doc: Dict[str, Any]) -> Dict[str, Any]:
    if 200 <= status < 300:
        return doc
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        err = {"code": "internal", "message": "unexpected answer %r" % doc}
    raise ApiError(status, str(err.get("code")), str(err.get("message")),
                   doc)


def _http(s: conf.Settings, command: str, args: Dict[str, Any],
          timeout: float) -> Dict[str, Any]:
    url = "%s/api/%s" % (_api_base(s), command)
    headers = {"Content-Type": "application/json"}
    if s.api_key:
        headers["Authorization"] = "Bearer " + s.api_key
    data: Optional[bytes] = None
    if command in GET_COMMANDS:
        query = {k: str(v) for k, v in args.items() if v is not None}
        if query:
            url += "?" + urllib.parse.urlencode(query)
        method = "GET"
    else:
        data = json.dumps(args).encode("utf-8")
        method = "POST"
    req = urllib.request.Request(url, data=data, headers=headers,
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return _raise_for(r.status, json.loads(r.read()))
    except urllib.error.HTTPError as e:
        try:
            doc = json.loads(e.read(65536))
        except (OSError, ValueError):
            doc = {"error": {"code": "internal",
                             "message": "%d %s" % (e.code, e.reason)}}
        return _raise_for(e.code, doc)
    except (urllib.error.URLError, OSError) as e:
        raise ApiError(503, "unavailable", "cannot reach %s: %s"
                       % (url, getattr(e, "reason", e))) from None


def _amqp(s: conf.Settings, command: str, args: Dict[str, Any],
          timeout: float) -> Dict[str, Any]:
    import pika
    import pika.exceptions
    assert s.amqp_url is not None
    req = dict(args, command=command)
    if s.api_key:
        req["key"] = s.api_key
    corr = uuid.uuid4().hex
    answers: Dict[str, Any] = {}

    def on_answer(ch: Any, method: Any, props: Any, body: bytes) -> None:
        if props.correlation_id == corr:
            answers["doc"] = json.loads(body)

    try:
        params = pika.URLParameters(s.amqp_url)
        params.connection_attempts = 1
        params.socket_timeout = s.connect_timeout
        params.stack_timeout = s.connect_timeout + 1
        params.client_properties = {"connection_name": "bagou-api"}
        conn = pika.BlockingConnection(params)
    except (pika.exceptions.AMQPError, OSError, ValueError) as e:
        raise ApiError(503, "unavailable", "cannot connect to the broker: "
                       "%s" % (str(e) or e.__class__.__name__)) from None
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_consume("amq.rabbitmq.reply-to", on_answer,
                         auto_ack=True)
        try:
            ch.basic_publish("", s.exchange + ".api",
                             json.dumps(req).encode("utf-8"),
                             pika.BasicProperties(
                                 content_type="application/json",
                                 reply_to="amq.rabbitmq.reply-to",
                                 correlation_id=corr),
                             mandatory=True)
        except pika.exceptions.UnroutableError:
            raise ApiError(503, "unavailable", "no bagou-server node is "
                           "connected to exchange '%s' (queue '%s.api' "
                           "missing)" % (s.exchange, s.exchange)) from None
        deadline = time.monotonic() + timeout
        while "doc" not in answers:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ApiError(503, "unavailable", "no answer within "
                               "%g s" % timeout)
            conn.process_data_events(time_limit=min(left, 0.1))
    except (pika.exceptions.AMQPError, OSError) as e:
        raise ApiError(503, "unavailable", "lost the broker: %s"
                       % (str(e) or e.__class__.__name__)) from None
    finally:
        try:
            conn.close()
        except Exception:
            pass
    doc = answers["doc"]
    status = doc.pop("status", 500) if isinstance(doc, dict) else 500
    return _raise_for(int(status), doc)


def call(command: str, timeout: float = DEFAULT_TIMEOUT,
         **args: Any) -> Dict[str, Any]:
    """Runs a server API command with args (its JSON members; None ones
    are left out) and returns its answer; raises ApiError on an error
    status (its .status, .code and .message are the server's)."""
    s = conf.get()
    args = {k: v for k, v in args.items() if v is not None}
    if s.amqp_url is None:
        return _http(s, command, args, timeout)
    return _amqp(s, command, args, timeout)


def _target(client: Optional[str], user: Optional[UserId]) -> Dict[str, Any]:
    if (client is None) == (user is None):
        raise TypeError("give exactly one of client= and user=")
    return {"client": client} if client is not None else {"user": str(user)}


def disconnect(*, client: Optional[str] = None,
               user: Optional[UserId] = None, code: Optional[int] = None,
               reason: Optional[str] = None,
               timeout: float = DEFAULT_TIMEOUT) -> Dict[str, Any]:
    """Closes the connection client, or every connection of user, on
    every node, with code (4000-4999, default 4000) and reason. Returns
    {"disconnected": N, "missing": [nodes that did not answer]}."""
    return call("disconnect", timeout, code=code, reason=reason,
                **_target(client, user))


def subscribe(channel: str, *, client: Optional[str] = None,
              user: Optional[UserId] = None,
              timeout: float = DEFAULT_TIMEOUT) -> Dict[str, Any]:
    """Subscribes client, or every connection of user, to channel; each
    gets {"event": "subscribed", "data": {"channel": channel}}. Returns
    {"subscribed": N, "missing": [...]}."""
    return call("subscribe", timeout, channel=channel,
                **_target(client, user))


def unsubscribe(channel: str, *, client: Optional[str] = None,
                user: Optional[UserId] = None,
                timeout: float = DEFAULT_TIMEOUT) -> Dict[str, Any]:
    """The reverse of subscribe(); each connection gets "unsubscribed"."""
    return call("unsubscribe", timeout, channel=channel,
                **_target(client, user))


def channels(prefix: str = "", *,
             timeout: float = DEFAULT_TIMEOUT) -> Dict[str, Any]:
    """{"channels": {NAME: SUBSCRIBERS}, "missing": [...]}: the channels
    starting with prefix that have subscribers, counted over the nodes."""
    return call("channels", timeout, prefix=prefix or None)


def info(*, timeout: float = DEFAULT_TIMEOUT) -> List[Dict[str, Any]]:
    """The live nodes: [{"node", "connections", "subscriptions",
    "uptime", "version"}]."""
    nodes: List[Dict[str, Any]] = call("info", timeout)["nodes"]
    return nodes


# ---------------------------------------------------------------- CLI

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bagou-api", description="Call the server API of "
        "bagou-server (cluster-wide) and print its JSON answer. The "
        "connection comes from the BAGOU_* environment variables unless "
        "given here.")
    p.add_argument("--amqp-url", help="broker URL (BAGOU_AMQP_URL)")
    p.add_argument("--http-url", help="the API listener, e.g. "
                   "http://127.0.0.1:9001 (BAGOU_HTTP_URL); used when no "
                   "broker URL is given")
    p.add_argument("--exchange", help="[amqp] exchange (BAGOU_EXCHANGE)")
    p.add_argument("--key", help="[http] api_key (BAGOU_API_KEY)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="seconds to wait for the answer (default 10)")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("disconnect", help="close connections")
    for name in ("subscribe", "unsubscribe"):
        sub.add_parser(name, help="%s connections server-side" % name)
    for name in ("disconnect", "subscribe", "unsubscribe"):
        sp = sub.choices[name]
        g = sp.add_mutually_exclusive_group(required=True)
        g.add_argument("--client", help="a client id")
        g.add_argument("--user", help="a user id (every connection)")
        if name != "disconnect":
            sp.add_argument("--channel", required=True)
    d.add_argument("--code", type=int, help="close code, 4000-4999")
    d.add_argument("--reason", help="close reason (123 bytes at most)")
    c = sub.add_parser("channels", help="channels and subscriber counts")
    c.add_argument("--prefix", default="")
    sub.add_parser("info", help="the live nodes")
    for name in ("presence", "presence_stats"):
        sub.add_parser(name, help="members (or their counts) of a "
                       "presence channel").add_argument("--channel",
                                                        required=True)
    h = sub.add_parser("history", help="a history channel's publications, "
                       "oldest first (the latest, or those after a "
                       "position)")
    h.add_argument("--channel", required=True)
    h.add_argument("--limit", type=int, help="at most this many (default "
                   "50, clamped to [history] size)")
    h.add_argument("--since-epoch", help="with --since-offset: the "
                   "publications after this position")
    h.add_argument("--since-offset", type=int)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    opts = parser.parse_args(argv)
    if opts.command == "history" and \
            (opts.since_epoch is None) != (opts.since_offset is None):
        parser.error("--since-epoch and --since-offset go together")
    src: Dict[str, Any] = {key: os.environ[var]
                           for var, key in conf.ENV_KEYS.items()
                           if os.environ.get(var, "") != ""}
    if opts.amqp_url:
        src["AMQP_BROKER_URL"] = opts.amqp_url
    if opts.http_url:
        src["HTTP_URL"] = opts.http_url
        if not opts.amqp_url:
            src.pop("AMQP_BROKER_URL", None)
    if opts.exchange:
        src["EXCHANGE"] = opts.exchange
    if opts.key:
        src["API_KEY"] = opts.key
    conf.configure(**src)
    args = {k: v for k, v in vars(opts).items()
            if k in ("client", "user", "channel", "code", "reason",
                     "prefix", "limit", "since_epoch", "since_offset")
            and v is not None and v != ""}
    try:
        doc = call(opts.command, opts.timeout, **args)
    except ApiError as e:
        print("bagou-api: %d %s: %s" % (e.status, e.code, e.message),
              file=sys.stderr)
        return EXIT_UNAVAILABLE if e.status == 503 else EXIT_ERROR
    print(json.dumps(doc, indent=2, sort_keys=True))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
