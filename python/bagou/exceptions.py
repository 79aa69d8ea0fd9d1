"""The exceptions bagou raises. Every failure to hand a broadcast to the
broker (or to POST /broadcast) is a BroadcastError: bagou never drops a
message silently."""


class BagouError(Exception):
    """Base class of every bagou exception."""


class ConfigurationError(BagouError):
    """The settings are missing or contradictory (which key, and why, is
    in the message)."""


class BroadcastError(BagouError):
    """A broadcast was not accepted: the broker is unreachable, refused
    the login or the message, did not confirm it in time, or POST
    /broadcast answered an error. The message says which; `cause` holds
    the underlying exception when there is one."""

    def __init__(self, message: str, cause: "BaseException | None" = None):
        super().__init__(message)
        self.cause = cause


class EventError(BagouError):
    """A handler was registered in a way the event does not support
    (a channel filter on on_open or on_close)."""


class ApiError(BagouError):
    """A server API call (bagou.disconnect(), subscribe(), ...; see
    bagou.api) failed: status is the HTTP status (400 bad arguments, 401
    or 403 the API key, 404 nothing found, 503 the broker or the cluster
    unreachable), code and message the server's error (503 "unavailable"
    too when the call could not be made at all); body the whole
    answer."""

    def __init__(self, status: int, code: str, message: str,
                 body: "dict[str, object] | None" = None):
        super().__init__("%d %s: %s" % (status, code, message))
        self.status = status
        self.code = code
        self.message = message
        self.body = body or {"error": {"code": code, "message": message}}
