"""The paper-scale configs under conf/ follow the published ESPnet recipes they name, and a model trained
with ESPnet's published S4-decoder recipe imports with ``s4speech import-espnet-s4``.

The published values are in tests/data/espnet/ (each file names its source and commit). "Follows" is
checked on the *effective* configuration: what ESPnet's own parser makes of a file, with each component's
``*_conf`` completed by that component's defaults, so that writing a default out (``fs: 16k``) or leaving
it implicit compares equal. Every difference from the published config is declared below with its reason
(the same reasons the configs give in their header comments), and each declared difference must exist.

That every shipped ASR config builds and runs through ESPnet's ASRTask is tests/test_recipe.py
(``test_config_builds_and_runs_through_espnet``); the LM configs are built here, through LMTask.
"""
import argparse
import copy
import inspect
import re
from pathlib import Path

import humanfriendly
import pytest
import torch
import yaml

import s4speech  # noqa: F401  (registers decoder: ssm / encoder: ssm)
from s4speech.asr.convert import convert_decoder_conf, main as import_espnet_s4

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "tests/data/espnet"
CONF = ROOT / "conf"

S4_DEC = "librispeech/train_asr_s4_decoder.yaml"
WANDB = "logging only (wandb), left out"
PLOTS = "num_att_plot: 0, attention plots only"

# ours -> (published, {key that differs: why}); decoder_conf of decoder: ssm is checked on its own below
ASR = {
    "librispeech/asr_conformer_ssm.yaml": (S4_DEC, {
        "decoder": "decoder: ssm for ESPnet's decoder: s4", "decoder_conf": "mapped, see test_s4_decoder_conf",
        "use_wandb": WANDB, "wandb_name": WANDB, "num_att_plot": PLOTS}),
    "librispeech/asr_conformer_transformer.yaml": ("librispeech/train_asr_conformer10_hop_length160.yaml", {
        "num_att_plot": PLOTS}),
    "librispeech/asr_ssm_ssm.yaml": (S4_DEC, {
        "encoder": "S4 encoder: no published counterpart", "encoder_conf": "S4 encoder",
        "decoder": "decoder: ssm for ESPnet's decoder: s4", "decoder_conf": "mapped, see test_s4_decoder_conf",
        "use_wandb": WANDB, "wandb_name": WANDB, "num_att_plot": PLOTS}),
    "librispeech_100/asr_conformer_transformer.yaml": (
        "librispeech_100/train_asr_conformer_lr2e-3_warmup15k_amp_nondeterministic.yaml", {}),
    "librispeech_100/asr_conformer_ssm.yaml": (
        "librispeech_100/train_asr_conformer_lr2e-3_warmup15k_amp_nondeterministic.yaml", {
            "decoder": "S4 decoder in place of the Transformer decoder", "decoder_conf": "S4 decoder"}),
    "csj/asr_conformer_transformer.yaml": ("csj/train_asr_conformer.yaml", {}),
    "csj/asr_conformer_ssm.yaml": ("csj/train_asr_conformer.yaml", {
        "decoder": "S4 decoder in place of the Transformer decoder", "decoder_conf": "S4 decoder"}),
}
LM = {"librispeech/lm_transformer.yaml": "librispeech/train_lm_transformer2.yaml",
      "csj/lm_rnn.yaml": "csj/train_lm.yaml"}
DECODE = {"librispeech/decode.yaml": "librispeech/decode_asr.yaml",
          "librispeech_100/decode.yaml": "librispeech_100/decode_asr.yaml",
          "csj/decode.yaml": "csj/decode_asr.yaml"}
# S4-decoder configs without a published S4 counterpart: ESPnet's LibriSpeech S4 decoder at the size of
# the Transformer decoder they replace (their twin); the SSM learning rate is left to the base lr
SIZED_LIKE_TWIN = ["librispeech_100/asr_conformer_ssm.yaml", "csj/asr_conformer_ssm.yaml"]


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD}


