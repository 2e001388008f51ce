"""Incidents as single-line JSON logs, and optional CloudWatch Embedded Metric Format lines."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["Metric", "emit_metric", "log_incident", "logger"]

logger = logging.getLogger("lambda_adapter")


class Metric:
    """The metric names counted in EMF lines."""

    GATEWAY_TIMEOUT = "GatewayTimeout"
    FALLBACK = "Fallback"
    REPLAY = "Replay"
    IN_PROGRESS = "InProgress"


def log_incident(level: int, incident: str, message: str, **details: Any) -> None:
    """One JSON object on one line: what happened, then the details that locate it."""
    if logger.isEnabledFor(level):
        record = {"incident": incident, "level": logging.getLevelName(level), "message": message}
        logger.log(level, json.dumps({**record, **details}, default=str))


def emit_metric(namespace: str | None, function_name: str, name: str) -> None:
    """Count one ``name`` event; CloudWatch turns the stdout line into a metric."""
    if namespace is None:
        return
    line = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [["FunctionName"]],
                    "Metrics": [{"Name": name, "Unit": "Count"}],
                }
            ],
        },
        "FunctionName": function_name,
        name: 1,
    }
    sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
    sys.stdout.flush()
