"""metrics.jsonl read back: its records in file order, unreadable lines counted (a running job's
half-written last line), for the sweep report and a run's curves figure."""
from __future__ import annotations

import json
import os


def read_records(path: str | os.PathLike) -> tuple[list[dict], int]:
    """(every record that is a JSON object, in file order; the number of lines that are not);
    ([], 0) for a missing file."""
    records: list[dict] = []
    bad = 0
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        return records, 0
    with f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
    return records, bad
