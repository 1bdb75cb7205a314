"""Variant configs: overrides land where they should, and nowhere else."""
from pathlib import Path

import pytest

from ablate import configs
from ablate.errors import ConfigError
from ablate.study import load_study

REPO = Path(__file__).resolve().parents[1]
TABLE2 = str(REPO / "experiments" / "table2.yaml")
IGNORE = ("work_dir", "ablate", "randomness")


@pytest.fixture(scope="module")
def table2():
    return load_study(TABLE2)


def resolved(study, profile, variant, seed=0):
    (run,) = study.runs(profile, variants=[variant], seeds=[seed])
    return configs.resolve(study, run)


@pytest.mark.parametrize("profile", ["paper", "smoke"])
@pytest.mark.parametrize("variant", ["baseline", "dwt", "attention", "dwt_attention"])
def test_variants_differ_from_the_baseline_in_their_switches_only(table2, profile, variant):
    rows = configs.diff(resolved(table2, profile, "baseline"), resolved(table2, profile, variant), IGNORE)
    expected = {k: v for k, v in table2.variants[variant].overrides.items()}
    assert {key: b for key, _a, b in rows} == expected
    assert all(a is False for _key, a, _b in rows)


def test_smoke_profile_changes_only_the_keys_it_names(table2):
    rows = configs.diff(resolved(table2, "paper", "dwt"), resolved(table2, "smoke", "dwt"), IGNORE)
    named = list(table2.profiles["smoke"].overrides)
    assert rows, "the smoke profile must change something"
    stray = [key for key, _a, _b in rows if not any(key == n or key.startswith(n + ".") for n in named)]
    assert stray == []
    smoke = resolved(table2, "smoke", "dwt")
    assert smoke.train_cfg.max_iters == table2.profiles["smoke"].overrides["train_cfg.max_iters"]
    assert smoke.model.backbone.init_cfg is None


def test_run_fields_are_applied(table2, tmp_path):
    (run,) = table2.runs("smoke", variants=["dwt"], seeds=[3], work_root=tmp_path)
    cfg = configs.resolve(table2, run, data_root=tmp_path / "data")
    assert cfg.randomness.seed == 3
    assert cfg.work_dir == str(run.work_dir)
    assert cfg.train_dataloader.dataset.data_root == str(tmp_path / "data")
    assert cfg.val_dataloader.dataset.data_root == str(tmp_path / "data")
    assert cfg.ablate == {"study": "table2", "profile": "smoke", "variant": "dwt", "seed": 3,
                          "work_root": str(tmp_path), "overrides": {"model.decode_head.use_dwt": True},
                          "processes": 1, "total_batch": 8}


def test_dumped_config_round_trips_through_mmengine(table2, tmp_path):
    from mmengine.config import Config

    cfg = resolved(table2, "smoke", "dwt_attention")
    digest = configs.dump(cfg, tmp_path / "config.py")
    again = Config.fromfile(str(tmp_path / "config.py"), import_custom_modules=False)
    assert again.model.decode_head.use_dwt is True and again.model.decode_head.use_attention is True
    assert configs.diff(cfg, again) == []
    assert digest == configs.text_hash((tmp_path / "config.py").read_text())


def write(tmp_path, overrides: str) -> str:
    (tmp_path / "base.py").write_text(
        "model = dict(decode_head=dict(use_dwt=False, use_attention=False))\n"
        "pipeline = [dict(type='A'), dict(type='B')]\n")
    lines = ["base: base.py", "variants:", "  baseline: {}", "  bad:", "    overrides:"]
    lines += ["      " + line for line in overrides.splitlines()]
    lines += ["profiles:", "  smoke: {data: synthetic}"]
    (tmp_path / "s.yaml").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "s.yaml")


def resolve_bad(tmp_path, overrides):
    study = load_study(write(tmp_path, overrides))
    (run,) = study.runs("smoke", variants=["bad"])
    return configs.resolve(study, run)


def test_unknown_key_names_file_line_and_closest_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        resolve_bad(tmp_path, "model.decode_head.use_dwtt: true")
    assert str(info.value) == ("s.yaml:6: variant `bad`: `model.decode_head.use_dwtt` not in base config; "
                               "did you mean `use_dwt`?")


