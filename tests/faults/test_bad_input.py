"""Bad input through the command line, on the real stack (Prefect's local API, artifacts on
a moto S3 server over HTTP).

Each scenario runs the command line (``flows.cli.main``: ``airrep labels``, and ``run``/``train``
for some configuration cases) on a corpus or configuration with exactly one thing wrong and
checks what the user sees and what the store holds:

- the run stops with a clear error that names the file and line of the bad record (or the
  dotted config field) and says what to do;
- it is reported as a one-line ``airrep: ...`` message on stderr with exit code 2, the way a
  configuration error is, not as an uncaught exception;
- nothing was published: the store lists no key, and the bucket holds no raw object at all
  (no payload without a marker either).

The one good-but-unusual input, a 1 MB record, must go through: it is cut to the configured
word budgets and used like any other record.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
import pytest

from airrep.config import load_config
from airrep.data import Record
from airrep.sampling import SubsetIndex
from flows.cli import main
from flows.label_generation import label_generation
from infra.storage import open_store
from tasks.common import records_by_id

CONFIG = "configs/tiny.yaml"
BAD_LINE = 7  # 1-based line of the corpus that a record scenario breaks

# Importing a flow imports prefect.main, which configures Prefect's logging and binds its console
# handler to the sys.stderr of that moment. Done here, at collection, that is pytest's session-long
# capture; done inside a test, it would be that test's capfd stream, closed when the test ends, and
# every later Prefect log line would fail (recursively) to write to it.
assert label_generation.name == "label-generation"

# Words that tell the user what to do about an error (fix it, set a field, use something else...).
REMEDY = re.compile(r"\b(set|use|fix|remove|rename|re-?encode|convert|lower|raise|add|check|point|must|make)\b"
                    r"|data\.\w+", re.IGNORECASE)


# --- helpers ------------------------------------------------------------------------------


def item(record: Record) -> dict[str, Any]:
    return {"id": record.id, "prompt": record.prompt, "response": record.response}


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def line_of(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def needed_records(overrides: list[str]) -> int:
    """How many records (one per group) the sampling settings take from the corpus."""
    sampling = load_config(CONFIG, overrides).sampling
    bench = sampling.benchmark
    return bench.n_test + bench.n_pool + sampling.pretrain_size + sampling.n_dev + sampling.n_pool


def run_labels(overrides: list[str]) -> tuple[int | None, BaseException | None]:
    """``airrep labels -c configs/tiny.yaml --set ...``: the exit code, or what escaped ``main``."""
    args = ["labels", "-c", CONFIG]
    for override in overrides:
        args += ["--set", override]
    try:
        return main(args), None
    except Exception as exc:  # an exception escaping main is itself a finding
        return None, exc


def published(storage_uri: str) -> tuple[list[str], list[str]]:
    """Published keys (by marker) and every raw object in the whole bucket."""
    bucket = urlparse(storage_uri).netloc
    listing = boto3.client("s3").list_objects_v2(Bucket=bucket)
    return open_store(storage_uri).list(""), [o["Key"] for o in listing.get("Contents", [])]


def assert_nothing_published(storage_uri: str) -> None:
    keys, raw = published(storage_uri)
    assert keys == [], f"published despite the bad input: {keys}"
    assert raw == [], f"objects written to the bucket despite the bad input: {raw}"


def assert_refused_cleanly(rc: int | None, raised: BaseException | None, stderr: str, storage_uri: str,
                           must_name: list[str], says: str) -> None:
    """Nothing published; the error names ``must_name`` and matches ``says`` and a remedy; the CLI
    turned it into ``airrep: <message>`` on stderr and exit code 2."""
    assert_nothing_published(storage_uri)
    cli_lines = [line for line in stderr.splitlines() if line.startswith("airrep: ")]
    message = str(raised) if raised is not None else "\n".join(cli_lines)
    for name in must_name:
        assert name in message, f"the error does not name {name!r}: {message}"
    assert re.search(says, message), f"the error does not say {says!r}: {message}"
    assert REMEDY.search(message), f"the error does not say what to do: {message}"
    assert raised is None, (
        f"{type(raised).__name__} escaped flows.cli.main as an uncaught exception (the user gets a "
        f"traceback, not a one-line error and an exit code): {raised}")
    assert rc == 2, f"exit code {rc}, expected 2 (bad input, like a configuration error)"
    assert any(must_name[0] in line for line in cli_lines), \
        f"no 'airrep: ...' line naming {must_name[0]!r} on stderr:\n{stderr[-2000:]}"


@pytest.fixture
def overrides(micro: list[str], s3_env: str, tmp_path: Path) -> list[str]:
    """The micro pipeline on the test's S3 bucket, working in ``tmp_path``."""
    return micro + [f"work_dir={tmp_path / 'work'}", f"storage.uri={s3_env}"]


