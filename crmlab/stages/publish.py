"""Stage 60: decisions per customer and the versioned publication every touchpoint reads."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from .. import (affinity, decisions, decisions_dask, engine, identity, identity_dask, identity_index, online_store,
               publish, targets)
from ..errors import CrmlabError
from ..score_figures import PreviousScores, ScoreFigures, drift_columns
from ..table_parts import TableParts


@dataclass
class PublishResult:
    """What stage 60 decided and published, for its report: the figures of the scores
    (:class:`~crmlab.score_figures.ScoreFigures`), the rules with their customer counts, the version
    current before as drift compares it (:class:`~crmlab.score_figures.PreviousScores`) and the drift
    (None on a first publication), the published version and the tables (in Dask mode the scores,
    offers and recent contacts are :class:`~crmlab.table_parts.TableParts` left on the workers)."""

    url: str
    cutoff: pd.Timestamp
    figures: ScoreFigures
    rules: pd.DataFrame
    guarded: set
    previous: PreviousScores | None
    drift: pd.DataFrame | None
    version: int
    tables: dict


def run_publish(ctx) -> PublishResult:
    """Score and decide every customer, then publish ``customer_scores``, ``customer_key_map``,
    ``affinity_rules``, ``segment_profiles`` and what decisions at the moment of contact read
    (``customer_offers``, ``recent_contacts``, ``decision_policy``; plus the identity index apart) as a
    new version (atomically; the previous stays restorable) and record it in ``artifacts/published.json``."""
    D, PUB = ctx.params["decisions"], ctx.params["publish"]
    url = PUB["url"] or publish.default_url(PUB["dir"])
    products = ctx.sources()["products"]
    key_map = ctx.read_artifact("customer_key_map")
    ev = ctx.events()
    cutoff = targets.cutoffs(ev.last_date, ctx.params["propensity"]["horizon_days"])["score"]
    dnc = decisions.read_do_not_contact(D["do_not_contact"], key_map) if D["do_not_contact"] else set()
    guarded = affinity.sensitive_items(products, ctx.params["affinity"]["sensitive_categories"])
    client = engine.client(ctx.params["engine"])
    fixed = (products, D, cutoff, dnc, guarded, PUB["offers"])
    if client is None:
        inputs = (ctx.read_artifact("customer_segments"), ctx.read_artifact("customer_value"),
                  ctx.optional_artifact("customer_propensity"), ctx.optional_artifact("customer_recommendations"))
        return _decide_and_publish(ctx, url, key_map, cutoff, guarded, products,
                                   decisions.decide_tables(ev, *inputs, *fixed))
    # by parts of the customers on the cluster, which read the score tables themselves: the same tables,
    # left on the workers and published from there a part at a time; a worker lost on the way costs one
    # more try
    files = (ctx.artifact_file("customer_segments"), ctx.artifact_file("customer_value"),
             ctx.optional_artifact("customer_propensity", file=True),
             ctx.optional_artifact("customer_recommendations", file=True))
    return engine.retry_lost(lambda: _decide_and_publish(
        ctx, url, key_map, cutoff, guarded, products,
        decisions_dask.decide_by_parts(client, ctx.params["engine"]["partition_rows"], ev, *files, *fixed)),
        "the decisions and their publication")


def _decide_and_publish(ctx, url, key_map, cutoff, guarded, products, decided) -> PublishResult:
    """Check the decided (scores, offers, recent contacts) and publish them with the run's other tables."""
    D, PUB = ctx.params["decisions"], ctx.params["publish"]
    scores, offers, recent = decided
    columns = drift_columns(scores.meta if isinstance(scores, TableParts) else scores)
    previous = PreviousScores.read(url, columns)         # the scores drift compares, a column at a time
    figures = ScoreFigures.compute(scores, guarded, previous)
    if figures.guarded_offers:
        raise CrmlabError(f"{figures.guarded_offers} next best offers are guarded products: nothing published")
    rules = pd.DataFrame(D["rules"]).set_index("name")
    rules["customers"] = figures.counts["rule"].reindex(rules.index).fillna(0).astype(int)
    drift = figures.drift(previous, PUB["drift_psi"]) if previous is not None else None
    tables = {"customer_scores": scores,
              "customer_key_map": key_map.astype({"source_id": str, "source_system": str, "customer_key": str}),
              "affinity_rules": ctx.read_artifact("affinity_rules"),
              "segment_profiles": ctx.read_artifact("segment_profiles"),
              # what a touchpoint needs to decide at the moment of contact (POST /v1/decide)
              "customer_offers": offers.astype({"customer_key": str, "product_id": str}),
              "recent_contacts": recent,
              "decision_policy": decisions.policy_table(D, cutoff, decisions.guarded(products, guarded))}
    ident = None
    if PUB["identity"]:                             # the identity index, apart from the touchpoint tables
        matcher = identity.RecordMatcher.from_dict(json.loads(ctx.read_artifact("identity_model")["model"].iloc[0]))
        src, client = ctx.sources(), engine.client(ctx.params["engine"])
        files = None if client is None else (src.part_files() or {}).get("customers")
        # in Dask mode made by the workers from the sources' parts and the key map's artifact, left there
        index = (identity_index.index_rows(src.customers, key_map, matcher) if files is None else
                 identity_dask.index_rows_by_parts(client, files, ctx.artifact_file("customer_key_map"), matcher))
        ident = identity_index.identity_tables(index, key_map, matcher, PUB["identity_schema"], PUB["identity_role"])
    version = publish.publish(tables, url, PUB["dir"], keep=PUB["keep"], note=f"run {ctx.run_dir.name}", progress=print,
                              writers=PUB["writers"],
                              identity=ident)
    if PUB["redis"]:                                # the online store follows: filled, then its pointer switched
        online_store.sync(url, PUB["redis"], PUB["redis_prefix"], progress=print)
    (ctx.run_dir / "artifacts" / "published.json").write_text(
        pd.Series({"version": version, "url": publish._safe(url), "dir": PUB["dir"]}).to_json())
    return PublishResult(url, cutoff, figures, rules, guarded, previous, drift, version, tables)
