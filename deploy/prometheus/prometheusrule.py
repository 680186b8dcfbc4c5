#!/usr/bin/env python3
"""Writes deploy/k8s/components/monitoring/prometheusrule.yaml: the rules of
deploy/prometheus/alerts.yml as a Prometheus Operator PrometheusRule, so that
compose and Kubernetes alert on the same rules. deploy/check.sh fails when
the committed file differs from what this writes.

Usage: python3 deploy/prometheus/prometheusrule.py [--check]
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE / "alerts.yml"
TARGET = HERE.parent / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by
# deploy/prometheus/prometheusrule.py: edit alerts.yml and run it again.
# `release` is the label kube-prometheus-stack's Prometheus selects rules by,
# by default; set yours in the overlay.
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL, descriptions) as literal blocks."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def render() -> str:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "ttsq",
            "labels": {"app.kubernetes.io/name": "ttsq", "release": "kube-prometheus-stack"},
        },
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(rule, Dumper=_Dumper, sort_keys=False, width=100,
                              allow_unicode=True)


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} differs from {ALERTS}: run python3 {__file__}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
