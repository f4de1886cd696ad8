"""Encoder training shared by two CPU processes (gloo, under ``accelerate launch``) computes
what one process computes: the same gradient at the first step, the same loss curve and
validation results, the same kept model; only the main process writes.

The real MiniLM encoder (its first two blocks), 3 small splits, short texts. The launched
gradient run is this file itself (``accelerate launch tests/test_train_multiprocess.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from airrep.config import TrainConfig
from airrep.labels import normalize
from airrep.launch import launch_command, read_inputs, run_launched, train_in_processes, write_inputs
from airrep.model import AirRep
from airrep.train import TrainingSplit, draw_step, start_training, step_gradient, train_airrep

# Tolerances: the two processes encode different batches (other padding, other matmul
# shapes) and the gradient is summed in another order, so results agree to float32 rounding.
GRADIENT_RTOL = 1e-5  # max |g2 - g1| over every entry, relative to the gradient's largest |g1| (measured: 4e-7)
TENSOR_RTOL = 1e-4  # ‖g2 - g1‖ / ‖g1‖ of each tensor with a real gradient (measured: at most 1.3e-6)
LOSS_RTOL = 1e-4  # per step, relative (measured: 9e-6)
LAUNCH_TIMEOUT = 240  # seconds; a hung process group fails the test instead of the suite


def _splits(seed: int = 0, n: int = 3) -> list[TrainingSplit]:
    """Dev examples helped by pool texts that share their topic word (a real, learnable signal)."""
    rng = np.random.default_rng(seed)
    topics = ["saffron", "quasar", "lichen", "tundra"]
    filler = ["table", "green", "music", "paper", "light", "sugar", "horse", "glass", "river", "stone"]
    splits = []
    for _ in range(n):
        pool_tag, dev_tag = rng.integers(4, size=24), rng.integers(4, size=8)
        pool = [" ".join(rng.choice(filler, int(rng.integers(2, 7)))) + f" {topics[t]}" for t in pool_tag]
        dev = [f"### Instruction:\n{topics[t]} " + " ".join(rng.choice(filler, 3)) for t in dev_tag]
        subsets = np.array([rng.choice(24, 4, replace=False) for _ in range(8)])
        helped = (pool_tag[subsets][:, :, None] == dev_tag[None, None, :]).sum(1)  # (n_subsets, n_dev)
        splits.append(TrainingSplit(dev, pool, subsets, normalize(-helped + rng.normal(scale=0.1, size=helped.shape))))
    return splits


def _config(**changes) -> TrainConfig:
    base = dict(encoder="minilm", encoder_layers=2, max_tokens=24, precision="fp32", lr=1e-3, warmup_steps=0,
                reference_size=6, topk=6, encode_chunk=8, lexical=True, seed=3)
    return TrainConfig(**{**base, **changes})


def _first_step_gradient(config: TrainConfig, splits: list[TrainingSplit]) -> tuple[float, dict[str, torch.Tensor]]:
    run = start_training(splits, config)
    loss, _, _ = step_gradient(run, draw_step(run, config), config)
    return float(loss), {n: p.grad.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}


def test_two_processes_compute_the_one_process_gradient(tmp_path):
    config, splits = _config(), _splits()  # the whole 2-block encoder trained, one backward pass
    loss, one = _first_step_gradient(config, splits)
    write_inputs(tmp_path, splits, config)
    run_launched(launch_command(2, [str(tmp_path)], module="tests.test_train_multiprocess"), LAUNCH_TIMEOUT)
    two = load_file(tmp_path / "gradient.safetensors")
    assert abs(float(two.pop("loss")) - loss) <= LOSS_RTOL * abs(loss)
    assert one.keys() == two.keys() and {"lexical_weight", "log_scale", "projection.weight"} <= one.keys()
    assert len(one) > 20  # the encoder's blocks too
    largest = max(grad.abs().max().item() for grad in one.values())
    for name, grad in one.items():
        assert (two[name] - grad).abs().max().item() <= GRADIENT_RTOL * largest, name
        # The attention keys' bias has no true gradient (a shift shared by all keys leaves the
        # softmax unchanged): its entries are rounding noise, so only tensors with a real one.
        if grad.abs().max().item() >= 1e-3 * largest:
            assert (two[name] - grad).norm() <= TENSOR_RTOL * grad.norm(), name


def test_two_processes_train_like_one(tmp_path):
    """Top block trained on cached frozen states, two backward passes per step (budget 0),
    validation with early stopping decided on the main process: the same curve as one process."""
    config = _config(trainable_layers=1, activation_budget_mb=0, steps=6, eval_every=2, checkpoint_every=2,
                     validation_splits=1, patience=2, lexical_candidates=[0.0, 1.0])
    splits = _splits(seed=1)
    _, one = train_airrep(splits, config, out_dir=tmp_path / "one", show_progress_bar=False)
    two = train_in_processes(splits, config.model_copy(update={"processes": 2}), tmp_path / "two",
                             timeout=LAUNCH_TIMEOUT)
    assert (one.processes, two.processes) == (1, 2)
    assert two.step == one.step and two.eval_step == one.eval_step and two.best_step == one.best_step
    np.testing.assert_allclose(two.loss, one.loss, rtol=LOSS_RTOL)
    np.testing.assert_allclose(two.eval_lds, one.eval_lds, atol=1e-6)
    assert two.initial_lexical_weight == one.initial_lexical_weight
    assert one.loss[-1] != one.loss[0]  # the model did train
    # Only the main process wrote, what one process writes: the kept model and the checkpoint
    # before the stop (none at step 4, the stopping step), and nothing else.
    assert two.step == [1, 2, 3, 4]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert (tmp_path / "two" / "checkpoint-2" / "model.safetensors").exists()
    texts = splits[-1].dev_texts + splits[-1].pool_texts
    kept_one = AirRep.from_pretrained(tmp_path / "one", precision="fp32").encode(texts)
    kept_two = AirRep.from_pretrained(tmp_path / "two", precision="fp32").encode(texts)
    np.testing.assert_allclose(kept_two, kept_one, atol=1e-4 * np.abs(kept_one).max())


if __name__ == "__main__":  # one launched process of the gradient test
    run_dir = Path(sys.argv[1])
    splits, config = read_inputs(run_dir)
    loss, gradient = _first_step_gradient(config, splits)
    if os.environ["RANK"] == "0":
        save_file({**gradient, "loss": torch.tensor(loss)}, run_dir / "gradient.safetensors")
    torch.distributed.destroy_process_group()
