import hashlib
import http.server
import io
import json
import re
import tarfile
import threading
from collections.abc import Iterator

import pytest

from airrep import corpora
from airrep.config import DataConfig
from airrep.corpora import (
    BIGBENCH_VERSION,
    iter_json_array,
    load_natural_instructions,
    load_records,
    natural_instruction_records,
)
from airrep.data import CorpusError, LoadReport, format_example, format_record


def sharegpt_like(n: int) -> list[dict]:
    return [
        {"id": f"conv{i}_{i % 2}", "conversations": [
            {"from": "human", "value": f"question {i} with [brackets] and \"quotes\""},
            {"from": "gpt", "value": f"answer {i}\nover two lines"},
        ]}
        for i in range(n)
    ]


# --- iter_json_array ---------------------------------------------------------------------


@pytest.mark.parametrize("indent", [None, 2])
def test_cut_off_array_recovers_every_complete_record(indent):
    items = sharegpt_like(5)
    text = json.dumps(items, indent=indent)
    fourth = text.index('"conv3_1"')
    cut = text[: fourth + 30]  # ends inside the 4th record's first turn
    got, tail = iter_json_array(cut, "sharegpt.json")
    assert [item for _, item in got] == items[:3]
    # The tail is exactly the unparsed, truncated 4th record.
    assert cut[tail:].lstrip().startswith("{")
    assert '"conv3_1"' in cut[tail:] and '"conv2_0"' not in cut[tail:]
    for offset, item in got:
        assert json.JSONDecoder().raw_decode(cut, offset)[0] == item


def test_cut_between_records_leaves_an_empty_tail():
    items = sharegpt_like(3)
    text = json.dumps(items)
    cut = text[: text.index('{"id": "conv2_0"')]  # ends with ", "
    got, tail = iter_json_array(cut, "w")
    assert [item for _, item in got] == items[:2]
    assert cut[tail:].strip(" ,") == ""


def test_closed_array_returns_all_records_and_the_end():
    items = sharegpt_like(4)
    text = json.dumps(items, indent=1) + "\n"
    got, tail = iter_json_array(text, "w")
    assert [item for _, item in got] == items
    assert text[tail:].strip() == ""
    assert iter_json_array("[]", "w") == ([], 2)


def test_damaged_record_in_a_closed_array_is_an_error():
    text = json.dumps(sharegpt_like(4), indent=2)
    damaged = text.replace('"id": "conv2_0",', '"id": "conv2_0"', 1)  # a missing comma
    line = damaged[: damaged.index('"conv2_0"')].count("\n") + 1
    with pytest.raises(CorpusError) as err:
        iter_json_array(damaged, "data.json")
    assert "record 2" in str(err.value)
    assert f"data.json:{line}" in str(err.value) or f"data.json:{line + 1}" in str(err.value)


def test_not_an_array():
    with pytest.raises(CorpusError, match="expected a JSON array"):
        iter_json_array('{"id": 1}', "w")


def test_cut_right_after_a_nested_list_is_truncation_not_damage():
    text = json.dumps(sharegpt_like(3))
    cut = text[: text.rindex("]}") + 1]  # the last record's "conversations": [...] is complete
    got, tail = iter_json_array(cut, "w")
    assert len(got) == 2 and cut[tail:].startswith("{")


# --- the real ShareGPT loader ---------------------------------------------------------------


def test_sharegpt_records_are_complete_and_grouped_by_conversation(sharegpt_records):
    assert len(sharegpt_records) > 10_000
    assert len({r.id for r in sharegpt_records}) == len(sharegpt_records)
    assert all(r.prompt.strip() and r.response.strip() for r in sharegpt_records)
    chunked = [r for r in sharegpt_records if re.fullmatch(r".+_\d+", r.id)]
    assert chunked, "ShareGPT stores long chats as ID_0, ID_1, ..."
    later_chunks = [r for r in chunked if not r.id.endswith("_0")]
    assert later_chunks
    for record in chunked:
        base, _, part = record.id.rpartition("_")
        assert part.isdigit() and record.group_id == base
    # Some conversations contribute several records, all under one group id.
    by_group: dict[str, list[str]] = {}
    for record in sharegpt_records:
        by_group.setdefault(record.group_id, []).append(record.id)
    assert any(len(ids) > 1 for ids in by_group.values())
    assert all(r.group_id == r.id for r in sharegpt_records if not re.fullmatch(r".+_\d+", r.id))
    # The default word budgets are respected.
    config = DataConfig()
    assert max(len(r.prompt.split()) for r in sharegpt_records) <= config.max_prompt_words
    assert max(len(r.response.split()) for r in sharegpt_records) <= config.max_response_words


