"""The touchpoint service, started for real (``crmlab serve`` under uvicorn on a loopback port) and
called over HTTP: each endpoint, auth failures, bad input, publishes during a stream of requests."""
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
import sqlalchemy as sa

from crmlab import publish, service
from crmlab.service import ServiceError, load_tokens
from conftest import READ, WRITE, start_service
from test_publish import tables


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request, tmp_path_factory):
    """A published database (version 1: SQLite, or a fresh PostgreSQL schema) and the service over it;
    yields (base URL, db URL, log file)."""
    tmp = tmp_path_factory.mktemp("service")
    extra = ()
    if request.param == "sqlite":
        url = publish.default_url(tmp)
    else:
        from conftest import fresh_schema

        schema = fresh_schema(request.getfixturevalue("postgres_server"))
        url, name = schema.__enter__()
        request.addfinalizer(lambda: schema.__exit__(None, None, None))
        extra = ("--identity-schema", f"{name}_id")     # never the server's shared crmlab_identity
    publish.publish(tables(1), url, folder=tmp / "published")
    with start_service(url, tmp, *extra) as (base, log):
        yield base, url, log


def stream_answers(url: str, headers: dict | None = None):
    """Ask for ``url`` again and again on a thread until ``stop`` is set: (thread, seen, errors, stop), where
    ``seen`` collects (time, score_version, treatment) of each answer and ``errors`` every failure."""
    seen, errors, stop = [], [], threading.Event()

    def client():
        with httpx.Client(headers=headers or {}, timeout=5) as c:
            while not stop.is_set():
                try:
                    b = c.get(url).json()
                    seen.append((time.perf_counter(), b["score_version"], b["treatment"]))
                except Exception as exc:                                   # noqa: BLE001 - counted, then asserted
                    errors.append(repr(exc))

    th = threading.Thread(target=client)
    th.start()
    time.sleep(0.3)
    return th, seen, errors, stop


def _h(token):
    return {"Authorization": f"Bearer {token}"}


def test_lookup_version_health_and_openapi(server):
    base, url, _ = server
    r = httpx.get(f"{base}/v1/customers/web/W17", headers=_h(READ))
    assert r.status_code == 200
    body = r.json()
    want = publish.read_table(url, "customer_scores").set_index("customer_key").loc["K000017"]
    assert body["customer_key"] == "K000017" and body["treatment"] == want["treatment"]
    assert body["contact"] is True and body["control"] is False and body["score_version"] == 1
    assert abs(body["value"] - want["value"]) < 1e-12
    assert set(body) == set(want.index) | {"customer_key"}
    r = httpx.get(f"{base}/v1/customers/store/S17", headers=_h(READ))
    assert r.json()["customer_key"] == "K000017"                          # any system's id, one customer
    r = httpx.get(f"{base}/v1/customers/web/NOPE", headers=_h(READ))
    assert r.status_code == 404 and "unknown customer" in r.json()["detail"]
    v = httpx.get(f"{base}/v1/version", headers=_h(READ)).json()
    assert v["version"] == publish.current_version(url) and v["model_version"] == "m1"
    assert httpx.get(f"{base}/health").json() == {"status": "ok", "version": v["version"]}
    schema = httpx.get(f"{base}/openapi.json").json()
    assert {"/v1/customers/{source_system}/{source_id}", "/v1/contacts", "/v1/identify", "/v1/version",
            "/health"} <= set(schema["paths"])
    assert httpx.get(f"{base}/docs").status_code == 200


def test_auth_failures(server):
    base, _, _ = server
    path = f"{base}/v1/customers/web/W1"
    assert httpx.get(path).status_code == 401
    assert httpx.get(path, headers={"Authorization": "Basic abc"}).status_code == 401
    r = httpx.get(path, headers=_h("not-a-token-of-ours-at-all"))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(f"{base}/v1/contacts", headers=_h(READ), json=_contact("c-auth"))
    assert r.status_code == 403 and "write" in r.json()["detail"]
    assert httpx.get(path, headers=_h(WRITE)).status_code == 200          # write tokens read too
    assert httpx.post(f"{base}/v1/identify", json={"last_name": "Smith", "postcode": "SW1A 1AA"}).status_code == 401


