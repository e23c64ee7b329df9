"""The lean learner equals the reference path: replaying whole episodes in one batched pass (one stacked
message per channel, one backward pass for all networks) trains every bundled multi-agent config to the
same parameters, utility models and optimizer states as stepping through the episode in time with one
tick per group of coupled networks (``marl.batched_replay: false``), up to float rounding."""

from __future__ import annotations

import pytest
import torch

from dni_agents.config import bundled_configs, load_config
from dni_agents.drivers import marl

MARL_CONFIGS = [n for n in bundled_configs() if load_config(n).driver == "marl"]


def trained(name: str, batched: bool, extra: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], list]:
    """Every tensor of the system's state after 2 updates (2 PPO epochs each), and what each channel sent."""
    cfg = load_config(name, ["marl.num_envs=12", "marl.epochs=2", "marl.env_workers=0", *extra,
                             f"marl.batched_replay={str(batched).lower()}"])
    system, groups, channels = marl.build(cfg, marl.make_env(cfg), torch.device("cpu"))
    player = marl.Player(cfg, groups, channels, torch.device("cpu"), cfg.marl.num_envs)
    generator, clock = torch.Generator().manual_seed(0), 0
    for update in range(2):
        ep = player.play(update, generator)
        _, clock = marl.ppo_update(cfg, system, groups, player, ep, generator, clock, track=True)
    flat: dict[str, torch.Tensor] = {}

    def walk(x: object, path: str) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{path}.{k}")
        elif isinstance(x, torch.Tensor):
            flat[path] = x.double()

    walk(system.state_dict(), "")
    return flat, [i.messages_sent for i in system.interfaces.values()]


def assert_same_training(name: str, *extra: str) -> tuple[str, ...]:
    cfg = load_config(name, list(extra))
    system, groups, _ = marl.build(cfg, marl.make_env(cfg), torch.device("cpu"))
    (stepwise, sent_a), (batched, sent_b) = trained(name, False, extra), trained(name, True, extra)
    assert sent_a == sent_b  # a stacked message counts as the messages it holds (warm-up, checkpoints)
    assert stepwise.keys() == batched.keys()
    for key, a in stepwise.items():
        b = batched[key]
        if key.endswith("actor.bias") and any(g.net.candidates for g in groups):
            # a candidate scorer's one actor bias shifts every candidate's logit alike: its true gradient is
            # 0 and what it gets is rounding, which Adam turns into steps of up to lr each way
            assert (a - b).abs().max() <= 2 * 2 * 2 * cfg.trainer.lr, key
            continue
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (key, float((a - b).abs().max()))
    return marl.batched_groups(groups)


@pytest.mark.parametrize("name", MARL_CONFIGS)
def test_batched_replay_trains_every_bundled_config_as_the_step_by_step_replay(name):
    batched = assert_same_training(name)
    cfg = load_config(name)
    recurrent = cfg.marl.recurrent
    assert (len(batched) == 0) if recurrent else True  # memory steps in time
    if name in ("speaker_listener", "digits_referential", "crypto", "referential"):
        assert len(batched) == len(cfg.agents)  # no loop among the channels: every network at once


@pytest.mark.parametrize("extra", [
    ("agents.1.period=2",),  # a listener that decides every other step hears the messages of its steps
    ("agents.0.period=3",),  # a speaker that speaks every third step: its message is held in between
    ("interface_defaults.channel.outage=0.5", "interface_defaults.channel.noise=1.0"),  # weighted rows
    ("interface_defaults.warmup_steps=30",),  # the stack of 24 messages of the 2nd minibatch straddles it
    ("interface_defaults.mode=backprop",), ("interface_defaults.mode=none",),
])
def test_batched_replay_equals_the_step_by_step_one_in_the_corners(extra):
    assert assert_same_training("speaker_listener", *extra) == ("speaker_0", "listener_0")


@pytest.mark.parametrize("mode", ["cdni", "backprop", "none"])
def test_a_message_that_arrives_after_the_episode_is_silence_in_both_paths(mode):
    """A one-step game through a channel of delay 1: nothing sent is ever heard."""
    assert_same_training("digits_referential", "interface_defaults.channel.delay=1",
                         f"interface_defaults.mode={mode}")


def test_a_loop_of_channels_steps_in_time():
    """simple_reference: each agent hears the other, so the messages of one depend on the other's."""
    cfg = load_config("reference")
    _, groups, _ = marl.build(cfg, marl.make_env(cfg), torch.device("cpu"))
    assert marl.batched_groups(groups) == ()
