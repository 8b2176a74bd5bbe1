"""`moe-compile deploy`: a model file -> a Triton Inference Server model repository.

    check the name, the model file and the repository -> read the file's I/O (signature.py)
    -> the decoder's and NAME_generate's configs (config.py) -> stage both model folders
    beside the repository -> rename them into place

    REPO/NAME/config.pbtxt             the decoder, for the chosen backend
    REPO/NAME/1/model.plan             tensorrt
    REPO/NAME/1/model.onnx             onnxruntime (+ its external data file, if any)
    REPO/NAME/1/model.py + model.onnx  python (ONNX Runtime inside the python backend)
    REPO/NAME_generate/config.pbtxt    greedy generation over NAME (python backend, BLS)
    REPO/NAME_generate/1/model.py

Other models in REPO stay; NAME and NAME_generate are replaced only with `force`.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from moe_compile.atomic import writing_into
from moe_compile.errors import InvalidInput, one_line

from .config import (
    BACKENDS,
    DEFAULT_MAX_NEW_TOKENS,
    GENERATE_SUFFIX,
    MODEL_FILES,
    check_decoder,
    config_text,
    decoder_config,
    generate_config,
    max_positions,
)
from .signature import ModelSignature, engine_signature, onnx_signature

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
VERSION = "1"


@dataclass
class Deployment:
    repo: Path
    name: str
    backend: str
    models: list[str]
    files: list[str]

    def to_json(self) -> dict:
        return {"repo": str(self.repo), "name": self.name, "backend": self.backend, "models": self.models,
                "files": self.files}


def default_backend(artifact: Path) -> str:
    """An engine is served by TensorRT; ONNX by the python backend, which every Triton server has."""
    return "tensorrt" if artifact.suffix == ".plan" else "python"


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise InvalidInput(f"--name '{name}': use letters, digits, '_', '-' and '.' only "
                           "(no path separators or spaces), starting with a letter or digit")


def _check_artifact(artifact: Path) -> None:
    if not artifact.exists():
        raise InvalidInput(f"model file '{artifact}' does not exist")
    if artifact.is_dir():
        raise InvalidInput(f"model file '{artifact}' is a folder; give engine.plan or model.onnx")
    if artifact.suffix not in (".plan", ".onnx"):
        raise InvalidInput(f"model file '{artifact}': give a TensorRT engine (.plan) or an ONNX model (.onnx)")
    try:
        with artifact.open("rb"):
            pass
    except OSError as exc:
        raise InvalidInput(f"cannot read model file '{artifact}' ({one_line(exc)})") from None


def read_signature(artifact: Path, backend: str) -> ModelSignature:
    """The file's I/O, once the backend is known to be able to serve it."""
    if artifact.suffix == ".plan":
        if backend != "tensorrt":
            raise InvalidInput(f"{artifact} is a TensorRT engine: only --backend tensorrt serves it")
        return engine_signature(artifact)
    if backend == "tensorrt":
        raise InvalidInput(f"--backend tensorrt serves an engine: build one from {artifact} with "
                           "`moe-compile build` and deploy engine.plan")
    signature = onnx_signature(artifact)
    missing = [data for data in signature.external_data if not (artifact.parent / data).is_file()]
    if missing:
        raise InvalidInput(f"{artifact}: its weights file {artifact.parent / missing[0]} is missing")
    if signature.metadata.get("moe_compile.target") == "tensorrt":
        raise InvalidInput(f"{artifact} holds TensorRT plugin nodes (export --target tensorrt), which ONNX Runtime "
                           "cannot run: export --target onnxruntime for the python and onnxruntime backends")
    return signature


def _check_repo(repo: Path, names: list[str], force: bool) -> None:
    """Other models may share the repository; our two names and loose files need `force`."""
    if repo.exists() and not repo.is_dir():
        raise InvalidInput(f"--repo {repo} is a file, not a folder")
    if force or not repo.is_dir():
        return
    taken = [name for name in names if (repo / name).exists()]
    if taken:
        raise InvalidInput(f"--repo {repo} already holds model {taken[0]}: pass --force to replace it")
    loose = sorted(p.name for p in repo.iterdir() if not p.is_dir() and not p.name.startswith("."))
    if loose:
        raise InvalidInput(f"--repo {repo} is not a Triton model repository (it holds the file {loose[0]}): "
                           "pass --force to write into it anyway")


