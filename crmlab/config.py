"""Parameter files: defaults, loading, validation.

A parameter file is YAML. Every key must exist in :data:`DEFAULTS` (unknown or mistyped keys are
rejected with a suggestion, before any notebook starts), values must have the default's type, and
relative paths are resolved against the folder of the file that names them.
"""
from __future__ import annotations

import ast
import copy
import datetime as dt
import math
import os
import re
import difflib
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

#: Every parameter with its default. ``None`` defaults accept any scalar or None.
DEFAULTS: dict[str, Any] = {
    "run_name": "default",
    "runs_dir": "../runs",                # relative to the parameter file
    "notebooks_dir": "../notebooks",
    "stages": ["00_data_quality", "10_identity", "20_affinity", "30_value", "40_propensity", "50_segments",
               "60_publish", "70_measure"],   # notebook names, in order
    "data": {
        "dir": "../data/sample",          # CSV or Parquet files named after the tables
        "url": None,                      # SQLAlchemy URL; when set, tables are read from it
        "sql_schema": None,
        "systems": [],                    # customer source systems; [] = every customers_<system> found
        "as_of": None,                    # the data's as-of date (YYYY-MM-DD): later event dates are errors; null: today
        "touchpoint_contacts": True,      # add the contacts and provisional persons touchpoints recorded (service)
    },
    "quality": {
        "examples": 5,                    # offending rows shown per finding
        "top_values": 10,
        "sample_records": 200000,         # Dask mode: the report profiles a random sample of about this many customer records (with their orders, lines, contacts)
    },
    "identity": {
        "threshold": 0.9,                 # match probability at which two records are one customer
        "mode": "link_and_dedupe",        # link_and_dedupe | link | dedupe
        "max_block": 2000,                # larger blocks are skipped (and reported)
        "max_cluster": 25,                # larger clusters are split by raising the threshold
        "u_sample": 100000,               # random pairs for the fuzzy levels u-probabilities
        "previous_key_map": "auto",       # 'auto': the latest successful run's; a path; or null
        "incremental": False,             # with a previous key map: only records new since then are matched
        "review_pairs": 10,
    },
    "affinity": {
        "level": "product",               # product | category | department
        "min_support": 0.002,             # share of order baskets
        "min_confidence": 0.1,
        "max_len": 3,
        "fdr": 0.05,                      # false-discovery rate for rule significance
        "min_lift": 1.5,                  # customer-facing rules need at least this lift
        "max_rules": 500,                 # at most this many customer-facing rules
        "sensitive_categories": [],       # besides products flagged sensitive
        "top_k": 5,                       # recommendations per customer
        "holdout_days": 90,               # last days held out to evaluate recommendations
        "eval_customers": 50000,          # the evaluation recommends for a random sample of this many
        "similarity": "cosine",           # cosine | lift
        "neighbours": 30,
    },
    "value": {
        "model": "bgnbd",                 # bgnbd | mbgnbd | pareto
        "time_unit_days": 7.0,            # model time unit (7: weeks)
        "holdout_days": 182,              # last days held out to check accuracy (0: no check)
        "clv_months": 12,
        "discount_rate": 0.01,            # per month
        "margin": 0.3,                    # CLV counts margin x spend
        "covariates": [],                 # e.g. [first_channel]: acquisition channel
    },
    "propensity": {
        "horizon_days": 90,               # attrition = no order in the next N days; purchase windows too
        "model": "logistic",              # logistic | hgb
        "calibration": "sigmoid",         # sigmoid | isotonic | none
        "calibration_holdout": 0.2,       # share of rows the calibrator is fitted on (one model fit; 0: cross-fitted with cv folds, cv + 1 fits)
        "cv": 5,                          # folds for the calibration's out-of-fold predictions when calibration_holdout is 0
        "max_iter": 200,                  # boosting iterations (hgb)
        "fit_rows": 50000,                # each model is fitted on a stratified sample of at most this many rows (null: all)
        "attrition": True,
        "departments": [],                # purchase-propensity targets; [] = the most bought ones
        "top_departments": 4,
        "response": True,                 # campaign response model (needs contacts with >= 2 campaigns)
        "models": None,                   # folder of saved models: score with them, no refitting
        "importance_repeats": 3,          # permutation-importance repeats in the report (0: skip)
        "importance_rows": 20000,         # ... on a random sample of at most this many holdout rows
    },
    "segments": {
        "features": ["recency_days", "tenure_days", "orders", "order_value", "spend_365d", "share_channel_*",
                     "response_rate", "age"],   # feature columns (shell patterns) for behavioural segments
        "method": "kmeans",               # kmeans | gmm (diagonal Gaussian mixture)
        "k": None,                        # number of segments; null: chosen from k_min..k_max
        "k_min": 3,
        "k_max": 8,
        "criterion": "silhouette",        # silhouette | bic (gmm)
        "min_stability": 0.95,            # k must reach this mean bootstrap adjusted Rand index
        "bootstraps": 10,
        "select_rows": 20000,             # choosing k and checking stability on a random sample of this many customers
        "value_quantiles": [0.5, 0.8],    # value bands low | medium | high
        "risk_quantiles": [0.5, 0.8],     # attrition-risk bands
        "names": [                        # matched to fitted segments by their standardised centres;
            {"name": "Active web shoppers", "traits": {"share_channel_web": "high", "recency_days": "low"}},
            {"name": "Active store shoppers", "traits": {"share_channel_store": "high", "recency_days": "low"}},
            {"name": "Phone shoppers", "traits": {"share_channel_phone": "high"}},
            {"name": "Lapsed web shoppers", "traits": {"share_channel_web": "high", "recency_days": "high"}},
            {"name": "Lapsed store shoppers", "traits": {"share_channel_store": "high", "recency_days": "high"}},
            {"name": "Campaign responders", "traits": {"response_rate": "high"}},
            {"name": "Loyal regulars", "traits": {"orders": "high", "recency_days": "low"}},
            {"name": "New customers", "traits": {"tenure_days": "low"}},
        ],                                # a segment no name fits is named after its traits
        "model": None,                    # folder of a saved segmenter: assign without refitting
    },
    "decisions": {
        "version": "2026.11-1",           # recorded per customer; changing it redraws the control group
        "rules": [                        # first match wins; `when`: a pandas expression over the scores
            {"name": "retain valuable at risk", "when": "value_band == 'high' and risk_band != 'low'",
             "treatment": "retention_offer"},
            {"name": "win back", "when": "value_band == 'medium' and risk_band == 'high'", "treatment": "win_back_offer"},
            {"name": "grow valuable", "when": "value_band == 'high'", "treatment": "loyalty_reward"},
            {"name": "cross-sell", "when": "value_band == 'medium' and next_best_offer.notna()",
             "treatment": "cross_sell_offer"},
            {"name": "let go", "when": "value_band == 'low' and risk_band == 'high'", "treatment": "no_action"},
            {"name": "prospects", "when": "segment_id < 0", "treatment": "welcome"},
        ],
        "default_treatment": "newsletter",
        "no_contact_treatments": ["no_action"],
        "frequency_cap": 2,               # no contact when this many contacts in the last frequency_days
        "frequency_days": 30,
        "control_share": 0.1,             # held back at random (recorded) to measure the lift later
        "do_not_contact": None,           # CSV/Parquet with source_system, source_id never to contact
    },
    "publish": {
        "url": None,                      # SQLAlchemy URL; null: SQLite file crmlab.sqlite in publish.dir
        "dir": None,                      # Parquet copies (and the SQLite file); null: <runs_dir>/published/<run_name>
        "keep": 5,                        # versions kept for restore
        "writers": 4,                     # PostgreSQL: connections writing a version's tables at once (1-12)
        "drift_psi": 0.2,                 # warn when a score's distribution shifts more than this
        "lookups": 1000,                  # timed sample lookups in the report
        "redis": None,                    # Redis URL of the online store (e.g. redis://127.0.0.1:6379/0); null: none
        "redis_prefix": "crmlab",         # key prefix in Redis: one per publish target
        "offers": 5,                      # best offers kept per customer for decisions at the moment of contact
        "identity": True,                 # publish the identity index for real-time identification (service)
        "identity_schema": "crmlab_identity",   # PostgreSQL: its own schema, apart from the touchpoint tables
        "identity_role": "crmlab_identity_reader",  # PostgreSQL: the only role that may read it
    },
    "measure": {
        "window_days": None,              # response window; null: each campaign's window_days
        "segment": "age_band",            # age_band | segment (from 50_segments) | value_band | risk_band
        "uplift_holdout": 0.3,            # share of customers held out to evaluate the uplift model
        "uplift_rows": 200000,            # the uplift model learns from the contacts of a random sample of customers with about this many contacts (null: all)
    },
    "report": {
        "html": True,
        "reviewer_html": True,            # a --no-input copy for reviewers
        "show_personal_data": False,      # true: names, e-mails, phones, addresses unmasked (private review only)
        "cell_timeout": 1800,
        "currency": "GBP",                # money in reports: GBP, EUR, USD (symbol) or any code (written after)
    },
    "engine": {
        "threads": None,                  # threads for Numba, OpenMP and BLAS in every stage; null: the cores available
        "reuse": False,                   # true: copy a stage from an earlier run when nothing it read changed
        "kind": "local",                  # local | dask: stages that support it (30_value) compute on a Dask cluster
        "address": None,                  # dask: a scheduler (tcp://host:8786); null: a LocalCluster for the run
        "workers": None,                  # dask LocalCluster: worker processes (one thread each); null: the cores
        "memory_limit": None,             # dask LocalCluster: per worker, e.g. "6GB"; null: an equal share of RAM
        "partition_rows": 1000000,        # dask: rows per partition of the tables sent to the cluster
    },
    "seed": 42,
}

