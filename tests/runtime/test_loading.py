"""omniphi.runtime.load: every kind of spec, the dtype/device/quantize it applies, and what `auto` picks."""

import json
import resource

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from omniphi import bench, presets, runtime
from omniphi.errors import DeviceError, UserError, is_user_error
from omniphi.runtime import devices, loading, trained
from omniphi.runtime import quantize
from omniphi.runtime.quantize import (DENSE_PREFILL_ROWS, INT4_BLOCK, Int4WeightOnlyLinear, Int8WeightOnlyLinear,
                                      NBitsKernel, ProjectionSlice, SharedInputProjections, cores_left_to_kernels,
                                      decoder_linears, quantize_language_model_, runs_cpu_kernels,
                                      shared_input_groups, tinygemm_int4)

CONVERSATION = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (40, 30), (200, 20, 20))},
                                             {"type": "text", "text": "What colour is the circle?"}]}]


def logits(loaded):
    batch = loaded.processor(CONVERSATION, add_generation_prompt=True, with_labels=False)
    with torch.no_grad():
        return loaded.model(**batch).logits[0].float()


@pytest.fixture(scope="module")
def reference():
    return runtime.load("tiny", device="cpu", dtype="float32")


def test_preset_loads_on_the_cpu_in_float32_with_its_choice_recorded(reference):
    assert reference.name == "omniphi-tiny"
    assert reference.model.dtype == torch.float32
    assert reference.model.runtime_choice == loading.RuntimeChoice(torch.device("cpu"), torch.float32, "none")


def test_model_directory_loads_with_the_same_logits(reference, tmp_path):
    loading.save_directory(reference, tmp_path)
    loaded = runtime.load(str(tmp_path), device="cpu", dtype="float32")
    torch.testing.assert_close(logits(loaded), logits(reference))


def _training_output(directory, base: str, model: nn.Module, projector_weight: torch.Tensor):
    """A training output in the format `omniphi train` writes, that changed one projector weight."""
    directory.mkdir()
    name = "multi_modal_projector.linear_1.weight"
    save_file({name: projector_weight}, str(directory / trained.TRAINABLES_FILE))
    meta = {"base": base, "base_fingerprint": trained.base_fingerprint(model), "format_version": trained.FORMAT_VERSION,
            "has_adapter": False, "non_lora_trainables": [name]}
    (directory / trained.MARKER).write_text(json.dumps(meta))
    return name


def test_training_output_applies_its_weights_on_its_base(reference, tmp_path):
    new = torch.full_like(reference.model.multi_modal_projector.linear_1.weight, 0.01)
    name = _training_output(tmp_path / "out", "tiny", reference.model, new)
    loaded = runtime.load(str(tmp_path / "out"), device="cpu", dtype="float32")
    assert torch.equal(loaded.model.state_dict()[name], new)
    assert loaded.name == "omniphi-out"


def test_a_chain_of_training_outputs_that_loops_is_a_clear_error(reference, tmp_path):
    weight = reference.model.multi_modal_projector.linear_1.weight.detach().clone()
    _training_output(tmp_path / "a", str(tmp_path / "b"), reference.model, weight)
    _training_output(tmp_path / "b", str(tmp_path / "a"), reference.model, weight)
    with pytest.raises(trained.TrainedOutputError, match="leads back to itself"):
        runtime.load(str(tmp_path / "a"))


def test_unknown_spec_is_a_user_error(tmp_path):
    with pytest.raises(loading.ModelSpecError, match="unknown model 'no-such-model'") as caught:
        runtime.load("no-such-model")
    assert is_user_error(caught.value)
    with pytest.raises(UserError, match="not an omniphi model directory"):
        runtime.load(str(tmp_path))


def test_dtype_is_applied_to_every_part():
    loaded = runtime.load("tiny", device="cpu", dtype="bfloat16")
    dtypes = {p.dtype for p in loaded.model.parameters()}
    assert dtypes == {torch.bfloat16}


@pytest.mark.parametrize("mode, layer_type, min_cosine", [("int8", Int8WeightOnlyLinear, 0.999),
                                                          ("int4", Int4WeightOnlyLinear, 0.98)])
