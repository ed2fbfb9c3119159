"""A plain 3D U-Net trained on the given (noisy) labels: the control of issue 16.

The recipe a medical-imaging user would write in ~40 lines, as the issue describes it: MONAI's
``monai.networks.nets.UNet`` (16 channels, two levels: channels (16, 32), one stride-2 step),
Adam 1e-3, ``DiceCELoss(sigmoid=True)`` (soft Dice + BCE), every image z-scored (its own mean and
standard deviation), uniformly random 32^3 patches (no foreground bias), batch 4, ``--steps``
updates (default 300), then ``monai.inferers.sliding_window_inference`` (32^3 windows, overlap
0.5) and a 0.5 threshold on the sigmoid.

Budget: ``--steps N`` updates and / or ``--cpu-minutes M`` of process CPU time
(``time.process_time``, all threads, training only); whichever is reached first ends training.
``--cpu-minutes`` alone: no step limit; neither: 300 steps.

Data: a Decathlon-style folder (``--data DIR``: ``imagesTr/`` + noisy ``labelsTr/``);
``--eval-labels DIR`` (clean labels named like ``labelsTr``) scores the model's predictions on
the training images, ``--test DIR`` (a folder holding ``imagesTs/`` and ``clean_labelsTs/``, the
layout ``benchmarks/staged_pipeline.py`` writes) the test cases: Dice, IoU, HD95 and ASD (mm)
per case with ``agents.staged.pipeline.score_masks``, the scorer of the staged benchmark's other
rows. ``--phantoms WORKDIR`` first writes that benchmark's phantom folder (same builder and data
options -- ``--preset``, ``--families``, ``--modalities``, ``--size``, ``--spacing`` -- so both
see the same cases)::

    python benchmarks/plain_unet.py --phantoms runs/plain --train 12 --test-cases 16 \\
        --noise mt+sp --noise-ratio 1.0 --steps 300 --seeds 0,1
    python benchmarks/plain_unet.py --phantoms runs/plain_realistic --preset realistic --seeds 0

prints one row per seed: test Dice vs the truth, Dice of its predictions on the training images
vs the truth, steps, CPU-min (``time.process_time`` of training). ``--out RUN_DIR`` (one seed)
also writes ``RUN_DIR/report.json`` in the shape of an ``svl-drl pipeline`` report ("method",
"seed", "updates", "train_cpu_s", "eval", and "test" with per-case scores and the case names):
``benchmarks/staged_pipeline.py`` runs this script that way for its "plain U-Net" row::

    python benchmarks/plain_unet.py --data WORK/data --test WORK --eval-labels WORK/clean_labelsTr \\
        --cpu-minutes 4 --channels 16,32,64 --res-units 2 --seeds 0 --threads 1 --out WORK/runs/plain_U-Net/seed0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _read(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def zscore(img: np.ndarray) -> np.ndarray:
    """(D, H, W) -> float32 with mean 0 and standard deviation 1 over the whole volume."""
    img = np.asarray(img, dtype=np.float32)
    return (img - img.mean()) / max(float(img.std()), 1e-6)


def load_folder(images: Path, labels: Path | None) -> tuple[list[str], list[np.ndarray], list[np.ndarray | None]]:
    """Sorted ``*.nii.gz`` of ``images``: names, z-scored images, labels (> 0) of the same name or None."""
    names, imgs, labs = [], [], []
    for ip in sorted(Path(images).glob("*.nii*")):
        names.append(ip.name)
        imgs.append(zscore(_read(ip)))
        lp = None if labels is None else Path(labels) / ip.name
        labs.append(None if lp is None else _read(lp) > 0)
    if not names:
        raise FileNotFoundError(f"no NIfTI images in {images}")
    return names, imgs, labs


def random_patches(imgs, labs, g: np.random.Generator, batch: int, patch: int):
    """``batch`` uniformly random ``patch``^3 crops (volumes smaller than a patch are edge-padded).

    Returns image (B, 1, P, P, P) float32 and label (B, 1, P, P, P) float32 numpy arrays."""
    xs, ys = [], []
    for _ in range(batch):
        i = int(g.integers(len(imgs)))
        x, y = imgs[i], labs[i].astype(np.float32)
        pad = [(0, max(0, patch - s)) for s in x.shape]
        if any(p[1] for p in pad):
            x, y = np.pad(x, pad, mode="edge"), np.pad(y, pad, mode="edge")
        o = [int(g.integers(s - patch + 1)) for s in x.shape]
        sl = tuple(slice(a, a + patch) for a in o)
        xs.append(x[sl])
        ys.append(y[sl])
    return np.stack(xs)[:, None], np.stack(ys)[:, None]


def make_unet(channels=(16, 32), res_units: int = 0):
    """MONAI's UNet, one stride-2 step between consecutive ``channels``; ``res_units`` residual units per block."""
    from monai.networks.nets import UNet

    channels = tuple(int(c) for c in channels)
    return UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=channels, strides=(2,) * (len(channels) - 1),
                num_res_units=int(res_units))


