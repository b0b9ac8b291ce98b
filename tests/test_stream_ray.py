"""Streamed compression on Ray (``compress_checkpoint(..., workers=N)``): the same bytes as the serial path,
a worker killed inside a task is retried without corrupting the output, a run stopped by a failed task resumes,
and without Ray ``--workers`` says how to install it.

One local Ray cluster (2 CPUs, small object store, no dashboard) serves the whole module. Its workers run a
setup hook that arms a fault injector: a test arms it by creating a file, and the first worker to write a
shard afterwards removes the file (exactly one succeeds), leaves half a shard on disk and dies with
``os._exit`` (or, in "raise" mode, raises, which Ray does not retry).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import curmoe
from curmoe.compress import compress_checkpoint
from tests.babies import baby_model, random_ids

try:
    import ray
except ImportError:  # the tests that need a cluster skip; the install-line test still runs
    ray = None

ROOT = Path(__file__).resolve().parents[1]
ARMED_ENV = "CURMOE_TEST_RAY_ARMED"  # folder holding the "die" / "raise" trigger files


def _arm_fault_injector() -> None:
    """Worker setup hook: wrap the shard writer so that one armed write kills (or fails) its task."""
    from curmoe.compress import _stream

    real, folder = _stream.write_safetensors, Path(os.environ[ARMED_ENV])

    def write(path, tensors, **kw):
        for mode in ("die", "raise"):
            try:
                os.remove(folder / mode)  # only one caller can remove it
            except FileNotFoundError:
                continue
            with open(path, "wb") as f:  # half a shard at the temporary name, then the fault
                f.write(b"\0" * 100)
            if mode == "die":
                os._exit(1)
            raise RuntimeError("injected task failure")
        real(path, tensors, **kw)

    _stream.write_safetensors = write


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if ray is None:
        pytest.skip("Ray is not installed (pip install 'curmoe[ray]')")
    armed = tmp_path_factory.mktemp("ray-armed")
    if ray.is_initialized():
        ray.shutdown()
    # pytest imports this file under a name the workers cannot import: send the hook by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, logging_level="ERROR",
             log_to_driver=False, _system_config={"worker_niceness": 0},  # Ray's default 15 starves them under load
             runtime_env={"worker_process_setup_hook": _arm_fault_injector,
                          "env_vars": {ARMED_ENV: str(armed)}})
    yield armed
    ray.shutdown()


def _files(folder: Path) -> dict[str, bytes]:
    """Every output file's bytes; config.json without its timing (the one field that differs between runs)."""
    out = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "config.json"}
    cfg = json.loads((folder / "config.json").read_text())
    cfg["compression"].pop("time_s")
    return out | {"config.json": json.dumps(cfg, sort_keys=True).encode()}


def _assert_same(a: Path, b: Path) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    assert [k for k in fa if fa[k] != fb[k]] == []


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-src")
    model = baby_model(dtype=np.float32, moe={"d_ff": 32})
    model.save(folder / "src")
    return folder / "src", random_ids(model, 4, 12)