def test_quantize_replaces_the_llms_linears_and_puts_its_head_in_int8(reference, mode, layer_type, min_cosine):
    loaded = runtime.load("tiny", device="cpu", dtype="float32", quantize=mode)
    llm = loaded.model.language_model
    decoder = [m for n, m in llm.named_modules()
               if ".layers." in n and isinstance(m, (nn.Linear, layer_type, ProjectionSlice))]
    assert decoder and all(type(m.shared.fused if isinstance(m, ProjectionSlice) else m) is layer_type
                           for m in decoder)
    assert type(llm.get_output_embeddings()) is Int8WeightOnlyLinear  # never 4 bits: the most sensitive layer
    assert type(llm.get_input_embeddings()) is nn.Embedding
    for tower in (loaded.model.vision_tower, loaded.model.multi_modal_projector, loaded.model.audio_projector):
        assert not any(isinstance(m, (Int8WeightOnlyLinear, Int4WeightOnlyLinear)) for m in tower.modules())
    quantized, full = logits(loaded), logits(reference)
    cosine = torch.cosine_similarity(quantized, full, dim=-1)
    assert cosine.min() > min_cosine, cosine
    assert (quantized - full).abs().max() > 0  # the layers really changed the arithmetic


def test_a_tied_head_is_quantised_apart_from_the_embedding_table_it_shares():
    llm = presets.tiny_parts("chatml")[0].eval()
    assert llm.get_output_embeddings().weight is llm.get_input_embeddings().weight
    table = llm.get_input_embeddings().weight.detach().clone()
    ids = torch.tensor([[5, 9, 2, 7]])
    with torch.no_grad():
        before = llm(ids).logits
        quantize_language_model_(llm, "int8")
        after = llm(ids).logits
    assert type(llm.get_output_embeddings()) is Int8WeightOnlyLinear
    torch.testing.assert_close(llm.get_input_embeddings().weight, table, rtol=0, atol=0)  # the table is untouched
    assert torch.cosine_similarity(before, after, dim=-1).min() > 0.999
    # a decode step reads the int8 head, and one row of the table: the table no longer counts
    embedding = llm.get_input_embeddings().weight
    rest = [t for t in [*llm.parameters(), *llm.buffers()] if t is not embedding]
    assert bench.weight_bytes_per_token(llm) == sum(t.numel() * t.element_size() for t in rest)


