"""Stage 70: campaign contacts joined to later behaviour, lift against the control groups."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .. import engine, events_dask, measure
from ..errors import CrmlabError
from ..events import CustomerEvents

#: the columns of the ``contact_responses`` artifact
CONTACT_RESPONSE_COLUMNS = ["contact_id", "customer_key", "campaign_id", "group", "contact_date", "responded",
                    "response_order_id", "response_date", "response_value", "attribution"]


@dataclass
class MeasureResult:
    """What stage 70 measured, for its report: responses per contact, lift per campaign and per
    segment (``segment_by``)."""

    events: CustomerEvents
    responses: pd.DataFrame
    campaigns: pd.DataFrame
    lift: pd.DataFrame
    segment_by: str
    by_segment: pd.DataFrame


def run_measure(ctx) -> MeasureResult:
    """Attribute responses (each campaign's window, or ``measure.window_days``), measure lift overall
    and by segment; write ``campaign_lift`` and ``contact_responses``."""
    M = ctx.params["measure"]
    ev = ctx.events()
    if ev.contacts is None:
        raise CrmlabError("this run's inputs have no 'contacts' and 'campaigns' tables: nothing to measure "
                          "(drop 70_measure from 'stages')")
    responses = ev.contacts
    if M["window_days"] is not None:
        responses = measure.attribute_responses(ev.contacts, ev.orders, window_days=M["window_days"])
    campaigns = ctx.sources()["campaigns"].set_index("campaign_id")
    lift = measure.lift_table(responses)
    seg_name = M["segment"]
    if seg_name == "age_band":
        seg = measure.age_band(ev.profile, responses["contact_date"].min())
    else:
        seg = ctx.read_artifact("customer_segments").set_index("customer_key")[seg_name]   # names 50_segments if missing
    by_seg = measure.lift_table(measure.add_segment(responses, seg, seg_name), [seg_name])
    ctx.write_artifact("campaign_lift", pd.concat([lift.assign(segment_by="all", segment="all"),
                                                   by_seg.rename(columns={seg_name: "segment"}).assign(segment_by=seg_name)],
                                                  ignore_index=True).astype({"segment": str}))
    ctx.write_artifact("contact_responses", responses[CONTACT_RESPONSE_COLUMNS])
    return MeasureResult(ev, responses, campaigns, lift, seg_name, by_seg)


def uplift_inputs(ctx, r: MeasureResult):
    """:func:`crmlab.measure.campaign_features` of the stage's responses (the uplift model's inputs) and
    the share of the contacted customers they cover: those of a random sample of customers where there
    are more than ``measure.uplift_rows`` contacts. With ``engine.kind: dask`` the features at each
    campaign's start are computed by parts of the customers and only the sample's rows are fetched."""
    E, M = ctx.params["engine"], ctx.params["measure"]
    keys = r.responses["customer_key"]
    who = measure.customer_sample(keys, M["uplift_rows"], ctx.params["seed"])
    share = 1.0 if who is None else len(who) / keys.nunique()
    return (*measure.campaign_features(r.events, r.responses, customers=who,
                                       features=events_dask.rows_on(engine.client(E), r.events, E["partition_rows"])),
            share)
