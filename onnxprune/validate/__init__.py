"""Validation: run original and pruned models with onnxruntime and compare them."""
from .compare import DEFAULTS, SCHEMA_VERSION, Report, Tolerances, compare_models, parse_tolerances
from .report import format_report

__all__ = ["DEFAULTS", "SCHEMA_VERSION", "Report", "Tolerances", "compare_models", "parse_tolerances", "format_report"]
