"""The demo report in a real browser: headless Chromium loads it without console errors, the DOM holds its
tables and inlined pictures, and a screenshot is kept as a test artifact (``test-artifacts/report.png``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from test_demo import parse_page, quick_demo  # noqa: F401  (the shared session fixture)

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium")
CONSOLE_ERRORS = ("Uncaught", "ERROR:CONSOLE")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (make test installs Debian's chromium "
                       "via scripts/ensure_chromium.sh)"),
]


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(tag in line for tag in CONSOLE_ERRORS)]


def test_report_loads_in_headless_chromium_without_console_errors_and_is_screenshotted(quick_demo, tmp_path):
    url = (quick_demo / "report.html").resolve().as_uri()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    run = _chromium(tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000", url)
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console_errors(run.stderr) == []
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank image


def test_report_dom_holds_the_tables_and_inlined_images(quick_demo, tmp_path):
    url = (quick_demo / "report.html").resolve().as_uri()
    run = _chromium(tmp_path / "profile-dom", "--dump-dom", url)
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console_errors(run.stderr) == []
    page = parse_page(run.stdout)
    assert page.count("table") >= 6  # ablation, per-class IoU, settings + budget curve, per concept, teacher strength
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(images) >= 8
    assert all(a.get("src", "").startswith("data:image/png;base64,") for a in images)
    alts = {a.get("alt") for a in images}
    assert {"mIoU against training budget", "IoU gain against caption mention rate",
            "curation ablation against teacher strength"} <= alts
    text = "".join(page.text)
    assert "Ablation" in text and "GT recall" in text and "cocu" in text and "teacher-dense" in text
    for heading in ("Training budget", "Where the gain comes from", "Teacher strength"):
        assert heading in text