_PATH_KEYS = {("runs_dir",), ("notebooks_dir",), ("data", "dir"), ("propensity", "models"), ("segments", "model"),
              ("decisions", "do_not_contact"), ("publish", "dir")}


#: Allowed values of numeric parameters: (low, high, low inclusive, high inclusive); None = open.
_RANGES: dict[str, tuple] = {
    "quality.examples": (0, None, True, True), "quality.top_values": (1, None, True, True),
    "quality.sample_records": (1000, None, True, True),
    "identity.threshold": (0, 1, False, False), "identity.max_block": (2, None, True, True),
    "identity.max_cluster": (2, None, True, True), "identity.u_sample": (1, None, True, True),
    "identity.review_pairs": (0, None, True, True),
    "affinity.min_support": (0, 1, False, True), "affinity.min_confidence": (0, 1, True, True),
    "affinity.max_len": (1, None, True, True), "affinity.fdr": (0, 1, False, True),
    "affinity.min_lift": (0, None, True, True), "affinity.max_rules": (1, None, True, True),
    "affinity.top_k": (1, None, True, True), "affinity.holdout_days": (0, None, True, True),
    "affinity.eval_customers": (100, None, True, True),
    "affinity.neighbours": (1, None, True, True),
    "value.time_unit_days": (0, None, False, True), "value.holdout_days": (0, None, True, True),
    "value.clv_months": (1, 600, True, True), "value.discount_rate": (-1, 1, False, True),
    "value.margin": (0, None, True, True),
    "propensity.horizon_days": (1, None, True, True), "propensity.cv": (2, None, True, True),
    "propensity.calibration_holdout": (0, 1, True, False),
    "propensity.max_iter": (1, None, True, True), "propensity.top_departments": (0, None, True, True),
    "propensity.importance_repeats": (0, None, True, True), "propensity.importance_rows": (100, None, True, True),
    "propensity.fit_rows": (1000, None, True, True),
    "measure.uplift_rows": (1000, None, True, True),
    "segments.k_min": (2, None, True, True), "segments.k_max": (2, None, True, True),
    "segments.k": (1, None, True, True), "segments.min_stability": (0, 1, True, True),
    "segments.bootstraps": (1, None, True, True), "segments.select_rows": (100, None, True, True),
    "publish.keep": (1, None, True, True), "publish.writers": (1, 12, True, True), "publish.drift_psi": (0, None, False, True),
    "publish.lookups": (0, None, True, True), "publish.offers": (1, 100, True, True),
    "report.cell_timeout": (1, None, True, True),
    "engine.threads": (1, 4096, True, True), "engine.workers": (1, 4096, True, True),
    "engine.partition_rows": (1, None, True, True),
}

