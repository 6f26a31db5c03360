"""Every shipped YAML loads through the one config loader (common/configfile.py), and an unknown key is refused
the same way by every config: named, with the known ones listed. (Every field's type and range:
tests/test_config_validation.py.)"""

from __future__ import annotations

import pytest

from common.configfile import load_config, read_mapping
from evaluation.evaluate import EvalConfig
from evaluation.promotion import DEFAULT_POLICY, PromotionPolicy
from flows.demo import POLICY as DEMO_POLICY
from deploy.config import ExportConfig
from ingest.curate.rules import CurateConfig
from ingest.intake.job import IngestConfig
from training.config import DEFAULTS_YAML, TrainConfig


def test_the_shipped_yaml_states_the_dataclass_defaults():
    assert TrainConfig.load(DEFAULTS_YAML) == TrainConfig()
    assert PromotionPolicy.load(DEFAULT_POLICY) == PromotionPolicy()
    assert PromotionPolicy.load(DEMO_POLICY) != PromotionPolicy()  # the demo's looser caps load too
    with pytest.raises(ValueError, match="micro_batch_size must be >= 2, got 1"):
        TrainConfig(micro_batch_size=1)


@pytest.mark.parametrize("cls,what", [(TrainConfig, "training config"), (PromotionPolicy, "promotion policy"),
                                      (CurateConfig, "curate config"), (EvalConfig, "eval config"),
                                      (IngestConfig, "ingest config"), (ExportConfig, "export config")])
def test_an_unknown_key_is_refused_the_same_way_everywhere(tmp_path, cls, what):
    bad = tmp_path / "bad.yaml"
    bad.write_text("betta: 0.2\n")
    with pytest.raises(ValueError, match=rf"^{bad}: unknown {what} field\(s\) \['betta'\]; known: \["):
        load_config(cls, bad, what)


def test_a_file_that_is_not_a_mapping_names_itself(tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- beta\n- 0.1\n")
    with pytest.raises(ValueError, match="list.yaml must hold a mapping of config fields, not a list"):
        read_mapping(listed)
    assert read_mapping(_empty(tmp_path)) == {}


def _empty(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    return path


def test_prefect_yaml_parameters_are_a_thumbs_yaml():
    """The work-pool deployments' parameters (prefect.yaml) are thumbs.yaml sections, checked as the flow checks
    them; the `{{ $VAR }}` placeholders Prefect fills at deploy time stand in as plain strings."""
    import re

    import yaml

    from conftest import ROOT
    from flows.config import ThumbsConfig

    text = re.sub(r"\{\{ *\$(\w+) *\}\}", r"<\1>", (ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in yaml.safe_load(text)["deployments"]}
    for name in ("nightly", "adhoc"):
        config = ThumbsConfig.model_validate(deployments[name]["parameters"])
        assert config.run.base_model == "<THUMBS_BASE_MODEL>" and config.run.sources == ["<THUMBS_SOURCES>"]
    assert deployments["train"]["entrypoint"] == "flows/nightly.py:train_flow"
