"""Channels in the multi-agent driver: when a message is heard, what noise does to it (and that the learner
hears the same), the controls (ablation, the frozen code), and the cDNI context a gated utility model sees."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch

from dni_agents.cli import main
from dni_agents.config import ConfigError, load_config
from dni_agents.drivers import marl
from dni_agents.drivers.marl.controls import ablation_permutation
from dni_agents.drivers.marl.gates import logit_sensitivity
from dni_agents.drivers.marl.metrics import comm_metrics

TINY = ["trainer.steps=2", "marl.num_envs=32", "marl.eval_episodes=64", "log.every=1",
        "log.histogram_every=2", "log.embedding_samples=20", "trainer.checkpoint_every=2"]


def digits(tmp_path: Path, *extra: str):
    return load_config("digits_referential", [f"log.dir={tmp_path}", *TINY, *extra])


def player_for(cfg):
    env = marl.make_env(cfg)
    system, groups, channels = marl.build(cfg, env, torch.device("cpu"))
    player = marl.Player(cfg, groups, channels, torch.device("cpu"), cfg.marl.num_envs)
    return system, groups, channels, player


def test_delay_0_is_heard_in_the_same_step_and_delay_1_in_a_one_step_game_is_never_heard(tmp_path):
    cfg = digits(tmp_path, "interface_defaults.mode=backprop", "marl.message_rms=3.0")
    _, _, channels, player = player_for(cfg)
    marl.calibrate_messages(player, 3.0, seed=0)
    ep = player.play(0, torch.Generator().manual_seed(0))
    c = channels[0]
    sent, heard = ep.messages[c.name], ep.heard[c.name]  # (1, E, 1, 4)
    assert torch.allclose(heard, c.model.transmit(sent, ep.noise[c.name]))  # what was sent, through noise
    assert comm_metrics(ep, channels, "sender", 0.2)[c.name]["mi_bits"] > 0.5

    late = digits(tmp_path, "interface_defaults.mode=backprop", "interface_defaults.channel.delay=1")
    _, _, channels, player = player_for(late)
    marl.calibrate_messages(player, 3.0, seed=0)
    ep = player.play(0, torch.Generator().manual_seed(0))
    metrics = comm_metrics(ep, channels, "sender", 0.2)[channels[0].name]
    assert torch.equal(ep.heard[channels[0].name], torch.zeros_like(ep.heard[channels[0].name]))
    assert metrics["mi_bits"] == 0.0  # nothing heard before the receiver acts ...
    assert metrics["sent_mi_bits"] > 0.5  # ... although the sender said something about the target


@pytest.mark.parametrize("outage", [0.0, 0.4])
def test_the_learner_hears_exactly_what_the_rollout_heard(tmp_path, outage):
    """Replaying a noisy channel with the episode's noise (and its outages) gives the receiver the inputs it
    acted on: before any update every log-probability is the one recorded while playing."""
    cfg = digits(tmp_path, "interface_defaults.mode=backprop", "interface_defaults.channel.noise=2.0",
                 f"interface_defaults.channel.outage={outage}", "marl.message_rms=3.0")
    system, groups, channels, player = player_for(cfg)
    marl.calibrate_messages(player, 3.0, seed=0)
    ep = player.play(0, torch.Generator().manual_seed(0))
    heard = ep.heard[channels[0].name]
    if outage:  # a copy whose channel is down hears silence, the others what was sent
        down = ep.outage[channels[0].name] == 0
        assert 0 < int(down.sum()) < len(down)
        assert torch.equal(heard[:, down], torch.zeros_like(heard[:, down]))
        assert heard[:, ~down].abs().min() > 0
        assert player.play(0, None, greedy=True).outage == {}  # evaluation: the channel is always up
    else:
        assert ep.outage == {}
    mb = torch.arange(cfg.marl.num_envs)
    receiver = next(g for g in groups if g.name == "receiver")
    gae = marl.advantages(ep, receiver, 0.99, 0.95)
    with ExitStack() as stack:
        ticks = {}
        for members in system.coupled():
            tick = stack.enter_context(system.tick(members, 1))
            ticks.update(dict.fromkeys(members, tick))
        for batched in ((), marl.batched_groups(groups)):  # step by step, and the whole episode at once
            out = marl.replay(groups, player, ep, mb, ticks, 10 * len(batched), {"receiver": gae[0]},
                              batched=batched)
            dist = receiver.net.dist(out["receiver"])
            logp = dist.log_prob(ep.actions["receiver"][:, mb].reshape(1, -1))
            assert torch.allclose(logp, ep.logp["receiver"][:, mb].reshape(1, -1), atol=1e-6)
            ticks["receiver"].add_loss(logp.sum() * 0)


def test_ablation_shuffles_messages_across_copies_or_silences_them(tmp_path):
    cfg = digits(tmp_path, "interface_defaults.mode=backprop")
    _, _, channels, player = player_for(cfg)
    c = channels[0]
    clean = player.play(5, None, greedy=True)
    assert set(clean.heard[c.name].unique().tolist()) <= {-1.0, 1.0}  # evaluation: exact symbols
    zero = player.play(5, None, greedy=True, ablate="zero")
    assert torch.equal(zero.heard[c.name], torch.zeros_like(zero.heard[c.name]))
    permuted = player.play(5, None, greedy=True, ablate="permute")
    perm = ablation_permutation(cfg.marl.num_envs, 5)
    assert bool((perm != torch.arange(len(perm))).all())  # no copy keeps its own message
    assert torch.equal(permuted.heard[c.name][:, :, 0], c.model.transmit(clean.messages[c.name][:, perm, 0],
                                                                          training=False))


def test_eval_ablate_from_the_command_line(tmp_path, capsys):
    assert main(["train", "digits_referential", f"log.dir={tmp_path}", *TINY]) == 0
    capsys.readouterr()
    run = str(tmp_path / "digits_referential")
    assert main(["eval", run, "--ablate", "permute"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ablate"] == "permute" and 0.0 <= result["mean_return"] <= 1.0
    assert main(["train", "ff_digits", f"log.dir={tmp_path}", "trainer.steps=2", "name=ff"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "ff"), "--ablate", "zero"]) == 2
    assert "eval --ablate: only marl runs ablate messages (this run: ff)" in capsys.readouterr().err


def test_the_frozen_control_is_loud_from_the_start_and_never_learns(tmp_path):
    cfg = digits(tmp_path, "interface_defaults.mode=none", "marl.message_rms=3.0")
    _, groups, channels, player = player_for(cfg)
    marl.calibrate_messages(player, 3.0, seed=0)
    ep = player.play(0, torch.Generator().manual_seed(0))
    assert ep.messages[channels[0].name].pow(2).mean().sqrt().item() == pytest.approx(3.0, rel=1e-4)
    result = marl.train(cfg, tmp_path / "frozen", log=False, progress=False)
    assert "ablated_return" in result and "sender->receiver/grad_cosine" not in result
    system, groups, channels, player = player_for(cfg)
    marl.calibrate_messages(player, 3.0, seed=0)
    sender = next(g for g in groups if g.name == "sender")
    frozen = [p.detach().clone() for p in sender.net.parameters()]
    gen = torch.Generator().manual_seed(0)
    marl.ppo_update(cfg, system, groups, player, player.play(0, gen), gen, 0)
    assert all(torch.equal(a, b) for a, b in zip(frozen, sender.net.parameters()))  # no gradient, ever


def test_gated_cdni_context_ends_with_the_receivers_sensitivity_per_logit(tmp_path):
    cfg = digits(tmp_path)  # the config's default: cdni with a gated MLP utility model
    system, groups, channels, player = player_for(cfg)
    c = channels[0]
    assert c.interface.utility.gate
    ep = player.play(0, torch.Generator().manual_seed(0))
    receiver = next(g for g in groups if g.name == "receiver")
    mb = torch.arange(cfg.marl.num_envs)
    adv = torch.randn(1, cfg.marl.num_envs, 1)
    h = ep.messages[c.name][0]
    sens = marl.Sensitivity({"receiver": logit_sensitivity(receiver, ep, mb, adv, 0.01)})
    context = marl.sender_context(c, receiver, ep, 0, mb, 1, torch.tanh(h), sens)
    assert context.shape == (cfg.marl.num_envs, marl.context_size(c, receiver))
    onehot = torch.nn.functional.one_hot(ep.actions["receiver"][0, :, 0], 5).float()
    probs = ep.probs["receiver"][0, :, 0]
    bonus = 0.01 * probs * (probs.log() - (probs * probs.log()).sum(-1, keepdim=True))  # ∂(−c·H)/∂logits
    sensitivity = adv[0] * (onehot - probs) - bonus  # −∂loss/∂logits: Â (e_a − π) − c π (log π + H)
    assert torch.allclose(context[:, -5:], sensitivity)
    assert c.interface.utility.gate == 5
    assert torch.equal(context[:, : receiver.obs_dim], ep.obs["receiver"][0, :, 0])


def test_gate_without_cdni_and_delay_0_loops_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="utility.gate needs mode cdni"):
        player_for(digits(tmp_path, "interface_defaults.mode=dni"))
    cfg = load_config("reference", [f"log.dir={tmp_path}", "interface_defaults.channel.delay=0"])
    with pytest.raises(ConfigError, match="delay-0 channels among agent_0, agent_1 form a loop"):
        player_for(cfg)


def test_bench_comm_writes_every_field_the_issue_names_and_a_plot(tmp_path):
    from dni_agents.benches import comm

    out = tmp_path / "comm.json"
    comm.bench(quick=True, out=out, seeds=1,
               only=["digits_referential", "none", "backprop", "frozen", "cdni"],
               overrides=["trainer.steps=3", "marl.num_envs=16", "marl.eval_episodes=32", "log.every=1"])
    report = json.loads(out.read_text())
    assert [r["method"] for r in report["results"]] == ["none", "backprop", "frozen", "cdni"]
    for row in report["results"]:
        assert {"task", "method", "seed", "mean_return", "success_rate", "mi_bits", "ablated_return",
                "grad_cosine", "grad_r2", "env_steps_per_s", "wall_s", "curve"} <= row.keys()
    cdni = report["results"][3]
    backprop, frozen = report["results"][1:3]
    assert frozen["frozen_rms"] == pytest.approx(backprop["message_rms"])  # matched to backprop
    assert cdni["grad_cosine"] is not None and report["results"][0]["grad_cosine"] is None
    summary = report["summary"]["digits_referential"]
    assert summary["no_comm_reference"] == report["results"][0]["ablated_return"]
    assert "cdni_ablated_vs_no_comm" in summary
    assert out.with_suffix(".png").stat().st_size > 1000
    with pytest.raises(ConfigError, match="--only: nope is no task or method"):
        comm.bench(quick=True, only=["nope"])


def test_the_interface_carries_what_the_receiver_hears_and_a_saturated_symbol_gets_no_gradient(tmp_path):
    """The channel sits on the sender's side of the interface: the utility model sees (and predicts the
    gradient for) tanh(h + σε), and the sender's backward applies the channel's derivative itself."""
    cfg = digits(tmp_path, "interface_defaults.mode=cdni")
    system, groups, channels, player = player_for(cfg)
    c = channels[0]
    ep = player.play(0, torch.Generator().manual_seed(0))
    seen = []
    send = c.interface.send
    c.interface.send = lambda h, step, context=None: seen.append(h.detach()) or send(h, step, context)
    marl.ppo_update(cfg, system, groups, player, ep, torch.Generator().manual_seed(0), 0)
    order = torch.randperm(cfg.marl.num_envs, generator=torch.Generator().manual_seed(0))  # epoch 0's
    heard = c.model.transmit(ep.messages[c.name][0], ep.noise[c.name][0])[order].flatten(0, 1)
    assert len(seen) == cfg.marl.epochs  # one minibatch per epoch; the first, before any update:
    assert torch.allclose(seen[0], heard) and seen[0].abs().max() <= 1
    h = torch.tensor([[0.1, 30.0, -30.0, 0.0]], requires_grad=True)
    out = c.model.transmit(h, torch.zeros_like(h))
    out.backward(torch.ones_like(out))  # any ĝ for the heard symbol
    assert h.grad[0, 0] > 0.9 and h.grad[0, 1] == 0 and h.grad[0, 2] == 0


def test_a_module_with_vector_env_is_played_in_lockstep_and_any_other_copy_by_copy(tmp_path):
    from dni_envs.digits_referential import DigitsReferentialVector

    from dni_agents.drivers.marl.env import ParallelCopies, make_copies

    assert isinstance(make_copies(digits(tmp_path), 8), DigitsReferentialVector)
    named = digits(tmp_path, "marl.env=dni_envs.digits_referential:parallel_env")  # a callable: as named
    copies = make_copies(named, 8)
    assert isinstance(copies, ParallelCopies)
    obs, infos = copies.reset(seed=5)
    one, one_infos = copies.envs[3].reset(seed=5 + 3)  # copy i is the one-copy env reset with seed + i
    assert (obs["receiver"][3] == one["receiver"]).all() and infos["sender"]["target"][3] == one_infos[
        "sender"]["target"]
    _, rewards, terms, _, _ = copies.step({"sender": torch.zeros(8, 4).numpy(),
                                           "receiver": infos["receiver"]["answer"]})
    assert (rewards["receiver"] == 1).all() and terms["receiver"].all() and not copies.running.any()
    # both train: the lockstep path is the default's, the copy-by-copy one every PettingZoo env's
    assert marl.train(named, tmp_path / "named", log=False, progress=False)["updates"] == 2


def test_switch_riddle_through_a_noisy_bit_trains_with_a_gated_utility_model(tmp_path):
    """The suite's second task: a routed self-channel (the bulb), heard the next day through DIAL's unit."""
    cfg = load_config("switch_riddle_noisy", [f"log.dir={tmp_path}", *TINY])
    system, groups, channels, player = player_for(cfg)
    ep = player.play(0, torch.Generator().manual_seed(0))
    c = channels[0]
    heard = ep.heard[c.name]  # (T, E, prisoners, 1): only the prisoner in the room hears, from day 1 on
    assert (heard[0] == 0).all() and ((heard[1:] != 0).sum(-2) <= 1).all() and (heard[1:] != 0).any()
    result = marl.train(cfg, tmp_path / "sr", log=False, progress=False)
    assert result[f"{c.name}/grad_cosine"] is not None and result["updates"] == 2


@pytest.mark.parametrize("fused", [True, False])
def test_trainer_fused_picks_adams_fused_kernel_for_every_optimizer(tmp_path, fused):
    system, _, channels, _ = player_for(digits(tmp_path, f"trainer.fused={str(fused).lower()}"))
    optimizers = [a.optimizer for a in system.agents.values()] + [channels[0].interface.utility_optimizer]
    assert [bool(o.param_groups[0]["fused"]) for o in optimizers] == [fused] * 3
