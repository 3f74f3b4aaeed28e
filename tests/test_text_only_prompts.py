"""Prompts without any image: SnapKV prunes them, the other reference methods keep them whole.

The reference's SnapKV path has no image check, while its CSP, H2O, ReCo and LOOK-M paths skip
a prompt that has no image; the methods are built from their yaml, as a run builds them.
"""
from __future__ import annotations

import pytest
import torch

from baselines.snapkv import SnapKV
from csp.engine.method import LayerKV
from csp.engine.registry import build_method

LENGTH, HEADS, DIM = 50, 2, 4


def text_only_kv() -> LayerKV:
    g = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(HEADS, LENGTH, DIM, generator=g), torch.randn(HEADS, LENGTH, DIM, generator=g)
    return LayerKV(layer_idx=0, keys=keys, values=keys.clone(), visual=torch.zeros(LENGTH, dtype=torch.bool),
                   scaling=DIM ** -0.5, query_fn=lambda last: queries if last is None else queries[:, LENGTH - last:])


def test_snapkv_prunes_a_text_only_prompt():
    # budget 0.2 of L = 50: hh = 5 by vote plus the last R = 5
    for method in (build_method("snapkv"), SnapKV()):  # as a run builds it, and the class default
        sel = method(text_only_kv())
        assert sel.index.shape == (HEADS, 10)
        assert sel.index[:, -5:].tolist() == [list(range(45, 50))] * HEADS


@pytest.mark.parametrize("name", ["csp", "h2o", "reco", "lookm-a", "lookm-tp-p"])
def test_the_other_methods_keep_a_text_only_prompt_whole(name):
    sel = build_method(name)(text_only_kv())
    assert sel.index.tolist() == [list(range(LENGTH))] * HEADS
