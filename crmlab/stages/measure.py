"""Stage 70: campaign contacts joined to later behaviour, lift against the control groups.

Every figure comes from parts of the customers (here one, the whole; in Dask mode with the events left
as parts on the workers, each part's on its worker): lift counts added up, responses counted by how
they were attributed, the uplift model's sample of customers drawn by a hash of the key. The contacts
are never read into the stage's process in Dask mode; ``contact_responses`` is written by the workers.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd

from .. import engine, events_dask, measure, measure_dask, truth
from ..errors import CrmlabError
from ..events import ROW, CustomerEvents, read_table

#: the columns of the ``contact_responses`` artifact
CONTACT_RESPONSE_COLUMNS = ["contact_id", "customer_key", "campaign_id", "group", "contact_date", "responded",
                    "response_order_id", "response_date", "response_value", "attribution"]
#: the columns of the uplift model's sample of contacts
SAMPLE_COLUMNS = ["contact_id", "customer_key", "campaign_id", "group", "responded"]


@dataclass
class MeasureResult:
    """What stage 70 measured, for its report: lift per campaign and per segment (``segment_by``),
    contacts and responses counted, each campaign's start, and the contacts of the uplift model's
    sample of customers (``share`` of the contacted customers). ``measured``: the events whose contacts
    carry the responses measured (``events`` but where ``measure.window_days`` attributed them anew)."""

    events: CustomerEvents
    measured: CustomerEvents
    campaigns: pd.DataFrame
    lift: pd.DataFrame
    segment_by: str
    by_segment: pd.DataFrame
    by_attribution: pd.Series
    starts: pd.Series
    sample: pd.DataFrame
    share: float

    @property
    def contacts(self) -> int:
        """Contacts measured (treated and control)."""
        return int(self.lift["contacts_treated"].sum() + self.lift["contacts_control"].sum())

    @property
    def responded(self) -> int:
        """Contacts answered (treated and control)."""
        return int(self.lift["responders_treated"].sum() + self.lift["responders_control"].sum())


def run_measure(ctx) -> MeasureResult:
    """Attribute responses (each campaign's window, or ``measure.window_days``), measure lift overall
    and by segment; write ``campaign_lift`` and ``contact_responses``."""
    M = ctx.params["measure"]
    ev = ctx.events()
    if not ev.has_contacts:
        raise CrmlabError("this run's inputs have no 'contacts' and 'campaigns' tables: nothing to measure "
                          "(drop 70_measure from 'stages')")
    segments = None if M["segment"] == "age_band" else ctx.artifact_file("customer_segments")  # names 50_segments if missing
    r, responses = measure_events(ev, M, ctx.params["seed"], segments, ctx.sources()["campaigns"].set_index("campaign_id"))
    ctx.write_artifact("campaign_lift", lift_artifact(r))
    ctx.write_artifact("contact_responses", responses)
    return r


def measure_events(ev: CustomerEvents, M: dict, seed: int, segments=None, campaigns=None):
    """Stage 70's figures (:class:`MeasureResult`) and its ``contact_responses`` table (a frame; where
    the events are parts on a Dask cluster, :class:`~crmlab.table_parts.TableParts` left there) from
    events with contacts, by parts of the customers. ``M``: the ``measure`` parameters; ``segments``:
    the ``customer_segments`` table (a frame or the path of its artifact; None for ``age_band``)."""
    counted = ev
    if M["window_days"] is not None:                # attributed anew over every contact and order, here
        responses = measure.attribute_responses(ev.contacts, ev.orders, window_days=M["window_days"])
        counted = replace(ev.empty(), contacts=responses, profile=ev.profile)
    got = counted.map_parts(_contact_counts, what="contacts per campaign")
    starts = pd.concat([g[0] for g in got]).groupby(level=0).min()
    contacts = sum(g[1] for g in got)
    share = measure.sample_share(contacts, M["uplift_rows"])
    args = (M["segment"], starts.min(), share, seed)
    if counted.parts is None:
        summary, responses = _measured(counted, read_table(segments), *args)
        summaries, responses = [summary], responses.drop(columns=ROW)
    else:
        summaries, responses = measure_dask.measure_by_parts(counted.parts, _measured, segments, *args,
                                                             rows=contacts)
    lift = measure.lift_of(measure.add_lift_counts([s["lift"] for s in summaries]))
    by_seg = measure.lift_of(measure.add_lift_counts([s["by_segment"] for s in summaries]))
    sampled = sum(s["sampled"] for s in summaries) / max(1, sum(s["customers"] for s in summaries))
    r = MeasureResult(ev, counted, campaigns, lift, M["segment"], by_seg,
                      pd.concat([s["attribution"] for s in summaries]).groupby(level=0).sum(), starts,
                      pd.concat([s["sample"] for s in summaries]).sort_index(kind="stable"),
                      1.0 if share >= 1 else sampled)
    return r, responses


def lift_artifact(r: MeasureResult) -> pd.DataFrame:
    """The ``campaign_lift`` artifact: the lift per campaign (segment ``all``), then per segment."""
    return pd.concat([r.lift.assign(segment_by="all", segment="all"),
                      r.by_segment.rename(columns={r.segment_by: "segment"}).assign(segment_by=r.segment_by)],
                     ignore_index=True).astype({"segment": str})


def _contact_counts(ev: CustomerEvents) -> tuple[pd.Series, int]:
    return measure.campaign_starts(ev.contacts), len(ev.contacts)


def _measured(ev: CustomerEvents, segments: pd.DataFrame | None, seg_name: str, at, share: float,
              seed: int) -> tuple[dict, pd.DataFrame]:
    """One part's figures (lift counts overall and by segment, responses by attribution, contacted and
    sampled customers, the sample's contacts) and its ``contact_responses`` rows numbered as in the whole."""
    r = ev.contacts
    seg = measure.age_band(ev.profile, at) if segments is None else segments.set_index("customer_key")[seg_name]
    keys = r["customer_key"].to_numpy(dtype=object)
    picked = measure.in_sample(keys, share, seed)
    summary = {"lift": measure.lift_counts(r), "by_segment": _segment_counts(r, seg, seg_name),
               "attribution": r["attribution"].value_counts(), "customers": len(pd.unique(keys)),
               "sampled": len(pd.unique(keys[picked])), "sample": r.loc[picked, SAMPLE_COLUMNS]}
    return summary, r[CONTACT_RESPONSE_COLUMNS].assign(**{ROW: r.index.to_numpy()})


