"""Every numeric parameter of every notebook has a domain, and NaN, infinity and values outside it stop a run
before its folder exists (improve_lib.core.parameter_domains). The parameters come from the notebooks'
parameters cells, not from a hand list: a new numeric parameter without a domain fails here."""
from __future__ import annotations

import math

import pytest

from improve_lib.core import notebook_parameters
from improve_lib.core.errors import StudyInputError
from improve_lib.core import parameter_domains
from improve_lib.runs import pipeline, sweep
from improve_lib.runs.profiles import parse_sets, resolve_params


def _declared() -> dict[str, object]:
    out = {}
    for declared in notebook_parameters.all_declared().values():
        for key, value in declared.items():
            out.setdefault(key, value if value is not None else notebook_parameters.OPTIONAL_TYPES.get(key))
    return out


NUMERIC = sorted(k for k, v in _declared().items() if isinstance(v, (int, float)) and not isinstance(v, bool))
LISTS = sorted(k for k, v in _declared().items() if isinstance(v, list))


def test_every_numeric_and_list_parameter_has_a_domain():
    assert NUMERIC and LISTS
    assert [k for k in NUMERIC if k not in parameter_domains.NUMBERS] == []
    assert [k for k in LISTS if k not in parameter_domains.LISTS] == []


def test_every_profile_lies_inside_the_domains():
    for profile in ("demo", "smoke", "laptop", "paper"):
        for dataset in ("synthetic", "ham10000", "bone_marrow"):
            parameter_domains.check_domains(notebook_parameters.check_types(resolve_params(profile, dataset)))


def _outside(key):
    low, high, low_open, high_open = parameter_domains.NUMBERS[key]
    return high * 10 + 1 if math.isfinite(high) else (low if low_open else low - 1)


@pytest.mark.parametrize("key", NUMERIC)
def test_nan_infinity_and_out_of_range_fail_before_the_run_folder_exists(tmp_path, key):
    is_float = isinstance(_declared()[key], float)
    for value in (math.nan, math.inf, -math.inf, _outside(key)):
        if not is_float and not math.isfinite(value):
            value = float(value)  # an int parameter given nan: the type check or the domain refuses it
        with pytest.raises(StudyInputError, match=key):
            pipeline.run_pipeline("smoke", run_dir=tmp_path / "run", sets={key: value}, progress=False)
        assert not (tmp_path / "run").exists(), (key, value)


@pytest.mark.parametrize("sets,match", [
    ({"EVAL_SEEDS": [-1, -1]}, "EVAL_SEEDS"), ({"CHANNEL_MULT": [1, 100000]}, r"CHANNEL_MULT item=100000 is outside"),
    ({"GUIDANCE_INTERVAL": [0.0, math.nan]}, "GUIDANCE_INTERVAL item=nan is not a finite number"),
    ({"ARMS": []}, r"ARMS=\[\] has 0 item"), ({"SEED": 2**64}, r"SEED=18446744073709551616 is outside"),
])
def test_lists_are_checked_item_by_item(tmp_path, sets, match):
    with pytest.raises(StudyInputError, match=match):
        pipeline.run_pipeline("smoke", run_dir=tmp_path / "run", sets=sets, progress=False)
    assert not (tmp_path / "run").exists()


def test_flags_read_nan_as_a_number_only_in_yaml_form_and_keep_names():
    assert parse_sets(["REVIEWER=Nan", "REVIEWER_DISPLAY_NAME=Infinity"]) == {"REVIEWER": "Nan",
                                                                               "REVIEWER_DISPLAY_NAME": "Infinity"}
    assert math.isnan(parse_sets(["GUIDANCE_SCALE=.nan"])["GUIDANCE_SCALE"])
    assert parse_sets(["LR=1e-4"]) == {"LR": 1e-4}
    for bad in ("LR=[1, 2", "LR=!!python/object/apply:os.system ['true']"):
        with pytest.raises(StudyInputError, match="not plain YAML"):
            parse_sets([bad])


def test_no_off_yes_and_on_stay_words_in_flags_profiles_and_grids(tmp_path):
    """YAML 1.1 reads no/off/yes/on as booleans: `--set MIXED_PRECISION=no` (accelerate's fp32) arrived as False and
    was refused; the registered precision check's first try failed on it. Only true and false are booleans now."""
    assert parse_sets(["MIXED_PRECISION=no", "ROT90=true", "FLIP=False"]) == {"MIXED_PRECISION": "no", "ROT90": True,
                                                                              "FLIP": False}
    assert sweep.parse_grid(["MIXED_PRECISION=no,bf16", "ROT90=true,false"]) == {"MIXED_PRECISION": ["no", "bf16"],
                                                                                 "ROT90": [True, False]}
    mine = tmp_path / "fp32.yaml"
    mine.write_text("MIXED_PRECISION: no\nROT90: on\n")
    with pytest.raises(StudyInputError, match="ROT90='on' is a str, but ROT90 takes a bool"):
        pipeline.run_pipeline(str(mine), run_dir=tmp_path / "run", progress=False)
    mine.write_text("MIXED_PRECISION: no\n")
    assert resolve_params(str(mine))["MIXED_PRECISION"] == "no"


def test_profiles_come_from_params_by_name_or_an_explicit_yaml_path_and_typos_are_named(tmp_path):
    with pytest.raises(StudyInputError, match="give a profile's name"):
        resolve_params("../../elsewhere/mine")
    mine = tmp_path / "mine.yaml"
    mine.write_text("MAX_STEP: 5\n")
    with pytest.raises(StudyInputError, match="'MAX_STEP' is not a parameter of any notebook; did you mean 'MAX_STEPS'"):
        resolve_params(str(mine))
    mine.write_text("datasets:\n  ham10000:\n    N_TRIAN: 5\n")
    with pytest.raises(StudyInputError, match="datasets: ham10000.*'N_TRIAN'.*'N_TRAIN'"):
        resolve_params(str(mine))
    mine.write_text("MAX_STEPS: 5\n")
    params = resolve_params(str(mine))
    assert params["MAX_STEPS"] == 5 and params["PROFILE"] == "mine"
    assert pipeline.default_run_dir(params).parts[:1] == ("runs",)
