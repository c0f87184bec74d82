"""The training loop: joint pCTR and pCVR losses, minibatch Adam, deterministic given the seed.

pCVR = P(conversion | click) is learned from clicked rows only: its loss is masked to rows with a click,
which is exactly the conditional the contract defines (no ESMM: the synthetic truth has no selection
effect beyond the features, and a masked loss keeps the head's meaning plain).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as F  # noqa: N812 (the conventional alias)

from training.model import Ranker
from training.synthetic import Logs

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrainConfig:
    seed: int
    epochs: int = 2
    batch_size: int = 4096
    learning_rate: float = 3e-3
    # Clicked rows are ~3% of a batch; a full-weight pCVR loss on them pulls the shared id embeddings
    # toward memorising those few rows and cost ~0.03 held-out pCTR AUC in trials.
    cvr_weight: float = 0.3
    log_every: int = 100  # steps between progress lines


@dataclass(slots=True)
class FitReport:
    seconds: float = 0.0
    steps: int = 0
    epoch_ctr_loss: list[float] = field(default_factory=list)
    epoch_cvr_loss: list[float] = field(default_factory=list)


def _losses(
    model: Ranker,
    cat_ids: torch.Tensor,
    dense: torch.Tensor,
    click: torch.Tensor,
    conversion: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    ctr_logit, cvr_logit = model.logits(cat_ids, dense)
    ctr_loss = F.binary_cross_entropy_with_logits(ctr_logit.squeeze(1), click)
    clicked = click > 0.5
    if not bool(clicked.any()):
        return ctr_loss, torch.zeros((), dtype=ctr_loss.dtype)
    cvr_loss = F.binary_cross_entropy_with_logits(cvr_logit.squeeze(1)[clicked], conversion[clicked])
    return ctr_loss, cvr_loss


def fit(model: Ranker, logs: Logs, config: TrainConfig) -> FitReport:
    """Trains `model` in place on `logs`, leaving it in eval mode."""
    torch.manual_seed(config.seed)
    shuffle = torch.Generator().manual_seed(config.seed)
    model.fit_dense_scaling(logs.dense)
    cat_ids = torch.from_numpy(logs.cat_ids)
    dense = torch.from_numpy(logs.dense)
    click = torch.from_numpy(logs.click.astype(np.float32))
    conversion = torch.from_numpy(logs.conversion.astype(np.float32))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    n = len(logs)
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    # Linear decay to 10% of the rate: late small steps settle calibration instead of chasing batch noise.
    total_steps = steps_per_epoch * config.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - 0.9 * step / total_steps)
    report = FitReport()
    start = time.perf_counter()
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=shuffle)
        ctr_sum = cvr_sum = 0.0
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            ctr_loss, cvr_loss = _losses(model, cat_ids[batch], dense[batch], click[batch], conversion[batch])
            optimizer.zero_grad(set_to_none=True)
            (ctr_loss + config.cvr_weight * cvr_loss).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
            ctr_sum += float(ctr_loss.detach())
            cvr_sum += float(cvr_loss.detach())
            report.steps += 1
            if (step + 1) % config.log_every == 0:
                logger.info(
                    "epoch %d step %d/%d ctr_loss %.5f cvr_loss %.5f (%.0fs)",
                    epoch + 1,
                    step + 1,
                    steps_per_epoch,
                    ctr_sum / (step + 1),
                    cvr_sum / (step + 1),
                    time.perf_counter() - start,
                )
        report.epoch_ctr_loss.append(ctr_sum / steps_per_epoch)
        report.epoch_cvr_loss.append(cvr_sum / steps_per_epoch)
        logger.info(
            "epoch %d done: mean ctr_loss %.5f cvr_loss %.5f (%.0fs)",
            epoch + 1,
            report.epoch_ctr_loss[-1],
            report.epoch_cvr_loss[-1],
            time.perf_counter() - start,
        )
    model.eval()
    report.seconds = time.perf_counter() - start
    return report


def predict(
    model: Ranker, cat_ids: npt.NDArray[np.int64], dense: npt.NDArray[np.float32], batch_size: int = 65_536
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(pctr, pcvr) as flat float32 arrays, in eval mode without gradients."""
    model.eval()
    ctr_parts, cvr_parts = [], []
    with torch.no_grad():
        for begin in range(0, cat_ids.shape[0], batch_size):
            pctr, pcvr = model(
                torch.from_numpy(cat_ids[begin : begin + batch_size]),
                torch.from_numpy(dense[begin : begin + batch_size]),
            )
            ctr_parts.append(pctr.squeeze(1).numpy())
            cvr_parts.append(pcvr.squeeze(1).numpy())
    return np.concatenate(ctr_parts), np.concatenate(cvr_parts)
