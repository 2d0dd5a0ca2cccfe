"""Downloads that resume and archives that extract safely (the corpora that may be fetched)."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)
CHUNK = 1 << 20


def md5sum(path: str | os.PathLike) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: str | os.PathLike, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``, resuming a previous ``dest.part`` with an HTTP Range request.

    ``dest`` appears only when the transfer is complete (an existing one is returned as it is); an
    interrupted transfer leaves ``dest.part`` for the next call. Any failure is an ``OSError`` whose
    message names the URL and what to do."""
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: .part may already be complete
            total = (e.headers.get("Content-Range") or "").rpartition("/")[2]
            if not total.isdigit() or int(total) == have:
                os.replace(part, dest)
                return dest
            log.warning("%s: the server refused to resume at byte %d; starting over", part, have)
            part.unlink()
            return fetch(url, dest, timeout)
        raise OSError(f"{url}: download failed (HTTP {e.code} {e.reason})") from e
    except (urllib.error.URLError, OSError) as e:  # no network, DNS: one clear line
        raise OSError(f"{url}: download failed ({getattr(e, 'reason', e)}); "
                      "check the network or put the files in place by hand") from e
    with resp:
        if have and resp.status != 206:
            log.warning("%s: the server ignored the range request; downloading from the start", url)
            have = 0
        length = resp.headers.get("Content-Length")
        expected = have + int(length) if length is not None else None
        log.info("downloading %s -> %s (from byte %d%s)", url, dest, have, f" of {expected}" if expected else "")
        with open(part, "ab" if have else "wb") as f:
            while block := resp.read(CHUNK):
                f.write(block)
    got = part.stat().st_size
    if expected is not None and got != expected:
        raise OSError(f"{url}: transfer interrupted at {got} of {expected} bytes; run again to resume")
    os.replace(part, dest)
    return dest


def extract(archive: str | os.PathLike, member: str, target: str | os.PathLike,
            extras: dict[str, Path] | None = None) -> Path:
    """Extract the directory ``member`` of a tar archive to ``target``, moved into place whole (a
    half-extracted tree is never left at ``target``); unsafe members are refused. ``extras``: other
    members {name in archive: destination} moved too when present and not there yet."""
    archive, target = Path(archive), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".extract-{target.name}."))
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(tmp, filter="data")
        src = tmp / member
        if not src.is_dir():
            raise ValueError(f"{archive}: no {member} inside (delete it to download again)")
        for name, dest in (extras or {}).items():
            if (tmp / name).exists() and not Path(dest).exists():
                os.replace(tmp / name, dest)
        if target.exists():
            shutil.rmtree(target)  # an incomplete tree from before
        os.replace(src, target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
