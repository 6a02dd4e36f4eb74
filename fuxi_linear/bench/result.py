"""What a benchmark run produces, :class:`BenchResult`: the rows, the settings, the machine and the notes that
the report (:mod:`fuxi_linear.bench.report`), the plot (:mod:`fuxi_linear.bench.plot`) and the demo read."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .settings import BenchSettings

Row = Dict[str, Any]


@dataclass
class BenchResult:
    """The rows of a run (one per model, stage and length; the throughput sweep's after them), the resolved
    settings, the machine, notes for the report, the machine's load before and after
    (:func:`fuxi_linear.bench.machine.load_snapshot`) and what the compiled regime compiled (one record per
    model, stage and length: seconds, graphs, failure)."""

    settings: BenchSettings
    machine: Dict[str, Any]
    rows: List[Row]
    notes: List[str]
    peak_gbs: Optional[float] = None
    load_before: Optional[Dict[str, Any]] = None
    load_after: Optional[Dict[str, Any]] = None
    compiles: List[Dict[str, Any]] = field(default_factory=list)

    def ms(self, model: str, stage: str, seq_len: int) -> Optional[float]:
        r = self.row(model, stage, seq_len)
        return r["ms"] if r is not None else None

    def row(self, model: str, stage: str, seq_len: int) -> Optional[Row]:
        for r in self.rows:
            if (r["model"], r["stage"], r["seq_len"]) == (model, stage, seq_len):
                return r
        return None

    @property
    def noisy_rows(self) -> List[Row]:
        """Timed rows whose repeats are too spread out to be read (``noisy`` True)."""
        return [r for r in self.rows if r.get("noisy")]

    @property
    def unjudged_rows(self) -> List[Row]:
        """Timed rows with too few repeats to judge their spread (``noisy`` None)."""
        return [r for r in self.rows if r.get("ms") is not None and r.get("noisy") is None]


__all__ = ["BenchResult", "Row"]
