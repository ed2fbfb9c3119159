"""Run policies on identical seeded episodes and summarise per-case metrics.

Episode i of an evaluation with seed s is the environment reset with seed s + i, whatever
the policy and the batch size: every policy sees the same volumes and the same noise.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Iterable

import numpy as np
from gymnasium.vector import AutoresetMode
from tqdm.auto import tqdm

from svl_env import EnvConfig, SVLDRLVectorEnv
from svl_env import metrics as M

PER_CASE_FIELDS = ("policy", "episode", "case", "corrupted", "dice", "iou", "hd95", "asd", "continuity",
                   "n_components", "dice_annotation", "iou_annotation", "hd95_annotation", "asd_annotation",
                   "continuity_annotation", "dice_gain", "seconds")


class MemoSource:
    """A volume source that remembers what it sampled, keyed by (episode keys, patch shape).

    Every policy of a benchmark resets the same seeded episodes, and generating a phantom
    costs more than the whole episode of a heuristic: the first policy pays, the others
    reuse. Holds at most ``max_bytes`` of tensors (then samples without remembering).
    Returns clones, so an env can never alter the remembered patches.
    """

    def __init__(self, inner, max_bytes: int = 512 * 2 ** 20):
        self.inner = inner
        self.has_truth = inner.has_truth
        self.has_annotation = inner.has_annotation
        self.min_patch_size = getattr(inner, "min_patch_size", 2)
        self.max_bytes = int(max_bytes)
        self._cache: dict = {}
        self._bytes = 0

    def __repr__(self) -> str:
        return f"MemoSource({self.inner!r}, {len(self._cache)} batches)"

    def sample(self, keys, patch_shape):
        key = (tuple(keys.tolist()), tuple(patch_shape), str(keys.device))
        batch = self._cache.get(key)
        if batch is None:
            batch = self.inner.sample(keys, patch_shape)
            size = sum(t.numel() * t.element_size() for t in (batch.image, batch.truth, batch.annotation)
                       if t is not None)
            if self._bytes + size > self.max_bytes:
                return batch
            self._cache[key] = batch
            self._bytes += size
        return dataclasses.replace(batch, **{f: getattr(batch, f).clone() for f in ("image", "truth", "annotation",
                                                                                    "spacing")
                                             if getattr(batch, f) is not None}, names=list(batch.names))


def memo_env_config(env: EnvConfig | dict) -> EnvConfig:
    """``env`` with a data source that remembers its samples (``MemoSource``): pass the result
    to every ``run_episodes`` call that should share volumes. Data options (phantom families,
    folder labels, ...) are resolved into the source here."""
    cfg = EnvConfig.from_any(env)
    probe = SVLDRLVectorEnv(1, config=cfg)  # builds the source exactly as the env would (and validates)
    source = probe.source
    probe.close()
    return cfg.replace(data=source if isinstance(source, MemoSource) else MemoSource(source), data_options={})


def run_episodes(policy, env_kwargs: EnvConfig | dict, episodes: int, seed: int, *, batch_size: int = 8,
                 progress: bool = True, desc: str | None = None, masks_sink: dict | None = None,
                 mask_episodes=()) -> tuple[list[dict], np.ndarray]:
    """Roll ``policy`` over ``episodes`` seeded episodes.

    Returns (per-case records, dice_curve (episodes, max_steps + 1): Dice vs truth after each
    step, column 0 = the annotation). Needs the truth (phantoms or a clean-label folder).

    ``masks_sink``: if a dict, the final volumes of the episodes in ``mask_episodes`` are stored
    in it as ``{episode: {"image", "annotation", "truth", "mask"}}`` ((D, H, W) numpy arrays)
    -- what slice overlays are drawn from.
    """
    if not isinstance(episodes, (int, np.integer)) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    wanted = set(int(e) for e in mask_episodes) if masks_sink is not None else set()
    name = getattr(policy, "name", type(policy).__name__)
    n_env = max(1, min(batch_size, episodes))
    env = SVLDRLVectorEnv(n_env, config=EnvConfig.from_any(env_kwargs).replace(
        autoreset_mode=AutoresetMode.DISABLED))
    if env.source.has_truth is False:
        raise ValueError("evaluation against the truth needs data with clean labels (phantom or --labels clean)")
    records, curves = [], []
    bar = tqdm(total=episodes, desc=desc or f"eval {name}", disable=not progress, leave=False)
    for start in range(0, episodes, n_env):
        count = min(n_env, episodes - start)
        seeds = [seed + start + j for j in range(n_env)]
        obs, info = env.reset(seed=seeds)
        if hasattr(policy, "reset"):
            policy.reset(n_env)
        t0 = time.perf_counter()
        curve = [info["dice_clean"].copy()]
        for _ in range(env.max_steps):
            if getattr(policy, "uses_truth", False):
                info = {**info, "truth": env.state_tensors()["truth"].cpu().numpy()}
            actions = policy.act(obs, info, deterministic=True)
            obs, _, _, _, info = env.step(actions)
            curve.append(info["dice_clean"].copy())
        seconds = (time.perf_counter() - t0) / n_env
        s = env.state_tensors()
        records += _case_records(name, start, count, env, s, info, seconds)
        for j in range(count):
            if start + j in wanted:
                masks_sink[start + j] = {k: s[k][j].detach().cpu().numpy().copy()
                                         for k in ("image", "annotation", "truth", "mask")}
        curves.append(np.stack(curve, 1)[:count])
        bar.update(count)
    bar.close()
    env.close()
    return records, np.concatenate(curves, 0)


def _case_records(name, start, count, env, s, info, seconds) -> list[dict]:
    mask, ann, truth, spacing = s["mask"][:count], s["annotation"][:count], s["truth"][:count], s["spacing"][:count]
    w = env.weights
    cont = lambda m: M.continuity(m, w.w_cc, w.w_tv).cpu().numpy()  # noqa: E731
    sp = spacing.cpu().numpy()
    cols = {
        "dice": M.dice(mask, truth).cpu().numpy(), "iou": M.iou(mask, truth).cpu().numpy(),
        "hd95": M.hd95(mask, truth, sp), "asd": M.asd(mask, truth, sp), "continuity": cont(mask),
        "n_components": M.n_components(mask).cpu().numpy(),
        "dice_annotation": M.dice(ann, truth).cpu().numpy(), "iou_annotation": M.iou(ann, truth).cpu().numpy(),
        "hd95_annotation": M.hd95(ann, truth, sp), "asd_annotation": M.asd(ann, truth, sp),
        "continuity_annotation": cont(ann),
    }
    names = env.case_names
    out = []
    for j in range(count):
        rec = {"policy": name, "episode": start + j, "case": names[j], "corrupted": bool(info["corrupted"][j])}
        rec.update({k: float(v[j]) for k, v in cols.items()})
        rec["n_components"] = int(rec["n_components"])
        rec["dice_gain"] = rec["dice"] - rec["dice_annotation"]
        rec["seconds"] = seconds
        out.append(rec)
    return out


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its ``confidence`` interval (Student t; NaNs dropped)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(half)


def summarise(records: list[dict], fields=("dice", "iou", "hd95", "asd", "continuity", "dice_gain",
                                           "dice_annotation", "seconds")) -> dict[str, dict]:
    """{policy: {field: {"mean", "ci95", "n"}}} from per-case records."""
    out: dict[str, dict] = {}
    for pol in dict.fromkeys(r["policy"] for r in records):
        rows = [r for r in records if r["policy"] == pol]
        out[pol] = {}
        for f in fields:
            m, h = mean_ci(r[f] for r in rows)
            out[pol][f] = {"mean": m, "ci95": h, "n": len(rows)}
    return out


#: the optional column after "policy": which training run of the policy a row comes from
#: (0..N-1 for a learned agent trained over N seeds; 0 for everything else)
RUN_FIELD = "run"


def write_per_case_csv(records: list[dict], path) -> Path:
    """``PER_CASE_FIELDS`` per record, plus a ``run`` column when the records carry one."""
    from agents.common.checkpoint import atomic_write

    fields = PER_CASE_FIELDS
    if any(RUN_FIELD in r for r in records):
        fields = (PER_CASE_FIELDS[0], RUN_FIELD, *PER_CASE_FIELDS[1:])

    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            wr = csv.DictWriter(fh, fieldnames=fields)
            wr.writeheader()
            wr.writerows(records)

    return atomic_write(Path(path), write)


def read_per_case_csv(path) -> list[dict]:
    """Records written by ``write_per_case_csv`` (types restored; NaN stays NaN; ``run`` an int
    where the file has that column)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [f for f in PER_CASE_FIELDS if f not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: not a per-case file (missing columns {missing})")
        rows = list(reader)
    for r in rows:
        if RUN_FIELD in r:
            r[RUN_FIELD] = int(r[RUN_FIELD])
        for k in PER_CASE_FIELDS:
            if k in ("policy", "case"):
                continue
            if k == "corrupted":
                r[k] = r[k] == "True"
            elif k in ("episode", "n_components"):
                r[k] = int(r[k])
            else:
                r[k] = float(r[k])
    return rows


CURVE_FIELDS = ("policy", "run", "episode", "step", "dice")


def write_curves_csv(curves: dict[str, np.ndarray], path) -> Path:
    """Dice-vs-step curves ``{policy: (episodes, steps + 1)}`` -- or ``(runs, episodes, steps + 1)``
    for a policy trained over several seeds -- as long-format CSV (policy, run, episode, step,
    dice); step 0 is the annotation, run 0 for a 2-D curve."""
    from agents.common.checkpoint import atomic_write

    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            wr = csv.writer(fh)
            wr.writerow(CURVE_FIELDS)
            for pol, c in curves.items():
                c = np.asarray(c)
                c = c[None] if c.ndim == 2 else c
                run, ep, st = np.meshgrid(*(np.arange(n) for n in c.shape), indexing="ij")
                wr.writerows(zip([pol] * c.size, run.ravel().tolist(), ep.ravel().tolist(), st.ravel().tolist(),
                                 c.ravel().tolist()))

    return atomic_write(Path(path), write)


def read_curves_csv(path) -> dict[str, np.ndarray]:
    """Inverse of ``write_curves_csv``: {policy: (runs * episodes, steps + 1) float array}, the
    runs one after another (episodes of run 0, then of run 1, ...); files without a ``run``
    column are one run."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, np.ndarray] = {}
    for pol in dict.fromkeys(r["policy"] for r in rows):
        sel = [r for r in rows if r["policy"] == pol]
        n_run = max(int(r.get("run") or 0) for r in sel) + 1
        n_ep = max(int(r["episode"]) for r in sel) + 1
        n_st = max(int(r["step"]) for r in sel) + 1
        arr = np.full((n_run, n_ep, n_st), np.nan)
        for r in sel:
            arr[int(r.get("run") or 0), int(r["episode"]), int(r["step"])] = float(r["dice"])
        out[pol] = arr.reshape(n_run * n_ep, n_st)
    return out


def write_json(obj, path) -> Path:
    from agents.common.checkpoint import atomic_write

    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=float)))


