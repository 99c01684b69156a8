"""Draw the DAKD method diagram to figures/method.png: `python figures/method_diagram.py [--out PNG]`."""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

HERE = Path(__file__).resolve().parent
COLORS = {"data": "#dbe9f6", "net": "#fde2c8", "frozen": "#e4e4e4", "loss": "#e2f0d9", "disc": "#f4d7e6"}


def _box(ax, xy, w, h, text, kind, fontsize=9):
    ax.add_patch(FancyBboxPatch(xy, w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=COLORS[kind],
                                ec="#444444", lw=1.0))
    ax.text(xy[0] + w / 2, xy[1] + h / 2, text, ha="center", va="center", fontsize=fontsize)
    return (xy[0], xy[1], w, h)


def _arrow(ax, start, end, text=None, style="-|>", color="#333333", dashed=False):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, color=color, lw=1.1,
                                 linestyle="--" if dashed else "-"))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, text, ha="center", fontsize=7.5,
                color=color)


def draw(out: Path) -> Path:
    """Render the diagram: source and target streams, student, frozen teacher, D1/D2, the loss terms."""
    fig, ax = plt.subplots(figsize=(11, 5.2))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 5.2)
    ax.axis("off")
    _box(ax, (0.2, 3.6), 1.8, 0.9, "source images\n+ labels (GTA5 / BDD)", "data")
    _box(ax, (0.2, 0.7), 1.8, 0.9, "target images\n(Cityscapes, no labels)", "data")
    _box(ax, (3.0, 2.15), 2.2, 1.2, "student DRN-D-22\naux head (level 6)\nmain head (level 8)", "net")
    _box(ax, (3.0, 4.05), 2.2, 0.95, "teacher DRN-D-38 (frozen,\neval mode, no grad)\naux L7, main L8", "frozen")
    _box(ax, (6.4, 3.75), 2.3, 1.0, "segmentation CE (source)\nCE(main) + λ_seg CE(aux)", "loss")
    distill = "distillation\nλ_kl (KL_main + λ_seg KL_aux)\n+ λ_mse MSE_aux + λ_ce CE(main, argmax T)"
    _box(ax, (6.3, 2.25), 2.6, 1.1, distill, "loss", fontsize=7.5)
    _box(ax, (6.4, 0.5), 2.3, 1.1, "D1 (aux), D2 (main)\non softmax maps\nsource → 0, target → 1", "disc")
    _box(ax, (9.2, 0.5), 1.6, 1.1, "adversarial\nλ_adv1, λ_adv2:\ntarget → 'source'", "loss", fontsize=8)
    _arrow(ax, (2.0, 4.05), (3.0, 3.0))
    _arrow(ax, (2.0, 1.15), (3.0, 2.45))
    _arrow(ax, (2.0, 4.3), (3.0, 4.5), dashed=True)
    _arrow(ax, (2.0, 1.3), (3.0, 4.2), dashed=True)
    _arrow(ax, (5.2, 3.1), (6.4, 4.1), "source preds")
    _arrow(ax, (5.2, 2.75), (6.4, 2.8), "student preds")
    _arrow(ax, (5.2, 4.5), (6.4, 3.3), "teacher preds", dashed=True)
    _arrow(ax, (5.2, 2.3), (6.4, 1.1), "softmax (source, target)")
    _arrow(ax, (8.7, 1.05), (9.2, 1.05))
    ax.text(5.5, 0.1, "paradigms: (a) distil on source, (b) on target, (c) both, (d) (c) then (b)   "
            "— dashed: teacher path, no gradient", ha="center", fontsize=8.5, style="italic")
    ax.set_title("Domain Adaptive Knowledge Distillation (DAKD): one training iteration", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    """Command line: draw the diagram."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE / "method.png")
    print(draw(parser.parse_args().out))


if __name__ == "__main__":
    main()
