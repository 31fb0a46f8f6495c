"""Model artifacts on disk: a folder with the model files and ``manifest.json``, pinned by one digest.

Layout of ``models/<name>/``::

    manifest.json   feature set (name, hash, names), label definition, training data and range,
                    configuration, out-of-sample metrics, library versions, and ``files``: the
                    sha256 of every model file
    xgboost.json    the xgboost booster (its JSON model format)
    torch.pt        the torch MLP's state_dict (tensors only: loaded with ``weights_only=True``)
    report/         the evaluation report (HTML, PNG, summary.json): for people, not loaded, not digested

The digest, precisely: ``sha256:`` + hex sha256 of the manifest serialised as canonical JSON
(``json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``), where the
manifest's ``files`` map holds the sha256 of each model file **as found on disk**. So the digest
changes when any model file or any manifest field changes, and it does not depend on how
manifest.json is formatted. Nothing in the manifest reads a clock, so the same data, configuration
and seed give the same digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantum_trader.ml.market_features import FEATURE_HASH, FEATURE_NAMES, FEATURE_SET

if TYPE_CHECKING:
    from quantum_trader.ml.models import Ensemble

FORMAT = "quantum-trader-model/1"
MANIFEST = "manifest.json"
BASELINE = "baseline-trend"


class ArtifactError(ValueError):
    """A model that must not be used; the message is one line. ``observed_digest`` is what is on disk, if known."""

    def __init__(self, message: str, observed_digest: str = "") -> None:
        super().__init__(message)
        self.observed_digest = observed_digest


def models_dir() -> Path:
    """``$QT_MODELS_DIR`` (the image sets it), else the repository's ``models/`` beside the source tree."""
    configured = os.environ.get("QT_MODELS_DIR")
    if configured:
        return Path(configured).expanduser()
    in_tree = Path(__file__).resolve().parents[3] / "models"
    return in_tree if in_tree.is_dir() else Path("models")


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def artifact_digest(manifest: dict[str, Any]) -> str:
    """The digest of a manifest whose ``files`` already hold the model files' hashes."""
    return sha256_bytes(canonical(manifest))


def write_artifact(folder: Path, manifest: dict[str, Any], files: dict[str, bytes]) -> str:
    """Write the model files and the manifest (with their hashes); return the digest."""
    folder.mkdir(parents=True, exist_ok=True)
    body = {k: v for k, v in manifest.items() if k != "files"}
    body["files"] = {name: sha256_bytes(data) for name, data in sorted(files.items())}
    for name, data in files.items():
        _atomic_write(folder / name, data)
    _atomic_write(folder / MANIFEST, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())
    return artifact_digest(body)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_bytes(data)
    tmp.replace(path)


@dataclass
class LoadedArtifact:
    name: str
    digest: str
    manifest: dict[str, Any]
    ensemble: Ensemble

    @property
    def feature_hash(self) -> str:
        return str(self.manifest["feature_set"]["hash"])

    @property
    def trained_until_ms(self) -> int:
        """Time of the newest bar the models learned from: what the model's age is measured against."""
        return int(self.manifest["training"]["range"]["end"])


def read_manifest(folder: Path, name: str) -> dict[str, Any]:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ArtifactError(f"model {name}: no artifact folder {folder}")
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ArtifactError(f"model {name}: {path} is missing") from None
    except (OSError, ValueError) as error:
        raise ArtifactError(f"model {name}: {path} is unreadable or not JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"model {name}: {path} is not a {FORMAT} manifest")
    return manifest


def observed_digest(folder: Path, name: str) -> tuple[str, dict[str, Any], dict[str, bytes]]:
    """(digest of what is on disk, manifest, file contents); a model file differing from its manifest entry raises."""
    manifest = read_manifest(folder, name)
    declared = manifest.get("files")
    if not isinstance(declared, dict) or not declared:
        raise ArtifactError(f"model {name}: the manifest lists no files")
    contents: dict[str, bytes] = {}
    actual: dict[str, str] = {}
    for file_name in sorted(declared):
        if Path(file_name).name != file_name:
            raise ArtifactError(f"model {name}: manifest file entry {file_name!r} is not a plain file name")
        try:
            contents[file_name] = (folder / file_name).read_bytes()
        except OSError:
            raise ArtifactError(f"model {name}: {folder / file_name} is missing or unreadable") from None
        actual[file_name] = sha256_bytes(contents[file_name])
    digest = artifact_digest({**manifest, "files": actual})
    for file_name in sorted(declared):
        if actual[file_name] != declared[file_name]:
            raise ArtifactError(
                f"model {name}: {file_name} has {actual[file_name]}, the manifest says {declared[file_name]}: "
                "the artifact was modified",
                observed_digest=digest,
            )
    return digest, manifest, contents


def load_artifact(name: str, expected_digest: str, directory: Path | None = None) -> LoadedArtifact:
    """The artifact ``name`` from the models folder, only if its digest is ``expected_digest``: fail closed."""
    if not expected_digest:
        raise ArtifactError(
            f"model {name}: the policy pins no digest (spec.model.digest); an unpinned model is refused"
        )
    folder = (directory or models_dir()) / name
    digest, manifest, contents = observed_digest(folder, name)
    if digest != expected_digest:
        raise ArtifactError(
            f"model {name}: the artifact's digest is {digest}, the policy pins {expected_digest}",
            observed_digest=digest,
        )
    features = manifest.get("feature_set", {})
    if features.get("hash") != FEATURE_HASH or features.get("name") != FEATURE_SET:
        raise ArtifactError(
            f"model {name}: trained on feature set {features.get('name')} {features.get('hash')}, "
            f"this build computes {FEATURE_SET} {FEATURE_HASH}",
            observed_digest=digest,
        )
    # torch and xgboost load only here: the features component reads manifests without paying for them
    from quantum_trader.ml.models import CompiledTrees, Ensemble, mlp_from_bytes, xgb_from_bytes

    try:
        models = manifest["models"]
        booster = xgb_from_bytes(contents[models["xgboost"]["file"]])
        torch_spec = models["torch"]
        mlp = mlp_from_bytes(contents[torch_spec["file"]], len(FEATURE_NAMES), int(torch_spec["hidden"]))
        ensemble = Ensemble(
            booster=booster,
            mlp=mlp,
            xgb_temperature=float(models["xgboost"]["temperature"]),
            mlp_temperature=float(torch_spec["temperature"]),
            trees=CompiledTrees(contents[models["xgboost"]["file"]]),
        )
    except Exception as error:  # a digest-valid artifact that does not load is still refused, with the cause
        raise ArtifactError(f"model {name}: cannot load the models ({type(error).__name__}: {error})", digest) from None
    return LoadedArtifact(name=name, digest=digest, manifest=manifest, ensemble=ensemble)


def feature_set_for(model_name: str, directory: Path | None = None) -> str:
    """The feature set the named model reads: ``core-v1`` for ``baseline-trend``, else the manifest's."""
    if model_name == BASELINE:
        return "core-v1"
    manifest = read_manifest((directory or models_dir()) / model_name, model_name)
    return str(manifest.get("feature_set", {}).get("name", ""))
