import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from occ_fast.data import DatasetRowError, load_prompt_file

DAPO_ROW = {
    "data_source": "math_dapo",
    "prompt": [{"role": "user", "content": "Solve 1+1."}],
    "reward_model": {"ground_truth": "2", "style": "rule"},
}


def _jsonl(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_dapo_layout_jsonl(tmp_path):
    path = _jsonl(tmp_path, [DAPO_ROW, "", {"prompt": "What is 2+2?", "reward_model": {"ground_truth": 4}}])
    ds = load_prompt_file(path)
    assert len(ds) == 2 and ds.num_skipped == 0
    assert ds[0].prompt == [{"role": "user", "content": "Solve 1+1."}]
    assert ds[1].prompt == "What is 2+2?" and ds[1].answer == "4"
    assert ds[1].source == f"{path}, row 3"


def test_configurable_fields_and_flat_dotted_key(tmp_path):
    path = _jsonl(tmp_path, [{"messages": [{"role": "user", "content": "q"}], "answer.final": "7"}])
    ds = load_prompt_file(path, prompt_field="messages", answer_field="answer.final")
    assert ds[0].answer == "7"


@pytest.mark.parametrize(
    "bad_row,field,problem",
    [
        ({"prompt": "q"}, "reward_model.ground_truth", "missing"),
        ({"prompt": "", "reward_model": {"ground_truth": "1"}}, "prompt", "empty prompt"),
        ({"prompt": [{"role": "user"}], "reward_model": {"ground_truth": "1"}}, "prompt", "message 0"),
        ({"prompt": "q", "reward_model": {"ground_truth": ["1", "2"]}}, "reward_model.ground_truth", "list"),
        ("{not json", None, "invalid JSON"),
        ("[1, 2]", None, "expected a JSON object"),
    ],
)
def test_malformed_jsonl_row_names_file_row_field(tmp_path, bad_row, field, problem):
    path = _jsonl(tmp_path, [DAPO_ROW, bad_row, DAPO_ROW])
    with pytest.raises(DatasetRowError, match=problem) as info:
        load_prompt_file(path)
    assert (info.value.path, info.value.row, info.value.field) == (path, 2, field)
    assert f"{path}, row 2" in str(info.value)
    ds = load_prompt_file(path, on_error="skip")
    assert len(ds) == 2 and ds.num_skipped == 1 and "row 2" in ds.skipped[0]


def test_parquet_rows_and_malformed_row(tmp_path):
    rows = [DAPO_ROW, {**DAPO_ROW, "reward_model": {"ground_truth": None, "style": "rule"}}, DAPO_ROW]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DatasetRowError, match=r"train\.parquet, row 2, field 'reward_model.ground_truth'"):
        load_prompt_file(path)
    ds = load_prompt_file(path, on_error="skip")
    assert [r.answer for r in ds.records] == ["2", "2"] and ds.num_skipped == 1


def test_file_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_prompt_file(tmp_path / "missing.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        load_prompt_file(tmp_path / "data.csv")
    path = _jsonl(tmp_path, [{"prompt": "q"}])
    with pytest.raises(ValueError, match="no usable rows"):
        load_prompt_file(path, on_error="skip")
