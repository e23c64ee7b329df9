"""TensorBoard run logging for dni-agents (``torch.utils.tensorboard``; TensorFlow is not needed).

One :class:`RunLogger` owns one run directory and one ``SummaryWriter``; all state lives on the
instance, so several loggers in one process never share files or tags.

Tag conventions (drivers, ``dni-agents eval`` and the docs rely on these names):

==================================  =======================================================
``interface/<name>/utility_loss``   synthetic-gradient module loss ``||g_hat - g||^2``
``interface/<name>/grad_cosine``    cosine(synthetic grad, true grad)
``interface/<name>/grad_rel_error`` ``||g_hat - g|| / ||g||``
``interface/<name>/message_norm``   mean L2 norm of the message crossing the interface
``interface/<name>/message``        histogram of message values
``agent/<name>/loss``               the agent's task loss (other ``agent/<name>/*`` allowed)
``eval/<metric>``                   evaluation metrics
==================================  =======================================================

(The marl driver names its tags its own way, channel last: docs/tensorboard.md.)

Text tags: ``config`` (the run's YAML config) and ``hparams`` (the settings the user chose, a markdown
table); the same settings go to the HParams plugin (a session start at the first step, the experiment and
the session's end when the logger closes), with the run's final metrics as its metric columns.
Embeddings go to the projector plugin: ``<run_dir>/projector_config.pbtxt`` plus
``<run_dir>/<step:05d>/<tag>/{tensors,metadata}.tsv`` and, where a column is named to colour by,
``bookmarks.json``: one saved view (2-D PCA coloured by that column) in the projector's Bookmarks panel.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["RunDirError", "RunLogger", "make_run_dir", "run_hparams"]


class RunDirError(Exception):
    """The run folder cannot be created (a parent is a file, no permission, ...): a user error, reported
    in one line before any training, naming the config key that chose the folder."""

    user_error = True

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def make_run_dir(log_dir: str | Path, name: str, resume: bool = False, key: str = "log.dir") -> Path:
    """Return ``log_dir/name`` (or ``name-2``, ``name-3``, ...) so an existing run is never overwritten.

    The directory is claimed with an exclusive ``mkdir`` so concurrent launches cannot pick the same one.
    With ``resume=True`` the run must already exist and is returned as is. A folder that cannot be made
    is a :class:`RunDirError` naming ``key`` (the setting that chose it), not a traceback mid-start.
    """
    if not name or name in (".", "..") or Path(name).name != name:
        raise ValueError(f"run name must be a single path component, got {name!r}")
    root = Path(log_dir)
    if resume:
        run = root / name
        if not run.is_dir():
            raise FileNotFoundError(f"cannot resume: run directory {run} does not exist")
        return run
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"{key}: cannot create the run folder {root / name}: {_why(exc, root)}") from exc
    candidate, i = name, 1
    while True:
        try:
            (root / candidate).mkdir()
            return root / candidate
        except FileExistsError:
            i += 1
            candidate = f"{name}-{i}"
        except OSError as exc:
            raise RunDirError(
                f"{key}: cannot create the run folder {root / candidate}: {_why(exc, root)}"
            ) from exc


def _why(exc: OSError, root: Path) -> str:
    """``mkdir -p`` on a path that is a file says "File exists"; say what is wrong instead."""
    if isinstance(exc, FileExistsError) and not root.is_dir():
        return f"{root} is a file, not a folder"
    return exc.strerror or str(exc)


def _after_existing_events(run_dir: Path) -> None:
    """Wait, if need be, until a new event file's name sorts after the folder's existing ones. TensorBoard
    reads a folder's files in name order, and a name starts with the second the file was made: a resumed
    run's file made in the same second as the crashed run's could be read first, and then the crashed
    run's events would purge the resumed run's instead (a resume within a second: tests, mostly)."""
    stamps = [p.name.split(".")[3] for p in run_dir.glob("events.out.tfevents.*")]
    newest = max((int(s) for s in stamps if s.isdigit()), default=None)
    if newest is not None and (wait := newest + 1 - time.time()) > 0:
        time.sleep(wait)


def _clean(cell: Any) -> str:
    """TSV cells must not contain tabs/newlines or the projector mis-parses the rows."""
    return str(cell).replace("\t", " ").replace("\r", " ").replace("\n", " ")


def _hparams_markdown(hparams: Mapping[str, Any]) -> str:
    rows = [f"| {_clean(k)} | {_clean(v).replace('|', '&#124;')} |" for k, v in hparams.items()]
    return "\n".join(["| hparam | value |", "|---|---|", *rows])


def _hparam_value(value: Any) -> int | float | str | bool:
    """The HParams plugin takes numbers, strings and booleans: anything else as compact YAML-ish text."""
    if isinstance(value, bool | int | float | str):
        return value
    if value is None:
        return "null"
    return json.dumps(value, default=str, separators=(", ", ": "))


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys (``trainer.lr``); list items by index (``interfaces.0.mode``) when they are mappings."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, path + "."))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                out.update(_flat(item, f"{path}.{i}."))
        else:
            out[path] = value
    return out


def _bookkeeping(key: str) -> bool:
    """Settings that say where and how a run is recorded, not what it learns: no HParams column."""
    return key in ("name", "driver", "device") or key.startswith(("log.", "trainer.checkpoint"))


def run_hparams(cfg: Any) -> dict[str, Any]:
    """A run's hyperparameters for the ``hparams`` table and the HParams plugin: the main settings (driver,
    config name, interface mode(s), seed, steps, learning rate), then the keys the user changed on the
    command line (``cfg.overrides``), with the values they resolved to; never the whole schema (the
    config file itself is the ``config`` text and ``config.yaml``). Runs of one config then compare by
    what differs between them, and TensorBoard's table shows the main settings first."""
    modes = [i.mode or cfg.interface_defaults.mode for i in cfg.interfaces] or [cfg.interface_defaults.mode]
    main = {"driver": cfg.driver, "config": cfg.name, "mode": ",".join(dict.fromkeys(modes)),
            "seed": cfg.seed, "trainer.steps": cfg.trainer.steps, "trainer.lr": cfg.trainer.lr}
    resolved = _flat(cfg.model_dump())
    changed: dict[str, Any] = {}
    for override in getattr(cfg, "overrides", ()):
        key = override.lstrip("~").split("=", 1)[0].strip()
        key = re.sub(r"\[(\d+)\]", r".\1", key)  # interfaces[0].mode -> interfaces.0.mode
        for k, v in resolved.items():  # the key itself, or what a mapping value set under it
            if (k == key or k.startswith(key + ".")) and k not in main and not _bookkeeping(k):
                changed[k] = v
    return {**main, **changed}