@pytest.fixture
def good_items(sharegpt_records: list[Record], overrides: list[str]) -> list[dict[str, Any]]:
    """Exactly as many real ShareGPT records as the micro sampling needs."""
    count = needed_records(overrides)
    assert len(sharegpt_records) >= count
    return [item(r) for r in sharegpt_records[:count]]


# --- record-level errors --------------------------------------------------------------------


def _truncated_json(value: dict[str, Any]) -> bytes:
    return line_of(value)[:-1]  # the closing brace is missing


def _not_an_object(value: dict[str, Any]) -> bytes:
    return line_of([value["id"], value["prompt"], value["response"]])


def _missing_response(value: dict[str, Any]) -> bytes:
    return line_of({"id": value["id"], "prompt": value["prompt"]})


def _number_prompt(value: dict[str, Any]) -> bytes:
    return line_of({**value, "prompt": 42})


def _null_response(value: dict[str, Any]) -> bytes:
    return line_of({**value, "response": None})


def _invalid_utf8(value: dict[str, Any]) -> bytes:
    head, tail = line_of(value).split(b'"prompt": "', 1)
    return head + b'"prompt": "caf\xe9 \xff\xfe ' + tail  # Latin-1 bytes inside a UTF-8 file


RECORD_CASES: dict[str, tuple[Callable[[dict[str, Any]], bytes], str, list[str]]] = {
    # name: (how line BAD_LINE is broken, what the error says, what else it must name)
    "malformed-json": (_truncated_json, r"not valid JSON", []),
    "not-an-object": (_not_an_object, r"expected an object", []),
    "missing-field": (_missing_response, r"missing field 'response'", ["data.fields.response"]),
    "non-string-field": (_number_prompt, r"'prompt'.*must be a string.*int", []),
    "null-field": (_null_response, r"'response'.*must be a string.*NoneType", []),
    "invalid-utf8": (_invalid_utf8, r"not valid UTF-8", []),
}


@pytest.mark.parametrize("case", list(RECORD_CASES))
def test_bad_record_stops_the_run_naming_file_and_line(case, good_items, overrides, s3_env, tmp_path, capfd):
    """One broken line in an otherwise valid, big-enough corpus: the run stops before publishing
    anything, with an error that names ``<file>:<line>`` and what to do about it."""
    breaker, says, also_names = RECORD_CASES[case]
    lines = [line_of(v) for v in good_items]
    lines[BAD_LINE - 1] = breaker(good_items[BAD_LINE - 1])
    corpus = write_lines(tmp_path / f"{case}.jsonl", lines)

    rc, raised = run_labels(overrides + [f"data.source={corpus}"])

    assert_refused_cleanly(rc, raised, capfd.readouterr().err, s3_env,
                           must_name=[f"{corpus}:{BAD_LINE}", *also_names], says=says)


