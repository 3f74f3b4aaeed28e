"""The model a `configs/model/*.yaml` entry names: its checks, and the adapter it builds.

An entry names a real checkpoint (`path`: a local folder or a hub id) or one of the stand-ins
built on demand under models/ (`tiny: <family>`, random weights; `trained: proxy`, the proxy
LLaVA; `trained: standin`, the LLaVA stand-in trained on the learnable MileBench). It lives
with the runner because a trained stand-in (standins/) is trained on MileBench-format data
through MileBench's prompts: the models package (csp/models) knows neither, so nothing in csp
imports milebench.
"""
from __future__ import annotations

from collections.abc import Mapping

from csp.models.adapters import (
    ModelAdapter,
    check_encoding,
    check_load_args,
    check_path,
    check_template_name,
    load_adapter,
)
from standins.llava_standin import ensure_standin_model
from standins.proxy_llava import ensure_proxy_model
from csp.models.tiny import FAMILIES as TINY_FAMILIES
from csp.models.tiny import ensure_tiny_model

TRAINED = {"proxy": "standins/proxy_llava.py", "standin": "standins/llava_standin.py"}


def check_model_config(
    cfg_model: Mapping,
    dtype: str = "float32",
    device: str = "cpu",
    attn_implementation: str = "sdpa",
) -> None:
    """Every check on a ``configs/model/*.yaml`` entry that needs no model and no download."""
    name = cfg_model.get("name", "<unnamed>")
    family = cfg_model.get("family")
    if not family:
        raise ValueError(f"model config {name!r}: field 'family' is missing")
    try:
        check_load_args(str(family), dtype, device, attn_implementation)
        template = cfg_model.get("chat_template")
        if template is not None:
            check_template_name(str(template))
        encoding = cfg_model.get("encoding")
        if encoding is not None:
            check_encoding(str(family), str(encoding))
        tiny = cfg_model.get("tiny")
        trained = cfg_model.get("trained")
        if trained is not None and (trained not in TRAINED or family != "llava"):
            raise ValueError(f"field 'trained' is {trained!r}; known (family llava): "
                             f"{', '.join(f'{k} ({v})' for k, v in TRAINED.items())}")
        if tiny:
            if tiny not in TINY_FAMILIES or tiny != family:
                raise ValueError(f"field 'tiny' is {tiny!r}; expected the family name, one of {TINY_FAMILIES}")
        elif not trained:
            path = cfg_model.get("path")
            if not path:
                raise ValueError("field 'path' is empty and no 'tiny' family is given")
            check_path(str(path))
        if cfg_model.get("vision_tower"):
            check_path(str(cfg_model["vision_tower"]))
    except (ValueError, FileNotFoundError) as err:
        raise type(err)(f"model config {name!r}: {err}") from None


def adapter_from_config(
    cfg_model: Mapping,
    dtype: str = "float32",
    device: str = "cpu",
    attn_implementation: str = "sdpa",
) -> ModelAdapter:
    """Build the adapter a ``configs/model/*.yaml`` entry describes.

    ``tiny: <family>`` (with ``path: null``) means the tiny checkpoint built on demand under
    models/, ``trained: proxy|standin`` a LLaVA trained on demand (standins/); otherwise
    ``path`` is a local folder or a hub id.
    """
    check_model_config(cfg_model, dtype, device, attn_implementation)
    name = cfg_model.get("name", "<unnamed>")
    path = cfg_model.get("path")
    tiny = cfg_model.get("tiny")
    if tiny:
        path = ensure_tiny_model(str(tiny), seed=int(cfg_model.get("seed", 0) or 0))
    elif cfg_model.get("trained") == "proxy":
        path = ensure_proxy_model(seed=int(cfg_model.get("seed", 0) or 0))
    elif cfg_model.get("trained") == "standin":
        path = ensure_standin_model(seed=int(cfg_model.get("seed", 0) or 0))
    adapter = load_adapter(
        str(cfg_model["family"]),
        str(path),
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        chat_template=cfg_model.get("chat_template"),
        encoding=cfg_model.get("encoding"),
        vision_tower=cfg_model.get("vision_tower"),
    )
    expected = cfg_model.get("tokens_per_image")
    if expected is not None and int(expected) != adapter.tokens_per_image:
        raise ValueError(
            f"model config {name!r}: tokens_per_image is {expected} but the checkpoint at {path} expands "
            f"each image into {adapter.tokens_per_image} tokens"
        )
    return adapter
