"""The asynchronous (A3C) worker process: own envs and seed, shared model and Adam state."""

from __future__ import annotations

import os
import signal
import time
import traceback

import torch

from agents.common.budget import Budget, update_seed
from agents.va3c.learner import Learner, make_env, make_optimizer


def _async_worker(wid, model, shared_state, cfg, env, seed, total_updates, deadline, budget_s, elapsed0,
                  counter, stop, q, threads):
    """One A3C actor-learner process: own envs and seed, shared model and Adam state (Hogwild)."""
    try:
        # Ctrl-C reaches the whole process group: the main process stops the workers (stop event)
        # after their current update; a worker must not die half-way through a Hogwild step.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        torch.set_num_threads(threads)
        opt = make_optimizer(model, cfg)
        params = [p for g in opt.param_groups for p in g["params"]]
        for p, st in zip(params, shared_state):
            opt.state[p] = st
        learner = Learner(model, opt, make_env(env, int(cfg["num_envs"]), bool(cfg["action_rewards"])), cfg)
        budget = Budget(total_updates, None) if total_updates is not None else None
        t_start = time.time()
        local = 0
        while not stop.is_set():
            with counter.get_lock():
                u = counter.value
                if budget is not None and u >= total_updates:
                    break
                counter.value += 1  # claim update u (its index sets the stage and lr)
            p = 0.0
            if budget is not None:
                p = u / float(total_updates)
            if deadline is not None:
                now = time.time()
                if now >= deadline:
                    break
                p = max(p, (elapsed0 + now - t_start) / budget_s)
            if cfg.get("_crash_after") is not None and wid == 0 and local >= int(cfg["_crash_after"]):
                if cfg.get("_crash_mode") == "exit":
                    os._exit(3)
                raise RuntimeError("injected crash (test hook _crash_after)")
            m = learner.update(u, p, update_seed(seed, 1 + wid, local))
            local += 1
            q.put(("metrics", wid, m))
        learner.env.close()
    except BaseException as exc:  # report everything, then exit non-zero
        tb = traceback.format_exc().strip().splitlines()
        q.put(("error", wid, f"{type(exc).__name__}: {exc} ({tb[-3].strip() if len(tb) >= 3 else ''})"))
        q.close()
        q.join_thread()
        os._exit(1)
