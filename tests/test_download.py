"""hear_msm_mae.download and .releases against a real HTTP server on 127.0.0.1 (tests/zenodo_server.py): a
transfer broken off and resumed, a corrupted byte refused, a second fetch that asks for nothing, the disk
space refused before a request, unsafe archives refused with nothing extracted, and load_model by name."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from hear_msm_mae import download, releases
from hear_msm_mae.download import (DownloadError, Remote, UnsafeArchiveError, VerificationError, extract, fetch)
from zenodo_server import FileServer

DATA = bytes(range(256)) * 4096  # 1 MiB, every byte value


def remote(server: FileServer, name: str = "a.bin", data: bytes = DATA, **kw) -> Remote:
    kw.setdefault("size", len(data))
    kw.setdefault("checksum", "md5:" + hashlib.md5(data).hexdigest())
    return Remote(name, f"{server.url}/{name}", **kw)


def file_requests(server: FileServer, name: str = "a.bin"):
    return [r for p, r in server.requests if p == f"/{name}"]


def test_an_interrupted_transfer_resumes_with_a_range_request(tmp_path, capsys):
    with FileServer({"a.bin": DATA}) as server:
        server.cut["a.bin"] = [300_000]  # the first response breaks off after 300 kB
        path = fetch(remote(server), tmp_path, progress=True)
        assert path.read_bytes() == DATA and not (tmp_path / ".a.bin.part").exists()
        assert file_requests(server) == [None, "bytes=300000-"]
    assert "B/s" in capsys.readouterr().err  # progress: bytes, rate and time left


def test_a_killed_fetch_resumes_from_its_partial_file(tmp_path):
    (tmp_path / ".a.bin.part").write_bytes(DATA[:123_456])  # what a killed process left
    with FileServer({"a.bin": DATA}) as server:
        assert fetch(remote(server), tmp_path, progress=False).read_bytes() == DATA
        assert file_requests(server) == ["bytes=123456-"]


def test_a_corrupted_byte_is_refused_and_nothing_is_left(tmp_path):
    with FileServer({"a.bin": DATA}) as server:
        server.corrupt["a.bin"] = 777
        expected = remote(server).checksum
        got = "md5:" + hashlib.md5(DATA[:777] + bytes([DATA[777] ^ 0xFF]) + DATA[778:]).hexdigest()
        with pytest.raises(VerificationError, match=f"a.bin: checksum: expected {expected}, got {got}"):
            fetch(remote(server), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither a.bin nor its .part file


def test_a_size_other_than_the_published_one_is_refused_before_the_transfer(tmp_path):
    with FileServer({"a.bin": DATA}) as server:
        with pytest.raises(VerificationError, match=f"a.bin: size: expected {len(DATA) + 1} bytes \\(published\\), "
                                                    f"the server at .* has {len(DATA)}"):
            fetch(remote(server, size=len(DATA) + 1, checksum=None), tmp_path, progress=False)
    assert not (tmp_path / "a.bin").exists()


def test_a_second_fetch_downloads_nothing(tmp_path):
    with FileServer({"a.bin": DATA}) as server:
        fetch(remote(server), tmp_path, progress=False)
        fetch(remote(server), tmp_path, progress=False)
        assert len(file_requests(server)) == 1


def test_no_checksum_published_reports_the_sha256(tmp_path, capsys):
    with FileServer({"a.bin": DATA}) as server:
        fetch(remote(server, size=None, checksum=None), tmp_path, progress=True)
    assert f"no checksum is published; fetched file has sha256:{hashlib.sha256(DATA).hexdigest()}" in \
        capsys.readouterr().err


def test_not_enough_disk_is_refused_before_any_request(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with FileServer({"a.bin": DATA}) as server:
        with pytest.raises(DownloadError, match="a.bin .* needs .* in .*, but only .* are free there"):
            fetch(remote(server, size=free + 10 ** 12, checksum=None), tmp_path, progress=False)
        assert server.requests == []


def test_http_errors_name_the_url(tmp_path):
    with FileServer({}) as server:
        with pytest.raises(DownloadError, match="/missing.bin: HTTP 404"):
            fetch(Remote("missing.bin", f"{server.url}/missing.bin"), tmp_path, progress=False)


# ----------------------------------------------------------------------------------------------
# Archives

def tar_with(path: Path, members) -> Path:
    """A .tar.gz of (TarInfo, bytes or None) members."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def regular(name: str, data: bytes = b"x") -> tuple:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, target: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("member,message", [
    (regular("/etc/evil"), "has an absolute path"),
    (regular("task/../../evil"), "climbs out with '..'"),
    (special("task/link", tarfile.SYMTYPE, "../../outside"), "links to '../../outside', outside"),
    (special("task/abs", tarfile.SYMTYPE, "/etc/passwd"), "links to '/etc/passwd', outside"),
    (special("task/hard", tarfile.LNKTYPE, "../outside"), "links to '../outside', outside"),
    (special("task/dev", tarfile.CHRTYPE), "is a device file or FIFO"),
    (special("task/fifo", tarfile.FIFOTYPE), "is a device file or FIFO"),
])
def test_unsafe_tar_members_are_refused_and_nothing_is_extracted(tmp_path, member, message):
    archive = tar_with(tmp_path / "bomb.tar.gz", [regular("task/ok.txt"), member, regular("task/after.txt")])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnsafeArchiveError, match=message + ".*nothing extracted"):
        extract(archive, out)
    assert list(out.iterdir()) == [] and not (tmp_path / "etc").exists() and not (tmp_path / "evil").exists()


