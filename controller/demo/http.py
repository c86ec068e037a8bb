"""Small blocking HTTP helpers the demo uses to wait for its services and read their APIs (stdlib only)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any


def get_json(url: str, timeout_seconds: float = 2.0) -> Any:
    """GET `url` and decode its JSON body; raises OSError (URLError) or ValueError on failure."""
    with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
        return json.loads(response.read())


def responds(url: str, timeout_seconds: float = 1.0) -> bool:
    """True if `url` answers 2xx right now."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
            return 200 <= response.status < 300
    except (OSError, ValueError):
        return False


def wait_until(
    check: Callable[[], bool], timeout_seconds: float, what: str, interval_seconds: float = 0.2
) -> None:
    """Poll `check` until it is true; raise TimeoutError naming `what` when `timeout_seconds` pass."""
    deadline = time.monotonic() + timeout_seconds
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_seconds:.0f} s")
        time.sleep(interval_seconds)
