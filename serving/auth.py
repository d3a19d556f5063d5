"""API keys (data routes, and a separate admin key) and per-key rate limiting.

Keys are compared in constant time and never logged: logs and metrics name a key only by a short
hash (`key_id`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from collections import OrderedDict

from pydantic import SecretStr

DATA, ADMIN = "data", "admin"


def key_id(key: str) -> str:
    """A short, stable, non-reversible name for a key, for logs and rate-limit buckets."""
    return "key-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:10]


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class KeyChecker:
    """Which role a presented key has. With no data keys configured the data routes are open
    (only allowed on loopback, see `Settings.check_secure`); with no admin key admin is closed."""

    def __init__(self, data_keys: list[SecretStr], admin_key: SecretStr | None) -> None:
        self._data = [k.get_secret_value().encode() for k in data_keys]
        self._admin = admin_key.get_secret_value().encode() if admin_key else None

    @property
    def open_data(self) -> bool:
        return not self._data

    def check(self, presented: str | None, role: str) -> str:
        """Return the caller's key id; raise AuthError(401/403) when the key does not allow
        `role`."""
        if role == DATA and self.open_data:
            return key_id(presented) if presented else "anonymous"
        if role == ADMIN and self._admin is None:
            raise AuthError(403, "admin routes are disabled: set RECSYS_ADMIN_KEY to enable them")
        if not presented:
            raise AuthError(401, "missing API key: send it in the X-API-Key header")
        given = presented.encode("utf-8", "surrogatepass")
        # compare against every key without stopping early, so timing says nothing about which
        is_data = False
        for key in self._data:
            is_data |= hmac.compare_digest(given, key)
        is_admin = self._admin is not None and hmac.compare_digest(given, self._admin)
        if (role == DATA and is_data) or (role == ADMIN and is_admin):
            return key_id(presented)
        if is_data or is_admin:
            raise AuthError(403, f"this key may not use the {role} routes")
        raise AuthError(401, "invalid API key")


class RateLimiter:
    """Token bucket per key: `rate` requests per second sustained, bursts up to `burst`."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, key: str, now: float | None = None) -> float:
        """0 if the request may go ahead, else the seconds to wait before retrying."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
            self._buckets.move_to_end(key)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        return wait


def retry_after_header(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))


__all__ = ["ADMIN", "AuthError", "DATA", "KeyChecker", "RateLimiter", "key_id",
           "retry_after_header"]
