"""The explorer's session: a signed cookie holding which keys the visitor showed (by key id,
never the key), a CSRF token for its forms, and an expiry.

The cookie is HttpOnly and SameSite=Strict. Its signing secret is derived from the configured
keys, so every worker process accepts the same cookie and changing a key ends every session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field

from serving.settings import Settings

COOKIE = "recsys_ui"
SESSION_S = 8 * 3600


@dataclass
class Session:
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    data: str | None = None      # key id of the data key shown, or None
    admin: str | None = None     # key id of the admin key shown, or None
    expires: float = 0.0


class SessionSigner:
    def __init__(self, settings: Settings) -> None:
        keys = sorted(k.get_secret_value() for k in settings.api_keys)
        if settings.admin_key is not None:
            keys.append("admin\0" + settings.admin_key.get_secret_value())
        # with no keys at all there is nothing to sign in with: a per-process secret is enough
        material = "\0".join(keys).encode("utf-8", "surrogatepass") if keys \
            else secrets.token_bytes(32)
        self._secret = hashlib.sha256(b"recsys-ui-session\0" + material).digest()

    def dump(self, session: Session) -> str:
        session.expires = time.time() + SESSION_S
        payload = _b64(json.dumps({"c": session.csrf, "d": session.data, "a": session.admin,
                                   "e": int(session.expires)}, separators=(",", ":")).encode())
        return payload + "." + _b64(self._sign(payload))

    def load(self, cookie: str | None) -> Session | None:
        """The session in `cookie`, or None for a missing, forged, malformed or expired one."""
        if not cookie or "." not in cookie or len(cookie) > 1000:
            return None
        payload, _, signature = cookie.partition(".")
        try:
            good = hmac.compare_digest(_unb64(signature), self._sign(payload))
            values = json.loads(_unb64(payload)) if good else None
        except (ValueError, TypeError):
            return None
        if not isinstance(values, dict) or not isinstance(values.get("c"), str):
            return None
        session = Session(csrf=values["c"], data=values.get("d"), admin=values.get("a"),
                          expires=float(values.get("e") or 0))
        return session if session.expires > time.time() else None

    def _sign(self, payload: str) -> bytes:
        return hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest()


def csrf_ok(session: Session | None, presented: str | None) -> bool:
    return session is not None and bool(presented) and hmac.compare_digest(
        session.csrf.encode(), presented.encode("utf-8", "surrogatepass"))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


__all__ = ["COOKIE", "SESSION_S", "Session", "SessionSigner", "csrf_ok"]
