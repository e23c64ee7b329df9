"""mpe2's speaker–listener and simple reference batched in torch (dni_envs.simple_speaker_listener_v4,
simple_reference_v3, and reference_narrow's vector_env): every copy equals mpe2's own environment reset
with ``seed + i``, step for step, with discrete and with continuous actions (mpe2's
``continuous_actions=True``); the one-copy views pass PettingZoo's API tests; bad arguments fail with one
clear line; the vector protocol's shapes and dtypes hold."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from dni_envs import reference_narrow, simple_reference_v3, simple_speaker_listener_v4
from dni_envs.mpe_batched import AgentBody, BatchedWorld, Body
from gymnasium import spaces
from pettingzoo.test import api_test, parallel_api_test
from pettingzoo.utils.env_logger import EnvLogger

SCENARIOS = {
    "simple_speaker_listener_v4": (simple_speaker_listener_v4, {}),
    "simple_reference_v3": (simple_reference_v3, {}),
    "simple_reference_v3 local_ratio=0.2 max_cycles=9": (simple_reference_v3,
                                                         {"local_ratio": 0.2, "max_cycles": 9}),
}


def mpe2_copies(name: str, kwargs: dict, n: int) -> list[Any]:
    module = importlib.import_module(f"mpe2.{name.split()[0]}")
    return [module.parallel_env(**{"max_cycles": 25, **kwargs}) for _ in range(n)]


def random_actions(vec: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every agent's action in every copy: any value of a ``Discrete`` space (words included), or a uniform
    point of a ``Box`` (in its dtype, float32, as ``Box.sample`` gives)."""
    out = {}
    for a in vec.possible_agents:
        space = vec.action_space(a)
        if isinstance(space, spaces.Discrete):
            out[a] = rng.integers(space.n, size=vec.num_envs)
        else:
            out[a] = rng.uniform(space.low, space.high, (vec.num_envs, *space.shape)).astype(space.dtype)
    return out


def one_copy(x: np.ndarray) -> Any:
    """Copy ``i``'s action as a PettingZoo env takes it: an int, or the row of floats."""
    return int(x) if np.ndim(x) == 0 else x


def assert_plays_like(vec: Any, refs: list[Any], seeds: list[int | None], rng: np.random.Generator) -> int:
    """Reset ``vec`` and each ``refs[i]`` (with ``seed + i``, or no seed) and step both with the same
    random actions (:func:`random_actions`) until the episodes end; everything equal to 1e-5.
    Returns the number of episodes compared."""
    E, agents = vec.num_envs, vec.possible_agents
    for seed in seeds:
        obs, infos = vec.reset(seed=seed)
        expected = [r.reset(seed=None if seed is None else seed + i)[0] for i, r in enumerate(refs)]
        assert infos == {a: {} for a in agents}
        for a in agents:
            np.testing.assert_allclose(obs[a].numpy(), np.stack([o[a] for o in expected]), atol=1e-5, rtol=0)
        steps = 0
        while vec.running:
            actions = random_actions(vec, rng)
            obs, rewards, terms, truncs, _ = vec.step(actions)
            outs = [r.step({a: one_copy(actions[a][i]) for a in agents}) for i, r in enumerate(refs)]
            steps += 1
            for a in agents:
                np.testing.assert_allclose(obs[a].numpy(), np.stack([o[0][a] for o in outs]), atol=1e-5,
                                           rtol=0, err_msg=f"{a} observation, step {steps}")
                np.testing.assert_allclose(rewards[a].numpy(), [o[1][a] for o in outs], atol=1e-5, rtol=0,
                                           err_msg=f"{a} reward, step {steps}")
                assert terms[a].tolist() == [o[2][a] for o in outs]
                assert truncs[a].tolist() == [o[3][a] for o in outs]
        assert steps == vec.max_cycles and all(not r.agents for r in refs)  # mpe2's episodes end with ours
    return E * len(seeds)


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_copy_equals_mpe2_reset_with_seed_plus_its_index(name: str) -> None:
    """50 copies, three resets each (seeded, unseeded: the copies' generators go on as mpe2's do, seeded
    again): 150 episodes of random actions, observations / rewards / flags equal at every step."""
    module, kwargs = SCENARIOS[name]
    vec = module.vector_env(50, **kwargs)
    refs = mpe2_copies(name, kwargs, 50)
    assert assert_plays_like(vec, refs, [7, None, 1000], np.random.default_rng(0)) == 150