def test_safe_archives_unpack_links_inside_included(tmp_path):
    archive = tar_with(tmp_path / "ok.tar.gz", [regular("task/a.txt", b"a"), special("task/b.txt", tarfile.SYMTYPE,
                                                                                      "a.txt")])
    assert extract(archive, tmp_path / "out") == [tmp_path / "out" / "task"]
    assert (tmp_path / "out" / "task" / "b.txt").read_bytes() == b"a"
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as zf:
        zf.writestr("release/checkpoint.pth", b"weights")
    extract(tmp_path / "ok.zip", tmp_path / "out")
    assert (tmp_path / "out" / "release" / "checkpoint.pth").read_bytes() == b"weights"


@pytest.mark.parametrize("name,message", [("../evil.pth", "climbs out"), ("/abs/evil.pth", "absolute path")])
def test_unsafe_zip_members_are_refused(tmp_path, name, message):
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("release/ok.pth", b"ok")
        zf.writestr(zipfile.ZipInfo(name), b"evil")
    with pytest.raises(UnsafeArchiveError, match=message):
        extract(tmp_path / "bad.zip", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


# ----------------------------------------------------------------------------------------------
# Official checkpoints by name

def release_zip(checkpoint: Path, folder: str, member: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.write(checkpoint, f"{folder}/{member}")
    return buffer.getvalue()


def test_load_model_by_official_name_from_a_mirror(tmp_path, monkeypatch, tiny_checkpoint):
    """The name resolves to the release zip's member, fetched from $HEAR_MSM_MAE_MIRROR into $HEAR_MSM_MAE_HOME,
    unpacked; the second time no request is made."""
    import hear_msm_mae

    name = "80x208p16x16_0422/checkpoint-100.pth"
    zipped = release_zip(tiny_checkpoint, "80x208p16x16_0422", "checkpoint-100.pth")
    monkeypatch.setenv(download.HOME_VARIABLE, str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # the name is not a path here
    with FileServer({"80x208p16x16_0422.zip": zipped}) as server:
        monkeypatch.setenv(releases.MIRROR_VARIABLE, server.url)
        model = hear_msm_mae.load_model(name, "cpu", dtype="float32")
        direct = hear_msm_mae.load_model(str(tiny_checkpoint), "cpu", dtype="float32")
        audio = torch.rand(1, 16000) * 2 - 1
        assert torch.equal(hear_msm_mae.get_scene_embeddings(audio, model),
                           hear_msm_mae.get_scene_embeddings(audio, direct))
        assert (tmp_path / "home" / "checkpoints" / name).read_bytes() == tiny_checkpoint.read_bytes()
        assert not list((tmp_path / "home" / "checkpoints" / ".zips").iterdir())  # the zip is deleted
        hear_msm_mae.load_model(name, "cpu")
        assert len(server.requests) == 1


def test_checkpoints_that_need_a_browser_are_named_with_their_page(tmp_path, monkeypatch):
    monkeypatch.setenv(download.HOME_VARIABLE, str(tmp_path))
    with pytest.raises(ValueError, match="pretrained.pth \\(audiomae\\) cannot be fetched over plain HTTP: download "
                                         "it by hand from https://drive.google.com/"):
        releases.resolve("pretrained.pth")
    assert releases.resolve(os.fspath(tmp_path)) == tmp_path  # an existing path is never a name


def test_every_official_name_is_a_plain_file_or_a_zip_member():
    for name, release in releases.CHECKPOINTS.items():
        assert name in release.names and release.remote.url.startswith("https://")
        assert release.members or release.remote.name == name
