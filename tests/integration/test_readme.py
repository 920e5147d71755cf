"""Every code block of README.md runs here, as written, at toy scale.

Each block carries a marker comment, ``<!-- readme-test: NAME -->``, on the line above it; :data:`RUNNERS` maps each
name to the test that runs it. Prose is never parsed: rewording the README cannot break a test, and a new block
without a marker (or a marker nobody runs) fails ``test_every_block_is_marked_and_run``. Blocks run in a scratch
folder laid out as the README assumes (``datasets/MVTecAD/bottle``, ``datasets/dtd/images``, ``datasets/parts``,
``configs/``), filled with a generated 64x64 dataset. Flags appended at the end shrink the work (in anomalib's CLI
and in argparse the last occurrence of a flag wins); paths under ../shared are replaced by local stand-ins.
"""

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, TINY_SIZE
from PIL import Image

from anomalib_destseg import DeSTSegModel
from anomalib_destseg.data import make_synthetic_dataset
from anomalib_destseg.destseg.reference_checkpoint import reference_key

README = (REPO / "README.md").read_text()
BIN = Path(sys.executable).parent
MARKED = re.compile(r"<!-- readme-test: ([\w-]+) -->\n```(\w+)\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)

# Appended to every `anomalib train` / `test` command: 64x64, one step per stage, CPU, small batches.
SMALL = [
    "--model.pre_processor", "anomalib_destseg.data.AntialiasedPreProcessor",
    "--model.pre_processor.transform", "torchvision.transforms.v2.Resize",
    "--model.pre_processor.transform.size", f"[{TINY_SIZE}, {TINY_SIZE}]",
    "--data.eval_batch_size", "4",
    "--data.num_workers", "0",
    "--trainer.accelerator", "cpu",
    "--trainer.devices", "1",
    "--trainer.enable_progress_bar", "false",
]  # fmt: skip
TRAIN_SMALL = [*SMALL, "--model.student_steps", "1", "--model.segmentation_steps", "1", "--data.train_batch_size", "4"]


def block(name: str) -> tuple[str, str]:
    """The (language, code) of the README block marked ``name``."""
    found = [(language, code) for marked, language, code in MARKED.findall(README) if marked == name]
    assert len(found) == 1, f"expected one README block marked {name!r}, found {len(found)}"
    return found[0]


def commands(name: str) -> list[str]:
    """The commands of a marked bash block (continuations joined, trailing comments dropped)."""
    language, code = block(name)
    assert language == "bash"
    lines = (" ".join(line.split("  #")[0].split()) for line in code.replace("\\\n", " ").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


RUNNERS = {
    "quickstart": "test_quickstart_block",
    "install": "test_install_block_is_the_install_script",
    "cli": "test_cli_block",
    "python-api": "test_python_api_block",
    "reference-checkpoint": "test_reference_checkpoint_block",
}


def test_every_block_is_marked_and_run() -> None:
    fences = re.findall(r"^```(\w+)\n", README, flags=re.MULTILINE)
    runnable = [language for language in fences if language in {"bash", "python"}]
    marked = MARKED.findall(README)
    assert len(marked) == len(runnable), "every bash/python block of README.md needs a readme-test marker"
    assert sorted(name for name, _, _ in marked) == sorted(RUNNERS)
    assert all(test in globals() for test in RUNNERS.values())


# --- the scratch folder the README's relative paths point into ---------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, teacher_weights: Path) -> dict:
    """A folder shaped like the README's working directory, and the substitutions for paths under ../shared."""
    root = tmp_path_factory.mktemp("readme")
    mvtec = root / "datasets" / "MVTecAD"
    make_synthetic_dataset(
        mvtec, category="bottle", image_size=TINY_SIZE, num_train=8, num_test_good=2, num_test_defect=2
    )
    rng = np.random.default_rng(0)
    (root / "datasets" / "dtd" / "images").mkdir(parents=True)
    for index in range(4):
        Image.fromarray(rng.uniform(0, 255, (48, 48, 3)).astype(np.uint8)).save(
            root / "datasets/dtd/images" / f"{index}.png"
        )
    for name, part in (("good", "train/good"), ("defect", "test/defect"), ("masks", "ground_truth/defect")):
        (root / "datasets" / "parts" / name).mkdir(parents=True)
        for path in sorted((mvtec / "bottle" / part).glob("*.png")):
            (root / "datasets" / "parts" / name / path.name).write_bytes(path.read_bytes())
    (root / "configs").symlink_to(REPO / "configs")
    shared = {"../shared/weights/resnet18_imagenet1k_layer1to3.pth": str(teacher_weights)}
    return {"root": root, "shared": shared, "weights": str(teacher_weights)}


def _words(command: str, workspace: dict) -> list[str]:
    """The argument list, with ../shared paths, .venv/bin and console scripts resolved in this environment."""
    for original, local in workspace["shared"].items():
        command = command.replace(original, local)
    words = shlex.split(command)
    if words[0].startswith(".venv/bin/"):
        words[0] = str(BIN / words[0].removeprefix(".venv/bin/"))
    elif (BIN / words[0]).is_file():  # anomalib, anomalib-destseg-import-reference
        words[0] = str(BIN / words[0])
    return words


def _run(words: list[str], cwd: Path, timeout: int = 600) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{shlex.join(words)} failed ({result.returncode}):\n{output[-6000:]}"
    return output


def _folder(workspace: dict, name: str) -> Path:
    """A fresh folder of its own (so results start at v0) that sees the workspace's datasets and configs."""
    cwd = workspace["root"] / name
    cwd.mkdir()
    for entry in ("configs", "datasets"):
        (cwd / entry).symlink_to(workspace["root"] / entry)
    return cwd


# --- the blocks ---------------------------------------------------------------------------------------------------
def test_quickstart_block(workspace: dict) -> None:
    """The demo (shortened), and the test command, which must be exactly what CI runs."""
    demo, tests = commands("quickstart")
    install = "bash scripts/install.sh && "
    assert demo.startswith(install) and tests.startswith(install)
    assert tests in (REPO / ".ci" / "run").read_text().splitlines()
    cwd = workspace["root"] / "demo"
    cwd.mkdir()
    shorter = ["--student-steps", "2", "--segmentation-steps", "2", "--batch-size", "4"]
    output = _run([*_words(demo.removeprefix(install), workspace), *shorter], cwd)
    assert "DeSTSeg demo: trained 4 steps" in output
    assert "pixel_AUROC" in output
    assert (cwd / "results" / "demo" / "predictions.png").is_file()


def test_install_block_is_the_install_script() -> None:
    (command,) = commands("install")
    script = (REPO / "scripts" / "install.sh").read_text()
    assert "-m venv .venv" in script
    script_pip = next(line for line in script.splitlines() if "pip install" in line)
    for argument in command.split("pip install", 1)[1].split():
        assert argument in script_pip, f"{argument} of the README's install line is not in scripts/install.sh"


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1, 2], ids=["mvtec", "config", "folder"])
def test_cli_block(index: int, workspace: dict) -> None:
    command = commands("cli")[index]
    cwd = _folder(workspace, f"cli_{index}")
    output = _run([*_words(command, workspace), *TRAIN_SMALL, "--model.teacher_weights", workspace["weights"]], cwd)
    assert "image_AUROC" in output, "anomalib train tests after fitting and prints the metrics"
    checkpoints = list((cwd / "results").rglob("weights/lightning/model.ckpt"))
    assert len(checkpoints) == 1, checkpoints
    assert ("PFADSeg" if "pfadseg" in command else "DeSTSeg") in checkpoints[0].parts


