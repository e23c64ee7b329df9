"""A run's TensorBoard record read back, as TensorBoard reads it: the tests check with these what
:class:`dni_agents.logging.RunLogger` and the drivers wrote (tags, steps, texts, HParams, projector)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_SIZE_GUIDANCE = {"scalars": 0, "histograms": 0, "tensors": 0}  # 0 = keep every event


def _accumulator(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance=_SIZE_GUIDANCE)
    acc.Reload()
    return acc


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar events of a run as ``tag -> [(step, value), ...]`` (values are float32-rounded)."""
    acc = _accumulator(run_dir)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def read_histogram_tags(run_dir: Path) -> dict[str, int]:
    """Histogram tag -> number of logged histogram events."""
    acc = _accumulator(run_dir)
    return {tag: len(acc.Histograms(tag)) for tag in acc.Tags()["histograms"]}


def read_texts(run_dir: Path) -> dict[str, list[str]]:
    """Text tag (without torch's ``/text_summary`` suffix) -> logged strings, in step order."""
    acc = _accumulator(run_dir)
    out: dict[str, list[str]] = {}
    for tag in acc.Tags()["tensors"]:
        if tag.endswith("/text_summary"):
            texts = [e.tensor_proto.string_val[0].decode("utf-8") for e in acc.Tensors(tag)]
            out[tag.removesuffix("/text_summary")] = texts
    return out


def read_hparams(run_dir: Path) -> dict[str, Any]:
    """The HParams plugin's data of a run: ``hparams`` (name -> value, from the session start),
    ``metrics`` (the experiment's metric tags) and ``status`` (the session end's, or None)."""
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams import plugin_data_pb2 as pd

    acc = _accumulator(run_dir)
    out: dict[str, Any] = {"hparams": {}, "metrics": [], "status": None}
    for tag, content in acc.PluginTagToContent(metadata.PLUGIN_NAME).items():
        data = pd.HParamsPluginData.FromString(content)
        if tag == metadata.SESSION_START_INFO_TAG:
            for name, value in data.session_start_info.hparams.items():
                out["hparams"][name] = getattr(value, value.WhichOneof("kind"))
        elif tag == metadata.EXPERIMENT_TAG:
            out["metrics"] = [m.name.tag for m in data.experiment.metric_infos]
        elif tag == metadata.SESSION_END_INFO_TAG:
            out["status"] = pd.SessionEndInfo.DESCRIPTOR.fields_by_name["status"].enum_type.values_by_number[
                data.session_end_info.status].name
    return out


def _read_tsv(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def read_projector(run_dir: Path) -> list[dict[str, Any]]:
    """Parse ``projector_config.pbtxt`` and the TSVs it points to.

    Each entry: ``tag``, ``step``, ``tensor_path`` (absolute), ``metadata`` (rows of cells, header row
    included when multi-column; ``[]`` without labels) and ``shape`` ``(n, d)``.
    """
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    run_dir = Path(run_dir)
    pbtxt = run_dir / "projector_config.pbtxt"
    if not pbtxt.exists():
        return []
    config = text_format.Parse(pbtxt.read_text(encoding="utf-8"), ProjectorConfig())
    out = []
    for emb in config.embeddings:
        tag, _, step = emb.tensor_name.rpartition(":")
        tensor_path = run_dir / emb.tensor_path
        rows = _read_tsv(tensor_path)
        out.append(
            {
                "tag": tag,
                "step": int(step),
                "tensor_path": tensor_path,
                "metadata": _read_tsv(run_dir / emb.metadata_path) if emb.metadata_path else [],
                "shape": (len(rows), len(rows[0]) if rows else 0),
            }
        )
    return out
