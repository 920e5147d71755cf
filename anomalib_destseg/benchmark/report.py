"""Benchmark outputs: the CSV, the markdown table, the metric and cost plots and the anomaly-map panel.

Every file is written atomically (a temporary file in the same folder, then a rename), so an interrupted benchmark
never leaves a half-written table behind.

Example:
    >>> row = empty_row("Patchcore", "bottle")
    >>> list(row)[:3]
    ['model', 'image_AUROC', 'pixel_AUROC']

"""

import csv
import io
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

CSV_COLUMNS = (
    "model",
    "image_AUROC",
    "pixel_AUROC",
    "pixel_AP",
    "AUPRO",
    "IAP",
    "fit_s",
    "infer_img_per_s",
    "peak_rss_gb",
    "category",
    "IAP90",
    "status",
    "error",
)
"""Columns of ``results.csv``, in order (the first nine are the issue's required columns)."""

METRIC_KEYS = {
    "image_AUROC": "image_AUROC",
    "pixel_AUROC": "pixel_AUROC",
    "pixel_AP": "pixel_AUPR",
    "AUPRO": "pixel_AUPRO",
    "IAP": "pixel_IAP",
    "IAP90": "pixel_IAP90",
}
"""Benchmark column -> metric name logged by :func:`anomalib_destseg.metrics.paper_evaluator`."""

METRIC_COLUMNS = ("image_AUROC", "pixel_AUROC", "pixel_AP", "AUPRO", "IAP", "IAP90")
PIXEL_COLUMNS = ("pixel_AUROC", "pixel_AP", "AUPRO", "IAP", "IAP90")
COST_COLUMNS = ("fit_s", "infer_img_per_s", "peak_rss_gb")
COST_LABELS = {"fit_s": "fit time (s)", "infer_img_per_s": "inference (images/s)", "peak_rss_gb": "peak RSS (GB)"}
MARKDOWN_HEADERS = {
    "image_AUROC": "image AUROC",
    "pixel_AUROC": "pixel AUROC",
    "pixel_AP": "pixel AP",
    "AUPRO": "AUPRO",
    "IAP": "IAP",
    "IAP90": "IAP@90",
    "fit_s": "fit (s)",
    "infer_img_per_s": "inference (img/s)",
    "peak_rss_gb": "peak RSS (GB)",
}


def empty_row(model: str, category: str) -> dict[str, Any]:
    """A result row with every value missing (NaN) and status ``"pending"``."""
    row: dict[str, Any] = dict.fromkeys(CSV_COLUMNS, math.nan)
    row.update(model=model, category=category, status="pending", error="")
    return row


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary_path)`` and rename the result to ``path``."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda temporary: temporary.write_text(text))


