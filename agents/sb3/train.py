"""PPO and A2C from stable-baselines3 on SVLDRL-v0, with a fully-convolutional voxel policy.

    from agents.sb3.train import train_sb3, load_sb3
    policy = train_sb3("ppo", {"patch_size": 32, "noise": "mt"}, minutes=2.5, out="runs/ppo")
    actions = policy.act(obs)                     # (B, D, H, W) int64, the Policy protocol
    policy = load_sb3("runs/ppo/model.zip")       # PPO or A2C, detected from the file

Pieces: ``agents.sb3.vec_env.SB3VecEnv`` (native vector env -> SB3 ``VecEnv``, flat int8
``MultiDiscrete`` actions), ``agents.sb3.policy.VoxelActorCriticPolicy`` (shared 3D backbone,
per-voxel logits, pooled value, batched per-voxel categorical). See those modules for the
design choices (per-voxel mean log-prob and entropy, "keep"-biased initial policy).

Run folder (``out``), the same layout as ``svl-drl train --agent va3c``::

    config.json        algo, env_kwargs, hyper-parameters, seed
    model.zip          the model (SB3's own zip format): rewritten atomically every
                       ``checkpoint_every`` updates and at the end -- what ``--resume`` continues
    metrics.csv        one row per update: SB3's train/* and rollout/* plus episode Dice
    events.out.tfevents.*   TensorBoard scalars (``tensorboard --logdir RUN``)

SECURITY: SB3 zips contain pickled Python objects (cloudpickle); loading one can run
arbitrary code. Load only zips from a trusted source (your own runs). The project's own
checkpoints (``agents.common.checkpoint``) are tensor-only for that reason; SB3 offers no such format.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import KVWriter, Logger, TensorBoardOutputFormat
from tqdm.auto import tqdm

from agents.common.budget import CLOCKS
from agents.common.policy import Policy, as_tensor
from agents.common.checkpoint import atomic_write, ensure_dir, run_folder
from agents.common.runlog import write_json
from agents.common.interrupt import graceful_sigint
from agents.common.init_from import record as _init_record
from agents.common.precision import resolve_precision
from agents.sb3 import warm_start as warm
from agents.sb3.vec_env import SB3VecEnv
from agents.sb3.policy import VoxelActorCriticPolicy
from svl_env import EnvConfig

ALGOS = {"ppo": PPO, "a2c": A2C}
POLICY_KEYS = ("backbone", "width", "depth", "keep_bias", "reduction")
#: Defaults tuned for 5-step episodes of 32^3 patches on a CPU: rollouts of one episode per
#: env (n_steps = max_steps = 5); small minibatches (a 3D U-Net's activations at 32^3 cost
#: ~40 MB per sample in backward: peak RSS 1.3 GB at 20, 2.1 GB at 40, see
#: benchmarks/sb3_memory.py); 2 PPO epochs (each epoch is a full forward-backward of the
#: rollout: with 3 epochs of 10 steps one update took > 2 minutes on 2 cores); PixelRL's
#: gamma = 0.95 and per-voxel entropy beta = 0.01. A search at the quick benchmark's budget
#: (benchmarks/sb3_search.py, README "Tuning SB3 PPO") found no setting that beats the annotation
#: (learning rate, entropy, n_steps, minibatch, epochs, envs, keep bias, reward scaling): unchanged.
DEFAULTS = {
    "ppo": dict(learning_rate=3e-4, n_steps=5, batch_size=20, n_epochs=2, gamma=0.95, gae_lambda=0.95,
                ent_coef=0.01, vf_coef=0.5, clip_range=0.2, max_grad_norm=0.5),
    "a2c": dict(learning_rate=7e-4, n_steps=5, gamma=0.95, gae_lambda=1.0, ent_coef=0.01, vf_coef=0.5,
                max_grad_norm=0.5),
}
POLICY_DEFAULTS = dict(backbone="unet", width=16, depth=2, keep_bias=4.0, reduction="mean")
DEFAULT_UPDATES = 200
TRUST_NOTE = "SB3 zips contain pickles: load only files from a trusted source"


# --------------------------------------------------------------------------- policy
class SB3Policy(Policy):
    """A trained SB3 PPO/A2C model under the project's ``Policy`` protocol.

    ``act(obs (B, C, D, H, W), info, deterministic)`` -> (B, D, H, W) int64. Works on any
    patch size (the network is fully convolutional). ``save(path)`` writes SB3's zip.
    """

    def __init__(self, model, name: str | None = None):
        self.model = model
        self.algo = type(model).__name__.lower()
        self.name = name or self.algo

    def act(self, obs, info: dict | None = None, deterministic: bool = True) -> np.ndarray:
        x = as_tensor(obs, self.model.policy.device)
        return self.model.policy.voxel_actions(x, deterministic=deterministic).cpu().numpy()

    def save(self, path) -> Path:
        return save_model(self.model, path)

    @classmethod
    def load(cls, path, device="cpu", name: str | None = None) -> "SB3Policy":
        """Load a PPO/A2C zip. SB3 zips contain pickles: load only files from a trusted source."""
        return load_sb3(path, device=device, name=name)


def save_model(model, path) -> Path:
    """SB3 ``model.save`` to ``path`` (``.zip`` added if missing), atomically."""
    path = Path(path)
    if path.suffix != ".zip":
        path = path.with_suffix(".zip")

    def write(tmp: Path) -> None:
        # SB3 appends ".zip" to names without it, so let it write tmp.zip, then move that onto tmp.
        model.save(str(tmp) + ".zip")
        os.replace(str(tmp) + ".zip", tmp)

    return atomic_write(path, write)


def detect_algo(path) -> str:
    """"ppo" or "a2c" from an SB3 zip's JSON ``data`` entry (PPO stores clip_range / n_epochs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SB3 model not found: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            data = json.loads(zf.read("data"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a stable-baselines3 model zip ({exc})") from None
    return "ppo" if "clip_range" in data or "n_epochs" in data else "a2c"


