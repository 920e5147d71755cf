"""Run a normal fit, test, predict and export of one model, through the API and the CLI, recording what is reported.

``python console_run.py MODEL DATA_ROOT TEACHER_WEIGHTS TEXTURES WORK_DIR`` (run by ``test_console.py`` in a fresh
process, so that warnings are shown with Python's default filters, as a user sees them). Every warning and every log
record at WARNING or above is recorded as it happens, whoever's logger it is and whatever handlers it has, as is
Lightning's line about callbacks overriding the trainer's (logged at INFO), and the training progress lines (INFO,
recorded without being printed). The last line of stdout is ``RECORDED <json list>``, one entry per event: ``kind``
(``warning``/``log``/``progress``), ``source`` (a warning's file or a record's logger name), ``category`` and
``message``.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path

OVERRIDE_LINE = "will override existing callbacks"
PROGRESS_LOGGER = "anomalib_destseg.training.callbacks.progress"
RECORDED: list[dict[str, str]] = []


def _record_warnings() -> None:
    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
        RECORDED.append(
            {"kind": "warning", "source": str(filename), "category": category.__name__, "message": str(message)}
        )
        show(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning


def _record_logs() -> None:
    call_handlers = logging.Logger.callHandlers

    def callHandlers(self: logging.Logger, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        message = record.getMessage()
        if record.levelno >= logging.WARNING or OVERRIDE_LINE in message:
            RECORDED.append({"kind": "log", "source": record.name, "category": record.levelname, "message": message})
        elif record.name == PROGRESS_LOGGER:
            RECORDED.append({"kind": "progress", "source": record.name, "category": "INFO", "message": message})
        call_handlers(self, record)

    logging.Logger.callHandlers = callHandlers
    # The progress lines (INFO) reach the recorder; with no handler configured the console still shows WARNING only.
    logging.getLogger(PROGRESS_LOGGER).setLevel(logging.INFO)


def run_api(model_name: str, data_root: Path, teacher_weights: str, textures: str, work: Path) -> None:
    """Engine.fit, test, predict and export (OpenVINO) with the Python API."""
    from anomalib.data import MVTecAD
    from anomalib.deploy import ExportType
    from anomalib.engine import Engine

    import anomalib_destseg

    model_class = getattr(anomalib_destseg, model_name)
    model = model_class(
        student_steps=2,
        segmentation_steps=2,
        teacher_weights=teacher_weights,
        texture_dir=textures,
        pre_processor=model_class.configure_pre_processor((64, 64)),
    )
    datamodule = MVTecAD(root=data_root, category="synthetic", train_batch_size=4, eval_batch_size=4, num_workers=0)
    engine = Engine(default_root_dir=work / "api", accelerator="cpu", devices=1, enable_progress_bar=False)
    engine.fit(model=model, datamodule=datamodule)
    engine.test(model=model, datamodule=datamodule)
    engine.predict(model=model, data_path=data_root / "synthetic" / "test" / "defect")
    engine.export(model, ExportType.OPENVINO, export_root=work / "api_export")


def run_cli(model_name: str, data_root: Path, teacher_weights: str, textures: str, work: Path) -> None:
    """``anomalib train`` (fit and test), ``predict`` and ``export`` (torch) of the trained checkpoint."""
    from anomalib.cli import AnomalibCLI

    root = work / "cli"
    size = ["--model.pre_processor", "anomalib_destseg.data.AntialiasedPreProcessor"]
    size += ["--model.pre_processor.transform", "torchvision.transforms.v2.Resize"]
    size += ["--model.pre_processor.transform.size", "[64, 64]"]
    model = ["--model", f"anomalib_destseg.{model_name}", "--model.teacher_weights", teacher_weights, *size]
    trainer = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
    data = ["--data", "anomalib.data.MVTecAD", "--data.root", str(data_root), "--data.category", "synthetic"]
    data += ["--data.train_batch_size", "4", "--data.eval_batch_size", "4", "--data.num_workers", "0"]
    steps = ["--model.student_steps", "2", "--model.segmentation_steps", "2", "--model.texture_dir", textures]
    AnomalibCLI(["train", *model, *steps, *data, *trainer, "--default_root_dir", str(root)])
    (checkpoint,) = root.rglob("model.ckpt")
    images = str(data_root / "synthetic" / "test" / "defect")
    AnomalibCLI(["predict", *model, *trainer, "--ckpt_path", str(checkpoint), "--data", images, "--default_root_dir",
                 str(root / "predict")])  # fmt: skip
    # torch here (the API run exports to OpenVINO): the CLI reaches the same export methods, at half the time.
    AnomalibCLI(["export", *model, "--ckpt_path", str(checkpoint), "--export_type", "torch", "--default_root_dir",
                 str(root / "export")])  # fmt: skip


def main(argv: list[str]) -> None:
    """Record, run both flows, print the record."""
    model_name, data_root, teacher_weights, textures, work = argv
    _record_warnings()
    _record_logs()
    run_api(model_name, Path(data_root), teacher_weights, textures, Path(work))
    run_cli(model_name, Path(data_root), teacher_weights, textures, Path(work))
    print("RECORDED " + json.dumps(RECORDED), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
