"""How good a synthetic gradient was: ĝ against the true gradient it regresses onto (the stats the
interfaces report on tracked steps and TensorBoard shows under ``interface/<name>/``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def fidelity(prediction: torch.Tensor, target: torch.Tensor, message: torch.Tensor) -> dict:
    """How good ĝ was. Only what is defined: a zero target (bootstrapped from a ĝ that is still 0) has
    no relative error nor cosine, a zero prediction no cosine; a 0.0 there would read as perfect."""
    p, t = prediction.flatten(), target.flatten()
    p_norm, t_norm = p.norm(), t.norm()
    rows = message.shape[0] ** 0.5
    out = {"target_norm": t_norm / rows, "synthetic_norm": p_norm / rows,
           "message_norm": message.flatten(1).norm(dim=1).mean()}
    p_nonzero, t_nonzero = (torch.stack([p_norm, t_norm]) > 0).tolist()  # one sync, tracked steps only
    if t_nonzero:
        out["grad_rel_error"] = (p - t).norm() / t_norm
        # R²: the share of the target's variance across examples that ĝ explains (1 perfect, 0 = the mean)
        rows_t = target.reshape(target.shape[0], -1)
        spread = (rows_t - rows_t.mean(0)).pow(2).sum()
        if bool(spread > 0):
            out["grad_r2"] = 1 - (prediction.reshape(rows_t.shape) - rows_t).pow(2).sum() / spread
        if p_nonzero:
            out["grad_cosine"] = F.cosine_similarity(p, t, dim=0)
    return out
