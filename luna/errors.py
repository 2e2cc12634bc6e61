"""Outcomes a handler or adapter can signal to the claim loop (shared core: the AI provider in
luna.ai raises them too; worker.errors is the same module under the worker's name)."""


class JobError(Exception):
    """A failed attempt. retryable=True retries with backoff; False ends in the final error status."""

    def __init__(self, message: str, *, retryable: bool = True, code: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.code = code
        self.retry_after = retry_after


class Permanent(JobError):
    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message, retryable=False, code=code)


class BreakerOpen(Exception):
    """The module's circuit breaker is open: the work waits (it does not fail)."""

    def __init__(self, module: str, wait_seconds: float = 5.0):
        super().__init__(f"circuit breaker for {module!r} is open")
        self.module = module
        self.wait_seconds = wait_seconds
