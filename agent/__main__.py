"""`lockstep-agent` and `python -m agent`: the agent's command line (agent/cli.py), in a process without OpenSSL.

The agent serves plain HTTP and makes no outbound connection, but the standard library loads OpenSSL on the way:
http.server imports http.client, which imports `ssl`, and pydantic imports `secrets`, whose `hmac` imports
`_hashlib`. Both are optional imports, and both modules fall back to what they need without them (hashlib to its
built-in hashes). Marking them absent before anything is imported leaves libssl and libcrypto unloaded: ~4.8 MB
of the agent's RSS. Only this entry point does so; a test process that imports the agent's modules keeps TLS.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

LEFT_OUT = ("ssl", "_ssl", "_hashlib")  # `import ssl` then raises ImportError, which its importers expect


def main(argv: Sequence[str] | None = None) -> int:
    leave_out_tls()
    from agent.cli import main as run  # noqa: PLC0415 - after leave_out_tls, which must come first

    return run(argv)


def leave_out_tls() -> None:
    """Make `ssl` and `_hashlib` unimportable in this process, unless something imported them already."""
    for name in LEFT_OUT:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None marks a module as not importable


if __name__ == "__main__":
    sys.exit(main())
