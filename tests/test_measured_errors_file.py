"""``tests/measured_errors.json`` names only tests that exist: a renamed or deleted test leaves no stale record
(its bound would silently stop applying to anything, and a later test of the same name would inherit it)."""
import json
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_every_recorded_test_exists():
    recorded = json.loads((TESTS / "measured_errors.json").read_text())
    stale = []
    for section in ("errors", "tags"):
        for node in recorded.get(section, {}):
            file, _, name = node.partition("::")
            function = re.sub(r"\[.*\]$", "", name)
            path = TESTS / file
            if not path.exists() or not re.search(rf"^def {re.escape(function)}\(", path.read_text(), re.M):
                stale.append(node)
    assert not stale, f"records of tests that no longer exist (delete them from measured_errors.json): {stale}"
