"""Mutation check: plant plausible one-line bugs, one at a time, and see whether the tests catch them.

A test suite that compares the code with itself passes whatever the code computes; this
script is how we know ours does not. Each mutant names a file, an exact piece of text in it
(found exactly once), its buggy replacement and the test files that ought to fail. For each,
the working tree (uncommitted edits included, without .venv / models / data / results /
.git) is copied to a temporary folder, the bug is applied THERE, and the named tests run
there with pytest -x; the repository itself is never touched.

    .venv/bin/python scripts/mutants.py                 # every mutant
    .venv/bin/python scripts/mutants.py --only engine-visual-inverted --only csp-window-long
    .venv/bin/python scripts/mutants.py --list

Prints KILLED / SURVIVED per mutant and a summary; exits 1 if any survived (or could not be
applied: STALE, or the tests errored in another way: ERROR).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
SKIP_TOP = {".venv", ".git", "models", "data", "results", "outputs", "multirun"}  # at the root only (csp/models is code)
SKIP_ANY = {"__pycache__", ".pytest_cache"}


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    old: str  # exact text, must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # test files that should catch it


TRUTH = "tests/test_engine_truth.py"
FIDELITY, METRICS, FILES = "tests/test_fidelity.py", "tests/test_score_metrics.py", "tests/test_score_files.py"
E2E, FLOW, CONFIG = "tests/test_runner_e2e.py", "tests/test_runner_flow.py", "tests/test_config.py"
PROXY, LEARNABLE = "tests/test_proxy.py", "tests/test_learnable.py"
EXTRA = "tests/test_baselines_extra.py"
NAMES, DIST, DEFAULTS = "tests/test_run_names.py", "tests/test_dist.py", "tests/test_method_defaults.py"
DATA, PROMPT, TABLES = "tests/test_milebench_data.py", "tests/test_prompt.py", "tests/test_eval_score.py"
PROMISES = "tests/test_generator_promises.py"
AUTHORS = "tests/test_authors_models.py"

MUTANTS: list[Mutant] = [
    # engine and methods
    Mutant("engine-queries-no-rotary", "csp/engine/hooks.py",
           "return q * cos + rotate_half(q) * sin", "return q", (TRUTH,)),
    Mutant("engine-rotary-sin-sign", "csp/engine/hooks.py",
           "return q * cos + rotate_half(q) * sin", "return q * cos - rotate_half(q) * sin", (TRUTH,)),
    Mutant("engine-visual-inverted", "csp/engine/hooks.py",
           "self._visual = self.input_ids == self.image_token_id",
           "self._visual = self.input_ids != self.image_token_id", (TRUTH,)),
    Mutant("engine-visual-off-by-one", "csp/engine/hooks.py",
           "visual=self._visual[b, pos],", "visual=self._visual[b, pos - 1],", (TRUTH,)),
    Mutant("engine-window-queries-shifted", "csp/engine/hooks.py",
           "p = pos if last is None else pos[pos.numel() - last :]",
           "p = pos if last is None else pos[pos.numel() - last - 1 : -1]", (TRUTH,)),
    Mutant("engine-gather-off-by-one", "csp/engine/hooks.py",
           "idx = sel.index.unsqueeze(-1).expand(-1, -1, kv.keys.shape[-1])",
           "idx = (sel.index - 1).clamp(min=0).unsqueeze(-1).expand(-1, -1, kv.keys.shape[-1])", (TRUTH,)),
    Mutant("engine-roomy-append-offset", "csp/engine/hooks.py",
           "self._k[:, :, n : n + add] = key_states", "self._k[:, :, n - 1 : n + add - 1] = key_states",
           (TRUTH,)),
    Mutant("engine-eager-mask-inverted", "csp/engine/hooks.py",
           "mask = mask.masked_fill(~allowed, torch.finfo(hidden.dtype).min)",
           "mask = mask.masked_fill(allowed, torch.finfo(hidden.dtype).min)", (TRUTH,)),
    Mutant("engine-layer-mask-heads-tiled", "csp/engine/hooks.py",
           "allowed = allowed.repeat_interleave(groups, dim=1)", "allowed = allowed.repeat(1, groups, 1)",
           (TRUTH,)),
    Mutant("engine-layer-mask-new-token-hidden", "csp/engine/hooks.py",
           "new = torch.ones(b, prompt_mask.shape[1], self.generated + q_len,",
           "new = torch.zeros(b, prompt_mask.shape[1], self.generated + q_len,", (TRUTH,)),
    Mutant("generate-decode-position-plus-one", "csp/engine/decode.py",
           "self.layout.prompt_lengths + self.steps)", "self.layout.prompt_lengths + self.steps + 1)", (TRUTH,)),
    Mutant("generate-prefill-positions-from-one", "csp/engine/decode.py",
           "return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)",
           "return attention_mask.long().cumsum(-1)", (TRUTH,)),
    Mutant("generate-decode-mask-not-extended", "csp/engine/decode.py",
           "self._slots.new_ones(len(tokens), self.steps + 1)", "self._slots.new_ones(len(tokens), self.steps)",
           (TRUTH,)),
    Mutant("generate-merge-first-layer-mask", "csp/engine/decode.py",
           "layer_masks = [torch.cat([left_pad(m[i], width, -1) for m in per_sample])",
           "layer_masks = [torch.cat([left_pad(m[0], width, -1) for m in per_sample])", (TRUTH,)),
    Mutant("csp-window-long", "csp/cross_self.py",
           "length, window = kv.length, max(budget.recent, 1)",
           "length, window = kv.length, max(budget.recent + 1, 1)", (TRUTH,)),
    Mutant("csp-window-causal-shifted", "csp/cross_self.py",
           "logits = grouped_logits(q, kv.keys, kv.scaling, kv.length - window, kv.workspace)",
           "logits = grouped_logits(q, kv.keys, kv.scaling, kv.length - window - 1, kv.workspace)", (TRUTH,)),
    Mutant("csp-window-modality-shifted", "csp/cross_self.py",
           "kv.visual[-window:].to(attn.dtype)", "kv.visual[-window - 1 : -1].to(attn.dtype)", (TRUTH,)),
    Mutant("attention-gqa-heads-strided", "csp/engine/attention.py",
           "q = (queries.float() * scaling).reshape(hkv, g * w, d)",
           "q = (queries.float() * scaling).view(g, hkv, w, d).transpose(0, 1).reshape(hkv, g * w, d)", (TRUTH,)),
    Mutant("attention-no-scaling", "csp/engine/attention.py",
           "q = (queries.float() * scaling).reshape(hkv, g * w, d)",
           "q = queries.float().reshape(hkv, g * w, d)", (TRUTH,)),
    Mutant("attention-causal-off-by-one", "csp/engine/attention.py",
           "future = torch.arange(query_start, length, device=keys.device)[None, :] > q_pos[:, None]",
           "future = torch.arange(query_start, length, device=keys.device)[None, :] >= q_pos[:, None]", (TRUTH,)),
    Mutant("engine-window-rotary-from-zero", "csp/engine/hooks.py",
           "return recompute_queries(module, hidden_b[p], cos_b[p], sin_b[p])",
           "return recompute_queries(module, hidden_b[p], cos_b[: p.numel()], sin_b[: p.numel()])", (TRUTH,)),
    Mutant("engine-prompt-lengths-padded", "csp/engine/hooks.py",
           "prompt_lengths=self._real.sum(-1),",
           "prompt_lengths=torch.full_like(self._real.sum(-1), self._real.shape[-1]),", (TRUTH,)),
    Mutant("engine-ragged-treated-uniform", "csp/engine/hooks.py",
           "layer_masks=None if uniform else masks,", "layer_masks=None,", (TRUTH,)),
    Mutant("generate-mask-hooks-one-ahead", "csp/engine/decode.py",
           "self._mask_hooks.generated = self.steps", "self._mask_hooks.generated = self.steps + 1", (TRUTH,)),
    Mutant("attention-nsoftmax-unshifted-n", "csp/engine/attention.py",
           "denom += n * torch.exp(-m.double())", "denom += n", (TRUTH, "tests/test_csp.py")),
    Mutant("csp-self-cross-swapped", "csp/cross_self.py",
           "s_self = torch.where(kv.visual, from_visual, from_all - from_visual)",
           "s_self = torch.where(kv.visual, from_all - from_visual, from_visual)", (TRUTH,)),
    Mutant("csp-group-first-head-only", "csp/cross_self.py",
           "from_all, from_visual = torch.matmul(rows, attn).mean(dim=1).unbind(dim=1)",
           "from_all, from_visual = torch.matmul(rows, attn)[:, 0].unbind(dim=1)", ("tests/test_csp.py",)),
    Mutant("csp-intersection-is-union", "csp/cross_self.py",
           "both = (_ranks(s_self) < k_self) & (_ranks(s_cross) < k_cross)",
           "both = (_ranks(s_self) < k_self) | (_ranks(s_cross) < k_cross)", ("tests/test_csp.py",)),
    Mutant("generate-merge-uniform-sample-all-slots", "csp/engine/decode.py",
           "per_sample = [lay.layer_masks or [lay.slot_mask[:, None, :].expand(-1, heads, -1)]",
           "per_sample = [lay.layer_masks or [torch.ones_like(lay.slot_mask)[:, None, :].expand(-1, heads, -1)]",
           (TRUTH,)),
    Mutant("tova-per-group-by-default", "baselines/tova.py", '    heads: str = "all"\n', '    heads: str = "group"\n',
           (EXTRA,)),
    Mutant("tova-first-group-for-all", "baselines/tova.py", "return per_group.mean(dim=0, keepdim=True)",
           "return per_group[:1]", (EXTRA,)),
    Mutant("fastv-ranks-by-every-query", "baselines/fastv.py", '    rank: str = "last"\n', '    rank: str = "all"\n',
           (EXTRA,)),
    Mutant("fastv-drop-count-int", "baselines/fastv.py", "return round(n_image * (1 - ratio))",
           "return n_image - int(ratio * n_image)", (EXTRA,)),
    Mutant("fastv-last-first-head", "baselines/fastv.py", "return window_scores(kv, 1).mean(dim=0)",
           "return window_scores(kv, 1)[0]", (EXTRA,)),
    Mutant("fastv-all-first-head", "baselines/fastv.py", "return heavy_hitter_scores(kv, self.chunk_size).mean(dim=0)",
           "return heavy_hitter_scores(kv, self.chunk_size)[0]", (EXTRA,)),
    # the same kind of bug, caught by the trained proxy model's quality tests alone
    Mutant("proxy-csp-keeps-least-scored", "csp/cross_self.py",
           "return scores.topk(k, dim=-1).indices", "return scores.topk(k, dim=-1, largest=False).indices", (PROXY,)),
    # (the recomputed queries without rotary, killed by the truth tests above, pass these: on
    # the proxy, unrotated window queries still find the coloured shape)
    Mutant("proxy-gather-from-the-wrong-end", "csp/engine/hooks.py",
           "idx = sel.index.unsqueeze(-1).expand(-1, -1, kv.keys.shape[-1])",
           "idx = (kv.length - 1 - sel.index).unsqueeze(-1).expand(-1, -1, kv.keys.shape[-1])", (PROXY,)),
    Mutant("proxy-snapkv-votes-negated", "baselines/snapkv.py", "        return votes\n", "        return -votes\n",
           (PROXY,)),
    # end of engine and methods
    # runner and scoring
    Mutant("fidelity-kl-reversed", "csp/analysis/fidelity.py",
           "kl = kl_divergence(ref_logits, our_logits).double().cpu()",
           "kl = kl_divergence(our_logits, ref_logits).double().cpu()", (FIDELITY,)),
    Mutant("rouge-periods-to-spaces", "milebench/metrics.py",
           'return float(_ROUGE.get_scores(pred, gold)[0]["rouge-l"]["f"])',
           'return float(_ROUGE.get_scores(pred.replace(".", " "), gold.replace(".", " "))[0]["rouge-l"]["f"])',
           (METRICS,)),
    Mutant("rouge-score-stemmer-on", "milebench/metrics.py", "use_stemmer=False", "use_stemmer=True", (METRICS,)),
    Mutant("resume-skips-cut-batch", "milebench/runner/loop.py",
           "todo = [b for b in mine if any(s.sample_id not in done for s in b)]",
           "todo = [b for b in mine if all(s.sample_id not in done for s in b)]", (E2E,)),
    Mutant("resume-rewrites-done-samples", "milebench/runner/loop.py",
           "if s.sample_id in done:  # the rest of a batch cut short by a kill", "if False:", (E2E,)),
    Mutant("rerun-larger-limit-not-merged", "milebench/runner/loop.py",
           "up_to_date = store.is_final() and not store.partial_dir.exists() and",
           "up_to_date = store.is_final() and", (FLOW,)),
    Mutant("rerun-ignores-pred-json", "milebench/runner/store.py",
           "        if self.pred_path.is_file():\n            try:", "        if False:\n            try:", (FLOW,)),
    Mutant("generation-gets-run-method", "milebench/runner/loop.py",
           "records = self.run_batch(dataset, batch, done, method, gen_kwargs)",
           "records = self.run_batch(dataset, batch, done, self.method, gen_kwargs)", (FLOW,)),
    Mutant("adversarial-reads-test-file", "milebench/runner/loop.py",
           "adversarial=bool(runner.cfg.adversarial),", "adversarial=False,", (FLOW,)),
    Mutant("resolved-dtype-not-saved", "milebench/runner/loop.py",
           'data["dtype"], data["prefill"] = plan.dtype, plan.prefill', "pass", (FLOW,)),
    Mutant("eval-json-written-first", "milebench/score.py",
           "    names = output_names(result.corrected)\n",
           '    names = output_names(result.corrected)\n    _write_json(folder / names["eval"], result.eval_json())\n',
           (FLOW,)),
    Mutant("resume-drops-last-line", "milebench/runner/store.py",
           "for n, line in enumerate(data[:end].splitlines(), 1):",
           "for n, line in enumerate(data[:end].splitlines()[:-1], 1):", ("tests/test_runner_store.py",)),
    Mutant("rouge-per-sample-unrounded", "milebench/score.py",
           "fmt = (lambda s: str(round(s, 3))) if self.metric == ROUGE_METRIC else str", "fmt = str", (FILES,)),
    Mutant("rouge-empty-as-float", "milebench/metrics.py",
           "    if not pred.replace(\".\", \"\"):\n        return 0\n",
           "    if not pred.replace(\".\", \"\"):\n        return 0.0\n", (FILES,)),
    Mutant("empty-level-left-out", "milebench/score.py",
           "levels: dict[str, list[float]] = {lv: [0, 0] for lv in LEVELS}",
           "levels: dict[str, list[float]] = {lv: [0, 0] for lv in LEVELS[:1]}", (FILES,)),
    Mutant("empty-level-accuracy-float", "milebench/score.py", "s / n if n else 0 for lv", "s / n if n else 0.0 for lv",
           (FILES,)),
    Mutant("level-few-boundary", "milebench/catalog.py", "if num_images < 6:", "if num_images <= 6:", (FILES,)),
    Mutant("level-many-boundary", "milebench/catalog.py",
           'return "Medium" if num_images <= 31 else "Many"', 'return "Medium" if num_images < 31 else "Many"',
           (FILES,)),
    Mutant("mmcoqa-substring-reversed", "milebench/metrics.py", "    return gold in pred\n",
           "    return pred in gold\n", (METRICS,)),
    Mutant("needle-substring-not-token", "milebench/metrics.py", "return gold in pred.split()",
           "return gold in pred", (METRICS,)),
    Mutant("choice-empty-not-c", "milebench/metrics.py", '    if pred == "":\n        return "C"',
           '    if pred == "":\n        return ""', (METRICS,)),
    Mutant("snapkv-skips-text-only", "baselines/snapkv.py", "    prune_text_only_prompts: bool = True\n",
           "    prune_text_only_prompts: bool = False\n", ("tests/test_text_only_prompts.py",)),
    Mutant("cli-data-error-traceback", "milebench/run.py", "except (ConfigError, DataError, ScoreError) as e:",
           "except (ConfigError, ScoreError) as e:", (CONFIG,)),
    Mutant("cli-hydra-error-multiline", "milebench/run.py", '    os.environ["HYDRA_FULL_ERROR"] = "1"\n', "",
           (CONFIG,)),
    # run names, the distributed environment, placeholders, method defaults, tables, generators
    Mutant("run-name-budget-dropped-with-tokens", "milebench/runner/settings.py",
           'said = {"budget_tokens"} if tokens is not None else {"budget"}', 'said = {"budget_tokens", "budget"}',
           (NAMES,)),
    Mutant("run-name-recent-ratio-unnamed", "milebench/runner/settings.py",
           'NAMING_FIELDS = ("budget", "recent_ratio", ', 'NAMING_FIELDS = ("budget", ', (NAMES,)),
    Mutant("run-name-only-sweep-fields", "milebench/runner/settings.py", 'NAMING_PREFIXES = ("method.",)',
           'NAMING_PREFIXES = ("method.cross_ratio", "method.score_fn", "method.decompose")', (NAMES,)),
    Mutant("dist-local-rank-from-rank", "milebench/runner/dist.py",
           'local = int(os.environ.get("LOCAL_RANK", str(rank)))', "local = rank", (DIST,)),
    Mutant("dist-main-by-local-rank", "milebench/runner/dist.py", "return self.rank == 0",
           "return self.local_rank == 0", (DIST,)),
    Mutant("dist-gpu-by-global-rank", "milebench/runner/dist.py", 'return f"cuda:{self.local_rank}"',
           'return f"cuda:{self.rank}"', (DIST,)),
    Mutant("dist-owns-by-local-rank", "milebench/runner/dist.py", "return batch_index % self.world == self.rank",
           "return batch_index % self.world == self.local_rank", (DIST,)),
    Mutant("dist-set-device-global-rank", "milebench/runner/dist.py", "torch.cuda.set_device(dist.local_rank)",
           "torch.cuda.set_device(dist.rank)", (DIST,)),
    Mutant("runner-partial-file-by-local-rank", "milebench/runner/loop.py",
           "with store.appender(self.dist.rank) as out:", "with store.appender(self.dist.local_rank) as out:", (FLOW,)),
    Mutant("data-placeholder-zero-accepted", "milebench/data.py", "if not 1 <= k <= len(images):",
           "if not 0 <= k <= len(images):", (DATA,)),
    Mutant("data-placeholder-one-past-accepted", "milebench/data.py", "if not 1 <= k <= len(images):",
           "if not 1 <= k <= len(images) + 1:", (DATA,)),
    Mutant("prompt-placeholder-zero-replaced", "milebench/prompt.py", "for k in range(1, n_images + 1):",
           "for k in range(0, n_images + 1):", (PROMPT,)),
    Mutant("prompt-combined-numbered-from-zero", "milebench/prompt.py", 'repl = f"<Image {k}> "',
           'repl = f"<Image {k - 1}> "', (PROMPT,)),
    Mutant("budget-split-rounded", "csp/engine/method.py",
           "return Budget(int(hh_ratio * length), int(self.recent_ratio * length))",
           "return Budget(round(hh_ratio * length), round(self.recent_ratio * length))", (DEFAULTS,)),
    Mutant("budget-hh-ratio-float-error", "csp/engine/method.py",
           "hh_ratio = round(self.budget - self.recent_ratio, 12)", "hh_ratio = self.budget - self.recent_ratio",
           (DEFAULTS,)),
    Mutant("budget-tokens-recent-rounded", "csp/engine/method.py",
           "recent = int(self.budget_tokens * self.recent_ratio / self.budget)",
           "recent = round(self.budget_tokens * self.recent_ratio / self.budget)", (DEFAULTS,)),
    Mutant("reco-pool-rounded", "baselines/reco.py", "int(self.std_pool_ratio * budget.total)",
           "round(self.std_pool_ratio * budget.total)", (DEFAULTS,)),
    Mutant("adakv-floor-rounded", "baselines/adakv.py", "int(self.floor_ratio * budget.selected)",
           "round(self.floor_ratio * budget.selected)", (DEFAULTS,)),
    Mutant("csp-recent-kept-rounded", "csp/cross_self.py", "kept = recent if bias == 1 else int(recent * bias)",
           "kept = recent if bias == 1 else round(recent * bias)", (DEFAULTS,)),
    Mutant("csp-split-rounded", "csp/cross_self.py", "return int(k * ratio), int(k * (1 - ratio))",
           "return round(k * ratio), k - round(k * ratio)", (DEFAULTS,)),
    Mutant("config-fastv-layer", "configs/method/fastv.yaml", "layer: 2 ", "layer: 3 ", (DEFAULTS,)),
    Mutant("config-adakv-floor", "configs/method/adakv.yaml", "floor_ratio: 0.2", "floor_ratio: 0.1", (DEFAULTS,)),
    Mutant("config-reco-sinks", "configs/method/reco.yaml", "sinks: 4", "sinks: 2", (DEFAULTS,)),
    Mutant("config-reco-pool", "configs/method/reco.yaml", "std_pool_ratio: 0.1", "std_pool_ratio: 0.2", (DEFAULTS,)),
    Mutant("config-snapkv-kernel", "configs/method/snapkv.yaml", "kernel: 5", "kernel: 7", (DEFAULTS,)),
    Mutant("config-snapkv-window", "configs/method/snapkv.yaml", "window: null", "window: 32", (DEFAULTS,)),
    Mutant("tables-saved-config-ignored", "milebench/tables.py", "        if self.variant or self.changes:",
           "        if self.variant:", (TABLES,)),
    Mutant("tables-method-fields-not-compared", "milebench/tables.py",
           'out += [f"method.{k}={node[k]}" for k in defaults if k in node and node[k] != defaults[k]]', "pass",
           (TABLES,)),
    Mutant("tables-recent-ratio-not-compared", "milebench/tables.py",
           'REFERENCE_RUN = {"recent_ratio": 0.1, ', "REFERENCE_RUN = {", (TABLES,)),
    Mutant("eval-stale-never-rescored", "eval_score.py",
           "if not ev.is_file() or ev.stat().st_mtime < pred.stat().st_mtime:", "if not ev.is_file():", (TABLES,)),
    Mutant("eval-stale-inverted", "eval_score.py",
           "if not ev.is_file() or ev.stat().st_mtime < pred.stat().st_mtime:",
           "if not ev.is_file() or ev.stat().st_mtime > pred.stat().st_mtime:", (TABLES,)),
    Mutant("proxy-temporal-event-at-the-end", "milebench/proxy.py", "start = rng.randrange(max(1, n - length - 2))",
           "start = rng.randrange(max(1, n - length + 1))", (PROMISES,)),
    Mutant("proxy-multi-turn-anywhere", "milebench/proxy.py",
           "pics[rng.randrange(max(1, len(pics) // 2))] = mk.picture(gold)",
           "pics[rng.randrange(len(pics))] = mk.picture(gold)", (PROMISES,)),
    Mutant("proxy-cross-modal-names-the-wrong-picture", "milebench/proxy.py",
           'question = f"Question: Picture {k + 1} shows', 'question = f"Question: Picture {k} shows', (PROMISES,)),
    Mutant("proxy-solved-pair-unchanged", "milebench/proxy.py", "before, after = rng.sample(PLAIN, 2)",
           "before, after = rng.choice(PLAIN), rng.choice(PLAIN)", (PROMISES,)),
    Mutant("learnable-label-names-the-wrong-picture", "milebench/learnable.py",
           'question = form.question.format(a=f"{form.label} {i + 1}", b=f"{form.label} {j + 1}")',
           'question = form.question.format(a=f"{form.label} {i}", b=f"{form.label} {j + 1}")', (LEARNABLE,)),
    Mutant("learnable-decoy-needle-has-the-asked-name", "milebench/learnable.py",
           "name, other = rng.sample(NAMES, 2)", "name = other = rng.choice(NAMES)", (LEARNABLE,)),
    Mutant("learnable-options-first-colour-settles", "milebench/learnable.py",
           "options = [pair(a, b), pair(a, y), pair(x, b), pair(x, y)]",
           "options = [pair(a, b), pair(y, x), pair(x, b), pair(x, y)]", (LEARNABLE,)),
    Mutant("learnable-options-name-the-gold-twice", "milebench/learnable.py",
           "options = [pair(a, b), pair(a, y), pair(x, b), pair(x, y)]",
           "options = [pair(a, b), pair(a, y), pair(x, b), pair(y, x)]", (LEARNABLE,)),
    Mutant("learnable-options-decoys-no-picture-shows", "milebench/learnable.py",
           "self.rng.sample(others if len(others) >= 2 else [c for c in COLOURS if c not in (a, b)], 2)",
           "self.rng.sample([c for c in COLOURS if c not in (a, b)], 2)", (LEARNABLE,)),
    Mutant("learnable-retrieval-anchor-any-colour", "milebench/learnable.py",
           "pics = [mk.picture(c) for c in colours] + [mk.picture(colours[gold])]",
           "pics = [mk.picture(c) for c in colours] + [mk.picture(rng.choice(colours))]", (LEARNABLE,)),
    Mutant("learnable-train-shares-the-pool", "milebench/learnable.py",
           'pool, images = make_pool(random.Random(f"milebench-learnable:{seed}:{split}:pool"))',
           'pool, images = make_pool(random.Random(f"milebench-learnable:{seed}:pool"))', (LEARNABLE,)),
    Mutant("diagnose-accuracy-reads-the-answer-token-itself", "standins/diagnose.py",
           "logits[e.answer_start - 1: e.length - 1]", "logits[e.answer_start: e.length]", (LEARNABLE,)),
    Mutant("diagnose-kinds-keep-the-first-pictures", "standins/diagnose.py",
           "classes = classes[classes.shape[0] - kept:]", "classes = classes[:kept]", (LEARNABLE,)),
    Mutant("diagnose-every-shape-is-evidence", "standins/diagnose.py",
           "torch.where((classes > 0) & picture_has, 0,", "torch.where((classes > 0), 0,", (LEARNABLE,)),
    Mutant("diagnose-attention-of-the-first-position", "standins/diagnose.py",
           "last = torch.stack([a[0, :, -1, :] for a in out.attentions])",
           "last = torch.stack([a[0, :, 0, :] for a in out.attentions])", (LEARNABLE,)),
    Mutant("diagnose-shuffle-not-applied", "standins/diagnose.py",
           "s = dataclasses.replace(s, images=shuffle.sample(s.images, len(s.images)))",
           "s = dataclasses.replace(s, images=list(s.images))", (LEARNABLE,)),
    Mutant("diagnose-caption-reads-the-full-stop", "standins/diagnose.py",
           "guess = logits[e.caption_positions].argmax(-1)",
           "guess = logits[[p + 1 for p in e.caption_positions]].argmax(-1)", (LEARNABLE,)),
    Mutant("diagnose-caption-on-unlabelled-datasets", "standins/diagnose.py",
           "    if name not in LABELLED:\n        return None", "    if False:\n        return None", (LEARNABLE,)),
    Mutant("standin-trains-on-another-generators-data", "standins/llava_standin.py",
           "wanted = (recipe.data_version, recipe.train_samples, recipe.data_seed)",
           'wanted = (made.get("generator_version"), recipe.train_samples, recipe.data_seed)', (LEARNABLE,)),
    Mutant("caption-targets-name-the-next-picture", "standins/llava_standin.py",
           "coloured = classes[k][classes[k] >= 2]",
           "coloured = classes[min(k + 1, len(pictures) - 1)][classes[min(k + 1, len(pictures) - 1)] >= 2]",
           (LEARNABLE,)),
    Mutant("caption-loss-unweighted", "standins/llava_standin.py",
           "loss = loss + caption_weight * caption", "loss = loss + caption", (LEARNABLE,)),
    Mutant("caption-target-at-the-full-stop", "standins/llava_standin.py",
           "positions.append(end - 1)", "positions.append(end)", (LEARNABLE,)),
    Mutant("synthetic-text-needle-in-a-picture-path", "milebench/synthetic.py",
           'pool = [f"haystack/pool_{k}.jpg" for k in range(4)]', 'pool = [f"needle/pool_{k}.jpg" for k in range(4)]',
           (PROMISES,)),
    Mutant("synthetic-gpr-without-twelve", "milebench/synthetic.py", "n = (3, 5, 12, 8, 4)[i % 5]",
           "n = (3, 5, 11, 8, 4)[i % 5]", (PROMISES,)),
    Mutant("synthetic-alfred-no-reused-frame", "milebench/synthetic.py", "f = min((s - 1) // 2, len(frames) - 1)",
           "f = min(s - 1, len(frames) - 1)", (PROMISES,)),
    # MobileVLM-V2 and InternVL-Chat-1.0 from their authors' layout
    Mutant("ldp-no-positional-residual", "csp/models/ldp.py", "grid = self.peg(grid) + grid", "grid = self.peg(grid)",
           (AUTHORS,)),
    Mutant("ldp-max-pool", "csp/models/ldp.py", "self.pool = nn.AdaptiveAvgPool2d((grid, grid))",
           "self.pool = nn.AdaptiveMaxPool2d((grid, grid))", (AUTHORS,)),
    Mutant("ldp-linears-swapped", "csp/models/authors_llava.py",
           '"model.mm_projector.mlp.mlp.0.": "linear_1.", "model.mm_projector.mlp.mlp.2.": "linear_2.",',
           '"model.mm_projector.mlp.mlp.0.": "linear_2.", "model.mm_projector.mlp.mlp.2.": "linear_1.",',
           (AUTHORS,)),
    Mutant("internvit-qkv-order", "csp/models/authors_llava.py", 'INTERNVIT_QKV = ("q_proj", "k_proj", "v_proj")',
           'INTERNVIT_QKV = ("k_proj", "q_proj", "v_proj")', (AUTHORS,)),
    Mutant("internvit-position-bilinear", "csp/models/authors_llava.py",
           'grid_map = F.interpolate(grid_map, size=(grid, grid), mode="bicubic", align_corners=False)',
           'grid_map = F.interpolate(grid_map, size=(grid, grid), mode="bilinear", align_corners=False)', (AUTHORS,)),
    Mutant("internvit-layer-scales-swapped", "csp/models/authors_llava.py",
           '"ls1": "lambda_1", "ls2": "lambda_2"}', '"ls1": "lambda_2", "ls2": "lambda_1"}', (AUTHORS,)),
    Mutant("authors-select-layer-ignored", "csp/models/authors_llava.py",
           'vision_feature_layer=int(raw["mm_vision_select_layer"]),', "vision_feature_layer=-1,", (AUTHORS,)),
    Mutant("authors-no-square-padding", "csp/models/authors_llava.py",
           'pad = raw.get("image_aspect_ratio") == "pad"', "pad = False", (AUTHORS,)),
    Mutant("template-vicuna-trailing-space", "csp/models/adapters.py", '" USER: {prompt} ASSISTANT:",',
           '" USER: {prompt} ASSISTANT: ",', (AUTHORS,)),
    Mutant("stop-string-ignored", "csp/engine/decode.py", 'stop = tuple(getattr(adapter, "stop_strings", ()))',
           "stop = ()", (AUTHORS,)),
    # end of runner and scoring
]


def copy_tree(dst: Path) -> None:
    """The working tree as it is now (uncommitted edits included), minus heavy or generated folders."""
    def ignore(folder: str, names: list[str]) -> list[str]:
        top = Path(folder).resolve() == REPO
        return [n for n in names if n in SKIP_ANY or (top and n in SKIP_TOP)]

    shutil.copytree(REPO, dst, ignore=ignore, symlinks=True)
    (dst / "results").mkdir(exist_ok=True)


def apply(mutant: Mutant, root: Path) -> str | None:
    """Plant the bug under `root`; returns why it could not be planted, or None."""
    path = root / mutant.file
    if not path.is_file():
        return f"{mutant.file} does not exist"
    text = path.read_text(encoding="utf-8")
    count = text.count(mutant.old)
    if count != 1:
        return f"{mutant.file}: the text to replace occurs {count} times (expected once): {mutant.old!r}"
    path.write_text(text.replace(mutant.old, mutant.new), encoding="utf-8")
    return None


def pytest(root: Path, tests: tuple[str, ...], timeout: float, stop_first: bool = True) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    cmd = [str(PYTHON), "-m", "pytest", *(["-x"] if stop_first else []), "-q", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:.0f} s"
    return done.returncode, done.stdout + done.stderr


def prepare_base(base: Path) -> None:
    """One clean copy with the tiny checkpoints built, that every mutant copies from."""
    copy_tree(base)
    if (REPO / "models").is_dir():
        shutil.copytree(REPO / "models", base / "models", symlinks=True)
    env = dict(os.environ, PYTHONPATH=str(base), PYTHONDONTWRITEBYTECODE="1")
    code = (
        "import csp, sys; from csp.models.tiny import ensure_tiny_model; "
        "[ensure_tiny_model(f) for f in ('llava', 'internvl')]; print(csp.__file__)"
    )
    out = subprocess.run([str(PYTHON), "-c", code], cwd=base, env=env, capture_output=True, text=True, check=True)
    where = Path(out.stdout.strip().splitlines()[-1]).resolve()
    if base.resolve() not in where.parents:
        raise SystemExit(f"imports resolve to {where}, not to the copy {base}: refusing to run")


def failed_tests(text: str) -> list[str]:
    """Test functions pytest's summary names as failed (parameters dropped), in order."""
    names = []
    for line in text.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            name = line.split()[1].split("[")[0].split("::")[-1]
            if name not in names:
                names.append(name)
    return names


