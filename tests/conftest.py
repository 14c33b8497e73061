"""Shared fixtures: tiny models are built once per session, offline."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_flux():
    from sae_flux import Flux

    return Flux.tiny(seed=0)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line on the documentation's code blocks (tests/test_docs.py), when they were collected."""
    outcomes: dict[str, str] = {}
    for key in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(key, []):
            nodeid = getattr(report, "nodeid", "")
            if "test_docs.py::test_doc_block[" in nodeid and outcomes.get(nodeid) != "failed":
                outcomes[nodeid] = "failed" if key == "error" else key
    if not outcomes:
        return
    counts = {key: sum(1 for v in outcomes.values() if v == key) for key in ("passed", "failed", "skipped")}
    terminalreporter.write_line(
        f"docs: {len(outcomes)} code blocks, {counts['passed'] + counts['failed']} run "
        f"({counts['passed']} passed, {counts['failed']} failed), {counts['skipped']} marked not run "
        f"(list them with -rs)")
