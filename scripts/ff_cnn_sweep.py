"""Small sweep of the CNN utility model on Fashion-MNIST (one seed each; needs CUDA).

    python scripts/ff_cnn_sweep.py [FASHION_MNIST_DIR]
"""

import sys
from pathlib import Path

from dni_agents.drivers import ff

U = "interface_defaults.utility"
SWEEP = [
    ("dni", [f"{U}.lr=0.0001"]),
    ("dni", [f"{U}.lr=0.003"]),
    ("dni", ["interface_defaults.scale=0.1"]),
    ("cdni", [f"{U}.lr=0.0001"]),
    ("cdni", [f"{U}.lr=0.003"]),
    ("cdni", [f"{U}.layers=3"]),
]

root = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
for method, extra in SWEEP:
    cfg = ff.method_config("ff_fashion_cnn", method, extra + ["device=cuda", f"ff.data_root={root}"])
    r = ff.train(cfg, Path("runs/x"), log=False, progress=False)
    print(method, extra, round(r["test_accuracy"], 4), round(r["steps_per_s"]), flush=True)
