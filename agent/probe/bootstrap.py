"""Entry point of the `lockstep-probe.pth` bootstrap: installs the probe when LOCKSTEP_PROBE is on.

The .pth line itself checks the variable, so with it unset Python never imports this module.
"""

from __future__ import annotations

import os
import sys

ON = ("1", "true", "yes", "on")  # how an environment switch says on (agent.probe.switch) ...
OFF = ("0", "false", "no", "off")  # ... and off


def activate() -> None:
    """Install the probe if LOCKSTEP_PROBE is on; any failure is reported on stderr once, never raised."""
    if os.environ.get("LOCKSTEP_PROBE", "").strip().lower() not in ON:
        return
    try:
        from agent.probe import install

        install()
    except Exception as exc:  # a broken probe must not stop the training process from starting
        print(f"lockstep probe disabled: {exc!r}", file=sys.stderr)
