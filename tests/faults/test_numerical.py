"""A fine-tune whose loss turns NaN/inf fails its task with a message that says what to do;
the task is retried, and no loss or label from it is ever published."""

from __future__ import annotations

import logging
import urllib.parse

import pytest

from airrep.config import load_config
from airrep.finetune import DivergedError
from flows.label_generation import label_generation


def test_diverging_finetune_fails_and_publishes_nothing(micro_overrides, s3_env, raw_bucket, log_messages):
    overrides = micro_overrides + ["finetune.lr=1e30", "finetune.epochs=1", "orchestration.task_retries=1",
                                   "sampling.n_subsets=2"]
    task_log = log_messages("prefect.task_runs", logging.INFO)
    with pytest.raises(DivergedError) as failure:
        label_generation(load_config("configs/tiny.yaml", overrides))
    message = str(failure.value)
    assert ("nan" in message.lower() or "inf" in message.lower()) and "lower finetune.lr" in message
    retried = [m for m in task_log if "DivergedError" in m and "Retry 1/1" in m]
    assert retried, "the failed fine-tune was not retried"

    prefix = urllib.parse.urlparse(s3_env).path.strip("/") + "/"
    published = [k[len(prefix):] for k in raw_bucket(s3_env) if k.startswith(prefix)]
    assert not any(k.startswith(("finetunes/", "labels/")) for k in published), published