@pytest.mark.parametrize("name", ["simple_speaker_listener_v4", "simple_reference_v3"])
def test_continuous_actions_every_copy_equals_mpe2(name: str) -> None:
    """mpe2's ``continuous_actions=True``: the same Box action spaces, and 40 copies x 3 resets = 120
    episodes of uniform random actions in the box equal mpe2's copies at every step."""
    module, kwargs = SCENARIOS[name]
    vec = module.vector_env(40, continuous_actions=True)
    refs = mpe2_copies(name, {"continuous_actions": True}, 40)
    for a in vec.possible_agents:
        assert vec.action_space(a) == refs[0].action_space(a) and vec.action_space(a).dtype == np.float32
        assert vec.observation_space(a) == refs[0].observation_space(a)
    assert assert_plays_like(vec, refs, [11, None, 500], np.random.default_rng(5)) == 120


@pytest.mark.parametrize("name", ["simple_speaker_listener_v4", "simple_reference_v3"])
def test_continuous_actions_outside_the_box_are_clipped_as_mpe2_clips_them(name: str) -> None:
    """Actions from below 0 to above 1, as numpy float64, torch float32 and torch float64 (and integers):
    clipped to the box (mpe2's ClipOutOfBoundsWrapper), equal to mpe2 given the same numbers; the
    outputs keep the protocol's dtypes and shapes."""
    module, _ = SCENARIOS[name]
    E = 6
    vec = module.vector_env(E, continuous_actions=True)
    refs = mpe2_copies(name, {"continuous_actions": True}, E)
    rng = np.random.default_rng(3)
    vec.reset(seed=2)
    for i, r in enumerate(refs):
        r.reset(seed=2 + i)
    EnvLogger.suppress_output()  # mpe2 warns about each clipped action
    try:
        for t in range(vec.max_cycles):
            raw = {a: rng.uniform(-0.5, 1.5, (E, *vec.action_space(a).shape)) for a in vec.possible_agents}
            if t % 4 == 1:
                raw = {a: x.astype(np.float32) for a, x in raw.items()}
            if t % 4 == 3:
                raw = {a: np.floor(x).astype(np.int64) for a, x in raw.items()}  # -1, 0, 1
            given = {a: torch.from_numpy(x) for a, x in raw.items()} if t % 4 in (1, 2) else raw
            obs, rewards, _, truncs, _ = vec.step(given)
            outs = [r.step({a: raw[a][i] for a in raw}) for i, r in enumerate(refs)]
            for a in vec.possible_agents:
                expected = np.stack([o[0][a] for o in outs])
                np.testing.assert_allclose(obs[a].numpy(), expected, atol=1e-5, rtol=0)
                np.testing.assert_allclose(rewards[a].numpy(), [o[1][a] for o in outs], atol=1e-5, rtol=0)
                assert obs[a].dtype == torch.float32 and obs[a].shape == (E, *vec.observation_space(a).shape)
                assert rewards[a].dtype == torch.float32 and rewards[a].shape == (E,)
                assert truncs[a].tolist() == [o[3][a] for o in outs]
    finally:
        EnvLogger.unsuppress_output()
    assert not vec.running and not any(r.agents for r in refs)


def _swap_push(w: BatchedWorld) -> None:
    w._plus, w._minus = w._minus, w._plus  # u = a[1] - a[2]: pushed the other way


def _noop_counts(w: BatchedWorld) -> None:
    w._minus = w._minus - 1  # u = a[2] - a[0]: the no-op component taken for a push


def _comm_reversed(w: BatchedWorld) -> None:
    w._comm_src = w._comm_src.flip(0)  # the utterance's components in the wrong order


@pytest.mark.parametrize("name", ["simple_speaker_listener_v4", "simple_reference_v3"])
@pytest.mark.parametrize("mutate", [_swap_push, _noop_counts, _comm_reversed])
def test_the_continuous_check_catches_a_wrong_decoding(name: str, mutate: Callable) -> None:
    vec = SCENARIOS[name][0].vector_env(4, continuous_actions=True)
    mutate(vec.world)
    with pytest.raises(AssertionError):
        assert_plays_like(vec, mpe2_copies(name, {"continuous_actions": True}, 4), [7],
                          np.random.default_rng(0))