@pytest.mark.parametrize("flavour, expected", [
    ("phi", [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.fc1"]]),  # attention ∥ MLP
    ("chatml", [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["mlp.gate_proj", "mlp.up_proj"]]),
])
def test_layers_reading_the_same_input_are_found_by_watching_a_forward_pass(flavour, expected):
    llm = presets.tiny_parts(flavour)[0].eval()
    groups = shared_input_groups(llm, [name for name, _ in decoder_linears(llm)])
    assert groups == [[f"model.layers.{layer}.{name}" for name in group] for layer in (0, 1) for group in expected]


def _unshared(monkeypatch, llm, mode):
    with monkeypatch.context() as patch:
        patch.setattr(quantize, "shared_input_groups", lambda *_: [])
        quantize_language_model_(llm, mode)


@pytest.mark.parametrize("flavour", ["phi", "chatml"])
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_shared_input_layers_compute_as_apart_in_fewer_kernel_calls(monkeypatch, flavour, mode):
    """Stacking rows changes no code or scale: the logits equal those of the layers quantised one by one,
    with one kernel call per group instead of one per layer."""
    stacked, apart = (presets.tiny_parts(flavour)[0].eval() for _ in range(2))
    quantize_language_model_(stacked, mode)
    _unshared(monkeypatch, apart, mode)
    calls = []
    original = NBitsKernel.__call__
    monkeypatch.setattr(NBitsKernel, "__call__", lambda self, x: (calls.append(self), original(self, x))[1])
    ids = torch.tensor([[5, 9, 2, 7, 11]])
    with torch.no_grad():
        apart_logits = apart(ids).logits
        apart_calls = len(calls)
        calls.clear()
        stacked_logits = stacked(ids).logits
    torch.testing.assert_close(stacked_logits, apart_logits, rtol=1e-5, atol=1e-5)
    layers_per_block = {"phi": 6, "chatml": 7}[flavour]
    calls_per_block = {"phi": 3, "chatml": 4}[flavour]  # phi: [q k v fc1], dense, fc2; llama: [q k v], o, [gate up], down
    assert apart_calls == 2 * layers_per_block + 1  # two blocks, and the head
    assert len(calls) == 2 * calls_per_block + 1


def test_a_shared_input_slice_recomputes_for_another_input_or_a_second_call():
    torch.manual_seed(0)
    fused = Int8WeightOnlyLinear(nn.Linear(64, 24), torch.float32)
    shared = SharedInputProjections(fused, [8, 16])
    first, second = ProjectionSlice(shared, 0), ProjectionSlice(shared, 1)
    x, y = torch.randn(3, 64), torch.randn(3, 64)
    full_x, full_y = fused(x), fused(y)
    torch.testing.assert_close(first(x), full_x[:, :8])
    torch.testing.assert_close(second(y), full_y[:, 8:])  # another input: not x's pending rows
    torch.testing.assert_close(first(y), full_y[:, :8])
    torch.testing.assert_close(first(y), full_y[:, :8])  # taken twice: computed again
    torch.testing.assert_close(second(x), full_x[:, 8:])
    assert second(x).is_contiguous()
    assert torch.equal(second.dequantized_weight(), fused.dequantized_weight()[8:])


def test_quantized_layers_compute_with_their_stored_weights():
    torch.manual_seed(0)
    linear = nn.Linear(256, 48)
    x = torch.randn(5, 256)
    int8 = Int8WeightOnlyLinear(linear, torch.bfloat16)
    expected = x @ int8.dequantized_weight().T + linear.bias
    torch.testing.assert_close(int8(x), expected, atol=0.05, rtol=0.02)
    int4 = Int4WeightOnlyLinear(linear, group_size=64)
    step = (linear.weight.max() - linear.weight.min()) / 15  # at most one 4-bit step per weight
    assert (int4(x) - linear(x)).abs().max() < step * x.abs().sum(dim=1).max()
    assert torch.cosine_similarity(int4(x).flatten(), linear(x).flatten(), dim=0) > 0.99


# the second: a ragged last block, an odd number of blocks (the zero points pack two blocks per byte)
@pytest.mark.parametrize("in_features", [8 * INT4_BLOCK, 2 * INT4_BLOCK + INT4_BLOCK // 2])
def test_cpu_int4_layer_computes_with_the_weights_it_encodes(in_features):
    torch.manual_seed(0)
    linear = nn.Linear(in_features, 48)
    int4 = Int4WeightOnlyLinear(linear, group_size=64)
    weight = int4.dequantized_weight()
    # each weight within half a step of its block's grid (blocks of INT4_BLOCK inputs)
    for start in range(0, in_features, INT4_BLOCK):
        block = linear.weight[:, start:start + INT4_BLOCK]
        step = (block.amax(dim=1).clamp(min=0) - block.amin(dim=1).clamp(max=0)) / 15
        assert ((weight[:, start:start + INT4_BLOCK] - block).abs() <= step[:, None] / 2 + 1e-6).all()
    x = torch.randn(5, in_features)
    expected = x @ weight.T + linear.bias
    # the kernel rounds the activations to int8 per block: about 1 % of the output's scale
    assert (int4(x) - expected).abs().max() < 0.02 * expected.abs().max()


def test_tinygemm_int4_codes_are_what_torchs_int4_kernel_multiplies_by():
    """The CUDA int4 layout's arithmetic (torch's CPU twin of that kernel reads the same codes)."""
    torch.manual_seed(0)
    weight = torch.randn(48, 256)
    q, scales_and_zeros = tinygemm_int4(weight, 64)
    scale, zero = scales_and_zeros.float().unbind(-1)  # [groups, out] each
    decoded = ((q.view(48, 4, 64).float() - 8) * scale.T[..., None] + zero.T[..., None]).view(48, 256)
    assert ((decoded - weight).abs() <= scale.T.repeat_interleave(64, dim=1) * 0.51 + 0.02).all()
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 64, scales_and_zeros)
    torch.testing.assert_close(y.float(), x.float() @ decoded.T, atol=0.15, rtol=0.02)


def test_decode_steps_of_a_cpu_quantised_model_leave_the_cores_to_its_kernels(monkeypatch):
    threads = torch.get_num_threads()
    with pytest.raises(KeyError):
        with cores_left_to_kernels():
            assert torch.get_num_threads() == 1
            raise KeyError("a failing step")
    assert torch.get_num_threads() == threads  # restored, also after an error

    from omniphi.chat import GenerationSettings
    from omniphi.runtime.assistant import Assistant

    plain = runtime.load("tiny", device="cpu", dtype="float32")
    quantised = runtime.load("tiny", device="cpu", dtype="float32", quantize="int8")
    assert not runs_cpu_kernels(plain.model) and runs_cpu_kernels(quantised.model)
    settings = GenerationSettings(max_new_tokens=3)
    question = [{"role": "user", "content": "Hello"}]
    set_threads, calls = torch.set_num_threads, []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), set_threads(n)))
    Assistant(plain).complete(question, settings, ignore_eos=True)
    assert calls == []  # an unquantised model decodes on every thread
    Assistant(quantised).complete(question, settings, ignore_eos=True)
    assert calls == [1, threads] * 2  # the 2 steps after the prefilled first token, each restoring the pool
    assert torch.get_num_threads() == threads