def effective(task, path: Path) -> dict:
    """The training options ESPnet's ``task`` makes of the config file ``path``."""
    from espnet2.tasks.abs_task import optim_classes, scheduler_classes

    d = vars(task.get_parser().parse_args(["--config", str(path)]))
    d.pop("config")
    for cc in task.class_choices_list:
        if d.get(cc.name) is not None and f"{cc.name}_conf" in d and cc.name != "decoder":
            d[f"{cc.name}_conf"] = {**_defaults(cc.get_class(d[cc.name])), **(d[f"{cc.name}_conf"] or {})}
    for name, classes in (("optim", optim_classes), ("scheduler", scheduler_classes)):
        if d.get(name) is not None:
            d[f"{name}_conf"] = {**_defaults(classes[d[name]]), **d[f"{name}_conf"]}
            d[f"{name}_conf"].pop("params", None)
    fc = d.get("frontend_conf") or {}
    if isinstance(fc.get("fs"), str):
        fc["fs"] = humanfriendly.parse_size(fc["fs"])
    return d


def asr_task():
    from espnet2.tasks.asr import ASRTask

    return ASRTask


def shipped(rel: str) -> dict:
    return yaml.safe_load((CONF / rel).read_text())


def published(rel: str) -> dict:
    return yaml.safe_load((PUBLISHED / rel).read_text())


def mapped_s4_decoder(decoder_conf: dict, d_model: int) -> dict:
    """ESPnet's decoder: s4 options -> decoder: ssm options, as ``s4speech import-espnet-s4`` maps them."""
    out = convert_decoder_conf(copy.deepcopy(decoder_conf))
    out["linear_units"] = out.pop("_expand") * d_model
    return out


# ---- the configs follow the published ones ------------------------------------------------------------------
@pytest.mark.parametrize("ours", sorted(ASR))
def test_asr_config_follows_the_published_recipe(ours):
    ref, differ = ASR[ours]
    a, b = effective(asr_task(), CONF / ours), effective(asr_task(), PUBLISHED / ref)
    unexpected = {k: (a[k], b[k]) for k in a if k not in differ and a[k] != b[k]}
    assert not unexpected, f"{ours} differs from ESPnet's {ref} (ours, published): {unexpected}"
    stale = [k for k in differ if a[k] == b[k]]
    assert not stale, f"declared differences that are not: {stale}"


def test_s4_decoder_conf_is_what_the_importer_maps_the_published_one_to():
    """decoder_conf of conf/librispeech/*_ssm.yaml = ESPnet's published decoder: s4 mapped to decoder: ssm.
    drop_path (0.1, stochastic depth) included."""
    pub = published(S4_DEC)
    want = mapped_s4_decoder(pub["decoder_conf"], pub["encoder_conf"]["output_size"])
    for ours in ("librispeech/asr_conformer_ssm.yaml", "librispeech/asr_ssm_ssm.yaml"):
        assert shipped(ours)["decoder_conf"] == want, ours
    assert pub["decoder_conf"]["drop_path"] == want["drop_path"] == 0.1


@pytest.mark.parametrize("ours", SIZED_LIKE_TWIN)
def test_s4_decoder_without_published_config_is_the_published_one_at_its_twins_size(ours):
    twin = shipped(ours.replace("_ssm.yaml", "_transformer.yaml"))["decoder_conf"]
    pub = published(S4_DEC)["decoder_conf"]
    want = mapped_s4_decoder(pub, shipped(ours)["encoder_conf"]["output_size"])
    want.update({k: twin[k] for k in ("num_blocks", "attention_heads", "linear_units", "dropout_rate")})
    want.pop("ssm_lr")  # the published S4 lr is its recipe's base lr; here the SSM parameters get the base lr
    assert shipped(ours)["decoder_conf"] == want


