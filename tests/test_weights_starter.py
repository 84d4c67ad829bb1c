"""Offline starter weights: the cache, the CTranslate2 Whisper reader/converter, the GGUF LLM."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may download

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from omniphi.weights import ct2_whisper, gguf_llm
from omniphi.weights.cache import STAMP_FILE, cache_dir, cached_build
from omniphi.weights.ct2_whisper import (
    CT2Model,
    ct2_whisper_state_dict,
    load_starter_whisper,
    read_ct2_model,
    starter_whisper_dir,
)

SPEECH = Path(__file__).parent / "fixtures" / "speech"
SOT, EOT, NO_TS = 50257, 50256, 50362


# --------------------------------------------------------------------------- cache (fast)


def test_cache_dir_env_default_and_created(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b"
    monkeypatch.setenv("OMNIPHI_CACHE", str(target))
    assert cache_dir() == target and target.is_dir()
    monkeypatch.delenv("OMNIPHI_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "omniphi"
    assert cache_dir().is_dir()


def _leftovers(root: Path):
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_cached_build_builds_once_then_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIPHI_CACHE", str(tmp_path))
    calls = []

    def build(d: Path):
        calls.append(d)
        assert d.parent == tmp_path and d.name.startswith(".entry.tmp-")  # same filesystem
        (d / "weights.bin").write_bytes(b"x" * 10)

    p1 = cached_build("entry", build, {"v": 1})
    p2 = cached_build("entry", build, {"v": 1})
    assert p1 == p2 == tmp_path / "entry"
    assert len(calls) == 1
    assert (p1 / "weights.bin").read_bytes() == b"x" * 10
    assert json.loads((p1 / STAMP_FILE).read_text()) == {"name": "entry", "v": 1}
    assert _leftovers(tmp_path) == []


def test_cached_build_interrupted_leaves_no_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIPHI_CACHE", str(tmp_path))

    def broken(d: Path):
        (d / "half.bin").write_bytes(b"partial")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a conversion

    with pytest.raises(KeyboardInterrupt):
        cached_build("entry", broken)
    assert not (tmp_path / "entry").exists()
    assert _leftovers(tmp_path) == []
    calls = []
    cached_build("entry", lambda d: calls.append((d / "ok").write_text("1")))
    assert calls and (tmp_path / "entry" / "ok").read_text() == "1"


def test_cached_build_ignores_killed_builds_and_unstamped_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIPHI_CACHE", str(tmp_path))
    # What a SIGKILLed build leaves: a temp dir. And a directory without the stamp (written by
    # something non-atomic): neither may be served as a cache entry.
    killed = tmp_path / ".entry.tmp-dead"
    killed.mkdir()
    (killed / "half.bin").write_bytes(b"partial")
    os.utime(killed, (0, 0))  # old: no live build can own it
    unstamped = tmp_path / "entry"
    unstamped.mkdir()
    (unstamped / "half.bin").write_bytes(b"partial")
    p = cached_build("entry", lambda d: (d / "full.bin").write_bytes(b"full"))
    assert sorted(x.name for x in p.iterdir()) == sorted(["full.bin", STAMP_FILE])
    assert _leftovers(tmp_path) == []


def test_cached_build_rebuilds_on_stamp_change(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIPHI_CACHE", str(tmp_path))
    cached_build("entry", lambda d: (d / "w").write_text("old"), {"size": 1})
    p = cached_build("entry", lambda d: (d / "w").write_text("new"), {"size": 2})
    assert (p / "w").read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_cached_build_concurrent_winner_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIPHI_CACHE", str(tmp_path))

    def slow_build(d: Path):
        # Another process completes the same entry while this build is still running.
        cached_build("entry", lambda d2: (d2 / "w").write_text("winner"), {"v": 1})
        (d / "w").write_text("loser")

    p = cached_build("entry", slow_build, {"v": 1})
    assert (p / "w").read_text() == "winner"
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- ct2 reader (fast)


def _write_ct2(path: Path, variables, aliases=(), version=6):
    """Serialise like ctranslate2.specs.ModelSpec._serialize (the format the reader claims)."""
    ids = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3, np.dtype("float16"): 4}

    def s(x):
        b = x.encode()
        return struct.pack("<H", len(b) + 1) + b + b"\0"

    out = struct.pack("<I", version) + s("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", len(variables))
    for name, arr in variables:
        if isinstance(arr, torch.Tensor):  # bfloat16: raw 16-bit words
            raw, dtype_id, shape = arr.view(torch.int16).numpy().astype("<i2").tobytes(), 5, arr.shape
        else:
            raw, dtype_id, shape = arr.astype(arr.dtype.newbyteorder("<")).tobytes(), ids[arr.dtype], arr.shape
        out += s(name) + struct.pack("<B", len(shape)) + b"".join(struct.pack("<I", d) for d in shape)
        out += struct.pack("<BI", dtype_id, len(raw)) + raw
    out += struct.pack("<I", len(aliases)) + b"".join(s(a) + s(t) for a, t in aliases)
    path.write_bytes(out)


def test_read_ct2_model_dtypes_shapes_aliases(tmp_path):
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 4)).astype(np.float32)
    f16 = rng.standard_normal((2, 5, 3)).astype(np.float16)
    bf16 = torch.randn(7, dtype=torch.bfloat16)
    i8 = np.array([[-128, 0, 127]], dtype=np.int8)
    _write_ct2(
        tmp_path / "model.bin",
        [("a/f32", f32), ("b/f16", f16), ("c/bf16", bf16), ("d/i8", i8), ("e/heads", np.array(6, dtype=np.int16))],
        aliases=[("z/tied", "a/f32")],
    )
    m = read_ct2_model(tmp_path)  # a directory works too
    assert (m.spec, m.revision) == ("WhisperSpec", 3)
    assert m["a/f32"].dtype == torch.float32 and np.array_equal(m["a/f32"].numpy(), f32)
    assert m["b/f16"].dtype == torch.float16 and np.array_equal(m["b/f16"].numpy(), f16)
    assert m["c/bf16"].dtype == torch.bfloat16 and torch.equal(m["c/bf16"], bf16)
    assert m["d/i8"].tolist() == [[-128, 0, 127]]
    assert m.scalar("e/heads") == 6 and m["e/heads"].dim() == 0
    assert "z/tied" in m and m["z/tied"] is m["a/f32"]


def test_read_ct2_model_rejects_bad_files(tmp_path):
    good = tmp_path / "good.bin"
    _write_ct2(good, [("w", np.ones((4, 4), np.float32))])
    for cut in (len(good.read_bytes()) - 3, 30):
        (tmp_path / "cut.bin").write_bytes(good.read_bytes()[:cut])
        with pytest.raises(ValueError):
            read_ct2_model(tmp_path / "cut.bin")
    _write_ct2(tmp_path / "v5.bin", [("w", np.ones(2, np.float32))], version=5)
    with pytest.raises(ValueError, match="version 5"):
        read_ct2_model(tmp_path / "v5.bin")
    _write_ct2(tmp_path / "alias.bin", [("w", np.ones(2, np.float32))], aliases=[("x", "missing")])
    with pytest.raises(ValueError, match="absent"):
        read_ct2_model(tmp_path / "alias.bin")


def test_state_dict_refuses_unmapped_or_nonzero_key_bias():
    # A minimal 1-layer Whisper-shaped ct2 model: the converter must notice a stray variable
    # and a key bias transformers cannot represent.
    d, f, v = 8, 16, 10
    z = lambda *s: torch.zeros(*s)
    var = {"encoder/conv1/weight": z(d, 4, 3), "encoder/conv1/bias": z(d), "encoder/conv2/weight": z(d, d, 3),
           "encoder/conv2/bias": z(d), "encoder/position_encodings/encodings": z(6, d),
           "encoder/layer_norm/gamma": z(d), "encoder/layer_norm/beta": z(d),
           "decoder/embeddings/weight": z(v, d), "decoder/position_encodings/encodings": z(5, d),
           "decoder/layer_norm/gamma": z(d), "decoder/layer_norm/beta": z(d)}
    for side in ("encoder", "decoder"):
        c = f"{side}/layer_0"
        var.update({f"{c}/self_attention/linear_0/weight": z(3 * d, d), f"{c}/self_attention/linear_0/bias": z(3 * d),
                    f"{c}/self_attention/linear_1/weight": z(d, d), f"{c}/self_attention/linear_1/bias": z(d),
                    f"{c}/self_attention/layer_norm/gamma": z(d), f"{c}/self_attention/layer_norm/beta": z(d),
                    f"{c}/ffn/linear_0/weight": z(f, d), f"{c}/ffn/linear_0/bias": z(f),
                    f"{c}/ffn/linear_1/weight": z(d, f), f"{c}/ffn/linear_1/bias": z(d),
                    f"{c}/ffn/layer_norm/gamma": z(d), f"{c}/ffn/layer_norm/beta": z(d)})
    c = "decoder/layer_0/attention"
    var.update({f"{c}/linear_0/weight": z(d, d), f"{c}/linear_0/bias": z(d), f"{c}/linear_1/weight": z(2 * d, d),
                f"{c}/linear_1/bias": z(2 * d), f"{c}/linear_2/weight": z(d, d), f"{c}/linear_2/bias": z(d),
                f"{c}/layer_norm/gamma": z(d), f"{c}/layer_norm/beta": z(d)})
    aliases = {"decoder/projection/weight": "decoder/embeddings/weight"}
    sd, tied = ct2_whisper_state_dict(CT2Model("WhisperSpec", 3, dict(var), aliases))
    assert tied and "model.encoder.layers.0.self_attn.k_proj.bias" not in sd
    assert sd["model.decoder.layers.0.encoder_attn.v_proj.weight"].shape == (d, d)

    with pytest.raises(ValueError, match="not mapped"):
        ct2_whisper_state_dict(CT2Model("WhisperSpec", 3, {**var, "encoder/extra/weight": z(2, 2)}, aliases))
    bad = dict(var)
    bad["encoder/layer_0/self_attention/linear_0/bias"] = torch.cat([z(d), torch.ones(d), z(d)])
    with pytest.raises(ValueError, match="key bias"):
        ct2_whisper_state_dict(CT2Model("WhisperSpec", 3, bad, aliases))


# --------------------------------------------------------------------------- real Whisper (slow)


@pytest.fixture(scope="module")
def whisper():
    return load_starter_whisper()


@pytest.fixture(scope="module")
def ct2_whisper_model():
    ctranslate2 = pytest.importorskip("ctranslate2")
    # float32 compute: the parity bound is about the conversion, not about ct2's float16 path.
    return ctranslate2.models.Whisper(str(starter_whisper_dir()), device="cpu", compute_type="float32", intra_threads=1)


def _features(processor, name):
    import soundfile as sf

    audio, sr = sf.read(SPEECH / name, dtype="float32")
    assert sr == 16000 and audio.ndim == 1
    return processor.feature_extractor(audio, sampling_rate=16000, return_tensors="np").input_features


def _storage(feats):
    import ctranslate2

    # ct2 wants a contiguous float32 [batch, n_mels, 3000] array.
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(feats, dtype=np.float32))


def _hf_greedy_ids(model, feats):
    with torch.inference_mode():
        out = model.generate(input_features=torch.from_numpy(feats), do_sample=False, num_beams=1)[0].tolist()
    # transformers returns only generated ids here; strip prompt/EOS in case a version keeps them.
    while out and out[0] in (SOT, NO_TS):
        out = out[1:]
    return [t for t in out if t != EOT]


@pytest.mark.slow
def test_whisper_architecture_and_exact_keys(whisper):
    from transformers import WhisperForConditionalGeneration

    model, _ = whisper
    c = model.config
    assert (c.d_model, c.encoder_layers, c.decoder_layers, c.encoder_attention_heads, c.decoder_attention_heads) == (384, 4, 4, 6, 6)
    assert (c.num_mel_bins, c.vocab_size, c.max_source_positions, c.max_target_positions) == (80, 51864, 1500, 448)
    assert model.dtype == torch.float32
    sd, tied = ct2_whisper_state_dict(read_ct2_model(starter_whisper_dir()))
    assert tied
    fresh = WhisperForConditionalGeneration(c)
    assert set(sd) == set(fresh.state_dict())
    result = fresh.load_state_dict(sd, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    # The cached float16 checkpoint loads bit-identically to the float32 conversion.
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k].float()), k
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()


@pytest.mark.slow
def test_whisper_processor_and_generation_config(whisper):
    model, processor = whisper
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids
    assert (ids("<|endoftext|>"), ids("<|startoftranscript|>"), ids("<|en|>")) == (EOT, SOT, 50258)
    assert (ids("<|notimestamps|>"), ids("<|0.00|>"), ids("<|30.00|>")) == (NO_TS, 50363, 51863)
    assert len(tok) == model.config.vocab_size == 51864
    assert tok.eos_token_id == tok.pad_token_id == EOT
    assert tok.all_special_ids[-1] == NO_TS  # Whisper derives the first timestamp id from this
    text = "What is the capital of France?"
    enc = tok(text).input_ids
    assert enc[:2] == [SOT, NO_TS] and enc[-1] == EOT
    assert tok.decode(enc, skip_special_tokens=True).strip() == text
    fe = processor.feature_extractor
    assert (fe.feature_size, fe.sampling_rate, fe.nb_max_frames) == (80, 16000, 3000)

    g = model.generation_config
    assert (g.decoder_start_token_id, g.eos_token_id, g.pad_token_id, g.no_timestamps_token_id) == (SOT, EOT, EOT, NO_TS)
    assert g.is_multilingual is False and not hasattr(g, "lang_to_id") and not getattr(g, "forced_decoder_ids", None)
    ct2_cfg = json.loads((starter_whisper_dir() / "config.json").read_text())
    assert g.suppress_tokens == ct2_cfg["suppress_ids"] and g.begin_suppress_tokens == [220, EOT]
    assert g.max_length == 448


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["capital.wav", "fox.wav"])
def test_encoder_matches_ctranslate2(whisper, ct2_whisper_model, clip):
    model, processor = whisper
    feats = _features(processor, clip)
    assert feats.shape == (1, 80, 3000) and feats.dtype == np.float32
    theirs = np.asarray(ct2_whisper_model.encode(_storage(feats), to_cpu=True))
    with torch.inference_mode():
        ours = model.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    assert ours.shape == theirs.shape == (1, 1500, 384)
    diff = np.abs(ours - theirs).max()
    assert diff < 1e-3, diff  # measured ~2e-5


@pytest.mark.slow
def test_greedy_decoding_matches_ctranslate2_token_for_token(whisper, ct2_whisper_model):
    model, processor = whisper
    cap, fox = _features(processor, "capital.wav"), _features(processor, "fox.wav")
    import soundfile as sf

    # Also a longer, harder window (5 sentences → ~80 tokens): exercises decoder positions and
    # the KV cache far beyond a one-sentence clip.
    a, _ = sf.read(SPEECH / "capital.wav", dtype="float32")
    b, _ = sf.read(SPEECH / "fox.wav", dtype="float32")
    gap = np.zeros(8000, np.float32)
    long = np.concatenate([a, gap, b, gap, a, gap, b, gap, a])
    longf = processor.feature_extractor(long, sampling_rate=16000, return_tensors="np").input_features
    for feats in (cap, fox, longf):
        r = ct2_whisper_model.generate(_storage(feats), [[SOT, NO_TS]], beam_size=1)
        ours = _hf_greedy_ids(model, feats)
        assert ours == r[0].sequences_ids[0]
        assert len(ours) > 5
    assert processor.tokenizer.decode(_hf_greedy_ids(model, cap)).strip() == "What is the capital of France?"


@pytest.mark.slow
def test_whisper_cache_is_reused(whisper, monkeypatch):
    def no_conversion(*a, **k):
        raise AssertionError("converted again although the cache exists")

    monkeypatch.setattr(ct2_whisper, "convert_ct2_whisper", no_conversion)
    model, processor = load_starter_whisper()
    assert torch.equal(model.proj_out.weight, whisper[0].proj_out.weight)
    assert processor.tokenizer.convert_tokens_to_ids("<|0.00|>") == 50363


@pytest.mark.slow
def test_whisper_first_call_converts_atomically_into_empty_cache(whisper, tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIPHI_CACHE", str(tmp_path))
    real = ct2_whisper.convert_ct2_whisper
    calls = []

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ct2_whisper, "convert_ct2_whisper", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_starter_whisper()
    assert list(tmp_path.iterdir()) == []  # nothing half-written, not even a temp dir

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(ct2_whisper, "convert_ct2_whisper", counting)
    m1, _ = load_starter_whisper()
    m2, _ = load_starter_whisper(dtype=torch.float16)
    assert len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whisper-tiny.en"]
    files = {p.name for p in (tmp_path / "whisper-tiny.en").iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", STAMP_FILE} <= files
    assert m2.dtype == torch.float16
    ref = whisper[0].state_dict()
    for k, v in m1.state_dict().items():
        assert torch.equal(v, ref[k]), k


@pytest.mark.slow
def test_reads_int8_model_written_by_ctranslate2(whisper, tmp_path):
    """Round trip through ctranslate2's own converter: its int8 output reads back as our weights."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    out = tmp_path / "ct2-int8"
    ctranslate2.converters.TransformersConverter(str(cache_dir() / ct2_whisper.STARTER_CACHE_NAME)).convert(
        str(out), quantization="int8"
    )
    shutil.copy(starter_whisper_dir() / "tokenizer.json", out / "tokenizer.json")
    ref = whisper[0].state_dict()
    sd, tied = ct2_whisper_state_dict(read_ct2_model(out))
    assert tied and set(sd) == set(ref)
    for k, v in sd.items():
        r = ref[k]
        if v.shape != r.shape:
            raise AssertionError(f"{k}: {tuple(v.shape)} vs {tuple(r.shape)}")
        # int8 with one scale per output row: error at most half a step, amax/127/2, per row.
        step = r.abs().reshape(r.shape[0], -1).amax(dim=1) / 127 if r.dim() > 1 else torch.zeros(1)
        bound = (step / 2).reshape(-1, *([1] * (r.dim() - 1))) + 1e-3 * r.abs() + 1e-6
        assert ((v.float() - r).abs() <= bound).all(), k
    model, processor = ct2_whisper.convert_ct2_whisper(out)
    feats = _features(processor, "capital.wav")
    text = processor.tokenizer.decode(_hf_greedy_ids(model, feats), skip_special_tokens=True)
    assert text.strip() == "What is the capital of France?"


