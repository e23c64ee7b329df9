"""dni_envs.simple_crypto_v3: mpe2's simple crypto batched in torch equals mpe2's own, copy for copy and step
for step, with discrete and with continuous actions (mpe2's ``continuous_actions=True``); the one-copy view
passes PettingZoo's API test; bad arguments and actions are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dni_envs import simple_crypto_v3
from dni_envs.simple_crypto import SimpleCrypto
from mpe2 import simple_crypto_v3 as mpe2_crypto
from pettingzoo.test import api_test, parallel_api_test
from pettingzoo.utils.env_logger import EnvLogger

AGENTS = ["eve_0", "bob_0", "alice_0"]
MAX_CYCLES = 25


def _check_step(ours: tuple, theirs: list[tuple], t: int) -> None:
    """Our batched (obs, rewards, terminations, truncations, infos) against mpe2's, one tuple per copy."""
    obs, rewards, terms, truncs, infos = ours
    for a in AGENTS:
        where = f"step {t}, agent {a}"
        np.testing.assert_allclose(obs[a].numpy(), np.stack([o[0][a] for o in theirs]), atol=1e-5,
                                   rtol=0, err_msg=f"observation, {where}")
        np.testing.assert_allclose(rewards[a].numpy(), [o[1][a] for o in theirs], atol=1e-5, rtol=0,
                                   err_msg=f"reward, {where}")
        for k, flags, what in ((2, terms, "termination"), (3, truncs, "truncation")):
            expected = [o[k][a] for o in theirs]
            np.testing.assert_array_equal(flags[a].numpy(), expected, err_msg=f"{what}, {where}")
        assert infos[a] == {} and all(o[4][a] == {} for o in theirs)


def test_equals_mpe2_step_by_step_over_many_episodes() -> None:
    """Copy i reset with seed s is mpe2 reset with seed s + i, and so on through unseeded resets (the copies'
    generators go on as mpe2's) and a second seeded reset: 16 copies x 8 episodes = 128 episodes, random
    words biased towards the message's two values so both listeners are often right and often wrong."""
    E = 16
    vec = simple_crypto_v3.vector_env(E, max_cycles=MAX_CYCLES)
    refs = [mpe2_crypto.parallel_env(max_cycles=MAX_CYCLES) for _ in range(E)]
    rng = np.random.default_rng(1234)
    seeds = [7, None, None, None, 40, None, None, None]
    seen: dict[str, set[float]] = {a: set() for a in AGENTS}
    for episode, seed in enumerate(seeds):
        obs, infos = vec.reset(seed=seed)
        theirs = [env.reset(seed=None if seed is None else seed + i) for i, env in enumerate(refs)]
        for a in AGENTS:
            np.testing.assert_allclose(obs[a].numpy(), np.stack([o[a] for o, _ in theirs]), atol=1e-5, rtol=0,
                                       err_msg=f"reset observation of {a}, episode {episode}")
            assert infos[a] == {}
        for t in range(MAX_CYCLES):
            words = np.where(rng.random((3, E)) < 0.7, rng.integers(0, 2, (3, E)), rng.integers(0, 4, (3, E)))
            actions = {a: words[k] for k, a in enumerate(AGENTS)}
            step = vec.step(actions)
            theirs = [env.step({a: int(actions[a][i]) for a in AGENTS}) for i, env in enumerate(refs)]
            _check_step(step, theirs, t)
            for a in AGENTS:
                seen[a].update(step[1][a].tolist())
        assert all(env.agents == [] for env in refs) and not vec.running
    # every outcome came up (eve right/wrong x bob right/wrong): the comparison saw every reward
    assert seen == {"eve_0": {-2.0, 0.0}, "bob_0": {-2.0, 0.0, 2.0}, "alice_0": {-2.0, 0.0, 2.0}}


