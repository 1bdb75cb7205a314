"""Study files with factors, claims, profiles that extend others, seed_std and --set: what they
resolve to, and one line with file:line for each kind of mistake."""
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablate import configs
from ablate.cli import app
from ablate.errors import ConfigError, StudyError
from ablate.study import load_study

REPO = Path(__file__).resolve().parents[1]
TABLE2 = REPO / "experiments" / "table2.yaml"
BASE = "model = dict(decode_head=dict(use_dwt=False, use_attention=False, channels=256, dropout_ratio=0.1))\n" \
       "train_cfg = dict(max_iters=100)\n"


def write(tmp_path, body: str, name: str = "study.yaml") -> Path:
    (tmp_path / "base.py").write_text(BASE)
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def problems(path) -> list[str]:
    with pytest.raises(StudyError) as info:
        load_study(str(path))
    return str(info.value).splitlines()


TWO_BY_THREE = """\
    base: base.py
    factors:
      dwt: {off: {}, on: {model.decode_head.use_dwt: true}}
      width: {narrow: {model.decode_head.channels: 128}, mid: {}, wide: {model.decode_head.channels: 512}}
    profiles:
      smoke: {data: synthetic}
"""


# --------------------------------------------------------------------------- factors


def test_table2_declares_a_two_by_two_design_named_by_its_own_variants():
    study = load_study(str(TABLE2))
    assert {f: list(spec.levels) for f, spec in study.factors.items()} == {"dwt": ["off", "on"],
                                                                           "attention": ["off", "on"]}
    assert {f: spec.reference for f, spec in study.factors.items()} == {"dwt": "off", "attention": "off"}
    assert study.cells() == {("off", "off"): "baseline", ("on", "off"): "dwt", ("off", "on"): "attention",
                             ("on", "on"): "dwt_attention"}
    assert study.variants["attention"].levels == {"dwt": "off", "attention": "on"}
    assert study.variants["attention"].overrides == {"model.decode_head.use_attention": True}
    assert study.variants["baseline"].overrides == {}
    assert [v.label for v in study.variants.values()] == ["SegNeXt + FreqFusion", "+ DWT", "+ Attention",
                                                          "+ DWT + Attention"]
    # an override's errors point at the factor level that sets it
    line = next(i for i, t in enumerate(TABLE2.read_text().splitlines(), 1) if t.startswith("  dwt: {off"))
    assert study.locations["variants.dwt_attention.overrides.model.decode_head.use_dwt"] == f"table2.yaml:{line}"


def test_a_two_by_three_design_generates_six_variants_with_names_labels_and_overrides(tmp_path):
    study = load_study(str(write(tmp_path, TWO_BY_THREE)))
    assert list(study.variants) == ["dwt-off_width-narrow", "dwt-off_width-mid", "dwt-off_width-wide",
                                    "dwt-on_width-narrow", "dwt-on_width-mid", "dwt-on_width-wide"]
    on_wide = study.variants["dwt-on_width-wide"]
    assert on_wide.label == "dwt on, width wide" and on_wide.levels == {"dwt": "on", "width": "wide"}
    assert on_wide.overrides == {"model.decode_head.use_dwt": True, "model.decode_head.channels": 512}
    assert study.baseline == "dwt-off_width-narrow"  # the first combination, and the reference levels
    assert {f.name: f.reference for f in study.factors.values()} == {"dwt": "off", "width": "narrow"}
    cfg = configs.resolve(study, study.runs("smoke", variants=["dwt-on_width-wide"])[0])
    assert cfg.model.decode_head.use_dwt is True and cfg.model.decode_head.channels == 512


