"""Hypothesis settings of the property tests (``tests/test_property_*.py``).

Profiles (``HYPOTHESIS_PROFILE``):

* ``ci`` (default): derandomized -- every run draws the same examples, so a failure reproduces and CI time is
  fixed -- with each test's own fixed example count; no deadline (the Triton interpreter's first call
  compiles, and a shared CPU stalls).
* ``thorough``: random examples, ten times as many per test, for a search on a developer machine
  (``HYPOTHESIS_PROFILE=thorough python -m pytest tests/test_property_*.py``).
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("thorough", parent=settings.get_profile("ci"), derandomize=False)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "thorough"):
    raise ValueError(f"HYPOTHESIS_PROFILE must be ci or thorough, got {PROFILE!r}")
settings.load_profile(PROFILE)


def examples(n: int) -> int:
    """A test's example count: ``n`` under the CI profile, ``10 n`` under ``thorough``."""
    return n * (10 if PROFILE == "thorough" else 1)
