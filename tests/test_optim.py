"""Optimizer steps taken together (``core/optim.py``): the same numbers as each optimizer's own step, in
fewer calls, and steps put off (``System.steps_together``) only while nothing reads what they change."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from exact import assert_equal_states
from torch import nn

from dni_agents.core import Agent, Interface, System, UtilityModel
from dni_agents.core import optim as core_optim
from dni_agents.core.optim import step_together


def _nets(seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(5, 4), nn.Tanh()), nn.Linear(4, 3), nn.Linear(3, 2)]


def _optimizers(nets: list[nn.Module], fused: bool) -> list[torch.optim.Optimizer]:
    return [torch.optim.Adam(nets[0].parameters(), lr=1e-3, fused=fused),
            torch.optim.Adam(nets[1].parameters(), lr=1e-3, fused=fused),
            torch.optim.Adam(nets[2].parameters(), lr=3e-4, weight_decay=0.1, fused=fused)]


def _backward(nets: list[nn.Module], step: int) -> None:
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(step))
    h = x
    for net in nets:
        h = net(h)
    h.pow(2).sum().backward()


@pytest.mark.parametrize("fused", [False, True])
def test_step_together_is_each_optimizers_own_step_in_fewer_calls(fused, monkeypatch):
    """Bit for bit the parameters and optimizer states of stepping each Adam (and an SGD) on its own, with
    one call of the functional Adam per set of hyperparameters (here two), not one per optimizer."""
    alone, together = _nets(), _nets()
    extra_alone, extra_together = nn.Linear(2, 2), copy.deepcopy(nn.Linear(2, 2))
    extra_together.load_state_dict(extra_alone.state_dict())
    opts_alone = _optimizers(alone, fused) + [torch.optim.SGD(extra_alone.parameters(), lr=0.1, momentum=0.9)]
    opts_together = _optimizers(together, fused) + [
        torch.optim.SGD(extra_together.parameters(), lr=0.1, momentum=0.9)]
    calls = []
    real_adam = core_optim.adam
    monkeypatch.setattr(core_optim, "adam", lambda *a, **k: calls.append(len(a[0])) or real_adam(*a, **k))
    for step in range(5):
        for nets, extra, opts in ((alone, extra_alone, opts_alone),
                                  (together, extra_together, opts_together)):
            for o in opts:
                o.zero_grad()
            _backward(nets, step)
            extra(torch.ones(1, 2)).sum().backward()
        for o in opts_alone:
            o.step()
        step_together(opts_together)
    assert calls == [4, 2] * 5  # the two 1e-3 Adams share a call (4 tensors), the other has its own
    for a, b in zip(alone + [extra_alone], together + [extra_together], strict=True):
        assert_equal_states(b.state_dict(), a.state_dict())
    for a, b in zip(opts_alone, opts_together, strict=True):
        assert_equal_states(b.state_dict(), a.state_dict())


@pytest.mark.parametrize("settings", [{}, {"weight_decay": 0.01}, {"amsgrad": True}, {"maximize": True},
                                      {"betas": (0.5, 0.9), "eps": 1e-6}])
def test_adam_one_tensor_at_a_time_and_foreach_give_the_same_bits(settings):
    """step_together takes Adam's foreach kernels where the optimizer left the choice to torch (which on a
    CPU steps one tensor at a time): the same parameters and states to the last bit, over gradients of
    very different scales."""
    runs = []
    for foreach in (False, True):
        params = [torch.randn(s, generator=torch.Generator().manual_seed(i)).requires_grad_()
                  for i, s in enumerate([(64, 12), (64,), (5, 64), (1,)])]
        opt = torch.optim.Adam(params, lr=3e-3, foreach=foreach, **settings)
        for step in range(60):
            for i, p in enumerate(params):
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(1000 * step + i))
                p.grad *= 10.0 ** (step % 7 - 3)
            opt.step()
        runs.append((params, opt))
    (a, opt_a), (b, opt_b) = runs
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    for x, y in zip(opt_a.state.values(), opt_b.state.values(), strict=True):
        assert_equal_states(y, x)


def _system(seed: int = 0, frozen_bottom: bool = False) -> System:
    """Two agents, a dni interface with a plain linear utility model between them (``frozen_bottom``: the
    sender has no optimizer, so only the utility model's step is pending when it sends again)."""
    torch.manual_seed(seed)
    bottom, top = nn.Sequential(nn.Linear(5, 4), nn.Tanh()), nn.Linear(4, 2)
    utility = UtilityModel((4,), kind="linear")
    nn.init.normal_(utility.linear.weight, std=0.1)  # not zero: ĝ (and so the bottom's step) depends on it
    bottom_optimizer = None if frozen_bottom else torch.optim.Adam(bottom.parameters(), lr=1e-2)
    agents = [Agent("bottom", bottom, bottom_optimizer),
              Agent("top", top, torch.optim.Adam(top.parameters(), lr=1e-2))]
    iface = Interface("bottom->top", "bottom", "top", "dni", utility=utility,
                      utility_optimizer=torch.optim.Adam(utility.parameters(), lr=1e-2))
    return System(agents, [iface])


def _clock_step(system: System, step: int) -> None:
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(6, 5, generator=g), torch.randn(6, 2, generator=g)
    with system.tick("bottom", step) as t:
        t.send("bottom->top", system.agents["bottom"].module(x))
    with system.tick("top", step) as t:
        t.add_loss(F.mse_loss(system.agents["top"].module(t.receive("bottom->top")), y))
    system.settle()


@pytest.mark.parametrize("frozen_bottom", [False, True])
def test_steps_put_off_are_taken_before_anything_reads_them(frozen_bottom):
    """Three clock steps in one ``steps_together`` block: every agent ticks again and the utility model
    predicts again while its last step is pending, and the state is read inside the block; each of these
    takes the pending steps first, so the run equals the one that steps at once, bit for bit. Inside the
    block a step is really put off (the parameters are unchanged until something needs them)."""
    at_once, together = _system(frozen_bottom=frozen_bottom), _system(frozen_bottom=frozen_bottom)
    for step in range(3):
        _clock_step(at_once, step)
    top = together.agents["top"].module.weight
    with together.steps_together():
        before = top.detach().clone()
        _clock_step(together, 0)
        assert torch.equal(top, before) and len(together.steps.pending) == 3 - frozen_bottom  # put off
        _clock_step(together, 1)
        _clock_step(together, 2)
        inside = together.state_dict()  # takes the pending steps
        assert not together.steps.pending
    assert_equal_states(inside, at_once.state_dict())
    assert_equal_states(together.state_dict(), at_once.state_dict())


def test_steps_put_off_are_taken_when_the_block_raises():
    """An error inside the block (here the caller's own) still takes the steps of the ticks that finished,
    as they would have been taken at once."""
    at_once, together = _system(), _system()
    _clock_step(at_once, 0)
    with pytest.raises(RuntimeError, match="the caller's"), together.steps_together():
        _clock_step(together, 0)
        raise RuntimeError("the caller's")
    assert not together.steps.pending
    assert_equal_states(together.state_dict(), at_once.state_dict())