def load_sb3(path, device="cpu", algo: str | None = None, name: str | None = None) -> SB3Policy:
    """Load a PPO/A2C zip written by ``train_sb3`` as an ``SB3Policy``.

    SECURITY: SB3 zips contain pickles (cloudpickle) -- loading runs code from the file.
    Load only zips from a trusted source.
    """
    algo = algo or detect_algo(path)
    if algo not in ALGOS:
        raise ValueError(f"unknown SB3 algorithm {algo!r}; valid: {sorted(ALGOS)}")
    try:
        model = ALGOS[algo].load(str(path), device=device,
                                 custom_objects={"policy_class": VoxelActorCriticPolicy})
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a damaged zip fails in many ways inside SB3 / torch / cloudpickle
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise ValueError(f"{path}: not a loadable {algo} model ({type(exc).__name__}: {msg})") from None
    return SB3Policy(model, name=name)


# ------------------------------------------------------------------------ logging
class MetricsCSV(KVWriter):
    """SB3 logger output: ``metrics.csv``, one row per dump, columns grow as keys appear.

    Unlike SB3's CSVOutputFormat it keeps the rows of a resumed run (appends) and writes the
    file atomically (a crash never leaves half a row).
    """

    def __init__(self, path: Path, append: bool = False):
        self.path = Path(path)
        self.rows: list[dict] = []
        if append and self.path.is_file():
            with open(self.path, newline="") as fh:
                self.rows = list(csv.DictReader(fh))
        self.fields: list[str] = list(self.rows[0].keys()) if self.rows else []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        row = {}
        for k, v in key_values.items():
            if "csv" in (key_excluded.get(k) or ()) or not isinstance(v, (int, float, np.integer, np.floating, str)):
                continue
            row[k] = v
        for k in row:
            if k not in self.fields:
                self.fields.append(k)
        self.rows.append(row)

        def dump(tmp):
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=self.fields, restval="")
                w.writeheader()
                w.writerows(self.rows)

        atomic_write(self.path, dump)

    def close(self) -> None:
        pass


