"""The text encoder contract, shared by the transformer encoders (:mod:`.text`) and the CLIP
text tower (:mod:`.clip`): texts in, L2-normalised float32 vectors out, batched by length."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.features.encoders import inference

if TYPE_CHECKING:
    import torch


class TextEncoder:
    """Texts -> L2-normalised float32 vectors of size ``dim``.

    Subclasses implement :meth:`embed_batch` (unnormalised vectors of one batch); ``encode``
    does the batching, the ordering and the normalisation.
    """

    name: str  # what it is, e.g. "minilm"
    source: str  # where the weights came from (directory, Hub name, CLIP checkpoint)
    id: str  # changes whenever the vectors could change
    dim: int
    device: str

    def batches(self, texts: Sequence[str], batch_size: int) -> list[np.ndarray]:
        """Row indices of each batch: longest texts first, so a batch holds similar lengths."""
        order = np.argsort([-len(t) for t in texts], kind="stable")
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, progress: Any = None
    ) -> np.ndarray:
        """Vectors of ``texts`` in input order, shape ``(len(texts), dim)``, float32.

        ``progress`` is anything with ``update(n)`` (a tqdm bar), advanced by each batch.
        """
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with inference(self.device):
            for idx in self.batches(texts, batch_size):
                emb = self.embed_batch([texts[i] for i in idx]).float()
                out[idx] = torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()
                if progress is not None:
                    progress.update(len(idx))
        return out

    def embed_batch(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "id": self.id, "dim": self.dim}