def test_cpu_quantised_layers_share_their_codes_with_the_kernel():
    """ONNX Runtime reads the layer's own buffers (external initializers): no third copy of the weights."""
    int8 = Int8WeightOnlyLinear(nn.Linear(256, 48), torch.float32)
    int4 = Int4WeightOnlyLinear(nn.Linear(256, 48), group_size=64)
    assert int8.kernel._initializers[0].data_ptr() == int8.codes.data_ptr()
    assert [v.data_ptr() for v in int4.kernel._initializers] == [
        int4.weight_int4.data_ptr(), int4.scales.data_ptr(), int4.zero_points.data_ptr()]


def test_kernels_outputs_come_from_one_arena_not_one_per_layer():
    """Every layer's kernel session would otherwise keep the largest output it ever produced: gigabytes
    for a Phi-2 model after one long prompt."""
    def resident_bytes() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()

    torch.manual_seed(0)
    layers = [Int4WeightOnlyLinear(nn.Linear(256, 4096, bias=False), group_size=128) for _ in range(16)]
    prompt = torch.randn(1024, 256)  # each output: 1024 x 4096 float32 = 16 MiB
    layers[0](prompt)  # the arena's first block
    before = resident_bytes()
    for layer in layers[1:]:
        layer(prompt)  # the output is dropped at once, as a model drops a layer's output once read
    assert resident_bytes() - before < 64 * 2**20  # 15 arenas of their own would keep ≥ 240 MiB


@pytest.mark.parametrize("dtype, prefill_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16),
                                                  (torch.float32, torch.int8), (torch.bfloat16, torch.int8),
                                                  (torch.float32, None)])  # None: the kernel at any length
def test_int8_prefill_matches_the_kernel_row_by_row(dtype, prefill_dtype):
    torch.manual_seed(0)
    linear = nn.Linear(1100, 48)
    int8 = Int8WeightOnlyLinear(linear, dtype)
    int8.prefill_dtype = prefill_dtype  # what the CPU probe decides, every way on any machine
    prompt = torch.randn(2, DENSE_PREFILL_ROWS, 1100)  # 2 x 96 rows: a prefill
    untouched = prompt.clone()
    dense = int8(prompt)
    assert torch.equal(prompt, untouched)
    one_row_at_a_time = torch.stack([torch.cat([int8(row[None]) for row in sequence]) for sequence in prompt])
    assert dense.shape == (2, DENSE_PREFILL_ROWS, 48)
    torch.testing.assert_close(dense, one_row_at_a_time, atol=0.05, rtol=0.02)
    expected = prompt @ int8.dequantized_weight().T + linear.bias
    torch.testing.assert_close(dense, expected, atol=0.05, rtol=0.02)


def test_integer_prefill_multiplies_outlier_features_in_float():
    """A few input channels 50x the rest (as LLM activations have) must not flatten the other inputs of
    their rows: with one int8 scale per row they would, and the error would be ~4x the kernel's."""
    torch.manual_seed(0)
    int8 = Int8WeightOnlyLinear(nn.Linear(1024, 256, bias=False), torch.float32)
    prompt = torch.randn(DENSE_PREFILL_ROWS, 1024)
    prompt[:, [3, 500, 900]] *= 50
    exact = prompt @ int8.dequantized_weight().T

    def error(path):
        int8.prefill_dtype = path
        return ((int8(prompt) - exact).norm() / exact.norm()).item()

    assert error(torch.int8) <= error(None)  # None: the kernel, which rounds per block of 128 inputs


