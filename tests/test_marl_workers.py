"""Environment copies stepped in worker processes (``marl.env_workers``): the same run as in one process,
to the last bit, with any number of workers; a worker that fails or dies is named; an environment that
vectorises its own copies refuses workers in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from dni_agents.config import ConfigError, load_config
from dni_agents.drivers import marl
from dni_agents.drivers.marl.env import make_copies
from dni_agents.drivers.marl.workers import WorkerCopies

# workers step copy-by-copy environments: the bundled speaker_listener on mpe2 itself (its default, the
# batched dni_envs port, steps all copies in one call and refuses workers)
ON_MPE2 = {"speaker_listener": ["marl.env=mpe2.simple_speaker_listener_v4"]}
SL_ON_MPE2 = ON_MPE2["speaker_listener"]
TINY = ["trainer.steps=3", "marl.num_envs=5", "marl.max_steps=6", "marl.epochs=2", "marl.eval_episodes=10",
        "log.embedding_samples=0"]


def _run(tmp_path, workers: int, name: str = "speaker_listener"):
    cfg = load_config(name, [f"log.dir={tmp_path}", *TINY, f"marl.env_workers={workers}",
                             *ON_MPE2.get(name, [])])
    result = marl.train(cfg, tmp_path / f"{name}{workers}", progress=False)
    state = torch.load(tmp_path / f"{name}{workers}" / marl.CHECKPOINT, weights_only=True)["system"]
    return result, state


@pytest.mark.parametrize("name,counts", [("speaker_listener", (2, 3)), ("switch_riddle", (2,))])
def test_workers_give_the_same_run_as_one_process(tmp_path, name, counts):
    """Training (rollouts, PPO, the channel's interface) and evaluation, with 0, 2 and 3 workers over 5
    copies (slices of 2, 3 and 1, 2, 2 copies): the same parameters and the same returns. The switch riddle
    routes its bulb by the environments' ``message_sources()``, which the workers answer too."""
    ref_result, ref_state = _run(tmp_path, 0, name)
    for workers in counts:
        result, state = _run(tmp_path, workers, name)
        assert result["mean_return"] == ref_result["mean_return"]
        assert result["curve"] == ref_result["curve"]
        for agent_name, agent in ref_state["agents"].items():
            for key, tensor in agent["module"].items():
                assert torch.equal(tensor, state["agents"][agent_name]["module"][key]), (workers, key)


def test_worker_copies_step_exactly_like_the_copies_in_this_process(tmp_path):
    cfg = load_config("speaker_listener", [f"log.dir={tmp_path}", "marl.num_envs=4", *SL_ON_MPE2])
    here = make_copies(cfg, 4, workers=0)
    there = make_copies(cfg, 4, workers=2)
    try:
        assert isinstance(there, WorkerCopies) and there.rows == [2, 2]
        a, b = here.reset(seed=11), there.reset(seed=11)
        rng = np.random.default_rng(0)
        for _ in range(3):
            for x, y in zip(a, b, strict=True):
                assert x.keys() == y.keys()
                for agent in x:
                    if isinstance(x[agent], dict):
                        assert x[agent].keys() == y[agent].keys()
                        for k in x[agent]:
                            np.testing.assert_array_equal(x[agent][k], y[agent][k])
                    else:
                        np.testing.assert_array_equal(x[agent], y[agent])
            actions = {"speaker_0": rng.integers(0, 3, 4), "listener_0": rng.integers(0, 5, 4)}
            a, b = here.step(actions), there.step(actions)
    finally:
        there.close()


def test_a_ctrl_c_leaves_the_workers_to_the_learner(tmp_path):
    """SIGINT (a Ctrl-C reaches the whole terminal's process group) does not end a worker: the learner
    stops at its next update boundary and checkpoints, which still steps the environments."""
    cfg = load_config("speaker_listener", [f"log.dir={tmp_path}", "marl.num_envs=4", *SL_ON_MPE2])
    copies = make_copies(cfg, 4, workers=2)
    try:
        copies.reset(seed=0)
        for proc in copies._procs:
            os.kill(proc.pid, signal.SIGINT)
        obs, rewards, *_ = copies.step({"speaker_0": np.zeros(4, dtype=np.int64),
                                        "listener_0": np.zeros(4, dtype=np.int64)})
        assert rewards["listener_0"].shape == (4,)
        assert all(proc.poll() is None for proc in copies._procs)
    finally:
        copies.close()
    assert copies._procs == []


def test_a_failing_or_dead_worker_is_named(tmp_path):
    cfg = load_config("speaker_listener", [f"log.dir={tmp_path}", "marl.num_envs=4", *SL_ON_MPE2])
    copies = make_copies(cfg, 4, workers=2)
    copies.reset(seed=0)
    with pytest.raises(RuntimeError, match="environment worker 0 .* failed"):
        copies.step({"speaker_0": np.full(4, 99), "listener_0": np.zeros(4, dtype=np.int64)})
    copies = make_copies(cfg, 4, workers=2)
    copies.reset(seed=0)
    copies._procs[1].kill()
    copies._procs[1].wait()
    with pytest.raises(RuntimeError, match=r"environment worker 1 .*copies 2\.\.3\) died"):
        copies.step({"speaker_0": np.zeros(4, dtype=np.int64), "listener_0": np.zeros(4, dtype=np.int64)})
    assert copies._procs == []  # the others were stopped


def test_workers_start_from_a_script_without_a_main_guard(tmp_path):
    """A user's script that trains at module level (no ``if __name__ == "__main__"``): workers are fresh
    interpreters running our module, never a re-import of the script (multiprocessing's spawn would run it
    again in every worker)."""
    script = tmp_path / "train_here.py"
    script.write_text(
        "from dni_agents.config import load_config\n"
        "from dni_agents.drivers.marl.env import make_copies\n"
        f"cfg = load_config('speaker_listener', ['log.dir={tmp_path}', '{SL_ON_MPE2[0]}'])\n"
        "copies = make_copies(cfg, 3, workers=2)\n"
        "obs, _ = copies.reset(seed=0)\n"
        "print('rows', obs['listener_0'].shape[0])\n"
        "copies.close()\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("rows 3") == 1


def test_an_environment_with_its_own_vector_env_refuses_workers(tmp_path):
    cfg = load_config("digits_referential", [f"log.dir={tmp_path}", "marl.env_workers=2"])
    with pytest.raises(ConfigError, match="marl.env_workers: 2, but dni_envs.digits_referential steps all"):
        make_copies(cfg, 4)
