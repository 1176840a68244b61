"""WavLM, HuBERT and wav2vec 2.0 files in every layout (wav2vec2_files.py): fairseq's (built here from the
golden weights in the layout fairseq writes, since fairseq cannot run here), WavLM's releases, Hugging Face
folders and torchaudio's state dicts; what each is detected as, what is dropped, and what is refused."""
import argparse
import json
import re
import shutil
import sys
import types
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import load_file, save_file

from hear_msm_mae.api import get_timestamp_embeddings, load_model
from hear_msm_mae.checkpoint import build_encoder, load_checkpoint
from hear_msm_mae.families.wav2vec2_files import FairseqDictionary, conv_layers

from conftest import arrays, golden_audio, golden_path, max_relative_error
from test_checkpoint import CreatesFile

RTOL = 1e-4
# transformers' names -> fairseq's (the inverse of the map in the golden folders' golden.json); a GroupNorm
# feature encoder's one norm (conv 0) is conv_layers.0.2 there
HF_TO_FAIRSEQ = [(re.compile(pattern), name) for pattern, name in (
    (r"^feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", r"feature_extractor.conv_layers.\1.2.1."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"^feature_projection\.layer_norm\.", "layer_norm."),
    (r"^feature_projection\.projection\.", "post_extract_proj."),
    (r"^encoder\.pos_conv_embed\.conv\.", "encoder.pos_conv.0."),
    (r"^encoder\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"^encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
    (r"^masked_spec_embed$", "mask_emb"))]


def final_frames(path, family=None, case="c_1x1.07s", **options):
    m = load_model(path, "cpu", family, dtype="float32", mode="reference", **options)
    return get_timestamp_embeddings(golden_audio(case), m)[0]


def expected(folder, case="c_1x1.07s"):
    a = arrays(folder)
    return a[f"{case}.x"] if folder.startswith("wavlm") else a[f"{case}.last_hidden_state"]


def hf_golden(folder):
    """(config.json, the weights in transformers' names) of a golden Hugging Face folder."""
    return json.loads((golden_path(f"{folder}/config.json")).read_text()), \
        load_file(str(golden_path(f"{folder}/model.safetensors")))


def fairseq_weights(folder):
    """A golden Hugging Face folder's weights in fairseq's names, with the pre-training heads fairseq saves."""
    config, weights = hf_golden(folder)
    renamed = {}
    for key, value in weights.items():
        if config["feat_extract_norm"] == "group":
            key = key.replace("feature_extractor.conv_layers.0.layer_norm.", "feature_extractor.conv_layers.0.2.")
        renamed[next((pattern.sub(name, key, count=1) for pattern, name in HF_TO_FAIRSEQ if pattern.search(key)),
                     key)] = value
    return renamed


def fairseq_model_cfg(folder, name):
    """The 'model' section fairseq writes for a golden Hugging Face folder's architecture."""
    config, _ = hf_golden(folder)
    layers = " + ".join(f"[({c},{k},{s})]" for c, k, s in zip(config["conv_dim"], config["conv_kernel"],
                                                                 config["conv_stride"]))
    return {"_name": name, "extractor_mode": "default" if config["feat_extract_norm"] == "group" else "layer_norm",
            "conv_feature_layers": layers, "conv_bias": config["conv_bias"], "encoder_layers": 2,
            "encoder_embed_dim": 192, "encoder_ffn_embed_dim": 768, "encoder_attention_heads": 3,
            "activation_fn": "gelu", "layer_norm_first": config["do_stable_layer_norm"], "conv_pos": 128,
            "conv_pos_groups": 16, "dropout": 0.1, "encoder_layerdrop": 0.05, "feature_grad_mult": 0.1}


@pytest.fixture
def fairseq_dictionary(monkeypatch):
    """A Dictionary as fairseq pickles it (GLOBAL fairseq.data.dictionary Dictionary, then its state), made
    with stand-in modules that exist only while it is pickled."""
    module = types.ModuleType("fairseq.data.dictionary")
    Dictionary = type("Dictionary", (), {"__module__": module.__name__})
    module.Dictionary = Dictionary
    for name in ("fairseq", "fairseq.data"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    dictionary = Dictionary()
    symbols = ["<s>", "<pad>", "</s>", "<unk>", "17", "42"]
    dictionary.__dict__.update(bos_word="<s>", unk_word="<unk>", pad_word="<pad>", eos_word="</s>", symbols=symbols,
                               count=[1, 1, 1, 1, 930, 611], indices={s: i for i, s in enumerate(symbols)},
                               bos_index=0, pad_index=1, eos_index=2, unk_index=3, nspecial=4)
    yield dictionary


def save_fairseq(path, model_cfg, weights, task, dictionaries, **extra):
    """torch.save of fairseq's trainer state (fairseq >= 2021-03: the configuration as plain containers)."""
    torch.save({"args": None, "cfg": {"_name": None, "common": {"fp16": True, "seed": 1337}, "model": model_cfg,
                                      "task": task, "criterion": {"_name": "hubert"}},
                "model": weights, "criterion": None,
                "optimizer_history": [{"criterion_name": "HubertCriterion", "optimizer_name": "FairseqAdam",
                                       "lr_scheduler_state": {"_step_count": 1}, "num_updates": 400000}],
                "task_state": dictionaries,
                "extra_state": {"metrics": OrderedDict(train=[(0, "loss", "AverageMeter",
                                                               {"val": 2.5, "sum": 5.0, "count": 2, "round": 3})]),
                                "previous_training_time": 3600.0,
                                "train_iterator": {"epoch": 40, "iterations_in_epoch": 0, "shuffle": True}},
                **extra}, path)


@pytest.fixture
def hubert_fairseq(tmp_path, fairseq_dictionary, monkeypatch):
    """hubert_base_ls960.pt's layout, from the golden hubert_tiny_hf weights (plus its label embeddings and
    final projection); the stand-in fairseq modules are gone before it is read."""
    weights = {**fairseq_weights("hubert_tiny_hf"), "label_embs_concat": torch.randn(504, 256),
               "final_proj.weight": torch.randn(256, 192), "final_proj.bias": torch.randn(256)}
    path = tmp_path / "hubert_base_ls960.pt"
    save_fairseq(path, fairseq_model_cfg("hubert_tiny_hf", "hubert"), weights,
                 {"_name": "hubert_pretraining", "normalize": False, "sample_rate": 16000, "labels": ["km"]},
                 {"dictionaries": [fairseq_dictionary]})
    monkeypatch.undo()
    assert "fairseq" not in sys.modules
    return path


def test_a_fairseq_hubert_checkpoint(hubert_fairseq):
    checkpoint = load_checkpoint(hubert_fairseq)  # detected
    assert checkpoint.family.name == "hubert" and checkpoint.frontend.normalize_eps is None
    (dictionary,) = checkpoint.contents["task_state"]["dictionaries"]
    assert type(dictionary) is FairseqDictionary and dictionary.symbols[4:] == ["17", "42"]
    build_encoder(checkpoint)  # label_embs_concat, final_proj and mask_emb dropped; the rest fits exactly
    assert max_relative_error(final_frames(hubert_fairseq), expected("hubert_tiny_hf")) < RTOL


def test_a_fairseq_large_file_normalises_as_fairseq_does(tmp_path, fairseq_dictionary, monkeypatch):
    """hubert_large_ll60k.pt's layout: layer-norm feature encoder (conv_layers.i.2.1), pre-LN, task.normalize:
    F.layer_norm of each clip with eps 1e-5 (the golden used Hugging Face's 1e-7: within 1e-5 relative)."""
    path = tmp_path / "hubert_large_ll60k.pt"
    save_fairseq(path, fairseq_model_cfg("hubert_tiny_hf_ln", "hubert"), fairseq_weights("hubert_tiny_hf_ln"),
                 {"_name": "hubert_pretraining", "normalize": True, "sample_rate": 16000},
                 {"dictionaries": [fairseq_dictionary]})
    monkeypatch.undo()
    checkpoint = load_checkpoint(path)
    assert checkpoint.config.extractor_mode == "layer_norm" and checkpoint.frontend.normalize_eps == 1e-5
    assert max_relative_error(final_frames(path), expected("hubert_tiny_hf_ln")) < RTOL


def test_a_fine_tuned_fairseq_file_without_its_ctc_head(tmp_path, fairseq_dictionary, monkeypatch):
    """hubert_large_ll60k_finetune_ls960.pt's layout: the encoder under w2v_encoder.w2v_model., the CTC head
    w2v_encoder.proj, the pre-trained configuration in cfg.model.w2v_args, the vocabulary in task_state."""
    weights = {f"w2v_encoder.w2v_model.{k}": v for k, v in fairseq_weights("hubert_tiny_hf").items()}
    weights.update({"w2v_encoder.proj.weight": torch.randn(32, 192), "w2v_encoder.proj.bias": torch.randn(32)})
    task = {"_name": "audio_finetuning", "normalize": False, "labels": "ltr"}
    model_cfg = {"_name": "hubert_ctc", "w2v_path": "/checkpoint/hubert_base_ls960.pt", "apply_mask": True,
                 "w2v_args": {"model": fairseq_model_cfg("hubert_tiny_hf", "hubert"), "task": task}}
    path = tmp_path / "hubert_base_finetune_ls960.pt"
    save_fairseq(path, model_cfg, weights, task, {"target_dictionary": fairseq_dictionary})
    monkeypatch.undo()
    assert load_checkpoint(path).family.name == "hubert"
    assert max_relative_error(final_frames(path), expected("hubert_tiny_hf")) < RTOL


def test_a_2020_fairseq_wav2vec2_file_with_args(tmp_path):
    """wav2vec_small.pt's layout: one argparse.Namespace of everything, the quantizer and projections of
    pre-training (dropped)."""
    args = argparse.Namespace(arch="wav2vec2", task="audio_pretraining", normalize=False, sample_rate=16000,
                              **{k: v for k, v in fairseq_model_cfg("wav2vec2_tiny_hf", "wav2vec2").items()
                                 if k != "_name"})
    weights = {**fairseq_weights("wav2vec2_tiny_hf"), "quantizer.vars": torch.randn(1, 640, 128),
               "quantizer.weight_proj.weight": torch.randn(640, 128), "quantizer.weight_proj.bias": torch.randn(640),
               "project_q.weight": torch.randn(256, 256), "project_q.bias": torch.randn(256),
               "final_proj.weight": torch.randn(256, 192), "final_proj.bias": torch.randn(256)}
    path = tmp_path / "wav2vec_small.pt"
    torch.save({"args": args, "model": weights, "optimizer_history": [{"num_updates": 400000}],
                "extra_state": {"train_iterator": {"epoch": 1}}, "last_optimizer_state": None}, path)
    assert load_checkpoint(path).family.name == "wav2vec2"
    assert max_relative_error(final_frames(path), expected("wav2vec2_tiny_hf")) < RTOL


def test_hugging_face_folders_by_folder_config_or_weights(tmp_path):
    """The folder, its config.json and its weights file name the same model; a ForCTC save's pytorch_model.bin
    (prefixed hubert., its lm_head dropped) with the new weight-norm names loads the same (the golden folders
    have the hub's legacy weight_g / weight_v)."""
    folder = golden_path("hubert_tiny_hf/config.json").parent
    reference = expected("hubert_tiny_hf")
    for path in (folder, folder / "config.json", folder / "model.safetensors"):
        assert max_relative_error(final_frames(path), reference) < RTOL
    _, weights = hf_golden("hubert_tiny_hf")
    renamed = {"hubert." + k.replace("weight_g", "parametrizations.weight.original0")
               .replace("weight_v", "parametrizations.weight.original1"): v for k, v in weights.items()}
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    torch.save({**renamed, "lm_head.weight": torch.randn(32, 192), "lm_head.bias": torch.randn(32)},
               tmp_path / "pytorch_model.bin")
    assert max_relative_error(final_frames(tmp_path), reference) < RTOL
    assert max_relative_error(final_frames(tmp_path / "pytorch_model.bin"), reference) < RTOL


def test_a_wavlm_hugging_face_folder(tmp_path):
    """microsoft/wavlm-large's layout, from the golden WavLM-Large weights: transformers' names (q, k, v apart, the
    table as attention.rel_attn_embed, the gates as gru_rel_pos_*), WavLMConfig's config.json, a feature extractor
    that normalises (its eps 1e-7 where WavLM's own code has 1e-5: within 1e-5 relative)."""
    state = build_encoder(load_checkpoint(golden_path("wavlm_tiny_ln/WavLM-Large_tiny_golden.pt"))).state_dict()
    weights = {}
    for key, value in state.items():
        key = key.replace("encoder.feature_projection.", "feature_projection.")
        key = key.replace("encoder.transformer.", "encoder.")
        if key.endswith(("in_proj_weight", "in_proj_bias")):
            kind = key.rsplit("_", 1)[1]
            for part, chunk in zip("qkv", value.chunk(3)):
                weights[key.replace(f"attention.in_proj_{kind}", f"{part}_proj.{kind}")] = chunk.contiguous()
        else:
            weights[key.replace("attention.attention.out_proj", "attention.out_proj")] = value.contiguous()
    save_file(weights, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "wavlm", "feat_extract_norm": "layer", "conv_dim": [128] * 7,
        "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2], "conv_bias": False,
        "hidden_size": 192, "num_hidden_layers": 2, "num_attention_heads": 3, "intermediate_size": 768,
        "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16, "do_stable_layer_norm": True,
        "num_buckets": 320, "max_bucket_distance": 800, "hidden_act": "gelu", "feat_extract_activation": "gelu",
        "layer_norm_eps": 1e-5}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True, "sampling_rate": 16000}))
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.family.name == "wavlm" and checkpoint.frontend.normalize_eps == 1e-7
    assert max_relative_error(final_frames(tmp_path), expected("wavlm_tiny_ln")) < RTOL


