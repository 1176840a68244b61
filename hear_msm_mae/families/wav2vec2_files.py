"""wav2vec 2.0, HuBERT and WavLM files in their four layouts, read into torchaudio's names (Wav2Vec2Encoder's),
with their configuration and the waveform normalisation they were trained with (families/waveform.py makes the
Family of each).

Layouts (`layout`):
- "fairseq": fairseq's checkpoints (wav2vec_small.pt, libri960_big.pt, hubert_base_ls960.pt, ..., and the
  fine-tuned *_960h.pt, hubert_large_ll60k_finetune_ls960.pt), torch.save of fairseq's trainer state: 'model'
  (fairseq's names), 'args' (an argparse.Namespace: files of 2020) or 'cfg' (plain dicts: fairseq saves
  OmegaConf.to_container since March 2021) with 'model' and 'task' sections, 'task_state' (HuBERT's label sets,
  fine-tuning vocabularies: fairseq.data.dictionary.Dictionary objects, read as inert FairseqDictionary data),
  'optimizer_history', 'extra_state', 'criterion', 'last_optimizer_state' (containers, numbers, tensors). A
  fine-tuned file nests the encoder as w2v_encoder.w2v_model.* beside its CTC head w2v_encoder.proj.*, and the
  pre-trained configuration in cfg.model.w2v_args (args.w2v_args).
- "wavlm": WavLM's releases (WavLM-Base.pt, WavLM-Base+.pt, WavLM-Large.pt): {'cfg': WavLMConfig as a flat dict,
  'model'} in fairseq's names; q, k and v projections are fused into torchaudio's in_proj.
- "huggingface": a save_pretrained folder (hf_folder.py: config.json, preprocessor_config.json, the weights in
  transformers' names, prefixed wav2vec2. / hubert. / wavlm. in ForCTC and ForPreTraining files); the position
  conv's weight norm is weight_g / weight_v in the hub's 2021 conversions, parametrizations.weight.original0 / 1
  in newer saves.
- "torchaudio": a Wav2Vec2Model's state_dict() (torchaudio's bundles): no configuration, so it comes from the
  shapes and the releases' conventions (RELEASE_CONV_LAYERS strides, heads = width / 64, pre-LN blocks exactly
  with the layer-norm feature encoder, WavLM's max distance 800). wav2vec 2.0 and HuBERT share this
  architecture, so such a file names neither family: load it with the family's module.

WavLM's files hold its relative position table (`has_relative_table`); HuBERT's and wav2vec 2.0's name their model
(`stored_name`: cfg.model._name, args.arch, config.json model_type). Pre-training and fine-tuning heads are dropped
by name (DROPPED); keys no rule knows pass through, for the strict loader to name.
Waveform normalisation (frontend.Waveform), as the release was trained: the stored flag (fairseq's
task.normalize, WavLM's cfg.normalize: F.layer_norm per clip, eps 1e-5; preprocessor_config.json do_normalize:
Hugging Face's feature extractor, eps 1e-7), else the releases' rule: the layer-norm (Large) releases normalise.
"""
from __future__ import annotations

import argparse
import ast
import pickle
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ..frontend import WaveformConfig
from ..hf_folder import CONFIG, PREPROCESSOR
from ..encoders.wav2vec2 import RELEASE_CONV_LAYERS, Wav2Vec2Config

FAIRSEQ_EPS, HF_EPS = 1e-5, 1e-7  # waveform normalisation: F.layer_norm's, Wav2Vec2FeatureExtractor's
RELEASE_MAX_DISTANCE = 800
PREFIXES = ("w2v_encoder.w2v_model.", "w2v_encoder.", "wav2vec2.", "hubert.", "wavlm.")  # fine-tuned, hub heads
DROPPED = re.compile(r"^(mask_emb|masked_spec_embed|label_embs_concat|quantizer\.|project_q\.|project_hid\.|"
                     r"final_proj\.|proj\.|lm_head\.|aux\.|projector\.|classifier\.|layer_weights$)")