# The README's API example trains the reference recipe at 256x256 and batch 32; these exact replacements make it a
# 64x64, one-step-per-stage CPU run. Each original must occur in the block, so the test follows the README's text.
API_REPLACEMENTS = {
    'DeSTSeg(texture_dir="datasets/dtd/images")': (
        'DeSTSeg(texture_dir="datasets/dtd/images", student_steps=1, segmentation_steps=1, teacher_weights=WEIGHTS, '
        f"pre_processor=DeSTSeg.configure_pre_processor(({TINY_SIZE}, {TINY_SIZE})))"
    ),
    "train_batch_size=32)": "train_batch_size=4, eval_batch_size=4, num_workers=0)",
    "Engine()": 'Engine(accelerator="cpu", devices=1, enable_progress_bar=False)',
}


@pytest.mark.slow
def test_python_api_block(workspace: dict) -> None:
    language, api = block("python-api")
    assert language == "python"
    for original, replacement in API_REPLACEMENTS.items():
        assert original in api, f"{original!r} is no longer in the README's API example"
        api = api.replace(original, replacement)
    check = textwrap.dedent(
        """
        from anomalib.deploy import OpenVINOInferencer
        xml = sorted(Path("results").rglob("openvino/model.xml"))[-1]
        full_size = Image.new("RGB", (150, 110), (128, 128, 128))  # any size: the export resizes
        result = OpenVINOInferencer(xml, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"}).predict(full_size)
        print("openvino map", tuple(result.anomaly_map.shape))
        """
    )
    script = f"from pathlib import Path\nfrom PIL import Image\nWEIGHTS = {workspace['weights']!r}\n{api}\n{check}"
    output = _run([sys.executable, "-c", script], _folder(workspace, "api"))
    assert "image_AUROC" in output
    assert re.search(rf"openvino map \(.*{TINY_SIZE}, {TINY_SIZE}\)", output), output[-2000:]


@pytest.mark.slow
def test_reference_checkpoint_block(workspace: dict) -> None:
    """A file shaped like the authors' checkpoint (random weights), converted and tested as the README says."""
    convert, test = commands("reference-checkpoint")
    cwd = _folder(workspace, "reference")
    source = cwd / convert.split()[1]
    source.parent.mkdir(parents=True)
    state = DeSTSegModel().state_dict()
    torch.save({reference_key(key): value for key, value in state.items() if key != "teacher.pretrained"}, source)
    output = _run([*_words(convert, workspace), "--image-size", str(TINY_SIZE)], cwd)
    assert "wrote bottle.ckpt" in output
    output = _run([*_words(test, workspace), *SMALL], cwd)
    assert "image_AUROC" in output and "pixel_IAP" in output
