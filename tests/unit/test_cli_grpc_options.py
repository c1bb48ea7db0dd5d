"""``stableserve serve --grpc-*``: options land in ``settings.grpc``; bad ones are clean errors."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from stableserve.cli import app
from stableserve.cli_certs import write_dev_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return write_dev_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def captured(monkeypatch):
    """Stop ``serve`` before it serves: record the settings ``build_app`` gets and uvicorn's call."""
    import uvicorn

    import stableserve.api.app

    seen: dict = {}
    monkeypatch.setattr(stableserve.api.app, "build_app", lambda s: seen.setdefault("settings", s))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.setdefault("uvicorn", kw))
    return seen


def _serve(*args: str):
    return CliRunner().invoke(app, ["serve", *args])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--grpc-port", "8443"], "needs --grpc-tls-cert FILE and --grpc-tls-key FILE"),
        (["--grpc-port", "8443", "--grpc-tls-cert", "{server}"], "needs --grpc-tls-cert"),
        (["--grpc-port", "8443", "--grpc-tls-cert", "/nope.pem", "--grpc-tls-key", "{key}"], "/nope.pem"),
        (["--grpc-port", "8443", "--grpc-tls-cert", "{server}", "--grpc-tls-key", "{ca_key}"], "not the key"),
        (["--grpc-port", "8443", "--grpc-tls-cert", "{key}", "--grpc-tls-key", "{key}"], "not a PEM cert"),
        (["--grpc-port", "8443", "--grpc-tls-cert", "{server}", "--grpc-tls-key", "{server}"], "private key"),
        (["--grpc-tls-cert", "{server}"], "only used with --grpc-port"),
        (["--grpc-insecure-port", "50051"], "needs --grpc-insecure-org"),
        (["--grpc-insecure-org", "dev"], "only used with --grpc-insecure-port"),
        (["--port", "8443", "--grpc-port", "8443", "--grpc-tls-cert", "{server}", "--grpc-tls-key", "{key}"],
         "same port"),
    ],
)  # fmt: skip
def test_bad_grpc_options_exit_2_without_traceback(certs, captured, args, fragment):
    names = {"server": certs.server, "key": certs.server_key, "ca_key": certs.ca_key}
    result = _serve(*(a.format(**names) for a in args))
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and fragment in result.output
    assert "Traceback" not in result.output
    assert "settings" not in captured  # refused before building the app


def test_tls_and_insecure_ports_reach_the_settings(certs, captured):
    from stableserve.accounts.orgs import create_org
    from stableserve.db.migrate import upgrade
    from stableserve.db.session import session_factory
    from stableserve.settings import get_settings

    settings = get_settings()
    upgrade(settings)
    with session_factory(settings).begin() as session:
        create_org(session, "grpc-local")
    tls, plain = _free_port(), _free_port()
    result = _serve(
        "--port", "8100",
        "--grpc-port", str(tls),
        "--grpc-tls-cert", str(certs.server), "--grpc-tls-key", str(certs.server_key),
        "--grpc-insecure-port", str(plain), "--grpc-insecure-org", "grpc-local",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    grpc = captured["settings"].grpc
    assert (grpc.host, grpc.port) == ("127.0.0.1", tls)
    assert (grpc.insecure_port, grpc.insecure_org) == (plain, "grpc-local")
    assert (grpc.tls_cert, grpc.tls_key) == (certs.server, certs.server_key)
    assert captured["uvicorn"]["port"] == 8100
    assert f"gRPC (stability-sdk) on 127.0.0.1:{tls} (TLS" in result.output
    assert f"on 127.0.0.1:{plain} (plaintext, local use only" in result.output


def test_a_busy_grpc_port_is_a_clean_error(certs, captured):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _serve(
            "--grpc-port", str(port),
            "--grpc-tls-cert", str(certs.server), "--grpc-tls-key", str(certs.server_key),
        )  # fmt: skip
    assert result.exit_code == 2
    assert f"--grpc-port: cannot listen on 127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output and "settings" not in captured


def test_insecure_org_must_exist(captured):
    result = _serve("--grpc-insecure-port", str(_free_port()), "--grpc-insecure-org", "no-such-org")
    assert result.exit_code == 2
    assert "organization no-such-org not found" in result.output and "Traceback" not in result.output


def test_no_grpc_options_leave_grpc_off(captured):
    result = _serve()
    assert result.exit_code == 0, result.output
    assert captured["settings"].grpc.port is None and captured["settings"].grpc.insecure_port is None
    assert "gRPC" not in result.output
