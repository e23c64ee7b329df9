"""Communication metrics of the multi-agent driver: how many bits a channel's messages carry, and how many
of them are about the sender's private information (entropy and mutual information of discretised
messages), and what the driver shows of them in TensorBoard (tags, histograms, projector, tables).

Tags name the channel last and by a short alias (:func:`channel_aliases`), so a card's title, which
TensorBoard shortens in the middle, keeps it; the main diagnostics are the first group (``diagnostics/``),
laid out in docs/tensorboard.md."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .protocol import message_strings, protocol_markdown, protocol_metrics


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


# ------------------------------------------------------------------------------------------ TensorBoard
def channel_aliases(channels: Sequence[Any]) -> dict[str, str]:
    """A short name per channel for tags: its sender where each sender has one channel, else
    ``sender>receiver``."""
    senders = [c.sender for c in channels]
    return {c.name: c.sender if senders.count(c.sender) == 1 else f"{c.sender}>{c.receiver}"
            for c in channels}


def stat_tag(aliases: Mapping[str, str]):
    """The tag of an interface's stat: ĝ's cosine with the true gradient among the main diagnostics, the
    rest under ``interface/<stat>/<channel>``."""
    def tag(name: str, key: str) -> str:
        alias = aliases.get(name, name)
        return f"diagnostics/ghat_cos/{alias}" if key == "grad_cosine" else f"interface/{key}/{alias}"
    return tag


def log_losses(logger: Any, losses: Mapping[str, Mapping[str, float]], step: int) -> None:
    """Each network's PPO terms as ``ppo/<term>/<network>``."""
    for name, parts in losses.items():
        for key, value in parts.items():
            logger.scalars("ppo", {f"{key}/{name}": value}, step)


def log_episode(logger: Any, cfg: Any, ep: Any, channels: Sequence[Any], metrics: Mapping[str, float],
                usage: Mapping[str, Mapping[str, float]], step: int) -> None:
    """What a measured update shows: the return and success (``diagnostics/``), the mutual information
    between the private information and what the receiver heard / the sender said, the returns of teams and
    of agents whose rewards differ (a shared reward gives one curve, not one per agent) and the messages'
    use (``message/``)."""
    aliases = channel_aliases(channels)
    main = {"return": metrics["return/mean"], "success": metrics.get("success_rate")}
    agents = {k: v for k, v in metrics.items() if k.startswith("return/") and k != "return/mean"
              and not k.startswith("return/team/")}
    if len(set(agents.values())) > 1:
        logger.scalars("episode", agents, step)
    logger.scalars("episode", {k: v for k, v in metrics.items() if k.startswith("return/team/")}, step)
    private_agent = cfg.marl.private_info.agent if cfg.marl.private_info else None
    for name, m in comm_metrics(ep, channels, private_agent, cfg.marl.mi_resolution).items():
        alias = aliases[name]
        main[f"heard_mi/{alias}"] = m.get("mi_bits")
        main[f"sent_mi/{alias}"] = m.get("sent_mi_bits")
        logger.scalars("message", {f"entropy/{alias}": m["message_entropy_bits"]}, step)
    logger.scalars("diagnostics", main, step)
    for name, m in usage.items():
        logger.scalars("message", {f"{_usage_name(k)}/{aliases[name]}": v for k, v in m.items()}, step)


def _usage_name(key: str) -> str:
    """:func:`~.controls.channel_stats`'s keys as tags: ``rms`` of the messages as sent, ``entropy_c<k>``
    (bits: the entropy of component k's symbol) and ``flip_rate`` (symbols the training noise flipped)."""
    if key.startswith("bits/"):
        return f"entropy_c{key.split('/', 1)[1]}"
    return {"message_rms": "rms", "symbol_flip_rate": "flip_rate"}.get(key, key)


def heard_rows(ep: Any, c: Any) -> torch.Tensor:
    """What the receivers of ``c`` heard (rows, size) where they heard its sender: alive, not silent (no
    sender yet, or the channel down this episode)."""
    heard = ep.heard[c.name]  # (T, E, n_receivers, size)
    keep = ep.alive[..., None] & (ep.sources[c.name] >= 0)
    if c.name in ep.outage:
        keep = keep & (ep.outage[c.name] > 0)[None, :, None]
    return heard[keep]


