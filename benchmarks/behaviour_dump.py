"""Bit-identity dump: a fixed set of outputs, to show a restructuring left behaviour unchanged.

Dump the outputs of whichever tree Python imports, then compare two dumps::

    PYTHONPATH=/path/to/tree_a python benchmarks/behaviour_dump.py dump --out /tmp/dumps/a --data-dir /tmp/dumps/data
    PYTHONPATH=/path/to/tree_b python benchmarks/behaviour_dump.py dump --out /tmp/dumps/b --data-dir /tmp/dumps/data
    python benchmarks/behaviour_dump.py compare /tmp/dumps/a /tmp/dumps/b

The first ``dump`` writes the NIfTI folder ``--data-dir`` (phantoms and their MT-noise labels,
built by the tree it runs on) if it does not exist yet; later dumps reuse it, so every tree
reads the same files. Only interfaces present before and after the restructuring of issue 14
are used: ``gymnasium.make("SVLDRL-v0")``, ``svl_env.SVLDRLVectorEnv`` keyword arguments,
``svl_env.phantom.generate_phantoms`` / ``svl_env.noise.parse_noise`` (to build the folder) and
the CLI ``python -m agents.cli train|benchmark|pipeline`` as a subprocess (run with the same
``PYTHONPATH``, from a scratch folder so the working directory cannot shadow it).

Groups (``--only`` picks some; the whole dump takes ~1 CPU-minute on one thread):

- ``env``: vector-env episodes (3 envs, reset(seed) + 6 steps of actions from a fixed numpy RNG,
  so the NEXT_STEP autoreset is included) for every noise protocol and two mixtures, label and
  intensity actions (the segmenter is a fixed 3x3x3 mean-threshold Conv3d), ``action_rewards``,
  ``reward_target="annotation"``, ``noise_ratio`` < 1, reward weights, at 16^3 and 32^3; every
  observation, reward, termination, truncation and numeric ``info`` entry (``reward_map``,
  ``action_rewards``, ...). Plus one episode of the single env ``gym.make("SVLDRL-v0")``.
- ``train``: a short synchronous vA3C run; metrics.csv columns but timings, every tensor of
  checkpoint.pt and its numeric metadata but timings, config.json leaves.
- ``bench``: the heuristic agents' benchmark at 16^3 and with the ``--quick`` preset's env;
  leaderboard.csv, per_case.csv and curves.csv columns but timings.
- ``pipeline``: short ``pipeline`` runs of each method (svl-drl, noisy, coteaching) on that
  folder; every refined label volume, the leaves of report.json but timings, model.pt's tensors.

Each group is one ``GROUP.npz``; ``manifest.json`` lists every entry's name, shape and dtype
and the files ``svl_env`` / ``agents`` were imported from, here and in the CLI subprocesses
(``dump`` stops if the two differ). ``compare`` prints the number of entries compared and
identical (same dtype, same shape, ``np.array_equal`` with NaN equal to NaN) and, for each
differing or missing entry, its name and max abs difference; it exits 1 if anything differs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Before numpy / torch load: a thread count must not be able to change a float result.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402

GROUPS = ("env", "train", "bench", "pipeline")
# Columns and keys that measure time (wall or CPU): they differ run to run by nature.
TIMING_WORDS = {"seconds", "elapsed", "time", "wall", "cpu", "host"}
HEURISTICS = "identity,random,majority,opening,closing,intensity,oracle"
PHANTOM_CASES = 4
PHANTOM_SHAPE = (32, 32, 32)


def _is_timing(name: str) -> bool:
    name = name.lower()
    return name.endswith("_per_s") or bool(TIMING_WORDS & set(re.split(r"[^a-z0-9]+", name)))


# ------------------------------------------------------------------ helpers
def _to_numpy(x) -> np.ndarray:
    import torch

    if torch.is_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _json_leaves(obj, prefix: str, out: dict) -> None:
    """Flatten a JSON value into ``out[prefix/key...] = array``; keys that measure time are left out."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not _is_timing(str(k)):
                _json_leaves(v, f"{prefix}/{k}", out)
    elif isinstance(obj, list) and all(isinstance(v, (int, float, bool)) for v in obj) and obj:
        out[prefix] = np.asarray(obj)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _json_leaves(v, f"{prefix}/{i}", out)
    elif obj is None:
        out[prefix] = np.asarray("<null>")
    else:
        out[prefix] = np.asarray(obj)


