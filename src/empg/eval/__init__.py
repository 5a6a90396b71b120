"""Evaluation (success per task type with confidence intervals) and plots."""

from empg.eval.stats import SuccessStats, success_table, wilson_interval

__all__ = ["SuccessStats", "success_table", "wilson_interval"]
