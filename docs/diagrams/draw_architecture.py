"""Draw the DeSTSeg and PFADSeg architecture diagrams (matplotlib only) into docs/images/.

Shapes are ``channels@height x width`` for a 3x256x256 input, as in ``../shared/docs/destseg.md`` and
``../shared/docs/pfadseg.md``. Colours mark what trains when: the teacher is frozen, the student trains in stage 1,
the segmentation network (and PFADSeg's adaptive fusion) in stage 2. Dashed outlines mark PFADSeg parts that are
inferred from the paper's abstract.

Example:
    python docs/diagrams/draw_architecture.py             # writes docs/images/{destseg,pfadseg}_architecture.png
    python docs/diagrams/draw_architecture.py --out /tmp  # somewhere else

"""

# ruff: noqa: RUF001  (the labels use typographic symbols on purpose: multiplication sign, minus sign, arrows)

import argparse
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import FancyBboxPatch, Patch

IMAGES = Path(__file__).resolve().parents[1] / "images"
WIDTH = 176  # drawing units; 10 units = 1 inch
TOP, BOTTOM = 100, -9


@dataclass(frozen=True)
class Style:
    """Fill and outline colours of a box."""

    face: str
    edge: str


FROZEN = Style("#dce6f2", "#3d6594")
STAGE1 = Style("#fde4c8", "#c0661b")
STAGE2 = Style("#d9efd5", "#3f8a3a")
LOSS = Style("#f9d7d6", "#b03a36")
DATA = Style("#f6f6f6", "#6b6b6b")
OP = Style("#ece4f4", "#6c4f94")
CONTAINER_ALPHA = 0.45
ARROW = "#333333"


def box(
    ax: Axes,
    x: float,
    y: float,
    w: float,
    h: float,
    text: str,
    style: Style,
    *,
    fontsize: float = 9,
    bold_first: bool = False,
    dashed: bool = False,
) -> tuple[float, float, float, float]:
    """A rounded box with centred text; returns ``(x, y, w, h)``. ``bold_first`` sets the first line in bold."""
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0,rounding_size=1.2",
            facecolor=style.face,
            edgecolor=style.edge,
            linewidth=1.6 if dashed else 1.2,
            linestyle=(0, (4, 2)) if dashed else "-",
            zorder=3,
        )
    )
    lines = text.split("\n")
    centre = (x + w / 2, y + h / 2)
    if not (bold_first and len(lines) > 1):
        weight = "bold" if bold_first else "normal"
        ax.text(
            *centre, text, ha="center", va="center", fontsize=fontsize, fontweight=weight, zorder=4, linespacing=1.3
        )
        return x, y, w, h
    # A bold title line above the rest, the pair centred vertically: measure both, then place them.
    title = ax.text(*centre, lines[0], ha="center", va="bottom", fontsize=fontsize, fontweight="bold", zorder=4)
    body = ax.text(*centre, "\n".join(lines[1:]), ha="center", va="top", fontsize=fontsize, zorder=4, linespacing=1.3)
    renderer = ax.figure.canvas.get_renderer()
    to_data = ax.transData.inverted()

    def height(artist: plt.Text) -> float:
        extent = artist.get_window_extent(renderer)
        return to_data.transform((0, extent.y1))[1] - to_data.transform((0, extent.y0))[1]

    gap = fontsize * 0.06
    total = height(title) + gap + height(body)
    top = centre[1] + total / 2
    title.set_y(top - height(title))
    body.set_y(top - height(title) - gap)
    return x, y, w, h


def container(ax: Axes, x: float, y: float, w: float, h: float, label: str, style: Style, *, dashed: bool = False):
    """A translucent group box with a bold label in its top-left corner."""
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0,rounding_size=1.8",
            facecolor=style.face,
            edgecolor=style.edge,
            alpha=CONTAINER_ALPHA,
            linewidth=1.4,
            linestyle=(0, (5, 2.5)) if dashed else "-",
            zorder=1,
        )
    )
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0,rounding_size=1.8",
            facecolor="none",
            edgecolor=style.edge,
            linewidth=1.4,
            linestyle=(0, (5, 2.5)) if dashed else "-",
            zorder=1,
        )
    )
    ax.text(
        x + 1.5, y + h - 1.2, label, ha="left", va="top", fontsize=9.5, fontweight="bold", color=style.edge, zorder=2
    )