def _utterances(rng: np.random.Generator, E: int, goal: np.ndarray) -> np.ndarray:
    """``(3, E, 4)`` float32 continuous actions: mostly uniform in the box, some all zeros (mpe2 skips such
    a listener), some the message's or the other landmark's one-hot (errors 0 and 2)."""
    x = rng.uniform(0, 1, (3, E, 4)).astype(np.float32)
    kind = rng.integers(0, 6, (3, E))
    x[kind == 0] = 0.0
    onehot = np.eye(4, dtype=np.float32)
    x[kind == 1] = onehot[np.broadcast_to(goal, (3, E))[kind == 1]]
    x[kind == 2] = onehot[1 - np.broadcast_to(goal, (3, E))[kind == 2]]
    return x


def test_continuous_actions_equal_mpe2_step_by_step_over_many_episodes() -> None:
    """mpe2's ``continuous_actions=True``: the same Box(0, 1, (4,)) spaces, and 16 copies x 8 episodes = 128
    episodes of utterances (:func:`_utterances`) equal mpe2's copies, observations, rewards and flags."""
    E = 16
    vec = simple_crypto_v3.vector_env(E, max_cycles=MAX_CYCLES, continuous_actions=True)
    refs = [mpe2_crypto.parallel_env(max_cycles=MAX_CYCLES, continuous_actions=True) for _ in range(E)]
    for a in AGENTS:
        assert vec.action_space(a) == refs[0].action_space(a) and vec.action_space(a).dtype == np.float32
        assert vec.observation_space(a) == refs[0].observation_space(a)
    rng = np.random.default_rng(99)
    skipped = 0
    for episode, seed in enumerate([3, None, None, None, 70, None, None, None]):
        obs, _ = vec.reset(seed=seed)
        theirs = [env.reset(seed=None if seed is None else seed + i) for i, env in enumerate(refs)]
        for a in AGENTS:
            np.testing.assert_allclose(obs[a].numpy(), np.stack([o[a] for o, _ in theirs]), atol=1e-5, rtol=0,
                                       err_msg=f"reset observation of {a}, episode {episode}")
        for t in range(MAX_CYCLES):
            said = _utterances(rng, E, vec.goal.numpy())
            skipped += int((said[:2] == 0).all(-1).sum())
            actions = {a: said[k] for k, a in enumerate(AGENTS)}
            step = vec.step(actions)
            theirs = [env.step({a: actions[a][i] for a in AGENTS}) for i, env in enumerate(refs)]
            _check_step(step, theirs, t)
        assert all(env.agents == [] for env in refs) and not vec.running
    assert skipped > 100  # the all-zero listeners were compared too


def test_continuous_actions_are_clipped_and_refused_as_mpe2_does() -> None:
    """Out of the box (numpy float64, torch float32 / float64): clipped, equal to mpe2 given the same
    numbers; a NaN, a misshapen or a discrete action is refused by name."""
    E = 5
    vec = simple_crypto_v3.vector_env(E, continuous_actions=True)
    refs = [mpe2_crypto.parallel_env(continuous_actions=True) for _ in range(E)]
    vec.reset(seed=1)
    for i, env in enumerate(refs):
        env.reset(seed=1 + i)
    rng = np.random.default_rng(4)
    EnvLogger.suppress_output()  # mpe2 warns about each clipped action
    try:
        for t in range(MAX_CYCLES):
            raw = {a: rng.uniform(-0.5, 1.5, (E, 4)) for a in AGENTS}
            if t % 3 == 1:
                raw = {a: x.astype(np.float32) for a, x in raw.items()}
            given = {a: torch.from_numpy(x) for a, x in raw.items()} if t % 3 else raw
            step = vec.step(given)
            _check_step(step, [env.step({a: raw[a][i] for a in AGENTS}) for i, env in enumerate(refs)], t)
    finally:
        EnvLogger.unsuppress_output()
    vec.reset(seed=0)
    ok = {a: np.full((E, 4), 0.5, np.float32) for a in AGENTS}
    nan = np.full((E, 4), 0.5)
    nan[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"action of 'bob_0' in copy 3 is NaN \(component 1\)"):
        vec.step({**ok, "bob_0": nan})
    with pytest.raises(ValueError, match=r"action of 'eve_0' is int64 \(5,\); it must be floats of shape "
                                         r"\(5, 4\)"):
        vec.step({**ok, "eve_0": np.zeros(E, dtype=np.int64)})
    with pytest.raises(ValueError, match="no action for agent 'alice_0'"):
        vec.step({a: x for a, x in ok.items() if a != "alice_0"})


