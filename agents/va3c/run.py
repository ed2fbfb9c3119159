"""A vA3C training run: build or resume, the synchronous update loop and the asynchronous
workers' supervisor, checkpoints."""

from __future__ import annotations

import contextlib
import math
import os
import queue as _queue
import time
from pathlib import Path
from typing import Callable

import torch

from agents.common.budget import Budget, update_seed
from agents.common.checkpoint import (CheckpointError, load_checkpoint, resolve_checkpoint, save_checkpoint,
                                      validate_state_dict)
from agents.common.init_from import check_same_network, load_network, read_init, record
from agents.common.networks import PolicyValueNet
from agents.common.precision import resolve_precision
from agents.va3c.async_workers import _async_worker
from agents.va3c.config import KIND, _PRIVATE_KEYS, make_config
from agents.va3c.learner import (Learner, _check_optimizer_state, load_optimizer_tensors, make_env, make_optimizer,
                                 optimizer_tensors, share_optimizer)
from agents.va3c.memory import check_training_memory
from agents.va3c.model import VA3CModel, _init_net, _net_config, build_net
from agents.va3c.policy import VA3CPolicy
from svl_env import EnvConfig


# --------------------------------------------------------------------------- training driver
class VA3CRun:
    """A training run: model, optimiser, counters; ``run()`` trains to the budget.

    Sync mode owns one ``Learner``; async mode spawns workers. ``out`` (a folder) gets
    ``checkpoint.pt`` (periodic + final), ``config.json``, ``metrics.csv`` and TensorBoard
    event files. ``hooks`` receive each update's metrics dict (progress bars, writers).
    ``kind`` / ``policy_class``: the checkpoint kind and the policy it trains (a subclass that
    is another agent on the same network, such as ``supervised``, sets both).
    """

    kind = KIND
    policy_class = VA3CPolicy

    def __init__(self, env_kwargs: EnvConfig | dict, *, budget: Budget, seed: int = 0, workers: int = 0,
                 config: dict | None = None, init_from=None):
        config = dict(config or {})
        init = None
        if init_from is not None:
            init = read_init(init_from)  # an unreadable file is named before anything is built
            # the checkpoint stands in for the Warmup stage: the RL stages get the whole budget
            config.setdefault("warmup", False)
        self.cfg = make_config(**config)
        self.env = EnvConfig.from_any(env_kwargs)
        self.env_json = self.env.to_json()  # before anything is built: a value no checkpoint can hold fails now
        self.budget = budget
        self.seed = int(seed)
        self.workers = int(workers)
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers!r}")
        self.device = self.env.torch_device
        n_ch, n_act = self.env.num_channels, self.env.num_actions
        if init is not None:  # another network shape: one ValueError line, before anything is built
            check_same_network(init, _net_config(self.cfg, n_ch, n_act))
        self.cfg["precision"] = resolve_precision(self.cfg["precision"], self.device)  # what config.json records
        self.model = VA3CModel(_net_config(self.cfg, n_ch, n_act), bool(self.cfg["reward_conv"]),
                               int(self.cfg["reward_conv_size"]))
        self.model.net.load_state_dict(_init_net(self.cfg, n_ch, n_act, self.seed).state_dict())
        if init is not None:
            load_network(self.model.net, init)
        self.init_from = record(init)  # what config.json and the checkpoints record (None: from scratch)
        check_training_memory(self.cfg, self.env, self.model.net, self.workers)  # before any env exists
        self.model.to(self.device)
        self.opt = make_optimizer(self.model, self.cfg)
        self.update = 0  # updates done
        self.elapsed = 0.0  # training seconds done (resumes add to it)
        self.cpu_elapsed = 0.0  # CPU seconds of this process spent training
        self.history: list[dict] = []
        self.stop_requested = False  # set (e.g. by a SIGINT handler) to end the run after the current update
        self.checkpoints_written = 0

    # -- persistence
    def checkpoint_config(self) -> dict:
        train = {k: v for k, v in self.cfg.items() if k not in _PRIVATE_KEYS}  # test hooks never persist
        out = {"net": self.model.net.config, "train": train, "env": self.env_json, "seed": self.seed,
               "workers": self.workers, "budget": self.budget.as_dict()}
        if self.init_from is not None:  # scratch runs' checkpoints stay as they were
            out["init_from"] = self.init_from
        return out

    def save(self, path) -> Path:
        opt_flat, opt_meta = optimizer_tensors(self.opt)
        tensors = {"model": self.model.net.state_dict(), "optimizer": opt_flat}
        if self.model.reward_conv is not None:
            tensors["reward_conv"] = self.model.reward_conv.state_dict()
        meta = {"update": self.update, "elapsed": self.elapsed, "cpu_elapsed": self.cpu_elapsed, "optimizer": opt_meta}
        out = save_checkpoint(path, self.kind, self.checkpoint_config(), tensors, meta)
        self.checkpoints_written += 1
        return out

    @classmethod
    def resume(cls, path, *, updates: int | None = None, minutes: float | None = None,
               cpu_minutes: float | None = None, workers: int | None = None,
               precision: str | None = None) -> "VA3CRun":
        """Continue the run of a checkpoint; ``precision`` None keeps the run's own (weights and
        optimiser states are float32 in either, so a run may change precision when resumed)."""
        ck = load_checkpoint(resolve_checkpoint(path), cls.kind)
        cfg, meta, where = ck["config"], ck["meta"], ck["path"]
        if "train" not in cfg or "update" not in meta or "optimizer" not in ck["tensors"]:
            raise CheckpointError(f"{where}: a policy-only vA3C checkpoint cannot be resumed (no training state)")
        # Validate everything into a fresh run first; the caller gets a run only if all of it fits.
        try:
            b = dict(cfg["budget"])
            if updates is not None or minutes is not None or cpu_minutes is not None:
                b = {"updates": updates, "minutes": minutes, "cpu_minutes": cpu_minutes}
            budget = Budget(**b)
            update, elapsed = int(meta["update"]), float(meta["elapsed"])
            cpu_elapsed = float(meta.get("cpu_elapsed", 0.0))
            if update < 0 or not (math.isfinite(elapsed) and math.isfinite(cpu_elapsed)):
                raise ValueError(f"bad counters update={update}, elapsed={elapsed}")
            env, seed, train = EnvConfig.from_json(cfg["env"]), int(cfg["seed"]), cfg["train"]
            if not isinstance(train, dict):
                raise TypeError("the train config must be an object")
            # checkpoints from before --precision existed were trained in fp32
            train = {**train, "precision": precision if precision is not None else train.get("precision", "fp32")}
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: malformed training state in the checkpoint "
                                  f"({type(exc).__name__}: {exc})") from None
        try:
            make_config(**train)
        except ValueError as exc:
            raise CheckpointError(f"{where}: training config is not valid ({exc})") from None
        build_net(cfg.get("net", {}), where)
        run = cls(env, budget=budget, seed=seed, workers=cfg.get("workers", 0) if workers is None else workers,
                  config=train)
        if cfg.get("net") != run.model.net.config:
            raise CheckpointError(f"{where}: network config {cfg.get('net')} disagrees with the one its training "
                                  f"config builds ({run.model.net.config})")
        validate_state_dict(run.model.net, ck["tensors"]["model"], where, "network weights")
        if run.model.reward_conv is not None:
            if "reward_conv" not in ck["tensors"]:
                raise CheckpointError(f"{where}: checkpoint lacks the reward conv weights its config uses")
            validate_state_dict(run.model.reward_conv, ck["tensors"]["reward_conv"], where, "reward conv weights")
        try:
            probe = make_optimizer(run.model, run.cfg)
            load_optimizer_tensors(probe, ck["tensors"]["optimizer"], meta["optimizer"])
            _check_optimizer_state(probe)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{where}: optimizer state does not fit the model "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        run.model.net.load_state_dict(ck["tensors"]["model"])
        if run.model.reward_conv is not None:
            run.model.reward_conv.load_state_dict(ck["tensors"]["reward_conv"])
        load_optimizer_tensors(run.opt, ck["tensors"]["optimizer"], meta["optimizer"])
        run.update, run.elapsed, run.cpu_elapsed = update, elapsed, cpu_elapsed
        run.init_from = cfg.get("init_from")  # a resumed warm start is still one (its weights come from here)
        return run

    def policy(self) -> VA3CPolicy:
        net = PolicyValueNet(**self.model.net.config)
        net.load_state_dict({k: v.detach().cpu() for k, v in self.model.net.state_dict().items()})
        return self.policy_class(net, {"net": net.config, "train": self.cfg, "env": self.env_json},
                                 device=self.device)

    def done(self) -> bool:
        return self.budget.progress(self.update, self.elapsed, self.cpu_elapsed) >= 1.0

    # -- training
    def run(self, hooks: list[Callable[[dict], None]] = (), checkpoint_every: int = 0,
            checkpoint_path: Path | None = None) -> None:
        if self.workers > 0:
            if self.budget.cpu_minutes is not None:
                raise ValueError("a cpu_minutes budget applies to the synchronous mode only; use minutes or updates")
            return self._run_async(hooks, checkpoint_every, checkpoint_path)
        return self._run_sync(hooks, checkpoint_every, checkpoint_path)

    def _run_sync(self, hooks, checkpoint_every, checkpoint_path) -> None:
        cfg = self.cfg
        env = make_env(self.env, int(cfg["num_envs"]), bool(cfg["action_rewards"]))
        learner = Learner(self.model, self.opt, env, cfg)
        stop_after = cfg.get("_stop_after")
        with _torch_settings(self.device, cfg):
            try:
                while not self.done() and not self.stop_requested:
                    t0, c0 = time.perf_counter(), time.process_time()
                    p = self.budget.progress(self.update, self.elapsed, self.cpu_elapsed)
                    m = learner.update(self.update, p, update_seed(self.seed, self.update))
                    self.update += 1
                    self.elapsed += time.perf_counter() - t0
                    self.cpu_elapsed += time.process_time() - c0
                    m["elapsed"], m["cpu_elapsed"] = self.elapsed, self.cpu_elapsed
                    self.history.append(m)
                    for h in hooks:
                        h(m)
                    if checkpoint_path is not None and checkpoint_every and self.update % checkpoint_every == 0:
                        self.save(checkpoint_path)
                    if stop_after is not None and self.update >= int(stop_after):
                        break  # test hook: an interruption right after this update
            finally:
                env.close()

    def _run_async(self, hooks, checkpoint_every, checkpoint_path) -> None:
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.model.share_memory()
        shared_state = share_optimizer(self.opt)
        counter = ctx.Value("l", self.update)
        stop = ctx.Event()
        q = ctx.Queue()
        threads = self.cfg["threads"] or max(1, (os.cpu_count() or 2) // self.workers)
        deadline, budget_s = None, None
        if self.budget.minutes is not None:
            budget_s = 60.0 * float(self.budget.minutes)
            deadline = time.time() + budget_s - self.elapsed
        procs = []
        t_start = time.perf_counter()
        elapsed0 = self.elapsed
        for w in range(self.workers):
            p = ctx.Process(target=_async_worker, name=f"va3c-worker-{w}",
                            args=(w, self.model, shared_state, self.cfg, self.env, self.seed,
                                  self.budget.updates, deadline, budget_s, elapsed0, counter, stop, q, int(threads)),
                            daemon=True)
            p.start()
            procs.append(p)
        error = None
        update0 = self.update
        completed = 0
        last_ckpt = self.update
        def on_metrics(msg) -> None:
            nonlocal completed
            m = msg[2]
            completed += 1
            self.update = update0 + completed  # updates finished (they may finish out of order)
            self.elapsed = elapsed0 + time.perf_counter() - t_start
            m["elapsed"], m["worker"] = self.elapsed, msg[1]
            self.history.append(m)
            for h in hooks:
                h(m)

        try:
            while not self.stop_requested:
                try:
                    msg = q.get(timeout=0.5)
                except _queue.Empty:
                    msg = None
                if msg is not None:
                    kind = msg[0]
                    if kind == "metrics":
                        on_metrics(msg)
                        if (checkpoint_path is not None and checkpoint_every
                                and self.update - last_ckpt >= checkpoint_every):
                            self.save(checkpoint_path)
                            last_ckpt = self.update
                    elif kind == "error":
                        error = f"vA3C worker {msg[1]} failed: {msg[2]}"
                        break
                    continue
                dead = [p for p in procs if not p.is_alive()]
                bad = [p for p in dead if p.exitcode not in (0, None)]
                if bad:
                    # drain a last error message, if the worker managed to send one
                    try:
                        while True:
                            m2 = q.get(timeout=0.2)
                            if m2[0] == "error":
                                error = f"vA3C worker {m2[1]} failed: {m2[2]}"
                                break
                    except _queue.Empty:
                        pass
                    if error is None:
                        error = f"vA3C worker {bad[0].name} died with exit code {bad[0].exitcode}"
                    break
                if len(dead) == len(procs):
                    break
        finally:
            stop.set()
            if error is None:  # normal end: let workers finish their update and exit cleanly
                for p in procs:
                    p.join(timeout=60)
            for p in procs:  # failure (or a worker stuck): stop the rest now, never hang
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=5)
            if error is None:  # updates the workers finished while stopping count too
                try:
                    while True:
                        msg = q.get_nowait()
                        if msg[0] == "metrics":
                            on_metrics(msg)
                except (_queue.Empty, OSError, EOFError, ValueError):
                    pass
            self.elapsed = elapsed0 + time.perf_counter() - t_start
        if error is not None:
            raise RuntimeError(error)


@contextlib.contextmanager
def _torch_settings(device: torch.device, cfg: dict):
    """Threads and determinism for the duration of a sync run; restored afterwards.

    CPU: deterministic algorithms whenever ``deterministic`` (the default). CUDA: only when the
    user also opted in with ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (cuBLAS needs it set before it
    starts; deterministic kernels can be slower) -- then sync training is bitwise reproducible on
    the GPU too (checked on an H100); without it CUDA runs drift apart in the last bits."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    try:
        if cfg["threads"]:
            torch.set_num_threads(int(cfg["threads"]))
        cuda_opt_in = device.type == "cuda" and os.environ.get("CUBLAS_WORKSPACE_CONFIG") in (":4096:8", ":16:8")
        if cfg["deterministic"] and (device.type == "cpu" or cuda_opt_in):
            torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)
