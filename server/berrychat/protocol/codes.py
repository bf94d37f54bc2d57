"""Error codes (in `error` frames and HTTP error bodies) and WebSocket close codes."""

from __future__ import annotations

# code -> (retryable, HTTP status, description)
ERRORS: dict[str, tuple[bool, int, str]] = {
    "bad_json": (False, 400, "the frame is not a JSON object"),
    "bad_frame": (False, 400, "missing or unknown frame type"),
    "bad_field": (False, 400, "a field is missing, has the wrong type or is out of range"),
    "not_authenticated": (False, 401, "send hello with a valid token first"),
    "auth_failed": (False, 401, "wrong user name or password, or token expired or revoked"),
    "account_disabled": (False, 403, "the account is disabled"),
    "forbidden": (False, 403, "your role in this conversation does not allow this"),
    "not_found": (False, 404, "no such conversation, message or user (or you are not a member)"),
    "conflict": (False, 409, "the request conflicts with the current state"),
    "user_exists": (False, 409, "the user name is taken"),
    "registration_closed": (False, 403, "self-registration is disabled on this server"),
    "weak_password": (False, 400, "the password does not meet the length rules"),
    "member_limit": (False, 409, "the conversation would exceed the member limit"),
    "recall_window": (False, 409, "the recall or edit window of this message has passed"),
    "too_large": (False, 413, "the frame or text is larger than the limit"),
    "type_mismatch": (
        False,
        415,
        "the upload's content (magic bytes) is not of the declared Content-Type",
    ),
    "unsupported_type": (False, 415, "this kind of file cannot be uploaded as this kind"),
    "bad_media": (False, 422, "the image or audio could not be decoded (or is too large)"),
    "upload_incomplete": (True, 400, "the upload ended before Content-Length bytes arrived"),
    "storage_full": (True, 507, "the server's upload storage is full; retry later"),
    "quota_exceeded": (False, 413, "the upload would exceed your storage quota"),
    "token_in_url": (False, 400, "file downloads take a signed link, not ?token="),
    "link_invalid": (False, 403, "the download link is malformed or its signature is wrong"),
    "link_expired": (False, 403, "the download link has expired; ask for a new one"),
    "busy": (False, 409, "you are already in a call"),
    "rate_limited": (True, 429, "slow down and retry after a pause"),
    "unavailable": (True, 503, "the server cannot serve this now (database down, draining)"),
    "internal": (True, 500, "unexpected server error"),
}


def retryable(code: str) -> bool:
    return ERRORS.get(code, (False, 500, ""))[0]


def http_status(code: str) -> int:
    return ERRORS.get(code, (False, 500, ""))[1]


class ChatError(Exception):
    """A request failed with one of ERRORS; carried up to the gateway or HTTP layer."""

    def __init__(self, code: str, message: str | None = None) -> None:
        if code not in ERRORS:
            raise ValueError(f"unknown error code {code}")
        super().__init__(message or ERRORS[code][2])
        self.code = code
        self.message = message or ERRORS[code][2]


# WebSocket close codes. 1000-1011 are RFC 6455; 4xxx are BerryChat's own.
# (code, reconnect advice)
CLOSE_NORMAL = 1000  # client or server ended the session on purpose: do not reconnect
CLOSE_GOING_AWAY = 1001  # server draining/restarting: reconnect (any process) at once, then resync
CLOSE_PROTOCOL_ERROR = 1002  # WebSocket framing violated: fix the client; reconnect with backoff
CLOSE_UNSUPPORTED_DATA = 1003  # a binary frame: never send binary frames
CLOSE_INVALID_PAYLOAD = 1007  # text frame with invalid UTF-8
CLOSE_TOO_BIG = 1009  # frame/message above limits.max_frame_bytes
CLOSE_INTERNAL = 1011  # server bug: reconnect with backoff, resync
CLOSE_SLOW_CONSUMER = 4000  # outgoing queue overflowed: reconnect and resync
CLOSE_HEARTBEAT_TIMEOUT = 4001  # nothing received within heartbeat timeout: reconnect and resync
CLOSE_BAD_FRAMES = (
    4400  # too many invalid frames / first frame not hello: do not retry the same frame
)
CLOSE_AUTH = 4401  # token missing, expired or revoked (or hello timeout): log in again first
CLOSE_DISABLED = 4403  # account disabled: do not reconnect
CLOSE_REPLACED = 4409  # a new login on the same device replaced this session: do not reconnect
CLOSE_UNSUPPORTED_VERSION = 4426  # protocol version not supported: upgrade the client
CLOSE_TOO_MANY = 4429  # too many connections for this user or server: reconnect after >= 30 s

CLOSE_CODES: dict[int, str] = {
    CLOSE_NORMAL: "normal closure; do not reconnect automatically",
    CLOSE_GOING_AWAY: "server going away (drain/restart); reconnect at once, then resync",
    CLOSE_PROTOCOL_ERROR: "WebSocket protocol error; reconnect with backoff",
    CLOSE_UNSUPPORTED_DATA: "binary frames are not supported",
    CLOSE_INVALID_PAYLOAD: "invalid UTF-8 in a text frame; do not resend that frame",
    CLOSE_TOO_BIG: "frame too big; do not resend that frame",
    CLOSE_INTERNAL: "internal error; reconnect with backoff, then resync",
    CLOSE_SLOW_CONSUMER: "slow consumer; reconnect and resync",
    CLOSE_HEARTBEAT_TIMEOUT: "heartbeat timeout; reconnect and resync",
    CLOSE_BAD_FRAMES: "protocol violation; do not retry the same frame, reconnect with backoff",
    CLOSE_AUTH: "authentication required/expired/revoked; log in again",
    CLOSE_DISABLED: "account disabled; do not reconnect",
    CLOSE_REPLACED: "session replaced by a newer login on this device; do not reconnect",
    CLOSE_UNSUPPORTED_VERSION: "protocol version not supported; upgrade the client",
    CLOSE_TOO_MANY: "too many connections; reconnect after at least 30 seconds",
}
