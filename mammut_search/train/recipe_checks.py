"""What a training recipe may say: every setting's type and range, the model's keys, the device. A recipe is
checked as a whole before any work starts, and every problem is named in one line."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Callable

import torch

from mammut_search.errors import UserError
from mammut_search.inference import missing_gpu
from mammut_search.model.config import IMAGE_ENCODER_KINDS, ImageEncoderConfig, MammutConfig

# model settings that come from the tokenizer or the run, never from a recipe
MODEL_SET_BY_TRAINING = {"vocab_size", "pad_id", "bos_id", "eos_id", "training"}

Rule = tuple[Callable[[Any], bool], str]
AT_LEAST_1: Rule = (lambda v: v >= 1, "at least 1")
AT_LEAST_0: Rule = (lambda v: v >= 0, "0 or more")
POSITIVE: Rule = (lambda v: v > 0, "above 0")
SHARE: Rule = (lambda v: 0 <= v <= 1, "between 0 and 1")
SHARE_ABOVE_0: Rule = (lambda v: 0 < v <= 1, "above 0 and at most 1")


def one_of(*choices: str) -> Rule:
    return (lambda v: v in choices), "one of " + ", ".join(map(repr, choices))


# numeric settings default to "0 or more"; these are stricter, or are choices
TRAINING_RULES: dict[str, Rule] = {
    **{name: AT_LEAST_1 for name in ("steps", "batch_size", "accum_steps", "images_per_concept", "log_every",
                                     "eval_every", "save_every")},
    "lr": POSITIVE, "token_keep": SHARE_ABOVE_0, "word_max_share": SHARE_ABOVE_0,
    "stream": one_of("auto", "memory", "disk"), "precision": one_of("auto", "bf16", "fp32"),
    "caption_target": one_of("name", "caption"),
}
MODEL_RULES: dict[str, Rule] = {
    **{name: AT_LEAST_1 for name in ("dim", "depth", "heads", "dim_head", "ff_mult", "num_img_queries",
                                     "dim_latents", "semantic_top_k")},
    "max_text_len": ((lambda v: v >= 4), "at least 4 (a start, an end and two words)"),
}
IMAGE_RULES: dict[str, Rule] = {
    "kind": one_of(*IMAGE_ENCODER_KINDS),
    "image_size": ((lambda v: v >= 32), "at least 32 pixels"),
    # at most the kind's block count: ImageEncoderConfig checks that
    **{name: AT_LEAST_1 for name in ("patch_size", "vit_dim", "vit_depth", "vit_heads")},
    "std": ((lambda v: all(x > 0 for x in v)), "a list of 3 numbers above 0 (pixels are divided by them)"),
    "background": ((lambda v: all(0 <= x <= 255 for x in v)), "a list of 3 numbers from 0 to 255"),
}


def check_recipe(data: dict[str, Any], types: dict[str, Any]) -> dict[str, Any]:
    """The recipe `data` (setting -> value; `types` the TrainConfig field types) with integers given for float
    settings made floats; raises UserError naming every bad setting, in one line."""
    data = dict(data)
    problems = check_table(data, types, TRAINING_RULES, "")
    model = data.get("model")
    if isinstance(model, dict):
        model, model_problems = check_model(model)
        data["model"] = model
        problems += model_problems
    problems += device_problems(data.get("device"))
    if not problems:
        problems += cross_problems(data)
    if problems:
        raise UserError("recipe: " + "; ".join(problems))
    return data


def check_table(data: dict[str, Any], types: dict[str, Any], rules: dict[str, Rule], prefix: str) -> list[str]:
    """Unknown keys, wrong types and values out of range in one table (fixed in place: ints for floats)."""
    unknown = sorted(set(data) - set(types))
    problems = [f"unknown setting(s) {', '.join(prefix + k for k in unknown)} (known: {', '.join(sorted(types))})"
                ] if unknown else []
    for name, value in data.items():
        if name not in types:
            continue
        value, wrong = of_type(value, types[name])
        if wrong:
            problems.append(f"{prefix}{name} = {value!r}: {wrong}")
            continue
        data[name] = value
        test, says = rules.get(name, AT_LEAST_0 if isinstance(value, (int, float)) and not isinstance(value, bool)
                               else (lambda v: True, ""))
        if not test(value):
            problems.append(f"{prefix}{name} = {value!r}: must be {says}")
    return problems


def of_type(value: Any, hint: Any) -> tuple[Any, str]:
    """(value, "") when `value` fits the type hint (an int for a float becomes a float), else (value, why not)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value, ""
    if hint is bool or hint is int:
        fits = isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
        return value, "" if fits else f"must be {'true or false' if hint is bool else 'a whole number'}"
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value), ""
        return value, "must be a number"
    if hint is str:
        return value, "" if isinstance(value, str) else "must be a quoted string"
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)) or (origin is tuple and len(value) != len(args)):
            return value, f"must be a list{f' of {len(args)}' if origin is tuple else ''}"
        items = [of_type(v, args[0] if origin is list else a) for v, a in zip(value, args if origin is tuple
                                                                               else [args[0]] * len(value))]
        why = next((w for _, w in items if w), "")
        return (value, f"each item {why}") if why else ([v for v, _ in items], "")
    if origin is dict:
        if not isinstance(value, dict):
            return value, "must be a table"
        items = {k: of_type(v, args[1]) for k, v in value.items()}
        why = next((w for _, w in items.values() if w), "")
        return (value, f"each value {why}") if why else ({k: v for k, (v, _) in items.items()}, "")
    if dataclasses.is_dataclass(hint) or hint is dict:
        return value, "" if isinstance(value, dict) else "must be a table"
    return value, ""


