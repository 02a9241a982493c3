"""Metrics: functions registered by name that read a trained model through the method interface only.

Each metric is ``fn(ctx: EvalContext) -> dict[str, float]`` and writes stable keys into the run's
``metrics.json`` (documented in docs/metrics.md). The registry imports every module here.
"""