def test_show_lists_the_generated_variants(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    path = write(tmp_path, TWO_BY_THREE)
    out = CliRunner().invoke(app, ["show", str(path)]).output
    assert "factors: 2 x 3 = 6 variants" in out
    assert sum(f"dwt-{d}_width-{w} " in out for d in ("off", "on") for w in ("narrow", "mid", "wide")) == 6
    out = CliRunner().invoke(app, ["show", str(TABLE2)]).output
    assert "factors: 2 x 2 = 4 variants" in out
    assert all(f" {v} " in out for v in ("baseline", "dwt", "attention", "dwt_attention"))
    assert "dwt=on, attention=off" in out and "claim: DWT improves mIoU" in out


def test_named_cells_extra_variants_and_the_baseline_set_the_reference(tmp_path):
    study = load_study(str(write(tmp_path, """\
        base: base.py
        baseline: plain
        factors:
          dwt: {off: {}, on: {model.decode_head.use_dwt: true}}
          attention: {off: {}, on: {model.decode_head.use_attention: true}}
        variants:
          both: {label: Both, levels: {dwt: on, attention: on}, paper: {mIoU: 42.0}}
          plain: {levels: {dwt: off, attention: off}, paper: {mIoU: 40.0}}
          no_dropout: {overrides: {model.decode_head.dropout_ratio: 0.0}}
        profiles:
          smoke: {data: synthetic}
    """)))
    # the study's own variants in file order, then the combinations it did not name
    assert list(study.variants) == ["both", "plain", "no_dropout", "dwt-off_attention-on", "dwt-on_attention-off"]
    assert study.variants["no_dropout"].levels is None
    assert study.variants["both"].paper == {"mIoU": 42.0} and study.variants["both"].label == "Both"
    assert study.cells()[("on", "on")] == "both"


def test_levels_named_on_off_yes_no_stay_names_and_true_stays_a_boolean(tmp_path):
    study = load_study(str(write(tmp_path, """\
        base: base.py
        factors:
          dwt: {no: {}, yes: {model.decode_head.use_dwt: true}}
          attention: {off: {model.decode_head.use_attention: false}, on: {model.decode_head.use_attention: on}}
        profiles: {smoke: {data: synthetic}}
    """)))
    assert list(study.factors["dwt"].levels) == ["no", "yes"]
    assert study.factors["dwt"].levels["yes"] == {"model.decode_head.use_dwt": True}
    assert study.factors["attention"].levels["on"] == {"model.decode_head.use_attention": "on"}  # YAML 1.2: a string
    assert "dwt-yes_attention-on" in study.variants


def test_every_factor_mistake_is_named_with_its_line(tmp_path):
    lines = problems(write(tmp_path, """\
        base: base.py
        factors:
          dwt: {off: {}, on: {model.decode_head.use_dwt: true}}
          attention: {on: {model.decode_head.use_attention: true}}
          width: {a: {model.decode_head.use_dwt: false}, b: {}}
        variants:
          base: {levels: {dwt: of, width: a}}
          twin: {levels: {dwt: on, width: b}, overrides: {model.decode_head.channels: 3}}
          other: {levels: {dwt: on, width: b}}
          half: {levels: {dwt: on}}
        profiles: {smoke: {data: synthetic}}
    """))
    assert lines == [
        "study.yaml:4: factor `attention` must map two or more level names to overrides, e.g. "
        "{off: {}, on: {model.decode_head.use_dwt: true}}",
        "study.yaml:5: factor `width` sets `model.decode_head.use_dwt`, which factor `dwt` sets too: their "
        "combinations would depend on the order",
        "study.yaml:7: variant `base`: factor `dwt`: unknown level `of`; did you mean `off`?; choose from off, on",
        "study.yaml:9: variant `other` has the levels of variant `twin`",
        "study.yaml:10: variant `half`: `levels` must give a level of each factor: dwt, width",
        "study.yaml:8: variant `twin`: a variant with `levels` takes its overrides from `factors`; give a factor "
        "a level instead",
    ]


def test_a_bad_override_in_a_factor_level_names_the_factors_line(tmp_path):
    path = write(tmp_path, TWO_BY_THREE.replace("channels: 512", "chanels: 512"))
    study = load_study(str(path))
    with pytest.raises(ConfigError) as info:
        configs.resolve(study, study.runs("smoke", variants=["dwt-on_width-wide"])[0])
    assert str(info.value) == ("study.yaml:4: variant `dwt-on_width-wide`: `model.decode_head.chanels` not in base "
                               "config; did you mean `channels`?")


# --------------------------------------------------------------------------- claims


def test_table2_states_three_claims():
    study = load_study(str(TABLE2))
    assert [(c.text, c.test) for c in study.claims] == [
        ("DWT improves mIoU", "dwt > baseline"),
        ("Attention improves mIoU", "attention > baseline"),
        ("DWT and attention are complementary (together they beat either alone)",
         "dwt_attention > dwt and dwt_attention > attention")]
    assert [p.text for p in study.claims[2].parts] == ["dwt_attention > dwt", "dwt_attention > attention"]


def test_claims_become_contrasts_of_variant_means(tmp_path):
    from ablate.contrasts import comparison_contrast

    study = load_study(str(write(tmp_path, TWO_BY_THREE + """\
    claims:
      - dwt-on_width-mid > dwt-off_width-mid
      - effect(width[wide]) > 0.5
      - interaction(width[wide], dwt) < 0
    """)))
    contrasts = [comparison_contrast(c.parts[0], study.factors, study.cells(), list(study.variants))
                 for c in study.claims]
    assert [dict(c.weights) for c in contrasts] == [
        {"dwt-on_width-mid": 1, "dwt-off_width-mid": -1},
        {"dwt-off_width-wide": 1, "dwt-off_width-narrow": -1},
        {"dwt-on_width-wide": 1, "dwt-on_width-narrow": -1, "dwt-off_width-wide": -1, "dwt-off_width-narrow": 1}]
    assert [c.constant for c in contrasts] == [0.0, -0.5, 0.0]
    assert contrasts[2].text() == "dwt-on_width-wide \u2212 dwt-on_width-narrow \u2212 dwt-off_width-wide + " \
                                  "dwt-off_width-narrow"


def test_every_claim_mistake_is_named_with_its_line(tmp_path):
    lines = problems(write(tmp_path, TWO_BY_THREE + """\
    claims:
      - dwt-on_width-mid > dwt-of_width-mid
      - effect(width) > 0
      - dwt-on_width-mid > 40
      - {claim: better, test: "interaction(dwt, depth) > 0"}  # quoted: a comma ends a flow mapping's value
      - dwt-on_width-mid >> 3
      - {claim: no test}
    """))
    assert lines == [
        "study.yaml:8: claim `dwt-on_width-mid > dwt-of_width-mid`: unknown variant `dwt-of_width-mid`; did you "
        "mean `dwt-off_width-mid`?; choose from dwt-off_width-narrow, dwt-off_width-mid, dwt-off_width-wide, "
        "dwt-on_width-narrow, dwt-on_width-mid, dwt-on_width-wide",
        "study.yaml:9: claim `effect(width) > 0`: factor `width` has 3 levels: name one, e.g. `width[mid]`",
        "study.yaml:10: claim `dwt-on_width-mid > 40`: `dwt-on_width-mid > 40` compares a variant's mIoU with a "
        "number or an effect; compare a variant with a variant, an effect with a number or an effect",
        "study.yaml:11: claim `interaction(dwt, depth) > 0`: unknown factor `depth`; did you mean `width`?; choose from dwt, width",
        "study.yaml:12: claim `dwt-on_width-mid >> 3`: `> 3`: expected a variant, a number, `effect(factor)` or "
        "`interaction(factor, factor)`",
        "study.yaml:13: a claim needs a `test`, e.g. `dwt > baseline` or `interaction(dwt, attention) > 0`",
    ]


# --------------------------------------------------------------------------- profiles, seed_std


PROFILES = """\
    base: base.py
    variants: {a: {}}
    seed_std: 0.4
    profiles:
      smoke:
        description: short
        data: synthetic
        seeds: [0]
        overrides: {train_cfg.max_iters: 10, model.decode_head.channels: 64}
      seeded:
        extends: smoke
        seeds: [0, 1, 2]
        seed_std: 2.5
        overrides: {train_cfg.max_iters: 20}
      longer: {extends: seeded, description: mine}
"""


def test_a_profile_extends_another_with_its_own_overrides_last(tmp_path):
    study = load_study(str(write(tmp_path, PROFILES)))
    seeded, longer = study.profiles["seeded"], study.profiles["longer"]
    assert seeded.overrides == {"model.decode_head.channels": 64, "train_cfg.max_iters": 20}
    assert list(seeded.overrides) == ["model.decode_head.channels", "train_cfg.max_iters"]  # the child's last
    assert (seeded.data, seeded.seeds, seeded.seed_std, seeded.extends) == ("synthetic", (0, 1, 2), 2.5, "smoke")
    assert seeded.description == "`smoke` (short) with its own overrides"
    assert (longer.overrides, longer.seeds, longer.description) == (seeded.overrides, (0, 1, 2), "mine")
    assert study.seed_std == 0.4 and study.profiles["smoke"].seed_std is None
    # an inherited override's errors point at the line that set it
    assert study.locations["profiles.longer.overrides.model.decode_head.channels"] == "study.yaml:9"
    assert study.locations["profiles.longer.overrides.train_cfg.max_iters"] == "study.yaml:14"
    cfg = configs.resolve(study, study.runs("longer")[2])
    assert (cfg.train_cfg.max_iters, cfg.model.decode_head.channels, cfg.randomness.seed) == (20, 64, 2)


def test_a_profile_extends_one_of_another_file(tmp_path):
    write(tmp_path, PROFILES, name="other.yaml")
    study = load_study(str(write(tmp_path, """\
        base: base.py
        variants: {a: {}}
        profiles:
          mine: {extends: "other.yaml:seeded", overrides: {model.decode_head.dropout_ratio: 0.0}}
    """)))
    mine = study.profiles["mine"]
    assert mine.overrides == {"model.decode_head.channels": 64, "train_cfg.max_iters": 20,
                              "model.decode_head.dropout_ratio": 0.0}
    assert mine.seeds == (0, 1, 2) and mine.extends == "other.yaml:seeded"
    assert study.locations["profiles.mine.overrides.train_cfg.max_iters"] == "other.yaml:14"


def test_shared_profiles_keep_their_extends():
    dsconv = load_study(str(REPO / "experiments" / "dsconv.yaml"))
    assert dsconv.profiles["smoke-seeds"].seeds == (0, 1, 2)
    assert dsconv.profiles["smoke-seeds"].overrides == dsconv.profiles["smoke"].overrides
    short = load_study(str(TABLE2)).profiles["smoke-short"]
    assert short.extends == "smoke" and short.overrides["train_cfg.max_iters"] == 20


def test_every_profile_mistake_is_named_with_its_line(tmp_path):
    lines = problems(write(tmp_path, """\
        base: base.py
        variants: {a: {}}
        seed_std: -1
        profiles:
          a: {extends: b}
          b: {extends: a}
          c: {extends: smok}
          d: {extends: "nowhere.yaml:smoke"}
          smoke: {seed_std: zero, data: synthetic}
    """))
    assert lines == [
        "study.yaml:6: profile `b` extends itself (b -> a -> b)",  # met while following a
        "study.yaml:5: profile `a` extends itself (a -> b -> a)",
        "study.yaml:7: profile `c`: unknown profile to extend `smok`; did you mean `smoke`?; choose from a, b, c, d, "
        "smoke",
        f"study.yaml:8: profile `d`: `extends: nowhere.yaml:smoke`: file `nowhere.yaml` not found (looked for "
        f"{tmp_path / 'nowhere.yaml'})",
        "study.yaml:9: profile `smoke`: `seed_std` must be a positive number",
        "study.yaml:3: `seed_std` must be a positive number (mIoU)",
    ]


def test_diff_compares_two_profiles_as_well_as_two_variants(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("COLUMNS", "200")
    out = CliRunner().invoke(app, ["diff", "table2", "smoke", "smoke-short"]).output
    assert [line.split() for line in out.splitlines()] == [["key", "smoke", "smoke-short"],
                                                           ["train_cfg.max_iters", "40", "20"]]
    out = CliRunner().invoke(app, ["diff", "table2", "smoke", "smoke-seeds", "--variant", "dwt"]).output
    assert out.strip() == "`smoke` and `smoke-seeds` resolve to the same config for variant `dwt`"
    result = CliRunner().invoke(app, ["diff", "table2", "dwt", "smoke"])
    assert result.exit_code == 2
    assert "`dwt` is a variant and `smoke` a profile: compare two variants or two profiles" in result.output