def tail(text: str, lines: int = 15) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run this mutant (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip checking that the unmutated tests pass")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies")
    parser.add_argument("-v", "--verbose", action="store_true", help="print pytest's tail for every mutant")
    parser.add_argument("--all-tests", action="store_true",
                        help="run the named tests to the end (no -x) and list every test that fails")
    args = parser.parse_args(argv)

    names = [m.name for m in MUTANTS]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise SystemExit(f"duplicate mutant names: {sorted(dupes)}")
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:40s} {m.file:28s} {' '.join(m.tests)}")
        return 0
    unknown = [n for n in args.only if n not in names]
    if unknown:
        raise SystemExit(f"unknown mutant(s) {unknown}; see --list")
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]

    tmp = Path(tempfile.mkdtemp(prefix="mutants-"))
    results: dict[str, str] = {}
    try:
        base = tmp / "base"
        prepare_base(base)
        if not args.no_baseline:
            tests = tuple(sorted({t for m in chosen for t in m.tests}))
            rc, out = pytest(base, tests, args.timeout)
            if rc != 0:
                print(f"baseline: the unmutated tests fail (rc {rc}); mutants would be killed for nothing\n{tail(out)}")
                return 1
            print(f"baseline: {' '.join(tests)} pass unmutated")
        for m in chosen:
            start = time.perf_counter()
            root = tmp / m.name
            shutil.copytree(base, root, symlinks=True)
            why = apply(m, root)
            if why:
                status, out = "STALE", why
            else:
                rc, out = pytest(root, m.tests, args.timeout, stop_first=not args.all_tests)
                status = {0: "SURVIVED", 1: "KILLED", 2: "KILLED"}.get(rc, "ERROR")
            results[m.name] = status
            by = ", ".join(failed_tests(out)) if status == "KILLED" else ""
            print(f"{status:9s} {m.name:40s} {time.perf_counter() - start:6.1f} s  {by}".rstrip(), flush=True)
            if status != "KILLED" or args.verbose:
                print(tail(out) if status != "STALE" else f"    {out}")
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"copies kept under {tmp}")
    counts = {s: sum(1 for v in results.values() if v == s) for s in ("KILLED", "SURVIVED", "STALE", "ERROR")}
    print("summary: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items()) + f" of {len(results)} mutants")
    return 0 if counts["KILLED"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