def test_duplicate_ids_name_the_id(good_items, overrides, s3_env, tmp_path, capfd):
    """Two different records with one id (ids address artifacts): the run stops and the error
    names the file and the duplicated id; nothing is published."""
    items = [dict(v) for v in good_items]
    duplicated = items[2]["id"]
    items[8]["id"] = duplicated  # line 9 repeats line 3's id, with different text
    corpus = write_lines(tmp_path / "duplicates.jsonl", [line_of(v) for v in items])

    rc, raised = run_labels(overrides + [f"data.source={corpus}"])

    assert_refused_cleanly(rc, raised, capfd.readouterr().err, s3_env,
                           must_name=[str(corpus), repr(duplicated)], says=r"duplicate record id")


def test_empty_corpus_is_refused(overrides, s3_env, tmp_path, capfd):
    """An empty file: the error names it, says there are no usable records and what to do."""
    corpus = write_lines(tmp_path / "empty.jsonl", [])

    rc, raised = run_labels(overrides + [f"data.source={corpus}"])

    assert_refused_cleanly(rc, raised, capfd.readouterr().err, s3_env,
                           must_name=[str(corpus)], says=r"no usable records")


def test_corpus_smaller_than_the_sampling_sizes(good_items, overrides, s3_env, tmp_path, capfd):
    """One record short of what the sampling sizes need: the error says how many records there
    are and to lower the sampling sizes or use a larger corpus; nothing is published."""
    corpus = write_lines(tmp_path / "small.jsonl", [line_of(v) for v in good_items[:-1]])

    rc, raised = run_labels(overrides + [f"data.source={corpus}"])

    assert_refused_cleanly(rc, raised, capfd.readouterr().err, s3_env,
                           must_name=[f"{len(good_items) - 1} records"],
                           says=r"lower the sampling sizes or use a larger corpus")


# --- a 1 MB record is fine ------------------------------------------------------------------

SMALL_SAMPLING = [
    "sampling.n_splits=1", "sampling.n_dev=8", "sampling.n_pool=16", "sampling.n_subsets=2",
    "sampling.subset_size=8", "sampling.pretrain_size=0", "sampling.benchmark.n_test=4",
    "sampling.benchmark.n_pool=8", "sampling.benchmark.n_subsets=2", "sampling.benchmark.subset_size=4",
]


def test_megabyte_record_is_truncated_and_used(sharegpt_records, tiny_random_lm, overrides, s3_env, tmp_path,
                                               capfd):
    """A 1 MB record (a 0.4 MB prompt, a 1 MB response) in a corpus exactly as large as the
    sampling needs: labels are generated, the record is in the sampled index, and the text the
    fine-tunes see is cut to ``data.max_prompt_words``/``data.max_response_words``."""
    run_overrides = overrides + SMALL_SAMPLING + [f"base_llm.name={tiny_random_lm.path}"]
    count = needed_records(run_overrides)
    prompt_words = [f"p{i}" for i in range(60_000)]
    response_words = [f"w{i}" for i in range(150_000)]
    big = {"id": "big-record", "prompt": " ".join(prompt_words), "response": " ".join(response_words)}
    items = [item(r) for r in sharegpt_records[: count - 1]] + [big]
    corpus = write_lines(tmp_path / "big.jsonl", [line_of(v) for v in items])
    assert len(line_of(big)) > 1_000_000
    run_overrides.append(f"data.source={corpus}")

    rc, raised = run_labels(run_overrides)

    assert raised is None and rc == 0, f"exit code {rc}, raised {raised!r}\n{capfd.readouterr().err[-3000:]}"
    store = open_store(s3_env)
    (index_key,) = store.list("index/")
    index = SubsetIndex.from_json(store.get_bytes(index_key).decode())
    used = set(index.benchmark.test) | set(index.benchmark.pool)
    for split in index.splits:
        used |= set(split.dev) | set(split.pool)
    assert used == {v["id"] for v in items}, "every record, the big one included, is sampled"
    assert len(store.list("labels/")) == 1 and store.list("finetunes/")

    config = load_config(CONFIG, run_overrides)
    seen = records_by_id(config)["big-record"]
    assert seen.prompt.split() == prompt_words[: config.data.max_prompt_words]
    assert seen.response.split() == response_words[: config.data.max_response_words]


