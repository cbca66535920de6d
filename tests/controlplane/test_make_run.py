"""`make run` installs everything the processes it starts need, the dev environment's runtime included.

The suite itself runs in `make test`'s fuller virtualenv, where a requirement missing from
`make run`'s install would go unnoticed until a new user's first deploy to `dev` crashed
with "No module named 'uvicorn'". So this asks make what it would run to install (without
running it) and follows every `-r` from there.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from itertools import pairwise
from pathlib import Path

from tests.conftest import ROOT


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            names |= requirement_names(path.parent / line[3:].strip())
        elif line:
            names.add(re.split(r"[\[=<>!~ ;]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def installed_by_make(target: str) -> set[str]:
    # -B: print the recipe even where the stamp file is up to date; -n: print, do not run.
    recipe = subprocess.run(["make", "-nB", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    names = set()
    for line in recipe.splitlines():
        words = shlex.split(line)
        if "pip" in words and "install" in words:
            for flag, value in pairwise(words):
                if flag == "-r":
                    names |= requirement_names(ROOT / value)
    return names


def test_make_run_installs_what_the_local_target_runs():
    installed = installed_by_make(".venv/.run-installed")
    assert {"django", "celery", "gunicorn"} <= installed, installed  # the parse found the install
    # The dev environment runs models with this virtualenv's Python: `python -m inference_runtime`.
    missing = requirement_names(ROOT / "inference_runtime" / "requirements.txt") - installed
    assert not missing, f"make run does not install {sorted(missing)}, which inference_runtime needs"
