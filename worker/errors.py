"""The worker's name for luna.errors (the outcomes are shared by the core, edge and the worker)."""

from luna.errors import BreakerOpen, JobError, Permanent

__all__ = ["BreakerOpen", "JobError", "Permanent"]
