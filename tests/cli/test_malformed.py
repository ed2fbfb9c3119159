"""A corpus of malformed inputs, each tried on the entry points it can reach.

Every row is one (malformed input, entry point) pair with an ID; ``pytest -v`` lists them.
The contract checked for each row:

- API entry points raise a *named* exception (``DataError``, ``CheckpointError``,
  ``InsufficientMemoryError``, ``FileNotFoundError``, ``NotADirectoryError`` or ``ValueError``)
  whose message is one line naming the file (or option) and the problem;
- CLI entry points (``svl-drl train|evaluate|refine|pipeline|segment``) exit with status 2 and print exactly one
  line on stderr, naming the file (or option) and the problem -- no traceback;
- no partial output: the ``--out`` folder does not exist afterwards (or is unchanged), and a
  malicious checkpoint never runs its payload.

The inputs are generated into ``tmp_path`` by the builders below (nothing binary is kept in
the repository). ``INPUTS`` counts the distinct malformed inputs, ``len(ROWS)`` the checks.
"""

from __future__ import annotations

import gzip
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import torch

from agents.common.checkpoint import CheckpointError
from agents.cli import main
from agents.va3c import Budget, VA3CPolicy, VA3CRun
from svl_env.data.decathlon import DecathlonDataset
from svl_env.data.nifti import DataError

SHAPE = (12, 12, 12)
TINY = dict(width=4, depth=1, num_envs=1)
ENV8 = dict(patch_size=8, max_steps=1)


# ----------------------------------------------------------------------------- helpers
def _nii(path: Path, data, affine=None, dtype=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine)
    if dtype is not None:
        img.set_data_dtype(dtype)
    nib.save(img, str(path))
    return path


