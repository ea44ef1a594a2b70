"""Making sure the server software is present before a server is started.

npm packages go to a project-local, git-ignored ``.cache/node`` (never global);
cloudbox comes from PyPI but declares Python >= 3.14 and needs a one-line patch on
3.11. System packages (PostgreSQL, the ODBC drivers, node/npm) are installed by
``scripts/setup.sh``; here they are only looked for, with a message saying what to run.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from cutover.services._model import ServiceError
from cutover.services._proc import log_tail

NODE_PACKAGES = {"reqlite": "2.3.0", "unleash-server": "7.5.1"}
CLOUDBOX_VERSION = "0.2.3"
_FUTURE = "from __future__ import annotations"
_SETUP_HINT = "run scripts/setup.sh (as root) to install the system packages"


def project_root() -> Path:
    """The checkout this package runs from (``.cache`` lives there)."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def node_prefix() -> Path:
    return project_root() / ".cache" / "node"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock file: two concurrent installs would corrupt node_modules."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _installed_version(modules: Path, package: str) -> str | None:
    try:
        return str(json.loads((modules / package / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise ServiceError(f"node (Node.js >= 20) not found on PATH; {_SETUP_HINT}")
    return node


def ensure_node_packages() -> Path:
    """Install reqlite and unleash-server into ``.cache/node`` if missing; return node_modules."""
    prefix = node_prefix()
    modules = prefix / "node_modules"

    def missing() -> list[str]:
        return [
            f"{pkg}@{ver}"
            for pkg, ver in NODE_PACKAGES.items()
            if _installed_version(modules, pkg) != ver
        ]

    if not missing():
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise ServiceError(
            f"npm not found on PATH (needed for {', '.join(missing())}); {_SETUP_HINT}"
        )
    with _locked(prefix / ".install.lock"):
        wanted = missing()
        if not wanted:
            return modules
        log = prefix / "npm-install.log"
        argv = [
            npm,
            "install",
            "--prefix",
            str(prefix),
            "--save-exact",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            *wanted,
        ]
        with open(log, "wb") as fh:
            result = subprocess.run(
                argv, stdout=fh, stderr=subprocess.STDOUT, timeout=900, check=False
            )
        if result.returncode != 0 or missing():
            raise ServiceError(
                f"npm install {' '.join(wanted)} failed (status "
                f"{result.returncode}):\n{log_tail(log)}"
            )
    return modules


def ensure_cloudbox() -> None:
    """Install cloudbox (``--no-deps``: it over-declares Python) and patch it for 3.11."""
    if importlib.util.find_spec("cloudbox") is None:
        argv = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--ignore-requires-python",
            f"cloudbox=={CLOUDBOX_VERSION}",
        ]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        importlib.invalidate_caches()
        if result.returncode != 0 or importlib.util.find_spec("cloudbox") is None:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise ServiceError(f"pip install cloudbox=={CLOUDBOX_VERSION} failed:\n{tail}")
    patch_cloudbox()


def patch_cloudbox() -> bool:
    """Put ``from __future__ import annotations`` first in ``cloudbox/core/store.py``.

    Without it the module fails to import on 3.11 (``TypeError: 'function' object is
    not subscriptable``: it subscripts a name shadowed by a method in an annotation).
    Idempotent; returns True when the file was changed.
    """
    spec = importlib.util.find_spec("cloudbox")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("cloudbox is not installed; run scripts/setup.sh")
    store = Path(next(iter(spec.submodule_search_locations))) / "core" / "store.py"
    text = store.read_text(encoding="utf-8")
    if text.startswith(_FUTURE):
        return False
    tmp = store.with_suffix(".py.tmp")
    tmp.write_text(f"{_FUTURE}\n{text}", encoding="utf-8")
    os.replace(tmp, store)
    return True


def postgres_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/*/bin`` with initdb, else initdb's dir on PATH."""
    candidates = []
    for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
        if (bindir / "initdb").exists() and bindir.parent.name.isdigit():
            candidates.append((int(bindir.parent.name), bindir))
    if candidates:
        return max(candidates)[1]
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        return Path(initdb).resolve().parent
    raise ServiceError(
        f"PostgreSQL server binaries (initdb, pg_ctl) not found in "
        f"/usr/lib/postgresql/*/bin or on PATH; {_SETUP_HINT}"
    )


def require_odbc_driver(name: str) -> None:
    import pyodbc

    if name not in pyodbc.drivers():
        raise ServiceError(
            f"ODBC driver {{{name}}} is not registered with unixODBC "
            f"(odbcinst -q -d); {_SETUP_HINT}"
        )
