"""Reading the service's own Prometheus counters: how many Checks it answered with which
grpc status (so h2load's HTTP-level "succeeded" can be verified) and how many results it
caches."""

from __future__ import annotations

import urllib.request
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families


def scrape(metrics_listen: str, timeout: float = 5.0) -> dict[str, list[tuple[dict, float]]]:
    url = f"http://{metrics_listen}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode()
    out: dict[str, list[tuple[dict, float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def check_codes(metrics_listen: str) -> Counter[str] | None:
    """Checks handled so far by grpc code, or None when the server exposes no such metric."""
    try:
        samples = scrape(metrics_listen).get("grpc_server_handled_total")
    except OSError:
        return None
    if samples is None:
        return None
    codes: Counter[str] = Counter()
    for labels, value in samples:
        if labels.get("grpc_method") == "Check":
            codes[labels.get("grpc_code", "?")] += int(value)
    return codes


def gauge(metrics_listen: str, name: str) -> float | None:
    try:
        samples = scrape(metrics_listen).get(name)
    except OSError:
        return None
    return sum(v for _, v in samples) if samples else None
