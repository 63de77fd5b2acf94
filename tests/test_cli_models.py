"""`ecdit-scale models ...` as a user runs it, and the golden model cards."""

import json
from pathlib import Path

import pytest
from conftest import cli_here, run_main

from ecdit_scale import sizes
from ecdit_scale.config import load_model_config
from ecdit_scale.params import count_params
from ecdit_scale.planner.cards import card_text, export_cards

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=ROOT):
    return cli_here(*args, cwd=cwd)  # in process: the commands' own work, not interpreter starts


def test_list_json_has_every_named_config_with_counts():
    out = run_cli("models", "list", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert {r["name"] for r in rows} == set(sizes.names())
    m = next(r for r in rows if r["name"] == "ecdit-m-64e")
    b = count_params(sizes.get("ecdit-m-64e"))
    assert (m["total_params"], m["active_params"]) == (b.total_params, b.active_params)


def test_list_table_and_filters():
    out = run_cli("models", "list", "--family", "ec-dit", "--kind", "dense")
    assert out.returncode == 0
    assert "ecdit-m" in out.stdout and "nano" not in out.stdout


def test_show_json_has_params_and_flops():
    out = run_cli("models", "show", "ecdit-m-64e", "--json")
    assert out.returncode == 0, out.stderr
    card = json.loads(out.stdout)
    assert set(card["flops_per_image"]) == {"forward", "backward", "forward_macs"}
    assert (card["summary"]["params"]["total_params"]
            == count_params(sizes.get("ecdit-m-64e")).total_params)


def test_show_params_target_and_card_path(tmp_path):
    out = run_cli("models", "show", "--params", "97B", "--json")
    assert json.loads(out.stdout)["name"] == "ecdit-m-64e"
    out = run_cli("models", "show", "--params", "12M", "--active", "--json")
    card = json.loads(out.stdout)
    assert abs(card["resolved"]["relative_error"]) < 0.03
    out = run_cli("models", "show", str(ROOT / "models" / "nano-ec8.yaml"))
    assert out.returncode == 0 and "nano-ec8" in out.stdout


@pytest.mark.parametrize("args, needle", [
    (["models", "show", "nonsense"], "unknown model 'nonsense'"),
    (["models", "show", "--params", "97X"], "not a parameter count"),
    (["models", "show", "--params", "-1"], "not a parameter count"),
    (["models", "list", "--family", "gpt"], "valid families"),
])
def test_bad_input_is_one_line_without_traceback(args, needle):
    out = run_cli(*args)
    assert out.returncode != 0
    assert needle in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert len(out.stderr.strip().splitlines()) == 1


def _alias_bomb() -> str:
    """A "billion laughs" card: 9 ** 10 values through 90 aliases, drawn as notes."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join(['*' + chr(96 + i)] * 9)}]"
              for i in range(1, 10)]
    return "\n".join(lines) + "\nname: bomb\nnotes: *j\n"


@pytest.mark.parametrize("text, needle", [
    ("name: broken\nhidden_size: [1, 2\n", "malformed YAML"),
    ("name: broken\nhidden_size: 100\nnum_heads: 16\n", "does not divide hidden_size"),
    ("name: broken\nffn: {kind: dense, num_experts: 8}\n", "a dense FFN has 1 expert"),
    ("- just\n- a list\n", "expected a mapping"),
    ("", "empty file"),
    ("name: broken\n1: 2\n", "field name 1 is not a string"),
    ("name: broken\nffn: 3\n", "ffn = 3: must be a mapping"),
    ("name: broken\nffn: [1]\n", "ffn = [1]: must be a mapping"),
    ("name: broken\nffn: {kind: expert-choice, num_experts: x}\n", "ffn.num_experts = 'x'"),
    ("name: broken\nffn: {kind: {a: 1}}\n", "ffn.kind"),
    ("name: broken\nffn: {2: 1}\n", "ffn: field name 2 is not a string"),
    ("name: broken\nffn: {kind: expert-choice, aux_loss_coef: x}\n", "ffn.aux_loss_coef = 'x'"),
    (f"name: broken\nhidden_size: {2**62}\n",
     "hidden_size = 4611686018427387904: must be an integer in 1..1048576"),
    ("name: broken\nmlp_ratio: .nan\n", "mlp_ratio = nan"),
    ("name: broken\ncond_dropout: x\n", "cond_dropout = 'x'"),
    ("name: broken\nqkv_bias: 3\n", "qkv_bias = 3: must be a boolean"),
    ("name: '[bold]x'\n", "letters, digits"),
    ("name: broken\nfamily: &a [[1, 2], [3, 4]]\nnotes: [*a, *a]\n", "family = [[1, 2], [3, 4]]"),
    ("name: broken\nnotes: " + "n" * 20_000 + "\n", "at most 10,000"),
    (_alias_bomb(), "YAML aliases"),
])
def test_malformed_or_contradictory_cards(tmp_path, text, needle, capsys):
    card = tmp_path / "card.yaml"
    card.write_text(text)
    for args in (["models", "show", str(card)], ["plan", "--model", str(card), "--no-write"]):
        code, _, err = run_main(capsys, *args)
        assert code == 2 and needle in err and str(card) in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("content, needle", [
    (b"\x00\xff\xfe binary \x80" * 100, "not a UTF-8 text model card"),
    (b"name: x\nnotes: '" + b"n" * (5 * 2**20) + b"'\n", "too large for a model card"),
])
def test_binary_and_huge_cards_are_refused_before_parsing(tmp_path, content, needle, capsys):
    card = tmp_path / "card.yaml"
    card.write_bytes(content)
    code, _, err = run_main(capsys, "models", "show", str(card))
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_checked_in_cards_are_fresh():
    for name, cfg in sizes.REGISTRY.items():
        path = ROOT / "models" / f"{name}.yaml"
        assert path.is_file(), f"missing card {path}; run `ecdit-scale models export`"
        assert path.read_text() == card_text(cfg), (f"stale card {path}; "
                                                    "run `ecdit-scale models export`")
        assert load_model_config(path) == cfg
    assert len(list((ROOT / "models").glob("*.yaml"))) == len(sizes.REGISTRY)


def test_export_writes_and_detects_staleness(tmp_path):
    first = export_cards(tmp_path)
    assert len(first.written) == len(sizes.REGISTRY)
    (tmp_path / "nano-ec8.yaml").write_text("name: nano-ec8\n")
    assert export_cards(tmp_path, check=True).stale == ["nano-ec8.yaml"]
    assert export_cards(tmp_path).written == ["nano-ec8.yaml"]


def test_export_keeps_the_users_files_and_removes_only_its_own(tmp_path):
    (tmp_path / "my-experiment.yaml").write_text("name: mine\n")
    export_cards(tmp_path)
    stale = tmp_path / "a-size-since-removed.yaml"  # a card an older version wrote
    stale.write_text(card_text(sizes.get("nano-ec8")))
    assert export_cards(tmp_path, check=True).stale == ["a-size-since-removed.yaml"]
    result = export_cards(tmp_path)
    assert result.removed == ["a-size-since-removed.yaml"] and not stale.exists()
    assert (tmp_path / "my-experiment.yaml").read_text() == "name: mine\n"
    assert len(list(tmp_path.iterdir())) == len(sizes.REGISTRY) + 1


def test_export_json_lists_what_it_wrote(tmp_path):
    out = run_cli("models", "export", "--out", str(tmp_path / "m"), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert len(data["written"]) == len(sizes.REGISTRY) and data["removed"] == []
    out = run_cli("plans", "export", "--out", str(tmp_path / "p"), "--check", "--json")
    assert out.returncode == 2 and "stale plan file" in out.stderr


@pytest.mark.parametrize("args, needle", [
    (["plan", "--nodes", "0"], "--nodes = 0"),
    (["plan", "--nodes", "-1"], "--nodes = -1"),
    (["plan", "--gpus-per-node", "0"], "--gpus-per-node = 0"),
    (["plan", "--gpus", "0"], "--gpus = 0"),
    (["plan", "--tp", "0"], "--tp = 0"),
    (["plan", "--dp", "0"], "--dp = 0"),
    (["plan", "--ep", "0"], "--ep = 0"),
    (["plan", "--micro-batch", "0"], "--micro-batch = 0"),
    (["plan", "--zero", "4"], "--zero = 4"),
    (["plan", "--price", "nan"], "--price = nan"),
    (["plan", "--price", "inf"], "--price = inf"),
    (["plan", "--price", "-1"], "--price = -1.0"),
    (["plan", "--top", "-3"], "--top = -3"),
    (["plan", "--top", "0"], "--top = 0"),
    (["plan", "--global-batch", "0"], "--global-batch = 0"),
    (["plan", "--steps", "0"], "--steps = 0"),
    (["plan", "--sampling-steps", "0"], "--sampling-steps = 0"),
    (["plan", "--out", ""], "--out '': give a folder name"),
    (["plan", "--model", "small-ec8", "--nodes", "1", "--out", "."], "cannot be replaced"),
    (["plan", "--gpus", "4", "--nodes", "2"], "contradicts"),
    (["plan", "--nodes", "x"], "Invalid value for '--nodes'"),
    (["plan", "--bogus"], "No such option: --bogus"),
    (["plan", "--nodes"], "requires an argument"),
    (["models", "nope"], "No such command"),
    (["models", "show", "a", "b"], "unexpected extra argument"),
    (["models", "export", "--out", ""], "--out '': give a folder name"),
    (["plans", "export", "--out", ""], "--out '': give a folder name"),
])
def test_bad_options_are_one_line_and_exit_2(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written into the current folder
    code, _, err = run_main(capsys, *args)
    assert code == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_help_still_exits_0(capsys):
    from ecdit_scale.cli import main

    capsys.readouterr()
    try:
        main(["plan", "--help"])
        code = 0
    except SystemExit as exc:
        code = exc.code
    assert code in (0, None) and "--nodes" in capsys.readouterr().out


@pytest.mark.parametrize("text, needle", [
    ("foo: [1\n", "malformed YAML"),
    ("", "empty file"),
    ("power_laws: {}\n", "not a fit written by `ecdit-scale fit`"),
    ("- 1\n- 2\n", "not a mapping"),
])
def test_a_broken_fit_file_is_one_line(tmp_path, text, needle, capsys):
    fit = tmp_path / "fit.yaml"
    fit.write_text(text)
    code, _, err = run_main(capsys, "plan", "--model", "small-ec8", "--nodes", "1", "--no-write",
                         "--fit", str(fit))
    assert code == 2 and needle in err and "fit.yaml" in err, err
    assert len(err.strip().splitlines()) == 1


def test_json_output_is_strict(capsys):
    from ecdit_scale.cli.common import print_json

    print_json({"x": float("nan"), "y": [float("inf"), 1.0]})
    assert json.loads(capsys.readouterr().out) == {"x": None, "y": [None, 1.0]}
