"""Plain names and number formats shared by every report, plot and table (no plotting imports).

``label(name)`` turns column, feature and field names into plain language (one mapping, used everywhere);
``money``, ``pct``, ``pp``, ``num`` and ``date`` format numbers the way reports show them; ``money_label`` puts the
run's currency (``report.currency`` in params, set by ``crmlab.report.use``) on an axis.
"""
from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd

MISSING = "–"
_CURRENCY = {"code": "GBP"}    # report.currency of the run (report.use)

# Plain-language names of columns, features and fields (one mapping, used by every report).
LABELS = {
    # person fields
    "first_name": "First name", "last_name": "Last name", "dob": "Date of birth", "dob_str": "Date of birth",
    "email": "E-mail", "phone": "Phone", "postcode": "Postcode", "address": "Street address",
    "street": "Street", "postcode_area": "Postcode area", "source_system": "Source system",
    "source_id": "Record id", "customer_key": "Customer key", "created_at": "Sign-up date",
    # blocking keys and comparisons (crmlab.identity)
    "names_sorted": "Both names (either order)", "first_initial": "First initial", "last_soundex": "Surname sound",
    "postcode_sector": "Postcode sector", "postcode_district": "Postcode district", "dob_year": "Birth year",
    "first_name_std": "First name", "last_name_std": "Last name", "email_std": "E-mail", "phone_std": "Phone",
    "postcode_std": "Postcode", "address_std": "Address", "log2_bayes_factor": "Evidence (bits)",
    "pairs_completeness": "True pairs kept", "reduction_ratio": "Pairs avoided", "blocks_skipped": "Blocks skipped",
    "match_share": "Share matching", "accepted_pairs": "Accepted pairs", "probability": "Match probability",
    "weight": "Match weight (bits)",
    # customer features (crmlab.features)
    "recency_days": "Days since last order", "tenure_days": "Days since first order", "orders": "Orders",
    "spend": "Spend", "order_value": "Average order value", "interpurchase_days": "Days between orders",
    "overdue": "Overdue (days since last order / usual gap)", "age": "Age (years)",
    "n_systems": "Source systems known in", "email_opt_in": "E-mail opt-in", "mail_opt_in": "Mail opt-in",
    "sms_opt_in": "SMS opt-in", "has_email": "Has e-mail", "has_phone": "Has phone",
    "first_channel": "First order channel", "top_department": "Top department",
    "contacts": "Campaign contacts", "responses": "Campaign responses", "response_rate": "Response rate",
    "days_since_contact": "Days since last contact",
    # scores
    "attrition": "Attrition", "attrition_risk": "Attrition risk", "mean_attrition_risk": "Mean attrition risk",
    "mean_risk": "Mean attrition risk", "response": "Campaign response", "p_alive": "Probability alive",
    "value": "Customer value", "expected_purchases_365d": "Expected purchases, next 365 days",
    "mean_value": "Mean customer value", "value_share": "Share of value",
    "share": "Share of customers", "customers": "Customers", "segment": "Segment",
    "value_risk_cell": "Value x risk cell", "treatment": "Treatment", "next_best_offer": "Next best offer",
    "next_best_offer_name": "Next best offer", "preferred_channel": "Preferred channel",
    "preferred_medium": "Preferred medium", "contact": "Contact", "score_version": "Score version",
    "roc_auc": "ROC AUC", "pr_auc": "PR AUC", "brier": "Brier score", "base_rate": "Base rate",
    "top_decile_lift": "Top-decile lift", "n": "Customers",
    # statistics
    "estimate": "Estimate", "se": "Standard error", "ci_low": "95% CI from", "ci_high": "95% CI to",
    "mae": "Mean absolute error", "rmse": "Root mean squared error", "predicted_total": "Predicted total",
    "actual_total": "Actual total", "aggregate_error": "Aggregate error", "psi": "PSI", "log_loss": "Log loss",
    "stability_ari": "Stability (ARI)", "bic": "BIC", "refits": "Refits",
    "cum_share_customers": "Customers so far", "cum_share_positives": "Events so far", "cum_lift": "Cumulative lift",
    "mean_score": "Mean score", "positives": "Events", "rate": "Observed rate",
    # affinity
    "antecedents": "If a basket has", "consequents": "it also has", "support": "Support",
    "confidence": "Confidence", "lift": "Lift", "leverage": "Leverage", "conviction": "Conviction",
}
_PREFIXES = sorted((k for k in LABELS if "_" in k), key=len, reverse=True)
_PATTERNS = [
    (re.compile(r"^share_channel_(.+)$"), "Share of orders: {0}"),
    (re.compile(r"^share_dept_(.+)$"), "Share of spend: {0}"),
    (re.compile(r"^share_medium_(.+)$"), "Share of contacts: {0}"),
    (re.compile(r"^orders_(\d+)d$"), "Orders, last {0} days"),
    (re.compile(r"^spend_(\d+)d$"), "Spend, last {0} days"),
    (re.compile(r"^trend_(\d+)d$"), "Order trend, last {0} days vs the {0} before"),
    (re.compile(r"^propensity_(.+)$"), "Propensity: {0}"),
    (re.compile(r"^dept_(.+)$"), "Buys {0}"),
    (re.compile(r"^clv_(\d+)m$"), "Customer value, next {0} months"),
    (re.compile(r"^(.+)_std$"), "{0} (standardised)"),
]


