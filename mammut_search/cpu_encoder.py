"""The image encoder on a CPU, run by ONNX Runtime: exported from the loaded weights, cached on disk by their
identity, checked against PyTorch before first use. PyTorch runs it on a GPU, while it trains, and wherever
the runtime is missing or refuses (one line says why).

    pixels (b 3 H W) ─ONNX Runtime: the backbone─▶ feature map ─PyTorch: the cheap rest─▶ tokens (b j c)

Cache: <XDG_CACHE_HOME or ~/.cache>/mammut-search/onnx/image-encoder-KEY.onnx and KEY.json, KEY a sha256 of
the encoder's weights and config, the input size and the torch and onnxruntime versions. The .json, written
last, holds the graph's sha256: a graph that does not match it is exported again, never run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import sys
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mammut_search.atomic import atomic_write
from mammut_search.user_cache import user_cache_dir

log = logging.getLogger(__name__)

RUNTIME_ENV = "MAMMUT_CPU_RUNTIME"  # "torch" keeps the CPU encoder in PyTorch (comparisons, a misbehaving runtime)
OPSET = 17
EXPORT_VERSION = 1  # what is exported and how; part of the cache key
# Images per thread in one runtime run: the activations of a whole batch outgrow the CPU's caches, and every image
# is computed on its own, so shorter runs give the same output for less time (benchmarks/RESULTS.md).
IMAGES_PER_THREAD = 8
# A fresh export is used only if its output on a probe batch is within this of PyTorch's, relative to the
# largest PyTorch output (measured: ~2e-5 absolute on the bundled model's maps, whose values reach 6).
AGREEMENT = 1e-4
PROBE_BATCH = 2

# network -> its CpuImageEncoder, or None once the runtime refused it (said once, then PyTorch)
_encoders: "weakref.WeakKeyDictionary[nn.Module, CpuImageEncoder | None]" = weakref.WeakKeyDictionary()


class RuntimeRefused(RuntimeError):
    """ONNX Runtime cannot run this encoder here; the message says why."""


def image_features(net: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """pixels (b 3 H W) -> the image encoder's tokens (b j c) of a MaMMUT network: through ONNX Runtime on a
    CPU when the encoder is in eval mode and no gradient is wanted, through PyTorch otherwise."""
    if pixels.device.type == "cpu" and not net.image_encoder.training and not torch.is_grad_enabled():
        encoder = cpu_encoder(net)
        if encoder is not None:
            try:
                return encoder(pixels)
            except RuntimeRefused as e:  # new weights whose export the runtime refuses
                log.warning("the image encoder runs in PyTorch on this CPU from now on: %s", e)
                _encoders[net] = None
    return net.image_features(pixels)


def cpu_encoder(net: nn.Module) -> "CpuImageEncoder | None":
    """The network's encoder under ONNX Runtime (made once per network and encoder module), or None where it
    cannot run there."""
    if net in _encoders and (_encoders[net] is None or _encoders[net].encoder is net.image_encoder):
        return _encoders[net]
    encoder = None
    if os.environ.get(RUNTIME_ENV, "").lower() != "torch":
        try:
            encoder = CpuImageEncoder(net.image_encoder, net.config.image_encoder.image_size,
                                      dataclasses.asdict(net.config.image_encoder))
        except RuntimeRefused as e:
            log.warning("the image encoder runs in PyTorch on this CPU: %s", e)
    _encoders[net] = encoder
    return encoder


class CpuImageEncoder:
    """An image encoder module run by ONNX Runtime with as many threads as PyTorch has (the one setting of
    the process's compute threads: torch.set_num_threads). Weights changed in place since the export (a
    training step, load_state_dict) are noticed and exported again."""

    def __init__(self, encoder: nn.Module, image_size: int, config: dict):
        try:
            import onnxruntime
        except ImportError as e:
            raise RuntimeRefused(f"onnxruntime cannot be imported ({e}); pip install onnxruntime") from None
        self.ort = onnxruntime
        self.encoder, self.image_size, self.config = encoder, image_size, config
        self.head = getattr(encoder, "tokens_from_map", None)  # what runs in PyTorch after the graph
        self._load()

    def _load(self) -> None:
        self._fingerprint = weights_fingerprint(self.encoder)
        self.key = cache_key(self.encoder, self.image_size, self.config, self.ort.__version__)
        self._sessions: dict[int, object] = {}
        self.graph = cached_graph(self.key, self._export_checked)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (b 3 H W), float32 on the CPU -> tokens (b j c), as the PyTorch encoder gives them."""
        if tuple(pixels.shape[-3:]) != (3, self.image_size, self.image_size):
            return self.encoder(pixels)  # the graph is exported for one input size
        if weights_fingerprint(self.encoder) != self._fingerprint:
            self._load()
        inputs = pixels.detach().float().contiguous().numpy()
        session, step = self.session(), IMAGES_PER_THREAD * self.threads
        runs = [session.run(None, {"pixels": inputs[i:i + step]})[0] for i in range(0, max(1, len(inputs)), step)]
        out = torch.from_numpy(np.concatenate(runs))
        return self.head(out) if self.head is not None else out

    @property
    def threads(self) -> int:
        """Compute threads a run uses now: PyTorch's setting."""
        return torch.get_num_threads()

    def session(self):
        """The ONNX Runtime session for the current thread setting (one per setting, made on first use)."""
        threads = self.threads
        if threads not in self._sessions:
            self._sessions[threads] = make_session(self.ort, self.graph, threads)
        return self._sessions[threads]

    def _export_checked(self) -> bytes:
        """Export the encoder and check the runtime's output on a probe batch against PyTorch's."""
        probe = torch.rand(PROBE_BATCH, 3, self.image_size, self.image_size,
                           generator=torch.Generator().manual_seed(0)) * 2 - 1
        module = ExportedPart(self.encoder)
        graph = export_graph(module, probe)
        try:
            session = make_session(self.ort, graph, self.threads)
            ours = session.run(None, {"pixels": probe.numpy()})[0]
        except Exception as e:  # the runtime's own error types
            raise RuntimeRefused(f"ONNX Runtime refused the exported encoder ({first_line(e)})") from None
        with torch.no_grad():
            theirs = module(probe).numpy()
        if ours.shape != theirs.shape:
            raise RuntimeRefused(f"ONNX Runtime gave shape {ours.shape}, PyTorch {theirs.shape}")
        difference = float(np.abs(ours - theirs).max()) / max(1.0, float(np.abs(theirs).max()))
        if not difference <= AGREEMENT:
            raise RuntimeRefused(f"ONNX Runtime's output differs from PyTorch's by {difference:.2g} (relative)")
        return graph


