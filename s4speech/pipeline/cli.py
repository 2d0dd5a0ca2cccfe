"""``python -m s4speech.recipe`` (``s4speech recipe``): run a recipe's stages.

    python -m s4speech.recipe [--task asr] --corpus asterisk --stage 1 --stop_stage 11 \\
        --asr_config conf/demo/asr_ssm.yaml --asr_config conf/demo/asr_transformer.yaml ...
    python -m s4speech.recipe --task tts --corpus ljspeech --tts_config conf/ljspeech/tts_ssm.yaml ...

A recipe's ``run.sh`` passes its defaults, then ``--``, then the user's options: after ``--`` an option
replaces the default (later wins, as ESPnet's run.sh / asr.sh); a repeatable option (``--asr_config``,
``--tts_config``, ``--inference_config``, ``--lm_train_text``) given there replaces run.sh's whole list.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from s4speech.pipeline import asr, tts
from s4speech.pipeline.runner import run_stages
from s4speech.pipeline.train import LAUNCHERS, Launch

TASKS = {"asr": (asr.ASRRecipe, asr.STAGES), "tts": (tts.TTSRecipe, tts.STAGES)}
LAUNCH_FIELDS = ("ngpu", "num_nodes", "launcher", "nproc_per_node", "node_rank", "master_addr", "master_port",
                 "num_workers")


def str2bool(v: str) -> bool:
    if v.lower() in ("true", "yes", "1"):
        return True
    if v.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def get_parser(task: str) -> argparse.ArgumentParser:
    stages = "\n".join(f"  {n:2d} {st.name}" for n, st in TASKS[task][1].items())
    p = argparse.ArgumentParser(prog="python -m s4speech.recipe", description=__doc__ + f"\n{task} stages:\n{stages}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=TASKS, default="asr")
    p.add_argument("--corpus", required=True, help="s4speech.corpora module preparing the data, or 'none'")
    p.add_argument("--stage", type=int, default=1)
    p.add_argument("--stop_stage", type=int, default=max(TASKS[task][1]))
    p.add_argument("--corpus_dir", type=Path, default=Path("downloads"))
    p.add_argument("--datadir", type=Path, default=Path("data"))
    p.add_argument("--dumpdir", type=Path, default=Path("dump"))
    p.add_argument("--expdir", type=Path, default=Path("exp"))
    p.add_argument("--results", type=Path, default=Path("RESULTS.md"), help="the report (stage 'report')")
    p.add_argument("--train_set", default="train")
    p.add_argument("--valid_set", default="dev")
    p.add_argument("--test_sets", nargs="+", default=["test"])
    p.add_argument("--fs", type=int, default=None, help="sample rate (default: the configs')")
    p.add_argument("--min_sec", type=float, default=0.2)
    p.add_argument("--max_sec", type=float, default=30.0 if task == "asr" else 20.0)
    p.add_argument("--nj", type=int, default=4, help="processes of the data stages")
    p.add_argument("--audio_format", choices=["flac", "wav"], default="flac", help="audio the data stages write")
    p.add_argument("--train_jobs", type=int, default=1,
                   help="systems trained side by side (CPU only; the cores shared out among them)")
    p.add_argument("--train_args", default="", help="extra options for ESPnet's training, e.g. '--max_epoch 3'")
    g = p.add_argument_group("training on GPUs and nodes")
    g.add_argument("--ngpu", type=int, default=0, help="GPUs per node")
    g.add_argument("--num_nodes", type=int, default=1)
    g.add_argument("--launcher", choices=LAUNCHERS, default="none",
                   help="torchrun: --nproc_per_node processes per node (run on each node with --node_rank); "
                        "slurm: srun over --num_nodes")
    g.add_argument("--nproc_per_node", type=int, default=0, help="default: --ngpu (1 on CPU)")
    g.add_argument("--node_rank", type=int, default=0)
    g.add_argument("--master_addr", default="127.0.0.1")
    g.add_argument("--master_port", type=int, default=29500)
    g.add_argument("--num_workers", type=int, default=4, help="data loader workers per training process")
    if task == "asr":
        p.add_argument("--asr_config", action="append", default=[], help="repeat to train and compare several systems")
        p.add_argument("--inference_config", action="append", default=[],
                       help="repeat: every test set is decoded with each")
        p.add_argument("--long_sets", nargs="*", default=[])
        p.add_argument("--token_type", default="char", choices=["char", "bpe", "unigram"])
        p.add_argument("--nbpe", type=int, default=5000)
        p.add_argument("--speed_perturb_factors", type=float, nargs="*", default=[],
                       help="applied on the fly by the training data loader")
        p.add_argument("--inference_nj", type=int, default=None, help="parallel decoding jobs (default: --nj)")
        p.add_argument("--inference_batch_size", type=int, default=8,
                       help="utterances beam-searched together by each decoding job (1: one at a time)")
        p.add_argument("--gpu_inference", type=str2bool, default=False)
        p.add_argument("--inference_asr_model", default=None, help="model file in exp/<system>/ to decode with")
        p.add_argument("--use_lm", type=str2bool, default=False)
        p.add_argument("--lm_config", default=None)
        p.add_argument("--lm_train_text", action="append", type=Path, default=[],
                       help="LM text files (default: the corpus' LM text); the transcripts are always added")
        p.add_argument("--lm_args", default="", help="extra options for ESPnet's lm_train")
    else:
        p.add_argument("--tts_config", action="append", default=[], help="repeat to train and compare several systems")
        p.add_argument("--threshold", type=float, default=0.5)
        p.add_argument("--maxlenratio", type=float, default=0.0,
                       help="synthesis limit, frames per (input token + 1); 0: from the training data")
        p.add_argument("--griffin_lim_iters", type=int, default=32)
        p.add_argument("--n_long", type=int, default=10)
        p.add_argument("--long_chars", type=int, default=400)
        p.add_argument("--max_eval_utts", type=int, default=0, help="evaluate the first N test utterances (0: all)")
        p.add_argument("--asr_model", type=Path, default=None, help="ESPnet ASR training dir for the CER")
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """Defaults before ``--``, the user's options after it (replacing, lists included)."""
    defaults, overrides = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task", choices=TASKS, default="asr")
    task = pre.parse_known_args(defaults + overrides)[0].task
    p = get_parser(task)
    ns = p.parse_args(defaults)
    if overrides:
        given = {a.split("=")[0] for a in overrides if a.startswith("--")}
        for action in p._actions:
            action.required = False  # given with the defaults already
            if isinstance(action, argparse._AppendAction) and set(action.option_strings) & given:
                setattr(ns, action.dest, [])
        ns = p.parse_args(overrides, namespace=ns)
    return ns


def build(ns: argparse.Namespace):
    kw = {k: v for k, v in vars(ns).items() if k not in ("task", "stage", "stop_stage", *LAUNCH_FIELDS)}
    kw["launch"] = Launch(**{k: getattr(ns, k) for k in LAUNCH_FIELDS})
    kw["train_args"] = ns.train_args.split()
    if ns.task == "asr":
        kw["asr_configs"] = kw.pop("asr_config")
        kw["inference_configs"] = kw.pop("inference_config")
        kw["inference_nj"] = kw["inference_nj"] or ns.nj
        kw["lm_args"] = kw["lm_args"].split()
    else:
        kw["tts_configs"] = kw.pop("tts_config")
    return TASKS[ns.task][0](**kw)


def main(argv=None) -> int:
    ns = parse(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    r = build(ns)
    train_stage = 7 if ns.task == "asr" else 5
    if ns.stage <= train_stage <= ns.stop_stage and not r.configs():
        print(f"error: at least one --{ns.task}_config is needed", file=sys.stderr)
        return 2
    return run_stages(r, TASKS[ns.task][1], ns.stage, ns.stop_stage)
