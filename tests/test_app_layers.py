"""The apps depend one way (portal -> gateway -> accounts -> tracking): no import cycle between them.

The contract is import-linter's, in pyproject.toml; `.ci/run` and `make lint` run it too. Here it runs with
the tests, so a cycle is caught by `make test` as well.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_lint_imports(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    lint_imports = str(Path(sys.executable).with_name("lint-imports"))
    return subprocess.run([lint_imports, "--no-cache", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "PYTHONPATH": str(cwd)})


def test_no_app_imports_an_app_above_it() -> None:
    done = run_lint_imports()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_an_import_inside_a_function_counts(tmp_path: Path) -> None:
    # The same contract over a copy of two apps in which accounts imports the gateway inside a function.
    for app in ("gateway", "accounts"):
        (tmp_path / app).mkdir()
        (tmp_path / app / "__init__.py").write_text("")
    (tmp_path / "gateway" / "views.py").write_text("from accounts import auth\n")
    (tmp_path / "accounts" / "auth.py").write_text("def f():\n    from gateway import views\n")
    config = tmp_path / "contract.ini"
    config.write_text(
        "[importlinter]\nroot_packages =\n    gateway\n    accounts\n\n"
        "[importlinter:contract:layers]\nname = layers\ntype = layers\nlayers =\n    gateway\n    accounts\n"
    )
    done = run_lint_imports("--config", str(config), cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "accounts.auth -> gateway.views" in done.stdout
