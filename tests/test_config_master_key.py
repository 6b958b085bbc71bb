"""LiteLLM's `general_settings.master_key` in config.yaml is the master key when LITELLM_MASTER_KEY is not set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOW = "import django; django.setup(); from django.conf import settings; print(settings.MASTER_KEY)"


def master_key(directory: Path, **env: str) -> str:
    base = {"PATH": os.environ["PATH"], "HOME": str(directory), "PYTHONPATH": str(ROOT),
            "PORTAL_DATA_DIR": str(directory / "data"), "DJANGO_SETTINGS_MODULE": "portal.settings"}
    done = subprocess.run([sys.executable, "-c", SHOW], cwd=directory, env={**base, **env}, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize(("written", "env", "expected"), [
    ("sk-from-config", {}, "sk-from-config"),
    ("os.environ/MY_PROXY_KEY", {"MY_PROXY_KEY": "sk-from-named-variable"}, "sk-from-named-variable"),
    ("sk-from-config", {"LITELLM_MASTER_KEY": "sk-from-environment"}, "sk-from-environment"),
])
def test_the_configs_master_key_is_used_unless_the_environment_sets_one(tmp_path, written, env, expected):
    (tmp_path / "config.yaml").write_text(f"model_list: []\ngeneral_settings:\n  master_key: {written}\n")
    assert master_key(tmp_path, **env) == expected


def test_without_one_anywhere_a_key_is_generated(tmp_path):
    (tmp_path / "config.yaml").write_text("model_list: []\n")
    assert master_key(tmp_path).startswith("sk-master-")
    assert (tmp_path / "data" / "master_key").read_text().startswith("sk-master-")
