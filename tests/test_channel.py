"""The channel model (DIAL's discretise/regularise unit) and the gated cDNI utility model, in the core."""

from __future__ import annotations

import pytest
import torch

from dni_agents.core import ChannelModel, UtilityModel


def test_noise_only_in_training_and_evaluation_symbols_are_exactly_discrete() -> None:
    torch.manual_seed(0)
    channel = ChannelModel(noise=2.0, discretize=True)
    h = torch.randn(500, 3) * 3
    noise = channel.sample_noise(tuple(h.shape), torch.Generator().manual_seed(0))
    heard_train = channel.transmit(h, noise, training=True)
    assert torch.allclose(heard_train, torch.tanh(h + 2.0 * noise))
    assert not torch.equal(heard_train, channel.transmit(h, None, training=True))  # the noise is used
    heard_eval = channel.transmit(h, noise, training=False)  # evaluation ignores any noise
    assert set(heard_eval.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(heard_eval, torch.where(h > 0, 1.0, -1.0))
    assert not heard_eval.requires_grad


def test_levels_give_evenly_spaced_values_in_minus_one_one() -> None:
    channel = ChannelModel(discretize=True, levels=3)
    h = torch.tensor([[-5.0, -0.1, 0.1, 5.0]])
    assert channel.transmit(h, training=False).tolist() == [[-1.0, 0.0, 0.0, 1.0]]
    assert channel.symbols(h).tolist() == [[0, 1, 1, 2]]


def test_gradients_pass_the_noise_as_dial_does() -> None:
    torch.manual_seed(0)
    channel = ChannelModel(noise=1.0, discretize=True)
    h = torch.randn(64, 2, requires_grad=True)
    noise = torch.randn(64, 2)
    channel.transmit(h, noise).sum().backward()
    assert torch.allclose(h.grad, 1 - torch.tanh(h.detach() + noise) ** 2, atol=1e-6)


def test_a_plain_channel_is_the_identity_and_a_noisy_one_adds_scaled_noise() -> None:
    h = torch.randn(10, 4)
    assert ChannelModel().identity and torch.equal(ChannelModel().transmit(h), h)
    assert ChannelModel().sample_noise((10, 4), None) is None
    noise = torch.randn(10, 4)
    assert torch.allclose(ChannelModel(noise=0.5).transmit(h, noise), h + 0.5 * noise)
    assert torch.equal(ChannelModel(noise=0.5).transmit(h, noise, training=False), h)


def test_stats_count_bits_per_component_and_flipped_symbols() -> None:
    channel = ChannelModel(noise=1.0, discretize=True)
    h = torch.stack([torch.tensor([3.0, -3.0]).repeat(50), torch.full((100,), 3.0)], 1)  # 1 bit, 0 bits
    flips = torch.zeros(100, 2)
    flips[:10, 1] = -10.0  # pushes 10 of the constant component's symbols across the threshold
    stats = channel.stats(h, flips)
    assert stats["bits/0"] == pytest.approx(1.0) and stats["bits/1"] == pytest.approx(0.0)
    assert stats["symbol_flip_rate"] == pytest.approx(10 / 200)


def test_an_outage_silences_its_rows_in_training_only_and_blocks_their_gradient() -> None:
    channel = ChannelModel(noise=1.0, discretize=True, outage=0.25)
    up = channel.sample_outage(4000, torch.Generator().manual_seed(0))
    assert set(up.unique().tolist()) == {0.0, 1.0} and abs(float(1 - up.mean()) - 0.25) < 0.03
    h = (torch.randn(4000, 2, 3) * 3).requires_grad_(True)
    noise = torch.randn(4000, 2, 3)
    heard = channel.transmit(h, noise, up=up)
    down = up == 0
    assert torch.equal(heard[down], torch.zeros_like(heard[down]))  # silence: exactly zero
    assert torch.equal(heard[~down], channel.transmit(h, noise)[~down])  # the rest as without outages
    heard.sum().backward()
    assert torch.equal(h.grad[down], torch.zeros_like(h.grad[down]))
    assert torch.allclose(h.grad[~down], (1 - torch.tanh(h.detach() + noise) ** 2)[~down], atol=1e-6)
    assert torch.equal(channel.transmit(h, noise, training=False, up=up), channel.quantize(h))  # evaluation
    assert ChannelModel().sample_outage(10, None) is None and not ChannelModel(outage=0.1).identity


@pytest.mark.parametrize("kwargs", [{"noise": -1.0}, {"levels": 1}, {"delay": 2}, {"outage": 1.0},
                                    {"outage": -0.1}])
def test_bad_channels_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="channel"):
        ChannelModel(**kwargs)