@pytest.mark.parametrize("kwargs", [{}, {"oracle": True, "slot": 3},
                                    {"slot": 0, "local_ratio": 0.1, "max_cycles": 7}])
def test_reference_narrow_vector_env_equals_its_parallel_env_copies(kwargs: dict) -> None:
    vec = reference_narrow.vector_env(20, **kwargs)
    refs = [reference_narrow.parallel_env(**kwargs) for _ in range(20)]
    assert assert_plays_like(vec, refs, [3, None], np.random.default_rng(1)) == 40
    assert vec.comm_slice == refs[0].comm_slice
    assert vec.action_space("agent_0").n == 5
    assert vec.observation_space("agent_0") == refs[0].observation_space("agent_0")


def _wrong(world: BatchedWorld, **change: Any) -> BatchedWorld:
    """The same world with one physics constant changed (``accel``: every agent's)."""
    accel = change.pop("accel", None)
    agents = [AgentBody(**{**a.__dict__, "accel": accel}) if accel else a for a in world.agents]
    return BatchedWorld(world.num_envs, agents, world.landmarks, dim_c=world.dim_c, **change)


@pytest.mark.parametrize("name", ["simple_speaker_listener_v4", "simple_reference_v3"])
@pytest.mark.parametrize("change", [{"damping": 0.26}, {"dt": 0.11}, {"accel": 5.05}])
def test_the_equality_check_catches_a_wrong_physics_constant(name: str, change: dict) -> None:
    module, kwargs = SCENARIOS[name]
    vec = module.vector_env(4, **kwargs)
    vec.world = _wrong(vec.world, **change)
    with pytest.raises(AssertionError):
        assert_plays_like(vec, mpe2_copies(name, kwargs, 4), [7], np.random.default_rng(0))


@pytest.mark.parametrize("continuous", [False, True])
def test_batched_world_collides_and_limits_speed_like_mpe2(continuous: bool) -> None:
    """What neither scenario uses, checked on mpe2's simple tag world (agents and obstacles collide,
    agents have accel and max_speed): positions and velocities equal mpe2's after every step, with
    discrete and with continuous actions (Box(5): accel, not 5, scales the push)."""
    from mpe2 import simple_tag_v3

    E, steps = 6, 40
    refs = [simple_tag_v3.parallel_env(max_cycles=steps, continuous_actions=continuous) for _ in range(E)]
    for i, r in enumerate(refs):
        r.reset(seed=i)
    mw = refs[0].unwrapped.world
    agents = [AgentBody(a.name, size=a.size, movable=a.movable, collide=a.collide, mass=a.mass,
                        max_speed=a.max_speed, silent=a.silent, accel=a.accel) for a in mw.agents]
    landmarks = [Body(lm.name, size=lm.size, movable=lm.movable, collide=lm.collide, mass=lm.mass,
                      max_speed=lm.max_speed) for lm in mw.landmarks]
    world = BatchedWorld(E, agents, landmarks, dim_c=mw.dim_c, continuous=continuous)
    assert world.collisions and world.clamp_speed
    world.reset(np.stack([[e.state.p_pos for e in r.unwrapped.world.entities] for r in refs]))
    rng = np.random.default_rng(0)
    names = refs[0].possible_agents
    spaces_ = [refs[0].action_space(a) for a in names]
    assert world.action_sizes == [s.shape[0] if continuous else s.n for s in spaces_]
    for _ in range(steps):
        if continuous:
            actions = rng.uniform(0, 1, (E, len(names), 5)).astype(np.float32)
            world.step(torch.from_numpy(actions.reshape(E, -1)))
        else:
            actions = rng.integers(5, size=(E, len(names)))
            world.step(torch.from_numpy(actions))
        for i, r in enumerate(refs):
            r.step({a: one_copy(actions[i, j]) for j, a in enumerate(names)})
        entities = [r.unwrapped.world.entities for r in refs]
        pos = [[e.state.p_pos for e in es] for es in entities]
        vel = [[e.state.p_vel for e in es] for es in entities]
        np.testing.assert_allclose(world.pos.numpy(), pos, atol=1e-9)
        np.testing.assert_allclose(world.vel.numpy(), vel, atol=1e-9)