def arrow(
    ax: Axes,
    points: Sequence[tuple[float, float]],
    label: str | None = None,
    *,
    label_at: tuple[float, float] | None = None,
    label_ha: str = "center",
    color: str = ARROW,
    dashed: bool = False,
) -> None:
    """A poly-line arrow through ``points`` (head at the last point) with an optional label."""
    linestyle = (0, (4, 2)) if dashed else "-"
    for start, end in itertools.pairwise(points[:-1]):
        ax.plot(
            [start[0], end[0]],
            [start[1], end[1]],
            color=color,
            linewidth=1.3,
            linestyle=linestyle,
            zorder=5,
            solid_capstyle="round",
        )
    ax.annotate(
        "",
        xy=points[-1],
        xytext=points[-2],
        arrowprops={
            "arrowstyle": "-|>,head_length=0.6,head_width=0.3",
            "color": color,
            "linewidth": 1.3,
            "linestyle": linestyle,
            "shrinkA": 0,
            "shrinkB": 0,
        },
        zorder=5,
    )
    if label:
        if label_at is None:
            (x0, y0), (x1, y1) = points[-2], points[-1]
            label_at = ((x0 + x1) / 2, (y0 + y1) / 2 + 1.2)
        ax.text(
            *label_at,
            label,
            ha=label_ha,
            va="center",
            fontsize=8.5,
            style="italic",
            color="#222222",
            zorder=6,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6, "alpha": 0.9},
        )


def chain(ax: Axes, boxes: Sequence[tuple[float, float, float, float]], labels: Sequence[str | None]) -> None:
    """Arrows from each box's right edge to the next box's left edge (same height)."""
    for (x0, y0, w0, h0), (x1, _, _, _), label in zip(boxes[:-1], boxes[1:], labels, strict=True):
        mid = y0 + h0 / 2
        arrow(ax, [(x0 + w0, mid), (x1, mid)])
        if label:
            ax.text(
                (x0 + w0 + x1) / 2, mid + 0.8, label, ha="center", va="bottom", fontsize=7.5, color="#444444", zorder=6
            )


def new_figure(title: str, subtitle: str) -> tuple[plt.Figure, Axes]:
    """A figure whose drawing units are square (10 units per inch)."""
    fig = plt.figure(figsize=(WIDTH / 10, (TOP - BOTTOM) / 10))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(BOTTOM, TOP)
    ax.axis("off")
    ax.text(2, 97.5, title, ha="left", va="center", fontsize=14, fontweight="bold")
    ax.text(2, 94.2, subtitle, ha="left", va="center", fontsize=9.5, color="#333333")
    return fig, ax


def legend(ax: Axes, inferred: bool = False) -> None:
    """Colour legend in the top-right corner."""
    handles = [
        Patch(facecolor=FROZEN.face, edgecolor=FROZEN.edge, label="frozen (ImageNet teacher)"),
        Patch(facecolor=STAGE1.face, edgecolor=STAGE1.edge, label="trained in stage 1"),
        Patch(facecolor=STAGE2.face, edgecolor=STAGE2.edge, label="trained in stage 2"),
        Patch(facecolor=LOSS.face, edgecolor=LOSS.edge, label="training loss"),
        Patch(facecolor=OP.face, edgecolor=OP.edge, label="fixed operation"),
    ]
    if inferred:
        handles.append(
            Patch(
                facecolor="white", edgecolor="#444444", linestyle="--", linewidth=1.4, label="inferred (no public code)"
            )
        )
    ax.legend(
        handles=handles,
        loc="upper right",
        bbox_to_anchor=(0.995, 0.995),
        ncol=3,
        fontsize=8.5,
        frameon=True,
        framealpha=1.0,
        edgecolor="#bbbbbb",
        handlelength=1.8,
        columnspacing=1.2,
    )


def footer(ax: Axes, text: str) -> None:
    """Notes under the drawing."""
    ax.text(2, BOTTOM + 0.8, text, ha="left", va="bottom", fontsize=8.8, color="#333333", linespacing=1.35)


# --- shared parts ---------------------------------------------------------------------------------------------------
STUDENT_LOSS = (
    r"$\Sigma_k$ mean over pixels of 1 − n($S_k$) · n($T_k$(clean))"
    "\nsummed over the batch · n = L2 normalisation over channels"
)
PRODUCT = r"$X_k$ = −n($T_k$) ⊙ n($S_k$)"
LEVELS = (("T1 · layer1", "64@64×64"), ("T2 · layer2", "128@32×32"), ("T3 · layer3", "256@16×16"))