# --------------------------------------------------------------------------- real LLM (slow)


@pytest.fixture(scope="module")
def llm():
    return gguf_llm.load_starter_llm()


@pytest.mark.slow
def test_llm_tokenizer_chat_template_and_special_ids(llm):
    model, tok = llm
    assert "<|im_start|>" in tok.chat_template and "<|im_end|>" in tok.chat_template
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert (tok.pad_token, tok.pad_token_id) == ("<|im_end|>", 2)
    assert (tok.unk_token, tok.unk_token_id) == ("<|endoftext|>", 0)
    assert tok("Paris").input_ids[0] != tok.bos_token_id  # no BOS added outside the template
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    eos = model.generation_config.eos_token_id
    assert 2 in (eos if isinstance(eos, list) else [eos])
    assert tok.model_max_length == model.config.max_position_embeddings == 8192


@pytest.mark.slow
def test_llm_is_a_plain_dense_checkpoint(llm):
    model, _ = llm
    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.model_type == "llama" and model.config.vocab_size == 49152
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    saved = json.loads((cache_dir() / gguf_llm.STARTER_CACHE_NAME / "config.json").read_text())
    assert "quantization_config" not in saved


@pytest.mark.slow
def test_llm_answers_capital_of_france(llm):
    model, tok = llm
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_llm_cache_is_reused(llm, monkeypatch):
    def no_conversion(*a, **k):
        raise AssertionError("dequantised the GGUF again although the cache exists")

    monkeypatch.setattr(gguf_llm, "convert_gguf_llm", no_conversion)
    model, tok = gguf_llm.load_starter_llm()
    assert torch.equal(model.model.embed_tokens.weight, llm[0].model.embed_tokens.weight)
    assert tok.eos_token_id == 2


def test_a_build_is_announced_with_the_first_start_notice_once(tmp_path, monkeypatch, capsys):
    from omniphi.weights import cache

    monkeypatch.setenv("OMNIPHI_CACHE", str(tmp_path))
    monkeypatch.setattr(cache, "_first_start_noticed", False)
    cached_build("a", lambda d: (d / "x").write_text("1"), what="part A (~1 s)")
    cached_build("b", lambda d: (d / "x").write_text("1"), what="part B (~1 s)")
    cached_build("a", lambda d: (d / "x").write_text("1"), what="part A (~1 s)")  # cached: silent
    err = capsys.readouterr().err.splitlines()
    assert err[0] == cache.FIRST_START_NOTICE
    assert [line for line in err if line.strip().startswith("part")] == ["  part A (~1 s)…", "  part B (~1 s)…"]
    assert len([line for line in err if line.startswith("  done in")]) == 2 and len(err) == 5
