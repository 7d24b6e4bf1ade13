"""The config reference (docs/config.md), generated from the config dataclasses.

Each key's meaning is the comment written beside its field in :mod:`margo_dist.config`
(the lines just above it and the one after it), so the reference and the code cannot
say different things; ``margo-dist config --keys`` prints it and a test compares it
with docs/config.md.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from typing import Any

import yaml

from margo_dist.config import Config
from margo_dist.variants import VARIANTS

# where each section acts; keys that act in one stage only are listed in STAGE_2
SECTION_STAGE = {
    "data": "reading the dataset (every stage)",
    "graph": "building the graph artefacts (before stage 1; cached)",
    "model": "both stages",
    "train": "both stages",
    "sampler": "both stages, with train.mode=sampled",
    "run": "the run folder",
    "dist": "launching workers (dist.workers > 0)",
}
STAGE_2 = {"model.alpha", "model.tau", "model.theta_init_std", "model.fusion_scale", "train.weight_lr",
           "train.eval_stage_start"}
HEADER = """# Config reference

Generated from `margo_dist/config.py` by `margo-dist config --keys`; a test fails when
this file is out of date. Set a key in a YAML file (`--config FILE`, nested by section)
or on the command line as `section.key=value` (the value is read as YAML:
`train.topk=[10,20]`, `sampler.fanouts={ui: [10, 10]}`). `margo-dist config [--config
FILE] [key=value ...]` prints the resolved tree without running anything. An unknown
key, a wrong type, NaN or infinity is an error naming the key and where it came from.

Stages: stage 1 (`pretrain`) trains the encoders with summed modality ratings; stage 2
(`calibrate`) learns the per-item modality weights θ with `L_cal` (docs/equations.md).
"""


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    """One row of the reference."""

    key: str
    type: str
    default: str
    meaning: str
    stage: str


def _comments(cls: type) -> dict[str, str]:
    """Field name -> the comment lines above its definition and the comment at its end."""
    lines, _ = inspect.getsourcelines(cls)
    body = ast.parse("".join(lines)).body[0].body  # type: ignore[attr-defined]  # a top-level class
    out: dict[str, str] = {}
    for node in body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        first, last = node.lineno - 1, node.end_lineno - 1  # type: ignore[operator]
        above = []
        k = first - 1
        while k >= 0 and lines[k].strip().startswith("#"):
            above.insert(0, lines[k].strip().lstrip("#").strip())
            k -= 1
        text = lines[last]
        trailing = text.split("  # ", 1)[1].strip() if "  # " in text else ""
        out[node.target.id] = " ".join(p for p in above + [trailing] if p)
    return out


def _type_name(tp: Any) -> str:
    if tp in (int, float, str, bool):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _default(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip() or '""'


def key_docs() -> list[KeyDoc]:
    """Every key of the config tree, in the order of the dataclasses."""
    rows: list[KeyDoc] = []
    root = Config()
    for section in dataclasses.fields(Config):
        obj = getattr(root, section.name)
        hints = typing.get_type_hints(type(obj))
        notes = _comments(type(obj))
        for f in dataclasses.fields(obj):
            key = f"{section.name}.{f.name}"
            meaning = notes.get(f.name, "")
            if key == "model.variant":
                meaning = f"one of {', '.join(VARIANTS)} (docs/equations.md section 9)"
            stage = "stage 2" if key in STAGE_2 else SECTION_STAGE[section.name]
            rows.append(KeyDoc(key, _type_name(hints[f.name]), _default(getattr(obj, f.name)), meaning, stage))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    """docs/config.md: one table per section, with the section's docstring."""
    parts = [HEADER]
    rows = key_docs()
    for section in dataclasses.fields(Config):
        cls = type(getattr(Config(), section.name))
        doc = inspect.getdoc(cls) or ""
        parts.append(f"\n## {section.name}\n\n{doc}\n\nActs in: {SECTION_STAGE[section.name]}.\n")
        parts.append("| key | type | default | meaning | stage |\n|---|---|---|---|---|")
        for r in rows:
            if r.key.startswith(f"{section.name}."):
                stage = r.stage if r.stage != SECTION_STAGE[section.name] else ""
                parts.append(f"| `{r.key}` | {_cell(r.type)} | `{_cell(r.default)}` | {_cell(r.meaning)} | {stage} |")
    return "\n".join(parts) + "\n"


def missing_meanings() -> list[str]:
    """Keys with no comment in config.py (the reference would show an empty meaning)."""
    return [r.key for r in key_docs() if not r.meaning]

