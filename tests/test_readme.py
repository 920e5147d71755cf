"""Every command in README.md runs here, at toy scale, or is matched to the test or CI step that runs it.

The commands are read from README.md itself, so a command edited in the README is the command that runs here. Each
runs as written, in a scratch folder laid out the way the README assumes (``datasets/MVTecAD/bottle``,
``datasets/dtd/images``, ``datasets/parts``, links to ``configs/`` and ``benchmarks/``) and filled with a generated
64x64 dataset. Flags appended at the end shrink the work (steps, image size, batch size, number of variants): in
anomalib's CLI and in argparse the last occurrence of a flag wins, so the command's own flags are still parsed and
used. Paths under ../shared are replaced by local stand-ins, so nothing outside the repository is needed.

``test_every_readme_command_is_run_somewhere`` fails when the README gains a command that nothing here runs.
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
from PIL import Image

from anomalib_destseg import DeSTSeg, PFADSeg
from anomalib_destseg.data import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BIN = Path(sys.executable).parent

# Appended to every `anomalib train` command: 64x64, one step per stage, CPU, small batches.
TRAIN_SMALL = [
    "--model.student_steps", "1",
    "--model.segmentation_steps", "1",
    "--model.pre_processor", "anomalib.pre_processing.PreProcessor",
    "--model.pre_processor.transform", "torchvision.transforms.v2.Resize",
    "--model.pre_processor.transform.size", "[64, 64]",
    "--data.train_batch_size", "4",
    "--data.eval_batch_size", "4",
    "--data.num_workers", "0",
    "--trainer.accelerator", "cpu",
    "--trainer.devices", "1",
    "--trainer.enable_progress_bar", "false",
]  # fmt: skip


# --- reading the README -------------------------------------------------------------------------------------------
def fenced_blocks(language: str) -> list[str]:
    """The contents of the README's fenced code blocks in ``language``."""
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)


def shell_commands() -> list[str]:
    """Commands of the bash blocks (continuations joined, comments dropped) and shell commands quoted inline."""
    commands = []
    for block in fenced_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            command = " ".join(line.split("  #")[0].split())
            if command and not command.startswith("#"):
                commands.append(command)
    prose = re.sub(r"^```.*?^```", "", README, flags=re.MULTILINE | re.DOTALL)
    for span in re.findall(r"`([^`]+)`", prose):
        command = " ".join(span.split())
        if re.match(r"(anomalib |python3? |\.venv/|bash |pip |[A-Z_]+=\S+ )", command):
            commands.append(command)
    return commands


def readme_commands(start: str) -> list[str]:
    """Every README command that starts with ``start``, in README order."""
    found = [command for command in shell_commands() if command.startswith(start)]
    assert found, f"no README command starts with {start!r}"
    return found


def readme_command(start: str) -> str:
    """The one README command that starts with ``start``."""
    found = readme_commands(start)
    assert len(found) == 1, f"expected one README command starting with {start!r}, found {found}"
    return found[0]


# Where each README command runs: (start of the command, the test that runs it, or the CI step).
COVERAGE = [
    ("bash scripts/install.sh && .venv/bin/python -m anomalib_destseg.demo", "test_readme_demo_command"),
    ("bash scripts/install.sh && .venv/bin/python -m pytest", "CI (.ci/run); test_readme_test_command_is_what_ci_runs"),
    ("python3 -m venv .venv && .venv/bin/pip install", "CI (install.sh); test_readme_install_line_is_the_script"),
    ("pip install -e .", "CI (install.sh installs -e .[dev], a superset); test_readme_install_line_is_the_script"),
    ("anomalib train --model anomalib_destseg.DeSTSeg --data anomalib.data.MVTecAD", "test_readme_anomalib_train"),
    ("anomalib train --config configs/destseg_mvtec.yaml --trainer.accelerator gpu", "test_readme_several_gpus"),
    ("anomalib train --config configs/destseg_mvtec.yaml", "test_readme_anomalib_train"),
    ("anomalib train --model anomalib_destseg.PFADSeg", "test_readme_anomalib_train"),
    ("anomalib train --model anomalib_destseg.DeSTSeg --data anomalib.data.Folder", "test_readme_anomalib_train"),
    ("anomalib fit ... --ckpt_path", "tests/test_resume.py (anomalib fit --ckpt_path on a saved checkpoint)"),
    ("export HF_HOME=", "test_readme_benchmark_and_cpu_speed_commands (their environment)"),
    ("anomalib-destseg-benchmark ", "test_readme_benchmark_and_cpu_speed_commands"),
    ("HF_HOME=/tmp/offline/hf TORCH_HOME=/tmp/offline/torch HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cpu_speed.py",
     "test_readme_benchmark_and_cpu_speed_commands"),
    (".venv/bin/python benchmarks/memory.py", "test_readme_memory_command"),
    ("python benchmarks/metric_speed.py", "test_readme_metric_speed_command"),
    ("python ../shared/weights/offline_cache.py", "test_readme_offline_cache_command"),
]  # fmt: skip


