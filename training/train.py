"""Training entry point: data, snapshots, both model versions, ONNX, eval.json and the model card.

    python -m training.train --out triton_models/ranker --snapshots data/snapshots [--rows N]
        [--epochs E] [--tiny]

One epoch over fresh rows beats several over the same rows here: embedding tables of ids (users, ads)
memorise a second pass and held-out AUC drops from the second epoch on, so the default draws more rows
instead of repeating them.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

import torch

from training import catalog, evaluate, modelcard, snapshots, synthetic
from training import world as w
from training.export import export
from training.fit import FitReport, TrainConfig, fit, predict
from training.model import Ranker, RankerConfig

logger = logging.getLogger(__name__)

TRAIN_COMMAND: Final = "python -m training.train --out triton_models/ranker --snapshots data/snapshots"
EVAL_FILE: Final = "eval.json"
CARD_FILE: Final = "README.md"
ONNX_FILE: Final = "model.onnx"
EXPORT_CHECK_ROWS: Final = 1_000


@dataclass(frozen=True, slots=True)
class VersionSpec:
    version: int
    seed: int
    model: RankerConfig
    description: str


VERSIONS: Final = (
    VersionSpec(1, seed=11, model=RankerConfig(embedding_dim=12, top_hidden=(128, 64)), description="dim 12"),
    VersionSpec(
        2,
        seed=22,
        model=RankerConfig(embedding_dim=16, top_hidden=(256, 64)),
        description="dim 16, wider first top layer",
    ),
)


@dataclass(frozen=True, slots=True)
class RunOptions:
    out: Path
    snapshot_dir: Path
    rows: int
    holdout_rows: int
    epochs: int
    tiny: bool


def parse_args(argv: list[str] | None = None) -> RunOptions:
    parser = argparse.ArgumentParser(
        prog="python -m training.train", description="Train and export the ranker"
    )
    parser.add_argument("--out", type=Path, required=True, help="Triton model directory (<out>/<version>/)")
    parser.add_argument("--snapshots", type=Path, required=True, help="where the store snapshots go")
    parser.add_argument("--rows", type=int, default=None, help="training rows (default 4,000,000)")
    parser.add_argument("--holdout-rows", type=int, default=None, help="held-out rows (default 500,000)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="a few thousand rows: a smoke run in seconds")
    args = parser.parse_args(argv)
    rows = args.rows or (30_000 if args.tiny else 4_000_000)
    holdout = args.holdout_rows or (20_000 if args.tiny else 500_000)
    return RunOptions(args.out, args.snapshots, rows, holdout, args.epochs, args.tiny)


def train_version(
    spec: VersionSpec, train: synthetic.Logs, holdout: synthetic.Logs, options: RunOptions
) -> dict[str, Any]:
    logger.info("version %d: %s, seed %d", spec.version, spec.description, spec.seed)
    torch.manual_seed(spec.seed)
    model = Ranker(spec.model)
    config = TrainConfig(seed=spec.seed, epochs=options.epochs, log_every=200)
    if options.tiny:
        # Small batches so the few tiny rows still make enough steps to move off the initialisation.
        config = replace(config, batch_size=512, log_every=20)
    report: FitReport = fit(model, train, config)
    pctr, pcvr = predict(model, holdout.cat_ids, holdout.dense)
    path = options.out / str(spec.version) / ONNX_FILE
    diff = export(model, path, holdout.cat_ids[:EXPORT_CHECK_ROWS], holdout.dense[:EXPORT_CHECK_ROWS])
    scores = evaluate.evaluate_scores(holdout, pctr, pcvr)
    logger.info(
        "version %d: held-out pCTR AUC %.4f logloss %.5f, pCVR AUC %.4f; %s (%d bytes, max |ort-torch| %.2g)",
        spec.version,
        scores["pctr"]["auc"],
        scores["pctr"]["logloss"],
        scores["pcvr"]["auc"],
        path,
        path.stat().st_size,
        diff,
    )
    return {
        "description": spec.description,
        "seed": spec.seed,
        "model": asdict(spec.model),
        "train": {**asdict(config), "seconds": round(report.seconds, 1), "steps": report.steps},
        "epoch_losses": {
            "pctr": [round(x, 5) for x in report.epoch_ctr_loss],
            "pcvr": [round(x, 5) for x in report.epoch_cvr_loss],
        },
        "onnx": {"bytes": path.stat().st_size, "max_abs_diff_vs_torch": diff},
        **scores,
    }


def run(options: RunOptions) -> dict[str, Any]:
    started = time.perf_counter()
    torch.set_num_threads(2)
    world = w.make_world()
    written = snapshots.write_snapshots(world, options.snapshot_dir)
    # The default catalog follows the ads snapshot: same ad ids, priors and campaigns.
    written.append(catalog.write_catalog(options.snapshot_dir))
    logger.info("snapshots: %s", ", ".join(f"{p.name} {p.stat().st_size} bytes" for p in written))
    train = synthetic.generate_logs(world, options.rows, synthetic.TRAIN_SEED)
    holdout = synthetic.generate_logs(world, options.holdout_rows, synthetic.HOLDOUT_SEED)
    logger.info(
        "data: %d training rows (CTR %.4f), %d held-out rows (%.0fs)",
        len(train),
        float(train.click.mean()),
        len(holdout),
        time.perf_counter() - started,
    )
    result: dict[str, Any] = {
        "command": TRAIN_COMMAND,
        "data": {
            "world_seed": w.WORLD_SEED,
            "train_seed": synthetic.TRAIN_SEED,
            "holdout_seed": synthetic.HOLDOUT_SEED,
            "users": len(world.users.ids),
            "ads": len(world.ads.ids),
            "publishers": len(world.publishers.ids),
            "placements": len(world.publishers.tagid),
            "train_rows": len(train),
            "holdout_rows": len(holdout),
            "train_ctr": round(float(train.click.mean()), 5),
            "holdout_ctr": round(float(holdout.click.mean()), 5),
            "holdout_clicks": int(holdout.click.sum()),
            "holdout_cvr": round(float(holdout.conversion.sum() / max(int(holdout.click.sum()), 1)), 5),
        },
        "reference": evaluate.reference_metrics(holdout),
        "versions": {str(s.version): train_version(s, train, holdout, options) for s in VERSIONS},
    }
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / EVAL_FILE).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (options.out / CARD_FILE).write_text(modelcard.render(result))
    logger.info("wrote %s and %s in %.0fs", EVAL_FILE, CARD_FILE, result["total_seconds"])
    return result


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(parse_args(argv))


if __name__ == "__main__":
    main()
