"""The DNI mechanics, proved against plain backprop. Every test here fails if the mechanism breaks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dni_agents.core import Agent, InProcess, Interface, SpeedUps, SyntheticInputModel, System, UtilityModel

DIMS = [6, 8, 8, 8, 3]  # 4 agents: 3 hidden stages and a top


def make_modules(seed: int = 0, dims: list[int] = DIMS) -> list[nn.Module]:
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layer = nn.Linear(dims[i], dims[i + 1])
        mods.append(nn.Sequential(layer, nn.Tanh()) if i < len(dims) - 2 else layer)
    return mods


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, y)


def data(step: int, batch: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(batch, DIMS[0], generator=g), torch.randn(batch, DIMS[-1], generator=g)


class Oracle(nn.Module):
    """A utility model that returns the exact true gradient (per-example units) of the downstream loss,
    computed with the downstream modules as they are at send time. Context = the regression targets."""

    def __init__(self, downstream: list[nn.Module]) -> None:
        super().__init__()
        self.downstream = downstream  # plain list: not registered, so not trained by anyone here

    def forward(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        with torch.enable_grad():
            z = h.detach().requires_grad_()
            out = z
            for m in self.downstream:
                out = m(out)
            (g,) = torch.autograd.grad(loss_fn(out, context), z)
        return g * h.shape[0]


def sgd(module: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)


def build_chain(mods: list[nn.Module], mode: str, utility=None, transport=None, **iface_kw) -> System:
    agents = [Agent(f"a{i}", m, sgd(m)) for i, m in enumerate(mods)]
    ifaces = []
    for i in range(len(mods) - 1):
        u = utility(i) if utility else None
        opt = torch.optim.Adam(u.parameters(), lr=1e-2) if u is not None and list(u.parameters()) else None
        ifaces.append(Interface(f"a{i}->a{i + 1}", f"a{i}", f"a{i + 1}", mode, u, opt, **iface_kw))
    return System(agents, ifaces, transport=transport)


def chain_step(system: System, step: int, x: torch.Tensor, y: torch.Tensor, context: bool = True) -> None:
    names = list(system.agents)
    for i, name in enumerate(names):
        with system.tick(name, step) as t:
            inp = x if i == 0 else t.receive(f"a{i - 1}->a{i}")
            out = system.agents[name].module(inp)
            if i == len(names) - 1:
                t.add_loss(loss_fn(out, y))
            else:
                t.send(f"a{i}->a{i + 1}", out, context=y if context else None)
    system.settle()
    system.check_settled()


def backprop_reference(mods: list[nn.Module], steps: int) -> list[nn.Module]:
    mods = copy.deepcopy(mods)
    net = nn.Sequential(*mods)
    opt = sgd(net)
    for step in range(steps):
        x, y = data(step)
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    return mods


def assert_same_params(a: list[nn.Module], b: list[nn.Module], atol: float = 1e-6) -> None:
    for ma, mb in zip(a, b, strict=True):
        for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True):
            torch.testing.assert_close(pa, pb, atol=atol, rtol=0)


def test_oracle_dni_chain_makes_the_updates_of_end_to_end_backprop():
    steps = 6
    mods = make_modules()
    reference = backprop_reference(mods, steps)
    system = build_chain(mods, "cdni", utility=lambda i: Oracle(mods[i + 1 :]))
    for step in range(steps):
        chain_step(system, step, *data(step))
        assert not system.waiting  # every agent updated at once: nobody waited for a backward pass
    assert_same_params(mods, reference)
    # and the updates are not trivially equal: parameters moved
    moved = max((p - q).abs().max().item() for p, q in zip(nn.Sequential(*mods).parameters(),
                                                             nn.Sequential(*make_modules()).parameters()))
    assert moved > 1e-2


def test_backprop_mode_equals_plain_backprop():
    steps = 4
    mods = make_modules(seed=1)
    reference = backprop_reference(mods, steps)
    system = build_chain(mods, "backprop")
    for step in range(steps):
        chain_step(system, step, *data(step))
    assert_same_params(mods, reference)


def test_full_lambda_equals_backprop_and_locks_the_sender():
    mods = make_modules(seed=2)
    reference = backprop_reference(mods, 3)
    system = build_chain(mods, "dni", utility=lambda i: UtilityModel((DIMS[i + 1],)), lambda_true=1.0)
    for step in range(3):
        chain_step(system, step, *data(step))
    assert_same_params(mods, reference)


def test_none_mode_sends_no_gradient_upstream():
    mods = make_modules(seed=3)
    before = copy.deepcopy(mods)
    system = build_chain(mods, "none")
    x, y = data(0)
    chain_step(system, 0, x, y)
    for m, b in zip(mods[:-1], before[:-1]):
        for p, q in zip(m.parameters(), b.parameters()):
            assert p.grad is None
            assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(mods[-1].parameters(), before[-1].parameters()))


def nonzero_utility(dim: int, seed: int = 7, context_dim: int = 0) -> UtilityModel:
    torch.manual_seed(seed)
    u = UtilityModel((dim,), context_dim=context_dim)
    nn.init.normal_(u.net[-1].weight, std=0.5)
    return u


def test_update_unlocking_sender_updates_before_receiver_runs():
    mods = make_modules(seed=4)
    system = build_chain(mods, "dni", utility=lambda i: nonzero_utility(DIMS[i + 1]))
    x, y = data(0)
    before = copy.deepcopy(mods[0])
    with system.tick("a0", 0) as t:
        t.send("a0->a1", mods[0](x))
    # a1 has not run at all, yet a0 has already taken its optimizer step
    assert not system.waiting
    assert any(not torch.equal(p, q) for p, q in zip(mods[0].parameters(), before.parameters()))


def test_backprop_mode_locks_the_sender_until_the_target_arrives():
    mods = make_modules(seed=4)
    system = build_chain(mods, "backprop")
    x, y = data(0)
    before = copy.deepcopy(mods[0])
    with system.tick("a0", 0) as t:
        t.send("a0->a1", mods[0](x))
    assert [tick.agent.name for tick in system.waiting] == ["a0"]
    assert all(torch.equal(p, q) for p, q in zip(mods[0].parameters(), before.parameters()))
    with pytest.raises(RuntimeError, match="still waits for the true gradient on a0->a1"):
        system.check_settled()


@pytest.mark.parametrize("learn", [True, False])
def test_utility_regression_never_reaches_sender_parameters(learn: bool):
    """The sender's gradient is exactly Jᵀĝ, with utility learning on or off (the classic leak: regressing
    U(h) without detaching h pushes the regression loss into the sender)."""
    grads = {}
    for learn_flag in (True, False):
        mods = make_modules(seed=5)
        system = build_chain(mods, "dni", utility=lambda i: nonzero_utility(DIMS[i + 1]), learn=learn_flag)
        x, y = data(0)
        u0 = copy.deepcopy(system.interfaces["a0->a1"].utility)
        sender = copy.deepcopy(mods[0])
        chain_step(system, 0, x, y)
        assert system.interfaces["a0->a1"].messages_sent == 1
        grads[learn_flag] = [p.grad.clone() for p in mods[0].parameters()]
        # independent computation of Jᵀĝ with the pre-step sender and utility model
        h = sender(x)
        g_hat = u0(h.detach()) / x.shape[0]
        expected = torch.autograd.grad(h, list(sender.parameters()), grad_outputs=g_hat)
        for got, want in zip(grads[learn_flag], expected):
            torch.testing.assert_close(got, want, atol=1e-7, rtol=0)
        if learn_flag:  # and the utility model did learn
            assert not torch.equal(u0.net[-1].weight, system.interfaces["a0->a1"].utility.net[-1].weight)
    for a, b in zip(grads[True], grads[False]):
        assert torch.equal(a, b)


class RecordingTransport(InProcess):
    def __init__(self) -> None:
        super().__init__()
        self.targets: dict[tuple[str, int], torch.Tensor] = {}

    def put_target(self, interface, step, target):
        self.targets[(interface, step)] = target.clone()
        super().put_target(interface, step, target)


def test_bootstrapping_target_contains_the_receivers_synthetic_gradient():
    mods = make_modules(seed=6, dims=[6, 8, 8, 3])
    transport = RecordingTransport()
    system = build_chain(
        mods, "dni", utility=lambda i: nonzero_utility([8, 8][i], seed=10 + i), transport=transport, scale=0.5
    )
    x, y = data(0)
    a0, a1 = copy.deepcopy(mods[0]), copy.deepcopy(mods[1])
    u1 = copy.deepcopy(system.interfaces["a1->a2"].utility)
    chain_step(system, 0, x, y)
    # a1's input gradient, driven only by the synthetic gradient a1 got from a2 (a1 has no loss of its own)
    z = a0(x).detach().requires_grad_()
    h1 = a1(z)
    g1 = u1(h1.detach()) * (0.5 / x.shape[0])
    (expected,) = torch.autograd.grad(h1, z, grad_outputs=g1)
    target = transport.targets[("a0->a1", 0)]
    assert target.abs().max() > 1e-4
    torch.testing.assert_close(target, expected, atol=1e-7, rtol=0)


def test_linear_utility_model_learns_the_true_gradient_of_a_linear_toy():
    torch.manual_seed(0)
    encoder, readout = nn.Linear(4, 12, bias=False), nn.Linear(12, 3)
    mixing = torch.randn(4, 3)
    utility = UtilityModel((12,))
    opt = torch.optim.Adam(utility.parameters(), lr=3e-3)
    iface = Interface("enc->head", "enc", "head", "dni", utility, opt)
    system = System([Agent("enc", encoder), Agent("head", readout)], [iface])  # frozen agents
    for step in range(1500):
        system.track_stats = step == 1499  # fidelity measured on the step we look at
        x = torch.randn(32, 4)
        with system.tick("enc", step) as t:
            t.send(iface, encoder(x))
        with system.tick("head", step) as t:
            t.add_loss(F.mse_loss(readout(t.receive(iface)), x @ mixing))
        system.settle()
        stats = system.drain_stats()["enc->head"]
    assert float(stats[-1]["grad_cosine"]) > 0.99
    assert float(stats[-1]["grad_rel_error"]) < 0.15


@pytest.mark.parametrize(
    "kwargs,shape",
    [
        ({"kind": "linear"}, (7,)),
        ({"kind": "linear", "rank": 2}, (7,)),
        ({"kind": "mlp", "hidden": 16, "layers": 3}, (7,)),
        ({"kind": "linear", "context_dim": 3}, (7,)),
        ({"kind": "conv", "hidden": 4, "layers": 2, "context_dim": 3}, (2, 5, 5)),
    ],
)
def test_synthetic_gradient_is_exactly_zero_before_learning(kwargs, shape):
    torch.manual_seed(0)
    u = UtilityModel(shape, **kwargs)
    h = torch.randn(4, *shape)
    ctx = torch.eye(3)[[0, 1, 2, 0]] if kwargs.get("context_dim") else None
    assert torch.equal(u(h, ctx), torch.zeros_like(h))
    # and through an interface: the sender receives a gradient of exactly zero
    sender = nn.Linear(3, math_prod(shape))
    iface = Interface("s->r", "s", "r", "cdni" if ctx is not None else "dni", u)
    system = System([Agent("s", sender, sgd(sender)), Agent("r", nn.Identity())], [iface])
    with system.tick("s", 0) as t:
        t.send(iface, sender(torch.randn(4, 3)).reshape(4, *shape), context=ctx)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in sender.parameters())


def math_prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def test_warmup_learns_but_does_not_apply():
    mods = make_modules(seed=8)
    system = build_chain(mods, "dni", utility=lambda i: UtilityModel((DIMS[i + 1],)), warmup_steps=3)
    first = copy.deepcopy(mods[0])
    for step in range(3):
        chain_step(system, step, *data(step))
        assert all(p.grad is None or not p.grad.any() for p in mods[0].parameters())
    assert all(torch.equal(p, q) for p, q in zip(mods[0].parameters(), first.parameters()))
    # the top interface learned meanwhile (the lower ones bootstrap on it, so their targets are still 0)
    assert system.interfaces["a2->a3"].utility.net[-1].weight.abs().sum() > 0
    chain_step(system, 3, *data(3))
    assert any(p.grad.abs().sum() > 0 for p in mods[2].parameters())


def test_synthetic_input_lets_the_receiver_run_first_and_learns_the_message():
    torch.manual_seed(0)
    sender, receiver = nn.Linear(5, 6), nn.Linear(6, 2)
    sim = SyntheticInputModel((5,), (6,), kind="linear")
    utility = UtilityModel((6,))
    iface = Interface(
        "s->r", "s", "r", "dni", utility, torch.optim.Adam(utility.parameters(), lr=1e-2),
        synthetic_input=sim, synthetic_input_optimizer=torch.optim.Adam(sim.parameters(), lr=3e-2),
    )
    # a frozen sender, so the message is a fixed function the synthetic-input model can catch up with
    system = System([Agent("s", sender), Agent("r", receiver, sgd(receiver))], [iface])
    errors = []
    for step in range(300):
        x = torch.randn(16, 5)
        with system.tick("r", step) as t:  # the receiver runs before the sender has sent anything
            t.add_loss(F.mse_loss(receiver(t.receive(iface, source=x)), x[:, :2]))
        with system.tick("s", step) as t:
            t.send(iface, sender(x))
        system.settle()
        with torch.no_grad():
            errors.append(F.mse_loss(sim(x), sender(x)).item())
    assert errors[-1] < 0.05 * errors[0]


def test_agent_period_and_system_validation():
    a = Agent("slow", nn.Identity(), period=3)
    assert a.period == 3
    with pytest.raises(ValueError, match="unknown receiver 'ghost'"):
        System([a], [Interface("x", "slow", "ghost", "none")])
    with pytest.raises(ValueError, match="needs a utility model"):
        Interface("x", "a", "b", "dni")
    with pytest.raises(ValueError, match="not one of"):
        Interface("x", "a", "b", "dnn")  # type: ignore[arg-type]


def test_two_systems_in_one_process_do_not_interfere():
    mods_a, mods_b = make_modules(seed=9), make_modules(seed=9)
    sys_a = build_chain(mods_a, "backprop")
    sys_b = build_chain(mods_b, "backprop")
    for step in range(2):  # interleaved
        chain_step(sys_a, step, *data(step))
        chain_step(sys_b, step, *data(step))
    assert_same_params(mods_a, mods_b, atol=0)
    assert_same_params(mods_a, backprop_reference(make_modules(seed=9), 2))


def test_bp_lambda_mixes_true_and_synthetic_gradients():
    """With an exact utility model, λ·true + (1-λ)·ĝ is the true gradient for any λ; with ĝ scaled by 0
    it is λ·true, i.e. plain backprop with the lower layers' gradients shrunk by λ per interface."""
    mods = make_modules(seed=11)
    reference = backprop_reference(mods, 3)
    system = build_chain(mods, "cdni", utility=lambda i: Oracle(mods[i + 1 :]), lambda_true=0.5)
    for step in range(3):
        chain_step(system, step, *data(step))
    assert_same_params(mods, reference)

    mods = make_modules(seed=12)
    system = build_chain(
        mods, "dni", utility=lambda i: nonzero_utility(DIMS[i + 1]), lambda_true=0.25, scale=0.0
    )
    x, y = data(0)
    net = copy.deepcopy(mods)
    chain_step(system, 0, x, y)
    h = x
    for m in net[:-1]:  # λ-scaled gradient at every boundary: hook the backward pass of the reference
        h = m(h)
        h.register_hook(lambda g: 0.25 * g)
    loss_fn(net[-1](h), y).backward()
    for m, ref in zip(mods, net):
        for p, q in zip(m.parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-7, rtol=0)