#: Allowed values of choice parameters.
_CHOICES: dict[str, tuple] = {
    "identity.mode": ("link_and_dedupe", "link", "dedupe"),
    "affinity.level": ("product", "category", "department"), "affinity.similarity": ("cosine", "lift"),
    "value.model": ("bgnbd", "mbgnbd", "pareto"),
    "propensity.model": ("logistic", "hgb"), "propensity.calibration": ("sigmoid", "isotonic", "none"),
    "segments.method": ("kmeans", "gmm"), "segments.criterion": ("silhouette", "bic"),
    "engine.kind": ("local", "dask"),
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_SYSTEM_DIRS = ("/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/proc", "/sys", "/dev", "/var/lib",
                "/var/log")


def check_rules(rules, origin: str) -> list[dict]:
    """``decisions.rules``: a non-empty list of {name, when, treatment}, names unique, each ``when`` a
    parseable expression; the error names ``origin`` and the rule."""
    if not isinstance(rules, list) or not rules:
        raise ConfigError(f"{origin}: parameter 'decisions.rules' must be a non-empty list of "
                          f"{{name, when, treatment}}, got {rules!r}")
    seen = set()
    for i, r in enumerate(rules, start=1):
        where = f"{origin}: decisions.rules #{i}"
        if not isinstance(r, dict):
            raise ConfigError(f"{where} must be a mapping with name, when and treatment; got {r!r}")
        missing, extra = {"name", "when", "treatment"} - set(r), set(r) - {"name", "when", "treatment"}
        if missing or extra:
            raise ConfigError(f"{where} ({r.get('name', '?')!r}) must have exactly name, when and treatment"
                              + (f"; missing {sorted(missing)}" if missing else "")
                              + (f"; unknown {sorted(extra)}" if extra else ""))
        for k in ("name", "when", "treatment"):
            if not isinstance(r[k], str) or not r[k].strip():
                raise ConfigError(f"{where} ({r.get('name', '?')!r}): '{k}' must be a non-empty text, got {r[k]!r}")
        if r["name"] in seen:
            raise ConfigError(f"{where}: the name {r['name']!r} is used by an earlier rule")
        seen.add(r["name"])
        try:
            ast.parse(r["when"].strip(), mode="eval")
        except SyntaxError as exc:
            raise ConfigError(f"{where} ({r['name']!r}): 'when' is not a valid expression: {r['when']!r} "
                              f"({exc.msg})") from None
    return rules


def _check_values(params: dict, origin: str, cli: dict | None = None) -> None:
    """Ranges, choices and names, each error naming the file (or the --set that gave the value) and key."""
    cli = cli or {}

    def at(key: str) -> str:
        hit = next((item for k, item in cli.items() if key == k or key.startswith(k + ".")), None)
        return f"command line --set {hit}" if hit else origin

    def get(dotted):
        node = params
        for k in dotted.split("."):
            node = node[k]
        return node

    for key, (lo, hi, lo_in, hi_in) in _RANGES.items():
        v = get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{at(key)}: parameter '{key}' must be a number, got {v!r}")
        if not math.isfinite(v) or (lo is not None and (v < lo if lo_in else v <= lo)) or (
                hi is not None and (v > hi if hi_in else v >= hi)):
            span = (f"{'[' if lo_in else '('}{lo if lo is not None else '-inf'}, "
                    f"{hi if hi is not None else 'inf'}{']' if hi_in else ')'}")
            raise ConfigError(f"{at(key)}: parameter '{key}' must lie in {span}, got {v!r}")
    for key, allowed in _CHOICES.items():
        if get(key) not in allowed:
            raise ConfigError(f"{at(key)}: parameter '{key}' must be one of {', '.join(allowed)}; got {get(key)!r}"
                              f"{_suggest(str(get(key)), allowed)}")
    if params["data"]["as_of"] is not None:
        try:
            pd_ts = dt.date.fromisoformat(str(params["data"]["as_of"]))
        except ValueError:
            raise ConfigError(f"{at('data.as_of')}: parameter 'data.as_of' must be a date like 2026-06-30, "
                              f"got {params['data']['as_of']!r}") from None
        params["data"]["as_of"] = pd_ts.isoformat()
    check_rules(params["decisions"]["rules"], at("decisions.rules"))
    if not isinstance(params["engine"]["reuse"], bool):
        raise ConfigError(f"{at('engine.reuse')}: parameter 'engine.reuse' must be true or false, got {params['engine']['reuse']!r}")
    if params["segments"]["k_min"] > params["segments"]["k_max"]:
        raise ConfigError(f"{origin}: segments.k_min ({params['segments']['k_min']}) exceeds segments.k_max "
                          f"({params['segments']['k_max']})")
    if not isinstance(params["run_name"], str) or not _NAME.match(params["run_name"]) or ".." in params["run_name"]:
        raise ConfigError(f"{at('run_name')}: run_name {params['run_name']!r} must be a plain name (letters, digits, "
                          "'_', '.', '-'; no '/' or '..'): it names a folder inside runs_dir")


def _check_paths(params: dict, origin: str) -> None:
    for key in ("runs_dir", "publish.dir"):
        node = params
        for k in key.split("."):
            node = node[k]
        if node is None:
            continue
        p = Path(node)
        if any(p == Path(d) or Path(d) in p.parents for d in _SYSTEM_DIRS):
            raise ConfigError(f"{origin}: parameter '{key}' points into the system folder {p}: crmlab writes "
                              "there; choose a folder of your own")


_URL_KEYS = (("data", "url"), ("publish", "url"))
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PASSWORD = re.compile(r"^([A-Za-z0-9+._-]+://[^:/@]+:)([^@]*)(@.*)$")


def _expand_secrets(params: dict, origin: str) -> None:
    """``${NAME}`` in a database URL is read from the environment (keep passwords out of files)."""
    for sect, key in _URL_KEYS:
        url = params[sect][key]
        if not isinstance(url, str):
            continue

        def env(m, sect=sect, key=key):
            if m.group(1) not in os.environ:
                raise ConfigError(f"{origin}: parameter '{sect}.{key}' refers to the environment variable "
                                  f"{m.group(1)}, which is not set")
            return os.environ[m.group(1)]
        params[sect][key] = _ENV_REF.sub(env, url)


def redacted(params: dict) -> dict:
    """A copy safe to store or show: each URL password becomes ``${CRMLAB_<SECTION>_URL_PASSWORD}``, and
    that variable is set in this process's environment, so stage kernels started from it (which read
    the stored file) still connect, while no file, manifest or log line holds the password."""
    out = copy.deepcopy(params)
    for sect, key in _URL_KEYS:
        url = out[sect][key]
        m = _PASSWORD.match(url) if isinstance(url, str) else None
        if m and m.group(2) and not _ENV_REF.fullmatch(m.group(2)):
            var = f"CRMLAB_{sect.upper()}_URL_PASSWORD"
            os.environ[var] = m.group(2)
            out[sect][key] = f"{m.group(1)}${{{var}}}{m.group(3)}"
    return out


def mask_url(text: str) -> str:
    """Text with every ``scheme://user:password@`` password shown as ***."""
    return re.sub(r"(://[^:/@\s]+:)[^@\s]*@", r"\1***@", str(text))


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check(user: dict, defaults: dict, where: str, origin: str) -> None:
    if not isinstance(user, dict):
        raise ConfigError(f"{origin}: '{where or 'top level'}' must be a mapping, got {type(user).__name__}")
    for key, value in user.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in defaults:
            raise ConfigError(f"{origin}: unknown parameter '{path}'{_suggest(str(key), defaults)}; "
                              f"known here: {', '.join(sorted(defaults))}")
        default = defaults[key]
        if isinstance(default, dict):
            _check(value, default, path, origin)
        elif default is None or value is None:
            continue
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{origin}: parameter '{path}' must be true or false, got {value!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    isinstance(default, int) and not isinstance(value, int)):
                raise ConfigError(f"{origin}: parameter '{path}' must be {type(default).__name__}, got {value!r}")
        elif not isinstance(value, type(default)):
            raise ConfigError(f"{origin}: parameter '{path}' must be {type(default).__name__}, got {value!r}")


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for i, p in enumerate(parents):
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"command line --set {dotted}: '{'.'.join(parents[:i + 1])}' is a single value, "
                              "not a group of parameters")
    d[leaf] = value


