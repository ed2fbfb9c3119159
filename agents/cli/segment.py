"""``svl-drl segment``: NIfTI masks for new images with a model from ``svl-drl pipeline``.

    svl-drl segment --model runs/pipeline --images imagesTs --out masks

Every image (any size) is segmented with overlapping sliding windows, the probability averaged
over ``--flips N`` flipped copies of the image (default 4; 1: a single pass); the mask is written as
``out/NAME.nii.gz`` (nnU-Net's ``_0000`` dropped) with the image's affine and header (uint8).
Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse

from agents.common.windows import FLIPS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="OUT|FILE",
                   help="the output folder of 'svl-drl pipeline' (its model.pt) or the model file")
    p.add_argument("--images", required=True, metavar="DIR", help="folder of NIfTI images")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the masks")
    p.add_argument("--window", type=int, nargs="+", default=None, metavar="N",
                   help="sliding-window size: one int or three (default: the model's, 64)")
    p.add_argument("--overlap", type=float, default=0.25, help="fraction of overlap between neighbouring windows")
    p.add_argument("--batch-size", type=int, default=2, help="windows per forward pass")
    p.add_argument("--flips", type=int, default=4, choices=sorted(FLIPS),
                   help="test-time averaging: the mean probability over this many flipped copies of each image "
                        "(the identity and 180-degree rotations; each copy costs one more pass). Default 4: it "
                        "raised the test Dice of every model measured on the phantom benchmarks, by 0.01-0.07 "
                        "(README, 'Test-time flip averaging'). 1: a single pass, what the benchmarks' tables "
                        "score unless they say otherwise")
    p.add_argument("--modality", default=None, choices=("auto", "ct", "mr", "none"),
                   help="intensity normalisation (default: the one the model was trained with)")
    p.add_argument("--label-value", type=int, default=1, help="value written for foreground voxels")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from agents.staged.segment import segment_folder

    window = None
    if args.window is not None:
        if len(args.window) not in (1, 3) or min(args.window) < 1:
            raise ValueError("--window takes one or three positive integers")
        window = args.window[0] if len(args.window) == 1 else tuple(args.window)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0.0 <= args.overlap < 1.0:
        raise ValueError(f"--overlap must be in [0, 1), got {args.overlap}")
    written = segment_folder(args.model, args.images, args.out, window=window, overlap=args.overlap,
                             batch_size=args.batch_size, modality=args.modality, label_value=args.label_value,
                             device=args.device, progress=not args.no_progress, flips=args.flips)
    print(f"segmented {len(written)} image(s) into {args.out}")
    return 0
