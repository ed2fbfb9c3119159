"""The benchmark's figures: metric bars with confidence intervals, Dice over the steps of an
episode, and slice overlays of the refined masks (matplotlib, headless)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from agents.common.checkpoint import atomic_write
from agents.eval import episodes as E
from agents.eval.leaderboard import METRICS
from agents.heuristics import ORACLE_NAME

def plot_metrics(rows: list[dict], path) -> Path:
    """Horizontal bars with 95% CIs, one panel per metric (not s / episode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mets = [m for m in METRICS if m[0] != "seconds"]
    names = [r["policy"] for r in rows][::-1]
    fig, axes = plt.subplots(1, len(mets), figsize=(3.2 * len(mets), 0.45 * len(rows) + 1.6), sharey=True)
    colors = ["#999999" if n == ORACLE_NAME else "#2b7bba" for n in names]
    for ax, (f, title, up) in zip(axes, mets):
        mean = np.array([r[f"{f}_mean"] for r in rows][::-1], dtype=float)
        ci = np.nan_to_num(np.array([r[f"{f}_ci95"] for r in rows][::-1], dtype=float))
        ax.barh(np.arange(len(names)), np.nan_to_num(mean), xerr=ci, color=colors, capsize=3)
        ax.set_title(f"{title} ({'higher' if up else 'lower'} is better)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        if f == "dice_gain":
            ax.axvline(0, color="k", lw=0.8)
    axes[0].set_yticks(np.arange(len(names)), names)
    fig.suptitle(f"Policies on the same {rows[0]['n']} seeded episodes (mean, 95% CI)", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return Path(path)


def plot_dice_steps(curves: dict[str, np.ndarray], path) -> Path:
    """Left: mean Dice vs truth after each step (95% CI band; step 0 is the annotation).
    Right: the paired gain over the annotation (Dice_t - Dice_0), whose CI is free of the
    case-to-case spread that all policies share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    # tab20's dark then light shades, greys left out: grey is the oracle's (dashed)
    tab = plt.get_cmap("tab20").colors
    palette = [tab[i] for i in list(range(0, 20, 2)) + list(range(1, 20, 2)) if i not in (14, 15)]
    others = [p for p in curves if p != ORACLE_NAME]
    for pol, c in curves.items():
        c = np.asarray(c, dtype=float)
        style = dict(ls="--", color="#777777") if pol == ORACLE_NAME else \
            dict(color=palette[others.index(pol) % len(palette)])
        for ax, data in zip(axes, (c, c - c[:, :1])):
            stats = [E.mean_ci(data[:, t]) for t in range(data.shape[1])]
            m = np.array([s[0] for s in stats])
            h = np.nan_to_num(np.array([s[1] for s in stats]))
            x = np.arange(data.shape[1])
            line, = ax.plot(x, m, marker="o", ms=3, label=pol, **style)
            ax.fill_between(x, m - h, m + h, alpha=0.1, color=line.get_color())
    axes[0].set_ylabel("Dice vs truth")
    axes[1].set_ylabel("Dice gain over the annotation")
    axes[1].axhline(0, color="k", lw=0.8)
    for ax in axes:
        ax.set_xlabel("step within the episode (0 = annotation)")
        ax.grid(alpha=0.3)
    fig.suptitle("Dice across the steps of an episode (mean, 95% CI)", fontsize=10)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return Path(path)


def mask_dice(a, b) -> float:
    """Dice of two masks (thresholded at 0.5); 1.0 when both are empty."""
    a, b = a > 0.5, b > 0.5
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def plot_overlay(case: dict[str, dict], episode: int, path) -> Path:
    """One case: image, annotation, truth and each policy's refined mask on the axial slice
    with the most truth. ``case``: {policy: {"image", "annotation", "truth", "mask"}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(case.values()))
    img, ann, tru = first["image"], first["annotation"], first["truth"]
    z = int(np.argmax(tru.reshape(tru.shape[0], -1).sum(1))) if tru.any() else tru.shape[0] // 2
    panels = [("image", None, None), ("annotation", ann, f"Dice {mask_dice(ann, tru):.3f}"), ("truth", tru, "")]
    panels += [(pol, d["mask"], f"Dice {mask_dice(d['mask'], tru):.3f}") for pol, d in case.items()
               if pol not in (ORACLE_NAME,)]
    ncol = min(6, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.3 * ncol, 2.9 * nrow), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, m, sub) in zip(axes.ravel(), panels):
        ax.imshow(img[z], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if m is not None:
            colour = "#ff3030" if title == "truth" else ("#ffd700" if title == "annotation" else "#30e060")
            ax.imshow(np.ma.masked_where(m[z] < 0.5, m[z]), cmap=matplotlib.colors.ListedColormap([colour]),
                      alpha=0.45, vmin=0, vmax=1, interpolation="nearest")
            ax.contour(tru[z], levels=[0.5], colors="#ff3030", linewidths=0.8)
        ax.set_title(title + (f"\n{sub}" if sub else ""), fontsize=8)
    fig.suptitle(f"episode {episode}, axial slice {z} (red contour = truth)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return Path(path)
