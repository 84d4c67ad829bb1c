"""`omniphi eval`: benchmarks in their published formats with their official metrics.

- ``metrics``: the scoring rules (VQA accuracy, POPE, MME, ScienceQA, WER, perplexity);
- ``textnorm``: Whisper-style English normalisation for WER;
- ``tasks``: the task registry (name → loader, prompt, per-item score, aggregate);
- ``runner``: batched generation, the speech conditions, results JSON and Markdown;
- ``cli``: the ``omniphi eval`` arguments. See docs/eval.md.
"""