def test_sharegpt_fresh_parse_reports_the_truncated_tail(sharegpt_records, tmp_path, monkeypatch):
    """Parse the packaged file from scratch (empty cache) and compare with the cached records."""
    monkeypatch.setenv("AIRREP_CACHE", str(tmp_path))
    records, report = load_records(DataConfig(source="sharegpt"))
    assert report.truncated_records == 1
    assert report.truncated_bytes > 0
    assert report.bad_records == 0
    assert "truncated record" in report.summary()
    assert records == sharegpt_records
    # The tail is what follows the last complete record of the packaged file.
    raw = corpora.sharegpt_path().read_bytes()
    assert report.truncated_bytes < 1_000_000 < len(raw)
    # The second load reads the cache and reports the same.
    again, cached_report = load_records(DataConfig(source="sharegpt"))
    assert again == records
    assert cached_report == report


# --- Natural Instructions -------------------------------------------------------------------


def ni_payload(name: str, examples: list[tuple[str, object]]) -> dict:
    return {
        "name": name,
        "description": "Definition: a long definition that should not reach the prompt.",
        "task_prefix": "Definition: a long definition that should not reach the prompt. "
                       "Things to Avoid: nothing.  Prompt: Answer the question.",
        "examples": [{"input": i, "target": t} for i, t in examples],
    }


def test_natural_instruction_records_from_a_bigbench_payload():
    payload = ni_payload("subtask007_demo", [
        ("Passage: A. Question: one?", ["first answer", "alt"]),
        ("Passage: B. Question: two?", ["second answer"]),
        ("Passage: A. Question: one?", ["another target for the same input"]),
        ("Passage: C.", "plain string target"),
    ])
    records = natural_instruction_records("subtask007_demo", payload, "task.json")
    assert [r.id for r in records] == [f"subtask007_demo:{i}" for i in range(4)]
    assert all(r.label == "subtask007_demo" for r in records)
    assert all(r.prompt.startswith("Answer the question.\n") for r in records)
    assert all("Definition" not in r.prompt for r in records)
    assert records[1].prompt == "Answer the question.\nPassage: B. Question: two?"
    assert [r.response for r in records] == [
        "first answer", "second answer", "another target for the same input", "plain string target"]
    assert records[0].group_id == records[2].group_id
    assert len({records[0].group_id, records[1].group_id, records[3].group_id}) == 3
    assert all(r.group_id.startswith("subtask007_demo:") for r in records)


def test_natural_instruction_records_without_prompt_line_use_the_input():
    payload = ni_payload("subtask008_x", [("just the input", ["t"])])
    payload["task_prefix"] = "Definition: no prompt line here."
    (record,) = natural_instruction_records("subtask008_x", payload, "w")
    assert record.prompt == "just the input"


@pytest.mark.parametrize("examples, message", [
    ([{"input": 3, "target": ["t"]}], "example 0 has no string 'input'"),
    ([{"input": "x", "target": []}], "example 0 has no string 'target'"),
    ([{"input": "x", "target": ["t"]}, {"input": "y"}], "example 1 has no string 'target'"),
])
def test_natural_instruction_records_reject_bad_examples(examples, message):
    with pytest.raises(CorpusError, match=message):
        natural_instruction_records("t", {"task_prefix": "", "examples": examples}, "w")


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_bigbench_archive(cache_root, tasks: dict[str, bytes]) -> None:
    downloads = cache_root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    root = f"bigbench-{BIGBENCH_VERSION}/bigbench/benchmark_tasks"
    with tarfile.open(downloads / f"bigbench-{BIGBENCH_VERSION}.tar.gz", "w:gz") as tar:
        _add_member(tar, f"{root}/natural_instructions/README.md", b"# not a task")
        other = json.dumps(ni_payload("other", [("a", ["b"])])).encode()
        _add_member(tar, f"{root}/other_task/task.json", other)
        for task, data in tasks.items():
            _add_member(tar, f"{root}/natural_instructions/{task}/task.json", data)


def test_load_natural_instructions_from_the_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRREP_CACHE", str(tmp_path))
    # The archive is present, so nothing may be downloaded.
    monkeypatch.setattr(corpora.urllib.request, "urlopen", lambda *a, **k: pytest.fail("tried to download"))
    examples_2 = [(f"input two {i}", [f"target {i}"]) for i in range(12)]  # index 10, 11 sort after 9
    examples_1 = [("shared input", ["a"]), ("shared input", ["b"]), ("other input", ["c"])]
    make_bigbench_archive(tmp_path, {
        "subtask002_y": json.dumps(ni_payload("subtask002_y", examples_2)).encode(),
        "subtask001_x": json.dumps(ni_payload("subtask001_x", examples_1)).encode(),
    })
    assert corpora.bigbench_archive() == tmp_path / "downloads" / f"bigbench-{BIGBENCH_VERSION}.tar.gz"
    records, report = load_records(DataConfig(source="natural_instructions"))
    assert [r.id for r in records] == (
        [f"subtask001_x:{i}" for i in range(3)] + [f"subtask002_y:{i}" for i in range(12)])
    assert {r.label for r in records} == {"subtask001_x", "subtask002_y"}
    assert records[0].group_id == records[1].group_id != records[2].group_id
    assert records[0].prompt == "Answer the question.\nshared input"
    assert report.records == 15
    # Cached after the first read: deleting the archive changes nothing.
    (tmp_path / "downloads" / f"bigbench-{BIGBENCH_VERSION}.tar.gz").unlink()
    again, _ = load_records(DataConfig(source="natural_instructions"))
    assert again == records


