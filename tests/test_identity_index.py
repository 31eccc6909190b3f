"""Real-time identification against the published identity index (crmlab.identity_index), on SQLite
and on a real PostgreSQL server (own identity schema): matches, per-field evidence without values,
provisional keys found again and read back as the next run's 'touchpoint' customers."""
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from crmlab import identity, identity_index, publish, sources

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


@pytest.fixture(scope="module")
def fitted():
    src = sources.load(SAMPLE)
    rec = src.customers
    m = identity.RecordMatcher(random_state=0).fit(rec)
    return rec, m, m.predict(rec)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def published(request, fitted, tmp_path):
    """(url, identity schema) of a publication of the sample's key map and identity index."""
    rec, m, km = fitted
    if request.param == "sqlite":
        url, schema = publish.default_url(tmp_path), None
    else:
        url, main_schema = request.getfixturevalue("postgres_schema")
        schema = f"{main_schema}_id"
        request.addfinalizer(lambda: _drop(url, schema))
    publish.publish({"customer_key_map": km.astype({"source_id": str})}, url,
                    identity=identity_index.identity_tables(identity_index.index_rows(rec, km, m), km, m,
                                                            schema=schema or "crmlab_identity", role="crmlab_t_identity_reader"))
    return url, schema or "crmlab_identity", km


def _drop(url, schema):
    eng = sa.create_engine(url)
    with eng.begin() as c:
        c.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    eng.dispose()


def test_identify_matches_explains_and_keeps_provisional_persons(published):
    url, schema, km = published
    hold = pd.read_csv(SAMPLE / "truth" / "identify_holdout.csv", dtype=str).head(60)
    idf = identity_index.Identifier(url, schema)
    try:
        got = [idf.identify({f: r[f] for f in identity_index.PERSON_FIELDS if isinstance(r[f], str)}, create=False)
               for r in hold.to_dict("records")]
        known = hold["customer_id"].notna().to_numpy()
        assert sum(g["status"] == "matched" for g, k in zip(got, known) if k) >= 0.95 * known.sum()
        one = next(g for g in got if g["status"] == "matched")
        assert set(one) >= {"customer_key", "match_probability", "evidence", "candidates_compared"}
        assert {e["field"] for e in one["evidence"]} == {"first_name", "last_name", "dob", "email", "phone", "address"}
        assert one["customer_key"] in set(km["customer_key"]) and one["match_probability"] >= 0.9

        person = {"first_name": "Ottoline", "last_name": "Quaritch", "dob": "1971-03-14", "postcode": "LS6 2AB",
                  "email": "o.quaritch@example.org"}
        assert idf.identify(person, create=False)["status"] == "unknown"
        first = idf.identify(person)
        assert first["status"] == "provisional" and first["customer_key"].startswith("P")
        again = idf.identify({**person, "first_name": "OTTOLINE", "email": None})
        assert again["customer_key"] == first["customer_key"] and again["status"] == "provisional"
        persons = sources.read_provisional_persons(url, schema)
        assert persons["source_id"].tolist() == [first["customer_key"]]
        assert persons.iloc[0][["first_name", "last_name", "postcode"]].tolist() == ["Ottoline", "Quaritch", "LS6 2AB"]
    finally:
        idf.close()
    if url.startswith("postgresql"):            # the person data sits in its own schema, not beside the scores
        eng = sa.create_engine(url)
        with eng.connect() as c:
            assert "identity_provisional" in sa.inspect(c).get_table_names(schema=schema)
            assert "identity_provisional" not in sa.inspect(c).get_table_names()
        eng.dispose()


def test_identify_without_a_published_index_is_a_clear_error(tmp_path):
    url = publish.default_url(tmp_path)
    publish.publish({"customer_key_map": pd.DataFrame({"source_system": ["web"], "source_id": ["W1"],
                                                       "customer_key": ["K1"], "match_confidence": [1.0]})}, url)
    idf = identity_index.Identifier(url)
    with pytest.raises(publish.PublishError, match="no identity index is published"):
        idf.identify({"last_name": "Smith", "postcode": "SW1A 1AA"})
    idf.close()
