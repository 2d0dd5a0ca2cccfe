"""Import an ESPnet ASR model with ESPnet's built-in ``decoder: s4`` as ``decoder: ssm``.

    s4speech import-espnet-s4 --config exp/asr/config.yaml --model exp/asr/valid.acc.ave.pth --out DIR

writes DIR/config.yaml and DIR/model.pth, which ``ASRTask.build_model_from_file`` loads after
``import s4speech``. Everything but the decoder (frontend, normalize, encoder, CTC, ...) is copied
as it is, config and state-dict entries alike.

ESPnet's S4 decoder (``espnet2.asr.decoder.s4_decoder.S4Decoder``) is a ``SequenceModel`` whose
layer list repeats ``[s4, mha, ff]``, each wrapped in a residual block with a LayerNorm (before the
layer with ``prenorm: true``, after the residual sum otherwise) and a final LayerNorm (pre-norm
only). That is exactly our ``DecoderBlock`` (S4, cross-attention, feed-forward), so the mapping is
one to one:

* S4 layer (NPLR kernel, rank 1, ``real_type: exp``): A = diag(w) - P P^*, w = -exp(inv_w_real) +
  i w_imag, bilinear discretization, y = 2 Re(C x) + D u, GELU, Linear + GLU. The same system as our
  ``S4Kernel`` with Lambda = w (``log_L_real = inv_w_real``), the same P and B, and ``n_ssm`` copies of
  (A, B) shared by the channels (channel h uses copy h mod n_ssm). The one reparameterisation: ESPnet
  stores C~ = C (I - dA^L) for its internal kernel length L (the buffer ``L``; 0 = never set up), we
  store the true C, obtained in float64 as C = C~ (I - dA^L)^-1 (what ESPnet's own ``_setup_step``
  computes, in float32, before stepping).
* mha: separate q/k/v/out projections -> ours q, kv (k and v stacked), out.
* ff: Linear, activation, Linear -> ours w1, w2 with the same activation.

What cannot be expressed exactly is refused with the reason (other layer lists, S4D/diagonal mode,
rank > 1, bandlimit, gates/bottlenecks, transposed models, other residual or norm types, pooling).
Training-only settings (dropout, drop_path, tie_dropout) have no effect on the function; the
converted model uses ``dropout_rate`` = the decoder's ``dropout`` and its ``drop_path``.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import yaml

from s4speech.io.files import atomic_output, atomic_write

ESPNET_S4_DEFAULTS = dict(
    input_layer="embed", dropinp=0.0, dropout=0.25, prenorm=True, n_layers=16, transposed=False,
    tie_dropout=False, n_repeat=1, layer=None, residual=None, norm=None, pool=None, track_norms=True,
    drop_path=0.0,
)
# options of ESPnet's S4 layer / SSKernel that are either irrelevant to the function (initialisation,
# training-time dropout, logging, the keops switch) or handled below
S4_LAYER_OK = {"_name_", "d_state", "l_max", "channels", "bidirectional", "activation", "postact", "hyper_act",
               "dropout", "tie_dropout", "bottleneck", "gate", "transposed", "verbose", "measure", "rank",
               "dt_min", "dt_max", "deterministic", "lr", "mode", "n_ssm", "measure_args", "keops",
               "real_type", "real_tolerance", "bandlimit"}
MHA_OK = {"_name_", "n_head", "dropout", "transposed"}
FF_OK = {"_name_", "expand", "activation", "dropout", "tie_dropout", "transposed", "initializer", "d_output"}


class UnsupportedModel(ValueError):
    """The ESPnet model uses a part that decoder: ssm cannot express exactly."""


def _name(cfg, default=None):
    if cfg is None:
        return default
    return cfg if isinstance(cfg, str) else cfg.get("_name_")


def convert_decoder_conf(conf: dict) -> dict:
    """ESPnet ``decoder_conf`` of ``decoder: s4`` -> our ``decoder_conf`` of ``decoder: ssm``."""
    from s4speech.nn import ACTIVATIONS

    c = dict(ESPNET_S4_DEFAULTS)
    c.update(conf or {})

    def need(ok, why):
        if not ok:
            raise UnsupportedModel(why)

    need(c["input_layer"] == "embed", f"input_layer {c['input_layer']!r}: only 'embed' exists in ESPnet")
    need(not c["transposed"], "transposed: true uses a scalar TransposedLN norm, not LayerNorm")
    need(c["pool"] is None, "pooling between stages changes the sequence length")
    need(_name(c["residual"]) in ("residual", "R")
         and not {k for k in (c["residual"] if isinstance(c["residual"], dict) else {}) if k != "_name_"},
         f"residual {c['residual']!r}: only the plain residual x + f(x) (residual: residual) is supported")
    need(_name(c["norm"]) == "layer"
         and not {k for k in (c["norm"] if isinstance(c["norm"], dict) else {}) if k != "_name_"},
         f"norm {c['norm']!r}: only 'layer' (LayerNorm with default eps) is supported")
    layers = c["layer"] if isinstance(c["layer"], (list, tuple)) else [c["layer"]]
    names = [_name(layer) for layer in layers]
    need(names == ["s4", "mha", "ff"], f"layer list {names}: only [s4, mha, ff] (a decoder block) is supported")
    s4, mha, ff = (dict(layer) for layer in layers)

    extra = set(s4) - S4_LAYER_OK
    need(not extra, f"S4 layer options {sorted(extra)} are not supported")
    need(s4.get("mode", "nplr") == "nplr", f"S4 mode {s4.get('mode')!r}: only 'nplr' (S4 with DPLR A) is supported; "
         "ESPnet's 'diag' kernel uses a bilinear S4D, ours is zero-order hold")
    need(s4.get("rank", 1) == 1, "S4 rank > 1 (e.g. measure legt) is not supported: our A is diagonal minus rank one")
    need(s4.get("channels", 1) == 1, "S4 channels > 1 is not supported")
    need(not s4.get("bidirectional", False), "a bidirectional S4 layer cannot decode step by step")
    need(s4.get("activation", "gelu") == "gelu", f"S4 activation {s4.get('activation')!r}: only gelu")
    need(s4.get("postact", "glu") == "glu", f"S4 postact {s4.get('postact')!r}: only glu")
    for k in ("hyper_act", "bottleneck", "gate", "bandlimit"):
        need(s4.get(k) is None, f"S4 option {k}={s4.get(k)!r} is not supported")
    need(s4.get("real_type", "exp") == "exp", f"S4 real_type {s4.get('real_type')!r}: only 'exp'")
    lr = s4.get("lr")
    need(lr is None or isinstance(lr, (int, float)), f"S4 lr {lr!r}: only one learning rate for (dt, A, B)")

    extra = set(mha) - MHA_OK
    need(not extra, f"mha options {sorted(extra)} are not supported")
    extra = set(ff) - FF_OK
    need(not extra, f"ff options {sorted(extra)} are not supported")
    need(ff.get("d_output") is None, "ff d_output must be the model width")
    act = ff.get("activation", "gelu")
    act = "identity" if act in (None, "id", "identity", "linear") else act
    need(act in ACTIVATIONS, f"ff activation {act!r} is not supported")

    out = dict(
        num_blocks=int(c["n_layers"]) * int(c["n_repeat"]),
        attention_heads=int(mha["n_head"]),
        linear_units=None,  # filled in by the caller (needs the width): expand * d_model
        dropout_rate=float(c["dropout"]),
        d_state=int(s4.get("d_state", 64)),
        kernel="s4",
        dt_min=float(s4.get("dt_min", 1e-3)),
        dt_max=float(s4.get("dt_max", 1e-1)),
        ff_activation=act,
        normalize_before=bool(c["prenorm"]),
    )
    if float(c.get("drop_path", 0.0)):
        out["drop_path"] = float(c["drop_path"])  # training only: kept for fine-tuning the converted model
    if lr is not None:
        out["ssm_lr"] = float(lr)
    if s4.get("n_ssm") is not None:
        out["n_ssm"] = int(s4["n_ssm"])
    out["_expand"] = int(ff.get("expand", 2))
    return out


def true_C(log_dt, inv_w_real, w_imag, P, B, C_tilde, L: int, n_ssm: int) -> torch.Tensor:
    """C = C~ (I - dA^L)^-1 in float64 (C~ = C when L = 0). All tensors in ESPnet's layout without
    the leading channel/rank axis; returns (H, N/2, 2) float32 in view_as_real form."""
    from s4speech.ssm.kernels import S4Kernel

    H, n = C_tilde.shape[:2]
    if L == 0:
        return C_tilde.float().clone()
    k = S4Kernel(H, 2 * n, n_ssm=n_ssm).double()
    with torch.no_grad():
        k.log_dt.copy_(log_dt)
        k.log_L_real.copy_(inv_w_real)
        k.L_imag.copy_(w_imag)
        k.P.copy_(P)
        k.B.copy_(B)
        k.C.copy_(C_tilde)
        dA, _, c_t = k.discrete_system(torch.float64)  # c_t: 2 [Re C~, -Im C~]
        M = torch.eye(2 * n, dtype=torch.float64) - torch.linalg.matrix_power(dA, L)
        c = torch.linalg.solve(M.transpose(-1, -2), c_t.unsqueeze(-1)).squeeze(-1)  # c M = c~
        C = torch.complex(c[:, :n], -c[:, n:]) / 2
    return torch.view_as_real(C).float().contiguous()


def convert_state_dict(sd: dict, conf: dict, prefix: str = "decoder.") -> dict:
    """ESPnet S4Decoder entries (under ``prefix``) -> SSMDecoder entries; the rest is copied as is."""
    prenorm = conf["normalize_before"]
    nb = conf["num_blocks"]
    out, used = {}, set()

    def take(key):
        used.add(prefix + key)
        return sd[prefix + key]

    def has(key):
        return prefix + key in sd

    out[prefix + "embed.weight"] = take("embed.weight")
    out[prefix + "output_layer.weight"] = take("output.weight")
    out[prefix + "output_layer.bias"] = take("output.bias")
    if prenorm:
        out[prefix + "after_norm.weight"] = take("decoder.norm.norm.weight")
        out[prefix + "after_norm.bias"] = take("decoder.norm.norm.bias")
    for i in range(nb):
        e = [f"decoder.layers.{3 * i + j}." for j in range(3)]
        o = f"{prefix}decoders.{i}."
        for j, norm in enumerate(["norm1", "norm2", "norm3"]):
            for w in ("weight", "bias"):
                out[o + f"{norm}.{w}"] = take(e[j] + f"norm.norm.{w}")
        # S4
        kk = e[0] + "layer.kernel.kernel."
        P, B = take(kk + "P"), take(kk + "B")
        if P.shape[0] != 1:
            raise UnsupportedModel(f"S4 rank {P.shape[0]} (P {tuple(P.shape)}) is not supported")
        if take(e[0] + "layer.D").shape[0] != 1:
            raise UnsupportedModel("S4 channels > 1 is not supported")
        n_ssm = P.shape[1]
        L = int(take(kk + "L").item())
        C_t = take(kk + "C")
        if C_t.shape[0] != 1:
            raise UnsupportedModel("S4 channels > 1 is not supported")
        out[o + "ssm.kernel.log_dt"] = take(kk + "log_dt")
        out[o + "ssm.kernel.log_L_real"] = take(kk + "inv_w_real")
        out[o + "ssm.kernel.L_imag"] = take(kk + "w_imag")
        out[o + "ssm.kernel.P"] = P[0]
        out[o + "ssm.kernel.B"] = B[0]
        out[o + "ssm.kernel.C"] = true_C(sd[prefix + kk + "log_dt"], sd[prefix + kk + "inv_w_real"],
                                         sd[prefix + kk + "w_imag"], P[0], B[0], C_t[0], L, n_ssm)
        out[o + "ssm.D"] = sd[prefix + e[0] + "layer.D"][0]
        for w in ("weight", "bias"):
            out[o + f"ssm.output_linear.{w}"] = take(e[0] + f"layer.output_linear.0.{w}")
        # cross-attention
        a = e[1] + "layer."
        for w in ("weight", "bias"):
            out[o + f"src_attn.q.{w}"] = take(a + f"linear_q.{w}")
            out[o + f"src_attn.kv.{w}"] = torch.cat([take(a + f"linear_k.{w}"), take(a + f"linear_v.{w}")])
            out[o + f"src_attn.out.{w}"] = take(a + f"linear_out.{w}")
        # feed-forward (the first Linear is wrapped with its activation unless that is the identity)
        f = e[2] + "layer.ff."
        first = "0.0." if has(f + "0.0.weight") else "0."
        for w in ("weight", "bias"):
            out[o + f"ff.w1.{w}"] = take(f + first + w)
            out[o + f"ff.w2.{w}"] = take(f + "2." + w)
    left = sorted(k for k in sd if k.startswith(prefix) and k not in used)
    if left:
        raise UnsupportedModel(f"decoder entries not understood: {left[:10]}")
    for k, v in sd.items():
        if not k.startswith(prefix):
            out[k] = v
    return out


def convert(config: dict, state_dict: dict):
    """Returns (new config, new state dict)."""
    if config.get("decoder") != "s4":
        raise UnsupportedModel(f"config has decoder: {config.get('decoder')!r}, not ESPnet's 's4'")
    conf = convert_decoder_conf(copy.deepcopy(config.get("decoder_conf") or {}))
    d = state_dict["decoder.embed.weight"].shape[1]
    conf["linear_units"] = conf.pop("_expand") * d
    n_ssm = state_dict["decoder.decoder.layers.0.layer.kernel.kernel.P"].shape[1]
    H = state_dict["decoder.decoder.layers.0.layer.kernel.kernel.log_dt"].shape[0]
    if n_ssm != H:
        conf["n_ssm"] = n_ssm
    else:
        conf.pop("n_ssm", None)
    new_cfg = dict(config)
    new_cfg["decoder"] = "ssm"
    new_cfg["decoder_conf"] = conf
    return new_cfg, convert_state_dict(state_dict, conf)


def verify(old_cfg: dict, old_sd: dict, new_cfg: dict, new_sd: dict, steps: int = 24, seed: int = 0) -> float:
    """Max relative error of our teacher-forced decoder logits against ESPnet's own S4 recurrence
    (``setup_step`` + ``step``; unlike its CPU convolution path, that one is the model's exact function)."""
    import argparse as ap

    import s4speech  # noqa: F401
    from espnet2.tasks.asr import ASRTask

    def build(cfg, sd):
        m = ASRTask.build_model(ap.Namespace(**copy.deepcopy(cfg)))
        missing, unexpected = m.load_state_dict(sd, strict=False)  # ours refuse mismatches themselves
        if missing or unexpected:
            raise UnsupportedModel(f"the checkpoint does not match its config ({cfg.get('decoder')} decoder): "
                                   f"missing keys {sorted(missing)[:5]}, unexpected keys {sorted(unexpected)[:5]}")
        return m.decoder.eval()

    esp, ours = build(old_cfg, old_sd), build(new_cfg, new_sd)
    g = torch.Generator().manual_seed(seed)
    D = ours.decoders[0].src_attn.kv.in_features
    V = ours.output_layer.out_features
    x = torch.randn(1, 16, D, generator=g)
    ys = torch.randint(0, V, (1, steps), generator=g)
    with torch.no_grad():
        ref = espnet_recurrent_logits(esp, x, ys)
        got = ours(x, torch.tensor([16]), ys, torch.tensor([steps]))[0]
    return ((got - ref).norm() / ref.norm()).item()


def espnet_recurrent_logits(esp, x: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Logits of ESPnet's S4Decoder run as a recurrence, one token at a time (batch 1)."""
    for m in esp.modules():
        if hasattr(m, "setup_step"):
            m.setup_step()
    state = esp.decoder.default_state(1, device=x.device)
    out = []
    for t in range(ys.shape[1]):
        h, state = esp.decoder.step(esp.embed(ys[:, t]), state=state, memory=x)
        out.append(esp.output(h))
    return torch.stack(out, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="s4speech import-espnet-s4",
        description="Convert an ESPnet ASR model with ESPnet's 'decoder: s4' into one with 'decoder: ssm'.",
    )
    p.add_argument("--config", required=True, type=Path, help="the model's config.yaml (decoder: s4)")
    p.add_argument("--model", required=True, type=Path, help="the model's state dict (.pth)")
    p.add_argument("--out", required=True, type=Path, help="output dir: config.yaml and model.pth")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip comparing the converted decoder against ESPnet's S4 recurrence")
    a = p.parse_args(argv)
    config = yaml.safe_load(a.config.read_text(encoding="utf-8"))
    try:  # tensors only: a third-party checkpoint runs no code on loading
        sd = torch.load(a.model, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - one line naming the file
        print(f"import-espnet-s4: {a.model}: not a checkpoint of tensors ({' '.join(str(e).split())[:200]})",
              file=sys.stderr)
        return 2
    if "module" in sd and isinstance(sd["module"], dict):
        sd = sd["module"]
    try:
        new_cfg, new_sd = convert(config, sd)
        err = verify(config, sd, new_cfg, new_sd) if a.verify else None
    except UnsupportedModel as e:
        print(f"import-espnet-s4: cannot convert exactly: {e}", file=sys.stderr)
        return 2
    if err is not None:
        print(f"verify: decoder logits vs ESPnet's S4 recurrence, relative error {err:.2e}")
        if not err < 1e-4:
            print("import-espnet-s4: verification failed", file=sys.stderr)
            return 1
    atomic_output(a.out / "model.pth", lambda tmp: torch.save(new_sd, tmp))
    atomic_write(a.out / "config.yaml", yaml.safe_dump(new_cfg, sort_keys=False, allow_unicode=True))
    print(f"wrote {a.out / 'config.yaml'} and {a.out / 'model.pth'} (decoder: ssm, {new_cfg['decoder_conf']['num_blocks']} blocks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
