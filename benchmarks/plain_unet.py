"""A plain 3D U-Net trained on the given (noisy) labels: the control of issue 16.

The recipe a medical-imaging user would write in ~40 lines, as the issue describes it: MONAI's
``monai.networks.nets.UNet`` (16 channels, two levels: channels (16, 32), one stride-2 step),
Adam 1e-3, ``DiceCELoss(sigmoid=True)`` (soft Dice + BCE), every image z-scored (its own mean and
standard deviation), uniformly random 32^3 patches (no foreground bias), batch 4, ``--steps``
updates (default 300), then ``monai.inferers.sliding_window_inference`` (32^3 windows, overlap
0.5) and a 0.5 threshold on the sigmoid.

Data: a Decathlon-style folder (``--data DIR``: ``imagesTr/`` + noisy ``labelsTr/``);
``--eval-labels DIR`` (clean labels named like ``labelsTr``) scores the model's predictions on
the training images, ``--test DIR`` (a folder holding ``imagesTs/`` and ``clean_labelsTs/``, the
layout ``benchmarks/staged_pipeline.py`` writes) the test cases. ``--phantoms WORKDIR`` first
writes that benchmark's phantom folder (same builder and data options -- ``--preset``,
``--families``, ``--modalities``, ``--size``, ``--spacing`` -- so both see the same cases)::

    python benchmarks/plain_unet.py --phantoms runs/plain --train 12 --test-cases 16 \\
        --noise mt+sp --noise-ratio 1.0 --steps 300 --seeds 0,1
    python benchmarks/plain_unet.py --phantoms runs/plain_realistic --preset realistic --seeds 0

prints one row per seed: test Dice vs the truth, Dice of its predictions on the training images
vs the truth, steps, CPU-min (``time.process_time`` of training).
"""

from __future__ import annotations

import argparse
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


def train_plain_unet(imgs, labs, *, steps: int = 300, seed: int = 0, batch: int = 4, patch: int = 32,
                     lr: float = 1e-3, channels=(16, 32), res_units: int = 0):
    """Train the plain U-Net on z-scored ``imgs`` and (noisy) ``labs``; returns (model, CPU seconds)."""
    import torch
    from monai.losses import DiceCELoss

    torch.manual_seed(int(seed))
    g = np.random.default_rng(int(seed))
    model = make_unet(channels, res_units)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = DiceCELoss(sigmoid=True)
    model.train()
    t0 = time.process_time()
    for _ in range(int(steps)):
        x, y = random_patches(imgs, labs, g, batch, patch)
        loss = loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model, time.process_time() - t0


def predict(model, img: np.ndarray, patch: int = 32) -> np.ndarray:
    """Mask (D, H, W) bool of one z-scored image: sliding-window sigmoid > 0.5."""
    import torch
    from monai.inferers import sliding_window_inference

    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(img))[None, None]
        y = sliding_window_inference(x, (patch,) * 3, 4, model, overlap=0.5)
    return torch.sigmoid(y)[0, 0].numpy() > 0.5


def mean_dice(preds, truths) -> float:
    out = []
    for p, t in zip(preds, truths):
        s = int(p.sum()) + int(t.sum())
        out.append(1.0 if s == 0 else 2.0 * int(np.logical_and(p, t).sum()) / s)
    return float(np.mean(out))


def run(data, *, eval_labels=None, test=None, steps: int = 300, seed: int = 0, batch: int = 4,
        patch: int = 32, lr: float = 1e-3, channels=(16, 32), res_units: int = 0) -> dict:
    """Train on ``data`` (imagesTr + labelsTr) and score.

    Returns {"seed", "steps", "cpu_min", "test_dice", "train_pred_dice"} (Dice None without its labels)."""
    data = Path(data)
    _, imgs, labs = load_folder(data / "imagesTr", data / "labelsTr")
    model, cpu_s = train_plain_unet(imgs, labs, steps=steps, seed=seed, batch=batch, patch=patch, lr=lr,
                                    channels=channels, res_units=res_units)
    out = {"seed": int(seed), "steps": int(steps), "cpu_min": cpu_s / 60, "test_dice": None, "train_pred_dice": None}
    if eval_labels is not None:
        _, _, clean = load_folder(data / "imagesTr", Path(eval_labels))
        out["train_pred_dice"] = mean_dice([predict(model, x, patch) for x in imgs], clean)
    if test is not None:
        test = Path(test)
        img_dir = test / "imagesTs" if (test / "imagesTs").is_dir() else test / "data" / "imagesTs"
        _, timgs, tlabs = load_folder(img_dir, test / "clean_labelsTs")
        out["test_dice"] = mean_dice([predict(model, x, patch) for x in timgs], tlabs)
    return out


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.4f}"


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from staged_pipeline import add_phantom_args, make_phantom_dataset, parse_with_preset, phantom_options

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
    ap.add_argument("--steps", type=int, default=300, help="gradient updates (batch --batch of 32^3 patches)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (constant)")
    ap.add_argument("--channels", default="16,32",
                    help="UNet channels per level, comma-separated (default 16,32: the issue's two levels)")
    ap.add_argument("--res-units", type=int, default=0, help="MONAI UNet num_res_units (default 0)")
    ap.add_argument("--seeds", default="0", help="training seeds, comma-separated (one row each)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parse_with_preset(ap, argv, rename={"test": "test_cases"})
    data_opts = phantom_options(ap, args)

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
    rows = [run(args.data, eval_labels=args.eval_labels, test=args.test, steps=args.steps, seed=int(s),
                batch=args.batch, lr=args.lr, channels=[int(c) for c in args.channels.split(",")],
                res_units=args.res_units) for s in args.seeds.split(",") if s.strip()]
    print("| seed | test Dice vs truth | its predictions on training images vs truth | steps | CPU-min |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {_fmt(r['test_dice'])} | {_fmt(r['train_pred_dice'])} | {r['steps']} | "
              f"{r['cpu_min']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