def test_identify_input_checks_and_no_index(server):
    """Person fields are validated (422 naming the field, never echoing the value); a database
    published without an identity index answers 503 with the reason."""
    base, _, log = server
    ok = {"first_name": "Zoë", "last_name": "Smith", "dob": "1980-02-29", "postcode": "SW1A 1AA"}
    r = httpx.post(f"{base}/v1/identify", headers=_h(READ), json=ok)
    assert r.status_code == 503 and "no identity index" in r.json()["detail"]
    for bad, field in (({"last_name": "Smith"}, ""), ({**ok, "dob": "1980-02-30"}, "dob"),
                       ({**ok, "phone": "0770;DROP"}, "phone"), ({**ok, "ssn": "123"}, "ssn"),
                       ({**ok, "postcode": "SW1A<script>"}, "postcode"), ({**ok, "last_name": "x" * 101}, "last_name")):
        r = httpx.post(f"{base}/v1/identify", headers=_h(READ), json=bad)
        assert r.status_code == 422, bad
        assert any(e["field"] == field for e in r.json()["errors"]), r.json()
        assert "Smith" not in r.text and "<script>" not in r.text and "DROP" not in r.text
    assert "Smith" not in log.read_text() and "SW1A" not in log.read_text()


def _contact(cid, **kw):
    return {"contact_id": cid, "campaign_id": "CMP01", "source_system": "web", "source_id": "W5",
            "channel": "phone", "offer": "P0001", "outcome": "responded", "ref_code": "R-77",
            "occurred_at": "2026-12-01T10:15:00+00:00", **kw}


def test_contacts_are_durable_and_idempotent(server):
    base, url, _ = server
    r = httpx.post(f"{base}/v1/contacts", headers=_h(WRITE), json=_contact("c-1"))
    assert r.status_code == 201 and r.json()["status"] == "recorded"
    with sa.create_engine(url).connect() as conn:                         # committed before the answer
        row = conn.execute(sa.text("SELECT * FROM touchpoint_contacts WHERE contact_id = 'c-1'")).mappings().one()
    assert row["outcome"] == "responded" and row["contact_group"] == "treatment" and row["source_id"] == "W5"
    r = httpx.post(f"{base}/v1/contacts", headers=_h(WRITE), json=_contact("c-1"))
    assert r.status_code == 200 and r.json()["status"] == "already recorded"
    r = httpx.post(f"{base}/v1/contacts", headers=_h(WRITE), json=_contact("c-1", outcome="declined"))
    assert r.status_code == 409
    with sa.create_engine(url).connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM touchpoint_contacts WHERE contact_id = 'c-1'")).scalar() == 1


def test_bad_input_is_422_naming_the_field_without_echoing_it(server):
    base, _, logfile = server
    secret = "Ada Lovelace 1815-12-10"
    cases = [_contact("c-2", channel="pigeon"), {k: v for k, v in _contact("c-3").items() if k != "source_id"},
             _contact("c-4", occurred_at="yesterday"), _contact("c-5", note=secret), _contact("", outcome="responded")]
    fields = ["channel", "source_id", "occurred_at", "note", "contact_id"]
    for body, f in zip(cases, fields):
        r = httpx.post(f"{base}/v1/contacts", headers=_h(WRITE), json=body)
        assert r.status_code == 422, body
        assert f in {e["field"] for e in r.json()["errors"]}
        assert secret not in r.text and "pigeon" not in r.text
    r = httpx.post(f"{base}/v1/contacts", headers=_h(WRITE), content=b"{not json", )
    assert r.status_code == 422
    r = httpx.post(f"{base}/v1/contacts", headers=_h(WRITE), json=_contact("c-6", offer="x" * 40_000))
    assert r.status_code == 413
    chunks = iter([b'{"contact_id": "' + b"x" * 10_000] * 3)                # no length given: counted as read
    r = httpx.post(f"{base}/v1/contacts", headers={**_h(WRITE), "Content-Type": "application/json"}, content=chunks)
    assert r.status_code == 413
    time.sleep(0.3)
    logged = logfile.read_text()
    assert "/v1/customers/{source_system}/{source_id}" in logged        # route templates, not the ids
    assert "POST /v1/contacts 413" in logged and "POST /v1/contacts 400" not in logged   # what clients got
    for leak in ("W17", "S17", secret, READ, WRITE, "R-77"):
        assert leak not in logged


def test_publishes_during_a_stream_of_requests(server):
    """Publishing versions 2 and 3 (and restoring 2) while a client keeps asking: no failed request,
    every answer one version (its treatment is that version's), versions never go back, and the new
    version is served within a second of the publish."""
    base, url, folder = server[0], server[1], server[2].parent / "published"
    th, seen, errors, stop = stream_answers(f"{base}/v1/customers/web/W3", _h(READ))
    marks = {}
    for tag in (2, 3):
        v = publish.publish(tables(tag), url, folder=folder)
        marks[v] = time.perf_counter()
        time.sleep(1.2)
    publish.restore(url, 2, folder=folder)
    marks["restore"] = time.perf_counter()
    time.sleep(1.2)
    stop.set()
    th.join()
    assert not errors and len(seen) > 50
    tag_of = {1: 1}
    for v in (2, 3):
        tag_of[v] = v
    for _, ver, treatment in seen:
        assert treatment == f"offer_{tag_of[ver]}"                        # never a mix of versions
    for v in (2, 3):
        later = [t for t, ver, _ in seen if ver == v and t > marks[v]]
        assert later and later[0] - marks[v] < 1.0
    after = [ver for t, ver, _ in seen if t > marks["restore"] + 1.0]
    assert after and set(after) == {2}


