"""Whether the OTEL_* environment turns tracing on, and what it warns about (``proxy.tracing``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proxy import cli, tracing
from proxy.tracing import plan
from tests.conftest import LogCapture


@pytest.mark.parametrize(
    ("environ", "exporters"),
    [
        ({}, ()),
        ({"OTEL_TRACES_EXPORTER": ""}, ()),
        ({"OTEL_TRACES_EXPORTER": "none"}, ()),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": " OTLP , console "}, ("otlp", "console")),
        ({"OTEL_TRACES_EXPORTER": "otlp,otlp"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "console"}, ("console",)),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}, ()),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"}, ("otlp",)),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            ("otlp",),
        ),
    ],
)
def test_tracing_is_on_only_when_an_exporter_shipped_is_named(
    environ: dict[str, str], exporters: tuple[str, ...]
) -> None:
    """Unset, empty, ``none`` or OTEL_SDK_DISABLED=true: off; otlp and console each once."""
    chosen = plan(environ)
    assert chosen.exporters == exporters
    assert chosen.on is bool(exporters)
    assert chosen.warnings == ()
    assert chosen.describe() == (",".join(exporters) or "off")


@pytest.mark.parametrize("protocol", ["grpc", "http/json", "GRPC"])
def test_an_otlp_protocol_not_shipped_turns_otlp_off_with_a_warning(protocol: str) -> None:
    """gRPC or JSON over OTLP: the otlp exporter stays off, and one warning names the variable."""
    chosen = plan({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol})
    assert chosen.exporters == ()
    (warning,) = chosen.warnings
    assert f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol.lower()!r}" in warning
    assert "http/protobuf" in warning


def test_the_traces_protocol_wins_over_the_general_one() -> None:
    """OTEL_EXPORTER_OTLP_TRACES_PROTOCOL decides for traces whatever the general one says."""
    ok = plan(
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        }
    )
    assert (ok.exporters, ok.warnings) == (("otlp",), ())
    refused = plan(
        {"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}
    )
    assert refused.exporters == ("console",)
    assert "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='grpc'" in refused.warnings[0]


def test_an_exporter_not_shipped_is_ignored_with_a_warning() -> None:
    """zipkin (say) beside otlp: otlp is started, zipkin named in a warning."""
    chosen = plan({"OTEL_TRACES_EXPORTER": "zipkin,otlp"})
    assert chosen.exporters == ("otlp",)
    (warning,) = chosen.warnings
    assert "'zipkin'" in warning


def test_check_config_says_what_run_would_warn_about_tracing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config prints the OTEL_* warnings `run` logs at start, and still exits 0."""
    for key in [key for key in os.environ if key.startswith(("OTEL_", "DEFENDER_PROXY_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    path = tmp_path / "proxy.yaml"
    path.write_text("listen: 127.0.0.1:8080\n")
    assert cli.main(["check-config", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{path}: ok")
    (line,) = captured.err.splitlines()
    assert line == f"warning: {plan(dict(os.environ)).warnings[0]}"


def test_settings_the_sdk_refuses_leave_tracing_off_and_the_proxy_running(
    monkeypatch: pytest.MonkeyPatch, captured_logs: LogCapture
) -> None:
    """A batch larger than the SDK's queue makes the SDK raise: tracing is off, said in an error
    line, and start returns normally."""
    for key in [key for key in os.environ if key.startswith("OTEL_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "5000")
    chosen, spans = tracing.start()
    assert spans is None
    assert chosen.describe() == "off"
    assert "max_export_batch_size" in chosen.warnings[-1]
    (line,) = captured_logs.lines("tracing not started")
    assert line["level"] == "error"
    assert "max_export_batch_size" in line["error"]
