"""docs/contracts.md tells the truth about the code: its layout names every module and subpackage
of holopart_infer, and its backend table lists each registered backend's options."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "contracts.md").read_text()


def _layout_block() -> str:
    start = DOC.index("```\nholopart_infer/")
    return DOC[start:DOC.index("```\n", start + 4)]


def test_layout_names_every_module_and_subpackage():
    block = _layout_block()
    pkg = REPO / "holopart_infer"
    missing = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg)
        if rel.name == "__main__.py" or "export" in rel.parts:
            continue
        if len(rel.parts) == 1:  # a top-level module: by its file name
            if rel.name != "__init__.py" and rel.name not in block:
                missing.append(str(rel))
        elif rel.parts[0] not in ("engines", "networks", "serve", "cli"):  # the new rooms list their files
            if rel.name != "__init__.py" and rel.stem not in block:
                missing.append(str(rel))
        if len(rel.parts) > 1 and f"{rel.parts[0]}/" not in block:
            missing.append(f"{rel.parts[0]}/")
    assert not missing, f"docs/contracts.md's layout does not name: {sorted(set(missing))}"


def test_backend_table_lists_every_registered_option():
    from holopart_infer.engines.registry import BACKENDS

    rows = {m.group(1): {o.strip() for o in re.sub(r"\([^)]*\)", "", m.group(2)).split(",")}
            for m in re.finditer(r"^\| `(\w+)` \|(?:[^|]*\|){4} ([^|]*) \|$", DOC, re.M)}
    for name, spec in BACKENDS.items():
        assert name in rows, f"docs/contracts.md's backend table has no row for {name}"
        assert rows[name] == set(spec.options), (name, rows[name], spec.options)


def test_one_errors_section():
    assert len(re.findall(r"^## Errors", DOC, re.M)) == 1
