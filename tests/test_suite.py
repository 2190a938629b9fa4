"""Suite schema: valid files load; each kind of mistake is rejected with its field path."""

from pathlib import Path

import pytest
from conftest import tiny_suite

from bench.suite import SuiteError, expand, load_suite

SUITES = sorted(Path(__file__).parent.parent.joinpath("suites").glob("*.yaml"))


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.name)
def test_shipped_suites_validate(path):
    suite = load_suite(path)
    assert suite.name and expand(suite)


def errors_of(write_suite, data) -> list[str]:
    path = write_suite(data)
    with pytest.raises(SuiteError) as e:
        load_suite(path)
    lines = str(e.value).splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    return [line.removeprefix(f"{path}: ") for line in lines]


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"budjet": {"steps": 1}}, "budjet: unknown key"),
        ({"budget": {"steps": 10, "epochs": 1}}, "budget: give exactly one of"),
        ({"budget": {"batch_size": 8}}, "budget: give exactly one of"),
        ({"budget": {"steps": 0}}, "budget.steps: Input should be greater than or equal to 1"),
        ({"budget": {"steps": "many"}}, "budget.steps: Input should be a valid integer"),
        ({"seeds": [1, 1]}, "seeds: seeds must be distinct"),
        ({"models": []}, "models: List should have at least 1 item"),
        (
            {"models": [{"name": "vae-cnv"}]},
            "models.0.name: unknown model 'vae-cnv'; did you mean 'vae-conv'",
        ),
        ({"models": [{"name": "vae-conv", "betta": 2}]}, "models.0.betta: unknown key"),
        (
            {"models": [{"name": "vae-conv", "beta": -1}]},
            "models.0.beta: Input should be greater than or equal to 0",
        ),
        (
            {"models": [{"name": "ae-mlp"}, {"name": "ae-mlp"}]},
            "models.1.label: label 'ae-mlp' is used twice",
        ),
        ({"dataset": {"name": "cifar"}}, "dataset.name: unknown dataset 'cifar'"),
        (
            {"eval": {"metrics": ["recon_mes"]}},
            "eval.metrics.0: unknown metric 'recon_mes'; did you mean 'recon_mse'",
        ),
        ({"device": "gpu"}, "device: device must be"),
    ],
)
def test_mistakes_name_their_field(write_suite, change, expected):
    errors = errors_of(write_suite, tiny_suite(**change))
    assert any(e.startswith(expected) or expected in e for e in errors), errors


def test_every_error_is_listed_at_once(write_suite):
    errors = errors_of(write_suite, tiny_suite(budjet=1, seeds=[1, 1], models=[{"name": "nope"}]))
    assert {e.split(":")[0] for e in errors} >= {"budjet", "seeds", "models.0.name"}


def test_metric_that_fits_no_model_is_rejected(write_suite):
    errors = errors_of(write_suite, tiny_suite(models=[{"name": "gan-mlp"}], eval={"metrics": ["recon_mse"]}))
    assert errors == ["eval.metrics.0: 'recon_mse' applies to ae/vae/codec models and the suite has none"]


def test_not_a_mapping_and_not_yaml(write_suite):
    assert errors_of(write_suite, "- a\n- b\n") == ["(top level): a suite is a mapping of keys, got list"]
    assert errors_of(write_suite, "name: [unclosed\n")[0].startswith("(file): not valid YAML at line")


def test_overrides_apply_before_validation(write_suite):
    path = write_suite(tiny_suite())
    suite = load_suite(path, ["budget.images=1000", "models.1.beta=4", "seeds=[3, 4]"])
    assert suite.budget.kind == "images" and suite.budget.images == 1000  # a new kind replaces the old
    assert suite.models[1].params == {"beta": 4}
    assert [s.seed for s in expand(suite)] == [3, 3, 3, 4, 4, 4]
    with pytest.raises(SuiteError, match="budget.stepz: unknown key"):
        load_suite(path, ["budget.stepz=3"])


def test_run_specs_resolve_variant_defaults(write_suite):
    suite = load_suite(write_suite(tiny_suite(models=[{"name": "vae-conv", "label": "beta4", "beta": 4}])))
    (spec,) = expand(suite)
    assert (
        spec.params["beta"] == 4 and spec.params["backbone"] == "infogan" and spec.run_name == "beta4/seed0"
    )
    other = load_suite(write_suite(tiny_suite(models=[{"name": "vae-conv", "label": "beta4", "beta": 2}])))
    assert expand(other)[0].config_hash != spec.config_hash


def test_strict_numbers_reach_every_position_of_an_annotation():
    """The ``Strict`` base (suite sections and model ``Params``) reads a number or a boolean
    strictly wherever the annotation puts one: dict values, tuples, unions, ``Optional``,
    ``Annotated`` and ``Literal`` choices; each error names the element's path."""
    from typing import Annotated, Literal

    from pydantic import Field, ValidationError

    from bench.models import ModelParams
    from bench.suite import pydantic_errors

    class Params(ModelParams):
        sizes: dict[str, int] = {}
        pair: tuple[int, float] | None = None
        either: int | list[bool] = 0
        choice: list[Literal[1, 3]] = []
        bounded: Annotated[list[Annotated[float, Field(gt=0)]], Field(max_length=3)] = []

    ok = Params(sizes={"a": 1, "b": "1e3"}, pair=(2, 3), either=[True, False], choice=[3.0], bounded=[0.5, 2])
    assert ok.sizes == {"a": 1, "b": 1000} and ok.pair == (2, 3.0) and ok.choice == [3]
    bad = {
        "sizes": {"a": True, "b": "010"},
        "pair": ("2", False),
        "choice": [1, True],
        "bounded": ["0.5", 0],
        "lr": "0.1",
    }
    with pytest.raises(ValidationError) as e:
        Params(**bad)
    found = {err.loc: err.msg for err in pydantic_errors(e.value)}
    assert found == {
        "sizes.a": "expected a number, got the boolean true",
        "sizes.b": "expected a number, got the text '010' (write numbers in decimal digits, unquoted)",
        "pair.0": "expected a number, got the text '2' (write numbers in decimal digits, unquoted)",
        "pair.1": "expected a number, got the boolean false",
        "choice.1": "expected a number, got the boolean true",
        "bounded.0": "expected a number, got the text '0.5' (write numbers in decimal digits, unquoted)",
        "bounded.1": "Input should be greater than 0",
        "lr": "expected a number, got the text '0.1' (write numbers in decimal digits, unquoted)",
    }, found
    with pytest.raises(ValidationError) as e:
        Params(either=[1, "true"])
    assert {err.loc.split(".")[-1] for err in pydantic_errors(e.value)} >= {"0", "1"}


def test_a_params_class_holding_a_model_completed_later_still_imports(tmp_path, monkeypatch):
    """A plugin's Params whose field is a pydantic model with a forward reference to a class defined
    after it: strictness must not rebuild it before that class exists (it raised at import)."""
    import importlib

    (tmp_path / "fwdparams.py").write_text(
        "from typing import Optional\n"
        "from pydantic import BaseModel\n"
        "from bench.models import ModelParams\n\n\n"
        "class Sub(BaseModel):\n    later: Optional['Later'] = None\n\n\n"
        "class P(ModelParams):\n    sub: Optional[Sub] = None\n    n: int = 1\n\n\n"
        "class Later(BaseModel):\n    y: int = 0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("fwdparams")
    assert mod.P(sub={"later": {"y": 1}}).sub.later.y == 1
    with pytest.raises(ValueError, match="expected a number, got the boolean true"):
        mod.P(n=True)
