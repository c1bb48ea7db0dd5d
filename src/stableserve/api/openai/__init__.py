"""OpenAI-compatible adapter: ``/v1/images/{generations,edits,variations}``, signed image links,
and the ``/v1/models`` catalog, over the shared core (same keys, ledger and jobs)."""