class ExportedPart(nn.Module):
    """What is exported: the encoder's `feature_map` when it has one (the rest runs in PyTorch), else all of it."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        # the encoder's mode, set without recursing: the exporter puts this module back into the mode it had,
        # recursively, and a default (training) wrapper would leave the encoder in training mode
        self.training = encoder.training

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if hasattr(self.encoder, "feature_map"):
            return self.encoder.feature_map(pixels)
        return self.encoder(pixels)


def export_graph(module: nn.Module, probe: torch.Tensor) -> bytes:
    """The module as an ONNX graph (opset 17, any batch size); RuntimeRefused if the exporter fails."""
    buffer = io.BytesIO()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        with torch.no_grad(), warnings.catch_warnings(), native_output_silenced():
            warnings.simplefilter("ignore")  # the exporter's deprecation and constant-folding notes
            # nn.TransformerEncoderLayer's fused inference kernel has no ONNX form; its plain path has
            torch.backends.mha.set_fastpath_enabled(False)
            torch.onnx.export(module, (probe,), buffer, dynamo=False, opset_version=OPSET,
                              input_names=["pixels"], output_names=["features"],
                              dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}})
    except Exception as e:  # the exporter raises many kinds
        raise RuntimeRefused(f"the ONNX export failed ({type(e).__name__}: {first_line(e)})") from None
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return buffer.getvalue()


@contextlib.contextmanager
def native_output_silenced():
    """Send what native code writes to stdout and stderr to /dev/null meanwhile: the exporter dumps its whole
    graph there when it fails (its logging switch is stuck on), and the failure is reported in one line."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def make_session(ort, graph: bytes, threads: int):
    """An ONNX Runtime CPU session running on `threads` threads (the calling one included)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # idle runtime threads sleep instead of spinning: the caption decoder and the image decoding run on the
    # same cores between encoder batches
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def cache_key(encoder: nn.Module, image_size: int, config: dict, ort_version: str) -> str:
    """sha256 of everything the exported graph depends on: weights, config, input size, the two versions."""
    h = hashlib.sha256(json.dumps({
        "config": config, "image_size": image_size, "torch": torch.__version__, "onnxruntime": ort_version,
        "opset": OPSET, "export": EXPORT_VERSION, "module": type(encoder).__qualname__,
    }, sort_keys=True).encode())
    for name, tensor in encoder.state_dict().items():
        h.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def weights_fingerprint(encoder: nn.Module) -> tuple:
    """Cheap identity of the encoder's current weights: every tensor's storage and in-place version counter."""
    return tuple((t.data_ptr(), t._version) for t in encoder.state_dict(keep_vars=True).values())


def cache_dir() -> Path:
    """Where exported graphs are kept: $XDG_CACHE_HOME/mammut-search/onnx (default ~/.cache)."""
    return user_cache_dir() / "onnx"


def cached_graph(key: str, export) -> bytes:
    """The graph stored under `key` if it is whole; else `export()`, stored for next time (crash-safely: the
    graph first, then the .json that vouches for it)."""
    graph_path = cache_dir() / f"image-encoder-{key[:32]}.onnx"
    meta_path = graph_path.with_suffix(".json")
    graph = verified_graph(graph_path, meta_path, key)
    if graph is not None:
        return graph
    graph = export()
    meta = {"key": key, "sha256": hashlib.sha256(graph).hexdigest(), "torch": torch.__version__}
    try:
        graph_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(graph_path, lambda tmp: Path(tmp).write_bytes(graph))
        atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))
    except OSError as e:
        log.warning("%s: cannot keep the exported image encoder (%s); it is exported again next time",
                    graph_path.parent, e.strerror or e)
    return graph


def verified_graph(graph_path: Path, meta_path: Path, key: str) -> bytes | None:
    """The cached graph when its .json names this key and the graph's bytes match its sha256; else None."""
    try:
        meta = json.loads(meta_path.read_text())
        graph = graph_path.read_bytes()
    except (OSError, ValueError):
        return None
    whole = isinstance(meta, dict) and meta.get("sha256") == hashlib.sha256(graph).hexdigest()
    if not whole or meta.get("key") != key:
        log.info("%s: damaged or stale; exporting the image encoder again", graph_path)
        return None
    return graph


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
