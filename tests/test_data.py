import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airrep.config import DataConfig, FieldMapping
from airrep.corpora import load_records
from airrep.data import (
    CorpusError,
    Record,
    format_example,
    format_record,
    read_jsonl,
    truncate_words,
    write_jsonl,
)

CHAT_FIELDS = FieldMapping(id="conv_id", prompt="messages.0.content", response="messages.1.content")


def chat_item(i: int) -> dict:
    return {
        "conv_id": f"c{i}",
        "messages": [
            {"role": "user", "content": f"question number {i} about topic {i % 3}"},
            {"role": "assistant", "content": f"answer number {i} with some words"},
        ],
    }


def write_lines(path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def as_line(item) -> bytes:
    return json.dumps(item).encode()


def test_jsonl_with_nested_mapping(tmp_path):
    path = tmp_path / "chats.jsonl"
    write_lines(path, [as_line(chat_item(i)) for i in range(5)])
    records, report = load_records(DataConfig(source=str(path), fields=CHAT_FIELDS))
    assert [r.id for r in records] == [f"c{i}" for i in range(5)]
    assert records[2].prompt == "question number 2 about topic 2"
    assert records[2].response == "answer number 2 with some words"
    assert all(r.group_id == r.id and r.label is None for r in records)
    assert report.records == 5 and report.bad_records == 0 and report.duplicates == 0


def test_json_array_and_data_object_give_the_same_records(tmp_path):
    items = [chat_item(i) for i in range(4)]
    array_path = tmp_path / "array.json"
    array_path.write_text(json.dumps(items))
    object_path = tmp_path / "object.json"
    object_path.write_text(json.dumps({"data": items, "meta": {"version": 1}}))
    from_array, _ = load_records(DataConfig(source=str(array_path), fields=CHAT_FIELDS))
    from_object, _ = load_records(DataConfig(source=str(object_path), fields=CHAT_FIELDS))
    assert from_array == from_object
    assert [r.response for r in from_array] == [i["messages"][1]["content"] for i in items]


def test_json_object_without_data_array_is_an_error(tmp_path):
    path = tmp_path / "object.json"
    path.write_text(json.dumps({"rows": [chat_item(0)]}))
    with pytest.raises(CorpusError, match="JSON array"):
        load_records(DataConfig(source=str(path), fields=CHAT_FIELDS))


def test_parquet_with_nested_mapping_group_and_label(tmp_path):
    items = [dict(chat_item(i), conversation=f"g{i // 2}", task=f"t{i % 2}") for i in range(6)]
    path = tmp_path / "chats.parquet"
    pq.write_table(pa.Table.from_pylist(items), path)
    fields = CHAT_FIELDS.model_copy(update={"group_id": "conversation", "label": "task"})
    records, report = load_records(DataConfig(source=str(path), fields=fields))
    assert [(r.id, r.group_id, r.label) for r in records] == [
        (f"c{i}", f"g{i // 2}", f"t{i % 2}") for i in range(6)]
    assert records[5].prompt == items[5]["messages"][0]["content"]
    assert report.records == 6


def test_integer_ids_become_strings(tmp_path):
    path = tmp_path / "ints.jsonl"
    write_lines(path, [as_line({"id": i, "prompt": f"p {i}", "response": f"r {i}"}) for i in range(3)])
    records, _ = load_records(DataConfig(source=str(path)))
    assert [r.id for r in records] == ["0", "1", "2"]


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    good = [as_line({"id": str(i), "prompt": "p", "response": f"r {i}"}) for i in range(4)]
    write_lines(path, good[:2] + [b'{"id": "x", "prompt": "p", '] + good[2:])
    with pytest.raises(CorpusError) as err:
        load_records(DataConfig(source=str(path)))
    assert f"{path}:3" in str(err.value)
    assert "not valid JSON" in str(err.value)


def test_invalid_utf8_line_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = [as_line({"id": str(i), "prompt": "p", "response": f"r {i}"}) for i in range(3)]
    bad = '{"id": "x", "prompt": "caf\u00e9", "response": "r"}'.encode("latin-1")
    write_lines(path, good + [bad])
    with pytest.raises(CorpusError) as err:
        load_records(DataConfig(source=str(path)))
    assert f"{path}:4" in str(err.value)
    assert "UTF-8" in str(err.value)


def test_missing_field_names_the_field(tmp_path):
    path = tmp_path / "missing.jsonl"
    write_lines(path, [as_line({"id": "a", "prompt": "p", "response": "r"}),
                       as_line({"id": "b", "prompt": "p"})])
    with pytest.raises(CorpusError) as err:
        load_records(DataConfig(source=str(path)))
    message = str(err.value)
    assert f"{path}:2" in message
    assert "missing field 'response'" in message and "data.fields.response" in message


def test_missing_nested_field_names_the_dotted_path(tmp_path):
    item = chat_item(0)
    item["messages"] = item["messages"][:1]  # no assistant turn: messages.1 does not exist
    path = tmp_path / "short.jsonl"
    write_lines(path, [as_line(item)])
    with pytest.raises(CorpusError, match=r"missing field 'messages\.1\.content'"):
        load_records(DataConfig(source=str(path), fields=CHAT_FIELDS))


def test_non_string_field_names_the_field_and_type(tmp_path):
    path = tmp_path / "typed.jsonl"
    write_lines(path, [as_line({"id": "a", "prompt": ["not", "text"], "response": "r"})])
    with pytest.raises(CorpusError) as err:
        load_records(DataConfig(source=str(path)))
    message = str(err.value)
    assert "field 'prompt'" in message and "must be a string" in message and "list" in message


def test_skip_bad_records_counts_and_keeps_the_good_ones(tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = [as_line({"id": str(i), "prompt": f"p {i}", "response": f"r {i}"}) for i in range(5)]
    lines = [
        good[0], b"{not json", good[1],
        '{"id": "u", "prompt": "\u00e9", "response": "r"}'.encode("latin-1"),
        good[2], as_line({"id": "m", "prompt": "p"}), good[3],
        as_line({"id": "t", "prompt": 5, "response": "r"}), as_line([1, 2]), good[4],
    ]
    write_lines(path, lines)
    records, report = load_records(DataConfig(source=str(path), skip_bad_records=True))
    assert [r.id for r in records] == ["0", "1", "2", "3", "4"]
    assert report.bad_records == 5
    assert report.records == 5
    assert "5 malformed records skipped" in report.summary()


def test_duplicate_ids_raise(tmp_path):
    path = tmp_path / "dup.jsonl"
    write_lines(path, [as_line({"id": "same", "prompt": "p1", "response": "r1"}),
                       as_line({"id": "same", "prompt": "p2", "response": "r2"})])
    with pytest.raises(CorpusError, match="duplicate record id 'same'"):
        load_records(DataConfig(source=str(path)))


def test_exact_duplicate_texts_are_dropped_and_counted(tmp_path):
    path = tmp_path / "dup_text.jsonl"
    rows = [
        {"id": "a", "prompt": "same prompt", "response": "same response"},
        {"id": "b", "prompt": "other prompt", "response": "same response"},
        {"id": "c", "prompt": "same prompt", "response": "same response"},
        # Equal after whitespace stripping, so equal as the models see them.
        {"id": "d", "prompt": "  same prompt\n", "response": "same response  "},
        {"id": "e", "prompt": "same prompt", "response": "different response"},
    ]
    write_lines(path, [as_line(r) for r in rows])
    records, report = load_records(DataConfig(source=str(path)))
    assert [r.id for r in records] == ["a", "b", "e"]
    assert report.duplicates == 2
    kept_all, report_all = load_records(DataConfig(source=str(path), drop_duplicates=False))
    assert len(kept_all) == 5 and report_all.duplicates == 0


def test_empty_prompts_and_responses_are_dropped_and_counted(tmp_path):
    path = tmp_path / "empty.jsonl"
    rows = [
        {"id": "a", "prompt": "p", "response": "r"},
        {"id": "b", "prompt": "   ", "response": "r"},
        {"id": "c", "prompt": "p", "response": "\n"},
        {"id": "d", "prompt": "p", "response": "one two three"},
    ]
    write_lines(path, [as_line(r) for r in rows])
    records, report = load_records(DataConfig(source=str(path)))
    assert [r.id for r in records] == ["a", "d"]
    assert report.empty_records == 2
    records, report = load_records(DataConfig(source=str(path), min_response_words=2))
    assert [r.id for r in records] == ["d"]
    assert report.empty_records == 3


def test_empty_corpus_raises(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(CorpusError, match="no usable records"):
        load_records(DataConfig(source=str(path)))


def test_corpus_of_only_unusable_records_raises(tmp_path):
    path = tmp_path / "unusable.jsonl"
    write_lines(path, [as_line({"id": "a", "prompt": "", "response": "r"})])
    with pytest.raises(CorpusError, match="no usable records"):
        load_records(DataConfig(source=str(path)))


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        load_records(DataConfig(source=str(tmp_path / "nope.jsonl")))
    csv = tmp_path / "data.csv"
    csv.write_text("id,prompt,response\n")
    with pytest.raises(CorpusError, match="unsupported file type"):
        load_records(DataConfig(source=str(csv)))


def test_limit_keeps_the_first_clean_records(tmp_path):
    path = tmp_path / "many.jsonl"
    write_lines(path, [as_line({"id": str(i), "prompt": f"p {i}", "response": f"r {i}"}) for i in range(10)])
    records, report = load_records(DataConfig(source=str(path), limit=4))
    assert [r.id for r in records] == ["0", "1", "2", "3"]
    assert report.records == 4


def test_format_example_prompt_is_a_prefix_of_the_full_text():
    for prompt, response in [("Say hi.", "Hi!"), ("multi\nline  prompt ", " spaced"), ("", "x"), ("p", "")]:
        full = format_example(prompt, response)
        assert full.startswith(format_example(prompt))
        assert full[len(format_example(prompt)):] == response
        assert prompt in format_example(prompt)
    record = Record(id="1", group_id="1", prompt="What is 2+2?", response="4")
    assert format_record(record) == format_example("What is 2+2?", "4")


def test_megabyte_record_loads_and_is_truncated(tmp_path):
    words = [f"w{i}" for i in range(200_000)]  # ~1.3 MB of text in one response
    response = " ".join(words)
    assert len(response) > 1_000_000
    path = tmp_path / "big.jsonl"
    write_lines(path, [as_line({"id": "big", "prompt": " ".join(words[:1000]), "response": response})])
    records, _ = load_records(DataConfig(source=str(path), max_prompt_words=10, max_response_words=20))
    (record,) = records
    assert record.prompt.split() == words[:10]
    assert record.response.split() == words[:20]


def test_truncate_words():
    assert truncate_words("  a b  c ", 5) == "a b  c"
    assert truncate_words("a b c d", 2) == "a b"
    assert truncate_words("", 3) == ""


def test_write_and_read_jsonl_round_trip(tmp_path):
    records = [
        Record(id="x_0", group_id="x", prompt="p\u00e9 \u4e2d", response="r\n2", label="task"),
        Record(id="y", group_id="y", prompt="p", response="r"),
    ]
    write_jsonl(records, tmp_path / "out.jsonl")
    assert read_jsonl(tmp_path / "out.jsonl") == records


@pytest.mark.parametrize(("n_prompt", "n_response", "budget", "kept"), [
    (10, 10, 40, (10, 10)),  # fits: nothing cut
    (100, 10, 40, (30, 10)),  # a short response stays whole, the prompt takes the rest
    (100, 100, 40, (10, 30)),  # both long: the prompt keeps a quarter
    (3, 100, 40, (3, 37)),  # a short prompt stays whole, the response takes the rest
    (0, 100, 40, (0, 40)),
])
def test_truncate_pair_cuts_the_prompt_first(n_prompt, n_response, budget, kept):
    from airrep.data import truncate_pair

    assert truncate_pair(n_prompt, n_response, budget) == kept


def test_split_formatted_inverts_format_example():
    from airrep.data import split_formatted

    text = format_example("a prompt\n\n### Response:\nthat quotes the marker", "the answer")
    assert split_formatted(text) == (format_example("a prompt\n\n### Response:\nthat quotes the marker"), "the answer")
    assert split_formatted("plain text") == ("", "plain text")
