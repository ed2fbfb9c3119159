"""Staged SVL-DRL pipeline vs training on the noisy labels, co-teaching, TriNet, self-training and
a clean-label upper bound, on phantoms with MT-Noise at noise ratio 0.5 (the paper's setting).

1. Data: a Decathlon folder written from the built-in phantom generator
   (``svl_env.data.phantom.generate_phantoms``; default family ``blob`` -- a solid organ, the kind
   of structure of the paper's LA / pancreas data -- MR-like intensities, volumes of 32..40
   voxels per side, 1 mm): ``imagesTr/`` + *noisy* ``labelsTr/`` (exactly half of the training
   cases corrupted by ``svl_env.noise`` protocol ``mt``: dilation or erosion by a cube of side
   2..4, the project's MT-Noise sized for 32^3 structures), ``imagesTs/``; the clean labels are
   kept outside that folder (``clean_labelsTr/``, ``clean_labelsTs/``).
2. Methods, each ``svl-drl pipeline`` in its own process with the same CPU budget
   (``--cpu-minutes``: ``time.process_time`` of the training process, so other programs
   competing for the cores change the wall time but hardly the result; one torch thread per
   process, ``--jobs`` processes at a time):
   ``noisy`` (plain training on the given labels), ``coteaching`` (Han et al. 2018),
   ``trinet`` (Zhang et al. 2020: three networks, each trained on the voxels both others rank
   small-loss), ``self-training`` (svl-drl's stages and rounds without label agents: each round's
   candidate labels are the model's own predictions, through the same acceptance step),
   ``svl-drl`` (Warmup -> Transition -> Full RL with label-refinement rounds), ``svl-drl
   without Warmup`` (ablation: ``--stages transition full``), ``svl-drl, agents train the
   encoder`` (``--agents-train-encoder``: the label agents' value / policy losses also reach
   the shared encoder, the default before it was measured to cost test Dice), and
   ``clean`` (the noisy method on the clean labels: the upper bound, the only run that sees
   clean training labels).
   ``noisy (updates matched to svl-drl)``: the noisy method with ``--updates N``, N the number of
   updates the svl-drl run of the same seed made (its report.json ``updates``; every svl-drl
   update takes one segmentation-loss step, so this matches the segmentation updates: networks
   fit clean labels before noisy ones, so the update count is itself a confound). It runs after
   the svl-drl runs, and only for seeds whose svl-drl run exists.
   ``plain U-Net`` (not in the default list; name it in ``--methods``): the control of issue 16,
   ``benchmarks/plain_unet.py`` -- MONAI's UNet with its own recipe (z-scored images, DiceCE,
   uniformly random patches), channels 16,32,64 and 2 residual units (``PLAIN_UNET_CHANNELS``,
   ``PLAIN_UNET_RES_UNITS``), fp32 whatever ``--precision`` says -- on the same noisy labels,
   with the same ``--cpu-minutes`` (its ``--cpu-minutes``: the same ``time.process_time`` clock),
   one thread, in the same job pool. It scores the test cases itself (its report.json "test", with
   the same scorer, truths and case order as ``_test_scores``), since it has no ``model.pt``.
   Each run gets ``--eval-labels clean_labelsTr`` (read after training) for the Dice of its
   refined training labels and of its model's predictions on the training images.
3. Test: every model segments ``imagesTs`` (``svl-drl segment``'s sliding window, one pass by
   default, i.e. ``svl-drl segment --flips 1``, which the README's tables score;
   ``--test-flips N``: the mean over N flipped copies, as ``svl-drl segment --flips N``); Dice,
   IoU, HD95, ASD against ``clean_labelsTs`` (``svl_env.metrics``, mean over test cases). The
   scores are cached in each run folder (``TEST_SCORES``) for ``--reuse``.
4. Statistics over the run seeds: svl-drl minus each method, paired by run seed; and rliable's
   (``agents.eval.stats``, shared with the RL leaderboard) Dice IQM and mean with stratified-bootstrap
   95 % CIs of every method's (run seeds x test cases) per-case Dice, and P(svl-drl > method), in
   ``<out stem>_stats.md`` / ``_stats.csv`` / ``_performance_profile.png`` next to ``--out``
   (``rliable_stats``; ``--stats-from JSON`` recomputes them from a finished benchmark's JSON).

    python benchmarks/staged_pipeline.py [--cpu-minutes 4] [--jobs 2] [--seed 0] [--run-seeds 0,1,2,3] \\
        [--methods ...] [--workdir runs/staged_benchmark] [--out benchmarks/results/staged_pipeline.md]

Data options (shared with ``benchmarks/plain_unet.py --phantoms``): ``--families``, ``--modalities``,
``--size LO,HI`` (or one number), ``--spacing 1,1,2`` (integer mm per array axis: generated at 1 mm,
block-averaged; the NIfTI affine carries the spacing), and ``--preset realistic`` (the ``folded``
cortex-like family, MR, 64^3 voxels at 1 x 1 x 2 mm, every one of 12 training labels noisy with
``mt:side_min=2,side_max=2+sp+flip``, 16 test cases; explicit flags override it; see ``PRESETS``)::

    python benchmarks/staged_pipeline.py --preset realistic --workdir runs/staged_realistic \\
        --out benchmarks/results/staged_pipeline_realistic.md

With the plain-U-Net control (``--reuse`` keeps the finished runs of the other rows)::

    python benchmarks/staged_pipeline.py --preset realistic --workdir runs/staged_realistic --reuse \\
        --methods 'noisy,svl-drl,plain U-Net' --out benchmarks/results/staged_pipeline_realistic.md

Every method is trained once per run seed (default four) on the same data: two runs of the
same method still differ by up to ±0.04 test Dice (16 test cases, a few of them hard enough
that a run scores near 0 on one and 0.6 on another), so one or two runs per method cannot
resolve a 0.03 difference; read the per-run column. About an hour on 2 cores with the six
methods of the earlier default list (before trinet, self-training and the update-matched noisy
row were added; not re-measured since).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# the refit schedule (issue 16): the agents' labels alone (no intensity agents, one round at the end
# of Full RL), then 40 % of the budget retraining from fresh weights on them; Warmup 15 %
REFIT = ["--rounds", "1", "--refit", "0.4", "--set", "warmup_frac=0.15", "--set", "refit_reinit=true"]
# the cross-fit schedule (issue 16): the refit schedule after a first quarter of the budget that gives
# every case an out-of-fold consensus (agents.staged.crossfit), the agents' input in place of the
# decoder's; Warmup 10 %, Transition 5 %, Full RL 25 %, Refit 35 %; the round's candidates averaged
# over 4 flipped copies (refine_flips)
CROSSFIT = ["--rounds", "1", "--crossfit", "0.25", "--refit", "0.35", "--set", "warmup_frac=0.1",
            "--set", "transition_frac=0.05", "--set", "refit_reinit=true", "--set", "refine_flips=4"]
# the long-refit schedule (issue 16): the cross-fit schedule without its cross-fit stage, whose
# quarter of the budget goes to Refit (60 %); the agents read no consensus (agent_consensus
# none: a constant), since those trained with the out-of-fold one hardly read it. Measured on
# seeds 0 / 1 (README "Schedule probes"): the agents' row lost to the cross-fit one, and its
# self-training control beat both
LONG_REFIT = ["--rounds", "1", "--refit", "0.6", "--set", "warmup_frac=0.1", "--set", "transition_frac=0.05",
              "--set", "refit_reinit=true", "--set", "refine_flips=4", "--set", "agent_consensus=none"]
METHODS = {  # name -> (pipeline args, uses clean training labels)
    "noisy": (["--method", "noisy"], False),
    "coteaching": (["--method", "coteaching"], False),
    "trinet": (["--method", "trinet"], False),
    "self-training": (["--method", "self-training"], False),
    "svl-drl": (["--method", "svl-drl"], False),
    "svl-drl (no Warmup)": (["--method", "svl-drl", "--stages", "transition", "full"], False),
    "svl-drl (no intensity agents)": (["--method", "svl-drl", "--intensity-every", "0"], False),
    "svl-drl (accept consensus)": (["--method", "svl-drl", "--accept", "consensus"], False),
    "svl-drl (accept zscore)": (["--method", "svl-drl", "--accept", "zscore"], False),
    "svl-drl (agents train the encoder)": (["--method", "svl-drl", "--agents-train-encoder"], False),
    # issue 16: the label agents' labels, then a Refit stage from fresh weights on them (README
    # "Realistic phantoms"), and self-training with the same schedule (its matched control)
    "svl-drl (refit)": (["--method", "svl-drl", "--intensity-every", "0", "--accept", "agents", *REFIT], False),
    "self-training (refit)": (["--method", "self-training", *REFIT], False),
    # the same with the cross-fit consensus, and its matched control (self-training pooling its
    # own prediction with the same consensus)
    "svl-drl (cross-fit)": (["--method", "svl-drl", "--intensity-every", "0", "--accept", "agents", *CROSSFIT],
                            False),
    "self-training (cross-fit)": (["--method", "self-training", *CROSSFIT], False),
    # the same agents without a consensus, and the budget of the cross-fit stage given to Refit
    "svl-drl (long refit)": (["--method", "svl-drl", "--intensity-every", "0", "--accept", "agents", *LONG_REFIT],
                             False),
    "self-training (long refit)": (["--method", "self-training", *LONG_REFIT], False),
    "clean (upper bound)": (["--method", "noisy"], True),
    "noisy (updates matched to svl-drl)": (["--method", "noisy"], False),
}
# rows whose budget is the update count of another row's run of the same seed (instead of --cpu-minutes)
MATCHED = {"noisy (updates matched to svl-drl)": "svl-drl"}
DEFAULT_METHODS = ("noisy", "coteaching", "trinet", "self-training", "svl-drl", "noisy (updates matched to svl-drl)",
                   "svl-drl (no Warmup)", "svl-drl (agents train the encoder)", "clean (upper bound)")
# The plain-U-Net control (issue 16), a row trained by benchmarks/plain_unet.py instead of
# ``svl-drl pipeline``. Its size is the stronger of the two settings measured on the realistic
# preset in benchmarks/results/staged_realistic/plain_unet_realistic.md (test Dice 0.61 with
# channels 16,32,64 + 2 residual units vs 0.51 with the 16,32 and none).
PLAIN_UNET = "plain U-Net"
PLAIN_UNET_CHANNELS = "16,32,64"
PLAIN_UNET_RES_UNITS = 2
#: every row --methods takes
ALL_METHODS = (*METHODS, PLAIN_UNET)


def run_updates(run_dir) -> int:
    """The number of updates a finished pipeline run made (``run_dir/report.json`` "updates")."""
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"no finished run in {run_dir} (report.json missing)")
    return int(json.loads(path.read_text())["updates"])


def matched_budget(method: str, ref_dir) -> list[str]:
    """The pipeline budget arguments of an update-matched row: ``--updates N`` with N the updates
    of the reference run (``MATCHED[method]``, same seed) in ``ref_dir``."""
    if method not in MATCHED:
        raise ValueError(f"{method!r} is not an update-matched row ({', '.join(MATCHED)})")
    return ["--updates", str(run_updates(ref_dir))]


def make_phantom_dataset(root, *, n_train: int = 32, n_test: int = 16, seed: int = 0, size=(32, 40),
                         families=("blob",), modalities=("mr",), noise: str = "mt", noise_ratio: float = 0.5,
                         spacing=(1, 1, 1)) -> dict:
    """Write ``root/data`` (Decathlon: imagesTr, noisy labelsTr, imagesTs, dataset.json) and
    ``root/clean_labelsTr``, ``root/clean_labelsTs``, ``root/data_clean`` (imagesTr + clean
    labelsTr, for the upper bound). Exactly ``round(noise_ratio * n_train)`` training cases are
    corrupted. Returns a summary (Dice of the given labels vs the truth, corrupted cases).

    Each case has ``size[0]..size[1]`` voxels per side (drawn per axis). ``spacing`` (integer mm
    per array axis, >= 1; the NIfTI's i, j, k axes): the phantom is generated at 1 mm on the
    finer grid (D*s0, H*s1, W*s2), then the image is averaged over each s0 x s1 x s2 block
    (partial volume along a thick axis) and the truth is the block mean >= 0.5; the files carry
    the affine diag(s0, s1, s2, 1), so HD95 / ASD are in mm. The noise is applied to that
    low-resolution truth. (1, 1, 1), the default, writes what it always wrote."""
    import nibabel as nib

    from svl_env import rng
    from svl_env.noise import parse_noise
    from svl_env.data.phantom import generate_phantoms

    root = Path(root)
    spacing = tuple(int(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) < 1:
        raise ValueError(f"spacing must be 3 integers >= 1, got {spacing}")
    affine = np.diag([float(s) for s in spacing] + [1.0])
    g = np.random.default_rng(seed)
    model = parse_noise(noise)
    n_cor = int(round(noise_ratio * n_train))
    corrupted = sorted(int(i) for i in g.permutation(n_train)[:n_cor])

    def write(path, arr, dtype):
        img = nib.Nifti1Image(np.asarray(arr).astype(dtype), affine)
        img.set_data_dtype(dtype)
        img.header["descrip"] = b"svl-drl phantom benchmark"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, str(path))

    given_dice = []
    for split, n in (("Tr", n_train), ("Ts", n_test)):
        for i in range(n):
            shape = tuple(int(s) for s in g.integers(size[0], size[1] + 1, size=3))
            key = rng.as_keys([rng.draw_key(g)])
            fine = tuple(n * s for n, s in zip(shape, spacing))
            img, truth = generate_phantoms(key, fine, families=tuple(families), modalities=tuple(modalities))
            if fine != shape:  # block means over each s0 x s1 x s2 block (1 mm voxels -> spacing)
                blocks = (1, shape[0], spacing[0], shape[1], spacing[1], shape[2], spacing[2])
                img = img.reshape(blocks).mean((2, 4, 6))
                truth = truth.reshape(blocks).float().mean((2, 4, 6)) >= 0.5
            name = f"phantom_{split.lower()}_{i:03d}"
            write(root / "data" / f"images{split}" / f"{name}.nii.gz", img[0].numpy(), np.float32)
            write(root / f"clean_labels{split}" / f"{name}.nii.gz", truth[0].numpy(), np.uint8)
            if split == "Tr":
                label = truth
                if i in corrupted:
                    label, _ = model(truth, rng.as_keys([rng.draw_key(g)]), 1.0)
                write(root / "data" / "labelsTr" / f"{name}.nii.gz", label[0].numpy(), np.uint8)
                write(root / "data_clean" / "labelsTr" / f"{name}.nii.gz", truth[0].numpy(), np.uint8)
                t, lab = truth[0].numpy(), label[0].numpy()
                given_dice.append(2.0 * np.logical_and(t, lab).sum() / (t.sum() + lab.sum()))
    clean_images = root / "data_clean" / "imagesTr"
    if not clean_images.exists():
        clean_images.symlink_to((root / "data" / "imagesTr").resolve(), target_is_directory=True)
    ds = {"name": "phantoms", "modality": {"0": "MR" if "ct" not in modalities else "CT"},
          "labels": {"0": "background", "1": "structure"}, "numTraining": n_train, "numTest": n_test}
    for d in ("data", "data_clean"):
        (root / d / "dataset.json").write_text(json.dumps(ds, indent=1))
    return {"n_train": n_train, "n_test": n_test, "corrupted": corrupted, "noise": model.name,
            "noise_ratio": noise_ratio, "families": list(families), "modalities": list(modalities),
            "size": list(size), "spacing": list(spacing), "given_label_dice": float(np.mean(given_dice)),
            "given_label_dice_corrupted": float(np.mean([given_dice[i] for i in corrupted])) if corrupted else 1.0}


# Data presets (``--preset``, here and in benchmarks/plain_unet.py); explicit flags override them.
# "realistic": what an outside check on real brain MR looked like (issue 16) -- convoluted thin
# structures (``folded``: a cortex-like ribbon), 64^3 volumes with thick slices along the third
# array axis (the NIfTI k axis, the usual slice axis: 1 x 1 x 2 mm, i.e. 64 x 64 x 128 mm,
# generated at 1 mm and block-averaged to 2 mm along k), EVERY training label noisy. Its noise
# is tuned so the given labels have about the real check's Dice (0.71): with the protocols'
# defaults, mt+sp+flip gave 0.628 (mean over the 12 training cases, data seed 0) -- mt's erosion
# by a cube of side 3-4 erases most of a ribbon 1-4 voxels thick (mt alone: 0.45) -- so mt is
# limited to side 2 (a one-voxel dilation or erosion to one side): 0.7225.
PRESETS = {
    "realistic": {"families": "folded", "modalities": "mr", "size": "64,64", "spacing": "1,1,2",
                  "noise": "mt:side_min=2,side_max=2+sp+flip", "noise_ratio": 1.0, "train": 12, "test": 16},
}


def add_phantom_args(ap: argparse.ArgumentParser, *, families: str = "blob", size: str = "32,40") -> None:
    """The phantom-data options both benchmark scripts share: --preset, --families,
    --modalities, --size, --spacing (read them with ``phantom_options``)."""
    ap.add_argument("--preset", choices=sorted(PRESETS),
                    help="data preset (explicit flags override it): " + "; ".join(
                        f"{k}: " + ", ".join(f"{a}={v}" for a, v in p.items()) for k, p in PRESETS.items()))
    ap.add_argument("--families", default=families, help="phantom families, comma-separated (blob, tubular, "
                    "multi, hollow, folded)")
    ap.add_argument("--modalities", default="mr", help="phantom modalities, comma-separated (mr, ct)")
    ap.add_argument("--size", default=size,
                    help="voxels per side, LO,HI (each axis drawn in LO..HI) or one number, e.g. 64 or 64,64")
    ap.add_argument("--spacing", default="1,1,1",
                    help="integer mm per array axis, e.g. 1,1,2: generated at 1 mm on the finer grid, image "
                         "block-averaged, truth = block mean >= 0.5, NIfTI affine diag(spacing) (default 1,1,1)")


def parse_with_preset(ap: argparse.ArgumentParser, argv=None, rename=None) -> argparse.Namespace:
    """Parse ``argv`` with ``--preset``'s values as the defaults (explicit flags still win);
    ``rename`` maps a preset key to this parser's dest (e.g. {"test": "test_cases"})."""
    pre, _ = ap.parse_known_args(argv)
    if getattr(pre, "preset", None):
        rename = rename or {}
        ap.set_defaults(**{rename.get(k, k): v for k, v in PRESETS[pre.preset].items()})
    return ap.parse_args(argv)


def phantom_options(ap: argparse.ArgumentParser, args) -> dict:
    """``make_phantom_dataset`` keyword arguments from ``add_phantom_args``' options."""
    try:
        size = [int(x) for x in str(args.size).split(",") if x.strip()]
        spacing = tuple(int(x) for x in str(args.spacing).split(",") if x.strip())
    except ValueError:
        ap.error(f"--size and --spacing take integers, got {args.size!r} and {args.spacing!r}")
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or size[0] < 8 or size[1] < size[0]:
        ap.error(f"--size: LO,HI with 8 <= LO <= HI, or one number >= 8; got {args.size!r}")
    if len(spacing) != 3 or min(spacing) < 1:
        ap.error(f"--spacing: three integers >= 1, e.g. 1,1,2; got {args.spacing!r}")
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    return {"families": families, "modalities": modalities, "size": tuple(size), "spacing": spacing}


def _run_jobs(jobs: list[tuple[str, list[str]]], parallel: int, logdir: Path) -> dict[str, dict]:
    """Run CLI commands, ``parallel`` at a time; returns {name: {"rc", "wall_s", "log"}}.

    If this loop is left early (Ctrl-C, SIGTERM through ``_exit_on_sigterm``, an error), the
    runs it started are terminated: a run left going would go on writing into the run folder
    that the next ``--reuse`` reads."""
    pending, running, done = list(jobs), {}, {}
    try:
        while pending or running:
            while pending and len(running) < parallel:
                name, cmd = pending.pop(0)
                log = logdir / (name.replace(" ", "_").replace("(", "").replace(")", "") + ".log")
                fh = open(log, "w")
                proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"})
                running[name] = (proc, fh, time.perf_counter(), log)
                print(f"  started {name}", flush=True)
            time.sleep(1.0)
            for name in list(running):
                proc, fh, t0, log = running[name]
                if proc.poll() is not None:
                    fh.close()
                    done[name] = {"rc": proc.returncode, "wall_s": time.perf_counter() - t0, "log": str(log)}
                    del running[name]
                    status = "ok" if proc.returncode == 0 else f"FAILED (rc {proc.returncode}, see {log})"
                    print(f"  finished {name}: {status}, {done[name]['wall_s'] / 60:.1f} min wall", flush=True)
    finally:
        for name, (proc, fh, _, _) in running.items():
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            fh.close()
            print(f"  stopped {name} (unfinished)", flush=True)
    return done


def _exit_on_sigterm() -> None:
    """SIGTERM (``kill``, a scheduler's time limit) exits through Python like Ctrl-C does, so that
    ``_run_jobs`` stops the runs it started instead of leaving them to the shell."""
    import signal

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def list_test_cases(images_ts: Path) -> list[str]:
    """The test cases of ``images_ts``: its ``*.nii.gz`` names without the suffix, sorted (the
    order ``score_test_cases`` scores them in)."""
    return sorted(p.name[: -len(".nii.gz")] for p in Path(images_ts).glob("*.nii.gz"))


def score_test_cases(images_ts: Path, clean_ts: Path, predict, modality: str = "auto") -> dict:
    """Every row's test scores: the sorted ``images_ts/*.nii.gz``, each read with its clean label
    ``clean_ts/<same name>`` (``svl_env.data.nifti.load_case``, ``modality`` normalisation) and
    segmented by ``predict(case, image_path)`` -> (D, H, W) bool. Returns
    ``agents.staged.pipeline.score_masks``' dict plus "cases": the names without ``.nii.gz``, in
    the order of its per-case lists."""
    from agents.staged.pipeline import score_masks
    from svl_env.data.nifti import load_case

    preds, truths, spacings, names = [], [], [], []
    for ip in sorted(Path(images_ts).glob("*.nii.gz")):
        case = load_case(ip, Path(clean_ts) / ip.name, modality=modality)
        preds.append(predict(case, ip))
        truths.append(case.label)
        spacings.append(case.spacing)
        names.append(ip.name[: -len(".nii.gz")])
    out = score_masks(preds, truths, spacings)
    out["cases"] = names
    return out


#: a staged run's cached test scores (``_test_scores``), next to its model.pt
TEST_SCORES = "test_scores.json"


def _test_scores(run_dir: Path, data: Path, clean_ts: Path, flips: int = 1) -> dict:
    """A staged run's test scores (``score_test_cases`` with its ``model.pt``; ``flips``: each
    probability the mean over that many flipped copies, ``predict_probability(flips=)``).

    Cached in ``run_dir/TEST_SCORES``: the scores per flip count, under one key (the test cases
    and the model file's size and modification time). A ``--reuse`` pass re-predicts only the
    runs whose model or test set changed, or that were never scored with this flip count (with 4
    flips a 10 CPU-min run takes about 2 CPU-min to score); a new model or test set drops the
    scores of the old one."""
    from agents.common.checkpoint import atomic_write
    from agents.staged.checkpoint import load_model, resolve_model_path
    from agents.staged.pipeline import json_safe
    from agents.staged.segment import predict_probability

    st = resolve_model_path(run_dir).stat()
    key = {"model_bytes": st.st_size, "model_mtime_ns": st.st_mtime_ns, "cases": list_test_cases(data / "imagesTs")}
    cache = Path(run_dir) / TEST_SCORES
    try:
        stored = json.loads(cache.read_text())
        by_flips = dict(stored["scores"]) if stored["key"] == key else {}
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: score again
        by_flips = {}
    if str(flips) in by_flips:  # JSON object keys are strings
        return by_flips[str(flips)]
    model, meta = load_model(run_dir)
    window = meta.get("window", 64)
    scores = score_test_cases(data / "imagesTs", clean_ts,
                              lambda case, _: predict_probability(model, case.image, window=window, flips=flips) > 0.5,
                              modality=meta.get("modality", "auto"))
    by_flips[str(flips)] = scores
    text = json.dumps(json_safe({"key": key, "scores": by_flips}))  # NaN HD95 -> null, as report.json
    atomic_write(cache, lambda tmp: Path(tmp).write_text(text))
    return scores


def _paired_lines(rows, reference: str = "svl-drl") -> list[str]:
    """``reference`` (default SVL-DRL) minus each other method, paired by run seed (same data, same
    seed): the runs of a method spread by ~0.03, so a difference of means alone says little."""
    by = {r["method"]: {run["seed"]: run["test"]["dice"] for run in r["runs"]} for r in rows if not r.get("failed")}
    ref = by.get(reference)
    if not ref:
        return []
    name = "SVL-DRL" if reference == "svl-drl" else reference
    out = ["", f"{name} minus each method, test Dice paired by run seed:", ""]
    for m, runs in by.items():
        common = sorted(set(ref) & set(runs))
        if m == reference or not common:
            continue
        d = np.array([ref[s] - runs[s] for s in common])
        se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        out.append(f"- {m}: {d.mean():+.4f} (s.e. {_fmt(se)}; per seed {' / '.join(f'{x:+.3f}' for x in d)}; "
                   f"{name} higher in {int((d > 0).sum())} of {len(d)})")
    return out


# --- rliable statistics over the run seeds (the leaderboard's agents/eval/stats.py) ---
#: the method every other one is compared with in the statistics
REFERENCE = "svl-drl"
STATS_FIELDS = ("method", "runs", "test_cases", "iqm", "iqm_ci_low", "iqm_ci_high", "mean", "mean_ci_low",
                "mean_ci_high", "reference", "p_reference_better", "p_ci_low", "p_ci_high")


def dice_matrices(rows) -> tuple[dict[str, np.ndarray], list, list[str]]:
    """({method: (runs, test cases) per-case test Dice}, the test cases of the columns, notes).

    A row's runs are its run seeds (in the order run); the columns are the test cases in sorted
    order (by name where the run lists ``test_cases``, else by position: ``_test_scores`` scores
    them in sorted file order), the same for every method. Left out, each with a note: a method
    without a finished run, a failed or missing run seed, a run without per-case Dice (a JSON
    from before they were stored), a run with other test cases than the first one kept or a
    non-finite Dice."""
    scores, notes, cases = {}, [], None
    for r in rows:
        m = r["method"]
        kept = []
        for run in r.get("runs") or []:
            per, names = run.get("test_per_case_dice"), run.get("test_cases")
            if per is None:
                notes.append(f"{m}, seed {run.get('seed')}: no per-case test Dice stored (older JSON); left out")
                continue
            keys = list(names) if names is not None else list(range(len(per)))
            if len(keys) != len(per):
                notes.append(f"{m}, seed {run.get('seed')}: {len(per)} per-case Dice for {len(keys)} test cases; "
                             "left out")
                continue
            by_case = dict(zip(keys, per))
            order = sorted(by_case)
            if cases is None:
                cases = order
            if order != cases:
                notes.append(f"{m}, seed {run.get('seed')}: other test cases than the other runs; left out")
                continue
            v = np.array([np.nan if by_case[c] is None else by_case[c] for c in cases], dtype=np.float64)
            if not np.isfinite(v).all():
                notes.append(f"{m}, seed {run.get('seed')}: non-finite per-case Dice; left out")
                continue
            kept.append(v)
        if r.get("failed"):
            bad = r.get("failed_seeds")
            notes.append(f"{m}: " + (f"run seed(s) {', '.join(map(str, bad))} failed or missing"
                                     if bad else "failed") + (f" (see {r['log']})" if r.get("log") else "")
                         + ("; left out" if not kept else "; its other runs are kept"))
        elif not kept and not r.get("runs"):
            notes.append(f"{m}: no finished run; left out")
        if kept:
            scores[m] = np.stack(kept)
    return scores, cases or [], notes


def rliable_stats(rows, *, reps: int | None = None, seed: int | None = None, reference: str = REFERENCE) -> dict:
    """Dice IQM and mean with stratified-bootstrap 95 % CIs per method, and P(reference > method)
    for every other method, from the benchmark's rows (``dice_matrices``), all computed by
    ``agents.eval.stats.compute_stats``: one call per method on the pair {reference, method}
    with ``controls={reference: method}``, i.e. the reference is the policy and the method its
    control, so its ``p_improvement`` is P(reference > method) as rliable defines it (per test
    case, the chance that a reference run scores above a run of the method, ties half, averaged
    over the test cases). A method's IQM / mean and their CIs do not depend on the other policy of
    the call (seeded per policy). Returns {"scores", "cases", "rows" (``STATS_FIELDS``, best IQM
    first), "notes", "reps", "reference"}."""
    from agents.eval import stats as ST

    reps = ST.DEFAULT_REPS if reps is None else reps
    seed = ST.BOOTSTRAP_SEED if seed is None else seed
    scores, cases, notes = dice_matrices(rows)
    out = []
    for m, s in scores.items():
        nan = float("nan")
        if m != reference and reference in scores:
            by = {r["policy"]: r for r in ST.compute_stats({reference: scores[reference], m: s}, {reference: m},
                                                           reps=reps, seed=seed, default_control=m)}
            st, ref = by[m], by[reference]
            p = (ref["p_improvement"], ref["p_ci_low"], ref["p_ci_high"])
        else:  # the reference itself (or no reference run): IQM and mean only
            st = ST.compute_stats({m: s}, reps=reps, seed=seed, default_control=m)[0]
            p = (nan, nan, nan)
        out.append({"method": m, "runs": st["runs"], "test_cases": st["episodes"],
                    **{k: st[k] for k in ("iqm", "iqm_ci_low", "iqm_ci_high", "mean", "mean_ci_low", "mean_ci_high")},
                    "reference": reference, "p_reference_better": p[0], "p_ci_low": p[1], "p_ci_high": p[2]})
    if scores and reference not in scores:
        notes.append(f"no {reference} run: no P({reference} > method)")
    out.sort(key=lambda r: -r["iqm"])
    return {"scores": scores, "cases": cases, "rows": out, "notes": notes, "reps": reps, "reference": reference}


def stats_markdown(res: dict) -> list[str]:
    """The IQM table of ``rliable_stats`` (Markdown lines)."""
    def ci(lo, hi, nd=3):
        return "n/a" if not np.isfinite(lo) else f"[{lo:.{nd}f}, {hi:.{nd}f}]"

    ref = res["reference"]
    lines = ["", f"Test Dice over run seeds and test cases (rliable; P({ref} > method): the chance that a {ref} run "
             "beats a run of the method on the same test case):", "",
             f"| method | runs | test cases | Dice IQM [95 % CI] | Dice mean [95 % CI] | P({ref} > method) [95 % CI] |",
             "|:---|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        p = "—" if not np.isfinite(r["p_reference_better"]) else \
            f"{r['p_reference_better']:.2f} {ci(r['p_ci_low'], r['p_ci_high'], 2)}"
        lines.append(f"| {r['method']} | {r['runs']} | {r['test_cases']} | {r['iqm']:.3f} "
                     f"{ci(r['iqm_ci_low'], r['iqm_ci_high'])} | {r['mean']:.3f} "
                     f"{ci(r['mean_ci_low'], r['mean_ci_high'])} | {p} |")
    lines += ["", "IQM: the mean of the middle 50 % of all runs × test cases Dice scores. CIs: rliable's stratified "
              f"bootstrap over runs and test cases ({res['reps']} resamples, seeded; agents/eval/stats.py). "
              f"P({ref} > method): rliable's probability of improvement with {ref} as the policy and the method as "
              f"its control (per test case, Mann-Whitney P({ref} run > method run), ties half, averaged over the "
              f"test cases); 0.5 = no difference, above 0.5 = {ref} better. Its CI resamples the runs of both "
              "within each test case: n/a when both have one run."]
    lines += [f"- {n}" for n in res["notes"]]
    return lines


def write_stats_files(res: dict, out) -> dict:
    """``<out stem>_stats.md``, ``<out stem>_stats.csv`` and ``<out stem>_performance_profile.png``
    next to ``out`` (the benchmark's Markdown file). Returns their paths."""
    import csv

    from agents.common.checkpoint import atomic_write
    from agents.eval import stats as ST

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {"stats_md": out.with_name(out.stem + "_stats.md"), "stats_csv": out.with_name(out.stem + "_stats.csv"),
             "profile_png": out.with_name(out.stem + "_performance_profile.png")}

    def write_csv(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=STATS_FIELDS)
            w.writeheader()
            w.writerows(res["rows"])

    atomic_write(paths["stats_csv"], write_csv)
    md = "\n".join(stats_markdown(res)[1:]) + "\n"
    atomic_write(paths["stats_md"], lambda tmp: Path(tmp).write_text(md))
    order = [r["method"] for r in res["rows"]]
    if order:
        sc = res["scores"]
        profiles, cis = ST.performance_profiles({m: sc[m] for m in order}, reps=res["reps"])
        ST.plot_performance_profile(profiles, cis, paths["profile_png"], runs={m: sc[m].shape[0] for m in order})
    else:  # nothing to plot: no stale profile of an earlier run next to these files
        paths.pop("profile_png").unlink(missing_ok=True)
    return paths


def _fmt(x, nd=4):
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def main(argv=None) -> int:
    from agents.common.windows import FLIPS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-minutes", type=float, default=4.0, help="CPU budget per method (process CPU time)")
    ap.add_argument("--jobs", type=int, default=2, help="methods trained at the same time (one thread each)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the phantom data set")
    ap.add_argument("--train", type=int, default=32, help="training cases (--noise-ratio of them corrupted)")
    ap.add_argument("--test", type=int, default=64,
                    help="test cases (with 16, one hard case moved a run's mean test Dice by up to 0.05)")
    add_phantom_args(ap)
    ap.add_argument("--noise", default="mt",
                    help="noise protocol of the corrupted training labels (svl_env.noise spec, e.g. mt or mt+sp+flip)")
    ap.add_argument("--noise-ratio", type=float, default=0.5,
                    help="fraction of the training cases whose labels are corrupted (1.0: every label noisy)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                    help=f"methods to run, comma-separated, of: {', '.join(ALL_METHODS)} (default: all but "
                         f"{', '.join(m for m in ALL_METHODS if m not in DEFAULT_METHODS)})")
    ap.add_argument("--run-seeds", default="0,1,2,3",
                    help="seeds of the training runs (each method once per seed, same data); the table "
                         "shows means and the spread over them")
    ap.add_argument("--workdir", default="runs/staged_benchmark", help="data and run folders")
    ap.add_argument("--out", default="benchmarks/results/staged_pipeline.md", help="Markdown table (+ .json)")
    ap.add_argument("--reuse", action="store_true", help="reuse finished runs in --workdir (report.json present)")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="every run's --precision (auto: bf16 where the CPU has native bf16)")
    ap.add_argument("--stats-reps", type=int, default=2000,
                    help="bootstrap resamples of the rliable statistics (agents/eval/stats.py's default 2000; "
                         "P(svl-drl > method)'s bootstrap takes about a minute per method with 8 runs x 64 cases)")
    ap.add_argument("--reference", default=REFERENCE, metavar="METHOD",
                    help="the row every other is compared with: paired differences and P(METHOD > method) "
                         f"(default {REFERENCE})")
    ap.add_argument("--test-flips", type=int, choices=sorted(FLIPS), default=1,
                    help="test-time averaging: every row's test probability is the mean over this many flipped "
                         "copies of each image (svl-drl segment --flips, whose default is 4; the plain U-Net "
                         "likewise). 1: none, the README's tables; a changed count re-scores the reused runs and "
                         "retrains the plain U-Net")
    ap.add_argument("--stats-from", metavar="JSON",
                    help="no training: recompute the statistics files from a benchmark JSON (written next to --out)")
    args = parse_with_preset(ap, argv)
    if args.stats_from:
        res = rliable_stats(json.loads(Path(args.stats_from).read_text())["rows"], reps=args.stats_reps,
                            reference=args.reference)
        print("\n".join(stats_markdown(res)))
        print("statistics: " + ", ".join(str(p) for p in write_stats_files(res, args.out).values()))
        return 0
    data_opts = phantom_options(ap, args)
    print(f"phantom data{' (preset ' + args.preset + ')' if args.preset else ''}: families "
          f"{','.join(data_opts['families'])}, modalities {','.join(data_opts['modalities'])}, "
          f"{data_opts['size'][0]}..{data_opts['size'][1]} voxels per side, spacing "
          f"{'x'.join(map(str, data_opts['spacing']))} mm, noise {args.noise} on a fraction {args.noise_ratio:g} "
          f"of {args.train} training cases, {args.test} test cases, data seed {args.seed}", flush=True)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; valid: {list(ALL_METHODS)}")
    work = Path(args.workdir).resolve()
    t_start = time.perf_counter()
    summary_path = work / "dataset_summary.json"
    data_summary = json.loads(summary_path.read_text()) if args.reuse and summary_path.is_file() else None
    if data_summary is not None:
        # the training cases are drawn before the test cases, so only a different --test may
        # reuse the runs (the data are rewritten with the new test set); anything else is a
        # different data set
        want = {"n_train": args.train, "seed": args.seed, "families": data_opts["families"],
                "modalities": data_opts["modalities"], "noise_ratio": args.noise_ratio,
                "size": list(data_opts["size"]), "spacing": list(data_opts["spacing"])}
        diff = [k for k, v in want.items() if data_summary.get(k, v) != v]
        if diff:
            ap.error(f"--reuse: {work} holds a different data set (its {', '.join(diff)} differ from these "
                     "arguments); use a new --workdir")
        if data_summary["n_test"] != args.test:
            data_summary = None
    if data_summary is None:
        print(f"writing phantom dataset to {work} ...", flush=True)
        for d in (work / "data" / "imagesTs", work / "clean_labelsTs"):  # a smaller --test leaves none behind
            shutil.rmtree(d, ignore_errors=True)
        t_data = time.perf_counter()
        data_summary = make_phantom_dataset(work, n_train=args.train, n_test=args.test, seed=args.seed,
                                            noise=args.noise, noise_ratio=args.noise_ratio, **data_opts)
        data_summary["wall_s"] = time.perf_counter() - t_data
        print(f"  written in {data_summary['wall_s']:.1f} s", flush=True)
        data_summary["seed"] = args.seed
        summary_path.write_text(json.dumps(data_summary, indent=1))
    print(f"given training labels: Dice vs truth {data_summary['given_label_dice']:.4f} "
          f"({len(data_summary['corrupted'])}/{data_summary['n_train']} cases corrupted, "
          f"{data_summary['given_label_dice_corrupted']:.4f} on those)", flush=True)

    seeds = [int(x) for x in args.run_seeds.split(",") if x.strip()]
    if not seeds:
        ap.error("--run-seeds needs at least one seed")

    def run_dir(m, sd):
        return work / "runs" / m.replace(" ", "_").replace("(", "").replace(")", "") / f"seed{sd}"

    def pipeline_cmd(m, sd, budget_args):
        extra, clean = METHODS[m]
        data = work / ("data_clean" if clean else "data")
        return [sys.executable, "-m", "agents.cli", "pipeline", "--data", str(data), "--out", str(run_dir(m, sd)),
                *budget_args, "--seed", str(sd), "--threads", "1", "--eval-labels", str(work / "clean_labelsTr"),
                "--no-progress", "--precision", args.precision, *extra]

    def plain_unet_cmd(sd):
        return [sys.executable, str(ROOT / "benchmarks" / "plain_unet.py"), "--data", str(work / "data"),
                "--test", str(work), "--eval-labels", str(work / "clean_labelsTr"),
                "--cpu-minutes", str(args.cpu_minutes), "--seeds", str(sd), "--threads", "1",
                "--channels", PLAIN_UNET_CHANNELS, "--res-units", str(PLAIN_UNET_RES_UNITS),
                "--test-flips", str(args.test_flips), "--out", str(run_dir(PLAIN_UNET, sd))]

    test_cases = list_test_cases(work / "data" / "imagesTs")

    def todo(m, sd):
        report = run_dir(m, sd) / "report.json"
        if not (args.reuse and report.is_file()):
            return True
        rep = json.loads(report.read_text())
        stored = rep.get("test")
        if stored is not None and (stored.get("cases") != test_cases or rep.get("test_flips", 1) != args.test_flips):
            # its test scores are stored, not re-scored from a model.pt: a changed --test or
            # --test-flips retrains it (and its stale report must not stand in for a failed retraining)
            report.unlink()
            return True
        return False

    jobs = [(f"{m} [seed {sd}]", plain_unet_cmd(sd) if m == PLAIN_UNET else
             pipeline_cmd(m, sd, ["--cpu-minutes", str(args.cpu_minutes)]))
            for sd in seeds for m in methods if m not in MATCHED and todo(m, sd)]
    (work / "logs").mkdir(parents=True, exist_ok=True)
    print(f"training {len(jobs)} run(s) ({len(methods)} method(s) x {len(seeds)} seed(s)), "
          f"{args.cpu_minutes:g} CPU-min each, {args.jobs} at a time ...", flush=True)
    status = _run_jobs(jobs, max(1, args.jobs), work / "logs")
    # the update-matched rows, once the runs whose update counts they take exist
    missing_ref: dict[str, list[int]] = {}
    jobs = []
    for m in (m for m in methods if m in MATCHED):
        for sd in seeds:
            ref = run_dir(MATCHED[m], sd)
            if not (ref / "report.json").is_file():
                missing_ref.setdefault(m, []).append(sd)
            elif todo(m, sd):
                jobs.append((f"{m} [seed {sd}]", pipeline_cmd(m, sd, matched_budget(m, ref))))
    if jobs:
        print(f"training {len(jobs)} update-matched run(s), {args.jobs} at a time ...", flush=True)
        status.update(_run_jobs(jobs, max(1, args.jobs), work / "logs"))
    for m, sds in missing_ref.items():
        print(f"  {m}: no {MATCHED[m]} run for seed(s) {sds} (add {MATCHED[m]!r} to --methods)", flush=True)

    rows = []
    for m in methods:
        runs = []
        for sd in seeds:
            rd = run_dir(m, sd)
            if not (rd / "report.json").is_file():
                continue
            rep = json.loads((rd / "report.json").read_text())
            # a run that scored the test cases itself (the plain U-Net: no model.pt to load)
            test = (rep["test"] if "test" in rep else
                    _test_scores(rd, work / "data", work / "clean_labelsTs", flips=args.test_flips))
            ev = rep.get("eval", {})
            runs.append({"seed": sd, "test": {k: test[k] for k in ("dice", "iou", "hd95", "asd")},
                         "test_per_case_dice": test["per_case"]["dice"], "test_cases": test["cases"],
                         "refined_train_dice": ev.get("refined_labels", {}).get("dice"),
                         "model_train_dice": ev.get("model_on_training_images", {}).get("dice"),
                         "label_rounds": ev.get("rounds"), "refined_from": rep.get("refined_labels_from"),
                         "updates": rep["updates"], "cpu_min": rep["train_cpu_s"] / 60,
                         "refinements": rep.get("refinements")})
            print(f"  {m} [seed {sd}]: test Dice {test['dice']:.4f}", flush=True)
        if len(runs) < len(seeds):
            failed = [j for j in status if j.startswith(m + " [") and status[j]["rc"] != 0]
            why = [status[j]["log"] for j in failed]
            if m in missing_ref:
                why.append(f"no {MATCHED[m]} run for seed(s) {', '.join(map(str, missing_ref[m]))}")
            # the finished runs stay (the statistics keep them, with a note); the table marks the method failed
            rows.append({"method": m, "failed": True, "log": ", ".join(why), "runs": runs,
                         "failed_seeds": sorted(set(seeds) - {r["seed"] for r in runs})})
            continue

        def mean(get):
            v = np.asarray([get(r) for r in runs], dtype=np.float64)
            return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

        rows.append({"method": m, "runs": runs,
                     "test": {k: mean(lambda r, k=k: r["test"][k]) for k in ("dice", "iou", "hd95", "asd")},
                     "test_dice_runs": [r["test"]["dice"] for r in runs],
                     "refined_train_dice": mean(lambda r: r["refined_train_dice"]),
                     "model_train_dice": mean(lambda r: r["model_train_dice"]),
                     "updates": mean(lambda r: r["updates"])})

    total_min = (time.perf_counter() - t_start) / 60
    lines = [
        f"Phantoms ({', '.join(data_summary['families'])}; {', '.join(data_summary['modalities'])}; "
        f"{data_summary['size'][0]}..{data_summary['size'][1]} voxels per side, spacing "
        f"{'x'.join(map(str, data_summary.get('spacing', [1, 1, 1])))} mm), {data_summary['n_train']} training "
        f"cases, {data_summary['n_test']} test cases; noise `{data_summary['noise']}` on "
        f"{len(data_summary['corrupted'])}/{data_summary['n_train']} training cases (noise ratio "
        f"{data_summary['noise_ratio']:g}); given training labels: Dice vs truth "
        f"{data_summary['given_label_dice']:.4f}. "
        f"Budget: {args.cpu_minutes:g} CPU-minutes of training per run (process CPU time, 1 thread); "
        f"data seed {args.seed}; every method run with seeds {', '.join(map(str, seeds))} -- means over the runs, "
        f"and each run's test Dice"
        + (f"; test predictions averaged over {args.test_flips} flipped copies of each image (--test-flips)."
           if args.test_flips != 1 else "."),
        "",
        "| method | test Dice (mean) | test Dice per run | test IoU | test HD95 (mm) | test ASD (mm) | "
        "training labels out: Dice vs truth | model on training images: Dice | updates |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| given labels (no training) | – | – | – | – | – | {data_summary['given_label_dice']:.4f} | – | – |",
    ]
    for r in rows:
        if r.get("failed"):
            lines.append(f"| {r['method']} | failed (see {r['log']}) | | | | | | | |")
            continue
        t = r["test"]
        per = " / ".join(f"{d:.3f}" for d in r["test_dice_runs"])
        lines.append(f"| {r['method']} | {_fmt(t['dice'])} | {per} | {_fmt(t['iou'])} | {_fmt(t['hd95'], 2)} | "
                     f"{_fmt(t['asd'], 2)} | {_fmt(r['refined_train_dice'])} | {_fmt(r['model_train_dice'])} | "
                     f"{r['updates']:.0f} |")
    lines += _paired_lines(rows, args.reference)
    stats = rliable_stats(rows, reps=args.stats_reps, reference=args.reference)
    lines += stats_markdown(stats)
    lines += ["", "\"training labels out\": the pipeline's `refined_labels/` (svl-drl: the label agents' last "
              "round; self-training: the model's predictions of the last round, accepted per case; noisy, "
              "co-teaching, TriNet, clean: the model's predictions on the training images). "
              "\"noisy (updates matched to svl-drl)\": `--updates` = the svl-drl run's updates of the same seed "
              "instead of the CPU budget."
              + (f" \"{PLAIN_UNET}\": benchmarks/plain_unet.py (MONAI UNet, channels {PLAIN_UNET_CHANNELS}, "
                 f"{PLAIN_UNET_RES_UNITS} residual units, z-scored images, DiceCE loss, fp32) with the same CPU "
                 "budget; its training labels out are its predictions on the training images."
                 if PLAIN_UNET in methods else ""),
              f"Whole benchmark: {total_min:.1f} min wall on {os.cpu_count()} cores "
              f"({platform.processor() or platform.machine()}).",
              f"Command: `python benchmarks/staged_pipeline.py --cpu-minutes {args.cpu_minutes:g} --jobs {args.jobs} "
              f"--seed {args.seed} --run-seeds {','.join(map(str, seeds))} --precision {args.precision}"
              + (f" --preset {args.preset}" if args.preset else "")
              + ("" if tuple(methods) == DEFAULT_METHODS else f" --methods '{','.join(methods)}'")
              + ("" if args.reference == REFERENCE else f" --reference '{args.reference}'")
              + ("" if args.test_flips == 1 else f" --test-flips {args.test_flips}") + "`"]
    table = "\n".join(lines)
    print()
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    out.with_suffix(".json").write_text(json.dumps({"dataset": data_summary, "args": vars(args), "rows": rows,
                                                    "total_wall_min": total_min, "test_cases": stats["cases"],
                                                    "stats": stats["rows"]}, indent=1, default=str))
    files = write_stats_files(stats, out)
    print("statistics: " + ", ".join(str(p) for p in files.values()), flush=True)
    return 0 if not any(r.get("failed") for r in rows) else 1


if __name__ == "__main__":
    _exit_on_sigterm()
    sys.exit(main())
