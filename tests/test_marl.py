"""The multi-agent driver: channels are core interfaces, gradients go where the mode says, runs resume
exactly, TensorBoard gets what the README promises, bad configs fail with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dni_envs import SwitchRiddle
from tensorboard_record import read_histogram_tags, read_projector, read_scalars, read_texts

from dni_agents.cli import main
from dni_agents.config import ConfigError, load_config
from dni_agents.drivers import marl

TINY = ["trainer.steps=4", "marl.num_envs=16", "marl.eval_episodes=32", "log.every=1",
        "log.histogram_every=2", "log.embedding_samples=20", "trainer.checkpoint_every=2"]


def referential(tmp_path: Path, *extra: str):
    return load_config("referential", [f"log.dir={tmp_path}", *TINY, *extra])


def built(cfg):
    env = marl.make_env(cfg)
    system, groups, channels = marl.build(cfg, env, torch.device("cpu"))
    return system, {g.name: g for g in groups}, channels


def one_update(cfg, seed: int = 0):
    system, groups, channels = built(cfg)
    player = marl.Player(cfg, list(groups.values()), channels, torch.device("cpu"), cfg.marl.num_envs)
    gen = torch.Generator().manual_seed(seed)
    ep = player.play(seed, gen)
    marl.ppo_update(cfg, system, list(groups.values()), player, ep, gen, 0)
    return system, groups, channels, ep


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, module.parameters()))


# ------------------------------------------------------------------------------------------ gradients
def test_route_sends_each_gradient_back_to_the_message_that_was_heard():
    messages = torch.randn(2, 3, 4, requires_grad=True)  # 2 copies, 3 sender members
    sources = torch.tensor([[2, -1], [0, 0]])  # copy 0: receiver 0 hears sender 2, receiver 1 hears nothing
    heard = marl.route(messages, sources, 4, 2)
    assert torch.equal(heard[0, 1], torch.zeros(4))
    heard.sum().backward()
    expected = torch.zeros(2, 3, 4)
    expected[0, 2] = 1
    expected[1, 0] = 2  # heard twice
    assert torch.equal(messages.grad, expected)


@pytest.mark.parametrize("name,time_feature", [("crypto", False), ("speaker_listener", True)])
def test_inputs_put_each_message_in_its_comm_slot_and_send_its_gradient_back(tmp_path, name, time_feature):
    """The network's input is the observation with each heard message in its slot (one concatenation of
    the pieces around the slots): the same values as writing the messages into a copy, and each message
    gets exactly the gradient of its own columns."""
    cfg = load_config(name, [f"log.dir={tmp_path}", "marl.num_envs=4", f"marl.time_feature={time_feature}"])
    _, groups, channels = built(cfg)
    player = marl.Player(cfg, list(groups.values()), channels, torch.device("cpu"), 4)
    for g in groups.values():
        slotted = [c for c in g.inbound if c.interface is not None and c.obs_slice is not None]
        width = player.envs.observation_space(g.members[0]).shape[0]
        obs = torch.randn(5, 4, len(g.members), width)
        heard = {c.name: torch.randn(5, 4, len(g.members), c.size, requires_grad=True) for c in slotted}
        x = player.inputs(g, obs, heard, torch.arange(5))
        expected = obs.clone()
        for c in slotted:
            expected[..., c.obs_slice[0]: c.obs_slice[1]] = heard[c.name].detach()
        assert torch.equal(x[..., :width], expected)
        assert x.shape[-1] == width + time_feature
        if not slotted:
            continue
        weight = torch.randn_like(x)
        (x * weight).sum().backward()
        for c in slotted:
            assert torch.equal(heard[c.name].grad, weight[..., c.obs_slice[0]: c.obs_slice[1]])


@pytest.mark.parametrize("mode", ["dni", "backprop", "none"])
def test_sender_gets_a_gradient_exactly_when_the_mode_says(tmp_path, mode):
    """The sender has no loss of its own: whatever moves it came through the channel."""
    cfg = referential(tmp_path, f"interface_defaults.mode={mode}")
    system, groups, channels = built(cfg)
    sender = groups["sender"].net
    # a utility model that already predicts something, so dni's ĝ is not zero on the first update
    if mode == "dni":
        with torch.no_grad():
            channels[0].interface.utility.net[-1].bias.fill_(1.0)
    before = params(sender)
    player = marl.Player(cfg, list(groups.values()), channels, torch.device("cpu"), 16)
    gen = torch.Generator().manual_seed(0)
    ep = player.play(0, gen)
    marl.ppo_update(cfg, system, list(groups.values()), player, ep, gen, 0)
    assert changed(before, sender) == (mode != "none")


@pytest.mark.parametrize("gain", [0.0, 0.1])
def test_messages_start_faint_and_random_or_silent(tmp_path, gain):
    cfg = referential(tmp_path, f"marl.message_init_gain={gain}")
    _, groups, channels = built(cfg)
    player = marl.Player(cfg, list(groups.values()), channels, torch.device("cpu"), 16)
    sent = player.play(0, torch.Generator().manual_seed(0)).messages["sender->receiver"][0]
    if gain == 0:
        assert torch.count_nonzero(sent) == 0
    else:  # distinct targets, distinct messages (not collinear), all small
        centred = sent.flatten(0, 1) - sent.mean((0, 1))
        assert sent.abs().max() < 1.0 and torch.linalg.matrix_rank(centred) >= 3


def test_backprop_channel_gives_the_sender_the_true_gradient_of_the_receivers_loss(tmp_path):
    """DIAL-style coupling: one replay in backprop mode equals differentiating the receiver's PPO loss
    with respect to the sender's parameters through the message."""
    cfg = referential(tmp_path, "interface_defaults.mode=backprop", "marl.epochs=1", "marl.minibatches=1")
    system, groups, channels = built(cfg)
    gl = list(groups.values())
    player = marl.Player(cfg, gl, channels, torch.device("cpu"), 16)
    gen = torch.Generator().manual_seed(0)
    ep = player.play(0, gen)
    sender, receiver = groups["sender"], groups["receiver"]
    # make the sender say something so the gradient is not trivially through a zero head
    with torch.no_grad():
        for p in sender.net.messages.parameters():
            p.normal_(0, 0.5)
    ep = player.play(0, torch.Generator().manual_seed(0))
    gae = {"receiver": marl.advantages(ep, receiver, 0.99, 0.95)}
    mb = torch.arange(16)
    # reference: plain autograd, no interfaces
    x_s = player.inputs(sender, ep.obs["sender"][0, mb], {}, 0)
    f_s, _ = sender.net(x_s.flatten(0, 1), None)
    m = sender.net.message("sender->receiver", f_s).view(16, 1, -1)
    feats = []
    for t in range(ep.length):
        heard = marl.route(m if t == 1 else None, ep.sources["sender->receiver"][t, mb], m.shape[-1], 16)
        x = player.inputs(receiver, ep.obs["receiver"][t, mb], {"sender->receiver": heard}, t)
        feats.append(receiver.net(x.flatten(0, 1), None)[0])
    loss, _ = marl.ppo_loss(cfg.marl, receiver, ep, mb, feats, gae["receiver"])
    expected = torch.autograd.grad(loss, list(sender.net.messages.parameters()))
    # the driver: capture the sender's gradient at its optimizer step
    captured = []
    sender.agent.optimizer.step = lambda *a, **k: captured.extend(  # type: ignore[method-assign]
        p.grad.clone() for p in sender.net.messages.parameters())
    ticks = system.coupled()
    assert [sorted(t) for t in ticks] == [["receiver", "sender"]]
    from contextlib import ExitStack
    with ExitStack() as stack:
        tick = stack.enter_context(system.tick(ticks[0], 1))
        ticks_by = {"sender": tick, "receiver": tick}
        out = marl.replay(gl, player, ep, mb, ticks_by, 100, gae)
        loss2, _ = marl.ppo_loss(cfg.marl, receiver, ep, mb, out["receiver"], gae["receiver"])
        tick.add_loss(loss2)
    for got, want in zip(captured, expected):
        torch.testing.assert_close(got, want)


