"""Reading the run folders of a sweep: summary tables, figures, written comparison.

Entry points: :func:`write_sweep_report` (called by the Hydra callback when a multirun ends) and
``python tools/sweep_report.py <sweep folder> [--out DIR]``. See docs/sweeps.md.
"""

from .collect import Run, collect_runs, component_label, find_run_dirs, label_matches
from .sweep_report import main, write_sweep_report

__all__ = [
    "Run",
    "collect_runs",
    "component_label",
    "find_run_dirs",
    "label_matches",
    "main",
    "write_sweep_report",
]
