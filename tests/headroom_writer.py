"""``python tests/headroom_writer.py RESULTS SEED``: the shard of a headroom sweep that runs ``SEED``
records one finished run, as the sweep does, after touching ``RESULTS/ready``."""

import sys
from pathlib import Path

from occ_fast.experiments import headroom

results, seed = Path(sys.argv[1]), int(sys.argv[2])
args = headroom.parse_args(
    ["--results", str(results), "--output", str(results / "runs"), "--shard", f"{seed}/2"]
)
warm = [{"seed": seed, "sft_steps": 25, "heldout_accuracy": 0.1, "reached": True}]
row = {"setting": "detach", "seed": seed, "curve": [(0, 0.1), (10, 0.2)], "auc": 0.15, "final_accuracy": 0.2}
(results / "ready").touch()
headroom.write(args, warm, [row | {"final_reward": 0.3}])
