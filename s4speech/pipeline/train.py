"""Training through ESPnet for any task (ASR, TTS, LM): statistics, the training command, launching
on one process, on several GPUs (ESPnet's own multiprocessing), or on several processes and nodes
(torchrun or Slurm's srun), and packing a trained system into a zip.

Paths written into ESPnet's ``config.yaml`` (statistics, token list, BPE model) are absolute, so a
model dir is usable from any working directory.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from s4speech.io.expdir import MODEL_FILES
from s4speech.io.files import atomic_write
from s4speech.io.kaldi import read_table
from s4speech.pipeline.runner import StageError, done, log, mark_done, run

LAUNCHERS = ("none", "torchrun", "slurm")
ENTRY = {"asr": "s4speech.bin.asr_train", "tts": "s4speech.bin.tts_train", "lm": "espnet2.bin.lm_train"}


@dataclass
class Launch:
    """How a training job is started."""

    ngpu: int = 0  # GPUs per node (> 1 on one node without a launcher: ESPnet's own processes)
    num_nodes: int = 1
    launcher: str = "none"  # none | torchrun (--nproc_per_node processes per node) | slurm (srun)
    nproc_per_node: int = 0  # torchrun: processes per node (default: ngpu, or 1 on CPU)
    node_rank: int = 0  # torchrun on several nodes: this node's rank
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    num_workers: int = 4  # data loader workers per process

    def check(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise StageError(f"--launcher {self.launcher!r}: one of {', '.join(LAUNCHERS)}")
        if self.num_nodes > 1 and self.launcher == "none":
            raise StageError("--num_nodes > 1 needs --launcher torchrun (on each node) or --launcher slurm")

    def command(self, module: str, args: list) -> list:
        """The full command line for ``python -m module args`` under this launch."""
        self.check()
        if self.launcher == "none":
            return [sys.executable, "-m", module, "--ngpu", self.ngpu, *args]
        dist = ["--multiprocessing_distributed", "false", "--ngpu", 1 if self.ngpu else 0]
        if not self.ngpu:
            dist += ["--dist_backend", "gloo"]
        if self.launcher == "torchrun":
            nproc = self.nproc_per_node or max(1, self.ngpu)
            return [sys.executable, "-m", "torch.distributed.run", "--nnodes", self.num_nodes,
                    "--nproc_per_node", nproc, "--node_rank", self.node_rank, "--master_addr", self.master_addr,
                    "--master_port", self.master_port, "-m", module, *dist, *args]
        ntasks = self.nproc_per_node or max(1, self.ngpu)
        return ["srun", "--nodes", self.num_nodes, "--ntasks-per-node", ntasks, *(["--gpus-per-task", 1] if self.ngpu else []),
                sys.executable, "-m", module, *dist, "--dist_launcher", "slurm",
                "--dist_init_method", "env://", *args]


def collect_stats(task: str, config: str, out: Path, shapes: dict[str, Path], data: list, extra: list,
                  token_list: Path, token_type: str) -> None:
    """ESPnet's statistics pass (one CPU process), then ``text_shape.<token_type>`` ("len,vocab")."""
    cmd = [sys.executable, "-m", ENTRY[task], "--collect_stats", "true", "--ngpu", "0", "--config", config,
           "--output_dir", out, "--num_workers", "0",
           "--train_shape_file", shapes["train"], "--valid_shape_file", shapes["valid"], *data, *extra]
    run(cmd, out / "stats.log", f"collect stats ({task})")
    ntok = len(Path(token_list).read_text(encoding="utf-8").splitlines())
    for split in ("train", "valid"):
        shape = read_table(out / split / "text_shape")
        atomic_write(out / split / f"text_shape.{token_type}", "".join(f"{u} {v},{ntok}\n" for u, v in shape.items()))


def train(task: str, config: str, out: Path, launch: Launch, args: list, model_names: tuple[str, ...],
          env: dict | None = None) -> None:
    """Train (resuming from the last checkpoint) and record the training time in ``train_seconds``."""
    cmd = launch.command(ENTRY[task], ["--config", config, "--output_dir", out, "--resume", "true",
                                       "--num_workers", launch.num_workers, *args])
    t0 = time.time()
    run(cmd, out / "train.log", f"training {out.name}", env)
    if not any((out / n).exists() for n in model_names):
        raise StageError(f"training {out.name} ended without any of {', '.join(model_names)}; see {out / 'train.log'}")
    prev = float((out / "train_seconds").read_text()) if (out / "train_seconds").exists() else 0.0
    atomic_write(out / "train_seconds", f"{prev + time.time() - t0:.1f}\n")


def stats_args(stats_dir: Path, shapes: tuple[str, ...]) -> list:
    """Global mean-variance normalization from ``stats_dir`` and its shape files, in ``shapes`` order
    (ESPnet sorts the batches by the first one)."""
    st = Path(stats_dir).resolve()
    args = ["--normalize", "global_mvn", "--normalize_conf", f"stats_file={st}/train/feats_stats.npz"]
    for split in ("train", "valid"):
        for name in shapes:
            args += [f"--{split}_shape_file", st / split / name]
    return args


def train_systems(r, task: str, args: list) -> None:
    """Train every config of the recipe ``r`` that is not trained yet (``exp/<task>_<config stem>``).

    ``r.train_jobs`` > 1 (CPU, one process each): that many systems train at once, the cores shared out
    (``OMP_NUM_THREADS``): small models use a core each better than two (the demo: 23 s an epoch on 2
    threads, 28 s for each of two side by side on one). A failed system does not stop the others; the
    stage then fails naming every failed one."""
    todo = []
    for cfg in r.configs():
        if done(r.system(cfg)):
            log.info("train: %s already trained", r.system(cfg))
        else:
            todo.append(cfg)
    jobs = max(1, min(getattr(r, "train_jobs", 1), len(todo)))
    if jobs > 1 and (r.launch.ngpu or r.launch.launcher != "none"):
        raise StageError("--train_jobs > 1 trains several systems side by side on CPU; "
                         "not with --ngpu or a --launcher (train them one after another there)")
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))} if jobs > 1 else None

    def one(cfg: str) -> None:
        train(task, cfg, r.system(cfg), r.launch, args, MODEL_FILES[task], env)
        mark_done(r.system(cfg))

    if jobs == 1:
        for cfg in todo:
            one(cfg)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {cfg: pool.submit(one, cfg) for cfg in todo}
    failed = {cfg: f.exception() for cfg, f in futures.items() if f.exception() is not None}
    if failed:
        raise StageError("; ".join(f"{r.system(c).name}: {e}" for c, e in failed.items()))


def pack(task: str, files: dict[str, Path], options: list[Path], out: Path, log_file: Path) -> Path:
    """``espnet2.bin.pack`` into ``out`` (written atomically): ``files`` are its named inputs (e.g.
    ``asr_train_config``, ``asr_model_file``, ``lm_train_config``, ``lm_file``), ``options`` the files the
    configs refer to (statistics, BPE model), whose paths ESPnet rewrites on unpacking. The zip loads in
    ``s4speech transcribe --model`` and ESPnet's inference classes."""
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    cmd = [sys.executable, "-m", "espnet2.bin.pack", task, "--outpath", tmp]
    for key, path in files.items():
        cmd += [f"--{key}", path]
    for path in options:
        cmd += ["--option", path]
    run(cmd, log_file, f"packing {out.name}")
    tmp.replace(out)
    return out