def test_targets_that_never_come_back_do_not_grow_memory():
    u = UtilityModel((4,))
    iface = Interface("s->r", "s", "r", "dni", u, max_in_flight=3)
    for step in range(10):  # the receiver never replies
        iface.send(torch.randn(2, 4), step)
        iface.receive(step)
    assert list(iface._sent) == [7, 8, 9] and list(iface._received) == [7, 8, 9]


def test_an_agent_talks_to_its_future_self_across_truncation_windows():
    """Truncated BPTT with a synthetic gradient at the boundary: window k receives the state window k-1
    sent, sends its last state for window k+1, and its reply for the state it received is the bootstrapped
    target (it contains the synthetic gradient window k got for its own last state)."""
    torch.manual_seed(0)
    cell, readout = nn.Linear(2 + 4, 4), nn.Linear(4, 1)
    core = nn.ModuleList([cell, readout])
    utility = nonzero_utility(4, seed=3)
    transport = RecordingTransport()
    iface = Interface("rnn->rnn", "rnn", "rnn", "dni", utility, torch.optim.Adam(utility.parameters(), 1e-3),
                      scale=0.1, transport=transport)
    system = System([Agent("rnn", core, torch.optim.SGD(core.parameters(), lr=0.05))], [iface])
    window, batch = 3, 5
    for k in range(4):
        before = copy.deepcopy(core)
        u_before = copy.deepcopy(utility)
        xs = torch.randn(window, batch, 2, generator=torch.Generator().manual_seed(k))
        with system.tick("rnn", k) as t:
            h = t.receive(iface, step=k - 1) if k else torch.zeros(batch, 4)
            h0 = h
            loss = 0.0
            for x in xs:
                h = torch.tanh(cell(torch.cat([x, h], 1)))
                loss = loss + readout(h).pow(2).mean()
            t.add_loss(loss)
            t.send(iface, h)
        system.settle()
        if k:
            # recompute window k with the pre-update weights: d(loss + <h_T, ĝ_k>)/d h_0
            z = h0.detach().requires_grad_()
            hh, ref_loss = z, 0.0
            for x in xs:
                hh = torch.tanh(before[0](torch.cat([x, hh], 1)))
                ref_loss = ref_loss + before[1](hh).pow(2).mean()
            g_k = u_before(hh.detach()) * (0.1 / batch)
            (expected,) = torch.autograd.grad([ref_loss, hh], z, grad_outputs=[None, g_k])
            torch.testing.assert_close(transport.targets[("rnn->rnn", k - 1)], expected, atol=1e-6, rtol=0)
    stats = system.drain_stats()["rnn->rnn"]
    assert [s["step"] for s in stats] == [0, 1, 2]  # every boundary's prediction met its target
    assert len(iface._sent) == 1  # only the last window's state is still waiting for its future


