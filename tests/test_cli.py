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
    assert len(lines) == 1 and json.loads(lines[0]) == {"accuracy": 0.5, "steps": 3, "run_dir": str(run_dir)}
    # the CLI opened the folder and wrote the resolved config into it, whatever the driver does
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]
    assert (run_dir / "config.yaml").read_text() == config_to_yaml(cfg)


def test_every_driver_gets_a_new_folder_and_a_failed_start_leaves_none(monkeypatch, exp, tmp_path,
                                                                       capsys) -> None:
    seen: list[pathlib.Path] = []

    def train(cfg: Config, run_dir: pathlib.Path, resume: pathlib.Path | None, stop=None) -> dict[str, Any]:
        seen.append(run_dir)
        (run_dir / "checkpoint.pt").write_text("trained")
        return {}

    monkeypatch.setattr(cli, "load_driver", lambda name: fake_driver([], train=train))
    for _ in range(2):
        assert cli.main(["train", str(exp), f"log.dir={tmp_path / 'runs'}"]) == 0
    assert seen == [tmp_path / "runs" / "exp", tmp_path / "runs" / "exp-2"]  # never another run's folder
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"run_dir": str(seen[1])}

    def refuse(cfg: Config, run_dir: pathlib.Path, resume: pathlib.Path | None, stop=None) -> dict[str, Any]:
        seen.append(run_dir)
        raise DataMissing("no data")

    monkeypatch.setattr(cli, "load_driver", lambda name: fake_driver([], train=refuse))
    assert run_error(capsys, ["train", str(exp), f"log.dir={tmp_path / 'runs'}"]) == "no data"
    assert run_error(capsys, ["train", str(exp), f"log.dir={tmp_path / 'new' / 'runs'}"]) == "no data"
    assert seen[2:] == [tmp_path / "runs" / "exp-3", tmp_path / "new" / "runs" / "exp"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["exp", "exp-2"]  # nothing left behind
    assert not (tmp_path / "new" / "runs").exists()  # nor the log.dir the start made


def test_train_default_run_dir_and_resume(calls, exp, tmp_path, capsys) -> None:
    assert cli.main(["train", str(exp), "log.dir=" + str(tmp_path / "runs")]) == 0
    assert calls[-1][1][1] == tmp_path / "runs" / "exp"
    previous = tmp_path / "previous"
    previous.mkdir()
    assert cli.main(["train", str(exp), "--resume", str(previous), "trainer.steps=20"]) == 0
    assert calls[-1][1][1:] == (previous, previous)
    assert "steps: 20" in (previous / "config.yaml").read_text()  # the config the run went on with


def test_train_through_real_loader_names_driver_module(monkeypatch, exp) -> None:
    imported: list[str] = []
    module = fake_driver([])
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: imported.append(name) or module)
    assert cli.main(["train", str(exp), f"log.dir={exp.parent / 'runs'}"]) == 0
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


def test_bench_cpu_pins_to_one_core_and_one_thread(calls, monkeypatch, capsys) -> None:
    pinned: list = []
    monkeypatch.setattr(cli.os, "sched_setaffinity", lambda pid, cores: pinned.append(cores))
    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(cli.torch, "set_num_threads", lambda n: pinned.append(n))
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert cli.main(["bench", "ff", "--quick", "--cpu", "1"]) == 0
    assert pinned == [{1}, 1] and cli.os.environ["OMP_NUM_THREADS"] == "1" and calls
    calls.clear()
    assert cli.main(["bench", "ff", "--quick", "--cpu", "5"]) == 2  # not a core of this process
    assert "--cpu: core 5 is not available" in capsys.readouterr().err and not calls


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
    message = run_error(capsys, ["train", str(exp), f"log.dir={exp.parent / 'runs'}"])
    assert message == "dataset mnist not found under /data (pass ff.data_root=...)"


def test_other_exceptions_propagate(monkeypatch, exp) -> None:
    def train(cfg: Config, run_dir: pathlib.Path, resume: pathlib.Path | None, stop=None) -> dict[str, Any]:
        raise RuntimeError("a bug")

    module = fake_driver([], train=train)
    monkeypatch.setattr(cli, "load_driver", lambda name: module)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["train", str(exp), f"log.dir={exp.parent / 'runs'}"])
    assert not (exp.parent / "runs").exists()


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


def test_a_tilde_override_deletes_a_key_wherever_it_stands(calls, exp, tmp_path, capsys) -> None:
    runs = f"log.dir={tmp_path}"
    assert cli.main(["train", str(exp), "--run-dir", str(tmp_path / "a"), "~trainer.steps", runs]) == 0
    assert calls[-1][1][0].trainer.steps == 1000  # the file's 10 deleted: the schema's default
    assert cli.main(["train", str(exp), "~trainer.steps", "trainer.steps=7", runs]) == 0
    assert calls[-1][1][0].trainer.steps == 7
    assert run_error(capsys, ["train", str(exp), runs, "~trainer.step"]) == (
        "trainer.step: cannot delete (trainer has no key 'step'; did you mean 'steps'? keys there: steps)")


def test_train_help_says_how_overrides_merge_and_delete(capsys) -> None:
    assert cli.main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "KEY=VALUE|~KEY" in text
    assert "A mapping VALUE merges into the file's mapping" in text
    assert "~KEY delete KEY from the file's config, so its default applies" in text
    assert "'~marl.env_kwargs' 'marl.env_kwargs={a: 1}'" in text  # how to replace a mapping


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