def test_token_files_and_start_up_errors(tmp_path):
    bad = tmp_path / "t.yaml"
    for text, msg in [("tokens: []", "non-empty list"), ("tokens: [{token: short, scopes: [read]}]", "16 characters"),
                      ("tokens: [{token: abcdefghijklmnopq, scopes: [admin]}]", "scopes"),
                      ("tokens: [{sha256: xyz, scopes: [read]}]", "64 hexadecimal"), ("{: nope", "not valid")]:
        bad.write_text(text)
        with pytest.raises(ServiceError, match=msg):
            load_tokens(bad)
    with pytest.raises(ServiceError, match="does not exist"):
        load_tokens(tmp_path / "missing.yaml")
    with pytest.raises(ServiceError, match="no bearer tokens"):
        service.create_app(service.ServiceConfig(db=publish.default_url(tmp_path)))
    r = subprocess.run([sys.executable, "-m", "crmlab", "serve", "--db", f"sqlite:///{tmp_path}/none.sqlite",
                        "--no-auth"], capture_output=True, text=True, timeout=60, env={**os.environ})
    assert r.returncode != 0 and "no published database" in r.stderr and "Traceback" not in r.stderr


def test_recorded_contacts_join_the_next_runs_contacts(server, tmp_path):
    """A contact recorded over HTTP is part of the next run's contacts input (id 'tp:...'), keyed to
    its customer and attributed to that customer's later order like any batch contact; a bounced one
    is not a contact; the run's input fingerprint changes with it (no stale reuse)."""
    from pathlib import Path

    from crmlab import config, events, pipeline, sources

    base, url, _ = server
    if not url.startswith("sqlite"):
        pytest.skip("the sample's run reads the SQLite publish target here")
    sample = Path(__file__).resolve().parents[1] / "data" / "sample"
    before = sources.load(sample, touchpoints_url=url)
    for cid, who, outcome in (("tp-run-1", "W884281c8", "contacted"), ("tp-run-2", "W884281c8", "bounced"),
                              ("tp-run-3", "W-signed-up-today", "contacted")):
        r = httpx.post(f"{base}/v1/contacts", headers=_h(WRITE), json=_contact(
            cid, campaign_id="WB25", source_system="web", source_id=who, channel="mail", outcome=outcome,
            ref_code=None, occurred_at="2025-04-08T09:00:00+02:00"))
        assert r.status_code == 201
    src = sources.load(sample, touchpoints_url=url)
    c = src["contacts"]
    new = c[c["contact_id"].astype(str) == "tp:tp-run-1"].iloc[0]
    assert len(c) == len(before["contacts"]) + 1
    assert not c["contact_id"].astype(str).eq("tp:tp-run-2").any()              # bounced: never reached
    assert (new["campaign_id"], new["source_id"], new["medium"], new["group"]) == ("WB25", "W884281c8", "mail",
                                                                                    "treatment")
    assert str(new["contact_date"])[:10] == "2025-04-08"
    assert src.fingerprints[sources.TOUCHPOINT_CONTACTS] != before.fingerprints.get(sources.TOUCHPOINT_CONTACTS)
    # a customer the inputs do not have yet (a sign-up at the till): left for a later run, said, not fatal
    assert "customer record not in the inputs" in src.set_aside[sources.TOUCHPOINT_CONTACTS]
    assert not c["contact_id"].astype(str).eq("tp:tp-run-3").any()
    key_map = src.customers[["source_system", "source_id"]].assign(
        customer_key=lambda d: d["source_system"] + ":" + d["source_id"].astype(str))
    ev = events.CustomerEvents.from_sources(src, key_map)
    mine = ev.contacts[ev.contacts["contact_id"].astype(str) == "tp:tp-run-1"].iloc[0]
    assert mine["customer_key"] == "web:W884281c8" and bool(mine["responded"])   # ordered 2025-04-19, in window
    # a run's parameters point at the same target: its input digests see the touchpoint table
    p = tmp_path / "p.yaml"
    p.write_text(f"data:\n  dir: {sample}\npublish:\n  url: {url}\nruns_dir: {tmp_path / 'runs'}\n")
    params = config.load(p)
    digests = pipeline._input_digests(params)
    assert sources.TOUCHPOINT_CONTACTS in digests                       # and the load records the same digest
    assert sources.load_params(params).fingerprints[sources.TOUCHPOINT_CONTACTS] == digests[sources.TOUCHPOINT_CONTACTS]
    off = config.load(p, ["data.touchpoint_contacts=false"])
    assert sources.TOUCHPOINT_CONTACTS not in pipeline._input_digests(off)
