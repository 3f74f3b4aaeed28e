"""scripts/bench_efficiency.py on the tiny shape: files written, cache bytes hand-counted,
ratios taken to the full cache, duplicates seen by the distinct count, bad flags refused."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_efficiency")


def test_alfred_like_prompt_layout(bench):
    ids = bench.alfred_like_ids("tiny", images=3, text_tokens=40, batch=2)
    # preamble 8 + 3 x (caption 8 + 16 image tokens) + question 8
    assert ids.shape == (2, 8 + 3 * 24 + 8)
    visual = ids[0] == 1023
    assert int(visual.sum()) == 48
    assert visual[8:16].sum() == 0 and bool(visual[16:32].all())  # caption, then the image
    assert torch.equal(ids[0], ids[1])


def test_distinct_counts_a_stored_twice_row_once(bench):
    keys = torch.arange(2 * 4 * 3, dtype=torch.float32).view(1, 2, 4, 3)
    keys[0, 0, 3] = keys[0, 0, 1]  # head 0 stores one entry twice
    cache = SimpleNamespace(layers=[SimpleNamespace(keys=keys)])
    assert bench.distinct_fraction(cache, length=8) == pytest.approx((3 + 4) / 2 / 8)


def test_table_files_and_hand_counted_bytes(bench, tmp_path, capsys):
    rows = bench.main(["--shape", "tiny", "--device", "cpu", "--method", "csp", "--images", "3",
                       "--text-tokens", "40", "--warmup", "1", "--steps", "2", "--out", str(tmp_path)])
    length = 88
    full = rows[0]
    assert [r.budget for r in rows] == [1.0, 0.6, 0.3, 0.2, 0.1] and full.method == "full"
    # K and V x 2 layers x 4 heads x L x head dim 16 x 4 bytes
    assert full.kv_bytes == 2 * 2 * 4 * length * 16 * 4 and full.prompt_length == length
    for r in rows:
        assert r.kv_ratio == pytest.approx(r.kept_fraction)  # one sample: bytes follow stored entries
        # the budget's target, less what CSP's int(k * ratio) + int(k * (1 - ratio)) rounds away
        assert r.target_fraction - 1 / length - 1e-9 <= r.kept_fraction <= r.target_fraction + 1e-9
        assert r.distinct_fraction <= r.kept_fraction + 1e-9
        assert r.ms_per_token > 0 and r.cuda_peak_decode_bytes is None
    assert rows[-1].kv_bytes == 2 * 2 * 4 * 8 * 16 * 4  # 10%: int(0.05 L) + int(0.05 L) = 8 entries
    assert [r.kv_ratio for r in rows] == sorted((r.kv_ratio for r in rows), reverse=True)
    stem = tmp_path / "efficiency_csp_cpu"
    record = json.loads(stem.with_suffix(".json").read_text())
    assert [r["kv_bytes"] for r in record["rows"]] == [r.kv_bytes for r in rows]
    assert record["paper"]["memory_ratio"]["0.1"] == 0.132
    md = stem.with_suffix(".md").read_text()
    assert "| csp | 10% | 88 |" in md and "0.626" in md and md in capsys.readouterr().out
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_batch_doubles_the_cache(bench, tmp_path):
    args = ["--shape", "tiny", "--device", "cpu", "--budgets", "1,0.2", "--images", "1", "--text-tokens", "20",
            "--warmup", "0", "--steps", "1", "--no-distinct", "--out", str(tmp_path)]
    one = bench.main(args)
    two = bench.main(args + ["--batch", "2"])
    assert [r.kv_bytes * 2 for r in one] == [r.kv_bytes for r in two]


@pytest.mark.parametrize("flags", [["--budgets", "0.5,0.2"], ["--budgets", "1,1.5"], ["--layers", "0"],
                                   ["--method", "nosuch"]])
def test_bad_flags_are_refused_before_any_model(bench, flags, monkeypatch):
    monkeypatch.setattr(bench, "build_model", lambda *a: pytest.fail("model built despite a bad flag"))
    with pytest.raises(SystemExit):
        bench.main(["--shape", "tiny", "--device", "cpu", *flags])