def _csv_columns(path: Path, prefix: str, out: dict) -> None:
    """Each non-timing column of a CSV as one array: float64 where every cell parses (empty = NaN), else str."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        out[f"{prefix}/<empty>"] = np.asarray(True)
        return
    for col in rows[0]:
        if _is_timing(col):
            continue
        cells = [r[col] for r in rows]
        try:
            out[f"{prefix}/{col}"] = np.asarray([float(c) if c != "" else np.nan for c in cells], dtype=np.float64)
        except ValueError:
            out[f"{prefix}/{col}"] = np.asarray(cells)


_FP32: list[str] | None = None


def _fp32_flags(scratch: Path) -> list[str]:
    """``["--precision", "fp32"]`` for a tree whose CLI has ``--precision`` (its default, auto, is
    bf16 on CPUs with native bf16), else nothing: bit-identity is defined in float32."""
    global _FP32
    if _FP32 is None:
        res = subprocess.run([sys.executable, "-m", "agents.cli", "train", "--help"], cwd=scratch,
                             env=dict(os.environ), capture_output=True, text=True)
        _FP32 = ["--precision", "fp32"] if "--precision" in res.stdout else []
    return _FP32


def _cli(args: list[str], scratch: Path) -> None:
    """``python -m agents.cli ARGS`` with this process's environment, from a folder holding no
    package; trainers in float32 (``_fp32_flags``)."""
    extra = _fp32_flags(scratch) if args[0] in ("train", "pipeline") else []
    cmd = [sys.executable, "-m", "agents.cli", *args, *extra]
    res = subprocess.run(cmd, cwd=scratch, env=dict(os.environ), capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


# ------------------------------------------------------------------ env
def _segmenter():
    """(B, 1, D, H, W) image -> logits 8 * (3x3x3 mean - 0.5) plus a fixed small perturbation."""
    import torch

    conv = torch.nn.Conv3d(1, 1, 3, padding=1)
    jitter = np.random.default_rng(1234).standard_normal((1, 1, 3, 3, 3)) * 0.01
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.full((1, 1, 3, 3, 3), 8.0 / 27.0) + jitter).float())
        conv.bias.fill_(-4.0)
    return conv.eval()


def _env_cases() -> dict[str, dict]:
    cases = {f"label_{n}": {"noise": n} for n in ("none", "mt", "sp", "markov", "flip", "mt+flip")}
    cases.update({
        "label_weighted_mix_ratio": {"noise": "0.7*mt+0.3*markov", "noise_ratio": 0.5},
        "label_mt_params": {"noise": "mt:side_min=3,side_max=5"},
        "label_literature": {"noise": "markov:preset=literature"},
        "label_action_rewards": {"noise": "mt", "action_rewards": True},
        "label_reward_annotation": {"noise": "sp", "reward_target": "annotation", "action_rewards": True},
        "label_reward_weights": {"noise": "flip", "reward_weights": {"w_dice": 1.0, "w_cont": 0.3, "w_cc": 0.2,
                                                                     "w_tv": 0.1}},
        "intensity_mt": {"noise": "mt", "action_set": "intensity", "segmenter": True},
        "intensity_init_annotation": {"noise": "markov", "action_set": "intensity", "segmenter": True,
                                      "initial_mask": "annotation"},
        "intensity_reward_annotation": {"noise": "flip", "action_set": "intensity", "segmenter": True,
                                        "reward_target": "annotation"},
        "label_32_action_rewards": {"noise": "mt+markov", "action_rewards": True, "patch_size": 32},
        "intensity_32": {"noise": "sp", "action_set": "intensity", "segmenter": True, "patch_size": 32},
    })
    return cases


def _record_step(out: dict, prefix: str, obs, reward=None, term=None, trunc=None, info=None) -> None:
    out[f"{prefix}/obs"] = _to_numpy(obs)
    for name, value in (("reward", reward), ("terminated", term), ("truncated", trunc)):
        if value is not None:
            out[f"{prefix}/{name}"] = _to_numpy(value)
    _info_leaves(info or {}, f"{prefix}/info", out)


def _info_leaves(info, prefix: str, out: dict) -> None:
    for k, v in info.items():
        if isinstance(v, dict):
            _info_leaves(v, f"{prefix}/{k}", out)
            continue
        arr = _to_numpy(v)
        if arr.dtype.kind in "biufc":
            out[f"{prefix}/{k}"] = arr
        elif arr.dtype == object:  # e.g. final_obs per env: numeric rows or None
            for i, row in enumerate(arr.reshape(-1)):
                if row is not None and _to_numpy(row).dtype.kind in "biufc":
                    out[f"{prefix}/{k}/{i}"] = _to_numpy(row)


def dump_env() -> dict:
    import gymnasium as gym
    import svl_env

    out: dict[str, np.ndarray] = {}
    steps, num_envs = 6, 3
    for ci, (name, case) in enumerate(_env_cases().items()):
        kwargs = {"patch_size": 16, **case}
        if kwargs.pop("segmenter", False):
            kwargs["segmenter"] = _segmenter()
        env = svl_env.SVLDRLVectorEnv(num_envs, **kwargs)
        actions = np.random.default_rng(100 + ci)
        obs, info = env.reset(seed=10 * ci)
        _record_step(out, f"env/{name}/reset", obs, info=info)
        k = len(env.action_names)
        for t in range(steps):
            act = actions.integers(0, k, size=(num_envs, *env.patch_shape))
            _record_step(out, f"env/{name}/step{t}", *env.step(act))
        env.close()

    env = gym.make("SVLDRL-v0")
    obs, info = env.reset(seed=7)
    _record_step(out, "env/single/reset", obs, info=info)
    actions = np.random.default_rng(7)
    for t in range(20):
        act = actions.integers(0, env.action_space.nvec.reshape(-1)[0], size=env.action_space.shape)
        obs, reward, term, trunc, info = env.step(act)
        _record_step(out, f"env/single/step{t}", obs, reward, term, trunc, info)
        if term or trunc:
            break
    env.close()
    return out


# ------------------------------------------------------------------ train
def _tensor_leaves(obj, prefix: str, out: dict) -> None:
    import torch

    if isinstance(obj, dict):
        for k, v in obj.items():
            _tensor_leaves(v, f"{prefix}/{k}", out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _tensor_leaves(v, f"{prefix}/{i}", out)
    elif torch.is_tensor(obj):
        out[prefix] = obj.detach().cpu().numpy()
    elif isinstance(obj, str):
        try:
            _json_leaves(json.loads(obj), prefix, out)
        except ValueError:
            out[prefix] = np.asarray(obj)
    else:
        _json_leaves(obj, prefix, out)


def dump_train(scratch: Path) -> dict:
    import torch

    run = scratch / "train"
    _cli(["train", "--agent", "va3c", "--updates", "10", "--seed", "0", "--patch-size", "16", "--num-envs", "2",
          "--checkpoint-every", "0", "--no-progress", "--out", str(run)], scratch)
    out: dict[str, np.ndarray] = {}
    _csv_columns(run / "metrics.csv", "train/metrics", out)
    _tensor_leaves(torch.load(run / "checkpoint.pt", weights_only=True, map_location="cpu"), "train/checkpoint", out)
    _json_leaves(json.loads((run / "config.json").read_text()), "train/config", out)
    return out


# ------------------------------------------------------------------ bench
def dump_bench(scratch: Path) -> dict:
    out: dict[str, np.ndarray] = {}
    runs = {"p16": ["--episodes", "8", "--patch-size", "16", "--noise", "mt+flip", "--batch-size", "4"],
            "quick": ["--quick"]}
    for name, extra in runs.items():
        folder = scratch / f"bench_{name}"
        _cli(["benchmark", "--agents", HEURISTICS, "--seed", "0", "--overlays", "0", "--no-progress",
              "--out", str(folder), *extra], scratch)
        for table in ("leaderboard", "per_case", "curves"):
            if (folder / f"{table}.csv").exists():
                _csv_columns(folder / f"{table}.csv", f"bench/{name}/{table}", out)
    return out


# ------------------------------------------------------------------ pipeline
def build_data(folder: Path) -> None:
    """A Decathlon-style folder: imagesTr (phantom intensities), labelsTr (MT-noise labels), clean/ (truth)."""
    import nibabel as nib
    import torch
    from svl_env.noise import parse_noise
    from svl_env.phantom import generate_phantoms

    keys = torch.arange(PHANTOM_CASES, dtype=torch.int64) * 7919 + 11
    image, truth = generate_phantoms(keys, PHANTOM_SHAPE)
    noisy, _ = parse_noise("mt")(truth, keys)
    tmp = folder.with_name(folder.name + ".partial")
    for sub in ("imagesTr", "labelsTr", "clean"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    for i in range(PHANTOM_CASES):
        affine = np.diag([1.0, 1.0, 1.5, 1.0])
        vol = (image[i].numpy() * 1000.0).astype(np.int16)
        nib.save(nib.Nifti1Image(vol, affine), str(tmp / "imagesTr" / f"case{i}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(noisy[i].numpy().astype(np.uint8), affine), str(tmp / "labelsTr" / f"case{i}.nii.gz"))
        nib.save(nib.Nifti1Image(truth[i].numpy().astype(np.uint8), affine), str(tmp / "clean" / f"case{i}.nii.gz"))
    tmp.rename(folder)


def dump_pipeline(scratch: Path, data: Path) -> dict:
    import nibabel as nib
    import torch

    out: dict[str, np.ndarray] = {}
    for method in ("svl-drl", "noisy", "coteaching"):
        folder = scratch / f"pipeline_{method}"
        _cli(["pipeline", "--method", method, "--data", str(data), "--out", str(folder),
              "--eval-labels", str(data / "clean"), "--updates", "30", "--rounds", "2", "--patch", "16", "--width", "8",
              "--seed", "0", "--threads", "1", "--no-progress"], scratch)
        labels = sorted(folder.rglob("*.nii*"))
        if not labels:
            raise RuntimeError(f"pipeline wrote no NIfTI files under {folder}")
        prefix = f"pipeline/{method}"
        for p in labels:
            img = nib.load(str(p))
            rel = p.relative_to(folder).as_posix()
            out[f"{prefix}/{rel}"] = np.asarray(img.dataobj)
            out[f"{prefix}/{rel}:affine"] = img.affine
        _json_leaves(json.loads((folder / "report.json").read_text()), f"{prefix}/report", out)
        if (folder / "model.pt").exists():
            model = torch.load(folder / "model.pt", weights_only=True, map_location="cpu")
            _tensor_leaves(model, f"{prefix}/model", out)
    return out


# ------------------------------------------------------------------ dump / compare
def dump(out_dir: Path, data_dir: Path, only: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    import agents
    import svl_env

    out_dir.mkdir(parents=True, exist_ok=True)
    if "pipeline" in only and not data_dir.exists():
        build_data(data_dir)
    with tempfile.TemporaryDirectory(prefix="behaviour_dump_") as tmp:
        scratch = Path(tmp)
        # The CLI subprocesses must import the same tree as this process (not, e.g., an editable install).
        probe = subprocess.run([sys.executable, "-c", "import agents.cli, svl_env; print(agents.cli.__file__)"],
                               cwd=scratch, env=dict(os.environ), capture_output=True, text=True, check=True)
        manifest = {"svl_env": svl_env.__file__, "agents": agents.__file__, "cli_agents": probe.stdout.strip(),
                    "torch": torch.__version__, "numpy": np.__version__, "data_dir": str(data_dir), "groups": {},
                    "entries": {}}
        if Path(manifest["cli_agents"]).parents[1] != Path(agents.__file__).parent:
            raise RuntimeError(f"subprocesses import agents from {manifest['cli_agents']}, this process from "
                               f"{agents.__file__}: set PYTHONPATH to the tree to dump")
        makers = {"env": dump_env, "train": lambda: dump_train(scratch), "bench": lambda: dump_bench(scratch),
                  "pipeline": lambda: dump_pipeline(scratch, data_dir)}
        for group in only:
            t0 = time.perf_counter()
            entries = makers[group]()
            np.savez_compressed(out_dir / f"{group}.npz", **{_key(n): a for n, a in entries.items()})
            manifest["groups"][group] = {"entries": len(entries), "seconds": round(time.perf_counter() - t0, 1)}
            manifest["entries"].update({n: {"group": group, "shape": list(a.shape), "dtype": str(a.dtype)}
                                        for n, a in entries.items()})
            print(f"{group}: {len(entries)} entries in {manifest['groups'][group]['seconds']} s", flush=True)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"dump written to {out_dir} ({len(manifest['entries'])} entries; svl_env from {svl_env.__file__})")


def _key(name: str) -> str:
    """npz member names cannot hold '/' portably: entry names are stored with '|' instead."""
    return name.replace("/", "|")


def _load(folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    manifest = json.loads((folder / "manifest.json").read_text())
    arrays: dict[str, np.ndarray] = {}
    for group in manifest["groups"]:
        with np.load(folder / f"{group}.npz", allow_pickle=False) as z:
            arrays.update({k.replace("|", "/"): z[k] for k in z.files})
    return manifest, arrays


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    if a.dtype.kind not in "biufc" or b.dtype.kind not in "biufc":
        return f"{a.dtype} vs {b.dtype}, {int(np.sum(a != b))} of {a.size} differ"
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    d = d[~(np.isnan(a.astype(np.float64)) & np.isnan(b.astype(np.float64)))]
    note = "" if a.dtype == b.dtype else f" (dtype {a.dtype} vs {b.dtype})"
    return f"{np.nanmax(d) if d.size else 0.0:.3g}{note}"


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def compare(dir_a: Path, dir_b: Path) -> int:
    man_a, a = _load(dir_a)
    man_b, b = _load(dir_b)
    for tag, folder, man in (("A", dir_a, man_a), ("B", dir_b, man_b)):
        print(f"{tag}: {folder} (svl_env from {man['svl_env']}, CLI's agents.cli from {man.get('cli_agents')})")
    names = sorted(set(a) | set(b))
    bad = {}
    for n in names:
        if n not in a or n not in b:
            bad[n] = "missing in " + ("A" if n not in a else "B")
        elif not _identical(a[n], b[n]):
            bad[n] = _max_abs_diff(a[n], b[n])
    per_group: dict[str, list[int]] = {}
    for n in names:
        g = per_group.setdefault(n.split("/", 1)[0], [0, 0, 0])
        g[0] += 1
        g[1] += n not in bad
        g[2] += bad.get(n, "").startswith("missing")
    print(f"\n{'group':<10} {'compared':>9} {'identical':>9} {'missing':>8}")
    for g, (total, same, missing) in per_group.items():
        print(f"{g:<10} {total:>9} {same:>9} {missing:>8}")
    print(f"{'total':<10} {len(names):>9} {len(names) - len(bad):>9} "
          f"{sum(m for _, _, m in per_group.values()):>8}")
    if bad:
        print(f"\n{len(bad)} differing or missing entries (name: max abs difference):")
        for g, (total, _, missing) in per_group.items():
            if missing == total:  # a whole group absent from one dump: one line, not one per entry
                print(f"  {g}/*: all {total} entries {bad[next(n for n in names if n.startswith(g + '/'))]}")
        for n, why in bad.items():
            if per_group[n.split("/", 1)[0]][2] != per_group[n.split("/", 1)[0]][0]:
                print(f"  {n}: {why}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="write the entries computed by the imported tree")
    d.add_argument("--out", type=Path, required=True, help="dump folder (GROUP.npz + manifest.json)")
    d.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "behaviour_dump_data",
                   help="NIfTI folder of the pipeline group, built on first use and then reused (default: %(default)s)")
    d.add_argument("--only", nargs="+", choices=GROUPS, default=list(GROUPS), help="groups to dump (default: all)")
    c = sub.add_parser("compare", help="compare two dumps; exit 1 if any entry differs")
    c.add_argument("dir_a", type=Path)
    c.add_argument("dir_b", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "dump":
        dump(args.out, args.data_dir, args.only)
        return 0
    return compare(args.dir_a, args.dir_b)


if __name__ == "__main__":
    sys.exit(main())
