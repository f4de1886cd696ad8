"""Encoder training in several processes, started with ``accelerate launch``.

``train.processes: N`` (``airrep train --processes N``) trains in N processes that share
every step (see :mod:`airrep.train`). The caller writes the training inputs (splits and
config) to a run folder, starts ``accelerate launch -m airrep.launch <run folder> <out dir>``
and waits; every process reads the inputs and trains, and only the main process saves the
model to the output folder and publishes the curve (:mod:`airrep.atomic`) to the run folder,
where the caller reads it back. Tracking and registration stay with the caller, which alone
talks to MLflow.

With GPUs the processes take one each and talk over NCCL. Without, they share the CPU cores
and talk over gloo: accelerate's ``--cpu`` starts a single process (its CPU path spreads
processes only through ``mpirun``), so the processes are started with ``--multi_gpu``
(torchrun underneath) and :func:`airrep.train.start_training`'s ``Accelerator(cpu=True)``
picks gloo.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from airrep.atomic import atomic_path, write_text_atomic
from airrep.config import TrainConfig
from airrep.train import TrainingCurve, TrainingSplit, train_airrep

log = logging.getLogger(__name__)

CURVE = "curve.json"
STOP_SECONDS = 40  # torchrun gives its processes 30 s to stop after SIGTERM
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


def write_inputs(run_dir: str | Path, splits: Sequence[TrainingSplit], config: TrainConfig) -> None:
    """The training inputs as files: texts and config as JSON, subsets and labels as ``.npz``."""
    run_dir = Path(run_dir)
    texts = [{"dev_texts": s.dev_texts, "pool_texts": s.pool_texts} for s in splits]
    write_text_atomic(run_dir / "splits.json", json.dumps(texts))
    arrays = {}
    for i, split in enumerate(splits):
        arrays[f"subsets_{i}"], arrays[f"labels_{i}"] = split.subsets, split.labels
    with atomic_path(run_dir / "arrays.npz") as temp, open(temp, "wb") as handle:
        np.savez(handle, **arrays)
    write_text_atomic(run_dir / "config.json", config.model_dump_json())


def read_inputs(run_dir: str | Path) -> tuple[list[TrainingSplit], TrainConfig]:
    run_dir = Path(run_dir)
    texts = json.loads((run_dir / "splits.json").read_text())
    with np.load(run_dir / "arrays.npz") as arrays:
        splits = [TrainingSplit(t["dev_texts"], t["pool_texts"], arrays[f"subsets_{i}"], arrays[f"labels_{i}"])
                  for i, t in enumerate(texts)]
    return splits, TrainConfig.model_validate_json((run_dir / "config.json").read_text())


def launch_command(processes: int, args: Sequence[str], module: str = "airrep.launch") -> list[str]:
    """``accelerate launch`` of ``python -m module args`` in ``processes`` processes on this machine."""
    gpus = torch.cuda.device_count()
    if gpus and processes > gpus:
        raise ValueError(f"train.processes ({processes}) is more than the {gpus} GPUs here: one process per GPU")
    threads = 1 if gpus else max(1, (os.cpu_count() or 1) // processes)  # CPU: the cores shared out
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", "0", "--num_cpu_threads_per_process", str(threads), "-m", module, *args]


def run_launched(command: Sequence[str], timeout: float | None = None) -> None:
    """Run a launch command to its end. On a timeout or an interrupt the launcher gets
    SIGTERM, on which torchrun stops its processes (it waits up to 30 s for them), and
    SIGKILL if it is still there after that. The launcher stays in the caller's process
    group, so a stop signal sent to the group reaches it too."""
    process = subprocess.Popen(command)
    try:
        code = process.wait(timeout=timeout)
    except BaseException:
        process.terminate()
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
    if code != 0:
        raise RuntimeError(f"encoder training under accelerate launch exited with code {code}; "
                           "its processes' output is above")


def _die_with_launcher() -> None:
    """Have this process get SIGTERM when its launcher dies (Linux). torchrun starts each
    process in a session of its own, so a SIGKILL of the caller's process group reaches the
    launcher but not them: without this they would train on, unobserved, to the end."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def train_in_processes(splits: Sequence[TrainingSplit], config: TrainConfig, out_dir: str | Path,
                       timeout: float | None = None) -> TrainingCurve:
    """Train in ``config.processes`` processes; the model is saved to ``out_dir`` and its
    curve (the main process's) returned."""
    with tempfile.TemporaryDirectory(prefix="airrep-train-") as run_dir:
        write_inputs(run_dir, splits, config)
        log.info("training AirRep in %d processes (accelerate launch)", config.processes)
        run_launched(launch_command(config.processes, [run_dir, str(Path(out_dir).resolve())]), timeout)
        return TrainingCurve(**json.loads((Path(run_dir) / CURVE).read_text()))


def train_to_dir(splits: Sequence[TrainingSplit], config: TrainConfig, out_dir: str | Path) -> TrainingCurve:
    """Train AirRep and save it to ``out_dir``: here, or in ``config.processes`` processes."""
    if config.processes > 1:
        return train_in_processes(splits, config, out_dir)
    _, curve = train_airrep(splits, config, out_dir=out_dir, show_progress_bar=False)
    return curve


def main(argv: Sequence[str] | None = None) -> None:
    """One launched process: train on the run folder's inputs; the main process publishes the curve."""
    run_dir, out_dir = argv if argv is not None else sys.argv[1:]
    _die_with_launcher()
    main_process = os.environ.get("RANK", "0") == "0"  # set by the launcher; the Accelerator starts in training
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    splits, config = read_inputs(run_dir)
    _, curve = train_airrep(splits, config, out_dir=out_dir, show_progress_bar=False)
    if main_process:
        write_text_atomic(Path(run_dir) / CURVE, json.dumps(dataclasses.asdict(curve)))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