def log_histograms(logger: Any, ep: Any, channels: Sequence[Any], step: int) -> None:
    """One histogram per message component as the receiver hears it (``heard/<channel>/c<k>``: after the
    channel's noise and squash, so a discretised channel's modes sit near its levels) and, for a
    discretised channel, of the symbol (``heard/<channel>/symbols``: the heard message rounded to the
    nearest levels, as one number: component k's level times levels**k)."""
    aliases = channel_aliases(channels)
    for c in channels:
        if c.interface is None or c.name not in ep.heard:
            continue
        rows = heard_rows(ep, c)
        for k in range(rows.shape[-1]):
            logger.histogram(f"heard/{aliases[c.name]}/c{k}", rows[:, k], step)
        if c.model.discretize and len(rows):
            levels = c.model.levels
            codes = torch.round((rows.float().clamp(-1, 1) + 1) / 2 * (levels - 1)).long()
            symbol = (codes * levels ** torch.arange(codes.shape[-1])).sum(-1)
            logger.histogram(f"heard/{aliases[c.name]}/symbols", symbol.float(), step,
                             bins=[x - 0.5 for x in range(int(symbol.max()) + 2)])


def _symbols(c: Any, msgs: torch.Tensor, resolution: float) -> torch.Tensor:
    """Per message (rows, size) the symbol of each component: the channel's level where it is discretised,
    otherwise the cell of width ``resolution`` (as :func:`message_symbols` tells messages apart)."""
    if c.model.discretize:
        return c.model.symbols(msgs)
    return torch.floor(msgs.float() / resolution).long()


def message_rows(ep: Any, c: Any, resolution: float) -> dict[str, torch.Tensor]:
    """The messages of an episode worth a row each, in episode order, per episode (copy) and sender member:
    on a discretised channel each distinct symbol string at the first step it was sent (a sender that
    repeats itself gives one row, one that changes its message gives each); on a continuous channel the
    first message only (it drifts a little from step to step, with the time feature say, and the near
    copies would stack up on one point of the projector and crowd its neighbourhoods). Returns
    ``vectors`` (rows, size, as sent), ``symbols`` (rows, size; cells of width ``resolution`` on a
    continuous channel), ``copy``, ``t``, ``member`` and, where the sender holds the private information,
    ``private``."""
    msgs = ep.messages[c.name]  # (T, E, n, size)
    T, E, n, size = msgs.shape
    symbols = _symbols(c, msgs.reshape(-1, size), resolution)
    ids = torch.unique(symbols, dim=0, return_inverse=True)[1].view(T, E, n)
    alive = ep.alive[..., None].expand(T, E, n)
    earlier = torch.tril(torch.ones(T, T, dtype=torch.bool), -1)  # [t, t']: t' < t
    seen = ((ids[:, None] == ids[None, :]) & earlier[..., None, None] & alive[None, :]).any(1)
    keep = alive & ~seen
    if not c.model.discretize:
        keep[1:] = False  # every copy is alive at its first step
    t, e, j = keep.nonzero(as_tuple=True)
    order = torch.argsort(e * n * T + j * T + t)
    t, e, j = t[order], e[order], j[order]
    out = {"vectors": msgs[t, e, j], "symbols": symbols.view(T, E, n, size)[t, e, j], "copy": e, "t": t,
           "member": j}
    if ep.private is not None:
        out["private"] = ep.private[t, e, j]
    return out


def _gather_rows(episodes: Sequence[Any], c: Any, resolution: float, limit: int | None) -> dict[str, Any]:
    """:func:`message_rows` of several episodes (their copies numbered on), up to ``limit`` rows."""
    parts, offset = [], 0
    for ep in episodes:
        rows = message_rows(ep, c, resolution)
        rows["copy"] = rows["copy"] + offset
        offset += ep.alive.shape[1]
        parts.append(rows)
        if limit is not None and sum(len(p["t"]) for p in parts) >= limit:
            break
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if all(k in p for p in parts)}
    return {k: v[:limit] for k, v in out.items()} if limit is not None else out


def label_name(cfg: Any) -> str:
    """What the private information is called in the projector and the tables: ``marl.private_info.name``
    where the config gives one, else its env info key, else ``private_info``."""
    private = cfg.marl.private_info
    return getattr(private, "name", None) or private.info or "private_info"


