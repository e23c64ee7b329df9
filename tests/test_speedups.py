"""Each speed-up of the core (``core/speedups.py``) against the autograd reference path it replaces: the same
parameters and optimizer states after several steps, and, for ``keep_prediction``, exactly the difference
its docstring names where the two are not the same."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from exact import assert_equal_states
from torch import nn

from dni_agents.core import Agent, InProcess, Interface, SpeedUps, System, UtilityModel

REFERENCE = SpeedUps.reference()
ONLY = {"closed_form": SpeedUps(True, False, False), "keep_prediction": SpeedUps(False, True, False),
        "merged_steps": SpeedUps(False, False, True), "all": SpeedUps()}


def _utility(mode: str, kind: str = "linear", seed: int = 0) -> UtilityModel:
    """A utility model whose weights are not zero (so its ĝ, and the sender's step, depend on them)."""
    torch.manual_seed(seed)
    model = UtilityModel((6,), context_dim=3 if mode == "cdni" else 0, kind=kind, hidden=8,
                         squash_input=True)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.5)
    return model


def _interface(model: UtilityModel, mode: str, speedups: SpeedUps, **kwargs) -> Interface:
    u = copy.deepcopy(model)
    return Interface("a->b", "a", "b", mode, u, torch.optim.Adam(u.parameters(), lr=0.01), speedups=speedups,
                     **kwargs)


def _assert_same(a: Interface, b: Interface) -> None:
    assert_equal_states(a.utility.state_dict(), b.utility.state_dict())
    assert_equal_states(a.utility_optimizer.state_dict(), b.utility_optimizer.state_dict())


@pytest.mark.parametrize("mode,weighted,targets,stacked", [
    ("dni", False, 1, 1), ("cdni", False, 1, 1), ("cdni", True, 1, 1),  # ff, rnn, hier: one target an update
    ("dni", False, 3, 1), ("cdni", True, 4, 1),  # several targets an update (marl's replay), with outages
    ("dni", False, 1, 3), ("cdni", True, 2, 2),  # messages that stack several steps
])
def test_closed_form_regression_equals_autograd(mode, weighted, targets, stacked):
    """A plain linear utility model regressed without a graph (the residual times x): the parameters,
    optimizer states and synthetic gradients of the regression through autograd, bit for bit, with a
    warm-up; the reported losses and fidelity to float precision."""
    model = _utility(mode)
    closed, graph = (_interface(model, mode, s, warmup_steps=2) for s in (ONLY["closed_form"], REFERENCE))
    assert closed._closed_form() is not None and graph.speedups.closed_form is False
    rows = 5 * stacked
    for step in range(0, 12, targets):
        for k in range(targets):
            g = torch.Generator().manual_seed(10 * step + k)
            h, ctx, target = torch.randn(rows, 6, generator=g), torch.randn(rows, 3, generator=g), \
                torch.randn(rows, 6, generator=g)
            weight = torch.rand(rows, generator=g) * (torch.arange(rows) % 3 != 1) if weighted else None
            sent = [iface.send(h, step + k, ctx if mode == "cdni" else None, weight=weight, stacked=stacked)
                    for iface in (closed, graph)]
            assert (sent[0] is None and sent[1] is None) or torch.equal(sent[0], sent[1])
            for iface in (closed, graph):
                iface.transport.put_target("a->b", step + k, target)
        stats = [iface.collect(track=True) for iface in (closed, graph)]
        for a, b in zip(*stats, strict=True):
            for key in ("utility_loss", "grad_cosine", "grad_r2"):
                assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5), key
    assert closed.utility_updates == graph.utility_updates == 12 // targets
    assert closed._sent == {} and graph._sent == {}
    _assert_same(closed, graph)


def test_a_model_of_ones_own_takes_the_reference_path():
    """A utility model the core does not know as one linear map is regressed through autograd."""

    class Wrapped(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, h, context=None):
            return self.inner(h, context)

    model = _utility("dni")
    iface = Interface("a->b", "a", "b", "dni", Wrapped(model), torch.optim.SGD(model.parameters(), lr=0.1))
    assert iface._closed_form() is None
    iface.send(torch.randn(4, 6), 0)
    assert iface._sent[0].x is None and iface._sent[0].prediction.requires_grad  # a graph to back-propagate