def inputs_column(ax: Axes) -> dict[str, tuple[float, float, float, float]]:
    """Clean image, anomaly generator, corrupted image and mask on the left; returns their boxes."""
    clean = box(ax, 2, 78.5, 20, 9, "clean image\n3×256×256\n(train: rotated)", DATA, bold_first=True)
    generator = box(
        ax, 2, 61, 20, 12.5, "synthetic anomaly\nPerlin mask M\n+ texture (DTD)\nβ ~ U[0, 0.8)", OP, bold_first=True
    )
    corrupted = box(ax, 8, 43, 14, 11, "corrupted\n3×256×256\n(test: the\ntest image)", DATA, bold_first=True)
    mask = box(ax, 2, 2, 20, 9, "mask M\n1×256×256", DATA, bold_first=True)
    arrow(ax, [(12, 78.5), (12, 73.5)])
    arrow(ax, [(15, 61), (15, 54)])
    arrow(ax, [(4.5, 61), (4.5, 11)], "M", label_at=(4.5, 30))
    return {"clean": clean, "generator": generator, "corrupted": corrupted, "mask": mask}


def teacher_lane(ax: Axes, y: float, label: str) -> list[tuple[float, float, float, float]]:
    """A frozen teacher (layers 1-3) as three boxes in a container at height ``y``; returns the level boxes."""
    container(ax, 26, y, 54, 15, label, FROZEN)
    levels = [
        box(ax, 28 + 17.5 * k, y + 1.5, 15, 8.5, f"{name}\n{shape}", FROZEN, bold_first=True)
        for k, (name, shape) in enumerate(LEVELS)
    ]
    chain(ax, levels, [None, None])
    return levels


def segmentation_lanes(ax: Axes, in_channels: int, mask_box: tuple[float, float, float, float]) -> float:
    """Segmentation network (right to left), stage-2 loss, anomaly map and score; returns the residual box's x."""
    container(ax, 36, 16, 138, 16.5, "Segmentation network (stage 2; the student is frozen in eval mode)", STAGE2)
    residual = box(
        ax,
        134,
        17.5,
        38,
        10.5,
        f"2 × BasicBlock\n{in_channels}→256 @64×64\n(1×1 conv + BN shortcut)",
        STAGE2,
        bold_first=True,
    )
    box(
        ax,
        88,
        17.5,
        40,
        10.5,
        "ASPP 256→256 @64×64\nglobal pool + 3×3 dilation 6 / 12 / 18\nconcat 1024 → 3×3 conv → 256",
        STAGE2,
        bold_first=True,
    )
    box(ax, 40, 17.5, 42, 10.5, "Head\nconv3×3 256→256, conv1×1 256→1\nsigmoid → 1@64×64", STAGE2, bold_first=True)
    arrow(ax, [(134, 22.75), (128, 22.75)])
    arrow(ax, [(88, 22.75), (82, 22.75)])
    box(
        ax,
        28,
        1,
        44,
        11,
        "Stage 2 loss\nfocal (γ = 4) + L1\nvs M resized to 64×64, re-binarised",
        LOSS,
        bold_first=True,
    )
    arrow(ax, [(52, 17.5), (52, 12)])
    mx, my, mw, mh = mask_box
    arrow(ax, [(mx + mw, my + mh / 2), (28, my + mh / 2)])
    box(ax, 88, 1, 40, 11, "anomaly map 1@256×256\nbilinear upsampling ×4\n(no smoothing)", OP, bold_first=True)
    arrow(ax, [(76, 17.5), (76, 6.5), (88, 6.5)], "prediction", label_at=(81.5, 8.2))
    box(ax, 134, 1, 38, 11, "image score\nmean of the 100 largest\nanomaly-map values", OP, bold_first=True)
    arrow(ax, [(128, 6.5), (134, 6.5)])
    return residual[0]