def test_torch_actions_and_reward_table() -> None:
    """Tensor actions are taken as numpy ones; rewards are the table's: e - b to alice and bob, -e to eve."""
    vec = SimpleCrypto(4)
    vec.reset(seed=0)
    goal = vec.goal
    other = 1 - goal  # a wrong word (the other landmark's)
    obs, rewards, *_ = vec.step({"eve_0": torch.stack([goal[0], goal[1], other[2], other[3] + 2]),
                                 "bob_0": torch.stack([goal[0], other[1], goal[2], other[3]]),
                                 "alice_0": torch.tensor([0, 1, 2, 3])})
    np.testing.assert_array_equal(rewards["eve_0"].numpy(), [0, 0, -2, -2])
    np.testing.assert_array_equal(rewards["bob_0"].numpy(), [0, -2, 2, 0])
    np.testing.assert_array_equal(rewards["alice_0"].numpy(), [0, -2, 2, 0])
    np.testing.assert_array_equal(obs["eve_0"].numpy(), np.eye(4))  # alice's word, heard on the same step
    np.testing.assert_array_equal(obs["bob_0"][:, 4:].numpy(), np.eye(4))
    np.testing.assert_array_equal(obs["bob_0"][:, :4].numpy(), np.eye(4)[vec.key.numpy()])
    np.testing.assert_array_equal(obs["alice_0"].numpy(), np.concatenate([np.eye(4)[goal.numpy()],
                                                                          np.eye(4)[vec.key.numpy()]], 1))


@pytest.mark.filterwarnings("ignore:Observation numpy array is all zeros")  # eve's at reset, as in mpe2
@pytest.mark.parametrize("continuous", [False, True])
def test_one_copy_passes_the_parallel_api_test(continuous: bool) -> None:
    parallel_api_test(simple_crypto_v3.parallel_env(continuous_actions=continuous), num_cycles=1000)
    api_test(simple_crypto_v3.env(continuous_actions=continuous), num_cycles=100)


