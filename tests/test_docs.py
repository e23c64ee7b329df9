"""The documentation is run, not just read: the README's first screen holds what a newcomer needs, its
library example and the core example train, the environment guide's example game trains and evaluates
through the CLI, docs/config.md is what the schema generates, and every documented `train` command and
config is accepted by the config loader."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest
import torch
import yaml

from dni_agents.config import bundled_configs, load_config, parse_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
FIRST_SCREEN = 60
# the pages this suite checks commands in (the benchmark write-ups keep the exact commands that made their
# numbers, some from earlier versions of the keys)
GUIDES = ["README.md", "docs/library.md", "docs/multi-agent.md", "docs/environments.md", "docs/drivers.md",
          "docs/config.md", "docs/extending.md", "docs/glossary.md"]


def marked_block(text: str, marker: str, lang: str) -> str:
    """The fenced ``lang`` block that follows the HTML comment starting with ``<!-- marker``."""
    match = re.search(rf"<!-- {re.escape(marker)}[^\n]*-->\n```{lang}\n(.*?)```", text, re.S)
    assert match, f"no ```{lang} block marked <!-- {marker} ... -->"
    return match.group(1)


def fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def synthetic_batches(n: int = 20, rows: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(rows, 784, generator=g), torch.randint(0, 10, (rows,), generator=g))
            for _ in range(n)]


# ------------------------------------------------------------------------------------------ README


def test_readme_first_screen_holds_install_the_library_example_one_cli_line_and_the_map() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    screen = "\n".join(lines[:FIRST_SCREEN])
    assert "pip install -c constraints.txt -e ." in screen
    assert "make run" in screen and "make test" in screen
    example = marked_block(screen, "library example", "python")  # wholly inside the first screen
    assert len(example.splitlines()) <= 15, "the library example is at most 15 lines"
    assert "DNI(256, context_dim=10)" in example and "context=" in example, "the example shows cDNI"
    assert len(re.findall(r"^dni-agents train \S+", screen, re.M)) == 1, "one CLI line on the first screen"
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", screen))
    pages = {p.name for p in DOCS.glob("*.md")}
    assert pages <= linked, f"the map misses {sorted(pages - linked)}"


def test_every_link_from_the_readme_and_the_guides_to_a_page_resolves() -> None:
    for name in GUIDES:
        path = ROOT / name
        for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (path.parent / target).resolve().is_file(), f"{name} links to missing {target}"


def test_user_facing_text_has_no_issue_numbers_or_asks() -> None:
    # `taskset` (a command of the benchmark write-ups that pins a process to a core) contains "asks"
    for path in [README, *sorted(DOCS.glob("*.md"))]:
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            assert not re.search(r"issue [0-9]|asks", line.replace("taskset", ""), re.I), \
                f"{path.name}:{i}: {line.strip()}"


def test_the_readme_library_example_trains_the_layers_and_the_utility_models() -> None:
    example = marked_block(README.read_text(encoding="utf-8"), "library example", "python")
    scope: dict = {"batches": synthetic_batches()}
    torch.manual_seed(0)
    exec(compile(example, "README.md", "exec"), scope)
    assert torch.isfinite(scope["loss"])
    torch.manual_seed(0)  # the example's first random draw is MLP(): the same seed gives its start
    start, trained = scope["MLP"](), scope["model"]
    for name in ("l1", "dni12", "dni23"):  # the lowest layer learns from ĝ; each U from its targets
        before = dict(getattr(start, name).named_parameters())
        after = dict(getattr(trained, name).named_parameters())
        assert before, f"{name} has no parameters"
        assert any(not torch.equal(before[k], after[k]) for k in before), f"{name} did not learn"


def test_the_core_example_trains_with_dni_and_cdni() -> None:
    example = marked_block((DOCS / "library.md").read_text(encoding="utf-8"), "core example", "python")
    scope: dict = {"batches": synthetic_batches()}
    exec(compile(example, "docs/library.md", "exec"), scope)
    stats = scope["stats"]
    assert set(stats) == {"l1->l2", "l2->l3"}
    assert all("grad_cosine" in records[-1] for records in stats.values())


# ------------------------------------------------------------------------------------------ config


def _config_reference():
    script = ROOT / "scripts" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("config_reference", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_is_what_the_schema_generates() -> None:
    fresh = _config_reference().render()
    assert (DOCS / "config.md").read_text(encoding="utf-8") == fresh, \
        "docs/config.md is out of date: run python scripts/config_reference.py"
    for key in ("`trainer.steps`", "`interface_defaults.channel.delay`", "`interfaces[].obs_slice`",
                "`marl.private_info.info`", "`agents[].policy`", "`rnn.truncation`", "`hier.period`"):
        assert key in fresh
    assert "| `trainer.optimizer` | `adam \\| sgd` | `adam` |" in fresh  # type, allowed values, default


def test_config_reference_describes_fields_from_the_schema_comments() -> None:
    module = _config_reference()
    from dni_agents.drivers.ff.config import FFConfig

    notes = module.descriptions(FFConfig)
    assert notes["hidden"] == "units per hidden layer (mlp) or channels per conv block (cnn)"
    assert module.type_name(FFConfig.model_fields["layers"].annotation,
                            FFConfig.model_fields["layers"].metadata) == "int ≥ 2, ≤ 12"


def _train_commands(text: str) -> list[list[str]]:
    """The arguments after ``train`` of every documented ``dni-agents train`` command line."""
    out = []
    for block in fenced(text, "bash") + fenced(text, ""):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip().removeprefix("$ ")
            if re.search(r"(^|\s|/)dni-agents train |dni_agents\.cli train ", line):
                words = shlex.split(line)
                out.append(words[words.index("train") + 1:])
    return out


def test_every_documented_train_command_is_accepted_by_the_config_loader() -> None:
    checked = 0
    for name in GUIDES:
        for args in _train_commands((ROOT / name).read_text(encoding="utf-8")):
            words, config = [], None
            it = iter(args)
            for word in it:
                if word in ("--procs", "--resume", "--run-dir"):
                    next(it, None)
                elif config is None:
                    config = word
                else:
                    words.append(word)
            if config not in bundled_configs():
                continue  # the environment guide's own guess.yaml: trained by the test below
            if any(w.startswith("~") for w in words) or "trainer.lrr=1e-3" in words:
                continue  # deletion syntax, and the README's example of an error
            load_config(config, words)
            checked += 1
    assert checked >= 15


def test_every_documented_config_block_is_a_valid_config() -> None:
    checked = 0
    for name in GUIDES:
        for block in fenced((ROOT / name).read_text(encoding="utf-8"), "yaml"):
            data = yaml.safe_load(block)
            if isinstance(data, dict) and "driver" in data:
                parse_config(data)
                checked += 1
    assert checked >= 3


# ------------------------------------------------------------------------------------------ environments


def _cli(args: list[str], cwd: pathlib.Path, pythonpath: str | None) -> subprocess.CompletedProcess:
    """``dni-agents ARGS`` as a user runs it: the installed command, which (unlike ``python -m``) does not
    put the working folder on the import path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    command = pathlib.Path(sys.executable).with_name("dni-agents")
    assert command.is_file(), f"the dni-agents command is not installed beside {sys.executable}"
    return subprocess.run([str(command), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_environment_guide_example_trains_and_evaluates_through_the_cli(tmp_path: pathlib.Path) -> None:
    guide = (DOCS / "environments.md").read_text(encoding="utf-8")
    game = marked_block(guide, "environment example", "python")
    (tmp_path / "my_game.py").write_text(game, encoding="utf-8")
    (tmp_path / "guess.yaml").write_text(marked_block(guide, "environment config", "yaml"), encoding="utf-8")
    small = ["trainer.steps=2", "marl.num_envs=8", "marl.eval_episodes=16", "marl.epochs=1"]

    done = _cli(["train", "guess.yaml", *small], tmp_path, ".")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0.0 <= result["success_rate"] <= 1.0 and "sender->receiver/mi_bits" in result
    assert (tmp_path / "runs" / "guess" / "config.yaml").is_file()

    again = _cli(["eval", "runs/guess"], tmp_path, ".")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "success_rate" in json.loads(again.stdout.strip().splitlines()[-1])

    lost = _cli(["eval", "runs/guess"], tmp_path, None)  # the guide's warning: eval needs PYTHONPATH too
    assert lost.returncode == 2
    assert "cannot import 'my_game'" in lost.stderr and len(lost.stderr.strip().splitlines()) == 1

    refused = _cli(["train", "guess.yaml", *small, "marl.env_kwargs.n_goals=1"], tmp_path, ".")
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("dni-agents: error: marl.env_kwargs.n_goals=1: my_game refuses it "
                                      "(n_goals must be at least 2, got 1)")
    assert refused.stderr.strip() in guide  # the guide shows the very line


@pytest.mark.parametrize("page", ["environments.md", "library.md", "multi-agent.md", "drivers.md",
                                  "extending.md", "glossary.md", "config.md"])
def test_every_guide_page_has_a_title_and_is_reachable_from_the_readme(page: str) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    assert text.startswith("# ")
    assert f"(docs/{page})" in README.read_text(encoding="utf-8")