# ---------------------------------------------------------------------------------------- joint ticks
def _two_way(mode: str):
    """Agents a and b talk both ways over two steps (a cycle): m_a0 -> b at t=1, m_b0 -> a at t=1."""
    torch.manual_seed(3)
    fa, fb = nn.Linear(4, 4), nn.Linear(4, 4)
    agents = [Agent("a", fa, sgd(fa)), Agent("b", fb, sgd(fb))]
    ifaces = []
    for name, s, r in (("a->b", "a", "b"), ("b->a", "b", "a")):
        u = UtilityModel((4,)) if mode == "dni" else None
        ifaces.append(Interface(name, s, r, mode, u, sgd(u) if u is not None else None))
    return System(agents, ifaces), fa, fb


def test_backprop_cycle_in_one_joint_tick_equals_end_to_end_backprop():
    system, fa, fb = _two_way("backprop")
    assert system.coupled() == [["a", "b"]]  # the cycle must tick together
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    ref_a, ref_b = copy.deepcopy(fa), copy.deepcopy(fb)
    # reference: one graph, no interfaces
    ma0, mb0 = ref_a(x), ref_b(x)
    loss = ref_a(x + mb0).pow(2).mean() + ref_b(x + ma0).pow(2).mean()
    loss.backward()
    expected = [p.grad.clone() for p in (*ref_a.parameters(), *ref_b.parameters())]
    before = [p.detach().clone() for p in (*fa.parameters(), *fb.parameters())]
    with system.tick(["a", "b"], 0) as t:  # a cycle: locked separate ticks would wait for each other forever
        t.send("a->b", fa(x), step=0)
        t.send("b->a", fb(x), step=0)
        za, zb = t.receive("b->a", step=0), t.receive("a->b", step=0)
        t.add_loss(fa(x + za).pow(2).mean() + fb(x + zb).pow(2).mean())
    assert not system.waiting
    after = [p.detach() for p in (*fa.parameters(), *fb.parameters())]
    for b, a, g in zip(before, after, expected):  # first SGD step: p - lr * grad
        torch.testing.assert_close(a, b - 0.1 * g)