def test_model_directory_preferences_fill_in_auto(reference, tmp_path):
    loading.save_directory(reference, tmp_path / "model", defaults={"dtype": "bfloat16", "quantize": "int8"})
    preferred = runtime.load(str(tmp_path / "model"), device="cpu", quantize="auto")
    assert preferred.model.runtime_choice.dtype == torch.bfloat16
    assert preferred.model.runtime_choice.quantize == "int8"
    explicit = runtime.load(str(tmp_path / "model"), device="cpu", dtype="float32")  # what the user says wins
    assert explicit.model.runtime_choice.dtype == torch.float32 and explicit.model.runtime_choice.quantize == "none"
    # a training output on that directory inherits its preferences
    _training_output(tmp_path / "out", str(tmp_path / "model"), preferred.model,
                     reference.model.multi_modal_projector.linear_1.weight.detach().clone())
    assert loading.preferred_defaults(str(tmp_path / "out")) == {"dtype": "bfloat16", "quantize": "int8"}


def test_tiny_preset_prefers_float32_whatever_the_cpu(monkeypatch):
    monkeypatch.setattr(devices, "cpu_bf16_is_faster", lambda: True)
    assert runtime.load("tiny", device="cpu").model.dtype == torch.float32
    assert loading.resolve_choice("cpu", "auto", "none", {}).dtype == torch.bfloat16


def test_cuda_without_a_gpu_is_a_device_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        runtime.load("tiny", device="cuda")
    assert devices.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="unknown device"):
        devices.resolve_device("gpu0")
    with pytest.raises(DeviceError, match="float16 runs only on a GPU"):
        devices.resolve_dtype("float16", torch.device("cpu"))


def test_bf16_probe_runs_once_per_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("OMNIPHI_CACHE", str(tmp_path))
    calls = []

    def timed(dtype, **_):
        calls.append(dtype)
        return 1.0 if dtype == torch.float32 else 0.3

    monkeypatch.setattr(devices, "_matmul_seconds", timed)
    monkeypatch.setattr(devices, "_decode_seconds", timed)
    devices._cpu_probe.cache_clear()
    try:
        assert devices.cpu_bf16_is_faster() is True
        assert len(calls) == 7 * devices.PROBE_ROUNDS  # fp32: 3 products; bf16: 3; int8: 1; in each round
        assert (tmp_path / devices.PROBE_FILE).is_file()
        devices._cpu_probe.cache_clear()  # a new process: the answer comes from the file
        assert devices.cpu_bf16_is_faster() is True and len(calls) == 7 * devices.PROBE_ROUNDS
    finally:
        devices._cpu_probe.cache_clear()


def test_bf16_slower_at_decode_keeps_float32_but_still_prefills_quantised_layers_in_bf16(monkeypatch, tmp_path):
    monkeypatch.setenv("OMNIPHI_CACHE", str(tmp_path))
    monkeypatch.setattr(devices, "_matmul_seconds", lambda dtype, **_: 1.0 if dtype == torch.float32 else 0.3)
    monkeypatch.setattr(devices, "_decode_seconds", lambda dtype, **_: 1.0 if dtype == torch.float32 else 1.6)
    devices._cpu_probe.cache_clear()
    try:
        assert devices.cpu_bf16_is_faster() is False
        assert devices.cpu_bf16_matmul_is_faster() is True  # the AVX-512-bf16 EPYC's case
    finally:
        devices._cpu_probe.cache_clear()


@pytest.mark.parametrize("int8_s, bf16_s, expected", [
    (0.3, 1.0, torch.int8),  # VNNI without bf16 hardware (this Xeon's case)
    (0.6, 0.5, torch.bfloat16),  # int8 no better than the kernel, bf16 clearly faster than float32
    (0.2, 0.5, torch.int8), (0.45, 0.3, torch.bfloat16),  # both beat the kernel: the faster one
    (0.7, 1.0, None)])  # neither: the kernel at any length
