"""Validation: run original and pruned models with onnxruntime and compare them."""
from .compare import Report, Tolerances, compare_models, parse_tolerances
from .report import format_report

__all__ = ["Report", "Tolerances", "compare_models", "parse_tolerances", "format_report"]