def save(fig: plt.Figure, path: Path) -> Path:
    """Write a PNG without time stamps, so that re-rendering the same drawing gives the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, facecolor="white", metadata={"Software": None})
    plt.close(fig)
    return path


# --- the two diagrams -----------------------------------------------------------------------------------------------
def draw_destseg(path: Path) -> Path:
    """DeSTSeg (Zhang et al., CVPR 2023) as the reference code builds it."""
    fig, ax = new_figure(
        "DeSTSeg: segmentation-guided denoising student-teacher",
        "Zhang et al., CVPR 2023 · shapes as channels@height×width for a 3×256×256 input",
    )
    legend(ax)
    inputs = inputs_column(ax)

    # Lane 1: frozen teacher on the clean image -> stage-1 target.
    clean_levels = teacher_lane(ax, 75, "Teacher on the clean image (frozen)")
    cx, _, cw, _ = inputs["clean"]
    arrow(ax, [(cx + cw, 83), (clean_levels[0][0], 83)])
    box(ax, 112, 75, 62, 15, f"Stage 1 loss (cosine)\n{STUDENT_LOSS}", LOSS, bold_first=True)
    arrow(ax, [(80, 83), (112, 83)], "target T1, T2, T3", label_at=(96, 85.3))

    # Lane 2: denoising student (encoder from scratch, decoder without skips).
    container(
        ax,
        26,
        53,
        148,
        18,
        "Denoising student (stage 1): ResNet-18 encoder from scratch, decoder without skip connections",
        STAGE1,
    )
    names = [
        ("E1", "64@64×64"),
        ("E2", "128@32×32"),
        ("E3", "256@16×16"),
        ("E4", "512@8×8"),
        ("D4", "512@8×8"),
        ("S3", "256@16×16"),
        ("S2", "128@32×32"),
        ("S1", "64@64×64"),
    ]
    student = [
        box(ax, 28 + 18.3 * k, 54.5, 15, 9, f"{name}\n{shape}", STAGE1, bold_first=True)
        for k, (name, shape) in enumerate(names)
    ]
    chain(ax, student, [None, None, None, "E4 only", "↑×2", "↑×2", "↑×2"])
    ax.text(28 + 1.5 * 18.3 + 7.5, 65.2, "encoder", ha="center", fontsize=8.5, style="italic", color=STAGE1.edge)
    ax.text(
        28 + 5.5 * 18.3 + 7.5,
        65.2,
        "decoder: 4 stages of 2 BasicBlocks",
        ha="center",
        fontsize=8.5,
        style="italic",
        color=STAGE1.edge,
    )
    x, _, w, _ = inputs["corrupted"]
    arrow(ax, [(x + w, 51), (24, 51), (24, 59), (28, 59)])
    s_centre = (student[5][0] + student[7][0] + student[7][2]) / 2
    arrow(ax, [(s_centre, 71), (s_centre, 75)], "S1, S2, S3", label_at=(s_centre + 8, 73))

    # Lane 3: the same teacher on the corrupted image; per-level products into the segmentation input.
    corrupted_levels = teacher_lane(ax, 35, "Same teacher on the corrupted image")
    arrow(ax, [(x + w, 46), (24, 46), (24, 41.25), (corrupted_levels[0][0], 41.25)])
    box(
        ax,
        112,
        36,
        62,
        12.5,
        f"Segmentation input\n{PRODUCT} per level k = 1..3\nX2, X3 ↑ to 64×64, concatenated → 448@64×64",
        OP,
        bold_first=True,
    )
    arrow(ax, [(80, 42), (112, 42)], "T1, T2, T3", label_at=(96, 44.3))
    arrow(ax, [(s_centre, 53), (s_centre, 48.5)], "S1, S2, S3", label_at=(s_centre + 8, 50.8))

    # Lanes 4-5: segmentation network, losses, outputs.
    residual_x = segmentation_lanes(ax, 448, inputs["mask"])
    arrow(
        ax,
        [(residual_x + 19, 36), (residual_x + 19, 28)],
        "448@64×64",
        label_at=(residual_x + 17.5, 34.3),
        label_ha="right",
    )
    footer(
        ax,
        "Stage 1: 1000 SGD steps (lr 0.4, momentum 0.9) train the student to map the corrupted image to the "
        "teacher's features of the clean one.\nStage 2: 4000 SGD steps (lr 0.1 residual blocks, 0.01 ASPP + head) "
        "train the segmentation network on synthetic masks. At test time the test image\ntakes the corrupted "
        "image's place; the clean-image teacher pass and both losses are used in training only.",
    )
    return save(fig, path)


def draw_pfadseg(path: Path) -> Path:
    """PFADSeg as this project builds it (design inferred from the abstract of arXiv 2501.12104)."""
    fig, ax = new_figure(
        "PFADSeg: teacher encoder, student decoder, adaptive fusion (design inferred)",
        "Song et al., arXiv 2501.12104 · shapes as channels@height×width for a 3×256×256 input · "
        "dashed = inferred from the abstract",
    )
    legend(ax, inferred=True)
    inputs = inputs_column(ax)

    # Lane 1: frozen teacher on the clean image -> stage-1 target (as DeSTSeg).
    clean_levels = teacher_lane(ax, 75, "Teacher on the clean image (frozen)")
    cx, _, cw, _ = inputs["clean"]
    arrow(ax, [(cx + cw, 83), (clean_levels[0][0], 83)])
    box(ax, 112, 75, 62, 15, f"Stage 1 loss (cosine, as DeSTSeg)\n{STUDENT_LOSS}", LOSS, bold_first=True)
    arrow(ax, [(80, 83), (112, 83)], "target T1, T2, T3", label_at=(96, 85.3))

    # Lane 2: the teacher encodes the corrupted image; fusion bottleneck; DeSTSeg's decoder.
    teacher_levels = teacher_lane(ax, 53, "Teacher encodes the corrupted image")
    x, _, w, _ = inputs["corrupted"]
    arrow(ax, [(x + w, 48.5), (24, 48.5), (24, 59.25), (teacher_levels[0][0], 59.25)])
    container(ax, 83, 53, 32, 18, "Fusion bottleneck (inferred)", STAGE1, dashed=True)
    box(
        ax,
        84.5,
        54.5,
        29,
        11.5,
        "T1: 2 × conv3×3 s2 → 256\nT2: conv3×3 s2 → 256\n+ T3 → 768@16×16\n2 BasicBlocks (s2) → 512@8×8",
        STAGE1,
        fontsize=8.5,
        dashed=True,
    )
    arrow(ax, [(80, 60.25), (84.5, 60.25)])
    ax.text(81.5, 63.5, "raw", ha="center", fontsize=7.5, color="#444444")
    container(ax, 118, 53, 56, 18, "Student decoder (DeSTSeg's, stage 1)", STAGE1)
    ax.text(
        146,
        65.2,
        "↑×2 between stages, no skip connections",
        ha="center",
        fontsize=8.5,
        style="italic",
        color=STAGE1.edge,
    )
    names = [("D4", "512@8×8"), ("S3", "256@16×16"), ("S2", "128@32×32"), ("S1", "64@64×64")]
    decoder = [
        box(ax, 119.5 + 13.9 * k, 54.5, 11.8, 9, f"{name}\n{shape}", STAGE1, fontsize=8.5, bold_first=True)
        for k, (name, shape) in enumerate(names)
    ]
    chain(ax, decoder, [None, None, None])
    arrow(ax, [(113.5, 59), (119.5, 59)])
    s_centre = (decoder[1][0] + decoder[3][0] + decoder[3][2]) / 2
    arrow(ax, [(s_centre, 71), (s_centre, 75)], "S1, S2, S3", label_at=(s_centre + 7, 73))

    # Lane 3: products, adaptive level fusion, concatenation.
    box(
        ax,
        26,
        35,
        44,
        13,
        f"Level products\n{PRODUCT}, k = 1..3\nplain: X2, X3 ↑ 64×64, concat\n→ 448@64×64",
        OP,
        bold_first=True,
    )
    arrow(ax, [(40, 53), (40, 48)], "T1, T2, T3", label_at=(47, 50.5))
    arrow(ax, [(s_centre, 53), (s_centre, 51), (64, 51), (64, 48)], "S1, S2, S3", label_at=(100, 51))
    box(
        ax,
        77,
        35,
        52,
        13,
        "Adaptive level fusion (stage 2, inferred)\n"
        "per level: 1×1 conv + BN + ReLU → 128, ↑ 64×64\n1×1 conv 384→3, softmax over levels\n"
        "per-pixel weighted sum → 128@64×64",
        STAGE2,
        fontsize=8.5,
        bold_first=True,
        dashed=True,
    )
    arrow(ax, [(70, 43.5), (77, 43.5)], "X1..X3", label_at=(73.5, 45.3))
    concat = box(ax, 136, 37, 38, 9, "concatenate\n448 plain + 128 fused\n→ 576@64×64", OP, bold_first=True)
    arrow(ax, [(129, 41.5), (136, 41.5)], "128", label_at=(132.5, 43.3))
    arrow(ax, [(48, 35), (48, 33.8), (142, 33.8), (142, 37)], "448 plain", label_at=(110, 33.8))

    segmentation_lanes(ax, 576, inputs["mask"])
    arrow(ax, [(concat[0] + 28, 37), (concat[0] + 28, 28)], "576", label_at=(concat[0] + 31.5, 35))
    footer(
        ax,
        "No code or method section of PFADSeg is public: the fusion operators, the adaptive fusion's form and "
        "the decoder reading the teacher's raw features are this project's inference.\nEverything else is "
        "DeSTSeg's recipe: cosine loss, then focal + L1; 1000 + 4000 SGD steps (student lr 0.4; fusion and "
        "residual blocks 0.1; ASPP + head 0.01).\nSwitches: decoder_input='student_encoder' restores DeSTSeg's "
        "student, fusion='concat' the plain 448-channel input.",
    )
    return save(fig, path)


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Render both diagrams and print their paths."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=IMAGES, help="output folder (default docs/images)")
    args = parser.parse_args(argv)
    paths = [
        draw_destseg(args.out / "destseg_architecture.png"),
        draw_pfadseg(args.out / "pfadseg_architecture.png"),
    ]
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