def _good(seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    ball = sum(((g - s / 2) / (s / 4)) ** 2 for g, s in zip((zz, yy, xx), shape)) < 1
    image = (np.where(ball, 300.0, 80.0) + rng.normal(0, 10, shape)).astype(np.int16)
    return image, ball.astype(np.uint8)


def _folder(root: Path, *, good=True, image_writer=None, label_writer=None) -> Path:
    """imagesTr/labelsTr with a good case ``case_a`` and a case ``case_b`` built by the writers."""
    if good:
        img, lab = _good(0)
        _nii(root / "imagesTr" / "case_a.nii.gz", img)
        _nii(root / "labelsTr" / "case_a.nii.gz", lab)
    img, lab = _good(1)
    (image_writer or (lambda p: _nii(p, img)))(root / "imagesTr" / "case_b.nii.gz")
    (label_writer or (lambda p: _nii(p, lab)))(root / "labelsTr" / "case_b.nii.gz")
    return root


def _bytes(content: bytes):
    def w(p: Path):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    return w


def _truncated(data, keep=0.5):
    def w(p: Path):
        _nii(p, data)
        raw = p.read_bytes()
        p.write_bytes(raw[: int(len(raw) * keep)])
    return w


def _arr(data, affine=None, dtype=None):
    return lambda p: _nii(p, data, affine, dtype)


# ----------------------------------------------------------------------------- the corpus
@dataclass
class Input:
    id: str
    category: str
    build: Callable[[Path], Path]  # writes the malformed input under tmp, returns it (folder / file / argv)
    names: tuple[str, ...]  # must appear in the one-line message (the file and the problem)
    surfaces: tuple[str, ...]
    exc: type = ValueError
    extra_args: tuple[str, ...] = field(default_factory=tuple)


INPUTS: list[Input] = []


def data_case(id, names, surfaces=None, exc=DataError, **writers):
    if surfaces is None:  # a bad image also reaches `segment`, which reads no labels
        surfaces = ("api", "train", "refine", "pipeline") + (("segment",) if "image_writer" in writers else ())
    INPUTS.append(Input(id, "data", lambda tmp: _folder(tmp / "data", **writers), names, surfaces, exc))


img0, lab0 = _good(1)
rng = np.random.default_rng(0)

# -- unreadable files
data_case("zero-byte-image", ("case_b.nii.gz", "zero-byte"), image_writer=_bytes(b""))
data_case("zero-byte-label", ("case_b.nii.gz", "zero-byte"), label_writer=_bytes(b""))
data_case("truncated-gz-image", ("case_b.nii.gz", r"truncated|corrupt"),
          image_writer=_truncated(rng.normal(size=(24, 24, 24)).astype(np.float32)))
data_case("truncated-gz-label", ("case_b.nii.gz", r"truncated|corrupt"),
          label_writer=_truncated(rng.integers(0, 2, (24, 24, 24)).astype(np.uint8), keep=0.3))
data_case("garbage-bytes-image", ("case_b.nii.gz", r"not a readable NIfTI"),
          image_writer=_bytes(bytes(rng.integers(0, 256, 4000, dtype=np.uint8))))
data_case("gzip-of-text-label", ("case_b.nii.gz", r"not a readable NIfTI|not a NIfTI"),
          label_writer=_bytes(gzip.compress(b"label: this is a text file, not a NIfTI volume\n" * 20)))
data_case("bad-magic-header", ("case_b.nii.gz", r"not a readable NIfTI|not a NIfTI"),
          image_writer=_bytes(gzip.compress(bytes(352) + bytes(4000))))
# -- wrong dimensionality
data_case("image-2d", ("case_b.nii.gz", "2D"), image_writer=_arr(np.zeros((12, 12), np.int16)))
data_case("image-4d-three-volumes", ("case_b.nii.gz", "4D with 3 volumes"),
          image_writer=_arr(np.zeros((*SHAPE, 3), np.int16)))
data_case("label-4d-two-volumes", ("case_b.nii.gz", "4D with 2 volumes"),
          label_writer=_arr(np.zeros((*SHAPE, 2), np.uint8)))
data_case("image-5d", ("case_b.nii.gz", r"5D"), image_writer=_arr(np.zeros((*SHAPE, 1, 2), np.int16)))
# -- image / label disagree
data_case("shape-mismatch", ("case_b.nii.gz", "does not match image shape"),
          label_writer=_arr(np.zeros((12, 12, 11), np.uint8)))
data_case("affine-mismatch", ("case_b.nii.gz", "affines that disagree"),
          label_writer=_arr(lab0, affine=np.diag([1.0, 1.0, 2.0, 1.0])))
# -- bad values
data_case("nan-image", ("case_b.nii.gz", "NaN/Inf"),
          image_writer=_arr(np.where(lab0 > 0, np.nan, 1.0).astype(np.float32)))
data_case("inf-image", ("case_b.nii.gz", "NaN/Inf"),
          image_writer=_arr(np.where(lab0 > 0, np.inf, 1.0).astype(np.float32)))
data_case("nan-label", ("case_b.nii.gz", "NaN/Inf"),
          label_writer=_arr(np.where(lab0 > 0, np.nan, 0).astype(np.float32)))
data_case("fractional-label", ("case_b.nii.gz", "not integers"), label_writer=_arr((lab0 * 0.5).astype(np.float32)))
data_case("negative-label", ("case_b.nii.gz", "negative"), label_writer=_arr(lab0.astype(np.int16) - 1))
data_case("label-is-an-image", ("case_b.nii.gz", "looks like an image"),
          label_writer=_arr(rng.integers(0, 60000, SHAPE).astype(np.uint16)))


def _nan_spacing(p: Path):
    """A header whose voxel size along one axis is NaN (no sform/qform: geometry from pixdim)."""
    img = nib.Nifti1Image(img0, None)
    img.header.set_sform(None, code=0)
    img.header.set_qform(None, code=0)
    raw = bytearray(img.header.binaryblock) + bytes(4) + img0.astype(img.get_data_dtype()).tobytes()
    raw[84:88] = np.float32(np.nan).tobytes()  # pixdim[2]
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(gzip.compress(bytes(raw)))


data_case("nan-voxel-spacing", ("case_b.nii.gz", "invalid voxel spacing"), image_writer=_nan_spacing)


# -- folder layout and dataset.json (reached through the dataset API and `train --data`)
def _layout(fn):
    def build(tmp):
        root = tmp / "data"
        root.mkdir(parents=True)
        fn(root)
        return root
    return build


def layout_case(id, names, fn, exc=FileNotFoundError, surfaces=("api", "train", "pipeline")):
    INPUTS.append(Input(id, "layout", _layout(fn), names, surfaces, exc))


def _json(root, obj, text=None):
    _folder(root)
    (root / "dataset.json").write_text(text if text is not None else json.dumps(obj))


layout_case("empty-data-folder", ("imagesTr", "not found"), lambda r: None)
layout_case("empty-imagesTr", ("imagesTr", "empty"), lambda r: ((r / "imagesTr").mkdir(), (r / "labelsTr").mkdir()))
layout_case("image-without-label", ("case_c.nii.gz", "has no label"),
            lambda r: (_folder(r), _nii(r / "imagesTr" / "case_c.nii.gz", img0)))
layout_case("dataset-json-names-missing-file", ("dataset.json", "ghost.nii.gz"),
            lambda r: _json(r, {"training": [{"image": "./imagesTr/ghost.nii.gz",
                                              "label": "./labelsTr/ghost.nii.gz"}]}))
layout_case("dataset-json-invalid", ("dataset.json", "not valid JSON"), lambda r: _json(r, None, "{'training': ["),
            exc=DataError)
layout_case("dataset-json-malformed-entry", ("dataset.json", "malformed 'training' entry"),
            lambda r: _json(r, {"training": [123]}), exc=DataError)
layout_case("dataset-json-not-an-object", ("dataset.json", "JSON object"), lambda r: _json(r, ["a", "b"]),
            exc=DataError)
layout_case("duplicate-case-name", ("case_b", "also used by"),
            lambda r: (_folder(r), _nii(r / "imagesTr" / "case_b.nii", img0),
                       _nii(r / "labelsTr" / "case_b.nii", lab0)),
            exc=DataError)
INPUTS.append(Input("label-value-absent-everywhere", "layout", lambda tmp: _folder(tmp / "data"),
                    ("label value 7", "empty"), ("train", "pipeline"), ValueError, ("--label-value", "7")))


# -- bad command-line arguments (train unless said otherwise)
def arg_case(id, argv, names, command="train"):
    INPUTS.append(Input(id, "cli-args", lambda tmp, a=tuple(argv): a, names, (command,)))


arg_case("patch-size-two-ints", ["--patch-size", "8", "8"], ("--patch-size", "one or three"))
arg_case("patch-size-too-small", ["--patch-size", "1"], ("patch_size", ">= 2"))
arg_case("patch-size-too-small-for-phantoms", ["--patch-size", "6"], ("patch_size (6, 6, 6)", "PhantomSource",
                                                                       "at least 8"))
arg_case("num-envs-zero", ["--num-envs", "0"], ("num_envs", ">= 1"))
arg_case("updates-zero", ["--updates", "0"], ("updates", ">= 1"))
arg_case("minutes-negative", ["--minutes", "-1"], ("minutes", "> 0"))
arg_case("noise-unknown", ["--noise", "gaussian-blur"], ("gaussian-blur",))
arg_case("noise-ratio-above-one", ["--noise-ratio", "1.5"], ("noise_ratio", "[0, 1]"))
arg_case("max-steps-zero", ["--max-steps", "0"], ("max_steps",))
arg_case("workers-negative", ["--workers", "-1"], ("workers", ">= 0"))
arg_case("checkpoint-every-negative", ["--checkpoint-every", "-5"], ("--checkpoint-every", ">= 0"))
arg_case("device-unknown", ["--device", "gpu"], ("'gpu'", "not a torch device"))
arg_case("agent-unknown", ["--agent", "dqn"], ("--agent", "invalid choice"))
arg_case("updates-not-a-number", ["--updates", "ten"], ("--updates", "invalid int"))
arg_case("memory-cannot-fit", ["--num-envs", "64", "--patch-size", "256"], ("needs ~", "lower num_envs"))
arg_case("data-folder-missing", ["--data", "/nonexistent/Task09"], ("/nonexistent/Task09", "not found"))
arg_case("ppo-with-workers", ["--agent", "ppo", "--workers", "2"], ("--workers", "vA3C only"))
arg_case("evaluate-zero-episodes", ["--episodes", "0"], ("--episodes", ">= 1"), command="evaluate")
arg_case("refine-batch-size-zero", ["--batch-size", "0"], ("--batch-size", ">= 1"), command="refine")
arg_case("refine-overlap-one", ["--overlap", "1.0"], ("overlap", "[0, 1)"), command="refine")
arg_case("pipeline-minutes-zero", ["--minutes", "0"], ("--minutes", "> 0"), command="pipeline")
arg_case("pipeline-method-unknown", ["--method", "dropout"], ("--method", "invalid choice"), command="pipeline")
arg_case("pipeline-stage-unknown", ["--stages", "warmup", "polish"], ("polish",), command="pipeline")
arg_case("pipeline-patch-too-small", ["--patch", "1"], ("patch", ">= 4"), command="pipeline")
arg_case("pipeline-batch-zero", ["--batch", "0"], ("batch", ">= 1"), command="pipeline")
arg_case("pipeline-batch-not-a-number", ["--batch", "four"], ("--batch", "invalid int"), command="pipeline")
arg_case("segment-window-two-ints", ["--window", "8", "8"], ("--window", "one or three"), command="segment")
arg_case("segment-overlap-one", ["--overlap", "1.0"], ("--overlap", "[0, 1)"), command="segment")
if not torch.cuda.is_available():
    arg_case("device-cuda-absent", ["--device", "cuda"], ("'cuda'", "CUDA is not available"))


# -- output paths that are not folders, or that lead onto inputs
def out_case(id, names, command, surfaces=None):
    INPUTS.append(Input(id, "outputs", lambda tmp: tmp, names, surfaces or (command,)))


out_case("train-out-is-a-file", ("is an existing file",), "train")
out_case("evaluate-out-is-a-file", ("is an existing file",), "evaluate")
out_case("refine-out-is-labels-folder", ("labels folder", "never overwritten"), "refine")
out_case("refine-out-is-images-folder", ("images folder", "never overwritten"), "refine")
out_case("refine-out-links-to-labels", ("labels folder", "never overwritten"), "refine")
out_case("pipeline-out-is-a-file", ("is an existing file",), "pipeline")
out_case("segment-out-is-images-folder", ("images folder", "never overwritten"), "segment")
out_case("refine-output-file-links-to-input", ("case_a.nii.gz", "resolves to an input file"), "refine")


# -- checkpoints: built from a real (tiny) training checkpoint, then damaged
def ckpt_case(id, names, mutate, surfaces=("api", "refine", "resume"), exc=CheckpointError):
    INPUTS.append(Input(id, "checkpoint", mutate, names, surfaces, exc))


def _payload(tmp: Path) -> dict:
    return torch.load(tmp / "base" / "checkpoint.pt", weights_only=True)


def _save_payload(tmp: Path, payload) -> Path:
    p = tmp / "bad_run" / "checkpoint.pt"
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, p)
    return p