def test_load_natural_instructions_bad_task_names_the_member(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRREP_CACHE", str(tmp_path))
    good = json.dumps(ni_payload("subtask001_x", [("in", ["out"])])).encode()
    make_bigbench_archive(tmp_path, {"subtask001_x": good, "subtask003_broken": b'{"examples": [1, '})
    with pytest.raises(CorpusError, match=r"subtask003_broken/task\.json"):
        load_natural_instructions(DataConfig(source="natural_instructions"), LoadReport("ni"))
    report = LoadReport("ni")
    records = load_natural_instructions(
        DataConfig(source="natural_instructions", skip_bad_records=True), report)
    assert [r.id for r in records] == ["subtask001_x:0"]
    assert report.bad_records == 1


def test_cached_natural_instructions_still_report_skipped_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRREP_CACHE", str(tmp_path))
    good = json.dumps(ni_payload("subtask001_x", [("in", ["out"])])).encode()
    make_bigbench_archive(tmp_path, {"subtask001_x": good, "subtask003_broken": b'{"examples": [1, '})
    load_records(DataConfig(source="natural_instructions", skip_bad_records=True))
    _, report = load_records(DataConfig(source="natural_instructions", skip_bad_records=True))
    assert report.bad_records == 1


# --- bigbench_archive: the download, over real HTTP on 127.0.0.1 ----------------------------


@pytest.fixture
def package_index(tmp_path, monkeypatch) -> Iterator[dict]:
    """A PEP 691 JSON index serving one bigbench sdist; ``served["sha256"]`` is what it claims."""
    body = b"sdist bytes " * 50_000
    served = {"body": body, "sha256": hashlib.sha256(body).hexdigest(), "requests": []}
    name = f"bigbench-{BIGBENCH_VERSION}.tar.gz"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            served["requests"].append(self.path)
            if self.path == "/simple/bigbench/":
                listing = {"files": [{"filename": name, "url": f"../../files/{name}", "size": len(body),
                                      "hashes": {"sha256": served["sha256"]}}]}
                payload, kind = json.dumps(listing).encode(), "application/vnd.pypi.simple.v1+json"
            elif self.path == f"/files/{name}":
                payload, kind = served["body"], "application/octet-stream"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AIRREP_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_address[1]}/simple")
    try:
        yield served
    finally:
        server.shutdown()


def test_bigbench_archive_downloads_once_and_checks_the_hash(package_index, tmp_path):
    archive = corpora.bigbench_archive()
    assert archive == tmp_path / "downloads" / f"bigbench-{BIGBENCH_VERSION}.tar.gz"
    assert archive.read_bytes() == package_index["body"]
    assert corpora.bigbench_archive() == archive  # cached: no second request
    assert len(package_index["requests"]) == 2
    assert list(archive.parent.iterdir()) == [archive]


def test_bigbench_archive_with_a_wrong_hash_publishes_nothing(package_index, tmp_path):
    package_index["sha256"] = "0" * 64
    with pytest.raises(CorpusError, match="sha256 of the download") as error:
        corpora.bigbench_archive()
    assert "place the sdist at" in str(error.value) and "data.source: sharegpt" in str(error.value)
    assert list((tmp_path / "downloads").iterdir()) == []  # neither the archive nor a partial file


def test_reserved_subtasks_are_pretraining_text_never_records(tmp_path, monkeypatch):
    """Every third subtask is held back for base-LM pretraining: no split or benchmark sees it."""
    monkeypatch.setenv("AIRREP_CACHE", str(tmp_path))
    make_bigbench_archive(tmp_path, {
        "subtask001_x": json.dumps(ni_payload("subtask001_x", [("kept input", ["kept"])])).encode(),
        "subtask003_z": json.dumps(ni_payload("subtask003_z", [("reserved input", ["reserved"])])).encode(),
    })
    records, _ = load_records(DataConfig(source="natural_instructions"))
    assert {r.label for r in records} == {"subtask001_x"}
    assert corpora.natural_instructions_reserved() == [
        format_example("Answer the question.\nreserved input", "reserved")]
    assert [corpora.is_reserved_task(f"subtask{i:03d}_t") for i in range(1, 7)] == [False, False, True] * 2


def test_sharegpt_later_turns_are_not_record_text(sharegpt_records):
    """The general pretraining text: turns after each conversation's first pair. Only a few
    stock exchanges ("hi" → "Hello! How can I help you today?") also open other conversations."""
    texts = corpora.sharegpt_later_turns()
    assert len(texts) > 40_000 and all(t.startswith("### Instruction:\n") for t in texts[:100])
    shared = {format_record(r) for r in sharegpt_records} & set(texts)
    assert len(shared) < 25 and sum(len(t) for t in shared) < 2_000