# --- invalid configuration ------------------------------------------------------------------

CONFIG_CASES = [
    # (command, --set overrides, AIRREP__ environment, field the error names, what it says)
    ("labels", ["sampling.n_dev=-5"], {}, "sampling.n_dev", r"greater than 0 \(got -5\)"),
    ("labels", ["sampling.benchmark.n_pool=0"], {}, "sampling.benchmark.n_pool", r"greater than 0"),
    ("labels", ["data.max_response_words=-1"], {}, "data.max_response_words", r"greater than 0"),
    ("run", ["train.t_min=6", "train.t_max=5"], {}, "train.t_min", r"must not exceed train\.t_max"),
    ("labels", ["sampling.subset_size=500"], {}, "sampling.subset_size", r"lower subset_size or raise n_pool"),
    ("labels", ["sampling.n_devs=3"], {}, "sampling.n_devs", r"unknown key \(check its spelling"),
    ("train", ["trian.steps=3"], {}, "trian", r"unknown key"),
    ("labels", ["finetune.precision=fp8"], {}, "finetune.precision", r"'bf16', 'fp32' or 'fp16'"),
    ("labels", ["finetune.lr=fast"], {}, "finetune.lr", r"valid number"),
    ("labels", ["sampling.n_dev"], {}, "sampling.n_dev", r"must look like section\.key=value"),
    ("labels", [], {"AIRREP__FINETUNE__EPOCHS": "0"}, "finetune.epochs", r"greater than 0 \(got 0\)"),
]


@pytest.mark.parametrize(("command", "sets", "env", "field", "says"), CONFIG_CASES,
                         ids=[f"{c[0]}:{(c[1] or list(c[2]))[0]}" for c in CONFIG_CASES])
def test_invalid_config_exits_2_naming_the_field(command, sets, env, field, says, micro, s3_env, tmp_path,
                                                 monkeypatch, capfd):
    """An invalid value, an impossible combination or a misspelt key, from ``--set`` or the
    environment: exit code 2, one ``airrep:`` error naming the dotted field and the rule,
    before any flow starts, so nothing is published."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = [command, "-c", CONFIG]
    for override in micro + [f"work_dir={tmp_path / 'work'}", f"storage.uri={s3_env}", *sets]:
        args += ["--set", override]

    rc = main(args)

    err = capfd.readouterr().err
    assert rc == 2, err
    assert any(line.startswith("airrep: ") for line in err.splitlines()), err
    assert field in err and re.search(says, err), err
    assert "Traceback" not in err
    assert_nothing_published(s3_env)
    assert not (tmp_path / "work").exists(), "no flow ran: nothing was written to the work directory"


def test_attribute_before_any_champion_says_to_run_the_pipeline_first(micro, tmp_path, capfd):
    args = ["attribute", "-c", CONFIG, "--prompt", "hello", "--response", "there",
            "--set", f"work_dir={tmp_path / 'work'}"]
    assert main(args) == 2
    err = capfd.readouterr().err
    assert re.search(r"^airrep: no champion of \S+ in sqlite:///\S+ yet: run `airrep run -c configs/tiny.yaml` "
                     r"first, or pass --model$", err, re.M), err
    assert "Traceback" not in err


@pytest.mark.parametrize(("args", "says"), [
    (["--prompt", "p"], "1 --prompt but 0 --response: give them in pairs"),
    ([], "nothing to attribute: give texts, or --prompt and --response"),
])
def test_attribute_needs_texts_or_prompt_response_pairs(args, says, capfd):
    assert main(["attribute", "-c", CONFIG, *args]) == 2
    assert f"airrep: {says}" in capfd.readouterr().err
