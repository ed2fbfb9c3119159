"""``svl-drl pipeline``: the staged SVL-DRL framework on a folder whose labels are noisy.

    svl-drl pipeline --data Task01 --out runs/pipeline [--minutes 10] [--method svl-drl]
                     [--stages warmup transition full] [--seed 0] [--device cpu] [--eval-labels CLEAN]

Reads ``DATA/imagesTr`` + ``DATA/labelsTr`` (Decathlon layout; the labels are the noisy
annotations) and writes ``OUT/refined_labels/*.nii.gz`` (same names, shapes, affines and headers
as labelsTr), ``OUT/model.pt``, ``OUT/report.json`` and ``OUT/training_curves.png``. See
``agents.staged`` for the method. Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse

METHOD_HELP = {  # one line per agents.staged.methods.METHODS entry (a test checks that none is missing)
    "svl-drl": "the paper's staged RL (Warmup, Transition, Full RL with label-agent refinement rounds)",
    "noisy": "plain training on the given labels",
    "coteaching": "Han et al. 2018, two networks, each trained on the voxels the other ranks small-loss",
    "trinet": "Zhang et al. 2020, three networks, each trained on the voxels both others rank small-loss",
    "self-training": "svl-drl's stages and rounds without label agents: each round's candidate labels "
                     "are the model's own predictions, through the same per-case acceptance",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from agents.common.precision import add_precision_argument
    from agents.staged.label_refinement import ACCEPT_RULES
    from agents.staged.methods import METHODS

    p.add_argument("--data", required=True, metavar="DIR", help="Decathlon folder: imagesTr/ + noisy labelsTr/")
    p.add_argument("--out", required=True, metavar="OUT", help="output folder (refined labels, model, report)")
    p.add_argument("--method", choices=METHODS, default="svl-drl", metavar="METHOD",
                   help="training method, same backbone and budget for all: "
                        + "; ".join(f"{k}: {METHOD_HELP[k]}" if k in METHOD_HELP else k for k in METHODS)
                        + " (default svl-drl)")
    b = p.add_argument_group(
        "budget (whichever ends first; default --minutes 10)",
        "Only --updates makes a run repeatable: with the same --seed and --threads on the same machine it "
        "gives the same refined labels, model and report (timings aside). --minutes and --cpu-minutes follow "
        "the machine's speed: the stage schedule and the number of updates change with load and CPU, so two "
        "runs of the same command can differ.")
    b.add_argument("--minutes", type=float, default=None,
                   help="wall-clock training budget (not repeatable: follows the machine's speed and load)")
    b.add_argument("--cpu-minutes", type=float, default=None,
                   help="CPU-time budget of the process (all threads; not shrunk by other programs, "
                        "but not repeatable: follows the CPU's speed)")
    b.add_argument("--updates", type=int, default=None,
                   help="number of gradient updates (repeatable: same --seed and --threads, same result)")
    p.add_argument("--stages", nargs="+", default=None, metavar="STAGE",
                   help="svl-drl (and self-training) stages to run, of: warmup transition full (default all "
                        "three; 'transition full' is the no-Warmup ablation)")
    p.add_argument("--rounds", type=int, default=None,
                   help="label-refinement rounds in Full RL (svl-drl, self-training; default 3)")
    p.add_argument("--accept", choices=ACCEPT_RULES, default=None,
                   help="svl-drl, self-training: how a round's proposals become training labels: average "
                        "(default; the mean of the agents' and the segmentation decoder's foreground probabilities "
                        "> 0.5), agents (the agents' foreground probability > 0.5, the decoder not asked), consensus "
                        "(a greedy edit stands only where the decoder agrees; better test Dice, "
                        "refined labels hardly change), zscore (a case's edit must stand out from the other "
                        "cases'; assumes most cases are clean) or all; README 'Realistic phantoms'")
    p.add_argument("--refit", type=float, default=None, metavar="FRAC", dest="refit_frac",
                   help="svl-drl, self-training: the last FRAC of the budget trains the segmentation network "
                        "alone on the last round's labels (made at the end of Full RL); 0 = none")
    p.add_argument("--crossfit", type=float, default=None, metavar="FRAC", dest="crossfit_frac",
                   help="svl-drl, self-training: the first FRAC of the budget trains segmentation networks on "
                        "complementary folds of the cases (2; --set crossfit_folds=K); each case's prediction "
                        "by the network that did not see its label becomes the label agents' consensus input "
                        "(and the acceptance rules' reference) in place of the decoder, which learns the given "
                        "labels' noise; 0 = none")
    p.add_argument("--intensity-every", type=int, default=None, metavar="N",
                   help="svl-drl: every N-th Full-RL update is an episode of the paper's intensity agents "
                        "(keep / enhance / weaken; default 4; 0 = off)")
    p.add_argument("--agents-train-encoder", action="store_true",
                   help="svl-drl: the label agents' value and policy losses also train the shared encoder "
                        "(off by default: measured to cost test Dice; README 'Staged pipeline')")
    p.add_argument("--seed", type=int, default=0, help="seed of everything (sampling, initialisation, agents)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--eval-labels", default=None, metavar="DIR",
                   help="clean labels (named like labelsTr) to score against -- read only after training")
    p.add_argument("--label-value", type=int, default=1, help="label value to learn in multi-label files")
    p.add_argument("--modality", default="auto", choices=("auto", "ct", "mr", "none"),
                   help="intensity normalisation (auto: dataset.json, else CT if min < -500)")
    p.add_argument("--backbone", default="unet", choices=("unet", "swin_unetr"),
                   help="shared encoder: small 3D U-Net, or MONAI's Swin UNETR (needs the monai extra)")
    p.add_argument("--width", type=int, default=None, help="U-Net channels at full resolution (default 8)")
    p.add_argument("--patch", type=int, default=None,
                   help="training patch size in voxels (default: from the dataset's fingerprint -- the largest "
                        "multiple of the U-Net's 2**depth <= min(median shape, 32), per axis for anisotropic "
                        "spacing; 32 on volumes of 32+ voxels per side)")
    p.add_argument("--batch", type=int, default=None,
                   help="patches per update (default: batch x patch voxels = 4 x 32^3, e.g. 4 for 32^3 patches)")
    p.add_argument("--window", type=int, default=None,
                   help="sliding-window size of every prediction (training-image agreement, label refinement, "
                        "and the model's default for `svl-drl segment`; default: the training --patch; "
                        "64 was the default before it was measured to cost test Dice, README 'Staged pipeline')")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="options",
                   help="any other training option (agents.staged.DEFAULT_TRAIN), e.g. --set warmup_frac=0.15; "
                        "VALUE is read as JSON, else as a string; repeatable; unknown keys are refused")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; results can differ between thread counts)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_precision_argument(p)


def run(args: argparse.Namespace) -> int:
    from agents.staged.model import MonaiMissingError
    from agents.staged.pipeline import run_pipeline

    for k in ("minutes", "cpu_minutes"):
        v = getattr(args, k)
        if v is not None and not v > 0:
            raise ValueError(f"--{k.replace('_', '-')} must be > 0, got {v}")
    if args.updates is not None and args.updates < 1:
        raise ValueError(f"--updates must be >= 1, got {args.updates}")
    # the training options given on the command line (None: the default or the fingerprint's)
    config = {k: getattr(args, k) for k in ("rounds", "patch", "batch", "window", "accept", "intensity_every",
                                            "refit_frac", "crossfit_frac")
              if getattr(args, k) is not None}
    if args.agents_train_encoder:
        config["agent_encoder_grad"] = True
    config.update(parse_options(args.options))
    model_config = {"backbone": args.backbone}
    if args.width is not None:
        model_config["width"] = args.width
    try:
        report = run_pipeline(args.data, args.out, method=args.method, minutes=args.minutes,
                              cpu_minutes=args.cpu_minutes, updates=args.updates, stages=args.stages, seed=args.seed,
                              device=args.device, eval_labels=args.eval_labels, label_value=args.label_value,
                              modality=args.modality, config=config, model_config=model_config, threads=args.threads,
                              progress=not args.no_progress, precision=args.precision)
    except MonaiMissingError as exc:
        raise ValueError(str(exc)) from None
    print(f"{args.method}: {report['updates']} updates, {report['train_cpu_s']:.0f} CPU-s; "
          f"{len(report['cases'])} refined label volume(s), model and report in {args.out}")
    ev = report.get("eval")
    if ev:
        print(f"Dice vs --eval-labels: given {ev['given_labels']['dice']:.4f}, refined "
              f"{ev['refined_labels']['dice']:.4f}, model on training images "
              f"{ev['model_on_training_images']['dice']:.4f}")
    return 0


def parse_options(items) -> dict:
    """``["warmup_frac=0.15", "agent_noise=mt+sp"]`` -> ``{"warmup_frac": 0.15, "agent_noise": "mt+sp"}``
    (JSON values, else strings); the keys are checked by ``make_train_config``."""
    import json

    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set needs KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out
