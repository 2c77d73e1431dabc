# syntax=docker/dockerfile:1
# The caretally image: the `caretally` command, run as an unprivileged user. docker-compose.yml
# runs it as the worker, the HTTP API and the archiver (docs/deployment.md).

# Pinned: CPython 3.11 is the only version tested (pyproject.toml, requires-python).
ARG PYTHON_IMAGE=python:3.11.15-slim-trixie

# -- build: the project and its dependencies into a virtual environment -------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/caretally
WORKDIR /src
# Only what the distribution is built from (pyproject.toml names README and LICENSE).
COPY pyproject.toml README.md LICENSE ./
COPY schemas ./schemas
COPY projections ./projections
COPY streams ./streams
# Every compiled dependency ships a manylinux wheel: no compiler in the image. No dev extras.
RUN /opt/caretally/bin/pip install .

# -- run ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/caretally/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CARETALLY_ARCHIVE=/var/lib/caretally/archive \
    CARETALLY_API_KEYS=/var/lib/caretally/keys/api-keys.json
# The data folders belong to the user, mode 0700: the worker refuses a state folder that
# another user owns or can write (streams/worker/snapshots.py), and an empty named volume
# mounted on one of these folders takes its owner and mode.
RUN groupadd --system --gid 10001 caretally \
    && useradd --system --uid 10001 --gid caretally --home-dir /var/lib/caretally \
       --shell /usr/sbin/nologin caretally \
    && install -d -o caretally -g caretally -m 0700 /var/lib/caretally \
       /var/lib/caretally/state /var/lib/caretally/archive /var/lib/caretally/keys
COPY --from=build /opt/caretally /opt/caretally
USER caretally:caretally
WORKDIR /var/lib/caretally
# Ports by convention: 8080 for `serve --port`, 6066 for `worker --web-port`. Each service
# of docker-compose.yml has its own healthcheck, on the port its command binds.
EXPOSE 8080 6066
ENTRYPOINT ["caretally"]
CMD ["--help"]
