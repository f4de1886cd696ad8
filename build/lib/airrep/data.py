"""Corpus records, the one prompt/response formatting function, and generic loaders.

Every stage (LLM fine-tuning, the AirRep encoder, TF-IDF, serving) sees an example
through :func:`format_example`, so a change of template changes all of them together.
The packaged offline corpora (ShareGPT, Natural Instructions) live in ``corpora.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from airrep.atomic import atomic_path
from airrep.config import DataConfig, FieldMapping

log = logging.getLogger(__name__)

PROMPT_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


class CorpusError(ValueError):
    """A record that cannot be used; the message names its file and line (or index)."""


@dataclass(frozen=True)
class Record:
    """One training or evaluation example.

    ``group_id`` ties together records that must never be split between a dev set and a
    train pool (e.g. the chunks ``ID_0, ID_1`` of one long ShareGPT conversation).
    """

    id: str
    group_id: str
    prompt: str
    response: str
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_example(prompt: str, response: str = "") -> str:
    """The text of an example as every model sees it.

    ``format_example(prompt)`` is exactly the prefix of ``format_example(prompt, response)``
    that precedes the response, which is how the fine-tune masks prompt tokens out of the loss.
    """
    return PROMPT_TEMPLATE.format(prompt=prompt) + response


def format_record(record: Record) -> str:
    return format_example(record.prompt, record.response)


RESPONSE_MARKER = PROMPT_TEMPLATE.split("{prompt}")[1]  # "\n\n### Response:\n"


def split_formatted(text: str) -> tuple[str, str]:
    """``(prompt part, response)`` of a :func:`format_example` text: the prompt part ends with
    the response marker. A text without the marker is all response."""
    cut = text.rfind(RESPONSE_MARKER)
    if cut < 0:
        return "", text
    cut += len(RESPONSE_MARKER)
    return text[:cut], text[cut:]


def truncate_pair(n_prompt: int, n_response: int, budget: int) -> tuple[int, int]:
    """How many prompt and response tokens to keep within ``budget``: the prompt is cut first.

    The labels are losses on response tokens, and a training example acts on the base LLM
    through its response tokens, so the response keeps everything but a reserve of up to a
    quarter of the budget for the prompt; the prompt keeps what is left. The LLM fine-tune
    and the AirRep encoder (training, encoding, serving) all truncate with this rule, each
    keeping the start of what it cuts.
    """
    reserve = min(n_prompt, budget // 4)
    keep_response = min(n_response, max(budget - reserve, 0))
    return min(n_prompt, budget - keep_response), keep_response


def truncate_words(text: str, max_words: int) -> str:
    words = text.split()
    return text.strip() if len(words) <= max_words else " ".join(words[:max_words])


@dataclass
class LoadReport:
    """What loading a corpus kept and dropped, for logs and for users' trust."""

    source: str
    records: int = 0
    bad_records: int = 0
    empty_records: int = 0
    duplicates: int = 0
    truncated_bytes: int = 0
    truncated_records: int = 0

    def summary(self) -> str:
        parts = [f"{self.records} records from {self.source}"]
        if self.bad_records:
            parts.append(f"{self.bad_records} malformed records skipped")
        if self.empty_records:
            parts.append(f"{self.empty_records} with an empty prompt or response dropped")
        if self.duplicates:
            parts.append(f"{self.duplicates} exact duplicates dropped")
        if self.truncated_bytes:
            parts.append(
                f"{self.truncated_bytes} bytes at the end of the file were a truncated record "
                f"({self.truncated_records} record lost)"
            )
        return "; ".join(parts)


def _get_dotted(item: dict[str, Any], dotted: str) -> Any:
    """``a.b.0.c``: keys into objects, integer positions into lists."""
    node: Any = item
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(dotted)
    return node


_SKIP_HINT = "or set data.skip_bad_records=true to skip (and count) bad records"


def record_from_mapping(item: Any, fields: FieldMapping, where: str) -> Record:
    """Build a :class:`Record` from one source item, or raise :class:`CorpusError` naming ``where``."""
    if not isinstance(item, dict):
        raise CorpusError(f"{where}: expected an object with fields, got {type(item).__name__}; "
                          f"make each record a JSON object, {_SKIP_HINT}")
    values: dict[str, Any] = {}
    for name in ("id", "prompt", "response"):
        source_field = getattr(fields, name)
        try:
            value = _get_dotted(item, source_field)
        except KeyError:
            raise CorpusError(
                f"{where}: missing field {source_field!r} (mapped to {name}); "
                f"set data.fields.{name} to the field that holds it"
            ) from None
        if name == "id" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise CorpusError(
                f"{where}: field {source_field!r} (mapped to {name}) must be a string, "
                f"got {type(value).__name__}"
            )
        values[name] = value
    for name in ("group_id", "label"):
        source_field = getattr(fields, name)
        if source_field is None:
            continue
        try:
            value = _get_dotted(item, source_field)
        except KeyError:
            raise CorpusError(f"{where}: missing field {source_field!r} (mapped to {name})") from None
        if value is not None and not isinstance(value, (str, int)):
            raise CorpusError(f"{where}: field {source_field!r} (mapped to {name}) must be a string")
        values[name] = None if value is None else str(value)
    return Record(
        id=values["id"],
        group_id=values.get("group_id") or values["id"],
        prompt=values["prompt"],
        response=values["response"],
        label=values.get("label"),
    )


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            where = f"{path}:{line_no}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield where, CorpusError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                                         f"re-encode the file as UTF-8, {_SKIP_HINT}")
                continue
            if not text.strip():
                continue
            try:
                yield where, json.loads(text)
            except json.JSONDecodeError as exc:
                yield where, CorpusError(f"{where}: not valid JSON ({exc.msg}, column {exc.colno}); "
                                         f"fix or remove the line, {_SKIP_HINT}")