CASES = {
    # name: (config, calibration tokens?)
    "neuron-one-pass": (curmoe.NeuronConfig(ratio=0.5, allocation="uniform"), True),
    "cur-data-free": (curmoe.CURConfig(ratio=0.5), False),
    "cur-aware-sequential": (curmoe.CURConfig(ratio=0.5, activation_aware=True, sequential=True), True),
    "svdllm": (curmoe.SVDConfig(ratio=0.5, activation_aware=True), True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_ray_workers_give_the_serial_bytes(name, cluster, src, tmp_path):
    cfg, calib = CASES[name]
    kw = {"calib_ids": src[1] if calib else None, "progress": False}
    serial = compress_checkpoint(src[0], tmp_path / "serial", cfg, **kw)
    par = compress_checkpoint(src[0], tmp_path / "ray", cfg, workers=2, **kw)
    _assert_same(tmp_path / "serial", tmp_path / "ray")
    assert par.factors == serial.factors and len(par.factors) > 0
    assert not (tmp_path / "ray.partial").exists()


def test_worker_killed_inside_a_task_is_retried_without_corrupting_output(cluster, src, tmp_path):
    cfg = curmoe.NeuronConfig(ratio=0.5, allocation="uniform", sequential=True)
    compress_checkpoint(src[0], tmp_path / "serial", cfg, calib_ids=src[1], progress=False)
    (cluster / "die").touch()
    compress_checkpoint(src[0], tmp_path / "ray", cfg, calib_ids=src[1], workers=2, progress=False)
    assert not (cluster / "die").exists()  # a worker took the trigger and died with os._exit
    _assert_same(tmp_path / "serial", tmp_path / "ray")
    assert not [p for p in (tmp_path / "ray").iterdir() if p.name.endswith(".tmp")]


def test_failed_task_stops_the_run_and_rerunning_resumes_with_workers(cluster, src, tmp_path):
    cfg = curmoe.CURConfig(ratio=0.5, activation_aware=True)
    compress_checkpoint(src[0], tmp_path / "serial", cfg, calib_ids=src[1], progress=False)
    (cluster / "raise").touch()
    with pytest.raises(Exception, match="injected task failure") as e:
        compress_checkpoint(src[0], tmp_path / "ray", cfg, calib_ids=src[1], workers=2, progress=False)
    assert any("rerunning the same command resumes" in n for n in getattr(e.value, "__notes__", []))
    partial = tmp_path / "ray.partial"
    assert not (tmp_path / "ray").exists() and (partial / "manifest.jsonl").is_file()
    finished = len((partial / "manifest.jsonl").read_text().splitlines()) - 1
    index = json.loads((tmp_path / "serial" / "model.safetensors.index.json").read_text())
    n_units = len(set(index["weight_map"].values()))  # globals, each layer, each expert
    assert 0 < finished < n_units  # stopped part-way
    compress_checkpoint(src[0], tmp_path / "ray", cfg, calib_ids=src[1], workers=2, progress=False)
    _assert_same(tmp_path / "serial", tmp_path / "ray")


def test_cli_workers_pass_through(cluster, src, tmp_path, capsys):
    from curmoe.app.cli import main

    args = ["compress", str(src[0]), "--method", "cur", "--ratio", "0.5", "--stream", "--json", "-o"]
    assert main([*args, str(tmp_path / "serial")]) == 0
    assert main([*args, str(tmp_path / "ray"), "--workers", "2"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["method"] == "cur"
    _assert_same(tmp_path / "serial", tmp_path / "ray")


def test_bad_workers_arguments_are_refused(src, tmp_path):
    cfg = curmoe.CURConfig(ratio=0.5)
    with pytest.raises(curmoe.InvalidInputError, match=r"workers=0 must be a positive integer \(CLI: --workers N\)"):
        compress_checkpoint(src[0], tmp_path / "o", cfg, workers=0)
    with pytest.raises(curmoe.InvalidInputError, match="ray_address='auto' needs workers=N"):
        compress_checkpoint(src[0], tmp_path / "o", cfg, ray_address="auto")


def test_without_ray_workers_give_the_install_line(src, tmp_path, monkeypatch, capsys):
    from curmoe.app.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(curmoe.MissingExtraError, match=r"^'ray' is not installed; install it with: pip install "
                                                       r"'curmoe\[ray\]'$"):
        compress_checkpoint(src[0], tmp_path / "o", curmoe.CURConfig(ratio=0.5), workers=2)
    assert not (tmp_path / "o.partial").exists()  # refused before any work
    rc = main(["compress", str(src[0]), "--method", "cur", "--ratio", "0.5", "--stream", "--workers", "2",
               "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].endswith("pip install 'curmoe[ray]'") and "Traceback" not in "".join(err)


def test_serial_run_stopped_part_way_resumes_on_workers(cluster, src, tmp_path, monkeypatch):
    from curmoe.compress import _stream

    cfg = curmoe.NeuronConfig(ratio=0.5, allocation="uniform")
    compress_checkpoint(src[0], tmp_path / "serial", cfg, calib_ids=src[1], progress=False)
    real, calls = _stream.write_safetensors, []

    def write(path, tensors, **kw):  # the driver's writer (serial path) stops the run at its 5th shard
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real(path, tensors, **kw)

    monkeypatch.setattr(_stream, "write_safetensors", write)
    with pytest.raises(KeyboardInterrupt):
        compress_checkpoint(src[0], tmp_path / "out", cfg, calib_ids=src[1], progress=False)
    monkeypatch.undo()
    assert len((tmp_path / "out.partial" / "manifest.jsonl").read_text().splitlines()) == 5  # header + 4 units
    compress_checkpoint(src[0], tmp_path / "out", cfg, calib_ids=src[1], workers=2, progress=False)
    _assert_same(tmp_path / "serial", tmp_path / "out")
