"""`make image-cuda-check`: which torch wheel the CUDA image's build would install, named
without downloading it (the CUDA wheels and their NVIDIA libraries are gigabytes).

Reads the index's page for torch (PEP 691 JSON, else PEP 503 HTML), keeps the wheels of
the Dockerfile's TORCH_VERSION (any local label: +cu128, +cpu) that fit the image's Python
(CPython 3.11, Debian bookworm: glibc 2.36, x86_64), and prints the one pip prefers, its
size, and the NVIDIA packages it requires where the index serves its metadata (PEP 658).

Usage: python -m tests.image.cuda_wheel --index-url URL. Exit 1 when no wheel fits.
"""

from __future__ import annotations

import argparse
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import httpx
from packaging.tags import cpython_tags
from packaging.utils import parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
# The image's interpreter and platform: Debian bookworm's python3 (3.11) and glibc (2.36).
PLATFORMS = [*(f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)),
             "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64",
             "linux_x86_64"]
IMAGE_TAGS = list(cpython_tags((3, 11), abis=["cp311", "abi3", "none"], platforms=PLATFORMS))


class _Links(HTMLParser):
    """(file name, href, has metadata) of a PEP 503 page's anchors."""

    def __init__(self) -> None:
        super().__init__()
        self.files: list[tuple[str, str, bool]] = []
        self._href: str | None = None
        self._metadata = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            found = dict(attrs)
            self._href = found.get("href")
            self._metadata = any(k in found for k in ("data-core-metadata",
                                                      "data-dist-info-metadata"))

    def handle_data(self, data: str) -> None:
        if self._href is not None and data.strip().endswith(".whl"):
            self.files.append((data.strip(), self._href, self._metadata))
            self._href = None


def torch_version() -> Version:
    found = re.search(r"ARG TORCH_VERSION=([\d.]+)", (ROOT / "Dockerfile").read_text())
    if found is None:
        raise SystemExit("the Dockerfile has no ARG TORCH_VERSION")
    return Version(found.group(1))


def index_files(client: httpx.Client, index: str) -> list[dict[str, object]]:
    """[{filename, url, size, metadata}] of the index's torch page."""
    page_url = index.rstrip("/") + "/torch/"
    page = client.get(page_url, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    page.raise_for_status()
    if page.headers.get("content-type", "").startswith("application/vnd.pypi.simple.v1+json"):
        return [{"filename": f["filename"], "url": urljoin(page_url, f["url"]),
                 "size": f.get("size"),
                 "metadata": bool(f.get("core-metadata") or f.get("data-dist-info-metadata"))}
                for f in page.json()["files"]]
    links = _Links()
    links.feed(page.text)
    return [{"filename": name, "url": urljoin(page_url, href), "size": None,
             "metadata": metadata} for name, href, metadata in links.files]


def best_wheel(files: list[dict[str, object]], version: Version) -> dict[str, object] | None:
    """pip's choice: the highest version (a local label counts), then the best tag."""
    ranked = []
    for f in files:
        name, found, _, tags = parse_wheel_filename(str(f["filename"]))
        if name != "torch" or found.public != version.public:
            continue
        fits = [IMAGE_TAGS.index(t) for t in tags if t in IMAGE_TAGS]
        if fits:
            ranked.append((found, -min(fits), f))
    if not ranked:
        return None
    return max(ranked, key=lambda r: (r[0], r[1]))[2]


def nvidia_requirements(client: httpx.Client, url: str) -> list[str]:
    metadata = client.get(url.split("#")[0] + ".metadata")
    if metadata.status_code != 200:
        return []
    return [line.split(":", 1)[1].strip() for line in metadata.text.splitlines()
            if line.startswith("Requires-Dist:") and "nvidia" in line.lower()]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index-url", required=True, help="the TORCH_INDEX_URL build argument")
    args = parser.parse_args(argv)
    version = torch_version()
    with httpx.Client(timeout=60, follow_redirects=True) as client:
        try:
            files = index_files(client, args.index_url)
        except httpx.HTTPError as exc:
            print(f"cannot read {args.index_url}: {exc}", file=sys.stderr)
            return 1
        wheel = best_wheel(files, version)
        if wheel is None:
            print(f"no torch=={version} wheel for CPython 3.11 on Linux x86_64 in "
                  f"{args.index_url}", file=sys.stderr)
            return 1
        size = wheel["size"]
        print(f"torch=={version} from {args.index_url}: {wheel['filename']}"
              + (f" ({int(str(size)) / 2**20:.0f} MiB)" if size else ""))
        print(f"  {str(wheel['url']).split('#')[0]}")
        if wheel["metadata"]:
            needs = nvidia_requirements(client, str(wheel["url"]))
            print(f"  NVIDIA packages it requires ({len(needs)}): "
                  + (", ".join(needs) if needs else "none (CPU build)"))
        else:
            print("  (the index serves no metadata file: its NVIDIA dependencies are not "
                  "listed without downloading the wheel)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