def _stale_run(model: UtilityModel, speedups: SpeedUps, transport=None) -> tuple[Interface, list]:
    """Three messages sent, then their targets one at a time: the second and third come after updates."""
    iface = _interface(model, "dni", speedups, transport=transport)
    hs = [torch.randn(4, 6, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    for step, h in enumerate(hs):
        iface.send(h, step)
    for step in range(3):
        target = torch.randn(4, 6, generator=torch.Generator().manual_seed(9 + step))
        iface.transport.put_target("a->b", step, target)
        iface.collect(track=False)
    return iface, hs


def _by_hand(model: UtilityModel, hs: list[torch.Tensor], keep: bool) -> nn.Module:
    """The regression written with autograd: the target of step s regresses the send-time prediction
    (``keep``: its graph, still good for an affine model), or what the model predicts when it comes."""
    u = copy.deepcopy(model)
    optimizer = torch.optim.Adam(u.parameters(), lr=0.01)
    sent = [u(h) for h in hs]
    for step, h in enumerate(hs):
        target = torch.randn(4, 6, generator=torch.Generator().manual_seed(9 + step)) * 4
        prediction = sent[step] if keep else u(h)
        optimizer.zero_grad()
        F.mse_loss(prediction, target).backward()
        optimizer.step()
    return u


@pytest.mark.parametrize("closed_form", [False, True])
def test_keep_prediction_regresses_the_send_time_prediction_of_an_affine_model(closed_form):
    """Targets that come after updates: kept, the send-time prediction's residual is regressed (autograd on
    the send-time graph); switched off, the model predicts again (the reference). The two differ, and each
    equals its definition written out."""
    model = _utility("dni")
    runs = {}
    for keep in (True, False):
        speedups = SpeedUps(closed_form=closed_form, keep_prediction=keep, merged_steps=False)
        iface, hs = _stale_run(model, speedups)
        runs[keep] = iface
        for a, b in zip(iface.utility.parameters(), _by_hand(model, hs, keep).parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(runs[True].utility.linear.weight, runs[False].utility.linear.weight)


def test_keep_prediction_equals_predicting_again_when_no_update_came_between():
    """Each target before the next send (a feed-forward clock step): keeping and predicting again are the
    same numbers, bit for bit."""
    model = _utility("cdni")
    ifaces = [_interface(model, "cdni", s) for s in (ONLY["keep_prediction"], REFERENCE)]
    for step in range(6):
        g = torch.Generator().manual_seed(step)
        h, ctx = torch.randn(5, 6, generator=g), torch.randn(5, 3, generator=g)
        target = torch.randn(5, 6, generator=g)
        for iface in ifaces:
            iface.send(h, step, ctx)
            iface.transport.put_target("a->b", step, target)
            iface.collect()
    _assert_same(*ifaces)


class _Remote(InProcess):
    def is_remote(self, interface: str) -> bool:
        return True


@pytest.mark.parametrize("kind,remote", [("linear", True), ("mlp", False)])
def test_a_late_target_across_processes_or_of_a_deeper_model_is_always_predicted_again(kind, remote):
    """Where ``keep_prediction`` does not apply (targets from another process; a model that is not affine)
    the switch changes nothing: the model predicts again, as the reference does."""
    model = _utility("dni", kind=kind)
    runs = [_stale_run(model, s, _Remote() if remote else None)[0] for s in (SpeedUps(), REFERENCE)]
    _assert_same(*runs)
    if kind == "linear":
        hs = [torch.randn(4, 6, generator=torch.Generator().manual_seed(s)) for s in range(3)]
        by_hand = _by_hand(model, hs, keep=False)
        for a, b in zip(runs[0].utility.parameters(), by_hand.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def _chain(mode: str, speedups: SpeedUps, warmup: int) -> System:
    torch.manual_seed(0)
    dims = [7, 6, 6, 3]
    mods = [nn.Sequential(nn.Linear(dims[i], dims[i + 1]), nn.Tanh()) for i in range(2)] + [nn.Linear(6, 3)]
    agents = [Agent(f"a{i}", m, torch.optim.Adam(m.parameters(), lr=1e-2)) for i, m in enumerate(mods)]
    ifaces = []
    for i in range(2):
        u = UtilityModel((6,), context_dim=3 if mode == "cdni" else 0)
        ifaces.append(Interface(f"a{i}->a{i + 1}", f"a{i}", f"a{i + 1}", mode, u,
                                torch.optim.Adam(u.parameters(), lr=1e-2), warmup_steps=warmup))
    return System(agents, ifaces, speedups=speedups)


@pytest.mark.parametrize("mode", ["dni", "cdni"])
@pytest.mark.parametrize("speedups,together", [(s, True) for s in ONLY] + [("merged_steps", False),
                                                                         ("all", False)])
def test_a_chain_with_speed_ups_trains_as_the_reference_does(mode, speedups, together):
    """A 3-layer chain (every layer an agent with its own Adam), with a warm-up, stepping at each tick or
    in one ``steps_together`` block: each speed-up (and all of them) gives the reference path's parameters
    and optimizer states, bit for bit."""
    runs = [_chain(mode, s, warmup=2) for s in (ONLY[speedups], REFERENCE)]
    assert runs[1].steps.merge is False
    assert all(not i.speedups.closed_form for i in runs[1].interfaces.values())
    for system in runs:
        for step in range(6):
            g = torch.Generator().manual_seed(step)
            x, y = torch.randn(5, 7, generator=g), torch.randint(0, 3, (5,), generator=g)
            context = F.one_hot(y, 3).float()
            with system.steps_together() if together else contextlib.nullcontext():
                for i, name in enumerate(system.agents):
                    with system.tick(name, step) as t:
                        out = system.agents[name].module(x if i == 0 else t.receive(f"a{i - 1}->a{i}"))
                        if i == 2:
                            t.add_loss(F.cross_entropy(out, y))
                        else:
                            t.send(f"a{i}->a{i + 1}", out, context=context)
                system.settle()
    assert_equal_states(runs[0].state_dict(), runs[1].state_dict())
    assert runs[0].interfaces["a0->a1"].utility.linear.weight.abs().sum() > 0  # the utility models learned
