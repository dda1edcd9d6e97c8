"""Large term sets reach the vLLM plugin by content hash, as protected-text indexes do, not inside every request.

Small term sets travel in `vllm_xargs` as they are (`quell_terms`, `quell_prefix_terms`, `quell_inside_terms`,
`quell_patterns`, `quell_facts`). Above `INLINE_MAX_BYTES` of such arguments, the gateway writes them once, at
policy load, to `<index dir>/terms/<sha256>.json` (atomically: a temp file renamed into place) and sends only
`"quell_term_set": ["<sha256>"]`; the plugin reads the file from the same folder ($QUELL_INDEX_DIR, else
$QUELL_CACHE_DIR/protected: `filters.protected_text.default_index_dir`) and checks its hash.

Fails closed: a set that is missing, unreadable, altered (its content no longer hashes to its name) or malformed
raises ValueError naming the set and the folder, so the request is rejected (HTTP 400 from `validate_params`), never
served unmasked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from filters.atomic_files import write_atomic
from filters.protected_text import default_index_dir, is_digest

TERM_SET_KEY = "quell_term_set"
CARRIED_KEYS = ("quell_terms", "quell_prefix_terms", "quell_inside_terms", "quell_patterns", "quell_facts")
"""The plugin arguments a term set file carries (protected-text indexes go by hash already: `quell_protected`)."""
INLINE_MAX_BYTES = 64 * 1024
"""Term arguments up to this size (UTF-8 JSON) go inline in each request; larger ones by hash."""
SUBDIR = "terms"


def _canonical(args: Mapping[str, Sequence[str]]) -> bytes:
    return json.dumps({k: list(v) for k, v in sorted(args.items())}, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8", errors="surrogatepass")  # fmt: skip


def inline_size(args: Mapping[str, Sequence[str]]) -> int:
    return len(_canonical({k: v for k, v in args.items() if k in CARRIED_KEYS}))


def save_term_set(args: Mapping[str, Sequence[str]], directory: Path | None = None) -> str:
    """Write the carried keys of `args` under their content hash (atomically; kept if already there); returns it."""
    data = _canonical({k: v for k, v in args.items() if k in CARRIED_KEYS})
    digest = hashlib.sha256(data).hexdigest()
    folder = (directory or default_index_dir()) / SUBDIR
    final = folder / f"{digest}.json"
    if final.is_file():
        return digest
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(final, data)
    return digest


def by_hash(args: Mapping[str, Sequence[str]], directory: Path | None = None,
            inline_max_bytes: int = INLINE_MAX_BYTES) -> dict[str, list[str]]:  # fmt: skip
    """`args` as sent to the plugin: unchanged when small, else the carried keys replaced by their set's hash."""
    if inline_size(args) <= inline_max_bytes:
        return {k: list(v) for k, v in args.items()}
    digest = save_term_set(args, directory)
    rest = {k: list(v) for k, v in args.items() if k not in CARRIED_KEYS}
    return {TERM_SET_KEY: [digest], **rest}


@lru_cache(maxsize=16)
def _load(digest: str, folder: str) -> dict[str, tuple[str, ...]]:
    path = Path(folder) / f"{digest}.json"
    where = f"vllm_xargs.{TERM_SET_KEY}: term set {digest[:12]}... in {folder}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{where} cannot be read ({exc.strerror or exc}); the gateway writes term sets there: "
                         "point QUELL_INDEX_DIR at the same folder in both processes") from None  # fmt: skip
    if hashlib.sha256(data).hexdigest() != digest:
        raise ValueError(f"{where} does not hash to its name: the file was altered or cut short")
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{where} is not valid JSON: {exc}") from None
    if (
        not isinstance(raw, dict)
        or not set(raw) <= set(CARRIED_KEYS)
        or not all(isinstance(v, list) and all(isinstance(t, str) for t in v) for v in raw.values())
    ):
        raise ValueError(f"{where} must map {', '.join(CARRIED_KEYS)} to lists of strings")
    return {k: tuple(v) for k, v in raw.items()}


def resolve(extra_args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The request's plugin arguments with a `quell_term_set` hash replaced by the set's contents (merged with any
    inline ones of the same key). ValueError, naming the set and the folder, when it cannot be used."""
    args = dict(extra_args or {})
    raw = args.pop(TERM_SET_KEY, None)
    if raw is None:
        return args
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or len(raw) > 4 or not all(is_digest(d) for d in raw):
        raise ValueError(f"vllm_xargs.{TERM_SET_KEY} must list at most 4 term set ids of 64 hex digits")
    folder = str(default_index_dir() / SUBDIR)
    for digest in raw:
        for key, values in _load(digest, folder).items():
            inline = args.get(key)
            if inline is not None and not isinstance(inline, list):
                raise ValueError(f"vllm_xargs.{key} must be a flat list of strings")
            args[key] = list(inline or []) + list(values)
    return args
