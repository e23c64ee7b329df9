"""The dni-agents command: dispatch to drivers, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import types
from typing import Any

import pytest

from dni_agents import cli
from dni_agents import config as config_mod
from dni_agents.config import Config, config_to_yaml, parse_config


class DataMissing(Exception):
    """Stands in for a driver's data error, which opts into one-line reporting."""

    user_error = True


def fake_driver(calls: list[tuple[str, Any]], **extra: Any) -> types.ModuleType:
    """A driver module that records its calls instead of training."""
    module = types.ModuleType("dni_agents.drivers.fake")

    def train(cfg: Config, run_dir: pathlib.Path, resume: pathlib.Path | None, stop=None) -> dict[str, Any]:
        calls.append(("train", (cfg, run_dir, resume)))
        return {"accuracy": 0.5, "steps": cfg.trainer.steps}

    def evaluate(run_dir: pathlib.Path) -> dict[str, Any]:
        calls.append(("evaluate", run_dir))
        return {"accuracy": 0.75}

    def bench(quick: bool, out: pathlib.Path | None, seeds: int | None, overrides: list[str],
              only: list[str] | None) -> None:
        calls.append(("bench", (quick, out, seeds, overrides, only)))

    module.train, module.evaluate, module.bench = train, evaluate, bench  # type: ignore[attr-defined]
    for name, value in extra.items():
        setattr(module, name, value)
    return module


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    recorded: list[tuple[str, Any]] = []
    driver = fake_driver(recorded)
    monkeypatch.setattr(cli, "load_driver", lambda name: driver)
    return recorded


