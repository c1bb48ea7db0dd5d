"""REST v2beta adapter: ``/v2beta/stable-image/...`` and ``/v2beta/results/{id}`` (CONTRACT.md §3)."""
