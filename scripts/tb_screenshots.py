"""Screenshot every TensorBoard view of some runs in headless Chromium: what a user sees, without a desktop.

    python scripts/tb_screenshots.py runs/digits_referential runs/speaker_listener --out shots
    python scripts/tb_screenshots.py runs --out shots          # every run under runs/

Each RUN_DIR is a run folder (it holds events.out.tfevents.*) or a folder of runs. The runs are linked into
one temporary log folder, so that they compare side by side (the HParams table, overlaid scalars). The
script starts TensorBoard on a free port of 127.0.0.1, opens each view at 1280x900 and writes OUT/<view>.png:
timeseries, scalars, custom_scalars, histograms, distributions, text, hparams (table view), and
projector-<run> for every run with embeddings (the first tensor, or --tensor; coloured by the first metadata
column that is not an index, or --color-by; 2-D PCA). OUT/index.json lists the files, each view's warnings
(an element not found in time, a dashboard that found no data) and the views that failed; OUT/tensorboard.log
holds TensorBoard's output. TensorBoard is stopped at the end, also on error. Exit status: 0; 1 when a view
failed; 2 for bad input or a missing tool.

Needs Playwright and a Chromium; the system's Chromium is used, so no `playwright install`:

    pip install -c constraints.txt -e '.[screenshots]'   # or: pip install playwright
    apt-get install chromium        # Debian/Ubuntu; any other Chromium: --chromium PATH
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VIEWPORT = {"width": 1280, "height": 900}
# Debian's /usr/bin/chromium is a shell wrapper around this binary; either works.
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-headless-shell",
                       "chromium-browser", "google-chrome")
# The projector draws with WebGL: without a GPU, Chromium needs its software renderer allowed.
CHROMIUM_FLAGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
SPINNERS = "paper-spinner-lite[active], paper-spinner[active], mat-spinner, mat-progress-spinner"
NO_DATA = re.compile(r"No \w[\w ]* (data )?was found|No dashboards are active", re.IGNORECASE)
INDEX_COLUMN = re.compile(r"^(#|index|idx|id|row|point)$", re.IGNORECASE)
RUN_MENU, TENSOR_MENU = r"\bruns? found", r"\btensors? found"  # the projector's dropdown labels
READY_S = 30.0  # how long a view may take to draw its first chart
SETTLE_MS = 1500  # after the charts appear: their transitions and the last requests


@dataclass(frozen=True)
class View:
    """One TensorBoard dashboard: its route (URL #fragment), its plugin and an element that shows content."""

    name: str
    route: str
    plugin: str
    ready: str
    width: int = 0  # wider than the viewport where a view's table would hide columns (0: the viewport)


VIEWS = (
    View("timeseries", "timeseries", "timeseries", "scalar-card, histogram-card"),
    View("scalars", "scalars", "scalars", "vz-line-chart2"),
    View("custom_scalars", "custom_scalars", "custom_scalars",
         "tf-custom-scalar-multi-line-chart-card, tf-custom-scalar-margin-chart-card"),
    View("histograms", "histograms", "histograms", "vz-histogram-timeseries"),
    View("distributions", "distributions", "distributions", "vz-distribution-chart"),
    View("text", "text", "text", "tf-text-loader"),
    View("hparams", "hparams", "hparams", "tf-hparams-table-view vaadin-grid, tf-hparams-table-view",
         width=2400),  # the settings' columns, then every metric's
)


def one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"


class UserError(Exception):
    """Bad input or a missing tool: reported as one line, exit 2."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a run folder or a folder of runs")
    p.add_argument("--out", required=True, type=Path, help="folder for the PNGs and index.json")
    p.add_argument("--chromium", help="the Chromium binary (default: the first found of "
                   + ", ".join(CHROMIUM_CANDIDATES) + ")")
    p.add_argument("--tensor", help="projector: the first tensor whose name contains this (default: first)")
    p.add_argument("--color-by", help="projector: this metadata column (default: the first not an index)")
    p.add_argument("--only", nargs="+", choices=[v.name for v in VIEWS] + ["projector"], metavar="VIEW",
                   help="just these views: " + ", ".join(v.name for v in VIEWS) + ", projector")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for TensorBoard to serve the runs")
    return p.parse_args(argv)


def find_chromium(explicit: str | None) -> str:
    for name in [explicit] if explicit else CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    if explicit:
        raise UserError(f"--chromium {explicit}: no such executable")
    raise UserError("no Chromium found: apt-get install chromium (Debian/Ubuntu) or pass --chromium PATH")


def collect_runs(paths: list[str]) -> dict[str, Path]:
    """Name -> folder of every run given: a folder with event files, or such folders below one.

    A run inside another run is left to TensorBoard, which finds it under the outer one (outer/inner).
    """
    found: list[tuple[Path, Path]] = []  # (the argument's folder, a run in it)
    for arg in paths:
        root = Path(arg).resolve()
        if not root.is_dir():
            raise UserError(f"RUN_DIR {arg}: not a folder")
        runs_here = sorted({f.parent for f in root.rglob("events.out.tfevents.*")})
        if not runs_here:
            raise UserError(f"RUN_DIR {arg}: no TensorBoard event files (events.out.tfevents.*) in it")
        found += [(root, run) for run in runs_here]
    folders = {run for _, run in found}
    runs: dict[str, Path] = {}
    for root, run in found:
        if run in runs.values() or any(parent in folders for parent in run.parents):
            continue
        name = run.name if run == root else "_".join(run.relative_to(root).parts)
        if name in runs:  # e.g. two runs/digits_referential: name them by their parent folder too
            name = f"{run.parent.name}_{name}"
        while name in runs:
            name += "_"
        runs[name] = run
    return runs


def link_runs(runs: dict[str, Path], logdir: Path) -> None:
    """One log folder holding a link per run: TensorBoard shows exactly these runs, under these names.

    Names hold no '/', so every link sits in logdir itself and nothing is ever written into a run.
    """
    for name, run in runs.items():
        (logdir / name).symlink_to(run, target_is_directory=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def wait_until_serving(base: str, tb: subprocess.Popen, n_runs: int, timeout: float) -> None:
    """Wait until TensorBoard lists every run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tb.poll() is not None:
            raise RuntimeError(f"TensorBoard exited with {tb.returncode} (see tensorboard.log)")
        try:
            if len(get_json(base + "data/runs")) >= n_runs:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"TensorBoard did not list the {n_runs} runs within {timeout:.0f} s")


