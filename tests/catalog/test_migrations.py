"""Catalog migrations form one chain, shipped revisions are never rewritten, and a catalog made
at any earlier revision opens and upgrades with its rows intact."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, select, text

from neve.catalog import Catalog
from neve.catalog import models as m
from neve.catalog.migrate import MIGRATIONS, alembic_config
from neve.errors import InvalidStateError


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(create_engine("sqlite://")))


def _chain() -> list[str]:
    """Revisions from the first to the newest."""
    return [rev.revision for rev in reversed(list(_scripts().walk_revisions()))]


def test_revisions_form_one_chain() -> None:
    scripts = _scripts()
    assert len(scripts.get_heads()) == 1, f"several heads: {scripts.get_heads()}"
    assert len(scripts.get_bases()) == 1, f"several bases: {scripts.get_bases()}"
    revisions = {rev.revision: rev for rev in scripts.walk_revisions()}
    for rev in revisions.values():
        assert rev.down_revision is None or rev.down_revision in revisions, rev.revision


def test_shipped_revisions_are_never_rewritten() -> None:
    """Every revision is listed in migrations/SHIPPED with its file's hash: a changed schema
    adds a revision on top (scripts/new_migration.py) and a line here."""
    shipped = {}
    for line in (MIGRATIONS / "SHIPPED").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            revision, digest = line.split()
            shipped[revision] = digest
    files = {rev.revision: Path(rev.path) for rev in _scripts().walk_revisions()}
    assert set(files) == set(shipped), "add each new revision to migrations/SHIPPED"
    for revision, path in files.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == shipped[revision], (
            f"revision {revision} ({path.name}) was rewritten after it shipped: restore it and "
            "add a new revision for the change"
        )


@pytest.mark.parametrize("revision", _chain())
def test_a_catalog_made_at_an_earlier_revision_upgrades_with_its_rows(
    tmp_path: Path, revision: str
) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    engine = create_engine(url)
    command.upgrade(alembic_config(engine), revision)
    with engine.begin() as conn:  # a row written by that version
        conn.execute(
            text(
                "INSERT INTO databases (name, owner_role, comment, created_on) "
                "VALUES ('OLD_DB', 'SYSADMIN', 'kept', '2026-01-01 00:00:00')"
            )
        )
    engine.dispose()
    catalog = Catalog(url)  # upgrades to the newest revision
    try:
        with catalog.engine.connect() as conn:
            assert (
                conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
                == (_chain()[-1])
            )
        with catalog.transaction() as s:
            db = s.scalar(select(m.Database).where(m.Database.name == "OLD_DB"))
            assert db is not None and db.comment == "kept"
    finally:
        catalog.dispose()


def test_a_catalog_at_an_unknown_revision_is_refused_clearly(tmp_path: Path) -> None:
    """A catalog made by a newer neve (or a development build whose migration was rewritten)
    names its revision, instead of Alembic's bare "Can't locate revision"."""
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    Catalog(url).dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '263ff379741e'"))
    engine.dispose()
    with pytest.raises(InvalidStateError, match="at revision 263ff379741e, which this neve"):
        Catalog(url)


def test_timestamps_come_back_as_aware_utc(tmp_path: Path) -> None:
    """One UTC column type: SQLite keeps no zone, yet every timestamp reads back aware in UTC;
    a naive value written is taken as UTC, an aware one is converted."""
    from datetime import UTC, datetime, timedelta, timezone

    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        plus2 = timezone(timedelta(hours=2))
        with catalog.transaction() as s:
            s.add(m.Database(name="NAIVE", owner_role="R", created_on=datetime(2026, 1, 1, 12)))
            s.add(m.Database(name="PLUS2", owner_role="R", created_on=datetime(2026, 1, 1, 12, tzinfo=plus2)))  # fmt: skip
        with catalog.transaction() as s:
            rows = {d.name: d.created_on for d in s.scalars(select(m.Database))}
        assert rows["NAIVE"] == datetime(2026, 1, 1, 12, tzinfo=UTC)
        assert rows["PLUS2"] == datetime(2026, 1, 1, 10, tzinfo=UTC)
        assert all(v.utcoffset() == timedelta(0) for v in rows.values())
    finally:
        catalog.dispose()