def test_dni_sender_updates_before_the_receiver_has_run_its_backward_pass(tmp_path):
    """Update unlocking: in dni the sender's tick finishes on ĝ alone."""
    cfg = referential(tmp_path)
    system, groups, channels = built(cfg)
    gl = list(groups.values())
    with torch.no_grad():
        channels[0].interface.utility.net[-1].bias.fill_(1.0)
    player = marl.Player(cfg, gl, channels, torch.device("cpu"), 16)
    ep = player.play(0, torch.Generator().manual_seed(0))
    before = params(groups["sender"].net)
    gae = {"receiver": marl.advantages(ep, groups["receiver"], 0.99, 0.95)}
    with system.tick(groups["receiver"].agent, 1) as tr:
        with system.tick(groups["sender"].agent, 1) as ts:
            marl.replay(gl, player, ep, torch.arange(16), {"sender": ts, "receiver": tr}, 100, gae)
        # the sender's tick is over, the receiver has not even computed its loss yet
        assert changed(before, groups["sender"].net) and not system.waiting
        assert channels[0].interface.transport.take_target("sender->receiver", 100) is None


# ------------------------------------------------------------------------------------------ runs
def test_train_logs_what_tensorboard_promises_and_eval_replays_it(tmp_path, capsys):
    cfg = referential(tmp_path)
    result = marl.train(cfg, tmp_path / "referential", progress=False)
    run = Path(result["run_dir"])
    scalars = read_scalars(run)
    for tag in ("diagnostics/return", "diagnostics/success", "diagnostics/ghat_cos/sender",
                "diagnostics/heard_mi/sender", "diagnostics/sent_mi/sender", "ppo/policy_loss/receiver",
                "ppo/entropy/receiver", "interface/utility_loss/sender", "message/entropy/sender",
                "perf/env_steps_per_s", "eval/mean_return", "eval/ablated_return"):
        assert tag in scalars, tag
    assert not [t for t in scalars if t.startswith(("episode/", "comm/", "agent/", "channel/"))]  # one reward
    assert "eval/train_mean_return" not in scalars  # the same environment: the same curve, drawn once
    assert [s for s, _ in scalars["eval/mean_return"]] == [4]  # eval_every=0: the final point only
    hist = read_histogram_tags(run)  # log.histogram_every=2 of 4 updates: 2, and the last (3); not 0
    assert hist == {f"heard/sender/c{k}": 2 for k in range(cfg.marl.message_size)}
    texts = read_texts(run)
    assert any("driver: marl" in t for t in texts["config"])
    assert texts["evaluation"][0].startswith("| metric | value |\n|---|---|\n| mean_return |")
    snapshots = read_projector(run)
    assert [p["step"] for p in snapshots] == [2, 3, 4]  # at the histogram cadence and the final evaluation
    final = snapshots[-1]
    assert final["shape"] == (20, cfg.marl.message_size)  # log.embedding_samples exactly
    assert final["metadata"][0] == ["target", "episode", "t"]
    rows = [(r[1], r[2]) for r in final["metadata"][1:]]
    assert len(set(rows)) == 20 and {r[0] for r in final["metadata"][1:]} <= {str(i) for i in range(5)}
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"mean_return", "success_rate", "sender->receiver/mi_bits"} <= set(out)


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    full = marl.train(referential(tmp_path / "a"), tmp_path / "a" / "run", progress=False)
    marl.train(referential(tmp_path / "b"), tmp_path / "b" / "run", progress=False, stop_at=2)
    resumed = marl.train(referential(tmp_path / "b"), tmp_path / "b" / "run", resume=tmp_path / "b" / "run",
                         progress=False)
    a = torch.load(tmp_path / "a" / "run" / marl.CHECKPOINT, weights_only=True)["system"]
    b = torch.load(tmp_path / "b" / "run" / marl.CHECKPOINT, weights_only=True)["system"]
    for name in a["agents"]:
        for key, tensor in a["agents"][name]["module"].items():
            assert torch.equal(tensor, b["agents"][name]["module"][key]), (name, key)
    assert full["mean_return"] == resumed["mean_return"]


