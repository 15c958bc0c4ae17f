"""onnxprune: structural pruning of ONNX models after training, without their framework.

Flow: ``rules → analysis → importance → planner → rewrite → validate``.
"""
from .api import Inspection, PruneResult, inspect, plan, prune
from .errors import OnnxPruneError, PlanError, UnsupportedModelError, ValidationError
from .planner import GroupPlan, Plan

__version__ = "0.1.0"

__all__ = [
    "inspect", "plan", "prune", "Plan", "GroupPlan", "Inspection", "PruneResult",
    "OnnxPruneError", "PlanError", "UnsupportedModelError", "ValidationError", "__version__",
]
