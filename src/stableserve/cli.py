"""The ``stableserve`` command line (typer + rich).

Commands: ``generate`` (one request through the runner, with a progress bar),
``engines list`` (id, family, price, last-hour latency and success, ready or not and why),
``models pull`` (fetch real weights);
``serve``/``dev-setup`` (``cli_server``), ``orgs``/``keys``/``credits``/``db`` (``cli_accounts``),
``certs dev`` (``cli_certs``: a local CA and server certificate for the gRPC TLS port).
Every expected failure prints ``error: ...`` and exits with status 2, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from stableserve.core.engines import EngineRegistry, load_registry
from stableserve.core.types import GenerationRequest, ImageInput, MaskSource, Sampler, Task, WeightedPrompt
from stableserve.errors import StableServeError
from stableserve.settings import Settings, get_settings

app = typer.Typer(
    help="stableserve: a self-hosted Stability-compatible image generation server.",
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    add_completion=False,
)
engines_app = typer.Typer(help="Inspect the engine registry.", no_args_is_help=True)
models_app = typer.Typer(help="Manage model weights.", no_args_is_help=True)
app.add_typer(engines_app, name="engines")
app.add_typer(models_app, name="models")

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

EnginesOpt = Annotated[
    str | None,
    typer.Option(
        "--engines",
        help="Registry: 'demo' (tiny offline pipelines), 'public' (real weights) or a YAML "
        "file. Default: $STABLESERVE_ENGINES or 'demo'.",
    ),
]


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=2)


def _context(engines: str | None) -> tuple[Settings, EngineRegistry]:
    import warnings

    from stableserve.inference.loading import quiet_libraries

    warnings.filterwarnings("ignore", category=FutureWarning)
    quiet_libraries()
    settings = get_settings()
    if engines:
        settings = settings.model_copy(update={"engines": engines})
    try:
        return settings, load_registry(settings.engines)
    except StableServeError as exc:
        raise _fail(exc.message) from None


def _read(path: Path | None, what: str) -> ImageInput | None:
    if path is None:
        return None
    try:
        return ImageInput(data=path.read_bytes())
    except OSError as exc:
        raise _fail(f"{what}: cannot read {path}: {exc.strerror}") from None


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="Text prompt; '(word:1.3)' emphasis works.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="PNG to write (samples > 1: NAME-0.png, ...).")
    ] = Path("out.png"),
    engine: Annotated[str, typer.Option("--engine", "-e", help="Engine id.")] = "stable-diffusion-v1-5",
    engines: EnginesOpt = None,
    negative_prompt: Annotated[str | None, typer.Option("--negative-prompt", "-n")] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, max=150, help="Denoising steps (engine default).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, max=4294967295, help="0 = random.")] = 0,
    cfg_scale: Annotated[float, typer.Option(min=0, max=35, help="Guidance scale.")] = 7.0,
    sampler: Annotated[
        Sampler | None, typer.Option(case_sensitive=False, help="Sampler (engine default).")
    ] = None,
    width: Annotated[
        int | None, typer.Option(min=1, help="Pixels (engine default; upscale: target width).")
    ] = None,
    height: Annotated[
        int | None, typer.Option(min=1, help="Pixels (engine default; upscale: target height).")
    ] = None,
    samples: Annotated[int, typer.Option(min=1, max=10)] = 1,
    style_preset: Annotated[str | None, typer.Option(help="One of the 17 Stability style presets.")] = None,
    init_image: Annotated[
        Path | None, typer.Option(help="Init image: image-to-image, masking or upscale.")
    ] = None,
    image_strength: Annotated[
        float | None,
        typer.Option(
            min=0, max=1, help="How much of the init image to keep (v1 image_strength; default 0.35)."
        ),
    ] = None,
    mask: Annotated[Path | None, typer.Option(help="Mask image (makes it a masking request).")] = None,
    mask_source: Annotated[
        MaskSource | None,
        typer.Option(
            case_sensitive=False,
            help="Default MASK_IMAGE_WHITE with --mask, else INIT_IMAGE_ALPHA when the init image has alpha.",
        ),
    ] = None,
    control_image: Annotated[
        Path | None, typer.Option(help="Control image of a ControlNet engine (a sketch, an image's edges).")
    ] = None,
    control_strength: Annotated[
        float | None, typer.Option(min=0, max=1, help="ControlNet scale (0.7).")
    ] = None,
    style_image: Annotated[Path | None, typer.Option(help="Style reference of an IP-Adapter engine.")] = None,
    style_strength: Annotated[
        float | None, typer.Option(min=0, max=1, help="IP-Adapter scale (0.5).")
    ] = None,
) -> None:
    """Generate an image offline with the runner and write it as PNG.

    The task follows the engine and options: upscalers upscale and matting/segmentation
    engines remove the background of ``--init-image``; ``--mask`` masks; ``--init-image``
    alone is image-to-image; otherwise text-to-image (``--control-image`` for ControlNet
    engines, ``--style-image`` for IP-Adapter engines).
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from stableserve.inference.runner import Runner

    settings, registry = _context(engines)
    try:
        spec = registry.get(engine)
    except StableServeError as exc:
        raise _fail(exc.message) from None
    prompts = [WeightedPrompt(text=prompt, weight=1.0)] if prompt.strip() else []
    if negative_prompt:
        prompts.append(WeightedPrompt(text=negative_prompt, weight=-1.0))
    if spec.tasks in ((Task.UPSCALE,), (Task.REMOVE_BACKGROUND,)):
        task = spec.tasks[0]
    elif mask is not None or mask_source is not None:
        task = Task.MASKING
        mask_source = mask_source or (MaskSource.MASK_IMAGE_WHITE if mask else MaskSource.INIT_IMAGE_ALPHA)
    elif init_image is not None:
        task = Task.IMAGE_TO_IMAGE
    else:
        task = Task.TEXT_TO_IMAGE
    try:
        request = GenerationRequest(
            engine_id=engine,
            task=task,
            prompts=tuple(prompts),
            width=width,
            height=height,
            steps=steps,
            cfg_scale=cfg_scale,
            sampler=sampler,
            seed=seed,
            samples=samples,
            style_preset=style_preset,
            init_image=_read(init_image, "init image"),
            mask_image=_read(mask, "mask"),
            mask_source=mask_source,
            schedule_start=None if image_strength is None else 1.0 - image_strength,
            control_image=_read(control_image, "control image"),
            control_strength=control_strength,
            style_image=_read(style_image, "style image"),
            style_strength=style_strength,
        )
    except ValueError as exc:
        raise _fail(str(exc).splitlines()[-1] if str(exc) else "invalid request") from None
    if spec.is_demo:
        from stableserve.inference.demo_shapes import SHAPES_FAMILIES

        what = (
            "the small shapes model: it draws the coloured shapes a prompt names"
            if spec.family in SHAPES_FAMILIES
            else "tiny random weights; images are noise-like"
        )
        err.print(
            f"note: {engine} is a demo engine ({what}). Use --engines public for real weights.",
            highlight=False,
        )
    runner = Runner(registry, settings)
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as bar:
            tid = bar.add_task(f"{engine} {task.value}", total=None)
            artifacts = runner.generate(request, progress=lambda d, t: bar.update(tid, completed=d, total=t))
    except StableServeError as exc:
        raise _fail(exc.message) from None
    output.parent.mkdir(parents=True, exist_ok=True)
    for art in artifacts:
        path = (
            output if len(artifacts) == 1 else output.with_name(f"{output.stem}-{art.index}{output.suffix}")
        )
        path.write_bytes(art.data)
        out.print(f"wrote {path} ({art.width}x{art.height}, seed {art.seed})", highlight=False)