def log_projector(cfg: Any, logger: Any, episodes: Sequence[Any], channels: Sequence[Any], step: int) -> None:
    """The messages of ``episodes`` for TensorBoard's projector (``log.embedding_samples`` rows per
    channel, one per distinct message of an episode: :func:`message_rows`), as sent, with the columns
    the private information (named by :func:`label_name`, where the sender holds it), the message's
    ``symbols`` (a discretised channel), ``episode`` and ``t``, and a bookmark: 2-D PCA coloured by the
    private information."""
    n = cfg.log.embedding_samples
    private = cfg.marl.private_info
    for c in channels:
        if c.interface is None:
            continue
        rows = _gather_rows(episodes, c, cfg.marl.mi_resolution, n)
        labelled = private is not None and private.agent == c.sender and "private" in rows
        header, columns = [], []
        if labelled:
            header.append(label_name(cfg))
            columns.append([str(int(v)) for v in rows["private"]])
        if c.model.discretize:
            header.append("symbols")
            columns.append(message_strings(rows["symbols"]))
        if len(rows["member"]) and int(rows["member"].max()) > 0:
            header.append("sender")
            columns.append([str(int(v)) for v in rows["member"]])
        header += ["episode", "t"]
        columns += [[str(int(v)) for v in rows["copy"]], [str(int(v)) for v in rows["t"]]]
        if not len(rows["t"]):
            continue
        logger.embedding(f"messages/{c.name}", rows["vectors"], list(zip(*columns, strict=True)), step,
                         label_header=header, color_by=header[0] if labelled else None)


def protocol_report(cfg: Any, episodes: Sequence[Any], channels: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """:func:`~.protocol.protocol_metrics` of every discretised channel whose sender holds the private
    information, over the distinct messages of each episode (:func:`message_rows`) of ``episodes``."""
    private = cfg.marl.private_info
    out: dict[str, dict[str, Any]] = {}
    for c in channels:
        if c.interface is None or not c.model.discretize or private is None or private.agent != c.sender:
            continue
        rows = _gather_rows(episodes, c, cfg.marl.mi_resolution, None)
        if "private" not in rows:
            continue
        valid = rows["private"] >= 0
        out[c.name] = protocol_metrics(rows["symbols"][valid], rows["private"][valid])
    return out


def log_protocol(logger: Any, cfg: Any, report: Mapping[str, dict[str, Any]], channels: Sequence[Any],
                 step: int) -> None:
    """Each channel's protocol metrics as one markdown text (``protocol/<channel>``)."""
    aliases = channel_aliases(channels)
    for name, metrics in report.items():
        logger.text(f"protocol/{aliases[name]}", protocol_markdown(metrics, label_name(cfg)), step)


EVAL_CURVES = ("mean_return", "success_rate", "ablated_return", "ablated_success_rate")


def eval_curves(result: Mapping[str, Any], separate: bool) -> dict[str, float]:
    """The evaluation's numbers drawn as curves (``eval/``): held-out return and success, the same with
    the messages shuffled (``ablated_*``), per team, and the training environment's where it differs."""
    keys = [*EVAL_CURVES, *(("train_mean_return", "train_success_rate") if separate else ())]
    out = {k: result[k] for k in keys if isinstance(result.get(k), float)}
    out.update({k: v for k, v in result.items() if k.startswith("return/team/") and isinstance(v, float)})
    return out


def results_markdown(result: Mapping[str, Any], channels: Sequence[Any]) -> str:
    """The final evaluation as one markdown table: every number of the results JSON, headline first,
    channels by their alias."""
    aliases = channel_aliases(channels)
    first = [*EVAL_CURVES, "silenced_return", "silenced_success_rate", "train_mean_return",
             "train_success_rate"]
    rows = []

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    keys = [k for k in first if k in result] + sorted(k for k in result if k not in first)
    for key in keys:
        value = result[key]
        name = key
        for full, alias in aliases.items():
            name = name.replace(f"{full}/", f"{alias}: ")
        if isinstance(value, bool | int | float):
            rows.append(f"| {name} | {cell(value)} |")
        elif isinstance(value, Mapping) and value and all(isinstance(v, float) for v in value.values()):
            rows.append(f"| {name} | {', '.join(f'{k}: {cell(v)}' for k, v in value.items())} |")
    return "\n".join(["| metric | value |", "|---|---|", *rows])


def custom_layout(cfg: Any, channels: Sequence[Any]) -> dict[str, dict[str, tuple[str, list[str]]]]:
    """The Custom Scalars page: return (training, held-out, messages shuffled), success, the mutual
    information of what was heard and what was said, and ĝ's cosine, on one screen."""
    charts: dict[str, tuple[str, list[str]]] = {
        "return: training, held-out, messages shuffled": (
            "Multiline", ["diagnostics/return", "eval/mean_return", "eval/ablated_return",
                          "episode/return/team/.*", "eval/return/team/.*"])}
    if cfg.marl.success_reward is not None:
        charts["success: training, held-out, messages shuffled"] = (
            "Multiline", ["diagnostics/success", "eval/success_rate", "eval/ablated_success_rate"])
    charts["mutual information (bits): heard vs sent"] = ("Multiline", ["diagnostics/(heard|sent)_mi/.*"])
    if any(c.interface is not None for c in channels):
        charts["ĝ cosine with the true gradient"] = ("Multiline", ["diagnostics/ghat_cos/.*"])
    return {"dni-agents": charts}
