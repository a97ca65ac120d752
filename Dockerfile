# Tenantry gateway image: a slim Python runtime, the package installed, run as a non-root user.
# Debian 13 "trixie": its OpenSSL is 3.5, which Python's ssl links, so `tenantry serve` with
# TENANTRY_TLS_CERTFILE offers the hybrid post-quantum key exchange X25519MLKEM768 (README "TLS and
# post-quantum key exchange"); the bookworm-based `python:3.11-slim` has OpenSSL 3.0, without it.
FROM python:3.11-slim-trixie AS build
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
# src/tenantry/migrations links to migrations/: both are needed to build the package.
COPY migrations ./migrations
COPY src ./src
# No extras: the development services (embedded PostgreSQL / Redis) are not in the image.
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim-trixie
# A fixed uid/gid (10001), so Kubernetes' runAsUser in the Helm chart names this very user.
RUN groupadd --system --gid 10001 tenantry \
    && useradd --system --uid 10001 --gid tenantry --home-dir /app --shell /usr/sbin/nologin tenantry
COPY --from=build /install /usr/local
WORKDIR /app
USER 10001:10001
ENV TENANTRY_HOST=0.0.0.0 \
    TENANTRY_PORT=8000 \
    PYTHONUNBUFFERED=1
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os,ssl,sys,urllib.request as u; s='https' if os.environ.get('TENANTRY_TLS_CERTFILE') else 'http'; sys.exit(0 if u.urlopen(s+'://127.0.0.1:8000/health', timeout=2, context=ssl._create_unverified_context()).status == 200 else 1)"
CMD ["tenantry", "serve"]
