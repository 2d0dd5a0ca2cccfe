"""Experiment dirs and packed models: which model file, which config, which sample rate.

One list of model file names per task (the order in which a trained model is looked for), one
lookup for a dir, a ``.pth`` file or a packed ``.zip``, and one repair of the relative paths that
ESPnet writes into ``config.yaml`` (statistics, BPE model: relative to the recipe dir it ran in).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Sequence

MODEL_FILES = {
    "asr": ("valid.acc.ave.pth", "valid.acc.best.pth", "valid.loss.ave.pth", "latest.pth"),
    "tts": ("valid.loss.ave.pth", "valid.loss.best.pth", "train.loss.ave.pth", "latest.pth"),
    "lm": ("valid.loss.ave.pth", "valid.loss.best.pth", "latest.pth"),
}
RATE_KEYS = {"asr": "frontend_conf", "tts": "feats_extract_conf"}
ESPNET_DEFAULT_FS = 16000  # the rate of ESPnet's default ASR frontend when a config states none


class ModelError(RuntimeError):
    """A model that cannot be found or loaded (one line naming it and the cause)."""


def parse_rate(value) -> int:
    """A sample rate as ESPnet configs write it: 16000, "16000", "16k", "22.05k" -> Hz."""
    s = str(value).strip().lower()
    try:
        return int(round(float(s[:-1]) * 1000)) if s.endswith("k") else int(float(s))
    except ValueError:
        raise ValueError(f"not a sample rate: {value!r}") from None


def config_rate(conf: dict, task: str = "asr") -> int | None:
    """The sample rate a training config states (``frontend_conf.fs`` / ``feats_extract_conf.fs``), or None."""
    fs = (conf.get(RATE_KEYS[task]) or {}).get("fs")
    return parse_rate(fs) if fs is not None else None


def load_config(path: str | os.PathLike) -> dict:
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def model_file(sysdir: str | os.PathLike, task: str = "asr") -> Path:
    """The trained model in an experiment dir, the first of ``MODEL_FILES[task]`` that exists."""
    d = Path(sysdir)
    for name in MODEL_FILES[task]:
        if (d / name).exists():
            return d / name
    raise ModelError(f"model {d}: none of {', '.join(MODEL_FILES[task])} in it")


def unpack(zip_path: Path) -> dict[str, str]:
    """A packed model (``espnet2.bin.pack``) unpacked once into a cache dir -> {meta key: path}."""
    import yaml
    from espnet2.main_funcs.pack_funcs import unpack as espnet_unpack

    st = zip_path.stat()
    key = hashlib.sha1(f"{zip_path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "s4speech" / "models"
    out = cache / f"{zip_path.stem}-{key}"
    if not (out / ".complete").exists():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        try:
            espnet_unpack(zip_path, out, use_cache=False)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        (out / ".complete").write_text("")
    meta = yaml.safe_load((out / "meta.yaml").read_text())
    return {k: str(out / v) for k, v in list(meta.get("yaml_files", {}).items()) + list(meta.get("files", {}).items())}


def model_files(model: str | os.PathLike, task: str = "asr") -> tuple[Path, Path]:
    """(config.yaml, model .pth) of an experiment dir, of a ``.pth`` with ``config.yaml`` beside it,
    or of a packed model archive."""
    p = Path(model)
    if not p.exists():
        raise ModelError(f"model {p}: no such file or directory")
    if p.is_dir():
        if not (p / "config.yaml").is_file():
            raise ModelError(f"model {p}: no config.yaml (an ESPnet experiment dir or a packed .zip is expected)")
        return p / "config.yaml", model_file(p, task)
    if p.suffix == ".pth":
        if not (p.parent / "config.yaml").is_file():
            raise ModelError(f"model {p}: no config.yaml beside it")
        return p.parent / "config.yaml", p
    import tarfile
    import zipfile

    if not (zipfile.is_zipfile(p) or tarfile.is_tarfile(p)):
        raise ModelError(f"model {p}: neither a directory nor a packed model archive (.zip)")
    try:
        files = unpack(p)
    except Exception as e:  # noqa: BLE001 - one line naming the archive
        raise ModelError(f"model {p}: cannot unpack ({type(e).__name__}: {e})") from None
    cfg, pth = files.get(f"{task}_train_config"), files.get(f"{task}_model_file")
    if cfg is None or pth is None:
        raise ModelError(f"model {p}: the archive has no {task}_train_config / {task}_model_file")
    return Path(cfg), Path(pth)


def resolve_paths(value, bases: Sequence[Path]):
    """Relative paths in a config (ESPnet writes them relative to the recipe dir) that do not exist from
    here but do from one of ``bases`` made absolute; everything else unchanged."""
    if isinstance(value, dict):
        return {k: resolve_paths(v, bases) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_paths(v, bases) for v in value]
    if isinstance(value, str) and value and not os.path.isabs(value) and ("/" in value or "." in value) \
            and "\n" not in value and len(value) < 4096 and not Path(value).exists():
        for b in bases:
            if (b / value).exists():
                return str((b / value).resolve())
    return value


def search_bases(cfg: str | os.PathLike) -> list[Path]:
    """Where a config's relative paths may start: its dir and the three above (exp/<sys>/ -> recipe dir)."""
    d = Path(cfg).resolve().parent
    return [d, *list(d.parents)[:3]]


def loadable_config(cfg: str | os.PathLike) -> Path:
    """``cfg`` itself when its paths resolve from here, else a copy beside it (``.config.resolved.yaml``,
    written atomically) with the relative paths made absolute."""
    import yaml

    from s4speech.io.files import atomic_write

    conf = load_config(cfg)
    fixed = resolve_paths(conf, search_bases(cfg))
    if fixed == conf:
        return Path(cfg)
    out = Path(cfg).parent / ".config.resolved.yaml"
    try:
        atomic_write(out, yaml.safe_dump(fixed, allow_unicode=True, sort_keys=False))
    except OSError:  # a read-only model dir: a private copy
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="s4speech-config-")) / "config.yaml"
        atomic_write(out, yaml.safe_dump(fixed, allow_unicode=True, sort_keys=False))
    return out


_EPOCH = re.compile(r"INFO: (\d+)epoch results: (.*)$")
_SECTION = re.compile(r"\[(\w+)\] ")


def epoch_results(train_log: str | os.PathLike) -> dict[int, dict[str, dict[str, float]]]:
    """Per-epoch figures of an ESPnet ``train.log``: ``{epoch: {"train": {...}, "valid": {...}}}``.

    Read from the ``<n>epoch results: [train] k=v, ... [valid] k=v, ...`` lines ESPnet's trainer logs
    after each epoch; only numeric values are kept (``time=1 minute and 3 seconds`` is not). A resumed
    run logs an epoch again: the last line wins.
    """
    out: dict[int, dict[str, dict[str, float]]] = {}
    for line in Path(train_log).read_text(errors="replace").splitlines():
        m = _EPOCH.search(line)
        if not m:
            continue
        parts = _SECTION.split(m.group(2))  # ["", "train", "k=v, ...", "valid", "k=v, ..."]
        sections = {}
        for name, body in zip(parts[1::2], parts[2::2]):
            vals = {}
            for item in body.split(","):
                k, _, v = item.strip().partition("=")
                try:
                    vals[k] = float(v)
                except ValueError:
                    pass
            sections[name] = vals
        out[int(m.group(1))] = sections
    return out
