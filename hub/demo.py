"""``yijian demo``: placeholder until the demo data set lands (see below)."""

from __future__ import annotations


def run_demo(host: str, port: int) -> None:  # replaced below in this session
    raise SystemExit("demo not yet available")