def train_plain_unet(imgs, labs, *, steps: int | None = 300, cpu_minutes: float | None = None, seed: int = 0,
                     batch: int = 4, patch: int = 32, lr: float = 1e-3, channels=(16, 32), res_units: int = 0):
    """Train the plain U-Net on z-scored ``imgs`` and (noisy) ``labs``.

    Ends after ``steps`` updates or ``cpu_minutes`` of process CPU time, whichever comes first
    (``None``: no such limit; at least one of them must be set; the budget is checked before
    each update, so at least one update is made). Returns (model, CPU seconds of training, updates)."""
    import torch
    from monai.losses import DiceCELoss

    if steps is None and cpu_minutes is None:
        raise ValueError("train_plain_unet needs steps or cpu_minutes (else it never ends)")
    if cpu_minutes is not None and not float(cpu_minutes) > 0:
        raise ValueError(f"cpu_minutes must be > 0, got {cpu_minutes!r}")
    max_steps = float("inf") if steps is None else int(steps)
    max_cpu_s = float("inf") if cpu_minutes is None else 60.0 * float(cpu_minutes)
    torch.manual_seed(int(seed))
    g = np.random.default_rng(int(seed))
    model = make_unet(channels, res_units)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = DiceCELoss(sigmoid=True)
    model.train()
    t0 = time.process_time()
    done = 0
    while done < max_steps and time.process_time() - t0 < max_cpu_s:
        x, y = random_patches(imgs, labs, g, batch, patch)
        loss = loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
    return model, time.process_time() - t0, done


def predict(model, img: np.ndarray, patch: int = 32, flips: int = 1) -> np.ndarray:
    """Mask (D, H, W) bool of one z-scored image: sliding-window sigmoid > 0.5; ``flips``: the
    sigmoid averaged over that many flipped copies first (``agents.common.windows.flip_mean``, as
    the staged rows' ``--test-flips``)."""
    import torch
    from monai.inferers import sliding_window_inference

    from agents.common.windows import flip_mean

    def prob(vols):
        x = torch.from_numpy(np.ascontiguousarray(vols[0]))[None, None]
        return torch.sigmoid(sliding_window_inference(x, (patch,) * 3, 4, model, overlap=0.5))[0, 0].numpy()

    model.eval()
    with torch.no_grad():
        return flip_mean(prob, [img], flips) > 0.5


def mean_dice(preds, truths) -> float:
    out = []
    for p, t in zip(preds, truths):
        s = int(p.sum()) + int(t.sum())
        out.append(1.0 if s == 0 else 2.0 * int(np.logical_and(p, t).sum()) / s)
    return float(np.mean(out))


def images_ts_dir(test) -> Path:
    """``test/imagesTs``, or ``test/data/imagesTs`` (the staged benchmark's work folder)."""
    test = Path(test)
    return test / "imagesTs" if (test / "imagesTs").is_dir() else test / "data" / "imagesTs"