def coverage_of(command: str) -> str | None:
    """The first COVERAGE entry whose start matches the command."""
    return next((where for start, where in COVERAGE if command.startswith(start)), None)


def test_every_readme_command_is_run_somewhere() -> None:
    commands = shell_commands()
    assert len(commands) >= 12, commands  # the reader above found the README's commands
    uncovered = [command for command in commands if coverage_of(command) is None]
    assert not uncovered, f"README commands that no test runs: {uncovered}"
    names = set(globals())
    for where in {coverage_of(command) for command in commands}:
        test = where.split(";")[-1].split()[0]
        assert test in names or test == "CI" or (REPO / test).is_file(), f"{where}: no such test"


def test_readme_python_blocks_are_found() -> None:
    blocks = fenced_blocks("python")
    assert any("engine.fit(model, datamodule=datamodule)" in block for block in blocks)
    assert any("OpenVINOInferencer(" in block for block in blocks)
    assert any("instance_average_precision(" in block for block in blocks)


# --- the scratch folder the README's relative paths point into ---------------------------------------------------
def _write_textures(folder: Path, count: int = 4) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for index in range(count):
        texture = rng.uniform(0, 255, (48, 48, 3)).astype(np.uint8)
        Image.fromarray(texture).save(folder / f"texture_{index}.png")


def _folder_dataset(source: Path, root: Path) -> None:
    """``datasets/parts`` as the README's Folder example names it: good/, defect/ and masks/."""
    for name, part in (("good", "train/good"), ("defect", "test/defect"), ("masks", "ground_truth/defect")):
        (root / name).mkdir(parents=True)
        for path in sorted((source / part).glob("*.png")):
            (root / name / path.name).write_bytes(path.read_bytes())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, teacher_weights: Path) -> dict:
    """A folder shaped like the README's working directory, and the substitutions for paths under ../shared."""
    root = tmp_path_factory.mktemp("readme")
    mvtec = root / "datasets" / "MVTecAD"
    make_synthetic_dataset(mvtec, category="bottle", image_size=64, num_train=12, num_test_good=4, num_test_defect=4)
    _write_textures(root / "datasets" / "dtd" / "images")
    _folder_dataset(mvtec / "bottle", root / "datasets" / "parts")
    for name in ("configs", "benchmarks"):
        (root / name).symlink_to(REPO / name)
    shared = {
        "../shared/weights/resnet18_imagenet1k_layer1to3.pth": str(teacher_weights),
        "../shared/data/mvtec_ad": str(mvtec),
        "../shared/data/dtd/images": str(root / "datasets" / "dtd" / "images"),
    }
    return {"root": root, "shared": shared, "weights": str(teacher_weights)}


def _split(command: str, workspace: dict) -> tuple[dict[str, str], list[str]]:
    """Leading VAR=value assignments and the argument list, with ../shared paths and .venv/bin replaced."""
    for original, local in workspace["shared"].items():
        command = command.replace(original, local)
    words = shlex.split(command)
    env = {}
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    if words[0].startswith(".venv/bin/"):
        words[0] = str(BIN / words[0].removeprefix(".venv/bin/"))
    elif words[0] in ("python", "python3"):
        words[0] = sys.executable
    elif (BIN / words[0]).is_file():  # a console script of this environment (anomalib, anomalib-destseg-benchmark)
        words[0] = str(BIN / words[0])
    return env, words


def _working_directory(workspace: dict, name: str) -> Path:
    """A fresh folder of its own (so results start at v0) that sees the workspace's datasets and configs."""
    cwd = workspace["root"] / name
    cwd.mkdir()
    for entry in ("configs", "datasets"):
        (cwd / entry).symlink_to(workspace["root"] / entry)
    return cwd