def test_int8_layers_prefill_the_way_the_cpu_probe_times_fastest(monkeypatch, tmp_path, int8_s, bf16_s, expected):
    monkeypatch.setenv("OMNIPHI_CACHE", str(tmp_path))
    seconds = {torch.float32: 1.0, torch.bfloat16: bf16_s, torch.int8: int8_s}
    monkeypatch.setattr(devices, "_matmul_seconds", lambda dtype, **_: seconds[dtype])
    monkeypatch.setattr(devices, "_decode_seconds", lambda dtype, **_: 1.0)
    devices._cpu_probe.cache_clear()
    try:
        assert quantize.prefill_dtype_on_this_cpu() == expected
        assert Int8WeightOnlyLinear(nn.Linear(128, 8), torch.float32).prefill_dtype == expected
    finally:
        devices._cpu_probe.cache_clear()


def test_bf16_decode_counts_the_faster_of_linear_and_mv(monkeypatch, tmp_path):
    monkeypatch.setenv("OMNIPHI_CACHE", str(tmp_path))
    monkeypatch.setattr(devices, "_matmul_seconds", lambda dtype, **_: 1.0 if dtype == torch.float32 else 0.3)
    monkeypatch.setattr(devices, "_decode_seconds",  # bf16 linear slower than float32, bf16 mv faster
                        lambda dtype, as_mv=False: 1.0 if dtype == torch.float32 else (0.6 if as_mv else 1.2))
    devices._cpu_probe.cache_clear()
    try:
        assert devices.cpu_bf16_mv_is_faster() is True
        assert devices.cpu_bf16_is_faster() is True  # fast_ops runs the mv form there
    finally:
        devices._cpu_probe.cache_clear()


def test_missing_weights_is_a_user_error():
    assert is_user_error(presets.MissingWeightsError("x"))


def test_a_models_wish_for_a_gpu_falls_back_to_the_cpu_without_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loading.resolve_choice("auto", "float32", "none", {"device": "cuda"}).device == torch.device("cpu")
    with pytest.raises(DeviceError):  # the user's own --device cuda stays an error
        loading.resolve_choice("cuda", "float32", "none", {})


def test_bf16_probe_keeps_each_products_best_round(monkeypatch, tmp_path):
    """A burst of other work during one bf16 timing must not cache 'float32 is faster' for good."""
    monkeypatch.setenv("OMNIPHI_CACHE", str(tmp_path))
    bf16_calls = []

    def timed(dtype, **_):
        if dtype == torch.float32:
            return 1.0
        bf16_calls.append(dtype)
        return 2.0 if len(bf16_calls) <= 3 else 0.3  # the whole first round of bf16 timed while busy

    monkeypatch.setattr(devices, "_matmul_seconds", timed)
    monkeypatch.setattr(devices, "_decode_seconds", timed)
    devices._cpu_probe.cache_clear()
    try:
        assert devices.cpu_bf16_is_faster() is True
    finally:
        devices._cpu_probe.cache_clear()


@pytest.mark.slow
def test_a_whisper_prompt_is_saved_and_loaded_with_its_model(reference, tmp_path):
    from omniphi.asr import Transcriber
    from omniphi.model_card import TRANSCRIPTION_CONFIG_FILE, write_transcription_prompt

    whisper = Transcriber.starter()
    whisper.prompt = "Words of the model's world: hexagon, centre."
    loading.save_directory(presets.LoadedModel(reference.model, reference.processor, whisper, "with-whisper"),
                           tmp_path / "model")
    assert runtime.load(str(tmp_path / "model"), device="cpu").transcriber.prompt == whisper.prompt
    assert loading.load_transcriber(str(tmp_path / "model")).prompt == whisper.prompt
    # a training output on it keeps the prompt, unless it names its own
    _training_output(tmp_path / "out", str(tmp_path / "model"), reference.model,
                     reference.model.multi_modal_projector.linear_1.weight.detach().clone())
    assert loading.load_transcriber(str(tmp_path / "out")).prompt == whisper.prompt
    write_transcription_prompt(tmp_path / "out", "The output's own words.")
    assert loading.load_transcriber(str(tmp_path / "out")).prompt == "The output's own words."
    (tmp_path / "model" / TRANSCRIPTION_CONFIG_FILE).write_text('{"prompt": 3}')
    with pytest.raises(loading.ModelSpecError, match=TRANSCRIPTION_CONFIG_FILE):
        runtime.load(str(tmp_path / "model"), device="cpu")
