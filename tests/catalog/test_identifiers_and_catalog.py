import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from neve.catalog import Catalog
from neve.catalog import models as m
from neve.errors import InvalidIdentifierError
from neve.identifiers import ident, qualify, quote


def test_identifiers_are_case_insensitive_unless_quoted():
    assert ident("forecast") == ident("FORECAST") == "FORECAST"
    assert ident('"Forecast"') == "Forecast"
    assert quote("Forecast") == '"Forecast"'
    assert quote("FORECAST") == "FORECAST"


@pytest.mark.parametrize("bad", ["", "1abc", "a-b", "a b", '""', "x" * 300, "../etc"])
def test_invalid_identifiers_are_rejected_with_the_name(bad):
    with pytest.raises(InvalidIdentifierError) as exc:
        ident(bad, kind="model name")
    assert "model name" in str(exc.value) or "quoted" in str(exc.value)


def test_qualify_uses_current_database_and_schema():
    qn = qualify("m", database="ML", schema="REGISTRY")
    assert (qn.database, qn.schema, qn.name) == ("ML", "REGISTRY", "M")
    qn = qualify('db."My Schema".m', database=None, schema=None)
    assert (qn.database, qn.schema, qn.name) == ("DB", "My Schema", "M")
    with pytest.raises(InvalidIdentifierError, match="no current"):
        qualify("m", database=None, schema=None)


def test_catalog_migrates_and_rolls_back_failed_transactions(tmp_path):
    cat = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    assert "model_versions" in inspect(cat.engine).get_table_names()
    with pytest.raises(RuntimeError), cat.transaction() as s:
        s.add(m.Database(name="DB1", owner_role="SYSADMIN"))
        s.flush()
        raise RuntimeError("midway")
    with cat.transaction() as s:
        assert s.scalar(select(m.Database).where(m.Database.name == "DB1")) is None
    # migrating an up-to-date catalog again is a no-op
    Catalog(f"sqlite:///{tmp_path / 'c.db'}")


def test_catalog_on_postgresql_migrates_and_is_transactional(postgres_catalog_url):
    cat = Catalog(postgres_catalog_url)
    assert "services" in inspect(cat.engine).get_table_names()
    with cat.transaction() as s:
        s.add(m.Database(name="ML", owner_role="SYSADMIN"))
    with pytest.raises(IntegrityError), cat.transaction() as s:
        s.add(m.Database(name="ML", owner_role="SYSADMIN"))  # unique name
    with cat.transaction() as s:
        assert len(s.scalars(select(m.Database)).all()) == 1
    cat.dispose()