def _segment_counts(contacts: pd.DataFrame, segments: pd.Series, name: str) -> pd.DataFrame:
    return measure.lift_counts(measure.add_segment(contacts, segments, name), [name])


def _lift_by(ev: CustomerEvents, segments: pd.DataFrame, name: str) -> pd.DataFrame:
    """Lift counts by ``segments``' column ``name``, of the contacts of the customers it names."""
    seg = segments.set_index("customer_key")[name]
    c = ev.contacts
    return _segment_counts(c[c["customer_key"].isin(seg.index).to_numpy()], seg, name)


def uplift_inputs(ctx, r: MeasureResult):
    """:func:`crmlab.measure.campaign_features` of the uplift model's sample of contacts (the contacts of
    the customers in a hashed random sample, where there are more than ``measure.uplift_rows`` contacts)
    and the share of the contacted customers it is. With ``engine.kind: dask`` the features at each
    campaign's start are computed by parts of the customers and only the sample's rows are fetched."""
    E = ctx.params["engine"]
    return (*measure.campaign_features(r.events, r.sample, starts=r.starts,
                                       features=events_dask.rows_on(engine.client(E), r.events, E["partition_rows"])),
            r.share)


def uplift_truth(ctx, r: MeasureResult):
    """The measured increments per campaign and true life stage against the planted ones
    (:func:`crmlab.truth.uplift_check`; the lift by life stage counted by parts, on the contacts of a
    random sample of ``truth.TRUE_CUSTOMERS`` customer keys where there are more): (table, lift table by
    life stage, campaigns planted with no effect, (customers sampled, of all) or None), or None outside
    synthetic worlds or without a key map."""
    world = ctx.params["data"]["dir"]
    key_map = ctx.optional_artifact("customer_key_map", file=True)
    if key_map is None:
        return None
    life, total = truth.true_life_stage(world, key_map, truth.TRUE_CUSTOMERS, ctx.params["seed"])
    if life is None:
        return None
    stages = life.rename("life_stage").rename_axis("customer_key").reset_index()
    t = measure.lift_of(measure.add_lift_counts(r.measured.map_parts(_lift_by, "life_stage", tables=(stages,),
                                                                     what="lift by true life stage")))
    got = truth.uplift_check(world, t)
    sampled = (truth.TRUE_CUSTOMERS, total) if total > truth.TRUE_CUSTOMERS else None
    return None if got is None else (got[0], t, got[1], sampled)
