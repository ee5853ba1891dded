"""notebooks/compare_captions.ipynb: committed without outputs, and it runs headless on a real run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.analysis.conftest import BROKEN_KEY

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "compare_captions.ipynb"


def test_committed_notebook_has_no_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [], cell.source[:60]
        assert cell.execution_count is None, cell.source[:60]
        assert "execution" not in cell.metadata, cell.source[:60]  # timings from a run
    params = code[0]
    assert "parameters" in params.metadata.get("tags", [])
    assert 'RUN = os.environ.get("RECAPTION_RUN", "runs/tiny")' in params.source
    assert nb.metadata.kernelspec.name == "python3"


def _outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def test_notebook_runs_on_a_run(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("RECAPTION_RUN", str(run_dir))
    # The kernel is another process: it imports recaption from the repository (CI pip-installs it).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # allow_errors: collect error outputs and check them below rather than stop at the first.
    client = NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    outputs = _outputs(nb)
    errors = [f"{o['ename']}: {o['evalue']}" for o in outputs if o["output_type"] == "error"]
    assert errors == []
    stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    assert "Traceback" not in stderr

    text = "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")
    assert f"{run_dir}: 11 caption rows, 1 without a dense caption" in text
    # caption quality, from the analysis module the HTML report uses too
    assert "'captions': 11, 'finish_reasons': {'stop': " in text
    assert "'error': 1}" in text
    report = json.loads((run_dir / "report" / "nouns.json").read_text())
    cmp = report["comparisons"][0]
    assert f"dense vs raw: {cmp['only_b']:,} nouns gained, {cmp['only_a']:,} lost, {cmp['shared']:,}" in text

    # plots: the two histograms, rank/frequency, gained and lost
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 3
    htmls = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    # Table 1, formatted as the Markdown report writes it
    md = (run_dir / "report" / "nouns.md").read_text()
    table = next(h for h in htmls if "VN/DN" in h and "Total Noun" in h)
    for d in report["datasets"]:
        cell = f"{d['vn']}/{d['dn']} = "
        assert cell in md
        assert cell in table
        assert f"{d['nouns_per_caption']:.1f}/img" in table
    # the gallery: 8 images with both captions; the broken sample never among them
    gallery = next(h for h in htmls if "recaption-gallery" in h)
    assert gallery.count("<img ") == 8
    assert BROKEN_KEY not in gallery
    # the table of samples without a dense caption
    assert any(BROKEN_KEY in h and "truncated" in h for h in htmls)