def test_a_gated_utility_model_multiplies_by_the_contexts_last_entry_and_starts_at_zero() -> None:
    torch.manual_seed(0)
    model = UtilityModel((3,), context_dim=5, kind="mlp", hidden=16, gate=1)
    h, context = torch.randn(8, 3), torch.randn(8, 5)
    assert torch.equal(model(h, context), torch.zeros(8, 3))  # last layer zero: ĝ starts at 0
    torch.nn.init.normal_(model.net[-1].weight)
    doubled = context.clone()
    doubled[:, -1] *= 2
    assert torch.allclose(model(h, doubled), 2 * model(h, context))
    context[:, -1] = 0
    assert torch.equal(model(h, context), torch.zeros(8, 3))
    with pytest.raises(ValueError, match="gate"):
        UtilityModel((3,), context_dim=0, gate=1)


def test_a_vector_gate_is_a_matrix_times_the_gate() -> None:
    torch.manual_seed(0)
    model = UtilityModel((2,), context_dim=4 + 3, kind="mlp", hidden=8, gate=3)
    torch.nn.init.normal_(model.net[-1].weight)
    h, context = torch.randn(5, 2), torch.randn(5, 7)
    out = model(h, context)
    matrix = model.net(torch.cat([h, context[:, :4]], 1)).view(5, 2, 3)
    assert torch.allclose(out, torch.einsum("bmk,bk->bm", matrix, context[:, 4:]))


def test_a_gated_model_learns_a_policy_gradient_a_linear_one_cannot() -> None:
    """The target is advantage × f(message, state): what a policy loss sends back. Held-out cosine of the
    gated MLP must be high; a linear model of the same inputs (advantage among them) stays near 0: the
    advantage's sign flips the gradient, which no additive term can."""
    torch.manual_seed(0)
    w = torch.randn(4, 3)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, state, adv = torch.randn(n, 3), torch.randn(n, 4), torch.randn(n, 1)
        target = adv * torch.tanh(state @ w + h)
        return h, torch.cat([state, adv], 1), target

    def held_out_cosine(model: UtilityModel) -> float:
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(600):
            h, c, t = batch(256)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(h, c), t).backward()
            opt.step()
        h, c, t = batch(2000)
        with torch.no_grad():
            return float(torch.nn.functional.cosine_similarity(model(h, c).flatten(), t.flatten(), dim=0))

    gated = held_out_cosine(UtilityModel((3,), context_dim=5, kind="mlp", hidden=64, gate=1))
    linear = held_out_cosine(UtilityModel((3,), context_dim=5, kind="linear"))
    assert gated > 0.9
    assert abs(linear) < 0.2


def test_a_candidate_wise_model_is_invariant_to_the_order_of_candidates_and_their_gates() -> None:
    torch.manual_seed(0)
    n, f, rest = 4, 6, 3
    model = UtilityModel((2,), context_dim=n * f + rest + n, kind="mlp", hidden=16, gate=n, candidates=(n, f))
    torch.nn.init.normal_(model.net[-1].weight)
    h = torch.randn(7, 2)
    cands, others, gate = torch.randn(7, n, f), torch.randn(7, rest), torch.randn(7, n)
    out = model(h, torch.cat([cands.flatten(1), others, gate], 1))
    perm = torch.tensor([2, 0, 3, 1])
    shuffled = model(h, torch.cat([cands[:, perm].flatten(1), others, gate[:, perm]], 1))
    assert torch.allclose(out, shuffled, atol=1e-6)
    single = torch.zeros(7, n)
    single[:, 1] = 1.0  # the gate picks candidate 1: its column alone, from that candidate alone
    column = model(h, torch.cat([cands.flatten(1), others, single], 1))
    moved = cands.clone()
    moved[:, 0] += 1.0
    assert torch.allclose(column, model(h, torch.cat([moved.flatten(1), others, single], 1)), atol=1e-6)
    with pytest.raises(ValueError, match="candidate-wise"):
        UtilityModel((2,), context_dim=n * f + rest + n, kind="mlp", gate=1, candidates=(n, f))

