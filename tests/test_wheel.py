"""The package as a user gets it (SPEC §14): build the wheel, install it with ``[fastapi]`` into
a fresh virtualenv, and run ``clerk-tinybird demo`` from an empty directory — no checkout."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from leaks import summary

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _copy_tree(target: Path) -> None:
    """What ``git`` would ship: tracked and new files, nothing ignored (no caches, venvs)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in (n.decode() for n in listed if n):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def test_the_wheel_installs_and_runs_the_demo_from_an_empty_directory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    tree, dist, venv, empty = (tmp_path / n for n in ("tree", "dist", "venv", "empty"))
    for folder in (tree, dist, empty):
        folder.mkdir()
    _copy_tree(tree)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(tree)],
        check=True,
        timeout=300,
    )
    [wheel] = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(n) for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = [n for n in names if n.endswith("entry_points.txt")]
        scripts = archive.read(entry_points[0]).decode() if entry_points else ""
    assert "clerk_tinybird_middleware/examples/starlette_app/index.html" in names
    assert "clerk_tinybird_middleware/examples/flask_app/app.py" in names
    assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in names)
    assert b"Requires-Dist: cryptography" in metadata
    assert b"Provides-Extra: fastapi" in metadata
    assert "pytest11" not in scripts  # the plugin is opt-in

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    started = time.monotonic()
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[fastapi]"],
        check=True,
        timeout=600,
    )
    installed = time.monotonic() - started

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLERK_", "TINYBIRD_"))}
    env.pop("PYTHONPATH", None)
    started = time.monotonic()
    with subprocess.Popen(
        [str(venv / "bin" / "clerk-tinybird"), "demo", "--port", "0"],
        cwd=empty,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as demo:
        try:
            assert demo.stdout is not None
            url = None
            deadline = time.monotonic() + 60
            lines = []
            while time.monotonic() < deadline and url is None:
                line = demo.stdout.readline()
                if not line:
                    break
                lines.append(line)
                found = re.search(r"Dashboard\s+(http://\S+?)/?\s*$", line)
                url = found.group(1) if found else None
            assert url is not None, "".join(lines)
            page = httpx.get(f"{url}/dev/sign-in", timeout=10)
            first_page = time.monotonic() - started
            assert page.status_code == 200
            assert "sign-in" in page.text.lower()
        finally:
            demo.terminate()
            demo.wait(timeout=20)
    summary(request.config).add(
        "the wheel, in a fresh virtualenv",
        f"pip install '{wheel.name}[fastapi]': {installed:.1f} s; "
        f"`clerk-tinybird demo` to the first page: {first_page:.1f} s",
    )
