"""Fetch a published file into the cache: streamed with a progress bar, checked against its
published MD5, and moved into place only when it matches.

A file is written to a temporary name beside its destination and renamed when complete, so
an interrupted or corrupt download never sits where a later run would trust it, and several
processes may fetch the same file at once. A file already at the destination (put there by
hand, for a machine without network) is used when its checksum matches and refused when it
does not.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from dpplat.dataset_types import DatasetError

CHUNK = 1 << 20
TIMEOUT_S = 60


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stream(url: str, part: Path, label: str) -> None:
    """Copy ``url`` to ``part``; raises ``OSError`` on a network failure or a short body."""
    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        with open(part, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                                           file=sys.stderr, disable=None, leave=False) as bar:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received < total:
        raise OSError(f"the connection closed after {received} of {total} bytes")


def fetch(urls: Sequence[str], dest: Path, md5: str, *, fix: str) -> Path:
    """``dest``, downloaded from the first of ``urls`` that serves a file with this MD5.

    ``fix`` ends every error: what the user can do instead (a mirror, a file put by hand).
    """
    dest = Path(dest)
    if dest.is_file():
        found = md5_of(dest)
        if found == md5:
            return dest
        raise DatasetError(f"{dest} does not match its published checksum (MD5 {found}, expected {md5}); delete it "
                           f"and dpplat downloads it again, or replace it with the official file.")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(f"cannot create the cache folder {dest.parent} ({err.strerror}); set DPPLAT_CACHE to a "
                           "writable folder.") from None
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    failures = []
    for url in urls:
        print(f"downloading {url}", file=sys.stderr)
        try:
            _stream(url, part, dest.name)
        except (OSError, urllib.error.URLError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            failures.append(f"{url}: {reason}")
            part.unlink(missing_ok=True)
            continue
        found = md5_of(part)
        if found != md5:
            failures.append(f"{url}: the file's MD5 is {found}, expected {md5} (a corrupt or different file)")
            part.unlink(missing_ok=True)
            continue
        os.replace(part, dest)
        return dest
    raise DatasetError(f"could not download {dest.name}: {'; '.join(failures)}. {fix}")
