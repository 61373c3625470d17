"""Domain errors raised by the engine. `app.api.errors` maps each to one HTTP status."""

from __future__ import annotations


class EngineError(Exception):
    """Base class; `param` names the request field at fault, where there is one."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(EngineError):
    """A request that can never succeed as written (bad value, too long for the model)."""


class QueueCapacityExceeded(InvalidRequest):
    """The request's prompts hold more tokens than the waiting queue ever holds: it can
    never be admitted, whatever the load (so not QueueFull)."""

    def __init__(self, tokens: int, capacity: int) -> None:
        super().__init__(f"the request's prompts total {tokens} tokens, more than the waiting "
                         f"queue ever holds ({capacity}, the scheduler's max_waiting_tokens); "
                         "send fewer or shorter prompts")
        self.tokens = tokens
        self.capacity = capacity


class QueueFull(EngineError):
    """Admission refused: the waiting queue is at its request or token bound. Retry later."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineDead(EngineError):
    """The engine stopped after an unrecoverable failure; the process should be restarted."""


class EngineStopped(EngineError):
    """The engine is shutting down (draining) and takes no new work."""


class StepFailed(EngineError):
    """A forward step raised; only the requests in that step fail."""


class RequestCancelled(EngineError):
    """The request was aborted (client went away, or an explicit abort)."""


class AdapterNotFound(EngineError):
    """The request names a LoRA adapter this engine has not loaded (or is unloading)."""
