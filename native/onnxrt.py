"""The backbone run by ONNX Runtime: the same weights, exported once from torch.

``encoder.runtime = "onnx"`` (docs/ingest.md, "Encoder runtime"). The torch model is loaded as
for the torch runtime (its weights hash pins the space), wrapped with the mean pooling and
exported with torch's dynamo exporter (``torch.onnx.export(dynamo=True)``; the legacy
TorchScript tracer produced wrong vectors here, cos 0.91) into a cache folder, once per
weights; later starts load the file. Before use, the graph's vectors are compared with
torch's on a few fixed texts (:data:`PROBE_TEXTS`); a file that disagrees is exported again,
and an export that still disagrees is an :class:`EncoderError`. CPU and fp32 only.

ONNX Runtime fixes a session's thread count when it is built, so there is one session per
thread count asked for (the node encodes queries and background checks with different
counts), each built on first use. Sessions do not spin-wait between calls
(``session.intra_op.allow_spinning = 0``): on a shared 2-core machine a spinning thread takes
the core another encode or the store needs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from filelock import FileLock

from .encoder import MAX_TOKENS, Backbone, EncoderError

if TYPE_CHECKING:
    import onnxruntime
    import torch

log = logging.getLogger("zoonode.encoder")

# Bump when the exported graph changes (inputs, outputs, pooling): older files are ignored.
EXPORT_VERSION = 1
EXPORT_WAIT_S = 600  # how long a start waits for another process's export of the same file
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Max |onnx - torch| over the unit-normalised pooled vectors of PROBE_TEXTS for the file to
# be used; measured 1e-7-order on 1,777 real texts (benchmarks/encoder_runtime.py).
PROBE_TOLERANCE = 1e-5
PROBE_TEXTS = (
    "When a test fails only on CI, compare the locale and the timezone first.",
    "ok",
    "A man is eating food.",
    # longer than MAX_TOKENS: truncation must agree too
    " ".join(["Always pin the exact version of a dependency that writes files to disk."] * 30),
)


def onnx_file(cache_dir: str | Path, weights_sha256: str) -> Path:
    """Where the graph of the backbone with these weights is cached."""
    return Path(cache_dir).expanduser() / f"backbone-{weights_sha256[:16]}-v{EXPORT_VERSION}.onnx"


def export_onnx(backbone: Backbone, path: str | Path) -> Path:
    """Export ``backbone`` (its transformer and the mean pooling: token ids, attention mask
    and, where its tokenizer makes them, token types (n, t) int64 -> pooled (n, hidden)
    float32, not normalised) to ``path``
    with the dynamo exporter; written to a temporary file and renamed, so a reader never
    sees half a file. Takes ~10-30 s of CPU. Raises :class:`EncoderError` when the exporter
    (torch >= 2.5 and onnxscript) is missing or fails."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _pooled(backbone.model).eval()
    example = backbone.tokenizer(list(PROBE_TEXTS[:2]), padding=True, return_tensors="pt")
    names = [name for name in INPUTS if name in example]
    if set(example) - set(names) or names[:2] != list(INPUTS[:2]):
        raise EncoderError(
            f"cannot export backbone {backbone.name} to ONNX: its tokenizer gives "
            f"{sorted(example)}, not {list(INPUTS)} (use encoder.runtime = 'torch')"
        )
    batch = torch.export.Dim("batch", min=1, max=65_536)
    seq = torch.export.Dim("seq", min=1, max=MAX_TOKENS)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.onnx", dir=path.parent)
    os.close(fd)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    try:
        # The exporter prints its progress and warns about optional ops (torchvision's);
        # keep the node's log clean.
        with (
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
            torch.inference_mode(False),
        ):
            warnings.simplefilter("ignore")
            exporter_log.setLevel(logging.ERROR)
            program = torch.onnx.export(
                wrapper,
                tuple(example[name] for name in names),
                dynamo=True,
                input_names=names,
                output_names=["pooled"],
                dynamic_shapes=tuple({0: batch, 1: seq} for _ in names),
                verbose=False,
            )
            program.save(tmp, external_data=False)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep the shared cache from other users
        os.replace(tmp, path)
    except Exception as exc:  # the exporter raises many types (import, torch.export, onnx)
        raise EncoderError(
            f"cannot export backbone {backbone.name} to ONNX "
            f"(needs torch >= 2.5 and onnxscript): {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        exporter_log.setLevel(level)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def _pooled(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` followed by mean pooling over the attention mask, as Backbone.embed does."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            tokens = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, **extra
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            return (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    return Pooled(model)


class OnnxBackbone(Backbone):
    """:class:`Backbone` whose :meth:`embed` runs the exported graph in ONNX Runtime.

    Same tokenizer, same weights (``weights_sha256`` is the torch model's, so the space is
    the same), vectors equal to torch's within :data:`PROBE_TOLERANCE`. ``cache_dir``: where
    the exported file lives (:func:`onnx_file`); a cached file that cannot be loaded or
    disagrees is exported again. Raises :class:`EncoderError` when onnxruntime is not
    installed, the export fails, or a fresh export disagrees."""

    runtime = "onnx"
    # Batches of long texts cost ONNX Runtime more per text than small ones: on 256 real
    # docstring paragraphs (p50 27 tokens, p90 79), one thread, 2 busy cores, it encoded
    # 8.3 texts/s in batches of 32, 11.6 of 16, 17.3 of 8, 22.8 of 4 (torch: 7.0-9.0 in 32s,
    # 9.6-9.9 in 8s). Its graph materialises every head's batch x length^2 attention scores;
    # a batch of long texts leaves the cache. So a batch holds at most this many characters
    # (batch x its longest text): ~3 texts of 600 characters, 32 of 60.
    batch_chars = 2048

    def __init__(self, name: str, *, cache_dir: str | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise EncoderError(
                "encoder.runtime = 'onnx' needs onnxruntime and onnxscript (zoonode's "
                "dependencies): pip install 'onnxruntime>=1.20' 'onnxscript>=0.5', or set "
                "encoder.runtime = 'torch'"
            ) from exc
        super().__init__(name, device="cpu", precision="fp32", threads=threads)
        self._ort = onnxruntime
        self.threads = threads or 0  # 0: ONNX Runtime's default (one per physical core)
        self._sessions: dict[int, onnxruntime.InferenceSession] = {}
        self._sessions_lock = threading.Lock()
        self._inputs: list[str] = []  # the graph's input names (token types only for BERT)
        self.path = onnx_file(cache_dir, self.weights_sha256)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Processes starting at once on an empty cache: one exports, the others wait for it.
        with FileLock(f"{self.path}.lock", timeout=EXPORT_WAIT_S):
            fresh = not self.path.exists()
            if fresh:
                log.info("exporting %s to ONNX once (~10-30 s): %s", name, self.path)
                export_onnx(self, self.path)
                diff = self._probe()
            else:
                try:
                    diff = self._probe()
                except Exception as exc:  # a torn or foreign file: onnxruntime raises its own types
                    log.warning("cannot use cached ONNX graph %s (%s)", self.path, exc)
                    diff = float("inf")
                if diff > PROBE_TOLERANCE:
                    log.warning(
                        "cached ONNX graph %s disagrees with torch (%.2g): exporting again",
                        self.path,
                        diff,
                    )
                    self._sessions.clear()
                    export_onnx(self, self.path)
                    diff = self._probe()
        if diff > PROBE_TOLERANCE:
            raise EncoderError(
                f"ONNX graph {self.path} disagrees with torch by {diff:.2g} "
                f"(more than {PROBE_TOLERANCE:g}); use encoder.runtime = 'torch'"
            )
        self.probe_diff = diff
        # The torch model did its part (weights hash, export, probe); its ~90 MB go.
        self.model = None
        log.info("encoder runtime onnx: %s (max |diff| to torch %.1g)", self.path, diff)

    def session(self, threads: int | None = None) -> onnxruntime.InferenceSession:
        """The session with ``threads`` intra-op threads (default the backbone's), built on
        first use (~0.5 s) and kept."""
        count = self.threads if threads is None else threads
        with self._sessions_lock:
            found = self._sessions.get(count)
            if found is None:
                ort = self._ort
                options = ort.SessionOptions()
                options.intra_op_num_threads = count
                options.inter_op_num_threads = 1
                options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                found = ort.InferenceSession(
                    str(self.path), options, providers=["CPUExecutionProvider"]
                )
                self._inputs = [i.name for i in found.get_inputs()]
                self._sessions[count] = found
        return found

    def embed(self, texts: list[str], threads: int | None = None) -> np.ndarray:
        """Mean-pooled token embeddings (n, hidden) float32, not normalised: as
        :meth:`Backbone.embed`, computed by ONNX Runtime with ``threads`` threads."""
        with self._tokenizer_lock:
            batch = self.tokenizer(
                texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="np"
            )
        session = self.session(threads)
        feed = {name: np.asarray(batch[name], dtype=np.int64) for name in self._inputs}
        (pooled,) = session.run(None, feed)
        return np.asarray(pooled, dtype=np.float32)

    def _probe(self) -> float:
        """Max |onnx - torch| over the unit-normalised pooled vectors of PROBE_TEXTS."""
        texts = list(PROBE_TEXTS)
        ours = self.embed(texts)
        theirs = Backbone.embed(self, texts)
        ours /= np.linalg.norm(ours, axis=1, keepdims=True)
        theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
        return float(np.abs(ours - theirs).max())
