"""`omniphi bench` on the tiny preset: every configuration gives one JSON line with the documented
keys and sane values (speeds are not asserted: timings on a shared machine are noise)."""

import json
import math

from omniphi.cli import main

KEYS = {"config", "decode_tok_s", "decode_bound_tok_s", "ttft_s", "followup_ttft_s", "streams4_speedup",
        "baseline_decode_tok_s", "baseline_ttft_s"}


def test_bench_prints_one_json_object_per_configuration(capsys):
    assert main(["bench", "--model", "tiny", "--new-tokens", "3", "--dtype", "bfloat16,float32", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    results = [json.loads(line) for line in lines]
    assert [r["config"] for r in results] == ["bfloat16", "float32"]
    for result in results:
        assert KEYS <= set(result)
        for key in KEYS - {"config"}:
            assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])
        assert result["new_tokens"] == 3
        # the follow-up prefilled only its new tokens, not the image again
        assert result["followup_prefilled_tokens"] < result["prompt_tokens"]
    bf16, fp32 = results
    assert bf16["decode_bound_tok_s"] > fp32["decode_bound_tok_s"]  # half the bytes per token


def test_bench_rejects_an_unknown_dtype_in_one_line(capsys):
    assert main(["bench", "--model", "tiny", "--dtype", "float8"]) == 2
    assert "--dtype must be among" in capsys.readouterr().err


def test_bench_measures_quantised_configurations_against_the_same_baseline(capsys):
    assert main(["bench", "--model", "tiny", "--new-tokens", "3", "--dtype", "float32", "--quantize", "none,int8",
                 "--json"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["config"] for r in results] == ["float32", "float32+int8"]
    plain, int8 = results
    assert plain["baseline_decode_tok_s"] == int8["baseline_decode_tok_s"]  # one baseline per run
    # int8 weights are read instead of fp32 ones: fewer bytes per token, a higher bound
    assert int8["weight_bytes_per_token"] < plain["weight_bytes_per_token"]
    assert int8["decode_bound_tok_s"] > plain["decode_bound_tok_s"]


def test_phi2_random_has_the_sizes_of_phi2_clip_l_336_and_whisper_tiny():
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel, PhiConfig, WhisperConfig

    from omniphi.weights.phi2_random import CLIP_L_336, PHI2, WHISPER_TINY

    with init_empty_weights():  # sizes only: nothing is allocated
        llm = AutoModelForCausalLM.from_config(PhiConfig(**PHI2))
        tower = CLIPVisionModel(CLIPVisionConfig(**CLIP_L_336))
    assert sum(p.numel() for p in llm.parameters()) == 2_779_683_840  # microsoft/phi-2
    assert sum(p.numel() for p in tower.parameters()) == 303_507_456  # ViT-L/14 (303,179,776) + 320 positions × 1024
    assert (CLIP_L_336["image_size"] // CLIP_L_336["patch_size"]) ** 2 == 576
    assert WhisperConfig(**WHISPER_TINY).d_model == 384


def test_bench_measures_every_configuration_as_load_gives_it(capsys, monkeypatch):
    """The unquantised configurations reuse the baseline's plain model: they must run the fast ops that
    `omniphi.runtime.load` installs for `omniphi ask/serve`, or the table measures something users never run."""
    from omniphi import bench
    from omniphi.runtime.fast_ops import DECODE_ATTENTION

    measured = []
    real_measure = bench.measure

    def recording_measure(assistant, new_tokens, device):
        measured.append(assistant.model.language_model.config._attn_implementation)
        return real_measure(assistant, new_tokens, device)

    monkeypatch.setattr(bench, "measure", recording_measure)
    assert main(["bench", "--model", "tiny", "--new-tokens", "2", "--dtype", "float32", "--quantize", "none,int8",
                 "--json"]) == 0
    assert measured == [DECODE_ATTENTION, DECODE_ATTENTION]