def label(name) -> str:
    """The plain-language name of a column, feature or field (``num__recency_days`` -> "Days since last order")."""
    s = str(name)
    s = re.sub(r"^(num|cat|remainder|bin|ohe)__", "", s)
    if s in LABELS:
        return LABELS[s]
    for pat, fmt in _PATTERNS:
        m = pat.match(s)
        if m:
            return fmt.format(*(label(g) if fmt.startswith("{0} (") else _words(g) for g in m.groups()))
    for key in _PREFIXES:                        # a one-hot column: "first_channel_store" -> "First order channel: store"
        if s.startswith(key + "_"):
            return f"{LABELS[key]}: {s[len(key) + 1:]}"
    return _words(s)


def _words(s: str) -> str:
    s = s.replace("__", " ").replace("_", " ").strip()
    return s[:1].upper() + s[1:] if s else s


def rule_label(rule: str) -> str:
    """A blocking rule or combination in plain words: "last_name_std & postcode_sector" ->
    "Last name & Postcode sector"."""
    return " & ".join(label(p.strip()) for p in str(rule).split("&"))


def labels(names) -> list[str]:
    return [label(n) for n in names]


# ----------------------------------------------------------------------------- numbers

def money(x, currency: str | None = None, digits: int = 0) -> str:
    currency = currency or _CURRENCY["code"]
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return MISSING
    sym = {"GBP": "£", "EUR": "€", "USD": "$"}.get(currency)
    body = f"{abs(x):,.{digits}f}"
    sign = "-" if x < 0 else ""
    return f"{sign}{sym}{body}" if sym else f"{sign}{body} {currency}"


def currency() -> str:
    """The currency code of the run's reports (``report.currency``)."""
    return _CURRENCY["code"]


def money_label(what: str) -> str:
    """An axis label for money: "order value" -> "order value (£)"."""
    code = _CURRENCY["code"]
    return f"{what} ({ {'GBP': '£', 'EUR': '€', 'USD': '$'}.get(code, code) })"


def pct(x, digits: int = 1) -> str:
    return MISSING if _missing(x) else f"{x:.{digits}%}"


def pp(x, digits: int = 1) -> str:
    """A difference of two rates in percentage points (0.05 -> "+5.0 pp")."""
    return MISSING if _missing(x) else f"{100 * x:+.{digits}f} pp"


def num(x, digits: int = 0) -> str:
    return MISSING if _missing(x) else f"{x:,.{digits}f}"


def date(x) -> str:
    return MISSING if _missing(x) else f"{pd.Timestamp(x):%d %b %Y}"


def _missing(x) -> bool:
    try:
        return x is None or bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def inline_markdown(text: str) -> str:
    """Text as HTML, escaped, with Markdown **bold** and *italic* kept (report summaries, index.html)."""
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))
    return re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<i>\1</i>", t)