@pytest.mark.parametrize("name,extra", [("digits_referential", []),
                                        ("speaker_listener", ["marl.num_envs=64", "trainer.steps=2"])])
def test_results_do_not_depend_on_the_number_of_threads(tmp_path, name, extra):
    """trainer.threads 1 and 2 train to the same last bit. Two causes had made them differ: LAPACK's QR
    under the orthogonal init (the main job), and MKL splitting a product's inner sum between threads
    (speaker-listener's 5×1600 by 1600×64 weight gradient; MKL's strict mode: runtime/blas.py)."""
    states, returns = [], []
    for threads in (1, 2):
        cfg = load_config(name, [f"log.dir={tmp_path}", *TINY, "trainer.steps=3", *extra,
                                 f"trainer.threads={threads}", "marl.threads=null", f"name=t{threads}"])
        returns.append(marl.train(cfg, tmp_path / f"t{threads}", progress=False)["mean_return"])
        states.append(torch.load(tmp_path / f"t{threads}" / marl.CHECKPOINT, weights_only=True)["system"])
    assert returns[0] == returns[1]
    for agent, state in states[0]["agents"].items():
        for key, tensor in state["module"].items():
            assert torch.equal(tensor, states[1]["agents"][agent]["module"][key]), (agent, key)


def test_period_holds_actions_and_messages_between_decisions(tmp_path):
    cfg = load_config("speaker_listener", [f"log.dir={tmp_path}", *TINY, "agents.1.period=2",
                                           "agents.0.period=3"])
    system, groups, channels = built(cfg)
    with torch.no_grad():
        for p in groups["speaker_0"].net.messages.parameters():
            p.normal_()
    player = marl.Player(cfg, list(groups.values()), channels, torch.device("cpu"), 4)
    ep = player.play(0, torch.Generator().manual_seed(0))
    acts = ep.actions["listener_0"]
    assert torch.equal(acts[1::2], acts[0:-1:2])  # listener: steps 1, 3, 5 repeat steps 0, 2, 4
    msgs = ep.messages["speaker_0->listener_0"]
    assert torch.equal(msgs[1], msgs[0]) and torch.equal(msgs[2], msgs[0])
    marl.ppo_update(cfg, system, list(groups.values()), player, ep, torch.Generator(), 0)


