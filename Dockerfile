# Yijian Hub image: the `yijian` CLI (serve, worker, mllp, dicom-scp, db upgrade, ...).

# The browser libraries (DICOM viewer, htmx) from the npm registry, as pinned by the lock file.
FROM node:20-slim AS web-assets
WORKDIR /web
COPY hub/web/package.json hub/web/package-lock.json hub/web/build_assets.mjs ./
RUN npm ci --no-audit --no-fund && node build_assets.mjs

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    YIJIAN_DATA_DIR=/var/lib/yijian

RUN groupadd --system --gid 10001 yijian \
 && useradd --system --uid 10001 --gid yijian --home-dir /var/lib/yijian --shell /usr/sbin/nologin yijian \
 && mkdir -p /var/lib/yijian \
 && chown yijian:yijian /var/lib/yijian

WORKDIR /app
COPY . /app
COPY --from=web-assets /web/static/vendor /app/hub/web/static/vendor
RUN pip install /app

USER yijian
WORKDIR /var/lib/yijian
VOLUME ["/var/lib/yijian"]
# 8000 HTTP (FHIR, DICOMweb, CDS Hooks, UI), 2575 HL7 v2 MLLP, 11112 DICOM.
EXPOSE 8000 2575 11112

CMD ["yijian", "serve", "--host", "0.0.0.0"]