def deploy(artifact: str | Path, repo: str | Path, name: str, backend: str | None = None, max_batch: int = 8,
           instances: int = 1, force: bool = False, max_new_tokens: int | None = None) -> Deployment:
    artifact, repo = Path(artifact), Path(repo)
    _check_name(name)
    backend = backend or default_backend(artifact)
    if backend not in BACKENDS:
        raise InvalidInput(f"backend '{backend}' is not one of {', '.join(BACKENDS)}")
    if max_batch < 1 or instances < 1 or (max_new_tokens is not None and max_new_tokens < 1):
        raise InvalidInput(f"--max-batch ({max_batch}), --instances ({instances}) and --max-new-tokens "
                           f"({max_new_tokens}) must be at least 1")
    names = [name, name + GENERATE_SUFFIX]
    _check_repo(repo, names, force)
    _check_artifact(artifact)
    signature = read_signature(artifact, backend)
    check_decoder(signature, artifact)
    context = max_positions(signature, artifact)
    if max_new_tokens is None:
        max_new_tokens = min(DEFAULT_MAX_NEW_TOKENS, context or DEFAULT_MAX_NEW_TOKENS)
    elif context is not None and max_new_tokens > context:
        raise InvalidInput(f"--max-new-tokens {max_new_tokens} is more than the model's context ({context} positions)")
    configs = [decoder_config(name, backend, signature, max_batch, instances, artifact),
               generate_config(name, signature, instances, max_new_tokens, context)]

    created = not repo.exists()
    with writing_into(repo, repo):
        repo.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
    try:
        _stage_decoder(staging / name, backend, artifact, signature)
        _stage_model_py(staging / names[1], "generate.py")
        for config in configs:
            (staging / config.name / "config.pbtxt").write_text(config_text(config))
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        for model in names:
            if (repo / model).exists():
                shutil.rmtree(repo / model)
            (staging / model).replace(repo / model)
    except OSError as exc:  # a full disk, a quota: nothing stays
        shutil.rmtree(repo if created else staging, ignore_errors=True)
        raise InvalidInput(f"cannot write into --repo {repo} ({exc.strerror or one_line(exc)})") from None
    except BaseException:
        shutil.rmtree(repo if created else staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return Deployment(repo, name, backend, names, files)


def _stage_model_py(folder: Path, source: str) -> None:
    (folder / VERSION).mkdir(parents=True)
    (folder / VERSION / "model.py").write_text(resources.files("moe_compile.deploy.triton_models").joinpath(source).read_text())


def _stage_decoder(folder: Path, backend: str, artifact: Path, signature: ModelSignature) -> None:
    version = folder / VERSION
    if backend == "python":
        _stage_model_py(folder, "decoder.py")
    else:
        version.mkdir(parents=True)
    if backend == "tensorrt":
        shutil.copyfile(artifact, version / MODEL_FILES["tensorrt"])
        (folder / "README.md").write_text(tensorrt_readme(folder.name))
        return
    shutil.copyfile(artifact, version / MODEL_FILES["onnxruntime"])
    for data in signature.external_data:
        shutil.copyfile(artifact.parent / data, version / data)


def tensorrt_readme(name: str) -> str:
    """What the server needs for the GroupedMoE plugins of a TensorRT engine."""
    from moe_compile.plugins.tensorrt import MIN_TENSORRT_TEXT
    from moe_compile.plugins.tensorrt.stages import PLUGIN_NAMESPACE, PLUGIN_VERSION, STAGES

    plugins = ", ".join(f"`{PLUGIN_NAMESPACE}::{stage.plugin}`" for stage in STAGES)
    return (f"# {name}: a moe-compile TensorRT engine\n\n"
            f"Each MoE layer of this engine is {len(STAGES)} plugin layers ({plugins}, version {PLUGIN_VERSION}) "
            "compiled ahead of time: the engine holds their kernels, so the server needs no plugin library "
            f"and no Python, only the TensorRT version (>= {MIN_TENSORRT_TEXT}) that built the engine:\n\n"
            "    tritonserver --model-repository=REPO\n\n"
            "The engine runs only on the GPU model and TensorRT version it was built with.\n")