def test_dni_cycle_in_separate_ticks_never_waits_and_each_side_learns_its_utility_model():
    system, fa, fb = _two_way("dni")
    assert system.coupled() == [["a"], ["b"]]
    x = torch.randn(3, 4)
    for step in range(3):
        with system.tick("a", step) as ta, system.tick("b", step) as tb:
            ta.send("a->b", fa(x), step=step)
            tb.send("b->a", fb(x), step=step)
            za, zb = ta.receive("b->a", step=step), tb.receive("a->b", step=step)
            ta.add_loss(fa(x + za).pow(2).mean())
            tb.add_loss(fb(x + zb).pow(2).mean())
        assert not system.waiting
    stats = system.drain_stats()
    assert set(stats) == {"a->b", "b->a"} and all(len(v) == 3 for v in stats.values())
    assert all(system.interfaces[n].utility.net[-1].weight.abs().sum() > 0 for n in stats)


def test_a_message_in_flight_survives_a_checkpoint_exactly():
    """A run checkpointed while a message waits for its target continues as if never interrupted (the
    regression of a target that comes after an update predicts again, in both runs)."""

    def make() -> Interface:
        torch.manual_seed(3)
        u = UtilityModel((4,))
        return Interface("a->b", "a", "b", "dni", u, torch.optim.Adam(u.parameters(), lr=0.1))

    h0, h1 = torch.randn(2, 4), torch.randn(2, 4)
    straight = make()
    straight.send(h1, 1)
    straight.send(h0, 2)  # in flight when the checkpoint is written
    straight.transport.put_target("a->b", 1, torch.ones(2, 4))
    straight.collect()  # step 1's target moves the utility model after step 2's prediction was made
    state = copy.deepcopy(straight.state_dict())
    pending = straight.in_flight(2)
    resumed = make()
    resumed.load_state_dict(state)
    resumed.restore_in_flight(h0, 2, prediction=pending)
    assert resumed.messages_sent == straight.messages_sent
    for iface in (straight, resumed):
        iface.transport.put_target("a->b", 2, torch.full((2, 4), -0.5))
        iface.collect()
    for a, b in zip(straight.utility.parameters(), resumed.utility.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_a_normalising_utility_model_does_not_grow_with_the_message():
    torch.manual_seed(0)
    u = UtilityModel((6,), normalize=True)
    with torch.no_grad():
        u.net[-1].weight.normal_()
    h = torch.randn(3, 6)
    torch.testing.assert_close(u(100.0 * h), u(h), rtol=1e-4, atol=1e-4)
    plain = UtilityModel((6,))
    plain.load_state_dict(u.state_dict())
    assert not torch.allclose(plain(100.0 * h), plain(h))


@pytest.mark.parametrize("rank", [None, 4])
def test_late_targets_train_a_low_rank_utility_model(rank) -> None:
    """Targets that come back after the utility model has already been updated (a staleness window across
    processes): the model predicts again with its current weights instead of back-propagating a graph
    whose weights changed in place (which raised for a low-rank model)."""
    torch.manual_seed(0)
    utility = UtilityModel((6,), rank=rank)
    iface = Interface("a->b", "a", "b", "dni", utility, torch.optim.SGD(utility.parameters(), lr=0.1))
    for step in range(3):
        iface.send(torch.randn(5, 6), step)
    before = [p.detach().clone() for p in utility.parameters()]
    for step in range(3):  # one target at a time: the model is updated between them
        iface.transport.put_target("a->b", step, torch.randn(5, 6))
        stats = iface.collect()
        assert len(stats) == 1 and torch.isfinite(stats[0]["utility_loss"])
    assert any(not torch.equal(b, p) for b, p in zip(before, utility.parameters()))


# ---------------------------------------------------------------------------------------- fidelity stats
def _two_agents(seed: int = 0, **system_kwargs) -> System:
    torch.manual_seed(seed)
    enc, head = nn.Linear(4, 8), nn.Linear(8, 2)
    u = UtilityModel((8,))
    iface = Interface("enc->head", "enc", "head", "dni", u, torch.optim.Adam(u.parameters(), lr=1e-3))
    return System([Agent("enc", enc, sgd(enc)), Agent("head", head, sgd(head))], [iface], **system_kwargs)


def _two_agent_step(system: System, step: int, x: torch.Tensor) -> None:
    enc, head = system.agents["enc"].module, system.agents["head"].module
    with system.tick("enc", step) as t:
        t.send("enc->head", enc(x))
    with system.tick("head", step) as t:
        t.add_loss(head(t.receive("enc->head")).pow(2).mean())
    system.settle()


def test_stats_memory_stays_bounded_in_a_long_loop_that_never_drains():
    """A user loop that never calls drain_stats (the README's) must not grow with the number of steps."""
    import tracemalloc

    system = _two_agents(stats_capacity=100)  # a small store, so a short loop fills it
    system.track_stats = True  # the worst case: every step measured, the biggest records
    x = torch.randn(4, 4)
    tracemalloc.start()
    try:
        for step in range(1200):
            _two_agent_step(system, step, x)
            if step == 399:
                at_400 = tracemalloc.get_traced_memory()[0]
        at_1200 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # unbounded, 800 more records hold ~0.7 MB (0.85 kB each, tracked); bounded, it stays flat
    assert at_1200 - at_400 < 100_000, at_1200 - at_400
    records = system.drain_stats()["enc->head"]
    assert len(records) == 100 and records[-1]["step"] == 1199  # the newest are kept


def test_fidelity_is_measured_only_on_tracked_steps():
    system = _two_agents()
    x = torch.randn(4, 4)
    for step in range(6):
        if step >= 3:  # steps 0-2: the default
            system.track_stats = step == 3
        _two_agent_step(system, step, x)
    records = system.drain_stats()["enc->head"]
    assert [r["step"] for r in records] == list(range(6))
    assert all("utility_loss" in r for r in records)  # cheap, already computed: always there
    fidelity = ("grad_cosine", "grad_rel_error", "target_norm", "synthetic_norm", "message_norm")
    assert [s for s in range(6) if any(k in records[s] for k in fidelity)] == [3]
    assert all(k in records[3] for k in fidelity)


def test_a_zero_target_has_no_cosine_or_relative_error():
    """At step 0 a bootstrapped target is exactly zero (the receiver's own ĝ is 0): cosine and relative
    error are undefined, and must not read as a perfect 0.0; so is the cosine of a zero prediction."""
    mods = make_modules(seed=1)
    system = build_chain(mods, "dni", utility=lambda i: UtilityModel((DIMS[i + 1],)))
    system.track_stats = True
    chain_step(system, 0, *data(0))
    stats = {name: records[0] for name, records in system.drain_stats().items()}
    low = stats["a0->a1"]  # target: a1's gradient, made of a1's ĝ = 0
    assert float(low["target_norm"]) == 0.0 and float(low["synthetic_norm"]) == 0.0
    assert "grad_cosine" not in low and "grad_rel_error" not in low
    assert float(low["utility_loss"]) == 0.0 and "message_norm" in low
    top = stats["a2->a3"]  # a true target (the top's loss), but the prediction is exactly 0
    assert float(top["target_norm"]) > 0 and float(top["synthetic_norm"]) == 0.0
    assert "grad_cosine" not in top
    assert float(top["grad_rel_error"]) == pytest.approx(1.0)
    for step in range(1, 4):  # once both are nonzero, everything is measured
        chain_step(system, step, *data(step))
    later = system.drain_stats()["a0->a1"][-1]
    assert float(later["target_norm"]) > 0 and {"grad_cosine", "grad_rel_error"} <= set(later)


def test_a_row_of_weight_zero_is_no_example_of_the_utility_regression():
    """An outage: a row the channel did not carry is sent with weight 0. The utility model then learns
    and measures its fidelity exactly as if only the carried rows had been sent."""
    torch.manual_seed(0)
    model = UtilityModel((4,), context_dim=2)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    h, ctx, target = torch.randn(3, 4), torch.randn(3, 2), torch.randn(3, 4)
    kept = torch.tensor([0, 2])
    runs = {}
    for name, (rows, weight, units) in {"weighted": (slice(None), torch.tensor([1.0, 0.0, 1.0]), 3),
                                        "kept": (kept, None, 2)}.items():
        u = copy.deepcopy(model)
        iface = Interface("a->b", "a", "b", "cdni", u, torch.optim.SGD(u.parameters(), lr=0.1))
        iface.send(h[rows], 0, ctx[rows], weight=weight)
        iface.transport.put_target("a->b", 0, target[rows] / units)  # per-example units: both regress target
        runs[name] = (iface.collect(track=True)[0], u)
    (weighted, u_w), (only_kept, u_k) = runs["weighted"], runs["kept"]
    assert float(weighted["utility_loss"]) == pytest.approx(float(only_kept["utility_loss"]), rel=1e-6)
    for key in ("grad_cosine", "grad_r2", "target_norm", "synthetic_norm", "message_norm"):
        assert float(weighted[key]) == pytest.approx(float(only_kept[key]), rel=1e-5), key
    for a, b in zip(u_w.parameters(), u_k.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(u_w.parameters(), model.parameters(), strict=True))
    iface = Interface("a->b", "a", "b", "dni", UtilityModel((4,)))
    with pytest.raises(ValueError, match="one entry per row"):
        iface.send(h, 1, weight=torch.ones(2))


@pytest.mark.parametrize("closed_form", [True, False])
def test_a_kept_utility_loss_holds_no_buffer_of_the_batch(closed_form):
    """mse_loss's 0-d result views its B×D buffer, which a kept stats record would keep alive (up to
    ``stats_capacity`` of them a channel). What a record keeps is a scalar's size, on either path."""
    u = UtilityModel((256,))
    iface = Interface("a->b", "a", "b", "dni", u, torch.optim.SGD(u.parameters(), lr=0.1),
                      speedups=SpeedUps(closed_form=closed_form))
    for step in range(3):
        iface.send(torch.randn(64, 256), step)
        iface.transport.put_target("a->b", step, torch.randn(64, 256))
        (record,) = iface.collect(track=False)
        assert record["utility_loss"].untyped_storage().nbytes() <= 8


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_a_stacked_message_is_learned_as_the_messages_it_stacks(kind):
    """One message that stacks 3 steps of 4 rows (``stacked=3``) gives the sender the ĝ of the 3 messages
    sent one by one (per-example units per step; the first two rows of steps inside warm-up get none) and
    moves the utility model as regressing onto the 3 targets together does."""
    torch.manual_seed(0)
    h, target = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    runs = []
    for stacked in (False, True):
        torch.manual_seed(1)
        utility = UtilityModel((5,), kind=kind, hidden=8)
        nn.init.normal_(utility.net[-1].weight if kind == "mlp" else utility.linear.weight)
        iface = Interface("a->b", "a", "b", "dni", utility, torch.optim.Adam(utility.parameters(), lr=0.1),
                          warmup_steps=1)
        if stacked:
            grads = [iface.send(h.flatten(0, 1), 0, stacked=3)]
            iface.transport.put_target("a->b", 0, target.flatten(0, 1))
        else:
            grads = [iface.send(h[t], t) for t in range(3)]
            for t in range(3):
                iface.transport.put_target("a->b", t, target[t])
        iface.collect(track=False)
        runs.append((grads, [p.detach().clone() for p in utility.parameters()], iface.messages_sent))
    (one_by_one, params_a, sent_a), (stack, params_b, sent_b) = runs
    assert one_by_one[0] is None and sent_a == sent_b == 3  # step 0 is in warm-up
    expected = torch.cat([torch.zeros(4, 5), one_by_one[1], one_by_one[2]])
    assert torch.allclose(stack[0], expected, atol=1e-6)
    for a, b in zip(params_a, params_b, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="rows do not stack"):
        iface.send(torch.randn(5, 5), 9, stacked=2)
