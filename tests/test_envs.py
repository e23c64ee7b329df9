"""API conformance, seeding and solvability tests for the dni_envs PettingZoo environments."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from dni_envs import ReferentialGame, SwitchRiddle, reference_narrow, referential, switch_riddle
from pettingzoo.test import parallel_api_test


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"n_candidates": 2, "n_features": 1, "message_size": 1}, {"n_candidates": 10, "message_size": 16}],
)
def test_referential_parallel_api(kwargs: dict[str, Any]) -> None:
    parallel_api_test(referential.parallel_env(**kwargs), num_cycles=50)


@pytest.mark.parametrize("kwargs", [{}, {"n_agents": 1}, {"n_agents": 2}, {"n_agents": 4, "max_steps": 20}])
def test_switch_riddle_parallel_api(kwargs: dict[str, Any]) -> None:
    parallel_api_test(switch_riddle.parallel_env(**kwargs), num_cycles=50)


def _rollout(env: Any, seed: int, action_seed: int = 0, episodes: int = 5) -> list[Any]:
    """Flattened (obs, reward) trajectory under a fixed, env-independent action sequence."""
    act_rng = np.random.default_rng(action_seed)
    traj: list[Any] = []
    obs, _ = env.reset(seed=seed)
    for _ in range(episodes):
        while env.agents:
            actions = {}
            for a in env.agents:
                space = env.action_space(a)
                if hasattr(space, "n"):
                    actions[a] = int(act_rng.integers(space.n))
                else:
                    actions[a] = act_rng.uniform(-1, 1, space.shape).astype(np.float32)
            traj.extend(obs[a].tolist() for a in sorted(obs))
            obs, rew, *_ = env.step(actions)
            traj.extend(rew[a] for a in sorted(rew))
        obs, _ = env.reset()  # unseeded reset continues the seeded stream
    return traj


@pytest.mark.parametrize("make", [ReferentialGame, lambda: SwitchRiddle(n_agents=5)])
def test_seeding_is_reproducible(make: Any) -> None:
    assert _rollout(make(), seed=123) == _rollout(make(), seed=123)
    assert _rollout(make(), seed=123) != _rollout(make(), seed=124)


def test_referential_comm_slice_carries_message() -> None:
    env = ReferentialGame(n_candidates=3, n_features=2, message_size=4)
    env.reset(seed=0)
    msg = np.array([0.5, -0.5, 2.0, -2.0], dtype=np.float32)
    obs, *_ = env.step({"sender": msg, "receiver": 0})
    np.testing.assert_allclose(obs["receiver"][env.comm_slice["receiver"]], np.clip(msg, -1, 1))
    assert obs["receiver"][env.comm_slice["receiver"].start - 1] == 1.0  # phase flag precedes message


def _referential_success(env: ReferentialGame, oracle: bool, episodes: int = 200, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    wins = 0.0
    for ep in range(episodes):
        _, infos = env.reset(seed=seed + ep)
        target = infos["sender"]["target"]
        msg = -np.ones(env.message_size, dtype=np.float32)
        if oracle:
            msg[target] = 1.0  # one-hot index code, needs message_size >= n_candidates
        else:
            msg = rng.uniform(-1, 1, env.message_size).astype(np.float32)
        obs, *_ = env.step({"sender": msg, "receiver": 0})
        received = obs["receiver"][env.comm_slice["receiver"]]
        pick = int(np.argmax(received[: env.n_candidates])) if oracle else int(rng.integers(env.n_candidates))
        _, rew, term, *_ = env.step({"sender": msg, "receiver": pick})
        assert all(term.values()) and not env.agents
        wins += rew["receiver"]
        assert rew["sender"] == rew["receiver"]
    return wins / episodes


def test_referential_oracle_solves_and_random_does_not() -> None:
    env = ReferentialGame(n_candidates=5, n_features=8, message_size=8)
    assert _referential_success(env, oracle=True) == 1.0
    assert _referential_success(env, oracle=False) < 0.4  # chance is 0.2


class CountingProtocol:
    """Decentralised 1-bit protocol for n=3 (each prisoner uses only its own observations).

    Bulb on means "at least two distinct prisoners have visited". A prisoner knows that if the bulb is on
    or if some earlier day it was not in the room; a never-before-seen prisoner who finds the bulb on
    therefore knows all three have visited and Tells. This matches the oracle for n=3.
    """

    def __init__(self, env: SwitchRiddle) -> None:
        self.max_steps = env.max_steps
        self.visits = {a: 0 for a in env.possible_agents}

    def act(self, obs: dict[str, np.ndarray]) -> dict[str, int]:
        actions = {}
        for agent, o in obs.items():
            actions[agent] = 0
            if o[0] < 0.5:
                continue
            day = int(round(float(o[2]) * self.max_steps))
            bulb_on = o[1] > 0.5
            if bulb_on and self.visits[agent] == 0:
                actions[agent] = 2  # tell
            else:
                knows_two = bulb_on or self.visits[agent] < day
                actions[agent] = int(knows_two)  # no tell, set bulb
            self.visits[agent] += 1
        return actions


def _switch_mean_return(env: SwitchRiddle, policy: str, episodes: int = 3000) -> float:
    total = 0.0
    for ep in range(episodes):
        obs, _ = env.reset(seed=ep)
        proto = CountingProtocol(env)
        while env.agents:
            actions = proto.act(obs) if policy == "count" else {a: 2 for a in env.agents}
            obs, rew, *_ = env.step(actions)
            total += rew[env.possible_agents[0]]
    return total / episodes


def test_switch_riddle_optimal_return_value() -> None:
    assert SwitchRiddle(n_agents=3).max_steps == 6
    assert SwitchRiddle(n_agents=3).optimal_return() == pytest.approx(540 / 729)
    assert SwitchRiddle(n_agents=1).optimal_return() == pytest.approx(1.0)


def test_switch_riddle_counting_protocol_near_optimal() -> None:
    env = SwitchRiddle(n_agents=3)
    assert _switch_mean_return(env, "count") >= 0.9 * env.optimal_return()


def test_switch_riddle_tell_immediately_is_negative() -> None:
    assert _switch_mean_return(SwitchRiddle(n_agents=3), "tell", episodes=200) < 0.0


def test_render_ansi() -> None:
    for env in (ReferentialGame(render_mode="ansi"), SwitchRiddle(render_mode="ansi")):
        env.reset(seed=0)
        assert isinstance(env.render(), str)
        env.close()


@pytest.mark.parametrize("kwargs", [{}, {"oracle": True}, {"slot": 0, "max_cycles": 5}])
def test_reference_narrow_parallel_api(kwargs: dict[str, Any]) -> None:
    parallel_api_test(reference_narrow.parallel_env(**kwargs), num_cycles=50)


def test_reference_narrow_carries_nothing_between_the_agents_and_its_oracle_is_the_own_goal() -> None:
    """mpe2's words are gone: the slot stays zero whatever the agents do, and the only thing an agent
    learns about its own goal is what the other's message says (or, oracle, the goal itself)."""
    env = reference_narrow.parallel_env(oracle=True)
    rng = np.random.default_rng(0)
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        while env.agents:
            for a, o in obs.items():
                assert o.shape == (16,) and (o[11:13] == 0).all()
                other = "agent_1" if a == "agent_0" else "agent_0"
                # my goal (oracle one-hot) is the colour the other agent sees (mpe2 colours: 0.75 on the hue)
                assert int(np.argmax(o[13:])) == int(np.argmax(obs[other][8:11]))
            obs, *_ = env.step({a: int(rng.integers(5)) for a in env.agents})
    with pytest.raises(ValueError, match="a move is 0..4"):
        env.reset(seed=0)
        env.step({"agent_0": 7, "agent_1": 0})


@pytest.mark.parametrize("name", ["switch_riddle_v0", "referential_v0", "digits_referential_v0",
                                  "reference_narrow_v0"])
def test_every_versioned_module_passes_the_parallel_and_the_aec_api_tests(name: str) -> None:
    """PettingZoo's module convention: ``parallel_env``, ``env`` (AEC) and ``raw_env`` (the class)."""
    import importlib
    import warnings

    from pettingzoo.test import api_test

    module = importlib.import_module(f"dni_envs.{name}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parallel_api_test(module.parallel_env(), num_cycles=20)
        api_test(module.env(), num_cycles=20)
    assert not [w for w in caught if "render_mode" in str(w.message)]  # wrappers read env.render_mode
    assert module.parallel_env().render_mode is None
    assert isinstance(module.parallel_env(), module.raw_env)
    assert module.raw_env.metadata["name"] == name
    assert "| Import" in module.__doc__ and name in module.__doc__  # the documentation table