def test_shared_group_self_channel_routes_the_bulb_to_the_next_prisoner(tmp_path):
    env = SwitchRiddle(n_agents=3)
    env.reset(seed=1)
    assert set(env.message_sources().values()) == {None}  # day 0: nobody set the bulb
    first = env.possible_agents[env._in_room]
    env.step({a: 1 for a in env.agents})  # switch on, no tell
    heard = env.message_sources()
    assert heard[env.possible_agents[env._in_room]] == first
    assert sum(v is not None for v in heard.values()) == 1
    for mode in ("dni", "backprop"):
        cfg = load_config("switch_riddle", [f"log.dir={tmp_path}", *TINY, f"interface_defaults.mode={mode}"])
        system, groups, channels, ep = one_update(cfg)
        src = ep.sources["prisoner->prisoner"]
        assert (src[0] == -1).all() and ((src[1:] >= 0).sum(-1) <= 1).all()


def test_candidate_scorer_is_permutation_equivariant():
    from gymnasium import spaces

    net = marl.PolicyNet(5 * 3 + 4, 16, False, spaces.Discrete(5), {}, candidates=(5, 3))
    x = torch.randn(7, 19)
    perm = torch.tensor([3, 0, 4, 1, 2])
    xp = torch.cat([x[:, :15].reshape(7, 5, 3)[:, perm].reshape(7, 15), x[:, 15:]], 1)
    logits = net.dist(net(x, None)[0]).logits
    torch.testing.assert_close(net.dist(net(xp, None)[0]).logits, logits[:, perm])


# ------------------------------------------------------------------------------------------ metrics
def test_mutual_information_counts_only_what_a_coarse_receiver_can_tell_apart():
    labels = torch.arange(300) % 3
    clear = torch.nn.functional.one_hot(labels, 3).float()
    mi = marl.mutual_information_bits(marl.message_symbols(clear, 0.2), labels)
    assert mi == pytest.approx(1.585, abs=1e-3)
    tiny = clear * 1e-3  # distinct, but closer than the resolution
    assert marl.mutual_information_bits(marl.message_symbols(tiny, 0.2), labels) == 0.0
    assert marl.mutual_information_bits(torch.zeros(300, dtype=torch.long), labels) == 0.0


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "override, message",
    [
        ("marl.env=no_such_module", "marl.env: cannot import 'no_such_module'"),
        ("agents.1.members=[nobody]", "agents[1].members: ['nobody'] match no environment agent"),
        ("interfaces.0.obs_slice=[40,50]",
         "interfaces[0].obs_slice: [40, 50] is outside receiver's observation"),
        ("marl.env_kwargs={bogus: 1}", "marl.env_kwargs.bogus=1: dni_envs.referential refuses it"),
    ],
)
def test_bad_marl_configs_fail_with_one_clear_line(tmp_path, capsys, override, message):
    assert main(["train", "referential", f"log.dir={tmp_path}", override]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_marl_only_settings_are_rejected_elsewhere():
    with pytest.raises(ConfigError, match="interface_defaults.mode: 'rial' needs driver marl"):
        load_config("ff_digits", ["interface_defaults.mode=rial"])
    with pytest.raises(ConfigError, match="marl.private_info.agent: unknown agent"):
        load_config("referential", ["marl.private_info.agent=nobody"])
    with pytest.raises(ConfigError, match="interface_defaults.channel: only the marl driver applies"):
        load_config("ff_digits", ["interface_defaults.channel.noise=1.0"])


@pytest.mark.parametrize("name", ["simple_speaker_listener_v4", "simple_reference_v3", "simple_crypto_v3"])
def test_direct_parallel_steps_mpe_exactly_like_pettingzoos_wrapper(name):
    import importlib

    import numpy as np

    module = importlib.import_module(f"mpe2.{name}")
    stock = module.parallel_env(max_cycles=6)
    direct = marl.DirectParallel(module.parallel_env(max_cycles=6))
    rng = np.random.default_rng(0)
    for episode in range(3):
        (o1, i1), (o2, i2) = stock.reset(seed=episode), direct.reset(seed=episode)
        assert o1.keys() == o2.keys() and all(np.array_equal(o1[a], o2[a]) for a in o1) and i1 == i2
        while stock.agents:
            actions = {a: int(rng.integers(stock.action_space(a).n)) for a in stock.agents}
            out1, out2 = stock.step(actions), direct.step(actions)
            assert out1[0].keys() == out2[0].keys()
            assert all(np.array_equal(out1[0][a], out2[0][a]) for a in out1[0])
            assert dict(out1[1]) == out2[1] and out1[2:] == out2[2:]
            assert stock.agents == direct.agents
        assert not direct.agents