def test_a_hugging_face_folder_needs_its_config(tmp_path):
    shutil.copy(golden_path("hubert_tiny_hf/model.safetensors"), tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors: no config.json beside it"):
        load_checkpoint(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model weights"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("folder, family", [("hubert_tiny_hf", "hubert"), ("wavlm_tiny_ln", "wavlm")])
def test_torchaudio_state_dicts(tmp_path, folder, family):
    """A Wav2Vec2Model's state_dict() (torchaudio's bundles): the configuration from the shapes. wav2vec 2.0 and
    HuBERT share the architecture, so detection names both and the family's module decides; WavLM's table
    tells its own."""
    source = next(p for p in golden_path(f"{folder}/golden.json").parent.iterdir()
                  if p.suffix in (".pt", ".safetensors"))
    path = tmp_path / f"{family}_fairseq_base_ls960.pth"
    torch.save(build_encoder(load_checkpoint(source)).state_dict(), path)
    if family == "wavlm":
        assert load_checkpoint(path).family.name == "wavlm"
    else:
        with pytest.raises(ValueError, match=r"wav2vec 2.0 \(family='wav2vec2'\) and HuBERT \(family='hubert'\)"):
            load_checkpoint(path)
    assert load_checkpoint(path, family).config == load_checkpoint(source).config
    assert max_relative_error(final_frames(path, family), expected(folder)) < RTOL


def test_mismatched_missing_and_unexpected_weights_are_named(tmp_path):
    weights = fairseq_weights("hubert_tiny_hf")
    weights["encoder.layers.1.fc1.weight"] = torch.zeros(100, 192)
    del weights["encoder.layers.0.fc2.bias"]
    weights["encoder.layers.0.self_attn.rotary.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    save_fairseq(path, fairseq_model_cfg("hubert_tiny_hf", "hubert"), weights, {"normalize": False}, {})
    with pytest.raises(ValueError, match=r"broken.pt.*missing \['encoder.transformer.layers.0.feed_forward"
                                         r".output_dense.bias'\]; unexpected \['encoder.transformer.layers.0.attention"
                                         r".rotary.weight'\]; encoder.transformer.layers.1.feed_forward"
                                         r".intermediate_dense.weight: file \(100, 192\), model \(768, 192\)"):
        build_encoder(load_checkpoint(path))


def test_unsupported_configurations_are_named(tmp_path):
    config, weights = hf_golden("hubert_tiny_hf")
    save_file(weights, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    with pytest.raises(ValueError, match=r"HuBERT file \(huggingface layout\): unsupported config.json values "
                                         r"\{'hidden_act': 'relu'\}"):
        load_checkpoint(tmp_path)
    wavlm = torch.load(golden_path("wavlm_tiny/WavLM-Base+_tiny_golden.pt"), weights_only=True)
    torch.save({"cfg": {k: v for k, v in wavlm["cfg"].items() if k != "max_distance"}, "model": wavlm["model"]},
               tmp_path / "WavLM-Base.pt")
    with pytest.raises(ValueError, match=r"WavLM-Base.pt: WavLM file \(wavlm layout\): the model configuration "
                                         r"has no \['max_distance'\]"):
        load_checkpoint(tmp_path / "WavLM-Base.pt")


def test_conv_feature_layers_are_read_not_evaluated(tmp_path):
    assert conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")[4:] == ((512, 3, 2), (512, 2, 2),
                                                                                   (512, 2, 2))
    target = tmp_path / "pwned"
    for text in (f"__import__('os').system('touch {target}')", "[(512, 10, 5)] * (2 ** 99)", "[(1,2)] + 'a'"):
        with pytest.raises(ValueError, match="conv_feature_layers"):
            conv_layers(text)
    assert not target.exists()


# -- refusals -----------------------------------------------------------------------------------------------

def hostile_files(tmp_path, fairseq_dictionary):
    """One file of each layout that would run code (or call the fairseq Dictionary stand-in) when unpickled."""
    target = tmp_path / "pwned"
    payload = CreatesFile(target)
    wavlm = torch.load(golden_path("wavlm_tiny/WavLM-Base+_tiny_golden.pt"), weights_only=True)
    (tmp_path / "hf").mkdir()
    shutil.copy(golden_path("hubert_tiny_hf/config.json"), tmp_path / "hf" / "config.json")
    for name, contents in {"WavLM-Base.pt": {"cfg": {**wavlm["cfg"], "normalize": payload}, "model": wavlm["model"]},
                           "wav2vec2_fairseq_base_ls960.pth": {"feature_extractor.conv_layers.0.conv.weight": payload},
                           "hf/pytorch_model.bin": {"feature_projection.projection.weight": payload}}.items():
        torch.save(contents, tmp_path / name)
    save_fairseq(tmp_path / "hubert_base_ls960.pt", fairseq_model_cfg("hubert_tiny_hf", "hubert"),
                 fairseq_weights("hubert_tiny_hf"), {"normalize": False}, {"dictionaries": [fairseq_dictionary]},
                 last_optimizer_state=payload)
    # a Dictionary "called" with arguments (fairseq never pickles one so)
    type(fairseq_dictionary).__reduce__ = lambda self: (type(self), (f"touch {target}",))
    torch.save({"cfg": {"model": {"_name": "hubert"}}, "model": {}, "task_state": {"d": fairseq_dictionary}},
               tmp_path / "called.pt")
    return target, [tmp_path / name for name in ("WavLM-Base.pt", "wav2vec2_fairseq_base_ls960.pth",
                                                 "hf/pytorch_model.bin", "hubert_base_ls960.pt", "called.pt")]


def test_a_hostile_file_of_every_layout_is_refused_and_nothing_runs(tmp_path, fairseq_dictionary, monkeypatch):
    target, paths = hostile_files(tmp_path, fairseq_dictionary)
    monkeypatch.undo()
    for path in paths:
        reason = "never called with arguments" if path.name == "called.pt" else "unsupported GLOBAL posix.system"
        with pytest.raises(ValueError, match=rf"{re.escape(path.name)}: refused to load: it holds Python objects other "
                                             rf"than .*fairseq.data.dictionary.Dictionary.*Loader said: .*{reason}"):
            load_checkpoint(path)
        assert not target.exists()
    assert "fairseq" not in sys.modules
