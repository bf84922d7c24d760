"""docs/norms.md shows the norm table as the code has it (gn_detect.norms.markdown_table)."""
from __future__ import annotations

import re
from pathlib import Path

from gn_detect.norms import markdown_table, norm_names


def test_the_docs_norm_table_is_the_code_table():
    text = (Path(__file__).resolve().parents[1] / "docs" / "norms.md").read_text()
    shown = re.search(r"<!-- norm-table -->\n(.*?)\n<!-- /norm-table -->", text, re.S)
    assert shown is not None, "docs/norms.md lost its norm-table markers"
    assert shown.group(1) == markdown_table(), "regenerate: python -c 'from gn_detect.norms import markdown_table; print(markdown_table())'"
    assert all(f"| `{n}` |" in shown.group(1) for n in norm_names())
