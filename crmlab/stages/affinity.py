"""Stage 20: association rules with their guards, and per-customer product recommendations."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .. import affinity, affinity_dask, engine
from ..table_parts import TableParts


#: Customers whose lines the report's evaluation reads at least, where the events are parts.
EVAL_SAMPLE = 200_000


@dataclass
class AffinityResult:
    """What stage 20 decided, for its report: order baskets of products and at ``level`` (in Dask mode
    :class:`~crmlab.affinity_dask.BasketParts` left on the workers), rules at
    ``level`` (with guards), the recommender and its recommendations (a frame; in Dask mode a
    :class:`~crmlab.table_parts.TableParts` left on the workers) with their ``counts``
    (:func:`crmlab.affinity.recommendation_counts`); ``names``: product names (None when rules are on a
    rolled-up level); ``lines``: the order lines the report's evaluation reads, those of ``lines_share``
    of the customers (a sample where the events are parts on a Dask cluster)."""

    products: pd.DataFrame
    lines: pd.DataFrame
    sensitive: set
    level: str
    product_baskets: "affinity.Baskets | affinity_dask.BasketParts"
    baskets: "affinity.Baskets | affinity_dask.BasketParts"
    names: pd.Series | None
    rules: pd.DataFrame
    recommender: affinity.ItemRecommender
    recommendations: "pd.DataFrame | TableParts"
    counts: dict
    lines_share: float = 1.0


def run_affinity(ctx) -> AffinityResult:
    """Mine and guard rules over order baskets (with ``engine.kind: dask`` on the cluster, the same
    itemsets), fit the recommender on customer baskets, write ``affinity_rules`` and
    ``customer_recommendations`` (sensitive products never recommended)."""
    P = ctx.params["affinity"]
    products = ctx.sources()["products"]
    names = products.set_index("product_id")["product_name"]
    ev = ctx.events()
    client, rows = engine.client(ctx.params["engine"]), ctx.params["engine"]["partition_rows"]

    def baskets_of(by):                # Dask: baskets by parts, made where the lines lie when they are parts
        if client is not None and ev.parts is not None:
            return affinity_dask.BasketParts.of_events(client, ev.parts.parts, by, products["product_id"])
        b = affinity.Baskets.from_frame(ev.lines, by, "product_id", products["product_id"])
        return b if client is None else affinity_dask.BasketParts.scatter(client, b, rows)
    sensitive = affinity.sensitive_items(products, P["sensitive_categories"])
    level = {"product": "product_id", "category": "category", "department": "department"}[P["level"]]
    product_baskets = baskets = baskets_of("order_id")
    if level != "product_id":
        baskets = baskets.roll_up(products.set_index("product_id")[level])
        names = None
    mine = None if client is None else (lambda b, support, max_len: affinity_dask.frequent_itemsets(
        client, b, support, max_len))                                  # Dask: by parts, the same itemsets
    rules = affinity.mine_rules(baskets, P, sensitive if level == "product_id" else (), names, itemsets=mine)
    ctx.write_artifact("affinity_rules", rules.drop(columns=["representativity"]))
    customer_baskets = baskets_of("customer_key")
    recommender = affinity.ItemRecommender(k=P["top_k"], similarity=P["similarity"], neighbours=P["neighbours"])
    recommender.fit(customer_baskets)                                  # Dask: co-occurrences counted by parts
    product_names = products.set_index("product_id")["product_name"]
    if client is None:
        recs = recommender.recommend(customer_baskets, exclude_items=sensitive)
        recs = affinity.published_recommendations(recs, product_names, sensitive)
        counts = affinity.recommendation_counts(recs, sensitive)
    else:                                          # the lists stay on the workers and are written as parts
        recs = affinity_dask.recommend_parts(client, recommender, customer_baskets, sensitive, rows,
                                             affinity.published_recommendations, product_names, sensitive)
        counts = affinity.add_recommendation_counts(recs.map(affinity.recommendation_counts, sensitive))
    ctx.write_artifact("customer_recommendations", recs)
    lines, share = ev.lines_sample(EVAL_SAMPLE)
    return AffinityResult(products, lines, sensitive, level, product_baskets, baskets, names, rules, recommender, recs,
                          counts, share)
