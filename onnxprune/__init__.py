"""onnxprune: structural pruning of ONNX models after training, without their framework.

Flow: ``rules → analysis → importance → planner → rewrite → validate``.
"""
from .errors import OnnxPruneError, PlanError, UnsupportedModelError, ValidationError

try:
    from .api import Inspection, PruneResult, inspect, plan, prune
    from .planner import GroupPlan, Plan
except KeyboardInterrupt:  # Ctrl-C while the command line imports its modules: no traceback
    import os as _os
    import sys as _sys

    if _sys.argv and _os.path.basename(_sys.argv[0]) in ("onnxprune", "-m", "__main__.py"):
        print("onnxprune: interrupted", file=_sys.stderr)
        raise SystemExit(130) from None
    raise

__version__ = "0.1.0"

__all__ = [
    "inspect", "plan", "prune", "Plan", "GroupPlan", "Inspection", "PruneResult",
    "OnnxPruneError", "PlanError", "UnsupportedModelError", "ValidationError", "__version__",
]
