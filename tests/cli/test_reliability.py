"""Crash safety, checkpoint validation, loading safety, the memory guard and determinism.

Scenarios (README "Reliability"):
1. SIGKILL mid-training -> the last checkpoint loads -> ``--resume`` continues from it and
   recomputes the killed run's later updates bit for bit (same seed, other process);
2. Ctrl-C (SIGINT) -> the current update finishes, a final checkpoint is written, exit 130;
   resuming from it continues seamlessly (metrics rows neither lost nor duplicated);
3. an asynchronous worker that raises mid-run -> ``RuntimeError`` in the main process within
   seconds, the checkpoints written before it stay loadable; nothing hangs (watchdog);
4. a fresh run that fails before its first checkpoint leaves no files behind; stale temporary
   files of a killed write are cleared on resume; an interrupted write keeps the old file;
5. SB3 training stops cleanly on Ctrl-C with a final model.zip.
"""

from __future__ import annotations

import ast
import csv
import faulthandler
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.common.checkpoint import (CheckpointError, atomic_write, load_checkpoint, load_state_dict_checked,
                                      remove_stale_temporaries, run_folder)
from agents.va3c import Budget, VA3CRun, estimate_training_bytes
from svl_env import SVLDRLVectorEnv, memory

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(width=4, depth=1, num_envs=2)
ENV16 = dict(patch_size=16, max_steps=2)


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