def score_test(model, test, patch: int = 32, flips: int = 1) -> dict:
    """Test scores of ``model`` by the staged benchmark's ``score_test_cases``, so the cases,
    truths, spacings and scorer are the other rows'; only the image the model sees is this
    recipe's (the raw intensities z-scored). ``test``: see ``images_ts_dir`` (and
    ``test/clean_labelsTs``). Returns ``score_masks``' dict (HD95 and ASD in mm) plus "cases"."""
    images = images_ts_dir(test)
    if not any(images.glob("*.nii.gz")):
        raise FileNotFoundError(f"no test images (*.nii.gz) in {images}")
    return _staged_benchmark().score_test_cases(images, Path(test) / "clean_labelsTs",
                                                lambda _, ip: predict(model, zscore(_read(ip)), patch, flips))


def _staged_benchmark():
    """``benchmarks/staged_pipeline.py`` as a module (its data builder, options and scorer)."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    import staged_pipeline

    return staged_pipeline


METHOD = "plain U-Net"  # report.json "method": the staged benchmark's row name


def run(data, *, eval_labels=None, test=None, steps: int | None = 300, cpu_minutes: float | None = None,
        seed: int = 0, batch: int = 4, patch: int = 32, lr: float = 1e-3, channels=(16, 32), res_units: int = 0,
        out=None, test_flips: int = 1) -> dict:
    """Train on ``data`` (imagesTr + labelsTr) for ``steps`` updates / ``cpu_minutes`` of CPU time
    (``train_plain_unet``) and score (the test cases with ``test_flips`` flipped copies, ``predict``).

    Returns {"seed", "steps" (updates done), "cpu_min", "test_dice", "train_pred_dice", "test"
    (``score_test``'s dict or None)} (Dice None without its labels). ``out``: a folder; writes
    ``out/report.json`` (module doc) once everything is scored, so a folder with a report.json
    holds a finished run."""
    from agents.common.checkpoint import atomic_write
    from agents.staged.pipeline import json_safe

    data = Path(data)
    _, imgs, labs = load_folder(data / "imagesTr", data / "labelsTr")
    model, cpu_s, updates = train_plain_unet(imgs, labs, steps=steps, cpu_minutes=cpu_minutes, seed=seed,
                                             batch=batch, patch=patch, lr=lr, channels=channels,
                                             res_units=res_units)
    res = {"seed": int(seed), "steps": int(updates), "cpu_min": cpu_s / 60, "test_dice": None,
           "train_pred_dice": None, "test": None}
    if eval_labels is not None:
        _, _, clean = load_folder(data / "imagesTr", Path(eval_labels))
        res["train_pred_dice"] = mean_dice([predict(model, x, patch) for x in imgs], clean)
    if test is not None:
        res["test"] = score_test(model, test, patch, test_flips)
        res["test_dice"] = res["test"]["dice"]
    if out is not None:
        report = {"method": METHOD, "seed": int(seed), "updates": int(updates), "train_cpu_s": cpu_s,
                  "budget": {"steps": steps, "cpu_minutes": cpu_minutes},
                  "config": {"channels": [int(c) for c in channels], "res_units": int(res_units), "batch": batch,
                             "patch": patch, "lr": lr, "normalisation": "z-score per image",
                             "loss": "DiceCELoss(sigmoid=True)"},
                  "data": str(data), "refined_labels_from": "the model's predictions on the training images"}
        if res["train_pred_dice"] is not None:
            d = {"dice": res["train_pred_dice"]}
            report["eval"] = {"labels": str(eval_labels), "model_on_training_images": d, "refined_labels": dict(d)}
        if res["test"] is not None:
            report["test"], report["test_flips"] = res["test"], int(test_flips)
        text = json.dumps(json_safe(report), indent=1)  # NaN (HD95 with one empty mask) -> null, as the pipeline
        atomic_write(Path(out) / "report.json", lambda tmp: Path(tmp).write_text(text))
    return res


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.4f}"


def main(argv=None) -> int:
    from agents.common.windows import FLIPS

    sp = _staged_benchmark()
    add_phantom_args, make_phantom_dataset = sp.add_phantom_args, sp.make_phantom_dataset
    parse_with_preset, phantom_options = sp.parse_with_preset, sp.phantom_options

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--data", help="Decathlon folder: imagesTr + (noisy) labelsTr")
    ap.add_argument("--eval-labels", help="clean labels of the training cases (named like labelsTr)")
    ap.add_argument("--test", help="folder with imagesTs/ (or data/imagesTs/) and clean_labelsTs/")
    ap.add_argument("--phantoms", metavar="WORKDIR",
                    help="write benchmarks/staged_pipeline.py's phantom folder here first and use it "
                         "(sets --data, --eval-labels, --test)")
    ap.add_argument("--train", type=int, default=12, help="with --phantoms: training cases")
    ap.add_argument("--test-cases", type=int, default=16, help="with --phantoms: test cases")
    ap.add_argument("--data-seed", type=int, default=0, help="with --phantoms: seed of the phantom data")
    ap.add_argument("--noise", default="mt+sp", help="with --phantoms: noise of the training labels")
    ap.add_argument("--noise-ratio", type=float, default=1.0, help="with --phantoms: fraction of noisy labels")
    add_phantom_args(ap)  # with --phantoms: --preset, --families, --modalities, --size, --spacing
    ap.add_argument("--steps", type=int, default=None,
                    help="gradient updates (batch --batch of 32^3 patches); default 300, or no limit with "
                         "--cpu-minutes alone")
    ap.add_argument("--cpu-minutes", type=float, default=None,
                    help="training budget in process CPU minutes (time.process_time, all threads); with --steps, "
                         "whichever is reached first ends training")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (constant)")
    ap.add_argument("--channels", default="16,32",
                    help="UNet channels per level, comma-separated (default 16,32: the issue's two levels)")
    ap.add_argument("--res-units", type=int, default=0, help="MONAI UNet num_res_units (default 0)")
    ap.add_argument("--seeds", default="0", help="training seeds, comma-separated (one row each)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--test-flips", type=int, choices=sorted(FLIPS), default=1,
                    help="test predictions averaged over this many flipped copies of each image (1: none)")
    ap.add_argument("--out", metavar="RUN_DIR", help="write RUN_DIR/report.json (only with exactly one seed)")
    args = parse_with_preset(ap, argv, rename={"test": "test_cases"})
    data_opts = phantom_options(ap, args)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.out and len(seeds) != 1:
        ap.error(f"--out takes one run: give exactly one seed (--seeds {args.seeds!r})")
    if args.steps is not None and args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")
    if args.cpu_minutes is not None and not args.cpu_minutes > 0:
        ap.error(f"--cpu-minutes must be > 0, got {args.cpu_minutes}")
    steps = args.steps if args.steps is not None or args.cpu_minutes is not None else 300

    import torch

    torch.set_num_threads(max(1, args.threads))
    if args.phantoms:
        work = Path(args.phantoms)
        if not (work / "data" / "labelsTr").is_dir():
            print(f"phantom data{' (preset ' + args.preset + ')' if args.preset else ''}: {data_opts}, noise "
                  f"{args.noise}, ratio {args.noise_ratio:g}, {args.train} training / {args.test_cases} test cases")
            s = make_phantom_dataset(work, n_train=args.train, n_test=args.test_cases, seed=args.data_seed,
                                     noise=args.noise, noise_ratio=args.noise_ratio, **data_opts)
            print(f"given training labels: Dice vs truth {s['given_label_dice']:.4f}")
        args.data, args.eval_labels, args.test = work / "data", work / "clean_labelsTr", work
    if not args.data:
        ap.error("--data (or --phantoms) is required")
    rows = [run(args.data, eval_labels=args.eval_labels, test=args.test, steps=steps, cpu_minutes=args.cpu_minutes,
                seed=s, batch=args.batch, lr=args.lr, channels=[int(c) for c in args.channels.split(",")],
                res_units=args.res_units, out=args.out, test_flips=args.test_flips) for s in seeds]
    print("| seed | test Dice vs truth | its predictions on training images vs truth | steps | CPU-min |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {_fmt(r['test_dice'])} | {_fmt(r['train_pred_dice'])} | {r['steps']} | "
              f"{r['cpu_min']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
