"""White-box comparators on a testbed model: what a method that sees features and gradients reaches.

The search is black box (it sees accuracies only). Its ceilings from the other
side are two classifiers trained on the same few-shot images the scorer serves
(`shots`: scorer_service.datasets.few_shot's draw, so the images are identical):

- `linear_probe_accuracy`: multinomial logistic regression on the image
  embeddings (CLIP's linear-probe protocol), its L2 strength picked by 4-fold
  cross-validation on the shots from PROBE_L2;
- `coop_accuracy`: CoOp (Zhou et al., 2022): COOP_CONTEXT learned context
  vectors in front of each class name's tokens, initialised from the embeddings
  of "a photo of a", trained through the frozen text tower with cross-entropy
  over the model's own logit scale (Adam, COOP_LR, COOP_STEPS full-batch steps).

Both report percent accuracy on the full 10,000-image test split. Test features
are computed once per model directory and process (about 10 s on 2 cores).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional

from scorer_service.datasets import LabeledImage
from scorer_service.factory import load_clip
from scorer_service.model import ClipEncoder
from testbed.fashion_mnist import CLASS_FOLDERS, DEBIAN_DIR
from testbed.train import CLASS_NAMES, full_test_features

PROBE_L2 = (1e-4, 1e-3, 1e-2, 1e-1)  # weight of the mean squared weight, per sample
PROBE_FOLDS = 4
PROBE_STEPS = 200  # L-BFGS iterations
COOP_CONTEXT_INIT = "a photo of a"
COOP_CONTEXT = 4  # learned vectors: as many as the init phrase has tokens
COOP_STEPS = 300
COOP_LR = 2e-3
COOP_SEED = 0
IMAGE_BATCH = 1000


@lru_cache(maxsize=4)
def encoder(model_dir: Path) -> ClipEncoder:
    """The model as the scorer loads it (same preprocessing, float32 on CPU)."""
    return load_clip(str(model_dir), device="cpu", dtype="float32", cpu_matmul="torch")


@lru_cache(maxsize=4)
def features_of_test_split(model_dir: Path, source: Path = DEBIAN_DIR) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and labels of the full 10,000-image test split."""
    return full_test_features(encoder(model_dir), source)


def image_features(model_dir: Path, images: Sequence[Image.Image]) -> torch.Tensor:
    """L2-normalised embeddings of images (RGB or gray), in batches."""
    rgb = [image.convert("RGB") for image in images]
    return torch.cat(
        [encoder(model_dir).encode_images(rgb[s : s + IMAGE_BATCH]) for s in range(0, len(rgb), IMAGE_BATCH)]
    ).float()


def fmnist_label(image: LabeledImage) -> int:
    """The Fashion-MNIST label of a served image, from its class folder.

    The scorer numbers classes in its folders' sorted order ("T-shirt_top", "ankle_boot", ...), the test
    features here in Fashion-MNIST's label order: the folder name maps one to the other."""
    return CLASS_FOLDERS.index(Path(image.path).parent.name)


def shot_features(model_dir: Path, shots: Sequence[LabeledImage]) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and Fashion-MNIST labels of the few-shot images, read from the files the scorer reads."""
    images = []
    for shot in shots:
        with Image.open(shot.path) as image:
            images.append(image.convert("RGB"))
    return image_features(model_dir, images), torch.tensor([fmnist_label(shot) for shot in shots])


def fit_probe(features: torch.Tensor, labels: torch.Tensor, classes: int, l2: float) -> torch.nn.Linear:
    """Multinomial logistic regression, full batch, L-BFGS; deterministic."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(features.shape[1], classes)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=PROBE_STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = functional.cross_entropy(probe(features), labels) + l2 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe


