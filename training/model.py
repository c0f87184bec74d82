"""The ranker: a small DLRM with two sigmoid heads (pCTR, pCVR), taking feature_spec's raw arrays.

  cat_ids [N, 18] -> one embedding table per field (feature_spec bucket counts), each [N, dim]
  dense   [N, 6]  -> fixed transform (logit of the rates, standardisation) -> MLP -> [N, dim]
  top MLP input   =  dense vector ++ all pairwise dot products of the 19 vectors (171)
                     ++ the 18 embeddings ++ 3 "same IAB category" crosses
  shared top MLP  -> two linear heads -> sigmoid: pctr, pcvr

The dense transform lives inside the network, so the exported ONNX takes the raw values the gateway
reads from the stores and never depends on the gateway repeating a preprocessing step. The embeddings go
to the top MLP as well as their dot products (the DeepFM deep part): most of the truth is first-order
(ad, publisher, placement, hour effects), which dot products pass only through the dense vector's pairs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from gateway.core import feature_spec as fs

# Columns of `dense` that are probabilities: fed to the network as logits, where their effect is additive.
RATE_COLUMNS = (
    fs.DENSE_INDEX["user_ctr_hist"],
    fs.DENSE_INDEX["ad_prior_ctr"],
    fs.DENSE_INDEX["ad_prior_cvr"],
)
RATE_EPS = 1e-4  # keeps logit finite for a 0 or 1 rate from a store

# "Same IAB category" crosses, given to the top MLP as 0/1 inputs. Each field hashes with its own seed, so
# the same category sits in unrelated buckets per field; a dot product of two learned embeddings has to
# discover that 26x26 identity through hash collisions and learned the second interest's match poorly.
# The vocabulary is the contract's (tier-1 IAB), so the cross is a constant table, not a learned one
# (in trials: +0.008 held-out pCTR AUC, most of the remaining gap to the truth's ranking).
CATEGORY_CROSSES = (
    ("user_interest1", "ad_category"),
    ("user_interest2", "ad_category"),
    ("pub_category", "ad_category"),
)
IAB_TIER1 = tuple(f"IAB{i}" for i in range(1, 27))


def category_match_table(left: str, right: str) -> torch.Tensor:
    """Flat [buckets(left) * buckets(right)] table: 1 where some IAB category hashes to both buckets."""
    n_right = fs.CATEGORICAL_FIELDS[fs.CAT_INDEX[right]].buckets
    table = torch.zeros(fs.CATEGORICAL_FIELDS[fs.CAT_INDEX[left]].buckets * n_right)
    for category in IAB_TIER1:
        table[fs.hash_field(left, category) * n_right + fs.hash_field(right, category)] = 1.0
    return table


@dataclass(frozen=True, slots=True)
class RankerConfig:
    embedding_dim: int = 12
    dense_hidden: int = 32
    top_hidden: tuple[int, ...] = (128, 64)


def rate_mask() -> torch.Tensor:
    mask = torch.zeros(len(fs.DENSE_FIELDS), dtype=torch.bool)
    mask[list(RATE_COLUMNS)] = True
    return mask


def transform_dense(dense: torch.Tensor, is_rate: torch.Tensor) -> torch.Tensor:
    """Raw dense features -> rates as logits, other columns unchanged (before standardisation)."""
    clipped = dense.clamp(RATE_EPS, 1.0 - RATE_EPS)
    return torch.where(is_rate, torch.log(clipped) - torch.log1p(-clipped), dense)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers)


class Ranker(nn.Module):
    dense_mean: torch.Tensor
    dense_std: torch.Tensor
    is_rate: torch.Tensor
    pair_index: torch.Tensor
    cross_tables: torch.Tensor

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embedding_dim
        tables = [nn.Embedding(f.buckets, dim) for f in fs.CATEGORICAL_FIELDS]
        for table in tables:
            # Small initial vectors: the dot products start near 0 instead of dominating the first steps.
            nn.init.normal_(table.weight, std=0.05)
        self.embeddings = nn.ModuleList(tables)
        n_dense = len(fs.DENSE_FIELDS)
        # Standardisation of the transformed dense inputs, fitted once on training data (fit_dense_scaling).
        self.register_buffer("dense_mean", torch.zeros(n_dense))
        self.register_buffer("dense_std", torch.ones(n_dense))
        self.register_buffer("is_rate", rate_mask())
        self.dense_mlp = nn.Sequential(
            _mlp([n_dense, config.dense_hidden]), nn.Linear(config.dense_hidden, dim)
        )
        n_vectors = len(fs.CATEGORICAL_FIELDS) + 1
        rows, cols = torch.triu_indices(n_vectors, n_vectors, offset=1)
        # Each distinct pair once, as positions in the flattened [n_vectors * n_vectors] Gram matrix.
        self.register_buffer("pair_index", rows * n_vectors + cols)
        self.register_buffer(
            "cross_tables", torch.stack([category_match_table(a, b) for a, b in CATEGORY_CROSSES])
        )
        self.cross_columns: list[tuple[int, int, int]] = [
            (fs.CAT_INDEX[a], fs.CAT_INDEX[b], int(fs.BUCKETS[fs.CAT_INDEX[b]])) for a, b in CATEGORY_CROSSES
        ]
        n_embedded = len(fs.CATEGORICAL_FIELDS) * dim
        self.top = _mlp([dim + rows.numel() + n_embedded + len(CATEGORY_CROSSES), *config.top_hidden])
        self.ctr_head = nn.Linear(config.top_hidden[-1], 1)
        self.cvr_head = nn.Linear(config.top_hidden[-1], 1)

    def fit_dense_scaling(self, dense: npt.NDArray[np.float32]) -> None:
        transformed = transform_dense(torch.from_numpy(dense), self.is_rate)
        self.dense_mean.copy_(transformed.mean(dim=0))
        self.dense_std.copy_(transformed.std(dim=0).clamp_min(1e-3))

    def logits(self, cat_ids: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pCTR logit, pCVR logit), each [N, 1]; training uses these for numerically stable losses."""
        scaled = (transform_dense(dense, self.is_rate) - self.dense_mean) / self.dense_std
        dense_vector = self.dense_mlp(scaled)
        vectors = torch.stack(
            [dense_vector, *(table(cat_ids[:, i]) for i, table in enumerate(self.embeddings))], dim=1
        )
        gram = torch.bmm(vectors, vectors.transpose(1, 2))
        pairs = torch.index_select(gram.flatten(1), 1, self.pair_index)
        crosses = torch.stack(
            [
                self.cross_tables[k].index_select(0, cat_ids[:, left] * n_right + cat_ids[:, right])
                for k, (left, right, n_right) in enumerate(self.cross_columns)
            ],
            dim=1,
        )
        hidden = self.top(torch.cat([dense_vector, pairs, vectors[:, 1:].flatten(1), crosses], dim=1))
        return self.ctr_head(hidden), self.cvr_head(hidden)

    def forward(self, cat_ids: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pctr, pcvr) probabilities, each [N, 1]: what the exported model serves."""
        ctr_logit, cvr_logit = self.logits(cat_ids, dense)
        return torch.sigmoid(ctr_logit), torch.sigmoid(cvr_logit)
