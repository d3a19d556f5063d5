"""Fixed API keys for the tests and benchmarks: never shipped in the installed package."""

DATA_KEY = "data-key-0123456789abcdef"
OTHER_DATA_KEY = "data-key-fedcba9876543210"
ADMIN_KEY = "admin-key-0123456789abcdef"

__all__ = ["ADMIN_KEY", "DATA_KEY", "OTHER_DATA_KEY"]
