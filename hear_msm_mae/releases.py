"""The families' official checkpoint files by name, fetched into the cache on first use.

    load_model("80x512p16x16_paper/checkpoint-100.pth")   # the name works where a path does
    path = resolve("BEATs_iter3.pt")                       # a path: an existing file, else an official name

A name is what the authors' README calls the file: a release zip's member ("80x512p16x16_paper/
checkpoint-100.pth"; the zip unpacks to a folder named like the release) or the file itself
("BEATs_iter3.pt"). `resolve` fetches the file with hear_msm_mae.download (verified, resumable) into
`checkpoint_dir()` (= $HEAR_MSM_MAE_HOME/checkpoints, by default ~/.cache/hear_msm_mae/checkpoints),
unpacks a zip there and deletes it; afterwards the name resolves to that file without any network.
$HEAR_MSM_MAE_MIRROR=URL fetches every file as URL/<file name> instead (a local copy of the releases,
e.g. on a cluster without internet).

Checksums and sizes: none of these authors publish one for their files (the GitHub release pages,
READMEs and Zenodo pages searched for this table state none that could be found here), except where an
entry says otherwise; `fetch` then reports the sha256 of what it fetched so it can be compared.
Files kept on Google Drive cannot be fetched by a plain HTTP client (an HTML confirmation page stands in
front of large files): their entries name the page to download them from by hand.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

from .download import Remote, cache_dir, extract, fetch

MIRROR_VARIABLE = "HEAR_MSM_MAE_MIRROR"


@dataclass(frozen=True)
class Release:
    """One published file: a checkpoint, or a zip of checkpoints (`members`: the names inside it)."""
    family: str
    remote: Remote
    members: Tuple[str, ...] = ()  # a zip's checkpoint files, as paths inside it; () for a plain file
    by_hand: str = ""  # non-empty: cannot be fetched over plain HTTP; the page to download it from

    @property
    def names(self) -> Tuple[str, ...]:
        return self.members or (self.remote.name,)


def github_zip(family: str, repo: str, tag: str, folder: str, checkpoint: str, source: str) -> Release:
    remote = Remote(f"{folder}.zip", f"https://github.com/{repo}/releases/download/{tag}/{folder}.zip",
                    source=source)
    return Release(family, remote, (f"{folder}/{checkpoint}",))


def plain(family: str, name: str, url: str, source: str, size: Optional[int] = None,
          checksum: Optional[str] = None) -> Release:
    return Release(family, Remote(name, url, size, checksum, source))


def by_hand(family: str, name: str, page: str, source: str) -> Release:
    return Release(family, Remote(name, page, source=source), by_hand=page)


MSM_MAE = ("nttcslab/msm-mae README ('three pre-trained weights are published on the releases'); the tag v0.0.1 "
           "is where the same release page serves AudioSetWav16k_examples.zip (the authors' visualisation "
           "notebook) and is not confirmed for the weight zips")
M2D = "nttcslab/m2d README, pre-trained weights table (release v0.1.0)"
AST = "YuanGongND/ast README, 'Pretrained Models' (Dropbox, dl=1)"
BEATS = ("microsoft/unilm beats/README.md, 'Pre-Trained and Fine-Tuned Tokenizers and Models' (Azure blob, read "
         "signature valid until 2033-03-02)")
BEATS_SAS = ("?sv=2020-08-04&st=2023-03-01T07%3A51%3A05Z&se=2033-03-02T07%3A51%3A00Z&sr=c&sp=rl&"
             "sig=QJXmSJG9DbMKf48UDIU1MfzIro8HQOf3sqlNXiflY1I%3D")
AUDIOMAE = "facebookresearch/AudioMAE README (Google Drive links)"
ATST = ("Audio-WestlakeU/audiossl READMEs; size and sha256 as recorded in shared/golden/atst_clip_tiny/golden.json "
        "(official.release_files)")
DASHENG = "RicherMans/Dasheng README and the dasheng 0.0.9 package: Zenodo record 11511780"
CED = "RicherMans/CED README: Zenodo record 8275347"


def zenodo(family: str, record: str, name: str, source: str) -> Release:
    return plain(family, name, f"https://zenodo.org/records/{record}/files/{name}?download=1", source)


def beats(name: str) -> Release:
    return plain("beats", name, f"https://valle.blob.core.windows.net/share/BEATs/{name}{BEATS_SAS}", BEATS)


RELEASES: Tuple[Release, ...] = (
    github_zip("msm_mae", "nttcslab/msm-mae", "v0.0.1", "80x512p16x16_paper", "checkpoint-100.pth", MSM_MAE),
    github_zip("msm_mae", "nttcslab/msm-mae", "v0.0.1", "80x512p16x16_0425", "checkpoint-100.pth", MSM_MAE),
    github_zip("msm_mae", "nttcslab/msm-mae", "v0.0.1", "80x208p16x16_0422", "checkpoint-100.pth", MSM_MAE),
    github_zip("m2d", "nttcslab/m2d", "v0.1.0", "m2d_vit_base-80x608p16x16-221006-mr7", "checkpoint-300.pth", M2D),
    github_zip("m2d", "nttcslab/m2d", "v0.1.0", "m2d_vit_base-80x608p16x16-221006-mr6", "checkpoint-300.pth", M2D),
    by_hand("audiomae", "pretrained.pth", "https://drive.google.com/file/d/1ni_DV4dRf7GxM8k-Eirx71WP9Gg89wwu",
            AUDIOMAE),
    by_hand("audiomae", "finetuned.pth", "https://drive.google.com/file/d/18EsFOyZYvBYHkJ7_n7JFFWbj6crz01gq",
            AUDIOMAE),
    plain("ast", "audioset_10_10_0.4593.pth", "https://www.dropbox.com/s/ca0b1v2nlxzyeb4/audioset_10_10_0.4593.pth"
          "?dl=1", AST),
    beats("BEATs_iter3.pt"),
    beats("BEATs_iter3_plus_AS2M.pt"),
    beats("BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt"),
    plain("atst_clip", "small.ckpt", "https://checkpointstorage.oss-cn-beijing.aliyuncs.com/atst/small.ckpt", ATST,
          411267681, "sha256:fcadd6411881410d27cde47f4d540ef416aa59e0197b195cf3ee7a81885a5f4a"),
    plain("atst_clip", "base.ckpt", "https://checkpointstorage.oss-cn-beijing.aliyuncs.com/atst/base.ckpt", ATST,
          1459530207, "sha256:7b20168cae0d1488a0e3334f17ca1cefb9365cbaa2401c11aa98d6ffaa668496"),
    by_hand("atst_frame", "atstframe_base.ckpt", "https://drive.google.com/file/d/1bGJSZWlAIIJ6GL5Id5dW0PTB72DL-QDQ",
            ATST),
    zenodo("dasheng", "11511780", "dasheng_base.pt", DASHENG),
    zenodo("ced", "8275347", "audiotransformer_base_mAP_4999.pt", CED),
)
CHECKPOINTS: Dict[str, Release] = {name: release for release in RELEASES for name in release.names}


def checkpoint_dir() -> Path:
    return cache_dir() / "checkpoints"


def fetch_checkpoint(name: str, progress: bool = True) -> Path:
    """The official file `name` in the cache, fetched (and a zip unpacked) unless it is there already."""
    if name not in CHECKPOINTS:
        raise ValueError(f"{name!r} is not an official checkpoint name; known: {sorted(CHECKPOINTS)}")
    release = CHECKPOINTS[name]
    path = checkpoint_dir() / name
    if path.is_file():
        return path
    if release.by_hand:
        raise ValueError(f"{name} ({release.family}) cannot be fetched over plain HTTP: download it by hand from "
                         f"{release.by_hand} and pass its path")
    mirror = os.environ.get(MIRROR_VARIABLE)
    url = f"{mirror.rstrip('/')}/{release.remote.name}" if mirror else None
    if not release.members:
        return fetch(release.remote, checkpoint_dir(), url, progress)
    archive = fetch(release.remote, checkpoint_dir() / ".zips", url, progress)
    extract(archive, checkpoint_dir())
    if not path.is_file():
        raise ValueError(f"{archive} unpacked, but it holds no {name}; look in {checkpoint_dir()}")
    archive.unlink()
    return path


def resolve(path_or_name: Union[str, Path]) -> Path:
    """An existing file as it is; else an official checkpoint name (fetched); else the path unchanged (the
    loader then says it is not found)."""
    path = Path(path_or_name)
    if path.exists() or str(path_or_name) not in CHECKPOINTS:
        return path
    return fetch_checkpoint(str(path_or_name))