@pytest.mark.parametrize("ours", sorted(LM))
def test_lm_config_follows_the_published_one_and_builds_through_lmtask(ours):
    from espnet2.tasks.lm import LMTask

    a, b = effective(LMTask, CONF / ours), effective(LMTask, PUBLISHED / LM[ours])
    assert a == b, {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    args = argparse.Namespace(**a)
    args.token_list = ["<blank>", "<unk>"] + [f"t{i}" for i in range(46)] + ["<sos/eos>"]
    torch.manual_seed(0)
    model = LMTask.build_model(args).eval()
    assert type(model.lm).__name__ == {"transformer": "TransformerLM", "seq_rnn": "SequentialRNNLM"}[a["lm"]]
    with torch.no_grad():
        nll, lens = model.nll(torch.tensor([[3, 4, 5, 6]]), torch.tensor([4]))
    assert torch.isfinite(nll).all() and lens.tolist() == [5]


@pytest.mark.parametrize("ours", sorted(DECODE))
def test_decode_config_follows_the_published_one(ours):
    from espnet2.bin.asr_inference import get_parser

    p = get_parser()
    a, b = shipped(ours), published(DECODE[ours])
    keys = set(a) | set(b)
    assert keys <= {act.dest for act in p._actions}, f"not options of ESPnet's asr_inference: {keys}"
    assert {k: a.get(k, p.get_default(k)) for k in keys} == {k: b.get(k, p.get_default(k)) for k in keys}


def test_espnet_xavier_init_keeps_the_ssm_initialisation():
    """ESPnet's init: xavier_uniform rewrites every matrix; the S4 kernels put their HiPPO A, P, B back
    (espnet_initialization_fn), so the published CSJ configs' init can be kept."""
    from espnet2.torch_utils.initialize import initialize
    from s4speech.asr.decoder import SSMDecoder

    for kind, keep in (("s4", ("log_L_real", "L_imag", "P", "B")), ("s4d", ("log_A_real", "A_imag", "B"))):
        torch.manual_seed(0)
        dec = SSMDecoder(20, 32, attention_heads=4, linear_units=64, num_blocks=1, kernel=kind)
        kernel = dec.decoders[0].ssm.kernel
        before = {n: getattr(kernel, n).detach().clone() for n in keep + ("C",)}
        initialize(dec, "xavier_uniform")
        assert all(torch.equal(before[n], getattr(kernel, n)) for n in keep), kind
        assert not torch.equal(before["C"], kernel.C)  # ESPnet's initialisation did run


# ---- a model trained with ESPnet's published recipe imports ----------------------------------------------
@pytest.fixture
def one_thread():
    """One intra-op thread: this test's many small CPU ops gain nothing from more, and on a shared machine
    (more runnable threads than cores) OpenMP's waiting threads made it several times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_published_s4_decoder_recipe_model_imports_exactly(tmp_path, capsys, one_thread):
    """A randomly initialised ESPnet model built from the exact published train_asr_s4_decoder.yaml (full
    encoder and decoder, ~100 M parameters; only the vocabulary is small and global_mvn has made-up
    statistics), its S4 kernel length set by one training-mode forward as in training, saved as ESPnet
    saves an experiment (config.yaml + model.pth), imports with ``s4speech import-espnet-s4``: the CLI's
    own check (decoder logits against ESPnet's S4 recurrence) passes, the imported config's decoder_conf
    is the one conf/librispeech/asr_conformer_ssm.yaml ships, everything else is copied, and the SSM
    parameters keep ESPnet's optimizer groups (own lr, no weight decay)."""
    import numpy as np

    from espnet2.tasks.asr import ASRTask
    from s4speech.asr.convert import espnet_recurrent_logits

    V = 30
    tokens = ["<blank>", "<unk>"] + [f"t{i}" for i in range(V - 3)] + ["<sos/eos>"]
    stats = tmp_path / "feats_stats.npz"
    rng = np.random.default_rng(0)
    np.savez(stats, count=np.array(1000.0), sum=rng.normal(0, 10, 80) * 1000,
             sum_square=(rng.normal(0, 10, 80) ** 2 + 4.0) * 1000)
    args = ASRTask.get_parser().parse_args(["--config", str(PUBLISHED / S4_DEC), "--output_dir", str(tmp_path / "exp"),
                                            "--normalize", "global_mvn", "--normalize_conf", f"stats_file={stats}"])
    args.token_list, args.token_type, args.bpemodel = tokens, "bpe", None
    torch.manual_seed(0)
    model = ASRTask.build_model(args)
    assert type(model.decoder).__name__ == "S4Decoder" and len(model.decoder.decoder.layers) == 18
    n_params = sum(p.numel() for p in model.parameters())
    assert 90e6 < n_params < 115e6
    kernels = [m for n, m in model.named_modules() if n.endswith("layer.kernel.kernel")]
    assert len(kernels) == 6 and all(int(k.L.item()) == 0 for k in kernels)
    model.train()
    with torch.no_grad():  # a training step's forward: sets ESPnet's internal S4 kernel length (l_max: null)
        speech = torch.randn(2, 16000) * 0.1
        text = torch.randint(2, V - 1, (2, 40))
        loss, _, _ = model(speech, torch.tensor([16000, 12000]), text, torch.tensor([40, 33]))
    assert torch.isfinite(loss) and all(int(k.L.item()) == 41 for k in kernels)
    cfg = yaml.safe_load(yaml.safe_dump(vars(args)))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    torch.save(model.state_dict(), tmp_path / "model.pth")

    out = tmp_path / "ssm"
    rc = import_espnet_s4(["--config", str(tmp_path / "config.yaml"), "--model", str(tmp_path / "model.pth"),
                           "--out", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    err = float(re.search(r"relative error (\S+)", printed.out).group(1))
    assert err < 1e-4

    new_cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert new_cfg["decoder"] == "ssm"
    assert new_cfg["decoder_conf"] == shipped("librispeech/asr_conformer_ssm.yaml")["decoder_conf"]
    assert {k: v for k, v in new_cfg.items() if not k.startswith("decoder")} == \
        {k: v for k, v in cfg.items() if not k.startswith("decoder")}
    new, _ = ASRTask.build_model_from_file(out / "config.yaml", out / "model.pth")
    old_sd, new_sd = model.state_dict(), new.state_dict()
    rest = [k for k in old_sd if not k.startswith("decoder.")]
    assert all(torch.equal(old_sd[k], new_sd[k]) for k in rest)  # frontend, normalize, encoder, CTC

    # the imported decoder on the published encoder's output: ESPnet's logits (its exact recurrence)
    model.eval(), new.eval()
    with torch.no_grad():
        enc, enc_len = new.encode(torch.randn(1, 12000) * 0.1, torch.tensor([12000]))
        ys = torch.randint(2, V, (1, 30))
        ref = espnet_recurrent_logits(model.decoder, enc, ys)
        got = new.decoder(enc, enc_len, ys, torch.tensor([30]))[0]
    assert ((got - ref).norm() / ref.norm()).item() < 1e-4

    # optimizer groups: each SSM parameter keeps ESPnet's lr / weight decay (dt, A, P, B: 0.0025 and 0)
    def group_of(opt, p):
        g = next(g for g in opt.param_groups if any(q is p for q in g["params"]))
        return g["lr"], g["weight_decay"]

    a_opt, = ASRTask.build_optimizers(argparse.Namespace(**cfg), model)
    b_opt, = ASRTask.build_optimizers(argparse.Namespace(**new_cfg), new)
    assert type(a_opt) is type(b_opt) is torch.optim.AdamW
    names = {"log_dt": "log_dt", "inv_w_real": "log_L_real", "w_imag": "L_imag", "P": "P", "B": "B", "C": "C"}
    esp_k = dict(model.named_parameters())
    ours_k = dict(new.named_parameters())
    for i in range(6):
        for e, o in names.items():
            pa = esp_k[f"decoder.decoder.layers.{3 * i}.layer.kernel.kernel.{e}"]
            pb = ours_k[f"decoder.decoders.{i}.ssm.kernel.{o}"]
            assert group_of(a_opt, pa) == group_of(b_opt, pb) == ((0.0025, 0.01) if e == "C" else (0.0025, 0.0)), e
