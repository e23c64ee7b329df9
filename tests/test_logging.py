"""RunLogger tests: everything is checked by reading the written files back."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard_record import read_histogram_tags, read_projector, read_scalars, read_texts

from dni_agents.logging import RunLogger, make_run_dir


def _event_files(run_dir: Path) -> list[Path]:
    return list(run_dir.rglob("events.out.tfevents.*"))


def test_scalars_exact_counts_and_values(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path, "s")
    with RunLogger(run) as log:
        for step in range(3):
            log.scalar("eval/return", step * 0.5, step)
            log.interface(
                "a_to_b", {"utility_loss": 0.25 * step, "grad_cosine": None, "grad_rel_error": math.nan}, step
            )
            log.agent("speaker", {"loss": 1.0 + step}, step)
        log.scalars("eval", {"accuracy": 0.75, "skipped": float("nan")}, 10)
    got = read_scalars(run)
    assert set(got) == {"eval/return", "interface/a_to_b/utility_loss", "agent/speaker/loss", "eval/accuracy"}
    assert got["eval/return"] == [(0, 0.0), (1, 0.5), (2, 1.0)]
    assert got["interface/a_to_b/utility_loss"] == [(0, 0.0), (1, 0.25), (2, 0.5)]
    assert got["agent/speaker/loss"] == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert got["eval/accuracy"] == [(10, 0.75)]


def test_scalar_accepts_zero_dim_tensor(tmp_path: Path) -> None:
    with RunLogger(tmp_path / "r") as log:
        log.scalar("agent/x/loss", torch.tensor(0.125), 4)
    assert read_scalars(tmp_path / "r") == {"agent/x/loss": [(4, 0.125)]}


def test_histograms_counted_and_nonfinite_tolerated(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path, "h")
    with RunLogger(run) as log:
        for step in range(4):
            msg = torch.randn(8, 5, requires_grad=True) * 2  # non-leaf with grad: must be detached
            log.message_histogram("a_to_b", msg, step)
        log.histogram("weights", torch.tensor([1.0, math.nan, math.inf, 2.0]), 0)
        log.histogram("empty", torch.tensor([math.nan]), 0)  # nothing finite: skipped, no crash
        log.histogram("bf16", torch.ones(3, dtype=torch.bfloat16), 0)
    assert read_histogram_tags(run) == {"interface/a_to_b/message": 4, "weights": 1, "bf16": 1}


def test_config_yaml_and_text(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path, "c")
    cfg = "model:\n  hidden: 64\n  lr: 0.001\nseed: 3\n"
    with RunLogger(run, config_yaml=cfg, hparams={"lr": 1e-3, "note": "a|b"}) as log:
        log.text("notes", "hello", 5)
    assert (run / "config.yaml").read_text() == cfg
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["hidden"] == 64
    assert not list(run.glob(".config.yaml.*"))  # temp file was renamed, not left behind
    texts = read_texts(run)
    assert set(texts) == {"config", "hparams", "notes"}
    assert texts["config"] == ["    model:\n      hidden: 64\n      lr: 0.001\n    seed: 3"]
    table = texts["hparams"][0]
    assert table.splitlines()[:2] == ["| hparam | value |", "|---|---|"]
    assert "| lr | 0.001 |" in table and "| note | a&#124;b |" in table
    assert texts["notes"] == ["hello"]


def test_projector_single_column(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path, "p")
    vecs = torch.randn(6, 2, 3)  # flattened to (6, 6)
    with RunLogger(run) as log:
        log.embedding("interface/a_to_b/message", vecs, torch.tensor([0, 1, 2, 0, 1, 2]), step=7)
        log.embedding("nolabels", torch.randn(4, 2), None, step=7)
    (emb, plain) = read_projector(run)
    assert emb["tag"] == "interface/a_to_b/message" and emb["step"] == 7
    assert emb["shape"] == (6, 6)
    assert emb["metadata"] == [["0"], ["1"], ["2"], ["0"], ["1"], ["2"]]
    assert emb["tensor_path"].is_file() and emb["tensor_path"].parent.parent == run / "00007"
    first = [float(x) for x in emb["tensor_path"].read_text().splitlines()[0].split("\t")]
    assert first == pytest.approx(vecs[0].flatten().tolist(), rel=1e-6)
    assert plain["shape"] == (4, 2) and plain["metadata"] == []


def test_projector_multi_column(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path, "m")
    labels = [["red", 0], ["blue", 1], ["tab\there", 2]]
    with RunLogger(run) as log:
        log.embedding("msg", torch.randn(3, 4), labels, step=0, label_header=["colour", "target"])
        log.embedding("one", torch.randn(2, 4), ["x", "y"], step=0, label_header=["only"])
        with pytest.raises(ValueError):
            log.embedding("msg", torch.randn(3, 4), labels, step=0, label_header=["colour", "target"])
        with pytest.raises(ValueError):
            log.embedding("bad", torch.randn(3, 4), [["a"], ["b"], ["c"]], step=1, label_header=["x", "y"])
        with pytest.raises(ValueError):
            log.embedding("short", torch.randn(3, 4), ["a"], step=1)
    by_tag = {e["tag"]: e for e in read_projector(run)}
    assert set(by_tag) == {"msg", "one"}
    assert by_tag["msg"]["metadata"] == [["colour", "target"], ["red", "0"], ["blue", "1"], ["tab here", "2"]]
    assert by_tag["msg"]["shape"] == (3, 4)
    assert by_tag["one"]["metadata"] == [["x"], ["y"]]  # single column: projector expects no header


def test_make_run_dir_never_overwrites(tmp_path: Path) -> None:
    first = make_run_dir(tmp_path / "runs", "exp")
    (first / "marker").write_text("keep")
    second = make_run_dir(tmp_path / "runs", "exp")
    third = make_run_dir(tmp_path / "runs", "exp")
    assert [first.name, second.name, third.name] == ["exp", "exp-2", "exp-3"]
    assert (first / "marker").read_text() == "keep"
    assert make_run_dir(tmp_path / "runs", "exp-2", resume=True) == second
    with pytest.raises(FileNotFoundError):
        make_run_dir(tmp_path / "runs", "missing", resume=True)
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError):
            make_run_dir(tmp_path / "runs", bad)


def test_two_loggers_no_cross_talk(tmp_path: Path) -> None:
    a_dir, b_dir = make_run_dir(tmp_path, "run"), make_run_dir(tmp_path, "run")
    a, b = RunLogger(a_dir, config_yaml="who: a\n"), RunLogger(b_dir, config_yaml="who: b\n")
    for step in range(3):
        a.scalar("agent/a/loss", 1.0, step)
        b.scalar("agent/b/loss", 2.0, step)
        b.scalar("agent/b/loss2", 3.0, step)
    a.embedding("emb", torch.randn(2, 3), ["p", "q"], 0)
    b.embedding("emb", torch.randn(5, 3), None, 0)  # same tag/step in another logger is fine
    a.close()
    b.close()
    assert read_scalars(a_dir) == {"agent/a/loss": [(0, 1.0), (1, 1.0), (2, 1.0)]}
    assert set(read_scalars(b_dir)) == {"agent/b/loss", "agent/b/loss2"}
    assert [e["shape"] for e in read_projector(a_dir)] == [(2, 3)]
    assert [e["shape"] for e in read_projector(b_dir)] == [(5, 3)]
    assert (a_dir / "config.yaml").read_text() == "who: a\n"
    assert (b_dir / "config.yaml").read_text() == "who: b\n"
    assert len(_event_files(a_dir)) == 1 and len(_event_files(b_dir)) == 1


def test_disabled_logger_writes_nothing(tmp_path: Path) -> None:
    run = tmp_path / "off"
    with RunLogger(run, config_yaml="a: 1\n", hparams={"a": 1}, enabled=False) as log:
        log.scalar("x", 1.0, 0)
        log.scalars("p", {"y": 2.0}, 0)
        log.histogram("h", torch.randn(4), 0)
        log.message_histogram("i", torch.randn(4), 0)
        log.interface("i", {"grad_cosine": 0.5}, 0)
        log.agent("a", {"loss": 0.5}, 0)
        log.text("t", "hello")
        log.embedding("e", torch.randn(2, 2), ["a", "b"], 0)
        log.flush()
    assert not run.exists()
    assert not _event_files(tmp_path)


def test_logging_after_close_raises(tmp_path: Path) -> None:
    log = RunLogger(tmp_path / "r")
    log.close()
    log.close()  # idempotent
    with pytest.raises(RuntimeError):
        log.scalar("x", 1.0, 0)
    assert len(_event_files(tmp_path / "r")) == 1  # no second event file was opened


def test_read_projector_without_embeddings(tmp_path: Path) -> None:
    with RunLogger(tmp_path / "r") as log:
        log.scalar("x", 1.0, 0)
    assert read_projector(tmp_path / "r") == []


def test_mean_stats_averages_each_key_over_the_records_that_carry_it() -> None:
    from dni_agents.runtime.loop import mean_stats

    records = [{"step": 0, "utility_loss": torch.tensor(1.0)},  # untracked, or a zero target
               {"step": 1, "utility_loss": torch.tensor(3.0), "grad_cosine": torch.tensor(0.5)}]
    assert mean_stats(records) == {"utility_loss": 2.0, "grad_cosine": 0.5}  # not (0 + 0.5) / 2
    assert mean_stats(records[:1]) == {"utility_loss": 1.0}  # no grad_cosine at all: nothing to log


def test_an_undefined_fidelity_stat_is_never_logged_as_zero(tmp_path: Path) -> None:
    """ff, DNI: at step 0 layer0->layer1's target is exactly zero (layer1's own ĝ from a zero-initialised
    utility model): no cosine or relative error may be logged there (a 0.0 would read as perfect)."""
    from dni_agents.config import load_config
    from dni_agents.drivers import ff

    cfg = load_config("ff_digits", [f"log.dir={tmp_path}", "ff.hidden=32", "trainer.steps=30", "log.every=1",
                                    "trainer.eval_every=0", "log.embedding_samples=0"])
    assert cfg.interface_defaults.mode == "dni"
    metrics = ff.train(cfg, tmp_path / cfg.name, progress=False)
    scalars = read_scalars(Path(metrics["run_dir"]))
    for iface in ("layer0->layer1", "layer1->layer2"):
        target_norm = dict(scalars[f"interface/{iface}/target_norm"])
        assert sorted(target_norm) == list(range(30))  # every step measured (log.every=1)
        zero = {step for step, norm in target_norm.items() if norm == 0.0}
        for key in ("grad_rel_error", "grad_cosine"):
            steps = {step for step, _ in scalars[f"interface/{iface}/{key}"]}
            assert not steps & zero, (iface, key, sorted(steps & zero))
            assert len(steps) >= 25  # measured wherever it is defined
    assert dict(scalars["interface/layer0->layer1/target_norm"])[0] == 0.0  # the case this is about
    assert 0 not in {s for s, _ in scalars["interface/layer1->layer2/grad_cosine"]}  # ĝ = 0: no direction


@pytest.mark.parametrize("count_from", [0, 1])
def test_histograms_skip_the_untrained_step_and_always_show_the_last(tmp_path: Path, count_from: int) -> None:
    from dni_agents.config import load_config
    from dni_agents.runtime.loop import Loop

    def points(*overrides: str) -> list[int]:
        cfg = load_config("ff_digits", [f"log.dir={tmp_path}", *overrides])
        loop = Loop(cfg, 0, RunLogger(tmp_path / "off", enabled=False), lambda step: None, log=True,
                    progress=False, count_from=count_from)
        return [loop.at(s) for s in range(cfg.trainer.steps) if loop.histograms(s)]

    last = 79 + count_from
    assert points("trainer.steps=80") == sorted({16, 32, 48, 64, last})  # auto: a fifth of the run
    assert points("trainer.steps=80", "log.histogram_every=30") == [30, 60, last]  # an explicit cadence
    assert points("trainer.steps=3", "log.histogram_every=1") == ([1, 2] if count_from == 0 else [1, 2, 3])
    assert len(points("trainer.steps=1500")) == 5 and points("trainer.steps=1500")[-1] == 1499 + count_from


def test_hparams_plugin_holds_the_settings_and_the_final_metrics(tmp_path: Path) -> None:
    from tensorboard_record import read_hparams

    with RunLogger(tmp_path / "r", hparams={"trainer.lr": 0.01, "mode": "dni", "fused": True,
                                            "obs_slice": [8, 11], "teams": None}) as log:
        log.scalar("eval/mean_return", 1.5, 10)
        log.scalar("agent/a/loss", 0.1, 10)
    got = read_hparams(tmp_path / "r")
    assert got["hparams"] == {"trainer.lr": 0.01, "mode": "dni", "fused": True, "obs_slice": "[8, 11]",
                              "teams": "null"}
    assert got["metrics"] == ["eval/mean_return"] and got["status"] == "STATUS_SUCCESS"
    with RunLogger(tmp_path / "m", hparams={"seed": 0}) as log:
        log.hparam_metrics(["diagnostics/return"])
    assert read_hparams(tmp_path / "m")["metrics"] == ["diagnostics/return"]
    assert read_hparams(tmp_path / "r")["hparams"]  # in the run's own folder, not a subfolder
    assert not [p for p in (tmp_path / "r").iterdir() if p.is_dir()]


def test_run_hparams_are_the_main_settings_and_what_the_user_set() -> None:
    from dni_agents.config import load_config
    from dni_agents.logging import run_hparams

    got = run_hparams(load_config("speaker_listener", [
        "trainer.steps=80", "marl.hidden=32", "interfaces[0].mode=backprop",
        "marl.env_kwargs={max_cycles: 20}", "~marl.eval_episodes"]))
    assert list(got) == ["driver", "config", "mode", "seed", "trainer.steps", "trainer.lr", "marl.hidden",
                         "interfaces.0.mode", "marl.env_kwargs.max_cycles", "marl.eval_episodes"]
    assert got["trainer.steps"] == 80 and got["marl.hidden"] == 32 and got["mode"] == "backprop"
    assert got["marl.env_kwargs.max_cycles"] == 20 and got["interfaces.0.mode"] == "backprop"
    default = type(load_config("speaker_listener").marl).model_fields["eval_episodes"].default
    assert got["marl.eval_episodes"] == default  # deleted: the schema's default
    plain = run_hparams(load_config("speaker_listener"))  # nothing changed: the main settings alone
    assert list(plain) == ["driver", "config", "mode", "seed", "trainer.steps", "trainer.lr"]


def test_projector_bookmark_and_resume_keeps_earlier_snapshots(tmp_path: Path) -> None:
    import json

    run = tmp_path / "b"
    rows = [[str(i % 3), str(i), "0"] for i in range(9)]
    with RunLogger(run) as log:
        for step in (5, 10):
            log.embedding("msg", torch.randn(9, 3), rows, step, label_header=["goal", "episode", "t"],
                          color_by="goal")
        with pytest.raises(ValueError):
            log.embedding("msg", torch.randn(9, 3), rows, 11, label_header=["goal", "episode", "t"],
                          color_by="colour")
    emb = read_projector(run)
    assert [e["step"] for e in emb] == [5, 10] and emb[0]["metadata"][0] == ["goal", "episode", "t"]
    (state,) = json.loads((emb[0]["tensor_path"].parent / "bookmarks.json").read_text())
    assert state["selectedColorOptionName"] == "goal" and state["pcaComponentDimensions"] == [0, 1]
    assert len(state["projections"]) == 9 and state["dataSetDimensions"] == [9, 3]
    with RunLogger(run, purge_step=10) as log:  # a resume from 10: the snapshot at 10 went with the crash
        log.embedding("msg", torch.randn(4, 3), None, 12)
    assert [e["step"] for e in read_projector(run)] == [5, 12]
