"""A NaN or Inf in a loss, a synthetic gradient or a target stops the run with one line naming where and
when (``trainer.on_nonfinite=stop``), or, with ``skip``, the update it would have poisoned is skipped."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from dni_agents.cli import main
from dni_agents.core import Agent, Interface, NonFiniteError, System, UtilityModel

NAN = float("nan")


def sgd(module: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)


def two_agents(mode: str = "dni", on_nonfinite: str = "stop", seed: int = 0) -> System:
    torch.manual_seed(seed)
    enc, head = nn.Linear(4, 8), nn.Linear(8, 2)
    u = UtilityModel((8,)) if mode in ("dni", "cdni") else None
    opt = torch.optim.Adam(u.parameters(), lr=1e-2) if u is not None else None
    iface = Interface("enc->head", "enc", "head", mode, u, opt)
    return System([Agent("enc", enc, sgd(enc)), Agent("head", head, sgd(head))], [iface],
                  on_nonfinite=on_nonfinite)


def step(system: System, k: int, message_fill: float | None = None, loss_scale: float = 1.0) -> None:
    """One clock step of enc -> head. ``message_fill``: enc's message becomes that value (NaN: a blown-up
    forward); ``loss_scale``: multiplies head's loss (NaN: a blown-up loss)."""
    enc, head = system.agents["enc"].module, system.agents["head"].module
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(k))
    with system.tick("enc", k) as t:
        h = enc(x)
        if message_fill is not None:
            h = h * 0 + message_fill
        t.send("enc->head", h)
    with system.tick("head", k) as t:
        t.add_loss(loss_scale * head(t.receive("enc->head")).pow(2).mean())
    system.settle()
    system.check_settled()


def state(system: System) -> list[torch.Tensor]:
    """Every parameter of the agents, then of the utility models, as copies."""
    modules = [a.module for a in system.agents.values()]
    modules += [i.utility for i in system.interfaces.values() if i.utility is not None]
    return [p.detach().clone() for m in modules for p in m.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def all_finite(system: System) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in state(system))


# ----------------------------------------------------------------------------------------------- stop
def test_a_nan_loss_stops_naming_the_agent_and_the_step():
    system = two_agents()
    step(system, 0)
    step(system, 1)
    head_before = copy.deepcopy(system.agents["head"].module)
    with pytest.raises(NonFiniteError) as info:
        step(system, 2, loss_scale=NAN)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert (err.where, err.what, err.step) == ("head", "loss", 2)
    assert str(err) == "non-finite loss of agent head at step 2"
    for p, q in zip(system.agents["head"].module.parameters(), head_before.parameters()):
        assert torch.equal(p, q)  # stopped before the update


def test_an_inf_loss_stops_too():
    system = two_agents()
    with pytest.raises(NonFiniteError, match="loss of agent head at step 0"):
        step(system, 0, loss_scale=float("inf"))


def test_a_nan_synthetic_gradient_stops_naming_the_interface():
    system = two_agents()
    step(system, 0)
    enc_before = copy.deepcopy(system.agents["enc"].module)
    with pytest.raises(NonFiniteError) as info:
        step(system, 1, message_fill=NAN)  # ĝ = U(NaN message) is NaN
    assert (info.value.where, info.value.what, info.value.step) == ("enc->head", "synthetic gradient", 1)
    assert "synthetic gradient of interface enc->head at step 1" in str(info.value)
    for p, q in zip(system.agents["enc"].module.parameters(), enc_before.parameters()):
        assert torch.equal(p, q)