BLOCK = r"encoder.transformer.layers.\1."
FAIRSEQ_NAMES = [(re.compile(pattern), name) for pattern, name in (
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.", r"feature_extractor.conv_layers.\1.conv."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.(1\.)?", r"feature_extractor.conv_layers.\1.layer_norm."),
    (r"^layer_norm\.", "encoder.feature_projection.layer_norm."),
    (r"^post_extract_proj\.", "encoder.feature_projection.projection."),
    (r"^encoder\.pos_conv\.0\.", "encoder.transformer.pos_conv_embed.conv."),
    (r"^encoder\.layer_norm\.", "encoder.transformer.layer_norm."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.relative_attention_bias\.", BLOCK + "attention.rel_attn_embed."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.grep_linear\.", BLOCK + "attention.gru_rel_pos_linear."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.grep_a$", BLOCK + "attention.gru_rel_pos_const"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.", BLOCK + "attention."),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.", BLOCK + "layer_norm."),
    (r"^encoder\.layers\.(\d+)\.fc1\.", BLOCK + "feed_forward.intermediate_dense."),
    (r"^encoder\.layers\.(\d+)\.fc2\.", BLOCK + "feed_forward.output_dense."),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.", BLOCK + "final_layer_norm."))]
HF_NAMES = [(re.compile(r"^feature_projection\."), "encoder.feature_projection."),
            (re.compile(r"^encoder\.(?!transformer\.|feature_projection\.)"), "encoder.transformer.")]
# the weight norm's 2021 names (hub conversions, older torchaudio) -> torch's parametrization
WEIGHT_NORM = [(re.compile(rf"pos_conv_embed\.conv\.weight_{old}$"), f"pos_conv_embed.conv.{new}")
               for old, new in (("g", "parametrizations.weight.original0"), ("v", "parametrizations.weight.original1"))]
QKV = re.compile(r"^(encoder\.transformer\.layers\.\d+\.attention\.)([qkv]|out)_proj\.(weight|bias)$")
TABLE = re.compile(r"(relative_attention_bias|rel_attn_embed)\.weight$")


class FairseqDictionary:
    """A pickled fairseq.data.dictionary.Dictionary (a label set or vocabulary in task_state), read as inert
    data: the unpickler gives this class the pickled state (symbols, counts, indices, special words) as its
    __dict__, and nothing of fairseq is imported or run. It is only ever rebuilt from its state."""

    def __init__(self, *args, **kwargs):
        if args or kwargs:
            raise pickle.UnpicklingError("a fairseq Dictionary is rebuilt from its pickled state, never called "
                                         "with arguments: this file is not one fairseq wrote")


SAFE_GLOBALS = (argparse.Namespace, (FairseqDictionary, "fairseq.data.dictionary.Dictionary"))


def _fields(value: Any) -> Mapping[str, Any]:
    return vars(value) if isinstance(value, argparse.Namespace) else value if isinstance(value, Mapping) else {}


def layout(contents: Mapping[str, Any]) -> Optional[str]:
    """"huggingface", "fairseq", "wavlm", "torchaudio" or None (not a file of these families)."""
    if isinstance(contents.get(CONFIG), dict):
        return "huggingface"
    weights = contents.get("model")
    if isinstance(weights, dict) and any(k.endswith("feature_extractor.conv_layers.0.0.weight") for k in weights):
        cfg = contents.get("cfg")
        if isinstance(cfg, dict) and "model" in cfg or isinstance(contents.get("args"), argparse.Namespace):
            return "fairseq"
        return "wavlm" if isinstance(cfg, dict) else None
    return "torchaudio" if "feature_extractor.conv_layers.0.conv.weight" in contents else None


def _sections(contents: Mapping[str, Any]) -> Tuple[Mapping[str, Any], Mapping[str, Any]]:
    """The (model, task) configuration of a fairseq or WavLM file; a fine-tuned file's model is the pre-trained
    one it stores (w2v_args)."""
    cfg = contents.get("cfg")
    if isinstance(cfg, Mapping) and "model" in cfg:
        model, task = _fields(cfg["model"]), _fields(cfg.get("task"))
    else:  # a 2020 fairseq file's args, or WavLM's flat cfg: one namespace
        model = task = _fields(contents.get("args")) or _fields(cfg)
    pretrained = _fields(model.get("w2v_args"))
    return (_fields(pretrained.get("model")) or pretrained if pretrained else model), task


def stored_name(contents: Mapping[str, Any], kind: str) -> Optional[str]:
    if kind == "huggingface":
        return contents[CONFIG].get("model_type")
    if kind == "fairseq":
        cfg = contents.get("cfg")
        return _fields(cfg["model"]).get("_name") if isinstance(cfg, Mapping) and "model" in cfg else \
            getattr(contents.get("args"), "arch", None)
    return None


def _raw_weights(contents: Mapping[str, Any], kind: str) -> Dict[str, Any]:
    return contents if kind == "torchaudio" else contents["model"]


def has_relative_table(contents: Mapping[str, Any], kind: str) -> bool:
    """WavLM's relative position table (every layout names it `relative_attention_bias` or `rel_attn_embed`)."""
    return any(TABLE.search(k) for k in _raw_weights(contents, kind))


def _rename(key: str, rules) -> str:
    for pattern, name in rules:
        if pattern.search(key):
            return pattern.sub(name, key, count=1)
    return key


def torchaudio_weights(contents: Mapping[str, Any], kind: str, relative_attention: bool) -> Dict[str, torch.Tensor]:
    """The encoder's weights in torchaudio's names: prefixes stripped, heads dropped, names mapped, WavLM's q, k, v
    fused; keys no rule knows pass through for the strict loader to name."""
    rules = {"fairseq": FAIRSEQ_NAMES, "wavlm": FAIRSEQ_NAMES, "huggingface": HF_NAMES, "torchaudio": []}[kind]
    weights = {}
    for key, value in _raw_weights(contents, kind).items():
        key = next((key[len(p):] for p in PREFIXES if key.startswith(p)), key)
        if not DROPPED.match(key):
            weights[_rename(_rename(key, rules), WEIGHT_NORM)] = value
    if relative_attention:  # torchaudio's WavLM attention is an nn.MultiheadAttention: one in_proj, out_proj inside
        parts: Dict[Tuple[str, str], Dict[str, torch.Tensor]] = {}
        for key in [k for k in weights if QKV.match(k)]:
            prefix, part, kind_ = QKV.match(key).groups()
            if part == "out":
                weights[f"{prefix}attention.out_proj.{kind_}"] = weights.pop(key)
            else:
                parts.setdefault((prefix, kind_), {})[part] = weights.pop(key)
        for (prefix, kind_), qkv in parts.items():
            if len(qkv) < 3:
                raise ValueError(f"{prefix}: the {kind_} of only the {'/'.join(sorted(qkv))} projections")
            weights[f"{prefix}attention.in_proj_{kind_}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    return weights


def conv_layers(text: str) -> Tuple[Tuple[int, int, int], ...]:
    """fairseq's conv_feature_layers, e.g. "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2", read as the
    list arithmetic it is (fairseq evaluates it; nothing is evaluated here)."""
    def value(node):
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(item) for item in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        raise ValueError(f"conv_feature_layers {text!r} is not a list expression of (channels, kernel, stride)")
    try:
        return tuple(tuple(layer) for layer in value(ast.parse(str(text), mode="eval").body))
    except (SyntaxError, TypeError) as e:
        raise ValueError(f"conv_feature_layers {text!r} is not a list expression: {e}") from None


def _require(fields: Mapping[str, Any], names, where: str) -> Dict[str, Any]:
    missing = [name for name in names if name not in fields]
    if missing:
        raise ValueError(f"the {where} has no {missing}")
    return {name: fields[name] for name in names}


def config_from_fairseq(fields: Mapping[str, Any], relative_attention: bool) -> Wav2Vec2Config:
    """From fairseq's (and WavLM's) model configuration."""
    f = _require(fields, ["extractor_mode", "conv_feature_layers", "encoder_layers", "encoder_embed_dim",
                          "encoder_ffn_embed_dim", "encoder_attention_heads", "layer_norm_first"]
                 + (["num_buckets", "max_distance"] if relative_attention else []), "model configuration")
    release = {"activation_fn": "gelu", **({"relative_position_embedding": True, "gru_rel_pos": True}
                                            if relative_attention else {})}
    unsupported = {k: fields[k] for k, value in release.items() if k in fields and fields[k] != value}
    if unsupported:
        raise ValueError(f"unsupported model configuration {unsupported} (every release has gelu and WavLM's gated "
                         "relative position bias)")
    modes = {"default": "group_norm", "layer_norm": "layer_norm"}
    if f["extractor_mode"] not in modes:
        raise ValueError(f"extractor_mode {f['extractor_mode']!r} is not one of {sorted(modes)}")
    return Wav2Vec2Config(
        conv_layers=conv_layers(f["conv_feature_layers"]), extractor_mode=modes[f["extractor_mode"]],
        conv_bias=bool(fields.get("conv_bias", False)), embed_dim=f["encoder_embed_dim"],
        num_layers=f["encoder_layers"], num_heads=f["encoder_attention_heads"], ffn_dim=f["encoder_ffn_embed_dim"],
        pos_conv_kernel=fields.get("conv_pos", 128), pos_conv_groups=fields.get("conv_pos_groups", 16),
        layer_norm_first=bool(f["layer_norm_first"]), num_buckets=f.get("num_buckets", 0),
        max_distance=f.get("max_distance", 0))


def config_from_hf(config: Mapping[str, Any], relative_attention: bool) -> Wav2Vec2Config:
    """From a Hugging Face config.json (Wav2Vec2Config, HubertConfig, WavLMConfig)."""
    f = _require(config, ["feat_extract_norm", "conv_dim", "conv_kernel", "conv_stride", "conv_bias", "hidden_size",
                          "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_conv_pos_embeddings",
                          "num_conv_pos_embedding_groups", "do_stable_layer_norm"]
                 + (["num_buckets", "max_bucket_distance"] if relative_attention else []), f"{CONFIG}")
    unsupported = {k: config[k] for k, ok in (("hidden_act", "gelu"), ("feat_extract_activation", "gelu"),
                                              ("layer_norm_eps", 1e-5), ("feat_proj_layer_norm", True),
                                              ("conv_pos_batch_norm", False), ("add_adapter", False))
                   if k in config and config[k] != ok}
    if unsupported or f["feat_extract_norm"] not in ("group", "layer"):
        raise ValueError(f"unsupported {CONFIG} values {unsupported or {'feat_extract_norm': f['feat_extract_norm']}}")
    return Wav2Vec2Config(
        conv_layers=tuple(zip(f["conv_dim"], f["conv_kernel"], f["conv_stride"])),
        extractor_mode=f"{f['feat_extract_norm']}_norm", conv_bias=bool(f["conv_bias"]), embed_dim=f["hidden_size"],
        num_layers=f["num_hidden_layers"], num_heads=f["num_attention_heads"], ffn_dim=f["intermediate_size"],
        pos_conv_kernel=f["num_conv_pos_embeddings"], pos_conv_groups=f["num_conv_pos_embedding_groups"],
        layer_norm_first=bool(f["do_stable_layer_norm"]), num_buckets=f.get("num_buckets", 0),
        max_distance=f.get("max_bucket_distance", 0))


def config_from_weights(weights: Mapping[str, torch.Tensor], relative_attention: bool) -> Wav2Vec2Config:
    """From the shapes of a state dict in torchaudio's names, with the releases' conventions for the rest."""
    convs = [weights[f"feature_extractor.conv_layers.{i}.conv.weight"].shape
             for i in range(len(RELEASE_CONV_LAYERS)) if f"feature_extractor.conv_layers.{i}.conv.weight" in weights]
    if len(convs) != len(RELEASE_CONV_LAYERS) or "encoder.feature_projection.projection.weight" not in weights:
        raise ValueError(f"not a released feature encoder: {len(convs)} of its {len(RELEASE_CONV_LAYERS)} convolutions")
    embed_dim = weights["encoder.feature_projection.projection.weight"].shape[0]
    block = "encoder.transformer.layers.{}."
    depth = sum(1 for k in weights if re.fullmatch(r"encoder\.transformer\.layers\.\d+\.final_layer_norm\.weight", k))
    layer_norm = "feature_extractor.conv_layers.1.layer_norm.weight" in weights
    position = weights["encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1"].shape  # (D, D/g, K)
    table = weights.get(block.format(0) + "attention.rel_attn_embed.weight")
    return Wav2Vec2Config(
        conv_layers=tuple((shape[0], shape[2], stride) for shape, (_, _, stride) in zip(convs, RELEASE_CONV_LAYERS)),
        extractor_mode="layer_norm" if layer_norm else "group_norm",
        conv_bias="feature_extractor.conv_layers.0.conv.bias" in weights, embed_dim=embed_dim, num_layers=depth,
        num_heads=embed_dim // 64, ffn_dim=weights[block.format(0) + "feed_forward.intermediate_dense.weight"].shape[0],
        pos_conv_kernel=position[2], pos_conv_groups=embed_dim // position[1], layer_norm_first=layer_norm,
        num_buckets=table.shape[0] if relative_attention else 0,
        max_distance=RELEASE_MAX_DISTANCE if relative_attention else 0)


def frontend_config(contents: Mapping[str, Any], kind: str, config: Wav2Vec2Config) -> WaveformConfig:
    """The waveform as the release was trained on it: its sample rate, normalised per clip or raw."""
    release_rule = config.extractor_mode == "layer_norm"  # the Large releases normalise, the Base ones do not
    if kind == "huggingface":
        stored = contents[PREPROCESSOR] or {}
        normalize, eps, rate = stored.get("do_normalize", release_rule), HF_EPS, stored.get("sampling_rate", 16000)
    elif kind == "torchaudio":
        normalize, eps, rate = release_rule, FAIRSEQ_EPS, 16000
    else:
        task = _sections(contents)[1]
        normalize, eps, rate = task.get("normalize", release_rule), FAIRSEQ_EPS, task.get("sample_rate", 16000)
    return WaveformConfig(sample_rate=int(rate), min_samples=config.receptive_field,
                          normalize_eps=eps if normalize else None)


def read(contents: Mapping[str, Any], kind: str, relative_attention: bool
         ) -> Tuple[Wav2Vec2Config, Dict[str, torch.Tensor], WaveformConfig]:
    """(the encoder's configuration, its weights in torchaudio's names, the front end) of a file of layout `kind`."""
    weights = torchaudio_weights(contents, kind, relative_attention)
    if kind == "huggingface":
        config = config_from_hf(contents[CONFIG], relative_attention)
    elif kind == "torchaudio":
        config = config_from_weights(weights, relative_attention)
    else:
        config = config_from_fairseq(_sections(contents)[0], relative_attention)
    return config, weights, frontend_config(contents, kind, config)
