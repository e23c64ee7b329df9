"""Optimizer steps taken together (``core/optim.py``): the same numbers as each optimizer's own step, in
fewer calls, and steps put off (``System.steps_together``) only while nothing reads what they change."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from exact import assert_equal_states
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from dni_agents.core import Agent, Interface, System, UtilityModel
from dni_agents.core.optim import MergedAdam, StepQueue, mergeable, step_together


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
def test_step_together_is_each_optimizers_own_step_in_fewer_calls(fused):
    """Bit for bit the parameters and optimizer states of stepping each Adam (and an SGD) on its own, with
    one Adam step over groups of equal hyperparameters (here two: the two 1e-3 Adams share one), not one
    per optimizer; the SGD steps itself."""
    alone, together = _nets(), _nets()
    extra_alone, extra_together = nn.Linear(2, 2), copy.deepcopy(nn.Linear(2, 2))
    extra_together.load_state_dict(extra_alone.state_dict())
    opts_alone = _optimizers(alone, fused) + [torch.optim.SGD(extra_alone.parameters(), lr=0.1, momentum=0.9)]
    opts_together = _optimizers(together, fused) + [
        torch.optim.SGD(extra_together.parameters(), lr=0.1, momentum=0.9)]
    merged = MergedAdam()
    calls: list = []
    for step in range(5):
        for nets, extra, opts in ((alone, extra_alone, opts_alone),
                                  (together, extra_together, opts_together)):
            for o in opts:
                o.zero_grad()
            _backward(nets, step)
            extra(torch.ones(1, 2)).sum().backward()
        for o in opts_alone:
            o.step()
        hook = register_optimizer_step_post_hook(  # torch's public hook: which optimizers stepped
            lambda o, *_: calls.append((type(o).__name__, sorted(len(g["params"]) for g in o.param_groups))))
        step_together(opts_together, merged)
        hook.remove()
    assert calls == [("SGD", [2]), ("Adam", [2, 4])] * 5
    for a, b in zip(alone + [extra_alone], together + [extra_together], strict=True):
        assert_equal_states(b.state_dict(), a.state_dict())
    for a, b in zip(opts_alone, opts_together, strict=True):
        assert_equal_states(b.state_dict(), a.state_dict())


def test_merged_steps_follow_the_owners_as_they_change():
    """Between merged steps an owner's learning rate changes, another loads a saved state (new state
    tensors), a parameter has no gradient (it gets no state, as in its own step) and an owner gains a
    group: each step stays its owners' own, bit for bit, and an owner whose ``step`` was replaced (an LR
    scheduler's) steps itself."""
    runs = []
    for merge in (False, True):
        nets = _nets()
        opts = _optimizers(nets, fused=False)
        queue = StepQueue(merge=merge)
        saved, extra = None, nn.Parameter(torch.ones(3))
        for step in range(6):
            for o in opts:
                o.zero_grad(set_to_none=True)
            _backward(nets, step)
            extra.grad = torch.full((3,), 0.5 * step)
            if step == 1:
                nets[1].bias.grad = None
                saved = copy.deepcopy(opts[0].state_dict())
            if step == 2:
                opts[1].param_groups[0]["lr"] = 5e-3
            if step == 3:
                opts[0].load_state_dict(saved)
            if step == 4:
                opts[2].add_param_group({"params": [extra], "lr": 1e-3})
            if step == 5:
                torch.optim.lr_scheduler.StepLR(opts[1], step_size=1)
                assert not mergeable(opts[1]) and mergeable(opts[0])
            queue.step(*opts)
        runs.append((nets + [nn.ParameterList([extra])], opts))
    (nets_a, opts_a), (nets_b, opts_b) = runs
    for a, b in zip(nets_a, nets_b, strict=True):
        assert_equal_states(b.state_dict(), a.state_dict())
    for a, b in zip(opts_a, opts_b, strict=True):
        assert_equal_states(b.state_dict(), a.state_dict())


def test_the_core_uses_torchs_public_optimizer_api_only():
    """No private names of torch's optimizers anywhere in the package (they change between releases)."""
    private = re.compile(r"_init_group|torch\.optim\.adam import|_optimizer_step_(pre|post)_hooks"
                         r"|_global_optimizer")
    package = Path(__file__).resolve().parents[1] / "dni_agents"
    found = [f"{p}:{i}" for p in package.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
             if private.search(line)]
    assert not found, found


@pytest.mark.parametrize("settings", [{}, {"weight_decay": 0.01}, {"amsgrad": True}, {"maximize": True},
                                      {"betas": (0.5, 0.9), "eps": 1e-6}])
def test_adam_one_tensor_at_a_time_and_foreach_give_the_same_bits(settings):
    """Merged steps take Adam's foreach kernels where the optimizer left the choice to torch (which on a
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