@pytest.fixture
def exp(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "exp.yaml"
    path.write_text("driver: ff\nname: exp\ntrainer:\n  steps: 10\n")
    return path


def run_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run main, assert the user-error contract, return the message after the prefix."""
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("dni-agents: error: ")
    assert "Traceback" not in captured.err + captured.out
    return lines[0][len("dni-agents: error: ") :]


# ---------------------------------------------------------------- dispatch


def test_train_dispatches_and_prints_json(calls, exp, tmp_path, capsys) -> None:
    run_dir = tmp_path / "out"
    assert cli.main(["train", str(exp), "trainer.lr=1e-3", "trainer.steps=3", "--run-dir", str(run_dir)]) == 0
    (kind, (cfg, got_dir, resume)), *_ = calls
    assert kind == "train" and got_dir == run_dir and resume is None
    assert cfg.trainer.lr == 0.001 and cfg.trainer.steps == 3
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == {"accuracy": 0.5, "steps": 3}


def test_train_default_run_dir_and_resume(calls, exp, tmp_path, capsys) -> None:
    assert cli.main(["train", str(exp), "log.dir=" + str(tmp_path / "runs")]) == 0
    assert calls[-1][1][1] == tmp_path / "runs" / "exp"
    previous = tmp_path / "previous"
    previous.mkdir()
    assert cli.main(["train", str(exp), "--resume", str(previous)]) == 0
    assert calls[-1][1][1:] == (previous, previous)


def test_train_through_real_loader_names_driver_module(monkeypatch, exp) -> None:
    imported: list[str] = []
    module = fake_driver([])
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: imported.append(name) or module)
    assert cli.main(["train", str(exp)]) == 0
    assert imported and set(imported) == {"dni_agents.drivers.ff"}  # the config's schema and the CLI's train


def test_eval_reads_driver_from_run_config(calls, tmp_path, capsys) -> None:
    (tmp_path / "config.yaml").write_text(config_to_yaml(parse_config({"driver": "ff"})))
    assert cli.main(["eval", str(tmp_path)]) == 0
    assert calls == [("evaluate", tmp_path)]
    assert json.loads(capsys.readouterr().out) == {"accuracy": 0.75}


def test_bench_dispatches(calls, tmp_path) -> None:
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "ff", "device=cpu", "--quick", "--out", str(out), "--seeds", "2",
                     "--only", "mlp3,dni"]) == 0
    assert calls == [("bench", (True, out, 2, ["device=cpu"], ["mlp3", "dni"]))]


def test_configs_lists_names_drivers_descriptions(monkeypatch, tmp_path, capsys) -> None:
    (tmp_path / "mnist_dni.yaml").write_text("# MLP on MNIST with synthetic gradients\ndriver: ff\n")
    (tmp_path / "bare.yaml").write_text("driver: ff\n")
    monkeypatch.setattr(config_mod, "_bundled_dir", lambda: tmp_path)
    assert cli.main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["bare", "ff"], ["mnist_dni", "ff"]]
    assert lines[1].endswith("MLP on MNIST with synthetic gradients")


def test_version(capsys) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"dni-agents {cli.__version__}"


# ---------------------------------------------------------------- user errors: exit 2, one line


@pytest.mark.parametrize(
    ("body", "overrides", "expected"),
    [
        ("driver: ff\ntrainer: {lrr: 1}\n", [], "trainer.lrr: unknown key (did you mean 'lr'?)"),
        ("driver: ff\n", ["trainer.steps=abc"], "trainer.steps: expected an integer, got 'abc'"),
        ("driver: ff\n", ["trainer.lr=-1.0"], "trainer.lr: must be > 0, got -1.0"),
        ("driver: ff\n", ["interface_defaults.mode=dnn"], "interface_defaults.mode: 'dnn' is not allowed"),
        (
            "driver: ff\ninterfaces: [{sender: layer9, receiver: layer1}]\n",
            [],
            "interfaces[0].sender: unknown",
        ),
        ("name: x\n", [], "driver: required (allowed: ff, hier, marl, rnn)"),
        ("driver: ff\n", ["trainer.lr"], "override 'trainer.lr': expected key=value"),
        ("driver: ff\n", ["trainer.lrr=1"], "trainer.lrr: unknown key (did you mean 'lr'?)"),
        ("- driver: ff\n", [], "top level must be a mapping"),
        ("driver: [ff\n", [], "invalid YAML at line"),
    ],
)
def test_bad_config_exits_2(calls, tmp_path, capsys, body, overrides, expected) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    assert expected in run_error(capsys, ["train", str(path), *overrides])
    assert calls == []


def test_missing_config_file(calls, tmp_path, capsys) -> None:
    message = run_error(capsys, ["train", str(tmp_path / "nope.yaml")])
    assert "nope.yaml: no such config file (bundled configs:" in message


def test_resume_missing_dir(calls, exp, tmp_path, capsys) -> None:
    assert run_error(capsys, ["train", str(exp), "--resume", str(tmp_path / "gone")]).endswith("gone")
    assert calls == []


def test_eval_missing_run_dir_or_config(calls, tmp_path, capsys) -> None:
    assert "no such run directory" in run_error(capsys, ["eval", str(tmp_path / "gone")])
    assert "run has no config.yaml" in run_error(capsys, ["eval", str(tmp_path)])


def test_unknown_bench_lists_available(calls, capsys) -> None:
    assert run_error(capsys, ["bench", "nope"]) == (
        "bench: unknown bench 'nope' (available: ff, hier, marl, rnn, parallel, comm, speed)"
    )


def test_bench_driver_without_bench(monkeypatch, capsys) -> None:
    module = types.ModuleType("dni_agents.drivers.ff")
    monkeypatch.setattr(cli, "load_driver", lambda name: module)
    assert run_error(capsys, ["bench", "ff"]) == "bench: driver 'ff' has no bench yet"


def test_driver_user_error_is_one_line(monkeypatch, exp, capsys) -> None:
    def train(cfg: Config, run_dir: pathlib.Path, resume: pathlib.Path | None, stop=None) -> dict[str, Any]:
        raise DataMissing("dataset mnist not found under /data\n(pass ff.data_root=...)")

    module = fake_driver([], train=train)
    monkeypatch.setattr(cli, "load_driver", lambda name: module)
    message = run_error(capsys, ["train", str(exp)])
    assert message == "dataset mnist not found under /data (pass ff.data_root=...)"


def test_other_exceptions_propagate(monkeypatch, exp) -> None:
    def train(cfg: Config, run_dir: pathlib.Path, resume: pathlib.Path | None, stop=None) -> dict[str, Any]:
        raise RuntimeError("a bug")

    module = fake_driver([], train=train)
    monkeypatch.setattr(cli, "load_driver", lambda name: module)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["train", str(exp)])


def test_argparse_errors_return_2(capsys) -> None:
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err
    assert "dni-agents train: error: the following arguments are required: CONFIG" in err
    assert "KEY=VALUE" not in err.splitlines()[-1]  # overrides are optional


def test_subprocess_bad_config_has_no_traceback(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("driver: ff\ntrainer:\n  lrr: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "dni_agents.cli", "train", str(path), "trainer.steps=5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "dni-agents: error: trainer.lrr: unknown key (did you mean 'lr'?)\n"


def test_overrides_may_follow_options(calls, tmp_path) -> None:
    out = tmp_path / "b.json"
    assert cli.main(["bench", "ff", "--quick", "device=cpu", "--out", str(out), "trainer.steps=3"]) == 0
    assert calls == [("bench", (True, out, None, ["device=cpu", "trainer.steps=3"], None))]


def test_stray_argument_is_a_usage_error(capsys) -> None:
    assert cli.main(["configs", "oops"]) == 2
    assert "unrecognized arguments: oops" in capsys.readouterr().err


def test_ctrl_c_outside_a_training_loop_is_one_line_and_130(monkeypatch, capsys) -> None:
    def bench(**kwargs: Any) -> None:
        raise KeyboardInterrupt

    module = fake_driver([], bench=bench)
    monkeypatch.setattr(cli, "load_driver", lambda name: module)
    assert cli.main(["bench", "ff", "--quick"]) == 130
    assert capsys.readouterr().err == "dni-agents: interrupted\n"
