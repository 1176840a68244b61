"""Files fetched over HTTP(S) and verified before use, and archives unpacked safely.

    remote = Remote("BEATs_iter3.pt", url, size=None, checksum=None, source="...")
    path = fetch(remote, cache_dir())        # cache_dir(): $HEAR_MSM_MAE_HOME, else ~/.cache/hear_msm_mae
    extract(archive, folder)                 # .tar.gz / .tar / .zip, every member checked first

`fetch` writes FOLDER/.NAME.part and renames it to FOLDER/NAME only once its size and checksum are
verified, so a file under its own name is always complete and a second call downloads nothing. An
interrupted transfer (a dropped connection, a killed process) resumes from the bytes already in the
.part file with an HTTP Range request; a server that ignores Range sends the whole file again. The size
is checked against the published size and the server's, the checksum (md5 or sha256, as published) over
the whole file; a mismatch deletes the .part file (the bad byte can be anywhere) and raises
`VerificationError` naming the file, what was expected and what was got. Where no checksum is published
the file's sha256 is computed and reported, so that the user can compare it. Before a transfer the free
space of the folder is checked against what is left to download (`check_space`). Progress (bytes, rate,
time left) goes to stderr.

`extract` reads every member of the archive before it writes anything and refuses (`UnsafeArchiveError`,
nothing extracted) an absolute path, a `..` component, a link that points outside the archive's folder
(and in zip files any link), and device files or FIFOs; then it unpacks into a hidden folder beside the
destination and moves the members into place.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import stat
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, List, Optional

from tqdm import tqdm

HOME_VARIABLE = "HEAR_MSM_MAE_HOME"  # overrides the cache folder, as TORCH_HOME does torch.hub's
CHUNK = 1 << 20  # bytes read from the network or a file at a time
RETRIES = 3  # resumed requests after a transfer breaks off, per fetch
CHECKSUM_ALGORITHMS = ("md5", "sha256")


class DownloadError(RuntimeError):
    """A file that could not be fetched (network, HTTP status, disk space)."""


class VerificationError(DownloadError):
    """A fetched file whose size or checksum is not the published one."""


class UnsafeArchiveError(DownloadError):
    """An archive with a member that would land outside its folder, or a device file."""


@dataclass(frozen=True)
class Remote:
    """One file to fetch: its name on disk, its URL, and what its publisher states about it."""
    name: str
    url: str
    size: Optional[int] = None  # bytes, as published; None: not published
    checksum: Optional[str] = None  # "md5:<hex>" or "sha256:<hex>", as published; None: not published
    source: str = ""  # where the URL, size and checksum were published

    def __post_init__(self):
        if not self.name or PurePosixPath(self.name).name != self.name or self.name in (".", ".."):
            raise ValueError(f"a remote file needs a plain file name, got {self.name!r}")
        if self.checksum is not None and self.checksum.split(":")[0] not in CHECKSUM_ALGORITHMS:
            raise ValueError(f"{self.name}: checksum must be 'md5:<hex>' or 'sha256:<hex>', got {self.checksum!r}")


def cache_dir() -> Path:
    """Where fetched checkpoints are kept: $HEAR_MSM_MAE_HOME, else ~/.cache/hear_msm_mae."""
    return Path(os.environ.get(HOME_VARIABLE) or Path.home() / ".cache" / "hear_msm_mae")


def human(n_bytes: float) -> str:
    """e.g. '512 B', '1.5 GB' (decimal units)."""
    if abs(n_bytes) < 1000:
        return f"{n_bytes:.0f} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n_bytes /= 1000
        if abs(n_bytes) < 1000 or unit == "TB":
            return f"{n_bytes:.1f} {unit}"


def check_space(folder: Path, needed: int, what: str) -> None:
    """DownloadError unless `folder` (or its nearest existing parent) has `needed` bytes free."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise DownloadError(f"{what} needs {human(needed)} in {folder}, but only {human(free)} are free there")


def file_checksum(path: Path, algorithm: str) -> str:
    """'<algorithm>:<hex>' of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return f"{algorithm}:{digest.hexdigest()}"


def verify(path: Path, remote: Remote) -> str:
    """The file's checksum (the published algorithm, else sha256) after checking size and checksum against
    the published ones; VerificationError (and the file deleted) on a mismatch."""
    size = path.stat().st_size
    problem = None
    if remote.size is not None and size != remote.size:
        problem = f"size: expected {remote.size} bytes, got {size}"
    checksum = file_checksum(path, remote.checksum.split(":")[0] if remote.checksum else "sha256")
    if problem is None and remote.checksum is not None and checksum != remote.checksum.lower():
        problem = f"checksum: expected {remote.checksum}, got {checksum}"
    if problem:
        path.unlink()
        raise VerificationError(f"{remote.name}: {problem} (from {remote.url}; the partial file is deleted, "
                                "fetch again)")
    return checksum


def open_url(url: str, offset: int, timeout: float):
    """The response to GET url (from byte `offset` on when > 0), or None when the server answers 416 (range
    not satisfiable: nothing left to send)."""
    request = urllib.request.Request(url, headers={"User-Agent": "hear_msm_mae"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            return None
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{url}: {getattr(e, 'reason', e)}") from None


def response_total(response, offset: int) -> Optional[int]:
    """The whole file's size from a response: Content-Range of a 206, Content-Length of a 200."""
    if response.status == 206:
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def transfer(remote: Remote, url: str, part: Path, progress: bool, timeout: float) -> None:
    """Append the rest of the file to `part`, resuming after breaks (RETRIES times); DownloadError if it
    cannot be completed."""
    for attempt in range(RETRIES + 1):
        offset = part.stat().st_size if part.exists() else 0
        response = open_url(url, offset, timeout)
        if response is None:  # 416: the .part file already holds every byte
            return
        with response:
            if response.headers.get("Content-Type", "").startswith("text/html"):
                raise DownloadError(f"{remote.name}: {url} answers with a web page, not the file (a sign-in or "
                                    "confirmation page?); download it by hand")
            if response.status == 200 and offset:  # the server ignored Range: start again
                offset = 0
            total = response_total(response, offset)
            if remote.size is not None and total is not None and total != remote.size:
                raise VerificationError(f"{remote.name}: size: expected {remote.size} bytes (published), the "
                                        f"server at {url} has {total}")
            if total is not None:
                check_space(part.parent, total - offset, f"{remote.name} ({human(total - offset)} left to fetch)")
            with open(part, "ab" if offset else "wb") as f, \
                    tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=remote.name,
                         disable=not progress, file=sys.stderr, leave=False) as bar:
                try:
                    for chunk in iter(lambda: response.read(CHUNK), b""):
                        f.write(chunk)
                        bar.update(len(chunk))
                except (OSError, http.client.HTTPException) as e:  # the connection broke off
                    if attempt == RETRIES:
                        raise DownloadError(f"{remote.name}: transfer from {url} broke off {RETRIES + 1} times; "
                                            f"run again to resume from byte {f.tell()} ({e})") from None
                    time.sleep(0.5 * 2 ** attempt)
                    continue
        if total is None or part.stat().st_size >= total:
            return
        if attempt == RETRIES:
            raise DownloadError(f"{remote.name}: the server at {url} sent {part.stat().st_size} of {total} bytes; "
                                "run again to resume")


