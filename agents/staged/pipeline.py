"""``run_pipeline``: a Decathlon folder with noisy labels in, refined labels + a model + a report out.

Output folder (``out``)::

    refined_labels/NAME.nii.gz   one per labelsTr file: same name, shape, affine, header, dtype
    model.pt                     the staged model (agents.common.checkpoint format, kind "staged")
    report.json                  method, budget, stage plan, per stage and round: losses,
                                 rewards, loss weights, agreement with the given labels;
                                 label-refinement rounds; timing; ``eval`` (only with eval_labels)
    training_curves.png          losses, rewards and agreement over the updates

Settings: after loading, the dataset's fingerprint (shapes, spacing, raw intensities, the
normalisation applied, foreground fraction) sets the patch, batch and window the user did not
give (``agents.staged.fingerprint.derive_settings``); ``report.json`` keeps ``fingerprint`` and
``derived_settings`` (each value with its source, "fingerprint" or "user").

Repeatability: with an ``updates`` budget, a fixed ``seed`` and a fixed thread count on the
same CPU and torch build, two runs give the same refined labels (bit for bit), the same model
weights and the same report except the timings. ``minutes`` / ``cpu_minutes`` budgets follow
the machine's speed (the stage schedule and the number of updates change with load and CPU),
so two runs of the same command can differ.

Clean labels: the pipeline reads ``DIR/imagesTr`` and ``DIR/labelsTr`` only. ``eval_labels``
(a folder of clean labels named like ``labelsTr``) is opened only after the model and the
refined labels have been written, to score the given labels, the refined labels and the
model's predictions on the training images against it (Dice, IoU, HD95, ASD of
``svl_env.metrics``). Its existence is checked up front (a path check, no file is opened).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import torch

from agents.common.checkpoint import atomic_write, check_dir_path
from agents.common.budget import Budget
from agents.staged.checkpoint import MODEL_FILE, save_model
from agents.staged.data import load_training_set
from agents.staged.harness import TrainResult, make_train_config, predict_training
from agents.staged.methods import METHODS, STAGES, train

__all__ = ["run_pipeline", "score_masks", "json_safe", "REPORT_FILE", "CURVES_FILE", "REFINED_DIR"]

REPORT_FILE = "report.json"
CURVES_FILE = "training_curves.png"
REFINED_DIR = "refined_labels"
STAGE_ALIASES = {"warmup": "warmup", "transition": "transition", "full": "full", "full-rl": "full", "full_rl": "full",
                 "fullrl": "full", "rl": "full"}


def parse_stages(stages) -> tuple[str, ...]:
    """Stage names (aliases: full-rl, full_rl) -> canonical, in the paper's order; errors name the bad one."""
    if stages is None:
        return STAGES
    out = set()
    for s in stages:
        key = str(s).strip().lower()
        if key not in STAGE_ALIASES:
            raise ValueError(f"unknown stage {s!r}; choose from warmup, transition, full (alias full-rl)")
        out.add(STAGE_ALIASES[key])
    if not out:
        raise ValueError("at least one stage is needed")
    return tuple(s for s in STAGES if s in out)


def score_masks(preds: list[np.ndarray], truths: list[np.ndarray], spacings) -> dict:
    """Mean (and per-case) Dice, IoU, HD95, ASD of masks against reference masks (svl_env.metrics).

    HD95 / ASD in mm (NaN where exactly one mask is empty; means ignore NaN)."""
    from svl_env import metrics as M

    rows = {"dice": [], "iou": [], "hd95": [], "asd": []}
    for p, t, sp in zip(preds, truths, spacings):
        pt, tt = torch.as_tensor(np.asarray(p, dtype=bool))[None], torch.as_tensor(np.asarray(t, dtype=bool))[None]
        rows["dice"].append(float(M.dice(pt, tt)[0]))
        rows["iou"].append(float(M.iou(pt, tt)[0]))
        rows["hd95"].append(float(M.hd95(pt, tt, sp)[0]))
        rows["asd"].append(float(M.asd(pt, tt, sp)[0]))
    out = {}
    for k, v in rows.items():
        a = np.asarray(v, dtype=np.float64)
        out[k] = float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")
    out["per_case"] = rows
    return out