def load(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Load a parameter file, apply ``key.sub=value`` overrides, validate, resolve paths.

    The result is a plain dict with every key present; paths are absolute strings and
    ``params_file`` records where it came from.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file not found: {path}")
    try:
        user = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    _check(user, DEFAULTS, "", str(path))
    cli: dict[str, str] = {}                       # keys set on the command line (paths: relative to the cwd)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            val = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"command line --set {item}: not a valid value: {exc}") from None
        over: dict = {}
        _set_dotted(over, key.strip(), val)
        _check(over, DEFAULTS, "", f"command line --set {item}")
        _set_dotted(user, key.strip(), val)
        cli[key.strip()] = item
    origin = str(path) + (" (with --set " + ", ".join(overrides) + ")" if overrides else "")
    params = _merge(DEFAULTS, user)
    _check_values(params, origin, cli)
    _expand_secrets(params, origin)
    base = path.resolve().parent
    for keys in _PATH_KEYS:
        node = params
        for k in keys[:-1]:
            node = node[k]
        if node[keys[-1]] is not None:
            root = Path.cwd() if ".".join(keys) in cli else base
            node[keys[-1]] = str((root / node[keys[-1]]).resolve())
    if params["publish"]["dir"] is None:
        # each run_name publishes to its own target: a CI or test run never becomes the default's version
        params["publish"]["dir"] = str(Path(params["runs_dir"]) / "published" / params["run_name"])
    _check_paths(params, origin)
    params["params_file"] = str(path.resolve())
    return params


def dump(params: dict, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(params, sort_keys=False))
