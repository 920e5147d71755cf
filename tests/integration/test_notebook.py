"""The quickstart notebook runs top to bottom in its quick size, and the pictures it links exist.

The notebook is executed with nbclient in a kernel running this interpreter (the project's ``.venv``), in a temporary
working folder, with the quick size, the shared teacher weights (or a random stand-in, see ``conftest.py``), no
textures (procedural) and the Hugging Face hub offline. Any cell error fails the test.
"""

import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from helpers import REPO
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOK = REPO / "notebooks" / "destseg_quickstart.ipynb"
KERNEL_NAME = "destseg-notebook-test"
CELL_TIMEOUT_S = 1800  # per cell; quick mode needs ~2-3 min for the whole notebook on 2 idle cores
NOTEBOOK_VARIABLES = (
    "DESTSEG_NOTEBOOK_SIZE",
    "DESTSEG_DATA_ROOT",
    "DESTSEG_TEACHER_WEIGHTS",
    "DESTSEG_TEXTURE_DIR",
    "DESTSEG_CHECKPOINT",
    "DESTSEG_PFADSEG_CHECKPOINT",
    "DESTSEG_NOTEBOOK_OUTPUT",
    "DESTSEG_STUDENT_STEPS",
    "DESTSEG_SEGMENTATION_STEPS",
)


def _kernel_manager(folder: Path) -> KernelManager:
    """A kernel manager whose only kernel runs ``sys.executable``, whatever kernels the user has registered."""
    spec = folder / KERNEL_NAME
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL_NAME, "language": "python"}))
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(folder)]))


def _outputs(cell: nbformat.NotebookNode, kind: str) -> list[nbformat.NotebookNode]:
    return [output for output in cell.get("outputs", []) if output.output_type == kind]


def _text(cell: nbformat.NotebookNode) -> str:
    return "".join(output.text for output in _outputs(cell, "stream") if output.name == "stdout")


def _cell(notebook: nbformat.NotebookNode, fragment: str) -> nbformat.NotebookNode:
    matches = [cell for cell in notebook.cells if cell.cell_type == "code" and fragment in cell.source]
    assert len(matches) == 1, f"expected one code cell containing {fragment!r}, found {len(matches)}"
    return matches[0]


def test_notebook_links_existing_pictures() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    links = [
        link
        for cell in notebook.cells
        if cell.cell_type == "markdown"
        for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", cell.source)
    ]
    assert links, "the notebook should show the architecture diagrams"
    for link in links:
        assert (NOTEBOOK.parent / link).resolve().is_file(), f"{link} does not exist"


@pytest.mark.slow
def test_quickstart_notebook_runs_in_quick_mode(tmp_path: Path, teacher_weights: Path) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:  # the committed outputs (a bottle run) must not stand in for this run's
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {name: value for name, value in os.environ.items() if name not in NOTEBOOK_VARIABLES}
    env.update(
        DESTSEG_NOTEBOOK_SIZE="quick",
        DESTSEG_TEACHER_WEIGHTS=str(teacher_weights),
        HF_HUB_OFFLINE="1",
        MPLBACKEND="module://matplotlib_inline.backend_inline",
    )
    client = NotebookClient(
        notebook,
        km=_kernel_manager(tmp_path / "kernels"),
        timeout=CELL_TIMEOUT_S,
        startup_timeout=300,
        resources={"metadata": {"path": str(workdir)}},
    )
    # cleanup_kc: nbclient leaves a kernel it was handed running (with its ZMQ threads in this process) unless
    # told to shut it down; left running it spun for the rest of the suite.
    client.execute(env=env, cleanup_kc=True)  # raises CellExecutionError naming the cell when one fails

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code_cells), "every code cell runs"
    assert not any(_outputs(cell, "error") for cell in code_cells)

    settings = _text(_cell(notebook, "DESTSEG_NOTEBOOK_SIZE"))
    assert "size quick: 64x64" in settings
    assert str(teacher_weights) in settings

    # The paper's metrics are printed as numbers in [0, 1].
    printed = dict(re.findall(r"^\s*(.+?): (\d\.\d{3})$", _text(_cell(notebook, "PAPER_METRICS = {")), re.M))
    assert set(printed) == {"image AUROC", "pixel AUROC", "pixel AP", "AUPRO (FPR 0.3)", "IAP", "IAP@90"}
    assert all(0 <= float(value) <= 1 for value in printed.values())

    # Pictures: the data, the prediction grid and PFADSeg's fusion weights.
    for fragment in ("train_item = ", "predictions = [", "fusion_weights("):
        pictures = [o for o in _outputs(_cell(notebook, fragment), "display_data") if "image/png" in o.data]
        assert pictures, f"the cell with {fragment!r} shows a picture"

    # The exported OpenVINO model exists and agrees with the PyTorch prediction.
    export_text = _text(_cell(notebook, "OpenVINOInferencer("))
    exported = [line.strip() for line in export_text.splitlines() if line.strip().endswith(".xml")]
    assert exported and (workdir / exported[0]).is_file()
    torch_score, openvino_score = map(float, re.search(r"PyTorch ([\d.]+), OpenVINO ([\d.]+)", export_text).groups())
    assert openvino_score == pytest.approx(torch_score, abs=1e-3)
    assert float(re.search(r"difference: ([\d.e+-]+)", export_text).group(1)) < 1e-3

    # Both models trained and wrote checkpoints where anomalib puts them.
    output = workdir / "results" / "destseg_notebook"
    for name in ("DeSTSeg", "PFADSeg"):
        assert list((output / name).glob("**/weights/lightning/model.ckpt")), f"no {name} checkpoint"
    assert "DeSTSeg" in _outputs(_cell(notebook, "pfadseg = PFADSeg("), "execute_result")[0].data["text/plain"]
    assert "Folder: image AUROC" in _text(_cell(notebook, "Folder("))