class RunLogger:
    """Write scalars, histograms, text and projector embeddings for one run.

    With ``enabled=False`` nothing is created on disk and every method is a no-op, so benchmark code
    can keep its logging calls without paying for them. ``purge_step``: the step a resumed run continues
    logging from (events of the earlier run at or after it are dropped by TensorBoard).
    """

    def __init__(
        self,
        run_dir: Path,
        config_yaml: str | None = None,
        hparams: Mapping[str, Any] | None = None,
        enabled: bool = True,
        purge_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._closed = False
        self._embeddings: set[tuple[str, int]] = set()
        self._writer = None
        self._hparams = {k: _hparam_value(v) for k, v in (hparams or {}).items()}
        self._metrics: list[str] | None = None  # the HParams plugin's metric columns (None: eval/ tags)
        self._scalar_tags: dict[str, None] = {}  # tags this logger wrote, in order
        self._projector = None
        self._first = purge_step or 0
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter  # imported lazily: disabled loggers skip it

        self.run_dir.mkdir(parents=True, exist_ok=True)
        # purge_step (a resume): TensorBoard drops the events the crashed run wrote from that step on, so
        # every step shows once, with the values of the run that continued.
        if purge_step is not None:
            _after_existing_events(self.run_dir)
        self._writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge_step)
        first = purge_step or 0  # a resumed run's config is shown at the step it continued from
        if config_yaml is not None:
            self._write_atomic(self.run_dir / "config.yaml", config_yaml)
            # Indented = markdown code block, so TensorBoard keeps the YAML layout.
            self._writer.add_text("config", "\n".join("    " + ln for ln in config_yaml.splitlines()), first)
        if hparams:
            self._writer.add_text("hparams", _hparams_markdown(hparams), first)
            from torch.utils.tensorboard.summary import hparams as hparams_summaries

            # the session starts now, so a run in progress is listed in the HParams plugin already
            self._writer.file_writer.add_summary(hparams_summaries(self._hparams, {})[1], first)
        self._projector = self._load_projector(purge_step)

    @staticmethod
    def _write_atomic(path: Path, text: str) -> None:
        """tmp + ``os.replace`` so a crash never leaves a half-written config beside the events."""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _w(self):
        """The writer, or None when disabled; logging after close() is a bug, so it raises."""
        if self._closed:
            raise RuntimeError(f"RunLogger for {self.run_dir} is closed")
        return self._writer

    def scalar(self, tag: str, value: float, step: int) -> None:
        if (w := self._w()) is not None:
            w.add_scalar(tag, float(value), int(step))
            self._scalar_tags[tag] = None

    def scalars(self, prefix: str, values: Mapping[str, float | None], step: int) -> None:
        """Log ``prefix/key`` for each value; None/NaN are skipped (a metric that was not measurable)."""
        if self._w() is None:
            return
        for key, value in values.items():
            if value is None or math.isnan(v := float(value)):
                continue
            self.scalar(f"{prefix}/{key}", v, step)

    def histogram(self, tag: str, values: torch.Tensor, step: int, bins: str | Sequence[float] = "tensorflow",
                  ) -> None:
        """Histogram of the finite entries (NaN/inf would make numpy's binning raise mid-training); ``bins``:
        numpy's bin edges (e.g. one bin per symbol), or TensorBoard's default."""
        if (w := self._w()) is None:
            return
        flat = values.detach().to("cpu", torch.float32).reshape(-1)
        flat = flat[torch.isfinite(flat)]
        if flat.numel() > 0:
            w.add_histogram(tag, flat.numpy(), int(step), bins=bins if isinstance(bins, str) else list(bins))

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if (w := self._w()) is not None:
            w.add_text(tag, text, int(step))

    def embedding(
        self,
        tag: str,
        vectors: torch.Tensor,
        labels: Sequence | torch.Tensor | None,
        step: int,
        label_header: Sequence[str] | None = None,
        color_by: str | None = None,
    ) -> None:
        """Projector embedding of ``vectors`` (flattened to ``(n, d)``), one metadata row per vector.

        With ``label_header`` each label is a row of ``len(label_header)`` columns. A one-column header
        is dropped: the projector treats single-column metadata as header-less. ``color_by`` (a column of
        the header): also a bookmark, the projector's one saved view, of the first two principal components
        coloured by that column (the projector's config file cannot preset a projection or a colouring).
        """
        if self._w() is None:
            return
        if (tag, int(step)) in self._embeddings:
            raise ValueError(f"embedding {tag!r} already logged at step {step}")
        mat = vectors.detach().to("cpu", torch.float32)
        mat = mat.reshape(mat.shape[0], -1) if mat.dim() > 0 else mat.reshape(1, 1)
        meta: list | None = None
        header = [_clean(h) for h in label_header] if label_header is not None else None
        if labels is not None:
            rows = labels.detach().cpu().tolist() if isinstance(labels, torch.Tensor) else list(labels)
            if len(rows) != mat.shape[0]:
                raise ValueError(f"{len(rows)} labels for {mat.shape[0]} vectors")
            if header is not None:
                rows = [list(r) if isinstance(r, Sequence) and not isinstance(r, str) else [r] for r in rows]
                if any(len(r) != len(header) for r in rows):
                    raise ValueError(f"every label row needs {len(header)} columns ({header})")
                meta = [[_clean(c) for c in r] for r in rows]
                if len(header) == 1:
                    meta, header = [r[0] for r in meta], None
            else:
                meta = [_clean(r) for r in rows]
        if color_by is not None and (header is None or color_by not in header):
            raise ValueError(f"color_by={color_by!r} is not a column of the header {header}")
        self._write_embedding(tag, int(step), mat, meta, header, color_by)
        self._embeddings.add((tag, int(step)))

    def _write_embedding(self, tag: str, step: int, mat: torch.Tensor, meta: list | None,
                         header: list[str] | None, color_by: str | None) -> None:
        """The projector's files for one embedding (as ``SummaryWriter.add_embedding`` lays them out, with a
        bookmark beside them), and ``projector_config.pbtxt`` rewritten with every embedding so far."""
        from tensorboard.plugins.projector.projector_config_pb2 import EmbeddingInfo

        safe = tag.replace("%", "%25").replace("/", "%2f").replace("\\", "%5c")
        subdir = f"{step:05d}/{safe}"
        folder = self.run_dir / subdir
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["\t".join(f"{x:.9g}" for x in row) for row in mat.tolist()]
        self._write_atomic(folder / "tensors.tsv", "\n".join(lines) + "\n")
        info = EmbeddingInfo(tensor_name=f"{tag}:{step:05d}", tensor_path=f"{subdir}/tensors.tsv",
                             tensor_shape=list(mat.shape))
        if meta is not None:
            rows = [header, *meta] if header is not None else [[m] for m in meta]
            text = "\n".join("\t".join(r) for r in rows) + "\n"
            self._write_atomic(folder / "metadata.tsv", text)
            info.metadata_path = f"{subdir}/metadata.tsv"
        if color_by is not None and meta is not None and mat.shape[1] >= 2 and mat.shape[0] >= 2:
            state = _pca_bookmark(mat, color_by, header[0] if header else color_by)
            self._write_atomic(folder / "bookmarks.json", json.dumps([state]))
            info.bookmarks_path = f"{subdir}/bookmarks.json"
        self._projector.embeddings.append(info)
        from google.protobuf import text_format

        config = text_format.MessageToString(self._projector)
        self._write_atomic(self.run_dir / "projector_config.pbtxt", config)

    def _load_projector(self, purge_step: int | None):
        """The projector config so far: a resumed run keeps the embeddings logged before ``purge_step``
        (those at or after it went with the crashed run's events)."""
        from google.protobuf import text_format
        from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

        config = ProjectorConfig()
        pbtxt = self.run_dir / "projector_config.pbtxt"
        if pbtxt.exists():
            old = text_format.Parse(pbtxt.read_text(encoding="utf-8"), ProjectorConfig())
            for emb in old.embeddings:
                step = int(emb.tensor_name.rpartition(":")[2] or 0)
                if purge_step is None or step < purge_step:
                    config.embeddings.append(emb)
        return config

    def custom_scalars(self, layout: Mapping[str, Mapping[str, tuple[str, Sequence[str]]]]) -> None:
        """The Custom Scalars page: ``{category: {chart title: ("Multiline" | "Margin", [tag regexes])}}``."""
        if (w := self._w()) is not None:
            w.add_custom_scalars({cat: {title: [kind, list(tags)] for title, (kind, tags) in charts.items()}
                                  for cat, charts in layout.items()})

    def hparam_metrics(self, tags: Sequence[str]) -> None:
        """The scalar tags the HParams plugin shows as this run's metrics (their last value); without this
        call: every ``eval/`` tag the logger wrote."""
        self._metrics = list(tags)

    def interface(self, name: str, stats: Mapping[str, float | None], step: int) -> None:
        self.scalars(f"interface/{name}", stats, step)

    def message_histogram(self, interface_name: str, message: torch.Tensor, step: int) -> None:
        self.histogram(f"interface/{interface_name}/message", message, step)

    def agent(self, name: str, values: Mapping[str, float | None], step: int) -> None:
        self.scalars(f"agent/{name}", values, step)

    def flush(self) -> None:
        if (w := self._w()) is not None:
            w.flush()

    def close(self) -> None:
        """Write the HParams plugin's experiment (the hyperparameters and the metric columns) and the
        session's end, flush and close; idempotent."""
        if not self._closed and self._writer is not None:
            if self._hparams:
                from torch.utils.tensorboard.summary import hparams as hparams_summaries

                metrics = self._metrics
                if metrics is None:
                    metrics = [t for t in self._scalar_tags if t.startswith("eval/")]
                exp, _, end = hparams_summaries(self._hparams, dict.fromkeys(metrics, 0.0))
                self._writer.file_writer.add_summary(exp, self._first)
                self._writer.file_writer.add_summary(end, self._first)
            self._writer.close()
        self._closed = True

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pca_bookmark(mat: torch.Tensor, color_by: str, label_by: str) -> dict[str, Any]:
    """A saved projector view (the fields the projector's own bookmarks carry): every point placed on the
    first two principal components of ``mat``, coloured by the metadata column ``color_by`` as categories."""
    centred = mat.double() - mat.double().mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    xy = (centred @ v[:2].T).tolist()
    return {
        "label": f"2-D PCA, coloured by {color_by}", "isSelected": False,
        "projections": [{"pca-0": x, "pca-1": y} for x, y in xy],
        "selectedProjection": "pca", "pcaComponentDimensions": [0, 1],
        "dataSetDimensions": list(mat.shape), "tSNEIteration": 0, "tSNEPerplexity": 30,
        "tSNELearningRate": 10, "tSNEis3d": False, "umapIs3d": False, "umapNeighbors": 15, "umapMinDist": 0.1,
        "selectedPoints": [], "filteredPoints": None, "selectedColorOptionName": color_by,
        "forceCategoricalColoring": True, "selectedLabelOption": label_by,
        "customSelectedSearchByMetadataOption": label_by,
        "customXLeftText": "", "customXLeftRegex": False, "customXRightText": "", "customXRightRegex": False,
        "customYUpText": "", "customYUpRegex": False, "customYDownText": "", "customYDownRegex": False,
        "cameraDef": {"orthographic": True, "position": [0, 0, 4], "target": [0, 0, 0], "zoom": 1},
    }
