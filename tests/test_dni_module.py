"""DNI as a layer of the user's own model (``dni_agents.DNI``): the paper's protocol checked against
autograd on plain copies, the core loop's updates bit for bit, and the README's example."""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dni_agents
from dni_agents.config import load_config
from dni_agents.core import DNI, NonFiniteError, UtilityModel
from dni_agents.data import batches, load_dataset
from dni_agents.drivers import ff

B = 6


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are small: a second thread only waits for the first (many times slower when the
    machine is busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomized(dni: DNI, seed: int = 1) -> DNI:
    """A utility model that predicts something (a fresh one predicts exactly 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dni.utility.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return dni


def _chain(kind: str = "linear", context_dim: int = 0):
    """lower (5 → 4) | DNI a | middle (4 → 4) | DNI b (cDNI if context_dim) | upper (4 → 3)."""
    torch.manual_seed(0)
    lower = nn.Sequential(nn.Linear(5, 4), nn.Tanh())
    middle = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    upper = nn.Linear(4, 3)
    a = _randomized(DNI(4, kind=kind, hidden=8), 1)
    b = _randomized(DNI(4, context_dim=context_dim, kind=kind, hidden=8), 2)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(B, 5, generator=g), torch.randn(B, 3, generator=g)
    context = torch.randn(B, context_dim, generator=g) if context_dim else None
    return lower, middle, upper, a, b, x, y, context


def _regression_gradients(utility: nn.Module, message: torch.Tensor, target: torch.Tensor,
                          context: torch.Tensor | None = None) -> list[torch.Tensor]:
    """What autograd gives U's parameters for the interface's regression: U(h) in per-example units onto
    the target in per-example units (× B), mean squared error."""
    u = copy.deepcopy(utility)
    loss = F.mse_loss(u(message.detach(), context), target * message.shape[0])
    return list(torch.autograd.grad(loss, list(u.parameters())))


@pytest.mark.parametrize("kind", ["linear", "mlp"])  # the closed-form regression and autograd's
def test_the_lower_part_gets_the_synthetic_gradient_and_not_the_true_one(kind):
    lower, _, upper, dni, _, x, y, _ = _chain(kind)
    plain_lower, plain_upper = copy.deepcopy(lower), copy.deepcopy(upper)
    h = lower(x)
    F.mse_loss(upper(dni(h)), y).backward()
    # ĝ = U(h) in gradient units (per-example prediction / B), backpropagated into the lower part
    h_plain = plain_lower(x)
    synthetic = dni.utility(h_plain.detach()) / B
    expected = torch.autograd.grad(h_plain, list(plain_lower.parameters()), synthetic)
    true = torch.autograd.grad(F.mse_loss(plain_upper(plain_lower(x)), y), list(plain_lower.parameters()))
    for p, e, t in zip(lower.parameters(), expected, true, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-6, atol=1e-7)
        assert not torch.allclose(p.grad, t)
    # the upper part learns from its own loss, as in plain backprop
    plain_loss = F.mse_loss(plain_upper(h_plain.detach()), y)
    for p, e in zip(upper.parameters(), torch.autograd.grad(plain_loss, list(plain_upper.parameters())),
                    strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_the_regression_target_is_the_true_gradient_bootstrapped_through_the_next_dni(kind):
    """b's target is the upper part's true gradient; a's is the middle part's gradient for its input when
    b hands it ĝ_b, not the true gradient (bootstrapping). U's gradients are autograd's for those targets."""
    lower, middle, upper, a, b, x, y, context = _chain(kind, context_dim=2)
    a.track_stats = b.track_stats = True
    plain = [copy.deepcopy(m) for m in (lower, middle, upper)]
    utilities = copy.deepcopy(a.utility), copy.deepcopy(b.utility)
    F.mse_loss(upper(b(middle(a(lower(x))), context=context)), y).backward()

    h_a = plain[0](x).detach().requires_grad_()
    h_b = plain[1](h_a)
    b_in = h_b.detach().requires_grad_()
    (target_b,) = torch.autograd.grad(F.mse_loss(plain[2](b_in), y), b_in)
    synthetic_b = utilities[1](h_b.detach(), context) / B
    (target_a,) = torch.autograd.grad(h_b, h_a, synthetic_b)
    (true_a,) = torch.autograd.grad(F.mse_loss(plain[2](plain[1](h_a)), y), h_a)
    assert not torch.allclose(target_a, true_a)  # bootstrapped, not the true gradient
    for dni, utility, message, target, ctx in ((a, utilities[0], h_a, target_a, None),
                                               (b, utilities[1], h_b, target_b, context)):
        for p, e in zip(dni.utility.parameters(), _regression_gradients(utility, message, target, ctx),
                        strict=True):
            torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-7)
        (record,) = dni.stats()
        prediction = utility(message.detach(), ctx).detach()
        cosine = F.cosine_similarity(prediction.flatten(), (target * B).flatten(), dim=0)
        assert record["step"] == 0 and isinstance(record["grad_cosine"], float)
        assert record["grad_cosine"] == pytest.approx(float(cosine), rel=1e-5)
        assert dni.stats() == []  # drained


def test_eval_mode_and_no_grad_are_the_identity_and_never_call_the_utility_model():
    class Refuses(nn.Module):
        def forward(self, h, context=None):
            raise AssertionError("the utility model was called")

    dni = DNI(4, context_dim=2, utility=Refuses())
    h = torch.randn(3, 4, requires_grad=True) * 2
    with torch.no_grad():
        assert dni(h, context=torch.ones(3, 2)) is h
    dni.eval()
    assert dni(h) is h  # no context needed either
    dni.train()
    with pytest.raises(AssertionError, match="was called"):
        dni(h, context=torch.ones(3, 2))


def test_backprop_mode_is_plain_backprop_and_none_cuts_the_gradient():
    torch.manual_seed(0)
    lower, upper = nn.Sequential(nn.Linear(5, 4), nn.Tanh()), nn.Linear(4, 3)
    x, y = torch.randn(B, 5), torch.randn(B, 3)
    models = [copy.deepcopy((lower, upper)) for _ in range(3)]
    for (lo, up), dni in zip(models, (None, DNI(4, mode="backprop"), DNI(4, mode="none")), strict=True):
        h = lo(x)
        F.mse_loss(up(h if dni is None else dni(h)), y).backward()
    plain, backprop, none = models
    for p, q, r in zip(plain[0].parameters(), backprop[0].parameters(), none[0].parameters(), strict=True):
        assert torch.equal(p.grad, q.grad) and r.grad is None
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(plain[1].parameters(), backprop[1].parameters(),
                                                           strict=True))
    assert DNI(4, mode="backprop").utility is None  # the control has nothing to learn


# the README's example, read from the README; PLAIN is the same model and loop without DNI
README_EXAMPLE = re.search(r"<!-- library example[^>]*-->\s*```python\n(.*?)```",
                           (Path(__file__).parents[1] / "README.md").read_text(), re.S).group(1)
PLAIN = """\
import torch, torch.nn.functional as F
from torch import nn
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(784, 256), nn.Linear(256, 256), nn.Linear(256, 10)
    def forward(self, x):
        h = torch.relu(self.l1(x))
        return self.l3(torch.relu(self.l2(h)))
model = MLP(); opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for x, y in batches:
    loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
"""


def _changed_lines(before: str, after: str) -> list[str]:
    """The lines of ``after`` that are new or changed (comments aside), and lines of ``before`` removed."""
    strip = [[line.split("#")[0].rstrip() for line in s.splitlines()] for s in (before, after)]
    diff = difflib.ndiff(*strip)
    return [line for line in diff if line[:2] in ("+ ", "- ") and line[2:].strip()]


def test_the_readme_example_trains_and_changes_a_few_lines_of_a_plain_mlp():
    changed = [line for line in _changed_lines(PLAIN, README_EXAMPLE) if line.startswith("+")]
    removed = [line for line in _changed_lines(PLAIN, README_EXAMPLE) if line.startswith("-")]
    assert len(removed) == len(changed) - 2  # two lines added (the import, the DNIs); the others are edits
    imports = [line for line in changed if "import" in line]
    assert len(imports) == 1 and len(changed) - len(imports) <= 5  # model and loop
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 784, generator=g), torch.randint(0, 10, (64,), generator=g)
    scope: dict = {"batches": [(x, y)] * 25}
    torch.manual_seed(0)
    exec(compile(README_EXAMPLE, "README example", "exec"), scope)
    model, loss = scope["model"], scope["loss"]
    with torch.no_grad():
        untrained = F.cross_entropy(scope["MLP"]()(x, y), y).item()
    assert loss.item() < 0.5 * untrained
    assert {type(m) for m in model.modules()} >= {DNI, UtilityModel}
    assert all(p.grad is not None for p in model.dni12.utility.parameters())  # the one optimizer steps U
    assert any(p.abs().sum() > 0 for p in model.dni23.utility.parameters())  # … which has learned
    assert dni_agents.DNI is DNI


def _digits_mlp(mode12: str | None = None, mode23: str | None = None) -> nn.Module:
    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2, self.l3 = nn.Linear(64, 256), nn.Linear(256, 256), nn.Linear(256, 10)
            self.dni12 = DNI(256, mode=mode12)
            self.dni23 = DNI(256, context_dim=10, mode=mode23)

        def forward(self, x, y):
            h = self.dni12(torch.relu(self.l1(x)))
            return self.l3(self.dni23(torch.relu(self.l2(h)), context=F.one_hot(y, 10).float()))

    return MLP()


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _core_system(digits, *overrides: str):
    """The ff driver's chain of agents: DNI layer 1 → 2, cDNI layer 2 → 3 (the driver's layer0 → layer1,
    layer1 → layer2), each layer and utility model with its own Adam."""
    cdni = "interfaces=[{sender: layer1, receiver: layer2, mode: cdni}]"
    cfg = load_config("ff_digits", ["interface_defaults.mode=dni", cdni, *overrides])
    return ff.build_system(cfg, digits, torch.device("cpu"))


def _train_layer_path(model: nn.Module, digits, steps: int, seed: int = 0) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    stream = batches(digits.x_train.flatten(1), digits.y_train, 64, torch.Generator().manual_seed(seed))
    for _ in range(steps):
        x, y = next(stream)
        loss = F.cross_entropy(model(x, y), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _train_core(system, digits, steps: int, seed: int = 0) -> None:
    stream = batches(digits.x_train, digits.y_train, 64, torch.Generator().manual_seed(seed))
    for step in range(steps):
        ff.train_step(system, step, *next(stream), digits.num_classes)


def test_the_layer_path_makes_the_core_loops_updates_bit_for_bit(digits):
    """The same layers, utility models, learning rate and batches: the user's MLP with one Adam and the
    core's agents (one Adam each, steps taken together at the end of the clock step) end equal."""
    system = _core_system(digits, "interface_defaults.utility.lr=0.001")
    model = _digits_mlp()
    agents = [a.module for a in system.agents.values()]
    for mine, theirs in ((model.l1, agents[0][1]), (model.l2, agents[1][0]), (model.l3, agents[2])):
        mine.load_state_dict(theirs.state_dict())
    _train_core(system, digits, 15)
    _train_layer_path(model, digits, 15)
    pairs = [(model.l1, agents[0][1]), (model.l2, agents[1][0]), (model.l3, agents[2]),
             (model.dni12.utility, system.interfaces["layer0->layer1"].utility),
             (model.dni23.utility, system.interfaces["layer1->layer2"].utility)]
    for mine, theirs in pairs:
        for p, q in zip(mine.parameters(), theirs.parameters(), strict=True):
            assert torch.equal(p, q)
    assert model.dni12.utility.net[0].weight.abs().sum() > 0  # both learned something