def test_spaces_and_outputs_have_the_protocol_shapes_and_dtypes() -> None:
    E = 5
    vec = simple_crypto_v3.vector_env(E)
    ref = mpe2_crypto.parallel_env()
    assert vec.possible_agents == list(ref.possible_agents) == AGENTS
    dims = {"eve_0": 4, "bob_0": 8, "alice_0": 8}
    for a in AGENTS:
        assert vec.observation_space(a) is vec.observation_space(a)
        assert vec.action_space(a) is vec.action_space(a)
        assert vec.action_space(a) == ref.action_space(a)  # Discrete(4)
        assert vec.observation_space(a) == ref.observation_space(a)
        assert vec.observation_space(a).shape == (dims[a],)
    assert vec.comm_slice == {"bob_0": slice(4, 8), "eve_0": slice(0, 4)}
    assert simple_crypto_v3.parallel_env().comm_slice == vec.comm_slice
    assert vec.metadata["name"] == "simple_crypto_v3" and vec.num_envs == E and vec.max_cycles == 25

    obs, infos = vec.reset(seed=0)
    assert infos == {a: {} for a in AGENTS}
    for a in AGENTS:
        assert obs[a].dtype == torch.float32 and obs[a].shape == (E, dims[a]) and obs[a].device.type == "cpu"
    assert (obs["eve_0"] == 0).all() and (obs["bob_0"][:, 4:] == 0).all()  # nobody has spoken yet
    actions = {a: np.arange(E) % 4 for a in AGENTS}
    for t in range(vec.max_cycles):
        obs, rewards, terms, truncs, infos = vec.step(actions)
        for a in AGENTS:
            assert obs[a].dtype == torch.float32 and obs[a].shape == (E, dims[a])
            assert rewards[a].dtype == torch.float32 and rewards[a].shape == (E,)
            assert terms[a].dtype == torch.bool and terms[a].shape == (E,) and not terms[a].any()
            assert truncs[a].dtype == torch.bool and truncs[a].shape == (E,)
            last = t == vec.max_cycles - 1
            assert bool(truncs[a].all()) == last and bool(truncs[a].any()) == last
            assert infos[a] == {}
    with pytest.raises(RuntimeError, match="reset"):
        vec.step(actions)
    vec.reset()
    obs["alice_0"].zero_()  # the caller's tensors are its own
    assert vec.step(actions)[0]["alice_0"].sum(1).eq(2).all()


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"local_ratio": 0.5}, TypeError, ["local_ratio=0.5", "max_cycles"]),
    ({"continuous_actions": "yes"}, ValueError, ["continuous_actions='yes'", "False, True"]),
    ({"render_mode": "human"}, ValueError, ["render_mode='human'", "None"]),
    ({"benchmark_data": True}, ValueError, ["benchmark_data=True", "False"]),
    ({"max_cycles": 0}, ValueError, ["max_cycles=0", ">= 1"]),
    ({"max_cycles": 2.5}, ValueError, ["max_cycles=2.5", "int"]),
    ({"device": "nowhere"}, ValueError, ["device='nowhere'"]),
])
def test_bad_kwargs_are_refused_by_name(kwargs: dict, error: type, words: list[str]) -> None:
    for make in (lambda: simple_crypto_v3.vector_env(2, **kwargs),
                 lambda: simple_crypto_v3.parallel_env(**kwargs)):
        with pytest.raises(error) as info:
            make()
        assert all(w in str(info.value) for w in words), str(info.value)
    for continuous in (False, True):
        simple_crypto_v3.vector_env(2, dynamic_rescaling=False, render_mode=None,
                                    continuous_actions=continuous)


def test_bad_actions_and_num_envs_are_refused() -> None:
    with pytest.raises(ValueError, match="num_envs=0"):
        simple_crypto_v3.vector_env(0)
    vec = simple_crypto_v3.vector_env(3)
    vec.reset(seed=0)
    ok = {a: np.zeros(3, dtype=np.int64) for a in AGENTS}
    with pytest.raises(ValueError, match="action 4 of 'bob_0' in copy 1"):
        vec.step({**ok, "bob_0": np.array([0, 4, 0])})
    with pytest.raises(ValueError, match="'eve_0'"):
        vec.step({**ok, "eve_0": np.zeros(3)})  # floats are not words
    with pytest.raises(ValueError, match="no action for agent 'alice_0'"):
        vec.step({a: x for a, x in ok.items() if a != "alice_0"})


def test_crypto_config_plays_the_batched_env_when_named() -> None:
    """configs/crypto.yaml plays mpe2's env; naming ours gives the lockstep vector env, whose observations
    carry what the config's interfaces and private_info read (bob [4, 8), eve [0, 4), alice's message)."""
    from dni_agents.config import load_config
    from dni_agents.drivers.marl.env import make_copies

    cfg = load_config("crypto", ["marl.env=dni_envs.simple_crypto_v3"])
    copies = make_copies(cfg, 4)
    assert isinstance(copies, SimpleCrypto) and copies.max_cycles == cfg.marl.max_steps
    obs, _ = copies.reset(seed=0)
    a, b = cfg.marl.private_info.obs_argmax
    assert torch.equal(obs["alice_0"][:, a:b].argmax(1), copies.goal)
    for iface in cfg.interfaces:
        assert slice(*iface.obs_slice) == copies.comm_slice[iface.receiver]
