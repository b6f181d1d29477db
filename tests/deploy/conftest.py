"""Long deploy tests run only when asked for: ``make test-arm64`` (-m arm64) and
``make test-fleet`` (-m fleet); the default ``make test`` leaves them out."""

from __future__ import annotations

import pytest

GATED = {
    "arm64": "the arm64 install test takes minutes: run it with `make test-arm64`",
    "fleet": "the fleet rollout test runs ansible against local sshd: `make test-fleet`",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    asked = config.getoption("markexpr", "") or ""
    for item in items:
        for marker, reason in GATED.items():
            if marker in item.keywords and marker not in asked:
                item.add_marker(pytest.mark.skip(reason=reason))
