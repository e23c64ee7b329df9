"""Can a cDNI utility model learn the digits receiver's gradient? An offline fit, receiver held fixed.

    python scripts/cdni_fit.py            # flat gated MLP against the candidate-wise one

Plays 41 batches of 256 games of `digits_referential` with a fresh receiver (backprop mode, the frozen
control's loud code of RMS 2), takes the true gradient of the receiver's PPO loss for each message (the
utility model's target), fits each utility model on 40 batches (3,000 Adam steps, lr 1e-3) and prints its
cosine with the target on the held-out batch every 500 steps. docs/communication.md quotes the last line.
"""

from __future__ import annotations

import torch

from dni_agents.config import load_config
from dni_agents.core import UtilityModel
from dni_agents.drivers import marl
from dni_agents.drivers.marl.gates import Sensitivity, logit_sensitivity, sender_context
from dni_agents.drivers.marl.ppo import normalized_advantages


def main() -> None:
    torch.manual_seed(0)
    cfg = load_config("digits_referential", ["interface_defaults.mode=backprop", "marl.num_envs=256"])
    system, groups, channels = marl.build(cfg, marl.make_env(cfg), torch.device("cpu"))
    player = marl.Player(cfg, groups, channels, torch.device("cpu"), 256)
    marl.calibrate_messages(player, 2.0, 0)
    receiver, c, mb = groups[1], channels[0], torch.arange(256)

    def sample(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ep = player.play(seed, torch.Generator().manual_seed(seed))
        gae = marl.advantages(ep, receiver, 0.99, 0.95)
        mask = ep.alive[[0]][:, mb].float().unsqueeze(-1).expand_as(gae[0][:, mb])
        adv = normalized_advantages(gae[0][:, mb], mask)
        # what crosses the interface is what the receiver heard (the channel is on the sender's side)
        heard = c.model.transmit(ep.messages[c.name][0, :, 0], ep.noise[c.name][0, :, 0]).requires_grad_(True)
        x = player.inputs(receiver, ep.obs["receiver"][0], {c.name: heard.unsqueeze(1)}, 0)
        loss, _ = marl.ppo_loss(cfg.marl, receiver, ep, mb, [receiver.net(x.flatten(0, 1), None)[0]], gae)
        (target,) = torch.autograd.grad(loss, heard)
        sens = Sensitivity({"receiver": logit_sensitivity(receiver, ep, mb, adv, cfg.marl.ent_coef)})
        context = sender_context(c, receiver, ep, 0, mb, 1, heard.detach().unsqueeze(1), sens)
        return heard.detach(), context, target * 256  # per-example units, as the interface regresses

    data, test = [sample(s) for s in range(1, 41)], sample(999)
    width = test[1].shape[1]
    for name, candidates in (("flat gated MLP", None), ("candidate-wise gated MLP", (5, 64))):
        torch.manual_seed(0)
        model = UtilityModel((4,), context_dim=width, kind="mlp", hidden=64, gate=5, squash_input=True,
                             candidates=candidates)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for step in range(3001):
            m, context, target = data[step % len(data)]
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(m, context), target).backward()
            opt.step()
            if step % 500 == 0:
                with torch.no_grad():
                    p = model(test[0], test[1]).flatten()
                cos = float(torch.nn.functional.cosine_similarity(p, test[2].flatten(), dim=0))
                print(f"{name}: step {step}, held-out cosine {cos:.3f}")


if __name__ == "__main__":
    main()