def _mut(fn, replace=False):
    """``fn`` edits the payload in place (or, with ``replace``, returns a new one)."""
    def build(tmp):
        payload = _payload(tmp)
        out = fn(payload)
        return _save_payload(tmp, out if replace else payload)
    return build


def _raw(fn, name="checkpoint.pt"):
    """``fn(path, bytes of a good checkpoint)`` writes the bad file; returns ``bad_run/NAME``."""
    def build(tmp):
        p = tmp / "bad_run" / "checkpoint.pt"
        p.parent.mkdir(parents=True, exist_ok=True)
        fn(p, (tmp / "base" / "checkpoint.pt").read_bytes())
        return p.with_name(name)
    return build


def _cfg(payload, fn):
    cfg = json.loads(payload["config"])
    fn(cfg)
    payload["config"] = json.dumps(cfg)


def _first_float(sd):
    return next(k for k, v in sd.items() if v.dtype.is_floating_point and v.numel() > 1)


class _Payload:
    """Unpickling this runs code; a safe loader must refuse it instead."""

    marker = None

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _malicious(p: Path, _base: bytes):
    evil = _Payload()
    evil.marker = str(p.parent / "PWNED")
    torch.save({"format": "svl-drl-checkpoint", "format_version": 1, "kind": "va3c", "evil": evil}, p)


