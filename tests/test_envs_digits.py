"""API conformance, seeding, sampling and split tests for the dni_envs digits referential game."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from dni_envs import DigitsReferential, digits_referential
from pettingzoo.test import parallel_api_test
from sklearn.datasets import load_digits

DIGITS = load_digits()
PIXELS = (DIGITS.data / 16.0).astype(np.float32)
LABELS = DIGITS.target


def _class_of(image: np.ndarray) -> int:
    """Label of the dataset picture with exactly these pixels (the dataset has no duplicate pictures)."""
    (hits,) = np.nonzero((PIXELS == image).all(axis=1))
    assert len(hits) == 1
    return int(LABELS[hits[0]])


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"n_candidates": 2, "message_size": 1}, {"n_candidates": 10, "message_size": 16, "split": "test"}],
)
def test_digits_parallel_api(kwargs: dict[str, Any]) -> None:
    parallel_api_test(digits_referential.parallel_env(**kwargs), num_cycles=50)


def test_observation_layout_and_comm_slice() -> None:
    env = DigitsReferential(n_candidates=4, message_size=3)
    obs, infos = env.reset(seed=0)
    assert obs["sender"].shape == (64,) and obs["receiver"].shape == (4 * 64 + 3,)
    assert obs["sender"].dtype == np.float32 and obs["receiver"].dtype == np.float32
    assert env.comm_slice["receiver"] == slice(256, 259)
    np.testing.assert_array_equal(obs["receiver"][env.comm_slice["receiver"]], 0.0)
    assert 0.0 <= obs["sender"].min() and obs["sender"].max() <= 1.0
    assert set(infos["sender"]) == {"target"} and set(infos["receiver"]) == {"answer"}
    assert env.max_steps == 1


def _rollout(seed: int, episodes: int = 5) -> list[Any]:
    env = DigitsReferential()
    traj: list[Any] = []
    obs, infos = env.reset(seed=seed)
    for ep in range(episodes):
        traj.extend(obs[a].tolist() for a in sorted(obs))
        traj.append((infos["sender"]["target"], infos["receiver"]["answer"]))
        _, rew, *_ = env.step({"sender": np.zeros(2, dtype=np.float32), "receiver": ep % 5})
        traj.extend(rew[a] for a in sorted(rew))
        obs, infos = env.reset()  # unseeded reset continues the seeded stream
    return traj


def test_seeding_is_reproducible() -> None:
    assert _rollout(seed=123) == _rollout(seed=123)
    assert _rollout(seed=123) != _rollout(seed=124)


@pytest.mark.parametrize("split", ["train", "test"])
def test_target_and_distractors(split: str) -> None:
    K = 5
    env = DigitsReferential(n_candidates=K, split=split)
    env.reset(seed=0)
    seen_targets = set()
    for _ in range(300):
        obs, infos = env.reset()
        c, answer = infos["sender"]["target"], infos["receiver"]["answer"]
        seen_targets.add(c)
        sender = obs["sender"]
        cands = obs["receiver"][: K * 64].reshape(K, 64)
        assert _class_of(sender) == c
        assert not np.array_equal(cands[answer], sender)  # a different picture of the same class
        classes = [_class_of(img) for img in cands]
        assert classes[answer] == c
        assert len(set(classes)) == K  # distractors: distinct classes, all other than c
        assert list(env.candidate_classes) == classes
        env.step({"sender": np.zeros(2, dtype=np.float32), "receiver": 0})
    assert seen_targets == set(range(10))


def test_answer_position_is_uniform() -> None:
    env = DigitsReferential(n_candidates=5)
    env.reset(seed=1)
    answers = np.array([env.reset()[1]["receiver"]["answer"] for _ in range(2000)])
    counts = np.bincount(answers, minlength=5)
    assert counts.min() > 300  # expected 400 each


@pytest.mark.parametrize("pick_answer", [True, False])
def test_reward_iff_pick_is_answer(pick_answer: bool) -> None:
    env = DigitsReferential(n_candidates=3)
    for seed in range(50):
        _, infos = env.reset(seed=seed)
        answer = infos["receiver"]["answer"]
        pick = answer if pick_answer else (answer + 1 + seed % 2) % 3
        obs, rew, term, trunc, infos2 = env.step({"sender": np.ones(2, dtype=np.float32), "receiver": pick})
        assert rew == {"sender": float(pick_answer), "receiver": float(pick_answer)}
        assert all(term.values()) and not any(trunc.values()) and env.agents == []
        assert infos2["receiver"]["answer"] == answer
    with pytest.raises(RuntimeError):
        env.step({"sender": np.ones(2, dtype=np.float32), "receiver": 0})


def _images_used(split: str, episodes: int = 400) -> set[int]:
    env = DigitsReferential(split=split)
    env.reset(seed=0)
    used: set[int] = set()
    for _ in range(episodes):
        env.reset()
        used.add(env.sender_index)
        used.update(int(i) for i in env.candidate_indices)
    return used


def test_splits_are_disjoint() -> None:
    train, test = _images_used("train"), _images_used("test")
    assert train and test and not train & test
    assert all(i % 5 == 0 for i in test) and all(i % 5 != 0 for i in train)
    assert len(test) > 300  # covers most of the 360 test pictures


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_candidates": 1}, "n_candidates"),
        ({"n_candidates": 11}, "n_candidates"),
        ({"n_candidates": 2.5}, "n_candidates"),
        ({"message_size": 0}, "message_size"),
        ({"split": "val"}, "split"),
        ({"render_mode": "human"}, "render_mode"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DigitsReferential(**kwargs)


def test_render_ansi() -> None:
    env = DigitsReferential(render_mode="ansi")
    env.reset(seed=0)
    env.step({"sender": np.array([0.5, 2.0], dtype=np.float32), "receiver": 0})
    text = env.render()
    assert isinstance(text, str) and "target class=" in text and "pick=0" in text and "1." in text
    assert DigitsReferential().render() is None


def test_vector_env_deals_valid_games_for_every_copy_and_scores_them() -> None:
    """The lockstep version the marl driver plays: every copy is a legal game (target of the sender's class,
    never its picture; distractors of distinct other classes), seeded, with the one-copy spaces."""
    single = DigitsReferential(n_candidates=5, message_size=4)
    vec = digits_referential.vector_env(300, n_candidates=5, message_size=4)
    for a in single.possible_agents:
        assert vec.observation_space(a) == single.observation_space(a)
        assert vec.action_space(a) == single.action_space(a)
    assert vec.comm_slice == single.comm_slice
    obs, infos = vec.reset(seed=3)
    again, _ = digits_referential.vector_env(300, n_candidates=5, message_size=4).reset(seed=3)
    np.testing.assert_array_equal(obs["receiver"], again["receiver"])
    assert obs["sender"].shape == (300, 64) and obs["receiver"].shape == (300, 5 * 64 + 4)
    np.testing.assert_array_equal(obs["receiver"][:, vec.comm_slice["receiver"]], 0.0)
    answers, targets = infos["receiver"]["answer"], infos["sender"]["target"]
    for e in range(300):
        cands = obs["receiver"][e, :320].reshape(5, 64)
        classes = [_class_of(c) for c in cands]
        assert len(set(classes)) == 5 and classes[answers[e]] == targets[e] == _class_of(obs["sender"][e])
        assert not np.array_equal(cands[answers[e]], obs["sender"][e])
    assert len(set(answers.tolist())) == 5 and len(set(targets.tolist())) == 10
    picks = np.where(np.arange(300) % 2 == 0, answers, (answers + 1) % 5)
    _, rewards, terms, truncs, _ = vec.step({"sender": np.zeros((300, 4)), "receiver": picks})
    np.testing.assert_array_equal(rewards["receiver"], (np.arange(300) % 2 == 0).astype(np.float32))
    assert terms["sender"].all() and not truncs["sender"].any()
