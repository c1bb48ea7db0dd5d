"""Job events: what an ``Executor`` reports about a job, in order.

A job produces ``Queued``, then ``Started``, any number of ``Progress``, then exactly one
terminal event: ``Succeeded``, ``Failed`` or ``Cancelled``. A job cancelled (or failed by a
shutdown) while still queued goes straight from ``Queued`` to its terminal event.

Events are frozen, picklable dataclasses (they cross process boundaries) and know nothing
of any wire protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stableserve.core.types import Artifact
from stableserve.errors import (
    EngineNotReady,
    GenerationCancelled,
    GenerationFailed,
    InvalidRequest,
    NotFound,
    StableServeError,
)

SERVER_ERROR_MESSAGE = "An unexpected server error occurred, please try again."
"""The generic message of a ``server_error`` (CONTRACT.md §2.6); details go to the log only."""


@dataclass(frozen=True)
class Queued:
    """The job was accepted by the executor and waits for a worker."""

    job_id: str


@dataclass(frozen=True)
class Started:
    """A worker began the job; ``attempt`` counts from 1."""

    job_id: str
    attempt: int = 1


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` denoising steps are finished (0 <= done <= total).

    Executors rate-limit these to about 10 per second per job; the last step is always sent.
    """

    job_id: str
    done: int
    total: int


@dataclass(frozen=True)
class Succeeded:
    """The job finished; ``artifacts`` hold the images with their bytes, ``index`` order."""

    job_id: str
    artifacts: list[Artifact] = field(default_factory=list)


# Domain error classes a ``Failed`` event can name; anything else is a GenerationFailed.
_ERRORS: dict[str, type[StableServeError]] = {
    "InvalidRequest": InvalidRequest,
    "EngineNotReady": EngineNotReady,
    "NotFound": NotFound,
    "GenerationFailed": GenerationFailed,
}


@dataclass(frozen=True)
class Failed:
    """The job failed; no credits are charged.

    - ``code``: machine name, e.g. ``server_error``, ``worker_crashed``, ``server_restarted``,
      ``server_shutdown``, ``engine_not_ready`` or an ``InvalidRequest`` code such as
      ``invalid_pixel_count``.
    - ``message``: human message safe to show to the client (``server_error`` and crashes
      carry a generic one; details are logged).
    - ``param``: the request field an ``InvalidRequest`` concerns, else ``None``.
    - ``error``: name of the domain error class to raise for it (``InvalidRequest``,
      ``EngineNotReady``, ``NotFound`` or ``GenerationFailed``).
    """

    job_id: str
    code: str
    message: str
    param: str | None = None
    error: str = "GenerationFailed"

    @classmethod
    def from_error(cls, job_id: str, exc: StableServeError) -> Failed:
        """A ``Failed`` event carrying ``exc``'s class name, code, message and param."""
        name = type(exc).__name__ if type(exc).__name__ in _ERRORS else "GenerationFailed"
        return cls(job_id, exc.code, exc.message, exc.param, name)

    def to_error(self) -> StableServeError:
        """The domain error this failure stands for (``GenerationFailed`` unless named otherwise)."""
        cls = _ERRORS.get(self.error, GenerationFailed)
        return cls(self.message, code=self.code, param=self.param)


@dataclass(frozen=True)
class Cancelled:
    """The job was cancelled (while queued, or between two denoising steps); no credits are charged."""

    job_id: str

    def to_error(self) -> GenerationCancelled:
        """The ``GenerationCancelled`` error for this job."""
        return GenerationCancelled(f"job {self.job_id} was cancelled")


@dataclass(frozen=True)
class WorkerStats:
    """What running a job cost the worker, sent just before its terminal event (not a state
    change): ``loads`` the engines it had to load, as ``(engine_id, seconds)``; ``device``
    (``cpu``, ``cuda:0`` ...) and, on a GPU, ``memory_allocated`` / ``memory_reserved``
    bytes of torch's allocator afterwards (None elsewhere)."""

    job_id: str
    loads: tuple[tuple[str, float], ...] = ()
    device: str = "cpu"
    memory_allocated: int | None = None
    memory_reserved: int | None = None


JobEvent = Queued | Started | Progress | Succeeded | Failed | Cancelled | WorkerStats
"""Any job event."""

TERMINAL_EVENTS = (Succeeded, Failed, Cancelled)
"""Event classes that end a job (use with ``isinstance``)."""


def is_terminal(event: JobEvent) -> bool:
    """True for ``Succeeded``, ``Failed`` and ``Cancelled``."""
    return isinstance(event, TERMINAL_EVENTS)