def plugin_active(base: str, plugin: str, wait_s: float = 0.0) -> bool:
    """Whether a plugin found data; some (the projector) decide in the background, so wait up to wait_s."""
    deadline = time.monotonic() + wait_s
    while True:
        if get_json(base + "data/plugins_listing").get(plugin, {}).get("enabled"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(1)


def settle(page: Any, ready: str, warnings: list[str]) -> None:
    """Wait for the view's content, then for its spinners to stop; what does not come is a warning."""
    page.wait_for_load_state("networkidle")
    try:
        page.locator(ready).locator("visible=true").first.wait_for(timeout=READY_S * 1000)
    except Exception:
        body = page.locator("body").inner_text(timeout=5000)
        said = NO_DATA.search(body)
        warnings.append(f"TensorBoard says: {said.group(0)}" if said else f"no {ready} appeared")
    try:
        page.locator(SPINNERS).locator("visible=true").first.wait_for(state="hidden", timeout=READY_S * 1000)
    except Exception:
        warnings.append("a loading spinner was still turning")
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(SETTLE_MS)


def shoot_view(context: Any, base: str, view: View, out: Path) -> dict[str, Any]:
    """A fresh page on one dashboard; one that found no data is still shot (it says so), without waiting."""
    url = f"{base}#{view.route}"
    page = context.new_page()
    try:
        if view.width:
            page.set_viewport_size({"width": view.width, "height": page.viewport_size["height"]})
        page.goto(url)
        if plugin_active(base, view.plugin):
            warnings: list[str] = []
            settle(page, view.ready, warnings)
        else:
            warnings = [f"the {view.plugin} plugin found no data in these runs"]
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(SETTLE_MS)
        page.screenshot(path=out / f"{view.name}.png")
    finally:
        page.close()
    return {"view": view.name, "file": f"{view.name}.png", "url": url, "warnings": warnings}


def projector_frame(page: Any) -> Any:
    """The projector runs in a nested iframe; wait for it and its data panel."""
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        for frame in page.frames:
            if "projector_binary" in frame.url:
                frame.locator("vz-projector-data-panel").first.wait_for(timeout=READY_S * 1000)
                return frame
        page.wait_for_timeout(250)
    raise RuntimeError("the projector's frame did not load")


def wait_for_points(frame: Any, warnings: list[str]) -> None:
    """Until the status bar counts the loaded points ('Loading...' before) and the progress dialog is gone."""
    count = frame.locator(".numDataPoints").first
    deadline = time.monotonic() + READY_S
    while not re.fullmatch(r"\d+", count.inner_text(timeout=READY_S * 1000).strip()):
        if time.monotonic() > deadline:
            warnings.append("the points did not load")
            return
        frame.page.wait_for_timeout(250)
    try:
        frame.locator("iron-overlay-backdrop").locator("visible=true").first.wait_for(
            state="hidden", timeout=READY_S * 1000)
    except Exception:
        warnings.append("a progress dialog was still open")


def choose(frame: Any, menu: Any | None, pick: Any, what: str, warnings: list[str]) -> str | None:
    """Open a paper-dropdown-menu and click the first item whose name `pick(name)` accepts."""
    if menu is None:
        warnings.append(f"no menu to choose the {what}")
        return None
    try:
        menu.click(timeout=10_000)
        items = menu.locator("paper-item")
        items.first.wait_for(timeout=10_000)
        names = items.evaluate_all("els => els.map(e => e.hasAttribute('disabled') ? ''"
                                   " : e.textContent.trim().split('\\n')[0].trim())")
        for i, name in enumerate(names):
            if name and pick(name):
                items.nth(i).click(timeout=10_000)
                frame.page.wait_for_timeout(500)
                return name
        frame.page.keyboard.press("Escape")
        warnings.append(f"no {what} to choose among {[n for n in names if n]}")
    except Exception as e:
        warnings.append(f"could not choose the {what}: {one_line(e)}")
    return None


def set_pca_2d(frame: Any, warnings: list[str]) -> None:
    """PCA tab, third component off; then fit the view to the points."""
    try:
        frame.locator("#pca-tab").first.click(timeout=10_000)
        box = frame.locator("#z-checkbox").first
        if box.get_attribute("aria-checked", timeout=10_000) == "true":
            box.click(timeout=10_000)
        frame.locator("#reset-zoom").first.click(timeout=10_000)
    except Exception as e:
        warnings.append(f"could not switch to 2-D PCA: {one_line(e)}")


def data_menu(frame: Any, label: str) -> Any | None:
    """The data panel's dropdown whose label matches (e.g. '2 runs found'; absent when there is one run)."""
    menus = frame.locator("vz-projector-data-panel paper-dropdown-menu")
    labels = menus.evaluate_all("els => els.map(e => e.label || '')")
    for i, text in enumerate(labels):
        if re.search(label, text):
            return menus.nth(i)
    return None


def open_projector(context: Any, url: str) -> tuple[Any, Any]:
    """A fresh page on the projector, its first run loaded: (page, the projector's frame)."""
    page = context.new_page()
    page.goto(url)
    frame = projector_frame(page)
    wait_for_points(frame, [])  # the first run's; a run's own warnings come when it is shot
    return page, frame


def shoot_projector(context: Any, base: str, out: Path, tensor: str | None, color_by: str | None,
                    only_run: str | None) -> list[dict[str, Any]]:
    """One picture per run with embeddings: its tensor coloured by a label column, in 2-D PCA.

    Each run gets a fresh page: switching runs in place keeps the previous run's colour legend.
    """
    url = f"{base}#projector"
    if not plugin_active(base, "projector", wait_s=READY_S):
        return [{"view": "projector", "file": None, "url": url,
                 "warnings": ["the projector plugin found no embeddings in these runs"]}]
    page, frame = open_projector(context, url)
    menu = data_menu(frame, RUN_MENU)
    runs = [only_run] if menu is None else menu.locator("paper-item").evaluate_all(
        "els => els.map(e => e.textContent.trim())")  # no menu: one run has embeddings
    page.close()
    records = []
    for i, run in enumerate(runs):
        warnings: list[str] = []
        page, frame = open_projector(context, url)
        try:
            if i > 0:
                choose(frame, data_menu(frame, RUN_MENU), lambda n, r=run: n == r, "run", warnings)
                page.wait_for_timeout(SETTLE_MS)
                wait_for_points(frame, warnings)
            picked = choose(frame, data_menu(frame, TENSOR_MENU), lambda n: tensor is None or tensor in n,
                            f"tensor containing {tensor!r}" if tensor else "tensor", warnings)
            wait_for_points(frame, warnings)
            label = (lambda n: n == color_by) if color_by else (
                lambda n: n != "No color map" and not INDEX_COLUMN.match(n))
            chosen = choose(frame, frame.locator("#colorby"), label, "colour column", warnings)
            set_pca_2d(frame, warnings)
            page.mouse.move(5, VIEWPORT["height"] - 5)  # no tooltip over the points
            page.wait_for_timeout(3 * SETTLE_MS)  # PCA and the re-coloured points
            name = f"projector-{run}" if run else "projector"
            file = name.replace("/", "_") + ".png"
            page.screenshot(path=out / file)
            records.append({"view": name, "file": file, "url": url, "tensor": picked, "color_by": chosen,
                            "warnings": warnings})
        finally:
            page.close()
    return records


def shoot_all(chromium: str, base: str, out: Path, run_names: list[str], args: argparse.Namespace
              ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Every view (or --only's) in one browser; a view that raises is listed as failed, the rest go on."""
    from playwright.sync_api import sync_playwright

    wanted = set(args.only or [v.name for v in VIEWS] + ["projector"])
    shots: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport=VIEWPORT)
        for view in [v for v in VIEWS if v.name in wanted]:
            try:
                shots.append(shoot_view(context, base, view, out))
            except Exception as e:
                failed.append({"view": view.name, "error": one_line(e)})
        if "projector" in wanted:
            try:
                shots += shoot_projector(context, base, out, args.tensor, args.color_by,
                                         run_names[0] if len(run_names) == 1 else None)
            except Exception as e:
                failed.append({"view": "projector", "error": one_line(e)})
        browser.close()
    return shots, failed


def stop(tb: subprocess.Popen) -> None:
    tb.terminate()
    try:
        tb.wait(timeout=10)
    except subprocess.TimeoutExpired:
        tb.kill()
        tb.wait()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise UserError("Playwright is not installed: pip install playwright (no `playwright install` "
                        "needed: the system's Chromium is used)") from None
    chromium = find_chromium(args.chromium)
    runs = collect_runs(args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tb_screenshots_") as tmp:
        link_runs(runs, Path(tmp))
        port = free_port()
        base = f"http://127.0.0.1:{port}/"
        with open(args.out / "tensorboard.log", "w") as log:
            tb = subprocess.Popen(
                [sys.executable, "-m", "tensorboard.main", "--logdir", tmp, "--host", "127.0.0.1",
                 "--port", str(port), "--load_fast", "false"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                wait_until_serving(base, tb, len(runs), args.timeout)
                shots, failed = shoot_all(chromium, base, args.out, list(runs), args)
            finally:
                stop(tb)
    index = {"runs": {name: str(path) for name, path in runs.items()}, "viewport": VIEWPORT,
             "screenshots": shots, "failed": failed}
    (args.out / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    for shot in shots:
        print(f"{shot['view']:<32} {shot['file'] or '-'}  {'; '.join(shot['warnings'])}")
    for fail in failed:
        print(f"{fail['view']:<32} FAILED  {fail['error']}")
    print(f"{len(shots)} screenshots, {len(failed)} failed: {args.out / 'index.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except UserError as e:
        print(f"tb_screenshots: {e}", file=sys.stderr)
        sys.exit(2)
