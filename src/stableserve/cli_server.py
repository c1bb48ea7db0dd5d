"""``stableserve serve`` and ``stableserve dev-setup``: run the HTTP server; prepare a dev account."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console

from stableserve.errors import StableServeError

err = Console(stderr=True, soft_wrap=True)


def _settings(engines: str | None):
    from stableserve.settings import get_settings

    settings = get_settings()
    return settings.model_copy(update={"engines": engines}) if engines else settings


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    engines: Annotated[str | None, typer.Option(help="Registry: demo, public or a YAML file.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run the API server (REST v1 / v1beta / v1alpha) with uvicorn; migrates the database first."""
    import uvicorn

    from stableserve.api.app import build_app
    from stableserve.db.migrate import upgrade
    from stableserve.inference.loading import quiet_libraries

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    settings = _settings(engines)
    try:
        upgrade(settings)
        app = build_app(settings)
    except StableServeError as exc:
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        raise typer.Exit(2) from None
    err.print(
        f"stableserve on http://{host}:{port} (engines: {settings.engines}, data: {settings.home})",
        highlight=False,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), access_log=False)


def dev_setup(
    port: Annotated[int, typer.Option(help="Port used in the printed curl command.")] = 8000,
) -> None:
    """Migrate, make sure the development org 'dev' and an API key exist, print a curl command."""
    from stableserve.accounts.orgs import ensure_dev_account
    from stableserve.db.migrate import upgrade

    settings = _settings(None)
    upgrade(settings)
    _org, key = ensure_dev_account(settings)
    if key:
        err.print(
            "Created the development organization 'dev' and its API key (shown only this once):",
            highlight=False,
        )
        print(f"export STABILITY_API_KEY={key}")
    else:
        err.print(
            "Development organization 'dev' exists; use the key printed when it was created, "
            "or make a new one: export STABILITY_API_KEY=$(.venv/bin/stableserve keys create --org dev)",
            highlight=False,
        )
    err.print(
        "Try it:\n"
        f"  curl -sS -X POST http://127.0.0.1:{port}/v1/generation/stable-diffusion-v1-5/text-to-image "
        '-H "Authorization: Bearer $STABILITY_API_KEY" -H "Content-Type: application/json" '
        '-H "Accept: image/png" -d \'{"text_prompts": [{"text": "A lighthouse on a cliff"}], '
        '"steps": 20}\' -o lighthouse.png',
        highlight=False,
    )
