"""Tracing from the standard variables: the SDK's tracer provider, its exporters, sampler and resource.

Read as every OpenTelemetry SDK reads them (https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/):

- ``OTEL_TRACES_EXPORTER``: ``otlp`` (the default once an endpoint is set), ``console`` or ``none``,
  comma-separated for several;
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``), ``..._HEADERS``, ``..._TIMEOUT``,
  ``..._COMPRESSION``, ``..._CERTIFICATE``: read by the OTLP exporter itself; its protocol is
  ``http/protobuf``, the specification's default (the Python SDK's own default is gRPC, which
  ``eventworker[otel]`` does not install: ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` needs
  ``opentelemetry-exporter-otlp-proto-grpc``);
- ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG``: the six standard samplers
  (``parentbased_always_on`` by default, ``parentbased_traceidratio`` with a ratio to sample a share);
- ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``; ``OTEL_BSP_*`` (the batch span processor's
  delays and sizes); ``OTEL_SPAN_LINK_COUNT_LIMIT`` (128 links a span).

A value eventworker cannot honour is a :class:`~worker.errors.ConfigError` naming the variable, where
the SDK would log a warning and fall back to something else.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from typing import Final

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from worker import __version__
from worker.errors import ConfigError
from worker.logging import get_logger, redact_text
from worker.tracing.otel import DropOrphanClients, OtelTracing

log = get_logger("eventworker.tracing")

DEFAULT_SAMPLER: Final = "parentbased_always_on"
_SAMPLERS: Final = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
#: OTLP protocols by name; http/protobuf is the one the otel extra installs.
HTTP_PROTOBUF: Final = "http/protobuf"
_GRPC_EXPORTER: Final = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"


def _ratio(environ: Mapping[str, str]) -> float:
    raw = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if not raw:
        return 1.0
    try:
        ratio = float(raw)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError("OTEL_TRACES_SAMPLER_ARG", f"{raw!r}: a sampling ratio is a number from 0 to 1")
    return ratio


def sampler_from(environ: Mapping[str, str]) -> Sampler:
    """The sampler ``OTEL_TRACES_SAMPLER`` (and its ``_ARG``) name; ``parentbased_always_on`` by default."""
    name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or DEFAULT_SAMPLER
    if name not in _SAMPLERS:
        raise ConfigError(
            "OTEL_TRACES_SAMPLER",
            f"{name!r} is not a sampler eventworker knows: one of {', '.join(_SAMPLERS)}",
        )
    kind = name.removeprefix("parentbased_")
    root: Sampler
    if kind == "always_on":
        root = ALWAYS_ON
    elif kind == "always_off":
        root = ALWAYS_OFF
    else:
        root = TraceIdRatioBased(_ratio(environ))
    return ParentBased(root) if name.startswith("parentbased_") else root


def _otlp(environ: Mapping[str, str]) -> SpanExporter:
    """The OTLP exporter of the configured protocol; it reads its endpoint, headers and timeout itself."""
    setting = (
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        if environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "").strip()
        else "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    protocol = environ.get(setting, "").strip().lower() or HTTP_PROTOBUF
    if protocol == HTTP_PROTOBUF:
        return OTLPSpanExporter()
    if protocol == "grpc":
        try:
            module = importlib.import_module(_GRPC_EXPORTER)
        except ImportError:
            raise ConfigError(
                setting,
                "grpc needs opentelemetry-exporter-otlp-proto-grpc, which eventworker[otel] does not install;"
                f" use {HTTP_PROTOBUF} (the default) or install it",
            ) from None
        exporter: SpanExporter = module.OTLPSpanExporter()
        return exporter
    raise ConfigError(setting, f"{protocol!r}: eventworker exports traces over {HTTP_PROTOBUF} or grpc")


def exporters_from(environ: Mapping[str, str]) -> list[SpanExporter]:
    """The exporters ``OTEL_TRACES_EXPORTER`` lists (``otlp`` when it is unset and an endpoint is)."""
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    exporters: list[SpanExporter] = []
    for name in names:
        if name in ("", "none"):
            continue
        if name == "otlp":
            exporters.append(_otlp(environ))
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        else:
            raise ConfigError(
                "OTEL_TRACES_EXPORTER", f"{name!r} is not an exporter eventworker has: otlp, console or none"
            )
    return exporters


def resource_for(service: str) -> Resource:
    """The resource of the variables (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``), with
    ``service`` as the service's name when they give none, and eventworker's version."""
    detected = Resource.create()
    defaults: dict[str, str] = {}
    if str(detected.attributes.get("service.name", "")).startswith("unknown_service"):
        defaults["service.name"] = service
    if "service.version" not in detected.attributes:
        defaults["service.version"] = __version__
    return detected.merge(Resource(defaults))


def configure(
    service: str,
    secrets: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    *,
    set_global: bool = True,
) -> OtelTracing:
    """A tracer provider exporting as the variables say (``set_global``: made OpenTelemetry's global
    one), with Redis instrumented; the tracing to install (:func:`worker.tracing.hooks.start` does)."""
    environ = os.environ if environ is None else environ
    exporters = exporters_from(environ)
    sampler = sampler_from(environ)
    resource = resource_for(service)
    provider = TracerProvider(sampler=DropOrphanClients(sampler), resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if set_global:  # handlers (the user's code) make their own spans through the global provider
        trace.set_tracer_provider(provider)
    tracing = OtelTracing(provider, secrets=secrets)
    tracing.instrument_redis()
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    otlp = any(isinstance(exporter, OTLPSpanExporter) for exporter in exporters)
    log.info(
        "tracing.started",
        service=resource.attributes.get("service.name"),
        exporters=[type(exporter).__name__ for exporter in exporters],
        endpoint=redact_text(endpoint or "http://localhost:4318", secrets) if otlp else None,
        sampler=sampler.get_description(),
    )
    return tracing