def probe_l2(features: torch.Tensor, labels: torch.Tensor, classes: int) -> float:
    """The L2 strength of PROBE_L2 with the best k-fold accuracy (the smallest of ties)."""
    fold = torch.arange(len(labels)) % PROBE_FOLDS
    fold = fold[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]

    def cv_accuracy(l2: float) -> float:
        right = 0
        for k in range(PROBE_FOLDS):
            held = fold == k
            probe = fit_probe(features[~held], labels[~held], classes, l2)
            right += int((probe(features[held]).argmax(1) == labels[held]).sum())
        return right / len(labels)

    scores = [cv_accuracy(l2) for l2 in PROBE_L2]
    return PROBE_L2[int(np.argmax(scores))]


@torch.no_grad()
def _percent_right(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(1) == labels).float().mean())


def probe_test_accuracy(model_dir: Path, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent test accuracy of a linear probe fitted on (features, labels) with a cross-validated L2."""
    classes = int(labels.max()) + 1
    probe = fit_probe(features, labels, classes, probe_l2(features, labels, classes))
    test, target = features_of_test_split(model_dir)
    return _percent_right(probe(test), target)


def linear_probe_accuracy(model_dir: Path, shots: Sequence[LabeledImage]) -> float:
    """Percent test accuracy of a linear probe trained on the shots' image embeddings."""
    return probe_test_accuracy(Path(model_dir), *shot_features(Path(model_dir), shots))


def _text_features(model: Any, embeddings: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """The text tower on token embeddings (not ids): CLIP's causal pre-LN transformer, pooled at end-of-text.

    `model` is a transformers CLIPModel, typed Any: its submodules are typed `Tensor | Module` in torch's stubs."""
    text = model.text_model
    hidden = embeddings + text.embeddings.position_embedding.weight[: embeddings.shape[1]]
    batch, length, width = hidden.shape
    for layer in text.encoder.layers:
        attn = layer.self_attn
        normed = layer.layer_norm1(hidden)
        q, k, v = (
            proj(normed).view(batch, length, attn.num_heads, -1).transpose(1, 2)
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj)
        )
        out = functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scale)
        hidden = hidden + attn.out_proj(out.transpose(1, 2).reshape(batch, length, width))
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
    pooled = text.final_layer_norm(hidden[torch.arange(len(eot)), eot])
    return functional.normalize(model.text_projection(pooled), dim=-1)


def coop_accuracy(model_dir: Path, shots: Sequence[LabeledImage], class_names: Sequence[str]) -> float:
    """Percent test accuracy of CoOp's learned context (unified, class-agnostic) trained on the shots.

    `class_names` are the scorer's (any order); prompt j names class_names[j]."""
    model_dir = Path(model_dir)
    clip = encoder(model_dir)
    model: Any = clip.model  # a CLIPModel; see _text_features
    order = torch.tensor([CLASS_NAMES.index(name) for name in class_names])  # prompt j -> Fashion-MNIST label
    features, fmnist = shot_features(model_dir, shots)
    labels = torch.argsort(order)[fmnist]
    ids = clip.tokenizer.ids([f"{COOP_CONTEXT_INIT} {name}." for name in class_names])
    width = max(len(row) for row in ids)
    pad = clip.tokenizer.pad_token_id
    tokens = torch.tensor([row + [pad] * (width - len(row)) for row in ids])
    eot = torch.tensor([len(row) - 1 for row in ids])
    table = model.text_model.embeddings.token_embedding
    with torch.no_grad():
        fixed = table(tokens)
    torch.manual_seed(COOP_SEED)
    context = torch.nn.Parameter(fixed[0, 1 : 1 + COOP_CONTEXT].clone())  # after the start token
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    optimizer = torch.optim.Adam([context], lr=COOP_LR)
    scale = float(model.logit_scale.exp())

    def class_embeddings() -> torch.Tensor:
        learned = context.unsqueeze(0).expand(len(ids), -1, -1)
        embedded = torch.cat([fixed[:, :1], learned, fixed[:, 1 + COOP_CONTEXT :]], dim=1)
        return _text_features(model, embedded, eot)

    for _ in range(COOP_STEPS):
        loss = functional.cross_entropy(scale * features @ class_embeddings().T, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test, target = features_of_test_split(model_dir)
    with torch.no_grad():
        return 100.0 * float((order[(test @ class_embeddings().T).argmax(1)] == target).float().mean())
