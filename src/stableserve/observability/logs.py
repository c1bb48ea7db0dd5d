"""Log records with the request id, as JSON lines (python-json-logger) or plain text.

Every record gets a ``request_id`` attribute: the id of the HTTP request or gRPC call being
served (the ``x-request-id`` response header, the ``id`` of an error body), or ``-`` outside
any request. ``api.app.RequestContext`` and the gRPC servicers set it in ``request_id_var``;
it follows the request into worker threads (``run_in_threadpool`` copies the context).

Prompts and images never reach a log line: the request log records method, path, status and
timing; the generation line records engine, task, sizes and job id. Only with
``settings.logs.include_prompts`` does the generation line carry the prompt texts (images are
never logged).
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

request_id_var: ContextVar[str | None] = ContextVar("stableserve_request_id", default=None)
"""The id of the request being served in this context (None outside requests)."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (``request_id_var``, or ``-``) to every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always True; sets ``request_id`` unless the record already has one."""
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get() or "-"
        return True


def formatter(fmt: Literal["json", "text"]) -> logging.Formatter:
    """One JSON object per line (keys ``time``, ``level``, ``logger``, ``request_id``,
    ``message`` and any ``extra=``), or the plain text line ``TEXT_FORMAT``."""
    if fmt == "json":
        return JsonFormatter(
            JSON_FIELDS,
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            timestamp=False,
        )
    return logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str = "info", fmt: Literal["json", "text"] = "json") -> None:
    """Route every log record (stableserve's, uvicorn's, libraries') through one stderr handler
    with ``RequestIdFilter`` and ``formatter(fmt)``, at ``level`` (debug/info/warning/error).
    Replaces handlers a previous call installed; raises ``ValueError`` for an unknown level."""
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter(fmt))
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