def json_safe(x):
    """``x`` as strict JSON can hold it: NaN / inf -> None (null), numpy scalars -> Python numbers,
    paths -> strings, tuples -> lists (``report.json`` and the benchmarks' run reports)."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x


def _check_out(out: Path, data: Path) -> None:
    d, o = data.resolve(), out.resolve()
    if o == d or o in (d / "imagesTr", d / "labelsTr", d / "imagesTs"):
        raise ValueError(f"--out {out} would overwrite the input folder {data}; choose another folder")
    check_dir_path(out, "--out")  # before training, not after it


def run_pipeline(data, out, *, method: str = "svl-drl", minutes: float | None = None,
                 cpu_minutes: float | None = None, updates: int | None = None, stages=None, seed: int = 0,
                 device="cpu", eval_labels=None, label_value: int | None = 1, modality: str = "auto",
                 config: dict | None = None, model_config: dict | None = None, threads: int | None = None,
                 progress: bool = True, plot: bool = True, precision: str | None = None) -> dict:
    """Train ``method`` on ``data`` (Decathlon layout, noisy labelsTr) and write ``out`` (module doc).

    Budget: ``updates``, wall ``minutes``, or ``cpu_minutes`` (whichever ends first; default
    10 wall minutes). ``precision``: auto (None), fp32 or bf16 (``agents.common.precision``);
    the report's ``precision`` is the resolved one. Returns the report dict (also written to
    ``out/report.json``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    stages = parse_stages(stages)
    if METHODS[method].stages is None and stages != STAGES:
        staged = " and ".join(k for k, v in METHODS.items() if v.stages is not None)
        raise ValueError(f"--stages applies to {staged} only (method {method!r} has a single stage)")
    if updates is None and minutes is None and cpu_minutes is None:
        minutes = 10.0
    budget = Budget(updates=updates, minutes=minutes, cpu_minutes=cpu_minutes)
    cfg = make_train_config(**(config or {}))
    data, out = Path(data), Path(out)
    if not data.exists():
        raise FileNotFoundError(f"data folder not found: {data}")
    if not data.is_dir():
        raise NotADirectoryError(f"data path is not a folder: {data}")
    _check_out(out, data)
    eval_dir = None
    if eval_labels is not None:
        eval_dir = Path(eval_labels)
        if not eval_dir.is_dir():
            raise FileNotFoundError(f"--eval-labels folder not found: {eval_dir}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))

    ts = load_training_set(data, label_value=label_value, modality=modality, progress=progress)
    fp, derived, cfg = _fingerprint_settings(ts, config or {}, model_config or {}, modality)
    result: TrainResult = train(method, ts, budget=budget, seed=seed, stages=stages, config=cfg,
                                model_config=model_config, device=dev, progress=progress, precision=precision)

    # -- outputs (before anything may look at clean labels)
    out.mkdir(parents=True, exist_ok=True)
    value = 1 if label_value is None else int(label_value)
    from svl_env.data.nifti import save_label_like

    refined_dir = out / REFINED_DIR
    for mask, ref in zip(result.refined, ts.label_paths):
        save_label_like(mask.astype(np.int64) * value, ref, refined_dir / ref.name)
    meta = {"method": method, "seed": int(seed), "modality": _modality(data, modality),
            "window": cfg["window"], "label_value": value, "stages": list(stages), "updates": result.updates}
    save_model(out / MODEL_FILE, result.model, meta)

    report = {
        "method": method, "data": str(data), "seed": int(seed), "device": str(dev),
        "budget": {**budget.as_dict(), "clock": "training work only (updates + label refinement); "
                                                 "cpu = time.process_time of this process (all threads)"},
        "stages": list(stages), "fingerprint": fp, "derived_settings": derived, "config": cfg,
        "model": dict(result.model.config),
        "cases": ts.names, "updates": result.updates, "train_cpu_s": round(result.cpu_s, 2),
        "train_wall_s": round(result.wall_s, 2), "threads": torch.get_num_threads(),
        "platform": platform.platform(), "torch": torch.__version__,
        "entries": result.entries, **result.extra,
    }
    given_vs_refined = [_dice(a, b) for a, b in zip(result.refined, ts.given)]
    report["refined_vs_given_dice"] = float(np.mean(given_vs_refined))

    # -- only now: clean labels, if the user has them
    if eval_dir is not None:
        report["eval"] = _evaluate(eval_dir, ts, result, cfg, dev, label_value)
    _write_report(out, report)
    if plot:
        plot_curves(result.curves, result.entries, out / CURVES_FILE, title=f"{method} on {data.name}")
    return report


def _fingerprint_settings(ts, config: dict, model_config: dict, modality: str) -> tuple[dict, dict, dict]:
    """The dataset fingerprint, the settings derived from it (``agents.staged.fingerprint``;
    the user's ``patch`` / ``batch`` / ``window`` / ``modality`` win) and the training config
    that uses them."""
    from agents.staged.fingerprint import derive_settings, fingerprint
    from agents.staged.model import DEFAULT_MODEL

    mcfg = {**DEFAULT_MODEL, **model_config}
    multiple = 2 ** int(mcfg["depth"]) if mcfg["backbone"] == "unet" else 32  # StagedNet.multiple
    fp = fingerprint(ts)
    user = {k: config.get(k) for k in ("patch", "batch", "window")}
    user["modality"] = modality
    derived = derive_settings(fp, multiple=multiple, user=user)
    cfg = make_train_config(**{**config, **{k: derived[k]["value"] for k in ("patch", "batch", "window")}})
    return fp, derived, cfg


def _modality(data: Path, modality: str) -> str:
    from svl_env.data.decathlon import DecathlonDataset

    try:
        return DecathlonDataset(data, modality=modality).modality
    except Exception:
        return modality


def _dice(a, b) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def _evaluate(eval_dir: Path, ts, result: TrainResult, cfg, dev, label_value) -> dict:
    from svl_env.data.nifti import label_mask, load_nifti, read_array

    clean = []
    for name, ref, img in zip(ts.names, ts.label_paths, ts.images):
        path = eval_dir / ref.name
        if not path.is_file():
            alt = [eval_dir / (name + ext) for ext in (".nii.gz", ".nii")]
            path = next((p for p in alt if p.is_file()), path)
        if not path.is_file():
            raise FileNotFoundError(f"--eval-labels has no label for case {name!r} (expected {eval_dir / ref.name})")
        arr = read_array(load_nifti(path, "label"), path, "label", as_float=False)
        if arr.shape != img.shape:
            from svl_env.data.nifti import DataError

            raise DataError(f"{path}: shape {arr.shape} does not match the training image {img.shape}")
        clean.append(label_mask(arr, label_value, path))
    spacings = [c.spacing for c in ts.cases]
    preds = predict_training(result.model, ts, cfg, dev)
    rounds = [{"round": k + 1, **{m: v for m, v in score_masks(labs, clean, spacings).items() if m != "per_case"}}
              for k, labs in enumerate(result.round_labels)]
    return {"labels": str(eval_dir), "rounds": rounds,
            "given_labels": score_masks(ts.given, clean, spacings),
            "refined_labels": score_masks(result.refined, clean, spacings),
            "model_on_training_images": score_masks(preds, clean, spacings)}


def _write_report(out: Path, report: dict) -> None:
    text = json.dumps(json_safe(report), indent=1)
    atomic_write(out / REPORT_FILE, lambda tmp: Path(tmp).write_text(text))


def plot_curves(curves: dict, entries: list[dict], path: Path, title: str = "") -> Path:
    """PNG of the training curves (matplotlib, Agg): losses, rewards, loss weights, agreement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    u = np.asarray(curves.get("update", []), dtype=float)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))

    def series(k):
        return np.asarray([np.nan if v is None else v for v in curves.get(k, [])], dtype=float)

    def smooth(y, n=15):
        if y.size < n or not np.isfinite(y).any():
            return y
        out = np.full_like(y, np.nan)
        for i in range(y.size):
            w = y[max(0, i - n + 1): i + 1]
            w = w[np.isfinite(w)]
            out[i] = w.mean() if w.size else np.nan
        return out

    stages = curves.get("stage", [])
    for ax in axes.flat:
        start = 0
        for i in range(1, len(stages) + 1):
            if i == len(stages) or stages[i] != stages[start]:
                colour = {"crossfit": "#e6e6e6", "warmup": "#dde8f5", "transition": "#f5ecd8", "full": "#e1f2e0",
                          "refit": "#efe3f3"}.get(stages[start], "#eee")
                ax.axvspan(u[start], u[i - 1] + 1, color=colour, lw=0)
                start = i
    ax = axes[0, 0]
    for k in ("loss", "dice_loss", "value_loss", "policy_loss"):
        y = series(k)
        if y.size and np.isfinite(y).any():
            ax.plot(u, smooth(y), label=k)
    ax.set_title("losses (moving mean)")
    ax.set_xlabel("update")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    for k in ("episode_reward", "intensity_reward"):
        y = series(k)
        if y.size and np.isfinite(y).any():
            ax.plot(u, smooth(y), label=k)
    ax.set_title("episode reward (Dice + continuity composite)", fontsize=10)
    ax.set_xlabel("update")
    if ax.lines:
        ax.legend(fontsize=8)
    ax = axes[1, 0]
    for k in ("w_dice", "w_value", "w_policy", "lr"):
        y = series(k)
        if y.size and np.isfinite(y).any():
            ax.plot(u, y / (np.nanmax(y) if k == "lr" and np.nanmax(y) > 0 else 1.0),
                    label=k if k != "lr" else "lr / lr0")
    ax.set_title("loss weights (1-λ-..., λ/α, β) and learning rate")
    ax.set_xlabel("update")
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    xs = [e.get("first_update", 0) + e.get("updates", 0) for e in entries if "pred_vs_given_dice" in e]
    ys = [e["pred_vs_given_dice"] for e in entries if "pred_vs_given_dice" in e]
    if xs:
        ax.plot(xs, ys, "o-", label="model vs given labels")
    y = series("agent_dice")
    if y.size and np.isfinite(y).any():
        ax.plot(u, smooth(y), label="label agents' final Dice vs target")
    ax.set_ylim(0, 1.02)
    ax.set_title("agreement (Dice)")
    ax.set_xlabel("update")
    if ax.lines:
        ax.legend(fontsize=8)
    fig.suptitle(title + "  (blue: Warmup, beige: Transition, green: Full RL)", fontsize=10)
    fig.tight_layout()
    path = Path(path)

    def write(tmp):
        fig.savefig(tmp, dpi=80, format="png")

    atomic_write(path, write)
    plt.close(fig)
    return path