def check_model(model: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The `[model]` table and its `[model.image_encoder]`: keys, types, ranges, and what MammutConfig refuses."""
    model = dict(model)
    types = {k: v for k, v in typing.get_type_hints(MammutConfig).items() if k not in MODEL_SET_BY_TRAINING}
    problems = check_table(model, types, MODEL_RULES, "model.")
    image = model.get("image_encoder")
    if isinstance(image, dict):
        image = dict(image)
        problems += check_table(image, typing.get_type_hints(ImageEncoderConfig), IMAGE_RULES, "model.image_encoder.")
        model["image_encoder"] = image
        if not problems and image.get("kind") == "vit":
            encoder = ImageEncoderConfig(**image)
            if encoder.image_size % encoder.patch_size or encoder.vit_dim % encoder.vit_heads:
                problems.append("model.image_encoder: a vit needs image_size a multiple of patch_size and vit_dim "
                                "a multiple of vit_heads")
    if not problems:
        try:
            MammutConfig(vocab_size=1, **model)
        except (TypeError, ValueError) as e:
            problems.append(f"model: {e}")
    return model, problems


def device_problems(device: Any) -> list[str]:
    """A device this machine has: "auto", "cpu", or "cuda[:N]" with that GPU present."""
    if not isinstance(device, str):
        return [] if device is None else [f"device = {device!r}: must be a quoted string"]
    kind, _, index = device.partition(":")
    if device in ("auto", "cpu"):
        return []
    if kind != "cuda" or (index and not index.isdigit()):
        return [f"device = {device!r}: must be 'auto', 'cpu' or 'cuda' (or 'cuda:N')"]
    missing = missing_gpu(torch.device(device))
    return [f"device = {device!r}: {missing}; use 'auto' or 'cpu'"] if missing else []


def cross_problems(data: dict[str, Any]) -> list[str]:
    """Settings that are only wrong together."""
    problems = []
    if not data.get("train_splits", ["train"]):
        problems.append("train_splits = []: name at least one split to train on")
    if data.get("accum_steps", 1) > data.get("batch_size", 1):
        problems.append(f"accum_steps = {data['accum_steps']}: at most batch_size ({data['batch_size']})")
    shares = data.get("style_shares") or {}
    if any(not 0 <= s <= 1 for s in shares.values()) or sum(shares.values()) > 1:
        problems.append(f"style_shares = {shares}: each between 0 and 1, together at most 1")
    return problems