def _recent_stats(settings: Settings) -> dict | None:
    """``jobs.stats.engine_stats`` of the last hour, or ``None`` when the database cannot be
    read (missing SQLite file, not migrated, unreachable server). Never creates a database."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy.engine import make_url

    from stableserve.db.session import session_factory
    from stableserve.jobs.stats import engine_stats

    try:
        url = make_url(settings.db_url)
        if url.get_backend_name() == "sqlite" and not (url.database and Path(url.database).is_file()):
            return None
        with session_factory(settings)() as session:
            return engine_stats(session, datetime.now(UTC) - timedelta(hours=1))
    except Exception:  # any database problem: the listing still works, without stats
        return None


@engines_app.command("list")
def engines_list(engines: EnginesOpt = None) -> None:
    """List engines: id, family, tasks, credits per image at default settings, last-hour p50
    latency and success rate ("-" without data or database), ready or not and why."""
    from stableserve.core.pricing import default_price
    from stableserve.inference.loading import readiness

    settings, registry = _context(engines)
    stats = _recent_stats(settings) or {}
    table = Table(title=f"engines ({registry.origin})")
    for col in ("id", "family", "tasks", "price", "p50 1h", "success 1h", "ready", "why"):
        table.add_column(col, overflow="fold")
    for spec in registry.engines:
        r = readiness(spec, settings)
        st = stats.get(spec.id)
        p50 = st.p50_latency_ms if st else None
        rate = st.success_rate if st else None
        table.add_row(
            spec.id,
            spec.family.value,
            ", ".join(t.value for t in spec.tasks),
            f"{default_price(spec):g}",
            "-" if p50 is None else f"{p50 / 1000:.1f} s",
            "-" if rate is None else f"{rate:.0%}",
            "[green]yes[/]" if r.ready else "[red]no[/]",
            r.reason,
        )
    Console(width=max(200, out.width)).print(table)


@models_app.command("pull")
def models_pull(
    engine: Annotated[str, typer.Argument(help="Engine id.")], engines: EnginesOpt = None
) -> None:
    """Download an engine's weights into $STABLESERVE_HOME/models (demo engines: build them)."""
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    from stableserve.inference.loading import pull

    settings, registry = _context(engines)
    try:
        spec = registry.get(engine)
        if spec.source.kind == "hf":
            err.print(f"downloading {spec.source.repo}@{spec.source.revision} ...", highlight=False)
        with Progress(
            *Progress.get_default_columns(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err,
            transient=True,
        ) as bar:
            tid = bar.add_task(f"pull {engine}", total=None)
            location = pull(spec, settings, progress=lambda d, t: bar.update(tid, completed=d, total=t))
    except StableServeError as exc:
        raise _fail(exc.message) from None
    out.print(f"{engine} is ready: {location}", highlight=False)

# -- server commands (stableserve.cli_server) ------------------------------------------------
from stableserve.cli_server import dev_setup, serve  # noqa: E402

app.command()(serve)
app.command("dev-setup")(dev_setup)


from stableserve.cli_accounts import register_accounts  # noqa: E402

register_accounts(app)

from stableserve.cli_certs import certs_app  # noqa: E402

app.add_typer(certs_app, name="certs")