@pytest.mark.parametrize("name", ["simple_speaker_listener_v4", "simple_reference_v3"])
def test_one_copy_passes_pettingzoos_parallel_and_aec_api_tests(name: str) -> None:
    module = importlib.import_module(f"dni_envs.{name}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parallel_api_test(module.parallel_env(), num_cycles=1000)
        api_test(module.env(), num_cycles=100)
    assert not [w for w in caught if "render_mode" in str(w.message)]
    env = module.parallel_env()
    assert isinstance(env, module.raw_env) and env.render_mode is None
    assert module.raw_env.metadata["name"] == name and env.metadata["is_parallelizable"]
    assert "| Import" in module.__doc__ and name in module.__doc__  # the documentation table
    assert not hasattr(env, "comm_slice")  # mpe2's words are actions: nothing for the driver to fill


@pytest.mark.parametrize("name", ["simple_speaker_listener_v4", "simple_reference_v3"])
def test_one_copy_with_continuous_actions_passes_the_api_tests(name: str) -> None:
    module = importlib.import_module(f"dni_envs.{name}")
    parallel_api_test(module.parallel_env(continuous_actions=True), num_cycles=1000)
    api_test(module.env(continuous_actions=True), num_cycles=100)
    env = module.parallel_env(continuous_actions=True)
    ref = mpe2_copies(name, {"continuous_actions": True}, 1)[0]
    assert all(env.action_space(a) == ref.action_space(a) for a in env.possible_agents)


@pytest.mark.parametrize("continuous", [False, True])
@pytest.mark.parametrize("name", ["simple_speaker_listener_v4", "simple_reference_v3"])
def test_one_copy_equals_mpe2(name: str, continuous: bool) -> None:
    module = importlib.import_module(f"dni_envs.{name}")
    kwargs = {"continuous_actions": True} if continuous else {}
    ours, theirs = module.parallel_env(**kwargs), mpe2_copies(name, kwargs, 1)[0]
    rng = np.random.default_rng(2)
    for seed in (5, 6):
        o1, _ = ours.reset(seed=seed)
        o2, _ = theirs.reset(seed=seed)
        while ours.agents:
            assert o1.keys() == o2.keys() and all(o1[a].dtype == np.float32 for a in o1)
            assert all(np.allclose(o1[a], o2[a], atol=1e-5) for a in o1)
            space = {a: ours.action_space(a) for a in ours.agents}
            actions = {a: int(rng.integers(s.n)) if isinstance(s, spaces.Discrete)
                       else rng.uniform(0, 1, s.shape).astype(np.float32) for a, s in space.items()}
            o1, r1, te1, tr1, _ = ours.step(actions)
            o2, r2, te2, tr2, _ = theirs.step(actions)
            assert r1.keys() == r2.keys()
            assert all(abs(r1[a] - r2[a]) < 1e-5 and type(r1[a]) is float for a in r1)
            assert te1 == te2 and tr1 == tr2 and ours.agents == theirs.agents


BAD: list[tuple[Callable[[], Any], type[Exception], str]] = [
    (lambda: simple_speaker_listener_v4.vector_env(4, continuous_actions=1), ValueError,
     r"continuous_actions=1 is not supported; continuous_actions must be one of False, True"),
    (lambda: simple_reference_v3.vector_env(4, render_mode="human"), ValueError,
     r"render_mode='human' is not supported; render_mode must be one of None"),
    (lambda: simple_speaker_listener_v4.parallel_env(local_ratio=0.5), TypeError,
     r"unknown keyword argument local_ratio=0.5; it takes max_cycles, device"),
    (lambda: simple_reference_v3.vector_env(4, colour="red"), TypeError,
     r"unknown keyword argument colour='red'"),
    (lambda: simple_reference_v3.vector_env(4, local_ratio=1.5), ValueError, r"local_ratio=1.5; it must be"),
    (lambda: simple_reference_v3.vector_env(4, benchmark_data=True), ValueError, r"benchmark_data=True"),
    (lambda: simple_reference_v3.vector_env(0), ValueError, r"num_envs=0; it must be an int >= 1"),
    (lambda: simple_speaker_listener_v4.vector_env(2, max_cycles=0), ValueError, r"max_cycles=0"),
    (lambda: simple_speaker_listener_v4.vector_env(2, device="tpu9"), ValueError, r"device='tpu9'"),
    (lambda: reference_narrow.vector_env(2, slot=-1), ValueError, r"slot must be >= 0"),
]


@pytest.mark.parametrize("make, error, message", BAD)
def test_bad_arguments_fail_with_one_clear_line(make: Callable[[], Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        make()


def test_the_driver_names_the_refused_key() -> None:
    from dni_agents.config import ConfigError
    from dni_agents.drivers.marl.env import constructed

    with pytest.raises(ConfigError, match=r"marl.env_kwargs.benchmark_data=True: .* refuses it"):
        constructed("dni_envs.simple_reference_v3", simple_reference_v3.vector_env,
                    {"benchmark_data": True, "continuous_actions": True}, args=(4,))


def test_bad_actions_and_steps_fail_with_one_clear_line() -> None:
    vec = simple_speaker_listener_v4.vector_env(3)
    with pytest.raises(RuntimeError, match="call reset"):
        vec.step({"speaker_0": np.zeros(3, int), "listener_0": np.zeros(3, int)})
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=r"action 5 of 'listener_0' in copy 1 is outside .*Discrete\(5\)"):
        vec.step({"speaker_0": np.zeros(3, int), "listener_0": np.array([0, 5, 0])})
    with pytest.raises(ValueError, match=r"action -1 of 'speaker_0' in copy 2"):
        vec.step({"speaker_0": torch.tensor([0, 1, -1]), "listener_0": torch.zeros(3, dtype=torch.int64)})
    with pytest.raises(ValueError, match=r"no action for agent 'listener_0'"):
        vec.step({"speaker_0": np.zeros(3, int)})
    with pytest.raises(ValueError, match=r"action of 'speaker_0' is float64 \(3,\); it must be integers"):
        vec.step({"speaker_0": np.zeros(3), "listener_0": np.zeros(3, int)})
    with pytest.raises(ValueError, match=r"action of 'listener_0' is int64 \(2,\)"):
        vec.step({"speaker_0": np.zeros(3, int), "listener_0": np.zeros(2, int)})
    for _ in range(25):
        vec.step({"speaker_0": [0, 1, 2], "listener_0": [1, 2, 3]})  # lists are actions too
    with pytest.raises(RuntimeError, match=r"after the episode ended .*max_cycles=25"):
        vec.step({"speaker_0": np.zeros(3, int), "listener_0": np.zeros(3, int)})


def test_bad_continuous_actions_fail_with_one_clear_line() -> None:
    vec = simple_speaker_listener_v4.vector_env(3, continuous_actions=True)
    vec.reset(seed=0)
    ok = {"speaker_0": np.zeros((3, 3), np.float32), "listener_0": np.zeros((3, 5), np.float32)}
    bad = np.zeros((3, 5))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"action of 'listener_0' in copy 1 is NaN \(component 2\)"):
        vec.step({**ok, "listener_0": bad})
    with pytest.raises(ValueError, match=r"action of 'speaker_0' in copy 2 is NaN"):
        vec.step({**ok, "speaker_0": torch.tensor([[0.0] * 3, [1.0] * 3, [0, float("nan"), 0]])})
    with pytest.raises(ValueError, match=r"action of 'listener_0' is int64 \(3,\); it must be floats of "
                                         r"shape \(3, 5\) \(its action space is Box"):
        vec.step({**ok, "listener_0": np.zeros(3, int)})  # a discrete action
    with pytest.raises(ValueError, match=r"action of 'speaker_0' is torch.bool \(3, 3\)"):
        vec.step({**ok, "speaker_0": torch.zeros(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"no action for agent 'listener_0'"):
        vec.step({"speaker_0": ok["speaker_0"]})
    assert vec.steps == 0
    given = {a: x.copy() + 2 for a, x in ok.items()}
    vec.step(given)  # clipped inside; the caller's arrays untouched
    assert all((given[a] == 2).all() for a in given)
    assert torch.equal(vec.world.c[:, 0], torch.ones(3, 3, dtype=torch.float64))


@pytest.mark.parametrize("name, dims", [("simple_speaker_listener_v4", {"speaker_0": 3, "listener_0": 11}),
                                        ("simple_reference_v3", {"agent_0": 21, "agent_1": 21})])
def test_vector_env_returns_the_documented_tensors(name: str, dims: dict[str, int]) -> None:
    module = importlib.import_module(f"dni_envs.{name}")
    E = 7
    vec = module.vector_env(E, device="cpu")
    assert vec.num_envs == E and vec.possible_agents == list(dims) and vec.device == torch.device("cpu")
    for a, n in dims.items():
        assert vec.observation_space(a) is vec.observation_space(a) and vec.observation_space(a).shape == (n,)
        assert vec.action_space(a) is vec.action_space(a)
    assert {a: vec.action_space(a).n for a in dims} == ({"speaker_0": 3, "listener_0": 5} if "speaker" in name
                                                        else {"agent_0": 50, "agent_1": 50})
    obs, infos = vec.reset(seed=0)
    assert infos == {a: {} for a in dims}
    actions_np = {a: np.arange(E) % vec.action_space(a).n for a in dims}
    actions_t = {a: torch.as_tensor(x, dtype=torch.int32) for a, x in actions_np.items()}
    for t in range(25):
        obs, rewards, terms, truncs, infos = vec.step(actions_np if t % 2 else actions_t)
        for a, n in dims.items():
            assert obs[a].dtype == torch.float32 and obs[a].shape == (E, n) and obs[a].is_contiguous()
            assert obs[a].device == torch.device("cpu")
            assert rewards[a].dtype == torch.float32 and rewards[a].shape == (E,)
            assert terms[a].dtype == torch.bool and terms[a].shape == (E,) and not terms[a].any()
            assert truncs[a].dtype == torch.bool and truncs[a].shape == (E,)
            assert bool(truncs[a].all()) == (t == 24) and bool(truncs[a].any()) == (t == 24)
        assert infos == {a: {} for a in dims}
    # numpy and torch actions are the same actions
    other = module.vector_env(E)
    other.reset(seed=0)
    first = vec.reset(seed=0)[0]
    for a in dims:
        assert torch.equal(first[a], other.reset(seed=0)[0][a])
    o1 = vec.step(actions_np)[0]
    o2 = other.step(actions_t)[0]
    assert all(torch.equal(o1[a], o2[a]) for a in dims)


def _play(vec: Any, seed: int, steps: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = [{a: o.cpu().numpy() for a, o in vec.reset(seed=seed)[0].items()}]
    for _ in range(steps):
        obs, rewards, *_ = vec.step(random_actions(vec, rng))
        out.append({**{a: o.cpu().numpy() for a, o in obs.items()},
                    **{f"r/{a}": r.cpu().numpy() for a, r in rewards.items()}})
    return out


def test_joint_action_index_without_integer_matmul_is_the_same() -> None:
    """The CUDA path (no integer matmul there) picks the same table rows."""
    a, b = simple_reference_v3.vector_env(9), simple_reference_v3.vector_env(9)
    b.world._int_matmul = False
    for x, y in zip(_play(a, 4, 25), _play(b, 4, 25), strict=True):
        assert all(np.array_equal(x[k], y[k]) for k in x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("continuous", [False, True])
@pytest.mark.parametrize("name", ["simple_speaker_listener_v4", "simple_reference_v3"])
def test_cuda_copies_equal_cpu_copies(name: str, continuous: bool) -> None:
    module = importlib.import_module(f"dni_envs.{name}")
    kwargs = {"continuous_actions": continuous}
    cpu, cuda = module.vector_env(33, **kwargs), module.vector_env(33, device="cuda", **kwargs)
    assert cuda.reset(seed=0)[0][cuda.possible_agents[0]].device.type == "cuda"
    for x, y in zip(_play(cpu, 1, 25), _play(cuda, 1, 25), strict=True):
        assert all(np.allclose(x[k], y[k], atol=1e-5) for k in x)


def test_reference_bounds_order_random_below_centroid_below_oracle() -> None:
    """scripts/reference_bounds.py: steering to one's own goal (perfect communication) beats steering to
    the landmarks' centre (no communication), which beats random moves, by wide margins."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "reference_bounds.py"
    spec = importlib.util.spec_from_file_location("reference_bounds", path)
    bounds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bounds)
    got = {kind: bounds.play(kind, 300, 5.0, 10**6)["mean_return"]
           for kind in ("random", "centroid", "oracle")}
    assert got["random"] < got["centroid"] - 5 and got["centroid"] < got["oracle"] - 5