class TrainingCallback(BaseCallback):
    """Time budget, progress bar, episode metrics and periodic checkpoints.

    - ``minutes``: stop when the next update would overrun the budget (estimated from the last
      update's duration), or at the latest when the budget is spent. ``clock`` measures it:
      ``"wall"`` (elapsed seconds) or ``"cpu"`` (this process's CPU seconds, a budget that
      other programs sharing the cores cannot shrink).
    - logs the finished episodes' final Dice vs truth (``rollout/dice_clean``), gain over the
      annotation (``rollout/dice_gain``) and Dice vs the reward target (``rollout/dice``).
    - every ``checkpoint_every`` updates: ``model.zip`` in the run folder (atomic rewrite).
    """

    def __init__(self, *, minutes: float | None, total_timesteps: int | None, progress: bool,
                 run_dir: Path | None, checkpoint_every: int | None, algo: str, clock: str = "wall"):
        super().__init__()
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
        self.clock = CLOCKS[clock]
        self.budget = None if minutes is None else 60.0 * float(minutes)
        self.total = total_timesteps
        self.progress = progress
        self.run_dir = run_dir
        self.every = checkpoint_every
        self.algo = algo
        self.updates = 0
        self._t0 = self._t_iter = self._wall0 = 0.0
        self._last_iter = 0.0
        self._stop = False
        self.interrupted = False  # set by Ctrl-C (agents.common.interrupt): stop at the next step
        self.bar = None

    def _on_training_start(self) -> None:
        self._t0 = self._t_iter = self.clock()
        self._wall0 = time.perf_counter()
        if self.budget is not None:
            self.bar = tqdm(total=round(self.budget), unit="s", desc=f"train {self.algo}", disable=not self.progress)
        else:
            self.bar = tqdm(total=self.total, unit="step", desc=f"train {self.algo}", disable=not self.progress)

    def _on_rollout_start(self) -> None:
        now = self.clock()
        if self.updates or self.num_timesteps:
            self._last_iter = now - self._t_iter
        self._t_iter = now
        if self.updates and self.every and self.run_dir is not None and self.updates % self.every == 0:
            save_model(self.model, self.run_dir / "model.zip")
        if self.budget is not None and (now - self._t0) + self._last_iter > self.budget and self.updates:
            self._stop = True  # the next update would overrun the budget: stop before spending it

    def _on_rollout_end(self) -> None:
        self.updates += 1
        # wall-clock minutes whatever the budget's clock (a CPU budget is logged by its bar)
        self.logger.record("time/minutes", (time.perf_counter() - self._wall0) / 60.0)

    def _on_step(self) -> bool:
        dones, infos = self.locals.get("dones"), self.locals.get("infos")
        if dones is not None and np.any(dones):
            for i in np.flatnonzero(dones):
                inf = infos[i]
                for key in ("dice", "dice_clean", "continuity"):
                    if key in inf:
                        self.logger.record_mean(f"rollout/{key}", float(inf[key]))
                if "dice_clean" in inf and "dice_annotation_clean" in inf:
                    gain = float(inf["dice_clean"] - inf["dice_annotation_clean"])
                    self.logger.record_mean("rollout/dice_gain", gain)
        elapsed = self.clock() - self._t0
        if self.bar is not None:
            if self.budget is not None:
                self.bar.n = min(round(elapsed), self.bar.total)
                self.bar.refresh()
            else:
                self.bar.update(self.training_env.num_envs)
        if self._stop or self.interrupted or (self.budget is not None and elapsed >= self.budget):
            return False
        return True

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------ training
def split_config(algo: str, config: dict) -> tuple[dict, dict]:
    """(algorithm kwargs, policy kwargs) from one flat config with the defaults filled in."""
    if algo not in ALGOS:
        raise ValueError(f"unknown SB3 algorithm {algo!r}; valid: {sorted(ALGOS)}")
    algo_kw, pol_kw = dict(DEFAULTS[algo]), dict(POLICY_DEFAULTS)
    valid = set(inspect.signature(ALGOS[algo].__init__).parameters) - {"self", "policy", "env", "policy_kwargs",
                                                                         "_init_setup_model"}
    for k, v in config.items():
        if k in POLICY_KEYS:
            pol_kw[k] = v
        elif k in valid:
            algo_kw[k] = v
        else:
            raise ValueError(f"unknown {algo} option {k!r}; valid: {sorted(set(POLICY_KEYS) | valid)}")
    return algo_kw, pol_kw


