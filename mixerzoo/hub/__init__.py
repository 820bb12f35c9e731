"""mixerzoo.hub: save, publish, download and convert checkpoints (safetensors only, timm's config schema).

- :func:`save_pretrained` / :func:`push_to_hub` write and publish hub folders (``mixerzoo publish DIR REPO_ID``).
- :func:`prepare_kwargs` is what ``mixerzoo.create_model`` runs before ``timm.create_model``: :func:`preflight` for
  ``hf-hub:`` / ``local-dir:`` names (``requires``, architecture, ``model_args``, safetensors present and intact),
  :func:`resolve_pretrained_file` for registry names with ``pretrained=True``.
- Untrusted configs are built on the meta device first: size limits (``MIXERZOO_MAX_PARAMS``,
  ``MIXERZOO_MAX_ACTIVATIONS``, :class:`ModelTooLargeError`) and every shape against the safetensors header before any
  tensor is allocated; the ``sha256`` that save_pretrained records in config.json is verified on load.
- :func:`convert_checkpoint` turns an official checkpoint into a hub folder (``mixerzoo convert``); its module holds
  the only ``torch.load`` in mixerzoo (``weights_only=True``).
"""

from mixerzoo.hub._config import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CorruptCheckpointError,
    HubError,
    InvalidConfigError,
    MissingMixerError,
    UnknownArchitectureError,
    UnsafeCheckpointError,
    build_config,
    check_config,
    read_config,
    validate_model_args,
)
from mixerzoo.hub._safety import ModelTooLargeError, size_limits
from mixerzoo.hub.convert import ConvertError, ConvertResult, convert_checkpoint
from mixerzoo.hub.download import (
    Preflight,
    guard_pretrained,
    hub_download,
    preflight,
    prepare_kwargs,
    resolve_pretrained_file,
    url_download,
    verify_safetensors,
)
from mixerzoo.hub.publish import push_to_hub, save_pretrained

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "ConvertError",
    "ConvertResult",
    "CorruptCheckpointError",
    "HubError",
    "InvalidConfigError",
    "MissingMixerError",
    "ModelTooLargeError",
    "Preflight",
    "UnknownArchitectureError",
    "UnsafeCheckpointError",
    "build_config",
    "check_config",
    "convert_checkpoint",
    "guard_pretrained",
    "hub_download",
    "preflight",
    "prepare_kwargs",
    "push_to_hub",
    "read_config",
    "resolve_pretrained_file",
    "save_pretrained",
    "size_limits",
    "url_download",
    "validate_model_args",
    "verify_safetensors",
]
