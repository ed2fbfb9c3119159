"""``svl-drl refine``: refine noisy NIfTI label volumes with a trained vA3C agent.

    svl-drl refine --checkpoint runs/va3c --images imagesTr --labels labelsTr --out refined

Every ``labels/NAME.nii[.gz]`` is refined with sliding, overlapping patches (the policy's
training patch size and steps by default) and written to ``out/NAME.nii[.gz]`` with the input
label's shape, affine, header and dtype. Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="RUN|FILE",
                   help="a vA3C run folder (its checkpoint.pt) or checkpoint file (tensor-only, loaded without "
                        "running code from the file; SB3 zips are not accepted)")
    p.add_argument("--images", required=True, metavar="DIR", help="folder of NIfTI images")
    p.add_argument("--labels", required=True, metavar="DIR",
                   help="folder of (noisy) NIfTI label volumes, same names as the images")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the refined labels (same file names); must not be the images or labels "
                        "folder -- inputs are never overwritten, and nothing is written unless every case succeeds")
    p.add_argument("--patch-size", type=int, nargs="+", default=None, metavar="N",
                   help="patch size: one int or three (default: the policy's training patch size)")
    p.add_argument("--overlap", type=float, default=0.25, help="fraction of overlap between neighbouring patches")
    p.add_argument("--steps", type=int, default=None, help="policy steps per patch (default: training max_steps)")
    p.add_argument("--batch-size", type=int, default=4, help="patches per forward pass")
    p.add_argument("--label-value", type=int, default=1,
                   help="label value to refine in multi-label files (written back with this value)")
    p.add_argument("--modality", default="auto", choices=("auto", "ct", "mr", "none"),
                   help="intensity normalisation of the images")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from agents.eval.refine import refine_folder

    patch = None
    if args.patch_size is not None:
        if len(args.patch_size) not in (1, 3):
            raise ValueError(f"--patch-size takes one or three integers, got {len(args.patch_size)}")
        patch = args.patch_size[0] if len(args.patch_size) == 1 else tuple(args.patch_size)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    written = refine_folder(args.checkpoint, args.images, args.labels, args.out, patch_size=patch,
                            max_steps=args.steps, overlap=args.overlap, batch_size=args.batch_size,
                            label_value=args.label_value, modality=args.modality, device=args.device,
                            progress=not args.no_progress)
    print(f"refined {len(written)} label volume(s) into {args.out}")
    return 0
