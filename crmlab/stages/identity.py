"""Stage 10: recognise customers across source systems, write the key map and the run's events."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import engine, events_dask, identity, identity_dask, runs
from ..errors import CrmlabError
from ..events import CustomerEvents
from ..truth import record_truth


@dataclass
class IdentityResult:
    """What stage 10 decided, for its report.

    ``records``: in Dask mode the sources' Parquet parts (:class:`~crmlab.identity_dask.PartedRecords`:
    the record names held, other columns read for the rows asked), else the table;
    ``truth``: the planted customer of each record (synthetic worlds), else None; ``previous``: the
    key map whose keys were kept (path), ``kept_share``: the share of records seen before that kept
    their key; ``n_new``: records matched incrementally (None for a full match); ``pairs_of``: in
    Dask mode ``pairs`` is a uniform sample of this many candidate pairs (None: all of them);
    ``events``: None where the workers built them (read them with ``ctx.events()``).
    """

    records: pd.DataFrame | identity_dask.PartedRecords
    matcher: identity.RecordMatcher
    pairs: identity.PairScores
    key_map: pd.DataFrame
    events: CustomerEvents | None
    truth: np.ndarray | None = None
    previous: Path | None = None
    kept_share: float | None = None
    n_new: int | None = None
    pairs_of: int | None = None


#: Candidate pairs the report samples in Dask mode (the pairs themselves stay on the workers).
REPORT_PAIRS = 200_000


def find_previous_key_map(params: dict, exclude=None):
    """The key map of the latest successful run with the same ``run_name`` and publish target (for
    stable keys), or None: a CI or test run never lends its keys to a production run."""
    folder = runs.latest_ok(params["runs_dir"], run_name=params["run_name"], target=runs.publish_target(params),
                            exclude=exclude, need="customer_key_map")
    return None if folder is None else folder / "artifacts" / "customer_key_map.parquet"


def previous_key_map(ctx) -> Path | None:
    """The key map whose keys this run keeps (``identity.previous_key_map``: auto | a path | null)."""
    choice = ctx.params["identity"]["previous_key_map"]
    if choice == "auto":
        return find_previous_key_map(ctx.params, exclude=ctx.run_dir)
    if not choice:
        return None
    path = Path(choice)
    if not path.is_file():
        raise CrmlabError(f"identity.previous_key_map in {ctx.params['params_file']}: no file {path}")
    return path


def run_identity(ctx) -> IdentityResult:
    """Fit the matcher, score and cluster the candidate pairs, keep the previous run's keys, then
    write ``customer_key_map`` and the events (:mod:`crmlab.events`) every later stage reads."""
    P = ctx.params["identity"]
    src = ctx.sources()
    client = engine.client(ctx.params["engine"])
    parts = src.part_files() if client is not None else None
    previous = previous_key_map(ctx)
    prev_map = pd.read_parquet(previous) if previous is not None else None
    incremental = bool(P["incremental"] and prev_map is not None)
    # Dask: the records stay in the sources' parts, read by the workers (here only their names)
    records = identity_dask.PartedRecords(parts["customers"]) if parts is not None and not incremental \
        else src.customers
    truth = record_truth(ctx.params["data"]["dir"], records)
    matcher = identity.RecordMatcher(threshold=P["threshold"], mode=P["mode"], max_block=P["max_block"],
                                     max_cluster=P["max_cluster"], u_sample=P["u_sample"], random_state=ctx.params["seed"])
    if client is not None:                 # engine.kind dask: the candidate pairs on the workers, the same keys
        matcher = identity_dask.DaskRecordMatcher.like(matcher).on(client,
                                                                  partition_rows=ctx.params["engine"]["partition_rows"])
    matcher.fit(records)
    # Dask: the candidate pairs stay on the workers (the report samples them below)
    pairs = matcher.score_pairs(records) if client is None else None
    n_new = None
    if incremental:
        # nightly mode: records already keyed keep their keys; only new ones are matched against them
        known = records.merge(prev_map[["source_system", "source_id"]].astype({"source_id": "string"}),
                              on=["source_system", "source_id"], how="left", indicator=True)["_merge"].eq("both").to_numpy()
        km = matcher.match_new(records[known].reset_index(drop=True), prev_map, records[~known].reset_index(drop=True))
        key_map = records[["source_system", "source_id"]].merge(km, on=["source_system", "source_id"], how="left")
        matcher.n_oversized_ = 0
        n_new = int((~known).sum())
    elif client is not None:               # components and the guard on the workers' links
        key_map = matcher.predict(records, prev_map)
    else:
        labels = matcher.cluster(len(records), pairs)
        key_map = identity.key_map(records, labels, pairs, prev_map)
    kept = None
    if prev_map is not None:
        both = key_map.merge(prev_map.astype({"source_id": "string"}), on=["source_system", "source_id"])
        kept = float((both["customer_key_x"] == both["customer_key_y"]).mean()) if len(both) else float("nan")
    key_map_file = ctx.write_artifact("customer_key_map", key_map)
    # the fitted matcher, for the identity index that stage 60 publishes (real-time identification)
    ctx.write_artifact("identity_model", pd.DataFrame({"model": [json.dumps(matcher.to_dict())]}))
    if parts is not None:                  # the events built by the workers, as parts split by customer
        n = events_dask.parts_for(max(events_dask.table_rows(parts["order_lines"]), events_dask.table_rows(
            parts["orders"])), ctx.params["engine"]["partition_rows"])
        events_dask.build(client, parts, key_map_file, n, ctx.run_dir / "artifacts")   # read by the workers
        ev = None
    else:
        ev = CustomerEvents.from_sources(src, key_map)
        ctx.write_events(ev)
    sampled = None
    if client is not None:                 # the report's pairs: a uniform sample of the candidates
        pairs = matcher.pair_sample(records, REPORT_PAIRS, seed=ctx.params["seed"])
        sampled = int(matcher.blocking_["pairs"].iloc[-1])
    return IdentityResult(records, matcher, pairs, key_map, ev, truth, previous, kept, n_new, sampled)