def _sb3_like_zip(p: Path, _base: bytes):
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("data", json.dumps({"policy_class": {":type:": "<class 'abc.ABCMeta'>"}}))
        zf.writestr("policy.pth", b"\x00" * 64)


ckpt_case("ckpt-zero-byte", ("checkpoint.pt", "not a readable"), _raw(lambda p, b: p.write_bytes(b"")))
ckpt_case("ckpt-truncated", ("checkpoint.pt", "not a readable"), _raw(lambda p, b: p.write_bytes(b[: len(b) // 2])))
ckpt_case("ckpt-garbage", ("checkpoint.pt", "not a readable"),
          _raw(lambda p, b: p.write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8)))))
ckpt_case("ckpt-pickle-that-runs-code", ("checkpoint.pt", "not a readable"), _raw(_malicious))
ckpt_case("ckpt-sb3-zip-given-to-va3c", ("checkpoint.pt", "not a readable"), _raw(_sb3_like_zip))
ckpt_case("ckpt-no-format-marker", ("checkpoint.pt", "format marker"),
          _mut(lambda pl: {"model": torch.zeros(2)}, replace=True))
ckpt_case("ckpt-format-version-99", ("checkpoint.pt", "format version 99"),
          _mut(lambda pl: pl.update(format_version=99)))
ckpt_case("ckpt-other-agent-kind", ("checkpoint.pt", "kind 'ppo'"), _mut(lambda pl: pl.update(kind="ppo")))
ckpt_case("ckpt-config-not-json", ("checkpoint.pt", "malformed checkpoint"),
          _mut(lambda pl: pl.update(config="{net: ")))
ckpt_case("ckpt-tensor-replaced-by-list", ("checkpoint.pt", "not a tensor"),
          _mut(lambda pl: pl["tensors"]["model"].update({_first_float(pl["tensors"]["model"]): [1.0, 2.0]})))
ckpt_case("ckpt-weights-wrong-shape", ("checkpoint.pt", "shape"),
          _mut(lambda pl: _cfg(pl, lambda c: (c["net"].update(width=6), c["train"].update(width=6)))))
ckpt_case("ckpt-net-config-unknown-key", ("checkpoint.pt", "does not build a network"),
          _mut(lambda pl: _cfg(pl, lambda c: c["net"].update(bogus=1))))
ckpt_case("ckpt-weight-missing", ("checkpoint.pt", "missing 1"),
          _mut(lambda pl: pl["tensors"]["model"].pop(_first_float(pl["tensors"]["model"]))))
ckpt_case("ckpt-nan-weights", ("checkpoint.pt", "NaN/Inf"),
          _mut(lambda pl: pl["tensors"]["model"][_first_float(pl["tensors"]["model"])].fill_(float("nan"))))
ckpt_case("ckpt-optimizer-state-wrong-shape", ("checkpoint.pt", "optimizer state"),
          _mut(lambda pl: pl["tensors"]["optimizer"].update(
              {k: torch.zeros(3) for k in list(pl["tensors"]["optimizer"]) if k.endswith("exp_avg")})),
          surfaces=("resume",))
ckpt_case("ckpt-policy-only-for-resume", ("policy-only",), lambda tmp: VA3CPolicy.untrained(
    ENV8, **TINY).save(tmp / "bad_run" / "checkpoint.pt"), surfaces=("resume",))
ckpt_case("ckpt-missing-in-run-folder", ("checkpoint.pt", "not found"),
          lambda tmp: (tmp / "bad_run").mkdir() or (tmp / "bad_run"), surfaces=("refine", "resume", "evaluate"),
          exc=FileNotFoundError)
ckpt_case("ckpt-va3c-given-to-ppo-resume", ("checkpoint.pt", "not a stable-baselines3 model zip"),
          lambda tmp: tmp / "base" / "checkpoint.pt", surfaces=("resume-ppo",))
ckpt_case("sb3-zip-truncated", ("model.zip", "not a stable-baselines3 model zip"),
          _raw(lambda p, b: p.with_name("model.zip").write_bytes(b"PK\x03\x04junk"), name="model.zip"),
          surfaces=("evaluate",))

# -- staged-pipeline models given to `segment`
ckpt_case("segment-model-is-a-va3c-checkpoint", ("checkpoint.pt", "va3c"), lambda tmp: tmp / "base" / "checkpoint.pt",
          surfaces=("segment",))
ckpt_case("segment-model-garbage", ("model.pt",),
          _raw(lambda p, b: p.with_name("model.pt").write_bytes(b"\x00junk" * 50), name="model.pt"),
          surfaces=("segment",))
ckpt_case("segment-model-missing", ("no_run", "not found"), lambda tmp: tmp / "no_run", surfaces=("segment",),
          exc=FileNotFoundError)


ROWS = [pytest.param(inp, s, id=f"{inp.category}:{inp.id}[{s}]") for inp in INPUTS for s in inp.surfaces]
N_INPUTS = len(INPUTS)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny training checkpoint (update 0) and a good NIfTI folder for the refine/evaluate runs."""
    root = tmp_path_factory.mktemp("base")
    run = VA3CRun(ENV8, budget=Budget(updates=1), seed=0, config=dict(TINY, warmup_reuse=1))
    run.run()  # one update: the optimizer state exists
    run.save(root / "base" / "checkpoint.pt")
    _folder(root / "good", good=True)
    from agents.staged.pipeline import run_pipeline

    run_pipeline(root / "good", root / "staged", method="noisy", updates=1, config={"patch": 8},
                 model_config={"width": 4}, progress=False, plot=False)
    return root


def _call_cli(argv, capsys):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def _one_line(msg: str, names) -> None:
    import re

    assert "\n" not in msg.strip(), msg
    assert "Traceback" not in msg
    for n in names:
        assert re.search(n if any(c in n for c in "|") else re.escape(n), msg), f"{n!r} not in: {msg}"


def _snapshot(path: Path):
    if not path.exists():
        return None
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*"))


# ----------------------------------------------------------------------------- the test
@pytest.mark.parametrize("inp,surface", ROWS)
def test_malformed_input_is_refused_cleanly(inp: Input, surface: str, base, tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.setenv("SVL_DRL_MEMORY_LIMIT", "16GiB")  # the same verdicts on any machine
    monkeypatch.delenv("SVL_DRL_MEMORY_GUARD", raising=False)
    shutil.copytree(base / "base", tmp_path / "base")
    out = tmp_path / "out"
    target = inp.build(tmp_path)
    good = base / "good"
    tiny_train = ["train", "--agent", "va3c", "--updates", "1", "--num-envs", "1", "--patch-size", "8",
                  "--max-steps", "1", "--no-progress"]
    tiny_pipeline = ["pipeline", "--updates", "1", "--patch", "8", "--width", "4", "--no-progress"]
    staged = base / "staged"

    if inp.category == "outputs":  # the input is fine, the output path is the problem
        if inp.id.endswith("-out-is-a-file"):
            (tmp_path / "afile").write_text("keep me")
            out = tmp_path / "afile" / "sub"
        imgs, labs = tmp_path / "in" / "imagesTr", tmp_path / "in" / "labelsTr"
        shutil.copytree(good, tmp_path / "in")
        if inp.id == "refine-out-is-labels-folder":
            out = labs
        elif inp.id in ("refine-out-is-images-folder", "segment-out-is-images-folder"):
            out = imgs
        elif inp.id == "refine-out-links-to-labels":
            out = tmp_path / "link"
            out.symlink_to(labs, target_is_directory=True)
        elif inp.id == "refine-output-file-links-to-input":
            out.mkdir()
            (out / "case_a.nii.gz").symlink_to(labs / "case_a.nii.gz")
        inputs_before = _snapshot(tmp_path / "in")
        before = _snapshot(out) if out.exists() and not out.is_symlink() else None
        if surface == "train":
            argv = tiny_train + ["--out", out]
        elif surface == "evaluate":
            argv = ["evaluate", "--checkpoint", tmp_path / "base", "--episodes", "1", "--no-progress", "--out", out]
        elif surface == "pipeline":
            argv = tiny_pipeline + ["--data", tmp_path / "in", "--out", out]
        elif surface == "segment":
            argv = ["segment", "--model", staged, "--images", imgs, "--out", out, "--no-progress"]
        else:
            argv = ["refine", "--checkpoint", tmp_path / "base", "--images", imgs, "--labels", labs,
                    "--out", out, "--no-progress"]
        rc, err = _call_cli(argv, capsys)
        assert rc == 2 and len(err) == 1, err
        _one_line(err[0], inp.names)
        assert _snapshot(tmp_path / "in") == inputs_before  # inputs untouched
        if before is not None:
            assert _snapshot(out) == before
        if inp.id.endswith("is-a-file"):
            assert (tmp_path / "afile").read_text() == "keep me"
        return

    if surface == "api":
        with pytest.raises(inp.exc) as ei:
            if inp.category in ("data", "layout"):
                DecathlonDataset(target).validate()
            else:
                VA3CPolicy.load(target)
        _one_line(str(ei.value), inp.names)
        assert not (target.parent / "PWNED").exists()
        return

    if inp.category == "cli-args":
        if surface == "train":
            argv = tiny_train + list(target) + ["--out", out]
            if "--agent" in target:  # the later --agent wins in argparse
                argv = argv[:1] + argv[3:]
        elif surface == "evaluate":
            argv = ["evaluate", "--checkpoint", tmp_path / "base", "--out", out, "--no-progress", *target]
        elif surface == "pipeline":
            argv = tiny_pipeline + ["--data", good, "--out", out, *target]
        elif surface == "segment":
            argv = ["segment", "--model", staged, "--images", good / "imagesTr", "--out", out, "--no-progress", *target]
        else:
            argv = ["refine", "--checkpoint", tmp_path / "base", "--images", good / "imagesTr", "--labels",
                    good / "labelsTr", "--out", out, "--no-progress", *target]
    elif inp.category in ("data", "layout"):
        if surface == "train":
            argv = tiny_train + ["--data", target, "--out", out, *inp.extra_args]
        elif surface == "pipeline":
            argv = tiny_pipeline + ["--data", target, "--out", out, *inp.extra_args]
        elif surface == "segment":
            argv = ["segment", "--model", staged, "--images", target / "imagesTr", "--out", out, "--no-progress"]
        else:  # refine: the good case_a comes first, so a partial run would already have written it
            argv = ["refine", "--checkpoint", tmp_path / "base", "--images", target / "imagesTr", "--labels",
                    target / "labelsTr", "--out", out, "--no-progress"]
    else:  # checkpoints
        if surface == "segment":
            argv = ["segment", "--model", target, "--images", good / "imagesTr", "--out", out, "--no-progress"]
        elif surface == "refine":
            argv = ["refine", "--checkpoint", target, "--images", good / "imagesTr", "--labels", good / "labelsTr",
                    "--out", out, "--no-progress"]
        elif surface == "evaluate":
            argv = ["evaluate", "--checkpoint", target, "--episodes", "1", "--out", out, "--no-progress"]
        elif surface == "resume":
            argv = ["train", "--agent", "va3c", "--resume", target.parent if target.name == "checkpoint.pt" else target,
                    "--no-progress", "--updates", "1"]
            out = target.parent if target.is_file() else target
        else:  # resume-ppo
            argv = ["train", "--agent", "ppo", "--resume", target, "--no-progress", "--updates", "1"]
            out = tmp_path / "nothing"
    before = _snapshot(out)
    rc, err = _call_cli(argv, capsys)
    assert rc == 2, err
    assert len(err) == 1, err
    _one_line(err[0], inp.names)
    assert _snapshot(out) == before, "partial output left behind"
    assert not (tmp_path / "bad_run" / "PWNED").exists()


def test_corpus_size():
    assert N_INPUTS >= 30 and len(ROWS) >= 60
    assert len({i.id for i in INPUTS}) == N_INPUTS  # IDs are unique