# --- CSV and markdown ------------------------------------------------------------------------------------------------
def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """The CSV of ``rows``: :data:`CSV_COLUMNS`, missing values as empty cells.

    Example:
        >>> csv_text([empty_row("Stfpm", "bottle")]).splitlines()[1]
        'Stfpm,,,,,,,,,bottle,,pending,'

    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        cells = []
        for column in CSV_COLUMNS:
            value = row.get(column)
            if _is_missing(value):
                cells.append("")
            elif isinstance(value, float):
                cells.append(f"{value:.6g}")
            else:
                cells.append(str(value))
        writer.writerow(cells)
    return buffer.getvalue()


def _format(column: str, value: Any) -> str:
    if _is_missing(value):
        return "n/a"
    if column in METRIC_COLUMNS:
        return f"{value:.3f}"
    if column == "fit_s":
        return f"{value:.0f}" if value >= 100 else f"{value:.1f}"
    if column == "infer_img_per_s":
        return f"{value:.1f}" if value < 1000 else f"{value:.0f}"
    return f"{value:.2f}"


def _status_cell(row: dict[str, Any]) -> str:
    if row["status"] in {"ok", "pending"}:
        return row["status"]
    error = str(row.get("error") or "").replace("|", "\\|")
    if len(error) > 160:
        error = error[:157] + "..."
    return f"{row['status']}: {error}" if error else row["status"]


def mean_rows(rows: Sequence[dict[str, Any]], models: Sequence[str]) -> list[dict[str, Any]]:
    """Per model, the mean of every numeric column over the categories where the run succeeded.

    Example:
        >>> a, b = empty_row("Stfpm", "a"), empty_row("Stfpm", "b")
        >>> a.update(status="ok", image_AUROC=0.8); b.update(status="ok", image_AUROC=1.0)
        >>> round(mean_rows([a, b], ["Stfpm"])[0]["image_AUROC"], 3)
        0.9

    """
    means = []
    for model in models:
        runs = [row for row in rows if row["model"] == model]
        done = [row for row in runs if row["status"] == "ok"]
        row = empty_row(model, "mean")
        row["status"] = f"mean of {len(done)}/{len(runs)} categories" if done else "no successful run"
        for column in (*METRIC_COLUMNS, *COST_COLUMNS):
            values = [r[column] for r in done if not _is_missing(r[column])]
            row[column] = float(np.mean(values)) if values else math.nan
        means.append(row)
    return means


def markdown_text(
    rows: Sequence[dict[str, Any]],
    title: str,
    header_lines: Sequence[str],
    settings_rows: Sequence[tuple[str, str]],
    notes: Sequence[str],
    images: Sequence[str],
) -> str:
    """The markdown report: a header, the results table (and per-model means), settings, notes and plots."""
    columns = (*METRIC_COLUMNS, *COST_COLUMNS)
    lines = [f"# {title}", "", *header_lines, ""]
    lines.append("| category | model | " + " | ".join(MARKDOWN_HEADERS[c] for c in columns) + " | status |")
    lines.append("|---|---|" + "---:|" * len(columns) + "---|")
    categories = list(dict.fromkeys(row["category"] for row in rows))
    table_rows = list(rows)
    if len(categories) > 1:
        table_rows += mean_rows(rows, list(dict.fromkeys(row["model"] for row in rows)))
    for row in table_rows:
        cells = [str(row["category"]), str(row["model"])] + [_format(c, row[c]) for c in columns]
        lines.append("| " + " | ".join([*cells, _status_cell(row)]) + " |")
    lines += ["", "## Settings", "", "| model | settings |", "|---|---|"]
    lines += [f"| {model} | {text} |" for model, text in settings_rows]
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {note}" for note in notes]
    if images:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(image).stem}]({image})" for image in images]
    return "\n".join(lines) + "\n"


# --- plots ----------------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _model_colours(models: Sequence[str]) -> dict[str, Any]:
    plt = _pyplot()
    palette = plt.get_cmap("tab10")
    return {model: palette(index % 10) for index, model in enumerate(models)}


def plot_metrics(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Grouped bars: one group per metric, one bar per model; one panel per category (and the mean)."""
    plt = _pyplot()
    models = list(dict.fromkeys(row["model"] for row in rows))
    categories = list(dict.fromkeys(row["category"] for row in rows))
    panels = [(category, [r for r in rows if r["category"] == category]) for category in categories]
    if len(categories) > 1:
        panels.append((f"mean over {len(categories)} categories (successful runs only)", mean_rows(rows, models)))
    colours = _model_colours(models)
    figure, axes = plt.subplots(len(panels), 1, figsize=(10, 3.6 * len(panels)), squeeze=False)
    width = 0.8 / max(len(models), 1)
    for axis, (name, panel_rows) in zip(axes[:, 0], panels, strict=True):
        by_model = {row["model"]: row for row in panel_rows}
        for index, model in enumerate(models):
            row = by_model.get(model)
            values = [math.nan if row is None or _is_missing(row[c]) else row[c] for c in METRIC_COLUMNS]
            positions = np.arange(len(METRIC_COLUMNS)) + (index - (len(models) - 1) / 2) * width
            bars = axis.bar(positions, np.nan_to_num(values, nan=0.0), width, label=model, color=colours[model])
            for bar, value in zip(bars, values, strict=True):
                label = "n/a" if math.isnan(value) else f"{value:.2f}"
                axis.annotate(
                    label,
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=6,
                    rotation=90,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
        axis.set_xticks(np.arange(len(METRIC_COLUMNS)), [MARKDOWN_HEADERS[c] for c in METRIC_COLUMNS])
        axis.set_ylim(0, 1.15)
        axis.set_title(name)
        axis.grid(axis="y", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", ncols=len(models), fontsize=9, frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.6 * len(panels))))
    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png"))
    plt.close(figure)


def plot_costs(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Bars of fit time, inference throughput and peak memory per model (grouped by category)."""
    plt = _pyplot()
    models = list(dict.fromkeys(row["model"] for row in rows))
    categories = list(dict.fromkeys(row["category"] for row in rows))
    colours = plt.get_cmap("tab10")
    figure, axes = plt.subplots(1, len(COST_COLUMNS), figsize=(4.2 * len(COST_COLUMNS), 3.8), squeeze=False)
    width = 0.8 / max(len(categories), 1)
    for axis, column in zip(axes[0], COST_COLUMNS, strict=True):
        for index, category in enumerate(categories):
            by_model = {r["model"]: r for r in rows if r["category"] == category}
            values = [
                by_model[m][column] if m in by_model and not _is_missing(by_model[m][column]) else math.nan
                for m in models
            ]
            positions = np.arange(len(models)) + (index - (len(categories) - 1) / 2) * width
            axis.bar(positions, np.nan_to_num(values, nan=0.0), width, label=category, color=colours(index % 10))
        axis.set_xticks(np.arange(len(models)), models, rotation=20)
        axis.set_title(COST_LABELS[column])
        axis.grid(axis="y", alpha=0.3)
        if len(categories) > 1:
            axis.legend(fontsize=7)
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png"))
    plt.close(figure)


def _load_rgb(path: str, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((shape[1], shape[0]), Image.BILINEAR))


def _load_mask(path: str, shape: tuple[int, int]) -> np.ndarray | None:
    if not path or not Path(path).is_file():
        return None
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L").resize((shape[1], shape[0]), Image.NEAREST)) > 127


def _scaled(anomaly_map: np.ndarray, data: Any) -> np.ndarray:
    """``anomaly_map`` scaled to [0, 1] by the model's map range over the test set (the panel maps' own if absent)."""
    anomaly_map = anomaly_map.astype(np.float64)
    if "map_range" in data and np.all(np.isfinite(data["map_range"])):
        low, high = (float(v) for v in data["map_range"])
    else:
        low, high = float(np.min(data["anomaly_maps"])), float(np.max(data["anomaly_maps"]))
    return np.clip((anomaly_map - low) / (high - low), 0, 1) if high > low else np.zeros_like(anomaly_map)


def plot_anomaly_maps(predictions: dict[str, Path], path: Path, title: str) -> bool:
    """Panel: per test image (rows) the image, its ground truth and each model's anomaly map.

    Each model's maps are scaled to [0, 1] by its own minimum and maximum over the whole test set, so colours
    compare the images within a model column, and the columns show where each model puts its evidence.

    Args:
        predictions: Model name -> ``predictions.npz`` written by the runner (models without one are left out).
        path: PNG to write.
        title: Figure title.

    Returns:
        Whether a panel was written (``False`` when no model saved predictions).

    """
    loaded = {model: np.load(file) for model, file in predictions.items() if Path(file).is_file()}
    loaded = {model: data for model, data in loaded.items() if len(data["image_paths"])}
    if not loaded:
        return False
    plt = _pyplot()
    reference = next(iter(loaded.values()))
    image_paths = [str(p) for p in reference["image_paths"]]
    mask_paths = [str(p) for p in reference["mask_paths"]]
    shape = tuple(reference["anomaly_maps"].shape[-2:])
    models = list(loaded)
    columns = 2 + len(models)
    figure, axes = plt.subplots(
        len(image_paths), columns, figsize=(2.2 * columns, 2.3 * len(image_paths)), squeeze=False
    )
    for row, (image_path, mask_path) in enumerate(zip(image_paths, mask_paths, strict=True)):
        axes[row, 0].imshow(_load_rgb(image_path, shape))
        axes[row, 0].set_ylabel(Path(image_path).parent.name + "/" + Path(image_path).stem, fontsize=7)
        mask = _load_mask(mask_path, shape)
        axes[row, 1].imshow(np.zeros(shape) if mask is None else mask, cmap="gray", vmin=0, vmax=1)
        if mask is None:
            axes[row, 1].text(
                0.5,
                0.5,
                "no mask" if mask_path == "" else "missing",
                ha="center",
                va="center",
                color="white",
                fontsize=8,
                transform=axes[row, 1].transAxes,
            )
        for column, model in enumerate(models, start=2):
            data = loaded[model]
            paths = [str(p) for p in data["image_paths"]]
            axis = axes[row, column]
            if image_path in paths:
                index = paths.index(image_path)
                axis.imshow(_scaled(data["anomaly_maps"][index], data), cmap="jet", vmin=0, vmax=1)
                axis.set_xlabel(f"score {float(data['pred_scores'][index]):.2f}", fontsize=7)
            else:
                axis.text(0.5, 0.5, "not predicted", ha="center", va="center", transform=axis.transAxes)
    for column, name in enumerate(["image", "ground truth", *models]):
        axes[0, column].set_title(name, fontsize=9)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=110, format="png"))
    plt.close(figure)
    return True