def test_the_users_own_mlp_on_digits_learns_as_the_core_loop_does(digits):
    """DNI 1 → 2 and cDNI 2 → 3 in the user's MLP and loop (one Adam at 1e-3) against the core loop with
    ff_digits's settings (utility models at 3e-4): test accuracy within 2 points, and well above what the
    top layer alone learns (0.91 here: the lower layers are learning from ĝ)."""
    system = _core_system(digits)
    _train_core(system, digits, 300)
    core = ff.evaluate_chain(system, digits.x_test, digits.y_test)["test_accuracy"]
    torch.manual_seed(0)
    model = _digits_mlp()
    _train_layer_path(model, digits, 300)
    model.eval()
    with torch.no_grad():
        logits = model(digits.x_test.flatten(1), digits.y_test)
    ours = float((logits.argmax(1) == digits.y_test).float().mean())
    assert ours >= 0.95 and ours >= core - 0.02, (ours, core)


def test_a_checkpoint_resumes_exactly():
    """``model.state_dict()`` holds the utility models and where warm-up stands; the optimizer's holds
    their Adam state."""
    torch.manual_seed(0)

    def build():
        m = nn.ModuleDict({"lower": nn.Linear(5, 4), "dni": DNI(4, warmup_steps=3), "upper": nn.Linear(4, 3)})
        return m, torch.optim.Adam(m.parameters(), lr=1e-2)

    def step(m, opt, i):
        g = torch.Generator().manual_seed(i)
        x, y = torch.randn(B, 5, generator=g), torch.randn(B, 3, generator=g)
        loss = F.mse_loss(m["upper"](m["dni"](torch.tanh(m["lower"](x)))), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    whole, opt = build()
    first = copy.deepcopy(whole)
    first_opt = torch.optim.Adam(first.parameters(), lr=1e-2)
    for i in range(6):
        step(whole, opt, i)
    for i in range(2):
        step(first, first_opt, i)
    state = {"model": first.state_dict(), "opt": first_opt.state_dict()}
    resumed, resumed_opt = build()
    resumed.load_state_dict(state["model"])
    resumed_opt.load_state_dict(state["opt"])
    assert resumed["dni"].interface.messages_sent == 2  # still in warm-up: the lower part gets no ĝ yet
    for i in range(2, 6):
        step(resumed, resumed_opt, i)
    for p, q in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_dni_used_twice_in_one_forward_learns_from_both_targets():
    """The interface's own optimizer owns none of U's parameters, so the second regression adds to the
    first instead of clearing it: U's gradient is the sum of both regressions' gradients."""
    torch.manual_seed(0)
    dni, layer = _randomized(DNI(4)), nn.Linear(4, 4)
    utility, plain_layer = copy.deepcopy(dni.utility), copy.deepcopy(layer)
    x = torch.randn(B, 4)
    h1 = torch.tanh(x).requires_grad_()  # a leaf: what the first message's lower part gets is not checked
    h2 = torch.tanh(layer(dni(h1)))
    dni(h2).pow(2).sum().backward()
    target_2 = 2 * h2.detach()
    z = h1.detach().requires_grad_()
    (target_1,) = torch.autograd.grad(torch.tanh(plain_layer(z)), z, utility(h2.detach()) / B)
    expected = [a + b for a, b in zip(_regression_gradients(utility, h1, target_1),
                                      _regression_gradients(utility, h2, target_2), strict=True)]
    for p, e in zip(dni.utility.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-7)
    assert sorted(r["step"] for r in dni.stats()) == [0, 1]


def test_wrong_use_says_what_is_allowed():
    with pytest.raises(ValueError, match="mode 'bprop' is not one of dni, cdni, backprop, none"):
        DNI(4, mode="bprop")
    with pytest.raises(ValueError, match="'cdni' needs context_dim > 0"):
        DNI(4, mode="cdni")
    h = torch.randn(2, 4, requires_grad=True) * 1
    with pytest.raises(ValueError, match="needs context= in forward"):
        DNI(4, context_dim=3)(h)
    assert DNI(4, context_dim=3, mode="dni").utility.context_dim == 0  # the ablation: context ignored


def test_a_nonfinite_target_stops_or_is_skipped():
    for policy in ("stop", "skip"):
        dni = DNI(4, on_nonfinite=policy, name="l1->l2")
        h = torch.randn(2, 4, requires_grad=True) * 1
        out = dni(h)
        if policy == "stop":
            with pytest.raises(NonFiniteError, match="target of interface l1->l2"):
                (out * float("nan")).sum().backward()
        else:
            (out * float("nan")).sum().backward()
            assert dni.skipped == 1 and all(p.grad is None for p in dni.utility.parameters())


def test_a_forward_whose_backward_never_comes_holds_bounded_memory():
    dni = DNI(4, max_in_flight=3)
    for _ in range(10):
        dni(torch.randn(2, 4, requires_grad=True) * 1)
    assert len(dni.interface._sent) <= 3


def test_in_place_changes_above_do_not_reach_the_regression():
    torch.manual_seed(0)
    dni = _randomized(DNI(4))
    reference = copy.deepcopy(dni)
    h = torch.randn(B, 4, requires_grad=True)
    dni(h).mul_(0).sum().backward()  # the upper part overwrites its input in place
    reference(h).sum().mul(0).backward()  # the same target (zero), the message left alone
    for p, q in zip(dni.utility.parameters(), reference.utility.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_it_runs_where_the_model_is():
    model = _digits_mlp().cuda()
    x, y = torch.randn(8, 64, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    F.cross_entropy(model(x, y), y).backward()
    assert model.dni12.utility.net[0].weight.grad.is_cuda and model.l1.weight.grad.is_cuda