class NanGradient(nn.Module):
    """A receiver whose loss is finite but whose gradient for its input is NaN (0 · ∞ through a sqrt at 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (self.w * (z * 0).sqrt()).sum()


@pytest.mark.parametrize("mode", ["dni", "backprop"])
def test_a_nan_target_stops_naming_the_interface(mode: str):
    torch.manual_seed(0)
    enc, head = nn.Linear(4, 8), NanGradient()
    u = UtilityModel((8,)) if mode == "dni" else None
    opt = torch.optim.SGD(u.parameters(), lr=0.1) if u is not None else None
    iface = Interface("enc->head", "enc", "head", mode, u, opt)
    system = System([Agent("enc", enc, sgd(enc)), Agent("head", head, sgd(head))], [iface])
    u_before = copy.deepcopy(u)
    with pytest.raises(NonFiniteError) as info:
        with system.tick("enc", 0) as t:
            t.send(iface, enc(torch.randn(3, 4)))
        with system.tick("head", 0) as t:
            loss = head(t.receive(iface))
            t.add_loss(loss)
        system.settle()
    assert torch.isfinite(loss)  # the loss is fine: the target it replied is not
    assert (info.value.where, info.value.what, info.value.step) == ("enc->head", "target", 0)
    if u is not None:  # the utility model did not regress onto it
        assert same(list(u.parameters()), list(u_before.parameters()))


class NanParameterGradient(nn.Module):
    """A receiver whose loss and input gradient are finite, but one of whose parameters gets a NaN gradient
    (what overflow in a backward pass does: lr=1e30 in the ff run)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.w = nn.Linear(8, 2), nn.Parameter(torch.zeros(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.lin(z).pow(2).mean() + (self.w * 0).sqrt()


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_nan_parameter_gradient_never_reaches_the_optimizer(policy: str):
    torch.manual_seed(0)
    enc, head = nn.Linear(4, 8), NanParameterGradient()
    u = UtilityModel((8,))
    iface = Interface("enc->head", "enc", "head", "dni", u, torch.optim.SGD(u.parameters(), lr=0.1))
    system = System([Agent("enc", enc, sgd(enc)), Agent("head", head, sgd(head))], [iface],
                    on_nonfinite=policy)
    before = copy.deepcopy(head)
    with system.tick("enc", 0) as t:
        t.send(iface, enc(torch.randn(3, 4)))
    if policy == "stop":
        with pytest.raises(NonFiniteError, match=r"^non-finite gradient of agent head at step 0$"):
            with system.tick("head", 0) as t:
                t.add_loss(head(t.receive(iface)))
    else:
        with system.tick("head", 0) as t:
            t.add_loss(head(t.receive(iface)))
        assert dict(system.skipped) == {"head": 1, "enc->head": 1}  # and its reply was not learned from
        assert all(p.grad is None for p in head.parameters())  # nothing left over for a later step
    assert same(list(head.parameters()), list(before.parameters()))


def test_a_nan_target_arriving_over_the_transport_stops():
    u = UtilityModel((4,))
    iface = Interface("a->b", "a", "b", "dni", u, torch.optim.SGD(u.parameters(), lr=0.1))
    system = System([Agent("a", nn.Identity()), Agent("b", nn.Identity())], [iface])
    iface.send(torch.randn(2, 4), 7)
    iface.transport.put_target("a->b", 7, torch.tensor([[1.0, float("inf"), 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(NonFiniteError, match=r"^non-finite target of interface a->b at step 7$"):
        system.settle()


def test_the_policy_is_checked():
    with pytest.raises(ValueError, match="on_nonfinite"):
        two_agents(on_nonfinite="ignore")


# ----------------------------------------------------------------------------------------------- skip
@pytest.mark.parametrize("blow_up", ["loss", "message"])
def test_skip_leaves_the_parameters_unchanged_and_training_goes_on(blow_up: str):
    system = two_agents(on_nonfinite="skip")
    for k in range(3):
        step(system, k)
    before = state(system)
    head_opt = copy.deepcopy(system.agents["head"].optimizer.state_dict())
    if blow_up == "loss":
        step(system, 3, loss_scale=NAN)
        # enc updated from its (finite) ĝ before head ran (update unlocking); head did not update, and the
        # utility model did not regress onto the NaN target head replied for the skipped tick
        enc_params = len(list(system.agents["enc"].module.parameters()))
        assert same(state(system)[enc_params:], before[enc_params:])
        assert dict(system.skipped) == {"head": 1, "enc->head": 1}
    else:
        step(system, 3, message_fill=NAN)  # enc's ĝ is NaN, so is head's input and loss
        assert same(state(system), before)  # nobody updated, no utility regression
        assert dict(system.skipped) == {"enc": 1, "head": 1, "enc->head": 1}
    assert torch.equal(system.agents["head"].optimizer.state_dict()["state"][0]["momentum_buffer"],
                       head_opt["state"][0]["momentum_buffer"])
    for k in range(4, 8):
        step(system, k)
    after = state(system)
    assert all_finite(system)
    assert all(not torch.equal(a, b) for a, b in zip(after, before))  # training went on: every part moved
    assert sum(system.skipped.values()) == (2 if blow_up == "loss" else 3)  # nothing skipped since


def test_skip_a_locked_sender_whose_receiver_blew_up_does_not_deadlock():
    """backprop: enc waits for head's true gradient. A skipped head replies a NaN target (not a zero one,
    which would read as 'no gradient' and be applied), so enc's tick finishes, skipped too."""
    system = two_agents("backprop", on_nonfinite="skip")
    step(system, 0)
    before = state(system)
    step(system, 1, loss_scale=NAN)  # step() calls check_settled: nobody is still waiting
    assert not system.waiting
    assert same(state(system), before)
    assert dict(system.skipped) == {"head": 1, "enc": 1}
    step(system, 2)
    assert not same(state(system), before) and all_finite(system)


def test_skip_counts_a_target_that_arrives_nan_and_does_not_learn_from_it():
    u = UtilityModel((4,))
    iface = Interface("a->b", "a", "b", "dni", u, torch.optim.SGD(u.parameters(), lr=0.1))
    system = System([Agent("a", nn.Identity()), Agent("b", nn.Identity())], [iface], on_nonfinite="skip")
    for k in (0, 1):
        iface.send(torch.randn(2, 4), k)
    before = [p.detach().clone() for p in u.parameters()]
    iface.transport.put_target("a->b", 0, torch.full((2, 4), NAN))
    iface.transport.put_target("a->b", 1, torch.ones(2, 4))
    system.track_stats = True
    system.settle()
    assert system.skipped == {"a->b": 1}
    stats = system.drain_stats()["a->b"]
    assert [s["step"] for s in stats] == [1]  # the finite one was learned from (and measured)
    assert not same(list(u.parameters()), before)
    assert all(bool(torch.isfinite(p).all()) for p in u.parameters())
    assert not iface._sent  # both records are done with


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_stops_a_diverging_run_with_one_line_and_keeps_the_last_checkpoint(tmp_path: Path, capsys):
    """Adam at lr 1e30 blows the tiny ff run up within a few steps."""
    code = main(["train", "ff_digits", f"log.dir={tmp_path}", "ff.hidden=32", "trainer.steps=30",
                 "log.every=1", "trainer.eval_every=0", "log.embedding_samples=0",
                 "trainer.checkpoint_every=1", "trainer.lr=1e30"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip()]
    ours = [line for line in lines if line.startswith("dni-agents:")]
    assert len(ours) == 1 and ours[0] == lines[-1], err
    match = re.fullmatch(
        r"dni-agents: error: non-finite (loss of agent layer\d|(synthetic gradient|target) of interface "
        r"layer\d->layer\d) at step (\d+) \(trainer\.on_nonfinite=stop; the last checkpoint is kept\)",
        ours[0],
    )
    assert match, ours[0]
    bad = int(match.group(3))
    assert 1 <= bad < 10  # it really diverged, and soon
    # checkpoints after steps 0..bad-1 were written; none after the error (it holds bad steps' worth)
    ckpt = torch.load(tmp_path / "ff_digits" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == bad
    for agent in ckpt["system"]["agents"].values():
        assert all(bool(torch.isfinite(v).all()) for v in agent["module"].values())
