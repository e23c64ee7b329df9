"""Communication metrics of the multi-agent driver: how many bits a channel's messages carry, and how many
of them are about the sender's private information (entropy and mutual information of discretised
messages). Pure torch; the marl driver logs them under ``comm/<channel>/``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def message_symbols(x: torch.Tensor, resolution: float) -> torch.Tensor:
    """Discretise continuous messages: each dimension rounded to a grid of width ``resolution``, each
    distinct cell one symbol. Entropy and mutual information are then those of a receiver that cannot tell
    apart messages closer than ``resolution`` (otherwise any deterministic message of a 3-valued goal would
    score the full log2 3 bits, however tiny its differences)."""
    cells = torch.floor(x.float().flatten(1) / resolution).long()
    return torch.unique(cells, dim=0, return_inverse=True)[1]


def entropy_bits(labels: torch.Tensor) -> float:
    p = torch.bincount(labels).float()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


def mutual_information_bits(symbols: torch.Tensor, labels: torch.Tensor) -> float:
    """Plug-in I(symbol; label) = H(symbol) + H(label) − H(symbol, label), in bits."""
    joint = symbols * (int(labels.max()) + 1) + labels
    return entropy_bits(symbols) + entropy_bits(labels) - entropy_bits(joint)


def heard_labels(ep: Any, c: Any, private_agent: str | None) -> torch.Tensor | None:
    """For every (step, copy, receiving member): the private information behind what it heard: the
    sender member's at the step the message was sent, and for silence the sender's at that step (silence
    carries none of it). None when the sender holds no private information."""
    if private_agent != c.sender or ep.private is None:
        return None
    sources = ep.sources[c.name]  # (T, E, n_receivers)
    T = sources.shape[0]
    sent_at = (torch.arange(T) - c.model.delay).clamp_min(0)
    private = ep.private[sent_at]  # (T, E, n_senders)
    index = sources.clamp_min(0)
    labels = private.gather(2, index)
    return labels


def heard_symbols(c: Any, heard: torch.Tensor, resolution: float) -> torch.Tensor:
    """One symbol per heard message (rows, size): a discretised channel's exact levels, otherwise cells of
    width ``resolution``."""
    if c.model.discretize:
        levels = c.model.levels
        codes = torch.round((heard.float().clamp(-1, 1) + 1) / 2 * (levels - 1)).long()
        weights = levels ** torch.arange(codes.shape[-1])
        silent = (heard == 0).all(-1)
        return torch.where(silent, -1, (codes * weights).sum(-1)) + 1
    return message_symbols(heard, resolution)


def comm_metrics(ep: Any, channels: Sequence[Any], private_agent: str | None,
                 resolution: float) -> dict[str, dict[str, float]]:
    """Per channel (``marl.Channel``) of an episode (``marl.Episode``): the entropy of what the sender said
    (bits, after discretisation) and, if the sender holds the private information, the mutual information
    between it and what the receiver actually *heard* (``mi_bits``: through the channel's noise and delay,
    silence included: a message that arrives after the receiver has acted carries nothing) and what the
    sender *said* (``sent_mi_bits``)."""
    out: dict[str, dict[str, float]] = {}
    alive = ep.alive[..., None]
    for c in channels:
        if c.interface is None or c.name not in ep.messages:
            continue
        msgs = ep.messages[c.name]  # (T, E, n, size)
        keep = alive.expand(msgs.shape[:3])
        symbols = message_symbols(msgs[keep], resolution)
        metrics = {"message_entropy_bits": entropy_bits(symbols)}
        if private_agent == c.sender and ep.private is not None:
            labels = ep.private[keep]
            valid = labels >= 0
            metrics["sent_mi_bits"] = mutual_information_bits(symbols[valid], labels[valid])
            heard = getattr(ep, "heard", {}).get(c.name)
            if heard is not None:
                keep = alive.expand(heard.shape[:3])
                labels = heard_labels(ep, c, private_agent)[keep]
                symbols = heard_symbols(c, heard[keep], resolution)
                valid = labels >= 0
                metrics["mi_bits"] = (mutual_information_bits(symbols[valid], labels[valid])
                                      if bool(valid.any()) else 0.0)
        out[c.name] = metrics
    if private_agent is not None and ep.private is not None:
        for c in channels:  # rial: the message is the sender's discrete action
            if c.interface is None and c.sender == private_agent:
                acts = ep.actions[c.sender]
                keep = alive.expand(acts.shape[:3])
                symbols, labels = acts[keep].long(), ep.private[keep]
                valid = labels >= 0
                out[c.name] = {"message_entropy_bits": entropy_bits(symbols),
                               "mi_bits": mutual_information_bits(symbols[valid], labels[valid])}
    return out


def log_projector(cfg: Any, logger: Any, ep: Any, channels: Sequence[Any], step: int) -> None:
    """Messages of the greedy evaluation for TensorBoard's projector, labelled with the sender's private
    information (``marl.private_info``) where it has one."""
    n = cfg.log.embedding_samples
    for c in channels:
        if c.interface is None:
            continue
        msgs = ep.messages[c.name]
        keep = ep.alive[..., None].expand(msgs.shape[:3])
        vectors = msgs[keep][:n]
        if ep.private is not None and cfg.marl.private_info.agent == c.sender:
            labels = [str(int(v)) for v in ep.private[keep][:n]]
        else:
            labels = ["?"] * len(vectors)
        logger.embedding(f"messages/{c.name}", vectors, labels, step)
