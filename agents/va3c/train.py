"""``svl-drl train --agent va3c``: a vA3C run folder with checkpoints, metrics and TensorBoard.

Run folder (``--out``)::

    checkpoint.pt   model + Adam state + reward conv + update counter (periodic and final;
                    agents.common.checkpoint format, kind "va3c", loads with weights_only)
    config.json     the network / training / env config and seed (what rebuilds the run)
    metrics.csv     one row per update (stage, losses, Dice of the rollouts, throughput)
    events.out.tfevents.*   TensorBoard scalars (``tensorboard --logdir RUN``)

``--resume RUN`` continues a run from its checkpoint (model, optimiser, reward conv, update
counter; the env seeds and action sampling of update u are functions of (seed, u), so nothing
else must be restored). In the synchronous mode a resumed run reproduces the uninterrupted
run of the same seed exactly (CPU, same thread count); a minutes budget is wall-clock and
therefore not reproducible -- use ``--updates`` for that.

Crash safety: ``checkpoint.pt`` and ``config.json`` are replaced atomically (a SIGKILL or
power loss leaves the previous complete file); ``metrics.csv`` is an append-only log flushed
per row -- a kill can tear only its last line, which ``--resume`` drops when it rebuilds the
file (atomically) from the rows before the checkpoint. Ctrl-C (SIGINT) finishes the current
update, writes a final checkpoint and exits (status 130); a second Ctrl-C stops at once
(the last periodic checkpoint stands). Input problems (bad options, unreadable data, a
configuration that cannot fit in memory) are found before anything is written, and a run that
fails before its first checkpoint removes the files it created.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm.auto import tqdm

from agents.common.checkpoint import ensure_dir, remove_stale_temporaries
from agents.common.interrupt import graceful_sigint
from agents.common.runlog import MetricsCSV, TensorBoardLog, write_json
from agents.common.budget import Budget
from agents.va3c.policy import VA3CPolicy
from agents.va3c.config import stage_bounds
from agents.va3c.run import VA3CRun
from svl_env import EnvConfig

METRIC_FIELDS = ("update", "stage", "progress", "lr", "seconds", "elapsed", "cpu_elapsed", "loss", "sup_dice", "sup_ce",
                 "sup",
                 "value_loss", "policy_loss", "mac", "entropy", "adv_abs", "value", "grad_norm", "episode_reward",
                 "dice_clean", "dice_annotation_clean", "dice", "voxel_updates_per_s", "worker")


class _Bar:
    def __init__(self, run: VA3CRun, enabled: bool):
        b = run.budget
        self.by_updates = b.minutes is None and b.cpu_minutes is None
        self.key = "elapsed" if b.minutes is not None else "cpu_elapsed"
        minutes = b.minutes if b.minutes is not None else b.cpu_minutes
        total = b.updates if self.by_updates else int(round(60 * minutes))
        initial = run.update if self.by_updates else min(int(run.elapsed if self.key == "elapsed" else run.cpu_elapsed),
                                                          total)
        self.bar = tqdm(total=total, initial=initial, disable=not enabled, desc="vA3C",
                        unit="upd" if self.by_updates else "s", dynamic_ncols=True)
        self.pos = initial

    def __call__(self, m: dict) -> None:
        new = int(m["update"]) + 1 if self.by_updates else min(int(m.get(self.key, 0)), self.bar.total)
        if new > self.pos:
            self.bar.update(new - self.pos)
            self.pos = new
        post = {"stage": m["stage"]}
        if "dice_clean" in m:
            post["dice"] = f"{m['dice_clean']:.3f}"
        self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        self.bar.close()


def run_training(env_kwargs: EnvConfig | dict, *, minutes: float | None = None, updates: int | None = None,
                 seed: int = 0, workers: int = 0, out=None, progress: bool = True, resume=None,
                 checkpoint_every: int = 50, tensorboard: bool = True, cpu_minutes: float | None = None,
                 precision: str | None = None, run_class: type[VA3CRun] = VA3CRun, init_from=None,
                 **config) -> tuple[VA3CPolicy, Path | None, VA3CRun]:
    """Train (or resume) a vA3C run. Returns (policy, run folder or None, the run object).
    ``run_class``: ``VA3CRun`` or a subclass (another agent on vA3C's machinery).

    Everything that can be checked is checked before the run folder is touched: options,
    the checkpoint to resume, the data (every case of a NIfTI folder is read once), and the
    memory the configuration needs. Ctrl-C ends the run after the current update with a
    final checkpoint, then raises ``KeyboardInterrupt``. ``precision`` (auto/fp32/bf16):
    None is ``auto`` for a new run and the run's own precision for a resumed one.
    ``init_from``: a checkpoint (file or run folder) of ``supervised``, vA3C or voxel-PPO whose
    network the new run starts from (``agents.common.init_from``); the Warmup stage is then off
    unless ``warmup=True`` is given, so the value and policy stages share the whole budget.
    """
    from agents.cli.envargs import validate_env

    resume_dir = None
    if resume is not None and init_from is not None:
        raise ValueError("give resume or init_from, not both (a resumed run keeps its own weights)")
    if resume is not None:
        from agents.common.checkpoint import resolve_checkpoint

        ck_path = resolve_checkpoint(resume)
        resume_dir = ck_path.parent
        run = run_class.resume(ck_path, updates=updates, minutes=minutes, cpu_minutes=cpu_minutes,
                               workers=workers if workers else None, precision=precision)
        if out is None:
            out = resume_dir
    else:
        if precision is not None:
            config["precision"] = precision
        run = run_class(env_kwargs, budget=Budget(updates, minutes, cpu_minutes), seed=seed, workers=workers,
                        config=config, init_from=init_from)
    validate_env(run.env)  # bad data is named now, not by a worker at update 37
    out_dir = Path(out) if out is not None else None
    hooks, closers = [], []
    created: list[Path] = []  # folders this call creates: removed again if it fails before a checkpoint
    ckpt = None
    if out_dir is not None:
        created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]  # deepest first
        ensure_dir(out_dir, "--out")
        before = set(out_dir.iterdir())
        if resume_dir is not None:
            for name in ("checkpoint.pt", "config.json", "metrics.csv"):
                remove_stale_temporaries(out_dir, name)  # left by a kill during a write
        ckpt = out_dir / "checkpoint.pt"
    try:
        if out_dir is not None:
            cfg = {**run.checkpoint_config(), "agent": run.kind, "precision": run.cfg["precision"],
                   "init_from": run.init_from, "stages": stage_bounds(run.cfg)}
            write_json(out_dir / "config.json", cfg)
            mcsv = MetricsCSV(out_dir / "metrics.csv", METRIC_FIELDS,
                              keep_below=run.update if resume is not None else None,
                              source=resume_dir / "metrics.csv" if resume_dir is not None else None)
            hooks.append(mcsv)
            closers.append(mcsv)
            if tensorboard:
                tb = TensorBoardLog(out_dir, prefix="train", skip=("stage", "worker"),
                                    purge_step=run.update if resume is not None else None)
                hooks.append(tb)
                closers.append(tb)
        bar = _Bar(run, progress)
        hooks.insert(0, bar)
        closers.append(bar)

        with graceful_sigint(lambda: setattr(run, "stop_requested", True), lambda: run.stop_requested):
            run.run(hooks=hooks, checkpoint_every=int(checkpoint_every or 0), checkpoint_path=ckpt)
            for c in closers:
                c.close()
            closers.clear()
            if ckpt is not None:
                run.save(ckpt)
        if run.stop_requested:
            if ckpt is not None:
                print(f"svl-drl: checkpoint saved at update {run.update}; continue with --resume {out_dir}",
                      file=sys.stderr, flush=True)
            raise KeyboardInterrupt
    except BaseException as exc:
        for c in closers:
            try:
                c.close()
            except Exception:
                pass
        fresh_and_empty = resume_dir is None and not run.checkpoints_written
        if out_dir is not None and fresh_and_empty and not isinstance(exc, KeyboardInterrupt):
            _remove_created(out_dir, before, created)
        raise
    return run.policy(), out_dir, run


def _remove_created(out_dir: Path, before: set, created: list[Path]) -> None:
    """A fresh run that failed before its first checkpoint: leave no partial output behind."""
    for p in set(out_dir.iterdir()) - before:
        try:
            p.unlink()
        except OSError:
            pass
    for d in created:  # deepest first
        try:
            d.rmdir()  # only if empty
        except OSError:
            pass


def train_from_args(args, run_class: type[VA3CRun] = VA3CRun) -> Path:
    """``svl-drl train --agent va3c`` (options: agents/cli/train.py); ``run_class`` as in ``run_training``."""
    from agents.cli.envargs import env_config

    if args.resume is not None and not Path(args.resume).exists():
        raise FileNotFoundError(f"run to resume not found: {args.resume}")
    if args.checkpoint_every is not None and args.checkpoint_every < 0:
        raise ValueError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    # resuming writes into the resumed run's folder (--out is not used)
    out = None if args.resume else Path(args.out)
    _, run_dir, run = run_training(
        env_config(args), minutes=args.minutes, updates=args.updates, seed=args.seed, workers=args.workers,
        out=out, progress=not args.no_progress, resume=args.resume, checkpoint_every=args.checkpoint_every,
        num_envs=args.num_envs, precision=args.precision, run_class=run_class,
        init_from=getattr(args, "init_from", None))
    return run_dir


def train_va3c(env_kwargs: EnvConfig | dict, *, minutes: float | None = None, updates: int | None = None, seed: int = 0,
               workers: int = 0, out: str | Path | None = None, progress: bool = True, **config) -> VA3CPolicy:
    """Train vA3C on ``SVLDRLVectorEnv(**env_kwargs)`` (or an ``EnvConfig``) and return the trained policy.

    Budget: ``updates`` (one update = ``num_envs`` fresh episodes) and/or ``minutes`` (wall
    clock; whichever ends first); neither -> 200 updates. ``workers`` > 0: asynchronous mode.
    ``out``: run folder (``checkpoint.pt``, ``config.json``, ``metrics.csv``, TensorBoard
    events); ``None`` writes nothing. Extra keywords: ``DEFAULT_CONFIG`` options (``precision``:
    auto, fp32 or bf16, see ``agents.common.precision``), plus run
    options ``resume`` (a run folder / checkpoint to continue; its config wins),
    ``checkpoint_every`` (updates, default 50), ``tensorboard`` (default True) and ``init_from``
    (warm start: a ``supervised`` / vA3C checkpoint or run folder of the same network shape;
    the Warmup stage is skipped, config.json records ``init_from`` and the ``stages`` used).
    """
    return run_training(env_kwargs, minutes=minutes, updates=updates, seed=seed, workers=workers, out=out,
                        progress=progress, **config)[0]
