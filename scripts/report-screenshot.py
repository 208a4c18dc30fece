"""docs/report-screenshot.png from a real run of this checkout (``make report-screenshot``).

In a fresh folder: the demo corpus, ``experiments/smoke.yaml`` on the ``local`` cluster (three runs),
one run whose model vocabulary is smaller than its data's (it fails at start, so the page shows a
failure), then ``hpcllm report`` of them, opened in headless Chromium at 1,400 px
(``tests/browser.py``) and captured whole. ``--results DIR`` takes the page of runs already made.

The PNG carries a digest of the code that draws the page (a ``tEXt`` chunk); tests/test_docs.py
fails when that code changes and the screenshot was not taken again, so it cannot show an older
page without anyone noticing.

    .venv/bin/python scripts/report-screenshot.py [--results DIR] [--output docs/report-screenshot.png]
"""

from __future__ import annotations

import argparse
import hashlib
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# The code that draws the page: a change to any of them changes the screenshot.
PAGE_SOURCES = ("hpcllm/collect/report.py", "hpcllm/collect/report.html.j2", "hpcllm/collect/interactive.py")
DIGEST_KEY = b"hpcllm-report-sources"


def page_digest(root: Path = ROOT) -> str:
    """sha256 over the page's source files, in order (their bytes, as committed)."""
    h = hashlib.sha256()
    for name in PAGE_SOURCES:
        h.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    return h.hexdigest()


def png_text(png: bytes, key: bytes) -> str | None:
    """The value of the PNG's ``tEXt`` chunk ``key``, None if it has none."""
    at = 8  # after the signature
    while at + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[at : at + 8])
        data = png[at + 8 : at + 8 + length]
        if kind == b"tEXt" and data.startswith(key + b"\0"):
            return data[len(key) + 1 :].decode("latin-1")
        at += 12 + length
    return None


def with_text(png: bytes, key: bytes, value: str) -> bytes:
    """``png`` with a ``tEXt`` chunk ``key: value`` right after its header chunk (IHDR)."""
    data = key + b"\0" + value.encode("latin-1")
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    ihdr_end = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def hpcllm(*args: str, cwd: Path, check: bool = True) -> None:
    cmd = [sys.executable, "-c", "from hpcllm.cli import main; main()", *args]
    print("$ hpcllm", " ".join(args), flush=True)
    subprocess.run(cmd, cwd=cwd, check=check)


def make_runs(work: Path) -> Path:
    """The smoke grid and one run that fails at start, on `local`, under ``work``; returns the results."""
    (work / "experiments").symlink_to(ROOT / "experiments")
    hpcllm("data", "demo", "--output", "data/demo", cwd=work)
    hpcllm("submit", "experiments/smoke.yaml", "-c", "local", "-r", "results", "--wait", cwd=work)
    broken = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    broken.update(name="broken", grid={}, where=None)
    broken["description"] = "a model vocabulary (128) smaller than the byte tokenizer's (257): fails at start"
    broken["training"]["model"]["vocab_size"] = 128
    broken["training"]["train"]["steps"] = 10
    (work / "broken.yaml").write_text(yaml.safe_dump({k: v for k, v in broken.items() if v is not None}))
    hpcllm("submit", "broken.yaml", "-c", "local", "-r", "results", "--wait", cwd=work, check=False)
    return work / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, help="runs already made (default: make them in a temp folder)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "report-screenshot.png")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from browser import Browser, find_chromium

    exe = find_chromium()
    if exe is None:
        raise SystemExit("no chromium on PATH (scripts/install-browser.sh installs it)")
    with tempfile.TemporaryDirectory(prefix="hpcllm-screenshot-") as tmp:
        work = Path(tmp)
        results = args.results.resolve() if args.results else make_runs(work)
        hpcllm("report", "-r", results.name, "-o", str(work / "report.html"), cwd=results.parent)
        shot = work / "report.png"
        with Browser(exe) as browser:
            browser.open(work / "report.html", width=1400)
            browser.screenshot(shot)
        args.output.write_bytes(with_text(shot.read_bytes(), DIGEST_KEY, page_digest()))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
