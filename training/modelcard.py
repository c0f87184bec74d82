"""The model card (triton_models/ranker/README.md), rendered from eval.json's numbers and feature_spec.

Generated, never hand-edited: the numbers, the hashing table and the collision list cannot drift from
the model files and the contract they describe.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Final

from gateway.core import feature_spec as fs
from training import world as w

# Where the gateway takes each categorical value from, and how it normalises it before hashing.
FIELD_SOURCES: Final[dict[str, str]] = {
    "user_id": "request `user.id` as is; MISSING when the user store does not know the id",
    "user_age": 'user store `age` bucket: "18-24", "25-34", "35-44", "45-54", "55-64", "65+"',
    "user_gender": 'user store `gender`: "M", "F", "U"',
    "user_interest1": "user store `interests[0]`, IAB tier-1 (`iab_tier1`)",
    "user_interest2": "user store `interests[1]`, IAB tier-1 (`iab_tier1`)",
    "ad_id": "candidate ad id as is",
    "campaign_id": "ad store `campaign_id`",
    "advertiser": "ad store `advertiser` domain",
    "ad_category": "ad store `cat`, IAB tier-1 (`iab_tier1`)",
    "publisher": "`app.bundle` for apps, `site.domain` for sites",
    "pub_category": "first of `app.cat` / `site.cat`, IAB tier-1 (`iab_tier1`)",
    "device_type": 'str(`device.devicetype`), e.g. "4" (phone), "2" (PC)',
    "os": "`device.os` lowercased",
    "country": "`device.geo.country` upper-case ISO alpha-3",
    "tagid": "`imp.tagid` as is",
    "ad_size": '`ad_size(w, h)` = "WxH" of `imp.banner` (e.g. "300x250")',
    "position": 'str(`imp.banner.pos`), "0".."7"',
    "hour": "`hour_bucket(hour)`: the UTC hour 0..23 itself, not hashed",
}

DENSE_DOCS: Final[dict[str, str]] = {
    "user_ctr_hist": f"user store `ctr_hist`; {fs.DEFAULT_USER_CTR} when the user is unknown",
    "user_activity": (
        f"user store `activity` = log1p(impressions, 30 days); {fs.DEFAULT_USER_ACTIVITY} if unknown"
    ),
    "ad_prior_ctr": "ad store `prior_ctr`",
    "ad_prior_cvr": "ad store `prior_cvr` (per click)",
    "hour_sin": "`hour_cycle(hour)[0]` = sin(2*pi*hour/24)",
    "hour_cos": "`hour_cycle(hour)[1]` = cos(2*pi*hour/24)",
}

# The closed vocabularies the generator uses: enough to show which values share a bucket.
_CLOSED_VOCABULARIES: Final[dict[str, tuple[str, ...]]] = {
    "user_age": w.AGES,
    "user_gender": w.GENDERS,
    "user_interest1": w.IAB_CATEGORIES,
    "user_interest2": w.IAB_CATEGORIES,
    "ad_category": w.IAB_CATEGORIES,
    "pub_category": w.IAB_CATEGORIES,
    "device_type": tuple(str(t) for t in range(1, 8)),
    "os": w.OSES,
    "country": w.COUNTRIES,
    "ad_size": tuple(fs.ad_size(width, height) for width, height in w.SIZES),
    "position": w.POSITIONS,
}


def bucket_collisions() -> dict[str, list[list[str]]]:
    """Per closed-vocabulary field, the groups of values (MISSING shown as "") that share a bucket."""
    result: dict[str, list[list[str]]] = {}
    for name, vocabulary in _CLOSED_VOCABULARIES.items():
        groups: defaultdict[int, list[str]] = defaultdict(list)
        for value in (*vocabulary, fs.MISSING):
            groups[fs.hash_field(name, value)].append(value)
        shared = [group for group in groups.values() if len(group) > 1]
        if shared:
            result[name] = shared
    return result


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _metrics_table(result: dict[str, Any]) -> list[str]:
    ref = result["reference"]
    lines = [
        _row(
            "scorer", "pCTR AUC", "pCTR log-loss", "pCVR AUC (clicked rows)", "pCVR log-loss (clicked rows)"
        ),
        _row("---", "---", "---", "---", "---"),
    ]
    named = [("Bayes (true probabilities)", ref["bayes"]), ("ad prior baseline", ref["ad_prior_baseline"])]
    named += [(f"version {v}", m) for v, m in sorted(result["versions"].items())]
    for name, m in named:
        lines.append(
            _row(
                name,
                f"{m['pctr']['auc']:.4f}",
                f"{m['pctr']['logloss']:.5f}",
                f"{m['pcvr']['auc']:.4f}",
                f"{m['pcvr']['logloss']:.5f}",
            )
        )
    return lines


def _calibration_table(result: dict[str, Any], head: str) -> list[str]:
    versions = sorted(result["versions"].items())
    header = ["decile"]
    for v, _ in versions:
        header += [f"v{v} mean predicted", f"v{v} observed"]
    lines = [_row(*header), _row(*(["---"] * len(header)))]
    for i in range(len(versions[0][1][head]["calibration"])):
        cells: list[object] = [i + 1]
        for _, m in versions:
            b = m[head]["calibration"][i]
            cells += [f"{b['mean_predicted']:.4f}", f"{b['observed_rate']:.4f}"]
        lines.append(_row(*cells))
    return lines


def render(result: dict[str, Any]) -> str:
    data = result["data"]
    versions = sorted(result["versions"].items())
    n_cat, n_dense = len(fs.CATEGORICAL_FIELDS), len(fs.DENSE_FIELDS)
    lines = [
        f"# `{fs.MODEL_NAME}`: pCTR and pCVR for the bid gateway",
        "",
        "Generated by `training/modelcard.py` from `eval.json`; regenerate with",
        f"`{result['command']}` (or `make train`), never edit by hand.",
        "",
        "A small DLRM trained on synthetic impression logs with a known ground truth (`training/`): one",
        "embedding table per field, a dense MLP, pairwise dot products of the 19 vectors, then a shared MLP",
        "over [dense vector, dot products, embeddings, 3 same-IAB-category crosses (user interest 1 / 2 and",
        "publisher category vs ad category, constant tables over the hashed tier-1 vocabulary)] and two",
        "sigmoid heads. The contract in code is `gateway/core/feature_spec.py`; this card is the same",
        "contract for people.",
        "",
        "## Serving interface",
        "",
        "ONNX, opset 17, IR version 8, one file per version (`<version>/model.onnx`, no external data).",
        "Triton batches on dim 0, so every tensor's first dimension is the row (candidate) count.",
        "",
        _row("tensor", "direction", "dtype", "shape", "meaning"),
        _row("---", "---", "---", "---", "---"),
        _row(f"`{fs.INPUT_CAT}`", "input", "INT64", f"[batch, {n_cat}]", "bucket per categorical field"),
        _row(f"`{fs.INPUT_DENSE}`", "input", "FP32", f"[batch, {n_dense}]", "raw dense features"),
        _row(f"`{fs.OUTPUT_PCTR}`", "output", "FP32", "[batch, 1]", "P(click given impression)"),
        _row(f"`{fs.OUTPUT_PCVR}`", "output", "FP32", "[batch, 1]", "P(conversion given click)"),
        "",
        "Bucket ids must lie in `[0, buckets)` of their column: onnxruntime rejects an out-of-range Gather.",
        "",
        "## Categorical features (`cat_ids` columns)",
        "",
        "Bucket = `xxh3_64(value.encode('utf-8'), seed=column index) % buckets` (`feature_spec.hash_value`),",
        f'except `hour`. A missing value is hashed as `MISSING` = `"{fs.MISSING}"` (one bucket per field',
        "absorbs every unknown). Vectorise by hashing a vocabulary once (`hash_vocabulary`) and gathering.",
        "",
        _row("column", "field", "buckets", "value (normalisation)"),
        _row("---", "---", "---", "---"),
    ]
    lines += [
        _row(i, f"`{f.name}`", f.buckets, FIELD_SOURCES[f.name]) for i, f in enumerate(fs.CATEGORICAL_FIELDS)
    ]
    lines += [
        "",
        "## Dense features (`dense` columns)",
        "",
        "Raw values: the network itself takes logit(clip(x, 1e-4, 1-1e-4)) of the three rates and",
        "standardises all six with constants fitted on training data, so the gateway sends store values",
        "as is.",
        "",
        _row("column", "field", "value"),
        _row("---", "---", "---"),
    ]
    lines += [_row(i, f"`{name}`", DENSE_DOCS[name]) for i, name in enumerate(fs.DENSE_FIELDS)]
    collisions = bucket_collisions()
    lines += [
        "",
        "### Known limitation: bucket collisions in small fields",
        "",
        "Hashing a closed vocabulary into few buckets merges some values; the model cannot tell these apart",
        '(`""` is MISSING). A future contract could enumerate closed vocabularies, as `hour` does.',
        "",
    ]
    lines += [
        f"- `{name}`: " + "; ".join(" = ".join(f'"{v}"' for v in g) for g in groups)
        for name, groups in collisions.items()
    ]
    lines += [
        "",
        "## Training data: synthetic, with a known truth",
        "",
        f"`training/world.py` draws {data['users']:,} users (Zipf traffic), {data['ads']:,} ads",
        f"(200 campaigns, 150 advertisers) and {data['publishers']} publishers ({data['placements']}",
        "placements); `training/synthetic.py` draws impressions from them. True click logit = base",
        "+ ad quality N(0, 0.5) + publisher quality + placement + banner position + ad size + device type",
        "+ os + country + smooth diurnal hour effect + affinity",
        f"({w.AFFINITY_INTEREST1} if the ad category is the user's first interest,",
        f"{w.AFFINITY_INTEREST2} if the second) + {w.CONTEXT_MATCH} if the publisher category is the ad's",
        "+ latent user bias N(0, 0.3). True conversion logit (given a click) = base + advertiser effect",
        "+ ad conversion quality + age effect + 0.4 if affine.",
        "The model sees the latent ad quality and user bias only through noisy observed rates (`prior_ctr`,",
        "`ctr_hist`, simulated from finite histories). 2% of rows simulate a user-store miss (demographics",
        "MISSING, default dense values), 1-2% a request without os, country or banner position.",
        "",
        _row("split", "seed", "rows", "CTR"),
        _row("---", "---", "---", "---"),
        _row("train", data["train_seed"], f"{data['train_rows']:,}", f"{data['train_ctr']:.4f}"),
        _row("held-out", data["holdout_seed"], f"{data['holdout_rows']:,}", f"{data['holdout_ctr']:.4f}"),
        "",
        f"Held-out clicks: {data['holdout_clicks']:,}, conversion rate per click {data['holdout_cvr']:.4f}.",
        f"World seed {data['world_seed']}. The store snapshots (`data/snapshots/*.jsonl.gz`) hold the same",
        "entities' observable attributes, byte-for-byte reproducible.",
        "",
        "## Held-out results",
        "",
    ]
    lines += _metrics_table(result)
    lines += [
        "",
        "pCVR is scored on clicked held-out rows only, as it is P(conversion given click). The ad prior",
        "baseline scores `prior_ctr` / `prior_cvr` (what the gateway's fallback scorer serves).",
        "",
        "### pCTR calibration per decile of predicted pCTR (held-out)",
        "",
    ]
    lines += _calibration_table(result, "pctr")
    lines += ["", "### pCVR calibration per decile of predicted pCVR (clicked held-out rows)", ""]
    lines += _calibration_table(result, "pcvr")
    lines += [
        "",
        "## Versions",
        "",
        _row("version", "differs by", "seed", "embedding dim", "top MLP", "train seconds", "ONNX bytes"),
        _row("---", "---", "---", "---", "---", "---", "---"),
    ]
    for v, m in versions:
        lines.append(
            _row(
                v,
                m["description"],
                m["seed"],
                m["model"]["embedding_dim"],
                " x ".join(str(h) for h in m["model"]["top_hidden"]),
                m["train"]["seconds"],
                f"{m['onnx']['bytes']:,}",
            )
        )
    first = versions[0][1]["train"]
    lines += [
        "",
        f"Both: Adam lr {first['learning_rate']} (linear decay to 10%), batch {first['batch_size']},",
        f"{first['epochs']} epoch(s), embeddings N(0, 0.05). pCVR is trained on clicked rows only (its",
        f"loss is masked to clicks, weight {first['cvr_weight']}), not ESMM. One pass over fresh rows: a",
        "second epoch lets the id embeddings memorise and held-out AUC falls. onnxruntime matches torch",
        "within 1e-5 on 1,000 held-out rows at export (checked by `training/export.py`).",
        "",
        f"Training: `{result['command']}` on 2 CPU threads, {result['total_seconds']} s end to end",
        "(data, snapshots, both versions, export, evaluation).",
        "",
    ]
    return "\n".join(lines)