def _iter_json(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        payload = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    if isinstance(payload, dict) and isinstance(payload.get("data"), list):
        payload = payload["data"]
    if not isinstance(payload, list):
        raise CorpusError(f"{path}: expected a JSON array of records (or an object with a 'data' array)")
    for index, item in enumerate(payload):
        yield f"{path}: record {index}", item


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for index, item in enumerate(table.to_pylist()):
        yield f"{path}: row {index}", item


def _iter_hub(dataset_id: str, split: str) -> Iterator[tuple[str, Any]]:
    from airrep.extras import require

    datasets = require("datasets", "hub", f"a corpus by hub id ({dataset_id})")

    dataset = datasets.load_dataset(dataset_id, split=split)
    for index, item in enumerate(dataset):
        yield f"{dataset_id}[{split}]: row {index}", item


def iter_source_items(source: str, split: str = "train") -> Iterator[tuple[str, Any]]:
    """Yield ``(where, item)`` for every item of a file or hub dataset.

    ``item`` is a :class:`CorpusError` where the raw bytes could not be parsed, so that the
    caller decides whether to raise or skip and count.
    """
    path = Path(source).expanduser()
    if path.exists():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            return _iter_jsonl(path)
        if suffix == ".json":
            return _iter_json(path)
        if suffix == ".parquet":
            return _iter_parquet(path)
        raise CorpusError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json or .parquet")
    if source.endswith((".jsonl", ".json", ".parquet")) or source.startswith((".", "/", "~")):
        raise CorpusError(f"corpus file {source} does not exist")
    return _iter_hub(source, split)


def clean_records(records: Iterable[Record], config: DataConfig, report: LoadReport) -> list[Record]:
    """Truncate to the configured word budgets, drop empty and duplicate examples.

    Duplicate ids are an error (ids address artifacts); duplicate texts are dropped, since
    the same text in a dev set and a train pool would leak the label.
    """
    seen_ids: set[str] = set()
    seen_texts: set[str] = set()
    kept: list[Record] = []
    for record in records:
        if record.id in seen_ids:
            raise CorpusError(f"{report.source}: duplicate record id {record.id!r}; ids must be unique")
        seen_ids.add(record.id)
        prompt = truncate_words(record.prompt, config.max_prompt_words)
        response = truncate_words(record.response, config.max_response_words)
        if not prompt or len(response.split()) < config.min_response_words:
            report.empty_records += 1
            continue
        if config.drop_duplicates:
            key = hashlib.sha1(f"{prompt}\x00{response}".encode()).hexdigest()
            if key in seen_texts:
                report.duplicates += 1
                continue
            seen_texts.add(key)
        kept.append(Record(record.id, record.group_id, prompt, response, record.label))
    report.records = len(kept)
    return kept



def map_items(
    items: Iterable[tuple[str, Any]], config: DataConfig, report: LoadReport
) -> Iterator[Record]:
    for where, item in items:
        try:
            if isinstance(item, CorpusError):
                raise item
            yield record_from_mapping(item, config.fields, where)
        except CorpusError as exc:
            if not config.skip_bad_records:
                raise
            report.bad_records += 1
            log.warning("skipping bad record: %s", exc)


def write_jsonl(records: Iterable[Record], path: str | Path) -> None:
    """Publish ``records`` as JSON lines, atomically (concurrent loaders may write one cache),
    streamed line by line: a converted corpus is hundreds of MB."""
    with atomic_path(path) as temp, open(temp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path) -> list[Record]:
    """Read records written by :func:`write_jsonl` (the project's own cache format)."""
    fields = FieldMapping(group_id="group_id", label="label")
    records = []
    for where, item in _iter_jsonl(Path(path)):
        if isinstance(item, CorpusError):
            raise item
        records.append(record_from_mapping(item, fields, where))
    return records


def corpus_fingerprint(records: Iterable[Record]) -> str:
    """A hash of the cleaned records' contents (ids and texts), for cache keys and tags."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record.to_dict(), sort_keys=True).encode())
    return digest.hexdigest()[:16]