def fetch(remote: Remote, folder, url: Optional[str] = None, progress: bool = True, timeout: float = 60) -> Path:
    """FOLDER/<remote.name>, downloaded (from `url`, default remote.url: e.g. a mirror's copy) and verified
    unless it is there already; see the module docstring."""
    folder = Path(folder)
    target = folder / remote.name
    if target.is_file():
        if remote.size is not None and target.stat().st_size != remote.size:
            raise VerificationError(f"{target}: size: expected {remote.size} bytes, got {target.stat().st_size}; "
                                    "delete it and fetch again")
        return target
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".{remote.name}.part"
    done = part.stat().st_size if part.exists() else 0
    if remote.size is not None:
        check_space(folder, remote.size - done, f"{remote.name} ({human(remote.size - done)} left to fetch)")
    transfer(remote, url or remote.url, part, progress, timeout)
    checksum = verify(part, remote)
    if remote.checksum is None and progress:
        print(f"{remote.name}: no checksum is published; fetched file has {checksum}", file=sys.stderr)
    os.replace(part, target)
    return target


# ----------------------------------------------------------------------------------------------
# Archives

def check_member_path(archive: Path, name: str) -> PurePosixPath:
    """The member's path relative to the archive root; UnsafeArchiveError if absolute or with '..'."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (path.parts and ":" in path.parts[0]):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; nothing extracted")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} climbs out with '..'; nothing extracted")
    return path


def link_inside(member_path: PurePosixPath, target: str) -> bool:
    """Whether a link at `member_path` pointing at `target` stays inside the archive's folder."""
    if target.startswith("/") or not target:
        return False
    depth = len(member_path.parts) - 1  # folders above the link
    for part in PurePosixPath(target).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return False
    return True


def check_tar(archive: Path, tar: tarfile.TarFile) -> List[tarfile.TarInfo]:
    members = tar.getmembers()
    for member in members:
        path = check_member_path(archive, member.name)
        if member.issym() or member.islnk():
            target = member.linkname
            inside = link_inside(path, target) if member.issym() else \
                not target.startswith("/") and ".." not in PurePosixPath(target).parts
            if not inside:
                raise UnsafeArchiveError(f"{archive}: member {member.name!r} links to {target!r}, outside the "
                                         "archive's folder; nothing extracted")
        elif not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a device file or FIFO; nothing extracted")
    return members


def check_zip(archive: Path, zf: zipfile.ZipFile) -> List[zipfile.ZipInfo]:
    members = zf.infolist()
    for member in members:
        check_member_path(archive, member.filename)
        mode = member.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"{archive}: member {member.filename!r} is a link (not accepted in zip "
                                     "files); nothing extracted")
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # no type bits: a file
            raise UnsafeArchiveError(f"{archive}: member {member.filename!r} is a device file or FIFO; "
                                     "nothing extracted")
    return members


def extract(archive, folder, layout: Optional[Callable[[List[PurePosixPath]], None]] = None) -> List[Path]:
    """Unpack a .tar(.gz) or .zip into `folder` after checking every member (module docstring) and, with
    `layout`, the members' paths (it raises on an archive laid out otherwise than expected); returns the
    top-level paths it created or replaced in `folder`."""
    archive, folder = Path(archive), Path(folder)
    staging = folder / f".{archive.name}.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = check_zip(archive, zf)
                if layout:
                    layout([PurePosixPath(m.filename) for m in members])
                check_space(folder, sum(m.file_size for m in members), f"extracting {archive.name}")
                zf.extractall(staging)
        else:
            try:
                tar = tarfile.open(archive)
            except tarfile.TarError as e:
                raise DownloadError(f"{archive}: not a tar or zip archive ({e})") from None
            with tar:
                members = check_tar(archive, tar)
                if layout:
                    layout([PurePosixPath(m.name) for m in members])
                check_space(folder, sum(m.size for m in members if m.isfile()), f"extracting {archive.name}")
                # the "data" filter (Python 3.9.17+) checks again what check_tar checked
                tar.extractall(staging, members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        placed = []
        for top in sorted(staging.iterdir()):
            target = folder / top.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(top, target)
            placed.append(target)
        return placed
    finally:
        shutil.rmtree(staging, ignore_errors=True)
