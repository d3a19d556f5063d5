"""Training the LightGBM lambdarank ranker: early stopping, and optionally a small
hyper-parameter search, both judged on the valid split only (test is never looked at)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import lightgbm as lgb
import numpy as np

from recsys.errors import RecsysError
from recsys.ranker_model import Ranker
from training.ranker_data import RankerData


@dataclass
class RankerConfig:
    num_leaves: int = 31
    learning_rate: float = 0.05
    min_data_in_leaf: int = 50
    feature_fraction: float = 0.9
    # No row bagging: on amazon-scientific valid it changed nothing (NDCG@10 0.1064 without,
    # 0.1062 with 0.8; benchmarks/results/settings_amazon_valid.json), and on a small site's
    # few dozen label groups it left a ranker that stopped after one tree.
    bagging_fraction: float = 1.0
    bagging_freq: int = 0
    lambda_l2: float = 1.0
    max_rounds: int = 1000
    early_stopping_rounds: int = 50
    eval_at: tuple[int, ...] = (10,)
    truncation_level: int = 50
    # After early stopping has chosen the number of trees on valid, fit the kept ranker again on
    # the training and valid groups together, with the trees scaled by their share of groups.
    # Chosen on valid alone (benchmarks/refit_valid.py: the valid users split in halves, a
    # ranker stopped on one half and refit with it, scored on the other). The bundle's ranker
    # then has seen the valid clicks: its valid metrics are no longer held out.
    refit_on_valid: bool = True
    seed: int = 0
    threads: int = 0
    log_every: int = 50
    # Below these the ranker is not used (the bundle serves the retrieval order, marked): a
    # lambdarank model learned from a handful of queries, or stopped after a tree or two, gives
    # near-constant scores, which rank worse than the sources' own order.
    min_train_groups: int = 10
    min_trees: int = 2
    extra: dict = field(default_factory=dict)
    # Settings to try (each a dict of the fields above, e.g. {"num_leaves": 63}); the one with
    # the best valid NDCG after early stopping is kept. Empty: train once with the fields above.
    search: tuple[dict, ...] = ()

    def params(self) -> dict:
        return {
            "objective": "lambdarank", "metric": "ndcg", "eval_at": list(self.eval_at),
            "num_leaves": self.num_leaves, "learning_rate": self.learning_rate,
            "min_data_in_leaf": self.min_data_in_leaf, "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction, "bagging_freq": self.bagging_freq,
            "lambda_l2": self.lambda_l2, "lambdarank_truncation_level": self.truncation_level,
            "seed": self.seed, "deterministic": True, "force_row_wise": True,
            "num_threads": self.threads, "verbosity": -1, **self.extra,
        }

    def to_dict(self) -> dict:
        out = asdict(self)
        out["eval_at"] = list(self.eval_at)
        out["search"] = [dict(s) for s in self.search]
        return out


def train_ranker(train: RankerData, valid: RankerData, features: list[str],
                 config: RankerConfig, *, log=print, progress=None) -> tuple[Ranker, dict]:
    """Fit lambdarank on `train` groups, stop early on `valid` NDCG; returns the model and a report.

    The report's "used" is False (and "not_used_because" says why, also logged as one warning
    line) when the data was too small to learn a ranking: the bundle then serves the retrieval
    order. `progress` (a bar with `update(n)`) advances once per boosting round.
    """
    if train.n_groups == 0:
        raise RecsysError("no training group has a clicked item among its candidates: "
                          "not enough click history to train a ranker")
    if valid.n_groups == 0:
        raise RecsysError("no valid group has a clicked item among its candidates: "
                          "cannot early-stop the ranker")
    train_set = lgb.Dataset(train.features.select(features).to_numpy(), label=train.labels,
                            group=train.groups, feature_name=features, free_raw_data=True)
    valid_set = lgb.Dataset(valid.features.select(features).to_numpy(), label=valid.labels,
                            group=valid.groups, reference=train_set, feature_name=features)
    started = time.perf_counter()
    metric = f"ndcg@{config.eval_at[0]}"
    tried = []
    for override in (config.search or ({},)):
        unknown = set(override) - set(RankerConfig.__dataclass_fields__) - {"search"}
        if unknown:
            raise ValueError(f"unknown ranker settings {sorted(unknown)} in the search")
        setting = replace(config, **override, search=())
        booster, score = _fit(train_set, valid_set, setting, metric,
                              shared_dataset=bool(config.search), progress=progress)
        tried.append({"setting": override, f"valid_{metric}_candidates": score,
                      "best_iteration": int(booster.best_iteration), "booster": booster,
                      "config": setting})
        if config.search:
            log(f"ranker search {override}: valid {metric} {score:.4f} "
                f"at {booster.best_iteration} trees")
    chosen = max(tried, key=lambda t: (t[f"valid_{metric}_candidates"], -tried.index(t)))
    booster, setting = chosen["booster"], chosen["config"]
    report = {
        "best_iteration": int(booster.best_iteration),
        f"valid_{metric}_candidates": chosen[f"valid_{metric}_candidates"],
        "train_groups": train.n_groups, "train_cases": train.n_cases,
        "train_rows": int(train.features.height),
        "valid_groups": valid.n_groups, "valid_cases": valid.n_cases,
        "train_candidate_recall": train.candidate_recall,
        "valid_candidate_recall": valid.candidate_recall,
        "seconds": round(time.perf_counter() - started, 2),
        "config": setting.to_dict(),
        "gain_importance": gain_importance(booster, features, booster.best_iteration),
    }
    if config.search:
        report["search"] = [{k: v for k, v in t.items() if k not in ("booster", "config")}
                            for t in tried]
    # Keep only the trees up to the best iteration, so the saved model is the selected one.
    best = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
    log(f"ranker: {report['best_iteration']} trees, valid {metric} over candidates "
        f"{report[f'valid_{metric}_candidates']:.4f} in {report['seconds']:.1f}s")
    ranker = Ranker(best, features, threads=config.threads)
    problems = too_little_to_rank(report, ranker.predict(valid.features), config)
    report["used"] = not problems
    if problems:
        report["not_used_because"] = problems
        log(f"warning: the ranker is not used: {'; '.join(problems)}; the bundle serves the "
            "retrieval order (answers marked \"degraded\"); more click history fixes this")
    elif setting.refit_on_valid:
        ranker, report["refit_on_valid"] = refit_on_valid(train, valid, features, setting,
                                                          report["best_iteration"])
        report["gain_importance"] = gain_importance(ranker.booster, features)
        log(f"ranker: fit again on train and valid groups, {report['refit_on_valid']['trees']} "
            "trees")
    return ranker, report


def refit_on_valid(train: RankerData, valid: RankerData, features: list[str],
                   config: RankerConfig, best_iteration: int) -> tuple[Ranker, dict]:
    """The chosen setting fit again on the train and valid groups together, for the number of
    trees early stopping chose scaled by how many more groups it now learns from."""
    started = time.perf_counter()
    trees = max(1, round(best_iteration * (train.n_groups + valid.n_groups) / train.n_groups))
    both = lgb.Dataset(
        np.vstack([train.features.select(features).to_numpy(),
                   valid.features.select(features).to_numpy()]),
        label=np.concatenate([train.labels, valid.labels]), group=train.groups + valid.groups,
        feature_name=features, free_raw_data=True)
    booster = lgb.train(config.params(), both, num_boost_round=trees)
    return Ranker(booster, features, threads=config.threads), {
        "trees": trees, "groups": train.n_groups + valid.n_groups,
        "seconds": round(time.perf_counter() - started, 2)}


def gain_importance(booster: lgb.Booster, features: list[str],
                    iteration: int | None = None) -> dict[str, float]:
    """Each feature's total split gain (up to `iteration` trees; None: all), for the report."""
    gains = booster.feature_importance("gain", iteration=iteration)
    return dict(zip(features, np.asarray(gains).round(2).tolist(), strict=True))


