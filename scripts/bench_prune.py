"""Cost of pruning one decoder layer, against that layer's own prefill; and our decode loop
against transformers' `generate`.

    python scripts/bench_prune.py                          # CSP, LLaVA-1.5-7B layer shapes, L = 4096
    python scripts/bench_prune.py --methods csp,h2o,snapkv --length 2048 --repeats 5
    python scripts/bench_prune.py --methods all --skip-decode   # every registered method

Part 1 builds one LlamaDecoderLayer with random weights and the 7B shapes (hidden 4096,
32 heads, head dim 128; weights do not change cost), runs its prefill on L tokens of which a
share are image tokens, then times the engine's hook for each method (scoring + selection +
cache rewrite, the exact code the prefill runs) and counts the peak extra memory the hook
allocates. Part 2 compares the per-token latency of `csp.engine.decode.greedy_generate` at full
cache with transformers' greedy `generate` on the same random model (7B-shaped layers, fewer
of them). Figures are medians of `--repeats` runs; on a noisy machine compare ratios.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from csp.engine import registry  # noqa: E402
from csp.engine.hooks import PruningHooks, cache_layer  # noqa: E402
from csp.analysis.profiling import PeakMemory  # noqa: E402

def build_method(name: str, budget: float, recent_ratio: float):
    return registry.build_method(name, budget, recent_ratio).for_dataset({"cross_ratio": 0.5, "bias": 1.0})


def method_names(spec: str) -> list[str]:
    """`all` = every pruning method with a config (CSP first, then the others), else a list.
    FastV acts from layer K on, so this one-layer benchmark shows it keeping everything."""
    if spec != "all":
        return spec.split(",")
    names = [n for n in registry.method_names() if n not in ("full", "csp")]
    return ["csp", *names]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_layer(args) -> None:
    from transformers import DynamicCache, LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                      num_hidden_layers=1, max_position_embeddings=max(4096, args.length), attn_implementation="sdpa")
    torch.manual_seed(0)
    layer = LlamaDecoderLayer(cfg, layer_idx=0).eval()
    rotary = LlamaRotaryEmbedding(cfg)
    length = args.length
    hidden = torch.randn(1, length, cfg.hidden_size) * 0.02
    positions = torch.arange(length)[None]
    pos_emb = rotary(hidden, positions)
    image_token = 7
    input_ids = torch.full((1, length), 11)
    n_img = int(length * args.visual_share)
    input_ids[0, 32 : 32 + n_img] = image_token  # a text preamble, the images, then the question
    mask = torch.ones(1, length, dtype=torch.long)

    captured = {}

    def capture(module, a, kw, out):  # the attention module's input: the layer's normed hidden states
        captured["hidden"] = kw["hidden_states"] if "hidden_states" in kw else a[0]

    def prefill():
        cache = DynamicCache(config=cfg)
        with torch.inference_mode():
            layer(hidden, attention_mask=None, position_embeddings=pos_emb, position_ids=positions,
                  past_key_values=cache, use_cache=True)
        return cache

    handle = layer.self_attn.register_forward_hook(capture, with_kwargs=True)
    cache = prefill()
    handle.remove()
    full_k, full_v = cache_layer(cache, 0).keys, cache_layer(cache, 0).values
    t_prefill = median_time(prefill, args.repeats)
    bound = 2 * cfg.num_attention_heads * int(args.recent_ratio * length) * length * 4
    print(f"\n## One decoder layer, LLaVA-1.5-7B shapes, L = {length} ({n_img} image tokens), CPU, "
          f"{torch.get_num_threads()} threads")
    print(f"layer prefill (median of {args.repeats}): {t_prefill * 1e3:.1f} ms")
    print(f"memory bound 2 x heads x window x L x 4 B = {bound / 2**20:.1f} MiB")
    chunk = 512
    print(f"all-query methods (chunk {chunk}): heads x chunk x L x 4 B = "
          f"{cfg.num_attention_heads * chunk * length * 4 / 2**20:.1f} MiB per score tensor; "
          f"heads x L x L x 4 B would be {cfg.num_attention_heads * length * length * 4 / 2**20:.1f} MiB\n")
    print("| method | prune time (ms) | share of layer prefill | peak extra memory (MiB) | kept per head |")
    print("|---|---|---|---|---|")
    for name in method_names(args.methods):

        def pruner(method):
            hooks = PruningHooks([layer.self_attn], method, input_ids, mask, image_token)

            def prune():
                layer_cache = cache_layer(cache, 0)
                layer_cache.keys, layer_cache.values = full_k, full_v
                with torch.inference_mode():
                    hooks.prune_layer(layer.self_attn, captured["hidden"], pos_emb, cache)
                    if method.cross_layer:  # it selects once every layer (here the one) is in
                        hooks.layout()
                return layer_cache.keys.shape[2]

            return prune

        # memory on a fresh method object, so buffers it keeps for the next layer are counted
        with PeakMemory() as pm:
            kept = pruner(build_method(name, args.budget, args.recent_ratio))()
        prune = pruner(build_method(name, args.budget, args.recent_ratio))
        prune()  # warm-up
        t = median_time(prune, args.repeats)
        print(f"| {name} | {t * 1e3:.1f} | {t / t_prefill:.2%} | {pm.peak_bytes / 2**20:.1f} | {kept} |")


def bench_decode(args) -> None:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from csp.engine.decode import greedy_generate

    text = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                       num_hidden_layers=args.decode_layers, vocab_size=32064, max_position_embeddings=4096)
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                              image_size=28, patch_size=14)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_id=32000)).eval()

    class Adapter:  # the engine's view of a model: a random 7B-shaped model has no processor
        def __init__(self, model):
            self.model, self.image_token_id, self.eos_token_ids, self.pad_token_id = model, 32000, [2], 0

        def attention_modules(self):
            return [layer.self_attn for layer in self.model.model.language_model.layers]

    adapter = Adapter(model)
    ids = torch.randint(3, 32000, (1, args.decode_prompt))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    n = args.decode_tokens

    def ours(tokens: int):
        return lambda: greedy_generate(adapter, inputs, None, max_new_tokens=tokens, min_new_tokens=tokens)

    def theirs(tokens: int):
        return lambda: model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                      eos_token_id=None, pad_token_id=0)

    with torch.inference_mode():
        ours(2)(), theirs(2)()  # warm-up
        per_token = {}
        for label, make in (("ours", ours), ("transformers", theirs)):
            long, short = median_time(make(n), args.repeats), median_time(make(1), args.repeats)
            per_token[label] = (long - short) / (n - 1)
    print(f"\n## Decode at full cache: {args.decode_layers} layers of 7B shape, prompt {args.decode_prompt}, "
          f"{n} new tokens, CPU")
    print("| loop | ms / token |")
    print("|---|---|")
    for label, value in per_token.items():
        print(f"| {label} | {value * 1e3:.2f} |")
    print(f"ratio ours / transformers: {per_token['ours'] / per_token['transformers']:.3f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="csp",
                   help="comma-separated names of configs/method/*.yaml, or `all`")
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--visual-share", type=float, default=0.85, help="share of the prompt that is image tokens")
    p.add_argument("--budget", type=float, default=0.2)
    p.add_argument("--recent-ratio", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decode-layers", type=int, default=2)
    p.add_argument("--decode-prompt", type=int, default=512)
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--skip-decode", action="store_true")
    args = p.parse_args(argv)
    bench_layer(args)
    if not args.skip_decode:
        bench_decode(args)


if __name__ == "__main__":
    main()
