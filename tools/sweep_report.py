#!/usr/bin/env python
"""Summarize a sweep of run folders: ``python tools/sweep_report.py <sweep folder> [--out DIR]``.

Writes summary.csv/.md/.json, runs.csv, comparison.md, ap_vs_batch.png, label_pr_bars.png,
loss_curves.png and figures.json (see docs/sweeps.md).
"""

import sys

from gn_detect.sweeps.sweep_report import main

if __name__ == "__main__":
    sys.exit(main())