def train_sb3(algo: str, env_kwargs: EnvConfig | dict, *, minutes: float | None = None,
              timesteps: int | None = None, cpu_minutes: float | None = None, seed: int = 0, out=None,
              progress: bool = True, num_envs: int = 8, resume=None, checkpoint_every: int | None = 50,
              obs_dtype=np.float32, precision: str | None = None, init_from=None, reward_scale: float | None = None,
              normalize_reward: bool | None = None, callbacks=(), **config) -> SB3Policy:
    """Train PPO or A2C with the voxel policy; returns the trained ``SB3Policy``.

    Args:
        algo: "ppo" or "a2c".
        env_kwargs: ``SVLDRLVectorEnv`` keyword arguments (data, patch_size, noise, ...) or an ``EnvConfig``.
        minutes / timesteps: budget (wall clock, env steps = n_envs x steps); both None ->
            ``DEFAULT_UPDATES`` updates. With both, whichever ends first.
        cpu_minutes: instead of ``minutes``, a budget of this process's CPU time ("5 minutes
            on 2 cores" is ``cpu_minutes=10``); unaffected by other programs on the machine.
        seed: seeds the network, SB3's sampling and the environments (env i: seed + i).
        out: run folder (config.json, model.zip, metrics.csv, TensorBoard events) or None.
        num_envs: environments stepped together.
        resume: a run folder or model zip to continue (``out`` defaults to its folder).
        checkpoint_every: updates between rewrites of ``out/model.zip``.
        obs_dtype: float32 or float16 observations in the rollout buffer.
        precision: auto (None), fp32 or bf16 for the policy's rollout and training passes
            (``agents.common.precision``; weights, optimiser and losses stay float32).
        init_from: warm start from a ``supervised`` / vA3C / voxel-PPO checkpoint or run folder:
            the policy takes its backbone config, backbone and policy head (``agents.sb3.warm_start``).
        reward_scale: multiply the rewards SB3 sees by this constant (``svl_env.wrappers.VectorScaleReward``;
            default 1). PPO normalises advantages per minibatch, so this moves only the value loss
            against the policy loss; A2C's policy gradient scales with it.
        normalize_reward: divide the rewards by the running std of the discounted return
            (``svl_env.wrappers.VectorNormalizeReward``, gamma = the algorithm's; default False).
            A resumed run takes both from its config.json unless given.
        callbacks: extra SB3 callbacks, run after the trainer's own (budget, logging, checkpoints).
        **config: SB3 hyper-parameters (learning_rate, n_steps, batch_size, n_epochs, gamma,
            gae_lambda, ent_coef, vf_coef, clip_range, max_grad_norm, ...) and policy options
            (backbone, width, depth, keep_bias, reduction); defaults in ``DEFAULTS``.
    """
    algo = algo.lower()
    algo_kw, pol_kw = split_config(algo, config)
    init = None
    if init_from is not None:
        if resume is not None:
            raise ValueError("give resume or init_from, not both (a resumed run keeps its own weights)")
        init = warm.read_init(init_from)
        env_cfg = EnvConfig.from_any(env_kwargs)
        pol_kw = warm.warm_policy_kwargs(init, pol_kw, set(config), env_cfg.num_channels, env_cfg.num_actions)
    if minutes is not None and cpu_minutes is not None:
        raise ValueError("give minutes (wall clock) or cpu_minutes, not both")
    for name, value in (("minutes", minutes), ("cpu_minutes", cpu_minutes)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    clock = "cpu" if cpu_minutes is not None else "wall"
    minutes = cpu_minutes if cpu_minutes is not None else minutes
    if timesteps is not None and int(timesteps) < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    env = EnvConfig.from_any(env_kwargs)
    device = str(env.device)
    # auto stays fp32 here: on the quick preset (7 CPU-min, 32 episodes) bf16 took PPO from 0.55 Dice
    # (fp32, the identity's level) to 0.03 and A2C to 0.08; --precision bf16 still asks for it
    precision = resolve_precision(precision, device, auto_bf16=False)
    resume_zip = _resume_zip(resume) if resume is not None else None
    if resume_zip is not None:
        detect_algo(resume_zip)  # a damaged zip is named before anything is written
    from agents.cli.envargs import validate_env

    validate_env(env)  # options and every case of a data folder, before the run folder is touched
    if out is None and resume_zip is not None:
        out = resume_zip.parent
    run_dir = Path(out) if out is not None else None

    if resume_zip is not None:  # a resumed run keeps the reward it was trained on unless told otherwise
        before = _read_config(resume_zip.parent)
        reward_scale = before.get("reward_scale") if reward_scale is None else reward_scale
        normalize_reward = before.get("normalize_reward") if normalize_reward is None else normalize_reward
    reward_scale = 1.0 if reward_scale is None else float(reward_scale)
    normalize_reward = bool(normalize_reward)
    if not reward_scale > 0:
        raise ValueError(f"reward_scale must be > 0, got {reward_scale}")
    venv = SB3VecEnv(env=_reward_wrapped(env, num_envs, reward_scale, normalize_reward, float(algo_kw["gamma"])),
                     obs_dtype=obs_dtype)
    n_steps = int(algo_kw["n_steps"])
    if timesteps is None and minutes is None:
        timesteps = DEFAULT_UPDATES * n_steps * venv.num_envs
    total = int(timesteps) if timesteps is not None else 10 ** 12  # wall-clock budget decides
    if algo == "ppo":
        # SB3 warns and leaves a truncated minibatch unless the batch divides the rollout size:
        # take the largest divisor of n_steps * n_envs not above the requested batch size.
        size = n_steps * venv.num_envs
        want = min(int(algo_kw.get("batch_size", 64)), size)
        algo_kw["batch_size"] = max(d for d in range(1, want + 1) if size % d == 0)

    if resume_zip is not None:
        if detect_algo(resume_zip) != algo:
            raise ValueError(f"{resume_zip} is a {detect_algo(resume_zip)} model, not {algo}")
        model = ALGOS[algo].load(str(resume_zip), env=venv, device=device,
                                 custom_objects={"policy_class": VoxelActorCriticPolicy})
    else:
        model = ALGOS[algo](VoxelActorCriticPolicy, venv, policy_kwargs=dict(pol_kw), seed=seed, device=device,
                            verbose=0, **algo_kw)
        if init is not None:
            warm.load_into_policy(model.policy, init)
    model.policy.precision = precision
    if run_dir is not None:
        ensure_dir(run_dir, "--out")
        cfg = {"agent": algo, "precision": precision, "env_kwargs": env.to_json(strict=False), "seed": seed,
               "num_envs": venv.num_envs, "algo_kwargs": _jsonable(algo_kw), "policy_kwargs": _jsonable(pol_kw),
               "minutes": minutes, "clock": clock, "timesteps": timesteps,
               "reward_scale": reward_scale, "normalize_reward": normalize_reward,
               "obs_dtype": np.dtype(obs_dtype).name, "resumed_from": str(resume_zip) if resume_zip else None,
               "init_from": _init_record(init),
               "note": TRUST_NOTE}
        write_json(run_dir / "config.json", cfg)
        model.set_logger(Logger(str(run_dir), [MetricsCSV(run_dir / "metrics.csv", append=resume_zip is not None),
                                               TensorBoardOutputFormat(str(run_dir))]))
    else:
        model.set_logger(Logger(None, []))

    cb = TrainingCallback(minutes=minutes, total_timesteps=None if timesteps is None else total, progress=progress,
                          run_dir=run_dir, checkpoint_every=checkpoint_every, algo=algo, clock=clock)
    try:
        # Ctrl-C: the callback ends learn() at the next env step, the final model.zip is written below
        with graceful_sigint(lambda: setattr(cb, "interrupted", True), lambda: cb.interrupted):
            model.learn(total_timesteps=total, callback=CallbackList([cb, *callbacks]), log_interval=1,
                        reset_num_timesteps=resume_zip is None)
    finally:
        model.logger.close()
        venv.close()
    if run_dir is not None:
        save_model(model, run_dir / "model.zip")
    if cb.interrupted:
        raise KeyboardInterrupt
    return SB3Policy(model)


def _reward_wrapped(env: EnvConfig, num_envs: int, scale: float, normalize: bool, gamma: float):
    """The native vector env (SAME_STEP autoreset, numpy outputs) with the reward wrappers asked for."""
    from gymnasium.vector import AutoresetMode

    from svl_env import SVLDRLVectorEnv
    from svl_env.wrappers import VectorNormalizeReward, VectorScaleReward

    if env.return_tensors:
        raise ValueError("SB3 needs numpy outputs (return_tensors=False)")
    venv = SVLDRLVectorEnv(num_envs, config=env.replace(autoreset_mode=AutoresetMode.SAME_STEP))
    if scale != 1.0:
        venv = VectorScaleReward(venv, scale)
    if normalize:
        venv = VectorNormalizeReward(venv, gamma=gamma)
    return venv


def _read_config(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _resume_zip(resume) -> Path:
    p = Path(resume)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"run to resume not found: {p}")
    if not (p / "model.zip").is_file():
        raise FileNotFoundError(f"no model.zip in {p} (nothing to resume)")
    return p / "model.zip"


def _jsonable(d: dict) -> dict:
    return {k: (v if isinstance(v, (str, int, float, bool, type(None), list, tuple)) else str(v)) for k, v in d.items()}


def train_from_args(args: argparse.Namespace) -> Path:
    """``svl-drl train --agent ppo|a2c``: train and return the run folder.

    ``--updates`` counts PPO/A2C updates (one rollout of n_steps x num_envs env steps each).
    ``--resume RUN`` continues RUN (its model.zip: the last checkpoint) into the same folder.
    SB3 zips contain pickles: resume only runs from a trusted source.
    """
    from agents.cli.envargs import check_train_budget_args, env_config

    algo = args.agent
    check_train_budget_args(args, "PPO/A2C step one batched environment")
    env = env_config(args)
    n_steps = DEFAULTS[algo]["n_steps"]
    timesteps = None if args.updates is None else args.updates * n_steps * args.num_envs
    out = run_folder(args.out, args.resume)
    train_sb3(algo, env, minutes=args.minutes, timesteps=timesteps, seed=args.seed, out=out,
              progress=not args.no_progress, num_envs=args.num_envs, resume=args.resume,
              checkpoint_every=args.checkpoint_every, precision=args.precision,
              init_from=getattr(args, "init_from", None))
    return out
