"""Detection: pure functions from agents' evidence to findings and node verdicts (no Kubernetes, no HTTP).

`DetectionEngine.step` is the entry point the controller loop and `lockstep simulate` call every cycle.
"""

from controller.detect.config import DetectionConfig
from controller.detect.engine import DetectionEngine, DetectionResult

__all__ = ["DetectionConfig", "DetectionEngine", "DetectionResult"]