def _run(words: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    for key in ("LOCAL_RANK", "NODE_RANK", "GLOBAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(key, None)
    result = subprocess.run(words, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{shlex.join(words)} failed ({result.returncode}):\n{output[-6000:]}"
    return output


def _after_and(command: str) -> str:
    """The part after ``bash scripts/install.sh && `` (the install itself is CI's first step)."""
    return command.split("&&", 1)[1].strip()


# --- the commands -------------------------------------------------------------------------------------------------
def test_readme_test_command_is_what_ci_runs() -> None:
    command = readme_command("bash scripts/install.sh && .venv/bin/python -m pytest")
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines


def test_readme_install_line_is_the_script() -> None:
    command = readme_command("python3 -m venv .venv && .venv/bin/pip install")
    script = (REPO / "scripts" / "install.sh").read_text()
    assert "-m venv .venv" in script
    pip_arguments = command.split("pip install", 1)[1].split()
    script_pip = next(line for line in script.splitlines() if "pip install" in line)
    for argument in pip_arguments:
        assert argument in script_pip, f"{argument} of the README's install line is not in scripts/install.sh"


@pytest.mark.slow
def test_readme_demo_command(workspace: dict) -> None:
    env, words = _split(
        _after_and(readme_command("bash scripts/install.sh && .venv/bin/python -m anomalib_destseg.demo")), workspace
    )
    cwd = workspace["root"] / "demo"
    cwd.mkdir()
    output = _run([*words, "--student-steps", "2", "--segmentation-steps", "2", "--batch-size", "4"], cwd, env)
    assert "DeSTSeg demo: trained 4 steps" in output
    for name in ("image_AUROC", "pixel_AUROC", "pixel_AUPR", "pixel_IAP"):
        assert name in output
    assert (cwd / "datasets" / "demo").is_dir(), "the demo writes its dataset under datasets/demo by default"
    assert list((cwd / "results" / "demo").rglob("model.ckpt")), "the demo saves a checkpoint"
    assert list((cwd / "results" / "demo").rglob("*.png")), "the demo writes result images"


TRAIN_COMMANDS = {
    "destseg_mvtec": "anomalib train --model anomalib_destseg.DeSTSeg --data anomalib.data.MVTecAD",
    "config": "anomalib train --config configs/destseg_mvtec.yaml",
    "pfadseg": "anomalib train --model anomalib_destseg.PFADSeg",
    "folder": "anomalib train --model anomalib_destseg.DeSTSeg --data anomalib.data.Folder",
}


@pytest.mark.slow
@pytest.mark.parametrize("key", TRAIN_COMMANDS)
def test_readme_anomalib_train(key: str, workspace: dict) -> None:
    start = TRAIN_COMMANDS[key]
    found = [c for c in shell_commands() if c.startswith(start) and "--trainer.strategy" not in c]
    assert len(found) == 1, found
    env, words = _split(found[0], workspace)
    cwd = _working_directory(workspace, key)
    output = _run([*words, *TRAIN_SMALL, "--model.teacher_weights", workspace["weights"]], cwd, env)
    assert "image_AUROC" in output, "anomalib train tests after fitting and prints the metrics"
    model_name = "PFADSeg" if key == "pfadseg" else "DeSTSeg"
    version = cwd / "results" / model_name / ("parts" if key == "folder" else "MVTecAD/bottle") / "v0"
    checkpoint = version / "weights" / "lightning" / "model.ckpt"
    assert checkpoint.is_file(), sorted(map(str, cwd.rglob("*.ckpt")))
    assert list((version / "images").rglob("*.png")), "the visualizer writes test images"
    model_class = PFADSeg if key == "pfadseg" else DeSTSeg
    model = model_class.load_from_checkpoint(checkpoint, weights_only=True)
    assert bool(model.model.teacher.pretrained)
    assert (model.hparams.student_steps, model.hparams.segmentation_steps) == (1, 1)  # the appended flags won
    assert list(model.pre_processor.transform.size) == [64, 64]
    if key in ("destseg_mvtec", "config"):  # the commands that name a texture folder
        assert Path(model.hparams.texture_dir).parts[-3:] == ("datasets", "dtd", "images")


@pytest.mark.slow
def test_readme_several_gpus(workspace: dict) -> None:
    """The multi-GPU line with its GPUs swapped for two CPU processes (gloo): the same config, strategy and launcher."""
    command = readme_command("anomalib train --config configs/destseg_mvtec.yaml --trainer.accelerator gpu")
    assert "--trainer.strategy ddp" in command
    env, words = _split(command, workspace)
    cwd = _working_directory(workspace, "ddp")
    on_cpu = [*words, *TRAIN_SMALL, "--trainer.devices", "2", "--model.teacher_weights", workspace["weights"]]
    output = _run(on_cpu, cwd, {**env, "OMP_NUM_THREADS": "1"})
    assert "image_AUROC" in output
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in output, output[-3000:]
    assert (
        cwd / "results" / "DeSTSeg" / "MVTecAD" / "bottle" / "v0" / "weights" / "lightning" / "model.ckpt"
    ).is_file()


BENCHMARK = "anomalib-destseg-benchmark "
CPU_SPEED = (
    "HF_HOME=/tmp/offline/hf TORCH_HOME=/tmp/offline/torch HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cpu_speed.py"
)


@pytest.mark.slow
def test_readme_benchmark_and_cpu_speed_commands(workspace: dict) -> None:
    """The benchmark runs, then the speed/accuracy runs, in one folder: a later command reads an earlier one's files.

    Absolute /tmp paths in the README (the checkpoints kept by a benchmark run) are redirected into that folder.
    """
    block = next(block for block in fenced_blocks("bash") if BENCHMARK in block)
    exports = readme_command("export HF_HOME=")
    assert exports in " ".join(block.split())
    exported = dict(assignment.split("=", 1) for assignment in shlex.split(exports)[1:])
    cwd = workspace["root"] / "benchmarks_run"
    cwd.mkdir()
    (cwd / "benchmarks").symlink_to(REPO / "benchmarks")
    caches = {"HF_HOME": str(cwd / "hf"), "TORCH_HOME": str(cwd / "torch")}  # instead of /tmp/offline
    small = ["--models", "DeSTSeg", "--steps", "1", "1", "--image-size", "64", "--batch-size", "4"]
    for command in readme_commands(BENCHMARK):
        _, words = _split(command.replace(" /tmp/", f" {cwd}/tmp/"), workspace)
        output_dir = cwd / words[words.index("--output-dir") + 1]
        if "--keep-checkpoints" not in words:
            # Planned only (--dry-run): the run itself is the same code as the command below, and
            # test_benchmark.py runs two models end to end.
            output = _run([*words, *small, "--dry-run"], cwd, exported | caches)
            assert "DeSTSeg/bottle" in output and not output_dir.exists(), output[-3000:]
            continue
        output = _run([*words, *small], cwd, exported | caches)
        table = (output_dir / "results.md").read_text()
        assert re.search(r"\| bottle \| DeSTSeg \| 0\.\d{3} \|", table), output[-3000:]
        assert list(output_dir.rglob("model.ckpt")), "--keep-checkpoints keeps the run's checkpoint"
    # torch_fp32 only: the OpenVINO variants' export and parity have tests of their own (test_export.py)
    small = ["--models", "destseg", "--variants", "torch_fp32", "--image-size", "64"]
    small += ["--batch-size", "2", "--iterations", "1", "--conv-iterations", "1"]
    for command in readme_commands(CPU_SPEED):
        env, words = _split(command.replace("=/tmp/rerun/", f"={cwd}/tmp/rerun/"), workspace)
        _run([*words, *small], cwd, env | caches)
        table = (cwd / words[words.index("--output") + 1]).read_text()
        # with a checkpoint, the last four columns hold image AUROC, its change, pixel AP and its change
        accuracy = (
            r"\| [01]\.\d{4} \| [+-]\d\.\d{4} \| [01]\.\d{4} \| [+-]\d\.\d{4} \|" if "--checkpoint" in words else ""
        )
        if "--profile always" in command:
            assert "## Profile: destseg, torch fp32" in table, table
        pattern = rf"^\| destseg \| torch_fp32 \| f32 \| \d+\.\d\d \|.*{accuracy}$"
        assert re.search(pattern, table, flags=re.MULTILINE), table


@pytest.mark.slow
def test_readme_memory_command(workspace: dict) -> None:
    _, words = _split(readme_command(".venv/bin/python benchmarks/memory.py"), workspace)
    cwd = workspace["root"]
    _run([*words, "--image-size", "64", "--batch-sizes", "2", "--steps", "1"], cwd)
    report = (cwd / "docs" / "benchmarks" / "memory.json").read_text()
    assert '"train"' in report and '"infer"' in report, report


def test_readme_metric_speed_command(workspace: dict) -> None:
    _, words = _split(readme_command("python benchmarks/metric_speed.py"), workspace)
    output = _run([*words, "--images", "4", "--size", "64", "--repeats", "1"], workspace["root"])
    assert re.search(r"\d+\.\d+ s", output), output


def test_readme_offline_cache_command(workspace: dict, real_teacher_weights: Path) -> None:
    """The README's offline route: fill the caches, then teacher_weights='imagenet' loads without a network."""
    command = readme_command("python ../shared/weights/offline_cache.py")
    script = REPO.parent / "shared" / "weights" / "offline_cache.py"
    if not script.is_file():
        pytest.skip(f"{script} not found")
    cwd = workspace["root"] / "offline"
    cwd.mkdir()
    words = [sys.executable, str(REPO / command.split()[1])]
    _run([*words, "--hf-home", str(cwd / "hf"), "--torch-home", str(cwd / "torch")], REPO)
    check = textwrap.dedent(
        """
        import torch
        from anomalib_destseg import DeSTSeg
        model = DeSTSeg()
        model.model.teacher.load_weights("imagenet")
        print("pretrained", bool(model.model.teacher.pretrained))
        """
    )
    env = {"HF_HOME": str(cwd / "hf"), "TORCH_HOME": str(cwd / "torch"), "HF_HUB_OFFLINE": "1"}
    assert "pretrained True" in _run([sys.executable, "-c", check], cwd, env)


# --- the Python blocks --------------------------------------------------------------------------------------------
# The README's API example trains the reference recipe at 256x256 and batch 32; these exact replacements make it a
# 64x64, one-step-per-stage CPU run. Each original must occur in the README, so the test follows the README's text.
API_REPLACEMENTS = {
    'DeSTSeg(texture_dir="datasets/dtd/images")': (
        'DeSTSeg(texture_dir="datasets/dtd/images", student_steps=1, segmentation_steps=1, teacher_weights=WEIGHTS, '
        "pre_processor=DeSTSeg.configure_pre_processor((64, 64)))"
    ),
    "train_batch_size=32)": "train_batch_size=4, eval_batch_size=4, num_workers=0)",
    "Engine()": 'Engine(accelerator="cpu", devices=1, enable_progress_bar=False)',
}


@pytest.mark.slow
def test_readme_python_api_and_openvino_blocks(workspace: dict) -> None:
    api = next(block for block in fenced_blocks("python") if "engine.fit(model, datamodule=datamodule)" in block)
    openvino = next(block for block in fenced_blocks("python") if "OpenVINOInferencer(" in block)
    for original, replacement in API_REPLACEMENTS.items():
        assert original in api, f"{original!r} is no longer in the README's API example"
        api = api.replace(original, replacement)
    exported = "sorted(Path('results').rglob('openvino/model.xml'))[-1]"
    assert '"results/.../weights/openvino/model.xml"' in openvino
    openvino = openvino.replace('"results/.../weights/openvino/model.xml"', exported)
    check = textwrap.dedent(
        """
        result = inferencer.predict(image=str(sorted(Path("datasets/MVTecAD/bottle/test/defect").glob("*.png"))[0]))
        print("predictions", sum(len(batch.pred_score) for batch in predictions))
        print("openvino map", tuple(result.anomaly_map.shape), "score", float(result.pred_score.max()))
        """
    )
    script = f"from pathlib import Path\nWEIGHTS = {workspace['weights']!r}\n{api}\n{openvino}\n{check}"
    cwd = workspace["root"]
    api_dir = cwd / "datasets" / "MVTecAD" / "bottle" / "test" / "broken_large"
    if not api_dir.exists():  # the README predicts on bottle's broken_large folder
        api_dir.symlink_to(cwd / "datasets" / "MVTecAD" / "bottle" / "test" / "defect")
    output = _run([sys.executable, "-c", script], cwd)
    assert "image_AUROC" in output
    assert "predictions 4" in output, output[-2000:]
    shown = re.search(r"openvino map \(([\d, ]+)\) score (\S+)", output)
    assert shown, output[-2000:]
    assert tuple(int(n) for n in shown[1].split(",") if n.strip())[-2:] == (64, 64), shown[0]
    assert 0 <= float(shown[2]) <= 1, shown[0]  # the exported post-processor normalises scores


def test_readme_metrics_block() -> None:
    block = next(block for block in fenced_blocks("python") if "instance_average_precision(" in block)
    prelude = textwrap.dedent(
        """
        import torch
        gt_masks = torch.zeros(2, 16, 16, dtype=torch.bool)
        gt_masks[0, 2:6, 2:6] = True
        anomaly_maps = gt_masks.float() * 0.9 + 0.05
        """
    )
    namespace: dict = {}
    exec(prelude + block, namespace)  # the README's own example
    assert namespace["iap"] == pytest.approx(1.0) and namespace["iap_at_90"] == pytest.approx(1.0)
    assert type(namespace["evaluator"]).__name__ == "Evaluator"