def test_unknown_intermediate_key_is_reported(tmp_path):
    with pytest.raises(ConfigError, match=r"`model.decoder_head` not in base config; did you mean `decode_head`\?"):
        resolve_bad(tmp_path, "model.decoder_head.use_dwt: true")


def test_list_indices_and_plus_prefix(tmp_path):
    cfg = resolve_bad(tmp_path, "pipeline.1.type: C\n+model.decode_head.new_key: 5")
    assert cfg.pipeline[1]["type"] == "C"
    assert cfg.model.decode_head.new_key == 5
    with pytest.raises(ConfigError, match=r"index 2 out of range for a list of 2"):
        resolve_bad(tmp_path, "pipeline.2.type: C")


def test_config_text_is_formatted_once_per_content_and_keyed_by_it(tiny_study, monkeypatch):
    from mmengine.config import Config

    study = load_study("tiny")
    first, second = study.runs("smoke")[:2]
    a, b = configs.resolve(study, first), configs.resolve(study, second)
    calls = []
    original = Config.pretty_text.fget
    monkeypatch.setattr(Config, "pretty_text", property(lambda self: calls.append(1) or original(self)))
    configs._TEXT_CACHE.clear()
    assert configs.config_text(a) == original(a) and len(calls) == 1
    assert configs.config_text(configs.resolve(study, first)) == original(a) and len(calls) == 1
    assert configs.config_text(b) != configs.config_text(a) and len(calls) == 2


def test_run_key_ignores_what_cannot_change_a_result_and_survives_config_py(table2, tmp_path):
    from mmengine.config import Config

    (run,) = table2.runs("smoke", variants=["dwt"], work_root=tmp_path)
    cfg = configs.resolve(table2, run, data_root=tmp_path / "data")
    key = configs.run_key(cfg)
    neutral = configs.resolve(table2, run, data_root=tmp_path / "data")
    neutral.merge_from_dict({"work_dir": "/elsewhere", "visualizer.vis_backends": [], "log_level": "DEBUG",
                             "default_hooks.logger.interval": 1})
    assert configs.run_key(neutral) == key
    for change in ({"optim_wrapper.optimizer.lr": 0.5}, {"randomness.seed": 7},
                   {"train_dataloader.dataset.data_root": "/other"}, {"model.decode_head.use_dwt": False}):
        changed = configs.resolve(table2, run, data_root=tmp_path / "data")
        changed.merge_from_dict(change)
        assert configs.run_key(changed) != key, change
    configs.dump(cfg, tmp_path / "config.py")
    assert configs.run_key(Config.fromfile(str(tmp_path / "config.py"), import_custom_modules=False)) == key


@pytest.mark.parametrize("profile, dtype", [("paper-bf16", "bfloat16"), ("paper-fp16", "float16")])
def test_mixed_precision_profiles_train_with_mmengines_amp_wrapper(table2, profile, dtype):
    (run,) = table2.runs(profile, variants=["dwt"])
    cfg = configs.resolve(table2, run)
    paper = configs.resolve(table2, table2.runs("paper", variants=["dwt"])[0])
    assert (cfg.optim_wrapper.type, cfg.optim_wrapper.dtype) == ("AmpOptimWrapper", dtype)
    assert cfg.optim_wrapper.optimizer == paper.optim_wrapper.optimizer  # the paper's schedule otherwise
    assert cfg.train_cfg == paper.train_cfg and cfg.model == paper.model


def test_mixed_precision_without_cuda_is_refused_before_launching(monkeypatch, tmp_path, tiny_data):
    import torch
    from typer.testing import CliRunner

    from ablate.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("ABLATE_WORK_DIR", str(tmp_path / "work_dirs"))
    monkeypatch.delenv("ABLATE_FULL_ERROR", raising=False)
    result = CliRunner().invoke(app, ["run", "table2", "-p", "paper-bf16", "--data-root",
                                      str(tiny_data / "synthetic_ade20k"), "--variants", "baseline"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "profile `paper-bf16` trains in mixed precision (optim_wrapper AmpOptimWrapper)" in result.output
    assert not (tmp_path / "work_dirs").exists()
