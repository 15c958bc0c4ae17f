"""Helpers for tests and benchmarks: a graph builder, generated architectures, the oracle."""
from .archs import ARCHS
from .builder import Net
from .oracle import check_oracle, random_feeds, run, zero_consumers

__all__ = ["ARCHS", "Net", "check_oracle", "random_feeds", "run", "zero_consumers"]