@pytest.fixture
def watchdog():
    """Fail loudly (all thread stacks, then exit) instead of hanging the suite."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# ----------------------------------------------------------------------------- subprocess helpers
def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if None not in r.values() and r.get("update", "").isdigit()]


def _wait_rows(proc, path: Path, n: int, timeout: float = 90.0) -> None:
    t0 = time.time()
    while len(_rows(path)) < n:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"no {n} metrics rows after {timeout} s")
        time.sleep(0.02)


DETERMINISTIC = ("stage", "progress", "lr", "loss", "sup_dice", "sup_ce", "grad_norm", "dice_clean", "dice")


def test_sigkill_then_resume_then_sigint_then_resume(tmp_path, capsys):
    """kill -9 mid-run, resume (recomputes the lost updates identically), Ctrl-C, resume to the end."""
    run = tmp_path / "run"
    train = [sys.executable, "-m", "agents.cli", "train", "--agent", "va3c", "--num-envs", "2", "--patch-size", "16",
             "--max-steps", "2", "--seed", "5", "--no-progress", "--checkpoint-every", "3"]
    # 1. SIGKILL once rows 0..4 exist: checkpoint 3 is on disk, updates 3 and 4 are lost with the process
    a = subprocess.Popen(train + ["--updates", "200", "--out", str(run)], env=_env(), cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_rows(a, run / "metrics.csv", 5)
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=30)
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == -signal.SIGKILL
    killed_rows = {int(r["update"]): r for r in _rows(run / "metrics.csv")}
    c = load_checkpoint(run / "checkpoint.pt", "va3c")["meta"]["update"]  # survived the kill intact
    assert c % 3 == 0 and c >= 3
    lost = [u for u in sorted(killed_rows) if u >= c]  # finished after the checkpoint: lost (normally 3, 4)
    (run / ".checkpoint.pt.leftover.tmp").write_bytes(b"half a checkpoint")  # as a kill mid-write leaves

    # 2. resume (same budget) in a new process; Ctrl-C once it has redone the lost updates
    b = subprocess.Popen(train[:4] + ["--resume", str(run), "--no-progress"], env=_env(), cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_rows(b, run / "metrics.csv", max(killed_rows) + 2)
        b.send_signal(signal.SIGINT)
        _, err = b.communicate(timeout=60)
    finally:
        if b.poll() is None:
            b.kill()
    assert b.returncode == 130, err
    assert "checkpoint saved at update" in err and "Traceback" not in err
    rows = _rows(run / "metrics.csv")
    assert [int(r["update"]) for r in rows] == list(range(len(rows)))  # none lost, none duplicated
    stopped = load_checkpoint(run / "checkpoint.pt", "va3c")["meta"]["update"]
    assert stopped == len(rows)  # the final checkpoint holds every finished update
    assert not list(run.glob(".checkpoint.pt.*.tmp"))  # the stale temporary was cleared
    for u in lost:  # the killed run's lost updates, recomputed identically by another process
        for k in DETERMINISTIC:
            assert rows[u][k] == killed_rows[u][k], (u, k)

    # 3. resume again (in-process) to a shorter budget: continues from the Ctrl-C checkpoint
    from agents.cli import main

    assert main(["train", "--agent", "va3c", "--resume", str(run), "--updates", str(stopped + 1), "--no-progress"]) == 0
    rows = _rows(run / "metrics.csv")
    assert [int(r["update"]) for r in rows] == list(range(stopped + 1))
    assert load_checkpoint(run / "checkpoint.pt", "va3c")["meta"]["update"] == stopped + 1


def test_worker_crash_mid_run_surfaces_and_keeps_checkpoint(tmp_path, watchdog):
    from agents.va3c.train import run_training

    t0 = time.time()
    with pytest.raises(RuntimeError, match="worker 0 failed: RuntimeError: injected crash"):
        run_training(ENV16, updates=50, seed=0, workers=1, out=tmp_path / "run", progress=False, checkpoint_every=1,
                     tensorboard=False, threads=1, _crash_after=2, **TINY)
    assert time.time() - t0 < 90
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.pt", "va3c")  # written before the crash, intact
    assert ck["meta"]["update"] == 2


def test_failed_fresh_run_leaves_nothing(tmp_path, monkeypatch):
    from agents.va3c import learner as va3c
    from agents.va3c.train import run_training

    def boom(self, *a, **k):
        raise RuntimeError("simulated failure in the first update")

    monkeypatch.setattr(va3c.Learner, "update", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        run_training(ENV16, updates=3, seed=0, out=tmp_path / "a" / "run", progress=False, **TINY)
    assert not (tmp_path / "a").exists()


def test_sigint_in_process_saves_final_checkpoint(tmp_path, monkeypatch):
    """The same Ctrl-C path, in-process: SIGINT raised inside an update (mid optimizer work)."""
    from agents.va3c import learner as va3c
    from agents.va3c.train import run_training

    orig = va3c.Learner.update

    def update(self, u, *a, **k):
        m = orig(self, u, *a, **k)
        if u == 1:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the update is still "running"
        return m

    monkeypatch.setattr(va3c.Learner, "update", update)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs as a background job
    with pytest.raises(KeyboardInterrupt):
        run_training(ENV16, updates=10, seed=0, out=tmp_path / "run", progress=False, tensorboard=False, **TINY)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt", "va3c")["meta"]["update"] == 2
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is restored


def test_sb3_sigint_stops_cleanly_with_final_model(tmp_path, monkeypatch):
    from agents.sb3 import train as sb3

    orig = sb3.TrainingCallback._on_rollout_end

    def on_rollout_end(self):
        orig(self)
        if self.updates == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(sb3.TrainingCallback, "_on_rollout_end", on_rollout_end)
    with pytest.raises(KeyboardInterrupt):
        sb3.train_sb3("a2c", dict(patch_size=8, max_steps=2), timesteps=10_000, num_envs=2, out=tmp_path / "run",
                      progress=False, width=4, depth=1)
    policy = sb3.load_sb3(tmp_path / "run" / "model.zip")
    assert 0 < policy.model.num_timesteps < 10_000


# ----------------------------------------------------------------------------- atomic writes / validation
def test_run_folder_of_a_resumed_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.zip").write_text("x")
    assert run_folder(tmp_path / "new") == tmp_path / "new"
    assert run_folder(tmp_path / "new", run) == run  # --out is not used when resuming
    assert run_folder(tmp_path / "new", run / "model.zip") == run  # a checkpoint file: its folder
    with pytest.raises(FileNotFoundError, match="run to resume not found"):
        run_folder(tmp_path / "new", tmp_path / "missing")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "summary.json"
    p.write_text("old")

    def half(tmp):
        Path(tmp).write_text("new but incomp")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(p, half)
    assert p.read_text() == "old" and sorted(x.name for x in tmp_path.iterdir()) == ["summary.json"]
    (tmp_path / ".summary.json.abc.tmp").write_text("junk")
    assert len(remove_stale_temporaries(tmp_path, "summary.json")) == 1


def test_every_writer_is_atomic():
    """Static check: no function opens a file for writing or calls a writer (savefig, write_text...)
    unless it goes through atomic_write (metrics.csv's append-only log is opened right after its
    atomic rebuild, in the same function)."""
    offenders = []
    for f in sorted((ROOT / "agents").rglob("*.py")) + sorted((ROOT / "svl_env").rglob("*.py")):
        rel = f.relative_to(ROOT).as_posix()
        tree = ast.parse(f.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Call):
                    name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                    mode = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
                    recv = ast.unparse(node.func.value) if isinstance(node.func, ast.Attribute) else ""
                    writes = (name == "open" and mode and any(m in str(mode[0]) for m in "wa")) or name in (
                        "savefig", "write_text", "write_bytes", "to_csv", "imwrite") or (
                        name == "save" and recv not in ("self", "run", "policy", "pol"))  # project saves: atomic
                    if writes and not _inside_atomic(fn, node):
                        offenders.append((rel, fn.name, node.lineno))
    assert not offenders, offenders


def _inside_atomic(fn, call) -> bool:
    """The call writes to a temporary name (a function handed to atomic_write / nested in one)."""
    src = ast.unparse(fn)
    return "atomic_write" in src or "tmp" in ast.unparse(call)


def test_no_loader_executes_code_from_a_file():
    """Every torch.load passes weights_only=True; pickle is never used on files."""
    for f in sorted((ROOT / "agents").rglob("*.py")) + sorted((ROOT / "svl_env").rglob("*.py")):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "th.load"):
                kw = {k.arg: k.value for k in node.keywords}
                assert "weights_only" in kw and ast.unparse(kw["weights_only"]) == "True", (f, node.lineno)
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("pickle.load", "pickle.loads",
                                                                         "cloudpickle.load", "dill.load"):
                raise AssertionError(f"{f}:{node.lineno} unpickles")


def test_sb3_trusted_source_warnings_in_docs_and_help():
    from agents.sb3 import train as sb3
    from agents.cli import build_parser

    for obj in (sb3, sb3.load_sb3, sb3.SB3Policy.load, sb3.train_from_args):
        assert "trusted source" in obj.__doc__, obj
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for cmd, opt in (("train", "--resume"), ("evaluate", "--checkpoint")):
        act = next(a for a in sub.choices[cmd]._actions if opt in a.option_strings)
        assert "trusted source" in act.help and "pickle" in act.help, (cmd, act.help)


def test_rejected_weights_leave_the_model_untouched(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 1), torch.nn.Conv3d(3, 1, 1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    sd = {k: torch.ones_like(v) for k, v in before.items()}
    sd["1.weight"] = torch.ones(1, 3, 3, 3, 3)  # the last entry is wrong: nothing may be loaded
    with pytest.raises(CheckpointError, match="x.pt: weights entry '1.weight' has shape"):
        load_state_dict_checked(net, sd, tmp_path / "x.pt")
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


# ----------------------------------------------------------------------------- memory guard
def test_memory_guard_refuses_up_front(monkeypatch):
    monkeypatch.delenv("SVL_DRL_MEMORY_GUARD", raising=False)
    monkeypatch.setenv("SVL_DRL_MEMORY_LIMIT", "64MiB")
    with pytest.raises(memory.InsufficientMemoryError) as ei:
        SVLDRLVectorEnv(64, patch_size=64)
    msg = str(ei.value)
    assert "num_envs=64 × patch 64³ needs ~" in msg and "64 MiB" in msg and "lower num_envs or patch_size" in msg
    assert isinstance(ei.value, ValueError)
    SVLDRLVectorEnv(1, patch_size=16)  # small enough
    with pytest.raises(memory.InsufficientMemoryError, match=r"vA3C training .* lower num_envs \(--num-envs\)"):
        VA3CRun(dict(patch_size=48), budget=Budget(updates=1), config=dict(num_envs=8))
    with pytest.raises(memory.InsufficientMemoryError, match="fewer workers"):
        VA3CRun(dict(patch_size=32), budget=Budget(updates=1), workers=16, config=dict(num_envs=8))
    monkeypatch.setenv("SVL_DRL_MEMORY_GUARD", "0")
    SVLDRLVectorEnv(2, patch_size=64)  # guard off: built anyway


def test_memory_estimates_and_sources(monkeypatch):
    monkeypatch.delenv("SVL_DRL_MEMORY_LIMIT", raising=False)
    avail = memory.available_bytes("cpu")
    assert avail is None or avail > 0
    assert memory.parse_size("1.5GiB") == int(1.5 * 2 ** 30) and memory.parse_size("4000") == 4000
    with pytest.raises(ValueError):
        memory.parse_size("lots")
    small, big = memory.env_bytes(8, (32,) * 3), memory.env_bytes(8, (64,) * 3)
    assert big == 8 * small and memory.env_bytes(8, (32,) * 3, action_rewards=True) > small
    from agents.va3c import make_config

    cfg = make_config(num_envs=4)
    est = estimate_training_bytes(cfg, dict(patch_size=32))
    assert 200 * 2 ** 20 < est < 2 * 2 ** 30  # measured peak ~0.5 GiB (see ACTIVATION_FACTOR)


def test_cli_memory_error_is_one_line(tmp_path, capsys, monkeypatch):
    from agents.cli import main

    monkeypatch.delenv("SVL_DRL_MEMORY_GUARD", raising=False)
    monkeypatch.setenv("SVL_DRL_MEMORY_LIMIT", "1GiB")
    rc = main(["train", "--agent", "va3c", "--num-envs", "32", "--patch-size", "96", "--out", str(tmp_path / "o"),
               "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "needs ~" in err[0] and "--num-envs" in err[0]
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- determinism
def _episode(env, seed, actions_seed):
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(actions_seed)
    trace = [obs.copy(), info["dice"].copy()]
    for _ in range(env.max_steps):
        obs, r, _, _, info = env.step(rng.integers(0, len(env.action_names), (env.num_envs, *env.patch_shape)))
        trace += [obs.copy(), r.copy(), info["reward_map"].copy(), info["dice"].copy(), info["continuity"].copy()]
    return trace


@pytest.mark.parametrize("kwargs", [dict(noise="mt+markov"), dict(noise="sp", families=["tubular", "multi"]),
                                    dict(action_set="intensity")])
def test_same_seed_identical_episodes(kwargs):
    if kwargs.get("action_set") == "intensity":
        kwargs = dict(kwargs, segmenter=torch.nn.Conv3d(1, 1, 3, padding=1).requires_grad_(False))
        torch.nn.init.constant_(kwargs["segmenter"].weight, 1 / 27)
        torch.nn.init.constant_(kwargs["segmenter"].bias, -0.4)
    a = _episode(SVLDRLVectorEnv(3, patch_size=12, max_steps=3, **kwargs), 11, 1)
    b = _episode(SVLDRLVectorEnv(3, patch_size=12, max_steps=3, **kwargs), 11, 1)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    c = _episode(SVLDRLVectorEnv(3, patch_size=12, max_steps=3, **kwargs), 12, 1)
    assert not np.array_equal(a[0], c[0])


def test_sync_training_curves_identical_across_runs():
    cfg = dict(TINY, warmup_frac=0.3, value_frac=0.3, warmup_reuse=2, action_rewards=True)

    def curve(seed):
        run = VA3CRun(ENV16, budget=Budget(updates=3), seed=seed, config=cfg)
        run.run()
        hist = [{k: v for k, v in h.items() if k not in ("seconds", "elapsed", "cpu_elapsed", "voxel_updates_per_s")}
                for h in run.history]
        return hist, run.model.state_dict()

    h1, w1 = curve(4)
    h2, w2 = curve(4)
    assert [h["stage"] for h in h1] == ["warmup", "value", "policy"]
    assert h1 == h2  # every loss, Dice, grad norm: exactly equal
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    h3, _ = curve(5)
    assert h3[0]["loss"] != h1[0]["loss"]