def too_little_to_rank(report: dict, valid_scores: np.ndarray, config: RankerConfig) -> list[str]:
    """Why this ranker cannot rank (empty when it can): too few groups, trees, or one score."""
    problems = []
    if report["train_groups"] < config.min_train_groups:
        problems.append(f"it learned from {report['train_groups']} query groups (at least "
                        f"{config.min_train_groups} needed)")
    if report["best_iteration"] < config.min_trees:
        problems.append(f"it kept {report['best_iteration']} tree(s) (at least "
                        f"{config.min_trees} needed)")
    if valid_scores.size and np.ptp(valid_scores) == 0:
        problems.append("it gives every valid candidate the same score")
    return problems


def _fit(train_set: lgb.Dataset, valid_set: lgb.Dataset, config: RankerConfig,
         metric: str, *, shared_dataset: bool = False,
         progress=None) -> tuple[lgb.Booster, float]:
    """One lambdarank fit with early stopping on valid; returns it and its best valid score."""
    record: dict = {}
    params = config.params()
    if shared_dataset:   # one binned Dataset serves every searched setting (min_data_in_leaf too)
        params["feature_pre_filter"] = False

    def fail_on_nan(env: lgb.callback.CallbackEnv) -> None:
        for _, name, value, _ in env.evaluation_result_list:
            if not math.isfinite(value):
                raise RecsysError(f"ranker metric {name} became {value} at round {env.iteration}")

    def advance(env: lgb.callback.CallbackEnv) -> None:
        progress.update(1)

    # with a progress bar the rounds show there, not as unlabelled metric lines
    report_rounds = advance if progress is not None else \
        lgb.log_evaluation(config.log_every) if config.log_every else (lambda env: None)
    booster = lgb.train(
        params, train_set, num_boost_round=config.max_rounds,
        valid_sets=[valid_set], valid_names=["valid"],
        callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False),
                   report_rounds, lgb.record_evaluation(record), fail_on_nan],
    )
    curve = record.get("valid", {}).get(metric, [])
    return booster, float(curve[booster.best_iteration - 1]) if curve else float("-inf")
