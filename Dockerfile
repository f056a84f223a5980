# The prediction server without PyTorch: ONNX Runtime, numpy, Pillow, FastAPI, uvicorn.
#   vistrain export runs/my-run --int8            # on the training machine
#   docker build -t my-classifier .
#   docker run -p 8000:8000 -v $PWD/runs/my-run/export:/model:ro my-classifier
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
# vistrain itself without its training dependencies (torch, timm, ...), then only the `serve` extra's
# requirements, read from pyproject.toml so the two never disagree.
RUN pip install --no-deps . \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['serve']))" > /tmp/serve.txt \
 && pip install -r /tmp/serve.txt \
 && rm -rf /app/src /tmp/serve.txt \
 && useradd --create-home --uid 10001 vistrain

USER vistrain
EXPOSE 8000
# Mount (or COPY) an export folder at /model.
CMD ["vistrain", "serve", "/model", "--host", "0.0.0.0", "--port", "8000"]
